//! `Authority`: who decides a queue's grants, as the futures of `crate::queue` see it.
//!
//! Public in name only: this module is private, so nobody outside the crate can name,
//! implement or call it (a sealed trait). `runtime/authority.rs` and
//! `redis/authority.rs` implement it.

use std::task::{Context, Poll};
use std::time::Instant;

use crate::{AcquireError, OnConflict, Priority, ShardId};

/// Who decides the grants of a queue: the handle a future or permit keeps of it.
pub trait Authority: Clone + Send + Sync + Unpin + 'static {
    /// Where a waiting [`Acquire`](super::Acquire) stands: what tells it the request is
    /// still its own.
    type Place: Copy + Eq + std::fmt::Debug + Send + Sync + Unpin + 'static;
    /// What a [`Grants`](super::Grants) stream keeps between its polls, once it asked.
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

/// One shard's request, as its [`Acquire`](super::Acquire) makes it.
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

/// A grant delivered by the poll that found it: what its [`Permit`](super::Permit) carries.
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
