//! Each queue's schedule judged by the one judge the tests use
//! (`tests/support/judge.rs`), exactly: the instants are the grants themselves.

use std::time::Duration;

#[path = "../../tests/support/judge.rs"]
mod judge;

/// How many rules `grants` ((offset, shard), any order) break: two grants of one bucket
/// closer than `interval`.
pub fn violations(grants: &[(Duration, u32)], max_concurrency: u32, interval: Duration) -> usize {
    judge::judge_arrivals(
        judge::Rules::spacing(max_concurrency, interval),
        grants.iter().copied(),
    )
    .len()
}
