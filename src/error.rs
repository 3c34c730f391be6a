//! The errors, by operation: [`Error`] for bad input (the call changed nothing),
//! [`AcquireError`] for an `acquire` that resolves without a permit. (The cluster
//! queue adds `redis::ConnectError` for Redis out of reach.)

use std::fmt;
use std::time::Duration;

use crate::ShardId;

/// Bad input to a scheduler or a queue. Each variant names the field and what is wrong
/// with it; the call that returned it changed nothing.
///
/// What an `acquire` resolves to when it brings no permit is an [`AcquireError`]; a
/// cluster queue that cannot reach Redis says so with a `redis::ConnectError`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// `max_concurrency` was 0: every shard needs a bucket.
    ZeroMaxConcurrency,
    /// `total` was 0: a bot that may never identify cannot be scheduled.
    ZeroTotal,
    /// `remaining` was larger than `total`.
    RemainingExceedsTotal {
        /// The `remaining` given.
        remaining: u32,
        /// The `total` given.
        total: u32,
    },
    /// The interval was zero: Discord requires time between IDENTIFYs of a bucket.
    ZeroInterval,
    /// The grace was longer than [`MAX_GRACE`](crate::MAX_GRACE): Discord's count
    /// cannot be that uncertain for a scheduler to work with.
    GraceTooLong(Duration),
    /// A word (`session_start_limit`) was applied with an age above
    /// [`MAX_WORD_AGE`](crate::MAX_WORD_AGE): too old to correct for the grants made
    /// since. Read it from Discord again.
    WordTooOld(Duration),
    /// The shard was requested while an earlier request of it still waits.
    AlreadyQueued(ShardId),
    /// Every sequence number is taken by a queued shard (about 4 billion of them).
    QueueFull,
    /// Cluster mode: the namespace is empty or would break Redis's key layout.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    InvalidNamespace {
        /// The namespace given.
        namespace: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A URL cannot be read: Redis's (cluster mode), or an identify-queue server's
    /// (the HTTP client).
    #[cfg(any(feature = "redis", feature = "http"))]
    #[cfg_attr(docsrs, doc(cfg(any(feature = "redis", feature = "http"))))]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Cluster mode: a bad option.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroMaxConcurrency => f.write_str(
                "invalid session start limit: `max_concurrency` is 0, it must be at least 1 \
                 (use the value from GET /gateway/bot)",
            ),
            Self::ZeroTotal => f.write_str(
                "invalid session start limit: `total` is 0, it must be at least 1 \
                 (use the value from GET /gateway/bot)",
            ),
            Self::RemainingExceedsTotal { remaining, total } => write!(
                f,
                "invalid session start limit: `remaining` ({remaining}) is larger than \
                 `total` ({total})"
            ),
            Self::ZeroInterval => f.write_str(
                "invalid config: `interval` is zero, it must be positive (Discord's is 5 s)",
            ),
            Self::GraceTooLong(grace) => write!(
                f,
                "invalid config: `grace` is {grace:?}, it must be at most an hour (30 s is \
                 the default)"
            ),
            Self::WordTooOld(age) => write!(
                f,
                "invalid session start limit: its `age` is {age:?}, more than an hour: \
                 read it from Discord again"
            ),
            Self::AlreadyQueued(shard) => write!(
                f,
                "shard {shard} is already queued: wait for its grant or cancel it first"
            ),
            Self::QueueFull => f.write_str(
                "too many shards queued: every sequence number is in use, grant or cancel some",
            ),
            #[cfg(feature = "redis")]
            Self::InvalidNamespace { namespace, reason } => {
                write!(f, "invalid namespace {namespace:?}: {reason}")
            }
            #[cfg(any(feature = "redis", feature = "http"))]
            Self::InvalidUrl { url, reason } => write!(f, "invalid URL {url:?}: {reason}"),
            #[cfg(feature = "redis")]
            Self::InvalidOption { option, reason } => {
                write!(f, "invalid cluster option `{option}`: {reason}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// Why an `acquire` (or an item of `acquire_all`) resolved without a permit. Each
/// variant says what became of the request, and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcquireError {
    /// The request was not made: the shard already waits in this queue
    /// ([`Error::AlreadyQueued`]), or the queue is full ([`Error::QueueFull`]).
    /// Nothing was spent.
    Refused(Error),
    /// The shard asked again (`acquire_replacing`, the twilight integration): this
    /// older request was replaced by the new one, which took its place in line.
    Superseded(ShardId),
    /// Hold mode: the shard was granted, but its future was not polled before the
    /// hold timeout (counted from the grant), so the permit is void. Its unit is
    /// spent; ask again.
    HoldExpired(ShardId),
    /// Cluster mode: a future polled for a request its queue no longer holds. Not
    /// expected: a grant that cannot be delivered in time is spent and asked again by
    /// the queue itself, and its `acquire` keeps waiting. Ask again.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    GrantLost(ShardId),
    /// The HTTP client: the server refused the request (`400`: a bad shard; `401` or
    /// `403`: a missing or wrong token; `404`: no native API there). Asking again the
    /// same way cannot help.
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    Server {
        /// The server's URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's answer (a JSON body saying why).
        reason: String,
    },
}

impl From<Error> for AcquireError {
    fn from(error: Error) -> Self {
        Self::Refused(error)
    }
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(error) => write!(f, "request refused: {error}"),
            Self::Superseded(shard) => write!(
                f,
                "shard {shard} asked again: this older request was replaced by the new one"
            ),
            Self::HoldExpired(shard) => write!(
                f,
                "shard {shard} was granted, but its permit was not taken before the hold \
                 timeout: its session start is spent, request it again (poll the future \
                 sooner, or raise the hold timeout)"
            ),
            #[cfg(feature = "redis")]
            Self::GrantLost(shard) => write!(
                f,
                "shard {shard}: its request is no longer in its queue: request it again"
            ),
            #[cfg(feature = "http")]
            Self::Server {
                url,
                status,
                reason,
            } => write!(f, "identify-queue server {url} refused: {status} {reason}"),
        }
    }
}

impl std::error::Error for AcquireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Refused(error) => Some(error),
            _ => None,
        }
    }
}
