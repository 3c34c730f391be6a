//! An index keyed by shard id: which shards wait, under which sequence number.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use crate::limit::ShardId;

/// A request's place in line. 32 bits keep a queued shard within the memory target
/// ([rules 4](crate::rules)); the scheduler renumbers before they run out, so
/// `Seq::MAX` is never a live number.
pub(crate) type Seq = u32;

/// Queued shard to the sequence number of its request.
///
/// A bucket's FIFO holds `(seq, shard)` entries and leaves cancelled ones in place; an
/// entry is live exactly when this map still gives its shard that seq.
pub(crate) type ShardMap = ShardIndex<Seq>;

/// A value type with a spare value that marks an empty slot.
pub(crate) trait Vacant: Copy + Eq {
    const VACANT: Self;
}

impl Vacant for u32 {
    const VACANT: Self = u32::MAX;
}

impl Vacant for u64 {
    const VACANT: Self = u64::MAX;
}

/// A map from shard id to a small value, fast for the ids bots use.
///
/// Shard ids are mostly `0..shard_count`: those live in a vector indexed by id, so a
/// big bot's start-up walks memory in order instead of missing the cache on every
/// hashed lookup (at 1,000,000 shards that is the difference between flat and 3x
/// slower per shard). Ids far beyond the number of entries (a fuzzer's `u32::MAX`, a
/// cluster's strided ids) go to a hash map, so the vector never holds more than about
/// two slots per entry it ever had.
#[derive(Clone, Default)]
pub(crate) struct ShardIndex<V> {
    /// Shards below `dense.len()`: their value, or `V::VACANT`.
    dense: Vec<V>,
    /// Shards at or above `dense.len()`.
    sparse: HashMap<ShardId, V, BuildHasherDefault<ShardHasher>>,
    len: usize,
}

/// The dense part may always grow to this many slots.
const DENSE_FLOOR: usize = 1024;

// Lookups of dense ids are inlined, the rest kept out of line: the call itself, with
// the registers the hash map's path needs saved and restored, is most of the cost
// (callgrind on `benches/compare`'s `--profile ours`).
impl<V: Vacant> ShardIndex<V> {
    #[inline]
    pub(crate) fn get(&self, shard: ShardId) -> Option<V> {
        match self.dense.get(shard as usize) {
            Some(&value) => (value != V::VACANT).then_some(value),
            None if self.sparse.is_empty() => None,
            None => self.sparse_get(shard),
        }
    }

    #[inline(never)]
    fn sparse_get(&self, shard: ShardId) -> Option<V> {
        self.sparse.get(&shard).copied()
    }

    #[inline]
    pub(crate) fn contains_key(&self, shard: ShardId) -> bool {
        self.get(shard).is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets `shard`'s value (which must not be `V::VACANT`); the old one, if any.
    #[inline]
    pub(crate) fn insert(&mut self, shard: ShardId, value: V) -> Option<V> {
        let Some(slot) = self.dense.get_mut(shard as usize) else {
            return self.insert_beyond_dense(shard, value);
        };
        let old = std::mem::replace(slot, value);
        if old == V::VACANT {
            self.len += 1;
            None
        } else {
            Some(old)
        }
    }

    /// [`insert`](Self::insert) of a shard the dense part does not cover (yet).
    #[inline(never)]
    fn insert_beyond_dense(&mut self, shard: ShardId, value: V) -> Option<V> {
        let index = shard as usize;
        self.grow_dense_for(index);
        let old = match self.dense.get_mut(index) {
            Some(slot) => {
                let old = std::mem::replace(slot, value);
                (old != V::VACANT).then_some(old)
            }
            None => self.sparse.insert(shard, value),
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    #[inline]
    pub(crate) fn remove(&mut self, shard: ShardId) -> Option<V> {
        let old = match self.dense.get_mut(shard as usize) {
            Some(slot) => {
                let old = std::mem::replace(slot, V::VACANT);
                (old != V::VACANT).then_some(old)
            }
            None if self.sparse.is_empty() => None,
            None => self.sparse_remove(shard),
        };
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    #[inline(never)]
    fn sparse_remove(&mut self, shard: ShardId) -> Option<V> {
        self.sparse.remove(&shard)
    }

    /// Makes room for `additional` more entries with dense ids.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.dense.reserve(additional);
    }

    /// Every entry; dense ones in id order, then sparse ones in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (ShardId, V)> + '_ {
        let dense = (0..)
            .zip(self.dense.iter().copied())
            .filter(|&(_, value)| value != V::VACANT);
        dense.chain(self.sparse.iter().map(|(&shard, &value)| (shard, value)))
    }

    /// Lets the dense part cover `index` if that keeps it within about two slots per
    /// entry; it grows by doubling, so moving sparse entries over is amortised.
    fn grow_dense_for(&mut self, index: usize) {
        let limit = DENSE_FLOOR.max(2 * (self.len + 1));
        if index >= limit {
            return;
        }
        let old_len = self.dense.len();
        let new_len = (index + 1).max((2 * old_len).min(limit));
        self.dense.resize(new_len, V::VACANT);
        if !self.sparse.is_empty() {
            let moving: Vec<ShardId> = self
                .sparse
                .keys()
                .copied()
                .filter(|&shard| (shard as usize) < new_len)
                .collect();
            for shard in moving {
                if let Some(value) = self.sparse.remove(&shard) {
                    self.dense[shard as usize] = value;
                }
            }
        }
    }
}

impl<V: Vacant + fmt::Debug> fmt::Debug for ShardIndex<V> {
    /// Entries sorted by shard: the same map always prints the same.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut entries: Vec<(ShardId, V)> = self.iter().collect();
        entries.sort_unstable_by_key(|&(shard, _)| shard);
        f.debug_map().entries(entries).finish()
    }
}

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
    use std::collections::BTreeMap;
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

    #[test]
    fn behaves_like_a_map_for_dense_strided_and_huge_ids() {
        let mut index = ShardIndex::<u32>::default();
        let mut reference = BTreeMap::new();
        let mut peak = 0;
        let ids = (0..3000u32).chain((0..500).map(|i| i * 64 + 7)).chain([
            u32::MAX - 1,
            1 << 31,
            5000,
            2999,
        ]);
        for (value, shard) in ids.enumerate() {
            let value = value as u32;
            assert_eq!(index.insert(shard, value), reference.insert(shard, value));
            if value % 3 == 0 {
                assert_eq!(index.remove(shard / 2), reference.remove(&(shard / 2)));
            }
            assert_eq!(index.len(), reference.len());
            peak = peak.max(index.len());
        }
        for (&shard, &value) in &reference {
            assert_eq!(index.get(shard), Some(value));
        }
        assert_eq!(index.get(123_456), None);
        let mut all: Vec<_> = index.iter().collect();
        all.sort_unstable();
        assert_eq!(all, reference.into_iter().collect::<Vec<_>>());
        // At most about two dense slots per entry there ever were.
        assert!(index.dense.len() <= DENSE_FLOOR.max(2 * (peak + 1)));
    }
}
