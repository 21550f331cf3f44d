//! What the orchestrator's two HTTP APIs share (its own, behind the control token, and
//! the management API, [`crate::system`], behind the API token), and the console: the
//! management API's state ([`Deploys`]), errors as JSON, and asking the supervisor.

use crate::deployed::store::Store;
use crate::supervisor::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use roost_common::wire::status::{ApiError, Status};
use roost_common::wire::system::Source;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What the management API needs: the store (none without a data directory), the body
/// limit, where the platform's metrics are, and its reader of the asynchronous calls.
#[derive(Debug)]
pub struct Deploys {
    /// The deployed functions' store.
    pub store: Option<Store>,
    /// Largest body of a deploy.
    pub max_body: u64,
    /// Deploys, scales and removals one at a time.
    pub lock: tokio::sync::Mutex<()>,
    /// The statsd-listener's `/metrics` URL.
    pub metrics_url: Option<String>,
    /// The client that reads it.
    pub http: reqwest::Client,
    /// The API token (the console's login checks it).
    pub token: Option<roost_common::auth::ApiToken>,
    /// Reads the asynchronous calls from Redis (`GET /system/async/calls`).
    pub(crate) calls: crate::calls::Reader,
}

/// An error answer: its status, and `{"error": text}`.
pub(crate) fn error(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(ApiError { error: text.into() })).into_response()
}

/// A refused or failed management call: its status and what to tell the caller.
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

pub(crate) fn unavailable() -> Failure {
    Failure(StatusCode::SERVICE_UNAVAILABLE, "the orchestrator is starting or shutting down; retry".into())
}

/// Asks the supervisor `make(reply)` and waits for its answer.
pub(crate) async fn ask<T>(supervisor: &mpsc::Sender<Request>, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T, Failure> {
    let (reply, rx) = oneshot::channel();
    supervisor.send(make(reply)).await.map_err(|_| unavailable())?;
    rx.await.map_err(|_| unavailable())
}

/// Where `function` (one `status` lists) is declared.
pub(crate) fn source_of(status: &Status, function: &str) -> Source {
    if status.deployed.iter().any(|d| d == function) {
        Source::Deployed
    } else {
        Source::File
    }
}

impl Deploys {
    /// The statsd-listener's Prometheus text, or why it cannot be had.
    pub(crate) async fn metrics_text(&self) -> Result<String, Failure> {
        let url = self.metrics_url.as_deref().ok_or_else(|| {
            Failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "no metrics endpoint configured; set ROOST_METRICS_URL to the statsd-listener's /metrics".into(),
            )
        })?;
        let unreachable =
            |e: reqwest::Error| Failure(StatusCode::BAD_GATEWAY, format!("the statsd-listener's metrics at {url} do not answer: {e}"));
        let r = self.http.get(url).send().await.map_err(unreachable)?;
        if !r.status().is_success() {
            return Err(Failure(StatusCode::BAD_GATEWAY, format!("the statsd-listener's metrics at {url} answered {}", r.status())));
        }
        r.text().await.map_err(unreachable)
    }
}

/// The management API's state, shared with the orchestrator's API.
pub fn deploys(
    store: Option<Store>,
    max_body: u64,
    metrics_url: Option<String>,
    token: Option<roost_common::auth::ApiToken>,
) -> Arc<Deploys> {
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(5)).build().expect("a plain HTTP client always builds");
    Arc::new(Deploys { store, max_body, lock: tokio::sync::Mutex::new(()), metrics_url, http, token, calls: Default::default() })
}
