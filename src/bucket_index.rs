//! Where each bucket stands, indexed for the scheduler's two questions: whose turn is
//! it (the ready bucket whose head was asked first), and when does the next waiting
//! bucket free. The shape of quinn's `TimerTable`: a few operations, each O(log n)
//! or amortised O(1).
//!
//! Invariant: every bucket of the table is filed here under its `standing` (`Ready`
//! in `ready` and `ready_counts`, `Waiting` in `waiting` and `waiting_count`), and
//! the scheduler calls [`refile`](BucketIndex::refile) whenever it changes one.
//! Entries left behind by a bucket that moved on (stale) are skipped when met and
//! purged when they outnumber the live ones, so the queues stay within twice the
//! buckets.

use std::time::Instant;

use crate::bucket_table::BucketTable;
use crate::buckets::{BucketId, Order, Standing, rank_of};
use crate::min_queue::MinQueue;
use crate::priority::Priority;
use crate::time::Moment;

/// Stale entries tolerated beyond twice the live ones before a purge.
const SLACK: usize = 16;

#[derive(Clone, Debug)]
pub(crate) struct BucketIndex {
    /// Buckets whose first shard is eligible, first in order first (stale entries
    /// included).
    ready: MinQueue<(Order, BucketId)>,
    /// Buckets standing `Ready`, by the priority rank of their first shard.
    ready_counts: [usize; Priority::COUNT],
    /// Non-empty buckets not yet free, soonest first (stale entries included).
    waiting: MinQueue<(Instant, BucketId)>,
    /// Buckets standing `Waiting`.
    waiting_count: usize,
}

impl BucketIndex {
    pub(crate) fn new() -> Self {
        Self {
            ready: MinQueue::new(),
            ready_counts: [0; Priority::COUNT],
            waiting: MinQueue::new(),
            waiting_count: 0,
        }
    }

    /// Forgets every bucket (the table is being rebuilt).
    pub(crate) fn clear(&mut self) {
        *self = Self::new();
    }

    /// Ready buckets whose head is of rank `rank` or a higher class: the eligible
    /// shards ahead of a new request of that rank.
    #[inline]
    pub(crate) fn ready_through(&self, rank: usize) -> usize {
        self.ready_counts[..=rank].iter().sum()
    }

    /// Whether a bucket is ready.
    #[inline]
    pub(crate) fn any_ready(&self) -> bool {
        self.ready_counts.iter().any(|&count| count > 0)
    }

    /// The first ready entry, taken out; it may be stale (the caller checks it against
    /// its bucket's standing, and refiles the bucket it grants from).
    #[inline]
    pub(crate) fn pop_ready(&mut self) -> Option<(Order, BucketId)> {
        self.ready.pop()
    }

    /// Files every waiting bucket free by `clock` as ready; whether any was.
    pub(crate) fn promote_due(&mut self, clock: Instant, buckets: &mut BucketTable) -> bool {
        let mut promoted = false;
        while let Some((at, id)) = self.waiting.pop_if(|&(at, _)| at <= clock) {
            let Some(bucket) = buckets.get_mut(id) else {
                continue;
            };
            if bucket.standing != Standing::Waiting(at) {
                continue;
            }
            let Some(head) = bucket.head_order() else {
                continue;
            };
            bucket.standing = Standing::Ready(head);
            self.waiting_count -= 1;
            self.ready_counts[rank_of(head)] += 1;
            self.ready.push((head, id));
            promoted = true;
        }
        promoted
    }

    /// When the soonest waiting bucket frees (`Never` if none will by itself).
    pub(crate) fn earliest_waiting(&mut self, buckets: &BucketTable) -> Moment {
        while let Some((at, id)) = self.waiting.peek() {
            let current = buckets
                .get(id)
                .is_some_and(|bucket| bucket.standing == Standing::Waiting(at));
            if current {
                return Moment::At(at);
            }
            self.waiting.pop();
        }
        Moment::Never
    }

    /// Moves bucket `id` from where it stood (`old`) to where it stands now.
    #[inline(always)]
    pub(crate) fn refile(
        &mut self,
        id: BucketId,
        old: Standing,
        standing: Standing,
        buckets: &BucketTable,
    ) {
        if old == standing {
            return;
        }
        match old {
            Standing::Ready(head) => self.ready_counts[rank_of(head)] -= 1,
            Standing::Waiting(_) => self.waiting_count -= 1,
            Standing::Empty | Standing::Stalled => {}
        }
        match standing {
            Standing::Ready(head) => {
                self.ready_counts[rank_of(head)] += 1;
                self.ready.push((head, id));
            }
            Standing::Waiting(at) => {
                self.waiting_count += 1;
                self.waiting.push((at, id));
            }
            Standing::Empty | Standing::Stalled => {}
        }
        self.purge_stale_entries(buckets);
    }

    /// Re-lists the ready buckets after their heads were renumbered (their classes,
    /// and so the counts, unchanged): `relist` files each one's new head order.
    pub(crate) fn relist_ready(&mut self, relist: impl FnOnce(&mut dyn FnMut(Order, BucketId))) {
        self.ready.clear();
        let ready = &mut self.ready;
        relist(&mut |head, id| ready.push((head, id)));
    }

    /// Drops the entries of buckets that moved on, once they outnumber the live ones:
    /// O(1) amortised.
    #[inline]
    fn purge_stale_entries(&mut self, buckets: &BucketTable) {
        let ready_count: usize = self.ready_counts.iter().sum();
        if self.ready.len() > 2 * ready_count + SLACK {
            self.ready.retain(|&(head, id)| {
                buckets
                    .get(id)
                    .is_some_and(|b| b.standing == Standing::Ready(head))
            });
        }
        if self.waiting.len() > 2 * self.waiting_count + SLACK {
            self.waiting.retain(|&(at, id)| {
                buckets
                    .get(id)
                    .is_some_and(|b| b.standing == Standing::Waiting(at))
            });
        }
    }
}
