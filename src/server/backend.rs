//! The queue behind the server: the tokio queue in memory, or the cluster queue on
//! Redis. Both grant the same way; the server only adds HTTP around them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::discord::Discord;
use super::lock;
pub(super) use crate::redis::request_keys::{Holder, KeyOp};
use crate::{AcquireError, Config, Error, Priority, SessionStartLimit, ShardId};

/// Why the queue could not start or take Discord's word (bad input, Redis out of
/// reach), for a log line and `/readyz`.
pub(super) type Failure = Box<dyn std::error::Error + Send + Sync>;

/// The queue, and what the server keeps beside it.
pub(super) struct Backend {
    queue: Kind,
    /// The error a request met last, while requests keep meeting errors (for
    /// `/readyz`): cleared by the next grant.
    failing: std::sync::Mutex<Option<String>>,
    /// Per shard with a request being made: woken when one ends, so that a duplicate
    /// of it (the same shard asked again before its earlier request went) waits for
    /// that end rather than on a timer.
    ends: std::sync::Mutex<HashMap<ShardId, Arc<Notify>>>,
}

/// One of the two queues.
enum Kind {
    /// One server, its queue in memory.
    Memory(crate::tokio::Queue),
    /// Any number of servers on one Redis namespace.
    Cluster(crate::redis::Queue),
}

/// A grant, kept until the response is written.
pub(super) enum Permit {
    Memory(crate::tokio::Permit),
    Cluster(crate::redis::Permit),
}

impl Permit {
    /// The response carries no release: in hold mode the hold runs to its timeout.
    pub(super) fn keep(self) {
        match self {
            Self::Memory(permit) => permit.keep(),
            Self::Cluster(permit) => permit.keep(),
        }
    }
}

/// How a request meets a request of its shard that waits already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Duplicate {
    /// It waits for that one to end (the native API: each key is a client's
    /// attempt, kept until it is cancelled or its lease ends).
    WaitsBehind,
    /// It takes that one's place, which is never answered (twilight's route: a
    /// client asks again only once it gave up its earlier request).
    Replaces,
}

/// The longest pause between two tries of a request that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Backend {
    /// The queue for `limit`: in memory, or on Redis when a URL is given. A limit that
    /// is not Discord's (`source` is `None`: the static flags) only seeds a namespace
    /// without state: one with state is the bot's, spent by every server of it, and is
    /// taken as it is. With `source`, the cluster asks it for Discord's word whenever
    /// the shared state needs one (Redis restarted empty or failed over).
    pub(super) async fn start(
        limit: SessionStartLimit,
        source: Option<Arc<Discord>>,
        config: Config,
        redis: Option<(&str, &str)>,
    ) -> Result<Self, Failure> {
        use crate::redis::{Options, Queue};
        let queue = match (redis, source) {
            (None, _) => Kind::Memory(quiet_start(limit, config)?),
            (Some((url, namespace)), Some(discord)) => {
                let options = Options::default().limit_source(move || {
                    let discord = Arc::clone(&discord);
                    Box::pin(async move {
                        discord
                            .read()
                            .await
                            .map(|word| word.limit)
                            .map_err(|failed| failed.reason)
                    })
                });
                Kind::Cluster(Queue::connect_with(url, namespace, limit, config, options).await?)
            }
            (Some((url, namespace)), None) => {
                Kind::Cluster(Queue::connect_seeding(url, namespace, limit, config).await?)
            }
        };
        Ok(Self {
            queue,
            failing: std::sync::Mutex::new(None),
            ends: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Waits for `shard`'s turn. Cancel safe: dropped while waiting, nothing is spent.
    async fn acquire(
        &self,
        shard: ShardId,
        priority: Priority,
        duplicate: Duplicate,
    ) -> Result<Permit, AcquireError> {
        match (&self.queue, duplicate) {
            (Kind::Memory(queue), Duplicate::WaitsBehind) => queue
                .acquire_with(shard, priority)
                .await
                .map(Permit::Memory),
            (Kind::Memory(queue), Duplicate::Replaces) => {
                queue.acquire_replacing(shard).await.map(Permit::Memory)
            }
            (Kind::Cluster(queue), Duplicate::WaitsBehind) => queue
                .acquire_with(shard, priority)
                .await
                .map(Permit::Cluster),
            (Kind::Cluster(queue), Duplicate::Replaces) => {
                queue.acquire_replacing(shard).await.map(Permit::Cluster)
            }
        }
    }

    /// Waits for `shard`'s turn, asking again after any error: over HTTP a request
    /// that can still be served is a wait, never an error. An error is logged once
    /// while it repeats, shown by `/readyz`, and asked again after a backoff (50 ms,
    /// doubling to 5 s). A request taken over by a newer one of its shard
    /// ([`Duplicate::Replaces`]) never resolves. Cancel safe, as `acquire`.
    pub(super) async fn acquire_until_granted(
        &self,
        shard: ShardId,
        priority: Priority,
        duplicate: Duplicate,
    ) -> Permit {
        let end = End {
            backend: self,
            shard,
            notify: self.ends_of(shard),
        };
        let mut backoff = Duration::from_millis(50);
        let mut logged: Option<String> = None;
        loop {
            let ended = end.notify.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            match self.acquire(shard, priority, duplicate).await {
                Ok(granted) => {
                    *lock(&self.failing) = None;
                    return granted;
                }
                // Taken over by a newer request of its shard (twilight's route): on
                // that route this one is abandoned; a native ticket asks again, behind.
                Err(AcquireError::Superseded(_)) if duplicate == Duplicate::Replaces => {
                    std::future::pending::<()>().await;
                }
                Err(AcquireError::Superseded(_)) => continue,
                // The same shard waits already: wait for that one to end (a timer
                // too, in case it ended between our try and the wait).
                Err(AcquireError::Refused(Error::AlreadyQueued(_))) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ended).await;
                    continue;
                }
                Err(error) => {
                    let error = error.to_string();
                    if logged.as_deref() != Some(error.as_str()) {
                        tracing::warn!(shard, %error, "acquire failed; asking again with backoff");
                        logged = Some(error.clone());
                    }
                    *lock(&self.failing) = Some(error);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Whether request keys are shared with other servers (cluster mode).
    pub(super) fn shares_keys(&self) -> bool {
        matches!(self.queue, Kind::Cluster(_))
    }

    /// `op` on the native API's request key `key`, shared with the other servers of
    /// the namespace; in memory every key is this server's.
    pub(super) async fn request_key(&self, op: KeyOp, key: &str) -> Result<Holder, String> {
        match &self.queue {
            Kind::Memory(_) => Ok(Holder::Us),
            Kind::Cluster(queue) => queue.request_key(op, key).await,
        }
    }

    /// Who holds each of `keys` (all this server's, in memory).
    pub(super) async fn request_key_holders(&self, keys: &[&str]) -> Result<Vec<Holder>, String> {
        match &self.queue {
            Kind::Memory(_) => Ok(vec![Holder::Us; keys.len()]),
            Kind::Cluster(queue) => queue.request_key_holders(keys).await,
        }
    }

    /// Keeps `keys` alive in Redis for `ttl` (nothing to do in memory).
    pub(super) async fn renew_request_keys(
        &self,
        keys: &[&str],
        ttl: Duration,
    ) -> Result<(), String> {
        match &self.queue {
            Kind::Memory(_) => Ok(()),
            Kind::Cluster(queue) => queue.renew_request_keys(keys, ttl).await,
        }
    }

    /// The notification of `shard`'s request ends, made if new.
    fn ends_of(&self, shard: ShardId) -> Arc<Notify> {
        Arc::clone(lock(&self.ends).entry(shard).or_default())
    }

    /// Applies Discord's word, read `age` ago.
    pub(super) async fn update(
        &self,
        limit: SessionStartLimit,
        age: Duration,
    ) -> Result<(), Failure> {
        match &self.queue {
            Kind::Memory(queue) => Ok(queue.update_with_age(limit, age)?),
            Kind::Cluster(queue) => Ok(queue.update_with_age(limit, age).await?),
        }
    }

    /// Why grants cannot flow now, if they cannot: the cluster's health, or the error
    /// requests keep meeting.
    pub(super) fn not_ready(&self) -> Option<String> {
        use crate::redis::Health;
        if let Kind::Cluster(queue) = &self.queue {
            match queue.health() {
                Health::Ready | Health::NoBudget { .. } => {}
                health => return Some(format!("cluster: {health:?}")),
            }
        }
        lock(&self.failing)
            .as_ref()
            .map(|error| format!("requests fail: {error}"))
    }

    /// Whether the cluster waits for Discord's word that nobody will give it (a
    /// static limit, and Redis lost the state).
    pub(super) fn needs_an_operator(&self) -> bool {
        match &self.queue {
            Kind::Memory(_) => false,
            Kind::Cluster(queue) => matches!(queue.health(), crate::redis::Health::NeedsLimit(_)),
        }
    }

    /// The budget and what it knows of its reset, now.
    pub(super) async fn budget(&self) -> Budget {
        match &self.queue {
            Kind::Memory(queue) => {
                let limit = queue.limit();
                let now = Instant::now();
                let bucket_free_in = (0..limit.max_concurrency.min(MAX_BUCKETS_SHOWN))
                    .map(|bucket| {
                        let free = queue.bucket_free_at(bucket)?;
                        Some(free.saturating_duration_since(now))
                    })
                    .collect();
                Budget {
                    total: Some(limit.total),
                    remaining: limit.remaining,
                    reset_after: Some(limit.reset_after).filter(|after| *after != Duration::MAX),
                    max_concurrency: limit.max_concurrency,
                    bucket_free_in,
                }
            }
            Kind::Cluster(queue) => {
                let snapshot = queue.snapshot().await.ok().flatten();
                Budget {
                    total: None,
                    remaining: snapshot.as_ref().map_or(queue.remaining(), |s| s.remaining),
                    reset_after: snapshot.as_ref().and_then(|s| s.reset_in),
                    max_concurrency: snapshot.as_ref().map_or(0, |s| s.max_concurrency),
                    bucket_free_in: snapshot
                        .map(|s| s.bucket_free_in.into_iter().map(Some).collect())
                        .unwrap_or_default(),
                }
            }
        }
    }

    /// The earliest instant `shard` may be granted, if it waits here.
    pub(super) fn eta(&self, shard: ShardId) -> Option<Instant> {
        match &self.queue {
            Kind::Memory(queue) => queue.eta(shard),
            Kind::Cluster(queue) => queue.eta(shard),
        }
    }
}

/// The most buckets [`quiet_start`] keeps busy: Discord's `max_concurrency` is 16 for
/// most large bots, rarely above a few hundred.
const MAX_QUIET_BUCKETS: u32 = 1 << 16;

/// An in-memory queue that treats every bucket as granted at its start, busy for an
/// interval: it cannot know what the process before it granted (a crash, a restart
/// within Discord's window), so it never grants a bucket sooner than an interval
/// after it starts. Each bucket is occupied by the shard of its own number, an
/// occupation that follows that shard if an update re-keys the buckets.
fn quiet_start(limit: SessionStartLimit, config: Config) -> Result<crate::tokio::Queue, Error> {
    let now = crate::tokio::Queue::now();
    let until = now.checked_add(config.get_interval());
    let mut scheduler = crate::Scheduler::with_config(limit, config, now)?;
    let buckets = limit.max_concurrency.min(MAX_QUIET_BUCKETS);
    if buckets < limit.max_concurrency {
        tracing::warn!(
            max_concurrency = limit.max_concurrency,
            "only the first {MAX_QUIET_BUCKETS} buckets are kept busy an interval at start"
        );
    }
    if let Some(until) = until {
        for bucket in 0..buckets {
            scheduler.occupy(bucket, Some(until), now);
        }
    }
    Ok(crate::tokio::Queue::new(scheduler))
}

/// Wakes the duplicates of a request when it ends (granted, or dropped), and forgets
/// the shard's notification when nobody else holds it.
struct End<'a> {
    backend: &'a Backend,
    shard: ShardId,
    notify: Arc<Notify>,
}

impl Drop for End<'_> {
    fn drop(&mut self) {
        self.notify.notify_waiters();
        let mut ends = lock(&self.backend.ends);
        // Ours and the map's only: nobody else waits on it (a clone is taken under
        // this lock).
        if Arc::strong_count(&self.notify) == 2 {
            ends.remove(&self.shard);
        }
    }
}

/// The budget as the status routes report it.
pub(super) struct Budget {
    pub(super) total: Option<u32>,
    pub(super) remaining: u32,
    pub(super) reset_after: Option<Duration>,
    pub(super) max_concurrency: u32,
    /// Each bucket's time until it is free to grant (`None`: only a release frees
    /// it), at most [`MAX_BUCKETS_SHOWN`] of them.
    pub(super) bucket_free_in: Vec<Option<Duration>>,
}

/// The most buckets a status shows (Discord's `max_concurrency` is 16 for most large
/// bots, rarely above a few hundred).
const MAX_BUCKETS_SHOWN: u32 = 1024;
