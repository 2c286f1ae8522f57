//! The users of one engine shard, stored densely: the records in one `Vec`, found through a hash
//! table of 4-byte positions.
//!
//! A hash map of the records themselves keeps every bucket a record wide, and a hash table is
//! between 44% and 87% full depending on where its size falls between two doublings (at
//! 1,000,000 users over 64 shards it is 48% full): about 190 bytes per 88-byte user. Here only
//! the positions (5 bytes per bucket with the control byte) are spread out; the records are
//! packed. Removing a user moves the last record into its place.

use hashbrown::HashTable;

use super::state::UserState;
use crate::domain::UserId;

/// A map from user id to [`UserState`].
#[derive(Debug, Default)]
pub struct UserTable {
    /// Positions in `records`, hashed by the id stored there.
    index: HashTable<u32>,
    /// The users, in no particular order.
    records: Vec<(UserId, UserState)>,
}

/// The table's hash of a user id. The shards pick users by the high bits of a multiplicative
/// hash, so within one shard those bits are nearly constant; hashbrown uses the top 7 bits as
/// its tag, so the id is mixed again (MurmurHash3's finaliser) rather than reused.
fn hash(id: UserId) -> u64 {
    let mut h = id.0 as u64;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Position `at` as a `Vec` index.
fn at(position: u32) -> usize {
    position as usize
}

impl UserTable {
    /// The position of `id`'s record.
    fn position(&self, id: UserId) -> Option<u32> {
        let records = &self.records;
        self.index
            .find(hash(id), |&p| records[at(p)].0 == id)
            .copied()
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there is no user.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Makes room for `more` users without growing.
    pub fn reserve(&mut self, more: usize) {
        self.records.reserve_exact(more);
        let records = &self.records;
        self.index.reserve(more, |&p| hash(records[at(p)].0));
    }

    /// `id`'s state.
    pub fn get(&self, id: &UserId) -> Option<&UserState> {
        let position = self.position(*id)?;
        Some(&self.records[at(position)].1)
    }

    /// `id`'s state, mutably.
    pub fn get_mut(&mut self, id: &UserId) -> Option<&mut UserState> {
        let position = self.position(*id)?;
        Some(&mut self.records[at(position)].1)
    }

    /// `id`'s state, made by `make` first if `id` has none.
    pub fn get_or_insert_with(
        &mut self,
        id: UserId,
        make: impl FnOnce() -> UserState,
    ) -> &mut UserState {
        let position = match self.position(id) {
            Some(position) => position,
            None => self.push(id, make()),
        };
        &mut self.records[at(position)].1
    }

    /// Sets `id`'s state.
    pub fn insert(&mut self, id: UserId, state: UserState) {
        match self.position(id) {
            Some(position) => self.records[at(position)].1 = state,
            None => {
                self.push(id, state);
            }
        }
    }

    /// Appends a user known to be absent; returns its position.
    fn push(&mut self, id: UserId, state: UserState) -> u32 {
        let position = u32::try_from(self.records.len())
            .expect("BUG: more than 4 billion users in one engine shard");
        self.records.push((id, state));
        let records = &self.records;
        self.index
            .insert_unique(hash(id), position, |&p| hash(records[at(p)].0));
        position
    }

    /// Removes `id`, returning its state.
    pub fn remove(&mut self, id: &UserId) -> Option<UserState> {
        let records = &self.records;
        let entry = self
            .index
            .find_entry(hash(*id), |&p| records[at(p)].0 == *id)
            .ok()?;
        let (position, _) = entry.remove();
        let (_, state) = self.records.swap_remove(at(position));
        // The last record moved into the hole (unless it was the one removed): repoint it.
        if let Some((moved, _)) = self.records.get(at(position)) {
            let last = u32::try_from(self.records.len()).unwrap_or(u32::MAX);
            if let Some(p) = self.index.find_mut(hash(*moved), |&p| p == last) {
                *p = position;
            }
        }
        Some(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ManualStatus;

    fn user(seq: u64) -> UserState {
        UserState::offline(seq, None, ManualStatus::default())
    }

    #[test]
    fn inserts_finds_and_removes_keeping_the_others_reachable() {
        let mut table = UserTable::default();
        for id in 0..1000 {
            table.get_or_insert_with(UserId(id), || user(id as u64));
        }
        assert_eq!(table.len(), 1000);
        for id in (0..1000).step_by(3) {
            assert_eq!(table.remove(&UserId(id)).map(|u| u.seq), Some(id as u64));
            assert!(table.remove(&UserId(id)).is_none());
        }
        for id in 0..1000 {
            let found = table.get(&UserId(id)).map(|u| u.seq);
            assert_eq!(found, (id % 3 != 0).then_some(id as u64), "user {id}");
        }
        table.insert(UserId(1), user(77));
        table.get_or_insert_with(UserId(1), || user(0));
        assert_eq!(table.get(&UserId(1)).map(|u| u.seq), Some(77));
        if let Some(u) = table.get_mut(&UserId(2)) {
            u.seq = 5;
        }
        assert_eq!(table.get(&UserId(2)).map(|u| u.seq), Some(5));
        assert_eq!(table.len(), 666);
    }
}
