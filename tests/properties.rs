//! Property tests: random call sequences, every answer checked against the reference
//! model and the invariants of rules 3 (see `support/harness.rs`).

mod support;

use std::time::{Duration, Instant};

use identify_queue::{Priority, SessionStartLimit};
use proptest::prelude::*;
use support::harness::{Harness, Op, Setup, Step};

const MS: u64 = 1_000_000;

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        8 => (1..20 * MS).prop_map(Duration::from_nanos),
        1 => Just(Duration::from_nanos(1)),
        1 => Just(Duration::MAX),
        1 => (0..u64::MAX).prop_map(Duration::from_nanos),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Stay),
        3 => (0..12 * MS).prop_map(|n| Step::Forward(Duration::from_nanos(n))),
        3 => Just(Step::ToDeadline),
        2 => Just(Step::BeforeDeadline),
        2 => Just(Step::AfterDeadline),
        1 => (0..8 * MS).prop_map(|n| Step::Back(Duration::from_nanos(n))),
        1 => duration().prop_map(Step::Forward),
        // About a day: the reset of a window a delivery opened (rules 3.11).
        1 => (0..60 * MS).prop_map(|n| Step::Forward(DAY - Duration::from_millis(30) + Duration::from_nanos(n))),
    ]
}

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// A word's age: mostly none, sometimes about a grace, rarely past the oldest allowed.
fn age() -> impl Strategy<Value = Duration> {
    prop_oneof![
        3 => Just(Duration::ZERO),
        2 => (0..30 * MS).prop_map(Duration::from_nanos),
        1 => Just(Duration::from_secs(3600) + Duration::from_nanos(1)),
    ]
}

fn limit() -> impl Strategy<Value = SessionStartLimit> {
    (0u32..6, 0u32..8, 0u32..8, duration()).prop_map(
        |(max_concurrency, total, remaining, reset_after)| SessionStartLimit {
            total,
            remaining,
            reset_after,
            max_concurrency,
        },
    )
}

fn valid_limit() -> impl Strategy<Value = SessionStartLimit> {
    (1u32..6, 1u32..12, 0u32..12, duration(), 0u32..4).prop_map(
        |(max_concurrency, total, remaining, reset_after, short_reset)| SessionStartLimit {
            total,
            remaining: remaining.min(total),
            // Mostly resets within the run, so refills are exercised.
            reset_after: if short_reset == 0 {
                reset_after
            } else {
                Duration::from_millis(u64::from(short_reset) * 15)
            },
            max_concurrency,
        },
    )
}

fn priority() -> impl Strategy<Value = Priority> {
    prop_oneof![3 => Just(Priority::Start), 1 => Just(Priority::Reconnect)]
}

fn occupation() -> impl Strategy<Value = Option<Duration>> {
    prop_oneof![
        1 => Just(None),
        3 => (0..20 * MS).prop_map(|n| Some(Duration::from_nanos(n))),
        1 => duration().prop_map(Some),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let shard = 0u32..12;
    prop_oneof![
        6 => (shard.clone(), priority(), step()).prop_map(|(s, p, t)| Op::Request(s, p, t)),
        4 => step().prop_map(Op::Poll),
        3 => step().prop_map(Op::Drain),
        2 => shard.clone().prop_map(Op::Cancel),
        2 => (shard.clone(), step()).prop_map(|(s, t)| Op::Release(s, t)),
        2 => (limit(), age(), step()).prop_map(|(l, a, t)| Op::Update(l, a, t)),
        2 => step().prop_map(Op::Deliver),
        1 => step().prop_map(Op::Abandon),
        1 => (shard.clone(), occupation(), step()).prop_map(|(s, o, t)| Op::Occupy(s, o, t)),
    ]
}

fn setup() -> impl Strategy<Value = Setup> {
    let hold = prop_oneof![
        2 => Just(None),
        2 => (0..30 * MS).prop_map(|n| Some(Duration::from_nanos(n))),
        1 => Just(Some(Duration::MAX)),
    ];
    let interval = prop_oneof![
        8 => (1..10 * MS).prop_map(Duration::from_nanos),
        1 => Just(Duration::MAX),
    ];
    let grace = prop_oneof![
        1 => Just(Duration::ZERO),
        3 => (1..20 * MS).prop_map(Duration::from_nanos),
    ];
    (valid_limit(), interval, hold, grace, any::<bool>()).prop_map(
        |(limit, interval, hold_timeout, grace, deferred)| Setup {
            limit,
            interval,
            hold_timeout,
            grace,
            deferred,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Every answer matches the model and the invariants, and the same calls give the
    /// same answers twice.
    #[test]
    fn random_calls_keep_every_rule(setup in setup(), ops in prop::collection::vec(op(), 1..80)) {
        let start = Instant::now();
        let mut first = Harness::new(setup, start).expect("valid setup");
        first.run(&ops);
        let mut second = Harness::new(setup, start).expect("valid setup");
        second.run(&ops);
        prop_assert_eq!(&first.trace, &second.trace);
    }

    /// Invalid limits and configs are refused alike by `with_config` and `update`,
    /// with a message naming the field.
    #[test]
    fn limits_are_validated(limit in limit(), interval in 0u64..3) {
        let start = Instant::now();
        let setup = Setup::plain(limit, Duration::from_nanos(interval), None);
        match Harness::new(setup, start) {
            Ok(_) => prop_assert!(interval > 0 && limit.max_concurrency > 0 && limit.total > 0 && limit.remaining <= limit.total),
            Err(error) => prop_assert!(error.to_string().contains('`'), "{}", error),
        }
    }

    /// Many shards in few buckets: long queues, cancels in the middle, re-keying.
    #[test]
    fn crowded_queues(
        setup in setup(),
        shards in prop::collection::vec((0u32..200, priority()), 1..120),
        tail in prop::collection::vec(op(), 0..60),
        cancels in prop::collection::vec(0u32..200, 0..40),
    ) {
        let start = Instant::now();
        let mut harness = Harness::new(setup, start).expect("valid setup");
        for &(shard, priority) in &shards {
            harness.apply(Op::Request(shard, priority, Step::Stay));
        }
        for &shard in &cancels {
            harness.apply(Op::Cancel(shard));
        }
        harness.run(&tail);
        harness.apply(Op::Drain(Step::ToDeadline));
    }
}
