//! The cluster queue as a [`twilight_gateway_queue::Queue`]: a twilight cluster
//! switches with one line, `.queue(queue.clone())` on its `ConfigBuilder`.
//!
//! The contract is kept as by the single-process tokio queue (see
//! [`crate::twilight`]): a dropped receiver cancels the request, a shard served
//! before asks again as a [`Priority::Reconnect`](crate::Priority), an error closes
//! the channel so that the shard asks again, and in hold mode the grant holds its
//! bucket until [`Queue::release`] or the hold timeout.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use ::tokio::sync::oneshot;

use super::{Acquire, Queue};
use crate::ShardId;

impl twilight_gateway_queue::Queue for Queue {
    fn enqueue(&self, shard: ShardId) -> oneshot::Receiver<()> {
        let (sender, receiver) = oneshot::channel();
        ::tokio::spawn(forward(self.clone(), self.acquire_inferring(shard), sender));
        receiver
    }
}

/// Waits for the grant, or for the shard to give up on it, whichever comes first.
async fn forward(queue: Queue, mut acquire: Acquire, mut sender: oneshot::Sender<()>) {
    let granted = poll_fn(|cx| {
        if sender.poll_closed(cx).is_ready() {
            // The shard dropped its receiver: dropping `acquire` cancels the request.
            return Poll::Ready(None);
        }
        Pin::new(&mut acquire).poll(cx).map(Some)
    })
    .await;
    if let Some(Ok(permit)) = granted {
        if sender.send(()).is_ok() {
            // The shard identifies now: asking again later means it lost its session.
            queue.mark_served(permit.shard());
            // Hold mode: the hold lasts until `Queue::release` or the timeout.
            permit.keep();
        }
    }
}
