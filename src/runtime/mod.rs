//! The async queue, generic over a runtime's clock, timer and spawner.
//!
//! [`Queue`] shares one [`Scheduler`](crate::Scheduler) between all of a bot's shards:
//! `queue.acquire(shard).await` resolves with a [`Permit`] when the shard may IDENTIFY.
//! The runtime modules (`tokio`, `smol` and `async_std`, each behind its feature)
//! name it for their runtime; implement [`Runtime`] to use another.
//!
//! # Who drives the queue
//!
//! The queue owns its driver: a small task it starts through [`Runtime::spawn`] when
//! the first shard has to wait, which owns the queue's one timer, hands out every
//! grant at the instant the scheduler allows it, and ends when nothing waits. Callers'
//! futures never drive anything: they register their waker and are woken with their
//! grant, so a future that is parked, dropped, moved to another task or thread, or
//! busy with a permit stalls nobody else. Inputs (a request, a cancel, a release, an
//! update) run the scheduler at once under the queue's lock and hand out what they make
//! grantable without waiting for the driver.
//!
//! If the runtime the driver ran on shuts down, the waiting futures are woken and the
//! next one polled starts a new driver on its own runtime.
//!
//! # Delivery
//!
//! A permit is *delivered* when the poll of its future returns it, and Discord counts
//! the IDENTIFY when it arrives, so the interval of a bucket runs from the delivery:
//! until its permit is taken, a granted shard keeps its bucket busy, and for an
//! interval after. [`Permit::granted_at`](Permit#method.granted_at) is the delivery
//! instant. The budget unit is spent at the grant. In hold mode the hold timeout
//! counts from the grant: a permit not taken by then is void, and its future resolves
//! to [`AcquireError::HoldExpired`] (the unit stays spent; ask again).
//!
//! [`AcquireError::HoldExpired`]: crate::AcquireError::HoldExpired

mod authority;
mod driver;
mod queue;
mod shared;
mod stats;
mod waiters;

pub use queue::Queue;
pub use stats::QueueStats;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// The future of [`Queue::acquire`]: resolves with a [`Permit`] when the shard may
/// IDENTIFY, delivering it (the process side all queues share; see its
/// `# Cancel safety`).
pub type Acquire<R> = crate::queue::Acquire<Queue<R>>;
/// The stream of [`Queue::acquire_all`]: a permit per shard, in grant order, each
/// delivered when the stream yields it.
pub type Grants<R> = crate::queue::Grants<Queue<R>>;
/// Leave to IDENTIFY, delivered when the future or stream returned it; in hold mode
/// it frees its bucket when it goes.
pub type Permit<R> = crate::queue::Permit<Queue<R>>;

/// The queue's driver, as handed to [`Runtime::spawn`]: a future that ends when the
/// queue has nothing left to wait for.
pub type DriverTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What the queue needs from a runtime: its clock, one resettable timer, and a way
/// to start the driver task.
///
/// The contract:
///
/// - `now` is the clock every instant of the queue is read from (a paused tokio
///   clock reads as tokio's, so tests run hours of start-up in milliseconds).
/// - The timer is only ever made, reset and polled by the driver task, on the
///   runtime that runs it; after `reset`, the next `poll_timer` registers the waker it
///   is given, so nothing may rely on a waker registered before the reset.
/// - `poll_timer` is Ready once `now()` has reached the deadline (late is allowed,
///   early is not relied on: the queue reads the clock before the timer).
/// - `spawn` starts `task` as a task of its own on the runtime at hand and returns
///   `Ok`, or gives it back (`Err`) where no runtime is at hand (a plain thread, a
///   runtime shutting down may also just drop it). It must not poll `task` before it
///   returns.
pub trait Runtime: Send + Sync + 'static {
    /// A timer that fires once at its deadline and can be moved to another.
    type Timer: Send + 'static;

    /// The runtime's clock.
    fn now() -> Instant;

    /// A timer firing at `deadline`.
    fn timer(deadline: Instant) -> Self::Timer;

    /// Moves `timer` to `deadline`, whether or not it has fired.
    fn reset(timer: Pin<&mut Self::Timer>, deadline: Instant);

    /// Ready once the deadline has passed; otherwise registers `cx` to be woken then.
    fn poll_timer(timer: Pin<&mut Self::Timer>, cx: &mut Context<'_>) -> Poll<()>;

    /// Starts the driver on the runtime at hand; gives it back if there is none.
    fn spawn(task: DriverTask) -> Result<(), DriverTask>;
}
