//! The cluster queue as a [`twilight_gateway_queue::Queue`]: a twilight cluster
//! switches with one line, `.queue(queue.clone())` on its `ConfigBuilder`.
//!
//! The contract is kept as by the single-process tokio queue (see
//! [`crate::twilight`]): a dropped receiver cancels the request, a shard served
//! before asks again as a [`Priority::Reconnect`](crate::Priority), an error closes
//! the channel so that the shard asks again, and in hold mode the grant holds its
//! bucket until [`Queue::release`] or the hold timeout.

use ::tokio::sync::oneshot;

use super::Queue;
use crate::ShardId;
use crate::twilight::forward;

impl twilight_gateway_queue::Queue for Queue {
    fn enqueue(&self, shard: ShardId) -> oneshot::Receiver<()> {
        let (sender, receiver) = oneshot::channel();
        let (queue, acquire) = (self.clone(), self.acquire_inferring(shard));
        ::tokio::spawn(async move {
            if let Some(permit) = forward(acquire, sender).await {
                // The shard identifies now: asking again later means it lost its
                // session.
                queue.mark_served(permit.shard());
                // Hold mode: the hold lasts until `Queue::release` or the timeout.
                permit.keep();
            }
        });
        receiver
    }
}
