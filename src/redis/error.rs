//! What connecting to Redis (and the calls that talk to it on the user's behalf,
//! `update` and `snapshot`) may fail with.

use std::fmt;

/// Why a cluster queue could not connect, or could not apply a call to Redis.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError {
    /// Bad input (the limit, the config, the options, the namespace or the URL): the
    /// call did nothing.
    Invalid(crate::Error),
    /// Redis could not be reached, or refused the call; the error of the Redis client,
    /// when it gave one, is its [`source`](std::error::Error::source).
    Unreachable(Unreachable),
    /// `connect` was called outside a tokio runtime: the queue's driver runs on tokio.
    NoTokioRuntime,
}

/// Redis out of reach: where, why, and the Redis client's error.
#[derive(Debug)]
pub struct Unreachable {
    url: String,
    reason: String,
    source: Option<redis::RedisError>,
}

impl Unreachable {
    pub(super) fn new(url: &str, failure: Failure) -> Self {
        Self {
            url: url.to_owned(),
            reason: failure.reason,
            source: failure.source,
        }
    }

    /// The URL of the server (or of the Sentinels) tried.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What went wrong, for a person.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl From<crate::Error> for ConnectError {
    fn from(error: crate::Error) -> Self {
        Self::Invalid(error)
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(error) => error.fmt(f),
            Self::Unreachable(unreachable) => unreachable.fmt(f),
            Self::NoTokioRuntime => {
                f.write_str("cluster mode runs on tokio: connect from within a tokio runtime")
            }
        }
    }
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot use Redis at {}: {}", self.url, self.reason)
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Invalid(error) => Some(error),
            Self::Unreachable(unreachable) => unreachable.source(),
            Self::NoTokioRuntime => None,
        }
    }
}

impl std::error::Error for Unreachable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|error| error as &(dyn std::error::Error + 'static))
    }
}

/// Why a link or a call failed, inside the queue: what was tried, and the Redis
/// client's error when there is one (kept as the source of what the user sees).
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) reason: String,
    pub(super) source: Option<redis::RedisError>,
}

impl Failure {
    /// `error` of the Redis client, while doing `context`.
    pub(super) fn redis(context: impl fmt::Display, error: redis::RedisError) -> Self {
        Self {
            reason: format!("{context}: {error}"),
            source: Some(error),
        }
    }
}

impl From<String> for Failure {
    fn from(reason: String) -> Self {
        Self {
            reason,
            source: None,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}
