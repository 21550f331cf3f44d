//! The orchestrator's configuration: flags, each also read from a `ROOST_...` variable.

use roost_common::env;
use roost_common::telemetry::LogFormat;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where replicas run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Local processes (development, machines without Docker).
    Process,
    /// Docker containers through the Docker API.
    Docker,
    /// Docker Swarm services (one per replica) through a swarm manager's Docker API.
    Swarm,
}

/// Roost's orchestrator.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "orchestrator",
    version,
    about = "Roost's orchestrator: wakes functions on demand, scales them on queueing, and puts them to sleep when idle."
)]
pub struct Config {
    /// The function definitions file (hot-reloaded on every edit).
    #[arg(long, env = env::DEFINITIONS, default_value = "faas-runtime/global-function-definition.yml")]
    pub definitions: PathBuf,

    /// Redis URL.
    #[arg(long, env = env::REDIS_URL, default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,

    /// A file holding Redis's password, put into --redis-url (compose's secrets volume).
    #[arg(long, env = env::REDIS_PASSWORD_FILE)]
    pub redis_password_file: Option<PathBuf>,

    /// The control token: every API request but GET /healthz must carry it
    /// (`Authorization: Bearer`), and the orchestrator sends it to the control plane's admin
    /// API and Envoy's admin. Without one (nor --control-token-file) the API is open to
    /// anyone who can reach it.
    #[arg(long, env = env::CONTROL_TOKEN, hide_env_values = true)]
    pub control_token: Option<String>,

    /// A file holding the control token, read when --control-token is unset.
    #[arg(long, env = env::CONTROL_TOKEN_FILE)]
    pub control_token_file: Option<PathBuf>,

    /// Base URL of the control plane's admin API.
    #[arg(long, env = env::CONTROL_PLANE_URL, default_value = "http://127.0.0.1:18001")]
    pub control_plane_url: String,

    /// Base URL of Envoy's admin API, used to end a drain as soon as a replica has no
    /// request in flight. Without it a drain waits the function's whole request timeout.
    #[arg(long, env = env::ENVOY_ADMIN_URL)]
    pub envoy_admin_url: Option<String>,

    /// Where replicas run.
    #[arg(long, env = env::RUNTIME, value_enum, default_value = "process")]
    pub runtime: RuntimeKind,

    /// Folder holding the `roost_runtime` Python package; default: the definitions
    /// file's folder.
    #[arg(long, env = env::RUNTIME_DIR)]
    pub runtime_dir: Option<PathBuf>,

    /// Python interpreter for the process runtime; Python functions need Starlette in it.
    /// When it is the default `python3` and cannot import starlette but /usr/bin/python3
    /// (Debian's, with python3-starlette) can, that one is used.
    #[arg(long, env = env::PYTHON, default_value = "python3")]
    pub python: PathBuf,

    /// Runtimes the process runtime keeps started ahead of time for any function (the
    /// interpreter and the runtime loaded, no function yet): a cold start or a scale-up
    /// hands one its function instead of starting Python. `auto`: as many as the largest
    /// burst of one declared function (its `max_replicas`), within `ROOST_SPARE_MEMORY`
    /// at 16 MB each, at most 64; or a number from 0 (none) to 64.
    #[arg(long, env = env::PROCESS_SPARES, default_value = "auto")]
    pub process_spares: crate::runtime::process::SpareCount,

    /// Folder for the process runtime's replica state files (for adoption after a crash).
    #[arg(long, env = env::STATE_DIR, default_value = ".roost/replicas")]
    pub state_dir: PathBuf,

    /// The platform's data directory: functions deployed over the management API
    /// (`/system/...`) and its token (`api-token`, made at the first start). Unset: no
    /// deploys (the management API answers 503 and says to set it).
    #[arg(long, env = env::DATA_DIR)]
    pub data_dir: Option<PathBuf>,

    /// The management API's token; default: the data directory's `api-token`, made at the
    /// first start.
    #[arg(long, env = env::API_TOKEN, hide_env_values = true)]
    pub api_token: Option<String>,

    /// The statsd-listener's Prometheus endpoint (`http://host:port/metrics`), served
    /// again at `/system/metrics` behind the API token; unset: that path answers 503.
    #[arg(long, env = env::METRICS_URL)]
    pub metrics_url: Option<String>,

    /// Largest deploy the management API takes, compressed (bytes, or 64k, 100m).
    #[arg(long, env = env::DEPLOY_MAX_BODY, default_value = "64m", value_parser = parse_body_size)]
    pub deploy_max_body: u64,

    /// Address of the orchestrator's HTTP API (/status, /functions/{name}/wake).
    #[arg(long, env = env::ORCHESTRATOR_BIND, default_value = "0.0.0.0:18002")]
    pub bind: SocketAddr,

    /// statsd address for the orchestrator's own metrics (host:port); none when unset.
    #[arg(long, env = env::STATSD_ADDR)]
    pub statsd_addr: Option<String>,

    /// Readiness probe interval, in milliseconds.
    #[arg(long, env = env::PROBE_INTERVAL_MS, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=50))]
    pub probe_interval_ms: u64,

    /// Time a stopping replica gets between SIGTERM and a hard kill, in milliseconds.
    #[arg(long, env = env::STOP_GRACE_MS, default_value_t = 5_000)]
    pub stop_grace_ms: u64,

    /// How often every function's scaling is re-evaluated, in milliseconds (scale-up
    /// signals from the statsd-listener act at once).
    #[arg(long, env = env::TICK_MS, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub tick_ms: u64,

    /// How often the definitions file is checked for edits, in milliseconds.
    #[arg(long, env = env::RELOAD_INTERVAL_MS, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=1_000))]
    pub reload_interval_ms: u64,

    /// Longest wait for every Envoy to ACK an endpoint change, in milliseconds.
    #[arg(long, env = env::SYNC_TIMEOUT_MS, default_value_t = 5_000)]
    pub sync_timeout_ms: u64,

    /// Docker socket (Docker runtime).
    #[arg(long, env = env::DOCKER_SOCKET, default_value = "/var/run/docker.sock")]
    pub docker_socket: PathBuf,

    /// Docker network the function containers join (and nothing else); for the swarm
    /// runtime an overlay network (created attachable and internal when missing).
    #[arg(long, env = env::DOCKER_NETWORK, default_value = "roost-functions")]
    pub docker_network: String,

    /// Keep one started, ready and paused spare container per function, so a cold
    /// start is an unpause (about 15 ms) instead of a container start and a Python start
    /// (about 0.5 s). A paused spare uses no CPU but keeps its memory (about 20 MB);
    /// `false` keeps only a created spare.
    #[arg(long, env = env::DOCKER_WARM_SPARES, default_value_t = true, action = clap::ArgAction::Set)]
    pub docker_warm_spares: bool,

    /// Memory the Docker runtime's warm (paused) spares may hold in all: `512m`, `2g`, `0`
    /// (no spares), or `unlimited` (one per function). Within it, spares go to the
    /// functions likeliest to be called next, judged from their recent starts
    /// (`runtime/docker/budget.rs`); while every function's spare fits, each has one.
    /// The swarm runtime spends it on hot spares (`runtime/swarm/spares.rs`).
    #[arg(long, env = env::SPARE_MEMORY, default_value = "512m", value_parser = parse_spare_memory)]
    pub spare_memory: SpareMemory,

    /// Keep a stopping replica as its function's paused spare instead of removing it
    /// (Docker runtime): no new container for a function that sleeps and wakes. `false`
    /// removes every stopping replica.
    #[arg(long, env = env::RECYCLE_REPLICAS, default_value_t = true, action = clap::ArgAction::Set)]
    pub recycle_replicas: bool,

    /// Placement constraints of every function task (swarm runtime), comma-separated
    /// as `docker service create --constraint` takes them: `node.labels.roost.functions==true`.
    #[arg(long, env = env::SWARM_CONSTRAINTS, default_value = "", value_parser = parse_constraints)]
    pub swarm_constraints: Constraints,

    /// Base image of function images (Docker runtime).
    #[arg(long, env = env::BASE_IMAGE, default_value = "roost/base:bookworm")]
    pub base_image: String,

    /// Log format: text or json.
    #[arg(long, env = env::LOG_FORMAT, default_value = "text")]
    pub log_format: LogFormat,
}

/// `ROOST_SWARM_CONSTRAINTS`: placement constraints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Constraints(pub Vec<String>);

/// Reads `ROOST_SWARM_CONSTRAINTS`: constraints separated by commas, each `<key>==<value>`
/// or `<key>!=<value>`.
pub fn parse_constraints(s: &str) -> Result<Constraints, String> {
    let mut out = Vec::new();
    for c in s.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let ok = c.split_once("==").or_else(|| c.split_once("!=")).is_some_and(|(k, v)| !k.trim().is_empty() && !v.trim().is_empty());
        if !ok {
            return Err(format!(
                "{c:?} is not a placement constraint: write <key>==<value> or <key>!=<value> (node.labels.roost.functions==true), several separated by commas"
            ));
        }
        out.push(c.to_string());
    }
    Ok(Constraints(out))
}

/// `ROOST_SPARE_MEMORY`: a budget in bytes, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpareMemory(pub Option<u64>);

/// Reads `ROOST_SPARE_MEMORY`: a size (`512m`, `2g`, `0`) or `unlimited`.
pub fn parse_spare_memory(s: &str) -> Result<SpareMemory, String> {
    if s.trim().eq_ignore_ascii_case("unlimited") {
        return Ok(SpareMemory(None));
    }
    roost_common::spec::parse_size(s.trim()).map(|b| SpareMemory(Some(b))).ok_or_else(|| {
        format!("{s:?} is not a size: write a whole number with an optional unit (b, k, m, g; 512m, 2g, 0), or `unlimited` for one spare per function")
    })
}

fn parse_body_size(s: &str) -> Result<u64, String> {
    match roost_common::spec::parse_size(s) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is no size; write bytes, or a number with k, m or g (64m)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_are_comma_separated_comparisons() {
        assert_eq!(parse_constraints(""), Ok(Constraints(vec![])));
        assert_eq!(
            parse_constraints("node.labels.roost.functions==true, node.role!=manager"),
            Ok(Constraints(vec!["node.labels.roost.functions==true".into(), "node.role!=manager".into()]))
        );
        let e = parse_constraints("node.role=manager").unwrap_err();
        assert!(e.contains("\"node.role=manager\" is not a placement constraint") && e.contains("<key>==<value>"), "{e}");
        assert!(parse_constraints("==true").is_err());
    }

    #[test]
    fn process_spares_are_auto_by_default_and_a_bad_value_is_refused_with_why() {
        use crate::runtime::process::SpareCount;
        use clap::Parser;
        assert_eq!(Config::parse_from(["orchestrator"]).process_spares, SpareCount::Auto, "auto by default");
        assert_eq!(Config::parse_from(["orchestrator", "--process-spares", "3"]).process_spares, SpareCount::Fixed(3));
        let e = Config::try_parse_from(["orchestrator", "--process-spares", "65"]).unwrap_err().to_string();
        assert!(e.contains("is not a number of spares"), "{e}");
    }
}
