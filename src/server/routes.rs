//! The routes: twilight's protocol on every path not taken, the operations routes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::json;

use super::backend::{Duplicate, Holder, KeyOp};
use super::{ServerState, page};
use crate::{Priority, ShardId};

/// twilight's answer, byte for byte.
pub(super) const GRANTED: &str = r#"{"message": "You're free to connect now! :)"}"#;

pub(super) fn router(state: Arc<ServerState>) -> Router {
    // Every route but the health checks wants the token, when one is set.
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status_page))
        .route("/v1/status", get(status_json))
        .route("/v1/identify", post(identify_v1))
        .route("/v1/identify/{key}", delete(cancel_v1))
        .fallback(twilight)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            authorized,
        ));
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .with_state(state)
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<ServerState>>) -> Response {
    match state.not_ready() {
        None => (StatusCode::OK, axum::Json(json!({ "ready": true }))).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

/// `401` unless the request carries the token (when one is set); the request goes on
/// otherwise.
async fn authorized(
    State(state): State<Arc<ServerState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = state.args.auth_token.as_deref() else {
        return next.run(request).await;
    };
    // The scheme is case-insensitive (RFC 9110 11.1); the token is compared in time
    // that does not depend on where it differs.
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, given)| given.trim_start_matches(' '));
    if given.is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    let body = json!({ "error": "missing or wrong `Authorization: Bearer <token>`" });
    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}

/// Whether `given` is `secret`, looking at every byte of both whatever they hold (a
/// length that differs says no at once: the length is not the secret).
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    given.len() == secret.len()
        && std::hint::black_box(
            given
                .iter()
                .zip(secret)
                .fold(0u8, |differ, (a, b)| differ | (a ^ b)),
        ) == 0
}

/// A request on twilight's route that can never be served: counted, logged, and held
/// without an answer until its client leaves (any status line would read as "go").
async fn never_answered(state: &ServerState, reason: String) -> Response {
    state.metrics.bad_requests.inc();
    tracing::debug!(%reason, "a request that can never be served: held without an answer");
    std::future::pending().await
}

fn bad_request(state: &ServerState, reason: String) -> Response {
    state.metrics.bad_requests.inc();
    error(StatusCode::BAD_REQUEST, reason)
}

/// A JSON error answer of the native API: `{"error": reason}`.
fn error(status: StatusCode, reason: String) -> Response {
    (status, axum::Json(json!({ "error": reason }))).into_response()
}

/// [`error`], with `Retry-After: 1`: asking again later may succeed.
fn error_retry_later(status: StatusCode, reason: String) -> Response {
    let retry = [(header::RETRY_AFTER, "1")];
    (status, retry, axum::Json(json!({ "error": reason }))).into_response()
}

/// The value of `name` in a query string.
fn param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// A query value percent-decoded (`+` is a space), as the path's `{key}` is decoded;
/// `None` if it does not decode to UTF-8.
fn percent_decoded(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = value.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A request key as the native API takes it: 1 to 128 characters of `A-Z a-z 0-9 - .
/// _ ~` (URL-safe as they are, so a key reads the same in a query and in a path).
fn checked_key(key: Option<String>) -> Result<String, String> {
    match key {
        Some(key)
            if (1..=128).contains(&key.len())
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)) =>
        {
            Ok(key)
        }
        Some(key) => Err(format!(
            "`key` must be 1 to 128 characters of A-Z a-z 0-9 - . _ ~, got {key:?}"
        )),
        None => Err("`key` is not percent-encoded UTF-8".to_owned()),
    }
}

/// The `shard` of a query string: `Ok(None)` without one.
fn shard_of(query: Option<&str>) -> Result<Option<ShardId>, String> {
    match param(query, "shard") {
        None => Ok(None),
        Some(value) => value
            .parse::<ShardId>()
            .map(Some)
            .map_err(|_| format!("`shard` must be a number in 0..4294967296, got {value:?}")),
    }
}

/// twilight's protocol: a `200` when the shard may IDENTIFY, nothing else while it
/// may still be served. Clients in the wild read any answer as "go", so a request that
/// can never be served (a bad `shard`; none, with more than one bucket) gets no answer
/// at all: it is held until its client leaves. A request with no `shard` is served
/// only as `GET /` (a bot with one bucket); any other method or path without one is
/// not twilight's protocol (a health check, a browser's `/favicon.ico`, a scanner) and
/// gets `404`, spending nothing.
///
/// Cancel safety: hyper drops this future when the client closes its connection; the
/// request is then cancelled, nothing spent.
async fn twilight(
    State(state): State<Arc<ServerState>>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Response {
    let came = Instant::now();
    let shard = match shard_of(query.as_deref()) {
        Ok(shard) => shard,
        Err(reason) => return never_answered(&state, reason).await,
    };
    if shard.is_none() && (method != Method::GET || uri.path() != "/") {
        let body = "not found: twilight's protocol is `GET /?shard=N`\n";
        return (StatusCode::NOT_FOUND, body).into_response();
    }
    let backend = state.backend().await;
    let (shard, anonymous) = match (shard, state.max_concurrency()) {
        (Some(shard), _) => (shard, false),
        (None, Some(1)) => (state.anonymous_shard(), true),
        (None, max_concurrency) => {
            let reason = format!(
                "no `shard`: with max_concurrency {} the server needs the shard's id to \
                 pick its bucket (`?shard=N`)",
                max_concurrency.unwrap_or(0)
            );
            return never_answered(&state, reason).await;
        }
    };
    let guard = state.enter(shard);
    let mut shutdown = state.shutdown.clone();
    let shutdown = async move {
        let _ = shutdown.wait_for(|down| *down).await;
    };
    let granted = backend.acquire_until_granted(shard, Priority::Start, Duplicate::Replaces);
    tokio::select! {
        granted = granted => {
            granted.keep();
            guard.granted();
            if anonymous {
                state.metrics.anonymous_grants.inc();
            }
            state.metrics.answered("twilight", came.elapsed().as_secs_f64());
            tracing::debug!(shard, "granted");
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], GRANTED).into_response()
        }
        () = shutdown => {
            // Cancelled (nothing spent); the connection closes without an answer.
            drop(guard);
            std::future::pending().await
        }
    }
}

/// The native API's request: see the module docs.
async fn identify_v1(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
) -> Response {
    use super::tickets::{MAX_WAIT, Polled, Refused};
    let came = Instant::now();
    let query = query.as_deref();
    let shard = match shard_of(query) {
        Ok(Some(shard)) => shard,
        Ok(None) => return bad_request(&state, "no `shard`".to_owned()),
        Err(reason) => return bad_request(&state, reason),
    };
    let key = match param(query, "key").map(percent_decoded).map(checked_key) {
        Some(Ok(key)) => key,
        Some(Err(reason)) => return bad_request(&state, reason),
        None => {
            return bad_request(
                &state,
                "`key` (an idempotency key of 1 to 128 characters) is required".to_owned(),
            );
        }
    };
    let priority = match param(query, "priority") {
        None | Some("start") => Priority::Start,
        Some("reconnect") => Priority::Reconnect,
        Some(other) => {
            return bad_request(
                &state,
                format!("`priority` is `start` or `reconnect`, got {other:?}"),
            );
        }
    };
    let wait = match param(query, "wait_ms").map(str::parse::<u64>) {
        None => MAX_WAIT,
        Some(Ok(ms)) => Duration::from_millis(ms).min(MAX_WAIT),
        Some(Err(_)) => {
            return bad_request(
                &state,
                "`wait_ms` must be a number of milliseconds".to_owned(),
            );
        }
    };
    // Answered within `wait_ms` whatever happens, also before the first limit.
    let backend = match tokio::time::timeout(wait, state.backend()).await {
        Ok(backend) => backend,
        Err(_) => {
            state
                .metrics
                .answered("v1_identify", came.elapsed().as_secs_f64());
            let body = json!({
                "granted": false,
                "shard": shard,
                "key": key,
                "ready": false,
                "reason": state.not_ready(),
            });
            return (StatusCode::ACCEPTED, axum::Json(body)).into_response();
        }
    };
    let polled = state
        .tickets
        .poll(&key, (shard, priority), peer.ip(), wait, &backend)
        .await;
    state
        .metrics
        .answered("v1_identify", came.elapsed().as_secs_f64());
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    match polled {
        Ok(Polled::Granted { since, at }) => {
            state
                .metrics
                .wait_seconds
                .observe(at.instant.saturating_duration_since(since).as_secs_f64());
            tracing::debug!(shard, key, "granted");
            axum::Json(json!({
                "granted": true,
                "shard": shard,
                "key": key,
                "granted_at": at.unix_ms,
                "waited_ms": millis(at.instant.saturating_duration_since(since)),
            }))
            .into_response()
        }
        Ok(Polled::AnsweredBefore(at)) => {
            let body = json!({
                "error": format!(
                    "`key` {key:?}'s grant was answered already (`granted_at`, Unix ms): a \
                     key is one attempt; to IDENTIFY again, ask with a new key"
                ),
                "shard": shard,
                "key": key,
                "granted_at": at,
            });
            (StatusCode::GONE, axum::Json(body)).into_response()
        }
        Ok(Polled::HeldElsewhere) => {
            // Answered at once: the client's next poll may reach the server that holds
            // its key (its place is kept there).
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({
                    "granted": false,
                    "shard": shard,
                    "key": key,
                    "place": null,
                    "eta_ms": null,
                    "held_by_another_server": true,
                })),
            )
                .into_response()
        }
        Ok(Polled::Waiting) => {
            let eta = backend
                .eta(shard)
                .map(|eta| eta.saturating_duration_since(Instant::now()));
            // The grants of its bucket before its own, every route's waiters counted,
            // read off its estimated wait (O(log n) in the queue).
            let spacing = state.args.config().get_interval().as_millis().max(1);
            let place = eta.map(|eta| eta.as_millis() / spacing);
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({
                    "granted": false,
                    "shard": shard,
                    "key": key,
                    "place": place,
                    "eta_ms": eta.map(millis),
                })),
            )
                .into_response()
        }
        Err(Refused::KeyTaken(other)) => error(
            StatusCode::CONFLICT,
            format!("`key` {key:?} is shard {other}'s"),
        ),
        Err(Refused::ShardWaits(other)) => error(
            StatusCode::CONFLICT,
            format!(
                "shard {shard} waits already under `key` {other:?}: poll with it, or \
                 cancel it (`DELETE /v1/identify/{other}`) before asking with another"
            ),
        ),
        Err(Refused::Full(kept)) => error_retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "`key` {key:?} is new and {kept} keys are kept, the most allowed \
                 (`--max-tickets`): ask again later, or cancel keys no longer needed"
            ),
        ),
        Err(Refused::Unavailable(reason)) => error_retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot learn which server holds `key` {key:?}: {reason}"),
        ),
        Err(Refused::ClientFull(kept)) => error_retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "`key` {key:?} is new and this client keeps {kept} keys, the most one \
                 client address may (`--max-tickets-per-client`): cancel keys no longer \
                 needed, or ask again later"
            ),
        ),
    }
}

async fn cancel_v1(State(state): State<Arc<ServerState>>, Path(key): Path<String>) -> Response {
    // The path is percent-decoded already, as the query's key is above.
    let key = match checked_key(Some(key)) {
        Ok(key) => key,
        Err(reason) => return bad_request(&state, reason),
    };
    let backend = state.backend.borrow().clone();
    let shares = backend
        .as_ref()
        .is_some_and(|backend| backend.shares_keys());
    if let Some(was_waiting) = state.tickets.cancel(&key) {
        if was_waiting {
            state.metrics.cancelled.inc();
        }
        if let Some(backend) = backend.filter(|_| shares) {
            let _ = backend.request_key(KeyOp::Release, &key).await;
        }
        return StatusCode::NO_CONTENT.into_response();
    }
    let not_found = || {
        error(
            StatusCode::NOT_FOUND,
            format!("no request with `key` {key:?}"),
        )
    };
    let Some(backend) = backend.filter(|_| shares) else {
        return not_found();
    };
    // Another server of the namespace may hold it: a waiting key goes from Redis, and
    // its server cancels its ticket at its next sweep (within a second).
    match backend.request_key(KeyOp::Cancel, &key).await {
        Ok(Holder::Other) => {
            state.metrics.cancelled.inc();
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(Holder::Answered { .. }) => error(
            StatusCode::CONFLICT,
            format!("`key` {key:?} was granted by another server: release its hold there"),
        ),
        Ok(_) => not_found(),
        Err(reason) => error_retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot reach Redis: {reason}"),
        ),
    }
}

async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
    let backend = state.backend.borrow().clone();
    let budget = match backend {
        Some(backend) => Some(backend.budget().await),
        None => None,
    };
    let word_age = state.word().read.map(|read| read.elapsed());
    let text = state
        .metrics
        .render(budget.as_ref(), state.not_ready().is_none(), word_age);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The most waiting requests a status lists (the oldest); `waiting_count` has them all.
const MAX_WAITING_SHOWN: usize = 1000;

/// What both status routes show.
pub(super) async fn status(state: &ServerState) -> serde_json::Value {
    let backend = state.backend.borrow().clone();
    let now = Instant::now();
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut waiting: Vec<_> = super::lock(&state.waiting).values().copied().collect();
    waiting.extend(
        state
            .tickets
            .waiting()
            .into_iter()
            .map(|(shard, since)| super::Waiting { shard, since }),
    );
    waiting.sort_by_key(|w| w.since);
    let waiting_count = waiting.len();
    let max_concurrency = state.max_concurrency();
    // The oldest only: the status stays small (and cheap) however many wait.
    let waiting: Vec<_> = waiting
        .iter()
        .take(MAX_WAITING_SHOWN)
        .map(|w| {
            let eta = backend
                .as_ref()
                .and_then(|b| b.eta(w.shard))
                .map(|eta| millis(eta.saturating_duration_since(now)));
            json!({
                "shard": w.shard,
                "bucket": max_concurrency.map(|mc| crate::buckets::bucket_of(w.shard, mc.max(1))),
                "waiting_ms": millis(now - w.since),
                "eta_ms": eta,
            })
        })
        .collect();
    let budget = match &backend {
        Some(backend) => Some(backend.budget().await),
        None => None,
    };
    let not_ready = state.not_ready();
    let word = state.word();
    json!({
        "ready": not_ready.is_none(),
        "reason": not_ready,
        "mode": if state.args.redis.is_some() { "cluster" } else { "memory" },
        "uptime_ms": millis(state.started.elapsed()),
        "max_concurrency": max_concurrency,
        "total": budget.as_ref().and_then(|b| b.total),
        "remaining": budget.as_ref().map(|b| b.remaining),
        "reset_after_ms": budget.as_ref().and_then(|b| b.reset_after).map(millis),
        "bucket_free_in_ms": budget.as_ref().map(|b| {
            b.bucket_free_in.iter().map(|free| free.map(millis)).collect::<Vec<_>>()
        }),
        "word": {
            "age_ms": word.read.map(|read| millis(read.elapsed())),
            "refresh_error": word.error,
        },
        "granted": state.metrics.grants.get(),
        "cancelled": state.metrics.cancelled.get(),
        "waiting_count": waiting_count,
        "waiting": waiting,
    })
}

async fn status_json(State(state): State<Arc<ServerState>>) -> Response {
    axum::Json(status(&state).await).into_response()
}

async fn status_page(State(state): State<Arc<ServerState>>) -> Response {
    Html(page::render(&status(&state).await)).into_response()
}

#[cfg(test)]
mod tests {
    use super::shard_of;

    #[test]
    fn shards_are_read_from_the_query() {
        assert_eq!(shard_of(None), Ok(None));
        assert_eq!(shard_of(Some("")), Ok(None));
        assert_eq!(shard_of(Some("shard=7")), Ok(Some(7)));
        assert_eq!(shard_of(Some("a=b&shard=4294967295")), Ok(Some(u32::MAX)));
        assert!(shard_of(Some("shard=4294967296")).is_err());
        assert!(shard_of(Some("shard=-1")).is_err());
        assert!(shard_of(Some("shard=x")).unwrap_err().contains("`shard`"));
        assert!(shard_of(Some("shard=")).is_err());
    }
}
