//! `lastseen-ceiling`: a bare axum server, the ceiling of what this machine can answer.
//!
//! It runs the same axum, hyper and tokio builds as `lastseen` (one workspace lockfile), on a
//! runtime set up the same way (multi-threaded, one worker per core, `TCP_NODELAY`), and answers
//! `GET /hello` with the body of lastseen's `/healthz` (`{"status":"ok"}`), with no middleware.
//! The benchmark divides lastseen's throughput by this server's, measured in the same run.
//!
//! Usage: `lastseen-ceiling [ADDR]` (default `127.0.0.1:0`). The first line of standard output
//! is `listening on http://ADDR`; SIGTERM or Ctrl-C stops it with exit status 0.

use std::process::ExitCode;

use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Serialize)]
struct Hello {
    status: &'static str,
}

async fn hello() -> Json<Hello> {
    Json(Hello { status: "ok" })
}

fn main() -> ExitCode {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(&addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(addr: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    let app = Router::new().route("/hello", get(hello));
    let mut term = signal(SignalKind::terminate())?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    Ok(())
}
