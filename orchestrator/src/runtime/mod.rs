//! Where replicas run, behind one trait: local processes ([`process`]), Docker
//! containers ([`docker`]) or Docker Swarm services ([`swarm`]). The orchestrator's lifecycle code (probe, register, drain,
//! reap) is the same for both.

pub(crate) mod build;
pub mod docker;
pub(crate) mod env;
pub mod process;
pub mod swarm;
pub(crate) mod tasks;
pub mod venv;

use roost_common::spec::FunctionSpec;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// One running replica of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// Unique id, chosen by the orchestrator (`<function>-<random>`).
    pub id: String,
    /// Function name.
    pub function: String,
    /// Function version (from the definitions) the replica runs.
    pub version: String,
    /// A hash of the function's definition the replica was started from; a replica whose
    /// hash differs from the current definition is rolled over.
    pub spec_hash: String,
    /// Where Envoy and the readiness probe reach it (an IP address, never a name).
    pub address: SocketAddr,
    /// The runtime's own handle: a process id or a container id.
    pub handle: String,
}

/// Something that happened to a replica outside the orchestrator's control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// The replica's process or container exited (crashed, killed, or stopped).
    Exited {
        /// The replica's id.
        replica_id: String,
        /// Its function.
        function: String,
        /// Exit code, signal or other reason, for the log.
        reason: String,
    },
}

/// How many of a replica's last lines an exit's reason quotes.
pub(crate) const LAST_LINES: usize = 10;

/// An exit's reason: how it ended, then the replica's last lines when it wrote any
/// (`exit code 1; last output:\n<lines>`), so callers of a function whose import fails
/// read the traceback's end.
pub(crate) fn with_last_output(how: String, tail: Option<String>) -> String {
    match tail {
        Some(tail) => format!("{how}; last output:\n{tail}"),
        None => how,
    }
}

/// Why a runtime operation failed. Each message says what is wrong (and, where it can,
/// what to do) and includes its cause's, since `/status` shows only this one line; the
/// cause stays reachable as the error's `source`.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The function cannot run on this runtime (an `image` function on the process
    /// runtime).
    #[error("function {function:?} cannot run on the {runtime} runtime: image {image:?} needs the Docker runtime (ROOST_RUNTIME=docker)")]
    Unsupported {
        /// Function name.
        function: String,
        /// Runtime kind.
        runtime: &'static str,
        /// The image the function names.
        image: String,
    },
    /// Preparing (building the function's image or its dependencies) failed. The same
    /// failure is returned again, at once, until the definition or what is built
    /// changes (see [`ReplicaRuntime::prepare`]).
    #[error("preparing function {function:?} failed: {source}")]
    Prepare {
        /// Function name.
        function: String,
        /// What went wrong (shared by every call that returns it).
        #[source]
        source: Arc<PrepareFailure>,
    },
    /// Starting a replica failed.
    #[error("starting a replica of {function:?} failed: {source}")]
    Start {
        /// Function name.
        function: String,
        /// What went wrong.
        #[source]
        source: StartFailure,
    },
    /// The Docker engine refused or failed a call outside a start (connect, network,
    /// stop, list).
    #[error(transparent)]
    Docker(#[from] docker::EngineError),
    /// The Swarm manager refused or failed a call outside a start.
    #[error(transparent)]
    Swarm(#[from] swarm::SwarmError),
    /// A failure described by its text alone: for test doubles and adapters of other
    /// runtimes (the runtimes in this crate never build it).
    #[error("{0}")]
    Other(String),
}

/// Why preparing a function failed, by what was built.
#[derive(Debug, thiserror::Error)]
pub enum PrepareFailure {
    /// The Docker runtime could not build or find the function's image.
    #[error(transparent)]
    Image(#[from] docker::ImageError),
    /// The process runtime could not build the virtual environment of the function's
    /// `extra_dependencies`.
    #[error(transparent)]
    Deps(#[from] venv::VenvError),
}

/// Why a replica did not start, by runtime.
#[derive(Debug, thiserror::Error)]
pub enum StartFailure {
    /// The process runtime could not spawn the replica.
    #[error(transparent)]
    Process(#[from] process::SpawnError),
    /// The Docker runtime could not create, start or reach the replica's container.
    #[error(transparent)]
    Docker(#[from] docker::ContainerError),
    /// The Swarm runtime could not create, run or reach the replica's service.
    #[error(transparent)]
    Swarm(#[from] swarm::TaskError),
}

/// Where replicas run: starts, stops and lists them ([`process::ProcessRuntime`],
/// [`docker::DockerRuntime`], [`swarm::SwarmRuntime`]). Implementations must be safe to call concurrently for
/// different replicas.
#[async_trait::async_trait]
pub trait ReplicaRuntime: Send + Sync + 'static {
    /// `process`, `docker` or `swarm`.
    fn kind(&self) -> &'static str;

    /// Where the runtime writes its replicas' and builds' output (one store for the
    /// runtime's life; the orchestrator's API and failure reasons read it).
    fn logs(&self) -> crate::logs::Logs;

    /// Makes everything a function needs before its first start (for Docker: builds its
    /// image; for processes: the virtual environment of its `extra_dependencies`) and
    /// returns when that is done, built or failed. Concurrent calls for the same build
    /// wait for one build. Idempotent: a call for an unchanged function that was
    /// prepared is cheap.
    ///
    /// A failed build is remembered: until the definition (`spec_hash`) or what is built
    /// (the dependencies; for Docker also the function's folder) changes, `prepare` and
    /// `start` return the same failure at once, without building again or writing to the
    /// log, so calling `prepare` again every few seconds is cheap.
    async fn prepare(&self, spec: &FunctionSpec, spec_hash: &str) -> Result<(), RuntimeError>;

    /// How long a `prepare` of the definition `spec_hash` has been building (or waiting
    /// for the same build); `None` when none is under way. For a function's `building`
    /// status.
    fn building(&self, _spec_hash: &str) -> Option<Duration> {
        None
    }

    /// Starts one replica and returns as soon as it is started (not yet ready: the
    /// orchestrator probes `spec.readiness_path`). The replica serves HTTP on the
    /// returned address.
    async fn start(&self, spec: &FunctionSpec, spec_hash: &str, replica_id: &str) -> Result<Replica, RuntimeError>;

    /// Stops a replica: SIGTERM, then a hard kill after `grace`. Stopping a replica that
    /// is already gone succeeds.
    async fn stop(&self, replica: &Replica, grace: Duration) -> Result<(), RuntimeError>;

    /// The replicas of this runtime running now (containers by their labels, processes
    /// by their state files), so a restarted orchestrator can adopt them.
    async fn list(&self) -> Result<Vec<Replica>, RuntimeError>;

    /// The stream of replica exits. Called once, when the orchestrator starts.
    fn events(&self) -> mpsc::UnboundedReceiver<RuntimeEvent>;

    /// `function` is no longer declared, and its replicas have stopped: let go of what
    /// was kept ahead of time for it (its spares, their share of the spare budget, its
    /// history of starts). A later `prepare` of the same name starts afresh.
    fn forget(&self, _function: &str) {}

    /// Releases what the runtime holds besides replicas (for Docker: containers created
    /// ahead of time). Called once, after every replica has stopped.
    async fn close(&self) {}
}
