//! The users of one engine shard, stored densely ([`Packed`]): at 1,000,000 users over 64
//! shards a hash map of the records themselves was 48% full, about 190 bytes per 88-byte user.

use super::state::UserState;
use crate::domain::UserId;
use crate::packed::{Packed, PackedKey};

/// A map from user id to [`UserState`].
pub type UserTable = Packed<UserId, UserState>;

/// The shards pick users by the high bits of a multiplicative hash, so within one shard those
/// bits are nearly constant; hashbrown uses the top 7 bits as its tag, so the id is mixed again
/// (MurmurHash3's finaliser) rather than reused.
impl PackedKey for UserId {
    fn table_hash(&self) -> u64 {
        let mut h = self.0 as u64;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}
