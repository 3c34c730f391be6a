//! The index of queued shards: which shards wait, under which sequence number.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::limit::ShardId;

/// A request's place in line. 32 bits keep a queued shard within the memory target
/// (SPEC section 4); the scheduler renumbers before they run out.
pub(crate) type Seq = u32;

/// Queued shard to the sequence number of its request.
///
/// A bucket's FIFO holds `(seq, shard)` entries and leaves cancelled ones in place; an
/// entry is live exactly when this map still gives its shard that seq.
pub(crate) type ShardMap = HashMap<ShardId, Seq, BuildHasherDefault<ShardHasher>>;

/// A fixed multiply-fold hash for shard ids.
///
/// Fixed, not random: decisions never depend on iteration order anyway, but a fixed
/// hash keeps even memory layout reproducible, and it is several times faster than
/// SipHash for a `u32` key. The fold mixes every input bit into both the high bits
/// (hashbrown's tag) and the low bits (its slot).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ShardHasher(u64);

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl ShardHasher {
    fn mix(&mut self, value: u64) {
        let product = u128::from(self.0 ^ value) * u128::from(MULTIPLIER);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for ShardHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.mix(u64::from(byte));
        }
    }

    fn write_u32(&mut self, value: u32) {
        self.mix(u64::from(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn dense_ids_spread_over_low_and_high_bits() {
        let build = BuildHasherDefault::<ShardHasher>::default();
        let mut low = std::collections::BTreeSet::new();
        let mut high = std::collections::BTreeSet::new();
        for shard in 0u32..1024 {
            let hash = build.hash_one(shard);
            low.insert(hash & 0x3ff);
            high.insert(hash >> 57);
        }
        // A perfect spread would hit all 1,024 low slots and all 128 tags.
        assert!(low.len() > 600, "low bits hit {} of 1024", low.len());
        assert_eq!(high.len(), 128);
    }
}
