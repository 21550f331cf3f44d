//! Client of the control plane's admin API: declare functions, add, drain and remove
//! endpoints, each waiting until every Envoy has ACKed the change.

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

/// Why a control-plane call failed.
#[derive(Debug, thiserror::Error)]
pub enum CpError {
    /// The control plane could not be reached.
    #[error("control plane at {url} unreachable: {source}")]
    Unreachable {
        /// Base URL.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The control plane answered with an error (bad input, NACK, ACK timeout).
    #[error("control plane {method} {path} answered {status}: {message}")]
    Refused {
        /// HTTP method.
        method: &'static str,
        /// Path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The `error` text it gave.
        message: String,
    },
}

/// The admin API client.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    base: String,
    http: reqwest::Client,
    wait_ms: u64,
}

impl ControlPlane {
    /// A client for the admin API at `base` (for example `http://127.0.0.1:18001`);
    /// changes wait up to `wait` for Envoy's ACK.
    pub fn new(base: &str, wait: Duration) -> ControlPlane {
        let http = reqwest::Client::builder()
            .timeout(wait + Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client always builds");
        ControlPlane {
            base: base.trim_end_matches('/').to_string(),
            http,
            wait_ms: wait.as_millis() as u64,
        }
    }

    async fn call(&self, method: &'static str, path: String, body: Option<Value>) -> Result<Value, CpError> {
        let url = format!("{}{}", self.base, path);
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("static method names are valid");
        let mut req = self.http.request(m, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let unreachable = |source| CpError::Unreachable { url: self.base.clone(), source };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status == 200 {
            Ok(v)
        } else {
            Err(CpError::Refused {
                method,
                path,
                status,
                message: v["error"].as_str().unwrap_or("no error text").to_string(),
            })
        }
    }

    fn wait(&self) -> String {
        format!("wait=true&timeout_ms={}", self.wait_ms)
    }

    /// Creates or updates a function's routing settings, waiting for Envoy's ACK.
    pub async fn put_function(&self, name: &str, concurrency: u32, timeout: Duration) -> Result<(), CpError> {
        let body = json!({"concurrency": concurrency, "timeout_ms": timeout.as_millis() as u64});
        self.call("PUT", format!("/functions/{name}?{}", self.wait()), Some(body)).await.map(drop)
    }

    /// Removes a function (route, cluster, endpoints).
    pub async fn remove_function(&self, name: &str) -> Result<(), CpError> {
        match self.call("DELETE", format!("/functions/{name}?{}", self.wait()), None).await {
            Err(CpError::Refused { status: 404, .. }) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Adds an endpoint and waits until every Envoy routes to it.
    pub async fn add_endpoint(&self, name: &str, address: SocketAddr) -> Result<(), CpError> {
        let body = json!({"address": address.to_string()});
        self.call("POST", format!("/functions/{name}/endpoints?{}", self.wait()), Some(body)).await.map(drop)
    }

    /// Marks an endpoint draining and waits until every Envoy stops sending it new requests.
    pub async fn drain_endpoint(&self, name: &str, address: SocketAddr) -> Result<(), CpError> {
        let path = format!("/functions/{name}/endpoints/{address}/drain?{}", self.wait());
        match self.call("POST", path, None).await {
            Err(CpError::Refused { status: 404, .. }) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Removes an endpoint and waits for Envoy's ACK. An endpoint already gone is fine.
    pub async fn remove_endpoint(&self, name: &str, address: SocketAddr) -> Result<(), CpError> {
        let path = format!("/functions/{name}/endpoints/{address}?{}", self.wait());
        match self.call("DELETE", path, None).await {
            Err(CpError::Refused { status: 404, .. }) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Every function the control plane knows, with its endpoint addresses.
    pub async fn functions(&self) -> Result<Vec<(String, Vec<SocketAddr>)>, CpError> {
        let v = self.call("GET", "/functions".into(), None).await?;
        let mut out = Vec::new();
        if let Some(map) = v["functions"].as_object() {
            for (name, f) in map {
                let eps = f["endpoints"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|e| e["address"].as_str()?.parse().ok()).collect())
                    .unwrap_or_default();
                out.push((name.clone(), eps));
            }
        }
        Ok(out)
    }
}
