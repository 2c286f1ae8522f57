//! Sharded state: a fixed number of independently locked parts, chosen by a key's hash, so that
//! operations on different keys rarely wait for each other. The engine, the privacy cache, the
//! push hub and the session cache all hold their state this way.
//!
//! Locks here never poison the server: every critical section in this crate is a few field or
//! collection writes that leave the data consistent, so a panic inside one (a bug) must not turn
//! every later request into a panic too. [`lock`], [`read`] and [`write`] recover the guard.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::domain::UserId;

/// A key that picks a shard: its hash must spread keys evenly over the low and high bits.
pub(crate) trait ShardKey {
    /// A 64-bit hash of the key.
    fn shard_hash(&self) -> u64;
}

impl ShardKey for UserId {
    fn shard_hash(&self) -> u64 {
        // Fibonacci hashing spreads sequential ids (the usual case) over all shards.
        (self.0 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

/// `count` parts of type `T` (a `Mutex` or `RwLock` around each shard's data), chosen by the top
/// bits of a key's hash.
#[derive(Debug)]
pub(crate) struct Sharded<T> {
    shards: Box<[T]>,
    /// `64 - log2(count)`: shifting a hash right by this leaves the shard index.
    shift: u32,
}

impl<T> Sharded<T> {
    /// `count` shards made by `make`.
    ///
    /// # Panics
    /// If `count` is not a power of two (a bug: counts are constants).
    pub(crate) fn new(count: usize, make: impl FnMut() -> T) -> Self {
        assert!(
            count.is_power_of_two(),
            "BUG: shard count must be a power of two"
        );
        Self {
            shards: std::iter::repeat_with(make).take(count).collect(),
            shift: 64 - count.trailing_zeros(),
        }
    }

    /// The shard `key` belongs to.
    pub(crate) fn get(&self, key: &impl ShardKey) -> &T {
        &self.shards[self.index_of(key)]
    }

    /// The position in [`Sharded::all`] of the shard `key` belongs to.
    pub(crate) fn index_of(&self, key: &impl ShardKey) -> usize {
        // With one shard the shift is 64, which `checked_shr` maps to index 0.
        key.shard_hash().checked_shr(self.shift).unwrap_or(0) as usize
    }

    /// Every shard, in a fixed order (for operations over all keys, one shard at a time).
    pub(crate) fn all(&self) -> &[T] {
        &self.shards
    }
}

/// Locks a mutex, recovering it if a panic poisoned it (see the module docs).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Read-locks an `RwLock`, recovering it if a panic poisoned it.
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Write-locks an `RwLock`, recovering it if a panic poisoned it.
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_every_shard() {
        let sharded = Sharded::new(64, || Mutex::new(0_u32));
        for id in 0..6400 {
            *lock(sharded.get(&UserId(id))) += 1;
        }
        for shard in sharded.all() {
            let count = *lock(shard);
            assert!((50..=150).contains(&count), "uneven: {count}");
        }
    }

    #[test]
    fn one_shard_takes_every_key() {
        let sharded = Sharded::new(1, || Mutex::new(0_u32));
        *lock(sharded.get(&UserId(i64::MAX))) += 1;
        assert_eq!(*lock(&sharded.all()[0]), 1);
    }

    #[test]
    fn a_poisoned_lock_still_serves() {
        let mutex = std::sync::Arc::new(Mutex::new(1));
        let poisoner = mutex.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poison");
        })
        .join();
        assert!(mutex.is_poisoned());
        assert_eq!(*lock(&mutex), 1);
    }
}
