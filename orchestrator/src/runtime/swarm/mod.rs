//! Replicas as Docker Swarm services (`ROOST_RUNTIME=swarm`): one service per replica,
//! one task, on an attachable internal overlay network that Envoy joins, placed by Swarm
//! on any node of the cluster. The orchestrator talks to a manager's engine.
//!
//! # Layout
//!
//! - this module: the settings, the runtime, and the [`ReplicaRuntime`] operations;
//! - `spares`: which definitions keep a hot spare (pure);
//! - `spec`: the service of one replica (name, labels, limits, hardening, placement);
//! - `tasks`: the engine's tasks, read by hand (bollard drops their addresses);
//! - `watch`: which replicas ended without being stopped (pure).
//!
//! Images are built (or found) on the manager's engine by the Docker runtime's
//! [`Images`], and given to Swarm by ID: a tag makes Swarm try a registry pull at every
//! task start. On a cluster of several nodes each node must hold the image (see
//! docs/swarm.md).
//!
//! # What differs from the Docker runtime
//!
//! - Hot spares instead of paused ones (`spares`): pausing is local to a node's engine,
//!   which the manager cannot reach, so a spare is a replica service started and probed
//!   ready but not registered, and a cold start only registers it. Without one a cold
//!   start creates a service (about 0.6-0.9 s until its task runs, measured in
//!   docs/design/swarm-research.md).
//! - Exits are seen by reading the watched services' tasks every [`WATCH_EVERY`] (the
//!   Engine API has no task events).
//! - Swarm's API 1.41 has no swap limit and no `no-new-privileges`: a replica's swap is
//!   Docker's default (twice its memory), and with every capability dropped, user 65534
//!   and a read-only root it has no way to gain privileges through a setuid file either.

mod spares;
mod spec;
mod tasks;
mod watch;

pub use tasks::TasksError;

use super::docker::image::Images;
use super::docker::logs::{last_lines_of, pump};
use super::docker::{is_gone, MANAGED};
use super::{with_last_output, Replica, ReplicaRuntime, RuntimeError, RuntimeEvent, LAST_LINES};
use bollard::models::{NetworkCreateRequest, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated};
use bollard::query_parameters::{ListServicesOptionsBuilder, LogsOptionsBuilder, UpdateServiceOptionsBuilder};
use bollard::{ClientVersion, Docker};
use roost_common::spec::FunctionSpec;
use spares::{HotSpare, SpareBook};
use spec::{service_spec, ServiceInput};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tasks::{newest_by_service, Phase, TasksApi};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use watch::Watch;

/// How often the watched replicas' tasks are read for exits.
pub const WATCH_EVERY: Duration = Duration::from_millis(250);

/// How often a start reads its task until it runs.
const START_POLL: Duration = Duration::from_millis(10);

/// Longest time from creating a replica's service until its task runs. A task no node
/// can take (constraints, resources, an image missing on every node) waits `pending`
/// for ever; it fails after this with Swarm's reason.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// What a stop waits for beyond the replica's grace: Swarm signals a removed service's
/// task about 2-3 s after the removal (it first takes it out of the network's
/// load balancing and lets that spread).
const STOP_EXTRA: Duration = Duration::from_secs(8);

/// Settings of the Swarm runtime.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// A swarm manager's Docker socket.
    pub socket: PathBuf,
    /// Base image of function images.
    pub base_image: String,
    /// The overlay network replicas join, and nothing else (created attachable and
    /// internal when missing).
    pub network: String,
    /// Port the runtime listens on inside a task.
    pub port: u16,
    /// Folder of the definitions file (function folders are relative to it).
    pub definitions_dir: PathBuf,
    /// Folder holding the `roost_runtime` package.
    pub runtime_dir: PathBuf,
    /// Time a removed replica gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Placement constraints of every replica (`node.labels.roost.functions==true`).
    pub constraints: Vec<String>,
    /// Memory the hot spares may hold in all (`None`: one per function); see `spares`.
    pub spare_memory: Option<u64>,
}

/// The Swarm engine cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// The socket cannot be used at all.
    #[error("cannot use the Docker socket {socket}: {source}; is Docker running, and is the socket mounted?")]
    Socket {
        /// The socket's path.
        socket: String,
        /// The client's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The engine is not a swarm manager.
    #[error("the Docker engine at {socket} is not a swarm manager ({source}); run `docker swarm init` there, or run the orchestrator on a manager node")]
    NotManager {
        /// The socket's path.
        socket: String,
        /// The engine's answer.
        #[source]
        source: bollard::errors::Error,
    },
    /// The functions network is missing and cannot be created.
    #[error("cannot create the overlay network {network}: {source}")]
    Network {
        /// The network's name.
        network: String,
        /// The engine's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The functions network exists but is not a swarm overlay.
    #[error("network {network} is a {driver:?} network; the swarm runtime needs an overlay network: remove it, or set ROOST_DOCKER_NETWORK to another name")]
    NotOverlay {
        /// The network's name.
        network: String,
        /// Its driver.
        driver: String,
    },
    /// The tasks cannot be read.
    #[error(transparent)]
    Tasks(#[from] TasksError),
    /// The services cannot be listed.
    #[error("cannot list the swarm services: {0}")]
    List(#[source] bollard::errors::Error),
    /// A replica's service cannot be removed.
    #[error("cannot remove service {service}: {source}")]
    Remove {
        /// The service's id.
        service: String,
        /// The engine's error.
        #[source]
        source: bollard::errors::Error,
    },
}

/// One replica did not start.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The function has no prepared image.
    #[error("not prepared: the function's image was not built (see the error of its preparation)")]
    NotPrepared,
    /// The prepared image cannot be found by its tag.
    #[error("cannot inspect image {image}: {source}")]
    Image {
        /// The image's tag.
        image: String,
        /// The engine's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The manager refused the service.
    #[error("create service: {0}")]
    Create(#[source] bollard::errors::Error),
    /// Its task cannot be read.
    #[error(transparent)]
    Tasks(#[from] TasksError),
    /// Its task ended before it ran, or as it started: how, with its last lines.
    #[error("its task ended as it started: {0}")]
    Ended(String),
    /// Its task did not run within the deadline (no node could take it, for example).
    #[error("its task did not run within {deadline:?}: {why}; check `docker service ps --no-trunc` and the nodes (constraints, resources, the image on every node)")]
    NeverRan {
        /// The deadline.
        deadline: Duration,
        /// Swarm's last word on it.
        why: String,
    },
    /// Its task runs but has no address on the functions network.
    #[error("its task has no address on network {network}")]
    NoAddress {
        /// The functions network.
        network: String,
    },
}

/// The Swarm runtime.
pub struct SwarmRuntime {
    config: SwarmConfig,
    /// The function images, built or found once per definition.
    images: Images,
    /// The ID of each prepared definition's image.
    image_ids: Mutex<HashMap<String, String>>,
    /// The engine (its Docker API and its tasks), shared with the background tasks.
    engine: Engine,
    /// The hot spares, by definition.
    spares: Arc<Mutex<SpareBook>>,
    /// Numbers the spares' replica ids.
    spare_serial: std::sync::atomic::AtomicU64,
    /// This runtime's part of its spares' ids (its start time), so a restarted
    /// orchestrator's spares are not named as the ones of the one before.
    spare_prefix: String,
    /// The replicas watched for an exit.
    watch: Arc<Mutex<Watch>>,
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<RuntimeEvent>>>,
    /// The exit watcher (runs until `close`).
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The replicas' and builds' output.
    logs: crate::logs::Logs,
    /// Output followers.
    tasks: super::tasks::Tasks,
    /// Cancelled by `close`.
    closing: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for SwarmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmRuntime").field("config", &self.config).finish()
    }
}

impl SwarmRuntime {
    /// Connects to a swarm manager's engine (API 1.41), makes sure the functions network
    /// is an overlay, and starts watching for exits.
    pub async fn connect(config: SwarmConfig) -> Result<Arc<SwarmRuntime>, RuntimeError> {
        let socket = config.socket.to_string_lossy().to_string();
        let docker = Docker::connect_with_unix(&socket, 120, &ClientVersion { major_version: 1, minor_version: 41 })
            .map_err(|source| SwarmError::Socket { socket: socket.clone(), source })?;
        docker.inspect_swarm().await.map_err(|source| SwarmError::NotManager { socket, source })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let logs = crate::logs::Logs::default();
        let images = Images::new(
            docker.clone(),
            config.base_image.clone(),
            config.definitions_dir.clone(),
            config.runtime_dir.clone(),
            logs.clone(),
        );
        let rt = Arc::new(SwarmRuntime {
            engine: Engine { docker, api: TasksApi::new(&config.socket), network: config.network.clone(), port: config.port },
            spares: Arc::new(Mutex::new(SpareBook::new(config.spare_memory))),
            spare_serial: Default::default(),
            spare_prefix: format!("{:x}", roost_common::clock::now_ms() & 0xff_ffff),
            config,
            images,
            image_ids: Mutex::default(),
            watch: Arc::default(),
            events_rx: Mutex::new(Some(rx)),
            watcher: Mutex::new(None),
            logs,
            tasks: Default::default(),
            closing: Default::default(),
        });
        rt.ensure_network().await?;
        let watcher =
            Watcher { engine: rt.engine.clone(), watch: rt.watch.clone(), tx, logs: rt.logs.clone(), closing: rt.closing.clone() };
        *rt.watcher.lock().unwrap() = Some(tokio::spawn(watcher.run()));
        Ok(rt)
    }

    async fn ensure_network(&self) -> Result<(), SwarmError> {
        let network = &self.config.network;
        let overlay = |driver: Option<String>| match driver.as_deref() {
            Some("overlay") => Ok(()),
            other => Err(SwarmError::NotOverlay { network: network.clone(), driver: other.unwrap_or("unknown").to_string() }),
        };
        if let Ok(n) = self.engine.docker.inspect_network(network, None).await {
            return overlay(n.driver);
        }
        let req = NetworkCreateRequest {
            name: network.clone(),
            driver: Some("overlay".into()),
            attachable: Some(true),
            internal: Some(true),
            labels: Some(HashMap::from([(MANAGED.to_string(), "true".to_string())])),
            ..Default::default()
        };
        match self.engine.docker.create_network(req).await {
            Ok(_) => {
                info!(%network, "created the functions network (overlay, attachable, internal)");
                Ok(())
            }
            Err(source) => match self.engine.docker.inspect_network(network, None).await {
                // Created meanwhile (by the stack, or another orchestrator).
                Ok(n) => overlay(n.driver),
                Err(_) => Err(SwarmError::Network { network: network.clone(), source }),
            },
        }
    }

    /// The ID of the prepared image of `spec_hash` (preparing it first if needed).
    async fn image_id(&self, spec: &FunctionSpec, spec_hash: &str) -> Result<String, RuntimeError> {
        if let Some(id) = self.image_ids.lock().unwrap().get(spec_hash) {
            return Ok(id.clone());
        }
        let fail = |e: TaskError| RuntimeError::Start { function: spec.name.clone(), source: e.into() };
        let tag = match self.images.prepared(spec_hash) {
            Some(tag) => tag,
            None => {
                self.images.prepare(spec, spec_hash).await?;
                self.images.prepared(spec_hash).ok_or_else(|| fail(TaskError::NotPrepared))?
            }
        };
        let inspect =
            self.engine.docker.inspect_image(&tag).await.map_err(|source| fail(TaskError::Image { image: tag.clone(), source }))?;
        let id = inspect.id.ok_or_else(|| fail(TaskError::NotPrepared))?;
        self.image_ids.lock().unwrap().insert(spec_hash.to_string(), id.clone());
        Ok(id)
    }

    /// What the service of replica `replica_id` (a spare's when `spare`) is made from.
    fn service_input<'a>(&'a self, replica_id: &'a str, spec_hash: &'a str, image: &'a str, spare: bool) -> ServiceInput<'a> {
        ServiceInput {
            replica_id,
            spec_hash,
            image,
            network: &self.config.network,
            port: self.config.port,
            stop_grace: self.config.stop_grace,
            constraints: &self.config.constraints,
            spare,
        }
    }

    /// Starts a hot spare of the definition `spec_hash` in the background, unless the
    /// book says it has one, is making one, cannot keep one or its last one failed; and
    /// removes the spares of the function's earlier definitions.
    fn keep_spare(&self, spec: &FunctionSpec, spec_hash: &str, image: &str) {
        let want = self.spares.lock().unwrap().want(&spec.name, spec_hash);
        for stale in want.stale {
            let docker = self.engine.docker.clone();
            self.tasks.spawn(async move { remove_service(&docker, &stale.service).await });
        }
        if !want.prepare {
            return;
        }
        let n = self.spare_serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let label_id = format!("{}-spare-{}-{n}", spec.name, self.spare_prefix);
        let service = service_spec(spec, &self.service_input(&label_id, spec_hash, image, true));
        let (engine, book, closing) = (self.engine.clone(), self.spares.clone(), self.closing.clone());
        let (spec, hash) = (spec.clone(), spec_hash.to_string());
        self.tasks.spawn(async move {
            let made = match hot_spare(&engine, service, &spec, &closing).await {
                Ok(spare) => Some(spare),
                Err(why) => {
                    info!(function = %spec.name, %why, "no hot spare for this definition");
                    None
                }
            };
            let unkept = book.lock().unwrap().prepared(&hash, made);
            if let Some(s) = unkept {
                remove_service(&engine.docker, &s.service).await;
            }
        });
    }

    /// A spare now serves as `replica_id`: its labels say so (in the background), so a
    /// restarted orchestrator adopts it as that replica, not as a spare.
    fn claimed(&self, spare: &HotSpare, replica_id: &str) {
        let (engine, service, id) = (self.engine.clone(), spare.service.clone(), replica_id.to_string());
        self.tasks.spawn(async move {
            let relabel = |spec: &mut ServiceSpec| {
                let labels = spec.labels.get_or_insert_with(HashMap::new);
                labels.insert("roost.replica".into(), id.clone());
                labels.remove(spec::SPARE_LABEL);
            };
            if !engine.update_spec(&service, relabel).await {
                debug!(%service, "cannot relabel the claimed spare; a restarted orchestrator would remove it");
            }
        });
    }

    /// Follows a task's output into the log store from `since` (Unix seconds; 0: all of
    /// it), as an owned task that ends with the task's output or at `close`.
    fn follow_logs(&self, task: &str, function: &str, replica_id: &str, since: i32) {
        let (docker, logs, closing) = (self.engine.docker.clone(), self.logs.clone(), self.closing.clone());
        let (task, function, replica_id) = (task.to_string(), function.to_string(), replica_id.to_string());
        self.tasks.spawn(async move {
            let options = LogsOptionsBuilder::default().follow(true).stdout(true).stderr(true).since(since).build();
            let emit = |line: &str| {
                info!(function = %function, replica = %replica_id, "{line}");
                logs.push(&function, &replica_id, line);
            };
            if let Some(e) = pump(docker.task_logs(&task, Some(options)), &closing, emit).await {
                debug!(function = %function, task = %task, error = %e, "stopped following the task's output");
            }
        });
    }
}

/// The engine calls a replica's life needs, shared with the runtime's background tasks.
#[derive(Debug, Clone)]
struct Engine {
    docker: Docker,
    api: TasksApi,
    /// The functions overlay.
    network: String,
    /// The port replicas listen on.
    port: u16,
}

impl Engine {
    /// Waits until `service`'s task runs and returns it with its address; fails when the
    /// task ends first (with how, and its last lines) or does not run in time.
    async fn until_running(&self, service: &str) -> Result<(String, SocketAddr), TaskError> {
        let started = Instant::now();
        let mut why = String::from("no task yet");
        while started.elapsed() < START_DEADLINE {
            let tasks = self.api.of_services(&[service.to_string()]).await?;
            if let Some(task) = newest_by_service(tasks).remove(service) {
                match task.phase() {
                    Phase::Running => {
                        let ip = task.address_on(&self.network).ok_or_else(|| TaskError::NoAddress { network: self.network.clone() })?;
                        return Ok((task.id, SocketAddr::new(ip, self.port)));
                    }
                    Phase::Ended { how } => {
                        let tail = task_last_lines(&self.docker, &task.id).await;
                        return Err(TaskError::Ended(with_last_output(how, tail)));
                    }
                    Phase::Starting { why: now } => why = now,
                }
            }
            tokio::time::sleep(START_POLL).await;
        }
        Err(TaskError::NeverRan { deadline: START_DEADLINE, why })
    }

    /// Changes a service's spec with `change` (at the version read just before); false
    /// when it is gone or the manager refused.
    async fn update_spec(&self, service: &str, change: impl FnOnce(&mut ServiceSpec)) -> bool {
        let current = match self.docker.inspect_service(service, None).await {
            Ok(s) => s,
            Err(e) => {
                if !is_gone(&e) {
                    debug!(service, error = %e, "cannot inspect the service");
                }
                return false;
            }
        };
        let (Some(mut spec), Some(version)) = (current.spec, current.version.and_then(|v| v.index)) else { return false };
        change(&mut spec);
        let options = UpdateServiceOptionsBuilder::default().version(i32::try_from(version).unwrap_or(i32::MAX)).build();
        match self.docker.update_service(service, spec, options, None).await {
            Ok(_) => true,
            Err(e) => {
                debug!(service, error = %e, "cannot update the service");
                false
            }
        }
    }

    /// Scales a replica's service to no task (Swarm stops it: SIGTERM, then SIGKILL after
    /// its grace); false when it is gone or cannot be (the removal then stops it).
    async fn scale_to_zero(&self, service: &str) -> bool {
        self.update_spec(service, |spec| {
            spec.mode = Some(ServiceSpecMode { replicated: Some(ServiceSpecModeReplicated { replicas: Some(0) }), ..Default::default() });
        })
        .await
    }

    /// Whether `service`'s task runs now.
    async fn runs(&self, service: &str) -> bool {
        match self.api.of_services(&[service.to_string()]).await {
            Ok(tasks) => newest_by_service(tasks).get(service).is_some_and(|t| t.phase() == Phase::Running),
            Err(_) => false,
        }
    }
}

/// Creates a hot spare's service and waits until its task runs and answers its
/// readiness path; the service is removed when it does not, or when the runtime closes
/// meanwhile.
async fn hot_spare(
    engine: &Engine,
    service: ServiceSpec,
    spec: &FunctionSpec,
    closing: &tokio_util::sync::CancellationToken,
) -> Result<HotSpare, String> {
    let id = engine.docker.create_service(service, None).await.map_err(|e| format!("create service: {e}"))?.id.unwrap_or_default();
    let ready = async {
        let (task, address) = engine.until_running(&id).await.map_err(|e| e.to_string())?;
        crate::probe::until_ready(address, &spec.readiness_path, Duration::from_millis(10), spec.readiness_timeout)
            .await
            .ok_or_else(|| format!("it did not answer {} within {:?}", spec.readiness_path, spec.readiness_timeout))?;
        Ok(HotSpare { service: id.clone(), task, address })
    };
    let made = tokio::select! {
        made = ready => made,
        _ = closing.cancelled() => Err("the runtime closed".to_string()),
    };
    if made.is_err() {
        remove_service(&engine.docker, &id).await;
    }
    made
}

/// The last lines of a task's output, through the manager (any node's task).
async fn task_last_lines(docker: &Docker, task: &str) -> Option<String> {
    let tail = LAST_LINES.to_string();
    let options = LogsOptionsBuilder::default().stdout(true).stderr(true).tail(&tail).build();
    last_lines_of(docker.task_logs(task, Some(options)), task, LAST_LINES).await
}

/// Removes a replica's service; one already gone is fine, any other failure is logged
/// (the next orchestrator start removes it as a leftover).
async fn remove_service(docker: &Docker, service: &str) {
    match docker.delete_service(service).await {
        Ok(()) => {}
        Err(e) if is_gone(&e) => {}
        Err(e) => warn!(service, error = %e, "cannot remove the service; it stays behind"),
    }
}

#[async_trait::async_trait]
impl ReplicaRuntime for SwarmRuntime {
    fn kind(&self) -> &'static str {
        "swarm"
    }

    fn logs(&self) -> crate::logs::Logs {
        self.logs.clone()
    }

    async fn prepare(&self, spec: &FunctionSpec, spec_hash: &str) -> Result<(), RuntimeError> {
        let image = self.image_id(spec, spec_hash).await?;
        self.keep_spare(spec, spec_hash, &image);
        Ok(())
    }

    fn building(&self, spec_hash: &str) -> Option<Duration> {
        self.images.building(spec_hash)
    }

    async fn start(&self, spec: &FunctionSpec, spec_hash: &str, replica_id: &str) -> Result<Replica, RuntimeError> {
        let fail = |e: TaskError| RuntimeError::Start { function: spec.name.clone(), source: e.into() };
        let image = self.image_id(spec, spec_hash).await?;
        let replica = |address: SocketAddr, service: String| Replica {
            id: replica_id.to_string(),
            function: spec.name.clone(),
            version: spec.version.clone(),
            spec_hash: spec_hash.to_string(),
            address,
            handle: service,
        };
        // A hot spare: started and ready already (its task checked once more: a spare
        // that died meanwhile is removed and a service made instead).
        let spare = self.spares.lock().unwrap().take(spec_hash);
        if let Some(spare) = spare {
            if self.engine.runs(&spare.service).await {
                self.watch.lock().unwrap().watch(&spare.service, replica_id, &spec.name);
                // Its whole output (the import included) is the replica's.
                self.follow_logs(&spare.task, &spec.name, replica_id, 0);
                self.claimed(&spare, replica_id);
                self.keep_spare(spec, spec_hash, &image);
                return Ok(replica(spare.address, spare.service));
            }
            warn!(function = %spec.name, service = %spare.service, "the hot spare no longer runs; creating a replica");
            remove_service(&self.engine.docker, &spare.service).await;
        }
        let input = self.service_input(replica_id, spec_hash, &image, false);
        let created = self.engine.docker.create_service(service_spec(spec, &input), None).await.map_err(|e| fail(TaskError::Create(e)))?;
        let service = created.id.unwrap_or_else(|| spec::service_name(replica_id));
        match self.engine.until_running(&service).await {
            Ok((task, address)) => {
                self.watch.lock().unwrap().watch(&service, replica_id, &spec.name);
                self.follow_logs(&task, &spec.name, replica_id, 0);
                self.keep_spare(spec, spec_hash, &image);
                Ok(replica(address, service))
            }
            Err(e) => {
                remove_service(&self.engine.docker, &service).await;
                Err(fail(e))
            }
        }
    }

    async fn stop(&self, replica: &Replica, grace: Duration) -> Result<(), RuntimeError> {
        // Off the watch first: its end is this stop's, not an exit to report.
        self.watch.lock().unwrap().unwatch(&replica.handle);
        // Scaled to zero first, so its task stays listed until it has stopped (a removed
        // service's tasks leave the list at once, while they still run): this returns
        // once the replica no longer runs, on whichever node it was.
        if self.engine.scale_to_zero(&replica.handle).await {
            let deadline = Instant::now() + grace + STOP_EXTRA;
            while Instant::now() < deadline {
                match self.engine.api.of_services(std::slice::from_ref(&replica.handle)).await {
                    Ok(tasks) if !tasks.iter().any(|t| matches!(t.phase(), Phase::Running | Phase::Starting { .. })) => break,
                    Ok(_) => {}
                    Err(e) => debug!(replica = %replica.id, error = %e, "cannot read the stopping replica's task; asking again"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        match self.engine.docker.delete_service(&replica.handle).await {
            Ok(()) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(source) => Err(SwarmError::Remove { service: replica.handle.clone(), source }.into()),
        }
    }

    async fn list(&self) -> Result<Vec<Replica>, RuntimeError> {
        let mine = format!("roost.network={}", self.config.network);
        let filters = HashMap::from([("label", vec!["roost.managed=true", mine.as_str()])]);
        let services = self
            .engine
            .docker
            .list_services(Some(ListServicesOptionsBuilder::default().filters(&filters).build()))
            .await
            .map_err(SwarmError::List)?;
        let ids: Vec<String> = services.iter().filter_map(|s| s.id.clone()).collect();
        let mut newest = newest_by_service(self.engine.api.of_services(&ids).await.map_err(SwarmError::from)?);
        let mut out = Vec::new();
        for s in services {
            let Some(id) = s.id else { continue };
            if self.spares.lock().unwrap().keeps(&id) {
                continue; // this runtime's hot spare: neither a replica nor a leftover
            }
            let labels = s.spec.and_then(|spec| spec.labels).unwrap_or_default();
            // An earlier orchestrator's spare (never claimed) is a leftover, as is a
            // service whose task does not run.
            let task = newest.remove(&id).filter(|t| t.phase() == Phase::Running && !labels.contains_key(spec::SPARE_LABEL));
            let replica = task.as_ref().and_then(|t| {
                let address = t.address_on(&self.config.network)?;
                Some(Replica {
                    id: labels.get("roost.replica")?.clone(),
                    function: labels.get("roost.function")?.clone(),
                    version: labels.get("roost.version")?.clone(),
                    spec_hash: labels.get("roost.spec-hash")?.clone(),
                    address: SocketAddr::new(address, self.config.port),
                    handle: id.clone(),
                })
            });
            match (replica, task) {
                (Some(r), Some(t)) => {
                    self.watch.lock().unwrap().watch(&r.handle, &r.id, &r.function);
                    // Adopted: its output from now on.
                    let now = roost_common::clock::now_ms() / 1000;
                    self.follow_logs(&t.id, &r.function, &r.id, i32::try_from(now).unwrap_or(i32::MAX));
                    out.push(r);
                }
                _ => {
                    info!(service = %id, "removing a replica service that does not run (a leftover)");
                    remove_service(&self.engine.docker, &id).await;
                }
            }
        }
        Ok(out)
    }

    fn events(&self) -> mpsc::UnboundedReceiver<RuntimeEvent> {
        self.events_rx.lock().unwrap().take().expect("SwarmRuntime::events is called once")
    }

    fn forget(&self, function: &str) {
        for spare in self.spares.lock().unwrap().forget(function) {
            let docker = self.engine.docker.clone();
            self.tasks.spawn(async move { remove_service(&docker, &spare.service).await });
        }
    }

    async fn close(&self) {
        self.closing.cancel();
        let spares = self.spares.lock().unwrap().close();
        for s in spares {
            remove_service(&self.engine.docker, &s.service).await;
        }
        let watcher = self.watcher.lock().unwrap().take();
        if let Some(mut watcher) = watcher {
            if tokio::time::timeout(Duration::from_secs(10), &mut watcher).await.is_err() {
                warn!("the exit watcher did not end in time; stopped");
                watcher.abort();
            }
        }
        // Spares being made remove their services once they see the close.
        self.tasks.close(Duration::from_secs(10)).await;
    }
}

/// What the exit watcher reads and writes.
struct Watcher {
    engine: Engine,
    watch: Arc<Mutex<Watch>>,
    tx: mpsc::UnboundedSender<RuntimeEvent>,
    logs: crate::logs::Logs,
    closing: tokio_util::sync::CancellationToken,
}

impl Watcher {
    /// Reads the watched replicas' tasks every [`WATCH_EVERY`], reports those that ended
    /// (with their last lines) and removes their services: Swarm never restarts them, and
    /// the orchestrator starts a new replica if one is needed. Ends at `close`, between
    /// two readings.
    async fn run(self) {
        let mut unreadable = false;
        loop {
            tokio::select! {
                biased;
                _ = self.closing.cancelled() => return,
                _ = tokio::time::sleep(WATCH_EVERY) => {}
            }
            let asked = self.watch.lock().unwrap().services();
            if asked.is_empty() {
                continue;
            }
            let tasks = match self.engine.api.of_services(&asked).await {
                Ok(t) => {
                    unreadable = false;
                    t
                }
                Err(e) => {
                    if !unreadable {
                        warn!(error = %e, "cannot read the replicas' tasks; exits are seen once they can be read");
                    }
                    unreadable = true;
                    continue;
                }
            };
            let ended = self.watch.lock().unwrap().ended(&asked, tasks);
            for e in ended {
                let tail = match &e.task {
                    Some(task) => task_last_lines(&self.engine.docker, task).await,
                    None => None,
                };
                let tail = tail.or_else(|| self.logs.tail_of(&e.function, &e.replica_id, LAST_LINES));
                let reason = with_last_output(e.how, tail);
                info!(function = %e.function, replica = %e.replica_id, %reason, "a replica's task ended");
                let listened = self.tx.send(RuntimeEvent::Exited { replica_id: e.replica_id, function: e.function, reason }).is_ok();
                remove_service(&self.engine.docker, &e.service).await;
                if !listened {
                    return;
                }
            }
        }
    }
}
