//! Roost's statsd listener: sees, per function and within a second, the requests in
//! flight, the requests queued inside Envoy and when the last request started; writes
//! that load to Redis and signals scale-ups the moment a function queues.
//!
//! # Layout
//!
//! - [`parser`]: the statsd / DogStatsD line format, a pure function.
//! - [`aggregate`]: per-function load from Envoy's cluster stats (declared functions
//!   only, gauges that expire), and the scale-up rule.
//! - [`allow`]: which senders are believed (`ROOST_STATSD_ALLOWED_SOURCES`).
//! - [`refresh`]: the declared functions and the allowed addresses, kept fresh.
//! - [`server`]: the receive loop (statsd datagrams, and Envoy's metrics messages).
//! - [`envoy`]: Envoy's metrics over gRPC (its MetricsService sink), from allowed
//!   sources only.
//! - [`sink`]: writing to Redis, reconnecting, bounded while Redis is away.
//! - [`series`]: the platform's Prometheus series (calls by code, durations, cold
//!   starts, replicas), under Roost's and OpenFaaS's names.
//! - [`metrics`]: `/metrics` in Prometheus text format.
//! - [`config`]: flags and `ROOST_...` variables.

pub mod aggregate;
pub mod allow;
pub mod config;
pub mod envoy;
pub mod metrics;
pub mod parser;
pub mod refresh;
pub mod series;
pub mod server;
pub mod sink;

pub use config::Config;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One of its tasks panicked (a bug).
    #[error("a statsd-listener task panicked: {0}")]
    Panicked(String),
    /// A socket could not be bound.
    #[error("cannot listen on {addr} for {what}: {source}; pick another address with {flag}")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// Address.
        addr: SocketAddr,
        /// The flag that sets it.
        flag: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The Redis URL is malformed.
    #[error("invalid Redis URL {0:?}: {1}; use redis://host:port/")]
    RedisUrl(String, redis::RedisError),
    /// Entries of the allow-list are malformed (every one listed).
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    AllowedSources(Vec<allow::SourceError>),
    /// Redis's password file could not be read.
    #[error(transparent)]
    Secret(#[from] roost_common::auth::SecretError),
}

/// A started listener.
#[derive(Debug)]
pub struct Running {
    /// The UDP address it receives statsd on; Envoy's metrics (gRPC) come over TCP to
    /// the same address and port.
    pub udp_addr: SocketAddr,
    /// The `/metrics` address.
    pub metrics_addr: SocketAddr,
    /// Its counters.
    pub stats: Arc<metrics::Stats>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Waits until it has stopped (after `shutdown`); an error when one of its tasks
    /// panicked, so the service exits non-zero.
    pub async fn wait(self) -> Result<(), Error> {
        self.task.await.map_err(|e| Error::Panicked(e.to_string()))?
    }
}

/// Binds statsd (UDP) and Envoy's metrics (gRPC, TCP) on the same port. Port 0: the
/// system's choice for UDP, and TCP on the same number, tried again with another when
/// that one is taken for TCP (an outgoing connection may hold it).
async fn bind_statsd(addr: SocketAddr) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener), Error> {
    let failed = |what, addr, source| Error::Bind { what, addr, flag: "--bind / ROOST_STATSD_BIND", source };
    let mut tries = 0;
    loop {
        let udp = tokio::net::UdpSocket::bind(addr).await.map_err(|e| failed("statsd (UDP)", addr, e))?;
        let bound = udp.local_addr().map_err(|e| failed("statsd (UDP)", addr, e))?;
        match tokio::net::TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse && tries < 100 => tries += 1,
            Err(e) => return Err(failed("Envoy's metrics (gRPC over TCP)", bound, e)),
        }
    }
}

/// Binds the sockets and starts receiving.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    let redis_url = roost_common::auth::redis_url_with_password_file(&config.redis_url, config.redis_password_file.as_deref())?;
    let client = redis::Client::open(redis_url.as_str()).map_err(|e| Error::RedisUrl(config.redis_url.clone(), e))?;
    let sources = allow::parse_sources(&config.allowed_sources).map_err(Error::AllowedSources)?;
    if config.allowed_sources.is_empty() {
        info!(variable = roost_common::env::STATSD_ALLOWED_SOURCES, "no allowed statsd sources set: believing loopback senders only");
    }
    // Resolve the host names and read the declared functions before receiving, so the
    // first datagrams are judged against both; neither blocks start for long.
    // (A name that does not resolve yet is warned about by the resolver task.)
    let (resolved, _) = refresh::resolve_all(&allow::host_names(&sources)).await;
    let (allow_tx, allow_rx) = tokio::sync::watch::channel(Arc::new(allow::AllowList::build(&sources, &resolved)));
    let mut declared_conn = None;
    let (declared, declared_failing) = match refresh::read_declared(&client, &mut declared_conn).await {
        Ok(set) => (set, false),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the declared functions (roost:functions) yet; dropping every metric until it can");
            (Default::default(), true)
        }
    };
    let (declared_tx, declared_rx) = tokio::sync::watch::channel(Arc::new(declared));
    let (socket, tcp_listener) = bind_statsd(config.bind).await?;
    server::grow_receive_buffer(&socket, 8 << 20);
    let udp_addr = socket.local_addr().expect("bound socket has an address");
    let listener = tokio::net::TcpListener::bind(config.metrics_bind).await.map_err(|source| Error::Bind {
        what: "/metrics",
        addr: config.metrics_bind,
        flag: "--metrics-bind / ROOST_METRICS_BIND",
        source,
    })?;
    let metrics_addr = listener.local_addr().expect("bound socket has an address");
    let stats = Arc::new(metrics::Stats::default());
    let sink = Arc::new(sink::Sink::default());
    let s = stats.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let s = s.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], metrics::render(&s)) }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    let http = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    info!(%udp_addr, %metrics_addr, "statsd listener receiving");
    let flush = Duration::from_millis(config.flush_interval_ms);
    let refused = Arc::new(tokio::sync::Notify::new());
    let unknown = Arc::new(tokio::sync::Notify::new());
    let (envoy_tx, envoy_rx) = tokio::sync::mpsc::channel(envoy::CHANNEL_MESSAGES);
    let grpc = envoy::serve(tcp_listener, allow_rx.clone(), stats.clone(), envoy_tx, shutdown.clone());
    let inputs = server::Inputs {
        allow: allow_rx,
        declared: declared_rx,
        refused: refused.clone(),
        unknown: unknown.clone(),
        flush_every: flush,
        gauge_ttl_ms: config.gauge_ttl_ms,
        envoy: envoy_rx,
    };
    let (st, sk, sd) = (stats.clone(), sink.clone(), shutdown.clone());
    let task = tokio::spawn(async move {
        let writer = tokio::spawn(sink::run(sk.clone(), client.clone(), st.clone(), sd.clone()));
        let functions =
            tokio::spawn(refresh::declared(client, declared_conn, declared_failing, declared_tx, st.clone(), unknown, sd.clone()));
        let resolver = tokio::spawn(refresh::resolver(sources, allow_tx, refused, sd.clone()));
        let http = tokio::spawn(std::future::IntoFuture::into_future(http));
        let grpc = tokio::spawn(grpc);
        server::run(socket, sk, st, inputs, sd).await;
        for t in [functions, resolver] {
            t.await.map_err(|e| Error::Panicked(e.to_string()))?;
        }
        let writer = writer.await.map_err(|e| Error::Panicked(e.to_string()));
        if let Err(e) = grpc.await.map_err(|e| Error::Panicked(e.to_string()))? {
            tracing::warn!(error = %e, "Envoy's metrics service stopped with an error");
        }
        let served = http.await.map_err(|e| Error::Panicked(e.to_string()))?;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics server stopped with an error");
        }
        info!("statsd listener stopped");
        writer
    });
    Ok(Running { udp_addr, metrics_addr, stats, task })
}
