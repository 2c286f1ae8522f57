//! Engine memory per online session: the process's RSS, and the bytes the heap actually holds,
//! before and after bringing N sessions (one per user) online in the in-process engine.
//!
//! `cargo run --release --example engine_memory -- [SESSIONS] [restore]` (default 1,000,000):
//! with `restore`, the sessions are rebuilt in one `restore` call, as at start-up, instead of
//! one heartbeat each.
//! RSS includes the allocator's slack (memory freed while tables and vectors grew, kept by the
//! allocator for reuse) and the hash tables' spare capacity; that is the figure. The
//! live heap bytes, counted by a wrapper around the system allocator, show how much of it is
//! the engine's data.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lastseen::domain::{
    Activity, ManualStatus, Platform, RestoredUser, SessionId, SessionRef, StoredSession, UserId,
};
use lastseen::engine::local::LocalBackend;
use lastseen::engine::{Maintenance, PresenceBackend};

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and only
// adds bookkeeping on an atomic counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<usize>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn report(label: &str, rss: usize, live: usize, base: (usize, usize), sessions: usize) {
    let per = |now: usize, then: usize| now.saturating_sub(then) as f64 / sessions.max(1) as f64;
    println!(
        "{label:<26} RSS {:>7.1} MiB ({:>4.0} B/session)   live heap {:>7.1} MiB ({:>4.0} B/session)",
        rss as f64 / 1048576.0,
        per(rss, base.0),
        live as f64 / 1048576.0,
        per(live, base.1),
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // SAFETY: a current-thread runtime, and nothing spawned yet: no other thread exists.
    // The server's allocator settings, so this measures what the server does.
    unsafe { lastseen::heap::tune() };
    let sessions: usize = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |a| a.parse())
        .expect("SESSIONS must be a number");
    let engine = LocalBackend::new(Duration::from_secs(300), None);
    // One touch first, so lazily created statics are not counted.
    engine
        .touch(
            UserId(-1),
            SessionRef::web(SessionId(-1)),
            Activity::Keepalive,
        )
        .await
        .ok();
    let base = (rss_bytes(), LIVE.load(Ordering::Relaxed));
    let count = i64::try_from(sessions).expect("SESSIONS fits i64");
    if std::env::args().nth(2).as_deref() == Some("restore") {
        let now = chrono::Utc::now();
        let users = (0..count)
            .map(|i| RestoredUser {
                user_id: UserId(i),
                seq: 1,
                last_seen: Some(now),
                sessions: vec![StoredSession {
                    id: SessionId(i),
                    last_activity: now,
                    expires_at: now + chrono::Duration::seconds(300),
                    platform: Platform::Web,
                }],
                manual: ManualStatus::default(),
            })
            .collect();
        engine.restore(users).await.ok();
    } else {
        for i in 0..count {
            engine
                .touch(
                    UserId(i),
                    SessionRef::web(SessionId(i)),
                    Activity::Keepalive,
                )
                .await
                .ok();
        }
    }
    let online = engine.online_count().await.unwrap_or(1);
    println!("online sessions: {}", online - 1);
    report("before", base.0, base.1, base, sessions);
    report(
        "sessions online",
        rss_bytes(),
        LIVE.load(Ordering::Relaxed),
        base,
        sessions,
    );
    // What the persister does every `persist_interval`: the dirty lists are emptied.
    drop(engine.take_dirty().await);
    report(
        "after a flush",
        rss_bytes(),
        LIVE.load(Ordering::Relaxed),
        base,
        sessions,
    );
}
