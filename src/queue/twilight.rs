//! twilight-gateway takes any [`twilight_gateway_queue::Queue`]; the tokio
//! [`Queue`](crate::tokio::Queue) is one, and so is the cluster queue
//! (`redis::Queue`, feature `redis`). Switching a twilight bot over is one line:
//!
//! ```no_run
//! use std::time::Duration;
//! use identify_queue::{Config, SessionStartLimit};
//! use twilight_gateway::{ConfigBuilder, Intents, Shard, ShardId};
//!
//! # async fn run(token: String) -> Result<(), Box<dyn std::error::Error>> {
//! // From GET /gateway/bot:
//! let limit = SessionStartLimit {
//!     total: 1000,
//!     remaining: 998,
//!     reset_after: Duration::from_millis(14_336_000),
//!     max_concurrency: 16,
//! };
//! let queue = identify_queue::tokio::Queue::with_limit(limit, Config::default())?;
//! let config = ConfigBuilder::new(token, Intents::GUILDS)
//!     .queue(queue.clone()) // <- the one line
//!     .build();
//! let shards: Vec<Shard<_>> = (0..64)
//!     .map(|id| Shard::with_config(ShardId::new(id, 64), config.clone()))
//!     .collect();
//! # Ok(())
//! # }
//! ```
//!
//! How twilight's contract is kept:
//!
//! - `enqueue(shard)` spawns a small task that waits for the grant and then sends
//!   `()`. It runs on the runtime that calls `enqueue` (twilight shards call it from
//!   their own task, so that is always a tokio runtime).
//! - A receiver the shard drops (it disconnected while waiting) cancels the request at
//!   once: nothing spent, nobody delayed.
//! - A shard that enqueues again while its older request waits takes that request's
//!   place in line ([`Queue::acquire_replacing`](crate::runtime::Queue::acquire_replacing)):
//!   twilight only asks again once it has abandoned the old request. (The cluster
//!   queue also hands it a grant on its way to the older request.)
//! - A shard that enqueues again after a grant reached it (its `()` was sent) had a
//!   session and lost it: it asks as a [`Priority::Reconnect`](crate::Priority), ahead
//!   of the shards still starting up in its bucket. One that gave up while waiting
//!   stays a `Start`.
//! - A request that cannot be served (an error) closes the channel, which makes the
//!   shard enqueue again.
//! - In hold mode the grant holds its bucket after `()` is sent, until you call the
//!   queue's `release` ([`Queue::release`](crate::runtime::Queue::release)) with the
//!   shard's id when it reports READY (or fails), or the hold timeout passes.
//!
//! Both queues implement it with the one function below, over the process side they
//! share (`src/queue/`).

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use ::tokio::sync::oneshot;

use crate::queue::{Acquire, Authority};
use crate::{AcquireError, OnConflict, Priority, ShardId};

impl twilight_gateway_queue::Queue for crate::tokio::Queue {
    fn enqueue(&self, shard: ShardId) -> oneshot::Receiver<()> {
        enqueue(self, shard)
    }
}

#[cfg(feature = "redis")]
impl twilight_gateway_queue::Queue for crate::redis::Queue {
    fn enqueue(&self, shard: ShardId) -> oneshot::Receiver<()> {
        enqueue(self, shard)
    }
}

/// twilight's `enqueue` on `queue`: a task that asks for `shard` (replacing its
/// waiting request; as a reconnect if it was served before) and sends `()` with the
/// grant.
fn enqueue<Q: Authority>(queue: &Q, shard: ShardId) -> oneshot::Receiver<()> {
    let (sender, receiver) = oneshot::channel();
    let priority = if queue.served(shard) {
        Priority::Reconnect
    } else {
        Priority::Start
    };
    let acquire = Acquire::new(queue.clone(), shard, priority, OnConflict::TakeOver);
    let queue = queue.clone();
    ::tokio::spawn(async move {
        if let Some(permit) = forward(acquire, sender).await {
            // The shard identifies now: asking again later means it lost its
            // session.
            queue.mark_served(permit.shard());
            // Its hold (hold mode) lasts until the queue's `release` or the timeout.
            permit.keep();
        }
    });
    receiver
}

/// Waits for the grant, or for the shard to give up on it, whichever comes first, and
/// sends `()` with it. Returns the permit if `()` reached the shard.
async fn forward<P>(
    mut acquire: impl Future<Output = Result<P, AcquireError>> + Unpin,
    mut sender: oneshot::Sender<()>,
) -> Option<P> {
    let granted = poll_fn(|cx| {
        if sender.poll_closed(cx).is_ready() {
            // The shard dropped its receiver: dropping `acquire` cancels the request.
            return Poll::Ready(None);
        }
        Pin::new(&mut acquire).poll(cx).map(Some)
    })
    .await;
    // On an error, or if the shard gave up, dropping the sender closes the channel:
    // a shard still listening enqueues again.
    let permit = granted?.ok()?;
    // Otherwise the receiver went in the same instant: the permit drops and frees its
    // hold; the grant itself counts as spent, the safe side.
    sender.send(()).is_ok().then_some(permit)
}
