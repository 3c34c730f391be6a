//! rules 3.11, the budget's uncertainty, in one process: each way the budget could be
//! overspent around Discord's word and its resets, with exact instants, and a property
//! test that judges random traces (words of random ages, late deliveries, resets) by
//! an independent model of Discord's counter, which counts arrivals.

mod support;

use std::time::{Duration, Instant};

use identify_queue::{Config, Decision, Error, Scheduler, SessionStartLimit};
use proptest::prelude::*;
use support::discord_budget::{DAY, DiscordBudget, Window};
use support::limit::limit;

const SECOND: Duration = Duration::from_secs(1);
const GRACE: Duration = Duration::from_secs(30);
/// Fresh words of bots with 10 and 3 session starts a day, none spent yet.
const TEN: SessionStartLimit = SessionStartLimit {
    total: 10,
    reset_after: DAY,
    ..limit(16, 10)
};
const THREE: SessionStartLimit = SessionStartLimit {
    total: 3,
    reset_after: DAY,
    ..limit(16, 3)
};

fn scheduler(limit: SessionStartLimit, grace: Duration, start: Instant) -> Scheduler {
    let config = Config::default().interval(SECOND).grace(grace);
    Scheduler::with_config(limit, config, start).unwrap()
}

/// Requests shards `shards` at `now`, expecting each granted at once.
fn grant_all(scheduler: &mut Scheduler, shards: std::ops::Range<u32>, now: Instant) {
    for shard in shards {
        assert_eq!(scheduler.request(shard, now), Ok(Decision::Grant(shard)));
    }
}

/// F2's mirror in one process: Discord's word was read before the grants of the last
/// seconds arrived, so it does not count them yet; they are subtracted.
#[test]
fn a_word_subtracts_the_grants_it_may_not_count_yet() {
    let start = Instant::now();
    let mut scheduler = scheduler(TEN, GRACE, start);
    grant_all(&mut scheduler, 0..4, start);
    // Read at 10 s, not yet counting the four: Discord's remaining is 10.
    let now = start + 10 * SECOND;
    scheduler.update(TEN, now).unwrap();
    assert_eq!(scheduler.remaining(now), 6);
    // The same word with no grace trusts it: the four would be spent twice.
    let mut trusting = self::scheduler(TEN, Duration::ZERO, start);
    grant_all(&mut trusting, 0..4, start);
    trusting.update(TEN, now).unwrap();
    assert_eq!(trusting.remaining(now), 10);
    // Grants older than the grace before the read are Discord's: not subtracted again.
    let later = start + GRACE + 2 * SECOND;
    scheduler
        .update(
            SessionStartLimit {
                remaining: 6,
                ..TEN
            },
            later,
        )
        .unwrap();
    assert_eq!(scheduler.remaining(later), 6);
}

/// Found by the property below (shrunk): a delivery made exactly a grace before our
/// reset may arrive exactly at Discord's reset, which counts it in the new window. A
/// word read at `T - 40 s` resets at `T` (Discord's reset); two grants go at `T`. A
/// second word, read 38 s before it is applied (at `T + 1 ms`, its age untold), still
/// sees the old window and places our reset at `T + 38 s`: the refill there must
/// subtract the deliveries at `T`, the earliest instant of its span included. Before the
/// fix it refilled to all 3, and Discord's window opened at `T` counted 5.
#[test]
fn a_delivery_at_the_earliest_reset_counts_in_the_new_window() {
    let grace = Duration::from_secs(38);
    let start = Instant::now();
    let mut scheduler = scheduler(THREE, grace, start);
    grant_all(&mut scheduler, 0..3, start);
    let reset = start + DAY;
    scheduler
        .update(
            SessionStartLimit {
                remaining: 0,
                reset_after: 40 * SECOND,
                ..THREE
            },
            reset - 40 * SECOND,
        )
        .unwrap();
    for shard in 3..5 {
        let _ = scheduler.request(shard, reset - 40 * SECOND).unwrap();
    }
    assert_eq!(scheduler.poll(reset), Decision::Grant(3));
    assert_eq!(scheduler.poll(reset), Decision::Grant(4));
    let applied = reset + Duration::from_millis(1);
    scheduler
        .update(
            SessionStartLimit {
                remaining: 0,
                reset_after: 38 * SECOND - Duration::from_millis(1),
                ..THREE
            },
            applied,
        )
        .unwrap();
    let ours = reset + grace;
    assert_eq!(scheduler.remaining(ours - Duration::from_nanos(1)), 0);
    assert_eq!(
        scheduler.remaining(ours),
        1,
        "the two delivered at Discord's reset count in its new window"
    );
}

/// A word's age: the grace reaches back from the read, and its `reset_after` counts
/// from its application (Discord may have computed it as late as that: a reset placed
/// from the read may come before Discord's).
#[test]
fn a_word_with_an_age_counts_from_its_read_and_resets_from_its_application() {
    let start = Instant::now();
    let mut scheduler = scheduler(TEN, GRACE, start);
    grant_all(&mut scheduler, 0..2, start);
    // Read at 20 s (after the two were counted: remaining 8, reset in 100 s), applied
    // at 60 s, after a retry loop.
    let now = start + 60 * SECOND;
    let word = SessionStartLimit {
        remaining: 8,
        reset_after: 100 * SECOND,
        ..TEN
    };
    scheduler.update_with_age(word, 40 * SECOND, now).unwrap();
    // The two were within a grace before the read: Discord may not count them yet.
    assert_eq!(scheduler.remaining(now), 6);
    assert_eq!(scheduler.resets_at(), Some(start + 160 * SECOND));
    // Applied as fresh, the grants of the 40 s before would be missed; an hour is the
    // oldest word taken.
    assert_eq!(
        scheduler.update_with_age(word, Duration::from_secs(3601), now),
        Err(Error::WordTooOld(Duration::from_secs(3601)))
    );
    assert_eq!(
        scheduler.remaining(now),
        6,
        "a refused word changes nothing"
    );
}

/// F1's mirror: Discord's reset may come up to a grace before ours (the word was
/// read that much before it was applied); the grants between count in Discord's new
/// window, and the refill holds them back.
#[test]
fn a_reset_refills_less_the_grants_near_it() {
    let start = Instant::now();
    let mut scheduler = scheduler(THREE, GRACE, start);
    scheduler
        .update(
            SessionStartLimit {
                remaining: 2,
                reset_after: 100 * SECOND,
                ..THREE
            },
            start,
        )
        .unwrap();
    // Two grants 10 s before the reset we know.
    let near = start + 90 * SECOND;
    grant_all(&mut scheduler, 0..2, near);
    assert_eq!(scheduler.remaining(near), 0);
    let reset = start + 100 * SECOND;
    assert_eq!(scheduler.resets_at(), Some(reset));
    assert_eq!(
        scheduler.remaining(reset),
        1,
        "3 less the two near the reset"
    );
    // One of the two may have opened Discord's new window, or our next grant will:
    // the next reset waits for the later of the two.
    assert_eq!(scheduler.request(2, reset), Ok(Decision::Grant(2)));
    assert_eq!(scheduler.resets_at(), Some(reset + DAY + GRACE));
    assert_eq!(
        scheduler.request(3, reset),
        Ok(Decision::Wait(reset + DAY + GRACE))
    );
}

/// The case rules 3.11 reads beyond its first text, on the safe side: a refill that held
/// back a grant made near Discord's reset cannot tell whether that grant opened
/// Discord's next window. If it did, Discord resets a day after it; if not, a day
/// after our next grant. Our next refill waits for the later and holds back every
/// grant made after the earlier less a grace.
#[test]
fn a_window_that_may_have_opened_early_counts_from_its_earliest_opening() {
    let start = Instant::now();
    let mut scheduler = scheduler(TEN, GRACE, start);
    scheduler
        .update(
            SessionStartLimit {
                remaining: 9,
                reset_after: 100 * SECOND,
                ..TEN
            },
            start,
        )
        .unwrap();
    grant_all(&mut scheduler, 0..1, start + 95 * SECOND);
    let reset = start + 100 * SECOND;
    assert_eq!(scheduler.remaining(reset), 9);
    // Twelve hours later, our next grant.
    let noon = reset + 12 * 3600 * SECOND;
    grant_all(&mut scheduler, 1..2, noon);
    // Had shard 0 opened Discord's window (at 95 s), Discord resets at 95 s + a day:
    // eight grants after that come out of our old budget but count in its new one.
    let early = start + 95 * SECOND + DAY;
    for (shard, offset) in (2..10).zip(1u32..) {
        assert_eq!(
            scheduler.request(shard, early + offset * SECOND),
            Ok(Decision::Grant(shard))
        );
    }
    // Our refill comes at the later opening (noon's grant) plus a day and a grace,
    // and does not forget those eight.
    let ours = noon + DAY + GRACE;
    assert_eq!(scheduler.resets_at(), Some(ours));
    assert_eq!(scheduler.remaining(ours), 2);
}

/// Of several grants held back at a refill, the *first* may have opened Discord's
/// window: the next refill counts from a day after it (less a grace), not from the
/// last.
#[test]
fn the_earliest_grant_held_back_bounds_the_next_window() {
    let start = Instant::now();
    let mut scheduler = scheduler(TEN, GRACE, start);
    scheduler
        .update(
            SessionStartLimit {
                remaining: 8,
                reset_after: 100 * SECOND,
                ..TEN
            },
            start,
        )
        .unwrap();
    grant_all(&mut scheduler, 0..1, start + 71 * SECOND);
    grant_all(&mut scheduler, 1..2, start + 99 * SECOND);
    let reset = start + 100 * SECOND;
    assert_eq!(scheduler.remaining(reset), 8);
    let noon = reset + 12 * 3600 * SECOND;
    grant_all(&mut scheduler, 2..3, noon);
    // Shard 0 may have arrived after Discord's reset (read up to a grace before 100 s)
    // and opened its window: Discord resets at 71 s + a day at the earliest, and what
    // is sent from a grace before then may count after it.
    let early = start + 60 * SECOND + DAY;
    grant_all(&mut scheduler, 3..8, early);
    let ours = noon + DAY + GRACE;
    assert_eq!(scheduler.resets_at(), Some(ours));
    assert_eq!(scheduler.remaining(ours), 5);
}

/// Grants not delivered yet (an adapter hands them over later) count in every word
/// and refill; one delivered across a reset may open Discord's window; one abandoned
/// while the window is surely closed gives back the unit held for it.
#[test]
fn undelivered_grants_count_until_they_are_delivered_or_abandoned() {
    let start = Instant::now();
    let mut scheduler = scheduler(THREE, GRACE, start);
    scheduler.defer_deliveries();
    grant_all(&mut scheduler, 0..2, start);
    assert_eq!(scheduler.undelivered(), 2);
    // An hour later, a word that counts neither: both may still arrive.
    let hour = start + 3600 * SECOND;
    scheduler.update(THREE, hour).unwrap();
    assert_eq!(scheduler.remaining(hour), 1);
    // Discord's window is not open, nothing was delivered: no reset to wait for.
    assert_eq!(scheduler.resets_at(), None);
    // One is dropped: it will never arrive, and its unit is free again.
    assert!(scheduler.abandoned(hour));
    assert_eq!(scheduler.remaining(hour), 2);
    // The other is delivered: it opens Discord's window, which resets a day (and a
    // grace) after it.
    let late = hour + 10 * SECOND;
    assert!(scheduler.delivered(late));
    assert_eq!(scheduler.resets_at(), Some(late + DAY + GRACE));
    assert_eq!(scheduler.remaining(late), 2);
    assert!(!scheduler.delivered(late), "nothing left undelivered");
}

/// Discord's word with its count full says its window is not open: the next IDENTIFY
/// opens it, whatever `reset_after` says, so the reset is a day after our next grant.
#[test]
fn a_full_word_waits_for_the_window_our_next_grant_opens() {
    let start = Instant::now();
    let mut scheduler = scheduler(
        SessionStartLimit {
            total: 2,
            reset_after: 10 * SECOND,
            ..limit(16, 2)
        },
        GRACE,
        start,
    );
    grant_all(&mut scheduler, 0..2, start + 5 * SECOND);
    // Taking `reset_after` as Discord's reset would refill at 10 s, while Discord's
    // window opened at 5 s holds both grants for a day.
    assert_eq!(scheduler.remaining(start + 11 * SECOND), 0);
    let reset = start + 5 * SECOND + DAY + GRACE;
    assert_eq!(scheduler.resets_at(), Some(reset));
    assert_eq!(
        scheduler.request(2, start + 11 * SECOND),
        Ok(Decision::Wait(reset))
    );
}

#[test]
fn the_grace_is_bounded() {
    let start = Instant::now();
    let config = Config::default().grace(Duration::from_secs(3601));
    let error = Scheduler::with_config(
        SessionStartLimit {
            total: 1,
            reset_after: DAY,
            ..limit(16, 1)
        },
        config,
        start,
    )
    .unwrap_err();
    assert_eq!(error, Error::GraceTooLong(Duration::from_secs(3601)));
    assert!(error.to_string().contains("`grace`"), "{error}");
    assert_eq!(Config::default().get_grace(), GRACE);
}

// The property: random traces judged by Discord's counter.

/// What happens to a grant: delivered (after this lateness; its IDENTIFY arrives this
/// long after the delivery) or abandoned (after this long).
#[derive(Clone, Copy, Debug)]
enum Fate {
    Delivered { late: Duration, travel: Duration },
    Abandoned { after: Duration },
}

#[derive(Clone, Copy, Debug)]
enum Action {
    /// Ask for this many new shards.
    Request(u32),
    /// Ask for Discord's word `age` ago and apply it now, telling the age (`told`) or
    /// not (then the grace covers it). Discord computes it at some instant between the
    /// ask and now: `computed` percent of the way. `closed_reset`: what Discord says
    /// while no window is open.
    Word {
        age: Duration,
        told: bool,
        computed: u32,
        closed_reset: Duration,
    },
    /// Let time pass.
    Wait,
}

#[derive(Clone, Debug)]
struct Trace {
    total: u32,
    /// Discord's window at the start: opened this long before, with this count.
    open: Option<(Duration, u32)>,
    grace: Duration,
    /// How long an IDENTIFY may travel; an untold word's age is at most the rest of the
    /// grace.
    travel: Duration,
    steps: Vec<(Duration, Action)>,
    fates: Vec<Fate>,
}

fn span(most: Duration) -> impl Strategy<Value = Duration> {
    (0..=most.as_millis() as u64).prop_map(Duration::from_millis)
}

fn step() -> impl Strategy<Value = Duration> {
    prop_oneof![
        3 => span(5 * SECOND),
        3 => span(2 * GRACE),
        2 => span(Duration::from_secs(12 * 3600)),
        // About a day: the resets of windows our grants opened.
        2 => span(4 * GRACE).prop_map(|d| DAY - 2 * GRACE + d),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (1u32..4).prop_map(Action::Request),
        2 => (
            span(Duration::from_secs(2 * 3600)),
            any::<bool>(),
            prop_oneof![Just(0u32), Just(100), 0u32..=100],
            prop_oneof![Just(Duration::ZERO), Just(DAY), span(DAY)],
        )
            .prop_map(|(age, told, computed, closed_reset)| Action::Word {
                age,
                told,
                computed,
                closed_reset,
            }),
        2 => Just(Action::Wait),
    ]
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        6 => (Just(Duration::ZERO), span(GRACE)),
        2 => (span(2 * GRACE), span(GRACE)),
        1 => (span(2 * DAY), span(GRACE)),
    ]
    .prop_map(|(late, travel)| Fate::Delivered { late, travel })
    .boxed()
    .prop_union(
        span(DAY)
            .prop_map(|after| Fate::Abandoned { after })
            .boxed(),
    )
    .or(Just(Fate::Delivered {
        late: Duration::ZERO,
        travel: Duration::ZERO,
    })
    .boxed())
}

fn trace() -> impl Strategy<Value = Trace> {
    (
        1u32..8,
        prop_oneof![
            1 => Just(None),
            1 => (span(DAY - SECOND), 1u32..8).prop_map(Some),
            // Discord's window resets within a few graces: grants near the reset.
            2 => (span(3 * GRACE), 1u32..8).prop_map(|(d, count)| Some((DAY - d, count))),
        ],
        1u64..=60,
        0u64..=100,
        prop::collection::vec((step(), action()), 1..40),
        prop::collection::vec(fate(), 64),
    )
        .prop_map(|(total, open, grace_s, travel_pct, steps, fates)| {
            let grace = Duration::from_secs(grace_s);
            Trace {
                total,
                open: open.map(|(ago, count)| (ago, count.min(total))),
                grace,
                travel: grace * travel_pct as u32 / 100,
                steps,
                fates,
            }
        })
}

/// Runs `trace` against a scheduler with `grace`, and returns Discord's judge and the
/// number of grants.
fn run(trace: &Trace, grace: Duration) -> (DiscordBudget, usize) {
    let start = Instant::now() + 2 * DAY;
    let max_concurrency = 64;
    let open = trace.open.map(|(ago, count)| Window {
        opened: start - ago,
        count,
    });
    let mut discord = DiscordBudget::new(trace.total, open);
    let config = Config::default().interval(SECOND).grace(grace);
    let first_word = discord.word(start, max_concurrency, DAY);
    let mut scheduler = Scheduler::with_config(first_word, config, start).unwrap();
    scheduler.defer_deliveries();
    // Fates due: (instant, delivered?, travel).
    let mut due: Vec<(Instant, bool, Duration)> = Vec::new();
    let mut fates = trace.fates.iter().cycle();
    let mut next_shard = 0;
    let mut grants = 0;
    // A grant at `now` meets its fate.
    let mut granted = |due: &mut Vec<(Instant, bool, Duration)>, now: Instant| {
        grants += 1;
        let (at, delivered, travel) = match *fates.next().unwrap() {
            Fate::Delivered { late, travel } => (now + late, true, travel.min(trace.travel)),
            Fate::Abandoned { after } => (now + after, false, Duration::ZERO),
        };
        due.push((at, delivered, travel));
    };
    let mut now = start;
    let mut wait: Option<Instant> = None;
    let mut steps = trace.steps.iter();
    let end_of_steps = start + trace.steps.iter().map(|&(d, _)| d).sum::<Duration>();
    let end = end_of_steps + 3 * DAY;
    let mut next_step = steps.next();
    let mut step_at = start + next_step.map_or(Duration::ZERO, |&(d, _)| d);
    loop {
        // The next thing to happen: a fate, the scheduler's wait, or the next step.
        let fate_at = due.iter().map(|&(at, ..)| at).min();
        let step = next_step.map(|_| step_at);
        let Some(at) = [fate_at, wait, step].into_iter().flatten().min() else {
            break;
        };
        if at > end {
            break;
        }
        now = now.max(at);
        // Fates at `now`, in order.
        due.sort_by_key(|&(at, ..)| at);
        while due.first().is_some_and(|&(at, ..)| at <= now) {
            let (_, delivered, travel) = due.remove(0);
            if delivered {
                assert!(scheduler.delivered(now));
                discord.arrive(now + travel);
            } else {
                assert!(scheduler.abandoned(now));
            }
        }
        if next_step.is_some() && step_at <= now {
            let &(_, action) = next_step.unwrap();
            match action {
                Action::Request(count) => {
                    for _ in 0..count {
                        let shard = next_shard;
                        next_shard += 1;
                        if let Decision::Grant(_) = scheduler.request(shard, now).unwrap() {
                            granted(&mut due, now);
                        }
                    }
                }
                Action::Word {
                    age,
                    told,
                    computed,
                    closed_reset,
                } => {
                    // An untold age is within what the grace leaves after the travel.
                    let untold_most = trace.grace - trace.travel;
                    let age = if told { age } else { age.min(untold_most) };
                    // Discord computes its word at an instant within the age.
                    let at = now - age + age * computed / 100;
                    let word = discord.word(at, max_concurrency, closed_reset);
                    let applied = if told {
                        scheduler.update_with_age(word, age, now)
                    } else {
                        scheduler.update(word, now)
                    };
                    assert!(applied.is_ok() || age > Duration::from_secs(3600));
                }
                Action::Wait => {}
            }
            next_step = steps.next();
            step_at += next_step.map_or(Duration::ZERO, |&(d, _)| d);
        }
        wait = None;
        loop {
            match scheduler.poll(now) {
                Decision::Grant(_) => granted(&mut due, now),
                Decision::Wait(until) => {
                    wait = Some(until);
                    break;
                }
                Decision::Idle => break,
            }
        }
    }
    // What is still on its way arrives; nothing more is granted.
    for (at, delivered, travel) in due {
        if delivered {
            discord.arrive(at + travel);
        }
    }
    (discord, grants)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// With a grace that covers the word's unknown age and the IDENTIFY's travel, no
    /// window of Discord's ever counts more than `total`, whatever the ages, the late
    /// deliveries, the abandoned grants and the resets.
    #[test]
    fn discord_never_counts_more_than_total(trace in trace()) {
        let (discord, grants) = run(&trace, trace.grace);
        let judged = discord.never_overspent();
        prop_assert!(judged.is_ok(), "overspent: {:?}", judged);
        prop_assert!(grants >= discord.arrivals());
    }
}

/// The judge can fail: with no grace, the same kind of trace overspends (a word read
/// before the IDENTIFYs of the half second before it arrived).
#[test]
fn without_a_grace_the_judge_sees_an_overspend() {
    let half = Duration::from_millis(500);
    let travel = Duration::from_millis(400);
    // Four grants at 0 arrive at 400 ms; Discord's word, read at 300 ms, does not
    // count them, and is applied at 500 ms as fresh (its 200 ms age untold).
    let trace = Trace {
        total: 4,
        open: None,
        grace: Duration::from_millis(600),
        travel,
        steps: vec![
            (Duration::ZERO, Action::Request(4)),
            (
                half,
                Action::Word {
                    age: Duration::from_millis(200),
                    told: false,
                    computed: 0,
                    closed_reset: DAY,
                },
            ),
            (Duration::ZERO, Action::Request(4)),
        ],
        fates: vec![Fate::Delivered {
            late: Duration::ZERO,
            travel,
        }],
    };
    let (discord, grants) = run(&trace, Duration::ZERO);
    assert_eq!(grants, 8);
    assert_eq!(discord.most_in_a_window(), 8, "{:?}", discord.windows(None));
    // With a grace that covers the age and the travel, the word holds them back: the
    // second four go a day later, in Discord's next window.
    let (discord, grants) = run(&trace, trace.grace);
    assert_eq!(grants, 8);
    let windows = discord.windows(None);
    assert_eq!(windows.len(), 2, "{windows:?}");
    assert!(
        windows.iter().all(|window| window.count == 4),
        "{windows:?}"
    );
}
