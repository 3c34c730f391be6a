//! The one Discord word of the tests and the benches: `limit(max_concurrency,
//! remaining)`, a window of 1,000 session starts resetting in an hour. Vary the rest
//! with struct update syntax: `SessionStartLimit { reset_after: DAY, ..limit(16, 1000) }`.

use std::time::Duration;

use identify_queue::SessionStartLimit;

pub const fn limit(max_concurrency: u32, remaining: u32) -> SessionStartLimit {
    SessionStartLimit {
        total: 1000,
        remaining,
        reset_after: Duration::from_secs(3600),
        max_concurrency,
    }
}
