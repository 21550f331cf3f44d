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
    /// UDP address statsd is received on (Envoy's statsd sink, Roost's own metrics).
    #[arg(long, env = env::STATSD_BIND, default_value = "0.0.0.0:8125")]
    pub bind: SocketAddr,

    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long, env = env::METRICS_BIND, default_value = "0.0.0.0:9102")]
    pub metrics_bind: SocketAddr,

    /// Redis URL the load is written to.
    #[arg(long, env = env::REDIS_URL, default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,

    /// How often each function's load is written to Redis, in milliseconds (queueing is
    /// written and signalled at once).
    #[arg(long, env = env::FLUSH_INTERVAL_MS, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub flush_interval_ms: u64,

    /// Log format: text or json.
    #[arg(long, env = env::LOG_FORMAT, default_value = "text")]
    pub log_format: LogFormat,
}
