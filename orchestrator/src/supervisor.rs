//! The supervisor: one task per function, fed by the definitions watcher, Redis signals,
//! runtime events and a periodic tick; adopts running replicas on start and removes
//! strays; stops every replica on a graceful shutdown. It never waits on a function: its
//! messages go through bounded mailboxes without blocking, and `/status` is gathered
//! from each function's published status in a task of its own.

use crate::context::Ctx;
use crate::definitions::{self, Loaded, Reading, Sources};
use crate::deployed::store::Stored;
use crate::function::{self, Handle, Msg, SharedStatus, WakeError, WakeReply};
use crate::lifecycle::adoption::{self, Stale, Verdict};
use crate::lifecycle::{Event, QUIET_READ};
use crate::redis_io::Signal;
use crate::runtime::RuntimeEvent;
use roost_common::spec::Definitions;
use roost_common::wire::redis::Refusal;
use roost_common::wire::status::{FunctionState, FunctionStatus, Status};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Requests from the HTTP API.
#[derive(Debug)]
pub enum Request {
    /// Wake a function and answer when it is ready.
    Wake(String, WakeReply),
    /// Everything the orchestrator knows.
    Status(oneshot::Sender<Status>),
    /// The deployed functions changed (a deploy, a scale, a removal): the store as it is
    /// now. Answered once the change is applied, so a status asked after sees it.
    Deployed(Stored, oneshot::Sender<()>),
    /// One function's definition as it serves, if it is declared.
    Definition(String, oneshot::Sender<Option<Arc<roost_common::spec::FunctionSpec>>>),
    /// Every function's definition as it serves (the console's page).
    Definitions(oneshot::Sender<Definitions>),
}

/// How many API requests, signals, events or readings wait for the supervisor at most.
pub const QUEUE: usize = 1024;

/// Why the supervisor stopped other than by a shutdown.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A function's task panicked (a bug): the orchestrator exits so it is restarted and
    /// adopts the running replicas.
    #[error("a function's task panicked: {0}")]
    Panicked(String),
}

/// Inputs of the supervisor.
#[derive(Debug)]
pub struct Inputs {
    /// Definition readings.
    pub readings: mpsc::Receiver<Reading>,
    /// Wake and scale signals.
    pub signals: mpsc::Receiver<Signal>,
    /// Replica exits.
    pub events: mpsc::UnboundedReceiver<RuntimeEvent>,
    /// HTTP API requests.
    pub requests: mpsc::Receiver<Request>,
}

/// How often the refusals of invalid functions are written to Redis again (a restarted
/// Redis has them back within this).
const REASSERT: Duration = Duration::from_secs(5);

/// How often what the control plane routes is compared with what the functions run (a
/// restarted control plane that lost its saved model gets it back within this).
const RESYNC: Duration = Duration::from_secs(2);

/// The refusal the gate answers an invalid function's callers with.
fn invalid_refusal(name: &str, problems: &str) -> Refusal {
    Refusal {
        status: 503,
        state: FunctionState::Invalid.as_str().to_string(),
        error: format!("function {name:?} is not valid in the definitions file; fix it there (the other functions serve)"),
        reason: problems.to_string(),
        retry_after_s: None,
    }
}

/// A function's task as the supervisor holds it.
struct Entry {
    handle: Handle,
    /// Tells this task's end from the end of an earlier task of the same name.
    generation: u64,
}

impl Entry {
    /// Sends a message that may be dropped when the mailbox is full (ticks, scale and
    /// wake signals: the next tick or signal repeats it).
    fn offer(&self, name: &str, msg: Msg) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.handle.tx.try_send(msg) {
            debug!(function = %name, "mailbox full; a tick or signal was skipped");
        }
    }
}

/// The functions and the tasks that run them.
struct Functions {
    ctx: Arc<Ctx>,
    map: BTreeMap<String, Entry>,
    tasks: JoinSet<(String, u64)>,
    /// Messages that found a full mailbox and must not be lost, each sent by its own
    /// task, and `/status` answers being gathered: work the loop must not wait on.
    deliveries: JoinSet<()>,
    generation: u64,
    /// Functions whose definition is invalid and that have no good one to serve: their
    /// problems. Listed in Redis and refused by the gate.
    invalid: BTreeMap<String, String>,
    /// A listing of every function in Redis is under way ([`Functions::declare_all`]).
    declaring: Arc<AtomicBool>,
    /// The served names as last listed, until a function is added or its task ends.
    listing: Option<Arc<Vec<String>>>,
    /// When every name was last listed in full.
    listed_at: Option<std::time::Instant>,
    /// A batched read of the quiet functions' loads is under way ([`Functions::sweep`]).
    sweeping: Arc<AtomicBool>,
    /// Functions whose task ended lately (removed from the file; their task took them
    /// off Redis's list), and when: every listing takes them off again for a while, as
    /// a listing begun before their task ended may land after it.
    removed: BTreeMap<String, std::time::Instant>,
}

/// How long a removed function is taken off Redis's list by every listing.
const REMOVED_MEMORY: Duration = Duration::from_secs(10);

/// Whether every served name is listed in Redis again: the full listing is due, names
/// must be taken off, or Redis's count (`None`: not counted, or the count failed) is not
/// the one expected.
fn must_list(due: bool, taking_off: bool, counted: Option<usize>, expected: usize) -> bool {
    due || taking_off || counted != Some(expected)
}

impl Functions {
    /// Keeps every served function listed in Redis (in a task, one at a time): a quiet
    /// function writes nothing to Redis of its own, and after Redis lost its data the gate
    /// must still find every declared name within a tick. Each tick counts the listing in
    /// Redis (one command) and lists every name again when the count is not what it
    /// should be ([`must_list`]); in full anyway every [`QUIET_READ`] (a Redis restored
    /// from an older snapshot may hold as many names, but not the same).
    fn declare_all(&mut self) {
        let now = std::time::Instant::now();
        self.removed.retain(|_, at| now.duration_since(*at) < REMOVED_MEMORY);
        if (self.map.is_empty() && self.removed.is_empty()) || self.declaring.swap(true, Ordering::AcqRel) {
            return;
        }
        let (redis, declaring) = (self.ctx.redis.clone(), self.declaring.clone());
        let map = &self.map;
        let names = self.listing.get_or_insert_with(|| Arc::new(map.keys().cloned().collect())).clone();
        let gone: Vec<String> =
            self.removed.keys().filter(|n| !self.map.contains_key(*n) && !self.invalid.contains_key(*n)).cloned().collect();
        // Invalid functions are listed too (`assert_invalid`).
        let expected = names.len() + self.invalid.keys().filter(|n| !self.map.contains_key(*n)).count();
        let due = self.listed_at.is_none_or(|at| now.duration_since(at) >= QUIET_READ);
        if due {
            self.listed_at = Some(now);
        }
        self.deliveries.spawn(async move {
            let counted = if due || !gone.is_empty() { None } else { redis.count_functions().await.ok() };
            if must_list(due, !gone.is_empty(), counted, expected) {
                if let Err(e) = redis.declare_all(&names, &gone).await {
                    warn!(error = %e, "cannot list the functions in Redis; the next tick tries again");
                }
            }
            declaring.store(false, Ordering::Release);
        });
    }

    /// Tells every function what the control plane routes for it (in a task: the loop
    /// never waits on the control plane); each restores what the control plane lost. A
    /// control plane with no confirmed model (it started without a saved one, and holds
    /// Envoy's streams meanwhile) is handed everything that runs at once instead.
    fn resync(&mut self, defs: &Arc<Definitions>) {
        let (cp, defs) = (self.ctx.cp.clone(), defs.clone());
        // In the map's order, by name.
        let functions: Vec<(String, mpsc::Sender<Msg>, SharedStatus, bool)> = self
            .map
            .iter()
            .map(|(n, e)| (n.clone(), e.handle.tx.clone(), e.handle.status.clone(), e.handle.quiet.load(Ordering::Acquire)))
            .collect();
        self.deliveries.spawn(async move {
            let routed = match cp.functions().await {
                Ok(routed) => routed,
                Err(e) => {
                    debug!(error = %e, "cannot list the control plane's functions; the next resync tries again");
                    return;
                }
            };
            if !routed.confirmed {
                let mut handover = Vec::new();
                for spec in defs.values() {
                    handover.push(cp.declaration(spec));
                    if let Ok(i) = functions.binary_search_by(|(n, ..)| n.as_str().cmp(&spec.name)) {
                        handover.extend(functions[i].2.read().await.as_ref().map(adoption::ready_endpoints).into_iter().flatten());
                    }
                }
                info!(changes = handover.len(), "the control plane has no confirmed model; handing over what runs");
                if let Err(e) = cp.confirm(&handover).await {
                    warn!(error = %e, "cannot hand over what runs to the control plane; the next resync tries again");
                }
                return;
            }
            let routed: BTreeMap<String, Vec<std::net::SocketAddr>> = routed.functions.into_iter().collect();
            for (name, tx, _, quiet) in functions {
                let routed = routed.get(&name).cloned();
                // A quiet function has no endpoint to lose: only a control plane that
                // lost the function itself concerns it.
                if quiet && routed.is_some() {
                    continue;
                }
                // Like a tick: a full mailbox skips it, the next resync repeats it.
                let _ = tx.try_send(Msg::Event(Event::Routed(routed)));
            }
        });
    }

    /// Reads the load of every quiet function in one batch (in a task, one at a time) and
    /// signals those with requests, or with a ready flag to take away: the net under a
    /// wake or scale signal that was lost (a Redis restart, a full queue). Their own tasks
    /// read again and decide.
    fn sweep(&mut self) {
        let (names, mailboxes): (Vec<String>, Vec<mpsc::Sender<Msg>>) =
            self.map.iter().filter(|(_, e)| e.handle.quiet.load(Ordering::Acquire)).map(|(n, e)| (n.clone(), e.handle.tx.clone())).unzip();
        if names.is_empty() || self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let (redis, sweeping) = (self.ctx.redis.clone(), self.sweeping.clone());
        self.deliveries.spawn(async move {
            match redis.quiet_readings(&names).await {
                Ok(readings) => {
                    for ((name, tx), reading) in names.iter().zip(mailboxes).zip(readings) {
                        if reading.needs_attention() {
                            debug!(function = %name, ?reading, "a quiet function has requests or a stale ready flag");
                            // Like a tick: a full mailbox skips it, the next sweep repeats it.
                            let _ = tx.try_send(Msg::Event(Event::Signal));
                        }
                    }
                }
                Err(e) => warn!(error = %e, "cannot read the quiet functions' loads; the next sweep tries again"),
            }
            sweeping.store(false, Ordering::Release);
        });
    }

    /// Writes the refusals of the invalid functions to Redis (in a task: the loop never
    /// waits on Redis).
    fn assert_invalid(&mut self) {
        let redis = self.ctx.redis.clone();
        let invalid = self.invalid.clone();
        self.deliveries.spawn(async move {
            for (name, problems) in invalid {
                let refused = async {
                    redis.declare(&name).await?;
                    redis.refuse(&name, &invalid_refusal(&name, &problems)).await
                };
                if let Err(e) = refused.await {
                    warn!(function = %name, error = %e, "cannot publish an invalid function's refusal to Redis; the next check tries again");
                }
            }
        });
    }

    /// Takes what Redis holds of functions that are no longer invalid: `lift` for those
    /// that now serve, `forget` for those gone from the file.
    fn clear_invalid(&mut self, lift: Vec<String>, forget: Vec<String>) {
        let redis = self.ctx.redis.clone();
        self.deliveries.spawn(async move {
            for name in lift {
                if let Err(e) = redis.lift_refusal(&name).await {
                    warn!(function = %name, error = %e, "cannot lift a fixed function's refusal in Redis");
                }
            }
            for name in forget {
                if let Err(e) = redis.forget(&name).await {
                    warn!(function = %name, error = %e, "cannot remove a removed invalid function from Redis");
                }
            }
        });
    }

    /// Applies a reading of the file to the running functions: returns the definitions that
    /// now serve (an invalid function keeps its last good definition if it has one).
    fn apply(&mut self, defs: &Definitions, loaded: Loaded) -> Definitions {
        let Loaded { valid: mut new, invalid, .. } = loaded;
        let mut now_invalid = BTreeMap::new();
        for (name, problems) in invalid {
            match defs.get(&name) {
                Some(last_good) => {
                    warn!(function = %name, problems = %problems, "the function's new definition is invalid; its last good one keeps serving");
                    new.insert(name, last_good.clone());
                }
                None => {
                    warn!(function = %name, problems = %problems, "the function's definition is invalid; its callers are told why");
                    now_invalid.insert(name, problems);
                }
            }
        }
        let d = definitions::diff(defs, &new);
        for name in &d.removed {
            info!(function = %name, "function removed from the definitions");
            self.deliver(name, Event::Removed);
        }
        let (lift, forget): (Vec<String>, Vec<String>) =
            self.invalid.keys().filter(|n| !now_invalid.contains_key(*n)).cloned().partition(|n| new.contains_key(n));
        self.clear_invalid(lift, forget);
        for name in d.added.iter().chain(&d.changed) {
            let spec = Arc::new(new[name].clone());
            let hash = definitions::spec_hash(&spec);
            if !self.deliver(name, Event::Changed(spec.clone(), hash.clone())) {
                info!(function = %name, "function added");
                self.spawn(spec, hash);
            }
        }
        let changed = now_invalid != self.invalid;
        self.invalid = now_invalid;
        if changed {
            self.assert_invalid();
        }
        new
    }

    fn spawn(&mut self, spec: Arc<roost_common::spec::FunctionSpec>, hash: String) {
        self.generation += 1;
        let generation = self.generation;
        let name = spec.name.clone();
        let (handle, task) = function::task(self.ctx.clone(), spec, hash);
        let n = name.clone();
        self.tasks.spawn(async move {
            task.await;
            (n, generation)
        });
        self.map.insert(name, Entry { handle, generation });
        self.listing = None;
    }

    /// [`Entry::offer`] to the function named, if it runs.
    fn offer(&self, name: &str, msg: Msg) {
        if let Some(e) = self.map.get(name) {
            e.offer(name, msg);
        }
    }

    /// Sends a message that must arrive (exits, edits, shutdown) without waiting: a full
    /// mailbox gets it from a task of its own. False when the function's task has ended.
    fn deliver(&mut self, name: &str, event: Event) -> bool {
        let Some(e) = self.map.get(name) else { return false };
        match e.handle.tx.try_send(Msg::Event(event)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let tx = e.handle.tx.clone();
                self.deliveries.spawn(async move {
                    if tx.send(msg).await.is_err() {
                        debug!("a function ended before a queued message reached it");
                    }
                });
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn wake(&self, name: &str, reply: WakeReply) {
        let Some(e) = self.map.get(name) else {
            answer(reply, Err(WakeError::Unknown(name.to_string())));
            return;
        };
        match e.handle.tx.try_send(Msg::Wake(Some(reply))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Msg::Wake(Some(reply)))) => answer(reply, Err(WakeError::Busy(name.to_string()))),
            Err(mpsc::error::TrySendError::Closed(Msg::Wake(Some(reply)))) => answer(reply, Err(WakeError::Ended(name.to_string()))),
            Err(_) => unreachable!("the message sent was a wake with a reply"),
        }
    }

    /// A task ended: forget it unless a newer task of the same name replaced it. Returns
    /// the name when the function is gone (its replicas stopped, no task runs it).
    fn ended(&mut self, joined: Result<(String, u64), tokio::task::JoinError>) -> Result<Option<String>, SupervisorError> {
        match joined {
            Ok((name, generation)) => {
                if self.map.get(&name).is_none_or(|e| e.generation != generation) {
                    return Ok(None);
                }
                self.map.remove(&name);
                self.listing = None;
                self.removed.insert(name.clone(), std::time::Instant::now());
                Ok(Some(name))
            }
            Err(e) if e.is_panic() => {
                let panic = e.into_panic();
                let text = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
                Err(SupervisorError::Panicked(text.unwrap_or_else(|| "no message".into())))
            }
            Err(e) => {
                warn!(error = %e, "a function's task was cancelled");
                Ok(None)
            }
        }
    }

    /// Answers a `/status` request from a task of its own: a function's status cell is
    /// held only while its ready notice is published (see `function.rs`).
    fn answer_status(&mut self, mut status: Status, reply: oneshot::Sender<Status>) {
        let cells: Vec<function::SharedStatus> = self.map.values().map(|e| e.handle.status.clone()).collect();
        let invalid: Vec<FunctionStatus> = self.invalid.iter().map(|(name, problems)| invalid_status(name, problems)).collect();
        self.deliveries.spawn(async move {
            for cell in cells {
                status.functions.extend(cell.read().await.clone());
            }
            status.functions.extend(invalid);
            status.functions.sort_by(|a, b| a.name.cmp(&b.name));
            if reply.send(status).is_err() {
                debug!("a status request gave up before its answer");
            }
        });
    }
}

/// An invalid function as `/status` shows it.
fn invalid_status(name: &str, problems: &str) -> FunctionStatus {
    FunctionStatus { reason: Some(problems.to_string()), ..FunctionStatus::empty(name, FunctionState::Invalid) }
}

fn answer(reply: WakeReply, result: Result<roost_common::wire::status::WakeReport, WakeError>) {
    if reply.send(result).is_err() {
        debug!("a wake's caller gave up before its answer");
    }
}

/// How the supervisor runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The definitions file, for `/status`.
    pub definitions_path: String,
    /// How often every function re-evaluates its scaling.
    pub tick: Duration,
    /// Longest wait for every replica to stop on shutdown.
    pub drain_limit: Duration,
}

/// Runs until `shutdown`, then stops every replica (bounded by `drain_limit`). `ready` is
/// set once the supervisor serves requests (for `/healthz`).
pub async fn run(
    ctx: Arc<Ctx>,
    initial: Reading,
    stored: Stored,
    mut inputs: Inputs,
    opts: Options,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> Result<(), SupervisorError> {
    let mut defs = Arc::new(Definitions::new());
    let mut fns = Functions {
        ctx: ctx.clone(),
        map: BTreeMap::new(),
        tasks: JoinSet::new(),
        deliveries: JoinSet::new(),
        generation: 0,
        invalid: BTreeMap::new(),
        declaring: Arc::default(),
        listing: None,
        listed_at: None,
        sweeping: Arc::default(),
        removed: BTreeMap::new(),
    };
    if let Reading::Invalid(e) = &initial {
        warn!(errors = %e, "definitions file invalid at start; serving none of its functions until it is fixed");
    }
    let mut sources = Sources::new(initial, stored);
    let merged = sources.merged();
    let mut defs_error = merged.problems.clone();
    defs = Arc::new(fns.apply(&defs, merged));
    adopt(&ctx, &defs, &mut fns).await;
    // A control plane that started without a saved model learns what runs at once.
    fns.resync(&defs);
    ready.store(true, Ordering::Release);

    let mut last_assert = tokio::time::Instant::now();
    let mut last_resync = tokio::time::Instant::now();
    let mut last_sweep = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(opts.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            Some(joined) = fns.tasks.join_next() => {
                match fns.ended(joined) {
                    Ok(Some(gone)) => ctx.runtime.forget(&gone),
                    Ok(None) => {}
                    Err(e) => break Err(e),
                }
            }
            Some(delivered) = fns.deliveries.join_next() => {
                if let Err(e) = delivered {
                    if e.is_panic() { std::panic::resume_unwind(e.into_panic()) }
                }
            }
            _ = ticker.tick() => {
                if last_resync.elapsed() >= RESYNC {
                    last_resync = tokio::time::Instant::now();
                    fns.resync(&defs);
                }
                if !fns.invalid.is_empty() && last_assert.elapsed() >= REASSERT {
                    last_assert = tokio::time::Instant::now();
                    fns.assert_invalid();
                }
                if last_sweep.elapsed() >= QUIET_READ {
                    last_sweep = tokio::time::Instant::now();
                    fns.sweep();
                }
                fns.declare_all();
                // A quiet function has nothing to do on a tick: the sweep reads its load.
                for (name, e) in fns.map.iter().filter(|(_, e)| !e.handle.quiet.load(Ordering::Acquire)) {
                    e.offer(name, Msg::Event(Event::Tick));
                }
            }
            Some(signal) = inputs.signals.recv() => {
                let (name, msg) = match signal {
                    Signal::Wake(n) => (n, Msg::Wake(None)),
                    Signal::Scale(n) => (n, Msg::Event(Event::Signal)),
                };
                if fns.map.contains_key(&name) {
                    fns.offer(&name, msg);
                } else {
                    warn!(function = %name, "signal for an unknown function ignored");
                }
            }
            Some(event) = inputs.events.recv() => {
                let RuntimeEvent::Exited { replica_id, function, reason } = event;
                fns.deliver(&function, Event::Exited(replica_id, reason));
            }
            Some(reading) = inputs.readings.recv() => {
                sources.file(reading);
                let merged = sources.merged();
                defs_error = merged.problems.clone();
                defs = Arc::new(fns.apply(&defs, merged));
            }
            Some(req) = inputs.requests.recv() => match req {
                Request::Wake(name, reply) => {
                    if defs.contains_key(&name) {
                        fns.wake(&name, reply);
                    } else if let Some(problems) = fns.invalid.get(&name) {
                        answer(reply, Err(WakeError::Invalid(name, problems.clone())));
                    } else {
                        answer(reply, Err(WakeError::Unknown(name)));
                    }
                }
                Request::Status(reply) => {
                    let status = Status {
                        runtime: ctx.runtime.kind().to_string(),
                        definitions: opts.definitions_path.clone(),
                        definitions_error: defs_error.clone(),
                        functions: Vec::new(),
                        deployed: fns.map.keys().chain(fns.invalid.keys()).filter(|n| sources.is_deployed(n)).cloned().collect(),
                    };
                    fns.answer_status(status, reply);
                }
                Request::Deployed(stored, reply) => {
                    sources.deployed(stored);
                    let merged = sources.merged();
                    defs_error = merged.problems.clone();
                    let added: Vec<String> = merged.valid.keys().filter(|n| !defs.contains_key(*n)).cloned().collect();
                    defs = Arc::new(fns.apply(&defs, merged));
                    // Listed for the gate before the deploy is answered (not at the next
                    // tick): a call right after the deploy finds the function.
                    let redis = ctx.redis.clone();
                    fns.deliveries.spawn(async move {
                        if let Err(e) = redis.declare_all(&added, &[]).await {
                            warn!(error = %e, "cannot list the deployed functions in Redis; the next tick tries again");
                        }
                        if reply.send(()).is_err() {
                            debug!("a deploy gave up before it was applied");
                        }
                    });
                }
                Request::Definition(name, reply) => {
                    if reply.send(defs.get(&name).cloned().map(Arc::new)).is_err() {
                        debug!("a describe gave up before its answer");
                    }
                }
                Request::Definitions(reply) => {
                    if reply.send(Definitions::clone(&defs)).is_err() {
                        debug!("a console page gave up before its answer");
                    }
                }
            },
        }
    };
    ready.store(false, Ordering::Release);
    info!("stopping every replica");
    let names: Vec<String> = fns.map.keys().cloned().collect();
    for name in names {
        fns.deliver(&name, Event::Shutdown);
    }
    let mut tasks = std::mem::take(&mut fns.tasks);
    let all = async {
        while let Some(joined) = tasks.join_next().await {
            fns.ended(joined)?;
        }
        Ok(())
    };
    let stopped = match tokio::time::timeout(opts.drain_limit, all).await {
        Ok(r) => r,
        Err(_) => {
            warn!("replicas still stopping at the shutdown deadline; their tasks are cancelled");
            Ok(())
        }
    };
    fns.deliveries.shutdown().await;
    ctx.runtime.close().await;
    outcome.and(stopped)
}

/// Adopts the runtime's running replicas of known functions (probed, then registered
/// with the control plane), stops the others, and removes control-plane functions and
/// endpoints that no replica backs.
async fn adopt(ctx: &Arc<Ctx>, defs: &Definitions, fns: &mut Functions) {
    let running = match ctx.runtime.list().await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot list running replicas; none adopted");
            Vec::new()
        }
    };
    let mut kept = HashSet::new();
    for replica in running {
        let spec = defs.get(&replica.function);
        let healthy = match spec {
            Some(s) => crate::probe::check(replica.address, &s.readiness_path, Duration::from_secs(1)).await,
            None => false,
        };
        let registered = match spec {
            Some(s) if healthy => {
                let declared = ctx.cp.put_function(s).await;
                match declared.and(ctx.cp.add_endpoint(&s.name, replica.address).await) {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(replica = %replica.id, error = %e, "cannot register an adoptable replica; stopping it");
                        false
                    }
                }
            }
            _ => false,
        };
        match adoption::verdict(spec.is_some(), healthy, registered) {
            Verdict::Adopt => {
                info!(replica = %replica.id, address = %replica.address, "adopted a running replica");
                kept.insert((replica.function.clone(), replica.address));
                let function = replica.function.clone();
                fns.deliver(&function, Event::Adopted(replica));
            }
            Verdict::Stop => {
                info!(replica = %replica.id, function = %replica.function, healthy, "stopping a stray replica");
                if let Err(e) = ctx.runtime.stop(&replica, ctx.settings.stop_grace).await {
                    warn!(replica = %replica.id, error = %e, "cannot stop a stray replica; the next start-up tries again");
                }
            }
        }
    }
    match ctx.cp.functions().await {
        Ok(routed) => {
            for stale in adoption::stale(&routed.functions, |n| defs.contains_key(n), &kept) {
                match stale {
                    Stale::Function(name) => {
                        info!(function = %name, "removing a function the definitions no longer have");
                        if let Err(e) = ctx.cp.remove_function(&name).await {
                            warn!(function = %name, error = %e, "cannot remove a stale function from the control plane");
                        }
                    }
                    Stale::Endpoint(name, addr) => {
                        info!(function = %name, %addr, "removing an endpoint no replica backs");
                        if let Err(e) = ctx.cp.remove_endpoint(&name, addr).await {
                            warn!(function = %name, %addr, error = %e, "cannot remove a stale endpoint");
                        }
                    }
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot list the control plane's functions; strays not checked"),
    }
}

#[cfg(test)]
mod tests {
    use super::must_list;

    #[test]
    fn the_names_are_listed_again_when_due_or_when_the_count_is_off() {
        assert!(!must_list(false, false, Some(10), 10), "the count is right: one SCARD and nothing else");
        assert!(must_list(false, false, Some(0), 10), "an emptied Redis");
        assert!(must_list(false, false, Some(9), 10), "a Redis restored without one");
        assert!(must_list(false, false, Some(11), 10), "one more than served: listed (and its removal kept going)");
        assert!(must_list(false, false, None, 10), "not counted: listed");
        assert!(must_list(true, false, Some(10), 10), "due: listed whatever the count");
        assert!(must_list(false, true, Some(10), 10), "names to take off");
    }
}
