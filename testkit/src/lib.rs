//! Roost's test harness: the real Envoy and redis-server started on free loopback ports,
//! an HTTP client and a tiny upstream, and polling with a deadline.
//!
//! # Layout
//!
//! - [`process`]: a child process killed on drop, and free ports.
//! - [`envoy`]: finds the Envoy 1.40 binary, renders `envoy/bootstrap.yaml`, starts Envoy.
//! - [`redis`]: starts (and kills, and restarts) a private `redis-server`.
//! - [`http`]: an HTTP client (reqwest), and an upstream server that says who it is.
//! - [`swarm`]: a single-node Docker Swarm, joined and left again.
//! - [`wait_until`]: poll a condition until a deadline, never a bare sleep.
//!
//! Missing tools fail loudly with what to install: a test never skips silently.

pub mod envoy;
pub mod http;
pub mod process;
pub mod redis;
pub mod swarm;

use std::future::Future;
use std::time::{Duration, Instant};

/// `docker compose` (the plugin) when present, else the older `docker-compose`: the
/// program and its leading arguments.
pub fn compose_command() -> Vec<String> {
    let plugin = std::process::Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success());
    if plugin {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

/// Builds the offline images (`scripts/build-offline-images.sh`, panicking with its error
/// output when it fails) and returns the `ROOST_*_IMAGE` overrides it prints, for compose.
pub fn offline_images() -> Vec<(String, String)> {
    let built = std::process::Command::new("bash").arg(workspace_root().join("scripts/build-offline-images.sh")).output().unwrap();
    if !built.status.success() {
        // The compiler's progress lines come first; the error is at the end.
        let stderr = String::from_utf8_lossy(&built.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim_start().starts_with("Compiling ")).collect();
        panic!("offline images ({}): {}", built.status, lines[lines.len().saturating_sub(60)..].join("\n"));
    }
    String::from_utf8_lossy(&built.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// The workspace root (the folder holding the root `Cargo.toml`).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit lives one folder below the workspace root").to_path_buf()
}

/// Polls `check` every 10 ms until it returns `Some`, or panics after `timeout` saying
/// what was awaited.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
