//! Instants that may be "never", and arithmetic on them that cannot overflow.

use std::time::{Duration, Instant};

/// An instant, or never: when a hold ends ([`HoldEnd`](crate::HoldEnd)), and what
/// `Instant + Duration` is inside the crate when the sum does not fit
/// (`Duration::MAX` in a timeout or `reset_after` means "never"). Ordered with every
/// instant before `Never`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Moment {
    /// At this instant.
    At(Instant),
    /// Never by itself (a hold without a timeout: only a release ends it).
    // Declared last so that the derived order puts it after every instant.
    Never,
}

impl Moment {
    /// `start + delay`, or `Never` where the sum is not representable.
    pub(crate) fn after(start: Instant, delay: Duration) -> Self {
        start.checked_add(delay).map_or(Self::Never, Self::At)
    }

    /// Whether this moment has come at `now`.
    pub fn has_passed(self, now: Instant) -> bool {
        match self {
            Self::At(at) => at <= now,
            Self::Never => false,
        }
    }
}

/// How far ahead "never" is when it has to be an instant ([rules 3.4](crate::rules): at
/// least a year).
pub(crate) const FAR_AHEAD: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// The instant a driver is told to wait for when nothing can become eligible.
///
/// A year and a day after `now`; where that does not fit in an `Instant`, the furthest
/// instant that does (found by halving, so it cannot loop for long).
pub(crate) fn far_future(now: Instant) -> Instant {
    if let Some(at) = now.checked_add(FAR_AHEAD) {
        return at;
    }
    let mut furthest = now;
    let mut step = FAR_AHEAD;
    while !step.is_zero() {
        if let Some(at) = furthest.checked_add(step) {
            furthest = at;
        }
        step /= 2;
    }
    furthest
}

/// The instant at which something at `moment` should be looked at again.
pub(crate) fn wake_at(moment: Moment, now: Instant) -> Instant {
    match moment {
        Moment::At(at) => at,
        Moment::Never => far_future(now),
    }
}
