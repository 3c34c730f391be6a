//! The native API's requests (`/v1/identify`): a *ticket* per idempotency key, whose
//! place in the queue outlives any one HTTP request.
//!
//! A client asks with a key of its choosing and long-polls (each poll at most
//! `wait_ms`, below the 60 s that proxies allow an idle request), asking again with the
//! same key to keep its place. A key is one *attempt* to IDENTIFY, not a shard's name.
//!
//! # The answer is the delivery
//!
//! A ticket keeps its shard's request (the queue's future) but polls it only while a
//! poll of its key is open: the future resolves to a grant only inside a poll, and that
//! poll's answer carries it. So a grant made while no poll is open stays undelivered
//! (the queue keeps its bucket busy until it is taken, [rules 5](crate::rules): spacing
//! counts from delivery) and goes to the next poll, an interval before the bucket's
//! next grant, never a stale "go". A grant is answered once: a later poll of its key
//! gets `410` with the instant it was answered. A ticket no poll is open for, and none
//! came for within its lease (seconds: a client whose connection closed without an
//! answer, or who went), is dropped: a request not granted yet is cancelled, nothing
//! spent; a grant nobody took is void, its unit spent (the safe side), its bucket free
//! again.
//!
//! Two polls of one key (a client's retry while its old connection still looks open to
//! the server) do not both wait: the newer takes over and the older answers `202`.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;

use super::backend::{Backend, Duplicate, Granted};
use super::lock;
use crate::{Priority, ShardId};

/// The longest one poll waits: below the 60 s proxies allow an idle request.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(25);

/// How long a key whose grant was answered is remembered, so that a retry of the
/// answered poll learns it was answered (`410`) rather than starting a new attempt.
const ANSWERED_KEPT: Duration = Duration::from_secs(60);

/// A shard's request, polled only by polls of its key.
type Request = Pin<Box<dyn Future<Output = Granted> + Send>>;

/// Where a ticket is.
enum Stage {
    /// Waiting for its grant.
    Waiting(Request),
    /// Answered: its permit (kept for a release, in hold mode) and when.
    Answered {
        permit: Option<Granted>,
        at: Answered,
    },
}

/// When a grant was answered.
#[derive(Clone, Copy, Debug)]
pub(super) struct Answered {
    /// On this process's clock.
    pub(super) instant: Instant,
    /// Milliseconds since the Unix epoch, for the client.
    pub(super) unix_ms: u64,
}

impl Answered {
    fn now() -> Self {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        Self {
            instant: Instant::now(),
            unix_ms,
        }
    }
}

/// One key's ticket, shared by its polls.
struct Ticket {
    shard: ShardId,
    /// The address of the client that made it, for its cap.
    client: IpAddr,
    since: Instant,
    /// Taken by the poll that polls the request.
    stage: tokio::sync::Mutex<Stage>,
    /// The newest poll's number: an older poll that sees it change gives way.
    newest: watch::Sender<u64>,
    /// Polls open now, and when the last one ended.
    lease: Mutex<Lease>,
}

#[derive(Clone, Copy)]
struct Lease {
    open: usize,
    /// Whether the ticket's grant was answered (then it is kept [`ANSWERED_KEPT`]).
    answered: bool,
    idle_since: Instant,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Waiting: the request is dropped (cancelled, nothing spent; a grant not taken
        // is void). Answered and never released (the client went): in hold mode the
        // hold runs to its timeout.
        if let Stage::Answered {
            permit: Some(permit),
            ..
        } = std::mem::replace(
            self.stage.get_mut(),
            Stage::Answered {
                permit: None,
                at: Answered::now(),
            },
        ) {
            permit.keep();
        }
    }
}

/// Every live ticket, by key.
pub(super) struct Tickets {
    state: Mutex<State>,
    /// How long a ticket lives with no poll open.
    lease: Duration,
    /// The most tickets kept at once, in all and per client address.
    max: usize,
    max_per_client: usize,
    /// Counts each grant once.
    grants: Counter,
    /// Counts each waiting ticket dropped for want of a poll.
    cancelled: Counter,
}

#[derive(Default)]
struct State {
    tickets: HashMap<String, Arc<Ticket>>,
    /// The key of each shard's waiting ticket: one at most.
    waiting: HashMap<ShardId, String>,
    /// Tickets kept per client address.
    by_client: HashMap<IpAddr, usize>,
    polls: u64,
}

/// What a poll gets.
pub(super) enum Polled {
    /// Granted: this answer is the delivery.
    Granted { since: Instant, at: Answered },
    /// Not yet: ask again with the same key.
    Waiting,
    /// Answered before, to an earlier poll.
    AnsweredBefore(Answered),
}

/// Why a poll found no ticket.
pub(super) enum Refused {
    /// The key is this other shard's.
    KeyTaken(ShardId),
    /// The shard waits already, under this other key.
    ShardWaits(String),
    /// A new key while this many tickets are kept, the most allowed.
    Full(usize),
    /// A new key while this client keeps this many tickets, the most it may.
    ClientFull(usize),
}

/// An open poll: its ticket's lease runs again from its end.
struct Open<'a> {
    ticket: &'a Ticket,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let mut lease = lock(&self.ticket.lease);
        lease.open -= 1;
        lease.idle_since = Instant::now();
    }
}

impl Tickets {
    pub(super) fn new(
        lease: Duration,
        (max, max_per_client): (usize, usize),
        grants: Counter,
        cancelled: Counter,
    ) -> Self {
        Self {
            state: Mutex::new(State::default()),
            lease,
            max,
            max_per_client,
            grants,
            cancelled,
        }
    }

    /// A poll of `key` for `shard`: its ticket, made (its request started) if new and
    /// there is room, then polled for at most `wait`.
    ///
    /// Cancel safe: dropped (its client gone), the ticket keeps its request and its
    /// lease runs from then.
    pub(super) async fn poll(
        &self,
        key: &str,
        (shard, priority): (ShardId, Priority),
        client: IpAddr,
        wait: Duration,
        backend: &Arc<Backend>,
    ) -> Result<Polled, Refused> {
        let deadline = tokio::time::Instant::now() + wait;
        let (ticket, me) = {
            let mut state = lock(&self.state);
            state.polls += 1;
            let me = state.polls;
            let ticket = match state.tickets.get(key) {
                Some(ticket) if ticket.shard != shard => {
                    return Err(Refused::KeyTaken(ticket.shard));
                }
                Some(ticket) => Arc::clone(ticket),
                None => {
                    if let Some(other) = state.waiting.get(&shard) {
                        return Err(Refused::ShardWaits(other.clone()));
                    }
                    if state.tickets.len() >= self.max {
                        return Err(Refused::Full(state.tickets.len()));
                    }
                    let from_client = state.by_client.get(&client).copied().unwrap_or(0);
                    if from_client >= self.max_per_client {
                        return Err(Refused::ClientFull(from_client));
                    }
                    let ticket = Arc::new(Ticket::new(shard, priority, client, backend));
                    state.tickets.insert(key.to_owned(), Arc::clone(&ticket));
                    state.waiting.insert(shard, key.to_owned());
                    *state.by_client.entry(client).or_default() += 1;
                    ticket
                }
            };
            lock(&ticket.lease).open += 1;
            ticket.newest.send_replace(me);
            (ticket, me)
        };
        let _open = Open { ticket: &ticket };
        let since = ticket.since;
        let mut newest = ticket.newest.subscribe();
        let gave_way = async move {
            let _ = newest.wait_for(|newest| *newest != me).await;
        };
        let polled = async {
            let mut stage = ticket.stage.lock().await;
            match &mut *stage {
                Stage::Answered { at, .. } => Polled::AnsweredBefore(*at),
                Stage::Waiting(request) => {
                    let permit = request.as_mut().await;
                    // From here this poll's answer is the delivery.
                    let at = Answered::now();
                    *stage = Stage::Answered {
                        permit: Some(permit),
                        at,
                    };
                    lock(&ticket.lease).answered = true;
                    self.grants.inc();
                    let mut state = lock(&self.state);
                    if state.waiting.get(&shard).map(String::as_str) == Some(key) {
                        state.waiting.remove(&shard);
                    }
                    Polled::Granted { since, at }
                }
            }
        };
        tokio::select! {
            // The request first: its first poll makes it (and places it in the queue),
            // also for a poll whose wait is zero.
            biased;
            polled = polled => Ok(polled),
            () = tokio::time::sleep_until(deadline) => Ok(Polled::Waiting),
            () = gave_way => Ok(Polled::Waiting),
        }
    }

    /// Cancels `key`'s ticket: a waiting one spends nothing; an answered one releases
    /// its hold (hold mode). `None` if there was none, else whether it was waiting.
    pub(super) fn cancel(&self, key: &str) -> Option<bool> {
        let (ticket, was_waiting) = {
            let mut state = lock(&self.state);
            let ticket = state.tickets.remove(key)?;
            let was_waiting = state.forget(key, &ticket);
            (ticket, was_waiting)
        };
        // A poll still open on it holds the stage: it answers without the grant once
        // it sees the ticket gone (its request is dropped with the last reference).
        if let Ok(mut stage) = ticket.stage.try_lock() {
            if let Stage::Answered { permit, .. } = &mut *stage {
                // Dropping the permit releases its hold.
                drop(permit.take());
            }
        }
        ticket.newest.send_replace(u64::MAX);
        Some(was_waiting)
    }

    /// Drops the tickets with no poll open and none within their lease (an answered
    /// one is kept [`ANSWERED_KEPT`], to answer a retry with `410`).
    pub(super) fn sweep(&self) {
        let now = Instant::now();
        let expired: Vec<Arc<Ticket>> = {
            let mut state = lock(&self.state);
            let keys: Vec<String> = state
                .tickets
                .iter()
                .filter(|(_, ticket)| {
                    let lease = *lock(&ticket.lease);
                    let kept = if lease.answered {
                        ANSWERED_KEPT.max(self.lease)
                    } else {
                        self.lease
                    };
                    lease.open == 0 && lease.idle_since + kept <= now
                })
                .map(|(key, _)| key.clone())
                .collect();
            keys.iter()
                .filter_map(|key| {
                    let ticket = state.tickets.remove(key)?;
                    if state.forget(key, &ticket) {
                        self.cancelled.inc();
                    }
                    Some(ticket)
                })
                .collect()
        };
        drop(expired);
    }

    /// Tickets still waiting.
    pub(super) fn waiting(&self) -> Vec<(ShardId, Instant)> {
        let state = lock(&self.state);
        state
            .waiting
            .values()
            .filter_map(|key| state.tickets.get(key))
            .map(|t| (t.shard, t.since))
            .collect()
    }
}

impl State {
    /// Forgets `key`'s `ticket`, removed from `tickets`: its shard's waiting key (if it
    /// is this one) and its client's count. Whether it was waiting.
    fn forget(&mut self, key: &str, ticket: &Ticket) -> bool {
        if let Some(count) = self.by_client.get_mut(&ticket.client) {
            *count -= 1;
            if *count == 0 {
                self.by_client.remove(&ticket.client);
            }
        }
        let waiting = self.waiting.get(&ticket.shard).map(String::as_str) == Some(key);
        if waiting {
            self.waiting.remove(&ticket.shard);
        }
        waiting
    }
}

impl Ticket {
    fn new(shard: ShardId, priority: Priority, client: IpAddr, backend: &Arc<Backend>) -> Self {
        let backend = Arc::clone(backend);
        let request: Request = Box::pin(async move {
            backend
                .acquire_until_granted(shard, priority, Duplicate::WaitsBehind)
                .await
        });
        let now = Instant::now();
        Self {
            shard,
            client,
            since: now,
            stage: tokio::sync::Mutex::new(Stage::Waiting(request)),
            newest: watch::Sender::new(0),
            lease: Mutex::new(Lease {
                open: 0,
                answered: false,
                idle_since: now,
            }),
        }
    }
}
