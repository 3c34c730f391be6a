//! The process side on a hand clock: answers, touches, notifications and polls in any
//! order, checked against an independent model of what each request must be.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::redis::DELIVERY_WINDOW;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn settings() -> Settings {
    Settings {
        client: "me".to_owned(),
        spacing: ms(201),
        head_grace: ms(1000),
        hold: None,
        limit_source: false,
        grace: Duration::from_secs(30),
        reserve: 0,
        replicas: 0,
        replica_timeout: Duration::from_millis(500),
    }
}

fn token(seq: i64) -> Token {
    Token { epoch: 1, seq }
}

fn grant(seq: i64, max_concurrency: u32, next_wait: u64) -> Answer {
    Answer::Grant {
        token: token(seq),
        remaining: 100,
        max_concurrency,
        next_wait,
        opens: false,
    }
}

/// Asks for `shard` as an `Acquire` would: its ticket.
fn enqueue(local: &mut Local, shard: ShardId, now: Instant) -> Ticket {
    local
        .enqueue(
            shard,
            Priority::Start,
            OnConflict::Refuse,
            Owner::Future(None),
            now,
        )
        .unwrap()
}

/// The head of bucket `index` asked at `sent` and answered at `now`.
fn ask_and_answer(local: &mut Local, index: u32, answer: Answer, sent: Instant, now: Instant) {
    let shard = local.buckets[&index].queue.first().unwrap().2;
    let window = local.window();
    local.ask(index, shard, || "nonce".to_owned()).unwrap();
    local.answered(shard, answer, sent, window, now);
}

#[test]
fn a_grant_is_handed_over_within_its_window_only() {
    let start = Instant::now();
    let mut local = Local::new(settings(), 4, 100);
    let zero = enqueue(&mut local, 0, start);
    let four = enqueue(&mut local, 4, start);
    let window = local.window();
    assert_eq!(window, DELIVERY_WINDOW);
    // Answered 3 ms after it was sent: 2 ms of the window left.
    ask_and_answer(&mut local, 0, grant(1, 4, 205), start, start + ms(3));
    assert_eq!(
        local.take(4, four, start + ms(3)),
        Taken::Pending { touch: false }
    );
    assert_eq!(local.take(0, zero, start + window), Taken::Permit(token(1)));
    assert_eq!(local.take(0, zero, start + window), Taken::Gone);
    // The next head asks when Redis said the bucket frees, on this clock.
    assert_eq!(local.buckets[&0].next_try, Some(start + ms(3) + ms(205)));
}

/// Redis tells its deliveries (rules 6.3): a permit handed over is reported once, and
/// a grant voided before its delivery is not.
#[test]
fn a_delivered_permit_is_reported_and_only_it() {
    let start = Instant::now();
    let mut local = Local::new(settings(), 2, 100);
    let zero = enqueue(&mut local, 0, start);
    let one = enqueue(&mut local, 1, start);
    ask_and_answer(&mut local, 0, grant(1, 2, 205), start, start + ms(1));
    ask_and_answer(&mut local, 1, grant(2, 2, 205), start, start + ms(1));
    assert!(local.delivered.is_empty(), "reported before its delivery");
    assert_eq!(local.take(0, zero, start + ms(2)), Taken::Permit(token(1)));
    assert_eq!(local.delivered, vec![(0, token(1))]);
    // Shard 1's grant is taken late and its touch refused: never delivered.
    assert_eq!(
        local.take(1, one, start + ms(50)),
        Taken::Pending { touch: true }
    );
    local.touched(1, token(2), false, start + ms(50), ms(5), start + ms(51));
    assert_eq!(local.delivered, vec![(0, token(1))]);
}

/// A delivery that may have opened Discord's window is told at once; others wait for
/// a grant call to carry them, a grace at most, or go at once when nothing is left.
#[test]
fn deliveries_are_told_at_once_only_when_they_may_open_the_window() {
    let start = Instant::now();
    let mut local = Local::new(settings(), 2, 100);
    let tickets: Vec<Ticket> = (0..3)
        .map(|shard| enqueue(&mut local, shard, start))
        .collect();
    ask_and_answer(&mut local, 0, grant(1, 2, 205), start, start + ms(1));
    assert_eq!(
        local.take(0, tickets[0], start + ms(2)),
        Taken::Permit(token(1))
    );
    // Shard 2 still waits: the next grant call carries it, or a grace from now.
    assert!(!local.deliveries_due(start + ms(2)));
    let grace = local.settings.grace;
    assert!(local.deliveries_due(start + ms(2) + grace));
    assert!(local.next_deadline(start + ms(2)) <= start + ms(2) + grace);
    assert_eq!(local.take_deliveries(), (vec![(0, token(1))], false));
    // A grant that may open the window: told at once.
    let opens = Answer::Grant {
        token: token(2),
        remaining: 99,
        max_concurrency: 2,
        next_wait: 205,
        opens: true,
    };
    ask_and_answer(&mut local, 1, opens, start, start + ms(3));
    assert_eq!(
        local.take(1, tickets[1], start + ms(4)),
        Taken::Permit(token(2))
    );
    assert!(local.deliveries_due(start + ms(4)));
    assert_eq!(local.next_deadline(start + ms(4)), start + ms(4));
    assert_eq!(local.take_deliveries(), (vec![(1, token(2))], true));
    // The last one here: nothing left to carry it.
    ask_and_answer(
        &mut local,
        0,
        grant(3, 2, 205),
        start + ms(5),
        start + ms(5),
    );
    assert_eq!(
        local.take(2, tickets[2], start + ms(6)),
        Taken::Permit(token(3))
    );
    assert!(local.deliveries_due(start + ms(6)));
}

/// After a loss, Discord's word is fetched once the grants made before it cannot
/// reach Discord unseen: the longest window after the loss was noticed (as Redis
/// says it, relative to its answer) and the grace.
#[test]
fn after_a_loss_the_word_is_fetched_after_the_quarantine() {
    let start = Instant::now();
    let mut local = Local::new(
        Settings {
            limit_source: true,
            ..settings()
        },
        1,
        100,
    );
    enqueue(&mut local, 0, start);
    let lost = |in_ms| Answer::NeedLimit {
        need: NeedLimit::StateMissing,
        lost: Some(in_ms),
    };
    ask_and_answer(&mut local, 0, lost(9_000), start, start + ms(4));
    let after = start + ms(4) + ms(9_000) + Duration::from_secs(30);
    assert_eq!(local.fetch_after, Some(after));
    assert_eq!(
        local.next_deadline(start + ms(5)),
        start + ms(5) + ms(201) + ms(5) + ms(1000)
    );
    // A later answer never brings it earlier; one long past asks at once.
    ask_and_answer(&mut local, 0, lost(1_000), start, start + ms(10));
    assert_eq!(local.fetch_after, Some(after));
    let mut fresh = Local::new(
        Settings {
            limit_source: true,
            ..settings()
        },
        1,
        100,
    );
    enqueue(&mut fresh, 0, start);
    ask_and_answer(&mut fresh, 0, lost(-40_000), start, start + ms(4));
    assert_eq!(fresh.fetch_after, None);
    assert_eq!(fresh.next_deadline(start + ms(4)), start + ms(4));
}

#[test]
fn a_grant_taken_late_needs_a_touch_and_one_refused_goes_back_to_its_place() {
    let start = Instant::now();
    let mut local = Local::new(settings(), 1, 100);
    let tickets: Vec<Ticket> = (0..3)
        .map(|shard| enqueue(&mut local, shard, start))
        .collect();
    ask_and_answer(&mut local, 0, grant(1, 1, 205), start, start + ms(1));
    let late = start + ms(50);
    assert_eq!(
        local.take(0, tickets[0], late),
        Taken::Pending { touch: true }
    );
    // Asked once: a second poll does not ask again.
    assert_eq!(
        local.take(0, tickets[0], late),
        Taken::Pending { touch: false }
    );
    assert_eq!(local.due_touches(late), vec![(0, token(1))]);
    // Redis refuses: another grant followed in the bucket. Spent, and shard 0 is the
    // head again (its place), asking at once; no error for its future.
    local.touched(0, token(1), false, late, local.window(), late + ms(1));
    assert_eq!(local.stats.undelivered, 1);
    assert_eq!(local.buckets[&0].queue.first().map(|k| k.2), Some(0));
    assert_eq!(local.buckets[&0].next_try, Some(late + ms(1)));
    assert_eq!(
        local.take(0, tickets[0], late + ms(1)),
        Taken::Pending { touch: false }
    );
    assert_eq!(local.len(), 3);
}

#[test]
fn a_kept_touch_hands_the_permit_over_within_its_own_window() {
    let start = Instant::now();
    let mut local = Local::new(settings(), 1, 100);
    let ticket = enqueue(&mut local, 0, start);
    ask_and_answer(&mut local, 0, grant(1, 1, 205), start, start + ms(1));
    let late = start + ms(50);
    assert_eq!(local.take(0, ticket, late), Taken::Pending { touch: true });
    let window = local.window();
    local.touched(0, token(1), true, late, window, late + ms(2));
    assert_eq!(
        local.take(0, ticket, late + window),
        Taken::Permit(token(1))
    );
}

#[test]
fn touches_answered_too_late_too_often_give_the_grant_up() {
    let start = Instant::now();
    let mut local = Local::new(settings(), 1, 100);
    let ticket = enqueue(&mut local, 0, start);
    ask_and_answer(&mut local, 0, grant(1, 1, 205), start, start + ms(1));
    let mut now = start + ms(50);
    for _ in 0..MAX_LATE_TOUCHES {
        assert_eq!(local.take(0, ticket, now), Taken::Pending { touch: true });
        let window = local.window();
        // Each answer comes after its window (which widens with each late sample).
        local.measured(now, now + window + ms(1));
        local.touched(0, token(1), true, now, window, now + window + ms(1));
        now += window + ms(1);
    }
    assert_eq!(local.stats.undelivered, 1);
    assert_eq!(local.take(0, ticket, now), Taken::Pending { touch: false });
    assert!(local.window() > DELIVERY_WINDOW);
}

#[test]
fn a_stalled_round_is_one_sample() {
    let start = Instant::now();
    let mut local = Local::new(settings(), 1, 100);
    for _ in 0..20 {
        local.measured(start, start + ms(2));
    }
    // One round of many calls, stalled 1.5 s: one sample, not one per call.
    local.measured(start, start + ms(1500));
    assert!(local.window() <= ms(30), "{:?}", local.window());
}

#[test]
fn notifications_schedule_the_head_the_next_in_line_and_the_rest() {
    let start = Instant::now();
    let mut local = Local::new(settings(), 4, 100);
    for shard in 0..3 {
        enqueue(&mut local, shard, start);
    }
    for index in [0, 1, 2] {
        ask_and_answer(
            &mut local,
            index,
            Answer::Wait {
                wait: 1000,
                max_concurrency: 4,
            },
            start,
            start,
        );
    }
    local.noticed("n 0 me 100", start);
    local.noticed("n 1 other 100 me 112", start);
    local.noticed("n 2 other 100 third 112", start);
    assert_eq!(local.buckets[&0].next_try, Some(start + ms(100)));
    assert_eq!(local.buckets[&1].next_try, Some(start + ms(112)));
    assert_eq!(local.buckets[&2].next_try, Some(start + ms(1100)));
    // Garbage changes nothing.
    for payload in ["", "n", "n x me 1", "n 0 me", "n 0 me -5", "q 1 2"] {
        local.noticed(payload, start);
    }
    assert_eq!(local.buckets[&0].next_try, Some(start + ms(100)));
}

#[test]
fn a_link_slower_than_the_spacing_says_so() {
    let start = Instant::now();
    let mut local = Local::new(settings(), 1, 100);
    for _ in 0..10 {
        local.measured(start, start + ms(300));
    }
    assert!(matches!(local.health(), Health::SlowLink { round_trip, .. } if round_trip == ms(300)));
    assert_eq!(local.stats().round_trip, ms(300));
}

#[test]
fn a_replacing_request_takes_the_place_and_the_grant_of_the_older_one() {
    let start = Instant::now();
    let mut local = Local::new(settings(), 1, 100);
    let old = enqueue(&mut local, 0, start);
    let behind = enqueue(&mut local, 1, start);
    assert_eq!(
        local.enqueue(
            0,
            Priority::Start,
            OnConflict::Refuse,
            Owner::Future(None),
            start
        ),
        Err(AlreadyWaiting)
    );
    let new = local
        .enqueue(
            0,
            Priority::Start,
            OnConflict::TakeOver,
            Owner::Future(None),
            start,
        )
        .unwrap();
    assert_eq!(local.len(), 2, "one request per shard");
    assert_eq!(local.take(0, old, start), Taken::Superseded);
    // The older future's drop leaves the new request alone.
    local.abandon(0, old, start);
    assert_eq!(local.buckets[&0].queue.first().map(|k| k.2), Some(0));
    ask_and_answer(&mut local, 0, grant(1, 1, 205), start, start + ms(1));
    assert_eq!(local.take(0, new, start + ms(1)), Taken::Permit(token(1)));
    assert_eq!(
        local.take(1, behind, start + ms(1)),
        Taken::Pending { touch: false }
    );
}

#[test]
fn a_stream_is_told_of_each_grant_by_its_shard() {
    let start = Instant::now();
    let mut local = Local::new(settings(), 2, 100);
    let id = local.open_stream();
    for shard in 0..4 {
        local
            .enqueue(
                shard,
                Priority::Start,
                OnConflict::Refuse,
                Owner::Stream(id),
                start,
            )
            .unwrap();
    }
    ask_and_answer(&mut local, 1, grant(1, 2, 205), start, start + ms(1));
    ask_and_answer(&mut local, 0, grant(2, 2, 205), start, start + ms(1));
    let ready: Vec<ShardId> = local.streams[&id].ready.iter().copied().collect();
    assert_eq!(ready, vec![1, 0], "in the order granted, nothing else");
}

/// What the test does next.
#[derive(Clone, Debug)]
enum Op {
    Ask(ShardId, bool),
    Drop(ShardId),
    Advance(u64),
    /// A driver round: every due head asked, answered with these kinds in turn after
    /// this round trip (ms).
    Heads(Vec<Kind>, u64),
    /// Every due touch answered: kept or not, after this round trip (ms).
    Touches(bool, u64),
    Notice(u8, u32, u64),
    Poll(ShardId),
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Grant {
        next_wait: u64,
        max_concurrency: u32,
    },
    Wait(u64),
    Budget(Option<u64>),
    Need,
}

fn op() -> impl Strategy<Value = Op> {
    let shard = 0..12u32;
    let kind = prop_oneof![
        6 => (0..400u64, prop_oneof![4 => Just(4u32), 1 => Just(2u32)])
            .prop_map(|(next_wait, max_concurrency)| Kind::Grant { next_wait, max_concurrency }),
        3 => (0..400u64).prop_map(Kind::Wait),
        1 => proptest::option::of(0..400u64).prop_map(Kind::Budget),
        1 => Just(Kind::Need),
    ];
    prop_oneof![
        4 => (shard.clone(), any::<bool>()).prop_map(|(s, r)| Op::Ask(s, r)),
        1 => shard.clone().prop_map(Op::Drop),
        3 => (0..300u64).prop_map(Op::Advance),
        4 => (proptest::collection::vec(kind, 1..4), 0..12u64).prop_map(|(k, rtt)| Op::Heads(k, rtt)),
        2 => (any::<bool>(), 0..12u64).prop_map(|(kept, rtt)| Op::Touches(kept, rtt)),
        1 => (0..4u8, 0..4u32, 0..500u64).prop_map(|(k, b, w)| Op::Notice(k, b, w)),
        4 => shard.prop_map(Op::Poll),
    ]
}

/// The model's view of one request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Model {
    Waiting,
    /// Handed over only up to `fresh_until`; `late` touches in a row came after
    /// their window.
    Granted {
        fresh_until: Instant,
        late: u8,
    },
}

struct World {
    local: Local,
    now: Instant,
    model: HashMap<ShardId, Model>,
    /// Each request's key, as the model orders them: (rank, its own sequence).
    keys: HashMap<ShardId, (u8, u64)>,
    seq: u64,
    next_token: i64,
    tokens: HashMap<ShardId, Token>,
    /// The ticket of each shard's live request.
    tickets: HashMap<ShardId, Ticket>,
    undelivered: u64,
}

impl World {
    fn new() -> Self {
        Self {
            local: Local::new(settings(), 4, 1000),
            now: Instant::now(),
            model: HashMap::new(),
            keys: HashMap::new(),
            seq: 0,
            next_token: 0,
            tokens: HashMap::new(),
            tickets: HashMap::new(),
            undelivered: 0,
        }
    }

    fn apply(&mut self, op: &Op) {
        let now = self.now;
        match *op {
            Op::Ask(shard, reconnect) => {
                let priority = if reconnect {
                    Priority::Reconnect
                } else {
                    Priority::Start
                };
                let owner = Owner::Future(None);
                let queued = self
                    .local
                    .enqueue(shard, priority, OnConflict::Refuse, owner, now);
                assert_eq!(
                    queued.is_ok(),
                    !self.model.contains_key(&shard),
                    "enqueue {shard}"
                );
                if let Ok(ticket) = queued {
                    self.seq += 1;
                    self.model.insert(shard, Model::Waiting);
                    self.keys.insert(shard, (priority.rank(), self.seq));
                    self.tickets.insert(shard, ticket);
                }
            }
            Op::Drop(shard) => {
                if let Some(ticket) = self.tickets.remove(&shard) {
                    self.local.abandon(shard, ticket, now);
                }
                self.model.remove(&shard);
            }
            Op::Advance(millis) => self.now += ms(millis),
            Op::Heads(ref kinds, rtt) => {
                let due = self.local.due_heads(now);
                let mut seen = std::collections::HashSet::new();
                for &((rank, _, shard), index) in &due {
                    assert!(seen.insert(index), "bucket {index} asked twice in a round");
                    assert_eq!(self.model.get(&shard), Some(&Model::Waiting));
                    // The head of its bucket: the smallest key of the model's waiting
                    // shards there.
                    let head = self
                        .model
                        .iter()
                        .filter(|(s, m)| {
                            **m == Model::Waiting && **s % self.local.max_concurrency == index
                        })
                        .map(|(s, _)| (self.keys[s], *s))
                        .min()
                        .unwrap();
                    assert_eq!(head.1, shard, "bucket {index}'s head");
                    assert_eq!(head.0.0, rank);
                }
                for (i, ((_, _, shard), index)) in due.into_iter().enumerate() {
                    let window = self.local.window();
                    if self.local.ask(index, shard, || "n".to_owned()).is_none() {
                        continue;
                    }
                    let sent = now - ms(rtt);
                    let answer = match kinds[i % kinds.len()] {
                        Kind::Grant {
                            next_wait,
                            max_concurrency,
                        } => {
                            self.next_token += 1;
                            self.tokens.insert(shard, token(self.next_token));
                            self.model.insert(
                                shard,
                                Model::Granted {
                                    fresh_until: sent + window,
                                    late: 0,
                                },
                            );
                            grant(self.next_token, max_concurrency, next_wait)
                        }
                        Kind::Wait(wait) => Answer::Wait {
                            wait,
                            max_concurrency: self.local.max_concurrency,
                        },
                        Kind::Budget(wait) => Answer::Budget {
                            wait,
                            remaining: 0,
                            max_concurrency: self.local.max_concurrency,
                        },
                        Kind::Need => Answer::NeedLimit {
                            need: NeedLimit::StateMissing,
                            lost: None,
                        },
                    };
                    // As the driver does: every answer of the round is applied.
                    self.local.answered(shard, answer, sent, window, now);
                }
                // A round refused for Discord's word resumes once the word comes: here,
                // at once.
                if self.local.need.take().is_some() {
                    self.local.synced(now);
                }
            }
            Op::Touches(kept, rtt) => {
                for (shard, token) in self.local.due_touches(now) {
                    let window = self.local.window();
                    let sent = now - ms(rtt);
                    let late = now > sent + window;
                    let Some(Model::Granted { late: before, .. }) = self.model.get(&shard).copied()
                    else {
                        panic!("touch for a request not granted: {shard}");
                    };
                    let late_count = if late { before + 1 } else { 0 };
                    self.local.touched(shard, token, kept, sent, window, now);
                    if !kept || late_count >= MAX_LATE_TOUCHES {
                        self.undelivered += 1;
                        self.model.insert(shard, Model::Waiting);
                    } else {
                        self.model.insert(
                            shard,
                            Model::Granted {
                                fresh_until: sent + window,
                                late: late_count,
                            },
                        );
                    }
                }
            }
            Op::Notice(kind, bucket, wait) => {
                let payload = match kind {
                    0 => format!("n {bucket} me {wait}"),
                    1 => format!("n {bucket} other {wait} me {}", wait + 7),
                    2 => format!("n {bucket} other {wait}"),
                    _ => "s".to_owned(),
                };
                self.local.noticed(&payload, now);
            }
            Op::Poll(shard) => {
                let ticket = self.tickets.get(&shard).copied().unwrap_or(0);
                let taken = self.local.take(shard, ticket, now);
                match self.model.get(&shard).copied() {
                    None => assert_eq!(taken, Taken::Gone),
                    Some(Model::Waiting) => assert!(matches!(taken, Taken::Pending { .. })),
                    Some(Model::Granted { fresh_until, .. }) if now <= fresh_until => {
                        assert_eq!(taken, Taken::Permit(self.tokens[&shard]));
                        self.model.remove(&shard);
                        self.tickets.remove(&shard);
                    }
                    Some(Model::Granted { .. }) => {
                        // Safety: never handed over after its window.
                        assert!(matches!(taken, Taken::Pending { .. }), "{taken:?}");
                    }
                }
            }
        }
        self.check();
    }

    /// The invariants of `local.rs`, against the model.
    fn check(&self) {
        let local = &self.local;
        let mc = local.max_concurrency;
        // Every request in one place: the model's, and its key in its bucket's queue
        // exactly when waiting.
        assert_eq!(local.len(), self.model.len());
        let mut queued = 0;
        for (&shard, model) in &self.model {
            let waiter = &local.waiters[&shard];
            let key = waiter.key(shard);
            let in_queue = local
                .buckets
                .get(&(shard % mc))
                .is_some_and(|b| b.queue.contains(&key));
            match model {
                Model::Waiting => {
                    assert!(matches!(waiter.phase, Phase::Waiting), "{shard}");
                    assert!(in_queue, "shard {shard} waiting but not queued");
                    queued += 1;
                }
                Model::Granted { fresh_until, .. } => {
                    let Phase::Granted(granted) = &waiter.phase else {
                        panic!("shard {shard} should be granted");
                    };
                    assert_eq!(granted.fresh_until, *fresh_until);
                    assert!(!in_queue);
                }
            }
        }
        let total: usize = local.buckets.values().map(|b| b.queue.len()).sum();
        assert_eq!(total, queued, "a queue holds a request that is not waiting");
        // Liveness: a bucket with waiters always has an instant to ask again, and the
        // driver runs by then (unless the budget or Discord's word holds every bucket)
        // and never later than the fallback.
        let fallback =
            self.now + local.settings.spacing + local.window() + local.settings.head_grace;
        let deadline = local.next_deadline(self.now);
        assert!(deadline <= fallback);
        for (index, bucket) in &local.buckets {
            if bucket.queue.is_empty() {
                continue;
            }
            let at = bucket
                .next_try
                .unwrap_or_else(|| panic!("bucket {index} waits on nothing"));
            if local.no_budget.is_none() && local.need.is_none() && local.outbox.is_empty() {
                assert!(
                    deadline <= at.max(self.now),
                    "bucket {index} due at {at:?} but the driver sleeps past it"
                );
            }
        }
        assert_eq!(local.stats.undelivered, self.undelivered);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(500)
    ))]

    #[test]
    fn the_process_side_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let mut world = World::new();
        for op in &ops {
            world.apply(op);
        }
    }
}
