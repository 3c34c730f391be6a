//! The daily budget of session starts and its 24 h window.

use std::time::{Duration, Instant};

use crate::limit::SessionStartLimit;
use crate::time::Moment;

/// Length of Discord's session start window.
pub(crate) const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Session starts left, and when they come back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    total: u32,
    remaining: u32,
    window: Window,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Window {
    /// `remaining` goes back to `total` at this moment.
    ResetsAt(Moment),
    /// The budget was refilled; Discord opens the next 24 h window with the first
    /// IDENTIFY after that, so the reset instant is not known until then.
    OpensOnNextGrant,
}

impl Budget {
    /// The budget `limit` describes as of `now` (a limit that must have been validated).
    pub(crate) fn new(limit: &SessionStartLimit, now: Instant) -> Self {
        let mut budget = Self {
            total: limit.total,
            remaining: limit.remaining,
            window: Window::ResetsAt(Moment::after(now, limit.reset_after)),
        };
        budget.refresh(now);
        budget
    }

    /// Applies a reset that has come by `now`.
    pub(crate) fn refresh(&mut self, now: Instant) {
        if let Window::ResetsAt(reset) = self.window {
            if reset.has_passed(now) {
                self.remaining = self.total;
                self.window = Window::OpensOnNextGrant;
            }
        }
    }

    /// Units left, as of the last `refresh`.
    pub(crate) fn remaining(&self) -> u32 {
        self.remaining
    }

    /// The budget as it will be at `now`, without changing this one.
    pub(crate) fn as_of(mut self, now: Instant) -> Self {
        self.refresh(now);
        self
    }

    /// The total per window.
    pub(crate) fn total(&self) -> u32 {
        self.total
    }

    /// When the budget goes back to `total`: `None` while the next window waits for its
    /// first grant (a full budget, nothing to wait for).
    pub(crate) fn resets_at(&self) -> Option<Moment> {
        match self.window {
            Window::ResetsAt(reset) => Some(reset),
            Window::OpensOnNextGrant => None,
        }
    }

    /// When at least one unit is there: `None` for now, else the reset.
    pub(crate) fn unit_available_at(&self) -> Option<Moment> {
        if self.remaining > 0 {
            None
        } else {
            // Empty means a window is open (a refilled budget has `total >= 1` units).
            Some(self.resets_at().unwrap_or(Moment::Never))
        }
    }

    /// Spends one unit for a grant at `now`. The caller checked `remaining() > 0`.
    pub(crate) fn spend(&mut self, now: Instant) {
        self.remaining = self.remaining.saturating_sub(1);
        if self.window == Window::OpensOnNextGrant {
            self.window = Window::ResetsAt(Moment::after(now, DAY));
        }
    }
}
