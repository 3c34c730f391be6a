//! `/metrics` in Prometheus's text format, through prometheus-client (the Prometheus
//! project's Rust client). Names follow Prometheus's conventions: an
//! `identify_queue_` prefix, seconds, `_total` for counters, no shard labels.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::backend::Budget;

/// A request's route, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct Route {
    route: String,
}

pub(super) struct Metrics {
    requests: Family<Route, Histogram>,
    registry: Registry,
    pub(super) grants: Counter,
    pub(super) cancelled: Counter,
    pub(super) bad_requests: Counter,
    pub(super) anonymous_grants: Counter,
    pub(super) refused_connections: Counter,
    pub(super) accept_errors: Counter,
    pub(super) waiting: Gauge,
    remaining: Gauge,
    reset_seconds: Gauge<f64, AtomicU64>,
    max_concurrency: Gauge,
    ready: Gauge,
    /// Seconds the server could not grant (not ready), counted by the health watch.
    pub(super) unready_seconds: Counter<f64, AtomicU64>,
    word_age_seconds: Gauge<f64, AtomicU64>,
    pub(super) wait_seconds: Histogram,
}

impl Metrics {
    pub(super) fn new() -> Self {
        let mut registry = Registry::with_prefix("identify_queue");
        let grants = Counter::default();
        registry.register("grants", "Grants answered", grants.clone());
        let cancelled = Counter::default();
        registry.register(
            "cancelled",
            "Requests whose client went away before their grant (nothing spent)",
            cancelled.clone(),
        );
        let bad_requests = Counter::default();
        registry.register(
            "bad_requests",
            "Requests that can never be served: a bad or missing shard (400 on the native \
             API; held without an answer on twilight's route)",
            bad_requests.clone(),
        );
        let anonymous_grants = Counter::default();
        registry.register(
            "anonymous_grants",
            "Grants to `GET /` without a shard (one bucket): each spent a unit",
            anonymous_grants.clone(),
        );
        let refused_connections = Counter::default();
        registry.register(
            "refused_connections",
            "Connections past a cap (--max-connections, --max-connections-per-client): \
             closed unanswered, or served the health routes only",
            refused_connections.clone(),
        );
        let accept_errors = Counter::default();
        registry.register(
            "accept_errors",
            "Connections that could not be accepted (the open-files limit, mostly)",
            accept_errors.clone(),
        );
        let waiting = Gauge::default();
        registry.register(
            "waiting",
            "Requests waiting for their grant",
            waiting.clone(),
        );
        let remaining = Gauge::default();
        registry.register(
            "session_remaining",
            "Session starts left in Discord's window, as the queue counts them",
            remaining.clone(),
        );
        let reset_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "session_reset_seconds",
            "Seconds until the budget resets (-1: not known, or with the next grant)",
            reset_seconds.clone(),
        );
        let max_concurrency = Gauge::default();
        registry.register(
            "max_concurrency",
            "Discord's max_concurrency in force",
            max_concurrency.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when grants can flow (as /readyz)",
            ready.clone(),
        );
        let unready_seconds = Counter::<f64, AtomicU64>::default();
        registry.register(
            "unready_seconds",
            "Seconds in which grants could not flow (/readyz 503): waiting for Discord's \
             word, for Redis, or for an operator",
            unready_seconds.clone(),
        );
        let word_age_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "word_age_seconds",
            "Seconds since Discord's word in force was read (-1: a static limit); a \
             refresh that fails lets it grow while the limit stays in force",
            word_age_seconds.clone(),
        );
        let wait_seconds = Histogram::new(exponential_buckets(0.001, 4.0, 12));
        registry.register(
            "wait_seconds",
            "Time from a request to its grant",
            wait_seconds.clone(),
        );
        let requests = Family::<Route, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 4.0, 12))
        });
        registry.register(
            "request_duration_seconds",
            "Time from a request to its answer, by route (waits included)",
            requests.clone(),
        );
        Self {
            registry,
            requests,
            grants,
            cancelled,
            bad_requests,
            anonymous_grants,
            refused_connections,
            accept_errors,
            waiting,
            remaining,
            reset_seconds,
            max_concurrency,
            ready,
            unready_seconds,
            word_age_seconds,
            wait_seconds,
        }
    }

    /// A request to `route` answered, `seconds` after it came.
    pub(super) fn answered(&self, route: &str, seconds: f64) {
        self.requests
            .get_or_create(&Route {
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// The text exposition, with the budget's gauges as of now.
    pub(super) fn render(
        &self,
        budget: Option<&Budget>,
        ready: bool,
        word_age: Option<std::time::Duration>,
    ) -> String {
        self.word_age_seconds
            .set(word_age.map_or(-1.0, |age| age.as_secs_f64()));
        if let Some(budget) = budget {
            self.remaining.set(i64::from(budget.remaining));
            self.reset_seconds
                .set(budget.reset_after.map_or(-1.0, |after| after.as_secs_f64()));
            self.max_concurrency.set(i64::from(budget.max_concurrency));
        }
        self.ready.set(i64::from(ready));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
