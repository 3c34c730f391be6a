//! The driver: one tokio task per queue that owns the connection to Redis. It only
//! does the I/O of the process side, which decides with the clock passed in: `local.rs`
//! keeps the waiting shards and their grants, and `round.rs` says what each round
//! sends (the head of each bucket when that bucket may be free, touches that keep late
//! permits' buckets busy, releases, Discord's word when the shared state needs it) and
//! what each answer means. The simulation of the whole cluster drives the same rounds.
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
//!    them, or by a call of their own when no grant call comes.
//! 6. **Every call carries the window and measures the round trip.** The window sent
//!    is the one its answer is judged by (`Local::answered`, `Local::touched`); a new
//!    link loads the scripts and measures a few `PING`s first, so that no call pays for
//!    a script load and the first window is true.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_core::Stream;
use redis::ScriptInvocation;
use redis::aio::MultiplexedConnection;
use tokio::time::{Instant, sleep_until};

use super::link::Link;
use super::local::Settings;
use super::round::{Command, Next, Reply, Round, SYNC_LEASE, Shape};
use super::shared::Inner;
use super::status::Health;
use crate::{SessionStartLimit, ShardId};

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
                    if inner.lock().connected(Instant::now()) {
                        tracing::info!(url = %inner.url, "reconnected to Redis");
                    }
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

/// One round (`round.rs`): sends what it asks for, pipelined, and hands back what
/// came, until it is over. Returns when to run again at the latest.
async fn step(
    inner: &Arc<Inner>,
    connection: &mut MultiplexedConnection,
) -> Result<Instant, String> {
    let mut round = Round::default();
    loop {
        let next = {
            let mut local = inner.lock();
            round.next(&mut local, Instant::now(), &mut || inner.nonce())
        };
        match next {
            None => return Ok(round.deadline(&inner.lock(), Instant::now())),
            Some(Next::AskSource) => {
                let limit = ask_source(inner).await;
                round.sourced(&mut inner.lock(), limit, Instant::now());
            }
            Some(Next::Send) => {
                let calls: Vec<_> = {
                    let local = inner.lock();
                    round
                        .commands(&local)
                        .into_iter()
                        .map(|command| {
                            let shape = command.reply_shape();
                            let wire = wire(inner, command, &local.settings);
                            let mut connection = connection.clone();
                            async move { send(wire, shape, &mut connection).await }
                        })
                        .collect()
                };
                let sent = Instant::now();
                let replies = in_order(calls).await;
                round.replied(&mut inner.lock(), sent, replies)?;
            }
        }
    }
}

/// A command as the connection sends it.
enum Wire<'a> {
    Script(ScriptInvocation<'a>),
    Command(redis::Cmd),
}

/// `command` on this queue's namespace.
fn wire<'a>(inner: &'a Inner, command: Command<'_>, settings: &Settings) -> Wire<'a> {
    match command {
        Command::Script(call) => Wire::Script(inner.scripts.invocation(&inner.prefix, &call)),
        Command::Plain(plain) => {
            let mut cmd = redis::Cmd::new();
            for word in plain.argv(&inner.prefix, settings) {
                cmd.arg(word);
            }
            Wire::Command(cmd)
        }
    }
}

/// Sends one command and reads its reply as `shape`.
async fn send(
    wire: Wire<'_>,
    shape: Shape,
    connection: &mut MultiplexedConnection,
) -> Result<Reply, String> {
    async fn query<T: redis::FromRedisValue>(
        wire: &Wire<'_>,
        connection: &mut MultiplexedConnection,
    ) -> redis::RedisResult<T> {
        match wire {
            Wire::Script(invocation) => invocation.invoke_async(connection).await,
            Wire::Command(cmd) => cmd.query_async(connection).await,
        }
    }
    let reply = match shape {
        Shape::Int => query(&wire, connection).await.map(Reply::Int),
        Shape::Ints => query(&wire, connection).await.map(Reply::Ints),
        Shape::Text => query(&wire, connection).await.map(Reply::Text),
    };
    reply.map_err(|e| e.to_string())
}

/// Discord's word from the limit source, within the fetch's lease.
async fn ask_source(inner: &Inner) -> Result<SessionStartLimit, String> {
    let Some(source) = inner.options.limit_source.clone() else {
        return Err("no limit source".into());
    };
    match tokio::time::timeout(SYNC_LEASE, source()).await {
        Ok(limit) => limit,
        Err(_) => Err(format!("no answer within {SYNC_LEASE:?}")),
    }
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
