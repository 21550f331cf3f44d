//! HTTP access to the orchestrator's API and to the gate: what [`Endpoints`] can do
//! (where they are is [`crate::endpoints`]'s).

pub use crate::endpoints::{Endpoints, Origins};
use roost_common::wire::redis::LoadHash;
use roost_common::wire::status::Status;
use std::time::Duration;

impl Endpoints {
    /// The error of an orchestrator that does not answer: its address, where that came
    /// from, and how to point at another.
    pub fn orchestrator_unreachable(&self, err: &dyn std::error::Error) -> anyhow::Error {
        let err = causes(err);
        anyhow::anyhow!(
            "cannot reach the orchestrator at {} ({}): {err}; is Roost running (`roost up`)? Point at another with --orchestrator URL or {}",
            self.orchestrator,
            self.origin.orchestrator,
            roost_common::env::ORCHESTRATOR_URL
        )
    }

    /// A request to the orchestrator's API at `path`, carrying the control token when
    /// there is one.
    pub fn orchestrator_request(&self, client: &reqwest::Client, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = client.request(method, format!("{}{path}", self.orchestrator));
        match &self.control_token {
            Some(t) => r.headers(t.headers()),
            None => r,
        }
    }

    /// The error of an orchestrator that refused a request for want of the control token.
    pub fn orchestrator_refused(&self, status: reqwest::StatusCode, said: &str) -> anyhow::Error {
        if status == reqwest::StatusCode::UNAUTHORIZED {
            let have = if self.control_token.is_some() { "the control token given was refused" } else { "no control token was given" };
            anyhow::anyhow!(
                "the orchestrator at {} requires its control token and {have}: {said}; give it with --control-token, {} or {} (`roost up` writes it into its endpoints file; with compose: docker-compose exec -T orchestrator cat /run/roost/secrets/control-token)",
                self.orchestrator,
                roost_common::env::CONTROL_TOKEN,
                roost_common::env::CONTROL_TOKEN_FILE
            )
        } else {
            anyhow::anyhow!("the orchestrator at {} answered {status}: {said}", self.orchestrator)
        }
    }

    /// The error of a gate that does not answer, as [`Endpoints::orchestrator_unreachable`].
    pub fn gate_unreachable(&self, err: &dyn std::error::Error) -> anyhow::Error {
        let err = causes(err);
        anyhow::anyhow!(
            "cannot reach the gate at {} ({}): {err}; is Roost running (`roost up`)? Point at another with --gate URL or {}",
            self.gate,
            self.origin.gate,
            roost_common::env::GATE_URL
        )
    }
}

pub use roost_common::telemetry::causes;

/// A shared HTTP client with sane timeouts.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build()
        .expect("a plain HTTP client always builds")
}

/// The orchestrator's `/status`.
pub async fn status(client: &reqwest::Client, e: &Endpoints) -> anyhow::Result<Status> {
    let r = e.orchestrator_request(client, reqwest::Method::GET, "/status").send().await.map_err(|err| e.orchestrator_unreachable(&err))?;
    if !r.status().is_success() {
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        let said = serde_json::from_str::<roost_common::wire::admin::ApiError>(&body).map(|a| a.error).unwrap_or(body);
        return Err(e.orchestrator_refused(status, &said));
    }
    r.json().await.map_err(|err| {
        anyhow::anyhow!(
            "the orchestrator's /status at {} is not what this roost reads: {err}; are the CLI and the orchestrator the same version?",
            e.orchestrator
        )
    })
}

/// Load figures of one function from Redis: in flight, queued.
pub async fn load(conn: &mut redis::aio::MultiplexedConnection, function: &str) -> (u64, u64) {
    // A figure Redis cannot give now shows as zero: the table is refreshed every second.
    let h: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg(roost_common::keys::load(function)).query_async(conn).await.unwrap_or_default();
    let load = LoadHash::from_fields(&h);
    (load.in_flight as u64, load.pending as u64)
}
