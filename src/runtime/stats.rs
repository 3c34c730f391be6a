//! What the queue counts of its own work.

/// Counters that show how hard the queue works, for tests and monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Times an `Acquire` or `Grants` was polled while waiting.
    pub polls: u64,
    /// Waiting futures woken: one per grant to a future that had registered a waker,
    /// one per request taken over, and, if a driver's runtime goes away, one per
    /// future woken to start another.
    pub wakeups: u64,
    /// Times the driver's timer was set to a new deadline.
    pub timer_resets: u64,
    /// Times the driver ran (its timer fired, or it was woken for an earlier deadline).
    pub driver_polls: u64,
    /// Times a parked driver was woken before its timer fired (an earlier deadline, or
    /// nothing left to wait for).
    pub driver_wakeups: u64,
    /// Driver tasks started.
    pub drivers_started: u64,
}
