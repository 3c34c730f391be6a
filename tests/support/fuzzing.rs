//! The bodies of the fuzz targets, here so that the stable test suite replays the
//! fuzzer's findings and seeds through exactly the same code.

use std::time::Instant;

use arbitrary::Unstructured;
use identify_queue::{Error, MAX_GRACE, MAX_WORD_AGE, Scheduler};

use super::decode;
use super::harness::Harness;
use super::model::check_limit;

/// Target `ops`: a setup and a sequence of calls, every answer checked.
pub fn ops(data: &[u8]) {
    let Ok((setup, ops)) = decode::scenario(data) else {
        return;
    };
    // Invalid setups are checked too (both must refuse them alike), then end here.
    let Ok(mut harness) = Harness::new(setup, Instant::now()) else {
        return;
    };
    harness.run(&ops);
}

/// Target `limits`: arbitrary limits and configs through `new`, `with_config` and
/// `update`; valid ones accepted, invalid ones refused with the field named, and an
/// `update` that is refused changes nothing.
pub fn limits(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = decode::setup(&mut u) else {
        return;
    };
    let start = Instant::now();
    let expected = check_limit(&setup.limit).and_then(|()| {
        if setup.interval.is_zero() {
            Err(Error::ZeroInterval)
        } else if setup.grace > MAX_GRACE {
            Err(Error::GraceTooLong(setup.grace))
        } else {
            Ok(())
        }
    });
    let built = Scheduler::with_config(setup.limit, setup.config(), start);
    check_refusal(built.as_ref().err(), expected.as_ref().err());
    let plain = Scheduler::new(setup.limit, start);
    check_refusal(
        plain.as_ref().err(),
        check_limit(&setup.limit).as_ref().err(),
    );

    let Ok(mut scheduler) = built else {
        return;
    };
    let mut shard = 0;
    // An empty `Unstructured` still yields values (zeros): stop when the bytes do.
    while !u.is_empty() && shard < 64 {
        let Ok(limit) = decode::limit(&mut u) else {
            break;
        };
        let Ok(at) = decode::duration(&mut u) else {
            break;
        };
        let now = start.checked_add(at).unwrap_or(start);
        let _ = scheduler.request(shard, now);
        shard += 1;
        let Ok(age) = decode::age(&mut u) else {
            break;
        };
        let before = format!("{scheduler:?}");
        let result = scheduler.update_with_age(limit, age, now);
        let expected = check_limit(&limit).and_then(|()| {
            if age > MAX_WORD_AGE {
                Err(Error::WordTooOld(age))
            } else {
                Ok(())
            }
        });
        check_refusal(result.as_ref().err(), expected.as_ref().err());
        if result.is_err() {
            assert_eq!(
                before,
                format!("{scheduler:?}"),
                "a refused update changed state"
            );
        } else {
            assert_eq!(scheduler.max_concurrency(), limit.max_concurrency);
            assert_eq!(scheduler.total(), limit.total);
            assert!(scheduler.remaining(now) <= limit.total);
        }
        let _ = scheduler.poll(now);
    }
}

fn check_refusal(actual: Option<&Error>, expected: Option<&Error>) {
    assert_eq!(actual, expected);
    if let Some(error) = actual {
        let message = error.to_string();
        let field = [
            "`max_concurrency`",
            "`total`",
            "`remaining`",
            "`interval`",
            "`grace`",
            "`age`",
        ];
        assert!(field.iter().any(|f| message.contains(f)), "{message}");
    }
}
