//! Replicas as Docker containers, through the Docker API (bollard). Function images are
//! built through the API from the base image, the runtime package and the function's
//! folder; containers are labelled, limited and hardened, and attached only to the
//! internal functions network.
//!
//! Cold starts: each function has one spare container prepared ahead of time. With warm
//! spares (the default) the spare is started, probed ready and then paused, so a cold
//! start is an `unpause` (about 15 ms) instead of a `start` and a Python start (about
//! 0.5 s on a 2-vCPU VM). A paused container uses no CPU; it keeps its memory (about
//! 20 MB for the Python runtime). Without warm spares the spare is only created.
//!
//! A cold start takes the spare and a new one is prepared in the background; there is
//! at most one preparation per function at a time. A cold start that comes while the
//! spare is still being prepared waits for it (bounded) and takes it, rather than
//! starting a second container beside the preparation; only when no spare comes (the
//! preparation failed, or another cold start waits for it) does it create and start a
//! container of its own.

use super::{Replica, Runtime, RuntimeError, RuntimeEvent};
use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::{ClientVersion, Docker};
use futures::StreamExt;
use roost_common::spec::{FunctionSpec, Runtime as Kind};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// A container prepared ahead of time.
#[derive(Debug, Clone)]
struct Spare {
    container: String,
    label_id: String,
    /// Started, probed ready and paused, at this address; `None`: only created.
    warm: Option<SocketAddr>,
}

/// How long a spare's warm-up may take to answer its readiness path.
const WARM_UP_DEADLINE: Duration = Duration::from_secs(30);

/// How long a cold start waits for the spare being prepared: its warm-up deadline and a
/// margin for the engine's create, start and pause calls.
const SPARE_WAIT: Duration = Duration::from_secs(WARM_UP_DEADLINE.as_secs() + 10);

/// Label on every container and image Roost manages.
pub const MANAGED: &str = "roost.managed";

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
}

/// The Docker runtime.
pub struct DockerRuntime {
    docker: Docker,
    config: DockerConfig,
    /// One build at a time per image tag: concurrent prepares of a function wait for it.
    builds: tokio::sync::Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    /// The image prepared for each definition hash.
    images: Mutex<HashMap<String, String>>,
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
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<RuntimeEvent>>>,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime").field("config", &self.config).finish()
    }
}

fn other(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Other(e.to_string())
}

/// Gone, or already being removed.
fn is_gone(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404 | 409, .. })
}

/// A Docker-safe tag fragment of a version.
fn tag_part(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// The image tag of a function: its version and a hash of its build context (the
/// Dockerfile, the runtime package and the function's folder), so any change to what goes
/// into the image gives a new tag.
pub fn image_tag(spec: &FunctionSpec, context: &[u8]) -> String {
    match &spec.runtime {
        Kind::Image { image } => image.clone(),
        _ => format!("roost-fn-{}:{}-{:016x}", spec.name, tag_part(&spec.version), roost_common::hash::fnv1a(context)),
    }
}

/// The Dockerfile of a python or command function image. As few steps as it can be: the
/// classic builder runs a container for every step, seconds each on a slow storage
/// driver (fuse-overlayfs), and a function's first cold start may wait for its build.
/// The context holds `opt/roost/roost_runtime` and `opt/roost/function` (one COPY).
pub fn dockerfile(spec: &FunctionSpec, base: &str) -> String {
    let quoted = |v: &str| serde_json::to_string(v).expect("strings serialize");
    let mut d = format!("FROM {base}\nCOPY opt /opt\n");
    let (kind, extra) = match &spec.runtime {
        Kind::Python { extra_dependencies, .. } => ("python", extra_dependencies.clone()),
        _ => ("command", Vec::new()),
    };
    if !extra.is_empty() {
        d.push_str(&format!("RUN python3 -m pip install --no-cache-dir --target /opt/roost/deps {}\n", extra.join(" ")));
    }
    // Compiled once at build time: the root file system is read-only at run time.
    d.push_str("RUN python3 -m compileall -q /opt/roost\n");
    d.push_str("ENV PYTHONPATH=/opt/roost:/opt/roost/deps PYTHONDONTWRITEBYTECODE=1 ROOST_FUNCTION_DIR=/opt/roost/function\n");
    // -S: no site module (the image has no site-packages Roost uses): a faster start.
    d.push_str(&format!("WORKDIR /opt/roost/function\nCMD [\"python3\", \"-S\", \"-m\", \"roost_runtime\", \"{kind}\"]\n"));
    // One LABEL step (the build API's labels option adds one step per label). The name
    // and version are in the tag already, so the labels never change the context's hash.
    d.push_str(&format!("LABEL {MANAGED}=\"true\" roost.function={} roost.version={}\n", quoted(&spec.name), quoted(&spec.version)));
    d
}

fn add_dir(tar: &mut tar::Builder<Vec<u8>>, src: &Path, name: &str) -> std::io::Result<()> {
    tar.append_dir_all(name, src)
}

impl DockerRuntime {
    /// Connects to the Docker engine (API 1.41, which Docker 20.10 and later speak) and
    /// starts following container exits.
    pub async fn connect(config: DockerConfig) -> Result<std::sync::Arc<DockerRuntime>, RuntimeError> {
        let socket = config.socket.to_string_lossy().to_string();
        let docker = Docker::connect_with_unix(&socket, 120, &ClientVersion { major_version: 1, minor_version: 41 })
            .map_err(|e| other(format!("cannot use the Docker socket {socket}: {e}; is Docker running, and is the socket mounted?")))?;
        docker.ping().await.map_err(|e| other(format!("the Docker engine at {socket} does not answer: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let rt = std::sync::Arc::new(DockerRuntime { docker: docker.clone(), config, builds: Default::default(), images: Default::default(), spares: SpareSlots::new(), aliases: Default::default(), own_spares: Default::default(), events_rx: Mutex::new(Some(rx)) });
        rt.ensure_network().await?;
        tokio::spawn(follow_exits(docker, tx, rt.aliases.clone()));
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
            Err(e) if self.docker.inspect_network(&self.config.network, None).await.is_ok() => {
                let _ = e;
                Ok(())
            }
            Err(e) => Err(other(format!("cannot create network {}: {e}", self.config.network))),
        }
    }

    fn context(&self, spec: &FunctionSpec, folder: &Path) -> std::io::Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        let docker_file = dockerfile(spec, &self.config.base_image);
        let mut header = tar::Header::new_gnu();
        header.set_size(docker_file.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "Dockerfile", docker_file.as_bytes())?;
        add_dir(&mut tar, &self.config.runtime_dir.join("roost_runtime"), "opt/roost/roost_runtime")?;
        add_dir(&mut tar, folder, "opt/roost/function")?;
        tar.into_inner()
    }

    /// Prepares a spare container for `spec_hash` in the background, unless one is ready
    /// or being prepared: created, then (with warm spares) started, probed ready and
    /// paused. A spare that cannot be warmed is replaced by a created one.
    fn spawn_spare(&self, spec: &FunctionSpec, spec_hash: &str, image: &str) {
        let Some(preparation) = self.spares.begin(spec_hash) else { return };
        let (docker, config, own) = (self.docker.clone(), self.config.clone(), self.own_spares.clone());
        let (spec, hash, image) = (spec.clone(), spec_hash.to_string(), image.to_string());
        let label_id = format!("{}-spare-{:x}", spec.name, std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
        own.lock().unwrap().insert(label_id.clone());
        tokio::spawn(async move {
            let mut created = create(&docker, &config, &spec, &hash, &image, &label_id).await;
            let mut warm = None;
            if let (Ok(container), true) = (&created, config.warm_spares) {
                match warm_up(&docker, &config, &spec, container).await {
                    Ok(address) => warm = Some(address),
                    Err(e) => {
                        warn!(function = %spec.name, error = %e, "cannot keep a warm (paused) spare; keeping a created one");
                        let _ = docker.remove_container(container, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
                        created = create(&docker, &config, &spec, &hash, &image, &label_id).await;
                    }
                }
            }
            match created {
                Ok(container) => {
                    // Handed back after `close`: removed, never left behind.
                    if let Some(left) = preparation.finish(Some(Spare { container, label_id, warm })) {
                        own.lock().unwrap().remove(&left.label_id);
                        let _ = docker.remove_container(&left.container, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
                    }
                }
                Err(e) => {
                    warn!(function = %spec.name, error = %e, "cannot create a spare container");
                    own.lock().unwrap().remove(&label_id);
                    let _ = preparation.finish(None);
                }
            }
        });
    }

    fn replica_of(&self, c: &bollard::models::ContainerSummary) -> Option<Replica> {
        let labels = c.labels.as_ref()?;
        let ip = c.network_settings.as_ref()?.networks.as_ref()?.get(&self.config.network)?.ip_address.clone()?;
        let label_id = labels.get("roost.replica")?;
        Some(Replica {
            // A spare taken by a start is the replica the orchestrator named.
            id: self.aliases.lock().unwrap().get(label_id).unwrap_or(label_id).clone(),
            function: labels.get("roost.function")?.clone(),
            version: labels.get("roost.version")?.clone(),
            spec_hash: labels.get("roost.spec-hash")?.clone(),
            address: SocketAddr::new(ip.parse().ok()?, self.config.port),
            handle: c.id.clone()?,
        })
    }
}

/// Creates (does not start) a replica container of a prepared function.
async fn create(docker: &Docker, config: &DockerConfig, spec: &FunctionSpec, spec_hash: &str, image: &str, replica_id: &str) -> Result<String, String> {
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.push(format!("PORT={}", config.port));
    env.push("ROOST_BIND=0.0.0.0".into());
    env.push(format!("ROOST_FUNCTION_NAME={}", spec.name));
    env.push(format!("ROOST_TIMEOUT_S={}", spec.limits.timeout.as_secs_f64()));
    match &spec.runtime {
        Kind::Python { file, .. } => env.push(format!("ROOST_FUNCTION_FILE={file}")),
        Kind::Command { command, .. } => env.push(format!("ROOST_COMMAND={}", serde_json::to_string(command).expect("strings serialize"))),
        Kind::Image { .. } => {}
    }
    let labels = HashMap::from([
        (MANAGED.to_string(), "true".to_string()),
        ("roost.function".to_string(), spec.name.clone()),
        ("roost.version".to_string(), spec.version.clone()),
        ("roost.replica".to_string(), replica_id.to_string()),
        ("roost.spec-hash".to_string(), spec_hash.to_string()),
        ("roost.network".to_string(), config.network.clone()),
    ]);
    let host = HostConfig {
        memory: Some(spec.limits.memory as i64),
        memory_swap: Some(spec.limits.memory as i64),
        nano_cpus: Some((spec.limits.cpu * 1e9) as i64),
        pids_limit: Some(i64::from(spec.limits.pids)),
        readonly_rootfs: Some(true),
        tmpfs: Some(HashMap::from([("/tmp".to_string(), "rw,noexec,nosuid,size=16m".to_string())])),
        security_opt: Some(vec!["no-new-privileges".into()]),
        cap_drop: Some(vec!["ALL".into()]),
        network_mode: Some(config.network.clone()),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        env: Some(env),
        labels: Some(labels),
        user: Some("65534:65534".into()),
        host_config: Some(host),
        ..Default::default()
    };
    let name = format!("roost-{replica_id}");
    docker
        .create_container(Some(CreateContainerOptionsBuilder::default().name(&name).build()), body)
        .await
        .map(|c| c.id)
        .map_err(|e| format!("create: {e}"))
}

/// Where a started container listens on the functions network.
async fn address_of(docker: &Docker, config: &DockerConfig, container: &str) -> Result<SocketAddr, String> {
    let inspect = docker.inspect_container(container, None).await.map_err(|e| format!("inspect: {e}"))?;
    let ip = inspect
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| n.get(&config.network).and_then(|e| e.ip_address.clone()))
        .filter(|ip| !ip.is_empty())
        .ok_or_else(|| format!("the container has no address on network {}", config.network))?;
    let ip = ip.parse().map_err(|e| format!("bad container address {ip:?}: {e}"))?;
    Ok(SocketAddr::new(ip, config.port))
}

/// Starts a created spare, waits until it answers its readiness path, and pauses it.
async fn warm_up(docker: &Docker, config: &DockerConfig, spec: &FunctionSpec, container: &str) -> Result<SocketAddr, String> {
    docker.start_container(container, None).await.map_err(|e| format!("start: {e}"))?;
    let address = address_of(docker, config, container).await?;
    crate::probe::until_ready(address, &spec.readiness_path, Duration::from_millis(10), WARM_UP_DEADLINE)
        .await
        .ok_or_else(|| format!("the spare did not answer {} within {WARM_UP_DEADLINE:?}", spec.readiness_path))?;
    docker.pause_container(container).await.map_err(|e| format!("pause: {e}"))?;
    Ok(address)
}

/// Follows Docker's events and reports Roost containers that die.
async fn follow_exits(docker: Docker, tx: mpsc::UnboundedSender<RuntimeEvent>, aliases: std::sync::Arc<Mutex<HashMap<String, String>>>) {
    loop {
        let filters = HashMap::from([
            ("type", vec!["container"]),
            ("event", vec!["die"]),
            ("label", vec!["roost.managed=true"]),
        ]);
        let mut events = docker.events(Some(EventsOptionsBuilder::default().filters(&filters).build()));
        while let Some(ev) = events.next().await {
            let Ok(ev) = ev else { break };
            let attrs = ev.actor.and_then(|a| a.attributes).unwrap_or_default();
            let (Some(id), Some(function)) = (attrs.get("roost.replica"), attrs.get("roost.function")) else { continue };
            let id = aliases.lock().unwrap().remove(id).unwrap_or_else(|| id.clone());
            let reason = format!("container died (exit code {})", attrs.get("exitCode").map(String::as_str).unwrap_or("?"));
            if tx.send(RuntimeEvent::Exited { replica_id: id.clone(), function: function.clone(), reason }).is_err() {
                return;
            }
        }
        warn!("Docker event stream ended; following again");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Each definition hash's spare: ready, or being prepared. Pure bookkeeping (no Docker),
/// so that `start`, `spawn_spare` and `close` agree on it without races:
/// - at most one preparation per hash: [`SpareSlots::begin`] refuses while a spare is
///   ready or being prepared;
/// - a claim during a preparation waits for it (once, bounded) and takes what it made;
///   only one claim waits on a preparation (it reserves the spare), the others fall
///   back at once instead of waiting for a spare they would not get;
/// - after [`SpareSlots::close`] nothing is kept: a preparation that ends is handed its
///   spare back to remove, and a claim waiting on it wakes and falls back.
struct SpareSlots<T> {
    inner: Mutex<SlotsInner<T>>,
}

struct SlotsInner<T> {
    slots: HashMap<String, Slot<T>>,
    closed: bool,
    /// Identifies preparations, so a late end or release never touches a newer slot.
    next_id: u64,
}

enum Slot<T> {
    /// Prepared and not taken. `reserved`: the claim that waited on its preparation is
    /// about to take it; other claims leave it.
    Ready { spare: T, id: u64, reserved: bool },
    /// Being prepared. `done` is never sent on: it is dropped when the slot leaves this
    /// state (prepared, failed, or closed), which wakes every receiver, even one that
    /// subscribed just before (a watch receiver sees a closed channel at once: no lost
    /// wake-up). `reserved`: a claim waits on it.
    Preparing { id: u64, done: watch::Sender<()>, reserved: bool },
}

/// What a claim got.
#[derive(Debug, PartialEq, Eq)]
enum Claim<T> {
    /// A spare that was ready.
    Ready(T),
    /// The spare of the preparation the claim waited for.
    Prepared(T),
    /// None: none ready, the preparation failed, timed out or was closed, or another
    /// claim has the spare.
    Missing,
}

impl<T> SpareSlots<T> {
    fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(SpareSlots { inner: Mutex::new(SlotsInner { slots: HashMap::new(), closed: false, next_id: 0 }) })
    }

    /// Starts preparing `key`'s spare, unless one is ready or being prepared, or the
    /// slots are closed. The preparation ends with [`Preparation::finish`]; dropped
    /// unfinished (a panic), it counts as failed.
    fn begin(self: &std::sync::Arc<Self>, key: &str) -> Option<Preparation<T>> {
        let mut inner = self.inner.lock().unwrap();
        if inner.closed || inner.slots.contains_key(key) {
            return None;
        }
        inner.next_id += 1;
        let id = inner.next_id;
        inner.slots.insert(key.to_string(), Slot::Preparing { id, done: watch::channel(()).0, reserved: false });
        Some(Preparation { slots: self.clone(), key: key.to_string(), id, finished: false })
    }

    /// Takes `key`'s spare: a ready one at once; one being prepared (that no other claim
    /// waits for) once its preparation ends, waiting at most `wait` and only once.
    async fn claim(&self, key: &str, wait: Duration) -> Claim<T> {
        let (id, mut done) = {
            let mut inner = self.inner.lock().unwrap();
            match inner.slots.get_mut(key) {
                Some(Slot::Ready { reserved: false, .. }) => match inner.slots.remove(key) {
                    Some(Slot::Ready { spare, .. }) => return Claim::Ready(spare),
                    _ => unreachable!("matched just above, under the lock"),
                },
                Some(Slot::Preparing { id, done, reserved }) if !*reserved => {
                    *reserved = true;
                    (*id, done.subscribe())
                }
                _ => return Claim::Missing,
            }
        };
        // Releases the reservation however this ends (also if the claim is dropped).
        let reservation = Reservation { slots: self, key, id };
        // `changed` only ends with an error, when the preparation ends (see `Slot`).
        let _ = tokio::time::timeout(wait, done.changed()).await;
        reservation.take()
    }

    /// Closes: no preparation begins any more, the ready spares are returned (to remove),
    /// and preparations in flight are forgotten (a claim waiting on one wakes and gets
    /// `Missing`; the spare it makes is handed back to its preparer to remove).
    fn close(&self) -> Vec<T> {
        let mut inner = self.inner.lock().unwrap();
        inner.closed = true;
        inner
            .slots
            .drain()
            .filter_map(|(_, slot)| match slot {
                Slot::Ready { spare, .. } => Some(spare),
                Slot::Preparing { .. } => None,
            })
            .collect()
    }
}

/// One spare being prepared; see [`SpareSlots::begin`].
struct Preparation<T> {
    slots: std::sync::Arc<SpareSlots<T>>,
    key: String,
    id: u64,
    finished: bool,
}

impl<T> Preparation<T> {
    /// Ends the preparation: `Some(spare)` becomes the ready spare (for the claim that
    /// waits, if one does), `None` frees the slot for another preparation. Returns a
    /// spare that cannot be kept (the slots were closed): the caller removes it.
    #[must_use = "a spare handed back must be removed"]
    fn finish(mut self, spare: Option<T>) -> Option<T> {
        self.end(spare)
    }

    fn end(&mut self, spare: Option<T>) -> Option<T> {
        self.finished = true;
        let mut inner = self.slots.inner.lock().unwrap();
        let reserved = match inner.slots.get(&self.key) {
            Some(Slot::Preparing { id, reserved, .. }) if *id == self.id && !inner.closed => *reserved,
            _ => return spare,
        };
        // Replacing (or removing) the slot drops `done`: a waiting claim wakes, and finds
        // the spare already in place once it gets the lock.
        match spare {
            Some(spare) => {
                inner.slots.insert(self.key.clone(), Slot::Ready { spare, id: self.id, reserved });
            }
            None => {
                inner.slots.remove(&self.key);
            }
        }
        None
    }
}

impl<T> Drop for Preparation<T> {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.end(None);
        }
    }
}

/// A claim's hold on a spare being prepared; see [`SpareSlots::claim`].
struct Reservation<'a, T> {
    slots: &'a SpareSlots<T>,
    key: &'a str,
    id: u64,
}

impl<T> Reservation<'_, T> {
    /// The spare the preparation made, if it is there now.
    fn take(&self) -> Claim<T> {
        let mut inner = self.slots.inner.lock().unwrap();
        if matches!(inner.slots.get(self.key), Some(Slot::Ready { id, .. }) if *id == self.id) {
            if let Some(Slot::Ready { spare, .. }) = inner.slots.remove(self.key) {
                return Claim::Prepared(spare);
            }
        }
        Claim::Missing
    }
}

impl<T> Drop for Reservation<'_, T> {
    fn drop(&mut self) {
        // Not taken (timed out, failed, dropped): the spare, or the preparation, is free
        // for any claim again.
        let mut inner = self.slots.inner.lock().unwrap();
        match inner.slots.get_mut(self.key) {
            Some(Slot::Ready { id, reserved, .. } | Slot::Preparing { id, reserved, .. }) if *id == self.id => *reserved = false,
            _ => {}
        }
    }
}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn prepare(&self, spec: &FunctionSpec, spec_hash: &str) -> Result<(), RuntimeError> {
        let fail = |reason: String| RuntimeError::Prepare { function: spec.name.clone(), reason };
        let body = match &spec.runtime {
            Kind::Image { .. } => Vec::new(),
            Kind::Python { folder, .. } | Kind::Command { folder, .. } => {
                let folder = self.config.definitions_dir.join(folder);
                self.context(spec, &folder).map_err(|e| fail(format!("cannot pack {}: {e}", folder.display())))?
            }
        };
        let tag = image_tag(spec, &body);
        self.images.lock().unwrap().insert(spec_hash.to_string(), tag.clone());
        if self.docker.inspect_image(&tag).await.is_ok() {
            self.spawn_spare(spec, spec_hash, &tag);
            return Ok(());
        }
        if let Kind::Image { image } = &spec.runtime {
            return Err(fail(format!("image {image:?} is not on this Docker engine; load or build it first (no registry is used)")));
        }
        let lock = self.builds.lock().await.entry(tag.clone()).or_default().clone();
        let _building = lock.lock().await;
        if self.docker.inspect_image(&tag).await.is_ok() {
            return Ok(()); // built while this call waited
        }
        let options = BuildImageOptionsBuilder::default().dockerfile("Dockerfile").t(&tag).rm(true).forcerm(true).build();
        info!(function = %spec.name, image = %tag, "building the function image");
        let mut stream = self.docker.build_image(options, None, Some(bollard::body_full(body.into())));
        let mut tail: Vec<String> = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(line) = info.stream.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
                        info!(function = %spec.name, "build: {line}");
                        tail.push(line.to_string());
                        if tail.len() > 10 {
                            tail.remove(0);
                        }
                    }
                    if let Some(err) = info.error_detail.and_then(|d| d.message) {
                        return Err(fail(format!("image build failed: {err}; last output: {}", tail.join(" | "))));
                    }
                }
                Err(e) => return Err(fail(format!("image build failed: {e}; last output: {}", tail.join(" | ")))),
            }
        }
        self.spawn_spare(spec, spec_hash, &tag);
        Ok(())
    }

    async fn start(&self, spec: &FunctionSpec, spec_hash: &str, replica_id: &str) -> Result<Replica, RuntimeError> {
        let fail = |reason: String| RuntimeError::Start { function: spec.name.clone(), reason };
        let image = self.images.lock().unwrap().get(spec_hash).cloned().ok_or_else(|| fail("not prepared".into()))?;
        // A ready spare, or the one being prepared (waited for, once); else none.
        let waited = std::time::Instant::now();
        let spare = match self.spares.claim(spec_hash, SPARE_WAIT).await {
            Claim::Ready(s) => Some(s),
            Claim::Prepared(s) => {
                info!(function = %spec.name, waited_ms = waited.elapsed().as_millis() as u64, "took the spare that was being prepared");
                Some(s)
            }
            Claim::Missing => None,
        };
        let mut container = None;
        let mut warm = None;
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
                    let _ = self.docker.remove_container(&s.container, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
                }
            }
        }
        let container = match container {
            Some(c) => c,
            None => {
                let c = create(&self.docker, &self.config, spec, spec_hash, &image, replica_id).await.map_err(fail)?;
                if let Err(e) = self.docker.start_container(&c, None).await {
                    let _ = self.docker.remove_container(&c, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
                    return Err(fail(format!("start: {e}")));
                }
                c
            }
        };
        // The next cold start's spare is prepared now, off its path (unless one already is).
        self.spawn_spare(spec, spec_hash, &image);
        let address = match warm {
            Some(a) => a,
            None => address_of(&self.docker, &self.config, &container).await.map_err(fail)?,
        };
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
        let t = grace.as_secs().max(1) as i32;
        match self.docker.stop_container(&replica.handle, Some(StopContainerOptionsBuilder::default().t(t).build())).await {
            Ok(()) => {}
            Err(e) if is_gone(&e) => return Ok(()),
            Err(e) => warn!(replica = %replica.id, error = %e, "stop failed; removing by force"),
        }
        match self.docker.remove_container(&replica.handle, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await {
            Ok(()) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(e) => Err(other(format!("cannot remove container {}: {e}", replica.handle))),
        }
    }

    async fn list(&self) -> Result<Vec<Replica>, RuntimeError> {
        let mine = format!("roost.network={}", self.config.network);
        let filters = HashMap::from([("label", vec!["roost.managed=true", mine.as_str()])]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
            .await
            .map_err(other)?;
        let mut out = Vec::new();
        for c in &list {
            let label = c.labels.as_ref().and_then(|l| l.get("roost.replica"));
            if label.is_some_and(|id| self.own_spares.lock().unwrap().contains(id)) {
                continue; // this runtime's spare (created, warming or paused): not a replica, not a leftover
            }
            let running = c.state.as_ref().map(|s| format!("{s:?}").to_lowercase().contains("running")).unwrap_or(false);
            match self.replica_of(c).filter(|_| running) {
                Some(r) => out.push(r),
                None => {
                    // Stopped or unreadable: a leftover; remove it.
                    if let Some(id) = &c.id {
                        let _ = self.docker.remove_container(id, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
                    }
                }
            }
        }
        Ok(out)
    }

    fn events(&self) -> mpsc::UnboundedReceiver<RuntimeEvent> {
        self.events_rx.lock().unwrap().take().expect("DockerRuntime::events is called once")
    }

    async fn close(&self) {
        for s in self.spares.close() {
            self.own_spares.lock().unwrap().remove(&s.label_id);
            let _ = self.docker.remove_container(&s.container, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> FunctionSpec {
        roost_common::spec::parse(yaml).unwrap().into_values().next().unwrap()
    }

    #[test]
    fn tags_and_dockerfiles() {
        let s = spec("usable-functions:\n  hello:\n    version: 0.1\n    configuration: {programing_language: python, base_function_file_name: hello.py, function_folder: hello, extra_dependencies: \"requests\"}\n");
        assert_eq!(image_tag(&s, b"ctx"), format!("roost-fn-hello:0.1-{:016x}", roost_common::hash::fnv1a(b"ctx")));
        assert_ne!(image_tag(&s, b"ctx"), image_tag(&s, b"ctx2"));
        let d = dockerfile(&s, "roost/base:bookworm");
        assert!(d.starts_with("FROM roost/base:bookworm\n"));
        assert!(d.contains("pip install --no-cache-dir --target /opt/roost/deps requests"));
        assert!(d.contains(r#"CMD ["python3", "-S", "-m", "roost_runtime", "python"]"#));
        assert!(d.ends_with("LABEL roost.managed=\"true\" roost.function=\"hello\" roost.version=\"0.1\"\n"), "{d}");
        // FROM, one COPY, pip, compileall, ENV, WORKDIR, CMD, one LABEL.
        assert_eq!(d.lines().count(), 8, "{d}");
        let img = spec("usable-functions:\n  x:\n    version: 1\n    runtime: {kind: image, image: \"my:1\"}\n");
        assert_eq!(image_tag(&img, b""), "my:1");
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_ready_spare_is_claimed_once_and_a_new_preparation_can_begin() {
        let slots = SpareSlots::new();
        assert_eq!(slots.claim("h", WAIT).await, Claim::Missing, "nothing prepared");
        let p = slots.begin("h").expect("the first preparation begins");
        assert!(slots.begin("h").is_none(), "one preparation per hash while one is in flight");
        assert!(slots.begin("other").is_some_and(|p| p.finish(None).is_none()), "other hashes are independent");
        assert_eq!(p.finish(Some("spare-1")), None);
        assert!(slots.begin("h").is_none(), "none while a spare is ready");
        assert_eq!(slots.claim("h", WAIT).await, Claim::Ready("spare-1"));
        assert_eq!(slots.claim("h", WAIT).await, Claim::Missing, "taken once");
        let p = slots.begin("h").expect("the next one begins once the spare is taken");
        assert_eq!(p.finish(Some("spare-2")), None);
        assert_eq!(slots.claim("h", WAIT).await, Claim::Ready("spare-2"));
    }

    #[tokio::test]
    async fn a_claim_during_a_preparation_waits_for_it_and_takes_its_spare() {
        let slots = SpareSlots::new();
        let p = slots.begin("h").unwrap();
        let claim = tokio::spawn({
            let slots = slots.clone();
            async move { slots.claim("h", WAIT).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!claim.is_finished(), "the claim waits for the preparation");
        assert_eq!(p.finish(Some("spare")), None);
        assert_eq!(claim.await.unwrap(), Claim::Prepared("spare"));
        assert_eq!(slots.claim("h", WAIT).await, Claim::Missing);
    }

    #[tokio::test]
    async fn a_waiting_claim_wakes_as_soon_as_the_preparation_ends() {
        // The claim subscribes and sleeps first, then the preparation ends: the claim
        // wakes at once instead of sleeping out its (here an hour long) bound.
        let slots = SpareSlots::new();
        let p = slots.begin("h").unwrap();
        let claim = slots.claim("h", Duration::from_secs(3600));
        let finish = async {
            assert_eq!(p.finish(Some("spare")), None);
        };
        let (got, ()) = tokio::time::timeout(WAIT, async { futures::join!(claim, finish) }).await.expect("no lost wake-up");
        assert_eq!(got, Claim::Prepared("spare"));
    }

    /// A claim of "h" in a task of its own, given 20 ms to start waiting.
    async fn claim_soon(slots: &std::sync::Arc<SpareSlots<&'static str>>) -> tokio::task::JoinHandle<Claim<&'static str>> {
        let slots = slots.clone();
        let claim = tokio::spawn(async move { slots.claim("h", WAIT).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        claim
    }

    #[tokio::test]
    async fn a_failed_preparation_gives_the_fallback_and_frees_the_slot() {
        let slots = SpareSlots::<&str>::new();
        let p = slots.begin("h").unwrap();
        let claim = claim_soon(&slots).await;
        assert_eq!(p.finish(None), None);
        assert_eq!(claim.await.unwrap(), Claim::Missing);
        assert!(slots.begin("h").is_some(), "a new preparation may begin");

        // A preparation dropped unfinished (its task panicked) counts as failed.
        let slots = SpareSlots::<&str>::new();
        let p = slots.begin("h").unwrap();
        let claim = claim_soon(&slots).await;
        drop(p);
        assert_eq!(claim.await.unwrap(), Claim::Missing);
        assert!(slots.begin("h").is_some());
    }

    #[tokio::test]
    async fn two_concurrent_claims_get_one_spare_and_one_fallback() {
        let slots = SpareSlots::new();
        let p = slots.begin("h").unwrap();
        let claims: Vec<_> = (0..2)
            .map(|_| {
                let slots = slots.clone();
                tokio::spawn(async move { slots.claim("h", WAIT).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(p.finish(Some("spare")), None);
        let mut got = Vec::new();
        for c in claims {
            got.push(c.await.unwrap());
        }
        got.sort_by_key(|c| matches!(c, Claim::Missing));
        assert_eq!(got, vec![Claim::Prepared("spare"), Claim::Missing]);
        // Racing on a ready spare too: one gets it.
        let p = slots.begin("h").unwrap();
        assert_eq!(p.finish(Some("spare-2")), None);
        let (a, b) = futures::join!(slots.claim("h", WAIT), slots.claim("h", WAIT));
        assert_eq!([a, b].into_iter().filter(|c| *c == Claim::Ready("spare-2")).count(), 1);
    }

    #[tokio::test]
    async fn a_claim_waits_at_most_its_bound_and_then_releases_the_spare() {
        let slots = SpareSlots::new();
        let p = slots.begin("h").unwrap();
        assert_eq!(slots.claim("h", Duration::from_millis(20)).await, Claim::Missing, "timed out");
        assert!(slots.begin("h").is_none(), "the preparation still runs");
        assert_eq!(p.finish(Some("spare")), None);
        assert_eq!(slots.claim("h", WAIT).await, Claim::Ready("spare"), "not kept for the claim that gave up");

        // A claim dropped while it waits releases its reservation too.
        let p = slots.begin("h").unwrap();
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.claim("h", WAIT).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        let _ = waiting.await;
        let claim = claim_soon(&slots).await;
        assert_eq!(p.finish(Some("spare-2")), None);
        assert_eq!(claim.await.unwrap(), Claim::Prepared("spare-2"));
    }

    #[tokio::test]
    async fn close_during_a_preparation_wakes_the_claim_and_hands_the_spare_back() {
        let slots = SpareSlots::new();
        let ready = slots.begin("ready").unwrap();
        assert_eq!(ready.finish(Some("ready-spare")), None);
        let p = slots.begin("h").unwrap();
        let claim = tokio::spawn({
            let slots = slots.clone();
            async move { slots.claim("h", Duration::from_secs(3600)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(slots.close(), vec!["ready-spare"], "ready spares are returned to remove");
        let got = tokio::time::timeout(WAIT, claim).await.expect("a waiting claim does not hang after close");
        assert_eq!(got.unwrap(), Claim::Missing);
        assert_eq!(p.finish(Some("late")), Some("late"), "a spare finished after close is handed back");
        assert!(slots.begin("h").is_none(), "no preparation after close");
        assert_eq!(slots.claim("h", WAIT).await, Claim::Missing);
        assert!(slots.close().is_empty());
    }
}
