//! The queue on tokio: tokio's clock and one `tokio::time::Sleep`.
//!
//! tokio's clock can be paused: under `#[tokio::test(start_paused = true)]` a whole
//! day of simulated start-up runs in milliseconds, every grant at its exact instant.
//!
//! ```
//! use std::time::Duration;
//! use identify_queue::{Config, SessionStartLimit};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let limit = SessionStartLimit {
//!     total: 1000,
//!     remaining: 1000,
//!     reset_after: Duration::from_secs(86_400),
//!     max_concurrency: 1,
//! };
//! let queue = identify_queue::tokio::Queue::with_limit(limit, Config::default())?;
//! let start = tokio::time::Instant::now();
//! let first = queue.acquire(0).await?; // granted at once
//! let second = queue.acquire(1).await?; // same bucket: 5 s later
//! assert_eq!(start.elapsed(), Duration::from_secs(5));
//! // ... send IDENTIFY, wait for READY ...
//! first.release();
//! second.release();
//! # Ok(())
//! # }
//! ```
//!
//! The queue's driver is a tokio task, started on the runtime at hand when a shard
//! first waits (so poll the queue's futures inside a tokio runtime with the time driver
//! enabled, as for `tokio::time::sleep`). A queue may outlive that runtime and be used
//! from several: when the driver's runtime shuts down, the next waiting future polled
//! starts a new driver on its own. Permits may be dropped anywhere, plain threads
//! included.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use ::tokio::runtime::Handle;
use ::tokio::time::{self, Sleep};

use crate::runtime::DriverTask;

/// The tokio [`Runtime`](crate::runtime::Runtime).
#[derive(Clone, Copy, Debug)]
pub struct Tokio;

impl crate::runtime::Runtime for Tokio {
    type Timer = Sleep;

    fn now() -> Instant {
        time::Instant::now().into_std()
    }

    fn timer(deadline: Instant) -> Sleep {
        time::sleep_until(deadline.into())
    }

    fn reset(timer: Pin<&mut Sleep>, deadline: Instant) {
        timer.reset(deadline.into());
    }

    fn poll_timer(timer: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Poll<()> {
        timer.poll(cx)
    }

    fn spawn(task: DriverTask) -> Result<(), DriverTask> {
        match Handle::try_current() {
            Ok(handle) => {
                // Detached: the driver ends by itself when the queue is idle.
                drop(handle.spawn(task));
                Ok(())
            }
            Err(_) => Err(task),
        }
    }
}

/// The IDENTIFY queue on tokio.
pub type Queue = crate::runtime::Queue<Tokio>;
/// The future of [`Queue::acquire`](crate::runtime::Queue::acquire) on tokio.
pub type Acquire = crate::runtime::Acquire<Tokio>;
/// The stream of [`Queue::acquire_all`](crate::runtime::Queue::acquire_all) on tokio.
pub type Grants = crate::runtime::Grants<Tokio>;
/// Leave to IDENTIFY, from the tokio queue.
pub type Permit = crate::runtime::Permit<Tokio>;
