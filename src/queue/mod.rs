//! The process side every async queue shares: the future a shard waits on
//! ([`Acquire`]), the stream of many ([`Grants`]) and the [`Permit`] they deliver.
//!
//! Each queue names these types for itself, and those are the names to use:
//! `tokio::Acquire`, `smol::Acquire`, [`runtime::Acquire<R>`]
//! (`Acquire<runtime::Queue<R>>`), `redis::Acquire` (`Acquire<redis::Queue>`), and so
//! on. The parameter `Q` is the queue that decides the grants; only this crate's
//! queues can be it.
//!
//! # The contract (rules 5)
//!
//! Every queue keeps it (`tests/contract.rs` runs one set of tests on the tokio and
//! the cluster queue):
//!
//! - A request is made when its future is first polled. Futures and streams are fused.
//! - A second request of a shard that waits resolves to
//!   [`AcquireError::Refused`] (`AlreadyQueued`); a replacing one (`acquire_replacing`,
//!   twilight) takes the waiting one's place, and the older future resolves to
//!   [`AcquireError::Superseded`].
//! - Dropping a future while it waits cancels its request: nothing spent, nobody
//!   delayed. Dropped after its grant but before the poll that delivers it, the unit
//!   counts as spent and the bucket frees (and a hold is released).
//! - A permit is *delivered* by the poll that returns it, and the interval of its
//!   bucket runs from there (spacing counts from delivery).
//! - Grants never depend on how callers poll: a future only registers its waker and
//!   takes what its queue's driver recorded for it.
//! - [`acquire_all`](crate::runtime::Queue::acquire_all)'s stream costs O(1) per grant.
//! - In hold mode a permit frees its bucket when it goes, unless it was
//!   [kept](Permit::keep).
//!
//! [`runtime::Acquire<R>`]: crate::runtime::Acquire
//! [`AcquireError::Refused`]: crate::AcquireError::Refused
//! [`AcquireError::Superseded`]: crate::AcquireError::Superseded

// How it is built: the futures keep where their request stands and hand each poll to
// their queue through the crate-private `Authority` (`authority.rs`), which two wings
// implement: `runtime/authority.rs` (the local `Scheduler` behind the queue's lock,
// with the driver task that owns its timer) and `redis/authority.rs` (Redis, through
// the driver that runs its scripts, and `redis/local.rs`, which routes what Redis
// granted). Each wing keeps what differs: its constructors, `update`, its driver, and
// how a grant reaches the future that asked. Wakers are woken after the lock they were
// collected under is released (tokio's `batch_semaphore` discipline: a woken task may
// run at once, on this thread, and lock again).

mod acquire;
mod authority;
mod permit;

pub use acquire::{Acquire, Grants};
pub(crate) use authority::{Authority, Grant, Request, Step};
pub use permit::Permit;
