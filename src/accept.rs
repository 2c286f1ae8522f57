//! The accept loop: TCP connections up to a node-wide cap, each served as HTTP/1.1 (with
//! upgrades, for WebSockets) under a header-read timeout and an idle timeout.
//!
//! What it owns: how many connections are open, how long a silent one may stay, and what a
//! connection over the cap gets (a `503` written without reading, then close). What it does not
//! own: anything about requests, which the router serves.
//!
//! The cap is a semaphore whose permit lives inside the connection's I/O object, so an upgraded
//! WebSocket keeps counting until it closes. The idle timer lives there too: a connection on
//! which nothing was read or written for `idle_timeout` fails its next read or write, which
//! ends it whatever is on top (a keep-alive wait, a stalled body, an upgraded socket; sockets
//! and SSE streams send something at least every 15 s, so they are never idle that long).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::http::Service;

/// What a connection over the cap gets before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 70\r\n\r\n\
{\"detail\":\"Too many open connections.\",\"code\":\"service_unavailable\"}";

/// Limits of the accept loop (from the settings).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at most; more are refused.
    pub max_connections: usize,
    /// Time to receive a request head, counted from when the server starts waiting for it (so
    /// it also bounds a keep-alive connection waiting for its next request).
    pub header_read_timeout: Duration,
    /// Time without a byte read or written after which a connection is closed.
    pub idle_timeout: Duration,
}

/// Serves `service` on `listener` until `shutdown`, then lets each connection finish its
/// request in flight and returns once all have closed.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    pause_after(&error).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(&stream);
            continue;
        };
        // Without TCP_NODELAY a small push frame written while the previous one is still
        // unacknowledged waits for the client's delayed ACK (~40 ms on Linux).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::trace!(%error, "cannot set TCP_NODELAY");
        }
        let io = TokioIo::new(Guarded::new(stream, limits.idle_timeout, permit));
        let service = service.clone();
        let handler = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            service.clone().oneshot(request.map(axum::body::Body::new))
        });
        let connection = http.serve_connection(io, handler).with_upgrades();
        let stop = shutdown.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Writes the `503` without waiting (a full send buffer just loses it) and closes.
fn refuse(stream: &TcpStream) {
    metrics::counter!("lastseen_tcp_connections_refused_total").increment(1);
    let _ = stream.try_write(REFUSED);
}

/// After a failed accept: out of file descriptors (or memory) lasts until connections close,
/// so wait a little instead of spinning; a connection reset before it was accepted is nothing.
async fn pause_after(error: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted
    ) {
        return;
    }
    tracing::warn!(%error, "accept failed; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A TCP stream holding its connection permit, whose reads and writes fail with `TimedOut`
/// once nothing was read or written for `idle`.
///
/// Progress only notes the time; the timer is moved when it fires early (there was progress
/// since it was set), so a busy connection moves it once per `idle` rather than twice per
/// request (each move takes the timer wheel's lock).
struct Guarded {
    stream: TcpStream,
    idle: Duration,
    /// When something was last read or written.
    last_progress: Instant,
    /// Fires at or before the idle deadline, `last_progress + idle` (give or take the moment
    /// between reading the clock for each).
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Guarded {
    fn new(stream: TcpStream, idle: Duration, permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!("lastseen_tcp_connections").increment(1.0);
        Self {
            stream,
            idle,
            last_progress: Instant::now(),
            deadline: Box::pin(tokio::time::sleep(idle)),
            _permit: permit,
        }
    }

    /// A write poll's result: progress refreshes the idle deadline, waiting checks it.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    self.touched();
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.pending_or_timed_out(cx),
        }
    }

    fn touched(&mut self) {
        self.last_progress = Instant::now();
    }

    /// `Pending`, unless the idle deadline passed (then the error ends the connection).
    fn pending_or_timed_out<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        while self.deadline.as_mut().poll(cx).is_ready() {
            let due = self.last_progress + self.idle;
            if due <= self.deadline.deadline() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for too long",
                )));
            }
            // Progress since the timer was set: it fires again at the true deadline.
            self.deadline.as_mut().reset(due);
        }
        Poll::Pending
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        metrics::gauge!("lastseen_tcp_connections").decrement(1.0);
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.touched();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.pending_or_timed_out(cx),
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.after_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The soft limit on open files of this process (Linux `/proc/self/limits`), if known.
pub fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Descriptors kept free of client connections: the database and Redis pools, the listener,
/// webhook clients, log files.
pub const RESERVED_FILES: usize = 64;
