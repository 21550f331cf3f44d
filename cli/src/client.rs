//! HTTP access to the orchestrator's API and to the gate.

use roost_common::wire::redis::LoadHash;
use roost_common::wire::status::Status;
use std::time::Duration;

/// Where the platform answers.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The gate, e.g. `http://127.0.0.1:8080`.
    pub gate: String,
    /// The orchestrator's API, e.g. `http://127.0.0.1:18002`.
    pub orchestrator: String,
    /// Redis URL, for the load figures.
    pub redis: String,
}

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
    let r = client
        .get(format!("{}/status", e.orchestrator))
        .send()
        .await
        .map_err(|err| anyhow::anyhow!("cannot reach the orchestrator at {}: {err}; is Roost running (`roost up`)?", e.orchestrator))?;
    let r = r.error_for_status()?;
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
