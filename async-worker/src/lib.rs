//! Roost's async worker: asynchronous calls (`/async/<function>`) stored in Redis Streams
//! before they are answered 202, delivered through the platform with retries, kept with
//! their results, sent to callbacks, and failed ones kept as dead letters.
//!
//! - [`intake`]: the HTTP server (submit, a call's status, `/healthz`);
//! - [`dispatch`]: the delivery loop, carrying out [`plan`]'s decisions;
//! - [`deliver`]: one attempt through the platform's public entry;
//! - [`callback`]: the callback allow-list and the loop that sends results;
//! - [`store`]: everything kept in Redis; [`settings`]: each function's settings;
//! - [`metrics`]: statsd to the statsd-listener; [`config`]: flags and `ROOST_` variables.

pub mod callback;
pub mod config;
pub mod deliver;
pub mod dispatch;
pub mod intake;
pub mod metrics;
pub mod plan;
pub mod settings;
pub mod store;

pub use config::Config;

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long one Redis command may wait for its answer.
const REDIS_RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the worker cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Its address is taken or not allowed.
    #[error("cannot listen on {addr} (--bind / ROOST_ASYNC_BIND): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The Redis URL is not valid.
    #[error("the Redis URL is not valid (ROOST_REDIS_URL): {0}")]
    RedisUrl(redis::RedisError),
    /// Redis's password file.
    #[error(transparent)]
    Secret(#[from] roost_common::auth::SecretError),
    /// The callback allow-list.
    #[error("ROOST_ASYNC_CALLBACK_HOSTS: {0}; give host or host:port entries, comma-separated")]
    CallbackHosts(String),
    /// The HTTP client or the metrics socket.
    #[error("cannot set up {what}: {message}")]
    Setup {
        /// What.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// A task panicked.
    #[error("a task of the async worker panicked: {0}")]
    Panicked(String),
}

/// The running worker.
#[derive(Debug)]
pub struct Running {
    /// The HTTP server's address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Waits until it has stopped (after `shutdown`).
    pub async fn wait(self) -> Result<(), Error> {
        self.task.await.map_err(|e| Error::Panicked(e.to_string()))?
    }
}

/// Starts the worker: binds, connects to Redis (retrying until it answers), then serves
/// and delivers until `shutdown`.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    let url = roost_common::auth::redis_url_with_password_file(&config.redis_url, config.redis_password_file.as_deref())?;
    let client = redis::Client::open(url).map_err(Error::RedisUrl)?;
    let allowed = Arc::new(callback::Allowed::parse(&config.callback_hosts).map_err(Error::CallbackHosts)?);
    let metrics = metrics::Metrics::new(config.statsd_addr.as_deref())
        .map_err(|e| Error::Setup { what: "the metrics socket", message: e.to_string() })?;
    // Deliveries wait as long as a function may take; the client's own limit is per call.
    let http = reqwest::Client::builder()
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| Error::Setup { what: "the HTTP client", message: e.to_string() })?;
    let listener = tokio::net::TcpListener::bind(config.bind).await.map_err(|source| Error::Bind { addr: config.bind, source })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.bind, source })?;
    tracing::info!(%addr, public = %config.public_url, "async worker listening");

    let task = tokio::spawn(async move {
        let Some(conn) = roost_common::reconnect::connect(&client, REDIS_RESPONSE_TIMEOUT, &shutdown).await else { return Ok(()) };
        let store = store::Store::new(conn);
        let settings = Arc::new(settings::SettingsCache::default());
        let callbacks_due = Arc::new(Notify::new());
        let (submitted_tx, submitted_rx) = mpsc::channel(4096);
        let intake = intake::Intake {
            store: store.clone(),
            settings: settings.clone(),
            allowed: allowed.clone(),
            max_body: config.max_body,
            submitted: submitted_tx,
            metrics: metrics.clone(),
        };
        let dispatcher = dispatch::Dispatcher {
            store: store.clone(),
            http: http.clone(),
            public: config.public_url.clone(),
            consumer: config.consumer.clone(),
            keep_s: config.keep_s,
            max_body: config.max_body,
            settings,
            metrics: metrics.clone(),
            callbacks: callbacks_due.clone(),
        };
        let callbacks =
            callback::Callbacks { store, http, allowed, retries: config.callback_retries, keep_s: config.keep_s, wake: callbacks_due };

        let mut tasks = JoinSet::new();
        tasks.spawn(dispatcher.run(submitted_rx, shutdown.clone()));
        tasks.spawn(callbacks.run(shutdown.clone()));
        tasks.spawn(metrics.keep_looking_up(shutdown.clone()));
        let server_shutdown = shutdown.clone();
        tasks.spawn(async move {
            let served = axum::serve(listener, intake::router(intake)).with_graceful_shutdown(server_shutdown.cancelled_owned()).await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the HTTP server stopped");
            }
        });
        let mut result = Ok(());
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                shutdown.cancel();
                result = Err(Error::Panicked(e.to_string()));
            }
        }
        result
    });
    Ok(Running { addr, task })
}
