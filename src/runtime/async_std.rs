//! The queue on async-std: a documented shim over the [`smol`](crate::smol) module.
//!
//! async-std is discontinued upstream (RUSTSEC-2025-0052) and recommends smol. It
//! runs on the same async-io reactor, so this module is the smol queue under the
//! names async-std users look for: same types, same `async_io::Timer`, and it works
//! under `async_std::task::block_on` and `#[async_std::main]` as under smol. Prefer
//! [`crate::smol`] in new code.
//!
//! ```
//! use std::time::Duration;
//! use identify_queue::{Config, SessionStartLimit};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let limit = SessionStartLimit {
//!     total: 1000,
//!     remaining: 1000,
//!     reset_after: Duration::from_secs(86_400),
//!     max_concurrency: 16,
//! };
//! let queue = identify_queue::async_std::Queue::with_limit(limit, Config::default())?;
//! async_std::task::block_on(async {
//!     let permit = queue.acquire(3).await?; // bucket 3 is idle: at once
//!     assert_eq!(permit.shard(), 3);
//!     Ok(())
//! })
//! # }
//! ```

pub use crate::smol::{Acquire, Grants, Permit, Queue, Smol};
