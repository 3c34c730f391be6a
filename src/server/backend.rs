//! The queue behind the server: the tokio queue in memory, or the cluster queue on
//! Redis. Both grant the same way; the server only adds HTTP around them.

use std::time::{Duration, Instant};

use crate::{AcquireError, Config, Error, Priority, SessionStartLimit, ShardId};

/// Why the queue could not start or take Discord's word (bad input, Redis out of
/// reach), for a log line and `/readyz`.
pub(super) type Failure = Box<dyn std::error::Error + Send + Sync>;

/// One of the two queues.
pub(super) enum Backend {
    /// One server, its queue in memory.
    Memory(crate::tokio::Queue),
    /// Any number of servers on one Redis namespace.
    Cluster(crate::redis::Queue),
}

/// A grant, kept until the response is written.
pub(super) enum Granted {
    Memory(crate::tokio::Permit),
    Cluster(crate::redis::Permit),
}

impl Granted {
    /// The response carries no release: in hold mode the hold runs to its timeout.
    pub(super) fn keep(self) {
        match self {
            Self::Memory(permit) => permit.keep(),
            Self::Cluster(permit) => permit.keep(),
        }
    }
}

impl Backend {
    /// The queue for `limit`: in memory, or on Redis when a URL is given. A limit that
    /// is not `discords` (the static flags) only seeds a namespace without state: one
    /// with state is the bot's, spent by every server of it, and is taken as it is.
    pub(super) async fn start(
        limit: SessionStartLimit,
        discords: bool,
        config: Config,
        redis: Option<(&str, &str)>,
    ) -> Result<Self, Failure> {
        use crate::redis::Queue;
        Ok(match redis {
            None => Self::Memory(quiet_start(limit, config)?),
            Some((url, namespace)) if discords => {
                Self::Cluster(Queue::connect(url, namespace, limit, config).await?)
            }
            Some((url, namespace)) => {
                Self::Cluster(Queue::connect_seeding(url, namespace, limit, config).await?)
            }
        })
    }

    /// Waits for `shard`'s turn. Cancel safe: dropped while waiting, nothing is spent.
    pub(super) async fn acquire(
        &self,
        shard: ShardId,
        priority: Priority,
    ) -> Result<Granted, AcquireError> {
        match self {
            Self::Memory(queue) => queue
                .acquire_with(shard, priority)
                .await
                .map(Granted::Memory),
            Self::Cluster(queue) => queue
                .acquire_with(shard, priority)
                .await
                .map(Granted::Cluster),
        }
    }

    /// Waits for `shard`'s turn, asking again after any error: over HTTP a request
    /// that can still be served is a wait, never an error. Cancel safe, as `acquire`.
    pub(super) async fn acquire_until_granted(
        &self,
        shard: ShardId,
        priority: Priority,
    ) -> Granted {
        loop {
            match self.acquire(shard, priority).await {
                Ok(granted) => return granted,
                // The same shard waits already (a client that asked again before its
                // old request went): wait for that one to go.
                Err(AcquireError::Refused(Error::AlreadyQueued(_))) => {}
                Err(error) => tracing::warn!(shard, %error, "acquire failed; asking again"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Applies Discord's word, read `age` ago.
    pub(super) async fn update(
        &self,
        limit: SessionStartLimit,
        age: Duration,
    ) -> Result<(), Failure> {
        match self {
            Self::Memory(queue) => Ok(queue.update_with_age(limit, age)?),
            Self::Cluster(queue) => Ok(queue.update_with_age(limit, age).await?),
        }
    }

    /// Why grants cannot flow now, if they cannot.
    pub(super) fn not_ready(&self) -> Option<String> {
        match self {
            Self::Memory(_) => None,
            Self::Cluster(queue) => match queue.health() {
                crate::redis::Health::Ready | crate::redis::Health::NoBudget { .. } => None,
                health => Some(format!("cluster: {health:?}")),
            },
        }
    }

    /// The budget and what it knows of its reset, now.
    pub(super) async fn budget(&self) -> Budget {
        match self {
            Self::Memory(queue) => {
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
            Self::Cluster(queue) => {
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
        match self {
            Self::Memory(queue) => queue.eta(shard),
            Self::Cluster(queue) => queue.eta(shard),
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
