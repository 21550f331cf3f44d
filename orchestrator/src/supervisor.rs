//! The supervisor: one task per function, fed by the definitions watcher, Redis signals,
//! runtime events and a periodic tick; adopts running replicas on start and removes
//! strays; stops every replica on a graceful shutdown.

use crate::context::Ctx;
use crate::definitions::{self, Reading};
use crate::function::{self, FunctionStatus, Msg, WakeReport};
use crate::redis_io::Signal;
use crate::runtime::RuntimeEvent;
use roost_common::spec::Definitions;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Requests from the HTTP API.
#[derive(Debug)]
pub enum Request {
    /// Wake a function and answer when it is ready.
    Wake(String, oneshot::Sender<Result<WakeReport, WakeError>>),
    /// Everything the orchestrator knows.
    Status(oneshot::Sender<Status>),
}

/// Why a wake failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WakeError {
    /// No such function.
    #[error("no function named {0:?} in the definitions")]
    Unknown(String),
    /// The start failed.
    #[error("{0}")]
    Failed(String),
}

/// The orchestrator's status.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// `process` or `docker`.
    pub runtime: &'static str,
    /// The definitions file.
    pub definitions: String,
    /// The problems of the newest edit, if it was refused (the last good definitions serve).
    pub definitions_error: Option<String>,
    /// Every function.
    pub functions: Vec<FunctionStatus>,
}

struct Handle {
    tx: mpsc::UnboundedSender<Msg>,
    task: JoinHandle<()>,
}

/// Inputs of the supervisor.
#[derive(Debug)]
pub struct Inputs {
    /// Definition readings.
    pub readings: mpsc::UnboundedReceiver<Reading>,
    /// Wake and scale signals.
    pub signals: mpsc::UnboundedReceiver<Signal>,
    /// Replica exits.
    pub events: mpsc::UnboundedReceiver<RuntimeEvent>,
    /// HTTP API requests.
    pub requests: mpsc::UnboundedReceiver<Request>,
}

/// Runs until `shutdown`, then stops every replica (bounded by `drain_limit`).
pub async fn run(ctx: Arc<Ctx>, definitions_path: String, initial: Reading, mut inputs: Inputs, tick: Duration, drain_limit: Duration, shutdown: CancellationToken) {
    let mut defs = Definitions::new();
    let mut defs_error = None;
    let mut functions: BTreeMap<String, Handle> = BTreeMap::new();
    match initial {
        Reading::Loaded(d) => defs = d,
        Reading::Invalid(e) => {
            warn!(errors = %e, "definitions invalid at start; serving no function until the file is fixed");
            defs_error = Some(e);
        }
    }
    for (name, spec) in &defs {
        let (tx, task) = function::spawn(ctx.clone(), Arc::new(spec.clone()), definitions::spec_hash(spec));
        functions.insert(name.clone(), Handle { tx, task });
    }
    adopt(&ctx, &defs, &functions).await;

    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                for h in functions.values() {
                    let _ = h.tx.send(Msg::Evaluate);
                }
                functions.retain(|_, h| !h.task.is_finished());
            }
            Some(signal) = inputs.signals.recv() => {
                let (name, msg) = match signal {
                    Signal::Wake(n) => (n, Msg::Wake(None)),
                    Signal::Scale(n) => (n, Msg::Evaluate),
                };
                match functions.get(&name) {
                    Some(h) => { let _ = h.tx.send(msg); }
                    None => warn!(function = %name, "signal for an unknown function ignored"),
                }
            }
            Some(event) = inputs.events.recv() => {
                let RuntimeEvent::Exited { replica_id, function, reason } = event;
                if let Some(h) = functions.get(&function) {
                    let _ = h.tx.send(Msg::Exited(replica_id, reason));
                }
            }
            Some(reading) = inputs.readings.recv() => match reading {
                Reading::Invalid(e) => defs_error = Some(e),
                Reading::Loaded(new) => {
                    defs_error = None;
                    let d = definitions::diff(&defs, &new);
                    for name in &d.removed {
                        info!(function = %name, "function removed from the definitions");
                        if let Some(h) = functions.get(name) { let _ = h.tx.send(Msg::Remove); }
                    }
                    for name in d.added.iter().chain(&d.changed) {
                        let spec = Arc::new(new[name].clone());
                        let hash = definitions::spec_hash(&spec);
                        match functions.get(name).filter(|h| !h.task.is_finished()) {
                            Some(h) => { let _ = h.tx.send(Msg::Update(spec, hash)); }
                            None => {
                                info!(function = %name, "function added");
                                let (tx, task) = function::spawn(ctx.clone(), spec, hash);
                                functions.insert(name.clone(), Handle { tx, task });
                            }
                        }
                    }
                    defs = new;
                }
            },
            Some(req) = inputs.requests.recv() => match req {
                Request::Wake(name, reply) => match functions.get(&name).filter(|_| defs.contains_key(&name)) {
                    None => { let _ = reply.send(Err(WakeError::Unknown(name))); }
                    Some(h) => {
                        let (tx, rx) = oneshot::channel();
                        let _ = h.tx.send(Msg::Wake(Some(tx)));
                        tokio::spawn(async move {
                            let r = rx.await.unwrap_or_else(|_| Err("function task ended".into()));
                            let _ = reply.send(r.map_err(WakeError::Failed));
                        });
                    }
                },
                Request::Status(reply) => {
                    let mut list = Vec::new();
                    for h in functions.values() {
                        let (tx, rx) = oneshot::channel();
                        if h.tx.send(Msg::Status(tx)).is_ok() {
                            if let Ok(s) = rx.await { list.push(s); }
                        }
                    }
                    let _ = reply.send(Status {
                        runtime: ctx.runtime.kind(),
                        definitions: definitions_path.clone(),
                        definitions_error: defs_error.clone(),
                        functions: list,
                    });
                }
            },
        }
    }
    info!("stopping every replica");
    for h in functions.values() {
        let _ = h.tx.send(Msg::Shutdown);
    }
    let all = futures::future::join_all(functions.into_values().map(|h| h.task));
    if tokio::time::timeout(drain_limit, all).await.is_err() {
        warn!("replicas still stopping at the shutdown deadline");
    }
    ctx.runtime.close().await;
}

/// Adopts the runtime's running replicas of known functions (probed, then registered
/// with the control plane), stops the others, and removes control-plane functions and
/// endpoints that no replica backs.
async fn adopt(ctx: &Arc<Ctx>, defs: &Definitions, functions: &BTreeMap<String, Handle>) {
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
                let declared = ctx.cp.put_function(&s.name, s.scaling.target_concurrency, s.limits.timeout).await;
                match declared.and(ctx.cp.add_endpoint(&s.name, replica.address).await) {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(replica = %replica.id, error = %e, "cannot register an adoptable replica");
                        false
                    }
                }
            }
            _ => false,
        };
        if registered {
            kept.insert((replica.function.clone(), replica.address));
            if let Some(h) = functions.get(&replica.function) {
                let _ = h.tx.send(Msg::Adopt(replica));
            }
        } else {
            info!(replica = %replica.id, function = %replica.function, "stopping a stray replica");
            let _ = ctx.runtime.stop(&replica, ctx.settings.stop_grace).await;
        }
    }
    match ctx.cp.functions().await {
        Ok(list) => {
            for (name, endpoints) in list {
                if !defs.contains_key(&name) {
                    info!(function = %name, "removing a function the definitions no longer have");
                    let _ = ctx.cp.remove_function(&name).await;
                    continue;
                }
                for addr in endpoints {
                    if !kept.contains(&(name.clone(), addr)) {
                        info!(function = %name, %addr, "removing an endpoint no replica backs");
                        let _ = ctx.cp.remove_endpoint(&name, addr).await;
                    }
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot list the control plane's functions; strays not checked"),
    }
}
