//! `lastseen` binary: parses the command line, loads settings and runs one subcommand.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use lastseen::cli::{Cli, Command, UserCommand};
use lastseen::settings::{self, Settings};
use lastseen::{commands, startup::App, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(std::io::stderr);
    for name in settings::unknown_env_vars(std::env::vars().map(|(k, _)| k)) {
        tracing::warn!(variable = %name, "unknown LASTSEEN_* variable ignored (misspelt?)");
    }
    let settings = match Settings::load(cli.settings.config.as_ref(), &cli.settings.overrides()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve => serve(settings).await.map(|()| String::new()),
        Command::Migrate => commands::migrate(&settings).await,
        Command::CheckOfflineUsers { dry_run } => {
            commands::check_offline_users(&settings, dry_run).await
        }
        Command::User {
            command:
                UserCommand::Create {
                    username,
                    admin,
                    password_stdin,
                },
        } => {
            let mut stdin = std::io::stdin().lock();
            let input = password_stdin.then_some(&mut stdin as &mut dyn std::io::BufRead);
            commands::create_user(&settings, &username, admin, input).await
        }
    };
    match result {
        Ok(output) if output.is_empty() => ExitCode::SUCCESS,
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let app = App::build(settings).await?;
    let addr = app.local_addr()?;
    // Scripts and tests read the bound address from this first line of standard output.
    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    app.run(shutdown).await
}

async fn signal_shutdown(shutdown: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received; draining");
    shutdown.cancel();
}
