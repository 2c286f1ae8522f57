//! Micro-benchmarks of the in-process presence engine through its public API.
//!
//! Run with `cargo bench --bench engine` (or `scripts/bench engine`). The Prometheus recorder
//! is installed first, so the engine's counters cost what they cost in the server.
//!
//! The in-process backend's async methods never wait, so they are polled once with a no-op
//! waker instead of going through a runtime: the figures are the engine's work, not a
//! scheduler's. The exception is collecting the dirty users for a flush, which yields between
//! shards; it runs on a current-thread runtime. Expiry with due deadlines uses a paused tokio clock inside a runtime, so the
//! deadlines come due without real waiting.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use lastseen::domain::{Activity, SessionId, SessionRef, UserId};
use lastseen::engine::local::LocalBackend;
use lastseen::engine::{Maintenance, PresenceBackend};

const TIMEOUT: Duration = Duration::from_secs(300);

/// Completes a future that never waits (the in-process backend's).
fn ready<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("BUG: the in-process backend never waits"),
    }
}

/// An engine with `n` online users, user `i` having session `i`, their dirty marks taken as
/// the persister would.
fn populated(n: i64) -> LocalBackend {
    let engine = LocalBackend::new(TIMEOUT, None);
    for i in 0..n {
        ready(engine.touch(
            UserId(i),
            SessionRef::web(SessionId(i)),
            Activity::Keepalive,
        ))
        .expect("in-process touch never fails");
    }
    drop(collect(&engine));
    engine
}

/// The dirty users' writes, as the persister takes them. Unlike the other operations this one
/// yields between shards, so it runs on a runtime rather than being polled once.
fn collect(engine: &LocalBackend) -> Vec<lastseen::domain::PresenceWrite> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("BUG: a current-thread runtime always builds")
        .block_on(engine.take_dirty())
}

fn heartbeat(c: &mut Criterion) {
    lastseen::telemetry::metrics_handle();
    let mut group = c.benchmark_group("heartbeat_existing_session");
    for n in [10_000_i64, 1_000_000] {
        let engine = populated(n);
        let mut i = 0;
        group.bench_function(format!("{n}_online"), |b| {
            b.iter(|| {
                // Rotate through users, as heartbeats from many clients do.
                i = (i + 1) % n;
                black_box(ready(engine.touch(
                    UserId(i),
                    SessionRef::web(SessionId(i)),
                    Activity::Keepalive,
                )))
            });
        });
    }
    group.finish();
}

fn new_session(c: &mut Criterion) {
    lastseen::telemetry::metrics_handle();
    const BASE: i64 = 10_000;
    c.bench_function("login_new_session", |b| {
        b.iter_custom(|iters| {
            // A fresh engine per sample, so its size stays near BASE + one sample.
            let engine = populated(BASE);
            let start = std::time::Instant::now();
            for k in 0..iters {
                let id = BASE + i64::try_from(k).expect("iteration count fits i64");
                black_box(
                    ready(engine.touch(
                        UserId(id),
                        SessionRef::web(SessionId(id)),
                        Activity::Keepalive,
                    ))
                    .ok(),
                );
            }
            start.elapsed()
        });
    });
}

fn expiry(c: &mut Criterion) {
    lastseen::telemetry::metrics_handle();
    let mut group = c.benchmark_group("expiry");

    let engine = populated(1_000_000);
    group.bench_function("tick_1000000_online_none_due", |b| {
        b.iter(|| black_box(ready(engine.expire_due())));
    });
    drop(engine);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("BUG: a current-thread runtime always builds");
    group.sample_size(20);
    group.bench_function("10000_due_at_once", |b| {
        b.iter_batched(
            || {
                runtime.block_on(async {
                    let engine = populated(10_000);
                    tokio::time::advance(TIMEOUT + Duration::from_secs(1)).await;
                    engine
                })
            },
            |engine| {
                let _clock = runtime.enter();
                let offline = ready(engine.expire_due()).expect("in-process expiry never fails");
                assert_eq!(offline, 10_000);
                engine
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// Collecting a flush's writes: how long one `take_dirty` would hold a request worker if it
/// did not yield between shards (100,000 dirty users is about a second of heartbeats from
/// 3,000,000 clients beating every 30 s).
fn flush_collection(c: &mut Criterion) {
    lastseen::telemetry::metrics_handle();
    let mut group = c.benchmark_group("take_dirty");
    group.sample_size(10);
    let engine = populated(100_000);
    group.bench_function("100000_dirty", |b| {
        b.iter_batched(
            || {
                for i in 0..100_000 {
                    ready(engine.touch(
                        UserId(i),
                        SessionRef::web(SessionId(i)),
                        Activity::Keepalive,
                    ))
                    .expect("in-process touch never fails");
                }
            },
            |()| {
                let writes = collect(&engine);
                assert_eq!(writes.len(), 100_000);
                writes
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, heartbeat, new_session, expiry, flush_collection);
criterion_main!(benches);
