//! `Options`: what the cluster queue needs beyond the single-process `Config`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::{Error, SessionStartLimit};

/// A fresh `session_start_limit` from Discord, on demand.
pub type LimitFuture = Pin<Box<dyn Future<Output = Result<SessionStartLimit, String>> + Send>>;

/// Where the queue asks Discord for its word when the shared state needs it.
pub(super) type LimitSource = Arc<dyn Fn() -> LimitFuture + Send + Sync>;

/// Cluster-mode settings; every process of one bot should use the same.
///
/// ```
/// use std::time::Duration;
/// use identify_queue::redis::Options;
///
/// let options = Options::default()
///     // Discord measures arrivals: processes at different distances need a margin.
///     .margin(Duration::from_millis(250))
///     .limit_source(|| Box::pin(async {
///         // e.g. twilight-http: `client.gateway().authed().await?.model().await?`
///         // and its `session_start_limit`, converted.
///         Err("no HTTP client in this example".to_owned())
///     }));
/// ```
#[derive(Clone)]
pub struct Options {
    pub(super) margin: Duration,
    pub(super) replicas: u32,
    pub(super) replica_timeout: Duration,
    pub(super) reserve: u32,
    pub(super) head_grace: Duration,
    pub(super) limit_source: Option<LimitSource>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            margin: Duration::ZERO,
            replicas: 0,
            replica_timeout: Duration::from_millis(500),
            reserve: 0,
            head_grace: Duration::from_secs(1),
            limit_source: None,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("margin", &self.margin)
            .field("replicas", &self.replicas)
            .field("replica_timeout", &self.replica_timeout)
            .field("reserve", &self.reserve)
            .field("head_grace", &self.head_grace)
            .field("limit_source", &self.limit_source.is_some())
            .finish()
    }
}

impl Options {
    /// Added to the interval between two grants of a bucket (zero by default).
    /// Discord measures IDENTIFYs as they arrive, and the processes of a cluster sit
    /// at different network distances from it: in production, a margin of a few
    /// hundred milliseconds keeps a far process's IDENTIFY from arriving too close to a
    /// near one's.
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// With Redis replicas (Sentinel): a grant is acted on only once `count` replicas
    /// acknowledged it (`WAIT`), so a failover cannot forget a grant that a shard used.
    /// One that is not acknowledged within the [`replica_timeout`](Self::replica_timeout)
    /// is not acted on, and its unit counts as spent. A replica down then stalls grants:
    /// set `count` to the replicas you can afford to wait for. Zero (the default) for a
    /// single server. With a Sentinel URL, zero is refused unless the master sets
    /// `min-replicas-to-write` to 1 or more: a master cut off from the others by a
    /// partition must not go on granting to the processes that still reach it.
    pub fn replicas(mut self, count: u32) -> Self {
        self.replicas = count;
        self
    }

    /// How long a grant waits for its replicas' acknowledgement (500 ms by default).
    pub fn replica_timeout(mut self, timeout: Duration) -> Self {
        self.replica_timeout = timeout;
        self
    }

    /// Units never granted (zero by default): they cover grants that Redis may forget
    /// it made. With [`replicas`](Self::replicas), a grant a promoted replica never
    /// saw; on a single server, the grants of the last second with AOF's
    /// `appendfsync everysec` (or since the last snapshot with RDB alone) when it
    /// restarts. A single server with `appendfsync always` forgets none.
    pub fn reserve(mut self, units: u32) -> Self {
        self.reserve = units;
        self
    }

    /// How long a process next in line for a bucket may take to come back once the
    /// bucket frees (1 s by default); after that, the others pass it by. This is the
    /// fallback for a silent loss (host down, a partition, a stalled process): a
    /// process that died with its connections closed is passed at once, once its
    /// window has passed. Keep it above the round trip of your farthest process.
    pub fn head_grace(mut self, grace: Duration) -> Self {
        self.head_grace = grace;
        self
    }

    /// Where to get Discord's word when the shared state is missing or may have lost
    /// writes (Redis restarted, failed over, or flushed): a closure returning a fresh
    /// `session_start_limit`, typically from `GET /gateway/bot` (twilight-http:
    /// `client.gateway().authed()`). One process of the cluster calls it at a time.
    /// Without one, grants pause until [`Queue::update`](super::Queue::update), and
    /// [`Queue::health`](super::Queue::health) says so.
    pub fn limit_source<F>(mut self, source: F) -> Self
    where
        F: Fn() -> LimitFuture + Send + Sync + 'static,
    {
        self.limit_source = Some(Arc::new(source));
        self
    }

    /// Checks the options, naming the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        if self.replicas > 0 && self.replica_timeout.is_zero() {
            return Err(Error::InvalidOption {
                option: "replica_timeout",
                reason: "zero: replicas need time to acknowledge a grant".to_owned(),
            });
        }
        if self.head_grace.is_zero() {
            return Err(Error::InvalidOption {
                option: "head_grace",
                reason: "zero: a process needs time to come back for its bucket".to_owned(),
            });
        }
        Ok(())
    }
}
