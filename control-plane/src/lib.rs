//! Roost's control plane: Envoy's whole routing configuration, served over xDS.
//!
//! # Layout
//!
//! - [`model`]: the desired state (functions, settings, endpoints) and validated,
//!   all-or-nothing changes to it.
//! - [`resources`]: the model as Envoy resources (clusters, assignments, listener,
//!   routes), versioned by content hash.
//! - [`ads`]: the per-stream ADS protocol, SotW and delta, as pure state machines.
//! - [`store`]: the single writer that applies changes and publishes snapshots.
//! - [`registry`]: connected Envoys, their ACKs and NACKs, and waiting for sync.
//! - [`xds`]: the tonic gRPC service running one task per Envoy stream.
//! - [`admin`]: the HTTP/JSON admin API.
//! - [`persist`]: the model saved in Redis, restored on start.
//! - [`config`]: flags and `ROOST_...` environment variables.
//!
//! [`start`] binds both servers and returns their addresses; [`run`] waits for them.

pub mod admin;
pub mod ads;
pub mod config;
pub mod model;
pub mod persist;
pub mod registry;
pub mod resources;
pub mod store;
pub mod xds;

pub use config::Config;

use roost_common::auth::{self, ControlToken};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Why the control plane could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A port could not be bound.
    #[error("cannot listen on {addr} for the {what}: {source}; pick another address with {flag}")]
    Bind {
        /// Which server.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The flag that sets it.
        flag: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The saved state could not be loaded.
    #[error(transparent)]
    State(#[from] persist::PersistError),
    /// The gRPC server failed.
    #[error("the xDS server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// One of its tasks panicked (a bug).
    #[error("a control-plane task panicked: {0}")]
    Panicked(String),
    /// The admin server failed.
    #[error("the admin API server failed: {0}")]
    Admin(std::io::Error),
    /// The Redis password or the control token could not be read.
    #[error(transparent)]
    Secret(#[from] roost_common::auth::SecretError),
}

/// A started control plane.
#[derive(Debug)]
pub struct Running {
    /// Where the ADS server listens.
    pub xds_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// The model (tests use it to publish odd snapshots).
    pub store: Arc<store::Store>,
    /// The connected Envoys.
    pub registry: Arc<registry::Registry>,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Waits until both servers have stopped (after `shutdown` is cancelled); an error
    /// when one of them failed or panicked, so the service exits non-zero.
    pub async fn wait(self) -> Result<(), Error> {
        self.task.await.map_err(|e| Error::Panicked(e.to_string()))?
    }
}

/// Restores the saved state (when Redis is configured), binds both servers and starts
/// serving. Nothing is served to Envoy before the state is restored.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    let token = ControlToken::configured(config.control_token.as_deref(), config.control_token_file.as_deref())?;
    let redis_url =
        config.redis_url.as_deref().map(|u| auth::redis_url_with_password_file(u, config.redis_password_file.as_deref())).transpose()?;
    let (state_store, model) = match &redis_url {
        Some(url) => {
            let wait = Duration::from_secs(config.redis_startup_timeout_s);
            let (s, m) = persist::StateStore::connect_and_load(url, wait, &shutdown).await?;
            (Some(s), m)
        }
        // No Redis, no memory: nothing to restore, and nothing to wait for.
        None => (None, Some(model::Model::default())),
    };
    // Without a saved model the control plane does not know what runs: it holds Envoy's
    // streams (Envoy keeps what it has) until the orchestrator confirms a model.
    let confirmed = model.is_some();
    roost_common::env::warn_deprecated("control-plane");
    let listener = config.listener();
    let settings = resources::BuildSettings {
        listener_address: listener.ip().to_string(),
        listener_port: listener.port(),
        connect_timeout_ms: config.connect_timeout_ms,
        num_retries: config.retries,
        public: config.public_entry(),
    };
    let store = Arc::new(store::Store::new(model.unwrap_or_default(), settings, confirmed));
    let registry = Arc::new(registry::Registry::default());

    let bind = |what, addr, flag| async move { TcpListener::bind(addr).await.map_err(|source| Error::Bind { what, addr, flag, source }) };
    let xds_listener = bind("xDS server", config.xds_bind, "--xds-bind / ROOST_XDS_BIND").await?;
    let admin_listener = bind("admin API", config.admin_bind, "--admin-bind / ROOST_ADMIN_BIND").await?;
    let xds_addr = xds_listener.local_addr().map_err(Error::Admin)?;
    let admin_addr = admin_listener.local_addr().map_err(Error::Admin)?;

    let xds = xds::XdsServer::new(store.snapshots(), store.confirmed(), registry.clone(), shutdown.clone());
    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(xds.into_service())
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(xds_listener), shutdown.clone().cancelled_owned());
    let admin_state = admin::AdminState {
        store: store.clone(),
        registry: registry.clone(),
        min_envoys: config.min_envoys,
        sync_timeout: Duration::from_millis(config.sync_timeout_ms),
    };
    let admin = axum::serve(admin_listener, auth::guard(admin::router(admin_state), token, "control-plane admin"))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let persister = state_store.map(|s| tokio::spawn(s.run(store.clone(), store.confirmed(), shutdown.clone())));
    info!(%xds_addr, %admin_addr, %listener, "control plane serving");

    let task = tokio::spawn(async move {
        let (g, a) = tokio::join!(grpc, admin);
        if let Some(p) = persister {
            p.await.map_err(|e| Error::Panicked(e.to_string()))?;
        }
        g?;
        a.map_err(Error::Admin)?;
        info!("control plane stopped");
        Ok(())
    });
    Ok(Running { xds_addr, admin_addr, store, registry, task })
}

/// Starts the control plane and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    start(config, shutdown).await?.wait().await
}
