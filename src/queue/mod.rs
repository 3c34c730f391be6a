//! The process side of every async queue, once: the futures a shard waits on
//! ([`Acquire`], [`Grants`]), the [`Permit`] they deliver, and the twilight
//! integration, generic over who decides the grants ([`Authority`]).
//!
//! Two authorities implement it, each in its own wing:
//!
//! - `runtime/authority.rs`: the local [`Scheduler`](crate::Scheduler) behind the
//!   queue's lock, with the driver task that owns its timer (the runtime queues:
//!   `tokio`, `smol`, `async_std`, the generic `runtime::Queue`);
//! - `redis/authority.rs`: Redis, through the driver that runs its scripts and the
//!   per-process state (`redis/local.rs`) that routes what Redis granted (the cluster
//!   queue, feature `redis`).
//!
//! Each wing names these types for its own queue (`runtime::Acquire<R>` is
//! `Acquire<runtime::Queue<R>>`, `redis::Permit` is `Permit<redis::Queue>`), and keeps
//! what differs: its constructors, `update`, its driver, and how it routes a grant to
//! the future waiting for it.
//!
//! # The contract (rules 5)
//!
//! Both authorities keep it; `tests/contract.rs` runs one set of tests on both.
//!
//! - A request is made when its future is first polled. Futures and streams are fused.
//! - A second request of a shard that waits resolves to `Refused(AlreadyQueued)`; a
//!   replacing one (`acquire_replacing`, twilight) takes the waiting one's place, and
//!   the older future resolves to `Superseded`.
//! - Dropping a future while it waits cancels its request: nothing spent, nobody
//!   delayed ([`Authority::abandon`]). Dropped after its grant but before the poll that
//!   delivers it, the unit counts as spent and the bucket frees (and a hold is
//!   released).
//! - A permit is *delivered* by the poll that returns it, and the interval of its
//!   bucket runs from there (spacing counts from delivery). The authority decides
//!   whether a grant may still be delivered at that poll; the futures only carry
//!   what it says.
//! - Grants never depend on how callers poll: futures only register their waker and
//!   take what the authority's driver recorded for them; wakers are woken after the
//!   lock they were collected under is released (tokio's `batch_semaphore`
//!   discipline: a woken task may run at once, on this thread, and lock again).
//! - `acquire_all`'s stream costs O(1) per grant.
//! - In hold mode a permit frees its bucket when it goes ([`Authority::release`]),
//!   unless it was [`kept`](Permit::keep).

mod acquire;
mod permit;

pub use acquire::{Acquire, Grants};
pub use permit::Permit;

use std::task::{Context, Poll};
use std::time::Instant;

use crate::{AcquireError, OnConflict, Priority, ShardId};

/// Who decides the grants of a queue: the handle a future or permit keeps of it.
///
/// Public in name only (its module is private, so no one outside can implement or
/// call it): the futures of this module are public types, generic over it.
pub trait Authority: Clone + Send + Sync + Unpin + 'static {
    /// Where a waiting [`Acquire`] stands: what tells it the request is still its own.
    type Place: Copy + Eq + std::fmt::Debug + Send + Sync + Unpin + 'static;
    /// What a [`Grants`] stream keeps between its polls, once it asked.
    type Stream: Send + Sync + Unpin + 'static;
    /// A grant's identity, for the release of its hold.
    type Token: Copy + std::fmt::Debug + Send + Sync + 'static;

    /// The poll of `request`'s future: makes the request (no `place` yet) or looks at
    /// it. Waiting, the future's waker is registered; ready, the request is done (a
    /// grant returned here is delivered).
    fn poll_request(
        &self,
        request: &Request,
        place: Option<Self::Place>,
        cx: &mut Context<'_>,
    ) -> Step<Self::Place, Self::Token>;

    /// The future of `shard`'s request, waiting at `place`, is gone (dropped).
    fn abandon(&self, shard: ShardId, place: Self::Place);

    /// The poll of a stream of `shards`' requests: asks for them (no `stream` yet),
    /// then yields each grant, or an error for a shard that could not be asked for,
    /// and `None` once nothing is left.
    fn poll_stream(
        &self,
        shards: &mut Vec<ShardId>,
        stream: &mut Option<Self::Stream>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Grant<Self::Token>, AcquireError>>>;

    /// The stream of `shards`' requests is gone while some still waited.
    fn abandon_stream(&self, shards: &[ShardId], stream: Self::Stream);

    /// How many items a stream still yields, if the authority knows.
    fn stream_len(shards: &[ShardId], stream: Option<&Self::Stream>) -> Option<usize>;

    /// Hold mode: the permit of grant `token` of `shard` went; free its bucket, unless
    /// that hold ended already.
    fn release(&self, shard: ShardId, token: Self::Token);

    /// Whether `shard`'s grant reached a running session before ([`mark_served`]).
    ///
    /// [`mark_served`]: Self::mark_served
    #[cfg(feature = "twilight")]
    fn served(&self, shard: ShardId) -> bool;

    /// Marks `shard` as served (its grant reached the shard): twilight asks again for
    /// it as a reconnect.
    #[cfg(feature = "twilight")]
    fn mark_served(&self, shard: ShardId);
}

/// One shard's request, as its [`Acquire`] makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The shard that asks.
    pub(crate) shard: ShardId,
    /// Its place among its bucket's requests.
    pub(crate) priority: Priority,
    /// What it does if a request of the same shard waits here.
    pub(crate) on_conflict: OnConflict,
}

/// What a poll of a request found.
#[derive(Debug)]
pub enum Step<P, T> {
    /// Still waiting, at this place; the future's waker is registered.
    Waiting(P),
    /// Done: the grant, delivered by this poll, or why there is none.
    Ready(Result<Grant<T>, AcquireError>),
}

/// A grant delivered by the poll that found it: what its [`Permit`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant<T> {
    /// The shard granted.
    pub shard: ShardId,
    /// The delivery instant, on the queue's clock: the interval of its bucket runs from
    /// here.
    pub at: Instant,
    /// Its identity, for the release of its hold.
    pub token: T,
    /// Hold mode: the permit frees the bucket when it goes.
    pub holds: bool,
}
