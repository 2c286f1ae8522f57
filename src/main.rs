//! `lastseen` binary: parses the command line, loads settings and runs one subcommand.

use std::process::ExitCode;

use lastseen::cli::{self, Command, UserCommand};
use lastseen::settings::{self, Overrides, Settings};
use lastseen::{commands, heap, startup, telemetry};

fn main() -> ExitCode {
    // SAFETY: the first statement of `main`: no other thread exists yet.
    unsafe { heap::tune() };
    // Password hashing runs on the blocking pool, each thread keeping one 19 MiB Argon2
    // buffer (pages of its own, see `heap::tune`, given back when the thread ends); a small
    // pool bounds that memory (hashes are also limited to one per core by the authenticator).
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(cores.max(4))
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run()),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let invocation = match cli::parse_from(std::env::args_os()) {
        Ok(invocation) => invocation,
        Err(error) => error.exit(),
    };
    let overrides = Overrides {
        flags: invocation.flags,
        ..Overrides::from_env(std::env::vars())
    };
    let settings = match Settings::load(invocation.cli.config.as_ref(), &overrides) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(
        std::io::stderr,
        settings.log_format,
        telemetry::stderr_wants_colours(),
    );
    for name in settings::unknown_env_vars(std::env::vars().map(|(k, _)| k)) {
        let similar = settings::similar_env_vars(&name).join(", ");
        tracing::warn!(
            "unknown variable {name} ignored (misspelt? similar settings: {}); the settings \
             are listed in docs/CONFIGURATION.md",
            if similar.is_empty() { "none" } else { &similar }
        );
    }
    let result = match invocation.cli.command {
        Command::Serve => startup::serve(settings).await.map(|()| String::new()),
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
            let (line, status) = commands::failure(&error);
            eprintln!("error: {line}");
            ExitCode::from(status)
        }
    }
}
