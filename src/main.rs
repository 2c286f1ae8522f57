//! `lastseen` binary: parses the command line, loads settings and runs one subcommand.

use std::process::ExitCode;

use lastseen::cli::{self, Command, UserCommand};
use lastseen::settings::{self, Overrides, Settings};
use lastseen::{commands, startup, telemetry};

fn main() -> ExitCode {
    fixed_mmap_threshold();
    // Password hashing runs on the blocking pool, one 19 MiB Argon2 buffer per hash (mapped
    // and unmapped each time, see `fixed_mmap_threshold`); a small pool bounds the threads
    // (hashes are also limited to one per core by the authenticator).
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

/// Allocations of 128 KiB and more that no free heap block can serve get pages of their own
/// from then on, returned to the system when freed. glibc starts there too but raises the
/// threshold to the size of every such block freed, so once the session cache's and the
/// engine's tables have doubled a few times, their next doublings come from the heap and leave
/// holes in it that stay resident.
/// With every token of 1,000,000 sessions cached this saves 16 bytes per session (240 -> 224,
/// docs/BENCHMARKS.md), at no measurable cost in throughput or logins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fixed_mmap_threshold() {
    unsafe extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    /// glibc's `M_MMAP_THRESHOLD`.
    const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
    // SAFETY: called before any other thread exists; `mallopt` takes no pointer, and a refusal
    // (its 0) only leaves glibc's default in place.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fixed_mmap_threshold() {}
