//! Decides when each shard of a Discord bot may send IDENTIFY.
//!
//! Discord limits IDENTIFY three ways (see `session_start_limit` of `GET /gateway/bot`):
//!
//! - a shard's bucket is `shard_id % max_concurrency`, and each bucket may identify
//!   once per 5 seconds;
//! - at most `remaining` identifies until `reset_after`, then `total` per 24 h window,
//!   which opens with the first identify after a reset. Going over invalidates every
//!   session and may reset the bot's token;
//! - RESUMEs do not count.
//!
//! [`Scheduler`] enforces all of them exactly, and wastes none of the limit: a shard
//! is granted at the first instant the rules allow. [`rules`] writes down every rule
//! the crate keeps, Discord's and this project's readings of them; comments and tests
//! cite its sections ("rules 3.11").
//!
//! # Sans-IO
//!
//! The scheduler does no I/O, reads no clock and spawns nothing. Every call that
//! depends on time takes `now`; instants that go backwards are read as the latest one
//! seen. The same calls with the same instants give the same decisions, which is what
//! makes it testable to the nanosecond and usable from any runtime.
//!
//! # The driver loop
//!
//! Feed it inputs, then poll until it says to wait:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use identify_queue::{Decision, Scheduler, SessionStartLimit};
//!
//! let limit = SessionStartLimit {
//!     total: 1000,
//!     remaining: 1000,
//!     reset_after: Duration::from_secs(20_000),
//!     max_concurrency: 16,
//! };
//! // A simulated clock: jump to each deadline instead of sleeping.
//! let start = Instant::now();
//! let mut now = start;
//! let mut scheduler = Scheduler::new(limit, now)?;
//! let mut granted = Vec::new();
//! for shard in 0..64 {
//!     if let Decision::Grant(shard) = scheduler.request(shard, now)? {
//!         granted.push((shard, now)); // send IDENTIFY for `shard`
//!     }
//! }
//! loop {
//!     match scheduler.poll(now) {
//!         Decision::Grant(shard) => granted.push((shard, now)), // send IDENTIFY
//!         Decision::Wait(until) => now = until,                 // sleep until then
//!         Decision::Idle => break,                              // wait for a request
//!     }
//! }
//! assert_eq!(granted.len(), 64);
//! // 64 shards in 16 buckets: four rounds, 5 s apart.
//! assert_eq!(now - start, Duration::from_secs(15));
//! # Ok::<(), identify_queue::Error>(())
//! ```
//!
//! In hold mode ([`Config::hold_until_release`]) also call [`Scheduler::release`] when a
//! shard reports READY; in any mode call [`Scheduler::update`] with a fresh
//! `session_start_limit` when you have one.
//!
//! # The budget's accounting
//!
//! Discord counts a unit when an IDENTIFY *arrives*, and its word (`remaining`,
//! `reset_after`) is as old as the time since it was read. [`Config::grace`] (30 s by
//! default) bounds what the scheduler cannot see. A grant counts from its *delivery*:
//! at once for the plain scheduler; for the async queues when the permit reaches its
//! future (they call [`Scheduler::defer_deliveries`], and tell
//! [`Scheduler::delivered`] or [`Scheduler::abandoned`] for each grant). A word
//! ([`Scheduler::update_with_age`] says when it was read) subtracts every grant
//! Discord may not have counted yet; a reset is placed at the latest instant it may
//! be. Every rule errs on Discord's side, so no unit is counted as available twice:
//! the rules are [rules 3.11](crate::rules), argued once in `src/budget.rs`; what they
//! cost is in [`Config::grace`]; cluster mode keeps them on what Redis can know (the
//! `redis` module's "The budget's accounting").
//!
//! # Async adapters
//!
//! Behind cargo features, none on by default, a queue that all shards share:
//! `queue.acquire(shard).await` resolves with a permit when the shard may IDENTIFY.
//!
//! | feature | module | clock, timer, driver |
//! |---|---|---|
//! | `tokio` | `tokio` | tokio's (pausable) clock, one `tokio::time::Sleep`, a tokio task |
//! | `smol` | `smol` | `std` clock, one `async_io::Timer`, smol's global executor |
//! | `async-std` | `async_std` | a shim: the `smol` module under async-std's name |
//! | `twilight` | `twilight` | implies `tokio`: the tokio queue (and with `redis` the cluster queue) as a twilight-gateway `Queue` |
//! | `redis` | `redis` | implies `tokio`: cluster mode, one budget for every process, on Redis |
//! | `http` | `http` | implies `tokio`: the client of `identify-queue-server` (a twilight `Queue` with `twilight`) |
//! | `server` | (the binary's) | implies `redis` and `http`: the `identify-queue-server` binary, the queues over HTTP |
//!
//! The runtime modules are the generic `runtime::Queue` over a small
//! `runtime::Runtime` trait (a clock, a timer, a spawner for the queue's own driver
//! task); `twilight` adds a trait impl to the tokio and the cluster queue. Every queue
//! hands out the same futures and permit (`queue`, its contract in the module docs),
//! each module naming them for its queue. A shard that lost its session
//! asks with [`Priority::Reconnect`] and goes before the start-up of its bucket.
//!
//! # Cluster mode
//!
//! With feature `redis`, `redis::Queue` shares one budget and one set of buckets
//! between every process of a bot (on many machines) through Redis: the same
//! `acquire`, with Redis's clock, an epoch fence against lost writes, and Discord's
//! word as the only source of budget. See the `redis` module.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "async-std")]
#[cfg_attr(docsrs, doc(cfg(feature = "async-std")))]
#[path = "runtime/async_std.rs"]
pub mod async_std;
mod buckets;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
#[cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "tokio", feature = "smol", feature = "async-std")))
)]
pub mod queue;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
pub mod rules;
#[cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "tokio", feature = "smol", feature = "async-std")))
)]
pub mod runtime;
/// The `identify-queue-server` binary's code: public only for the binary and its
/// tests, not part of the library's API (its contract is the binary's flags and
/// routes, documented in `src/server/mod.rs` and the README).
#[cfg(feature = "server")]
#[doc(hidden)]
pub mod server;
#[cfg(any(feature = "smol", feature = "async-std"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "smol", feature = "async-std"))))]
#[path = "runtime/smol.rs"]
pub mod smol;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[path = "runtime/tokio.rs"]
pub mod tokio;
#[cfg(feature = "twilight")]
#[cfg_attr(docsrs, doc(cfg(feature = "twilight")))]
#[path = "queue/twilight.rs"]
pub mod twilight;

mod bucket_index;
mod bucket_table;
mod budget;

/// The guard of `mutex`, poisoned or not: the HTTP client and the server hold their
/// locks for small updates only, and a panic in one task must not stop the others.
#[cfg(feature = "http")]
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
mod error;
mod limit;
mod min_queue;
mod priority;
mod scheduler;
mod shard_map;
mod time;

pub use budget::MAX_WORD_AGE;
pub use error::{AcquireError, Error};
pub use limit::{Config, DEFAULT_GRACE, DISCORD_INTERVAL, MAX_GRACE, SessionStartLimit, ShardId};
#[cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]
pub(crate) use priority::OnConflict;
pub use priority::Priority;
pub use scheduler::{Decision, HoldEnd, Scheduler};
pub use time::Moment;

/// The README's code blocks, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
