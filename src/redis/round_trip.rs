//! The round trip to Redis, as this process measures it, and the delivery window that
//! follows from it.
//!
//! Every grant request and touch carries the window: the longest a permit may take to
//! reach its shard after the call was sent. Redis keeps the bucket's next grant an
//! interval (and margin) after the end of that window, so deliveries of a bucket are
//! an interval apart on any one clock whatever the distance, and a far process pays
//! for its own distance only: its window lengthens its own grants' rounds, nobody
//! else's.
//!
//! The window follows the smoothed round trip and its variation, as TCP's
//! retransmission timeout does (RFC 6298: `srtt + 4 * rttvar`), so that a reply
//! almost always arrives within it. One that arrives later is not lost: its permit
//! first needs a touch (another call, with the window that the late sample widened).

use std::time::Duration;

/// The shortest delivery window: a reply across loopback still passes through two
/// schedulers and the runtime's millisecond timer.
pub const DELIVERY_WINDOW: Duration = Duration::from_millis(5);

/// The longest window: beyond it a process is too far to be useful, and its grants
/// would keep a bucket busy for everyone. `health()` says so well before.
const MAX_WINDOW: Duration = Duration::from_secs(10);

/// A sample larger than this many windows is read as this many: a stall (a failover,
/// a GC pause) widens the window for a while, but does not blow it up for minutes. A
/// real change of distance is followed within a few samples.
const OUTLIER: u32 = 4;

/// The smoothed round trip and its mean deviation.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RoundTrip {
    /// `None` before the first sample.
    smoothed: Option<Duration>,
    deviation: Duration,
}

impl RoundTrip {
    /// A call answered `rtt` after it was sent.
    pub(super) fn sample(&mut self, rtt: Duration) {
        let Some(smoothed) = self.smoothed else {
            self.smoothed = Some(rtt);
            self.deviation = rtt / 2;
            return;
        };
        let rtt = rtt.min(self.window().saturating_mul(OUTLIER));
        let difference = smoothed.abs_diff(rtt);
        self.deviation = (self.deviation * 3 + difference) / 4;
        self.smoothed = Some((smoothed * 7 + rtt) / 8);
    }

    /// The smoothed round trip (zero before the first sample).
    pub(super) fn smoothed(&self) -> Duration {
        self.smoothed.unwrap_or_default()
    }

    /// How long a permit may take to reach its shard after its call was sent: the
    /// round trip with room for its variation, in whole milliseconds (as Redis counts),
    /// never below [`DELIVERY_WINDOW`].
    pub(super) fn window(&self) -> Duration {
        let smoothed = self.smoothed();
        let room = (self.deviation * 4).max(smoothed / 4);
        let window = (smoothed + room).clamp(DELIVERY_WINDOW, MAX_WINDOW);
        Duration::from_millis(window.as_nanos().div_ceil(1_000_000) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn loopback_keeps_the_floor() {
        let mut rtt = RoundTrip::default();
        assert_eq!(rtt.window(), DELIVERY_WINDOW);
        for _ in 0..20 {
            rtt.sample(Duration::from_micros(150));
        }
        assert_eq!(rtt.window(), DELIVERY_WINDOW);
    }

    #[test]
    fn a_steady_round_trip_gets_a_window_above_it() {
        let mut rtt = RoundTrip::default();
        for _ in 0..50 {
            rtt.sample(ms(60));
        }
        assert_eq!(rtt.smoothed(), ms(60));
        // A quarter of the round trip as room, once the deviation has died down.
        assert_eq!(rtt.window(), ms(75));
    }

    #[test]
    fn jitter_widens_the_window_past_the_slowest_replies() {
        let mut rtt = RoundTrip::default();
        for i in 0..200 {
            rtt.sample(ms(if i % 2 == 0 { 50 } else { 70 }));
        }
        assert!(rtt.window() >= ms(90), "{:?}", rtt.window());
        assert!(rtt.window() <= ms(110), "{:?}", rtt.window());
    }

    #[test]
    fn a_stall_widens_the_window_for_a_while_only() {
        let mut rtt = RoundTrip::default();
        for _ in 0..50 {
            rtt.sample(ms(2));
        }
        rtt.sample(ms(1500));
        let widened = rtt.window();
        assert!(
            widened > DELIVERY_WINDOW && widened <= ms(30),
            "{widened:?}"
        );
        for _ in 0..30 {
            rtt.sample(ms(2));
        }
        assert_eq!(rtt.window(), DELIVERY_WINDOW);
    }

    #[test]
    fn a_move_far_away_is_followed_within_a_few_samples() {
        let mut rtt = RoundTrip::default();
        for _ in 0..50 {
            rtt.sample(ms(1));
        }
        let mut samples = 0;
        while rtt.window() < ms(100) {
            rtt.sample(ms(100));
            samples += 1;
        }
        assert!(samples <= 6, "{samples} samples");
    }

    #[test]
    fn the_window_is_bounded() {
        let mut rtt = RoundTrip::default();
        rtt.sample(Duration::from_secs(1000));
        assert_eq!(rtt.window(), MAX_WINDOW);
    }
}
