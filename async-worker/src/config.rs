//! The worker's configuration: flags, each also read from a `ROOST_...` variable.

use roost_common::env;
use roost_common::telemetry::LogFormat;
use std::net::SocketAddr;

/// Roost's async worker.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "async-worker",
    version,
    about = "Roost's async worker: takes asynchronous calls into Redis Streams and delivers each through the platform, with retries, dead letters, results and callbacks."
)]
pub struct Config {
    /// Address of its HTTP server: `/async/<function>` (submit), `/async/calls/<id>`
    /// (status), `/healthz`.
    #[arg(long, env = env::ASYNC_BIND, default_value = "0.0.0.0:8090")]
    pub bind: SocketAddr,

    /// The platform's public entry, through which calls are delivered (so a sleeping
    /// function wakes, and its limits and scaling apply).
    #[arg(long, env = env::PUBLIC_URL, default_value = "http://127.0.0.1:8080")]
    pub public_url: reqwest::Url,

    /// Redis URL (the AOF-backed Redis the platform shares).
    #[arg(long, env = env::REDIS_URL, default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,

    /// A file holding Redis's password, put into --redis-url (compose's secrets volume).
    #[arg(long, env = env::REDIS_PASSWORD_FILE)]
    pub redis_password_file: Option<std::path::PathBuf>,

    /// How long a done or failed call's status and result are kept, in seconds.
    #[arg(long, env = env::ASYNC_KEEP_S, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub keep_s: u64,

    /// Hosts an `X-Callback-Url` may name, comma-separated: `host` (any port) or
    /// `host:port`. Unset: a submit with a callback is refused (400), so no caller can make
    /// the platform reach an address the operator did not name.
    #[arg(long, env = env::ASYNC_CALLBACK_HOSTS, value_delimiter = ',')]
    pub callback_hosts: Vec<String>,

    /// Attempts after the first of a callback that failed (no answer, or not 2xx), with a
    /// back-off doubling from one second.
    #[arg(long, env = env::ASYNC_CALLBACK_RETRIES, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=50))]
    pub callback_retries: u32,

    /// The largest request body taken, as the gate's limit (bytes, or 64k, 10m).
    #[arg(long, env = env::GATE_MAX_BODY, default_value = "10m", value_parser = parse_size)]
    pub max_body: u64,

    /// This worker's name in the queues' consumer group. One worker serves a platform: at
    /// start it takes over every call left in delivery by any earlier one.
    #[arg(long, env = env::ASYNC_CONSUMER, default_value = "worker")]
    pub consumer: String,

    /// The statsd-listener (`host:port`) its metrics go to; unset: none are sent.
    #[arg(long, env = env::STATSD_ADDR)]
    pub statsd_addr: Option<String>,

    /// Log format: text or json.
    #[arg(long, env = env::LOG_FORMAT, default_value = "text")]
    pub log_format: LogFormat,
}

fn parse_size(s: &str) -> Result<u64, String> {
    roost_common::spec::parse_size(s).ok_or_else(|| format!("{s:?} is not a size: give bytes, or a number with k or m (64k, 10m)"))
}
