//! The inputs a scheduler is built from, and their validation.

use std::time::Duration;

use crate::Error;

/// A shard's number, as in `[shard_id, num_shards]` of IDENTIFY.
pub type ShardId = u32;

/// Mirror of Discord's `session_start_limit` object (`reset_after` as a Duration).
///
/// Read it from `GET /gateway/bot`:
///
/// ```json
/// { "total": 1000, "remaining": 997, "reset_after": 14336000, "max_concurrency": 16 }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionStartLimit {
    /// Session starts allowed per 24 h window.
    pub total: u32,
    /// Session starts left in the current window.
    pub remaining: u32,
    /// Time until the window resets to `total` (`Duration::MAX`: never).
    pub reset_after: Duration,
    /// Number of buckets: a shard's bucket is `shard_id % max_concurrency`.
    pub max_concurrency: u32,
}

impl SessionStartLimit {
    /// Checks the fields that a scheduler relies on, naming the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_concurrency == 0 {
            return Err(Error::ZeroMaxConcurrency);
        }
        if self.total == 0 {
            return Err(Error::ZeroTotal);
        }
        if self.remaining > self.total {
            return Err(Error::RemainingExceedsTotal {
                remaining: self.remaining,
                total: self.total,
            });
        }
        Ok(())
    }
}

/// How a scheduler frees buckets.
///
/// The default is Discord's rule as twilight and discord.js apply it: a bucket is free
/// again 5 s after its last grant ("timer mode").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub(crate) interval: Duration,
    pub(crate) hold_timeout: Option<Duration>,
    pub(crate) grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interval: DISCORD_INTERVAL,
            hold_timeout: None,
            grace: DEFAULT_GRACE,
        }
    }
}

/// The default [`Config::grace`]: 30 s.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// The longest [`Config::grace`]: an hour.
pub const MAX_GRACE: Duration = Duration::from_secs(60 * 60);

/// Discord's spacing between two IDENTIFYs of one bucket.
pub const DISCORD_INTERVAL: Duration = Duration::from_secs(5);

impl Config {
    /// The least time between two grants in one bucket (default 5 s; must not be zero).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Hold mode (lacord, JDA): a granted shard holds its bucket until
    /// [`Scheduler::release`](crate::Scheduler::release), never less than the interval
    /// and at most `timeout` after its grant, so a lost READY cannot block a bucket
    /// for good. `Duration::MAX` waits for the release forever.
    pub fn hold_until_release(mut self, timeout: Duration) -> Self {
        self.hold_timeout = Some(timeout);
        self
    }

    /// How uncertain Discord's count is (30 s by default, at most an hour; [rules
    /// 3.11](crate::rules)): the longest a word (`session_start_limit`) may be old when
    /// it is applied, plus the longest an IDENTIFY may take to arrive once its permit
    /// reached the shard.
    ///
    /// Discord counts an IDENTIFY when it arrives and reports its count some time after
    /// reading it, so within `grace` of a word or of a reset the scheduler cannot tell
    /// whether a grant is counted yet, and takes the safe side: a word sets the budget
    /// to its `remaining` less the grants delivered within `grace` before it was read
    /// (say how old a word is with
    /// [`update_with_age`](crate::Scheduler::update_with_age)), and a reset refills at
    /// the latest instant it may be, less the grants delivered within `grace` before
    /// it (they may count in Discord's new window).
    ///
    /// **What it costs**: the units of the grants delivered within `grace` before a
    /// word or a reset are held back until the next reset (at most `max_concurrency`
    /// per interval of `grace`: 96 units with `max_concurrency` 16 and 30 s, and none
    /// when nothing was granted then), and a reset opened by a grant comes `grace`
    /// after Discord's. A grace shorter than the real uncertainty may overspend; zero
    /// is the budget of [rules 3.1](crate::rules), exact only where words are read and
    /// IDENTIFYs arrive at the scheduler's instants.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The configured [`grace`](Self::grace).
    pub fn get_grace(&self) -> Duration {
        self.grace
    }

    /// The configured interval.
    pub fn get_interval(&self) -> Duration {
        self.interval
    }

    /// The hold timeout in hold mode; `None` in timer mode.
    pub fn get_hold_timeout(&self) -> Option<Duration> {
        self.hold_timeout
    }

    /// Checks the configuration, naming the first bad field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.interval.is_zero() {
            return Err(Error::ZeroInterval);
        }
        if self.grace > MAX_GRACE {
            return Err(Error::GraceTooLong(self.grace));
        }
        Ok(())
    }
}
