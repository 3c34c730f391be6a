//! The driver: one tokio task per queue that owns the connection to Redis. It does
//! the I/O for the process side (`local.rs`, which decides, with the clock passed in):
//! it asks for the head of each bucket when that bucket may be free, keeps late
//! permits' buckets busy, sends releases, and gets Discord's word when the shared
//! state needs it.
//!
//! # Implementation details
//!
//! 1. **Redis decides, the process orders.** Only a script's `Grant` answer makes a
//!    grant; the local queues only choose which shard of this process asks next
//!    (priority, then request order), one call per bucket head at a time. The calls of
//!    one round (every due head, every due touch) go out together, pipelined on the
//!    one connection in that order: a round costs one round trip, however many
//!    buckets, and Redis runs them in the order the budget should go.
//! 2. **No polling loop.** A bucket is asked again at the instant Redis named (a
//!    relative wait added to this process's clock after the answer arrived, so it errs
//!    late), or earlier when a notification says its turn came; the timer is only the
//!    fallback for a lost notification. Waiting costs no commands.
//! 3. **A lost answer is asked again with the same nonce**, for the same shard: Redis
//!    returns the grant it made, never a second one.
//! 4. **Fail closed.** Without a connection nothing is granted; the waiting requests
//!    wait, and every bucket asks again once connected.
//! 5. **Deliveries are reported** by the round's first grant call, which carries
//!    them, or by a call of their own when no grant call comes (`report_deliveries`).
//! 6. **Every call carries the window and measures the round trip.** The window sent
//!    is the one its answer is judged by (`Local::answered`, `Local::touched`); a new
//!    link loads the scripts and measures a few `PING`s first, so that no call pays for
//!    a script load and the first window is true.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_core::Stream;
use redis::aio::MultiplexedConnection;
use tokio::time::{Instant, sleep_until};

use super::link::Link;
use super::local::Outgoing;
use super::scripts::{Answer, Call, NeedLimit, Touched, answer};
use super::shared::{Inner, Word};
use super::status::{Health, Snapshot};
use crate::ShardId;

/// Starts the driver on the runtime at hand if none runs. Without a runtime at
/// hand (a plain thread), the next call from one starts it.
pub(super) fn ensure(inner: &Arc<Inner>) {
    start(inner, None);
}

/// [`ensure`], handing a new driver an open link.
pub(super) fn start(inner: &Arc<Inner>, link: Option<Link>) {
    use std::sync::atomic::Ordering;
    if inner.driver_running.swap(true, Ordering::AcqRel) {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn(run(Arc::downgrade(inner), link))),
        Err(_) => inner.driver_running.store(false, Ordering::Release),
    }
}

/// First backoff after a failure; it doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(25);
/// Longest backoff between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long the process that fetches Discord's word may take before another tries.
const SYNC_LEASE: Duration = Duration::from_secs(30);
/// A process waiting for another one's fetch of Discord's word looks again this often.
const SYNC_FALLBACK: Duration = Duration::from_secs(1);

/// Runs until every handle of the queue is gone and nothing is left to send. Starts
/// with `opened` if given (`connect`'s link), else opens one.
pub(super) async fn run(queue: Weak<Inner>, mut opened: Option<Link>) {
    let _running = Running(queue.clone());
    let mut link: Option<Link> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let Some(inner) = queue.upgrade() else { return };
        if inner.finished() {
            return;
        }
        let Some(current) = link.as_mut() else {
            let result = match opened.take() {
                Some(link) => Ok(link),
                None => inner.open_link().await,
            };
            match result {
                Ok(opened) => {
                    inner.set_connection(Some(opened.connection.clone()));
                    link = Some(opened);
                    let mut local = inner.lock();
                    local.stats.connections += 1;
                    if local.stats.connections > 1 {
                        tracing::info!(url = %inner.url, "reconnected to Redis");
                    }
                    local.set_health(Health::Ready);
                    local.retry_all(Instant::now());
                }
                Err(failure) => back_off(inner, failure.to_string(), &mut backoff).await,
            }
            continue;
        };
        let next = match step(&inner, &mut current.connection).await {
            Ok(next) => {
                backoff = FIRST_BACKOFF;
                next
            }
            Err(reason) => {
                // Reconnect (the master may have changed), but not at once: a server
                // that refuses every call (NOREPLICAS, a script error) must not be
                // hammered.
                inner.set_connection(None);
                link = None;
                back_off(inner, reason, &mut backoff).await;
                continue;
            }
        };
        let wake = inner.wake.clone();
        drop(inner);
        let event = tokio::select! {
            () = sleep_until(next) => None,
            () = wake.notified() => None,
            event = next_event(&mut current.events) => Some(event),
        };
        if let Some(event) = event {
            let Some(inner) = queue.upgrade() else { return };
            match event {
                Some(payload) => inner.lock().noticed(&payload, Instant::now()),
                // The subscription ended: the connection is gone.
                None => {
                    tracing::warn!(url = %inner.url, "subscription to Redis ended: reconnecting");
                    inner.set_connection(None);
                    link = None;
                }
            }
        }
    }
}

/// A failure: says why, waits `backoff` (an input cuts it short), and waits longer
/// next time. Takes `inner` so as not to keep the queue alive while it sleeps.
async fn back_off(inner: Arc<Inner>, reason: String, backoff: &mut Duration) {
    tracing::warn!(url = %inner.url, %reason, retry_in = ?*backoff, "Redis unreachable");
    inner.lock().set_health(Health::Unreachable { reason });
    let wake = inner.wake.clone();
    drop(inner);
    tokio::select! {
        () = sleep_until(Instant::now() + *backoff) => {}
        () = wake.notified() => {}
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

/// Clears `driver_running` when the driver ends, returning or dropped with its
/// runtime, so that the queue's next user on a runtime starts another.
struct Running(Weak<Inner>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner
                .driver_running
                .store(false, std::sync::atomic::Ordering::Release);
            // Futures parked on this driver poll again and start the next one.
            let mut local = inner.lock();
            let shards: Vec<ShardId> = local.waiters.keys().copied().collect();
            for shard in shards {
                local.wake(shard);
            }
        }
    }
}

async fn next_event(events: &mut redis::aio::PubSubStream) -> Option<String> {
    let message = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *events).poll_next(cx)).await?;
    Some(message.get_payload::<String>().unwrap_or_default())
}

/// One round: outgoing work, touches, Discord's word if needed, then the heads whose
/// time came. Returns when to run again at the latest.
async fn step(
    inner: &Arc<Inner>,
    connection: &mut MultiplexedConnection,
) -> Result<Instant, String> {
    send_outbox(inner, connection).await?;
    touch_late_grants(inner, connection).await?;
    let (need, fetch_after) = {
        let local = inner.lock();
        (local.need, local.fetch_after)
    };
    if let Some(need) = need {
        if fetch_after.is_some_and(|t| Instant::now() < t) {
            // Not yet (a quarantine after a loss, or another process's fetch).
            return Ok(inner.lock().next_deadline(Instant::now()));
        }
        if !fetch_limit(inner, connection, need).await? {
            let mut local = inner.lock();
            let now = Instant::now();
            local.fetch_after = Some(now + SYNC_FALLBACK);
            return Ok(local.next_deadline(now));
        }
    }
    if inner.lock().replicas_behind {
        // `WAIT` with nothing new written: have the replicas caught up with every
        // write of this connection, the unacknowledged grant included?
        if !acknowledged(inner, connection).await? {
            return Ok(Instant::now());
        }
        let mut local = inner.lock();
        local.replicas_behind = false;
        local.set_health(Health::Ready);
    }
    ask_heads(inner, connection).await?;
    if inner.lock().deliveries_due(Instant::now()) {
        report_deliveries(inner, connection).await?;
    }
    Ok(inner.lock().next_deadline(Instant::now()))
}

/// Tells Redis which permits reached their shards, when no grant call carried them:
/// until it hears, their grants count as undelivered in every word and refill, and
/// none of them settles that Discord's window is open (rules 6.3; `lua/delivered.lua`).
/// A failed call keeps them for the next round; a word that comes late only keeps the
/// shared budget on the safe side.
async fn report_deliveries(
    inner: &Arc<Inner>,
    connection: &mut MultiplexedConnection,
) -> Result<(), String> {
    let delivered = inner.lock().take_deliveries();
    let call = Call::Delivered {
        deliveries: &delivered.0,
    };
    let reply = inner
        .scripts
        .invocation(&inner.prefix, &call)
        .invoke_async::<i64>(connection)
        .await;
    let mut local = inner.lock();
    local.stats.commands += 1;
    reply.map(drop).map_err(|e| {
        local.return_deliveries(delivered, Instant::now());
        e.to_string()
    })
}

async fn send_outbox(
    inner: &Arc<Inner>,
    connection: &mut MultiplexedConnection,
) -> Result<(), String> {
    loop {
        let Some(item) = inner.lock().outbox.pop_front() else {
            return Ok(());
        };
        let result = match &item {
            Outgoing::Release { until, .. } if Instant::now() >= *until => continue,
            &Outgoing::Release { shard, token, .. } => inner
                .scripts
                .invocation(&inner.prefix, &Call::Release { shard, token })
                .invoke_async::<i64>(connection)
                .await
                .map(drop),
            Outgoing::Leave { bucket } => {
                let bucket = *bucket;
                // Waiters may have come back meanwhile: then stay.
                let stay = inner
                    .lock()
                    .buckets
                    .get(&bucket)
                    .is_some_and(|b| !b.queue.is_empty());
                if stay {
                    continue;
                }
                let call = Call::Leave {
                    client: &inner.client,
                    bucket,
                };
                inner
                    .scripts
                    .invocation(&inner.prefix, &call)
                    .invoke_async::<i64>(connection)
                    .await
                    .map(drop)
            }
        };
        inner.lock().stats.commands += 1;
        if let Err(e) = result {
            inner.lock().outbox.push_front(item);
            return Err(e.to_string());
        }
    }
}

/// Spacing counts from delivery: a grant not taken within its window keeps its bucket
/// busy until it is (a touch, carrying this process's window); one whose touch Redis
/// refuses is void, and its shard asks again. Every due touch goes out at once.
async fn touch_late_grants(
    inner: &Arc<Inner>,
    connection: &MultiplexedConnection,
) -> Result<(), String> {
    let (due, window) = {
        let local = inner.lock();
        (local.due_touches(Instant::now()), local.window())
    };
    if due.is_empty() {
        return Ok(());
    }
    let calls = due.iter().map(|&(shard, token)| {
        let mut connection = connection.clone();
        async move {
            let call = Call::Touch {
                shard,
                token,
                window,
            };
            inner
                .scripts
                .invocation(&inner.prefix, &call)
                .invoke_async::<i64>(&mut connection)
                .await
        }
    });
    let sent = Instant::now();
    let replies = in_order(calls.collect()).await;
    let mut local = inner.lock();
    if let Some(first) = first_answer(&replies) {
        local.measured(sent, first);
    }
    let mut failure = None;
    for (&(shard, token), (reply, arrived)) in due.iter().zip(replies) {
        match reply {
            Ok(reply) => {
                local.stats.commands += 1;
                let touched = Touched::from_reply(reply);
                local.touched(shard, token, touched.kept, sent, window, arrived);
                if touched.may_open {
                    local.may_open(shard, token);
                }
            }
            Err(e) => failure = failure.or(Some(e.to_string())),
        }
    }
    failure.map_or(Ok(()), Err)
}

/// When a round of pipelined calls was first answered: its one round trip sample.
fn first_answer<T, E>(replies: &[(Result<T, E>, Instant)]) -> Option<Instant> {
    replies
        .iter()
        .filter(|(reply, _)| reply.is_ok())
        .map(|&(_, at)| at)
        .min()
}

/// Polls `futures` in their order on every pass until all are done (so that calls on a
/// multiplexed connection are sent, pipelined, in that order, and Redis runs them in
/// that order); each output comes with the instant it was ready.
async fn in_order<F: std::future::Future>(futures: Vec<F>) -> Vec<(F::Output, Instant)> {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<(F::Output, Instant)>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some((value, Instant::now())),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// The shared state needs Discord's word. With a limit source, one process fetches
/// it (a lease in Redis decides which) and applies it; the others wait for its
/// notification. Returns whether grants may go on.
async fn fetch_limit(
    inner: &Arc<Inner>,
    connection: &mut MultiplexedConnection,
    need: NeedLimit,
) -> Result<bool, String> {
    let Some(source) = inner.options.limit_source.clone() else {
        inner.lock().set_health(Health::NeedsLimit(need));
        return Ok(false);
    };
    inner.lock().set_health(Health::FetchingLimit(need));
    let lease_key = format!("{}syncing", inner.prefix);
    let won: Option<String> = redis::cmd("SET")
        .arg(&lease_key)
        .arg(&inner.client)
        .arg("NX")
        .arg("PX")
        .arg(SYNC_LEASE.as_millis() as u64)
        .query_async(connection)
        .await
        .map_err(|e| e.to_string())?;
    inner.lock().stats.commands += 1;
    if won.is_none() {
        // Ours from an earlier attempt (the call failed after winning), or another
        // process fetches it: its sync notification wakes us, or the fallback timer
        // asks again.
        let owner: Option<String> = redis::cmd("GET")
            .arg(&lease_key)
            .query_async(connection)
            .await
            .map_err(|e| e.to_string())?;
        inner.lock().stats.commands += 1;
        if owner.as_deref() != Some(inner.client.as_str()) {
            return Ok(false);
        }
    }
    // Another process may have applied the word between the answer that told us
    // it was needed and our lease (it releases the lease when done): look first, so
    // that Discord is asked once.
    let reply: Vec<i64> = inner
        .scripts
        .invocation(&inner.prefix, &Call::Status)
        .invoke_async(connection)
        .await
        .map_err(|e| e.to_string())?;
    inner.lock().stats.commands += 1;
    if Snapshot::from_reply(&reply).is_some_and(|state| state.needs_limit.is_none()) {
        let _: Result<i64, _> = redis::cmd("DEL")
            .arg(&lease_key)
            .query_async(connection)
            .await;
        inner.lock().stats.commands += 1;
        return Ok(true);
    }
    let limit = match tokio::time::timeout(SYNC_LEASE, source()).await {
        Ok(Ok(limit)) => limit,
        Ok(Err(reason)) => {
            inner
                .lock()
                .set_health(Health::LimitSourceFailed { reason });
            return Ok(false);
        }
        Err(_) => {
            inner.lock().set_health(Health::LimitSourceFailed {
                reason: format!("no answer within {SYNC_LEASE:?}"),
            });
            return Ok(false);
        }
    };
    if let Err(e) = limit.validate() {
        inner.lock().set_health(Health::LimitSourceFailed {
            reason: format!("it returned a bad limit: {e}"),
        });
        return Ok(false);
    }
    inner
        .sync(connection, limit, Duration::ZERO, Word::Discord)
        .await
        .map_err(|e| e.to_string())?;
    let _: Result<i64, _> = redis::cmd("DEL")
        .arg(&lease_key)
        .query_async(connection)
        .await;
    inner.lock().stats.commands += 1;
    Ok(true)
}

/// Asks for the head of every bucket whose time came, all at once (one round trip,
/// however many buckets), oldest head first: Redis runs them in that order, so the
/// budget goes to the oldest of this process.
async fn ask_heads(
    inner: &Arc<Inner>,
    connection: &mut MultiplexedConnection,
) -> Result<(), String> {
    let (asks, window, delivered) = {
        let mut local = inner.lock();
        let window = local.window();
        let due = local.due_heads(Instant::now());
        let asks: Vec<_> = due
            .into_iter()
            .filter_map(|((rank, _, shard), index)| {
                let (nonce, next_rank) = local.ask(index, shard, || inner.nonce())?;
                Some((index, shard, rank, nonce, next_rank))
            })
            .collect();
        // The round's first call carries the deliveries Redis has not heard of.
        let delivered = if asks.is_empty() {
            (Vec::new(), false)
        } else {
            local.take_deliveries()
        };
        (asks, window, delivered)
    };
    if asks.is_empty() {
        return Ok(());
    }
    let calls = asks
        .iter()
        .enumerate()
        .map(|(i, (_, shard, rank, nonce, next_rank))| {
            let mut connection = connection.clone();
            let delivered = if i == 0 { delivered.0.as_slice() } else { &[] };
            async move {
                let call = Call::Acquire {
                    client: &inner.client,
                    shard: *shard,
                    nonce,
                    rank: *rank,
                    next_rank: *next_rank,
                    window,
                    delivered,
                };
                inner
                    .scripts
                    .invocation(&inner.prefix, &call)
                    .invoke_async::<Vec<i64>>(&mut connection)
                    .await
            }
        });
    let sent = Instant::now();
    let replies = in_order(calls.collect()).await;
    if replies.first().is_some_and(|(reply, _)| reply.is_err()) {
        // Not heard, perhaps: told again (twice is the same).
        inner.lock().return_deliveries(delivered, Instant::now());
    }
    let first = first_answer(&replies);
    let mut answers = Vec::with_capacity(asks.len());
    let mut failure = None;
    for ((index, shard, ..), (reply, arrived)) in asks.iter().zip(replies) {
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                // Its bucket keeps the nonce: asked again, a grant it made comes back.
                failure = failure.or(Some(e.to_string()));
                continue;
            }
        };
        inner.lock().stats.commands += 1;
        match answer(&reply) {
            Some(answer) => answers.push((*index, *shard, answer, arrived)),
            None => {
                failure = failure.or(Some(format!(
                    "unexpected reply from the acquire script: {reply:?}"
                )))
            }
        }
    }
    // With replicas, permits are handed over only after a `WAIT` for every grant of
    // this batch (one covers them all): the window covers both round trips.
    let granted = answers
        .iter()
        .any(|(.., answer, _)| matches!(answer, Answer::Grant { .. }));
    let mut acknowledged_at = None;
    if granted && inner.options.replicas > 0 {
        let acked = acknowledged(inner, connection).await?;
        acknowledged_at = Some((acked, Instant::now()));
    }
    let mut local = inner.lock();
    // One sample for the round: to its first answer, or with replicas to the `WAIT`'s
    // (the permits are handed over after it, so the window must cover both).
    if let Some(answered) = acknowledged_at.map(|(_, at)| at).or(first) {
        local.measured(sent, answered);
    }
    for (index, shard, answer, arrived) in answers {
        let arrived = match (&answer, acknowledged_at) {
            (Answer::Grant { .. }, Some((false, _))) => {
                // Not on enough replicas: a failover could forget it. Never acted on;
                // its unit counts as spent. No more grants until the replicas catch
                // up (each one would be spent the same way).
                tracing::warn!(
                    shard,
                    "a grant was not acknowledged by the replicas: not acted on, its unit spent",
                );
                local.unacknowledged(index, Instant::now());
                continue;
            }
            (Answer::Grant { .. }, Some((true, at))) => at,
            _ => arrived,
        };
        // Every answer is applied, also those after a refusal for the budget or
        // Discord's word (a grant among them spent a unit).
        local.answered(index, shard, answer, sent, window, arrived);
    }
    failure.map_or(Ok(()), Err)
}

/// `WAIT` for the configured replicas: did they all get this connection's writes?
async fn acknowledged(
    inner: &Arc<Inner>,
    connection: &mut MultiplexedConnection,
) -> Result<bool, String> {
    let acks: i64 = redis::cmd("WAIT")
        .arg(inner.options.replicas)
        .arg(inner.options.replica_timeout.as_millis() as u64)
        .query_async(connection)
        .await
        .map_err(|e| e.to_string())?;
    inner.lock().stats.commands += 1;
    Ok(acks >= i64::from(inner.options.replicas))
}
