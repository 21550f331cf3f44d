//! The real gate: `gateway-lua/run.sh` renders `gateway-lua/nginx.conf` into a private
//! prefix and runs nginx (Debian's with the Lua module, or OpenResty) in the foreground.

use crate::client;
use roost_testkit::http::Response;
use roost_testkit::workspace_root;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a Debian machine needs for the gate (printed when it is missing).
pub const INSTALL: &str = "apt-get install nginx-light libnginx-mod-http-lua lua-nginx-redis lua-cjson lua-resty-core";

/// A running gate, stopped on drop (SIGTERM, then SIGKILL after 10 s). Its prefix
/// folder (rendered config, log) is removed unless the test failed.
pub struct Gate {
    /// Its public port on 127.0.0.1.
    pub port: u16,
    /// The nginx prefix: `nginx.conf`, `gate.log`, pid and temp files.
    pub prefix: PathBuf,
    child: Option<Child>,
}

/// `gateway-lua/run.sh` in this checkout.
pub fn run_sh() -> PathBuf {
    workspace_root().join("gateway-lua/run.sh")
}

impl Gate {
    /// Panics, saying what to install, unless nginx with the Lua module, resty.core, a
    /// Redis client for Lua and cjson are there (`run.sh --check`).
    pub fn check_installed() {
        let out = Command::new("sh")
            .arg(run_sh())
            .arg("--check")
            .output()
            .unwrap_or_else(|e| panic!("cannot run sh {}: {e}", run_sh().display()));
        if !out.status.success() {
            panic!(
                "the gate cannot run on this machine: {}{}\n(Debian: {INSTALL})",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Starts the gate on `port`, talking to Redis on 127.0.0.1:`redis_port` and to
    /// Envoy at `envoy_addr` (`host:port`), with two workers (so that the per-worker
    /// subscriptions and the shared counters are both exercised) and `env` on top (any
    /// variable of run.sh). Returns once `/healthz` answers and every worker is
    /// subscribed to `roost:ready`.
    ///
    /// Nothing `ROOST_*` is inherited from the environment of the tests, except
    /// `ROOST_GATE_LUA_PATH` (to run the suite with another Lua Redis client, e.g.
    /// lua-resty-redis as OpenResty ships it).
    pub async fn start(port: u16, redis_port: u16, envoy_addr: &str, env: &[(&str, &str)]) -> Gate {
        Self::check_installed();
        let prefix = std::env::temp_dir().join(format!("roost-gate-test-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&prefix);
        std::fs::create_dir_all(&prefix).expect("create the gate's prefix folder");
        let log = std::fs::File::create(prefix.join("gate.log")).expect("create the gate's log");
        let mut cmd = Command::new("sh");
        cmd.arg(run_sh());
        for (k, _) in std::env::vars() {
            if k.starts_with("ROOST_") && k != "ROOST_GATE_LUA_PATH" {
                cmd.env_remove(k);
            }
        }
        cmd.env("ROOST_GATE_PORT", port.to_string())
            .env("ROOST_GATE_PREFIX", &prefix)
            .env("ROOST_REDIS_HOST", "127.0.0.1")
            .env("ROOST_REDIS_PORT", redis_port.to_string())
            .env("ROOST_ENVOY_ADDR", envoy_addr)
            .env("ROOST_GATE_WORKERS", "2")
            .env("ROOST_GATE_LOG_LEVEL", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start the gate ({cmd:?}): {e}; {INSTALL}"));
        let mut gate = Gate { port, prefix, child: Some(child) };
        gate.wait_started().await;
        gate
    }

    async fn wait_started(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("the gate exited ({status}) before answering; its log:\n{}", self.log());
            }
            let last = match client::get(self.port, "/healthz").await {
                Ok(r) if r.status == 200 => {
                    let j = client::json(&r);
                    if j["workers"].as_u64().is_some() && j["subscribed"] == j["workers"] {
                        return;
                    }
                    r.body
                }
                Ok(r) => format!("{} {}", r.status, r.body),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "the gate did not answer /healthz with every worker subscribed to Redis within 20 s \
                     (last: {last}); its log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The pid of run.sh: the supervisor nginx's master runs under (as in compose, where it
    /// is PID 1 and gets the stop signal, which it passes on to the master).
    pub fn supervisor_pid(&self) -> u32 {
        self.child.as_ref().expect("the gate is running").id()
    }

    /// The pid of nginx's master process now (from its pid file: a new one after a restart).
    pub fn nginx_master_pid(&self) -> u32 {
        let text = std::fs::read_to_string(self.prefix.join("nginx.pid")).expect("read nginx's pid file");
        text.trim().parse().unwrap_or_else(|_| panic!("nginx's pid file holds {text:?}"))
    }

    /// Sends `signal` (`QUIT`, `TERM`, `HUP`, ...) to run.sh, which passes it on to nginx's master.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.supervisor_pid().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.supervisor_pid());
    }

    /// Kills the gate at once, as a crashed container would go: run.sh, nginx's master
    /// and its workers get SIGKILL together, so nothing of it answers a held request or
    /// tells Redis anything.
    pub fn kill(&mut self) {
        let master = self.nginx_master_pid();
        let status = Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .arg(self.supervisor_pid().to_string())
            .arg(format!("-{master}"))
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL run.sh and nginx's process group {master} failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.exited() {
            assert!(Instant::now() < deadline, "run.sh still there 10 s after SIGKILL");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether run.sh has exited (reaped, so not a zombie): it exits when nginx's master does.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))))
    }

    /// Everything the gate wrote (nginx's error log, on stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("gate.log")).unwrap_or_default()
    }

    /// Panics if the log holds an error: a Lua runtime error, an aborted thread, or any
    /// nginx message at `error` level or above, except nginx's notes of a refused body
    /// (a 413 or a broken chunked body is the client's error, which nginx logs as `[error]`).
    pub fn assert_clean_log(&self) {
        self.assert_clean_log_but(&[]);
    }

    /// [`Gate::assert_clean_log`], also letting through the lines that hold one of
    /// `expected` (e.g. nginx's note of a connection to Envoy refused, in a test that
    /// stops Envoy).
    pub fn assert_clean_log_but(&self, expected: &[&str]) {
        let log = self.log();
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| ["[error]", "[crit]", "[alert]", "[emerg]", "runtime error", "stack traceback"].iter().any(|m| l.contains(m)))
            .filter(|l| !l.contains("client intended to send too large") && !l.contains("client sent invalid chunked body"))
            .filter(|l| !expected.iter().any(|e| l.contains(e)))
            .collect();
        assert!(bad.is_empty(), "the gate logged errors:\n{}", bad.join("\n"));
    }

    /// `GET /healthz` as JSON: `{"status", "workers", "subscribed", "subscriptions", "held"}`.
    pub async fn healthz(&self) -> serde_json::Value {
        let r = self.get("/healthz").await;
        assert_eq!(r.status, 200, "/healthz: {}", r.body);
        client::json(&r)
    }

    /// `GET /healthz` as JSON, or `None` when the gate does not answer it with 200.
    pub async fn healthz_now(&self) -> Option<serde_json::Value> {
        client::get(self.port, "/healthz").await.ok().filter(|r| r.status == 200).map(|r| client::json(&r))
    }

    /// Requests held for `function` now, over all workers.
    pub async fn held(&self, function: &str) -> u64 {
        self.healthz().await["held"][function].as_u64().unwrap_or(0)
    }

    /// Waits (up to 10 s) until exactly `n` requests are held for `function`.
    pub async fn wait_held(&self, function: &str, n: u64) {
        roost_testkit::wait_until(Duration::from_secs(10), &format!("{n} requests held for {function}"), || async move {
            (self.held(function).await == n).then_some(())
        })
        .await;
    }

    /// GET `path`; panics if there is no answer.
    pub async fn get(&self, path: &str) -> Response {
        client::get(self.port, path).await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// One request; panics if there is no answer.
    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: client::Body<'_>) -> Response {
        client::request(self.port, method, path, headers, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let master = std::fs::read_to_string(self.prefix.join("nginx.pid")).ok().and_then(|t| t.trim().parse::<u32>().ok());
        if let Some(mut c) = self.child.take() {
            if let Ok(None) = c.try_wait() {
                let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // run.sh stops nginx with it; should it have been killed, nginx's master and its
        // workers (a process group named by the master's pid) go too.
        let still_nginx = |pid: u32| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"nginx: master"));
        if let Some(pid) = master.filter(|&pid| still_nginx(pid)) {
            let _ = Command::new("kill").arg("-KILL").arg(format!("-{pid}")).stderr(Stdio::null()).status();
        }
        if std::thread::panicking() {
            eprintln!("the gate's prefix (config and log) is kept: {}", self.prefix.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.prefix);
        }
    }
}
