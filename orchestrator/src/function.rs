//! One task per function: it alone owns the function's replicas, so every wake, scale,
//! crash, definition change and removal of a function is handled in order. Slow work
//! (starting, draining) runs in spawned tasks that report back, so the actor always
//! answers at once: a wake during a drain starts a new replica instead of waiting.
//!
//! Ordering (see docs/architecture.md): a replica is ready only after its readiness probe
//! passed and every Envoy ACKed its endpoint; a replica leaves in two phases: not ready
//! (when it is the last), drain ACKed, in-flight requests finished, endpoint removed and
//! ACKed, then stopped.

use crate::context::Ctx;
use crate::policy::{self, Observed};
use crate::runtime::Replica;
use roost_common::spec::FunctionSpec;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn, Instrument};

/// How long each phase of one cold start took, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Phases {
    /// Process or container started.
    pub start_ms: f64,
    /// Readiness probe passed.
    pub readiness_ms: f64,
    /// Endpoint added and ACKed by every Envoy.
    pub ack_ms: f64,
    /// Marked ready in Redis and the gate told.
    pub notice_ms: f64,
    /// All of it.
    pub total_ms: f64,
}

/// The answer to a wake.
#[derive(Debug, Clone, Serialize)]
pub struct WakeReport {
    /// The function already had a ready replica.
    pub already_ready: bool,
    /// The cold start's phases, when this wake waited for one.
    pub phases: Option<Phases>,
}

/// What a wake waits on.
pub type WakeReply = oneshot::Sender<Result<WakeReport, String>>;

/// A replica as the status API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaStatus {
    /// Replica id.
    pub id: String,
    /// Where it listens.
    pub address: String,
    /// `ready` or `draining`.
    pub phase: &'static str,
    /// The function version it runs.
    pub version: String,
    /// Started from an older definition (being rolled over).
    pub outdated: bool,
}

/// One function as the status API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionStatus {
    /// Function name.
    pub name: String,
    /// `sleeping`, `waking`, `ready`, `draining` (going to zero) or `removing`.
    pub state: &'static str,
    /// Replicas ready or draining.
    pub replicas: Vec<ReplicaStatus>,
    /// Replicas being started.
    pub starting: usize,
    /// Cold starts completed.
    pub cold_starts: u64,
    /// The phases of the last completed cold start.
    pub last_cold_start: Option<Phases>,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// Messages to a function's task.
#[derive(Debug)]
pub enum Msg {
    /// Make sure a replica is ready; answer when one is.
    Wake(Option<WakeReply>),
    /// Re-evaluate scaling now (a scale-up signal, or the periodic tick).
    Evaluate,
    /// The definition changed.
    Update(Arc<FunctionSpec>, String),
    /// The function was removed from the definitions.
    Remove,
    /// The orchestrator stops: drain and stop every replica, keep the function declared.
    Shutdown,
    /// A replica exited on its own.
    Exited(String, String),
    /// A running replica found at start-up, already probed and registered.
    Adopt(Replica),
    /// Status request.
    Status(oneshot::Sender<FunctionStatus>),
    /// A start task finished.
    Started(String, Result<(Replica, Phases), String>),
    /// A drain task finished.
    Drained(String),
}

#[derive(Debug)]
struct Slot {
    replica: Replica,
    draining: bool,
}

/// The function's task state.
struct Actor {
    spec: Arc<FunctionSpec>,
    hash: String,
    ctx: Arc<Ctx>,
    me: mpsc::UnboundedSender<Msg>,
    replicas: BTreeMap<String, Slot>,
    starting: BTreeSet<String>,
    waiters: Vec<WakeReply>,
    surplus_since: Option<Instant>,
    last_ready_at: Option<Instant>,
    registered: bool,
    removing: bool,
    shutting_down: bool,
    cold_starts: u64,
    last_cold_start: Option<Phases>,
    last_error: Option<String>,
    next_id: u64,
}

/// Starts a function's task; returns its mailbox and the task.
pub fn spawn(ctx: Arc<Ctx>, spec: Arc<FunctionSpec>, hash: String) -> (mpsc::UnboundedSender<Msg>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let span = tracing::info_span!("function", name = %spec.name);
    let actor = Actor {
        spec,
        hash,
        ctx,
        me: tx.clone(),
        replicas: BTreeMap::new(),
        starting: BTreeSet::new(),
        waiters: Vec::new(),
        surplus_since: None,
        last_ready_at: None,
        registered: false,
        removing: false,
        shutting_down: false,
        cold_starts: 0,
        last_cold_start: None,
        last_error: None,
        next_id: 0,
    };
    let task = tokio::spawn(actor.run(rx).instrument(span));
    (tx, task)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        self.register().await;
        self.prepare_in_background();
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Wake(reply) => self.wake(reply),
                Msg::Evaluate => self.evaluate().await,
                Msg::Update(spec, hash) => self.update(spec, hash).await,
                Msg::Remove => self.remove(),
                Msg::Shutdown => {
                    self.shutting_down = true;
                    self.remove();
                }
                Msg::Exited(id, reason) => self.exited(&id, &reason).await,
                Msg::Adopt(replica) => self.adopt(replica).await,
                Msg::Status(reply) => {
                    let _ = reply.send(self.status());
                }
                Msg::Started(id, result) => self.started(id, result).await,
                Msg::Drained(id) => {
                    self.replicas.remove(&id);
                }
            }
            if self.removing && self.replicas.is_empty() && self.starting.is_empty() {
                if self.shutting_down {
                    return;
                }
                if let Err(e) = self.ctx.cp.remove_function(&self.spec.name).await {
                    warn!(error = %e, "cannot remove the function from the control plane");
                }
                let _ = self.ctx.redis.forget(&self.spec.name).await;
                info!("function removed");
                return;
            }
        }
    }

    fn ready_count(&self) -> u32 {
        self.replicas.values().filter(|s| !s.draining).count() as u32
    }

    /// Declares the function to the control plane (route, cluster), once per definition.
    async fn register(&mut self) {
        let (s, name) = (&self.spec, &self.spec.name);
        match self.ctx.cp.put_function(name, s.scaling.target_concurrency, s.limits.timeout).await {
            Ok(()) => match self.ctx.redis.declare(name).await {
                Ok(()) => self.registered = true,
                Err(e) => warn!(error = %e, "cannot list the function in Redis; will retry"),
            },
            Err(e) => {
                warn!(error = %e, "cannot declare the function to the control plane; will retry");
                self.last_error = Some(e.to_string());
            }
        }
    }

    /// Builds what the runtime needs (a Docker image) ahead of the first wake.
    fn prepare_in_background(&self) {
        let (ctx, spec, hash) = (self.ctx.clone(), self.spec.clone(), self.hash.clone());
        tokio::spawn(async move {
            if let Err(e) = ctx.runtime.prepare(&spec, &hash).await {
                warn!(function = %spec.name, error = %e, "preparing the function failed");
            }
        });
    }

    fn wake(&mut self, reply: Option<WakeReply>) {
        if self.removing {
            if let Some(r) = reply {
                let _ = r.send(Err(format!("function {:?} is being removed", self.spec.name)));
            }
            return;
        }
        if self.ready_count() > 0 {
            if let Some(r) = reply {
                let _ = r.send(Ok(WakeReport { already_ready: true, phases: None }));
            }
            return;
        }
        self.waiters.extend(reply);
        if self.starting.is_empty() {
            self.start_replica();
        }
    }

    fn start_replica(&mut self) {
        self.next_id += 1;
        let id = format!("{}-{}-{}", self.spec.name, std::process::id(), self.next_id);
        self.starting.insert(id.clone());
        let (ctx, spec, hash, me, registered) = (self.ctx.clone(), self.spec.clone(), self.hash.clone(), self.me.clone(), self.registered);
        tokio::spawn(
            async move {
                let result = start(&ctx, &spec, &hash, &id, registered).await;
                let _ = me.send(Msg::Started(id, result));
            }
            .in_current_span(),
        );
    }

    async fn started(&mut self, id: String, result: Result<(Replica, Phases), String>) {
        self.starting.remove(&id);
        match result {
            Ok((replica, mut phases)) => {
                let t = Instant::now();
                if let Err(e) = self.ctx.redis.set_ready(&self.spec.name).await {
                    warn!(error = %e, "cannot mark the function ready in Redis");
                }
                phases.notice_ms = ms(t.elapsed());
                phases.total_ms += phases.notice_ms;
                self.cold_starts += 1;
                self.last_cold_start = Some(phases);
                self.last_ready_at = Some(Instant::now());
                self.ctx.metrics.cold_start(&self.spec.name, &phases);
                info!(replica = %replica.id, address = %replica.address, total_ms = phases.total_ms, "replica ready");
                self.replicas.insert(id, Slot { replica, draining: false });
                for w in self.waiters.drain(..) {
                    let _ = w.send(Ok(WakeReport { already_ready: false, phases: Some(phases) }));
                }
                if self.removing {
                    self.drain_all();
                    return;
                }
                // A rollover: the new replica is ready, so one outdated replica goes.
                if let Some(old) = self.outdated().first().cloned() {
                    info!(replica = %old, "replacing a replica of an older definition");
                    self.drain(&old);
                }
                self.publish_replicas().await;
            }
            Err(e) => {
                warn!(error = %e, "replica failed to start");
                self.ctx.metrics.failure(&self.spec.name, "start");
                self.last_error = Some(e.clone());
                if self.starting.is_empty() && self.ready_count() == 0 {
                    for w in self.waiters.drain(..) {
                        let _ = w.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    fn outdated(&self) -> Vec<String> {
        self.replicas
            .iter()
            .filter(|(_, s)| !s.draining && s.replica.spec_hash != self.hash)
            .map(|(id, _)| id.clone())
            .collect()
    }

    async fn evaluate(&mut self) {
        if self.removing {
            return;
        }
        if !self.registered {
            self.register().await;
        }
        let load = match self.ctx.redis.load(&self.spec.name).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot read the function's load from Redis");
                return;
            }
        };
        let ready = self.ready_count();
        let since = |ms_ago: u64| Duration::from_millis(ms_ago);
        let from_request = load.last_request_ms.map(|t| since(now_ms().saturating_sub(t)));
        let from_ready = self.last_ready_at.map(|t| t.elapsed());
        // Idle since the later of the last request start and the last replica becoming
        // ready: a function just woken is not idle because its previous request was long ago.
        let idle_for = match (from_request, from_ready) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut observed = Observed {
            ready,
            starting: self.starting.len() as u32,
            in_flight: load.in_flight,
            pending: load.pending,
            idle_for,
            surplus_for: None,
        };
        let floor = policy::needed(&self.spec.scaling, &observed).max(1).max(self.spec.scaling.min_replicas);
        if ready > floor {
            observed.surplus_for = Some(self.surplus_since.get_or_insert_with(Instant::now).elapsed());
        } else {
            self.surplus_since = None;
        }
        let decision = policy::decide(&self.spec.scaling, &observed);
        for _ in 0..decision.start {
            info!(?observed, "scaling up");
            self.ctx.metrics.scale(&self.spec.name, "up");
            self.start_replica();
        }
        if decision.drain > 0 {
            // Replicas of an older definition go first.
            let mut victims = self.outdated();
            let current: Vec<String> = self
                .replicas
                .iter()
                .filter(|(id, s)| !s.draining && !victims.contains(id))
                .map(|(id, _)| id.clone())
                .collect();
            victims.extend(current);
            for id in victims.into_iter().take(decision.drain as usize) {
                info!(replica = %id, ?observed, "scaling down");
                self.ctx.metrics.scale(&self.spec.name, "down");
                self.surplus_since = None;
                self.drain(&id);
            }
        }
        // Roll over replicas of an older definition, one at a time.
        if !self.outdated().is_empty() && self.starting.is_empty() && decision.start == 0 {
            self.start_replica();
        }
        self.publish_replicas().await;
    }

    async fn publish_replicas(&self) {
        if self.registered {
            let _ = self.ctx.redis.refresh(&self.spec.name, self.ready_count() > 0).await;
        }
        let target = self.spec.scaling.target_concurrency;
        if let Err(e) = self.ctx.redis.set_replicas(&self.spec.name, self.ready_count(), target).await {
            warn!(error = %e, "cannot publish the replica count to Redis");
        }
    }

    /// Starts the two-phase drain of one replica.
    fn drain(&mut self, id: &str) {
        let Some(slot) = self.replicas.get_mut(id) else { return };
        if slot.draining {
            return;
        }
        slot.draining = true;
        let replica = slot.replica.clone();
        let last = self.ready_count() == 0;
        let (ctx, spec, me) = (self.ctx.clone(), self.spec.clone(), self.me.clone());
        if last {
            self.ctx.metrics.reap(&self.spec.name);
        }
        tokio::spawn(
            async move {
                drain(&ctx, &spec, &replica, last).await;
                let _ = me.send(Msg::Drained(replica.id));
            }
            .in_current_span(),
        );
    }

    fn drain_all(&mut self) {
        let ids: Vec<String> = self.replicas.keys().cloned().collect();
        for id in ids {
            self.drain(&id);
        }
    }

    async fn update(&mut self, spec: Arc<FunctionSpec>, hash: String) {
        let was_removing = self.removing;
        self.removing = false;
        if hash == self.hash && !was_removing {
            return;
        }
        info!(version = %spec.version, "definition changed");
        self.spec = spec;
        self.hash = hash;
        self.register().await;
        self.prepare_in_background();
        // Replicas of the old definition are replaced by `evaluate`, one at a time.
        self.evaluate().await;
    }

    fn remove(&mut self) {
        self.removing = true;
        for w in self.waiters.drain(..) {
            let _ = w.send(Err(format!("function {:?} was removed", self.spec.name)));
        }
        self.drain_all();
    }

    async fn exited(&mut self, id: &str, reason: &str) {
        // A draining replica exits because the drain stopped it; its drain task reports
        // when it is gone.
        if self.replicas.get(id).is_none_or(|s| s.draining) {
            return;
        }
        let slot = self.replicas.remove(id).expect("checked above");
        warn!(replica = %id, reason, "replica exited unexpectedly; removing its endpoint");
        self.ctx.metrics.failure(&self.spec.name, "crash");
        self.last_error = Some(format!("replica {id} exited: {reason}"));
        if self.ready_count() == 0 {
            if let Err(e) = self.ctx.redis.clear_ready(&self.spec.name).await {
                warn!(error = %e, "cannot mark the function not ready");
            }
        }
        if let Err(e) = self.ctx.cp.remove_endpoint(&self.spec.name, slot.replica.address).await {
            warn!(error = %e, "cannot remove the dead replica's endpoint");
        }
        // Replaced if still needed: `evaluate` keeps min_replicas and serves the load;
        // a sleeping function is woken by its next request.
        self.evaluate().await;
    }

    async fn adopt(&mut self, replica: Replica) {
        info!(replica = %replica.id, address = %replica.address, "adopted a running replica");
        self.last_ready_at = Some(Instant::now());
        self.replicas.insert(replica.id.clone(), Slot { replica, draining: false });
        if let Err(e) = self.ctx.redis.set_ready(&self.spec.name).await {
            warn!(error = %e, "cannot mark the function ready in Redis");
        }
        self.publish_replicas().await;
    }

    fn status(&self) -> FunctionStatus {
        let state = if self.removing {
            "removing"
        } else if self.ready_count() > 0 {
            "ready"
        } else if !self.starting.is_empty() {
            "waking"
        } else if !self.replicas.is_empty() {
            "draining"
        } else {
            "sleeping"
        };
        FunctionStatus {
            name: self.spec.name.clone(),
            state,
            replicas: self
                .replicas
                .values()
                .map(|s| ReplicaStatus {
                    id: s.replica.id.clone(),
                    address: s.replica.address.to_string(),
                    phase: if s.draining { "draining" } else { "ready" },
                    version: s.replica.version.clone(),
                    outdated: s.replica.spec_hash != self.hash,
                })
                .collect(),
            starting: self.starting.len(),
            cold_starts: self.cold_starts,
            last_cold_start: self.last_cold_start,
            last_error: self.last_error.clone(),
        }
    }
}

/// Starts one replica and brings it to the point where Envoy routes to it.
async fn start(ctx: &Ctx, spec: &FunctionSpec, hash: &str, id: &str, registered: bool) -> Result<(Replica, Phases), String> {
    let t0 = Instant::now();
    if !registered {
        ctx.cp
            .put_function(&spec.name, spec.scaling.target_concurrency, spec.limits.timeout)
            .await
            .map_err(|e| e.to_string())?;
    }
    ctx.runtime.prepare(spec, hash).await.map_err(|e| e.to_string())?;
    let replica = ctx.runtime.start(spec, hash, id).await.map_err(|e| e.to_string())?;
    let mut phases = Phases { start_ms: ms(t0.elapsed()), ..Default::default() };
    let t = Instant::now();
    let probe = crate::probe::until_ready(replica.address, &spec.readiness_path, ctx.settings.probe_interval, ctx.settings.ready_timeout).await;
    if probe.is_none() {
        let _ = ctx.runtime.stop(&replica, ctx.settings.stop_grace).await;
        return Err(format!(
            "replica {} did not answer {} on {} within {:?}; check the function's log",
            replica.id, spec.readiness_path, replica.address, ctx.settings.ready_timeout
        ));
    }
    phases.readiness_ms = ms(t.elapsed());
    let t = Instant::now();
    if let Err(e) = ctx.cp.add_endpoint(&spec.name, replica.address).await {
        let _ = ctx.runtime.stop(&replica, ctx.settings.stop_grace).await;
        return Err(e.to_string());
    }
    phases.ack_ms = ms(t.elapsed());
    phases.total_ms = ms(t0.elapsed());
    Ok((replica, phases))
}

/// Takes one replica out of service without failing a request: not ready (if last),
/// drain ACKed, in-flight requests finished, endpoint removed and ACKed, stopped.
async fn drain(ctx: &Ctx, spec: &FunctionSpec, replica: &Replica, last: bool) {
    if last {
        if let Err(e) = ctx.redis.clear_ready(&spec.name).await {
            warn!(error = %e, "cannot mark the function not ready");
        }
    }
    if let Err(e) = ctx.cp.drain_endpoint(&spec.name, replica.address).await {
        warn!(error = %e, "cannot drain the endpoint; waiting out the request timeout instead");
    }
    let deadline = spec.limits.timeout + Duration::from_secs(1);
    let idle = ctx.envoy.wait_host_idle(&spec.name, replica.address, deadline).await;
    if !idle {
        warn!(replica = %replica.id, "requests still in flight at the deadline");
    }
    if let Err(e) = ctx.cp.remove_endpoint(&spec.name, replica.address).await {
        warn!(error = %e, "cannot remove the endpoint");
    }
    if let Err(e) = ctx.runtime.stop(replica, ctx.settings.stop_grace).await {
        warn!(error = %e, "cannot stop the replica");
    }
    info!(replica = %replica.id, "replica stopped");
}
