//! The platform under test: the whole of Roost started by `roost up`'s own code with the
//! suite's function definitions, and the orchestrator's status read back.

use crate::client::Conn;
use futures::StreamExt;
use roost_cli::up::{Platform, Runtime, UpOptions};
use roost_common::wire::status::{FunctionStatus, Status};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Idle timeout of the functions that go back to zero in the suite.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// The suite's functions, all served by the example functions in `faas-runtime/`.
pub const DEFINITIONS: &str = r#"# Written by roost-bench: the functions its scenarios call.
usable-functions:
  cold:            # cold start: back to zero 300 ms after each call
    version: "1"
    configuration: {programing_language: python, base_function_file_name: hello.py, function_folder: hello}
    scaling: {max_replicas: 1, idle_timeout: 300ms}
  burst:           # 200 requests of 50 ms each at once from zero
    version: "1"
    configuration: {programing_language: python, base_function_file_name: whoami.py, function_folder: whoami}
    scaling: {max_replicas: 10, target_concurrency: 1, idle_timeout: 1s}
  warm:            # warm overhead: one replica that never sleeps and takes all the load
    version: "1"
    configuration: {programing_language: python, base_function_file_name: hello.py, function_folder: hello}
    scaling: {min_replicas: 1, max_replicas: 1, target_concurrency: 64, idle_timeout: 1h}
  whoami:          # autoscale: one request at a time per replica, each names its replica
    version: "1"
    configuration: {programing_language: python, base_function_file_name: whoami.py, function_folder: whoami}
    scaling: {min_replicas: 1, max_replicas: 4, target_concurrency: 1, idle_timeout: 1s}
  onoff:           # scale to zero under an on/off load
    version: "1"
    configuration: {programing_language: python, base_function_file_name: hello.py, function_folder: hello}
    scaling: {max_replicas: 2, target_concurrency: 8, idle_timeout: 1s}
"#;

/// The functions of [`DEFINITIONS`].
pub const FUNCTIONS: [&str; 5] = ["cold", "burst", "warm", "whoami", "onoff"];

/// Roost, running, with where to reach it.
pub struct Roost {
    platform: Option<Platform>,
    /// The platform's entry: Envoy's public listener.
    pub public: SocketAddr,
    /// The gate (behind the public listener).
    pub gate: SocketAddr,
    /// Envoy's listener behind the gate.
    pub envoy: SocketAddr,
    /// The orchestrator's API.
    pub orchestrator: SocketAddr,
    /// The control plane's admin API.
    pub control_plane: SocketAddr,
    /// The control token the orchestrator's API requires.
    pub control_token: String,
    /// Redis, as a URL (with its password).
    pub redis_url: String,
    /// Which runtime.
    pub runtime: Runtime,
    /// Envoy's binary (for the proxy floor).
    pub envoy_bin: std::path::PathBuf,
    /// Where this run keeps its files.
    pub work_dir: std::path::PathBuf,
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Roost {
    /// Starts every component with the suite's definitions under `work_dir`.
    pub async fn start(home: &Path, bin_dir: &Path, work_dir: &Path, runtime: Runtime) -> anyhow::Result<Roost> {
        Self::start_with(home, bin_dir, work_dir, runtime, DEFINITIONS, &FUNCTIONS).await
    }

    /// Starts every component with `definitions` (declaring `functions`) under `work_dir`,
    /// and wakes each function once.
    pub async fn start_with(
        home: &Path,
        bin_dir: &Path,
        work_dir: &Path,
        runtime: Runtime,
        definitions: &str,
        functions: &[&str],
    ) -> anyhow::Result<Roost> {
        let roost = Self::launch(home, bin_dir, work_dir, runtime, definitions).await?;
        roost.wait_for("every function declared", Duration::from_secs(120), |s| s.functions.len() == functions.len()).await?;
        // Wake each function once through the orchestrator (no gate deadline): with
        // Docker this builds the images and prepares the spares before any figure is
        // taken. The sleeping ones go back to zero before their scenarios start.
        // Four at a time: a hundred functions' images build and start in a few minutes.
        let wakes = futures::stream::iter(functions.iter().map(|name| roost.wake(name))).buffer_unordered(4);
        wakes.collect::<Vec<anyhow::Result<()>>>().await.into_iter().collect::<anyhow::Result<()>>()?;
        Ok(roost)
    }

    /// Starts every component with `definitions` declaring `n` functions and returns once
    /// the orchestrator lists them all, waking none.
    pub async fn start_declared(
        home: &Path,
        bin_dir: &Path,
        work_dir: &Path,
        runtime: Runtime,
        definitions: &str,
        n: usize,
    ) -> anyhow::Result<Roost> {
        let roost = Self::launch(home, bin_dir, work_dir, runtime, definitions).await?;
        roost.wait_for_slowly("every function declared", Duration::from_secs(1800), |s| s.functions.len() == n).await?;
        Ok(roost)
    }

    async fn launch(home: &Path, bin_dir: &Path, work_dir: &Path, runtime: Runtime, definitions: &str) -> anyhow::Result<Roost> {
        std::fs::create_dir_all(work_dir)?;
        // Function folders are found next to the definitions file: link the examples in.
        for kind in ["python", "command"] {
            let link = work_dir.join(kind);
            if !link.exists() {
                std::os::unix::fs::symlink(home.join("faas-runtime").join(kind), &link)?;
            }
        }
        let file = work_dir.join("functions.yml");
        std::fs::write(&file, definitions)?;
        let definitions = file;
        let port = roost_testkit::process::free_port();
        let opts = UpOptions {
            port,
            home: home.to_path_buf(),
            definitions,
            work_dir: work_dir.to_path_buf(),
            bin_dir: bin_dir.to_path_buf(),
            runtime,
        };
        let platform = roost_cli::up::start(&opts).await?;
        let a = platform.addresses.clone();
        let envoy_bin = roost_cli::up::find_envoy(home)?;
        Ok(Roost {
            platform: Some(platform),
            public: local(a.public),
            gate: local(a.gate),
            envoy: local(a.envoy),
            orchestrator: local(a.orchestrator),
            control_plane: local(a.control_plane),
            control_token: a.control_token.clone(),
            redis_url: a.redis_url.clone(),
            runtime,
            envoy_bin,
            work_dir: work_dir.to_path_buf(),
        })
    }

    /// Every component's name and process id.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.platform.as_ref().map(Platform::pids).unwrap_or_default()
    }

    /// A call to the control plane's admin API with the control token; its body, or an
    /// error unless it answered 200.
    pub async fn control_plane_api(&self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<String> {
        let auth = format!("Bearer {}", self.control_token);
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        let r = roost_testkit::http::request(self.control_plane.port(), method, path, &headers, body)
            .await
            .map_err(|e| anyhow::anyhow!("control plane {method} {path}: {e}"))?;
        anyhow::ensure!(r.status == 200, "control plane {method} {path} answered {}: {}", r.status, r.body);
        Ok(r.body)
    }

    /// Wakes `name` through the orchestrator (no gate deadline) and waits for its answer.
    async fn wake(&self, name: &str) -> anyhow::Result<()> {
        let mut c = Conn::connect(self.orchestrator).await?.with_token(&self.control_token);
        let r = c.request("POST", &format!("/functions/{name}/wake"), Duration::from_secs(600)).await?;
        anyhow::ensure!(r.head.status == 200, "waking {name} failed: HTTP {}: {}", r.head.status, String::from_utf8_lossy(&r.body));
        Ok(())
    }

    /// The orchestrator's `/status`.
    pub async fn status(&self) -> anyhow::Result<Status> {
        let r = Conn::connect(self.orchestrator).await?.with_token(&self.control_token).get("/status").await?;
        anyhow::ensure!(r.head.status == 200, "orchestrator /status answered {}", r.head.status);
        Ok(serde_json::from_slice(&r.body)?)
    }

    /// One function's entry of `/status` (an error when it is not declared).
    pub async fn function(&self, name: &str) -> anyhow::Result<FunctionStatus> {
        let s = self.status().await?;
        s.function(name).cloned().ok_or_else(|| anyhow::anyhow!("{name} is not in the orchestrator's status: {}", show(&s)))
    }

    /// Polls `/status` every 10 ms until `ok` holds, for at most `timeout`.
    pub async fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&Status) -> bool) -> anyhow::Result<Status> {
        self.poll(what, timeout, Duration::from_millis(10), ok).await
    }

    /// The same every 500 ms: the status of thousands of functions is large.
    pub async fn wait_for_slowly(&self, what: &str, timeout: Duration, ok: impl Fn(&Status) -> bool) -> anyhow::Result<Status> {
        self.poll(what, timeout, Duration::from_millis(500), ok).await
    }

    async fn poll(&self, what: &str, timeout: Duration, every: Duration, ok: impl Fn(&Status) -> bool) -> anyhow::Result<Status> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = self.status().await {
                if ok(&s) {
                    return Ok(s);
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "waited {timeout:?} for {what}; orchestrator status: {}",
                    self.status().await.map(|s| show(&s)).unwrap_or_else(|e| e.to_string()).chars().take(2000).collect::<String>()
                );
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Polls one function's status until `ok` holds; returns it.
    pub async fn wait_function(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&FunctionStatus) -> bool,
    ) -> anyhow::Result<FunctionStatus> {
        let s = self.wait_for(&format!("{name}: {what}"), timeout, |s| s.function(name).is_some_and(&ok)).await?;
        Ok(s.function(name).cloned().expect("wait_for returned once the function's entry passed"))
    }

    /// Fails if a component has exited.
    pub fn check(&mut self) -> anyhow::Result<()> {
        if let Some(p) = self.platform.as_mut() {
            p.check()?;
        }
        Ok(())
    }

    /// Stops every component.
    pub fn stop(mut self) {
        if let Some(p) = self.platform.take() {
            p.stop();
        }
    }
}

/// A status as JSON, for error messages.
pub fn show<T: serde::Serialize>(status: &T) -> String {
    serde_json::to_string(status).unwrap_or_else(|e| format!("(cannot show the status: {e})"))
}
