//! The orchestrator's HTTP/JSON API: `/status` (functions, replicas, states, the
//! definitions file's problems), `POST /functions/{name}/wake` (answers once the
//! function is ready, with the cold start's phases), and `/healthz`.

use crate::supervisor::{Request, WakeError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

/// The API's routes; requests go to the supervisor through `tx`.
pub fn router(tx: mpsc::UnboundedSender<Request>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/status", get(status))
        .route("/functions/{name}/wake", post(wake))
        .with_state(tx)
}

fn unavailable() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "the orchestrator is shutting down"}))).into_response()
}

async fn status(State(tx): State<mpsc::UnboundedSender<Request>>) -> Response {
    let (reply, rx) = oneshot::channel();
    if tx.send(Request::Status(reply)).is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(s) => Json(s).into_response(),
        Err(_) => unavailable(),
    }
}

async fn wake(State(tx): State<mpsc::UnboundedSender<Request>>, Path(name): Path<String>) -> Response {
    let (reply, rx) = oneshot::channel();
    if tx.send(Request::Wake(name, reply)).is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e @ WakeError::Unknown(_))) => (StatusCode::NOT_FOUND, Json(json!({"error": e.to_string()}))).into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": e.to_string()}))).into_response(),
        Err(_) => unavailable(),
    }
}
