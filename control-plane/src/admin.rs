//! The HTTP/JSON admin API: functions and endpoints, the connected Envoys and their
//! NACKs, and waiting until every Envoy has ACKed a change. See the README for curl
//! examples.
//!
//! Every change answers with its `generation`. With `?wait=true` the answer comes only
//! once every connected Envoy has ACKed it (200), or Envoy rejected it (502, with
//! Envoy's text), or the wait timed out (504). Bad input gets 400 and changes nothing.

use crate::model::{Change, FunctionSettings, ModelError};
use crate::registry::{Registry, SyncError};
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Longest wait a caller may ask for.
const MAX_WAIT_MS: u64 = 60_000;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The model.
    pub store: Arc<Store>,
    /// The connected Envoys.
    pub registry: Arc<Registry>,
    /// Envoys that must be connected and in sync for a wait to succeed.
    pub min_envoys: usize,
    /// Default wait timeout.
    pub sync_timeout: Duration,
}

/// The admin API's routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/status", get(status))
        .route("/envoys", get(envoys))
        .route("/functions", get(list_functions))
        .route(
            "/functions/{name}",
            get(get_function).put(put_function).delete(delete_function),
        )
        .route("/functions/{name}/endpoints", post(add_endpoint))
        .route(
            "/functions/{name}/endpoints/{address}",
            axum::routing::delete(remove_endpoint),
        )
        .route("/functions/{name}/endpoints/{address}/drain", post(drain_endpoint))
        .route("/changes", post(post_changes))
        .route("/sync/{generation}", get(sync))
        .fallback(|| async {
            error(StatusCode::NOT_FOUND, "no such admin endpoint; see the README's admin API section".into())
        })
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    ApiError(status, message).into_response()
}

/// An error answer: its status and a message for `{"error": ...}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn model_error(e: ModelError) -> Response {
    let status = if e.is_not_found() { StatusCode::NOT_FOUND } else { StatusCode::BAD_REQUEST };
    error(status, e.to_string())
}

/// `wait`, `timeout_ms` and `min_envoys` from the query string.
struct WaitParams {
    wait: bool,
    timeout: Duration,
    min_envoys: usize,
}

fn wait_params(state: &AdminState, q: &HashMap<String, String>) -> Result<WaitParams, ApiError> {
    let bad = |name: &str, v: &str, allowed: &str| {
        ApiError(StatusCode::BAD_REQUEST, format!("invalid query parameter {name}={v:?}: {allowed}"))
    };
    let wait = match q.get("wait").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(v) => return Err(bad("wait", v, "use true or false")),
    };
    let timeout = match q.get("timeout_ms") {
        None => state.sync_timeout,
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if (1..=MAX_WAIT_MS).contains(&ms) => Duration::from_millis(ms),
            _ => return Err(bad("timeout_ms", v, &format!("use 1 to {MAX_WAIT_MS}"))),
        },
    };
    let min_envoys = match q.get("min_envoys") {
        None => state.min_envoys,
        Some(v) => v.parse().map_err(|_| bad("min_envoys", v, "use a whole number"))?,
    };
    Ok(WaitParams { wait, timeout, min_envoys })
}

async fn wait_response(state: &AdminState, generation: u64, p: &WaitParams) -> Response {
    match state.registry.wait_synced(generation, p.min_envoys, p.timeout).await {
        Ok(envoys) => Json(json!({"generation": generation, "synced": true, "envoys": envoys})).into_response(),
        Err(e @ SyncError::Nacked { .. }) => {
            let SyncError::Nacked { node_id, nack } = &e else { unreachable!() };
            let body = json!({"error": e.to_string(), "generation": generation, "node_id": node_id, "nack": nack});
            (StatusCode::BAD_GATEWAY, Json(body)).into_response()
        }
        Err(e @ SyncError::Timeout { .. }) => {
            let body = json!({"error": e.to_string(), "generation": generation, "envoys": state.registry.streams()});
            (StatusCode::GATEWAY_TIMEOUT, Json(body)).into_response()
        }
    }
}

/// Applies changes and answers with the generation, waiting for Envoy when asked.
async fn apply(state: &AdminState, q: &HashMap<String, String>, changes: Vec<Change>) -> Response {
    let params = match wait_params(state, q) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let generation = match state.store.apply(&changes) {
        Ok(g) => g,
        Err(e) => return model_error(e),
    };
    if params.wait {
        wait_response(state, generation, &params).await
    } else {
        Json(json!({"generation": generation})).into_response()
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &Bytes, what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}; expected {what}"))
    })
}

async fn status(State(s): State<AdminState>) -> Json<Value> {
    let (model, generation) = s.store.model();
    Json(json!({
        "generation": generation,
        "functions": model.functions.len(),
        "envoys": s.registry.streams(),
        "recent_nacks": s.registry.recent_nacks(),
    }))
}

async fn envoys(State(s): State<AdminState>) -> Json<Value> {
    Json(json!({"envoys": s.registry.streams(), "recent_nacks": s.registry.recent_nacks()}))
}

fn function_json(f: &crate::model::Function) -> Value {
    let endpoints: Vec<Value> = f
        .endpoints
        .iter()
        .map(|(a, e)| json!({"address": a.to_string(), "draining": e.draining}))
        .collect();
    json!({"concurrency": f.concurrency, "timeout_ms": f.timeout_ms, "endpoints": endpoints})
}

async fn list_functions(State(s): State<AdminState>) -> Json<Value> {
    let (model, generation) = s.store.model();
    let functions: serde_json::Map<String, Value> = model
        .functions
        .iter()
        .map(|(n, f)| (n.clone(), function_json(f)))
        .collect();
    Json(json!({"generation": generation, "functions": functions}))
}

async fn get_function(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    let (model, generation) = s.store.model();
    match model.functions.get(&name) {
        Some(f) => {
            let mut v = function_json(f);
            v["name"] = json!(name);
            v["generation"] = json!(generation);
            Json(v).into_response()
        }
        None => model_error(ModelError::UnknownFunction(name)),
    }
}

async fn put_function(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let settings: FunctionSettings = if body.iter().all(u8::is_ascii_whitespace) {
        FunctionSettings::default()
    } else {
        match parse_json(&body, r#"{"concurrency": 1-10000, "timeout_ms": 1-3600000}, both optional"#) {
            Ok(v) => v,
            Err(r) => return r.into_response(),
        }
    };
    let change = Change::PutFunction {
        function: name,
        concurrency: settings.concurrency,
        timeout_ms: settings.timeout_ms,
    };
    apply(&s, &q, vec![change]).await
}

async fn delete_function(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    apply(&s, &q, vec![Change::RemoveFunction { function: name }]).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointBody {
    address: String,
}

async fn add_endpoint(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let body: EndpointBody = match parse_json(&body, r#"{"address": "ip:port"}"#) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    apply(&s, &q, vec![Change::AddEndpoint { function: name, address: body.address }]).await
}

async fn remove_endpoint(
    State(s): State<AdminState>,
    Path((name, address)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    apply(&s, &q, vec![Change::RemoveEndpoint { function: name, address }]).await
}

async fn drain_endpoint(
    State(s): State<AdminState>,
    Path((name, address)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    apply(&s, &q, vec![Change::DrainEndpoint { function: name, address }]).await
}

async fn post_changes(
    State(s): State<AdminState>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let changes: Vec<Change> = match parse_json(
        &body,
        r#"a list of changes like [{"op": "put_function", "function": "hello"}, {"op": "add_endpoint", "function": "hello", "address": "127.0.0.1:5000"}]"#,
    ) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    apply(&s, &q, changes).await
}

async fn sync(
    State(s): State<AdminState>,
    Path(generation): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Ok(generation) = generation.parse::<u64>() else {
        return error(StatusCode::BAD_REQUEST, format!("invalid generation {generation:?}: use the number a change answered with"));
    };
    let mut params = match wait_params(&s, &q) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    params.wait = true;
    wait_response(&s, generation, &params).await
}
