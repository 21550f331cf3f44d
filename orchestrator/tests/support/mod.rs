//! The whole back end for orchestrator tests: real Redis, the real control plane
//! (in-process), the real Envoy, and the orchestrator itself, with definitions in a
//! temporary folder that points at the repo's example functions.

#![allow(dead_code)]

use roost_common::wire::status::{FunctionStatus, Status};
use roost_orchestrator::{Config as OrchConfig, RuntimeKind};
use roost_testkit::envoy::{Envoy, EnvoyOptions, XdsMode};
use roost_testkit::http;
use roost_testkit::process::free_port;
use roost_testkit::redis::Redis;
use roost_testkit::{wait_until, workspace_root};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(30);

/// The control token the back end's control plane and the orchestrator are started with.
pub const TOKEN: &str = "orchestrator-tests-0123456789";
/// The header that carries [`TOKEN`].
pub const AUTH: (&str, &str) = ("Authorization", "Bearer orchestrator-tests-0123456789");

/// GET `path` of the control plane's admin API or the orchestrator's API, with the token.
pub async fn get_authorized(port: u16, path: &str) -> Result<http::Response, roost_testkit::http::HttpError> {
    http::request(port, "GET", path, &[AUTH], b"").await
}

/// A temporary folder laid out like `faas-runtime/`: the definitions file written by the
/// test, and links to the repo's function folders.
pub struct Defs {
    pub dir: PathBuf,
}

impl Defs {
    pub fn new(yaml: &str) -> Defs {
        let dir = std::env::temp_dir().join(format!("roost-orch-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let repo = workspace_root().join("faas-runtime");
        for sub in ["python", "command"] {
            let _ = std::os::unix::fs::symlink(repo.join(sub), dir.join(sub));
        }
        let d = Defs { dir };
        d.write(yaml);
        d
    }

    /// Like [`Defs::new`], with Python functions of the test's own beside the repo's:
    /// `python/functions/` is a folder of links to the repo's functions, and each
    /// `(folder, file, code)` is written into it. `yaml` is written once they are there.
    pub fn with_python(yaml: &str, own: &[(&str, &str, &str)]) -> Defs {
        let d = Defs::new("usable-functions: {}\n");
        let python = d.dir.join("python");
        std::fs::remove_file(&python).unwrap();
        let functions = python.join("functions");
        std::fs::create_dir_all(&functions).unwrap();
        for entry in std::fs::read_dir(workspace_root().join("faas-runtime/python/functions")).unwrap().flatten() {
            std::os::unix::fs::symlink(entry.path(), functions.join(entry.file_name())).unwrap();
        }
        for (folder, file, code) in own {
            std::fs::create_dir_all(functions.join(folder)).unwrap();
            std::fs::write(functions.join(folder).join(file), code).unwrap();
        }
        d.write(yaml);
        d
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("global-function-definition.yml")
    }

    /// Replaces the file in one step (write then rename), as an editor's save does.
    pub fn write(&self, yaml: &str) {
        let tmp = self.dir.join(".defs.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.path()).unwrap();
    }
}

impl Drop for Defs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Redis, control plane, statsd-listener and Envoy, ready for an orchestrator.
pub struct Backend {
    pub redis: Redis,
    pub cp: roost_control_plane::Running,
    pub statsd: roost_statsd_listener::Running,
    pub envoy: Envoy,
    pub listener: u16,
    pub shutdown: CancellationToken,
}

impl Backend {
    pub async fn start() -> Backend {
        let redis = Redis::start().await;
        let listener = free_port();
        let shutdown = CancellationToken::new();
        let config = roost_control_plane::Config {
            listener_port: listener,
            control_token: Some(TOKEN.into()),
            ..roost_control_plane::Config::for_tests()
        };
        let cp = roost_control_plane::start(config, shutdown.clone()).await.expect("control plane starts");
        let mut sc = <roost_statsd_listener::Config as clap::Parser>::parse_from(["statsd-listener"]);
        sc.bind = "127.0.0.1:0".parse().unwrap();
        sc.metrics_bind = "127.0.0.1:0".parse().unwrap();
        sc.redis_url = redis.url();
        let statsd = roost_statsd_listener::start(sc, shutdown.clone()).await.expect("statsd-listener starts");
        let mut opts = EnvoyOptions::new(cp.xds_addr.port(), XdsMode::Delta);
        opts.statsd_port = Some(statsd.udp_addr.port());
        let envoy = Envoy::start(&opts).await;
        wait_until(WAIT, "Envoy LIVE", || async { envoy.is_live().await.then_some(()) }).await;
        Backend { redis, cp, statsd, envoy, listener, shutdown }
    }

    /// An orchestrator configuration for this back end and these definitions.
    pub fn orchestrator_config(&self, defs: &Defs, state_dir: &std::path::Path) -> OrchConfig {
        use clap::Parser;
        let mut c = OrchConfig::parse_from(["orchestrator"]);
        c.definitions = defs.path();
        c.redis_url = self.redis.url();
        c.control_plane_url = format!("http://{}", self.cp.admin_addr);
        c.control_token = Some(TOKEN.into());
        c.envoy_admin_url = Some(format!("http://127.0.0.1:{}", self.envoy.admin_port));
        c.runtime = RuntimeKind::Process;
        c.runtime_dir = Some(workspace_root().join("faas-runtime"));
        c.state_dir = state_dir.to_path_buf();
        c.bind = "127.0.0.1:0".parse().unwrap();
        c.tick_ms = 100;
        c.reload_interval_ms = 50;
        c.stop_grace_ms = 2000;
        c.statsd_addr = Some(self.statsd.udp_addr.to_string());
        // Two spares, as before `auto` (which would keep one per replica of the largest
        // `max_replicas`): the pool's sizing has tests of its own.
        c.process_spares = roost_orchestrator::runtime::process::SpareCount::Fixed(2);
        c
    }

    /// A request through Envoy.
    pub async fn call(&self, path: &str) -> http::Response {
        http::get(self.listener, path).await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The orchestrator's /status, read as the typed wire (`None` while it does not answer,
/// for polling; a body that is not a [`Status`] fails the test).
pub async fn status_of(api: u16) -> Option<Status> {
    let r = get_authorized(api, "/status").await.ok()?;
    Some(serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("/status is not a Status: {e}: {}", r.body)))
}

/// One function's entry in /status (`None` when it is not declared).
pub async fn function_of(api: u16, name: &str) -> Option<FunctionStatus> {
    status_of(api).await?.function(name).cloned()
}

/// [`status_of`] as JSON (`Null` while it does not answer), for the tests that index it.
/// It went through [`Status`], so a field the type does not know is not there.
pub async fn status(api: u16) -> Value {
    status_of(api).await.map_or(Value::Null, |s| serde_json::to_value(s).expect("a Status is JSON"))
}

/// [`function_of`] as JSON (`Null` when not declared), for the tests that index it.
pub async fn function_status(api: u16, name: &str) -> Value {
    function_of(api, name).await.map_or(Value::Null, |f| serde_json::to_value(f).expect("a FunctionStatus is JSON"))
}

/// Ready replicas of a function.
pub async fn ready_replicas(api: u16, name: &str) -> usize {
    function_of(api, name).await.map_or(0, |f| f.ready_replicas())
}

/// POST /functions/{name}/wake; status and body.
pub async fn wake(api: u16, name: &str) -> (u16, Value) {
    let r = http::request(api, "POST", &format!("/functions/{name}/wake"), &[AUTH], b"").await.expect("wake");
    (r.status, serde_json::from_str(&r.body).unwrap_or(Value::Null))
}
