//! This process's side of the cluster queue, sans IO: its waiting shards in order per
//! bucket, the grants on their way to their futures, the round trip it measures, and
//! what it must send next. The clock is passed in; the driver (`driver.rs`) does the
//! I/O and reports what Redis answered. Never touched across an `.await`.
//!
//! # Implementation details
//!
//! 1. **Every waiter is in one place.** A request is `Waiting` (its key in its
//!    bucket's queue, under the `max_concurrency` in force) or `Granted` (not in any
//!    queue, its token on its way to its future). Nothing else: a grant that cannot be
//!    delivered goes back to `Waiting` with the key it had, so it keeps its place.
//! 2. **A permit is handed over only within its window.** `InFlight::fresh_until` is the
//!    send instant of the call that made (or last touched) the grant plus the window
//!    that call carried; Redis kept the bucket busy for the interval after that window,
//!    so a delivery within it is an interval from every other delivery of the bucket,
//!    on any clock. Later, the permit first needs a touch (a new call, a new window).
//! 3. **An undelivered grant is the queue's business.** A touch that Redis refuses (a
//!    later grant in the bucket, a new epoch, the state lost) means the permit is void:
//!    its unit is spent (counted in `undelivered`) and the shard asks again by itself.
//!    Its `acquire` never sees an error for it.
//! 4. **Deadlines come from Redis's answers**, shifted onto this process's clock when
//!    they arrive (so they err late, never early), or from notifications; the fallback
//!    in `next_deadline` bounds every wait even if every notification were lost.
//! 5. **Redis hears of every delivery, after it.** A permit handed over is queued in
//!    `delivered`, and the next grant call carries it (or a call of its own: at once
//!    for a grant Redis said may open Discord's window, else a grace later or when
//!    nothing is left to ask for); until Redis hears, it counts the grant as
//!    undelivered (every word and refill subtracts it) and as a possible opener of
//!    Discord's window (rules 6.3). A report lost or late errs on that safe side; a
//!    grant never delivered is never reported.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::round_trip::RoundTrip;
use super::scripts::{Answer, NEVER_MS, NeedLimit, Notice, Token};
use super::status::{ClusterStats, Health};
use crate::buckets::bucket_of;
use crate::{OnConflict, Priority, ShardId};

/// A touch whose answer keeps coming back after its window: after this many in a row
/// the grant is given up (spent) and its shard asks again, rather than keeping its
/// bucket busy for everyone.
const MAX_LATE_TOUCHES: u8 = 8;

/// What the process side needs to know of its queue's settings.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    /// This queue's name among the contenders.
    pub(super) client: String,
    /// What Redis keeps after a delivery window: the interval, the margin and a
    /// millisecond (Redis counts whole milliseconds).
    pub(super) spacing: Duration,
    /// How long a process next in line may take to come back before it is passed.
    pub(super) head_grace: Duration,
    /// Hold mode's timeout.
    pub(super) hold: Option<Duration>,
    /// A limit source was given: Discord's word is fetched, not awaited.
    pub(super) limit_source: bool,
    /// `Options::reserve`: units the shared budget keeps for reconnects.
    pub(super) reserve: u32,
    /// `Options::replicas`: grants wait for this many replicas' acknowledgment.
    pub(super) replicas: u32,
    /// `Options::replica_timeout`: how long a `WAIT` for them waits.
    pub(super) replica_timeout: Duration,
    /// `Config::grace`: after a loss, Discord's word is fetched once the grants made
    /// before it cannot reach Discord unseen any more (`lua/sync.lua`'s quarantine).
    pub(super) grace: Duration,
}

impl Settings {
    /// The settings of the queue `client` connects with `config` and `options`.
    pub(super) fn new(client: String, config: &crate::Config, options: &super::Options) -> Self {
        // What Redis keeps after a grant's delivery window (each call carries its
        // process's window: a permit reaches its shard within it of the call being
        // sent, later only after a touch): the interval and the margin, and a
        // millisecond for Redis's whole-millisecond clock. So two deliveries of a
        // bucket on any one clock are never closer than the interval plus the margin.
        let spacing = config
            .get_interval()
            .saturating_add(options.margin)
            .saturating_add(Duration::from_millis(1));
        Self {
            client,
            spacing,
            head_grace: options.head_grace,
            hold: config.get_hold_timeout(),
            limit_source: options.limit_source.is_some(),
            grace: config.get_grace(),
            reserve: options.reserve,
            replicas: options.replicas,
            replica_timeout: options.replica_timeout,
        }
    }
}

/// Where one waiting request stands.
pub(super) enum Phase {
    /// In its bucket's queue.
    Waiting,
    /// Granted in Redis; not yet taken by its future.
    Granted(InFlight),
}

/// A grant on its way to its future.
pub(super) struct InFlight {
    pub(super) token: Token,
    /// Taken by then, the permit goes straight to its shard.
    pub(super) fresh_until: Instant,
    /// The driver keeps the bucket busy (touches) from then on, or when asked.
    pub(super) touch_at: Instant,
    pub(super) touch_asked: bool,
    /// Touches in a row whose answer came after their window.
    late_touches: u8,
    /// Its delivery may open Discord's window: Redis must hear of it at once.
    pub(super) opens: bool,
}

impl InFlight {
    /// A grant (or a touch) whose call was sent at `sent` carrying `window`: Redis keeps
    /// its bucket busy until `spacing` after `sent + window`.
    fn new(token: Token, sent: Instant, window: Duration, spacing: Duration) -> Self {
        Self {
            token,
            fresh_until: sent + window,
            // After the window (the future had its chance to take the permit), and
            // while Redis still keeps the bucket busy (until `spacing` after the
            // window). A touch that arrives later is still right: Redis accepts it only
            // if no grant followed in the bucket.
            touch_at: sent + window + spacing / 2,
            touch_asked: false,
            late_touches: 0,
            opens: false,
        }
    }
}

pub(super) struct Waiter {
    pub(super) seq: u64,
    pub(super) priority: Priority,
    pub(super) phase: Phase,
    /// The request that holds this place now: a request that took it over
    /// (`acquire_replacing`) gets a new ticket, and the older one finds it gone.
    pub(super) ticket: Ticket,
    /// Who is woken when the grant comes.
    pub(super) owner: Owner,
}

/// Numbers the requests of a queue, so that a future knows whether the place it
/// asked for is still its own.
pub(super) type Ticket = u64;

/// Who waits for a request's grant.
pub(super) enum Owner {
    /// An `Acquire`, woken through its waker.
    Future(Option<Waker>),
    /// A `Grants` stream: the shard is put on its ready list (O(1) per grant, however
    /// many shards the stream waits for).
    Stream(u64),
}

/// A `Grants` stream: the shards woken for it, and its waker.
#[derive(Default)]
pub(super) struct WaitingStream {
    pub(super) ready: VecDeque<ShardId>,
    pub(super) waker: Option<Waker>,
}

/// A request that cannot be made (the shard's earlier one still waits here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct AlreadyWaiting;

impl Waiter {
    /// Its place in its bucket's queue: priority class, then request order.
    pub(super) fn key(&self, shard: ShardId) -> Key {
        (self.priority.rank(), self.seq, shard)
    }
}

/// Order within a bucket: (rank, sequence, shard). The rank is [`Priority::rank`],
/// the order of `lua/acquire.lua`'s scores.
pub(super) type Key = (u8, u64, ShardId);

#[derive(Default)]
pub(super) struct Bucket {
    pub(super) queue: BTreeSet<Key>,
    /// Ask Redis for the head again at (not before) this instant.
    pub(super) next_try: Option<Instant>,
    /// This process is among the bucket's contenders in Redis.
    pub(super) registered: bool,
    /// An acquire call whose answer was lost: retried with the same nonce for the same
    /// shard, so that it never spends twice.
    pub(super) pending: Option<(ShardId, String)>,
}

/// Work for the driver besides grants.
pub(super) enum Outgoing {
    /// Hold mode: free the bucket of this grant (useless after `until`: the lease ended).
    Release {
        shard: ShardId,
        token: Token,
        until: Instant,
    },
    /// No more waiters of this process in the bucket.
    Leave { bucket: u32 },
}

/// What a poll of a shard's future finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Taken {
    /// The permit, within its window: the request is done.
    Permit(Token),
    /// Not yet. `touch`: a grant came but its window passed, and the driver must now
    /// keep its bucket busy (a touch) before it can be handed over.
    Pending { touch: bool },
    /// The request is not here (never made, or already done).
    Gone,
    /// A later request of the same shard took its place (`acquire_replacing`).
    Superseded,
}

impl Taken {
    /// Whether the driver has work from it: to tell Redis of a delivery, or to send
    /// the touch asked for (taken late: the bucket is kept busy until an interval after
    /// a new window, spacing counting from delivery, before the permit is handed over).
    pub(super) fn wakes_driver(self) -> bool {
        matches!(self, Taken::Permit(_) | Taken::Pending { touch: true })
    }
}

pub(super) struct Local {
    pub(super) settings: Settings,
    pub(super) max_concurrency: u32,
    next_seq: u64,
    next_ticket: Ticket,
    pub(super) waiters: HashMap<ShardId, Waiter>,
    /// The `Grants` streams waiting here, by id.
    pub(super) streams: HashMap<u64, WaitingStream>,
    next_stream: u64,
    pub(super) buckets: HashMap<u32, Bucket>,
    pub(super) outbox: VecDeque<Outgoing>,
    /// The budget is spent until then (`Some(None)`: until Discord's word).
    pub(super) no_budget: Option<Option<Instant>>,
    /// Permits handed over whose delivery Redis has not been told of yet: until it is,
    /// their grants count as undelivered there, and none of them can settle that
    /// Discord's window is open (`delivered` in `lua/prelude.lua`). The next grant
    /// call carries them, or a call of their own once they are due
    /// ([`deliveries_due`](Self::deliveries_due)).
    pub(super) delivered: Vec<(ShardId, Token)>,
    /// When the oldest of `delivered` was handed over.
    delivered_since: Option<Instant>,
    /// One of `delivered` may have opened Discord's window: Redis must hear at once.
    delivered_opens: bool,
    pub(super) need: Option<NeedLimit>,
    /// With a limit source: do not fetch Discord's word again before then.
    pub(super) fetch_after: Option<Instant>,
    health: Health,
    /// A grant was not acknowledged by the replicas: none is asked for until they
    /// catch up.
    pub(super) replicas_behind: bool,
    pub(super) remaining: u32,
    /// The round trip to Redis, and the delivery window that follows.
    pub(super) round_trip: RoundTrip,
    /// Shards whose grant reached them (the twilight integration's reconnect inference).
    #[cfg_attr(not(feature = "twilight"), allow(dead_code))]
    pub(super) served: HashSet<ShardId>,
    /// Hold mode: the holds of delivered permits (live or kept), by shard: the grant,
    /// and when its hold times out at the latest (counted from its delivery, which
    /// is after its grant). `Queue::release` and the permit's drop take it out.
    pub(super) holds: HashMap<ShardId, (Token, Instant)>,
    pub(super) closed: bool,
    pub(super) stats: ClusterStats,
    /// The wakers of the futures and streams told to look again, woken once the lock
    /// is released (`Inner::lock`'s guard): a woken task may run at once, on this
    /// thread, and lock again.
    pub(super) woken: Vec<Waker>,
}

impl Local {
    pub(super) fn new(settings: Settings, max_concurrency: u32, remaining: u32) -> Self {
        Self {
            settings,
            max_concurrency,
            next_seq: 0,
            next_ticket: 0,
            waiters: HashMap::new(),
            streams: HashMap::new(),
            next_stream: 0,
            buckets: HashMap::new(),
            outbox: VecDeque::new(),
            no_budget: None,
            delivered: Vec::new(),
            delivered_since: None,
            delivered_opens: false,
            need: None,
            fetch_after: None,
            health: Health::Ready,
            replicas_behind: false,
            remaining,
            round_trip: RoundTrip::default(),
            served: HashSet::new(),
            holds: HashMap::new(),
            closed: false,
            stats: ClusterStats::default(),
            woken: Vec::new(),
        }
    }

    pub(super) fn bucket_of(&self, shard: ShardId) -> u32 {
        bucket_of(shard, self.max_concurrency)
    }

    /// The delivery window this process's calls carry now.
    pub(super) fn window(&self) -> Duration {
        self.round_trip.window()
    }

    /// A round of calls sent at `sent` was first answered at `now`: one sample per
    /// round, since pipelined calls share one round trip (a stalled round must not
    /// count as many stalls).
    pub(super) fn measured(&mut self, sent: Instant, now: Instant) {
        let before = self.window();
        self.round_trip.sample(now.saturating_duration_since(sent));
        if self.window() >= before * 2 && self.window() > Duration::from_millis(20) {
            tracing::debug!(
                round_trip = ?self.round_trip.smoothed(),
                window = ?self.window(),
                "round trip to Redis grew: delivery window widened",
            );
        }
    }

    /// The counters, with the round trip and the window as they are now.
    pub(super) fn stats(&self) -> ClusterStats {
        ClusterStats {
            round_trip: self.round_trip.smoothed(),
            window: self.window(),
            ..self.stats
        }
    }

    /// What grants wait for now. A link slower than the interval is said so: its
    /// grants still come, but each lengthens its bucket's round by its own window.
    pub(super) fn health(&self) -> Health {
        let round_trip = self.round_trip.smoothed();
        match &self.health {
            Health::Ready if round_trip > self.settings.spacing => Health::SlowLink {
                round_trip,
                window: self.window(),
            },
            health => health.clone(),
        }
    }

    /// Sets what grants wait for; logs a change of kind.
    pub(super) fn set_health(&mut self, health: Health) {
        if std::mem::discriminant(&health) != std::mem::discriminant(&self.health) {
            match &health {
                Health::Ready => tracing::info!("cluster queue ready"),
                Health::NoBudget { until } => {
                    tracing::info!(?until, "daily budget spent: waiting for the reset")
                }
                other => tracing::warn!(health = ?other, "cluster queue waiting"),
            }
        }
        self.health = health;
    }

    /// Queues `shard` for `owner`: its ticket. If the shard's earlier request still
    /// waits here (or its grant is on its way to it), `TakeOver` takes its place (and a
    /// grant on its way: the older request was abandoned) and wakes the older owner to
    /// find it gone; `Refuse` refuses.
    pub(super) fn enqueue(
        &mut self,
        shard: ShardId,
        priority: Priority,
        on_conflict: OnConflict,
        owner: Owner,
        now: Instant,
    ) -> Result<Ticket, AlreadyWaiting> {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        if let Some(waiter) = self.waiters.get_mut(&shard) {
            if on_conflict == OnConflict::Refuse {
                return Err(AlreadyWaiting);
            }
            waiter.ticket = ticket;
            let old = std::mem::replace(&mut waiter.owner, owner);
            self.notify(shard, old);
            return Ok(ticket);
        }
        self.next_seq += 1;
        let waiter = Waiter {
            seq: self.next_seq,
            priority,
            phase: Phase::Waiting,
            ticket,
            owner,
        };
        let key = waiter.key(shard);
        self.waiters.insert(shard, waiter);
        self.insert(key, now);
        Ok(ticket)
    }

    /// A new `Grants` stream's id.
    pub(super) fn open_stream(&mut self) -> u64 {
        self.next_stream += 1;
        self.streams
            .insert(self.next_stream, WaitingStream::default());
        self.next_stream
    }

    /// Puts `key` in its bucket's queue; a new head (first here, or ahead of the old
    /// one) asks at once.
    fn insert(&mut self, key: Key, now: Instant) {
        let bucket = self
            .buckets
            .entry(bucket_of(key.2, self.max_concurrency))
            .or_default();
        if bucket.queue.first().is_none_or(|head| key < *head) {
            bucket.next_try = Some(now);
        }
        bucket.queue.insert(key);
    }

    /// The future of request `ticket` of `shard` is gone. A waiting request leaves its
    /// queue (and Redis's contenders when it was the last here); a grant not taken is
    /// spent, and in hold mode its hold is released. A request taken over by a later
    /// one leaves nothing to do.
    pub(super) fn abandon(&mut self, shard: ShardId, ticket: Ticket, now: Instant) {
        if self.waiters.get(&shard).is_none_or(|w| w.ticket != ticket) {
            return;
        }
        let Some(waiter) = self.waiters.remove(&shard) else {
            return;
        };
        match waiter.phase {
            Phase::Waiting => {
                let key = waiter.key(shard);
                let index = bucket_of(shard, self.max_concurrency);
                if let Some(bucket) = self.buckets.get_mut(&index) {
                    bucket.queue.remove(&key);
                    if bucket.queue.is_empty() {
                        bucket.next_try = None;
                        if std::mem::take(&mut bucket.registered) {
                            self.outbox.push_back(Outgoing::Leave { bucket: index });
                        }
                    }
                }
            }
            Phase::Granted(granted) => self.release(shard, granted.token, now),
        }
    }

    /// Hold mode: queues a release of grant `token` of `shard`.
    pub(super) fn release(&mut self, shard: ShardId, token: Token, now: Instant) {
        if let Some(hold) = self.settings.hold {
            self.outbox.push_back(Outgoing::Release {
                shard,
                token,
                until: now + hold,
            });
        }
    }

    /// Redis says `max_concurrency` is now `max_concurrency`: re-key the queues,
    /// keeping the order. Registrations in Redis were dropped by the sync that
    /// changed it.
    pub(super) fn rekey(&mut self, max_concurrency: u32, now: Instant) {
        if max_concurrency == 0 || max_concurrency == self.max_concurrency {
            return;
        }
        self.max_concurrency = max_concurrency;
        self.buckets.clear();
        for (&shard, waiter) in &self.waiters {
            if let Phase::Waiting = waiter.phase {
                let bucket = self
                    .buckets
                    .entry(bucket_of(shard, max_concurrency))
                    .or_default();
                bucket.queue.insert(waiter.key(shard));
                bucket.next_try = Some(now);
            }
        }
    }

    /// A link to Redis is up at `now` (its round trip measured): grants may go on, and
    /// every bucket asks again. Whether it is a reconnect.
    pub(super) fn connected(&mut self, now: Instant) -> bool {
        self.stats.connections += 1;
        self.set_health(Health::Ready);
        self.retry_all(now);
        self.stats.connections > 1
    }

    /// Every bucket with waiters asks again now (a reconnect, a sync, an epoch).
    pub(super) fn retry_all(&mut self, now: Instant) {
        for bucket in self.buckets.values_mut() {
            if !bucket.queue.is_empty() {
                bucket.next_try = Some(now);
            }
        }
    }

    /// Discord's word was applied (by this process or another): grants may go on.
    pub(super) fn synced(&mut self, now: Instant) {
        self.need = None;
        self.fetch_after = None;
        self.no_budget = None;
        self.retry_all(now);
    }

    /// Wakes whoever waits for `shard`.
    pub(super) fn wake(&mut self, shard: ShardId) {
        if let Some(waiter) = self.waiters.get_mut(&shard) {
            let owner = match &mut waiter.owner {
                Owner::Future(waker) => Owner::Future(waker.take()),
                Owner::Stream(id) => Owner::Stream(*id),
            };
            self.notify(shard, owner);
        }
    }

    /// Tells `owner` to look at `shard` again (its waker is woken with the lock
    /// released).
    fn notify(&mut self, shard: ShardId, owner: Owner) {
        match owner {
            Owner::Future(waker) => self.woken.extend(waker),
            Owner::Stream(id) => {
                if let Some(stream) = self.streams.get_mut(&id) {
                    stream.ready.push_back(shard);
                    self.woken.extend(stream.waker.take());
                }
            }
        }
    }

    /// Request `ticket` of `shard` polls at `now`: its permit if granted and still
    /// within its window (implementation detail 2), else whether a touch must be sent.
    pub(super) fn take(&mut self, shard: ShardId, ticket: Ticket, now: Instant) -> Taken {
        let Some(waiter) = self.waiters.get_mut(&shard) else {
            return Taken::Gone;
        };
        if waiter.ticket != ticket {
            return Taken::Superseded;
        }
        match &mut waiter.phase {
            Phase::Waiting => Taken::Pending { touch: false },
            Phase::Granted(granted) if now <= granted.fresh_until => {
                let (token, opens) = (granted.token, granted.opens);
                self.waiters.remove(&shard);
                self.delivered.push((shard, token));
                self.delivered_since.get_or_insert(now);
                self.delivered_opens |= opens;
                Taken::Permit(token)
            }
            Phase::Granted(granted) => Taken::Pending {
                touch: !std::mem::replace(&mut granted.touch_asked, true),
            },
        }
    }

    /// The deliveries Redis has not heard of, to tell it now (and whether one of them
    /// may have opened Discord's window).
    pub(super) fn take_deliveries(&mut self) -> (Vec<(ShardId, Token)>, bool) {
        self.delivered_since = None;
        let opens = std::mem::take(&mut self.delivered_opens);
        (std::mem::take(&mut self.delivered), opens)
    }

    /// Deliveries whose call failed, to tell Redis later.
    pub(super) fn return_deliveries(
        &mut self,
        (deliveries, opens): (Vec<(ShardId, Token)>, bool),
        now: Instant,
    ) {
        if !deliveries.is_empty() {
            self.delivered.extend(deliveries);
            self.delivered_since.get_or_insert(now);
            self.delivered_opens |= opens;
        }
    }

    /// Whether the deliveries Redis has not heard of need a call of their own rather
    /// than wait for a grant call to carry them: one may have opened Discord's window
    /// (until Redis hears, every grant pushes its reset on), no request of this
    /// process is left, or the oldest waited a grace (until then its log instant
    /// keeps it in every word's count anyway). Later only errs on the safe side
    /// (implementation detail 5).
    pub(super) fn deliveries_due(&self, now: Instant) -> bool {
        self.delivered_since.is_some_and(|since| {
            self.delivered_opens || self.waiters.is_empty() || now >= since + self.settings.grace
        })
    }

    /// A touch of `shard`'s grant `token` said its delivery may open Discord's window.
    pub(super) fn may_open(&mut self, shard: ShardId, token: Token) {
        if let Some(Phase::Granted(granted)) = self.waiters.get_mut(&shard).map(|w| &mut w.phase) {
            if granted.token == token {
                granted.opens = true;
            }
        }
    }

    /// Shards whose request has not resolved: waiting, or granted and not yet taken.
    pub(super) fn len(&self) -> usize {
        self.waiters.len()
    }

    /// The heads to ask Redis for now, oldest first (the budget goes to the oldest of
    /// this process); none while the budget is known to be spent.
    pub(super) fn due_heads(&self, now: Instant) -> Vec<(Key, u32)> {
        if self
            .no_budget
            .is_some_and(|until| until.is_none_or(|t| now < t))
        {
            return Vec::new();
        }
        let mut due: Vec<(Key, u32)> = self
            .buckets
            .iter()
            .filter(|(_, b)| b.next_try.is_some_and(|t| t <= now))
            .filter_map(|(&index, b)| b.queue.first().map(|&head| (head, index)))
            .collect();
        due.sort_unstable();
        due
    }

    /// The acquire call for the head `shard` of bucket `index`, if it still is the head:
    /// the nonce (the lost call's, when retrying it, else a `fresh` one) and the rank of
    /// the next shard of this process in the bucket (-1: none).
    pub(super) fn ask(
        &mut self,
        index: u32,
        shard: ShardId,
        fresh: impl FnOnce() -> String,
    ) -> Option<(String, i64)> {
        self.no_budget = None;
        let bucket = self.buckets.get_mut(&index)?;
        // The head may have changed (cancelled, or a reconnect arrived).
        let head = *bucket.queue.first()?;
        if head.2 != shard {
            return None;
        }
        // Only a waiting request is asked for: a key whose request was granted or is
        // gone is stale (its bucket's queue must not ask for it, and spend, again).
        let waiting = self
            .waiters
            .get(&shard)
            .is_some_and(|w| matches!(w.phase, Phase::Waiting) && w.key(shard) == head);
        if !waiting {
            bucket.queue.remove(&head);
            return None;
        }
        let next_rank = bucket.queue.iter().nth(1).map_or(-1, |k| i64::from(k.0));
        let nonce = match &bucket.pending {
            Some((pending, nonce)) if *pending == shard => nonce.clone(),
            _ => {
                let nonce = fresh();
                bucket.pending = Some((shard, nonce.clone()));
                nonce
            }
        };
        Some((nonce, next_rank))
    }

    /// A grant came back but the replicas did not acknowledge it in time: never acted
    /// on, its unit spent; no grants until they catch up.
    pub(super) fn unacknowledged(&mut self, shard: ShardId, now: Instant) {
        let index = self.bucket_of(shard);
        self.stats.unacknowledged += 1;
        self.replicas_behind = true;
        self.set_health(Health::ReplicasBehind);
        let retry = now + self.settings.spacing;
        if let Some(bucket) = self.buckets.get_mut(&index) {
            bucket.pending = None;
            bucket.next_try = Some(retry);
        }
    }

    /// The acquire script's answer for `shard`, the head of its bucket, asked at `sent`
    /// with `window`, arrived at `now`.
    pub(super) fn answered(
        &mut self,
        shard: ShardId,
        answer: Answer,
        sent: Instant,
        window: Duration,
        now: Instant,
    ) {
        // The shard's bucket now: an earlier answer of the same round may have re-keyed
        // the queues (a new `max_concurrency`), and its key is where the re-key put it.
        // The bucket it was asked in would leave the key behind, and the shard, granted
        // and delivered, would be asked for again and again.
        let index = self.bucket_of(shard);
        if let Some(bucket) = self.buckets.get_mut(&index) {
            bucket.pending = None;
        }
        let millis = Duration::from_millis;
        match answer {
            Answer::Grant {
                token,
                remaining,
                max_concurrency,
                next_wait,
                opens,
            } => {
                self.stats.grants += 1;
                self.remaining = remaining;
                self.set_health(Health::Ready);
                let mut granted = InFlight::new(token, sent, window, self.settings.spacing);
                granted.opens = opens;
                let key = self.waiters.get(&shard).map(|w| w.key(shard));
                if let Some(bucket) = self.buckets.get_mut(&index) {
                    if let Some(key) = key {
                        bucket.queue.remove(&key);
                    }
                    bucket.registered = !bucket.queue.is_empty();
                    bucket.next_try = (!bucket.queue.is_empty()).then(|| now + millis(next_wait));
                }
                match self.waiters.get_mut(&shard) {
                    Some(waiter) if matches!(waiter.phase, Phase::Waiting) => {
                        waiter.phase = Phase::Granted(granted);
                        self.wake(shard);
                    }
                    _ => {
                        // Its future went while the call was out: spent, and released.
                        self.stats.orphaned += 1;
                        self.release(shard, token, now);
                        return;
                    }
                }
                self.rekey(max_concurrency, now);
            }
            Answer::Wait {
                wait,
                max_concurrency,
            } => {
                self.stats.refusals += 1;
                if let Some(bucket) = self.buckets.get_mut(&index) {
                    bucket.registered = true;
                    bucket.next_try = Some(now + millis(wait));
                }
                self.rekey(max_concurrency, now);
            }
            Answer::Budget {
                wait,
                remaining,
                max_concurrency,
            } => {
                self.stats.refusals += 1;
                self.remaining = remaining;
                let until = wait.map(|wait| now + millis(wait));
                self.no_budget = Some(until);
                self.set_health(Health::NoBudget {
                    until: wait.map(millis),
                });
                if let Some(bucket) = self.buckets.get_mut(&index) {
                    bucket.registered = true;
                    bucket.next_try = Some(until.unwrap_or(now));
                }
                self.rekey(max_concurrency, now);
            }
            Answer::NeedLimit { need, lost } => {
                self.stats.refusals += 1;
                self.need = Some(need);
                // After a loss, a word read before every grant made before it reached
                // Discord would be quarantined (applied less what they may be): fetch
                // it then.
                if let Some(lost) = lost {
                    let wait = lost.saturating_add(self.settings.grace.as_millis() as i64);
                    if let Ok(wait) = u64::try_from(wait) {
                        let after = now + millis(wait.min(NEVER_MS));
                        self.fetch_after = Some(self.fetch_after.map_or(after, |t| t.max(after)));
                    }
                }
                self.set_health(if self.settings.limit_source {
                    Health::FetchingLimit(need)
                } else {
                    Health::NeedsLimit(need)
                });
                if let Some(bucket) = self.buckets.get_mut(&index) {
                    bucket.next_try = Some(now);
                }
            }
        }
    }

    /// The grants to touch now: taken late (their future asked), or parked long
    /// enough that their bucket must be kept busy.
    ///
    /// In shard order: a round's calls go out in the same order on every run (the
    /// waiters' map has none), so that a simulated seed replays exactly.
    pub(super) fn due_touches(&self, now: Instant) -> Vec<(ShardId, Token)> {
        let mut due: Vec<(ShardId, Token)> = self
            .waiters
            .iter()
            .filter_map(|(&shard, waiter)| match &waiter.phase {
                Phase::Granted(g) if g.touch_asked || now >= g.touch_at => Some((shard, g.token)),
                _ => None,
            })
            .collect();
        due.sort_unstable_by_key(|&(shard, _)| shard);
        due
    }

    /// A touch of grant `token` of `shard`, sent at `sent` with `window`, answered at
    /// `now`: `kept` (the bucket is busy until an interval after the window) or void.
    pub(super) fn touched(
        &mut self,
        shard: ShardId,
        token: Token,
        kept: bool,
        sent: Instant,
        window: Duration,
        now: Instant,
    ) {
        self.stats.touches += 1;
        let spacing = self.settings.spacing;
        let Some(waiter) = self.waiters.get_mut(&shard) else {
            return;
        };
        let Phase::Granted(granted) = &mut waiter.phase else {
            return;
        };
        if granted.token != token {
            return;
        }
        let late = now > sent + window;
        let late_touches = if late { granted.late_touches + 1 } else { 0 };
        if !kept || late_touches >= MAX_LATE_TOUCHES {
            self.undelivered(shard, now);
            return;
        }
        let mut touched = InFlight::new(token, sent, window, spacing);
        // Woken, its future takes the permit if the answer came within the window, or
        // asks for another touch (whose window the late answer widened).
        touched.late_touches = late_touches;
        touched.opens = granted.opens;
        *granted = touched;
        self.wake(shard);
    }

    /// The grant of `shard` cannot be delivered (a touch refused, or answered too late
    /// too often): its unit is spent, and the shard waits again at the place it had.
    pub(super) fn undelivered(&mut self, shard: ShardId, now: Instant) {
        let Some(waiter) = self.waiters.get_mut(&shard) else {
            return;
        };
        if !matches!(waiter.phase, Phase::Granted(_)) {
            return;
        }
        waiter.phase = Phase::Waiting;
        let key = waiter.key(shard);
        self.stats.undelivered += 1;
        tracing::warn!(
            shard,
            round_trip = ?self.round_trip.smoothed(),
            "a grant could not be delivered in time: its unit is spent, the shard asks again",
        );
        self.insert(key, now);
    }

    /// A message of the namespace's channel ([`Notice`]: a bucket's next process,
    /// Discord's word applied, a new server, a loss).
    pub(super) fn noticed(&mut self, payload: &str, now: Instant) {
        match Notice::parse(payload) {
            Some(Notice::Next {
                bucket,
                head,
                wait,
                second,
                check,
            }) => {
                let me = self.settings.client.as_str();
                let head_grace = self.settings.head_grace;
                let Some(b) = self.buckets.get_mut(&bucket) else {
                    return;
                };
                if b.queue.is_empty() {
                    return;
                }
                if head == me {
                    // Our turn: ask when the bucket frees.
                    b.next_try = Some(now + wait);
                } else if second == Some(me) && check.is_some() {
                    // Next in line: look whether the head came back once it should
                    // have (a head whose process is gone is passed then).
                    b.next_try = check.map(|check| now + check);
                } else if b.registered {
                    // Further back: the fallback, if the head's lease lapses unnoticed.
                    b.next_try = Some(now + wait + head_grace);
                }
            }
            Some(Notice::Synced) => self.synced(now),
            Some(notice @ (Notice::Lost | Notice::NewServer { .. })) => {
                if let Notice::NewServer { epoch } = notice {
                    tracing::warn!(
                        epoch,
                        "Redis is a new server (restart, failover or promotion): waiting for Discord's word",
                    );
                } else {
                    tracing::warn!(
                        "part of the shared state was lost (evicted or deleted): waiting for Discord's word",
                    );
                }
                // The next answer says what it needs.
                self.retry_all(now);
            }
            None => {}
        }
    }

    /// When the driver must run again at the latest.
    pub(super) fn next_deadline(&self, now: Instant) -> Instant {
        // The fallback: even if every notification were lost, nothing waits longer
        // than a round (plus the head grace) past its turn.
        let mut next = now + self.settings.spacing + self.window() + self.settings.head_grace;
        if !self.outbox.is_empty() || self.deliveries_due(now) {
            return now;
        }
        if let Some(since) = self.delivered_since {
            next = next.min(since + self.settings.grace);
        }
        if self.need.is_some() {
            return match (self.fetch_after, self.settings.limit_source) {
                (Some(after), _) => after.min(next),
                (None, true) => now,
                (None, false) => next,
            };
        }
        for waiter in self.waiters.values() {
            if let Phase::Granted(granted) = &waiter.phase {
                if granted.touch_asked {
                    return now;
                }
                next = next.min(granted.touch_at);
            }
        }
        let budget_until = match self.no_budget {
            Some(Some(until)) => Some(until),
            Some(None) => return next,
            None => None,
        };
        for bucket in self.buckets.values() {
            if let (Some(at), false) = (bucket.next_try, bucket.queue.is_empty()) {
                next = next.min(budget_until.map_or(at, |until| at.max(until)));
            }
        }
        next
    }
}

#[cfg(test)]
mod tests;
