//! One scenario per rule of the core's semantics (rules 3, `src/rules.rs`), with exact
//! instants.

#[path = "support/limit.rs"]
mod limit;

use std::time::{Duration, Instant};

use identify_queue::{
    Config, Decision, Error, HoldEnd, Priority, Scheduler, SessionStartLimit, ShardId,
};
use limit::limit;

const SECOND: Duration = Duration::from_secs(1);
const FIVE: Duration = Duration::from_secs(5);
const NS: Duration = Duration::from_nanos(1);
const DAY: Duration = Duration::from_secs(86_400);
/// `Config::grace` by default (rules 3.11).
const GRACE: Duration = Duration::from_secs(30);

/// Polls until `Idle`, jumping the clock to each `Wait`; returns (offset, shard) per
/// grant. Bounded, so a scheduler that never finishes fails instead of hanging.
fn drive(scheduler: &mut Scheduler, start: Instant, from: Instant) -> Vec<(Duration, ShardId)> {
    let mut now = from;
    let mut grants = Vec::new();
    for _ in 0..1_000_000 {
        match scheduler.poll(now) {
            Decision::Grant(shard) => grants.push((now - start, shard)),
            Decision::Wait(until) => {
                assert!(
                    until > now,
                    "Wait({until:?}) at {now:?} with nothing granted"
                );
                now = until;
            }
            Decision::Idle => return grants,
        }
    }
    panic!("the scheduler never went idle");
}

#[test]
fn a_bucket_is_refused_one_nanosecond_before_its_interval_and_granted_at_it() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(limit(1, 1000), start).unwrap();
    assert_eq!(scheduler.request(0, start), Ok(Decision::Grant(0)));
    assert_eq!(
        scheduler.request(1, start),
        Ok(Decision::Wait(start + FIVE))
    );
    assert_eq!(
        scheduler.poll(start + FIVE - NS),
        Decision::Wait(start + FIVE)
    );
    assert_eq!(scheduler.poll(start + FIVE), Decision::Grant(1));
    assert_eq!(scheduler.poll(start + FIVE), Decision::Idle);
}

#[test]
fn buckets_are_independent_and_keyed_by_shard_modulo_concurrency() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(limit(4, 1000), start).unwrap();
    for shard in 0..4 {
        assert_eq!(scheduler.request(shard, start), Ok(Decision::Grant(shard)));
    }
    // Shard 6 is bucket 2, busy until 5 s; shard 3's bucket too. A second later bucket
    // 2's neighbour is still busy: nothing jumps ahead.
    assert_eq!(
        scheduler.request(6, start + SECOND),
        Ok(Decision::Wait(start + FIVE))
    );
    assert_eq!(scheduler.bucket_of(6), 2);
    let grants = drive(&mut scheduler, start, start + SECOND);
    assert_eq!(grants, vec![(FIVE, 6)]);
}

#[test]
fn a_late_request_to_an_idle_bucket_is_granted_at_once() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(limit(16, 1000), start).unwrap();
    assert_eq!(scheduler.request(0, start), Ok(Decision::Grant(0)));
    // No shared tick: bucket 1 has never been used, so 1.234 s in, shard 1 goes now.
    let late = start + Duration::from_millis(1234);
    assert_eq!(scheduler.request(1, late), Ok(Decision::Grant(1)));
}

#[test]
fn shards_of_a_bucket_go_in_request_order() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(limit(2, 1000), start).unwrap();
    assert_eq!(scheduler.request(8, start), Ok(Decision::Grant(8)));
    for shard in [2, 6, 4, 0] {
        assert_eq!(
            scheduler.request(shard, start),
            Ok(Decision::Wait(start + FIVE))
        );
    }
    let grants = drive(&mut scheduler, start, start);
    assert_eq!(
        grants,
        vec![(FIVE, 2), (2 * FIVE, 6), (3 * FIVE, 4), (4 * FIVE, 0)]
    );
}

#[test]
fn eligible_shards_come_out_oldest_first() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(limit(3, 1000), start).unwrap();
    for shard in 0..3 {
        assert_eq!(scheduler.request(shard, start), Ok(Decision::Grant(shard)));
    }
    for shard in [5, 3, 4] {
        assert_eq!(
            scheduler.request(shard, start),
            Ok(Decision::Wait(start + FIVE))
        );
    }
    let grants = drive(&mut scheduler, start, start);
    assert_eq!(grants, vec![(FIVE, 5), (FIVE, 3), (FIVE, 4)]);
}

#[test]
fn the_budget_is_never_exceeded_and_waits_for_the_reset() {
    let start = Instant::now();
    let limit = SessionStartLimit {
        total: 3,
        remaining: 2,
        reset_after: Duration::from_secs(60),
        max_concurrency: 16,
    };
    let mut scheduler = Scheduler::new(limit, start).unwrap();
    assert_eq!(scheduler.request(0, start), Ok(Decision::Grant(0)));
    assert_eq!(scheduler.request(1, start), Ok(Decision::Grant(1)));
    // Bucket 2 is free, the budget is not: wait for the reset, exactly.
    let reset = start + Duration::from_secs(60);
    assert_eq!(scheduler.request(2, start), Ok(Decision::Wait(reset)));
    assert_eq!(scheduler.remaining(start), 0);
    assert_eq!(scheduler.poll(reset - NS), Decision::Wait(reset));
    assert_eq!(scheduler.poll(reset), Decision::Grant(2));
    assert_eq!(scheduler.remaining(reset), 2);
}

#[test]
fn the_next_window_opens_with_the_first_grant_after_a_reset() {
    let start = Instant::now();
    let limit = SessionStartLimit {
        total: 1,
        remaining: 0,
        reset_after: Duration::from_secs(10),
        max_concurrency: 1,
    };
    let mut scheduler = Scheduler::new(limit, start).unwrap();
    assert_eq!(scheduler.resets_at(), Some(start + 10 * SECOND));
    // Refilled at 10 s, but nobody asks until 100 s: Discord's window starts then.
    let first = start + 100 * SECOND;
    assert_eq!(scheduler.remaining(first), 1);
    assert_eq!(scheduler.request(7, first), Ok(Decision::Grant(7)));
    // Discord resets a day after shard 7's IDENTIFY arrives: within a grace of its grant.
    let reset = first + DAY + GRACE;
    assert_eq!(scheduler.resets_at(), Some(reset));
    assert_eq!(
        scheduler.request(8, first + 10 * SECOND),
        Ok(Decision::Wait(reset))
    );
    assert_eq!(scheduler.poll(reset - NS), Decision::Wait(reset));
    assert_eq!(scheduler.poll(reset), Decision::Grant(8));
}

#[test]
fn the_last_unit_goes_to_the_oldest_eligible_shard() {
    let start = Instant::now();
    let limit = SessionStartLimit {
        total: 10,
        remaining: 3,
        reset_after: Duration::from_secs(3600),
        max_concurrency: 4,
    };
    let mut scheduler = Scheduler::new(limit, start).unwrap();
    assert_eq!(scheduler.request(0, start), Ok(Decision::Grant(0)));
    assert_eq!(scheduler.request(1, start), Ok(Decision::Grant(1)));
    assert_eq!(
        scheduler.request(4, start),
        Ok(Decision::Wait(start + FIVE))
    );
    assert_eq!(
        scheduler.request(5, start),
        Ok(Decision::Wait(start + FIVE))
    );
    // At 5 s shards 4 and 5 are eligible and one unit is left. Shard 2's bucket is
    // free, but the unit belongs to shard 4, the oldest.
    let at = start + FIVE;
    assert_eq!(scheduler.request(2, at), Ok(Decision::Wait(at)));
    assert_eq!(scheduler.poll(at), Decision::Grant(4));
    assert_eq!(
        scheduler.poll(at),
        Decision::Wait(start + Duration::from_secs(3600))
    );
}

#[test]
fn a_cancelled_shard_spends_nothing_and_delays_nobody() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(limit(1, 1000), start).unwrap();
    assert_eq!(scheduler.request(0, start), Ok(Decision::Grant(0)));
    let _ = scheduler.request(1, start).unwrap();
    let _ = scheduler.request(2, start).unwrap();
    assert!(scheduler.cancel(1));
    assert!(!scheduler.cancel(1));
    assert_eq!(scheduler.len(), 1);
    assert_eq!(scheduler.poll(start + FIVE), Decision::Grant(2));
    assert_eq!(scheduler.remaining(start + FIVE), 998);
    // Cancelling the last one leaves nothing to wait for.
    let _ = scheduler.request(3, start + FIVE).unwrap();
    assert!(scheduler.cancel(3));
    assert_eq!(scheduler.poll(start + FIVE), Decision::Idle);
}

#[test]
fn a_big_bot_starts_in_the_minimum_time() {
    // 4,096 shards requested at once, 16 buckets: 256 rounds, the last at 255 × 5 s.
    let start = Instant::now();
    let limit = SessionStartLimit {
        total: 5000,
        remaining: 5000,
        reset_after: DAY,
        max_concurrency: 16,
    };
    let mut scheduler = Scheduler::new(limit, start).unwrap();
    let mut grants = Vec::new();
    for shard in 0..4096 {
        if let Decision::Grant(shard) = scheduler.request(shard, start).unwrap() {
            grants.push((Duration::ZERO, shard));
        }
    }
    assert_eq!(grants.len(), 16);
    grants.extend(drive(&mut scheduler, start, start));
    assert_eq!(grants.len(), 4096);
    assert_eq!(grants.last(), Some(&(255 * FIVE, 4095)));
    for (index, &(at, shard)) in grants.iter().enumerate() {
        assert_eq!(shard, index as u32, "request order is grant order");
        assert_eq!(at, (index as u32 / 16) * FIVE);
    }
    assert_eq!(scheduler.remaining(start + 255 * FIVE), 5000 - 4096);
}

#[test]
fn hold_mode_frees_a_bucket_on_release_but_never_before_the_interval() {
    let start = Instant::now();
    let config = Config::default().hold_until_release(Duration::from_secs(30));
    let mut scheduler = Scheduler::with_config(limit(1, 1000), config, start).unwrap();
    assert_eq!(scheduler.request(0, start), Ok(Decision::Grant(0)));
    assert_eq!(
        scheduler.request(1, start),
        Ok(Decision::Wait(start + 30 * SECOND))
    );
    // READY after 2 s: the interval still applies.
    assert!(scheduler.release(0, start + 2 * SECOND));
    assert!(!scheduler.release(0, start + 2 * SECOND), "released twice");
    assert_eq!(
        scheduler.poll(start + 2 * SECOND),
        Decision::Wait(start + FIVE)
    );
    assert_eq!(scheduler.poll(start + FIVE), Decision::Grant(1));
    // READY after 8 s: the bucket frees then.
    let _ = scheduler.request(2, start + FIVE).unwrap();
    assert_eq!(
        scheduler.poll(start + 8 * SECOND),
        Decision::Wait(start + 35 * SECOND)
    );
    assert!(scheduler.release(1, start + 13 * SECOND));
    assert_eq!(scheduler.poll(start + 13 * SECOND), Decision::Grant(2));
    // READY never comes: the hold times out 30 s after the grant.
    let _ = scheduler.request(3, start + 13 * SECOND).unwrap();
    let timeout = start + 43 * SECOND;
    assert_eq!(scheduler.poll(timeout - NS), Decision::Wait(timeout));
    assert_eq!(scheduler.poll(timeout), Decision::Grant(3));
    assert!(
        !scheduler.release(2, timeout),
        "a timed-out hold is not held"
    );
}

#[test]
fn timer_mode_ignores_release() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(limit(1, 1000), start).unwrap();
    assert_eq!(scheduler.request(0, start), Ok(Decision::Grant(0)));
    assert!(!scheduler.release(0, start));
    assert_eq!(
        scheduler.request(1, start),
        Ok(Decision::Wait(start + FIVE))
    );
}

#[test]
fn a_hold_without_timeout_stalls_its_bucket_a_year_ahead_until_released() {
    let start = Instant::now();
    let config = Config::default().hold_until_release(Duration::MAX);
    let mut scheduler = Scheduler::with_config(limit(1, 1000), config, start).unwrap();
    assert_eq!(scheduler.request(0, start), Ok(Decision::Grant(0)));
    let Ok(Decision::Wait(until)) = scheduler.request(1, start) else {
        panic!("shard 1 must wait");
    };
    assert!(until >= start + 365 * DAY);
    assert!(scheduler.release(0, start + 7 * SECOND));
    assert_eq!(scheduler.poll(start + 7 * SECOND), Decision::Grant(1));
}

#[test]
fn an_update_rekeys_queued_shards_and_carries_cooldowns() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(limit(4, 1000), start).unwrap();
    for shard in 0..4 {
        assert_eq!(scheduler.request(shard, start), Ok(Decision::Grant(shard)));
    }
    for shard in [7, 5, 6, 4] {
        let _ = scheduler.request(shard, start + SECOND).unwrap();
    }
    // max_concurrency 4 -> 2 at 2 s: shards 0..3 granted at 0 s now share two buckets,
    // both busy until 5 s. Queued: bucket 1 = [7, 5], bucket 0 = [6, 4].
    scheduler.update(limit(2, 996), start + 2 * SECOND).unwrap();
    assert_eq!(scheduler.max_concurrency(), 2);
    assert_eq!(
        scheduler.poll(start + 2 * SECOND),
        Decision::Wait(start + FIVE)
    );
    let grants = drive(&mut scheduler, start, start + 2 * SECOND);
    assert_eq!(
        grants,
        vec![(FIVE, 7), (FIVE, 6), (2 * FIVE, 5), (2 * FIVE, 4)]
    );
}

#[test]
fn an_update_refills_an_exhausted_budget() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(limit(4, 1), start).unwrap();
    assert_eq!(scheduler.request(0, start), Ok(Decision::Grant(0)));
    assert_eq!(
        scheduler.request(1, start),
        Ok(Decision::Wait(start + Duration::from_secs(3600)))
    );
    // Fresh /gateway/bot says the window has reset: reset_after 0 refills to total.
    let fresh = SessionStartLimit {
        reset_after: Duration::ZERO,
        ..limit(4, 0)
    };
    scheduler.update(fresh, start + SECOND).unwrap();
    // Shard 0's IDENTIFY, a second before the word, may count in Discord's new window
    // (rules 3.11): it is held back.
    assert_eq!(scheduler.remaining(start + SECOND), 999);
    assert_eq!(scheduler.poll(start + SECOND), Decision::Grant(1));
    // Shard 0 may have opened the window, or shard 1 does: a day after the later, and
    // a grace for its way to Discord.
    assert_eq!(scheduler.resets_at(), Some(start + SECOND + DAY + GRACE));
}

#[test]
fn time_going_backwards_is_read_as_the_latest_instant() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(limit(1, 1000), start + 10 * SECOND).unwrap();
    assert_eq!(scheduler.request(0, start), Ok(Decision::Grant(0)));
    assert_eq!(scheduler.now(), start + 10 * SECOND);
    assert_eq!(
        scheduler.request(1, start),
        Ok(Decision::Wait(start + 15 * SECOND))
    );
    assert_eq!(scheduler.poll(start + 15 * SECOND), Decision::Grant(1));
    let _ = scheduler.request(2, start).unwrap();
    assert_eq!(scheduler.poll(start), Decision::Wait(start + 20 * SECOND));
}

#[test]
fn never_is_a_value_not_an_overflow() {
    let start = Instant::now();
    let limit = SessionStartLimit {
        total: 1,
        remaining: 1,
        reset_after: Duration::MAX,
        max_concurrency: u32::MAX,
    };
    let config = Config::default().interval(Duration::MAX);
    let mut scheduler = Scheduler::with_config(limit, config, start).unwrap();
    assert_eq!(
        scheduler.request(u32::MAX, start),
        Ok(Decision::Grant(u32::MAX))
    );
    assert_eq!(scheduler.resets_at(), None, "reset_after MAX never resets");
    let Ok(Decision::Wait(until)) = scheduler.request(0, start) else {
        panic!("no budget left, ever");
    };
    assert!(until >= start + 365 * DAY);
    assert!(
        scheduler
            .eta(0, start)
            .is_some_and(|eta| eta >= start + 365 * DAY)
    );
}

#[test]
fn bad_input_is_refused_with_the_field_named_and_changes_nothing() {
    let start = Instant::now();
    let cases = [
        (
            SessionStartLimit {
                max_concurrency: 0,
                ..limit(1, 1)
            },
            "`max_concurrency` is 0",
        ),
        (
            SessionStartLimit {
                total: 0,
                remaining: 0,
                ..limit(1, 1)
            },
            "`total` is 0",
        ),
        (
            SessionStartLimit {
                remaining: 1001,
                ..limit(1, 1)
            },
            "`remaining` (1001) is larger than `total` (1000)",
        ),
    ];
    let mut scheduler = Scheduler::new(limit(2, 1000), start).unwrap();
    assert_eq!(scheduler.request(0, start), Ok(Decision::Grant(0)));
    let _ = scheduler.request(2, start).unwrap();
    for (bad, message) in cases {
        let error = Scheduler::new(bad, start).unwrap_err();
        assert!(error.to_string().contains(message), "{error}");
        let before = format!("{scheduler:?}");
        assert_eq!(scheduler.update(bad, start + 9 * SECOND), Err(error));
        assert_eq!(before, format!("{scheduler:?}"));
    }
    let zero = Config::default().interval(Duration::ZERO);
    let error = Scheduler::with_config(limit(1, 1), zero, start).unwrap_err();
    assert_eq!(error, Error::ZeroInterval);
    assert!(error.to_string().contains("`interval` is zero"));
    // A shard asked for twice: refused, and the clock did not move to 9 s.
    assert_eq!(
        scheduler.request(2, start + 9 * SECOND),
        Err(Error::AlreadyQueued(2))
    );
    assert!(
        Error::AlreadyQueued(2)
            .to_string()
            .contains("shard 2 is already queued")
    );
    assert_eq!(scheduler.now(), start);
    assert_eq!(scheduler.poll(start), Decision::Wait(start + FIVE));
    assert_eq!(scheduler.len(), 1);
}

#[test]
fn eta_counts_the_shards_ahead_in_the_bucket() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(limit(2, 1000), start).unwrap();
    for shard in 0..8 {
        let _ = scheduler.request(shard, start).unwrap();
    }
    // Bucket 0 holds 2, 4, 6 behind shard 0's grant at 0 s.
    assert_eq!(scheduler.eta(0, start), None, "granted, not queued");
    assert_eq!(scheduler.eta(2, start), Some(start + FIVE));
    assert_eq!(scheduler.eta(6, start), Some(start + 3 * FIVE));
    assert!(scheduler.cancel(4));
    assert_eq!(scheduler.eta(6, start), Some(start + 2 * FIVE));
    let grants = drive(&mut scheduler, start, start);
    assert_eq!(
        grants.iter().find(|&&(_, shard)| shard == 6),
        Some(&(2 * FIVE, 6))
    );
}

#[test]
fn a_buckets_next_free_instant_counts_its_cooldown_and_holds() {
    let start = Instant::now();
    let config = Config::default().hold_until_release(Duration::from_secs(30));
    let mut scheduler = Scheduler::with_config(limit(2, 1000), config, start).unwrap();
    assert_eq!(
        scheduler.bucket_free_at(0, start),
        Some(start),
        "never used"
    );
    assert_eq!(scheduler.bucket_free_at(2, start), None, "no bucket 2");
    assert_eq!(scheduler.request(0, start), Ok(Decision::Grant(0)));
    // Held: free at the hold's timeout, whatever the interval.
    assert_eq!(
        scheduler.bucket_free_at(0, start + SECOND),
        Some(start + 30 * SECOND)
    );
    assert_eq!(
        scheduler.bucket_free_at(1, start + SECOND),
        Some(start + SECOND)
    );
    // Released after 2 s: the interval still runs; then free from then on.
    assert!(scheduler.release(0, start + 2 * SECOND));
    assert_eq!(
        scheduler.bucket_free_at(0, start + 2 * SECOND),
        Some(start + FIVE)
    );
    assert_eq!(
        scheduler.bucket_free_at(0, start + 9 * SECOND),
        Some(start + 9 * SECOND)
    );
    // A hold without an end: only its release frees the bucket.
    let config = Config::default().hold_until_release(Duration::MAX);
    let mut scheduler = Scheduler::with_config(limit(1, 1000), config, start).unwrap();
    assert_eq!(scheduler.request(0, start), Ok(Decision::Grant(0)));
    assert_eq!(scheduler.bucket_free_at(0, start + DAY), None);
    assert!(scheduler.release(0, start + DAY));
    assert_eq!(scheduler.bucket_free_at(0, start + DAY), Some(start + DAY));
}

#[test]
fn the_limit_in_force_reads_like_discords() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(limit(16, 10), start).unwrap();
    assert_eq!(scheduler.limit(start), limit(16, 10));
    assert_eq!(scheduler.request(3, start), Ok(Decision::Grant(3)));
    let later = start + Duration::from_secs(600);
    assert_eq!(
        scheduler.limit(later),
        SessionStartLimit {
            remaining: 9,
            reset_after: Duration::from_secs(3000),
            ..limit(16, 10)
        }
    );
    // Past the reset: full again, and the next window is a day from the next grant.
    let after_reset = start + Duration::from_secs(3600);
    let full = scheduler.limit(after_reset);
    assert_eq!((full.remaining, full.reset_after), (1000, DAY));
}

#[test]
fn a_reconnecting_shard_goes_before_the_start_up_of_its_bucket() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(limit(2, 1000), start).unwrap();
    // A start-up: bucket 0 holds 0 (granted), 2, 4, 6; bucket 1 holds 1 (granted), 3.
    for shard in [0, 1, 2, 3, 4, 6] {
        let _ = scheduler.request(shard, start).unwrap();
    }
    // Shard 10 (bucket 0) was serving and lost its session at 1 s.
    let at = start + SECOND;
    assert_eq!(
        scheduler.request_with(10, Priority::Reconnect, at),
        Ok(Decision::Wait(start + FIVE))
    );
    assert_eq!(scheduler.eta(10, at), Some(start + FIVE));
    assert_eq!(scheduler.eta(2, at), Some(start + 2 * FIVE));
    // Then 12, also reconnecting: behind 10, still ahead of every start.
    assert!(matches!(
        scheduler.request_with(12, Priority::Reconnect, at),
        Ok(Decision::Wait(_))
    ));
    let grants = drive(&mut scheduler, start, at);
    assert_eq!(
        grants,
        [
            (FIVE, 10),
            (FIVE, 3),
            (2 * FIVE, 12),
            (3 * FIVE, 2),
            (4 * FIVE, 4),
            (5 * FIVE, 6),
        ]
    );
}

#[test]
fn a_reconnect_to_a_free_bucket_is_granted_at_once_past_waiting_starts() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(limit(1, 1000), start).unwrap();
    assert_eq!(scheduler.request(0, start), Ok(Decision::Grant(0)));
    let _ = scheduler.request(1, start).unwrap();
    // At 5 s shard 1 is eligible but not yet polled; a reconnect asks first.
    let at = start + FIVE;
    assert_eq!(
        scheduler.request_with(7, Priority::Reconnect, at),
        Ok(Decision::Grant(7))
    );
    assert_eq!(scheduler.poll(at), Decision::Wait(at + FIVE));
    assert_eq!(scheduler.poll(at + FIVE), Decision::Grant(1));
}

#[test]
fn the_last_unit_goes_to_a_reconnect_before_older_starts() {
    let start = Instant::now();
    let limit = SessionStartLimit {
        total: 10,
        remaining: 3,
        reset_after: Duration::from_secs(3600),
        max_concurrency: 4,
    };
    let mut scheduler = Scheduler::new(limit, start).unwrap();
    assert_eq!(scheduler.request(0, start), Ok(Decision::Grant(0)));
    assert_eq!(scheduler.request(1, start), Ok(Decision::Grant(1)));
    let _ = scheduler.request(4, start).unwrap();
    let _ = scheduler
        .request_with(5, Priority::Reconnect, start)
        .unwrap();
    // At 5 s, 4 (start, older) and 5 (reconnect) are eligible; one unit is left.
    let at = start + FIVE;
    // A new start in an idle bucket may not take it, and neither may shard 4.
    assert_eq!(scheduler.request(2, at), Ok(Decision::Wait(at)));
    assert_eq!(scheduler.poll(at), Decision::Grant(5));
    assert_eq!(
        scheduler.poll(at),
        Decision::Wait(start + Duration::from_secs(3600))
    );
}

#[test]
fn an_occupied_bucket_waits_for_the_occupation_to_end() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(limit(2, 1000), start).unwrap();
    // Another process identified shard 2 (bucket 0) just now: busy until 5 s.
    scheduler.occupy(2, Some(start + FIVE), start);
    assert_eq!(
        scheduler.request(0, start),
        Ok(Decision::Wait(start + FIVE))
    );
    assert_eq!(scheduler.request(1, start), Ok(Decision::Grant(1)));
    assert_eq!(
        scheduler.poll(start + FIVE - NS),
        Decision::Wait(start + FIVE)
    );
    assert_eq!(scheduler.poll(start + FIVE), Decision::Grant(0));
    // An undelivered grant: busy until told; a stall waits a year ahead.
    let at = start + 2 * FIVE;
    scheduler.occupy(0, None, at);
    assert_eq!(
        scheduler.request(4, at),
        Ok(Decision::Wait(at + Duration::from_secs(366 * 86_400)))
    );
    // Delivered at 12 s: busy for an interval from then, never less.
    let delivered = start + Duration::from_secs(12);
    scheduler.occupy(0, Some(delivered + FIVE), delivered);
    assert_eq!(scheduler.poll(delivered), Decision::Wait(delivered + FIVE));
    assert_eq!(scheduler.poll(delivered + FIVE), Decision::Grant(4));
    // Ending an occupation frees at once, but never before the cooldown.
    scheduler.occupy(6, None, delivered + FIVE);
    let _ = scheduler.request(8, delivered + FIVE).unwrap();
    scheduler.occupy(6, Some(delivered), delivered + FIVE + SECOND);
    assert_eq!(
        scheduler.poll(delivered + FIVE + SECOND),
        Decision::Wait(delivered + 2 * FIVE)
    );
}

#[test]
fn an_occupation_follows_its_shard_to_its_new_bucket() {
    let start = Instant::now();
    let mut scheduler = Scheduler::new(limit(2, 1000), start).unwrap();
    scheduler.occupy(3, Some(start + FIVE), start);
    // Shard 9 shares bucket 1 with shard 3: it waits for the occupation.
    assert_eq!(
        scheduler.request(9, start),
        Ok(Decision::Wait(start + FIVE))
    );
    assert_eq!(scheduler.request(0, start), Ok(Decision::Grant(0)));
    // max_concurrency 3: shards 3 and 9 are in bucket 0 now, and so is shard 0.
    scheduler.update(limit(3, 1000), start).unwrap();
    assert_eq!(scheduler.poll(start), Decision::Wait(start + FIVE));
    assert_eq!(scheduler.request(1, start), Ok(Decision::Grant(1)));
    assert_eq!(scheduler.poll(start + FIVE), Decision::Grant(9));
    assert_eq!(scheduler.poll(start + FIVE), Decision::Idle);
}

#[test]
fn the_core_types_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Priority>();
    shareable::<Scheduler>();
    shareable::<Config>();
    shareable::<Error>();
    shareable::<Decision>();
    shareable::<SessionStartLimit>();
}

#[test]
fn hold_end_says_until_when_a_shard_holds_its_bucket() {
    let start = Instant::now();
    let config = Config::default().hold_until_release(Duration::from_secs(30));
    let mut scheduler = Scheduler::with_config(limit(2, 1000), config, start).unwrap();
    assert_eq!(scheduler.hold_end(0, start), None, "nothing granted yet");
    assert_eq!(scheduler.request(0, start), Ok(Decision::Grant(0)));
    let end = start + Duration::from_secs(30);
    assert_eq!(scheduler.hold_end(0, start + FIVE), Some(HoldEnd::At(end)));
    assert_eq!(
        scheduler.hold_end(2, start),
        None,
        "shard 2 shares the bucket, holds nothing"
    );
    assert_eq!(scheduler.hold_end(0, end), None, "timed out");
    assert!(scheduler.release(0, start + SECOND));
    assert_eq!(scheduler.hold_end(0, start + SECOND), None, "released");
    let forever = Config::default().hold_until_release(Duration::MAX);
    let mut scheduler = Scheduler::with_config(limit(2, 1000), forever, start).unwrap();
    assert_eq!(scheduler.request(1, start), Ok(Decision::Grant(1)));
    assert_eq!(scheduler.hold_end(1, start + DAY), Some(HoldEnd::Never));
}
