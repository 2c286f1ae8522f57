//! Deadline index of one shard: users' next deadlines bucketed into fixed-width slots.
//!
//! Each user with something pending (a session that may end, turn idle, or a manual status
//! that resets itself) has exactly one entry, at its earliest deadline. A heartbeat does not
//! touch the index at all (it only moves the session's end later); when the slot fires, the
//! engine re-checks the user and re-arms it once at its true next deadline. So a heartbeat is
//! O(1), a tick is O(entries due), and nothing accumulates. Entries are never early: a slot
//! fires at or after every deadline it holds, and at most one slot width late.

use std::collections::BTreeMap;

use tokio::time::{Duration, Instant};

use crate::domain::UserId;

/// Width of one slot: the most an offline event can be late, on top of task scheduling.
pub const SLOT: Duration = Duration::from_millis(100);

/// The slot holding `deadline` for slots counted from `origin`: the first slot that starts at
/// or after it.
pub fn slot_of(origin: Instant, deadline: Instant) -> u64 {
    let since = deadline.saturating_duration_since(origin).as_nanos();
    u64::try_from(since.div_ceil(SLOT.as_nanos())).unwrap_or(u64::MAX)
}

/// A slot number as users remember it: 32 bits are 13 years of 100 ms slots; later slots all
/// read as the last one, which only makes their entries fire as re-checks of each other.
pub fn slot32(slot: u64) -> u32 {
    u32::try_from(slot).unwrap_or(u32::MAX)
}

/// Session deadlines of one shard, grouped by slot number.
#[derive(Debug)]
pub struct DeadlineIndex {
    /// Slot 0 starts here; shared by all shards of an engine.
    origin: Instant,
    /// Slot number -> users armed in it.
    slots: BTreeMap<u64, Vec<UserId>>,
}

impl DeadlineIndex {
    /// An empty index whose slot numbers count from `origin`.
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            slots: BTreeMap::new(),
        }
    }

    /// The slot holding `deadline`: the first slot that starts at or after it.
    pub fn slot_of(&self, deadline: Instant) -> u64 {
        slot_of(self.origin, deadline)
    }

    /// The instant at which `slot` fires.
    pub fn slot_start(&self, slot: u64) -> Instant {
        let nanos = u64::try_from(SLOT.as_nanos()).unwrap_or(u64::MAX);
        self.origin + Duration::from_nanos(nanos.saturating_mul(slot))
    }

    /// Arms `user` at `deadline`; returns the slot, which the user must remember.
    pub fn arm(&mut self, deadline: Instant, user: UserId) -> u64 {
        let slot = self.slot_of(deadline);
        self.slots.entry(slot).or_default().push(user);
        slot
    }

    /// When the earliest slot fires, if any entry is armed.
    pub fn next_due(&self) -> Option<Instant> {
        self.slots.keys().next().map(|&slot| self.slot_start(slot))
    }

    /// Removes and returns every slot that has fired by `now`, as `(slot, entries)`.
    pub fn take_due(&mut self, now: Instant) -> Vec<(u64, Vec<UserId>)> {
        let mut due = Vec::new();
        // The last slot whose start is at or before `now`.
        let elapsed = now.saturating_duration_since(self.origin).as_nanos() / SLOT.as_nanos();
        let last_due = u64::try_from(elapsed).unwrap_or(u64::MAX);
        while let Some(entry) = self.slots.first_entry() {
            if *entry.key() > last_due {
                break;
            }
            due.push(entry.remove_entry());
        }
        due
    }

    /// Number of armed entries (for tests and metrics).
    pub fn len(&self) -> usize {
        self.slots.values().map(Vec::len).sum()
    }

    /// Whether no entry is armed.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_never_fire_before_their_deadlines() {
        let origin = Instant::now();
        let mut index = DeadlineIndex::new(origin);
        let deadline = origin + Duration::from_millis(250);
        let slot = index.arm(deadline, UserId(1));
        assert!(index.slot_start(slot) >= deadline);
        assert!(index.slot_start(slot) < deadline + SLOT);
        assert!(
            index
                .take_due(deadline - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(index.take_due(index.slot_start(slot)).len(), 1);
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn take_due_returns_only_fired_slots_in_order() {
        let origin = Instant::now();
        let mut index = DeadlineIndex::new(origin);
        for ms in [900, 100, 500] {
            index.arm(origin + Duration::from_millis(ms), UserId(ms as i64));
        }
        assert_eq!(index.next_due(), Some(origin + Duration::from_millis(100)));
        let due = index.take_due(origin + Duration::from_millis(600));
        let users: Vec<_> = due.iter().map(|(_, e)| e[0]).collect();
        assert_eq!(users, vec![UserId(100), UserId(500)]);
        assert_eq!(index.len(), 1);
    }
}
