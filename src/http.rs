//! The client of `identify-queue-server`: a shard asks the server's native API and may
//! IDENTIFY when the answer says so.
//!
//! With feature `twilight` the [`Queue`] is a `twilight_gateway_queue::Queue`: a
//! twilight bot switches to the server with one line.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Two servers on one Redis namespace: either may answer.
//! let queue = identify_queue::http::Queue::new(["http://10.0.0.5:8000", "http://10.0.0.6:8000"])?;
//! queue.acquire(3).await?; // shard 3 may IDENTIFY now
//! # Ok(())
//! # }
//! ```
//!
//! How it asks: `POST /v1/identify?shard=N&key=K&priority=P&wait_ms=20000`, polled
//! again under the same key until the server answers `200` (the answer is the
//! delivery). A key is one attempt; it keeps the shard's place across retries and
//! across the servers of a namespace. What the client does besides:
//!
//! - a server out of reach, a `5xx` or a closed connection is asked again with backoff
//!   (100 ms doubling to 5 s), on the next URL of the list, under the same key; a `429`
//!   or `503` after its `Retry-After`; a `202` saying another server holds the key
//!   moves the next poll to the next URL;
//! - a `410` (the key's grant was answered, but the answer was lost on the way) is
//!   asked again under a new key: that grant's instant has passed, and an IDENTIFY now
//!   could come too close to its bucket's next one;
//! - a `409` (the shard waits under another key: an earlier attempt whose cancel was
//!   lost) is asked again with backoff; the other key lapses within its lease;
//! - a `400`, `401`, `403` or `404` (a request that can never be served, a wrong
//!   token, a server without the native API) ends the acquire with
//!   [`AcquireError::Server`]; as a twilight queue, it is asked again with backoff
//!   (100 ms doubling to 30 s) and the shard's channel stays open (closing it would
//!   make the shard enqueue again at once, a tight loop on a stale token);
//! - a shard granted before asks as [`Priority::Reconnect`](crate::Priority), ahead of
//!   its bucket's shards still starting up;
//! - an acquire dropped while it waits (with feature `twilight`: a shard that drops
//!   its receiver) sends `DELETE /v1/identify/K` from a task of its own: the server
//!   drops the request at once, nothing spent (without it the key lapses within
//!   seconds, also spending nothing).

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;

use crate::{AcquireError, Error, Priority, ShardId, lock};

/// The first wait before asking again after a failure; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The longest wait before asking again after a refusal, as a twilight queue.
#[cfg(feature = "twilight")]
const MAX_REFUSED_BACKOFF: Duration = Duration::from_secs(30);
/// How long one poll may wait at the server (`wait_ms`; the server allows 25 s): below
/// the 60 s proxies allow an idle request.
const POLL_WAIT: Duration = Duration::from_secs(20);
/// A poll's answer is due within its wait; past it by this much it is given up as lost.
const ANSWER_SLACK: Duration = Duration::from_secs(10);
/// A cancel is bounded by this: a key nobody polls lapses within seconds anyway.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

/// A queue on one or several servers. Cheap to clone: clones share the connections
/// and the record of which shards were granted.
#[derive(Clone, Debug)]
pub struct Queue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: reqwest::Client,
    urls: Vec<String>,
    /// The URL to ask next: requests are spread over the list, and a failure moves on.
    next: AtomicUsize,
    token: Option<String>,
    /// This queue's keys are `{prefix}.{shard}.{attempt}`: the prefix (process, time,
    /// a random number) keeps them apart from other processes' and queues'.
    prefix: String,
    attempts: AtomicU64,
    /// Shards granted at least once: their next IDENTIFY is a reconnect.
    granted: Mutex<HashSet<ShardId>>,
}

impl Queue {
    /// A queue on the servers at `urls` (`http://host:port`, with or without a path).
    /// Errors with [`Error::InvalidUrl`] when the list is empty or a URL is not
    /// `http(s)://`.
    pub fn new<I>(urls: I) -> Result<Self, Error>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let urls: Vec<String> = urls
            .into_iter()
            .map(|url| url.into().trim_end_matches('/').to_owned())
            .collect();
        if urls.is_empty() {
            return Err(Error::InvalidUrl {
                url: String::new(),
                reason: "no server URL given".to_owned(),
            });
        }
        if let Some(url) = urls
            .iter()
            .find(|url| !(url.starts_with("http://") || url.starts_with("https://")))
        {
            return Err(Error::InvalidUrl {
                url: url.clone(),
                reason: "a server URL starts with http:// or https://".to_owned(),
            });
        }
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| Error::InvalidUrl {
                url: urls[0].clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            inner: Arc::new(Inner::new(client, urls, None)),
        })
    }

    /// Sends `Authorization: Bearer <token>` (the server's `--auth-token`).
    pub fn with_token(self, token: impl Into<String>) -> Self {
        let inner = &self.inner;
        let mut with = Inner::new(inner.client.clone(), inner.urls.clone(), Some(token.into()));
        with.next = AtomicUsize::new(inner.next.load(Ordering::Relaxed));
        with.granted = Mutex::new(lock(&inner.granted).clone());
        Self {
            inner: Arc::new(with),
        }
    }

    /// Resolves when `shard` may IDENTIFY: [`acquire_with`](Self::acquire_with) as a
    /// [`Priority::Reconnect`] when this queue granted the shard before, else as a
    /// [`Priority::Start`].
    ///
    /// # Cancel safety
    ///
    /// As [`acquire_with`](Self::acquire_with).
    pub async fn acquire(&self, shard: ShardId) -> Result<(), AcquireError> {
        let priority = if lock(&self.inner.granted).contains(&shard) {
            Priority::Reconnect
        } else {
            Priority::Start
        };
        self.acquire_with(shard, priority).await
    }

    /// Resolves when `shard` may IDENTIFY, asked with `priority`. Failures to reach a
    /// server are asked again with backoff, on the next URL, under the same key (the
    /// shard keeps its place); a request the server refuses (`400`, `401`, `403`,
    /// `404`) ends with [`AcquireError::Server`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits tells the server to drop the request
    /// (`DELETE`, sent from a task of its own on the current tokio runtime): nothing is
    /// spent. One dropped in the instant its grant is on the way counts as granted by
    /// the server (the safe side).
    pub async fn acquire_with(
        &self,
        shard: ShardId,
        priority: Priority,
    ) -> Result<(), AcquireError> {
        let inner = &self.inner;
        let priority = match priority {
            Priority::Reconnect => "reconnect",
            _ => "start",
        };
        let mut index = inner.next.fetch_add(1, Ordering::Relaxed) % inner.urls.len();
        let mut attempt = Attempt {
            inner: self.inner.clone(),
            key: inner.new_key(shard),
            polled_at: None,
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            let url = &inner.urls[index];
            attempt.polled_at = Some(index);
            let query = format!(
                "shard={shard}&key={}&priority={priority}&wait_ms={}",
                attempt.key,
                POLL_WAIT.as_millis()
            );
            let request = inner
                .authorized(inner.client.post(format!("{url}/v1/identify?{query}")))
                .timeout(POLL_WAIT + ANSWER_SLACK);
            let (pause, move_on) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = retry_after(&response);
                    let body = response.text().await.unwrap_or_default();
                    match status {
                        StatusCode::OK => {
                            attempt.polled_at = None; // granted: nothing to cancel
                            lock(&inner.granted).insert(shard);
                            return Ok(());
                        }
                        StatusCode::ACCEPTED => {
                            backoff = FIRST_BACKOFF;
                            // Its place is kept at the server that holds the key: the
                            // next poll may reach it.
                            (Duration::ZERO, holds_elsewhere(&body))
                        }
                        StatusCode::GONE => {
                            tracing::warn!(%url, shard, "a grant was lost on the way; asking again with a new key");
                            attempt.polled_at = None;
                            attempt.key = inner.new_key(shard);
                            (Duration::ZERO, false)
                        }
                        StatusCode::CONFLICT => {
                            tracing::warn!(%url, shard, %body, "the shard waits under another key; asking again");
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            (backoff, false)
                        }
                        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                            tracing::warn!(%url, shard, %status, %body, "asked to come back later");
                            let pause = retry_after.unwrap_or_default().max(backoff);
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            (pause, status == StatusCode::SERVICE_UNAVAILABLE)
                        }
                        status if status.is_client_error() => {
                            // Nothing was left waiting: a refused key was never kept.
                            attempt.polled_at = None;
                            return Err(AcquireError::Server {
                                url: url.clone(),
                                status: status.as_u16(),
                                reason: body,
                            });
                        }
                        status => {
                            tracing::warn!(%url, shard, %status, ?backoff, "identify-queue server failed; asking again");
                            let pause = backoff;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            (pause, true)
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%url, shard, %error, ?backoff, "identify-queue server out of reach; asking again");
                    let pause = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    (pause, true)
                }
            };
            if move_on {
                index = (index + 1) % inner.urls.len();
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }
}

impl Inner {
    fn new(client: reqwest::Client, urls: Vec<String>, token: Option<String>) -> Self {
        // A random number without a dependency: std's hasher keys are random per process.
        let random = RandomState::new().build_hasher().finish();
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        Self {
            client,
            urls,
            next: AtomicUsize::new(0),
            token,
            prefix: format!("{:x}.{since_epoch:x}.{random:x}", std::process::id()),
            attempts: AtomicU64::new(0),
            granted: Mutex::new(HashSet::new()),
        }
    }

    fn new_key(&self, shard: ShardId) -> String {
        let attempt = self.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}.{shard}.{attempt}", self.prefix)
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

/// One attempt's key, and where it was last polled. Dropped while a poll may have left
/// it waiting at a server (`polled_at` set), it sends the cancel.
struct Attempt {
    inner: Arc<Inner>,
    key: String,
    polled_at: Option<usize>,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let Some(index) = self.polled_at else { return };
        // No runtime (dropped outside one): the key lapses on its own within its lease.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let url = format!("{}/v1/identify/{}", self.inner.urls[index], self.key);
        let request = self
            .inner
            .authorized(self.inner.client.delete(url))
            .timeout(CANCEL_TIMEOUT);
        runtime.spawn(async move {
            if let Err(error) = request.send().await {
                tracing::debug!(%error, "the cancel did not reach the server; the key lapses on its own");
            }
        });
    }
}

/// A `202` saying another server of the namespace holds the key.
fn holds_elsewhere(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body)
        .is_ok_and(|answer| answer["held_by_another_server"] == true)
}

/// `Retry-After` in seconds (the server sends seconds).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?;
    let seconds: f64 = value.to_str().ok()?.trim().parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(feature = "twilight")]
impl twilight_gateway_queue::Queue for Queue {
    fn enqueue(&self, shard: ShardId) -> tokio::sync::oneshot::Receiver<()> {
        let (mut sender, receiver) = tokio::sync::oneshot::channel();
        let queue = self.clone();
        tokio::spawn(async move {
            // A refusal (a stale token, say) is asked again with backoff: closing the
            // channel would make the shard enqueue again at once, a tight loop.
            let mut backoff = FIRST_BACKOFF;
            let asked = async {
                loop {
                    match queue.acquire(shard).await {
                        Ok(()) => return,
                        Err(error) => {
                            tracing::warn!(shard, %error, ?backoff, "identify refused; asking again");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(MAX_REFUSED_BACKOFF);
                        }
                    }
                }
            };
            tokio::select! {
                // The shard gave up: the request is dropped, the server cancels it.
                () = sender.closed() => {}
                () = asked => {
                    let _ = sender.send(());
                }
            }
        });
        receiver
    }
}
