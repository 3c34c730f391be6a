//! The cluster queue as the futures' authority (`crate::queue`): Redis decides, and
//! the driver records each grant in `Local`, where the future that asked takes it
//! (`Local::take`: within its delivery window, or after a touch).

use std::collections::{HashMap, VecDeque};
use std::task::{Context, Poll};

use tokio::time::Instant;

use super::local::{Local, Owner, Taken, Ticket};
use super::queue::Queue;
use super::scripts::Token;
use crate::queue::{Authority, Grant, Request, Step};
use crate::{AcquireError, Error, OnConflict, Priority, ShardId};

/// What the cluster queue keeps of a `Grants` stream: its id among the queue's
/// streams, its requests still waiting, and the shards it could not ask for.
pub struct StreamState {
    id: u64,
    /// The requests still waiting, by shard.
    waiting: HashMap<ShardId, Ticket>,
    /// Shards that could not be asked for, to yield as errors.
    refused: VecDeque<ShardId>,
}

impl Authority for Queue {
    type Place = Ticket;
    type Stream = StreamState;
    type Token = Token;

    fn poll_request(
        &self,
        request: &Request,
        place: Option<Ticket>,
        cx: &mut Context<'_>,
    ) -> Step<Ticket, Token> {
        let inner = &self.inner;
        let shard = request.shard;
        // Its driver may have ended with the runtime it ran on.
        super::driver::ensure(inner);
        let now = Instant::now();
        let mut local = inner.lock();
        // The driver is woken (once the lock is released) for a new request, a touch
        // asked for, or to tell Redis of a delivery.
        let (ticket, asked) = match place {
            Some(ticket) => (ticket, false),
            None => {
                let owner = Owner::Future(None);
                match local.enqueue(shard, request.priority, request.on_conflict, owner, now) {
                    Ok(ticket) => (ticket, true),
                    Err(_) => return Step::Ready(Err(Error::AlreadyQueued(shard).into())),
                }
            }
        };
        let taken = local.take(shard, ticket, now);
        let outcome = resolve(&mut local, inner.hold(), shard, taken, now);
        if outcome.is_none() {
            if let Some(waiter) = local.waiters.get_mut(&shard) {
                if let Owner::Future(waker) = &mut waiter.owner {
                    if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *waker = Some(cx.waker().clone());
                    }
                }
            }
        }
        drop(local);
        if asked || taken.wakes_driver() {
            inner.wake.notify_one();
        }
        match outcome {
            Some(outcome) => Step::Ready(outcome),
            None => Step::Waiting(ticket),
        }
    }

    fn abandon(&self, shard: ShardId, ticket: Ticket) {
        self.inner.abandon(None, [(shard, ticket)]);
    }

    fn poll_stream(
        &self,
        shards: &mut Vec<ShardId>,
        stream: &mut Option<StreamState>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Grant<Token>, AcquireError>>> {
        let inner = &self.inner;
        super::driver::ensure(inner);
        let now = Instant::now();
        let mut local = inner.lock();
        let state = match stream {
            Some(state) => state,
            None => {
                let state = ask_for_all(&mut local, std::mem::take(shards), now);
                inner.wake.notify_one();
                stream.insert(state)
            }
        };
        if let Some(shard) = state.refused.pop_front() {
            return Poll::Ready(Some(Err(Error::AlreadyQueued(shard).into())));
        }
        // The driver is woken for a touch asked for, or to tell Redis of a delivery.
        let mut wake_driver = false;
        while let Some(shard) = local
            .streams
            .get_mut(&state.id)
            .and_then(|stream| stream.ready.pop_front())
        {
            let Some(&ticket) = state.waiting.get(&shard) else {
                continue;
            };
            let taken = local.take(shard, ticket, now);
            wake_driver |= taken.wakes_driver();
            let Some(outcome) = resolve(&mut local, inner.hold(), shard, taken, now) else {
                continue;
            };
            state.waiting.remove(&shard);
            drop(local);
            if wake_driver {
                inner.wake.notify_one();
            }
            return Poll::Ready(Some(outcome));
        }
        if wake_driver {
            inner.wake.notify_one();
        }
        if state.waiting.is_empty() {
            local.streams.remove(&state.id);
            return Poll::Ready(None);
        }
        if let Some(stream) = local.streams.get_mut(&state.id) {
            if !stream
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                stream.waker = Some(cx.waker().clone());
            }
        }
        Poll::Pending
    }

    fn abandon_stream(&self, _: &[ShardId], mut stream: StreamState) {
        self.inner.abandon(Some(stream.id), stream.waiting.drain());
    }

    fn stream_len(shards: &[ShardId], stream: Option<&StreamState>) -> Option<usize> {
        let asked = stream.map_or(0, |state| state.waiting.len() + state.refused.len());
        Some(shards.len() + asked)
    }

    fn release(&self, shard: ShardId, token: Token) {
        let mut local = self.inner.lock();
        // `Queue::release` may have released this hold already.
        if local.holds.get(&shard).is_some_and(|(t, _)| *t == token) {
            local.holds.remove(&shard);
            drop(local);
            self.inner.release(shard, token);
        }
    }

    #[cfg(feature = "twilight")]
    fn served(&self, shard: ShardId) -> bool {
        self.inner.lock().served.contains(&shard)
    }

    #[cfg(feature = "twilight")]
    fn mark_served(&self, shard: ShardId) {
        self.inner.lock().served.insert(shard);
    }
}

/// A stream's first poll: asks for each of `shards` at `now`, under a new stream id.
fn ask_for_all(local: &mut Local, shards: Vec<ShardId>, now: Instant) -> StreamState {
    let id = local.open_stream();
    let mut state = StreamState {
        id,
        waiting: HashMap::new(),
        refused: VecDeque::new(),
    };
    for shard in shards {
        let owner = Owner::Stream(id);
        match local.enqueue(shard, Priority::Start, OnConflict::Refuse, owner, now) {
            Ok(ticket) => drop(state.waiting.insert(shard, ticket)),
            Err(_) => state.refused.push_back(shard),
        }
    }
    state
}

/// What a poll of `shard`'s request makes of what it found (`taken`): the end of the
/// request (its permit, delivered at `now`, or why there is none), or `None` while it
/// waits.
fn resolve(
    local: &mut Local,
    hold: Option<std::time::Duration>,
    shard: ShardId,
    taken: Taken,
    now: Instant,
) -> Option<Result<Grant<Token>, AcquireError>> {
    match taken {
        Taken::Permit(token) => Some(Ok(delivered(local, hold, shard, token, now))),
        Taken::Gone => Some(Err(AcquireError::GrantLost(shard))),
        Taken::Superseded => Some(Err(AcquireError::Superseded(shard))),
        Taken::Pending { .. } => None,
    }
}

/// Grant `token` of `shard`, taken at `now`: in hold mode its hold is recorded, for
/// the permit's release or [`Queue::release`].
pub(super) fn delivered(
    local: &mut Local,
    hold: Option<std::time::Duration>,
    shard: ShardId,
    token: Token,
    now: Instant,
) -> Grant<Token> {
    if let Some(hold) = hold {
        local.holds.insert(shard, (token, now + hold));
    }
    Grant {
        shard,
        at: now.into_std(),
        token,
        holds: hold.is_some(),
    }
}

impl crate::queue::Permit<Queue> {
    /// The grant's identity in Redis: the epoch and the grant's number in it.
    pub fn token(&self) -> (i64, i64) {
        let Token { epoch, seq } = self.grant_token();
        (epoch, seq)
    }
}
