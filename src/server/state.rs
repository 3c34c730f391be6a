//! What the routes share: the server's state, and the guard of a waiting request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::backend::Backend;
use super::metrics::Metrics;
use super::supervisor::{NEEDS_AN_OPERATOR, Word};
use super::{Args, lock, tickets};
use crate::{SessionStartLimit, ShardId};

/// A request waiting for its grant, for the status routes.
#[derive(Clone, Copy)]
pub(super) struct Waiting {
    pub(super) shard: ShardId,
    pub(super) since: Instant,
}

/// What the routes share.
pub(super) struct ServerState {
    pub(super) args: Args,
    pub(super) backend: watch::Receiver<Option<Arc<Backend>>>,
    pub(super) backend_tx: watch::Sender<Option<Arc<Backend>>>,
    /// The last limit applied (its `max_concurrency` decides what a shard-less request
    /// gets).
    pub(super) limit: Mutex<Option<SessionStartLimit>>,
    /// Why grants cannot flow, while they cannot (besides the queue's own health).
    pub(super) not_ready: Mutex<Option<String>>,
    /// Discord's word in force.
    pub(super) word: Mutex<Word>,
    pub(super) metrics: Metrics,
    /// The native API's requests, by idempotency key.
    pub(super) tickets: tickets::Tickets,
    pub(super) waiting: Mutex<BTreeMap<u64, Waiting>>,
    pub(super) requests: AtomicU64,
    /// Ids for requests without a shard (`max_concurrency` 1), from the top down.
    pub(super) anonymous: AtomicU32,
    pub(super) started: Instant,
    pub(super) shutdown: watch::Receiver<bool>,
}

impl ServerState {
    pub(super) fn new(args: Args, shutdown: watch::Receiver<bool>) -> Self {
        let (backend_tx, backend) = watch::channel(None);
        let metrics = Metrics::new();
        let lease = Duration::from_millis(args.ticket_lease_ms);
        let tickets = tickets::Tickets::new(
            lease,
            (args.max_tickets, args.max_tickets_per_client()),
            metrics.grants.clone(),
            metrics.cancelled.clone(),
        );
        Self {
            args,
            backend,
            backend_tx,
            limit: Mutex::new(None),
            not_ready: Mutex::new(Some("reading the limit".to_owned())),
            word: Mutex::new(Word::default()),
            metrics,
            tickets,
            waiting: Mutex::new(BTreeMap::new()),
            requests: AtomicU64::new(0),
            anonymous: AtomicU32::new(u32::MAX),
            started: Instant::now(),
            shutdown,
        }
    }

    /// The queue, once a limit is known.
    pub(super) async fn backend(&self) -> Arc<Backend> {
        let mut backend = self.backend.clone();
        let found = backend
            .wait_for(Option::is_some)
            .await
            .map(|backend| backend.clone())
            .ok()
            .flatten();
        match found {
            Some(backend) => backend,
            // The sender lives as long as `self`.
            None => std::future::pending().await,
        }
    }

    pub(super) fn set_not_ready(&self, reason: &str) {
        *lock(&self.not_ready) = Some(reason.to_owned());
    }

    pub(super) fn clear_not_ready(&self) {
        *lock(&self.not_ready) = None;
    }

    /// Why grants cannot flow now, if they cannot.
    pub(super) fn not_ready(&self) -> Option<String> {
        if let Some(reason) = lock(&self.not_ready).clone() {
            return Some(reason);
        }
        let backend = self.backend.borrow().clone()?;
        let reason = backend.not_ready()?;
        if self.args.discord_token.is_none() && backend.needs_an_operator() {
            return Some(format!("{reason}: {NEEDS_AN_OPERATOR}"));
        }
        Some(reason)
    }

    /// Discord's word in force.
    pub(super) fn word(&self) -> Word {
        lock(&self.word).clone()
    }

    pub(super) fn max_concurrency(&self) -> Option<u32> {
        lock(&self.limit).map(|limit| limit.max_concurrency)
    }

    /// A fresh id for a request without a shard.
    pub(super) fn anonymous_shard(&self) -> ShardId {
        self.anonymous.fetch_sub(1, Ordering::Relaxed)
    }

    pub(super) fn waiting_count(&self) -> usize {
        lock(&self.waiting).len()
    }

    /// Registers a waiting request until the guard goes.
    pub(super) fn enter(self: &Arc<Self>, shard: ShardId) -> WaitGuard {
        let id = self.requests.fetch_add(1, Ordering::Relaxed);
        let since = Instant::now();
        lock(&self.waiting).insert(id, Waiting { shard, since });
        self.metrics.waiting.inc();
        WaitGuard {
            shared: Arc::clone(self),
            id,
            since,
            granted: false,
        }
    }
}

/// A waiting request: counted as cancelled if it goes without its grant.
pub(super) struct WaitGuard {
    shared: Arc<ServerState>,
    id: u64,
    since: Instant,
    granted: bool,
}

impl WaitGuard {
    pub(super) fn granted(mut self) {
        self.granted = true;
        self.shared.metrics.grants.inc();
        self.shared
            .metrics
            .wait_seconds
            .observe(self.since.elapsed().as_secs_f64());
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        lock(&self.shared.waiting).remove(&self.id);
        self.shared.metrics.waiting.dec();
        if !self.granted {
            self.shared.metrics.cancelled.inc();
        }
    }
}
