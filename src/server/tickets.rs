//! The native API's requests (`/v1/identify`): a *ticket* per idempotency key, whose
//! wait outlives any one HTTP request.
//!
//! A client asks with a key of its choosing; the ticket's task waits for the grant
//! while the client long-polls (each poll at most `wait_ms`, below the 60 s that
//! proxies allow an idle request) and asks again with the same key to keep its place.
//! A retried request finds the same ticket: a grant is never spent twice. A ticket no
//! poll came for within its lease is cancelled (nothing spent, if not granted yet);
//! a granted one is kept for its lease, so that a retry still finds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::backend::{Backend, Granted};
use super::lock;
use crate::{Priority, ShardId};

/// The longest one poll waits: below the 60 s proxies allow an idle request.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(25);

/// Where a ticket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    Waiting,
    /// Granted at this instant.
    Granted(Instant),
}

struct Ticket {
    shard: ShardId,
    priority: Priority,
    since: Instant,
    stage: watch::Receiver<Stage>,
    /// The task that waits for the grant (then keeps the permit, in hold mode).
    task: JoinHandle<()>,
    /// The permit, held until released or its hold ends (hold mode).
    permit: Arc<Mutex<Option<Granted>>>,
    /// The ticket goes when no poll came by then.
    expires: Instant,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Waiting: the acquire is dropped, its request cancelled, nothing spent.
        self.task.abort();
        // Granted and never released (the client went): a hold runs to its timeout.
        if let Some(permit) = lock(&self.permit).take() {
            permit.keep();
        }
    }
}

/// Every live ticket, by key.
pub(super) struct Tickets {
    tickets: Mutex<HashMap<String, Ticket>>,
    /// How long a ticket lives without a poll (after its last poll's wait).
    lease: Duration,
    /// The most tickets kept at once.
    max: usize,
    /// Counts each grant once, however many polls see it.
    grants: Counter,
}

/// What a poll finds.
pub(super) struct Seen {
    pub(super) stage: watch::Receiver<Stage>,
    pub(super) since: Instant,
}

/// Why a poll found no ticket.
pub(super) enum Refused {
    /// The key is this other shard's.
    KeyTaken(ShardId),
    /// A new key while this many tickets are kept, the most allowed.
    Full(usize),
}

impl Tickets {
    pub(super) fn new(lease: Duration, max: usize, grants: Counter) -> Self {
        Self {
            tickets: Mutex::new(HashMap::new()),
            lease,
            max,
            grants,
        }
    }

    /// The ticket of `key`, made (and its wait started) if new and there is room; its
    /// lease renewed to cover a poll of `wait`.
    pub(super) fn get_or_start(
        &self,
        key: &str,
        shard: ShardId,
        priority: Priority,
        wait: Duration,
        backend: &Arc<Backend>,
    ) -> Result<Seen, Refused> {
        let now = Instant::now();
        let mut tickets = lock(&self.tickets);
        if let Some(ticket) = tickets.get_mut(key) {
            if ticket.shard != shard {
                return Err(Refused::KeyTaken(ticket.shard));
            }
            ticket.expires = now + wait + self.lease;
            return Ok(Seen {
                stage: ticket.stage.clone(),
                since: ticket.since,
            });
        }
        if tickets.len() >= self.max {
            return Err(Refused::Full(tickets.len()));
        }
        let (stage_tx, stage) = watch::channel(Stage::Waiting);
        let permit = Arc::new(Mutex::new(None));
        let task = {
            let (backend, permit) = (Arc::clone(backend), Arc::clone(&permit));
            let grants = self.grants.clone();
            tokio::spawn(async move {
                let granted = backend.acquire_until_granted(shard, priority).await;
                *lock(&permit) = Some(granted);
                grants.inc();
                let _ = stage_tx.send(Stage::Granted(Instant::now()));
            })
        };
        tickets.insert(
            key.to_owned(),
            Ticket {
                shard,
                priority,
                since: now,
                stage: stage.clone(),
                task,
                permit,
                expires: now + wait + self.lease,
            },
        );
        Ok(Seen { stage, since: now })
    }

    /// Cancels `key`'s ticket: a waiting one spends nothing; a granted one releases
    /// its hold (hold mode). Whether there was one.
    pub(super) fn cancel(&self, key: &str) -> bool {
        let ticket = lock(&self.tickets).remove(key);
        match ticket {
            Some(ticket) => {
                // Dropping the permit releases its hold.
                let permit = lock(&ticket.permit).take();
                drop(permit);
                true
            }
            None => false,
        }
    }

    /// Drops the tickets no poll came for within their lease.
    pub(super) fn sweep(&self) {
        let now = Instant::now();
        let expired: Vec<Ticket> = {
            let mut tickets = lock(&self.tickets);
            let keys: Vec<String> = tickets
                .iter()
                .filter(|(_, ticket)| ticket.expires <= now)
                .map(|(key, _)| key.clone())
                .collect();
            keys.iter().filter_map(|key| tickets.remove(key)).collect()
        };
        drop(expired);
    }

    /// Waiting tickets ahead of a ticket of `shard` asked at `since` in its bucket
    /// (`max_concurrency` buckets), by priority then age.
    pub(super) fn place(&self, shard: ShardId, since: Instant, max_concurrency: u32) -> usize {
        let tickets = lock(&self.tickets);
        let own = tickets
            .values()
            .find(|t| t.shard == shard && t.since == since)
            .map_or(Priority::Start.rank(), |t| t.priority.rank());
        let bucket = |s: ShardId| s % max_concurrency.max(1);
        tickets
            .values()
            .filter(|t| *t.stage.borrow() == Stage::Waiting)
            .filter(|t| bucket(t.shard) == bucket(shard) && t.shard != shard)
            .filter(|t| (t.priority.rank(), t.since) < (own, since))
            .count()
    }

    /// Tickets still waiting.
    pub(super) fn waiting(&self) -> Vec<(ShardId, Instant)> {
        lock(&self.tickets)
            .values()
            .filter(|t| *t.stage.borrow() == Stage::Waiting)
            .map(|t| (t.shard, t.since))
            .collect()
    }
}
