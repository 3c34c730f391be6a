//! All buckets by id: a vector for the bucket counts Discord hands out, a sorted map
//! for anything larger.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::buckets::{Bucket, BucketId};

/// Up to this many buckets are kept in a vector indexed by bucket id: no lookups,
/// and at most a few hundred KiB even when all exist. Discord's `max_concurrency` is
/// 1, 16, 32, 64 and so on; a larger value (only a fuzzer sends `u32::MAX`) gets a map.
const DENSE_MAX: u32 = 4096;

/// A sparse table forgets idle buckets once it holds at least this many.
const MIN_SWEEP: usize = 64;

#[derive(Clone, Debug)]
pub(crate) enum BucketTable {
    Dense(Vec<Bucket>),
    Sparse {
        map: BTreeMap<BucketId, Bucket>,
        /// Forget idle buckets when there are this many, so that memory follows the
        /// buckets in use, not every bucket ever used.
        sweep_at: usize,
    },
}

/// [`BucketTable::get_or_insert`] for the sparse table: out of line, so that the
/// dense table's lookup on the hot path stays a bounds check.
#[inline(never)]
fn sparse_get_or_insert<'a>(
    map: &'a mut BTreeMap<BucketId, Bucket>,
    sweep_at: &mut usize,
    id: BucketId,
    now: Instant,
) -> &'a mut Bucket {
    if !map.contains_key(&id) && map.len() >= *sweep_at {
        map.retain(|_, bucket| !bucket.is_idle(now));
        *sweep_at = MIN_SWEEP.max(2 * map.len());
    }
    map.entry(id).or_insert_with(Bucket::new)
}

impl BucketTable {
    pub(crate) fn new(max_concurrency: u32) -> Self {
        if max_concurrency <= DENSE_MAX {
            // Room for every bucket up front (not touched until used): growing one
            // bucket at a time costs a start-up of 1,000 shards a reallocation per
            // bucket.
            Self::Dense(Vec::with_capacity(max_concurrency as usize))
        } else {
            Self::Sparse {
                map: BTreeMap::new(),
                sweep_at: MIN_SWEEP,
            }
        }
    }

    #[inline]
    pub(crate) fn get(&self, id: BucketId) -> Option<&Bucket> {
        match self {
            Self::Dense(buckets) => buckets.get(id as usize),
            Self::Sparse { map, .. } => map.get(&id),
        }
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, id: BucketId) -> Option<&mut Bucket> {
        match self {
            Self::Dense(buckets) => buckets.get_mut(id as usize),
            Self::Sparse { map, .. } => map.get_mut(&id),
        }
    }

    /// Bucket `id`, made if absent; idle buckets (as of `now`) may be forgotten first.
    #[inline]
    pub(crate) fn get_or_insert(&mut self, id: BucketId, now: Instant) -> &mut Bucket {
        match self {
            Self::Dense(buckets) => {
                let index = id as usize;
                if index >= buckets.len() {
                    buckets.resize_with(index + 1, Bucket::new);
                }
                &mut buckets[index]
            }
            Self::Sparse { map, sweep_at } => sparse_get_or_insert(map, sweep_at, id, now),
        }
    }

    /// Calls `visit` with every bucket, in id order.
    pub(crate) fn for_each_mut(&mut self, mut visit: impl FnMut(BucketId, &mut Bucket)) {
        match self {
            Self::Dense(buckets) => {
                for (id, bucket) in (0..).zip(buckets.iter_mut()) {
                    visit(id, bucket);
                }
            }
            Self::Sparse { map, .. } => {
                for (&id, bucket) in map.iter_mut() {
                    visit(id, bucket);
                }
            }
        }
    }

    /// Buckets held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Dense(buckets) => buckets.len(),
            Self::Sparse { map, .. } => map.len(),
        }
    }
}
