//! The client of `identify-queue-server` (and of twilight's gateway-queue server): a
//! shard asks `GET <url>/?shard=N` and may IDENTIFY when the answer comes.
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
//! What the client does that twilight's example client does not:
//!
//! - only a `200` is a grant; a server out of reach, a `5xx` or a closed connection
//!   is retried with backoff (100 ms doubling to 5 s), on the next URL of the list;
//! - a `400` or `401` (a request that can never be served) ends the acquire with
//!   [`AcquireError::Server`]; as a twilight queue, it is asked again with backoff
//!   (100 ms doubling to 30 s) and the shard's channel stays open (closing it would
//!   make the shard enqueue again at once, a tight loop on a stale token);
//! - with feature `twilight`, a shard that drops its receiver (it disconnected while
//!   waiting) drops the request: the server cancels it, nothing spent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::{AcquireError, Error, ShardId};

/// The first wait before asking again after a failure; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The longest wait before asking again after a refusal, as a twilight queue.
#[cfg(feature = "twilight")]
const MAX_REFUSED_BACKOFF: Duration = Duration::from_secs(30);

/// A queue on one or several servers. Cheap to clone: clones share the connections.
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
            inner: Arc::new(Inner {
                client,
                urls,
                next: AtomicUsize::new(0),
                token: None,
            }),
        })
    }

    /// Sends `Authorization: Bearer <token>` (the server's `--auth-token`).
    pub fn with_token(self, token: impl Into<String>) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                client: inner.client.clone(),
                urls: inner.urls.clone(),
                next: AtomicUsize::new(inner.next.load(Ordering::Relaxed)),
                token: Some(token.into()),
            }),
        }
    }

    /// Resolves when `shard` may IDENTIFY. Failures to reach a server are retried
    /// with backoff, on the next URL; a request the server refuses (`400`, `401`)
    /// ends with [`AcquireError::Server`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the HTTP request: the server cancels it, nothing is
    /// spent. One dropped in the instant its answer is on the way counts as granted by
    /// the server (the safe side).
    pub async fn acquire(&self, shard: ShardId) -> Result<(), AcquireError> {
        let inner = &self.inner;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let index = inner.next.fetch_add(1, Ordering::Relaxed) % inner.urls.len();
            let url = &inner.urls[index];
            let mut request = inner.client.get(format!("{url}/?shard={shard}"));
            if let Some(token) = &inner.token {
                request = request.bearer_auth(token);
            }
            let failure = match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) if response.status().is_client_error() => {
                    let status = response.status().as_u16();
                    let reason = response.text().await.unwrap_or_default();
                    return Err(AcquireError::Server {
                        url: url.clone(),
                        status,
                        reason,
                    });
                }
                Ok(response) => format!("answered {}", response.status()),
                Err(error) => error.to_string(),
            };
            tracing::warn!(%url, shard, %failure, ?backoff, "identify-queue server failed; asking again");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
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
