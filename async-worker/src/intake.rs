//! The worker's HTTP server: a submit (`/async/<function>[/<path>]`, or OpenFaaS's
//! `/async-function/...`) stored in Redis before its 202 is sent, a call's status
//! (`GET /async/calls/<id>`), and `/healthz`.

use crate::callback::Allowed;
use crate::metrics::Metrics;
use crate::settings::SettingsCache;
use crate::store::{Store, Submitted};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use roost_common::clock::now_ms;
use roost_common::naming::validate_function_name;
use roost_common::wire::calls::{
    Accepted, CallRecord, QueuedCall, CALLBACK_HEADER, CALL_ID_HEADER, IDEMPOTENCY_HEADER, MAX_IDEMPOTENCY_KEY, OPENFAAS_SUBMIT_PREFIX,
    STATUS_PREFIX, SUBMIT_PREFIX,
};
use roost_common::wire::redis::Refusal;
use roost_common::wire::status::ApiError;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What the server shares.
#[derive(Debug, Clone)]
pub struct Intake {
    /// Redis.
    pub store: Store,
    /// Functions' settings (each queue's cap).
    pub settings: Arc<SettingsCache>,
    /// Callback hosts allowed.
    pub allowed: Arc<Allowed>,
    /// Largest body taken.
    pub max_body: u64,
    /// Tells the dispatcher a function's queue has a new call.
    pub submitted: mpsc::Sender<String>,
    /// Metrics.
    pub metrics: Metrics,
}

/// What a request asks for, by its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// A submit to `function`, with the path after its name (empty for its root).
    Submit {
        /// The function's name as given (not validated yet).
        function: &'a str,
        /// The path after the name: empty, or starting with `/`.
        rest: &'a str,
    },
    /// A call's status.
    Status(&'a str),
    /// `/healthz`.
    Health,
    /// Anything else.
    Unknown,
}

/// Reads a request's path.
pub fn target(path: &str) -> Target<'_> {
    if path == "/healthz" {
        return Target::Health;
    }
    if let Some(id) = path.strip_prefix(STATUS_PREFIX).and_then(|p| p.strip_prefix('/')) {
        return if id.is_empty() || id.contains('/') { Target::Unknown } else { Target::Status(id) };
    }
    for prefix in [OPENFAAS_SUBMIT_PREFIX, SUBMIT_PREFIX] {
        if let Some(after) = path.strip_prefix(prefix).and_then(|p| p.strip_prefix('/')) {
            let (function, rest) = after.find('/').map_or((after, ""), |i| after.split_at(i));
            return if function.is_empty() { Target::Unknown } else { Target::Submit { function, rest } };
        }
    }
    Target::Unknown
}

/// The router: every path goes to one handler that reads it ([`target`]).
pub fn router(intake: Intake) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(intake)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ApiError { error: message.into() })).into_response()
}

async fn handle(State(intake): State<Intake>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    match target(&path) {
        Target::Health => match intake.store.ping().await {
            Ok(()) => "ok\n".into_response(),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("Redis does not answer: {e}")),
        },
        Target::Status(id) if request.method() == Method::GET => status(&intake, id).await,
        Target::Status(_) => error(StatusCode::METHOD_NOT_ALLOWED, "a call's status is read with GET"),
        Target::Submit { function, rest } => {
            let (function, rest) = (function.to_string(), rest.to_string());
            submit(&intake, &function, &rest, request).await
        }
        Target::Unknown => error(
            StatusCode::NOT_FOUND,
            format!("no such path {path:?}: submit with POST /async/<function>, read a call with GET /async/calls/<id>"),
        ),
    }
}

async fn status(intake: &Intake, id: &str) -> Response {
    match intake.store.record(id).await {
        Ok(Some(record)) => Json(record).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!(
                "no call {id:?}: the id is unknown, or the call finished longer ago than the platform keeps calls (ROOST_ASYNC_KEEP_S)"
            ),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("cannot read the call from Redis: {e}; try again")),
    }
}

/// A header's value as text, if present.
fn text<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, String> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| format!("the {name} header is not visible ASCII text")),
    }
}

/// The idempotency key, if given and valid.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(key) = text(headers, IDEMPOTENCY_HEADER)? else { return Ok(None) };
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("X-Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters without spaces"));
    }
    Ok(Some(key.to_string()))
}

async fn submit(intake: &Intake, function: &str, rest: &str, request: Request) -> Response {
    if validate_function_name(function).is_err() {
        return error(StatusCode::NOT_FOUND, format!("no function {function:?}: that is not a function's name"));
    }
    let (parts, body) = request.into_parts();
    let key = match idempotency_key(&parts.headers) {
        Ok(key) => key,
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem),
    };
    let callback = match text(&parts.headers, CALLBACK_HEADER) {
        Ok(None) => None,
        Ok(Some(url)) => match intake.allowed.check(url) {
            Ok(_) => Some(url.to_string()),
            Err(refused) => return error(StatusCode::BAD_REQUEST, refused.to_string()),
        },
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem),
    };
    let body = match axum::body::to_bytes(Body::new(body), intake.max_body as usize).await {
        Ok(body) => body,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over the limit of {} bytes (ROOST_GATE_MAX_BODY)", intake.max_body),
            )
        }
    };
    let id = match roost_common::auth::random_hex(16) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot make a call id: {e}")),
    };
    let path = match parts.uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let headers = parts
        .headers
        .iter()
        .filter(|(n, _)| crate::deliver::kept(n.as_str()))
        .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let call = QueuedCall { id: id.clone(), method: parts.method.to_string(), path, headers, body: body.to_vec() };
    let record = CallRecord::queued(&id, function, now_ms(), callback);
    let cap = intake.settings.get(&intake.store, function).await.queue;
    let stored = intake.store.submit(function, &call, &record, key.as_deref(), cap).await;
    intake.metrics.submitted(function, outcome(&stored));
    match stored {
        Ok(Submitted::Accepted(id)) => {
            let _ = intake.submitted.try_send(function.to_string());
            accepted(function, id, false)
        }
        Ok(Submitted::Duplicate(id)) => accepted(function, id, true),
        Ok(Submitted::Undeclared) => error(StatusCode::NOT_FOUND, format!("no function {function:?} is declared; `roost ls` lists them")),
        Ok(Submitted::Full) => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                format!("the queue of {function:?} holds its limit of {cap} calls (async.queue); try again later"),
            );
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        Ok(Submitted::Refused(refusal)) => refused(function, &refusal),
        Err(e) => {
            let mut response =
                error(StatusCode::SERVICE_UNAVAILABLE, format!("cannot store the call in Redis: {e}; nothing was queued, try again"));
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

fn outcome(stored: &redis::RedisResult<Submitted>) -> &'static str {
    match stored {
        Ok(Submitted::Accepted(_)) => "accepted",
        Ok(Submitted::Duplicate(_)) => "duplicate",
        Ok(Submitted::Undeclared) => "undeclared",
        Ok(Submitted::Full) => "full",
        Ok(Submitted::Refused(_)) => "refused",
        Err(_) => "error",
    }
}

fn accepted(function: &str, id: String, duplicate: bool) -> Response {
    let status_url = format!("{STATUS_PREFIX}/{id}");
    let mut response = (
        StatusCode::ACCEPTED,
        Json(Accepted { id: id.clone(), function: function.to_string(), status_url: status_url.clone(), duplicate }),
    )
        .into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert(CALL_ID_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&status_url) {
        headers.insert(header::LOCATION, v);
    }
    response
}

/// A function refused for good, answered as the gate answers its callers.
fn refused(function: &str, refusal: &Refusal) -> Response {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let body = serde_json::json!({
        "error": refusal.error,
        "function": function,
        "state": refusal.state,
        "reason": refusal.reason,
    });
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_read_as_submits_statuses_or_nothing() {
        assert_eq!(target("/async/hello"), Target::Submit { function: "hello", rest: "" });
        assert_eq!(target("/async/hello/a/b"), Target::Submit { function: "hello", rest: "/a/b" });
        assert_eq!(target("/async-function/hello"), Target::Submit { function: "hello", rest: "" });
        assert_eq!(target("/async-function/hello/x"), Target::Submit { function: "hello", rest: "/x" });
        assert_eq!(target("/async/calls/0a1b"), Target::Status("0a1b"));
        assert_eq!(target("/healthz"), Target::Health);
        for path in ["/async", "/async/", "/async/calls/", "/async/calls/a/b", "/asyncx/f", "/hello", "/async-function/"] {
            assert_eq!(target(path), Target::Unknown, "{path}");
        }
    }

    #[test]
    fn an_idempotency_key_is_visible_ascii_of_bounded_length() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h), Ok(None));
        h.insert(IDEMPOTENCY_HEADER, HeaderValue::from_static("order-42"));
        assert_eq!(idempotency_key(&h), Ok(Some("order-42".into())));
        h.insert(IDEMPOTENCY_HEADER, HeaderValue::from_static("with space"));
        assert!(idempotency_key(&h).is_err());
        h.insert(IDEMPOTENCY_HEADER, HeaderValue::from_str(&"k".repeat(MAX_IDEMPOTENCY_KEY + 1)).unwrap());
        assert!(idempotency_key(&h).unwrap_err().contains("1-200"));
    }
}
