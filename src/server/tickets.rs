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

use super::backend::{Backend, Duplicate, Holder, KeyOp, Permit};
use super::lock;
use crate::{Priority, ShardId};

/// The longest one poll waits: below the 60 s proxies allow an idle request.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(25);

/// How long a key whose grant was answered is remembered, so that a retry of the
/// answered poll learns it was answered (`410`) rather than starting a new attempt.
const ANSWERED_KEPT: Duration = Duration::from_secs(60);

/// The shortest life of a key in Redis past its last renewal (see `Tickets::key_ttl`).
const MIN_KEY_TTL: Duration = Duration::from_secs(3);

/// The longest a claim of a key in Redis may hold a poll with a shorter wait.
const MAX_CLAIM: Duration = Duration::from_secs(1);

/// How long a poll of a key another server holds waits before its answer.
const HELD_ELSEWHERE_PAUSE: Duration = Duration::from_millis(100);

/// A shard's request, polled only by polls of its key.
type Request = Pin<Box<dyn Future<Output = Permit> + Send>>;

/// Where a ticket is.
enum Stage {
    /// Waiting for its grant.
    Waiting(Request),
    /// Answered: its permit (kept for a release, in hold mode) and when.
    Answered {
        permit: Option<Permit>,
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
        if let Stage::Answered { permit, .. } = self.stage.get_mut() {
            if let Some(permit) = permit.take() {
                permit.keep();
            }
        }
    }
}

impl Ticket {
    /// Tells a poll still open on this ticket, which is gone, to give way.
    fn close(&self) {
        self.newest.send_replace(u64::MAX);
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
    /// Answered before, to an earlier poll (of this server or another): when, in Unix
    /// milliseconds.
    AnsweredBefore(u64),
    /// Another server of the namespace holds the key's ticket: nothing to wait for
    /// here, the client asks again (and reaches it, or this server once it let go).
    HeldElsewhere,
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
    /// Cluster mode: Redis could not say who holds the key (why).
    Unavailable(String),
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
    /// there is room, then polled for at most `wait`. In cluster mode the key is first
    /// claimed in Redis: a key another server holds, or answered, is not made here.
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
        let shares = backend.shares_keys();
        if shares {
            // The key's holder among the namespace's servers: taken if nobody holds
            // it (or its holder died and it lapsed), its life extended if it is ours.
            // Within the poll's wait, like every answer of the native API (a poll with
            // no wait still needs the claim's round trip: a stalled Redis holds it a
            // second at most).
            let claim = backend.request_key(
                KeyOp::Claim {
                    ttl: self.key_ttl(),
                },
                key,
            );
            let claim_by = deadline.max(tokio::time::Instant::now() + MAX_CLAIM);
            let holder = match tokio::time::timeout_at(claim_by, claim).await {
                Ok(claimed) => claimed.map_err(Refused::Unavailable)?,
                Err(_) => return Ok(Polled::Waiting),
            };
            match holder {
                Holder::Us | Holder::Nobody => {}
                Holder::Answered { us: true, .. } if self.holds(key) => {}
                Holder::Answered { at_ms, .. } => {
                    self.drop_local(key);
                    return Ok(Polled::AnsweredBefore(at_ms));
                }
                Holder::Other => {
                    // A ticket here too can only be left from before Redis lost the
                    // key: the other server's is the one.
                    self.drop_local(key);
                    // A moment before the answer, so that a client whose polls keep
                    // landing here does not spin.
                    tokio::time::sleep_until(
                        deadline.min(tokio::time::Instant::now() + HELD_ELSEWHERE_PAUSE),
                    )
                    .await;
                    return Ok(Polled::HeldElsewhere);
                }
            }
        }
        let made = self.ticket(key, (shard, priority), client, backend);
        if made.is_err() && shares && !self.holds(key) {
            // Claimed for a ticket this server would not make: let go at once.
            release_later(backend, key);
        }
        let (ticket, me) = made?;
        let _open = Open { ticket: &ticket };
        let since = ticket.since;
        let mut newest = ticket.newest.subscribe();
        let gave_way = async move {
            let _ = newest.wait_for(|newest| *newest != me).await;
        };
        let polled = async {
            let mut stage = ticket.stage.lock().await;
            match &mut *stage {
                Stage::Answered { at, .. } => Polled::AnsweredBefore(at.unix_ms),
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
                    lock(&self.state).unwait(shard, key);
                    if shares {
                        // Every server answers a retry of the key with `410` now.
                        let (backend, key) = (Arc::clone(backend), key.to_owned());
                        tokio::spawn(async move {
                            let answered = KeyOp::Answered {
                                at_ms: at.unix_ms,
                                ttl: ANSWERED_KEPT,
                            };
                            let kept = backend.request_key(answered, &key).await;
                            if let Err(error) = kept {
                                tracing::warn!(key, %error, "cannot mark the key answered in Redis");
                            }
                        });
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

    /// The ticket of `key`, made (its request started) if new and there is room, with
    /// this poll counted open and made the newest (its number returned).
    fn ticket(
        &self,
        key: &str,
        (shard, priority): (ShardId, Priority),
        client: IpAddr,
        backend: &Arc<Backend>,
    ) -> Result<(Arc<Ticket>, u64), Refused> {
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
        Ok((ticket, me))
    }

    /// How long a key lives in Redis past its last claim or renewal: the lease, and
    /// a few sweeps (a sweep runs at least every second) so that a renewal is never late.
    fn key_ttl(&self) -> Duration {
        self.lease.max(MIN_KEY_TTL)
    }

    /// Whether this server keeps `key`'s ticket.
    pub(super) fn holds(&self, key: &str) -> bool {
        lock(&self.state).tickets.contains_key(key)
    }

    /// Drops this server's ticket of `key`, if any (another server holds the key):
    /// a waiting request is cancelled, nothing spent.
    fn drop_local(&self, key: &str) {
        let taken = lock(&self.state).take(key);
        if let Some((ticket, _)) = taken {
            ticket.close();
        }
    }

    /// Cancels `key`'s ticket: a waiting one spends nothing; an answered one releases
    /// its hold (hold mode). `None` if there was none, else whether it was waiting.
    pub(super) fn cancel(&self, key: &str) -> Option<bool> {
        let taken = lock(&self.state).take(key);
        let (ticket, was_waiting) = taken?;
        // A poll still open on it holds the stage: it answers without the grant once
        // it sees the ticket gone (its request is dropped with the last reference).
        if let Ok(mut stage) = ticket.stage.try_lock() {
            if let Stage::Answered { permit, .. } = &mut *stage {
                // Dropping the permit releases its hold.
                drop(permit.take());
            }
        }
        ticket.close();
        Some(was_waiting)
    }

    /// Drops the tickets with no poll open and none within their lease (an answered
    /// one is kept [`ANSWERED_KEPT`], to answer a retry with `410`). In cluster mode a
    /// waiting ticket lives as long as its key in Redis is this server's (renewed by
    /// its polls here), and a `DELETE` at any server ends it.
    pub(super) async fn sweep(&self, backend: Option<&Arc<Backend>>) {
        let backend = backend.filter(|backend| backend.shares_keys());
        // The waiting keys Redis says are ours (`true`) or not (`false`).
        let mut in_redis: HashMap<String, bool> = HashMap::new();
        if let Some(backend) = backend {
            // A key lives in Redis a short while past its last renewal, so that another
            // server takes it over within seconds if this one dies: renewed here while
            // a poll of it is open (only its holder renews it).
            let polled: Vec<String> = {
                let state = lock(&self.state);
                state
                    .tickets
                    .iter()
                    .filter(|(_, ticket)| lock(&ticket.lease).open > 0)
                    .map(|(key, _)| key.clone())
                    .collect()
            };
            let refs: Vec<&str> = polled.iter().map(String::as_str).collect();
            let _ = backend.renew_request_keys(&refs, self.key_ttl()).await;
            let keys: Vec<String> = lock(&self.state).waiting.values().cloned().collect();
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            if let Ok(holders) = backend.request_key_holders(&refs).await {
                for (key, holder) in keys.into_iter().zip(holders) {
                    in_redis.insert(key, holder == Holder::Us);
                }
            }
        }
        let now = Instant::now();
        let expired: Vec<(String, Arc<Ticket>)> = {
            let mut state = lock(&self.state);
            let keys: Vec<String> = state
                .tickets
                .iter()
                .filter(|(key, ticket)| {
                    let lease = *lock(&ticket.lease);
                    if let Some(&ours) = in_redis.get(*key) {
                        return !ours;
                    }
                    let kept = if lease.answered {
                        ANSWERED_KEPT.max(self.lease)
                    } else {
                        self.lease
                    };
                    lease.open == 0 && lease.idle_since + kept <= now
                })
                .map(|(key, _)| key.clone())
                .collect();
            keys.into_iter()
                .filter_map(|key| {
                    let (ticket, was_waiting) = state.take(&key)?;
                    if was_waiting {
                        self.cancelled.inc();
                    }
                    Some((key, ticket))
                })
                .collect()
        };
        for (key, ticket) in expired {
            ticket.close();
            if let Some(backend) = backend {
                release_later(backend, &key);
            }
        }
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

/// Lets go of `key` in Redis (if this server still holds it), in the background.
fn release_later(backend: &Arc<Backend>, key: &str) {
    let (backend, key) = (Arc::clone(backend), key.to_owned());
    tokio::spawn(async move {
        let _ = backend.request_key(KeyOp::Release, &key).await;
    });
}

impl State {
    /// Takes `key`'s ticket out, with its client's count and its shard's waiting key
    /// (if it is this one); and whether it was waiting.
    fn take(&mut self, key: &str) -> Option<(Arc<Ticket>, bool)> {
        let ticket = self.tickets.remove(key)?;
        if let Some(count) = self.by_client.get_mut(&ticket.client) {
            *count -= 1;
            if *count == 0 {
                self.by_client.remove(&ticket.client);
            }
        }
        let was_waiting = self.unwait(ticket.shard, key);
        Some((ticket, was_waiting))
    }

    /// `shard` no longer waits under `key` (granted, or gone); whether it did.
    fn unwait(&mut self, shard: ShardId, key: &str) -> bool {
        let waited = self.waiting.get(&shard).map(String::as_str) == Some(key);
        if waited {
            self.waiting.remove(&shard);
        }
        waited
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
