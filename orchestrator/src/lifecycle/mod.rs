//! A function's whole life as a pure state machine: `handle(event, now) -> effects`. No
//! I/O, no awaits, no clock of its own; every scaling and lifecycle decision of the
//! orchestrator is made here, and [`crate::function`] performs the effects and feeds their
//! results back as events. Tested without sockets, in virtual time (`lifecycle/tests.rs`).
//!
//! A replica's stages, in order: starting (the runtime starts it), probing (readiness),
//! registering (endpoint added, waiting for every Envoy's ACK), ready (marked ready in
//! Redis, the gate told), draining (drain ACKed, waiting for requests in flight), stopping
//! (endpoint removed and ACKed, then stopped). A replica is ready only after its probe
//! passed and Envoy ACKed it; it leaves only through draining, so no request is failed.
//!
//! Before its first start a function is built (the runtime's `prepare`: a Docker image, a
//! virtual environment); a wake while it builds is held until the build is done. A build
//! that fails, or starts that fail (a replica exiting or not answering its probe while it
//! starts), *refuse* the function: its callers are answered at once with the reason
//! instead of waiting, through the refusal the gate reads ([`Refusal`]). Failed starts
//! back off as a crash loop does (1 s, 2 s, 4 s, ... at most a minute, reset by a
//! definition change or a replica that becomes ready); a failed build is asked again
//! every few seconds, which the runtime answers from memory until the definition or the
//! function's folder changes.
//!
//! - [`scaling`]: how many replicas the observed load needs (a pure function).
//! - [`admission`]: whether its requests go straight to its replicas or through the gate.
//! - [`adoption`]: what a starting orchestrator adopts, stops and removes.

pub mod admission;
pub mod adoption;
pub mod scaling;

use crate::runtime::Replica;
use admission::Admission;
use roost_common::spec::FunctionSpec;
use roost_common::wire::redis::Refusal;
use roost_common::wire::status::{FunctionState, FunctionStatus, Phases, ReplicaPhase, ReplicaStatus, WakeReport};
use scaling::Observed;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What a failure of one step keeps: the error, with its source chain.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Why a replica did not become ready, or why a wake was not answered with one.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    /// The control plane did not take the function's route and cluster.
    #[error("cannot declare the function to the control plane: {0}")]
    Declare(#[source] Cause),
    /// The runtime could not start the replica (or build what it needs).
    #[error("{0}")]
    Start(#[source] Cause),
    /// The replica never answered its readiness probe.
    #[error("replica {id} did not answer {path} on {address} within {timeout:?} (readiness.timeout); {}", output_or_hint(.output))]
    NotReady {
        /// Replica id.
        id: String,
        /// The readiness path.
        path: String,
        /// Where it was probed.
        address: SocketAddr,
        /// How long the probe tried.
        timeout: Duration,
        /// The last lines the replica wrote.
        output: Option<String>,
    },
    /// What the function needs before it starts could not be built.
    #[error("the function's build failed: {0}")]
    Build(String),
    /// Its replicas fail to start; no new one starts before the back-off ends.
    #[error("{reason} (no replica starts for {retry_in:?})")]
    BackingOff {
        /// Why the last start failed.
        reason: String,
        /// Until the next start.
        retry_in: Duration,
    },
    /// Envoy did not take the replica's endpoint.
    #[error("cannot register replica {id}'s endpoint: {cause}")]
    Register {
        /// Replica id.
        id: String,
        /// The control plane's error.
        #[source]
        cause: Cause,
    },
    /// The replica exited before it was ready.
    #[error("replica {id} exited before it was ready: {reason}")]
    Exited {
        /// Replica id.
        id: String,
        /// Exit code or signal.
        reason: String,
    },
    /// The function was removed from the definitions.
    #[error("function {0:?} was removed")]
    Removed(String),
    /// The orchestrator is stopping.
    #[error("the orchestrator is shutting down")]
    ShuttingDown,
}

fn output_or_hint(output: &Option<String>) -> String {
    match output {
        Some(o) => format!("its last output:\n{o}"),
        None => "it wrote nothing; check that it listens on $PORT".to_string(),
    }
}

/// The first back-off after a failed start; each further failure doubles it.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest back-off.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How often a failed build is asked again (the runtime answers from memory unless the
/// definition or the folder changed).
pub const REBUILD_CHECK: Duration = Duration::from_secs(2);

/// How often the supervisor reads the load of every quiet function ([`Function::quiet`])
/// in one batch, and signals those that have requests: the net under a lost wake or
/// scale signal. A quiet function is not ticked and reads nothing of its own: ten
/// thousand sleeping functions each reading Redis every 2 s cost the orchestrator a
/// quarter of a core.
pub const QUIET_READ: Duration = Duration::from_secs(2);

/// The back-off after `failures` failed starts in a row.
pub fn backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    (BACKOFF_FIRST * (1u32 << shift)).min(BACKOFF_MAX)
}

/// Who waits for a wake: a number the executor maps to its reply channel.
pub type WaiterId = u64;

/// The load of a function, as the executor read it from Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Requests in flight in Envoy.
    pub in_flight: u64,
    /// Requests queued in Envoy.
    pub pending: u64,
    /// Requests the gate holds (waiting for the function to wake or for capacity).
    pub held: u64,
    /// Asynchronous calls waiting at the async worker (queued, or for a retry).
    pub backlog: u64,
    /// Time since the last request started, when one was ever seen.
    pub since_last_request: Option<Duration>,
}

/// Something that happened, fed to [`Function::handle`].
#[derive(Debug, Clone)]
pub enum Event {
    /// Make sure a replica is ready; answer `waiter` (if any) when one is.
    Wake(Option<WaiterId>),
    /// The periodic tick: read the load and decide (a quiet function does nothing: see
    /// [`Function::quiet`]).
    Tick,
    /// A scale signal (the statsd-listener saw queueing, the gate holds requests, the
    /// supervisor's batched read found requests for a quiet function): read the load now
    /// and decide.
    Signal,
    /// The load was read.
    Load(Load),
    /// The control plane and Redis took (or refused) the function's declaration.
    Declared(Result<(), Cause>),
    /// The runtime started a replica (not yet ready), or could not.
    Started(String, Result<Replica, Cause>),
    /// The runtime built what the function needs for the definition with this hash, or
    /// could not (the reason, with the tail of the build's output).
    Prepared(String, Result<(), String>),
    /// A replica's readiness probe passed, or gave up (with the replica's last output).
    Probed(String, Result<(), Option<String>>),
    /// Every Envoy ACKed the replica's endpoint, or the control plane refused it.
    Registered(String, Result<(), Cause>),
    /// The control plane took (or not) whether the function is gated.
    Gated(bool, Result<(), Cause>),
    /// The replica was marked ready in Redis (or that failed and was logged).
    Noticed(String),
    /// A draining replica has no request in flight any more (or the deadline passed).
    DrainFinished(String),
    /// A replica's endpoint is removed and the replica stopped.
    Stopped(String),
    /// A replica exited on its own.
    Exited(String, String),
    /// A running replica found at start-up, already probed and registered.
    Adopted(Replica),
    /// The definition changed (new spec and its hash).
    Changed(Arc<FunctionSpec>, String),
    /// What the control plane routes for the function now (`None`: it does not know the
    /// function; a restarted control plane that lost its saved model, say): its endpoint
    /// addresses.
    Routed(Option<Vec<SocketAddr>>),
    /// The function left the definitions.
    Removed,
    /// The orchestrator stops: drain every replica, keep the function declared.
    Shutdown,
}

/// A metric the executor sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// A cold start completed, with its phases.
    ColdStart(Phases),
    /// A replica was added (`true`) or drained (`false`) by scaling.
    Scale(bool),
    /// The function went to zero ready replicas.
    Reap,
    /// A replica failed to start.
    StartFailure,
    /// A ready replica exited.
    Crash,
}

/// Something to do, returned by [`Function::handle`]. Effects marked *inline* are quick
/// Redis calls the executor awaits in order; the others run in their own tasks and
/// report back with the event named.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Declare the function (route, cluster) to the control plane and list it in Redis
    /// -> [`Event::Declared`].
    Declare(Arc<FunctionSpec>),
    /// Build what the runtime needs ahead of the first start -> [`Event::Prepared`].
    Prepare(Arc<FunctionSpec>, String),
    /// Start a replica with this id (declaring the function first when `declare`)
    /// -> [`Event::Started`].
    Start {
        /// The new replica's id.
        id: String,
        /// Its definition.
        spec: Arc<FunctionSpec>,
        /// The definition's hash.
        hash: String,
        /// The function is not declared yet: declare it before starting.
        declare: bool,
        /// No other replica is registered or starting: the function is not in Envoy, so
        /// tell the control plane it is waking while this replica starts (its cluster
        /// then reaches Envoy in the meantime, and the registration sends only the
        /// endpoint).
        waking: bool,
    },
    /// Probe the replica's readiness path until it answers -> [`Event::Probed`].
    Probe(Replica, String),
    /// Add the replica's endpoint, waiting for every Envoy's ACK -> [`Event::Registered`].
    Register(Replica),
    /// Tell the control plane whether the public entry sends the function's requests
    /// through the gate (`true`: it scales up) or straight to its replicas
    /// ([`admission`]) -> [`Event::Gated`].
    Gate(bool),
    /// Inline: mark the function ready in Redis and tell the gate, with the requests the
    /// ready replicas serve at once (the gate releases at most that many held requests at
    /// a time) -> [`Event::Noticed`] for the replica.
    SetReady {
        /// The replica that became ready.
        id: String,
        /// Ready replicas times `target_concurrency`.
        capacity: u32,
    },
    /// Inline: mark the function not ready (the gate holds new requests and wakes it).
    ClearReady,
    /// Inline: answer the function's callers at once with this (the gate reads it).
    Refuse(Refusal),
    /// Inline: end the refusal; the next request wakes the function again.
    Lift,
    /// Mark the endpoint draining (ACKed), then wait until the replica has no request in
    /// flight, at most `deadline` -> [`Event::DrainFinished`].
    Drain(Replica, Duration),
    /// Remove the endpoint (ACKed) if it was registered, then stop the replica
    /// -> [`Event::Stopped`].
    Stop {
        /// The replica.
        replica: Replica,
        /// Its endpoint was added and must be removed first.
        registered: bool,
    },
    /// Remove a dead replica's endpoint (result only logged).
    RemoveEndpoint(SocketAddr),
    /// Declare the function to the control plane again and add back the endpoints of
    /// these serving replicas (both idempotent), for a control plane that lost them
    /// -> [`Event::Declared`].
    Restore(Arc<FunctionSpec>, Vec<Replica>),
    /// Answer these wakes.
    Answer(Vec<WaiterId>, Result<WakeReport, StartError>),
    /// Inline: publish the ready replica count (and re-assert declared / ready in Redis).
    Publish {
        /// Replicas ready.
        ready: u32,
        /// The function is declared (so Redis may list it).
        declared: bool,
    },
    /// Inline: read the load -> [`Event::Load`].
    ReadLoad,
    /// Send a metric.
    Metric(Metric),
    /// Inline, last: remove the function from the control plane and Redis.
    Forget,
    /// The function's task ends.
    Exit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Starting,
    Probing,
    Registering,
    Ready,
    Draining,
    Stopping,
}

#[derive(Debug, Clone)]
struct Slot {
    /// `None` until the runtime has started it.
    replica: Option<Replica>,
    hash: String,
    stage: Stage,
    /// When the current stage began.
    since: Instant,
    phases: Phases,
    /// Its endpoint was added (so it must be removed).
    registered: bool,
    /// Exited while registering: remove the endpoint once the ACK is in.
    dead: bool,
    /// Found running at start-up, not cold-started.
    adopted: bool,
}

impl Slot {
    fn is_starting(&self) -> bool {
        matches!(self.stage, Stage::Starting | Stage::Probing | Stage::Registering) && !self.dead
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serving,
    Removing,
    ShuttingDown,
    Ended,
}

/// Where the build of the current definition stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Build {
    /// Under way since then.
    Running(Instant),
    /// Done: replicas may start.
    Done,
    /// Failed, for this reason; asked again at `check`.
    Failed { reason: String, check: Instant },
}

/// One function's state.
#[derive(Debug)]
pub struct Function {
    spec: Arc<FunctionSpec>,
    hash: String,
    id_prefix: String,
    next_id: u64,
    mode: Mode,
    declared: bool,
    declaring: bool,
    slots: BTreeMap<String, Slot>,
    waiters: Vec<WaiterId>,
    surplus_since: Option<Instant>,
    last_ready_at: Option<Instant>,
    cold_starts: u64,
    last_cold_start: Option<Phases>,
    last_error: Option<String>,
    build: Build,
    /// Failed starts in a row.
    failures: u32,
    /// No replica starts before then.
    backoff_until: Option<Instant>,
    /// The refusal the gate answers with, while there is one.
    refusal: Option<Refusal>,
    /// A wake came that no replica has answered yet (it may be the gate's, which has no
    /// waiter): start once the build is done.
    wanted: bool,
    /// Whether its requests go through the gate while it has a ready replica.
    admission: Admission,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Function {
    /// A new function; replica ids are `<id_prefix>-<n>`. Returns the effects that
    /// declare and prepare it, and lift any refusal left from before.
    pub fn new(spec: Arc<FunctionSpec>, hash: String, id_prefix: String, now: Instant) -> (Function, Vec<Effect>) {
        let mut f = Function {
            spec,
            hash,
            id_prefix,
            next_id: 0,
            mode: Mode::Serving,
            declared: false,
            declaring: false,
            slots: BTreeMap::new(),
            waiters: Vec::new(),
            surplus_since: None,
            last_ready_at: None,
            cold_starts: 0,
            last_cold_start: None,
            last_error: None,
            build: Build::Running(now),
            failures: 0,
            backoff_until: None,
            refusal: None,
            wanted: false,
            admission: Admission::default(),
        };
        let mut fx = Vec::new();
        f.declare(&mut fx);
        fx.push(Effect::Prepare(f.spec.clone(), f.hash.clone()));
        // A refusal an earlier orchestrator left in a Redis that kept its data is not this
        // one's: the function starts unrefused.
        fx.push(Effect::Lift);
        (f, fx)
    }

    /// The function's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its current definition.
    pub fn spec(&self) -> &Arc<FunctionSpec> {
        &self.spec
    }

    /// The task has nothing left to do.
    pub fn ended(&self) -> bool {
        self.mode == Mode::Ended
    }

    /// Nothing to do until a wake or a signal: serving, declared, built, no replica, none
    /// starting or wanted, no minimum, no back-off and no refusal. A tick does nothing
    /// (the supervisor does not even send it); the supervisor reads the load of every
    /// quiet function in one batch every [`QUIET_READ`] and signals those with requests.
    pub fn quiet(&self) -> bool {
        self.mode == Mode::Serving
            && self.declared
            && !self.declaring
            && self.build == Build::Done
            && self.slots.is_empty()
            && !self.wanted
            && self.spec.scaling.min_replicas == 0
            && self.backoff_until.is_none()
            && self.refusal.is_none()
    }

    /// Handles one event at `now`; returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.mode == Mode::Ended {
            return fx;
        }
        match event {
            Event::Wake(waiter) => self.wake(waiter, now, &mut fx),
            Event::Tick if self.quiet() => {}
            Event::Tick | Event::Signal => {
                if self.mode == Mode::Serving {
                    if !self.declared {
                        self.declare(&mut fx);
                    }
                    self.tick(now, &mut fx);
                    fx.push(Effect::ReadLoad);
                }
            }
            Event::Prepared(hash, result) => self.prepared(&hash, result, now, &mut fx),
            Event::Load(load) => self.evaluate(load, now, &mut fx),
            Event::Declared(result) => {
                self.declaring = false;
                match result {
                    Ok(()) => self.declared = true,
                    Err(e) => self.last_error = Some(StartError::Declare(e).to_string()),
                }
            }
            Event::Started(id, result) => self.started(&id, result, now, &mut fx),
            Event::Probed(id, result) => self.probed(&id, result, now, &mut fx),
            Event::Registered(id, result) => self.registered(&id, result, now, &mut fx),
            Event::Gated(gated, result) => self.admission.sent(gated, result.is_ok(), now),
            Event::Noticed(id) => self.noticed(&id, now, &mut fx),
            Event::DrainFinished(id) => {
                if let Some(slot) = self.slots.get_mut(&id).filter(|s| s.stage == Stage::Draining) {
                    slot.stage = Stage::Stopping;
                    let replica = slot.replica.clone().expect("a draining replica was started");
                    fx.push(Effect::Stop { replica, registered: slot.registered });
                }
            }
            Event::Stopped(id) => {
                self.slots.remove(&id);
            }
            Event::Exited(id, reason) => self.exited(&id, reason, now, &mut fx),
            Event::Adopted(replica) => {
                if self.mode == Mode::Serving && !self.slots.contains_key(&replica.id) {
                    let slot = Slot {
                        hash: replica.spec_hash.clone(),
                        replica: Some(replica.clone()),
                        stage: Stage::Ready,
                        since: now,
                        phases: Phases::default(),
                        registered: true,
                        dead: false,
                        adopted: true,
                    };
                    self.slots.insert(replica.id.clone(), slot);
                    self.last_ready_at = Some(now);
                    fx.push(Effect::SetReady { id: replica.id, capacity: self.capacity() });
                }
            }
            Event::Changed(spec, hash) => self.changed(spec, hash, now, &mut fx),
            Event::Routed(routed) => self.routed(routed.as_deref(), &mut fx),
            Event::Removed => self.leave(Mode::Removing, StartError::Removed(self.spec.name.clone()), now, &mut fx),
            Event::Shutdown => self.leave(Mode::ShuttingDown, StartError::ShuttingDown, now, &mut fx),
        }
        self.admit(now, &mut fx);
        self.finish_if_done(&mut fx);
        fx
    }

    /// Gates or ungates the function as [`admission`] says, while it has replicas: a
    /// replica starting needs the gate (the rest of a burst may be on its way).
    fn admit(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if self.mode != Mode::Serving || !self.declared || self.declaring || self.slots.is_empty() {
            return;
        }
        if self.starting() > 0 {
            self.admission.need(now);
        }
        let at_max = self.ready() >= self.spec.scaling.max_replicas;
        fx.extend(self.admission.next(now, at_max).map(Effect::Gate));
    }

    /// The function as `/status` shows it at `now`.
    pub fn status(&self, now: Instant) -> FunctionStatus {
        let building = match self.build {
            Build::Running(since) => Some(now.saturating_duration_since(since)),
            _ => None,
        };
        let state = if self.mode == Mode::Removing {
            FunctionState::Removing
        } else if self.ready() > 0 {
            FunctionState::Ready
        } else if self.refusal.is_some() {
            FunctionState::Failing
        } else if self.starting() > 0 {
            FunctionState::Waking
        } else if building.is_some() && self.slots.is_empty() {
            FunctionState::Building
        } else if self.slots.values().any(|s| s.replica.is_some() && !s.is_starting()) {
            FunctionState::Draining
        } else {
            FunctionState::Sleeping
        };
        let replicas = self
            .slots
            .values()
            .filter(|s| matches!(s.stage, Stage::Ready | Stage::Draining | Stage::Stopping))
            .filter_map(|s| {
                let r = s.replica.as_ref()?;
                Some(ReplicaStatus {
                    id: r.id.clone(),
                    address: r.address.to_string(),
                    phase: if s.stage == Stage::Ready { ReplicaPhase::Ready } else { ReplicaPhase::Draining },
                    version: r.version.clone(),
                    outdated: s.hash != self.hash,
                })
            })
            .collect();
        FunctionStatus {
            name: self.spec.name.clone(),
            state,
            replicas,
            starting: self.starting() as usize,
            cold_starts: self.cold_starts,
            last_cold_start: self.last_cold_start,
            last_error: self.last_error.clone(),
            reason: self.refusal.as_ref().map(|r| r.reason.clone()),
            state_for_ms: building.filter(|_| state == FunctionState::Building).map(|d| d.as_millis() as u64),
            retry_in_ms: self
                .backoff_until
                .filter(|_| state == FunctionState::Failing)
                .map(|t| t.saturating_duration_since(now).as_millis() as u64),
        }
    }

    fn ready(&self) -> u32 {
        self.slots.values().filter(|s| s.stage == Stage::Ready).count() as u32
    }

    /// Requests the ready replicas serve at once.
    fn capacity(&self) -> u32 {
        self.ready().saturating_mul(self.spec.scaling.target_concurrency.max(1))
    }

    /// A ready replica left and others remain: the gate is told the smaller capacity
    /// (it releases held requests, and admits those of a gated function, within it).
    fn capacity_fell(&self, id: &str, fx: &mut Vec<Effect>) {
        fx.push(Effect::SetReady { id: id.to_string(), capacity: self.capacity() });
    }

    fn starting(&self) -> u32 {
        self.slots.values().filter(|s| s.is_starting()).count() as u32
    }

    fn declare(&mut self, fx: &mut Vec<Effect>) {
        if !self.declaring {
            self.declaring = true;
            fx.push(Effect::Declare(self.spec.clone()));
        }
    }

    fn publish(&self, fx: &mut Vec<Effect>) {
        fx.push(Effect::Publish { ready: self.ready(), declared: self.declared });
    }

    fn wake(&mut self, waiter: Option<WaiterId>, now: Instant, fx: &mut Vec<Effect>) {
        if self.mode != Mode::Serving {
            let why = if self.mode == Mode::Removing { StartError::Removed(self.spec.name.clone()) } else { StartError::ShuttingDown };
            fx.extend(waiter.map(|w| Effect::Answer(vec![w], Err(why))));
            return;
        }
        if self.ready() > 0 {
            fx.extend(waiter.map(|w| Effect::Answer(vec![w], Ok(WakeReport { already_ready: true, phases: None }))));
            return;
        }
        if let Some(why) = self.refused(now) {
            fx.extend(waiter.map(|w| Effect::Answer(vec![w], Err(why))));
            return;
        }
        self.waiters.extend(waiter);
        self.wanted = true;
        if self.starting() == 0 && self.may_start(now) {
            self.start(now, fx);
        }
    }

    /// Why a wake is answered at once with an error: the build failed, or starts fail and
    /// the back-off is not over.
    fn refused(&self, now: Instant) -> Option<StartError> {
        if let Build::Failed { reason, .. } = &self.build {
            return Some(StartError::Build(reason.clone()));
        }
        let until = self.backoff_until.filter(|t| *t > now)?;
        let reason = self.refusal.as_ref().map_or_else(|| self.last_error.clone().unwrap_or_default(), |r| r.reason.clone());
        Some(StartError::BackingOff { reason, retry_in: until - now })
    }

    /// Replicas may start: the build is done and no back-off runs.
    fn may_start(&self, now: Instant) -> bool {
        self.build == Build::Done && self.backoff_until.is_none_or(|t| t <= now)
    }

    /// The periodic checks: a back-off that ended lifts the refusal; a failed build is
    /// asked again.
    fn tick(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if self.backoff_until.is_some_and(|t| t <= now) {
            self.backoff_until = None;
            if self.refusal.take().is_some() {
                tracing::info!("back-off over: the next request starts a replica again");
                fx.push(Effect::Lift);
            }
        }
        if let Build::Failed { check, .. } = &mut self.build {
            if *check <= now {
                *check = now + REBUILD_CHECK;
                fx.push(Effect::Prepare(self.spec.clone(), self.hash.clone()));
            }
        }
    }

    fn refuse(&mut self, refusal: Refusal, fx: &mut Vec<Effect>) {
        if self.refusal.as_ref() != Some(&refusal) {
            self.refusal = Some(refusal.clone());
            fx.push(Effect::Refuse(refusal));
        }
    }

    /// The build of a definition ended.
    fn prepared(&mut self, hash: &str, result: Result<(), String>, now: Instant, fx: &mut Vec<Effect>) {
        if hash != self.hash || self.mode != Mode::Serving {
            return;
        }
        match result {
            Ok(()) => {
                if self.build == Build::Done {
                    return;
                }
                tracing::info!("built");
                self.build = Build::Done;
                if self.backoff_until.is_none() && self.refusal.take().is_some() {
                    fx.push(Effect::Lift);
                }
                if self.wanted && self.ready() == 0 && self.starting() == 0 && self.may_start(now) {
                    self.start(now, fx);
                }
                fx.push(Effect::ReadLoad);
            }
            Err(reason) => {
                if matches!(&self.build, Build::Failed { reason: r, .. } if *r == reason) {
                    return; // asked again, answered from memory
                }
                tracing::warn!(%reason, "the build failed; tried again when the definition or the folder changes");
                fx.push(Effect::Metric(Metric::StartFailure));
                self.build = Build::Failed { reason: reason.clone(), check: now + REBUILD_CHECK };
                self.last_error = Some(StartError::Build(reason.clone()).to_string());
                self.wanted = false;
                if self.ready() == 0 {
                    if !self.waiters.is_empty() {
                        fx.push(Effect::Answer(std::mem::take(&mut self.waiters), Err(StartError::Build(reason.clone()))));
                    }
                    let refusal = Refusal {
                        status: 503,
                        state: FunctionState::Failing.as_str().to_string(),
                        error: format!(
                            "function {:?} cannot be built; fix its extra_dependencies or its files (it is built again when its definition or folder changes; `roost logs {}` shows the build)",
                            self.spec.name, self.spec.name
                        ),
                        reason,
                        retry_after_s: None,
                    };
                    self.refuse(refusal, fx);
                }
            }
        }
    }

    fn start(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let waking = !self.slots.values().any(|s| s.registered || s.is_starting());
        // The waking change gates it, when the function is declared to send it (any other
        // start needs the gate too: `admit` sees it starting).
        if waking {
            self.admission.waking(self.declared, now);
        }
        // Never the id of a replica it has (an adopted one may carry any number).
        let id = loop {
            self.next_id += 1;
            let id = format!("{}-{}", self.id_prefix, self.next_id);
            if !self.slots.contains_key(&id) {
                break id;
            }
        };
        let slot = Slot {
            replica: None,
            hash: self.hash.clone(),
            stage: Stage::Starting,
            since: now,
            phases: Phases::default(),
            registered: false,
            dead: false,
            adopted: false,
        };
        self.slots.insert(id.clone(), slot);
        fx.push(Effect::Start { id, spec: self.spec.clone(), hash: self.hash.clone(), declare: !self.declared, waking });
    }

    /// A start failed at some step: no replica starts before the back-off ends, and when
    /// no other start can answer them, the waiters are told and the gate refuses callers.
    fn start_failed(&mut self, error: StartError, now: Instant, fx: &mut Vec<Effect>) {
        self.failures += 1;
        let delay = backoff(self.failures);
        tracing::warn!(error = %error, failures = self.failures, backoff = ?delay, "replica failed to start");
        fx.push(Effect::Metric(Metric::StartFailure));
        self.last_error = Some(error.to_string());
        self.backoff_until = Some(now + delay);
        if self.starting() == 0 && self.ready() == 0 {
            self.wanted = false;
            if !self.waiters.is_empty() {
                fx.push(Effect::Answer(std::mem::take(&mut self.waiters), Err(error.clone())));
            }
            let refusal = Refusal {
                status: 502,
                state: FunctionState::Failing.as_str().to_string(),
                error: format!(
                    "function {:?} failed to start; it is tried again in {} s (`roost logs {}` shows its output)",
                    self.spec.name,
                    delay.as_secs().max(1),
                    self.spec.name
                ),
                reason: error.to_string(),
                retry_after_s: Some(delay.as_secs().max(1)),
            };
            self.refuse(refusal, fx);
        }
    }

    fn started(&mut self, id: &str, result: Result<Replica, Cause>, now: Instant, fx: &mut Vec<Effect>) {
        let serving = self.mode == Mode::Serving;
        let Some(slot) = self.slots.get_mut(id).filter(|s| s.stage == Stage::Starting) else {
            // Exited (or removed) before the runtime answered: stop what it started.
            if let Ok(replica) = result {
                fx.push(Effect::Stop { replica, registered: false });
            }
            return;
        };
        match result {
            Err(e) => {
                self.slots.remove(id);
                self.start_failed(StartError::Start(e), now, fx);
            }
            Ok(replica) if !serving => {
                slot.stage = Stage::Stopping;
                slot.replica = Some(replica.clone());
                fx.push(Effect::Stop { replica, registered: false });
            }
            Ok(replica) => {
                slot.phases.start_ms = ms(now - slot.since);
                slot.stage = Stage::Probing;
                slot.since = now;
                slot.replica = Some(replica.clone());
                fx.push(Effect::Probe(replica, self.spec.readiness_path.clone()));
            }
        }
    }

    fn probed(&mut self, id: &str, result: Result<(), Option<String>>, now: Instant, fx: &mut Vec<Effect>) {
        let serving = self.mode == Mode::Serving;
        let Some(slot) = self.slots.get_mut(id).filter(|s| s.stage == Stage::Probing) else { return };
        let replica = slot.replica.clone().expect("a probed replica was started");
        if result.is_err() || !serving {
            slot.stage = Stage::Stopping;
            fx.push(Effect::Stop { replica: replica.clone(), registered: false });
            if let Err(output) = result {
                let error = StartError::NotReady {
                    id: replica.id,
                    path: self.spec.readiness_path.clone(),
                    address: replica.address,
                    timeout: self.spec.readiness_timeout,
                    output,
                };
                self.start_failed(error, now, fx);
            }
            return;
        }
        slot.phases.readiness_ms = ms(now - slot.since);
        slot.stage = Stage::Registering;
        slot.since = now;
        fx.push(Effect::Register(replica));
    }

    fn registered(&mut self, id: &str, result: Result<(), Cause>, now: Instant, fx: &mut Vec<Effect>) {
        let serving = self.mode == Mode::Serving;
        let Some(slot) = self.slots.get_mut(id).filter(|s| s.stage == Stage::Registering) else { return };
        let replica = slot.replica.clone().expect("a registered replica was started");
        if slot.dead {
            // It exited while Envoy was taking it: take the endpoint back; the start
            // failure was reported when it exited.
            self.slots.remove(id);
            if result.is_ok() {
                fx.push(Effect::RemoveEndpoint(replica.address));
            }
            return;
        }
        match result {
            Err(cause) => {
                slot.stage = Stage::Stopping;
                fx.push(Effect::Stop { replica, registered: false });
                self.start_failed(StartError::Register { id: id.to_string(), cause }, now, fx);
            }
            Ok(()) if !serving => {
                slot.registered = true;
                slot.stage = Stage::Draining;
                fx.push(Effect::Drain(replica, self.drain_deadline()));
            }
            Ok(()) => {
                slot.registered = true;
                slot.phases.ack_ms = ms(now - slot.since);
                slot.stage = Stage::Ready;
                slot.since = now;
                fx.push(Effect::SetReady { id: id.to_string(), capacity: self.capacity() });
                // The rest of a burst may still be coming: it waits in the gate for the
                // replicas starting for it.
                self.admission.need(now);
            }
        }
    }

    /// The replica is ready and the gate told: answer the waiters, roll over one replica
    /// of an older definition, publish.
    fn noticed(&mut self, id: &str, now: Instant, fx: &mut Vec<Effect>) {
        let Some(slot) = self.slots.get_mut(id).filter(|s| s.stage == Stage::Ready) else {
            self.publish(fx);
            return;
        };
        if !slot.adopted {
            slot.phases.notice_ms = ms(now - slot.since);
            let p = &mut slot.phases;
            p.total_ms = p.start_ms + p.readiness_ms + p.ack_ms + p.notice_ms;
            let phases = slot.phases;
            tracing::info!(replica = %id, total_ms = phases.total_ms, "replica ready");
            self.cold_starts += 1;
            self.last_cold_start = Some(phases);
            self.failures = 0;
            self.wanted = false;
            self.last_ready_at = Some(now);
            fx.push(Effect::Metric(Metric::ColdStart(phases)));
            if !self.waiters.is_empty() {
                fx.push(Effect::Answer(std::mem::take(&mut self.waiters), Ok(WakeReport { already_ready: false, phases: Some(phases) })));
            }
            // A rollover: a new replica is ready, so one replica of an older definition
            // goes (one started from a definition that changed again while it started
            // still replaces an older one, and is rolled over itself next).
            if let Some(old) = self.outdated().into_iter().find(|o| o != id) {
                tracing::info!(replica = %old, "replacing a replica of an older definition");
                self.drain(&old, now, fx);
            }
        }
        self.publish(fx);
    }

    /// Ready replicas of an older definition, oldest first.
    fn outdated(&self) -> Vec<String> {
        let mut old: Vec<(&String, &Slot)> = self.slots.iter().filter(|(_, s)| s.stage == Stage::Ready && s.hash != self.hash).collect();
        old.sort_by_key(|(_, s)| s.since);
        old.into_iter().map(|(id, _)| id.clone()).collect()
    }

    fn drain_deadline(&self) -> Duration {
        self.spec.limits.timeout + Duration::from_secs(1)
    }

    /// Starts the two-phase drain of a ready replica: not ready first when it is the last.
    fn drain(&mut self, id: &str, now: Instant, fx: &mut Vec<Effect>) {
        let deadline = self.drain_deadline();
        let Some(slot) = self.slots.get_mut(id).filter(|s| s.stage == Stage::Ready) else { return };
        slot.stage = Stage::Draining;
        slot.since = now;
        let replica = slot.replica.clone().expect("a ready replica was started");
        if self.ready() == 0 {
            fx.push(Effect::ClearReady);
            fx.push(Effect::Metric(Metric::Reap));
        } else {
            self.capacity_fell(id, fx);
        }
        fx.push(Effect::Drain(replica, deadline));
    }

    /// Scaling: what the load needs against what runs, and the rollover.
    fn evaluate(&mut self, load: Load, now: Instant, fx: &mut Vec<Effect>) {
        if self.mode != Mode::Serving {
            return;
        }
        let ready = self.ready();
        // Idle since the later of the last request start and the last replica becoming
        // ready: a function just woken is not idle because its previous request was long ago.
        let from_ready = self.last_ready_at.map(|t| now - t);
        let idle_for = match (load.since_last_request, from_ready) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut observed = Observed {
            ready,
            starting: self.starting(),
            in_flight: load.in_flight,
            pending: load.pending,
            held: load.held,
            backlog: load.backlog,
            idle_for,
            surplus_for: None,
        };
        let s = &self.spec.scaling;
        let floor = scaling::needed(s, &observed).max(1).max(s.min_replicas);
        if ready > floor {
            observed.surplus_for = Some(now - *self.surplus_since.get_or_insert(now));
        } else {
            self.surplus_since = None;
        }
        if observed.pending > 0 || observed.held > 0 {
            self.admission.need(now);
        }
        let mut decision = scaling::decide(s, &observed);
        if !self.may_start(now) {
            decision.start = 0;
        }
        for _ in 0..decision.start {
            tracing::info!(?observed, "scaling up");
            fx.push(Effect::Metric(Metric::Scale(true)));
            self.start(now, fx);
        }
        if decision.drain > 0 {
            // Replicas of an older definition go first, then the newest.
            let mut victims = self.outdated();
            let mut current: Vec<(&String, &Slot)> =
                self.slots.iter().filter(|(id, s)| s.stage == Stage::Ready && !victims.contains(id)).collect();
            current.sort_by_key(|(_, s)| std::cmp::Reverse(s.since));
            victims.extend(current.into_iter().map(|(id, _)| id.clone()));
            for id in victims.into_iter().take(decision.drain as usize) {
                tracing::info!(replica = %id, ?observed, "scaling down");
                fx.push(Effect::Metric(Metric::Scale(false)));
                self.surplus_since = None;
                self.drain(&id, now, fx);
            }
        }
        // Roll over replicas of an older definition, one at a time.
        if !self.outdated().is_empty() && self.starting() == 0 && decision.start == 0 && self.may_start(now) {
            self.start(now, fx);
        }
        self.publish(fx);
    }

    /// The control plane's view of the function: what it lost is restored (the function
    /// declared again, the ready replicas' endpoints added back).
    fn routed(&mut self, routed: Option<&[SocketAddr]>, fx: &mut Vec<Effect>) {
        if self.mode != Mode::Serving || self.declaring {
            return;
        }
        let lost: Vec<Replica> = self
            .slots
            .values()
            .filter(|s| s.stage == Stage::Ready && s.registered)
            .filter_map(|s| s.replica.clone())
            .filter(|r| routed.is_none_or(|addresses| !addresses.contains(&r.address)))
            .collect();
        if routed.is_some() && lost.is_empty() {
            return;
        }
        tracing::warn!(
            known = routed.is_some(),
            endpoints = lost.len(),
            "the control plane lost the function or its endpoints; restoring them"
        );
        self.declaring = true;
        self.admission.forget();
        fx.push(Effect::Restore(self.spec.clone(), lost));
    }

    fn changed(&mut self, spec: Arc<FunctionSpec>, hash: String, now: Instant, fx: &mut Vec<Effect>) {
        let was_leaving = self.mode != Mode::Serving;
        if self.mode == Mode::ShuttingDown {
            return;
        }
        self.mode = Mode::Serving;
        if hash == self.hash && !was_leaving {
            // Only `scaling` or `async` changed (the hash leaves them out): no replica is rolled over;
            // Envoy gets the new concurrency and the load is judged by the new bounds. The
            // runtime is told too (a prepare of a built definition builds nothing): it sizes
            // what it keeps ahead of time by the scaling (the process runtime's spares).
            if spec != self.spec {
                tracing::info!("scaling changed");
                self.spec = spec;
                self.declaring = false;
                self.declare(fx);
                fx.push(Effect::Prepare(self.spec.clone(), self.hash.clone()));
                fx.push(Effect::ReadLoad);
            }
            return;
        }
        tracing::info!(version = %spec.version, "definition changed");
        // A new definition gets a fresh build (the same one, re-added, keeps its own) and a
        // fresh start: no back-off, no refusal (callers are held while it builds).
        if hash != self.hash || matches!(self.build, Build::Failed { .. }) {
            self.build = Build::Running(now);
        }
        self.spec = spec;
        self.hash = hash;
        self.failures = 0;
        self.backoff_until = None;
        if self.refusal.take().is_some() {
            fx.push(Effect::Lift);
        }
        // Re-declare (timeout and concurrency may have changed), prepare, and let the
        // load decide; replicas of the old definition are rolled over one at a time.
        self.declaring = false;
        self.declare(fx);
        fx.push(Effect::Prepare(self.spec.clone(), self.hash.clone()));
        fx.push(Effect::ReadLoad);
    }

    /// Removal or shutdown: every waiter told, every ready replica drained; starts in
    /// flight are stopped when they report.
    fn leave(&mut self, mode: Mode, why: StartError, now: Instant, fx: &mut Vec<Effect>) {
        if self.mode == Mode::ShuttingDown {
            return;
        }
        self.mode = mode;
        if !self.waiters.is_empty() {
            fx.push(Effect::Answer(std::mem::take(&mut self.waiters), Err(why)));
        }
        let ready: Vec<String> = self.slots.iter().filter(|(_, s)| s.stage == Stage::Ready).map(|(id, _)| id.clone()).collect();
        for id in ready {
            self.drain(&id, now, fx);
        }
    }

    fn exited(&mut self, id: &str, reason: String, now: Instant, fx: &mut Vec<Effect>) {
        let Some(slot) = self.slots.get_mut(id) else { return };
        match slot.stage {
            // The drain stopped it; its drain reports when it is gone.
            Stage::Draining | Stage::Stopping => {}
            Stage::Starting | Stage::Probing => {
                let slot = self.slots.remove(id).expect("matched above");
                // What is left of it stopped: the runtime counts it running until then
                // (and a container something started again would run unowned).
                if let Some(replica) = slot.replica {
                    fx.push(Effect::Stop { replica, registered: false });
                }
                self.start_failed(StartError::Exited { id: id.to_string(), reason }, now, fx);
            }
            Stage::Registering => {
                slot.dead = true;
                self.start_failed(StartError::Exited { id: id.to_string(), reason }, now, fx);
            }
            Stage::Ready => {
                let slot = self.slots.remove(id).expect("matched above");
                tracing::warn!(replica = %id, reason, "replica exited unexpectedly; removing its endpoint");
                fx.push(Effect::Metric(Metric::Crash));
                self.last_error = Some(format!("replica {id} exited: {reason}"));
                if self.ready() == 0 {
                    fx.push(Effect::ClearReady);
                } else {
                    self.capacity_fell(id, fx);
                }
                // Its endpoint removed and what is left of it stopped and removed: a
                // container that something started again (`docker restart`) would run
                // unowned, unlisted and unrouted.
                if let Some(replica) = slot.replica {
                    fx.push(Effect::Stop { replica, registered: true });
                }
                // Replaced if still needed: the load decides (min_replicas, queued
                // requests); a sleeping function is woken by its next request.
                if self.mode == Mode::Serving {
                    fx.push(Effect::ReadLoad);
                }
            }
        }
    }

    fn finish_if_done(&mut self, fx: &mut Vec<Effect>) {
        if self.mode == Mode::Serving || !self.slots.is_empty() {
            return;
        }
        if self.mode == Mode::Removing {
            fx.push(Effect::Forget);
        }
        fx.push(Effect::Exit);
        self.mode = Mode::Ended;
    }
}

#[cfg(test)]
mod tests;
