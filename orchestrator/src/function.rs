//! One task per function, the executor of its [`lifecycle`](crate::lifecycle) state
//! machine: it feeds the machine events, performs the effects it returns (quick Redis
//! calls in order; starts, probes, registrations, drains and stops in tasks it owns) and
//! feeds their results back. It decides nothing itself. Its status is published to a
//! shared cell after every event, so `/status` never waits on its work; only while a
//! ready notice is being published is the cell held, so that nobody answered through the
//! gate can read a status older than the replica that answered them.

use crate::context::Ctx;
use crate::lifecycle::{Cause, Effect, Event, Function, Load, StartError, WaiterId};
use crate::runtime::Replica;
use roost_common::clock::now_ms;
use roost_common::spec::FunctionSpec;
use roost_common::wire::calls::AsyncSettings;
use roost_common::wire::status::{FunctionStatus, WakeReport};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, OwnedRwLockWriteGuard, RwLock};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

/// How many messages a function's mailbox holds; the supervisor never waits on a full one.
pub const MAILBOX: usize = 256;

/// How many of a replica's last lines a failed start reports.
pub const OUTPUT_LINES: usize = 10;

/// Why a wake was not answered with a ready replica.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WakeError {
    /// No such function.
    #[error("no function named {0:?} in the definitions")]
    Unknown(String),
    /// The function's definition is invalid.
    #[error("function {0:?} is not valid in the definitions file: {1}")]
    Invalid(String, String),
    /// The function's task has too many messages waiting.
    #[error("function {0:?} is busy; retry")]
    Busy(String),
    /// The function's task ended before answering.
    #[error("function {0:?} stopped before it was ready")]
    Ended(String),
    /// The start failed.
    #[error(transparent)]
    Failed(#[from] StartError),
}

/// What a wake waits on.
pub type WakeReply = oneshot::Sender<Result<WakeReport, WakeError>>;

/// Messages to a function's task.
#[derive(Debug)]
pub enum Msg {
    /// Make sure a replica is ready; answer when one is.
    Wake(Option<WakeReply>),
    /// Anything else the machine handles (tick, definition change, removal, shutdown,
    /// exits, adoption).
    Event(Event),
}

/// The supervisor's side of a function's task.
#[derive(Debug)]
pub struct Handle {
    /// The mailbox.
    pub tx: mpsc::Sender<Msg>,
    /// The newest status; `None` once the function is removed.
    pub status: SharedStatus,
    /// The machine is quiet ([`Function::quiet`]) after its last event: the supervisor
    /// does not tick it and reads its load in its batch instead.
    pub quiet: Arc<AtomicBool>,
}

/// A function's newest status, shared by its task (the writer) and `/status` (readers).
pub type SharedStatus = Arc<RwLock<Option<FunctionStatus>>>;

/// This orchestrator's part of every replica id: its process id and its start time (low
/// 24 bits of Unix ms, in hex). The process id alone repeats in a container (always 1),
/// so a restarted orchestrator named new replicas as the adopted ones of the one before.
fn incarnation() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("{}-{:x}", std::process::id(), roost_common::clock::now_ms() & 0xff_ffff))
}

/// A function's task, not yet spawned: the supervisor spawns it into the set of tasks it owns.
pub fn task(ctx: Arc<Ctx>, spec: Arc<FunctionSpec>, hash: String) -> (Handle, impl std::future::Future<Output = ()> + Send + 'static) {
    let prefix = format!("{}-{}", spec.name, incarnation());
    let (machine, first) = Function::new(spec, hash, prefix, Instant::now());
    let (tx, rx) = mpsc::channel(MAILBOX);
    let status: SharedStatus = Arc::new(RwLock::new(Some(machine.status(Instant::now()))));
    let span = tracing::info_span!("function", name = %machine.name());
    let quiet = Arc::new(AtomicBool::new(machine.quiet()));
    let exec = Executor {
        ctx,
        machine,
        waiters: HashMap::new(),
        next_waiter: 0,
        status: status.clone(),
        quiet: quiet.clone(),
        gone: false,
        reported: (0, 0),
        reported_held: 0,
        work: JoinSet::new(),
    };
    (Handle { tx, status, quiet }, exec.run(rx, first).instrument(span))
}

struct Executor {
    ctx: Arc<Ctx>,
    machine: Function,
    waiters: HashMap<WaiterId, WakeReply>,
    next_waiter: WaiterId,
    status: SharedStatus,
    quiet: Arc<AtomicBool>,
    /// Removed: `/status` no longer lists it.
    gone: bool,
    /// The replicas ready and starting last sent as metrics.
    reported: (usize, usize),
    /// The requests held at the gate last sent as a metric.
    reported_held: u64,
    /// Effects under way; each ends with the event it reports (if any).
    work: JoinSet<Option<Event>>,
}

fn cause(e: impl std::error::Error + Send + Sync + 'static) -> Cause {
    Arc::new(e)
}

impl Executor {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, first: Vec<Effect>) {
        for effect in first {
            if let Some(e) = self.perform(effect).await {
                self.dispatch(e).await;
            }
        }
        let mut closed = false;
        while !self.machine.ended() {
            let event = tokio::select! {
                msg = rx.recv(), if !closed => match msg {
                    Some(Msg::Wake(reply)) => Event::Wake(reply.map(|r| self.park(r))),
                    Some(Msg::Event(e)) => e,
                    // The supervisor is gone without a shutdown: nothing can reach us.
                    None => {
                        closed = true;
                        Event::Shutdown
                    }
                },
                Some(done) = self.work.join_next() => match done {
                    Ok(Some(e)) => e,
                    Ok(None) => continue,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(e) => {
                        warn!(error = %e, "an effect's task was cancelled; its result is lost");
                        continue;
                    }
                },
                else => break,
            };
            self.dispatch(event).await;
        }
        // Effects still under way (a probe of a replica already stopped) are cancelled.
        self.work.shutdown().await;
    }

    /// Writes the machine's status to the shared cell, through `held` when the cell is
    /// already held by this dispatch.
    async fn publish_status(&mut self, held: &mut Option<OwnedRwLockWriteGuard<Option<FunctionStatus>>>) {
        let status = (!self.gone).then(|| self.machine.status(Instant::now()));
        // Replicas ready and starting, as statsd gauges, when they change (the platform's
        // metrics endpoint shows them).
        let counts = status.as_ref().map_or((0, 0), |s| (s.ready_replicas(), s.starting));
        if counts != self.reported {
            self.reported = counts;
            self.ctx.metrics.replicas(self.machine.name(), counts.0, counts.1);
        }
        match held {
            Some(cell) => **cell = status,
            None => *self.status.write().await = status,
        }
    }

    fn park(&mut self, reply: WakeReply) -> WaiterId {
        self.next_waiter += 1;
        self.waiters.insert(self.next_waiter, reply);
        self.next_waiter
    }

    /// Handles one event and every event its inline effects produce, then publishes the
    /// status. From a ready notice on, the status cell is held until the status shows
    /// the replica that is ready: the gate sends requests from that notice on.
    async fn dispatch(&mut self, event: Event) {
        let mut held = None;
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            for effect in self.machine.handle(event, Instant::now()) {
                match &effect {
                    Effect::SetReady { .. } if held.is_none() => held = Some(self.status.clone().write_owned().await),
                    // Whoever is answered sees the state that answered them in `/status`;
                    // a removed function leaves `/status` before Redis and the control plane.
                    Effect::Answer(..) => self.publish_status(&mut held).await,
                    Effect::Forget => {
                        self.gone = true;
                        self.publish_status(&mut held).await;
                    }
                    _ => {}
                }
                if let Some(next) = self.perform(effect).await {
                    queue.push_back(next);
                }
            }
        }
        self.publish_status(&mut held).await;
        self.quiet.store(self.machine.quiet(), Ordering::Release);
    }

    /// Performs one effect: inline ones now (returning the event they produce), the
    /// others in an owned task that reports back.
    async fn perform(&mut self, effect: Effect) -> Option<Event> {
        let ctx = self.ctx.clone();
        let name = self.machine.name().to_string();
        let span = tracing::Span::current();
        match effect {
            Effect::Declare(spec) => {
                self.work.spawn(async move { Some(Event::Declared(declare(&ctx, &spec).await)) }.instrument(span));
            }
            Effect::Prepare(spec, hash) => {
                self.work.spawn(
                    async move {
                        let result = ctx.runtime.prepare(&spec, &hash).await.map_err(|e| e.to_string());
                        Some(Event::Prepared(hash, result))
                    }
                    .instrument(span),
                );
            }
            Effect::Start { id, spec, hash, declare: first, waking } => {
                // A head start for Envoy, beside the start (not before it): without it the
                // registration puts the cluster in Envoy itself, a little later. A
                // function not declared yet is unknown to the control plane until the
                // start declares it.
                if waking && !first {
                    let (ctx, name) = (ctx.clone(), spec.name.clone());
                    self.work.spawn(
                        async move {
                            if let Err(e) = ctx.cp.waking(&name).await {
                                debug!(error = %e, "cannot tell the control plane the function is waking");
                            }
                            None
                        }
                        .instrument(span.clone()),
                    );
                }
                self.work.spawn(
                    async move {
                        let result = async {
                            if first {
                                declare(&ctx, &spec).await.map_err(|e| cause(StartError::Declare(e)))?;
                            }
                            ctx.runtime.prepare(&spec, &hash).await.map_err(cause)?;
                            ctx.runtime.start(&spec, &hash, &id).await.map_err(cause)
                        }
                        .await;
                        Some(Event::Started(id, result))
                    }
                    .instrument(span),
                );
            }
            Effect::Probe(replica, path) => {
                let spec_timeout = self.machine.spec().readiness_timeout;
                self.work.spawn(
                    async move {
                        let timeout = spec_timeout;
                        let ok = crate::probe::until_ready(replica.address, &path, ctx.settings.probe_interval, timeout).await.is_some();
                        let result = if ok { Ok(()) } else { Err(ctx.logs.tail_of(&name, &replica.id, OUTPUT_LINES)) };
                        Some(Event::Probed(replica.id, result))
                    }
                    .instrument(span),
                );
            }
            Effect::Register(replica) => {
                let spec = self.machine.spec().clone();
                self.work.spawn(
                    async move {
                        let result = register(&ctx, &spec, replica.address).await;
                        Some(Event::Registered(replica.id, result))
                    }
                    .instrument(span),
                );
            }
            Effect::Gate(gated) => {
                self.work.spawn(
                    async move {
                        let result = ctx.cp.gated(&name, gated).await;
                        if let Err(e) = &result {
                            warn!(error = %e, gated, "cannot tell the control plane whether the function is gated; trying again shortly");
                        }
                        Some(Event::Gated(gated, result.map_err(cause)))
                    }
                    .instrument(span),
                );
            }
            Effect::SetReady { id, capacity } => {
                if let Err(e) = ctx.redis.set_ready(&name, capacity).await {
                    warn!(error = %e, "cannot mark the function ready in Redis; the next tick re-asserts it");
                }
                return Some(Event::Noticed(id));
            }
            Effect::Refuse(refusal) => {
                if let Err(e) = ctx.redis.refuse(&name, &refusal).await {
                    warn!(error = %e, "cannot publish the function's refusal to Redis; callers wait until the gate's timeout");
                }
            }
            Effect::Lift => {
                if let Err(e) = ctx.redis.lift_refusal(&name).await {
                    warn!(error = %e, "cannot lift the function's refusal in Redis; it ends with its expiry");
                }
            }
            Effect::ClearReady => {
                if let Err(e) = ctx.redis.clear_ready(&name).await {
                    warn!(error = %e, "cannot mark the function not ready in Redis; the gate may send to a draining replica, which Envoy holds");
                }
            }
            Effect::Drain(replica, deadline) => {
                self.work.spawn(
                    async move {
                        if let Err(e) = ctx.cp.drain_endpoint(&name, replica.address).await {
                            warn!(error = %e, "cannot drain the endpoint; waiting out the request timeout instead");
                        }
                        if !ctx.envoy.wait_host_idle(&name, replica.address, deadline).await {
                            warn!(replica = %replica.id, "requests still in flight at the drain deadline");
                        }
                        Some(Event::DrainFinished(replica.id))
                    }
                    .instrument(span),
                );
            }
            Effect::Stop { replica, registered } => {
                self.work.spawn(async move { Some(Event::Stopped(stop(&ctx, &name, &replica, registered).await)) }.instrument(span));
            }
            Effect::Restore(spec, replicas) => {
                self.work.spawn(
                    async move {
                        let restored = async {
                            declare(&ctx, &spec).await?;
                            for r in &replicas {
                                ctx.cp.add_endpoint(&spec.name, r.address).await.map_err(cause)?;
                                info!(replica = %r.id, "endpoint restored in the control plane");
                            }
                            Ok(())
                        };
                        Some(Event::Declared(restored.await))
                    }
                    .instrument(span),
                );
            }
            Effect::RemoveEndpoint(address) => {
                self.work.spawn(
                    async move {
                        if let Err(e) = ctx.cp.remove_endpoint(&name, address).await {
                            warn!(error = %e, %address, "cannot remove a dead replica's endpoint; Envoy's health checks keep it out");
                        }
                        None
                    }
                    .instrument(span),
                );
            }
            Effect::Answer(ids, result) => {
                for id in ids {
                    if let Some(reply) = self.waiters.remove(&id) {
                        if reply.send(result.clone().map_err(WakeError::Failed)).is_err() {
                            info!("a waiter gave up before its answer");
                        }
                    }
                }
            }
            Effect::Publish { ready, declared } => {
                if declared {
                    if let Err(e) = ctx.redis.refresh(&name, ready > 0).await {
                        warn!(error = %e, "cannot re-assert the function in Redis; the next tick tries again");
                    }
                }
                let target = self.machine.spec().scaling.target_concurrency;
                if let Err(e) = ctx.redis.set_replicas(&name, ready, target).await {
                    warn!(error = %e, "cannot publish the replica count to Redis; the next tick tries again");
                }
            }
            Effect::ReadLoad => match ctx.redis.load(&name).await {
                Ok(l) => {
                    // Requests the gate holds, as a statsd gauge, when it changes.
                    if l.held != self.reported_held {
                        self.reported_held = l.held;
                        ctx.metrics.held(&name, l.held);
                    }
                    let since = l.last_request_ms.map(|t| Duration::from_millis(now_ms().saturating_sub(t)));
                    return Some(Event::Load(Load {
                        in_flight: l.in_flight,
                        pending: l.pending,
                        held: l.held,
                        backlog: 0,
                        since_last_request: since,
                    }));
                }
                Err(e) => warn!(error = %e, "cannot read the function's load from Redis; no scaling until it can"),
            },
            Effect::Metric(m) => ctx.metrics.record(&name, &m),
            Effect::Forget => {
                // Gone from `/status` (above), then from Redis (the gate answers 404), then
                // from the control plane.
                if let Err(e) = ctx.redis.forget(&name).await {
                    warn!(error = %e, "cannot remove the function's keys from Redis");
                }
                if let Err(e) = ctx.cp.remove_function(&name).await {
                    warn!(error = %e, "cannot remove the function from the control plane; the next start-up removes it");
                }
                info!("function removed");
            }
            Effect::Exit => {}
        }
        None
    }
}

/// Declares the function to the control plane (route, cluster) and lists it in Redis.
async fn declare(ctx: &Ctx, spec: &FunctionSpec) -> Result<(), Cause> {
    ctx.cp.put_function(spec).await.map_err(cause)?;
    ctx.redis.set_hold(&spec.name, roost_common::spec::hold(spec.readiness_timeout)).await.map_err(cause)?;
    ctx.redis.set_async(&spec.name, &AsyncSettings::of(spec)).await.map_err(cause)?;
    ctx.redis.declare(&spec.name).await.map_err(cause)
}

/// Adds a replica's endpoint; a control plane that no longer knows the function (it
/// restarted without its saved model) is given it again first (declaring is idempotent).
async fn register(ctx: &Ctx, spec: &FunctionSpec, address: std::net::SocketAddr) -> Result<(), Cause> {
    match ctx.cp.add_endpoint(&spec.name, address).await {
        Err(crate::control_plane::ControlPlaneError::Refused { status: 404, .. }) => {
            warn!("the control plane does not know the function; declaring it again");
            declare(ctx, spec).await?;
            ctx.cp.add_endpoint(&spec.name, address).await.map_err(cause)
        }
        other => other.map_err(cause),
    }
}

/// Removes the endpoint (if registered, waiting for the ACK), then stops the replica.
async fn stop(ctx: &Ctx, function: &str, replica: &Replica, registered: bool) -> String {
    if registered {
        if let Err(e) = ctx.cp.remove_endpoint(function, replica.address).await {
            warn!(error = %e, "cannot remove the endpoint; stopping the replica anyway");
        }
    }
    match ctx.runtime.stop(replica, ctx.settings.stop_grace).await {
        Ok(()) => info!(replica = %replica.id, "replica stopped"),
        Err(e) => warn!(replica = %replica.id, error = %e, "cannot stop the replica; a restarted orchestrator stops it as a stray"),
    }
    replica.id.clone()
}
