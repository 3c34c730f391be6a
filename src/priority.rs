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

    /// Where this class stands: lower goes first.
    pub(crate) fn rank(self) -> usize {
        match self {
            Self::Reconnect => 0,
            Self::Start => 1,
        }
    }
}
