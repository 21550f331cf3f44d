//! The whole platform as `roost up` starts it, for the CLI's end-to-end tests: a work
//! folder of its own holding the definitions file (and links to the function folders),
//! `roost up` run there with relative paths as a user types them, and the addresses it
//! reports in `.roost/endpoints.env`.

#![allow(dead_code)] // each test file uses part of it

use roost_common::wire::status::{FunctionStatus, Status};
use roost_testkit::http;
use roost_testkit::process::{free_port, Guard};
use roost_testkit::{wait_until, workspace_root};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long `roost up` may take to report its endpoints.
pub const UP: Duration = Duration::from_secs(60);

/// A running `roost up`, stopped (and its folder removed) on drop.
pub struct Platform {
    guard: Guard,
    /// The work folder (the definitions file, `.roost/`).
    pub dir: PathBuf,
    /// The gate's port.
    pub port: u16,
    /// The orchestrator's API port.
    pub orchestrator: u16,
    /// The control token `roost up` made (its API requires it).
    pub control_token: String,
    /// The management API's token (`/system/...`), from `roost up`'s endpoints file.
    pub api_token: String,
    runtime: String,
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_roost")).parent().unwrap().to_path_buf()
}

/// A new work folder: `definitions` as its definitions file, and links to the function
/// folders (`python`, `command`) of `functions` that exist.
pub fn work_dir(tag: &str, definitions: &str, functions: &Path) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("roost-{tag}-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    for sub in ["python", "command"] {
        if functions.join(sub).is_dir() {
            std::os::unix::fs::symlink(functions.join(sub), dir.join(sub)).unwrap();
        }
    }
    std::fs::write(dir.join("global-function-definition.yml"), definitions).unwrap();
    dir
}

impl Platform {
    /// `roost up --runtime <runtime>` in `dir` (see [`work_dir`]).
    pub async fn up(dir: PathBuf, runtime: &str) -> Platform {
        Self::up_with(dir, runtime, &[]).await
    }

    /// Stops `roost up` (Ctrl-C) and starts it again in the same folder: a restart of
    /// the whole platform, its data kept.
    pub async fn restart(&mut self) {
        let _ = self.guard.terminate();
        let (guard, port, orchestrator, control_token, api_token) = Self::launch(&self.dir, &self.runtime, &[]).await;
        (self.guard, self.port, self.orchestrator, self.control_token, self.api_token) =
            (guard, port, orchestrator, control_token, api_token);
    }

    /// `roost up --runtime <runtime>` in `dir` with extra environment `env`.
    pub async fn up_with(dir: PathBuf, runtime: &str, env: &[(&str, &str)]) -> Platform {
        let (guard, port, orchestrator, control_token, api_token) = Self::launch(&dir, runtime, env).await;
        Platform { guard, dir, port, orchestrator, control_token, api_token, runtime: runtime.to_string() }
    }

    /// Starts `roost up` in `dir`: its guard, public port, orchestrator port and tokens.
    async fn launch(dir: &Path, runtime: &str, env: &[(&str, &str)]) -> (Guard, u16, u16, String, String) {
        for b in ["control-plane", "orchestrator", "statsd-listener"] {
            assert!(
                bin_dir().join(b).is_file(),
                "{b} is not built next to roost: run `cargo build --workspace --bins` (cargo test --workspace does)"
            );
        }
        let port = free_port();
        let guard = Guard::spawn(
            "roost up",
            Command::new(env!("CARGO_BIN_EXE_roost"))
                .args(["up", "--port", &port.to_string(), "--runtime", runtime])
                // Relative paths, as a user in the project's folder types them.
                .current_dir(dir)
                .args(["--definitions", "global-function-definition.yml", "--work-dir", ".roost"])
                .arg("--home")
                .arg(workspace_root())
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        );
        let endpoints = dir.join(".roost/endpoints.env");
        wait_until(UP, "roost up to report its endpoints", || async { endpoints.is_file().then_some(()) }).await;
        let text = std::fs::read_to_string(&endpoints).unwrap();
        let orchestrator = text
            .lines()
            .find_map(|l| l.strip_prefix("ROOST_ORCHESTRATOR_URL=http://127.0.0.1:"))
            .and_then(|p| p.parse().ok())
            .expect("orchestrator URL in endpoints.env");
        let control_token =
            text.lines().find_map(|l| l.strip_prefix("ROOST_CONTROL_TOKEN=")).expect("the control token in endpoints.env").to_string();
        let api_token = text.lines().find_map(|l| l.strip_prefix("ROOST_API_TOKEN=")).expect("the API token in endpoints.env").to_string();
        (guard, port, orchestrator, control_token, api_token)
    }

    /// One function as `/status` shows it.
    pub async fn status(&self, function: &str) -> Option<FunctionStatus> {
        let r = self.orchestrator_get("/status").await;
        let s: Status = serde_json::from_str(&r.body).unwrap();
        s.function(function).cloned()
    }

    /// GET `path` of the orchestrator's API, with the control token.
    pub async fn orchestrator_get(&self, path: &str) -> http::Response {
        let auth = format!("Bearer {}", self.control_token);
        let r = http::request(self.orchestrator, "GET", path, &[("Authorization", auth.as_str())], b"").await;
        r.unwrap_or_else(|e| panic!("orchestrator GET {path}: {e}"))
    }

    /// Envoy's admin port, from the bootstrap `roost up` rendered into `.roost/envoy.yaml`.
    pub fn envoy_admin(&self) -> u16 {
        let bootstrap = std::fs::read_to_string(self.dir.join(".roost/envoy.yaml")).expect("roost up's envoy.yaml");
        let admin = bootstrap.split("\nadmin:").nth(1).expect("an admin section in envoy.yaml");
        admin
            .split("port_value:")
            .nth(1)
            .and_then(|rest| rest.trim_start().split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .expect("the admin port in envoy.yaml")
    }

    /// Stops `roost up` as Ctrl-C does (SIGTERM) and waits for it; its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.guard.terminate()
    }

    /// The definitions file.
    pub fn definitions(&self) -> PathBuf {
        self.dir.join("global-function-definition.yml")
    }

    /// The `roost` command run in the work folder with `args`, and nothing else set.
    pub fn roost(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_roost"))
            .args(args)
            .env("ROOST_GATE_URL", format!("http://127.0.0.1:{}", self.port))
            .env("ROOST_ORCHESTRATOR_URL", format!("http://127.0.0.1:{}", self.orchestrator))
            .current_dir(&self.dir)
            .output()
            .unwrap()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.guard.terminate();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Replaces a file's content in one step (the watcher never reads half an edit).
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}
