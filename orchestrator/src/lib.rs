//! Roost's orchestrator: holds the desired state (function definitions and load) against
//! the actual state (replicas) and reconciles them.
//!
//! # Layout
//!
//! - [`config`]: flags and `ROOST_...` environment variables.
//! - [`definitions`]: watches and diffs `global-function-definition.yml`.
//! - [`deployed`]: functions deployed over the management API, stored in the data directory.
//! - [`supervisor`]: one task per function; routes signals, events and edits; adoption.
//! - [`lifecycle`]: every decision of a function's life (wake, scale, drain, roll over,
//!   crash, removal) as a pure state machine, and the scaling rule.
//! - [`function`]: the executor of a function's state machine: performs its effects.
//! - [`runtime`]: where replicas run (processes or Docker), behind one trait.
//! - [`probe`]: readiness probes.
//! - [`control_plane`]: the control plane's admin API client.
//! - [`envoy_admin`]: per-host in-flight requests from Envoy, to end drains early.
//! - [`redis_io`]: ready flags, load, replica counts, wake and scale signals.
//! - [`context`]: what the function tasks share.
//! - [`metrics`]: the orchestrator's own statsd metrics.
//! - [`logs`]: the replicas' and builds' output, kept in memory for `roost logs`.
//! - [`api`]: the HTTP status, wake and log API.
//! - [`system`]: the management API (`/system/...`: deploy, scale, remove, describe).
//! - [`calls`]: the asynchronous calls' list for the management API, read from Redis.
//! - [`console`]: the web console (`/system/console`), rendered as HTML.
//! - [`shared`]: what the two APIs and the console share (state, errors, asking the
//!   supervisor).

pub(crate) mod api;
pub(crate) mod calls;
pub mod config;
pub(crate) mod console;
pub(crate) mod context;
pub(crate) mod control_plane;
pub(crate) mod definitions;
pub mod deployed;
pub(crate) mod envoy_admin;
pub(crate) mod function;
pub(crate) mod lifecycle;
pub mod logs;
pub(crate) mod metrics;
pub mod probe;
pub(crate) mod redis_io;
pub mod runtime;
pub(crate) mod shared;
pub(crate) mod supervisor;
pub(crate) mod system;

pub use config::{Config, RuntimeKind};

use context::{Ctx, Settings};
use metrics::Metrics;
use roost_common::auth::{self, ApiToken, ControlToken};
use runtime::ReplicaRuntime;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Why the orchestrator could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Redis URL is malformed.
    #[error("invalid Redis URL {0:?}: {1}; use redis://host:port/")]
    RedisUrl(String, redis::RedisError),
    /// The process runtime could not be set up (its state folder).
    #[error("cannot set up the process runtime: {0}; check that --state-dir / ROOST_STATE_DIR is a writable folder")]
    ProcessRuntime(#[source] std::io::Error),
    /// The Docker runtime could not be set up.
    #[error("cannot set up the docker runtime: {0}")]
    DockerRuntime(#[source] runtime::RuntimeError),
    /// The Swarm runtime could not be set up.
    #[error("cannot set up the swarm runtime: {0}")]
    SwarmRuntime(#[source] runtime::RuntimeError),
    /// The data directory cannot be used.
    #[error("cannot use the data directory {0}: {1}; check --data-dir / ROOST_DATA_DIR and that this user may write there")]
    DataDir(std::path::PathBuf, std::io::Error),
    /// The API port could not be bound.
    #[error("cannot listen on {0} for the API: {1}; pick another address with --bind / ROOST_ORCHESTRATOR_BIND")]
    Bind(SocketAddr, std::io::Error),
    /// Metrics setup failed.
    #[error("cannot set up statsd metrics: {0}")]
    Metrics(std::io::Error),
    /// The supervisor stopped on a bug.
    #[error(transparent)]
    Supervisor(#[from] supervisor::SupervisorError),
    /// One of the orchestrator's own tasks panicked.
    #[error("an orchestrator task panicked: {0}")]
    Panicked(String),
    /// The Redis password or the control token could not be read.
    #[error(transparent)]
    Secret(#[from] roost_common::auth::SecretError),
}

/// A started orchestrator.
#[derive(Debug)]
pub struct Running {
    /// Where the HTTP API listens.
    pub api_addr: SocketAddr,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Waits until it has stopped (after `shutdown` is cancelled); an error when a task
    /// of it failed or panicked, so the service exits non-zero.
    pub async fn wait(self) -> Result<(), Error> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(Error::Panicked(e.to_string())),
        }
    }
}

async fn build_runtime(config: &Config) -> Result<Arc<dyn ReplicaRuntime>, Error> {
    let definitions_dir = config
        .definitions
        .parent()
        .map(|p| if p.as_os_str().is_empty() { std::path::Path::new(".") } else { p })
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let definitions_dir = std::fs::canonicalize(&definitions_dir).unwrap_or(definitions_dir);
    let runtime_dir = config.runtime_dir.clone().unwrap_or_else(|| definitions_dir.clone());
    match config.runtime {
        RuntimeKind::Process => {
            let cfg = runtime::process::ProcessConfig {
                definitions_dir,
                runtime_dir,
                python: config.python.clone(),
                state_dir: config.state_dir.clone(),
                bind_ip: "127.0.0.1".parse().expect("literal address"),
                spares: config.process_spares,
                spare_memory: config.spare_memory.0,
            };
            let rt = runtime::process::ProcessRuntime::new(cfg).map_err(Error::ProcessRuntime)?;
            Ok(rt)
        }
        RuntimeKind::Docker => {
            let cfg = runtime::docker::DockerConfig {
                socket: config.docker_socket.clone(),
                base_image: config.base_image.clone(),
                network: config.docker_network.clone(),
                port: 8080,
                definitions_dir,
                runtime_dir,
                warm_spares: config.docker_warm_spares,
                spare_memory: config.spare_memory.0,
                recycle: config.recycle_replicas,
            };
            let rt = runtime::docker::DockerRuntime::connect(cfg).await.map_err(Error::DockerRuntime)?;
            Ok(rt)
        }
        RuntimeKind::Swarm => {
            let cfg = runtime::swarm::SwarmConfig {
                socket: config.docker_socket.clone(),
                base_image: config.base_image.clone(),
                network: config.docker_network.clone(),
                port: 8080,
                definitions_dir,
                runtime_dir,
                stop_grace: Duration::from_millis(config.stop_grace_ms),
                constraints: config.swarm_constraints.0.clone(),
                spare_memory: config.spare_memory.0,
            };
            let rt = runtime::swarm::SwarmRuntime::connect(cfg).await.map_err(Error::SwarmRuntime)?;
            Ok(rt)
        }
    }
}

/// Starts the orchestrator: its runtime, Redis connections, definitions watcher,
/// supervisor and API. Returns once the API listens.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    let runtime = build_runtime(&config).await?;
    start_with_runtime(config, runtime, shutdown).await
}

/// Like [`start`], with a runtime of the caller's (tests use an in-process one).
pub async fn start_with_runtime(config: Config, runtime: Arc<dyn ReplicaRuntime>, shutdown: CancellationToken) -> Result<Running, Error> {
    let token = ControlToken::configured(config.control_token.as_deref(), config.control_token_file.as_deref())?;
    let redis_url = auth::redis_url_with_password_file(&config.redis_url, config.redis_password_file.as_deref())?;
    let client = redis::Client::open(redis_url.as_str()).map_err(|e| Error::RedisUrl(config.redis_url.clone(), e))?;
    let listener = tokio::net::TcpListener::bind(config.bind).await.map_err(|e| Error::Bind(config.bind, e))?;
    let api_addr = listener.local_addr().map_err(|e| Error::Bind(config.bind, e))?;
    let metrics = Metrics::new(config.statsd_addr.as_deref()).map_err(Error::Metrics)?;
    let (sig_tx, signals) = mpsc::channel(supervisor::QUEUE);
    let (read_tx, readings) = mpsc::channel(supervisor::QUEUE);
    let (req_tx, requests) = mpsc::channel(supervisor::QUEUE);
    let events = runtime.events();
    let path = config.definitions.clone();
    let (initial, seen) = definitions::read_seen(&path);
    let health = Arc::new(api::Health::default());
    let (store, api_token) = match &config.data_dir {
        Some(dir) => {
            let store = deployed::store::Store::open(dir).map_err(|e| Error::DataDir(dir.clone(), e))?;
            (Some(store), Some(ApiToken::load_or_create(config.api_token.as_deref(), dir)?))
        }
        None => (None, config.api_token.as_deref().filter(|t| !t.is_empty()).map(ApiToken::new).transpose()?),
    };
    let stored = store.as_ref().map(deployed::store::Store::load).unwrap_or_default();
    // What calls of `auth: token` functions carry: the API token; without one, a random
    // token nobody holds (such functions refuse every call rather than go public).
    let call_token = match &api_token {
        Some(t) => t.clone(),
        None => {
            warn!(
                "no API token: functions with `auth: token` refuse every call; set {} or {}",
                roost_common::env::DATA_DIR,
                roost_common::env::API_TOKEN
            );
            ApiToken::random().map_err(|e| Error::DataDir(std::path::PathBuf::from("/dev/urandom"), e))?
        }
    };
    let state = api::Api::new(
        req_tx,
        health.clone(),
        runtime.logs(),
        shutdown.clone(),
        shared::deploys(store, config.deploy_max_body, config.metrics_url.clone(), api_token.clone()),
    );
    state.deploys.calls.use_redis(&client);
    let mut routes = auth::guard(api::router(state.clone()), token.clone(), "orchestrator");
    match api_token {
        Some(t) => routes = routes.merge(auth::guard_api(system::router(state), t)),
        None => warn!("no data directory and no API token: the management API (/system/...) is off; set {}", roost_common::env::DATA_DIR),
    }
    let api = axum::serve(listener, routes).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    info!(%api_addr, runtime = runtime.kind(), definitions = %path.display(), "orchestrator starting");
    // Every task the orchestrator starts is owned here, and ended (or awaited) on shutdown.
    let mut tasks = JoinSet::new();
    tasks.spawn(definitions::watch(path.clone(), seen, Duration::from_millis(config.reload_interval_ms), read_tx, shutdown.clone()));
    tasks.spawn(redis_io::listen(client.clone(), sig_tx, shutdown.clone()));
    tasks.spawn(metrics.clone().keep_looking_up(shutdown.clone()));
    tasks.spawn(async move {
        if let Err(e) = api.await {
            warn!(error = %e, "the API server stopped");
        }
    });
    let task = tokio::spawn(async move {
        let Some(redis) = redis_io::RedisIo::connect(&client, &shutdown).await else {
            return join_all(tasks).await;
        };
        if health.redis.set(redis.clone()).is_err() {
            debug!("Redis was already set for /healthz");
        }
        let ctx = Arc::new(Ctx {
            logs: runtime.logs(),
            runtime,
            cp: control_plane::ControlPlane::new(
                &config.control_plane_url,
                Duration::from_millis(config.sync_timeout_ms),
                token.as_ref(),
                call_token,
            ),
            redis,
            envoy: envoy_admin::EnvoyAdmin::new(config.envoy_admin_url.clone(), token.as_ref()),
            metrics,
            settings: Settings {
                probe_interval: Duration::from_millis(config.probe_interval_ms),
                stop_grace: Duration::from_millis(config.stop_grace_ms),
            },
        });
        let inputs = supervisor::Inputs { readings, signals, events, requests };
        let opts = supervisor::Options {
            definitions_path: path.display().to_string(),
            tick: Duration::from_millis(config.tick_ms),
            drain_limit: Duration::from_millis(config.stop_grace_ms) + Duration::from_secs(10),
        };
        let supervised = supervisor::run(ctx, initial, stored, inputs, opts, health.supervisor.clone(), shutdown.clone()).await;
        // A supervisor that stopped on a bug takes the rest down with it.
        shutdown.cancel();
        let joined = join_all(tasks).await;
        info!("orchestrator stopped");
        supervised?;
        joined
    });
    Ok(Running { api_addr, task })
}

/// Waits for every task in `tasks`; the first panic is the error.
async fn join_all(mut tasks: JoinSet<()>) -> Result<(), Error> {
    let mut outcome = Ok(());
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            if e.is_panic() && outcome.is_ok() {
                outcome = Err(Error::Panicked(e.to_string()));
            }
        }
    }
    outcome
}
