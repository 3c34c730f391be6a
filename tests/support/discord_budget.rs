//! Discord's daily budget as Discord keeps it, for judging a scheduler's grants by
//! their *arrivals*: an IDENTIFY counts when it arrives, the 24 h window opens with the
//! first arrival after a reset, and a word (`session_start_limit`) reports the count
//! at the instant it is read. Shares nothing with the crate.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use identify_queue::SessionStartLimit;

pub const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// One 24 h window: when it opened and the IDENTIFYs counted in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub opened: Instant,
    pub count: u32,
}

#[derive(Clone, Debug)]
pub struct DiscordBudget {
    pub total: u32,
    /// The window's length: a day, or a scaled day for tests that run in real time.
    day: Duration,
    /// A window open before the first arrival, with its count (`None`: not open).
    first: Option<Window>,
    arrivals: Vec<Instant>,
}

impl DiscordBudget {
    pub fn new(total: u32, open: Option<Window>) -> Self {
        Self::scaled(total, open, DAY)
    }

    /// A budget whose windows last `day`.
    pub fn scaled(total: u32, open: Option<Window>, day: Duration) -> Self {
        Self {
            total,
            day,
            first: open,
            arrivals: Vec::new(),
        }
    }

    /// An IDENTIFY arrives at `at`.
    pub fn arrive(&mut self, at: Instant) {
        self.arrivals.push(at);
    }

    pub fn arrivals(&self) -> usize {
        self.arrivals.len()
    }

    /// The windows of the arrivals up to `until` (all of them with `None`), in order.
    pub fn windows(&self, until: Option<Instant>) -> Vec<Window> {
        let mut arrivals: Vec<Instant> = self
            .arrivals
            .iter()
            .copied()
            .filter(|&at| until.is_none_or(|until| at <= until))
            .collect();
        arrivals.sort();
        let mut windows: Vec<Window> = self.first.into_iter().collect();
        for at in arrivals {
            match windows.last_mut() {
                Some(window) if at < window.opened + self.day => window.count += 1,
                _ => windows.push(Window {
                    opened: at,
                    count: 1,
                }),
            }
        }
        windows
    }

    /// The most IDENTIFYs any window counted.
    pub fn most_in_a_window(&self) -> u32 {
        self.windows(None)
            .iter()
            .map(|window| window.count)
            .max()
            .unwrap_or(0)
    }

    /// The property every budget is judged by, the scheduler's and the cluster's
    /// alike: no window of Discord's counts more than `total`.
    pub fn never_overspent(&self) -> Result<(), String> {
        let most = self.most_in_a_window();
        if most > self.total {
            return Err(format!(
                "Discord counted {most} of {} in a window: {:?}",
                self.total,
                self.windows(None)
            ));
        }
        Ok(())
    }

    /// What `GET /gateway/bot` answers at `read`: the count of the window open then.
    /// While none is open, `remaining` is `total` and `reset_after` is `closed_reset`
    /// (Discord's value then says nothing; callers try several).
    pub fn word(
        &self,
        read: Instant,
        max_concurrency: u32,
        closed_reset: Duration,
    ) -> SessionStartLimit {
        let open = self
            .windows(Some(read))
            .last()
            .copied()
            .filter(|window| read < window.opened + self.day);
        let (remaining, reset_after) = match open {
            Some(window) => (
                self.total.saturating_sub(window.count),
                window.opened + self.day - read,
            ),
            None => (self.total, closed_reset),
        };
        SessionStartLimit {
            total: self.total,
            remaining,
            reset_after,
            max_concurrency,
        }
    }
}
