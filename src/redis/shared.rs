//! What every clone of a cluster queue, its futures, its permits and its driver share:
//! the process's side of the queue (`Local`, under one lock), the link's settings,
//! and the calls that apply Discord's word in Redis. The facade is in `queue.rs`, the
//! task that talks to Redis in `driver.rs`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::error::{ConnectError, Failure, Unreachable};
use super::link::{Link, Target};
use super::local::{Local, Ticket};
use super::options::Options;
use super::scripts::{Call, Scripts, Synced};
use crate::{Config, SessionStartLimit, ShardId};

/// Round trips measured on each new link before it is used.
const PINGS: usize = 4;

/// How a limit is applied to the shared state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Word {
    /// Discord's word: it sets the budget (rules 3.11).
    Discord,
    /// A limit of the caller's (a server's static flags): it seeds a namespace that
    /// holds no state, and changes nothing in one that does.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    Seed,
}

/// The process's side of one cluster queue.
pub(super) struct Inner {
    pub(super) local: Mutex<Local>,
    pub(super) wake: Arc<Notify>,
    pub(super) target: Target,
    pub(super) url: String,
    /// `iq:{<namespace>}:`: every key of the namespace.
    pub(super) prefix: String,
    pub(super) channel: String,
    /// This queue's name among the contenders: unique per connect.
    pub(super) client: String,
    pub(super) nonces: std::sync::atomic::AtomicU64,
    /// A driver task runs (or was just spawned). It clears this when it ends, also
    /// when its runtime drops it: the next poll on a runtime starts another.
    pub(super) driver_running: std::sync::atomic::AtomicBool,
    pub(super) config: Config,
    pub(super) options: Options,
    pub(super) scripts: Scripts,
    /// The driver's connection, for the calls a user makes (`update`, `snapshot`).
    pub(super) connection: Mutex<Option<MultiplexedConnection>>,
}

/// The queue's state, locked. Dropped, it releases the lock, then wakes the futures
/// and streams told to look again meanwhile (`Local::woken`): collect, unlock, then
/// wake, as the runtime queue does and tokio's `batch_semaphore`.
pub(super) struct Locked<'a>(Option<MutexGuard<'a, Local>>);

impl std::ops::Deref for Locked<'_> {
    type Target = Local;

    fn deref(&self) -> &Local {
        self.0.as_deref().expect("the guard is only taken by drop")
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Local {
        self.0
            .as_deref_mut()
            .expect("the guard is only taken by drop")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if let Some(mut local) = self.0.take() {
            let woken = std::mem::take(&mut local.woken);
            drop(local);
            for waker in woken {
                waker.wake();
            }
        }
    }
}

impl Inner {
    pub(super) fn lock(&self) -> Locked<'_> {
        // A panic elsewhere must not stop the queue: its state stays consistent
        // between statements.
        Locked(Some(
            self.local
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        ))
    }

    /// The driver's connection, if it has one now.
    pub(super) fn connection(&self) -> Option<MultiplexedConnection> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The driver's connection changed (`None`: lost).
    pub(super) fn set_connection(&self, connection: Option<MultiplexedConnection>) {
        *self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = connection;
    }

    /// What the user sees of a failure to use Redis.
    pub(super) fn unreachable(&self, failure: impl Into<Failure>) -> ConnectError {
        ConnectError::Unreachable(Unreachable::new(&self.url, failure.into()))
    }

    /// Longer than a `WAIT` for replicas, so that the wait is not cut short.
    pub(super) fn response_timeout(&self) -> Duration {
        self.options.replica_timeout + Duration::from_secs(1)
    }

    pub(super) fn nonce(&self) -> String {
        let n = self
            .nonces
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}:{n}", self.client)
    }

    pub(super) fn hold(&self) -> Option<Duration> {
        self.config.get_hold_timeout()
    }

    /// The handles are gone and nothing is left to send or deliver.
    pub(super) fn finished(&self) -> bool {
        let local = self.lock();
        local.closed && local.waiters.is_empty() && local.outbox.is_empty()
    }

    /// Applies Discord's word to the shared state (the sync script). `Word::Seed`: only
    /// if the namespace holds no state (a limit that is not Discord's word, such as a
    /// server's static flags, must not overwrite what every process of the bot spent).
    pub(super) async fn sync(
        &self,
        connection: &mut MultiplexedConnection,
        limit: SessionStartLimit,
        age: Duration,
        word: Word,
    ) -> Result<(), ConnectError> {
        let args = self.lock().sync_args(limit, age, word == Word::Seed);
        let reply: Vec<i64> = self
            .scripts
            .invocation(&self.prefix, &Call::Sync(args))
            .invoke_async(connection)
            .await
            .map_err(|e| self.unreachable(Failure::redis("the sync script", e)))?;
        let mut local = self.lock();
        local.stats.commands += 1;
        local.applied(Synced::from_reply(&reply), limit, Instant::now());
        tracing::info!(
            total = limit.total,
            remaining = limit.remaining,
            reset_after = ?limit.reset_after,
            max_concurrency = limit.max_concurrency,
            budget = local.remaining,
            "{}",
            match word {
                Word::Discord => "Discord's word applied",
                // A seed changes nothing where the namespace holds state.
                Word::Seed => "a static limit offered: it seeds a namespace without state",
            },
        );
        Ok(())
    }

    /// The futures of `requests` (and stream `stream`, if one) are gone: each request
    /// leaves its queue, or its grant not taken is spent and its hold released; the
    /// driver is woken if that left something to send.
    pub(super) fn abandon(
        &self,
        stream: Option<u64>,
        requests: impl IntoIterator<Item = (ShardId, Ticket)>,
    ) {
        let now = Instant::now();
        let mut local = self.lock();
        if let Some(id) = stream {
            local.streams.remove(&id);
        }
        for (shard, ticket) in requests {
            local.abandon(shard, ticket, now);
        }
        let wake = !local.outbox.is_empty();
        drop(local);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Hold mode: sends a release for the grant `token` of `shard`.
    pub(super) fn release(&self, shard: ShardId, token: super::scripts::Token) {
        if self.hold().is_none() {
            return;
        }
        self.lock().release(shard, token, Instant::now());
        self.wake.notify_one();
    }

    /// Opens a link to the master: a connection, and a subscription to the wake-up
    /// channel and to this queue's own channel (its subscriber count tells the others
    /// that this process lives).
    ///
    /// Then loads the scripts and measures the round trip (a few `PING`s), so that
    /// the first calls carry a true delivery window.
    pub(super) async fn open_link(&self) -> Result<Link, Failure> {
        let alive = format!("{}p:{}", self.prefix, self.client);
        let mut link = Link::open(
            &self.target,
            &[&self.channel, &alive],
            self.response_timeout(),
        )
        .await?;
        let failed = |e: redis::RedisError| Failure::redis(&self.url, e);
        self.scripts
            .load(&mut link.connection)
            .await
            .map_err(failed)?;
        for _ in 0..PINGS {
            let sent = Instant::now();
            let _: String = redis::cmd("PING")
                .query_async(&mut link.connection)
                .await
                .map_err(failed)?;
            self.lock().measured(sent, Instant::now());
        }
        self.lock().stats.commands += 1 + PINGS as u64;
        Ok(link)
    }
}
