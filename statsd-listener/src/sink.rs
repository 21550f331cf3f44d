//! Writes each function's load to Redis (at most once per flush per function) and
//! publishes scale-up signals, reconnecting with backoff when Redis goes away. While
//! Redis is away only the newest load of each function is kept, so memory stays bounded.
//! What it writes and reads is typed in [`roost_common::wire::redis`]. It writes only
//! for a function still in `roost:functions` at the time of the write.

use crate::aggregate::{needs_scale_up, Load, MAX_FUNCTIONS};
use crate::metrics::Stats;
use redis::aio::ConnectionManager;
use roost_common::backoff::Backoff;
use roost_common::clock::now_ms;
use roost_common::keys;
use roost_common::wire::redis::{LoadHash, ReplicasHash, ScaleSignal};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Shortest time between two scale signals of one function.
const SIGNAL_EVERY: Duration = roost_common::scaling::SCALE_SIGNAL_INTERVAL;

/// Loads waiting to be written.
#[derive(Debug, Default)]
pub struct Sink {
    queue: Mutex<HashMap<String, (Load, bool)>>,
    wake: Notify,
}

impl Sink {
    /// Queues a function's newest load; `urgent` writes it (and decides on scaling) now
    /// rather than at the next flush.
    pub fn push(&self, function: &str, load: Load, urgent: bool) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_FUNCTIONS && !q.contains_key(function) {
            return;
        }
        let entry = q.entry(function.to_string()).or_insert((load, false));
        entry.0 = load;
        entry.1 |= urgent;
        drop(q);
        if urgent {
            self.wake.notify_one();
        }
    }

    /// Asks the writer to write now.
    pub fn kick(&self) {
        self.wake.notify_one();
    }

    fn take(&self) -> HashMap<String, (Load, bool)> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn put_back(&self, items: HashMap<String, (Load, bool)>) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        for (f, v) in items {
            q.entry(f).or_insert(v);
        }
    }

    /// Number of functions waiting to be written.
    pub fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes until `shutdown`.
pub async fn run(sink: Arc<Sink>, client: redis::Client, stats: Arc<Stats>, shutdown: CancellationToken) {
    let mut conn: Option<ConnectionManager> = None;
    let mut backoff = Backoff::default();
    let mut last_signal: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sink.wake.notified() => {}
        }
        if sink.is_empty() {
            continue;
        }
        if conn.is_none() {
            match client.get_connection_manager().await {
                Ok(c) => {
                    info!("connected to Redis");
                    conn = Some(c);
                    backoff.reset();
                }
                Err(e) => {
                    stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in = ?delay, "Redis unreachable; keeping the newest load per function");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    sink.kick();
                    continue;
                }
            }
        }
        let items = sink.take();
        let c = conn.as_mut().expect("connected above");
        match write(c, &items, &mut last_signal, &stats).await {
            Ok(()) => {}
            Err(e) => {
                stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "writing to Redis failed; will retry");
                sink.put_back(items);
                conn = None;
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                sink.kick();
            }
        }
    }
}

async fn write(
    c: &mut ConnectionManager,
    items: &HashMap<String, (Load, bool)>,
    last_signal: &mut HashMap<String, Instant>,
    stats: &Stats,
) -> redis::RedisResult<()> {
    let names: Vec<&String> = items.keys().collect();
    // Each function's replica count, and whether it is still declared: a function
    // removed since the listener last read `roost:functions` gets no load key back.
    let mut read = redis::pipe();
    for f in &names {
        read.cmd("HMGET").arg(keys::replicas(f)).arg(&ReplicasHash::FIELDS[..]);
        read.sismember(keys::FUNCTIONS, *f);
    }
    let values: Vec<redis::Value> = read.query_async(c).await?;
    let mut replicas = Vec::with_capacity(names.len());
    let mut declared = Vec::with_capacity(names.len());
    for pair in values.chunks(2) {
        let [r, d] = pair else { break };
        replicas.push(redis::from_redis_value_ref::<(Option<String>, Option<String>)>(r)?);
        declared.push(redis::from_redis_value_ref::<bool>(d)?);
    }
    let updated_ms = now_ms();
    let mut write = redis::pipe();
    let mut writes = 0usize;
    for ((f, (ready, target)), declared) in names.iter().zip(&replicas).zip(declared) {
        if !declared {
            stats.unknown_functions.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let load = &items[*f].0;
        let hash = LoadHash {
            in_flight: load.in_flight,
            pending: load.pending,
            last_request_ms: load.last_request_ms,
            rps: load.rps,
            requests_total: load.requests_total,
            none_healthy_total: load.none_healthy_total,
            updated_ms,
        };
        write.hset_multiple(keys::load(f), &hash.to_fields()).ignore();
        writes += 1;
        // The orchestrator's replica count, as it last published it (absent: one replica).
        // It counts ready replicas only, not those starting, and lags a start by one
        // publish: the rule (`roost_common::scaling::needs_scale_up`, the one the
        // orchestrator sizes by) may then signal again, which the rate limit
        // (`SCALE_SIGNAL_INTERVAL`) bounds and the orchestrator absorbs, since it sizes by
        // ready plus starting replicas.
        let replicas = ReplicasHash::from_values(ready.as_deref(), target.as_deref());
        let (ready, target) = (replicas.ready, replicas.target_concurrency);
        let due = last_signal.get(*f).is_none_or(|t| t.elapsed() >= SIGNAL_EVERY);
        if needs_scale_up(load, ready, target) && due {
            let signal =
                ScaleSignal { function: (*f).clone(), pending: load.pending, in_flight: load.in_flight, ready, target_concurrency: target };
            write.publish(keys::SCALE_CHANNEL, signal.to_payload()).ignore();
            last_signal.insert((*f).clone(), Instant::now());
            stats.scale_signals.fetch_add(1, Ordering::Relaxed);
        }
    }
    if writes == 0 {
        return Ok(());
    }
    write.query_async::<()>(c).await
}
