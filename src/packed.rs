//! A map whose records sit packed in one `Vec`, found through a hash table of 4-byte
//! positions: what the engine's users and the session cache are kept in, where there are a
//! million small records.
//!
//! A hash table of the records themselves keeps every bucket a record wide, and a hash table is
//! between 44% and 87% full depending on where its size falls between two doublings, so at
//! times twice the records' size. Here only the positions (5 bytes per bucket with the control
//! byte) are spread out; the records are packed. Removing a record moves the last one into its
//! place.

use hashbrown::HashTable;

/// A key of a [`Packed`] map.
pub trait PackedKey: Copy + Eq {
    /// The key's hash for the table. hashbrown uses its top 7 bits as a tag, so they must vary
    /// among the keys of one map (not be the bits that chose its shard, say).
    fn table_hash(&self) -> u64;
}

/// A map from `K` to `V`; see the module docs.
#[derive(Debug)]
pub struct Packed<K, V> {
    /// Positions in `records`, hashed by the key stored there.
    index: HashTable<u32>,
    /// The records, in no particular order.
    records: Vec<(K, V)>,
}

impl<K, V> Default for Packed<K, V> {
    fn default() -> Self {
        Self {
            index: HashTable::new(),
            records: Vec::new(),
        }
    }
}

/// Position `p` as a `Vec` index.
fn at(p: u32) -> usize {
    p as usize
}

impl<K: PackedKey, V> Packed<K, V> {
    /// The position of `key`'s record.
    fn position(&self, key: &K) -> Option<u32> {
        let records = &self.records;
        self.index
            .find(key.table_hash(), |&p| records[at(p)].0 == *key)
            .copied()
    }

    /// Number of records.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Makes room for `more` records without growing.
    pub fn reserve(&mut self, more: usize) {
        self.records.reserve_exact(more);
        let records = &self.records;
        self.index.reserve(more, |&p| records[at(p)].0.table_hash());
    }

    /// `key`'s value.
    pub fn get(&self, key: &K) -> Option<&V> {
        let position = self.position(key)?;
        Some(&self.records[at(position)].1)
    }

    /// `key`'s value, mutably.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let position = self.position(key)?;
        Some(&mut self.records[at(position)].1)
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &K) -> bool {
        self.position(key).is_some()
    }

    /// `key`'s value, made by `make` first if it has none.
    ///
    /// # Panics
    /// Past 4 billion records, which no shard of this server comes near.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        let position = match self.position(&key) {
            Some(position) => position,
            None => self.push(key, make()),
        };
        &mut self.records[at(position)].1
    }

    /// Sets `key`'s value.
    ///
    /// # Panics
    /// As [`Packed::get_or_insert_with`].
    pub fn insert(&mut self, key: K, value: V) {
        match self.position(&key) {
            Some(position) => self.records[at(position)].1 = value,
            None => {
                self.push(key, value);
            }
        }
    }

    /// Appends a record whose key is known to be absent; returns its position.
    fn push(&mut self, key: K, value: V) -> u32 {
        let position = u32::try_from(self.records.len())
            .expect("BUG: more than 4 billion records in one packed table");
        self.records.push((key, value));
        let records = &self.records;
        self.index.insert_unique(key.table_hash(), position, |&p| {
            records[at(p)].0.table_hash()
        });
        position
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let records = &self.records;
        let entry = self
            .index
            .find_entry(key.table_hash(), |&p| records[at(p)].0 == *key)
            .ok()?;
        let (position, _) = entry.remove();
        let (_, value) = self.records.swap_remove(at(position));
        // The last record moved into the hole (unless it was the one removed): repoint it.
        if let Some((moved, _)) = self.records.get(at(position)) {
            let last = u32::try_from(self.records.len()).unwrap_or(u32::MAX);
            if let Some(p) = self.index.find_mut(moved.table_hash(), |&p| p == last) {
                *p = position;
            }
        }
        Some(value)
    }

    /// Drops every record.
    pub fn clear(&mut self) {
        self.index.clear();
        self.records.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Id(u64);

    impl PackedKey for Id {
        fn table_hash(&self) -> u64 {
            self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        }
    }

    #[test]
    fn inserts_finds_and_removes_keeping_the_others_reachable() {
        let mut table = Packed::default();
        for id in 0..1000 {
            table.get_or_insert_with(Id(id), || id);
        }
        assert_eq!(table.len(), 1000);
        for id in (0..1000).step_by(3) {
            assert_eq!(table.remove(&Id(id)), Some(id));
            assert!(table.remove(&Id(id)).is_none());
        }
        for id in 0..1000 {
            let found = table.get(&Id(id)).copied();
            assert_eq!(found, (id % 3 != 0).then_some(id), "record {id}");
            assert_eq!(table.contains_key(&Id(id)), id % 3 != 0);
        }
        table.insert(Id(1), 77);
        table.get_or_insert_with(Id(1), || 0);
        assert_eq!(table.get(&Id(1)), Some(&77));
        if let Some(value) = table.get_mut(&Id(2)) {
            *value = 5;
        }
        assert_eq!(table.get(&Id(2)), Some(&5));
        assert_eq!(table.len(), 666);
        table.clear();
        assert!(table.len() == 0 && table.get(&Id(1)).is_none());
    }
}
