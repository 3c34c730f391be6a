//! The async queue on a hand-driven runtime (`support/manual.rs`), its futures polled
//! by hand: a proptest over orders of ask, poll, park (not polling), drop, advance,
//! release and update, every step checked against the reference model of the core
//! (`support/model.rs`, which shares no code with the crate) replaying rules 5:
//!
//! - every grant happens at the model's instant, and wakes exactly its future;
//! - a future that is parked or dropped delays nobody but its own bucket (the model
//!   knows nothing of parking: only the occupation a delivery rule gives it);
//! - every poll returns what the model says (pending, a permit delivered now, or an
//!   error), and deliveries in a bucket are at least the interval apart;
//! - the driver's timer is never later than the model's next instant;
//! - at the end, polling what is woken and advancing to each deadline finishes
//!   everything that can ever be granted.

#[path = "support/manual.rs"]
mod manual;
mod support;

use std::collections::HashMap;
use std::task::Poll;
use std::time::{Duration, Instant};

use identify_queue::{AcquireError, Config, Priority, Scheduler, SessionStartLimit};
use manual::{Manual, Polled};
use proptest::prelude::*;
use support::judge::{Judge, Rules};
use support::model::{Expect, Model};

type Queue = identify_queue::runtime::Queue<Manual>;
type Acquire = identify_queue::runtime::Acquire<Manual>;
type Permit = identify_queue::runtime::Permit<Manual>;

const MS: u64 = 1_000_000;

#[derive(Clone, Copy, Debug)]
struct Setup {
    limit: SessionStartLimit,
    interval: Duration,
    hold_timeout: Option<Duration>,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// A new future for this shard, polled once (that makes the request).
    Ask(u32, Priority),
    /// Poll the n-th unfinished future.
    Poll(usize),
    /// Poll every future that was woken, as an executor does.
    PollWoken,
    /// Drop the n-th unfinished future.
    Drop(usize),
    /// Drop the n-th permit held (hold mode: release).
    DropPermit(usize),
    /// Move the clock forward, stopping at every instant the model grants at.
    Advance(Duration),
    Update(SessionStartLimit),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    /// Granted at this instant, not yet delivered.
    Granted(Instant),
}

struct Task {
    id: usize,
    shard: u32,
    future: Polled<Acquire>,
    state: State,
    /// Granted, but another shard of its bucket (re-keyed by an update) was delivered
    /// within the interval, or holds the bucket after its delivery: not deliverable,
    /// to be woken, before this instant (`Some(None)`: before a release).
    gate: Option<Option<Instant>>,
}

struct World {
    setup: Setup,
    queue: Queue,
    model: Model,
    now: Instant,
    /// The model's answer after the last drain.
    wait: Expect,
    tasks: Vec<Task>,
    next_id: usize,
    /// Delivered permits: (task, permit, the instant it was granted at).
    permits: Vec<(usize, Permit, Instant)>,
    /// A hold was released in this step: gated futures are woken to look again.
    released: bool,
    /// Hold mode: the task whose grant is each shard's latest.
    latest: HashMap<u32, usize>,
    /// Discord's rules on the deliveries, exactly (a paused clock: no jitter), under
    /// the `max_concurrency` in force; it keeps the deliveries, `(instant, shard)`.
    judge: Judge<Instant>,
    log: Vec<String>,
}

impl World {
    fn new(setup: Setup) -> Self {
        let start = Instant::now();
        manual::start(start);
        let mut config = Config::default().interval(setup.interval);
        if let Some(timeout) = setup.hold_timeout {
            config = config.hold_until_release(timeout);
        }
        let scheduler = Scheduler::with_config(setup.limit, config, start).expect("valid");
        // The queue tells its scheduler of each delivery (rules 3.11): so does the test.
        let grace = Config::default().get_grace();
        let model = Model::new(
            setup.limit,
            setup.interval,
            setup.hold_timeout,
            grace,
            true,
            start,
        )
        .unwrap();
        Self {
            setup,
            queue: Queue::new(scheduler),
            model,
            now: start,
            wait: Expect::Idle,
            tasks: Vec::new(),
            next_id: 0,
            permits: Vec::new(),
            released: false,
            latest: HashMap::new(),
            judge: Judge::new(Rules::spacing(setup.limit.max_concurrency, setup.interval)),
            log: Vec::new(),
        }
    }

    fn context(&self) -> String {
        format!("{:?}\n{}", self.setup, self.log.join("\n"))
    }

    fn apply(&mut self, op: Op) {
        self.log.push(format!("{op:?} at {:?}", self.now));
        match op {
            Op::Ask(shard, priority) => self.ask(shard, priority),
            Op::Poll(index) if !self.tasks.is_empty() => {
                let index = index % self.tasks.len();
                self.poll(index);
            }
            Op::PollWoken => self.poll_woken(),
            Op::Drop(index) if !self.tasks.is_empty() => {
                let index = index % self.tasks.len();
                self.drop_task(index);
            }
            Op::DropPermit(index) if !self.permits.is_empty() => {
                let (id, permit, _) = self.permits.remove(index % self.permits.len());
                let shard = permit.shard();
                drop(permit);
                if self.setup.hold_timeout.is_some() && self.latest.get(&shard) == Some(&id) {
                    self.latest.remove(&shard);
                    self.released |= self.model.release(shard, self.now);
                }
                self.drain();
            }
            Op::Advance(by) => self.advance(by),
            Op::Update(limit) => {
                let actual = self.queue.update(limit);
                let expected = self.model.update(limit, Duration::ZERO, self.now);
                assert_eq!(actual, expected, "{}", self.context());
                if actual.is_ok() {
                    self.judge.set_max_concurrency(limit.max_concurrency);
                }
                self.drain();
            }
            _ => {}
        }
        // The runtime gets to run the driver between any two steps: it finds nothing
        // due that the step left undone.
        manual::run_spawned();
        self.drain();
        self.check_counts();
    }

    fn ask(&mut self, shard: u32, priority: Priority) {
        let mut future = Polled::new(self.queue.acquire_with(shard, priority));
        let actual = future.poll();
        let expected = self.model.request(shard, priority, self.now);
        let id = self.next_id;
        self.next_id += 1;
        match (actual, expected) {
            (Poll::Ready(Err(error)), Err(expected)) => {
                assert_eq!(error, expected.into(), "{}", self.context());
            }
            (Poll::Ready(Ok(permit)), Ok(Expect::Grant(granted))) => {
                assert_eq!(granted, shard, "{}", self.context());
                assert!(self.model.delivered(self.now));
                self.latest.insert(shard, id);
                self.delivered(id, permit, self.now);
            }
            (Poll::Pending, Ok(Expect::Wait(_) | Expect::Idle)) => {
                self.tasks.push(Task {
                    id,
                    shard,
                    future,
                    state: State::Waiting,
                    gate: None,
                });
            }
            (actual, expected) => panic!(
                "ask {shard}: queue {:?}, model {expected:?}\n{}",
                actual.map(|result| result.map(|permit| permit.shard())),
                self.context()
            ),
        }
        self.drain();
    }

    fn delivered(&mut self, id: usize, permit: Permit, granted: Instant) {
        assert_eq!(permit.granted_at(), self.now, "{}", self.context());
        // Deliveries in one bucket (under the concurrency in force at the later one)
        // are at least the interval apart: judged from the deliveries alone.
        assert!(
            self.judge.arrive(self.now, permit.shard()),
            "{:?}\n{}",
            self.judge.violations(),
            self.context()
        );
        self.permits.push((id, permit, granted));
    }

    fn poll(&mut self, index: usize) {
        let now = self.now;
        let interval = self.setup.interval;
        let task = &mut self.tasks[index];
        let actual = task.future.poll();
        let (id, shard, state) = (task.id, task.shard, task.state);
        let gate = self.gate(shard);
        match (state, actual) {
            (State::Waiting, Poll::Pending) => return,
            (State::Granted(_), Poll::Pending) if gate.is_some() => {
                self.tasks[index].gate = gate;
                return;
            }
            (State::Granted(granted), Poll::Ready(result)) => {
                self.tasks.remove(index);
                let expired = self.setup.hold_timeout.is_some_and(|timeout| {
                    granted.checked_add(timeout).is_some_and(|end| end <= now)
                });
                match result {
                    Err(AcquireError::HoldExpired(s)) if expired && s == shard => {
                        assert!(self.model.abandoned(now));
                    }
                    Ok(permit) if !expired => {
                        assert_eq!(permit.shard(), shard);
                        assert!(self.model.delivered(now));
                        // Delivery: busy an interval from now (the cooldown covers a
                        // delivery at the grant's own instant).
                        if self.setup.hold_timeout.is_none() || now > granted {
                            self.model.occupy(shard, now.checked_add(interval), now);
                        }
                        self.delivered(id, permit, granted);
                    }
                    other => panic!(
                        "poll of {shard} granted at {granted:?}: {:?}\n{}",
                        other.map(|permit| permit.shard()),
                        self.context()
                    ),
                }
            }
            (state, actual) => panic!(
                "poll of {shard} ({state:?}): {:?}\n{}",
                actual.map(|result| result.map(|permit| permit.shard())),
                self.context()
            ),
        }
        self.drain();
    }

    /// rules 5: a permit whose bucket (under the concurrency in force) had another
    /// shard's delivery within the interval, or is held by another shard's delivered
    /// permit, is delivered once that ends (`Some(None)`: not before a release).
    fn gate(&self, shard: u32) -> Option<Option<Instant>> {
        let max_concurrency = self.judge.max_concurrency();
        let other = |s: u32| s != shard && s % max_concurrency == shard % max_concurrency;
        let (now, interval) = (self.now, self.setup.interval);
        let intervals = self
            .judge
            .arrivals()
            .iter()
            .filter(|&&(_, s)| other(s))
            .map(|&(at, _)| at.checked_add(interval))
            .filter(|end| end.is_none_or(|end| end > now));
        let holds = self
            .permits
            .iter()
            .filter(|(id, permit, _)| {
                self.setup.hold_timeout.is_some()
                    && other(permit.shard())
                    && self.latest.get(&permit.shard()) == Some(id)
            })
            .map(|&(_, _, granted)| {
                self.setup
                    .hold_timeout
                    .and_then(|timeout| granted.checked_add(timeout))
            })
            .filter(|end| end.is_none_or(|end| end > now));
        intervals
            .chain(holds)
            .max_by_key(|end| end.map_or((1, None), |end| (0, Some(end))))
    }

    fn poll_woken(&mut self) {
        let mut index = 0;
        while index < self.tasks.len() {
            let before = self.tasks.len();
            if self.tasks[index].future.is_woken() {
                self.poll(index);
            }
            if self.tasks.len() == before {
                index += 1;
            }
        }
    }

    fn drop_task(&mut self, index: usize) {
        let task = self.tasks.remove(index);
        let (shard, state, id) = (task.shard, task.state, task.id);
        drop(task);
        if let State::Granted(_) = state {
            assert!(self.model.abandoned(self.now), "{}", self.context());
        }
        match state {
            State::Waiting => assert!(self.model.cancel(shard), "{}", self.context()),
            // Undelivered: its unit stays spent, its bucket frees at the drop.
            State::Granted(_) if self.setup.hold_timeout.is_none() => {
                self.model.occupy(shard, Some(self.now), self.now);
            }
            State::Granted(_) => {
                if self.latest.get(&shard) == Some(&id) {
                    self.latest.remove(&shard);
                    self.released |= self.model.release(shard, self.now);
                }
            }
        }
        self.drain();
    }

    /// The model's grants at the clock: each must be a waiting future, now woken;
    /// no other future may have been woken.
    fn drain(&mut self) {
        let now = self.now;
        let mut granted = Vec::new();
        loop {
            match self.model.poll(now) {
                Expect::Grant(shard) => {
                    let task = self
                        .tasks
                        .iter_mut()
                        .find(|task| task.shard == shard && task.state == State::Waiting)
                        .unwrap_or_else(|| panic!("model granted {shard}, nobody waits"));
                    task.state = State::Granted(now);
                    granted.push(task.id);
                    self.latest.insert(shard, task.id);
                    if self.setup.hold_timeout.is_none() {
                        self.model.occupy(shard, None, now);
                    }
                }
                wait => {
                    self.wait = wait;
                    break;
                }
            }
        }
        let context = self.context();
        let released = std::mem::take(&mut self.released);
        for task in &mut self.tasks {
            let woken = task.future.is_woken();
            let gate_passed = match task.gate {
                Some(_) if released => true,
                Some(Some(gate)) => gate <= now,
                _ => false,
            };
            if gate_passed {
                task.gate = None;
            }
            assert_eq!(
                woken,
                granted.contains(&task.id) || gate_passed,
                "shard {} ({:?}) woken {woken} at {now:?}\n{}",
                task.shard,
                task.state,
                context
            );
        }
    }

    fn advance(&mut self, by: Duration) {
        let target = self.now.checked_add(by).unwrap_or(self.now);
        loop {
            let gates = self.tasks.iter().filter_map(|task| task.gate.flatten());
            let next = match self.wait {
                Expect::Wait(Some(at)) if at > self.now && at < target => at,
                _ => target,
            };
            let next = gates
                .filter(|&gate| gate > self.now)
                .fold(next, Instant::min);
            manual::advance_to(next);
            self.now = next;
            manual::run_spawned();
            self.drain();
            if next >= target {
                return;
            }
        }
    }

    fn check_counts(&self) {
        // Unresolved requests: queued, or granted and not taken yet.
        let unresolved = self.model.len() + self.model.undelivered() as usize;
        assert_eq!(self.queue.len(), unresolved, "{}", self.context());
        assert_eq!(
            self.queue.remaining(),
            self.model.remaining_at(self.now),
            "{}",
            self.context()
        );
        // The driver's timer is set no later than the model's next instant.
        if let Expect::Wait(Some(at)) = self.wait {
            let timer = manual::next_timer();
            assert!(
                timer.is_some_and(|timer| timer <= at),
                "timer {timer:?}, model waits for {at:?}\n{}",
                self.context()
            );
        }
    }

    /// Polls what is woken and advances to each deadline until every future resolved
    /// or the model says nothing can ever be granted.
    fn finish(&mut self) {
        while !self.permits.is_empty() {
            self.apply(Op::DropPermit(self.permits.len() - 1));
        }
        for _ in 0..1_000 {
            // An eager executor: every granted future is taken at once.
            for index in (0..self.tasks.len()).rev() {
                if matches!(self.tasks[index].state, State::Granted(_)) {
                    self.poll(index);
                }
            }
            while !self.permits.is_empty() {
                self.apply(Op::DropPermit(0));
            }
            if self.tasks.is_empty() {
                break;
            }
            let gate = self
                .tasks
                .iter()
                .filter_map(|task| task.gate.flatten())
                .min();
            match (self.wait, gate) {
                (_, Some(gate)) if gate > self.now => self.advance(gate - self.now),
                (Expect::Wait(Some(at)), _) if at > self.now => self.advance(at - self.now),
                (Expect::Wait(Some(_)), _) => {}
                _ => return,
            }
        }
        assert!(
            self.tasks.is_empty(),
            "futures left waiting\n{}",
            self.context()
        );
        // Nothing waits: the driver has ended.
        manual::run_spawned();
        assert_eq!(manual::tasks().0, 0, "the driver outlived the work");
    }
}

fn setup() -> impl Strategy<Value = Setup> {
    let hold = prop_oneof![
        3 => Just(None),
        2 => (0..20 * MS).prop_map(|n| Some(Duration::from_nanos(n))),
        1 => Just(Some(Duration::MAX)),
    ];
    (1u32..4, 1u32..12, 0u32..12, 1u64..100, 1..6 * MS, hold).prop_map(
        |(max_concurrency, total, remaining, reset_ms, interval, hold_timeout)| Setup {
            limit: SessionStartLimit {
                total,
                remaining: remaining.min(total),
                reset_after: Duration::from_millis(reset_ms),
                max_concurrency,
            },
            interval: Duration::from_nanos(interval),
            hold_timeout,
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    let priority = prop_oneof![3 => Just(Priority::Start), 1 => Just(Priority::Reconnect)];
    prop_oneof![
        5 => (0u32..8, priority).prop_map(|(shard, priority)| Op::Ask(shard, priority)),
        3 => (0usize..8).prop_map(Op::Poll),
        4 => Just(Op::PollWoken),
        1 => (0usize..8).prop_map(Op::Drop),
        2 => (0usize..8).prop_map(Op::DropPermit),
        5 => (0..8 * MS).prop_map(|n| Op::Advance(Duration::from_nanos(n))),
        1 => (1u32..4, 0u32..12).prop_map(|(max_concurrency, remaining)| Op::Update(
            SessionStartLimit {
                total: 12,
                remaining,
                reset_after: Duration::from_millis(50),
                max_concurrency,
            }
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn any_order_of_polls_parks_drops_and_time_keeps_every_grant_exact(
        setup in setup(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut world = World::new(setup);
        for op in ops {
            world.apply(op);
        }
        world.finish();
    }
}

/// The driver is what wakes a grant: a future parked (not polled) while its grant
/// comes is woken, and nobody else is.
#[test]
fn a_parked_future_is_woken_by_the_driver_and_delays_no_other_bucket() {
    let setup = Setup {
        limit: SessionStartLimit {
            total: 100,
            remaining: 100,
            reset_after: Duration::from_secs(3600),
            max_concurrency: 2,
        },
        interval: Duration::from_millis(5),
        hold_timeout: None,
    };
    let mut world = World::new(setup);
    for shard in 0..6 {
        world.apply(Op::Ask(shard, Priority::Start));
    }
    // 0 and 1 granted at once; 2..6 wait. Nobody is polled from here on but shard 3.
    world.apply(Op::Advance(Duration::from_millis(5)));
    assert_eq!(manual::tasks(), (1, 1), "one driver, parked");
    let three = world.tasks.iter().position(|task| task.shard == 3).unwrap();
    world.apply(Op::Poll(three));
    // Shard 2 was granted at 5 ms and parked: bucket 0 waits; bucket 1 goes on.
    world.apply(Op::Advance(Duration::from_millis(5)));
    assert!(
        world
            .tasks
            .iter()
            .any(|task| task.shard == 5 && task.state != State::Waiting)
    );
    assert!(
        world
            .tasks
            .iter()
            .any(|task| task.shard == 4 && task.state == State::Waiting)
    );
    world.finish();
}

/// A driver dropped with its runtime: waiters are woken and the next poll starts
/// another.
#[test]
fn a_driver_dropped_with_its_runtime_is_started_again_by_the_next_poll() {
    let start = Instant::now();
    manual::start(start);
    let limit = SessionStartLimit {
        total: 100,
        remaining: 100,
        reset_after: Duration::from_secs(3600),
        max_concurrency: 1,
    };
    let config = Config::default().interval(Duration::from_millis(5));
    let queue = Queue::with_limit(limit, config).unwrap();
    let mut zero = Polled::new(queue.acquire(0));
    assert!(matches!(zero.poll(), Poll::Ready(Ok(_))));
    let mut one = Polled::new(queue.acquire(1));
    assert!(one.poll().is_pending());
    manual::run_spawned();
    assert_eq!(manual::tasks(), (1, 1));
    manual::shut_down();
    assert!(one.is_woken(), "woken to start a driver elsewhere");
    assert!(one.poll().is_pending());
    assert_eq!(manual::tasks(), (1, 2), "a second driver");
    manual::advance_to(start + Duration::from_millis(5));
    manual::run_spawned();
    assert!(one.is_woken());
    let Poll::Ready(Ok(permit)) = one.poll() else {
        panic!("granted at 5 ms");
    };
    assert_eq!(permit.granted_at(), start + Duration::from_millis(5));
}
