//! The orchestrator's HTTP/JSON API: `/status` (functions, replicas, states, the
//! definitions file's problems), `POST /functions/{name}/wake` (answers once the
//! function is ready, with the cold start's phases), and `/healthz` (ready only when
//! Redis answers and the supervisor runs). Bodies are [`roost_common::wire::status`]'s.

use crate::function::WakeError;
use crate::redis_io::RedisIo;
use crate::supervisor::Request;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use roost_common::wire::status::ApiError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// What `/healthz` checks.
#[derive(Debug, Default)]
pub struct Health {
    /// The supervisor serves requests.
    pub supervisor: Arc<AtomicBool>,
    /// Redis, once connected.
    pub redis: OnceLock<RedisIo>,
}

#[derive(Debug, Clone)]
struct Api {
    tx: mpsc::Sender<Request>,
    health: Arc<Health>,
}

/// The API's routes; requests go to the supervisor through `tx`.
pub fn router(tx: mpsc::Sender<Request>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/functions/{name}/wake", post(wake))
        .with_state(Api { tx, health })
}

fn error(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(ApiError { error: text.into() })).into_response()
}

fn unavailable() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "the orchestrator is starting or shutting down; retry")
}

/// The body of a healthy `/healthz`.
#[derive(Debug, serde::Serialize)]
struct Healthy {
    status: &'static str,
}

async fn healthz(State(api): State<Api>) -> Response {
    if !api.health.supervisor.load(Ordering::Acquire) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the supervisor is not running yet (adopting replicas) or is stopping");
    }
    let Some(redis) = api.health.redis.get() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "Redis is not reachable yet");
    };
    match tokio::time::timeout(Duration::from_secs(1), redis.ping()).await {
        Ok(Ok(())) => Json(Healthy { status: "ok" }).into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, format!("Redis does not answer: {e}")),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "Redis did not answer PING within 1 s"),
    }
}

async fn status(State(api): State<Api>) -> Response {
    let (reply, rx) = oneshot::channel();
    if api.tx.try_send(Request::Status(reply)).is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(s) => Json(s).into_response(),
        Err(_) => unavailable(),
    }
}

async fn wake(State(api): State<Api>, Path(name): Path<String>) -> Response {
    let (reply, rx) = oneshot::channel();
    if api.tx.try_send(Request::Wake(name, reply)).is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e @ WakeError::Unknown(_))) => error(StatusCode::NOT_FOUND, e.to_string()),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(_) => unavailable(),
    }
}
