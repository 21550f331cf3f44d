//! Replicas as local processes: the Python or command runtime started with
//! `python3 -S -m roost_runtime`, one free loopback port per replica. For development and
//! machines without Docker. `image` functions cannot run here.
//!
//! `-S` skips the `site` module, whose `.pth` hooks can cost more than the rest of a
//! start (60 ms of a 75 ms interpreter start on a pyenv Python with certifi's hook); the
//! folders `site` would have added (site-packages and what `.pth` files name) are put on
//! `PYTHONPATH` instead, so the same packages import.
//!
//! Spares: the runtime keeps a pool of runtimes started ahead of time (`python3 -S -m
//! roost_runtime spare`: the interpreter started, asyncio and the runtime imported, the
//! port listening) that belong to no function yet. A cold start hands one its function
//! as a line on its stdin, so it skips the interpreter's start and the imports (most of
//! a start: about 100 ms of 120 ms here); the pool is refilled in the background. A spare
//! runs no function code, so a function at zero still runs nothing. A function whose
//! environment sets what the interpreter or the C library reads only at start-up
//! (`PYTHON*`, `LD_*`, `LC_*`, `LANG`, `TZ`, `MALLOC_*`) is always started fresh, as is
//! every start while the pool is empty. How many spares are kept: `pool` (by default as
//! many as the largest `max_replicas` declared, so a burst from zero starts every
//! replica from the pool).
//!
//! Each replica has a state file (`<state_dir>/<replica>.json`) so that an orchestrator
//! that crashed and restarted can adopt the processes it left running, and a log file
//! (`<state_dir>/<replica>.log`, stdout and stderr) that the orchestrator follows into its
//! own log: a file, not a pipe, so a replica outlives an orchestrator crash. A graceful
//! orchestrator shutdown stops its replicas first.
//!
//! A python function's `extra_dependencies` are installed by `prepare` into a virtual
//! environment shared by every function with the same words ([`super::venv`]); its
//! replicas get its site folders on `PYTHONPATH` and are always started fresh (a spare's
//! path was set before its function was known).

mod pool;

pub use super::env::function_env;
use super::env::{runtime_env, PythonPath};
use super::venv::{python_path_with, Venvs};
use super::{PrepareFailure, Replica, ReplicaRuntime, RuntimeError, RuntimeEvent};
use crate::logs::Logs;
use pool::{remove_file, takes_a_spare, Pool, Spare};
pub use pool::{spare_assignment, SpareCount, MAX_SPARES, SPARE_BYTES};
use roost_common::net::free_port;
use roost_common::process::{self, Stopped};
use roost_common::spec::{FunctionKind as Kind, FunctionSpec};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

use tokio::process::Command;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

/// Why a replica or spare process could not be spawned.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// No loopback port is free.
    #[error("no free port: {0}")]
    Port(#[source] std::io::Error),
    /// Its log file cannot be created (or opened a second time for stderr).
    #[error("cannot create its log file {}: {source}", path.display())]
    Log {
        /// The log file.
        path: PathBuf,
        /// The file system's error.
        #[source]
        source: std::io::Error,
    },
    /// The interpreter cannot be run.
    #[error("cannot run {}: {source}", python.display())]
    Run {
        /// The interpreter.
        python: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Settings of the process runtime.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// Folder of `global-function-definition.yml` (function folders are relative to it).
    pub definitions_dir: PathBuf,
    /// Folder holding the `roost_runtime` package (`faas-runtime/`).
    pub runtime_dir: PathBuf,
    /// Python interpreter.
    pub python: PathBuf,
    /// Where replica state files go.
    pub state_dir: PathBuf,
    /// Address replicas listen on (loopback by default).
    pub bind_ip: IpAddr,
    /// How many runtimes are kept started ahead of time for any function.
    pub spares: SpareCount,
    /// Memory the spares may hold in all on `SpareCount::Auto` (`None`: no limit).
    pub spare_memory: Option<u64>,
}

/// How replicas and spares are started: the interpreter, its flags and the runtime's
/// environment (public so the benchmark's floor starts the runtime the same way).
#[derive(Debug)]
pub struct Launcher {
    config: ProcessConfig,
    /// `PYTHONPATH` of every replica: the runtime, then the folders `site` would add; only
    /// the runtime when those could not be read (then replicas start without `-S`).
    python_path: PythonPath,
    /// Whether replicas start with `-S` (the folders `site` adds are on `python_path`).
    skip_site: bool,
}

impl Launcher {
    /// Resolves the interpreter to its real path once (a shim such as pyenv's costs tens
    /// of milliseconds per start) and reads the folders its `site` module adds.
    pub fn new(mut config: ProcessConfig) -> Launcher {
        let (python, site) = resolve_interpreter(&config.python);
        config.python = python;
        let with_site =
            site.and_then(|dirs| std::env::join_paths(std::iter::once(config.runtime_dir.display().to_string()).chain(dirs)).ok());
        let skip_site = with_site.is_some();
        let python_path = PythonPath::Spawn(with_site.unwrap_or_else(|| config.runtime_dir.clone().into_os_string()));
        Launcher { config, python_path, skip_site }
    }

    /// The interpreter replicas run (its real path).
    pub fn python(&self) -> &std::path::Path {
        &self.config.python
    }

    /// `python3 [-S] -m roost_runtime <mode>` on `port`, writing to `log`, with `env`
    /// (a function's variables, see [`function_env`]) under the runtime's own.
    pub fn command(&self, mode: &str, port: u16, log: std::fs::File, env: &[(String, String)]) -> std::io::Result<Command> {
        let mut cmd = Command::new(&self.config.python);
        if self.skip_site {
            cmd.arg("-S");
        }
        cmd.args(["-m", "roost_runtime", mode])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .envs(runtime_env(&self.python_path, port, self.config.bind_ip))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .process_group(0);
        Ok(cmd)
    }

    /// [`Launcher::command`] writing to a new log file at `path`.
    fn command_logged(&self, mode: &str, port: u16, path: &std::path::Path, env: &[(String, String)]) -> Result<Command, SpawnError> {
        let log_error = |source| SpawnError::Log { path: path.to_path_buf(), source };
        let log = std::fs::File::create(path).map_err(log_error)?;
        self.command(mode, port, log, env).map_err(log_error)
    }

    /// Starts a spare: listening, importing, waiting for its function.
    fn spare(&self, seq: u64) -> Result<Spare, SpawnError> {
        let port = free_port(self.config.bind_ip).map_err(SpawnError::Port)?;
        let log = self.config.state_dir.join(format!("spare-{}-{seq}.log", std::process::id()));
        let mut cmd = self.command_logged("spare", port, &log, &[])?;
        cmd.current_dir(&self.config.state_dir).stdin(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| SpawnError::Run { python: self.config.python.clone(), source })?;
        let stdin = child.stdin.take().expect("stdin is piped");
        Ok(Spare { child, stdin, port, log })
    }
}

/// The process runtime.
#[derive(Debug)]
pub struct ProcessRuntime {
    /// The spares, and the launcher that starts them and every replica.
    pool: Arc<Pool>,
    /// Exit notifications of the replicas this orchestrator started, by replica id.
    exits: Mutex<HashMap<String, watch::Receiver<bool>>>,
    events_tx: mpsc::UnboundedSender<RuntimeEvent>,
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<RuntimeEvent>>>,
    /// Exit watchers and log followers.
    tasks: Arc<super::tasks::Tasks>,
    /// The replicas' and builds' output.
    logs: Logs,
    /// The virtual environments of `extra_dependencies`.
    venvs: Venvs,
}

/// What an interpreter said about itself when started with some flags.
#[derive(Debug, Clone, PartialEq)]
struct Interpreter {
    /// `sys.executable`: its real path (a pyenv shim resolves to the Python behind it).
    exe: PathBuf,
    /// `sys.path`.
    path: Vec<String>,
    /// `starlette.__version__`, or `None` when it cannot import Starlette.
    starlette: Option<String>,
}

/// Asks `python`, started with `flags`, for its [`Interpreter`] facts.
fn ask_interpreter(python: &std::path::Path, flags: &[&str]) -> Option<Interpreter> {
    const PROBE: &str = "import sys, json\ntry:\n    import starlette\n    v = starlette.__version__\n\
                         except Exception:\n    v = None\nprint(json.dumps([sys.executable, sys.path, v]))";
    let out = std::process::Command::new(python)
        .args(flags)
        .args(["-c", PROBE])
        .env_remove("PYTHONPATH")
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let (exe, path, starlette): (PathBuf, Vec<String>, Option<String>) = serde_json::from_slice(&out.stdout).ok()?;
    Some(Interpreter { exe, path, starlette })
}

/// The folders on `with_site` that are not on `without_site`, in order: what `site` adds.
fn site_dirs(with_site: &[String], without_site: &[String]) -> Vec<String> {
    with_site.iter().filter(|p| !p.is_empty() && !without_site.contains(p)).cloned().collect()
}

/// `ROOST_PYTHON`'s default: whatever `python3` is on `PATH`.
const DEFAULT_PYTHON: &str = "python3";
/// Debian's own interpreter, which sees Debian's `python3-starlette` (a `python3` on
/// `PATH` from pyenv or a venv may not).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// The interpreter to run Python functions with: the configured one, unless it is the
/// default `python3`, cannot import Starlette, and `system` (Debian's `/usr/bin/python3`,
/// asked only then) can. `None` facts: the interpreter could not be run.
fn choose_interpreter(
    configured: &std::path::Path,
    facts: Option<Interpreter>,
    system: impl FnOnce() -> Option<Interpreter>,
) -> (PathBuf, Option<Interpreter>) {
    let has_starlette = |f: &Option<Interpreter>| f.as_ref().is_some_and(|f| f.starlette.is_some());
    if configured == std::path::Path::new(DEFAULT_PYTHON) && !has_starlette(&facts) {
        let system = system();
        if has_starlette(&system) {
            return (PathBuf::from(SYSTEM_PYTHON), system);
        }
    }
    (configured.to_path_buf(), facts)
}

/// The interpreter's own path (`sys.executable`; the given name when it cannot run) and
/// the folders its `site` module adds (`None` when they cannot be read). Python functions
/// need Starlette: the default `python3` is replaced by `/usr/bin/python3` when only that
/// one has it, and an interpreter without it is reported (its Python replicas exit 1).
fn resolve_interpreter(python: &std::path::Path) -> (PathBuf, Option<Vec<String>>) {
    let configured = python;
    let (python, facts) =
        choose_interpreter(python, ask_interpreter(python, &[]), || ask_interpreter(std::path::Path::new(SYSTEM_PYTHON), &[]));
    match &facts {
        Some(Interpreter { starlette: Some(version), exe, .. }) if python != configured => {
            info!(python = %exe.display(), starlette = %version, "{DEFAULT_PYTHON} on PATH cannot import starlette; Python functions run with {SYSTEM_PYTHON}");
        }
        Some(Interpreter { starlette: Some(_), .. }) => {}
        Some(Interpreter { exe, .. }) => warn!(
            python = %exe.display(),
            "the interpreter cannot import starlette, so every Python function will fail to start; \
             install it (apt install python3-starlette python3-multipart for Debian's {SYSTEM_PYTHON}, \
             or {} -m pip install starlette python-multipart), or set ROOST_PYTHON to an interpreter that has it",
            exe.display()
        ),
        None => warn!(python = %python.display(), "cannot run the Python interpreter (ROOST_PYTHON); Python functions will not start"),
    }
    match (facts, ask_interpreter(&python, &["-S"])) {
        (Some(with_site), Some(without)) if with_site.exe.is_file() => (with_site.exe, Some(site_dirs(&with_site.path, &without.path))),
        (Some(with_site), _) if with_site.exe.is_file() => (with_site.exe, None),
        _ => (python, None),
    }
}

impl ProcessRuntime {
    /// The interpreter replicas run, as resolved (its real path; what the virtual
    /// environments are keyed by).
    pub fn python(&self) -> &std::path::Path {
        self.pool.launcher.python()
    }

    /// A process runtime; creates the state folder and resolves the interpreter
    /// ([`Launcher::new`]).
    pub fn new(config: ProcessConfig) -> std::io::Result<Arc<ProcessRuntime>> {
        std::fs::create_dir_all(&config.state_dir)?;
        // Logs of spares an earlier orchestrator left (the spares exited with it).
        for entry in std::fs::read_dir(&config.state_dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with("spare-") {
                remove_file(&entry.path());
            }
        }
        let launcher = Arc::new(Launcher::new(config));
        let logs = Logs::default();
        let venvs = Venvs::new(launcher.config.state_dir.join("venvs"), launcher.python().to_path_buf(), logs.clone());
        let pool = Pool::new(launcher);
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Arc::new(ProcessRuntime {
            pool,
            exits: Mutex::default(),
            events_tx: tx,
            events_rx: Mutex::new(Some(rx)),
            tasks: Default::default(),
            logs,
            venvs,
        }))
    }

    fn config(&self) -> &ProcessConfig {
        &self.pool.launcher.config
    }

    fn state_file(&self, replica_id: &str) -> PathBuf {
        self.config().state_dir.join(format!("{replica_id}.json"))
    }

    fn log_file(&self, replica_id: &str) -> PathBuf {
        self.config().state_dir.join(format!("{replica_id}.log"))
    }

    /// Starts a replica of a function of `kind` in `dir` as a new process, with the site
    /// folders `deps` (of its virtual environment) on its path after the runtime's.
    fn start_fresh(
        &self,
        kind: &str,
        dir: &std::path::Path,
        env: &[(String, String)],
        replica_id: &str,
        deps: Option<&[PathBuf]>,
    ) -> Result<(tokio::process::Child, u16), SpawnError> {
        let port = free_port(self.config().bind_ip).map_err(SpawnError::Port)?;
        let mut cmd = self.pool.launcher.command_logged(kind, port, &self.log_file(replica_id), env)?;
        cmd.current_dir(dir).stdin(Stdio::null());
        if let (Some(deps), PythonPath::Spawn(base)) = (deps, &self.pool.launcher.python_path) {
            cmd.env("PYTHONPATH", python_path_with(base, deps));
        }
        let child = cmd.spawn().map_err(|source| SpawnError::Run { python: self.config().python.clone(), source })?;
        Ok((child, port))
    }

    /// Hands a spare its function: its log becomes the replica's, then one line on stdin.
    async fn assign(
        &self,
        spare: Spare,
        kind: &str,
        env: &[(String, String)],
        replica_id: &str,
    ) -> std::io::Result<(tokio::process::Child, u16)> {
        use tokio::io::AsyncWriteExt;
        let Spare { mut child, mut stdin, port, log } = spare;
        let line = spare_assignment(kind, env);
        let handed = async {
            std::fs::rename(&log, self.log_file(replica_id))?;
            stdin.write_all(&line).await?;
            stdin.flush().await
        };
        if let Err(e) = handed.await {
            // Fails only if it has exited already.
            let _ = child.kill().await;
            remove_file(&log);
            return Err(e);
        }
        Ok((child, port))
    }

    /// Records a started replica (state file, log, exit watch) and returns it.
    fn track(&self, mut child: tokio::process::Child, port: u16, spec: &FunctionSpec, spec_hash: &str, replica_id: &str) -> Replica {
        let pid = child.id().unwrap_or(0);
        let replica = Replica {
            id: replica_id.to_string(),
            function: spec.name.clone(),
            version: spec.version.clone(),
            spec_hash: spec_hash.to_string(),
            address: SocketAddr::new(self.config().bind_ip, port),
            handle: pid.to_string(),
        };
        let state = serde_json::to_string(&replica).expect("replica serializes");
        if let Err(e) = std::fs::write(self.state_file(replica_id), state) {
            warn!(error = %e, "cannot write the replica's state file; it cannot be adopted after a crash");
        }
        let (tx, rx) = watch::channel(false);
        self.exits.lock().unwrap().insert(replica_id.to_string(), rx.clone());
        let drained = self.follow_log(&replica, false, rx);
        let (events, id, function, file) = (self.events_tx.clone(), replica_id.to_string(), spec.name.clone(), self.state_file(replica_id));
        let logs = self.logs.clone();
        self.tasks.spawn(async move {
            let status = match child.wait().await {
                Ok(status) => describe_exit(status),
                Err(e) => e.to_string(),
            };
            remove_file(&file);
            // No receiver left is fine: nobody waits on this exit.
            let _ = tx.send(true);
            let reason = last_output(&logs, drained, &function, &id, status).await;
            if events.send(RuntimeEvent::Exited { replica_id: id, function, reason }).is_err() {
                debug!("replica exit not reported: the orchestrator has stopped listening");
            }
        });
        replica
    }

    /// Follows a replica's log file into the orchestrator's log and the log store until
    /// the replica exits; once it has, reads the file to its end, removes it, and then
    /// completes the returned receiver (dropped unsent when the file cannot be opened), so
    /// the exit's reason can quote the replica's last lines.
    fn follow_log(&self, replica: &Replica, from_end: bool, mut exit: watch::Receiver<bool>) -> oneshot::Receiver<()> {
        let (path, function, id) = (self.log_file(&replica.id), replica.function.clone(), replica.id.clone());
        let logs = self.logs.clone();
        let (drained_tx, drained) = oneshot::channel();
        self.tasks.spawn(async move {
            let Ok(file) = tokio::fs::File::open(&path).await else { return };
            let mut reader = BufReader::new(file);
            if from_end {
                use tokio::io::AsyncSeekExt;
                if let Err(e) = reader.seek(std::io::SeekFrom::End(0)).await {
                    warn!(log = %path.display(), error = %e, "cannot skip the adopted replica's old log; following it from the start");
                }
            }
            let emit = |bytes: &[u8]| {
                let text = String::from_utf8_lossy(bytes);
                let text = text.trim_end_matches(['\n', '\r']);
                info!(function = %function, replica = %id, "{text}");
                logs.push(&function, &id, text);
            };
            // Bytes of a line not yet ended (the replica is writing it): kept until its end
            // of line comes, or the replica exits.
            let mut line = Vec::new();
            let mut done = false;
            loop {
                loop {
                    match reader.read_until(b'\n', &mut line).await {
                        Ok(0) => break,
                        Ok(_) if line.ends_with(b"\n") => {
                            emit(&line);
                            line.clear();
                        }
                        Ok(_) => break,
                        Err(e) => {
                            warn!(log = %path.display(), error = %e, "cannot read the replica's log; retrying");
                            break;
                        }
                    }
                }
                if done {
                    if !line.is_empty() {
                        emit(&line);
                    }
                    remove_file(&path);
                    // Nobody waiting for the drain (the watcher gave up) is fine.
                    let _ = drained_tx.send(());
                    return;
                }
                // The exit (or its watcher gone) ends the wait at once: the file is then
                // read to its end before the exit is reported.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = exit.wait_for(|gone| *gone) => done = true,
                }
            }
        });
        drained
    }

    /// Watches a process this orchestrator did not start (adopted) until it exits.
    fn watch_adopted(&self, replica: &Replica, pid: u32) {
        let (tx, rx) = watch::channel(false);
        self.exits.lock().unwrap().insert(replica.id.clone(), rx.clone());
        let drained = self.follow_log(replica, true, rx);
        let (events, id, function, file) =
            (self.events_tx.clone(), replica.id.clone(), replica.function.clone(), self.state_file(&replica.id));
        let logs = self.logs.clone();
        self.tasks.spawn(async move {
            while process::is_alive(pid) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            remove_file(&file);
            // No receiver left is fine: nobody waits on this exit.
            let _ = tx.send(true);
            let reason = last_output(&logs, drained, &function, &id, "process gone".into()).await;
            if events.send(RuntimeEvent::Exited { replica_id: id, function, reason }).is_err() {
                debug!("replica exit not reported: the orchestrator has stopped listening");
            }
        });
    }
}

impl ProcessRuntime {
    /// The site folders of the virtual environment of a python function's
    /// `extra_dependencies` (built first if need be); `None` when it has none.
    async fn deps(&self, spec: &FunctionSpec, spec_hash: &str) -> Result<Option<Arc<Vec<PathBuf>>>, RuntimeError> {
        let Kind::Python { extra_dependencies, .. } = &spec.runtime else { return Ok(None) };
        self.venvs
            .ensure(&spec.name, spec_hash, extra_dependencies)
            .await
            .map_err(|source: Arc<PrepareFailure>| RuntimeError::Prepare { function: spec.name.clone(), source })
    }
}

/// How a replica's process ended, for its exit's reason: `exit code N` or `killed by
/// signal N`.
fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// How long an exit's report waits for the log follower to read the replica's log to its
/// end (it polls every 100 ms; a slow disk gets the rest).
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// The reason an exit reports: `status`, and the replica's last lines once its log
/// follower has read its log to the end (`drained`; bounded by [`DRAIN_WAIT`]).
async fn last_output(logs: &Logs, drained: oneshot::Receiver<()>, function: &str, replica_id: &str, status: String) -> String {
    if tokio::time::timeout(DRAIN_WAIT, drained).await.is_err() {
        debug!(replica = %replica_id, "the log was not read to its end in time; the exit's reason quotes what was read");
    }
    super::with_last_output(status, logs.tail_of(function, replica_id, super::LAST_LINES))
}

#[async_trait::async_trait]
impl ReplicaRuntime for ProcessRuntime {
    fn logs(&self) -> Logs {
        self.logs.clone()
    }

    fn kind(&self) -> &'static str {
        "process"
    }

    async fn prepare(&self, spec: &FunctionSpec, spec_hash: &str) -> Result<(), RuntimeError> {
        match &spec.runtime {
            Kind::Image { image } => {
                Err(RuntimeError::Unsupported { function: spec.name.clone(), runtime: "process", image: image.clone() })
            }
            Kind::Python { folder, .. } | Kind::Command { folder, .. } => {
                let deps = self.deps(spec, spec_hash).await?;
                let env = function_env(spec, &self.config().definitions_dir.join(folder));
                let burst = if takes_a_spare(deps.is_some(), &env) { spec.scaling.max_replicas as usize } else { 0 };
                self.pool.demand(&spec.name, Some(burst));
                Ok(())
            }
        }
    }

    fn forget(&self, function: &str) {
        self.pool.demand(function, None);
    }

    fn building(&self, spec_hash: &str) -> Option<Duration> {
        self.venvs.building(spec_hash)
    }

    async fn start(&self, spec: &FunctionSpec, spec_hash: &str, replica_id: &str) -> Result<Replica, RuntimeError> {
        let fail = |e: SpawnError| RuntimeError::Start { function: spec.name.clone(), source: e.into() };
        let (kind, folder) = match &spec.runtime {
            Kind::Python { folder, .. } => ("python", folder),
            Kind::Command { folder, .. } => ("command", folder),
            Kind::Image { .. } => return Err(self.prepare(spec, spec_hash).await.unwrap_err()),
        };
        // Built already (a lookup), else the build under way waited for, or its
        // remembered failure.
        let deps = self.deps(spec, spec_hash).await?;
        let deps = deps.as_deref().map(Vec::as_slice);
        let dir = self.config().definitions_dir.join(folder);
        let env = function_env(spec, &dir);
        let spare = if takes_a_spare(deps.is_some(), &env) { self.pool.take() } else { None };
        let (child, port) = match spare {
            Some(s) => match self.assign(s, kind, &env, replica_id).await {
                Ok(started) => started,
                Err(e) => {
                    warn!(function = %spec.name, error = %e, "a spare runtime would not take the function; starting one");
                    self.start_fresh(kind, &dir, &env, replica_id, deps).map_err(fail)?
                }
            },
            None => self.start_fresh(kind, &dir, &env, replica_id, deps).map_err(fail)?,
        };
        self.pool.top_up_later();
        Ok(self.track(child, port, spec, spec_hash, replica_id))
    }

    async fn stop(&self, replica: &Replica, grace: Duration) -> Result<(), RuntimeError> {
        // 0 (never signalled) when the handle is not a process id.
        let pid: u32 = replica.handle.parse().unwrap_or(0);
        let exit = self.exits.lock().unwrap().get(&replica.id).cloned();
        // Gone already (it exited on its own): nothing to signal, and its process id may
        // be another process's by now.
        if exit.as_ref().is_some_and(|rx| *rx.borrow()) {
            self.exits.lock().unwrap().remove(&replica.id);
            remove_file(&self.state_file(&replica.id));
            return Ok(());
        }
        let exited = async {
            match exit {
                Some(mut rx) => {
                    if let Err(e) = rx.wait_for(|gone| *gone).await {
                        // The exit watcher ended without saying: it ends with the process.
                        tracing::debug!(replica = %replica.id, error = %e, "exit watch closed; taking the replica for gone");
                    }
                }
                None => process::gone(pid).await,
            }
        };
        if process::stop_pid(pid, grace, exited).await == Stopped::Killed {
            warn!(replica = %replica.id, "replica ignored SIGTERM; it was killed");
        }
        self.exits.lock().unwrap().remove(&replica.id);
        remove_file(&self.state_file(&replica.id));
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Replica>, RuntimeError> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.config().state_dir).map_err(|e| RuntimeError::Other(e.to_string()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let replica: Option<Replica> = std::fs::read_to_string(&path).ok().and_then(|s| serde_json::from_str(&s).ok());
            let pid: u32 = replica.as_ref().and_then(|r| r.handle.parse().ok()).unwrap_or(0);
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("roost_runtime"))
                .unwrap_or(false);
            match replica {
                Some(r) if process::is_alive(pid) && ours => {
                    if !self.exits.lock().unwrap().contains_key(&r.id) {
                        self.watch_adopted(&r, pid);
                    }
                    out.push(r);
                }
                _ => {
                    remove_file(&path);
                    remove_file(&path.with_extension("log"));
                }
            }
        }
        Ok(out)
    }

    fn events(&self) -> mpsc::UnboundedReceiver<RuntimeEvent> {
        self.events_rx.lock().unwrap().take().expect("ProcessRuntime::events is called once")
    }

    async fn close(&self) {
        self.pool.close().await;
        // Every replica has stopped by now: their watchers end within a poll.
        self.tasks.close(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_errors_say_what_failed_and_keep_their_cause() {
        use std::error::Error;
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = RuntimeError::Start { function: "f".into(), source: SpawnError::Run { python: "/no/python3".into(), source: io }.into() };
        assert_eq!(e.to_string(), "starting a replica of \"f\" failed: cannot run /no/python3: No such file or directory");
        // `StartFailure` is transparent: its source is the spawn error's.
        let cause = e.source().and_then(Error::source).expect("the io error is kept");
        assert!(cause.downcast_ref::<std::io::Error>().is_some());
    }

    #[test]
    fn site_dirs_are_what_site_added_in_order() {
        let with = ["", "/usr/lib/python311.zip", "/usr/lib/python3.11", "/venv/site-packages", "/src/editable"].map(String::from);
        let without = ["", "/usr/lib/python311.zip", "/usr/lib/python3.11"].map(String::from);
        assert_eq!(site_dirs(&with, &without), ["/venv/site-packages", "/src/editable"]);
        assert!(site_dirs(&without, &without).is_empty());
    }

    #[test]
    fn the_default_python_gives_way_to_debians_only_when_that_one_has_starlette() {
        let facts = |exe: &str, starlette: Option<&str>| {
            Some(Interpreter { exe: exe.into(), path: vec![], starlette: starlette.map(String::from) })
        };
        let pyenv = facts("/root/.pyenv/versions/3.11.7/bin/python3", None);
        let debian = facts(SYSTEM_PYTHON, Some("0.26.1"));
        let default = std::path::Path::new(DEFAULT_PYTHON);
        assert_eq!(choose_interpreter(default, pyenv.clone(), || debian.clone()), (SYSTEM_PYTHON.into(), debian.clone()));
        // Neither has it: the configured one stays (its replicas say what to install).
        assert_eq!(choose_interpreter(default, pyenv.clone(), || facts(SYSTEM_PYTHON, None)), (default.into(), pyenv.clone()));
        assert_eq!(choose_interpreter(default, None, || None), (default.into(), None));
        // One that has it, or one set on purpose, is kept; /usr/bin/python3 is not even asked.
        let venv = facts("/venv/bin/python3", Some("0.37.2"));
        assert_eq!(choose_interpreter(default, venv.clone(), || unreachable!()), (default.into(), venv));
        let chosen = std::path::Path::new("/opt/py/bin/python3");
        assert_eq!(choose_interpreter(chosen, pyenv.clone(), || unreachable!()), (chosen.into(), pyenv));
    }

    #[test]
    fn the_interpreter_is_resolved_with_its_site_folders() {
        let (exe, site) = resolve_interpreter(std::path::Path::new("python3"));
        assert!(exe.is_absolute() && exe.is_file(), "{exe:?}");
        let site = site.expect("python3 -S runs");
        assert!(site.iter().any(|d| d.contains("-packages")), "site-packages among {site:?}");
        let (missing, none) = resolve_interpreter(std::path::Path::new("/nonexistent/python3"));
        assert_eq!((missing, none), (PathBuf::from("/nonexistent/python3"), None));
    }
}
