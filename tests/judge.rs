//! The one judge (`support/judge.rs`) catches each bug the five judges it replaced
//! were there to catch: a bucket too soon (by a nanosecond, and beyond the jitter), two
//! processes that do not share (more than `max_concurrency` in an interval), a spent
//! budget, arrivals under a changed `max_concurrency`, and arrivals out of order.

#[path = "support/judge.rs"]
mod judge;

use std::time::{Duration, Instant};

use judge::{Event, Judge, Rules, judge, judge_arrivals};

const INTERVAL: Duration = Duration::from_secs(5);
const NANO: Duration = Duration::from_nanos(1);

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[test]
fn a_bucket_again_one_nanosecond_early_is_caught_and_at_the_interval_passes() {
    let rules = Rules::spacing(2, INTERVAL);
    assert_eq!(
        judge_arrivals(rules, [(ms(0), 0), (INTERVAL, 2)]),
        Vec::<String>::new()
    );
    let early = judge_arrivals(rules, [(ms(0), 0), (INTERVAL - NANO, 2)]);
    assert_eq!(early.len(), 1, "{early:?}");
    assert!(early[0].contains("bucket 0 of 2"), "{early:?}");
    // Other buckets are free at once; each bucket is spaced on its own.
    assert!(judge_arrivals(rules, [(ms(0), 0), (ms(0), 1)]).is_empty());
    assert_eq!(
        judge_arrivals(rules, [(ms(0), 0), (ms(0), 1), (ms(1), 3)]).len(),
        1
    );
}

#[test]
fn jitter_lets_arrivals_come_that_much_closer_and_no_more() {
    let rules = Rules {
        jitter: ms(40),
        ..Rules::spacing(1, INTERVAL)
    };
    assert!(judge_arrivals(rules, [(ms(0), 0), (INTERVAL - ms(40), 1)]).is_empty());
    assert_eq!(
        judge_arrivals(rules, [(ms(0), 0), (INTERVAL - ms(40) - NANO, 1)]).len(),
        1
    );
}

#[test]
fn processes_that_do_not_share_are_caught() {
    // Two processes, each keeping the rules alone, start the same buckets together:
    // more than max_concurrency in one interval, two of one bucket within it.
    let rules = Rules::spacing(4, INTERVAL);
    let one = (0..8).map(|shard| (INTERVAL * (shard / 4), shard));
    let other = (8..16).map(|shard| (INTERVAL * ((shard - 8) / 4) + ms(3), shard));
    assert!(judge_arrivals(rules, one.clone()).is_empty());
    assert!(judge_arrivals(rules, other.clone()).is_empty());
    assert_eq!(judge_arrivals(rules, one.chain(other)).len(), 12);
}

#[test]
fn a_spent_budget_is_caught_until_the_refill() {
    let mut judge = Judge::new(Rules {
        remaining: Some(2),
        ..Rules::spacing(16, INTERVAL)
    });
    assert!(judge.arrive(ms(0), 0));
    assert!(judge.arrive(ms(0), 1));
    assert_eq!(judge.remaining(), Some(0));
    assert!(!judge.arrive(ms(0), 2), "a third start of two");
    assert!(judge.violations()[0].contains("no session starts left"));
    judge.refill(1);
    assert!(judge.arrive(ms(1), 3));
    assert_eq!(judge.violations().len(), 1);
}

#[test]
fn a_changed_max_concurrency_rekeys_the_buckets_from_then_on() {
    let rules = Rules::spacing(2, INTERVAL);
    // Under 2, shards 0 and 2 share a bucket; under 4 they do not, but 0 and 4 do,
    // though shard 0 arrived before the change.
    let before = (ms(0), Event::Arrival(0));
    let change = (ms(10), Event::MaxConcurrency(4));
    assert!(judge(rules, [before, change, (ms(20), Event::Arrival(2))]).is_empty());
    let caught = judge(rules, [before, change, (ms(20), Event::Arrival(4))]);
    assert_eq!(caught.len(), 1, "{caught:?}");
    assert!(caught[0].contains("bucket 0 of 4"), "{caught:?}");
    // A change and an arrival at one instant: the arrival is judged under the change.
    let same = judge(
        rules,
        [
            (ms(0), Event::Arrival(0)),
            (ms(20), Event::Arrival(2)),
            (ms(20), Event::MaxConcurrency(4)),
        ],
    );
    assert!(same.is_empty(), "{same:?}");
}

#[test]
fn arrivals_judged_out_of_order_are_refused_and_sorted_when_given_at_once() {
    let start = Instant::now();
    let mut judge = Judge::new(Rules::spacing(1, INTERVAL));
    assert!(judge.arrive(start + INTERVAL, 1));
    assert!(!judge.arrive(start, 0));
    assert!(judge.violations()[0].contains("in order"));
    // Threads that each read their own clock record out of order: sorted first.
    assert!(
        judge_arrivals(
            Rules::spacing(1, INTERVAL),
            [(start + INTERVAL, 1), (start, 0)]
        )
        .is_empty()
    );
}
