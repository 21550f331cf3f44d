//! Every `ROOST_` environment variable that `roost up`, compose.yaml, the Docker files,
//! the Envoy bootstrap, the gate and the services share, each named once, and the old
//! spellings that still work.
//!
//! The rule (README, "Configuration"):
//! - a socket a part listens on: `ROOST_<NAME>_BIND`, one `ip:port`;
//! - a peer spoken to over HTTP or Redis: `ROOST_<PEER>_URL`;
//! - a peer spoken to over plain TCP, UDP or gRPC: `ROOST_<PEER>_ADDR`, one `host:port`;
//! - every other setting: `ROOST_<NAME>` with its unit as suffix (`_MS`, `_S`).
//!
//! The exceptions: `ROOST_PORT`, the host port compose publishes, and `ROOST_GATE_PORT`,
//! the gate's port, are ports alone.
//!
//! compose.yaml, docker/, envoy/ and gateway-lua/ cannot import Rust; a test
//! (`common/tests/env_names.rs`) checks that every `ROOST_` name they spell is here.

macro_rules! names {
    ($( $(#[doc = $doc:literal])* $name:ident = $value:literal; )*) => {
        $( $(#[doc = $doc])* pub const $name: &str = $value; )*
        /// Every current name above, for the test that checks the files Rust cannot reach.
        pub const ALL: &[&str] = &[$($name),*];
    };
}

names! {
    // --- every Roost service -----------------------------------------------------------
    /// Log format of a service: `text` or `json`.
    LOG_FORMAT = "ROOST_LOG_FORMAT";
    /// Redis, as a URL (`redis://host:port/`): the services, the gate and the CLI.
    REDIS_URL = "ROOST_REDIS_URL";
    /// Longest wait for every Envoy to ACK a change, in milliseconds (control plane, orchestrator).
    SYNC_TIMEOUT_MS = "ROOST_SYNC_TIMEOUT_MS";
    /// A file holding Redis's password, put into `ROOST_REDIS_URL` (the services, the gate).
    REDIS_PASSWORD_FILE = "ROOST_REDIS_PASSWORD_FILE";
    /// The control token the orchestrator's API and the control plane's admin API require
    /// (`Authorization: Bearer`), and that their clients send.
    CONTROL_TOKEN = "ROOST_CONTROL_TOKEN";
    /// A file holding the control token (read when `ROOST_CONTROL_TOKEN` is unset); also
    /// the token of Envoy's guarded admin listener (envoy/render-bootstrap.sh).
    CONTROL_TOKEN_FILE = "ROOST_CONTROL_TOKEN_FILE";

    // --- control plane -----------------------------------------------------------------
    /// The control plane's gRPC ADS server, which Envoy connects to.
    XDS_BIND = "ROOST_XDS_BIND";
    /// The control plane's HTTP/JSON admin API.
    ADMIN_BIND = "ROOST_ADMIN_BIND";
    /// Envoy's listener for the gate (every function routed to its replicas), as the
    /// control plane pushes it to Envoy.
    LISTENER_BIND = "ROOST_LISTENER_BIND";
    /// Envoy's public listener, the platform's entry (unset: the gate is the entry).
    PUBLIC_BIND = "ROOST_PUBLIC_BIND";
    /// The gate, as the public listener's peer for what it does not send straight to a
    /// replica (`host:port`; a host name is looked up by Envoy).
    GATE_ADDR = "ROOST_GATE_ADDR";
    /// Envoy's connect timeout to a replica, in milliseconds.
    CONNECT_TIMEOUT_MS = "ROOST_CONNECT_TIMEOUT_MS";
    /// Retries of a request that never reached a replica.
    RETRIES = "ROOST_RETRIES";
    /// How long the control plane waits for Redis at start, in seconds.
    REDIS_STARTUP_TIMEOUT_S = "ROOST_REDIS_STARTUP_TIMEOUT_S";
    /// Envoys that must be in sync for a wait for ACK to succeed.
    MIN_ENVOYS = "ROOST_MIN_ENVOYS";

    // --- orchestrator ------------------------------------------------------------------
    /// The function definitions file.
    DEFINITIONS = "ROOST_DEFINITIONS";
    /// The control plane's admin API, as a base URL.
    CONTROL_PLANE_URL = "ROOST_CONTROL_PLANE_URL";
    /// Envoy's admin API, as a base URL.
    ENVOY_ADMIN_URL = "ROOST_ENVOY_ADMIN_URL";
    /// Where replicas run: `process` or `docker` (orchestrator, `roost up`).
    RUNTIME = "ROOST_RUNTIME";
    /// Folder holding the `roost_runtime` Python package.
    RUNTIME_DIR = "ROOST_RUNTIME_DIR";
    /// Python interpreter of the process runtime.
    PYTHON = "ROOST_PYTHON";
    /// Spare runtimes the process runtime keeps started.
    PROCESS_SPARES = "ROOST_PROCESS_SPARES";
    /// Folder of the process runtime's replica state files.
    STATE_DIR = "ROOST_STATE_DIR";
    /// The orchestrator's HTTP API.
    ORCHESTRATOR_BIND = "ROOST_ORCHESTRATOR_BIND";
    /// The platform's data directory: deployed functions and the API token (orchestrator).
    DATA_DIR = "ROOST_DATA_DIR";
    /// The management API's token (`/system/...`, `Authorization: Bearer`): the orchestrator
    /// requires it, `roost` sends it. Unset: the orchestrator makes one in the data directory.
    API_TOKEN = "ROOST_API_TOKEN";
    /// Largest deploy body the management API takes (bytes, or 64k, 100m).
    DEPLOY_MAX_BODY = "ROOST_DEPLOY_MAX_BODY";
    /// The orchestrator's API as the control plane routes `/system/` to it, `host:port`.
    SYSTEM_ADDR = "ROOST_SYSTEM_ADDR";
    /// The async worker, `host:port`, as the control plane routes `/async/` and
    /// `/async-function/` to it.
    ASYNC_ADDR = "ROOST_ASYNC_ADDR";
    /// The async worker's HTTP server: submits (`/async/...`) and calls' status.
    ASYNC_BIND = "ROOST_ASYNC_BIND";
    /// The platform's public entry as the async worker calls functions through it (a URL).
    PUBLIC_URL = "ROOST_PUBLIC_URL";
    /// How long a finished asynchronous call's record and result are kept, in seconds.
    ASYNC_KEEP_S = "ROOST_ASYNC_KEEP_S";
    /// Hosts (`host` or `host:port`, comma-separated) an `X-Callback-Url` may name; unset:
    /// callbacks are refused.
    ASYNC_CALLBACK_HOSTS = "ROOST_ASYNC_CALLBACK_HOSTS";
    /// Attempts after the first of a callback that failed.
    ASYNC_CALLBACK_RETRIES = "ROOST_ASYNC_CALLBACK_RETRIES";
    /// The async worker's name in the queues' consumer group.
    ASYNC_CONSUMER = "ROOST_ASYNC_CONSUMER";
    /// The statsd-listener, `host:port`, as a peer: the orchestrator and the gate send
    /// statsd (UDP) there, Envoy its metrics service's stream (gRPC over TCP).
    STATSD_ADDR = "ROOST_STATSD_ADDR";
    /// Readiness probe interval, in milliseconds.
    PROBE_INTERVAL_MS = "ROOST_PROBE_INTERVAL_MS";
    /// Time between SIGTERM and a hard kill of a replica, in milliseconds.
    STOP_GRACE_MS = "ROOST_STOP_GRACE_MS";
    /// How often every function's scaling is re-evaluated, in milliseconds.
    TICK_MS = "ROOST_TICK_MS";
    /// How often the definitions file is checked for edits, in milliseconds.
    RELOAD_INTERVAL_MS = "ROOST_RELOAD_INTERVAL_MS";
    /// The Docker socket.
    DOCKER_SOCKET = "ROOST_DOCKER_SOCKET";
    /// The Docker network function containers join.
    DOCKER_NETWORK = "ROOST_DOCKER_NETWORK";
    /// Whether the Docker runtime keeps a started, paused spare per function.
    DOCKER_WARM_SPARES = "ROOST_DOCKER_WARM_SPARES";
    /// Memory the Docker runtime's paused spares (the swarm runtime's hot spares) may
    /// hold in all (a size, or `unlimited`).
    SPARE_MEMORY = "ROOST_SPARE_MEMORY";
    /// Whether the Docker runtime keeps a stopping replica as its function's paused spare.
    RECYCLE_REPLICAS = "ROOST_RECYCLE_REPLICAS";
    /// Placement constraints of the swarm runtime's function tasks (comma-separated).
    SWARM_CONSTRAINTS = "ROOST_SWARM_CONSTRAINTS";
    /// scripts/swarm.sh: the stack's orchestrator runtime (`swarm` or `docker`).
    SWARM_RUNTIME = "ROOST_SWARM_RUNTIME";
    /// scripts/swarm.sh: how the public port is published (`mesh` or `relay`).
    SWARM_ENTRY = "ROOST_SWARM_ENTRY";
    /// Base image of function images.
    BASE_IMAGE = "ROOST_BASE_IMAGE";

    // --- statsd-listener ---------------------------------------------------------------
    /// The statsd-listener's UDP socket.
    STATSD_BIND = "ROOST_STATSD_BIND";
    /// The statsd-listener's Prometheus `/metrics`.
    METRICS_BIND = "ROOST_METRICS_BIND";
    /// The statsd-listener's `/metrics`, as a URL: the management API serves it at
    /// `/system/metrics` (orchestrator).
    METRICS_URL = "ROOST_METRICS_URL";
    /// How often each function's load is written to Redis, in milliseconds.
    FLUSH_INTERVAL_MS = "ROOST_FLUSH_INTERVAL_MS";
    /// Senders the statsd-listener believes: IPs, CIDRs, host names, `*` (default: loopback).
    STATSD_ALLOWED_SOURCES = "ROOST_STATSD_ALLOWED_SOURCES";
    /// How long a pending or in-flight gauge counts without a fresh reading, in milliseconds.
    STATSD_GAUGE_TTL_MS = "ROOST_STATSD_GAUGE_TTL_MS";

    // --- Envoy's bootstrap (envoy/render-bootstrap.sh) ---------------------------------
    /// Envoy's node id.
    NODE_ID = "ROOST_NODE_ID";
    /// Envoy's admin API.
    ENVOY_ADMIN_BIND = "ROOST_ENVOY_ADMIN_BIND";
    /// Envoy's guarded admin listener (GET /clusters with the control token only), rendered
    /// when `ROOST_CONTROL_TOKEN_FILE` is given.
    ENVOY_ADMIN_GUARD_BIND = "ROOST_ENVOY_ADMIN_GUARD_BIND";
    /// The control plane's ADS server, as Envoy's peer.
    XDS_ADDR = "ROOST_XDS_ADDR";
    /// `DELTA_GRPC` (default) or `GRPC` (state of the world).
    XDS_API_TYPE = "ROOST_XDS_API_TYPE";
    /// Envoy's stats flush interval (an Envoy duration, `0.25s`).
    STATS_FLUSH_INTERVAL = "ROOST_STATS_FLUSH_INTERVAL";
    /// Envoy's binary (`roost up`, tests).
    ENVOY_BIN = "ROOST_ENVOY_BIN";
    /// Envoy's `--drain-time-s` (compose's entry point).
    ENVOY_DRAIN_TIME_S = "ROOST_ENVOY_DRAIN_TIME_S";
    /// How long compose's entry point waits on stop for requests in flight, in seconds.
    ENVOY_DRAIN_WAIT_S = "ROOST_ENVOY_DRAIN_WAIT_S";
    /// Where compose's entry point writes the rendered bootstrap.
    ENVOY_CONFIG = "ROOST_ENVOY_CONFIG";

    // --- gate (gateway-lua/run.sh) -----------------------------------------------------
    /// The gate's port.
    GATE_PORT = "ROOST_GATE_PORT";
    /// The platform's port on the host, where compose publishes Envoy's public listener.
    PORT = "ROOST_PORT";
    /// The gate's nginx prefix (rendered conf, pid, temp files).
    GATE_PREFIX = "ROOST_GATE_PREFIX";
    /// Envoy's listener for the gate, as the gate's peer.
    ENVOY_ADDR = "ROOST_ENVOY_ADDR";
    /// Largest request body (bytes, or `64k`, `10m`); also read by the control plane,
    /// whose public listener sends a larger body to the gate (413).
    GATE_MAX_BODY = "ROOST_GATE_MAX_BODY";
    /// Held requests per function.
    GATE_MAX_HELD = "ROOST_GATE_MAX_HELD";
    /// The gate's id, unique among the gates sharing a Redis: its field in each
    /// function's held count (`roost:fn:<f>:held`); default the host name.
    GATE_ID = "ROOST_GATE_ID";
    /// How long a request is held, in milliseconds.
    GATE_WAKE_TIMEOUT_MS = "ROOST_GATE_WAKE_TIMEOUT_MS";
    /// The ready/declared cache period, in milliseconds.
    GATE_CACHE_TTL_MS = "ROOST_GATE_CACHE_TTL_MS";
    /// Lost-notice check and wake re-publish while held, in milliseconds.
    GATE_REPUBLISH_MS = "ROOST_GATE_REPUBLISH_MS";
    /// Redis connect/read timeout, in milliseconds.
    GATE_REDIS_TIMEOUT_MS = "ROOST_GATE_REDIS_TIMEOUT_MS";
    /// An idle subscription PINGs Redis after this, in milliseconds.
    GATE_PING_MS = "ROOST_GATE_PING_MS";
    /// How long a request waits for an emptied Redis to get its functions back, in
    /// milliseconds.
    GATE_EMPTY_WAIT_MS = "ROOST_GATE_EMPTY_WAIT_MS";
    /// nginx worker processes.
    GATE_WORKERS = "ROOST_GATE_WORKERS";
    /// nginx `error_log` level.
    GATE_LOG_LEVEL = "ROOST_GATE_LOG_LEVEL";
    /// DNS server for a Redis host name.
    GATE_RESOLVER = "ROOST_GATE_RESOLVER";
    /// How often the gate resolves Envoy's host name again (reloading nginx when its
    /// addresses change), in seconds.
    GATE_RESOLVE_EVERY_S = "ROOST_GATE_RESOLVE_EVERY_S";
    /// The nginx binary.
    GATE_NGINX = "ROOST_GATE_NGINX";
    /// A folder searched first for Lua modules.
    GATE_LUA_PATH = "ROOST_GATE_LUA_PATH";

    // --- the roost CLI -----------------------------------------------------------------
    /// The gate, as a base URL.
    GATE_URL = "ROOST_GATE_URL";
    /// The orchestrator's API, as a base URL.
    ORCHESTRATOR_URL = "ROOST_ORCHESTRATOR_URL";
    /// The repository `roost up` runs from (envoy/, gateway-lua/, faas-runtime/).
    HOME = "ROOST_HOME";
    /// `roost up`'s work folder (logs, state, `endpoints.env`), where the other commands
    /// look for the endpoints of the platform it started.
    WORK_DIR = "ROOST_WORK_DIR";

    // --- a replica's runtime (set by the orchestrator's runtimes) ----------------------
    /// The address a replica listens on (its port is `PORT`).
    BIND = "ROOST_BIND";
    /// The function's name.
    FUNCTION_NAME = "ROOST_FUNCTION_NAME";
    /// The function's folder.
    FUNCTION_DIR = "ROOST_FUNCTION_DIR";
    /// The Python handler file.
    FUNCTION_FILE = "ROOST_FUNCTION_FILE";
    /// The command kind's command, a JSON list.
    COMMAND = "ROOST_COMMAND";
    /// Per-request timeout, in seconds.
    TIMEOUT_S = "ROOST_TIMEOUT_S";

    // --- compose.yaml only (interpolated, never read by a service) ---------------------
    /// Host port compose publishes the orchestrator's API on.
    ORCHESTRATOR_PORT = "ROOST_ORCHESTRATOR_PORT";
    /// Image override (scripts/build-offline-images.sh).
    REDIS_IMAGE = "ROOST_REDIS_IMAGE";
    /// Image override.
    ENVOY_IMAGE = "ROOST_ENVOY_IMAGE";
    /// Image override.
    GATE_IMAGE = "ROOST_GATE_IMAGE";
    /// Image override.
    CONTROL_PLANE_IMAGE = "ROOST_CONTROL_PLANE_IMAGE";
    /// Image override.
    ORCHESTRATOR_IMAGE = "ROOST_ORCHESTRATOR_IMAGE";
    /// Image override.
    STATSD_LISTENER_IMAGE = "ROOST_STATSD_LISTENER_IMAGE";
    /// The async worker's image in compose.yaml.
    ASYNC_WORKER_IMAGE = "ROOST_ASYNC_WORKER_IMAGE";
}

/// The old spellings, each still read where [`RENAMED`] says.
pub mod old {
    /// Was Envoy's public listener address; now the address part of [`super::LISTENER_BIND`].
    pub const LISTENER_ADDRESS: &str = "ROOST_LISTENER_ADDRESS";
    /// Was Envoy's public listener port; now the port part of [`super::LISTENER_BIND`].
    pub const LISTENER_PORT: &str = "ROOST_LISTENER_PORT";
    /// Now part of [`super::ENVOY_ADMIN_BIND`].
    pub const ENVOY_ADMIN_ADDRESS: &str = "ROOST_ENVOY_ADMIN_ADDRESS";
    /// Now part of [`super::ENVOY_ADMIN_BIND`].
    pub const ENVOY_ADMIN_PORT: &str = "ROOST_ENVOY_ADMIN_PORT";
    /// Now part of [`super::XDS_ADDR`].
    pub const XDS_ADDRESS: &str = "ROOST_XDS_ADDRESS";
    /// Now part of [`super::XDS_ADDR`].
    pub const XDS_PORT: &str = "ROOST_XDS_PORT";
    /// Now part of [`super::STATSD_ADDR`].
    pub const STATSD_ADDRESS: &str = "ROOST_STATSD_ADDRESS";
    /// Now part of [`super::STATSD_ADDR`].
    pub const STATSD_PORT: &str = "ROOST_STATSD_PORT";
    /// Now part of [`super::REDIS_URL`].
    pub const REDIS_HOST: &str = "ROOST_REDIS_HOST";
    /// Now part of [`super::REDIS_URL`].
    pub const REDIS_PORT: &str = "ROOST_REDIS_PORT";
}

/// An old spelling that still works: read when every new name it maps to is unset, with
/// a deprecation warning naming the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renamed {
    /// The old name, as README or compose.yaml documented it.
    pub old: &'static str,
    /// The name to set instead.
    pub new: &'static str,
    /// Where the old name is still read.
    pub read_by: &'static str,
}

/// Every old spelling a user could have set, and where it is still read. Two old names
/// (an address and a port) can map to one new `ip:port` name.
pub const RENAMED: &[Renamed] = &[
    Renamed { old: old::LISTENER_ADDRESS, new: LISTENER_BIND, read_by: "control-plane" },
    Renamed { old: old::LISTENER_PORT, new: LISTENER_BIND, read_by: "control-plane" },
    Renamed { old: old::ENVOY_ADMIN_ADDRESS, new: ENVOY_ADMIN_BIND, read_by: "envoy/render-bootstrap.sh" },
    Renamed { old: old::ENVOY_ADMIN_PORT, new: ENVOY_ADMIN_BIND, read_by: "envoy/render-bootstrap.sh" },
    Renamed { old: old::XDS_ADDRESS, new: XDS_ADDR, read_by: "envoy/render-bootstrap.sh" },
    Renamed { old: old::XDS_PORT, new: XDS_ADDR, read_by: "envoy/render-bootstrap.sh" },
    Renamed { old: old::STATSD_ADDRESS, new: STATSD_ADDR, read_by: "envoy/render-bootstrap.sh" },
    Renamed { old: old::STATSD_PORT, new: STATSD_ADDR, read_by: "envoy/render-bootstrap.sh" },
    Renamed { old: old::REDIS_HOST, new: REDIS_URL, read_by: "gateway-lua/run.sh" },
    Renamed { old: old::REDIS_PORT, new: REDIS_URL, read_by: "gateway-lua/run.sh" },
];

/// The renamed variables of `service` (a [`Renamed::read_by`]) that `lookup` finds set
/// under their old name while the new name is unset: the ones to warn about.
pub fn deprecated_in(service: &str, lookup: impl Fn(&str) -> Option<String>) -> Vec<Renamed> {
    RENAMED.iter().filter(|r| r.read_by == service && lookup(r.old).is_some() && lookup(r.new).is_none()).copied().collect()
}

/// Logs a deprecation warning for each old name of `service` set in this process's
/// environment whose new name is unset. Call it once tracing is set up.
pub fn warn_deprecated(service: &str) {
    for r in deprecated_in(service, |name| std::env::var(name).ok()) {
        tracing::warn!(old = r.old, new = r.new, "{} is deprecated and still read; set {} instead", r.old, r.new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn names_are_unique_and_spelled_as_roost_upper_snake() {
        let mut seen = HashSet::new();
        for name in ALL.iter().chain(RENAMED.iter().map(|r| &r.old)) {
            assert!(seen.insert(*name), "{name} twice");
            let rest = name.strip_prefix("ROOST_").unwrap_or_else(|| panic!("{name} lacks ROOST_"));
            assert!(!rest.is_empty() && rest.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'), "{name}");
        }
        for r in RENAMED {
            assert!(ALL.contains(&r.new), "{} renamed to {}, which is not a current name", r.old, r.new);
            assert!(!ALL.contains(&r.old), "{} is both old and current", r.old);
        }
    }

    #[test]
    fn an_old_name_is_reported_only_while_the_new_one_is_unset() {
        let env: HashMap<&str, &str> = [("ROOST_LISTENER_PORT", "10001"), ("ROOST_REDIS_HOST", "redis")].into();
        let lookup = |k: &str| env.get(k).map(|v| v.to_string());
        let got = deprecated_in("control-plane", lookup);
        assert_eq!(got.iter().map(|r| (r.old, r.new)).collect::<Vec<_>>(), [("ROOST_LISTENER_PORT", LISTENER_BIND)]);

        let env: HashMap<&str, &str> = [("ROOST_LISTENER_PORT", "10001"), (LISTENER_BIND, "127.0.0.1:1")].into();
        assert!(deprecated_in("control-plane", |k| env.get(k).map(|v| v.to_string())).is_empty());
        assert!(deprecated_in("control-plane", |_| None).is_empty());
    }
}
