//! Which requests go first within a bucket and for the budget ([rules
//! 3.10](crate::rules)).

/// Which requests go first within a bucket, and for the daily budget.
///
/// A request's place in line is its priority first (every `Reconnect` before every
/// `Start`), then the order of the requests. A big bot's start-up queues minutes of
/// shards per bucket; a shard that was serving and lost its session should not wait
/// behind them while its guilds are offline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Priority {
    /// A shard starting up. The default.
    #[default]
    Start,
    /// A shard that was serving and lost its session: it goes before every `Start`.
    Reconnect,
}

impl Priority {
    /// Classes in the order they are served: the index of a bucket's queue.
    pub(crate) const COUNT: usize = 2;

    /// Where this class stands: lower goes first. The one order of the core's
    /// queues, the cluster's (`redis::local`, and the scores of `lua/acquire.lua`)
    /// and the server's places.
    pub(crate) fn rank(self) -> u8 {
        match self {
            Self::Reconnect => 0,
            Self::Start => 1,
        }
    }
}

/// What a request does when an earlier request of its shard still waits in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    not(any(feature = "tokio", feature = "smol", feature = "async-std")),
    allow(dead_code)
)]
pub(crate) enum OnConflict {
    /// It is refused (`AlreadyQueued`); the earlier one keeps waiting.
    Refuse,
    /// It takes over the earlier one's place in line (`acquire_replacing`); the earlier
    /// one resolves to `Superseded`.
    TakeOver,
}
