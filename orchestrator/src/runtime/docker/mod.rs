//! Replicas as Docker containers, through the Docker API (bollard). Function images are
//! built through the API from the base image, the runtime package and the function's
//! folder; containers are labelled, limited and hardened, and attached only to the
//! internal functions network.
//!
//! # Layout
//!
//! - this module: the settings, the runtime, and the [`ReplicaRuntime`] operations;
//! - `image`: the function image (tag, Dockerfile, build context, build);
//! - `container`: one replica container (create, address, warm-up), the exit events and
//!   the removal of dead containers;
//! - `logs`: a replica's output, followed into the log store, and its last lines;
//! - `error`: the failures of the engine, of an image and of a container;
//! - `spares`: the containers prepared ahead of time for cold starts;
//! - `budget`: which functions keep a spare within `ROOST_SPARE_MEMORY` (pure).

mod budget;
pub(crate) mod container;
mod error;
pub(crate) mod image;
pub(crate) mod logs;
mod priority;
mod spares;

pub use error::{ContainerError, EngineError, ImageError};
pub use spares::held_memory;

use super::{Replica, ReplicaRuntime, RuntimeError, RuntimeEvent};
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder};
use bollard::{ClientVersion, Docker};
use container::{address_of, create, follow_exits, remove, Exits};
use roost_common::spec::FunctionSpec;
use spares::{Claim, Spare, SpareBook, SpareSlots, SPARE_WAIT};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Label on every container and image Roost manages.
pub(crate) const MANAGED: &str = "roost.managed";

/// Settings of the Docker runtime.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// The Docker socket.
    pub socket: PathBuf,
    /// Base image of function images (Python 3 in it).
    pub base_image: String,
    /// The network function containers join, and nothing else.
    pub network: String,
    /// Port the runtime listens on inside a container.
    pub port: u16,
    /// Folder of the definitions file (function folders are relative to it).
    pub definitions_dir: PathBuf,
    /// Folder holding the `roost_runtime` package.
    pub runtime_dir: PathBuf,
    /// Keep each function's spare started, ready and paused (cold start = unpause),
    /// instead of only created.
    pub warm_spares: bool,
    /// Memory all spares may hold (`None`: one spare per function); see `budget`.
    pub spare_memory: Option<u64>,
    /// Keep a stopping replica as its function's paused spare (see `spares`).
    pub recycle: bool,
}

/// Image builds the engine runs at once. A thousand functions declared together once
/// started a thousand builds: the engine grew to 8.7 GB and every other call to it
/// (starts, unpauses) slowed to seconds, and builds cut short by a stop left their
/// intermediate containers behind.
pub const MAX_BUILDS: usize = 2;

/// How long `close` waits for the exit follower to finish the death it is handling: its
/// last lines and its follower (two [`logs::TAIL_WAIT`]s at most) and its removal.
const EXITS_GRACE: Duration = Duration::from_secs(10);

/// The Docker runtime.
pub struct DockerRuntime {
    docker: Docker,
    config: DockerConfig,
    /// The function images, built or found once per definition.
    images: image::Images,
    /// The container prepared ahead of time for each definition hash (warm and paused,
    /// or created), or its preparation in flight, so the cold path only unpauses (or
    /// starts) it. Closed by `close`: a spare finished after it is removed.
    spares: std::sync::Arc<SpareSlots<Spare>>,
    /// Replica ids of containers created as spares: their label's id -> the id the
    /// orchestrator gave the replica.
    aliases: std::sync::Arc<Mutex<HashMap<String, String>>>,
    /// Label ids of the spares this runtime is preparing or keeps and has not handed out:
    /// `list` leaves them alone (a created or paused spare is not a leftover).
    own_spares: std::sync::Arc<Mutex<HashSet<String>>>,
    /// Containers `stop` is stopping and removes itself (the exit follower leaves them).
    stopping: std::sync::Arc<Mutex<HashSet<String>>>,
    /// What the spare budget decides on, and what it decided.
    book: std::sync::Arc<Mutex<SpareBook>>,
    /// Starts in flight, which spare preparations wait for.
    priority: std::sync::Arc<priority::Priority>,
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<RuntimeEvent>>>,
    /// Spare preparations and output followers under way.
    tasks: super::tasks::Tasks,
    /// The task following Docker's container exits and removing the dead ones (it runs
    /// until `close` ends it).
    exits: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The replicas' and builds' output.
    logs: crate::logs::Logs,
    /// Containers whose output is being followed (one follower each), and the replica
    /// each one's lines go to.
    following: logs::Followers,
    /// Cancelled by `close`: ends the output followers.
    closing: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime").field("config", &self.config).finish()
    }
}

/// A container in a runtime's `stopping` set while this lives.
struct Stopping<'a> {
    set: &'a Mutex<HashSet<String>>,
    container: &'a str,
}

impl<'a> Stopping<'a> {
    fn mark(set: &'a Mutex<HashSet<String>>, container: &'a str) -> Self {
        set.lock().unwrap().insert(container.to_string());
        Stopping { set, container }
    }
}

impl Drop for Stopping<'_> {
    fn drop(&mut self) {
        self.set.lock().unwrap().remove(self.container);
    }
}

/// How often the spares are chosen again with nothing started or stopped.
const REBALANCE_EVERY: Duration = Duration::from_secs(30);

/// Gone, or already being removed.
pub(crate) fn is_gone(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404 | 409, .. })
}

impl DockerRuntime {
    /// Connects to the Docker engine (API 1.41, which Docker 20.10 and later speak) and
    /// starts following container exits.
    pub async fn connect(config: DockerConfig) -> Result<std::sync::Arc<DockerRuntime>, RuntimeError> {
        let socket = config.socket.to_string_lossy().to_string();
        let docker = Docker::connect_with_unix(&socket, 120, &ClientVersion { major_version: 1, minor_version: 41 })
            .map_err(|source| EngineError::Socket { socket: socket.clone(), source })?;
        docker.ping().await.map_err(|source| EngineError::Ping { socket, source })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let logs = crate::logs::Logs::default();
        let images = image::Images::new(
            docker.clone(),
            config.base_image.clone(),
            config.definitions_dir.clone(),
            config.runtime_dir.clone(),
            logs.clone(),
        );
        let rt = std::sync::Arc::new(DockerRuntime {
            docker: docker.clone(),
            config,
            images,
            spares: SpareSlots::new(),
            aliases: Default::default(),
            own_spares: Default::default(),
            stopping: Default::default(),
            book: Default::default(),
            priority: Default::default(),
            events_rx: Mutex::new(Some(rx)),
            tasks: Default::default(),
            exits: Mutex::new(None),
            logs,
            following: Default::default(),
            closing: Default::default(),
        });
        rt.ensure_network().await?;
        let exits = Exits {
            docker,
            network: rt.config.network.clone(),
            tx,
            aliases: rt.aliases.clone(),
            own_spares: rt.own_spares.clone(),
            stopping: rt.stopping.clone(),
            following: rt.following.clone(),
            logs: rt.logs.clone(),
            closing: rt.closing.clone(),
        };
        *rt.exits.lock().unwrap() = Some(tokio::spawn(follow_exits(exits)));
        // The spares are chosen again now and then as well: scores and bursts fade with
        // time, so an idle platform gives back what a burst long past still holds.
        let (weak, closing) = (std::sync::Arc::downgrade(&rt), rt.closing.clone());
        rt.tasks.spawn(async move {
            let mut every = tokio::time::interval_at(tokio::time::Instant::now() + REBALANCE_EVERY, REBALANCE_EVERY);
            loop {
                tokio::select! {
                    _ = closing.cancelled() => return,
                    _ = every.tick() => match weak.upgrade() {
                        Some(rt) => rt.rebalance(),
                        None => return,
                    },
                }
            }
        });
        Ok(rt)
    }

    async fn ensure_network(&self) -> Result<(), RuntimeError> {
        if self.docker.inspect_network(&self.config.network, None).await.is_ok() {
            return Ok(());
        }
        let req = NetworkCreateRequest {
            name: self.config.network.clone(),
            driver: Some("bridge".into()),
            internal: Some(true),
            labels: Some(HashMap::from([(MANAGED.to_string(), "true".to_string())])),
            ..Default::default()
        };
        match self.docker.create_network(req).await {
            Ok(_) => {
                info!(network = %self.config.network, "created the functions network (internal)");
                Ok(())
            }
            // Created meanwhile by another orchestrator: what was asked for exists.
            Err(_) if self.docker.inspect_network(&self.config.network, None).await.is_ok() => Ok(()),
            Err(source) => Err(EngineError::Network { network: self.config.network.clone(), source }.into()),
        }
    }
}

#[async_trait::async_trait]
impl ReplicaRuntime for DockerRuntime {
    fn logs(&self) -> crate::logs::Logs {
        self.logs.clone()
    }

    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn prepare(&self, spec: &FunctionSpec, spec_hash: &str) -> Result<(), RuntimeError> {
        let tag = self.images.prepare(spec, spec_hash).await?;
        self.note_prepared(spec, spec_hash, &tag);
        self.rebalance();
        Ok(())
    }

    fn building(&self, spec_hash: &str) -> Option<Duration> {
        self.images.building(spec_hash)
    }

    async fn start(&self, spec: &FunctionSpec, spec_hash: &str, replica_id: &str) -> Result<Replica, RuntimeError> {
        let fail = |e: ContainerError| RuntimeError::Start { function: spec.name.clone(), source: e.into() };
        let prepared = self.images.prepared(spec_hash);
        let image = match prepared {
            Some(image) => image,
            None => {
                // Not prepared yet: the build in flight is waited for, a remembered
                // failure returned at once, a missing build made now.
                self.prepare(spec, spec_hash).await?;
                self.images.prepared(spec_hash).ok_or_else(|| fail(ContainerError::NotPrepared))?
            }
        };
        self.note_start(&spec.name);
        // Spare preparations wait until this start is done.
        let _starting = self.priority.start();
        // A ready spare (the first, or one a burst left), or the first being prepared
        // (waited for, once); else none.
        let waited = std::time::Instant::now();
        let claim = match self.take_any_ready(spec_hash) {
            Some(s) => Claim::Ready(s),
            None => self.spares.claim(spec_hash, SPARE_WAIT).await,
        };
        let spare = match claim {
            Claim::Ready(s) => Some(s),
            Claim::Prepared(s) => {
                info!(function = %spec.name, waited_ms = waited.elapsed().as_millis() as u64, "took the spare that was being prepared");
                Some(s)
            }
            Claim::Missing => None,
        };
        let mut container = None;
        let mut warm = None;
        if let Some(s) = spare.as_ref().filter(|s| s.died.is_some()) {
            // Its function exited as its spare started: fail now with how (the next start,
            // after the back-off, tries again with a new spare).
            self.own_spares.lock().unwrap().remove(&s.label_id);
            remove(&self.docker, &s.container).await;
            self.spawn_spare(spec, spec_hash, &image);
            return Err(fail(ContainerError::ExitedWarmingUp(s.died.clone().unwrap_or_default())));
        }
        if let Some(s) = spare {
            self.aliases.lock().unwrap().insert(s.label_id.clone(), replica_id.to_string());
            let resumed = match s.warm {
                Some(_) => self.docker.unpause_container(&s.container).await,
                None => self.docker.start_container(&s.container, None).await,
            };
            // Still this runtime's spare until it runs: a `list` meanwhile must not take the
            // paused or created container for a leftover.
            self.own_spares.lock().unwrap().remove(&s.label_id);
            match resumed {
                Ok(()) => {
                    container = Some(s.container);
                    warm = s.warm;
                }
                Err(e) => {
                    // Removed behind our back (for example as a leftover at start-up).
                    warn!(error = %e, "the spare container would not start; creating one");
                    self.aliases.lock().unwrap().remove(&s.label_id);
                    remove(&self.docker, &s.container).await;
                }
            }
        }
        let container = match container {
            Some(c) => c,
            None => {
                let c = create(&self.docker, &self.config, spec, spec_hash, &image, replica_id).await.map_err(|e| {
                    // Its image may be gone: the next prepare looks for it (and builds it) again.
                    self.images.recheck(spec_hash);
                    fail(e)
                })?;
                if let Err(e) = self.docker.start_container(&c, None).await {
                    remove(&self.docker, &c).await;
                    return Err(fail(ContainerError::Start(e)));
                }
                c
            }
        };
        // Its whole output, a warm spare's import included (see `logs`).
        self.follow_logs(&container, &spec.name, replica_id, 0);
        let address = match warm {
            Some(a) => a,
            None => match address_of(&self.docker, &self.config, &container).await {
                Ok(a) => a,
                Err(e) => {
                    // Not handed out, so removed here, once its output is in the log
                    // store: a container that has exited already (its function fails at
                    // import) has no address, and its death is reported with its last
                    // lines.
                    self.following.ended(&container, logs::TAIL_WAIT).await;
                    remove(&self.docker, &container).await;
                    return Err(fail(e));
                }
            },
        };
        self.note_running(spec_hash, 1);
        // The spares are chosen again with this start counted (the function's replica
        // becomes its spare when it stops; no other is prepared meanwhile).
        self.rebalance();
        Ok(Replica {
            id: replica_id.to_string(),
            function: spec.name.clone(),
            version: spec.version.clone(),
            spec_hash: spec_hash.to_string(),
            address,
            handle: container,
        })
    }

    async fn stop(&self, replica: &Replica, grace: Duration) -> Result<(), RuntimeError> {
        self.note_running(&replica.spec_hash, -1);
        if self.recycle(replica).await {
            return Ok(());
        }
        // Its death is this stop's: removed here, not by the exit follower, so that this
        // returns once it is gone.
        let _stopping = Stopping::mark(&self.stopping, &replica.handle);
        let t = grace.as_secs().max(1) as i32;
        match self.docker.stop_container(&replica.handle, Some(StopContainerOptionsBuilder::default().t(t).build())).await {
            Ok(()) => {}
            Err(e) if is_gone(&e) => return Ok(()),
            Err(e) => warn!(replica = %replica.id, error = %e, "stop failed; removing by force"),
        }
        match self.docker.remove_container(&replica.handle, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await {
            Ok(()) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(source) => Err(EngineError::Remove { container: replica.handle.clone(), source }.into()),
        }
    }

    async fn list(&self) -> Result<Vec<Replica>, RuntimeError> {
        let mine = format!("roost.network={}", self.config.network);
        let filters = HashMap::from([("label", vec!["roost.managed=true", mine.as_str()])]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
            .await
            .map_err(EngineError::List)?;
        let mut out = Vec::new();
        for c in &list {
            let label = c.labels.as_ref().and_then(|l| l.get("roost.replica"));
            if label.is_some_and(|id| self.own_spares.lock().unwrap().contains(id)) {
                continue; // this runtime's spare (created, warming or paused): not a replica, not a leftover
            }
            let running = c.state.as_ref().map(|s| format!("{s:?}").to_lowercase().contains("running")).unwrap_or(false);
            match self.replica_of(c).filter(|_| running) {
                Some(r) => {
                    // Adopted (or already followed): its output from now on.
                    let now = roost_common::clock::now_ms() / 1000;
                    self.follow_logs(&r.handle, &r.function, &r.id, i32::try_from(now).unwrap_or(i32::MAX));
                    out.push(r)
                }
                None => {
                    // Stopped or unreadable: a leftover; remove it.
                    if let Some(id) = &c.id {
                        remove(&self.docker, id).await;
                    }
                }
            }
        }
        Ok(out)
    }

    fn events(&self) -> mpsc::UnboundedReceiver<RuntimeEvent> {
        self.events_rx.lock().unwrap().take().expect("DockerRuntime::events is called once")
    }

    fn forget(&self, function: &str) {
        self.forget_function(function);
    }

    async fn close(&self) {
        self.closing.cancel();
        // The exit follower ends once the death it is handling is handled (its container
        // removed): waited for, at most as long as that may take.
        let exits = self.exits.lock().unwrap().take();
        if let Some(mut exits) = exits {
            if tokio::time::timeout(EXITS_GRACE, &mut exits).await.is_err() {
                warn!("the exit follower did not end in time; stopped");
                exits.abort();
            }
        }
        for s in self.spares.close() {
            self.own_spares.lock().unwrap().remove(&s.label_id);
            remove(&self.docker, &s.container).await;
        }
        // A preparation still in flight removes the spare it makes (the slots are closed):
        // wait for that, at most as long as one may take.
        self.tasks.close(SPARE_WAIT).await;
    }
}
