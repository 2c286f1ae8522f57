//! SQLite's worker threads run below the request workers' priority.
//!
//! sqlx runs each SQLite connection on a thread of its own. The write-behind's transactions
//! run there, and on a machine whose cores the request workers keep busy, a transaction that
//! takes a core for a few milliseconds delays every request queued on that core by as much:
//! that is the heartbeat tail `scripts/bench ceiling` measures at half of the maximum rate. At
//! a lower priority (nice 5) the scheduler lets a woken request worker preempt the writer, and
//! the writer still gets its weight's share of a busy core (335 against 1,024 for a nice-0
//! thread: about a quarter of a core it shares with one busy worker), and all of an idle one.
//! An overloaded server then writes its write-behind later, in larger batches, rather than
//! answering requests later. The same threads answer the reads of requests that miss the
//! caches (a token's first use, a login, privacy look-ups); under saturation those wait
//! behind the request workers too.
//!
//! The threads are named by [`thread_name`]; [`lower_worker_threads`] finds them by name in
//! `/proc/self/task` after a connection opens (its thread exists by then), so threads of
//! connections opened later are lowered too. Elsewhere than Linux this does nothing.

/// The name of the worker thread of connection `id`: at most 15 bytes, Linux's limit, so the
/// number repeats after 99 (names need not be unique).
pub(super) fn thread_name(id: u64) -> String {
    format!("{PREFIX}{}", id % 100)
}

/// The start of every SQLite worker thread's name.
const PREFIX: &str = "lastseen-sql-";

/// The niceness of the SQLite worker threads: the request workers run at 0.
const NICE: i32 = 5;

/// Lowers the priority of every SQLite worker thread (again, for those lowered before).
#[cfg(target_os = "linux")]
pub(super) fn lower_worker_threads() {
    unsafe extern "C" {
        fn setpriority(which: u32, who: u32, prio: std::ffi::c_int) -> std::ffi::c_int;
    }
    /// `PRIO_PROCESS`: with a thread id, Linux sets that thread's niceness.
    const PRIO_PROCESS: u32 = 0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let is_worker = std::fs::read_to_string(task.path().join("comm"))
            .is_ok_and(|name| name.starts_with(PREFIX));
        let tid = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok());
        if let (true, Some(tid)) = (is_worker, tid) {
            // SAFETY: `setpriority` takes no pointer; a thread that ended since it was listed
            // only makes it fail with ESRCH, which is ignored like any other failure (the
            // thread then keeps the default priority).
            unsafe {
                setpriority(PRIO_PROCESS, tid, NICE);
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn lower_worker_threads() {}
