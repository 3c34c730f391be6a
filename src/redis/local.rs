//! This process's side: its waiting shards in order, per bucket, and the grants on
//! their way to their futures. Never touched across an `.await`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::scripts::{NeedLimit, Token};
use super::status::{ClusterStats, Health};
use crate::{Error, Priority, ShardId};

/// The delivery window: a grant taken within it of its acquire call being sent goes
/// straight to its shard; taken later, its bucket is first kept busy for another
/// interval (a touch), since spacing counts from delivery. Redis adds it to the
/// interval it keeps, so deliveries on one machine are never closer than the interval.
pub const DELIVERY_WINDOW: Duration = Duration::from_millis(5);

/// Where one waiting request stands.
pub(super) enum Phase {
    /// In its bucket's queue.
    Waiting,
    /// Granted in Redis; not yet taken by its future.
    Granted(Granted),
    /// Resolved with an error for its future to take.
    Failed(Error),
}

/// A grant on its way to its future.
pub(super) struct Granted {
    pub(super) token: Token,
    /// Taken by then, the permit goes straight to its shard.
    pub(super) fresh_until: Instant,
    /// The driver keeps the bucket busy (touches) from then on, or when asked.
    pub(super) touch_at: Instant,
    pub(super) touch_asked: bool,
    /// No touch confirmed by then: the bucket may free in Redis, the permit is void.
    pub(super) lost_at: Instant,
}

impl Granted {
    /// A grant (or a touch) sent at `sent`: its bucket is busy in Redis from a moment
    /// after `sent` for one interval.
    pub(super) fn new(token: Token, sent: Instant, interval: Duration) -> Self {
        Self {
            token,
            fresh_until: sent + DELIVERY_WINDOW,
            touch_at: sent + interval / 2,
            touch_asked: false,
            lost_at: sent + interval,
        }
    }
}

pub(super) struct Waiter {
    pub(super) seq: u64,
    pub(super) priority: Priority,
    pub(super) phase: Phase,
    pub(super) waker: Option<Waker>,
}

impl Waiter {
    /// Its place in its bucket's queue: priority class, then request order.
    pub(super) fn key(&self, shard: ShardId) -> Key {
        (rank(self.priority), self.seq, shard)
    }
}

/// Order within a bucket: (rank, sequence, shard).
pub(super) type Key = (u8, u64, ShardId);

/// Reconnects go first (0), then starts (1): the order of `lua/acquire.lua` scores.
pub(super) fn rank(priority: Priority) -> u8 {
    match priority {
        Priority::Reconnect => 0,
        _ => 1,
    }
}

#[derive(Default)]
pub(super) struct Bucket {
    pub(super) queue: BTreeSet<Key>,
    /// Ask Redis for the head again at (not before) this instant.
    pub(super) next_try: Option<Instant>,
    /// This process is among the bucket's contenders in Redis.
    pub(super) registered: bool,
    /// An acquire call whose answer was lost: retried with the same nonce for the same
    /// shard, so that it never spends twice.
    pub(super) pending: Option<(ShardId, String)>,
}

/// Work for the driver besides grants.
pub(super) enum Outgoing {
    /// Hold mode: free the bucket of this grant (useless after `until`: the lease ended).
    Release {
        shard: ShardId,
        token: Token,
        until: Instant,
    },
    /// No more waiters of this process in the bucket.
    Leave { bucket: u32 },
}

pub(super) struct Local {
    pub(super) max_concurrency: u32,
    next_seq: u64,
    pub(super) waiters: HashMap<ShardId, Waiter>,
    pub(super) buckets: HashMap<u32, Bucket>,
    pub(super) outbox: VecDeque<Outgoing>,
    /// The budget is spent until then (`Some(None)`: until Discord's word).
    pub(super) no_budget: Option<Option<Instant>>,
    pub(super) need: Option<NeedLimit>,
    /// With a limit source: do not fetch Discord's word again before then.
    pub(super) fetch_after: Option<Instant>,
    pub(super) health: Health,
    /// A grant was not acknowledged by the replicas: none is asked for until they
    /// catch up.
    pub(super) replicas_behind: bool,
    pub(super) remaining: u32,
    /// Shards whose grant reached them (the twilight integration's reconnect inference).
    #[cfg_attr(not(feature = "twilight"), allow(dead_code))]
    pub(super) served: std::collections::HashSet<ShardId>,
    /// Hold mode: grants of permits let go with `Permit::keep`, for `Queue::release`.
    pub(super) kept: HashMap<ShardId, Token>,
    pub(super) closed: bool,
    pub(super) stats: ClusterStats,
}

impl Local {
    pub(super) fn new(max_concurrency: u32, remaining: u32) -> Self {
        Self {
            max_concurrency,
            next_seq: 0,
            waiters: HashMap::new(),
            buckets: HashMap::new(),
            outbox: VecDeque::new(),
            no_budget: None,
            need: None,
            fetch_after: None,
            health: Health::Ready,
            replicas_behind: false,
            remaining,
            served: Default::default(),
            kept: HashMap::new(),
            closed: false,
            stats: ClusterStats::default(),
        }
    }

    pub(super) fn bucket_of(&self, shard: ShardId) -> u32 {
        shard % self.max_concurrency
    }

    /// Queues `shard`; false if it already waits (or its grant is on its way).
    pub(super) fn enqueue(&mut self, shard: ShardId, priority: Priority, now: Instant) -> bool {
        if self.waiters.contains_key(&shard) {
            return false;
        }
        self.next_seq += 1;
        let waiter = Waiter {
            seq: self.next_seq,
            priority,
            phase: Phase::Waiting,
            waker: None,
        };
        let key = waiter.key(shard);
        self.waiters.insert(shard, waiter);
        let bucket = self
            .buckets
            .entry(shard % self.max_concurrency)
            .or_default();
        // A new head (first here, or a reconnect ahead of starts) asks at once.
        if bucket.queue.first().is_none_or(|head| key < *head) {
            bucket.next_try = Some(now);
        }
        bucket.queue.insert(key);
        true
    }

    /// The future of `shard` is gone. A waiting request leaves its queue (and Redis's
    /// contenders when it was the last here); a grant not taken is spent, and in hold
    /// mode its hold is released.
    pub(super) fn abandon(&mut self, shard: ShardId, hold: Option<Duration>, now: Instant) {
        let Some(waiter) = self.waiters.remove(&shard) else {
            return;
        };
        match waiter.phase {
            Phase::Waiting => {
                let key = waiter.key(shard);
                let index = shard % self.max_concurrency;
                if let Some(bucket) = self.buckets.get_mut(&index) {
                    bucket.queue.remove(&key);
                    if bucket.queue.is_empty() {
                        bucket.next_try = None;
                        if std::mem::take(&mut bucket.registered) {
                            self.outbox.push_back(Outgoing::Leave { bucket: index });
                        }
                    }
                }
            }
            Phase::Granted(granted) => {
                if let Some(hold) = hold {
                    self.outbox.push_back(Outgoing::Release {
                        shard,
                        token: granted.token,
                        until: now + hold,
                    });
                }
            }
            Phase::Failed(_) => {}
        }
    }

    /// Redis says `max_concurrency` is now `max_concurrency`: re-key the queues,
    /// keeping the order. Registrations in Redis were dropped by the sync that
    /// changed it.
    pub(super) fn rekey(&mut self, max_concurrency: u32, now: Instant) {
        if max_concurrency == 0 || max_concurrency == self.max_concurrency {
            return;
        }
        self.max_concurrency = max_concurrency;
        self.buckets.clear();
        for (&shard, waiter) in &self.waiters {
            if let Phase::Waiting = waiter.phase {
                let bucket = self.buckets.entry(shard % max_concurrency).or_default();
                bucket.queue.insert(waiter.key(shard));
                bucket.next_try = Some(now);
            }
        }
    }

    /// Every bucket with waiters asks again now (a reconnect, a sync, an epoch).
    pub(super) fn retry_all(&mut self, now: Instant) {
        for bucket in self.buckets.values_mut() {
            if !bucket.queue.is_empty() {
                bucket.next_try = Some(now);
            }
        }
    }

    /// Wakes the future of `shard`.
    pub(super) fn wake(&mut self, shard: ShardId) {
        if let Some(waker) = self
            .waiters
            .get_mut(&shard)
            .and_then(|waiter| waiter.waker.take())
        {
            waker.wake();
        }
    }

    /// Shards waiting, granted not yet taken included.
    pub(super) fn len(&self) -> usize {
        self.waiters.len()
    }
}
