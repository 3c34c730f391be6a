//! The queue on smol: the standard clock and one `async_io::Timer`.
//!
//! async-io's timers are driven by its own reactor and the driver runs on smol's
//! global executor (`smol::spawn`), so this queue works under any executor, not only
//! smol's (the `async_std` module, feature `async-std`, is this one).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use identify_queue::{Config, SessionStartLimit};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let limit = SessionStartLimit {
//!     total: 1000,
//!     remaining: 1000,
//!     reset_after: Duration::from_secs(86_400),
//!     max_concurrency: 1,
//! };
//! let interval = Duration::from_millis(20);
//! let config = Config::default().interval(interval);
//! let queue = identify_queue::smol::Queue::with_limit(limit, config)?;
//! smol::block_on(async {
//!     let start = Instant::now();
//!     let first = queue.acquire(0).await?; // granted at once
//!     let second = queue.acquire(1).await?; // same bucket: one interval later
//!     assert!(start.elapsed() >= interval);
//!     Ok(())
//! })
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use smol::Timer;

use crate::runtime::DriverTask;

/// The smol (async-io) [`Runtime`](crate::runtime::Runtime).
#[derive(Clone, Copy, Debug)]
pub struct Smol;

impl crate::runtime::Runtime for Smol {
    type Timer = Timer;

    fn now() -> Instant {
        Instant::now()
    }

    fn timer(deadline: Instant) -> Timer {
        Timer::at(deadline)
    }

    fn reset(timer: Pin<&mut Timer>, deadline: Instant) {
        timer.get_mut().set_at(deadline);
    }

    fn poll_timer(timer: Pin<&mut Timer>, cx: &mut Context<'_>) -> Poll<()> {
        // A fired `Timer::at` has no next deadline and would stay pending: the queue
        // never polls one again without `reset`.
        timer.poll(cx).map(drop)
    }

    fn spawn(task: DriverTask) -> Result<(), DriverTask> {
        // Detached: the driver ends by itself when the queue is idle.
        smol::spawn(task).detach();
        Ok(())
    }
}

/// The IDENTIFY queue on smol.
pub type Queue = crate::runtime::Queue<Smol>;
/// The future of [`Queue::acquire`](crate::runtime::Queue::acquire) on smol.
pub type Acquire = crate::runtime::Acquire<Smol>;
/// The stream of [`Queue::acquire_all`](crate::runtime::Queue::acquire_all) on smol.
pub type Grants = crate::runtime::Grants<Smol>;
/// Leave to IDENTIFY, from the smol queue.
pub type Permit = crate::runtime::Permit<Smol>;
