//! An independent check of a schedule against Discord's rules, applied to both queues.

use std::collections::HashMap;
use std::time::Duration;

/// Violations in `grants` ((offset, shard), any order): two grants of one bucket
/// closer than `interval`, or more than `max_concurrency` grants in any window of one
/// interval.
pub fn violations(grants: &[(Duration, u32)], max_concurrency: u32, interval: Duration) -> usize {
    let mut sorted = grants.to_vec();
    sorted.sort();
    let mut violations = 0;
    let mut last: HashMap<u32, Duration> = HashMap::new();
    for &(at, shard) in &sorted {
        if let Some(previous) = last.insert(shard % max_concurrency, at) {
            if at - previous < interval {
                violations += 1;
            }
        }
    }
    let mut window_start = 0;
    for end in 0..sorted.len() {
        while sorted[end].0 - sorted[window_start].0 >= interval {
            window_start += 1;
        }
        if end - window_start + 1 > max_concurrency as usize {
            violations += 1;
        }
    }
    violations
}
