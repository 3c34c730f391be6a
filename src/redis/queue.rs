//! `Queue`: the cluster queue's handle, and what its driver and futures share.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::driver;
use super::error::{ConnectError, Failure};
use super::link::Target;
use super::local::{Local, Phase, Settings};
use super::options::Options;
use super::scripts::{Call, Scripts};
use super::shared::{Inner, Word};
use super::status::{ClusterStats, Health, Snapshot};
use super::{Acquire, Grants};
use crate::{Config, Error, OnConflict, Priority, SessionStartLimit, ShardId};

/// A queue whose budget and buckets are shared, through Redis, by every process of a
/// bot that connects with the same namespace. Clone it freely: clones share one
/// driver task and one connection.
///
/// Requires feature `redis`; runs on tokio.
#[derive(Clone)]
pub struct Queue {
    pub(super) inner: Arc<Inner>,
    /// Dropped with the last handle: the driver ends once nothing waits.
    _handle: Arc<Handle>,
}

struct Handle(Arc<Inner>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.wake.notify_one();
    }
}

impl Queue {
    /// Connects to Redis and applies `limit`, Discord's word just read, to the shared
    /// budget (less the grants Discord may not have counted: see
    /// [`update`](Self::update)). A limit read a while ago (before a retry loop around
    /// `connect`, say) should be re-read, or applied with
    /// [`update_with_age`](Self::update_with_age) once connected.
    ///
    /// `url` is `redis://host:port/db` for one server, or
    /// `redis+sentinel://host:port,host:port/master-name[/db]` for Sentinel, which is
    /// asked for the master again after any failure. `namespace` is the same string in
    /// every process of one bot (its application id, say).
    ///
    /// Every process of the bot should use the same `config` and [`Options`]: the
    /// last process to connect (or update) sets the spacing, the hold timeout and the
    /// head grace that Redis applies to all of them.
    ///
    /// Errors, changing nothing: a bad `limit`, `config`, `namespace` or `url`; Redis
    /// out of reach, or a server that may evict the state (the error says why); a
    /// Sentinel URL without a fence against a cut-off master
    /// ([`Options::replicas`]).
    pub async fn connect(
        url: impl AsRef<str>,
        namespace: impl AsRef<str>,
        limit: SessionStartLimit,
        config: Config,
    ) -> Result<Self, ConnectError> {
        Self::connect_with(url, namespace, limit, config, Options::default()).await
    }

    /// [`connect`](Self::connect) with cluster [`Options`].
    pub async fn connect_with(
        url: impl AsRef<str>,
        namespace: impl AsRef<str>,
        limit: SessionStartLimit,
        config: Config,
        options: Options,
    ) -> Result<Self, ConnectError> {
        let (url, namespace) = (url.as_ref(), namespace.as_ref());
        Self::open(url, namespace, limit, config, options, Word::Discord).await
    }

    /// [`connect`](Self::connect) with a limit that is not Discord's word (the
    /// server's static flags): it seeds a namespace that holds no state, and a
    /// namespace with state is taken as it is.
    #[cfg(feature = "server")]
    pub(crate) async fn connect_seeding(
        url: &str,
        namespace: &str,
        limit: SessionStartLimit,
        config: Config,
    ) -> Result<Self, ConnectError> {
        Self::open(
            url,
            namespace,
            limit,
            config,
            Options::default(),
            Word::Seed,
        )
        .await
    }

    async fn open(
        url: &str,
        namespace: &str,
        limit: SessionStartLimit,
        config: Config,
        options: Options,
        word: Word,
    ) -> Result<Self, ConnectError> {
        limit.validate()?;
        config.validate()?;
        options.validate()?;
        check_namespace(namespace)?;
        let target = Target::parse(url)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConnectError::NoTokioRuntime);
        }
        let prefix = key_prefix(namespace);
        let channel = format!("{prefix}ev");
        let client = client_id();
        let settings = Settings::new(client.clone(), &config, &options);
        let inner = Arc::new(Inner {
            local: Mutex::new(Local::new(settings, limit.max_concurrency, limit.remaining)),
            wake: Arc::new(Notify::new()),
            target,
            // Logs and errors show it: without its password.
            url: super::link::redacted(url),
            channel,
            client,
            nonces: Default::default(),
            driver_running: Default::default(),
            prefix,
            config,
            options,
            scripts: Scripts::new(),
            connection: Mutex::new(None),
        });
        let link = inner
            .open_link()
            .await
            .map_err(|reason| inner.unreachable(reason))?;
        let mut connection = link.connection.clone();
        if matches!(inner.target, Target::Sentinel { .. }) && inner.options.replicas == 0 {
            minority_fence(&mut connection).await?;
        }
        inner
            .sync(&mut connection, limit, Duration::ZERO, word)
            .await?;
        // The driver goes on with this connection.
        driver::start(&inner, Some(link));
        Ok(Self {
            _handle: Arc::new(Handle(inner.clone())),
            inner,
        })
    }

    /// Waits until `shard` may IDENTIFY: granted in Redis (and acknowledged by the
    /// configured replicas), then delivered by this future. The request is made when
    /// the future is first polled; it resolves to
    /// [`AcquireError::Refused`](crate::AcquireError::Refused) (with
    /// [`Error::AlreadyQueued`]) if the shard already waits in this queue. A shard that lost its session should use
    /// [`acquire_with`](Self::acquire_with) and [`Priority::Reconnect`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits cancels the request: nothing is spent, and
    /// no process waits behind it. Dropped after its grant came back from Redis but
    /// before it returned the permit, the unit is spent (the safe side) and, in hold
    /// mode, the hold is released.
    pub fn acquire(&self, shard: ShardId) -> Acquire {
        self.acquire_with(shard, Priority::Start)
    }

    /// [`acquire`](Self::acquire) with a priority: a [`Priority::Reconnect`] goes
    /// before this process's shards that are still starting, in its bucket and for
    /// the budget. Across processes, each bucket serves its waiting processes in
    /// turn, a reconnect's process first.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Self::acquire).
    pub fn acquire_with(&self, shard: ShardId, priority: Priority) -> Acquire {
        Acquire::new(self.clone(), shard, priority, OnConflict::Refuse)
    }

    /// Like [`acquire`](Self::acquire), but if `shard` already waits here (or its
    /// grant is on its way to a future that has not taken it), this request takes over
    /// its place in line and the older one resolves to
    /// [`AcquireError::Superseded`](crate::AcquireError::Superseded). For
    /// integrations (twilight) in which asking again means the earlier request was
    /// abandoned.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Self::acquire). Dropping the future that took a place over
    /// cancels the request: the older future is not given its place back.
    pub fn acquire_replacing(&self, shard: ShardId) -> Acquire {
        Acquire::new(self.clone(), shard, Priority::Start, OnConflict::TakeOver)
    }

    /// Acquires every shard of `shards`: a stream of permits in the order they are
    /// granted.
    ///
    /// # Cancel safety
    ///
    /// Dropping the stream cancels the requests still waiting, as dropping each
    /// [`acquire`](Self::acquire) future would.
    pub fn acquire_all(&self, shards: impl IntoIterator<Item = ShardId>) -> Grants {
        Grants::new(self.clone(), shards.into_iter().collect())
    }

    /// Releases the hold of `shard`'s latest delivered grant (hold mode), as
    /// [`Permit::release`](super::Permit#method.release) does, for integrations in which
    /// the permit was [kept](super::Permit#method.keep) rather than held by the shard's
    /// code; whether it still held its bucket (as far as this process knows: its hold
    /// had not timed out). The release is sent by the queue's driver.
    pub fn release(&self, shard: ShardId) -> bool {
        let hold = self.inner.lock().holds.remove(&shard);
        match hold {
            Some((token, until)) if Instant::now() < until => {
                self.inner.release(shard, token);
                true
            }
            _ => false,
        }
    }

    /// Discord's word: a fresh `session_start_limit` (e.g. after re-reading
    /// `/gateway/bot`, just now) sets the shared budget, less the grants Discord may
    /// not have counted (see [the budget's
    /// accounting](super#the-budgets-accounting)), and resumes grants paused for lack
    /// of it. A new `max_concurrency` re-keys every process's buckets. After Redis lost
    /// the state ([`Health::NeedsLimit`]), a word read within the longest delivery
    /// window (10 s) and a grace of the loss is applied less what the buckets can have
    /// granted before the loss: read it again after that to have the units back.
    ///
    /// Errors, changing nothing: a bad limit, or Redis out of reach.
    pub async fn update(&self, limit: SessionStartLimit) -> Result<(), ConnectError> {
        self.update_with_age(limit, Duration::ZERO).await
    }

    /// [`update`](Self::update) with a word read `age` ago (a limit read at start-up
    /// and applied after a retry loop, say): the grants that reached their shards
    /// within [`grace`](Config::grace) before it was *read* are subtracted, and its
    /// `reset_after` counts from the read.
    ///
    /// Errors, changing nothing: a bad limit, or Redis out of reach.
    pub async fn update_with_age(
        &self,
        limit: SessionStartLimit,
        age: Duration,
    ) -> Result<(), ConnectError> {
        limit.validate()?;
        let connection = self.inner.connection();
        let mut connection = match connection {
            Some(connection) => connection,
            None => {
                let link = self
                    .inner
                    .open_link()
                    .await
                    .map_err(|reason| self.inner.unreachable(reason))?;
                link.connection
            }
        };
        self.inner
            .sync(&mut connection, limit, age, Word::Discord)
            .await?;
        self.inner.wake.notify_one();
        Ok(())
    }

    /// The shared state as Redis holds it now: budget left, next reset, each bucket's
    /// next free instant, the epoch. `Ok(None)` when Redis holds no state (restarted
    /// empty: it waits for Discord's word).
    pub async fn snapshot(&self) -> Result<Option<Snapshot>, ConnectError> {
        let connection = self.inner.connection();
        let Some(mut connection) = connection else {
            return Err(self.inner.unreachable("not connected".to_owned()));
        };
        let reply: Vec<i64> = self
            .inner
            .scripts
            .invocation(&self.inner.prefix, &Call::Status)
            .invoke_async(&mut connection)
            .await
            .map_err(|e| {
                self.inner
                    .unreachable(Failure::redis("the status script", e))
            })?;
        Ok(Snapshot::from_reply(&reply))
    }

    /// What grants wait for in this process now (Redis unreachable, Discord's word,
    /// the budget, a link slower than the spacing), for a log line or a health check.
    pub fn health(&self) -> Health {
        self.inner.lock().health()
    }

    /// This process's shards whose request has not resolved: waiting for their grant
    /// (on Redis included), or granted and not yet taken by their future.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// Whether no shard of this process waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shared budget left, as of this process's last answer from Redis.
    pub fn remaining(&self) -> u32 {
        self.inner.lock().remaining
    }

    /// A lower bound on when `shard` is granted, from what this process knows (other
    /// processes may go first), on tokio's clock as a `std` instant; `None` if it does
    /// not wait for its grant.
    pub fn eta(&self, shard: ShardId) -> Option<std::time::Instant> {
        let local = self.inner.lock();
        let waiter = local.waiters.get(&shard)?;
        if !matches!(waiter.phase, Phase::Waiting) {
            return None;
        }
        let bucket = local.buckets.get(&local.bucket_of(shard))?;
        let ahead = bucket.queue.range(..waiter.key(shard)).count() as u32;
        let head_at = bucket.next_try.unwrap_or_else(Instant::now);
        // `spacing()` would take the lock again (not reentrant): read it here.
        let round = local.settings.spacing + local.window();
        Some((head_at + round.saturating_mul(ahead)).into_std())
    }

    /// The spacing Redis keeps between two grants of a bucket made for this process:
    /// the interval, the margin, this process's delivery window (see
    /// [`ClusterStats::window`]) and a millisecond for Redis's whole-millisecond
    /// clock. A round of a bucket costs about this plus the asking process's round
    /// trip (the wait it is told arrives half a round trip late, its call arrives half
    /// a round trip after it is sent).
    pub fn spacing(&self) -> Duration {
        let local = self.inner.lock();
        local.settings.spacing + local.window()
    }

    /// Counters: commands sent, grants, refusals, touches, undelivered grants, the
    /// round trip and the delivery window.
    pub fn stats(&self) -> ClusterStats {
        self.inner.lock().stats()
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .field("len", &self.len())
            .field("health", &self.health())
            .finish()
    }
}

/// Whether `connect` could take `url` and `namespace` (their syntax alone): for a
/// caller that checks its settings before it serves (the server's flags).
#[cfg(feature = "server")]
pub(crate) fn check_target(url: &str, namespace: &str) -> Result<(), Error> {
    check_namespace(namespace)?;
    Target::parse(url).map(drop)
}

fn check_namespace(namespace: &str) -> Result<(), Error> {
    let bad = |reason| {
        Err(Error::InvalidNamespace {
            namespace: namespace.to_owned(),
            reason,
        })
    };
    if namespace.is_empty() {
        return bad("empty: use the same non-empty string in every process of the bot");
    }
    if namespace.contains(['{', '}']) {
        return bad("contains `{` or `}`, which would break the keys' hash tag");
    }
    if namespace.chars().any(char::is_control) {
        return bad("contains control characters");
    }
    Ok(())
}

/// With Sentinel, a master cut off from the others (a partition) keeps serving the
/// processes that still reach it while the others promote a replica: both sides would
/// grant. A grant must then need a replica on the majority side: `Options::replicas`
/// (grants wait for `WAIT`), or the master's `min-replicas-to-write` (it refuses writes
/// without a replica in reach). Refuses the connection if neither is set.
async fn minority_fence(connection: &mut MultiplexedConnection) -> Result<(), Error> {
    let refuse = |found: String| Error::InvalidOption {
        option: "replicas",
        reason: format!(
            "with Sentinel, a master cut off from the others would keep granting: set \
             `Options::replicas` to 1 or more, or `min-replicas-to-write` to 1 or more on \
             the master ({found})"
        ),
    };
    let reply: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("min-replicas-to-write")
        .query_async(connection)
        .await;
    match reply {
        Ok(pair) => match pair.get(1).and_then(|v| v.parse::<u32>().ok()) {
            Some(n) if n >= 1 => Ok(()),
            _ => Err(refuse(format!("min-replicas-to-write is {pair:?}"))),
        },
        Err(e) => Err(refuse(format!("CONFIG GET failed: {e}"))),
    }
}

/// A name for this queue among the contenders: process id, time, and a counter.
/// `iq:{<namespace>}:`: the prefix of every key of `namespace` (the braces keep them
/// in one Redis Cluster slot), the scripts' `KEYS[1]`.
pub(super) fn key_prefix(namespace: &str) -> String {
    format!("iq:{{{namespace}}}:")
}

fn client_id() -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let count = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{nanos:x}-{count}", std::process::id())
}
