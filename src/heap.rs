//! The process's allocator settings (glibc's malloc) and giving free memory back.
//!
//! What it owns: how the heap is tuned before the server starts, and the one call that returns
//! pages the heap holds free. What it does not own: deciding when that is worth it (the engine
//! does it after a restore).

/// Tunes glibc's allocator for a server that holds a million small records for its lifetime
/// and frees large bursts of short-lived ones. The binary's `main` calls it first; so does the
/// engine memory example, so that it measures what the server does.
///
/// - Allocations of 128 KiB and more that no free heap block can serve get pages of their own,
///   returned to the system when freed. glibc starts there too but raises the threshold to the
///   size of every such block freed, so once the session cache's and the engine's tables have
///   doubled a few times, their next doublings come from the heap and leave holes in it that
///   stay resident (with every token of 1,000,000 sessions cached: 240 -> 224 bytes per
///   session, docs/BENCHMARKS.md).
/// - No fast bins: glibc keeps freed chunks of up to 128 bytes on per-size lists without
///   merging them with their neighbours until something consolidates them, so a burst of
///   small allocations freed together (a flush of 1,000,000 changed users writes one small
///   session list each) stayed resident, ~38 MiB after that flush. The per-thread cache (seven
///   chunks per size) still serves the request path's reuse; the rest merges when freed.
///
/// # Safety
/// No other thread may exist yet: `mallopt` changes settings that other threads read without
/// a lock, and lowering the fast-bin limit while other arenas hold fast chunks strands them.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub unsafe fn tune() {
    unsafe extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    /// glibc's `M_MXFAST`.
    const M_MXFAST: std::ffi::c_int = 1;
    /// glibc's `M_MMAP_THRESHOLD`.
    const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
    // SAFETY: the caller guarantees no other thread exists; `mallopt` takes no pointer, and a
    // refusal (its 0) only leaves glibc's default in place.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 128 * 1024);
        mallopt(M_MXFAST, 0);
    }
}

/// Without glibc, the allocator's defaults.
///
/// # Safety
/// None needed; `unsafe` to match the glibc version.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub unsafe fn tune() {}

/// Returns the heap memory that is free to the OS: pages inside free chunks of every arena,
/// not only the top of the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: `malloc_trim` takes no pointer and only releases pages glibc's allocator holds
    // free; it is safe to call from any thread at any time.
    unsafe {
        malloc_trim(0);
    }
}

/// Without glibc, nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free() {}
