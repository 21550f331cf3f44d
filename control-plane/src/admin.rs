//! The HTTP/JSON admin API: functions and endpoints, the connected Envoys and their
//! NACKs, and waiting until every Envoy has ACKed a change. See the README for curl
//! examples.
//!
//! Every change answers with its `generation`. With `?wait=true` the answer comes only
//! once every connected Envoy has ACKed it (200), or Envoy rejected it (502, with
//! Envoy's text), or the wait timed out (504). Bad input gets 400 and changes nothing.
//!
//! The bodies and the query another Roost part reads or writes are typed in
//! [`roost_common::wire::admin`]; the pages only people and tests read (`/status`,
//! `/envoys`, the NACK and timeout details) are typed here.

use crate::ads::Nack;
use crate::model::{Change, FunctionSettings, ModelError};
use crate::registry::{NackEvent, Registry, StreamEntry, SyncError};
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use roost_common::wire::admin::{self as wire, Applied, EndpointView, FunctionEntry, FunctionView, Functions, NewEndpoint, WaitQuery};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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
        .route("/healthz", get(|| async { Json(Health { status: "ok" }) }))
        .route("/status", get(status))
        .route("/envoys", get(envoys))
        .route("/functions", get(list_functions))
        .route("/functions/{name}", get(get_function).put(put_function).delete(delete_function))
        .route("/functions/{name}/waking", post(waking))
        .route("/functions/{name}/gated", post(gate).delete(ungate))
        .route("/functions/{name}/endpoints", post(add_endpoint))
        .route("/functions/{name}/endpoints/{address}", axum::routing::delete(remove_endpoint))
        .route("/functions/{name}/endpoints/{address}/drain", post(drain_endpoint))
        .route("/changes", post(post_changes))
        .route("/confirm", post(post_confirm))
        .route("/sync/{generation}", get(sync))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such admin endpoint; see the README's admin API section".into()) })
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    ApiError(status, message).into_response()
}

/// An error answer: its status and a message for `{"error": ...}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(wire::ApiError { error: self.1 })).into_response()
    }
}

/// `GET /healthz`.
#[derive(Serialize)]
struct Health {
    status: &'static str,
}

/// `GET /envoys`: the connected Envoys and the NACKs remembered.
#[derive(Serialize)]
struct Envoys {
    envoys: Vec<StreamEntry>,
    recent_nacks: Vec<NackEvent>,
}

/// `GET /status`: the generation, the number of functions, and what `/envoys` shows.
#[derive(Serialize)]
struct StatusPage {
    generation: u64,
    functions: usize,
    /// Whether the model is known to describe what runs; until it is, Envoy's streams
    /// are held (it keeps its configuration).
    confirmed: bool,
    /// Envoy streams held until the model is confirmed.
    held_envoys: u64,
    #[serde(flatten)]
    envoys: Envoys,
}

/// The 502 of a wait: an Envoy rejected the change.
#[derive(Serialize)]
struct NackedAnswer<'a> {
    #[serde(flatten)]
    error: wire::ApiError,
    generation: u64,
    node_id: &'a str,
    nack: &'a Nack,
}

/// The 504 of a wait: not every Envoy ACKed in time.
#[derive(Serialize)]
struct TimedOutAnswer {
    #[serde(flatten)]
    error: wire::ApiError,
    generation: u64,
    envoys: Vec<StreamEntry>,
}

fn model_error(e: ModelError) -> Response {
    let status = if e.is_not_found() { StatusCode::NOT_FOUND } else { StatusCode::BAD_REQUEST };
    error(status, e.to_string())
}

/// `wait`, `timeout_ms` and `min_envoys` from the query string, defaults filled in.
struct WaitParams {
    wait: bool,
    timeout: Duration,
    min_envoys: usize,
}

fn wait_params(state: &AdminState, q: &HashMap<String, String>) -> Result<WaitParams, ApiError> {
    let q = WaitQuery::parse(q).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(WaitParams {
        wait: q.wait.unwrap_or(false),
        timeout: q.timeout_ms.map_or(state.sync_timeout, Duration::from_millis),
        min_envoys: q.min_envoys.unwrap_or(state.min_envoys),
    })
}

async fn wait_response(state: &AdminState, generation: u64, p: &WaitParams) -> Response {
    match state.registry.wait_synced(generation, p.min_envoys, p.timeout).await {
        Ok(envoys) => Json(Applied { generation, synced: Some(true), envoys: Some(envoys) }).into_response(),
        Err(e @ SyncError::Nacked { .. }) => {
            let SyncError::Nacked { node_id, nack } = &e else { unreachable!() };
            let error = wire::ApiError { error: e.to_string() };
            let body = NackedAnswer { error, generation, node_id, nack };
            (StatusCode::BAD_GATEWAY, Json(body)).into_response()
        }
        Err(e @ SyncError::Timeout { .. }) => {
            let error = wire::ApiError { error: e.to_string() };
            let body = TimedOutAnswer { error, generation, envoys: state.registry.streams() };
            (StatusCode::GATEWAY_TIMEOUT, Json(body)).into_response()
        }
    }
}

/// Applies changes and answers with the generation, waiting for Envoy when asked.
async fn apply(state: &AdminState, q: &HashMap<String, String>, changes: Vec<Change>) -> Response {
    apply_with(state, q, changes, Store::apply).await
}

/// Applies changes with `how` ([`Store::apply`] or [`Store::confirm`]) and answers.
async fn apply_with(
    state: &AdminState,
    q: &HashMap<String, String>,
    changes: Vec<Change>,
    how: fn(&Store, &[Change]) -> Result<u64, ModelError>,
) -> Response {
    let params = match wait_params(state, q) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let generation = match how(&state.store, &changes) {
        Ok(g) => g,
        Err(e) => return model_error(e),
    };
    if params.wait {
        wait_response(state, generation, &params).await
    } else {
        Json(Applied { generation, synced: None, envoys: None }).into_response()
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &Bytes, what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}; expected {what}")))
}

fn envoys_now(s: &AdminState) -> Envoys {
    Envoys { envoys: s.registry.streams(), recent_nacks: s.registry.recent_nacks() }
}

async fn status(State(s): State<AdminState>) -> Json<StatusPage> {
    let (model, generation) = s.store.model();
    Json(StatusPage {
        generation,
        functions: model.functions.len(),
        confirmed: s.store.is_confirmed(),
        held_envoys: s.registry.held(),
        envoys: envoys_now(&s),
    })
}

async fn envoys(State(s): State<AdminState>) -> Json<Envoys> {
    Json(envoys_now(&s))
}

fn function_view(f: &crate::model::Function) -> FunctionView {
    let endpoints = f.endpoints.iter().map(|(a, e)| EndpointView { address: *a, draining: e.draining }).collect();
    FunctionView { concurrency: f.concurrency, timeout_ms: f.timeout_ms, endpoints, gated: f.gated }
}

async fn list_functions(State(s): State<AdminState>) -> Json<Functions> {
    let (model, generation) = s.store.model();
    let functions = model.functions.iter().map(|(n, f)| (n.clone(), function_view(f))).collect();
    Json(Functions { generation, confirmed: s.store.is_confirmed(), functions })
}

async fn get_function(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    let (model, generation) = s.store.model();
    match model.functions.get(&name) {
        Some(f) => Json(FunctionEntry { function: function_view(f), name, generation }).into_response(),
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
    let change =
        Change::PutFunction { function: name, concurrency: settings.concurrency, timeout_ms: settings.timeout_ms, auth: settings.auth };
    apply(&s, &q, vec![change]).await
}

async fn delete_function(State(s): State<AdminState>, Path(name): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    apply(&s, &q, vec![Change::RemoveFunction { function: name }]).await
}

async fn waking(State(s): State<AdminState>, Path(name): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    apply(&s, &q, vec![Change::Waking { function: name }]).await
}

async fn gate(State(s): State<AdminState>, Path(name): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    apply(&s, &q, vec![Change::Gated { function: name, gated: true }]).await
}

async fn ungate(State(s): State<AdminState>, Path(name): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    apply(&s, &q, vec![Change::Gated { function: name, gated: false }]).await
}

async fn add_endpoint(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let body: NewEndpoint = match parse_json(&body, r#"{"address": "ip:port"}"#) {
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

async fn post_changes(State(s): State<AdminState>, Query(q): Query<HashMap<String, String>>, body: Bytes) -> Response {
    let changes: Vec<Change> = match parse_json(
        &body,
        r#"a list of changes like [{"op": "put_function", "function": "hello"}, {"op": "add_endpoint", "function": "hello", "address": "127.0.0.1:5000"}]"#,
    ) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    apply(&s, &q, changes).await
}

/// `POST /confirm`: the orchestrator hands over everything it runs (function settings
/// and ready endpoints, as changes); the model is confirmed and held Envoys are served.
async fn post_confirm(State(s): State<AdminState>, Query(q): Query<HashMap<String, String>>, body: Bytes) -> Response {
    let changes: Vec<Change> = match parse_json(&body, r#"a list of put_function and add_endpoint changes, as POST /changes takes"#) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let (was, held_envoys) = (s.store.is_confirmed(), s.registry.held());
    let response = apply_with(&s, &q, changes, Store::confirm).await;
    if !was && s.store.is_confirmed() {
        tracing::info!(held_envoys, "the orchestrator confirmed the model; held Envoys are served");
    }
    response
}

async fn sync(State(s): State<AdminState>, Path(generation): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
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
