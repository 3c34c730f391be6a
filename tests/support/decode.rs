//! Turns fuzzer bytes into a setup and operations for the harness, leaning towards the
//! values where bugs live: zero, one, the boundaries of `u32` and `Duration`, and
//! small shard numbers that share buckets.
//!
//! Shared by the fuzz targets and the replay of their findings in `tests/fuzz_replay.rs`.

use std::time::Duration;

use arbitrary::{Result, Unstructured};
use identify_queue::{Priority, SessionStartLimit};

use super::harness::{Op, Setup, Step};

/// Operations per input at most: the reference model is O(n²), keep runs quick.
pub const MAX_OPS: usize = 400;

pub fn duration(u: &mut Unstructured<'_>) -> Result<Duration> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => Duration::ZERO,
        1 => Duration::from_nanos(1),
        2 => Duration::MAX,
        3 => Duration::from_nanos(u.arbitrary()?),
        4 => Duration::new(u.arbitrary()?, u.int_in_range(0..=999_999_999)?),
        5 => Duration::from_secs(5),
        6 => Duration::from_secs(86_400),
        _ => Duration::from_nanos(u.int_in_range(1..=20_000_000)?),
    })
}

pub fn count(u: &mut Unstructured<'_>) -> Result<u32> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => 0,
        1 => 1,
        2 => u32::MAX,
        3 => u.arbitrary()?,
        _ => u.int_in_range(0..=12)?,
    })
}

pub fn limit(u: &mut Unstructured<'_>) -> Result<SessionStartLimit> {
    let total = count(u)?;
    let remaining = if u.ratio(3u8, 4)? {
        u.int_in_range(0..=total)?
    } else {
        count(u)?
    };
    Ok(SessionStartLimit {
        total,
        remaining,
        reset_after: duration(u)?,
        max_concurrency: count(u)?,
    })
}

pub fn setup(u: &mut Unstructured<'_>) -> Result<Setup> {
    Ok(Setup {
        limit: limit(u)?,
        interval: duration(u)?,
        hold_timeout: if u.arbitrary()? {
            Some(duration(u)?)
        } else {
            None
        },
        // Read last, so that older seeds keep their meaning up to here.
        grace: if u.is_empty() || u.ratio(1u8, 3)? {
            Duration::ZERO
        } else {
            duration(u)?
        },
        deferred: !u.is_empty() && u.arbitrary()?,
    })
}

pub fn shard(u: &mut Unstructured<'_>) -> Result<u32> {
    Ok(if u.ratio(7u8, 8)? {
        u.int_in_range(0..=15)?
    } else {
        u.arbitrary()?
    })
}

pub fn step(u: &mut Unstructured<'_>) -> Result<Step> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 | 1 => Step::Stay,
        2 => Step::Forward(duration(u)?),
        3 => Step::Forward(Duration::from_nanos(u.int_in_range(0..=10_000_000)?)),
        4 => Step::ToDeadline,
        5 => Step::BeforeDeadline,
        6 => Step::AfterDeadline,
        _ => Step::Back(duration(u)?),
    })
}

/// A word's age: mostly none, around a grace, or past the oldest allowed.
pub fn age(u: &mut Unstructured<'_>) -> Result<Duration> {
    Ok(match u.int_in_range(0u8..=5)? {
        0..=2 => Duration::ZERO,
        3 => Duration::from_secs(60 * 60) + Duration::from_nanos(u.int_in_range(0..=1)?),
        _ => duration(u)?,
    })
}

pub fn priority(u: &mut Unstructured<'_>) -> Result<Priority> {
    Ok(if u.ratio(1u8, 4)? {
        Priority::Reconnect
    } else {
        Priority::Start
    })
}

pub fn op(u: &mut Unstructured<'_>) -> Result<Op> {
    Ok(match u.int_in_range(0u8..=14)? {
        0..=3 => Op::Request(shard(u)?, priority(u)?, step(u)?),
        4 | 5 => Op::Poll(step(u)?),
        6 | 7 => Op::Drain(step(u)?),
        8 => Op::Cancel(shard(u)?),
        9 | 10 => Op::Release(shard(u)?, step(u)?),
        11 => Op::Update(limit(u)?, age(u)?, step(u)?),
        13 => Op::Deliver(step(u)?),
        14 => Op::Abandon(step(u)?),
        _ => Op::Occupy(
            shard(u)?,
            if u.ratio(1u8, 4)? {
                None
            } else {
                Some(duration(u)?)
            },
            step(u)?,
        ),
    })
}

/// The setup and operations `data` encodes (operations stop where the bytes do).
pub fn scenario(data: &[u8]) -> Result<(Setup, Vec<Op>)> {
    let mut u = Unstructured::new(data);
    let setup = setup(&mut u)?;
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < MAX_OPS {
        match op(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    Ok((setup, ops))
}
