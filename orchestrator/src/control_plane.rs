//! Client of the control plane's admin API: declare functions, and add, drain and remove
//! endpoints, each of the latter waiting until every Envoy has ACKed the change. The
//! bodies and answers are [`roost_common::wire::admin`]'s, the same types the control
//! plane serves. At most [`MAX_IN_FLIGHT`] calls are under way at once, however many
//! functions call at the same moment (ten thousand declaring themselves at a start).

use crate::lifecycle::adoption;
use reqwest::Method;
use roost_common::auth::{ApiToken, ControlToken};
use roost_common::spec::FunctionSpec;
use roost_common::wire::admin::{ApiError, Change, Functions, NewEndpoint, WaitQuery};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Calls to the control plane under way at once (each its own connection); the rest wait
/// their turn here rather than open a connection each.
pub const MAX_IN_FLIGHT: usize = 64;

/// Why a control-plane call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
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
        method: Method,
        /// Path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The `error` text it gave.
        message: String,
    },
    /// The control plane answered 200 with a body that is not what its API promises.
    #[error("control plane {method} {path} answered with an unreadable body: {source}")]
    Unreadable {
        /// HTTP method.
        method: Method,
        /// Path.
        path: String,
        /// The decoding error.
        source: reqwest::Error,
    },
}

/// What the control plane routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routed {
    /// Its model is known to describe what runs; until the orchestrator confirms one, a
    /// control plane that started without a saved model holds Envoy's streams.
    pub confirmed: bool,
    /// Functions and their endpoint addresses.
    pub functions: Vec<(String, Vec<SocketAddr>)>,
}

/// The admin API client.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    base: String,
    http: reqwest::Client,
    wait_ms: u64,
    in_flight: Arc<Semaphore>,
    /// The token calls of an `auth: token` function must carry.
    call_token: ApiToken,
}

impl ControlPlane {
    /// A client for the admin API at `base` (for example `http://127.0.0.1:18001`);
    /// changes wait up to `wait` for Envoy's ACK; every request carries `token` when given.
    /// Calls of `auth: token` functions must carry `call_token` (the API token).
    pub fn new(base: &str, wait: Duration, token: Option<&ControlToken>, call_token: ApiToken) -> ControlPlane {
        let http = reqwest::Client::builder()
            .default_headers(token.map(ControlToken::headers).unwrap_or_default())
            .timeout(wait + Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client always builds");
        ControlPlane {
            base: base.trim_end_matches('/').to_string(),
            http,
            wait_ms: wait.as_millis() as u64,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            call_token,
        }
    }

    /// The change that declares `spec` to the control plane (see [`adoption::declaration`]).
    pub fn declaration(&self, spec: &FunctionSpec) -> Change {
        adoption::declaration(spec, &self.call_token)
    }

    /// Sends one request; the answer when it is 200, its `error` text otherwise.
    async fn send(
        &self,
        method: Method,
        path: String,
        query: Option<WaitQuery>,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<reqwest::Response, ControlPlaneError> {
        let mut req = self.http.request(method.clone(), format!("{}{}", self.base, path));
        if let Some(q) = query {
            req = req.query(&q);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let _permit = self.in_flight.acquire().await.expect("the semaphore is never closed");
        let resp = req.send().await.map_err(|source| ControlPlaneError::Unreachable { url: self.base.clone(), source })?;
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(resp);
        }
        // The error text is what the caller needs; a body that does not carry one (a
        // proxy's page, a cut connection) is reported as such.
        let message = match resp.json::<ApiError>().await {
            Ok(e) => e.error,
            Err(_) => "no error text".to_string(),
        };
        Err(ControlPlaneError::Refused { method, path, status, message })
    }

    /// A change, waiting for Envoy's ACK; the answer's body is not needed.
    async fn change(&self, method: Method, path: String, body: Option<&(impl Serialize + ?Sized)>) -> Result<(), ControlPlaneError> {
        self.send(method, path, Some(WaitQuery::until_acked(self.wait_ms)), body).await.map(drop)
    }

    /// A read, decoded as its API type.
    async fn read<T: DeserializeOwned>(&self, path: &str) -> Result<T, ControlPlaneError> {
        let resp = self.send(Method::GET, path.to_string(), None, None::<&()>).await?;
        resp.json().await.map_err(|source| ControlPlaneError::Unreadable { method: Method::GET, path: path.to_string(), source })
    }

    /// Creates or updates a function's routing settings, without waiting for Envoy: a
    /// function without replicas is not in Envoy at all, and the settings of one with
    /// replicas reach Envoy before the next endpoint change's ACK (which every start waits
    /// for). Waiting here would hold each of thousands of declarations for the ACK of a
    /// change that sends Envoy nothing.
    pub async fn put_function(&self, spec: &FunctionSpec) -> Result<(), ControlPlaneError> {
        let body = adoption::settings(spec, &self.call_token);
        self.send(Method::PUT, format!("/functions/{}", spec.name), Some(WaitQuery::at_once()), Some(&body)).await.map(drop)
    }

    /// Tells the control plane the function's first replica is starting, so its cluster
    /// reaches Envoy while the replica starts; does not wait for Envoy (the
    /// registration's ACK covers it).
    pub async fn waking(&self, name: &str) -> Result<(), ControlPlaneError> {
        self.send(Method::POST, format!("/functions/{name}/waking"), Some(WaitQuery::at_once()), None::<&()>).await.map(drop)
    }

    /// Gates the function (its requests go through the gate even while it has a serving
    /// replica) or ungates it; does not wait for Envoy (either route serves the request).
    pub async fn gated(&self, name: &str, gated: bool) -> Result<(), ControlPlaneError> {
        let method = if gated { Method::POST } else { Method::DELETE };
        self.send(method, format!("/functions/{name}/gated"), Some(WaitQuery::at_once()), None::<&()>).await.map(drop)
    }

    /// Removes a function (route, cluster, endpoints).
    pub async fn remove_function(&self, name: &str) -> Result<(), ControlPlaneError> {
        gone_is_fine(self.change(Method::DELETE, format!("/functions/{name}"), None::<&()>).await)
    }

    /// Adds an endpoint and waits until every Envoy routes to it.
    pub async fn add_endpoint(&self, name: &str, address: SocketAddr) -> Result<(), ControlPlaneError> {
        let body = NewEndpoint { address: address.to_string() };
        self.change(Method::POST, format!("/functions/{name}/endpoints"), Some(&body)).await
    }

    /// Marks an endpoint draining and waits until every Envoy stops sending it new requests.
    pub async fn drain_endpoint(&self, name: &str, address: SocketAddr) -> Result<(), ControlPlaneError> {
        let path = format!("/functions/{name}/endpoints/{address}/drain");
        gone_is_fine(self.change(Method::POST, path, None::<&()>).await)
    }

    /// Removes an endpoint and waits for Envoy's ACK. An endpoint already gone is fine.
    pub async fn remove_endpoint(&self, name: &str, address: SocketAddr) -> Result<(), ControlPlaneError> {
        let path = format!("/functions/{name}/endpoints/{address}");
        gone_is_fine(self.change(Method::DELETE, path, None::<&()>).await)
    }

    /// Every function the control plane knows, with its endpoint addresses, and whether
    /// its model is confirmed.
    pub async fn functions(&self) -> Result<Routed, ControlPlaneError> {
        let listing: Functions = self.read("/functions").await?;
        let functions =
            listing.functions.into_iter().map(|(name, f)| (name, f.endpoints.into_iter().map(|e| e.address).collect())).collect();
        Ok(Routed { confirmed: listing.confirmed, functions })
    }

    /// Hands over everything the orchestrator runs to a control plane that has no
    /// confirmed model (it started without a saved one), waiting for Envoy's ACK.
    pub async fn confirm(&self, changes: &[Change]) -> Result<(), ControlPlaneError> {
        self.change(Method::POST, "/confirm".to_string(), Some(changes)).await
    }
}

/// A removal of something the control plane no longer has (404) has done its job.
fn gone_is_fine(r: Result<(), ControlPlaneError>) -> Result<(), ControlPlaneError> {
    match r {
        Err(ControlPlaneError::Refused { status: 404, .. }) => Ok(()),
        other => other,
    }
}
