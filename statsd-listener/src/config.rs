//! The listener's configuration: flags, each also read from a `ROOST_...` variable.

use roost_common::env;
use roost_common::telemetry::LogFormat;
use std::net::SocketAddr;

/// Roost's statsd listener.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "statsd-listener",
    version,
    about = "Roost's statsd listener: reads Envoy's statsd, sees queueing and idleness per function, writes the load to Redis and signals scale-ups."
)]
pub struct Config {
    /// Address statsd is received on over UDP (Roost's own metrics), and Envoy's metrics
    /// service (gRPC) over TCP on the same port.
    #[arg(long, env = env::STATSD_BIND, default_value = "0.0.0.0:8125")]
    pub bind: SocketAddr,

    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long, env = env::METRICS_BIND, default_value = "0.0.0.0:9102")]
    pub metrics_bind: SocketAddr,

    /// Redis URL the load is written to.
    #[arg(long, env = env::REDIS_URL, default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,

    /// A file holding Redis's password, put into --redis-url (compose's secrets volume).
    #[arg(long, env = env::REDIS_PASSWORD_FILE)]
    pub redis_password_file: Option<std::path::PathBuf>,

    /// How often each function's load is written to Redis, in milliseconds (queueing is
    /// written and signalled at once).
    #[arg(long, env = env::FLUSH_INTERVAL_MS, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub flush_interval_ms: u64,

    /// Senders whose datagrams are believed, comma-separated: IPs, CIDRs (`10.0.0.0/8`),
    /// host names (resolved at start and every 10 s) or `*` for anyone. Unset: loopback
    /// only (127.0.0.0/8, ::1); datagrams from elsewhere are counted and dropped.
    #[arg(long, env = env::STATSD_ALLOWED_SOURCES, value_delimiter = ',')]
    pub allowed_sources: Vec<String>,

    /// How long an in-flight or pending gauge counts without a fresh reading, in
    /// milliseconds; then it counts as zero (Envoy repeats gauges every stats flush).
    #[arg(long, env = env::STATSD_GAUGE_TTL_MS, default_value_t = crate::aggregate::DEFAULT_GAUGE_TTL_MS, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub gauge_ttl_ms: u64,

    /// Log format: text or json.
    #[arg(long, env = env::LOG_FORMAT, default_value = "text")]
    pub log_format: LogFormat,
}
