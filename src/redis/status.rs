//! What the cluster queue waits for, and what Redis holds: for logs and metrics.

use std::time::Duration;

pub use super::scripts::NeedLimit;

/// What grants wait for right now, in this process ([`Queue::health`](super::Queue::health)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Connected; grants come as buckets free.
    Ready,
    /// Redis cannot be reached (or refused the last call): no grants until it can be;
    /// the queue reconnects with backoff. Waiting `acquire`s keep waiting.
    Unreachable {
        /// The last failure.
        reason: String,
    },
    /// The shared state needs Discord's word before anything is granted, and no
    /// limit source was given: call [`Queue::update`](super::Queue::update).
    NeedsLimit(NeedLimit),
    /// The shared state needs Discord's word; the limit source is being asked (by this
    /// process or another one). After a loss, it is asked once the grants made before
    /// the loss cannot reach Discord unseen (the longest delivery window, 10 s, and a
    /// grace after the loss was noticed: rules 6.3), so that its word is whole.
    FetchingLimit(NeedLimit),
    /// The shared state needs Discord's word, and the limit source failed; it is
    /// asked again after a second.
    LimitSourceFailed {
        /// What it said.
        reason: String,
    },
    /// A grant was not acknowledged by the configured replicas in time (so it was not
    /// acted on, and its unit is spent): no more grants until they catch up.
    ReplicasBehind,
    /// Connected, but the round trip to Redis is longer than the spacing: grants
    /// still come, each lengthening its bucket's round by this process's delivery
    /// window (nobody else's). Move the process closer to Redis, or accept the cost.
    SlowLink {
        /// The smoothed round trip.
        round_trip: Duration,
        /// The delivery window its calls carry.
        window: Duration,
    },
    /// The daily budget is spent; it refills at Discord's reset (`None`: only a
    /// fresh limit can refill it).
    NoBudget {
        /// Until the reset, as seen when the queue last asked.
        until: Option<Duration>,
    },
}

/// The shared state as Redis holds it ([`Queue::snapshot`](super::Queue::snapshot)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Units left in the daily budget, over all processes.
    pub remaining: u32,
    /// When the budget refills to `total`; `None`: its window opens with the next grant.
    pub reset_in: Option<Duration>,
    /// Why nothing is granted until Discord's word, if that is the case.
    pub needs_limit: Option<NeedLimit>,
    /// The epoch: it changes when the Redis server process changes (restart, failover).
    pub epoch: i64,
    /// The `max_concurrency` in force.
    pub max_concurrency: u32,
    /// Grants recorded in the last 25 hours.
    pub grants_logged: u64,
    /// Per bucket, how long until it frees (zero: free now).
    pub bucket_free_in: Vec<Duration>,
}

/// Counters of one process's queue, for tests and tuning ([`Queue::stats`](super::Queue::stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Commands sent to Redis (scripts, `WAIT`, the sync lease); not notifications.
    pub commands: u64,
    /// Grants this process received.
    pub grants: u64,
    /// Acquire calls answered "not yet" (bucket busy, another process next, no budget).
    pub refusals: u64,
    /// Delivery touches (a permit taken late keeps its bucket busy first).
    pub touches: u64,
    /// Grants that could not be delivered in time (a touch refused after a stall or a
    /// partition): each unit is spent, and its shard asked again by itself.
    pub undelivered: u64,
    /// Grants not acknowledged by the replicas in time, so not acted on (unit spent).
    pub unacknowledged: u64,
    /// Grants whose future was gone when they came back (unit spent).
    pub orphaned: u64,
    /// Connections opened (the first one included).
    pub connections: u64,
    /// Limits applied (connect, `update`, the limit source).
    pub syncs: u64,
    /// The round trip to Redis, smoothed over this process's calls.
    pub round_trip: Duration,
    /// The delivery window this process's calls carry: a permit reaches its shard
    /// within it of its call being sent, and Redis keeps the bucket's next grant an
    /// interval after it. It follows the round trip (never below
    /// [`DELIVERY_WINDOW`](super::DELIVERY_WINDOW)).
    pub window: Duration,
}
