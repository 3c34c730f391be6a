//! The async queue, generic over a runtime's clock and timer.
//!
//! [`Queue`] shares one [`Scheduler`](crate::Scheduler) between all of a bot's shards:
//! `queue.acquire(shard).await` resolves with a [`Permit`] when the shard may IDENTIFY.
//! The runtime modules ([`tokio`](crate::tokio), [`smol`](crate::smol),
//! [`async_std`](crate::async_std)) name it for their runtime; implement [`Runtime`]
//! to use another.
//!
//! # No driver task
//!
//! Nothing is spawned: the waiting futures drive the scheduler themselves. Every
//! input (a new request, a dropped waiter, a release, an update) runs the scheduler
//! at once under the queue's lock and wakes exactly the waiters it granted. For the
//! deadlines in between there is one timer for the whole queue, polled by one
//! waiting future (its task sleeps on it); when that future finishes or is dropped,
//! another waiter is woken to take the timer over. This needs no spawner, so the
//! queue works on any executor, needs no runtime handle when it is made, and leaves
//! no task behind; and a paused tokio clock sees a timer it can jump to.
//!
//! A waiter holds the timer only while its poll returns `Pending`: one that returns a
//! permit (an `acquire_all` stream whose consumer then works on the permit for a
//! while, say) hands the timer to another waiter first. As with any future, keep a
//! waiting `Acquire` polled (`.await` it, or keep it in a `select!` that is polled);
//! a future parked unpolled while it holds the timer delays the others' grants until
//! it is polled or dropped.

mod queue;
mod waiters;

pub use queue::{Acquire, Grants, Permit, Queue, QueueStats};

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// What the queue needs from a runtime: its clock and one resettable timer.
pub trait Runtime: Send + Sync + 'static {
    /// A timer that fires once at its deadline and can be moved to another.
    type Timer: Send + 'static;

    /// The runtime's clock (tokio's may be paused and advanced by tests).
    fn now() -> Instant;

    /// A timer firing at `deadline`.
    fn timer(deadline: Instant) -> Self::Timer;

    /// Moves `timer` to `deadline`, whether or not it has fired.
    fn reset(timer: Pin<&mut Self::Timer>, deadline: Instant);

    /// Ready once the deadline has passed; otherwise registers `cx` to be woken then.
    fn poll_timer(timer: Pin<&mut Self::Timer>, cx: &mut Context<'_>) -> Poll<()>;
}
