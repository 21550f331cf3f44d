//! Reads Envoy's admin API to learn when a draining replica has no request in flight
//! (Envoy's per-host `rq_active`), so a drain ends as soon as it safely can.

use roost_common::auth::ControlToken;
use roost_common::naming::cluster_name;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::debug;

/// Why Envoy's admin API could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyAdminError {
    /// No answer.
    #[error("Envoy's admin API at {url} did not answer: {source}")]
    Unreachable {
        /// What was asked.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// An answer that is not 200.
    #[error("Envoy's admin API at {url} answered {status}")]
    Refused {
        /// What was asked.
        url: String,
        /// The status it answered.
        status: reqwest::StatusCode,
    },
}

/// Envoy admin API access (optional).
#[derive(Debug, Clone)]
pub struct EnvoyAdmin {
    base: Option<String>,
    http: reqwest::Client,
}

/// The `rq_active` of one host in Envoy's `/clusters` text output, if listed.
pub fn host_rq_active(clusters: &str, cluster: &str, host: SocketAddr) -> Option<u64> {
    let prefix = format!("{cluster}::{host}::rq_active::");
    clusters.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

impl EnvoyAdmin {
    /// `base` like `http://127.0.0.1:9901`; `None` when Envoy's admin API is not reachable
    /// from the orchestrator. `token` goes with every request: compose's Envoy serves
    /// `/clusters` to the orchestrator on a guarded listener that wants it
    /// (envoy/bootstrap.yaml); a plain admin API ignores it.
    pub fn new(base: Option<String>, token: Option<&ControlToken>) -> EnvoyAdmin {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .default_headers(token.map(ControlToken::headers).unwrap_or_default())
            .build()
            .expect("a plain HTTP client always builds");
        EnvoyAdmin { base: base.map(|b| b.trim_end_matches('/').to_string()), http }
    }

    /// Envoy's `/clusters` text (per-host stats of every cluster).
    async fn clusters(&self, base: &str) -> Result<String, EnvoyAdminError> {
        let url = format!("{base}/clusters");
        let unreachable = |source| EnvoyAdminError::Unreachable { url: url.clone(), source };
        let resp = self.http.get(&url).send().await.map_err(unreachable)?;
        if !resp.status().is_success() {
            return Err(EnvoyAdminError::Refused { status: resp.status(), url });
        }
        resp.text().await.map_err(unreachable)
    }

    /// Waits until Envoy has no request in flight on `host` of `function`, or `deadline`.
    /// Without an admin URL it waits the whole deadline (the function's request timeout
    /// bounds every request, so that is always safe, just slower). True when idle was seen.
    pub async fn wait_host_idle(&self, function: &str, host: SocketAddr, deadline: Duration) -> bool {
        let Some(base) = &self.base else {
            tokio::time::sleep(deadline).await;
            return true;
        };
        let cluster = cluster_name(function);
        let start = Instant::now();
        while start.elapsed() < deadline {
            match self.clusters(base).await {
                Ok(text) => match host_rq_active(&text, &cluster, host) {
                    Some(0) | None => return true,
                    Some(n) => debug!(function, %host, in_flight = n, "waiting for in-flight requests"),
                },
                Err(e) => debug!(error = %e, "cannot read Envoy's in-flight requests; asking again"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_per_host_active_requests() {
        let text = "fn-hello::default_priority::max_connections::1\n\
                    fn-hello::127.0.0.1:5000::cx_active::1\n\
                    fn-hello::127.0.0.1:5000::rq_active::2\n\
                    fn-hello::127.0.0.1:5001::rq_active::0\n";
        let h = |s: &str| s.parse().unwrap();
        assert_eq!(host_rq_active(text, "fn-hello", h("127.0.0.1:5000")), Some(2));
        assert_eq!(host_rq_active(text, "fn-hello", h("127.0.0.1:5001")), Some(0));
        assert_eq!(host_rq_active(text, "fn-hello", h("127.0.0.1:5002")), None);
        assert_eq!(host_rq_active(text, "fn-other", h("127.0.0.1:5000")), None);
    }
}
