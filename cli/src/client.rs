//! HTTP access to the orchestrator's API and to the gate.

use serde_json::Value;
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
pub async fn status(client: &reqwest::Client, e: &Endpoints) -> anyhow::Result<Value> {
    let r = client
        .get(format!("{}/status", e.orchestrator))
        .send()
        .await
        .map_err(|err| anyhow::anyhow!("cannot reach the orchestrator at {}: {err}; is Roost running (`roost up`)?", e.orchestrator))?;
    Ok(r.json().await?)
}

/// Load figures of one function from Redis: in flight, queued.
pub async fn load(conn: &mut redis::aio::MultiplexedConnection, function: &str) -> (u64, u64) {
    let h: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(roost_common::keys::load(function))
        .query_async(conn)
        .await
        .unwrap_or_default();
    let n = |k: &str| h.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
    use roost_common::keys::load_fields as f;
    (n(f::IN_FLIGHT), n(f::PENDING))
}
