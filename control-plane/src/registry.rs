//! The connected Envoys: each ADS stream's status, recent NACKs, and waiting until every
//! connected Envoy has ACKed a generation of the model.

use crate::ads::{Nack, StreamStatus};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How many NACKs the admin API remembers.
const RECENT_NACKS: usize = 32;

/// One connected ADS stream as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamEntry {
    /// Stream id, unique while the control plane runs.
    pub id: u64,
    /// Envoy's address.
    pub peer: String,
    /// Unix time in milliseconds when the stream opened.
    pub connected_at_ms: u64,
    /// Protocol bookkeeping.
    #[serde(flatten)]
    pub status: StreamStatus,
    /// Encoded bytes of every response sent on the stream.
    pub bytes_sent: u64,
    /// Responses sent on the stream.
    pub responses_sent: u64,
}

/// A NACK as remembered for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct NackEvent {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    /// Envoy's node id.
    pub node_id: String,
    /// What was rejected and why.
    #[serde(flatten)]
    pub nack: Nack,
}

/// Why waiting for Envoy to ACK a generation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SyncError {
    /// An Envoy rejected the configuration.
    #[error("Envoy {node_id:?} rejected the {} configuration of generation {}: {}; it keeps serving its last good configuration", nack.kind, nack.generation, nack.error)]
    Nacked {
        /// Envoy's node id.
        node_id: String,
        /// The rejection.
        nack: Nack,
    },
    /// Not every Envoy ACKed in time (or too few are connected).
    #[error("generation {generation} not ACKed by every Envoy within {timeout_ms} ms ({connected} connected, {required} required, {synced} in sync); check that Envoy is running and connected to the control plane")]
    Timeout {
        /// The generation waited for.
        generation: u64,
        /// How long was waited.
        timeout_ms: u64,
        /// Envoys connected.
        connected: usize,
        /// Envoys required.
        required: usize,
        /// Envoys in sync with the generation.
        synced: usize,
    },
}

/// All connected streams.
#[derive(Debug)]
pub struct Registry {
    streams: Mutex<BTreeMap<u64, StreamEntry>>,
    nacks: Mutex<VecDeque<NackEvent>>,
    next_id: AtomicU64,
    changed: watch::Sender<u64>,
    /// Streams held until the model is confirmed.
    held: AtomicI64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            streams: Mutex::default(),
            nacks: Mutex::default(),
            next_id: AtomicU64::new(1),
            changed: watch::channel(0).0,
            held: AtomicI64::new(0),
        }
    }
}

impl Registry {
    /// A stream starts (`1`) or stops (`-1`) being held until the model is confirmed.
    pub fn holding(&self, delta: i64) {
        self.held.fetch_add(delta, Ordering::Relaxed);
    }

    /// How many Envoy streams are held until the model is confirmed.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed).max(0) as u64
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A registered stream; dropping it removes the stream from the registry.
#[derive(Debug)]
pub struct StreamHandle {
    registry: Arc<Registry>,
    /// The stream's id.
    pub id: u64,
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.registry.lock_streams().remove(&self.id);
        self.registry.notify();
    }
}

impl Registry {
    fn lock_streams(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, StreamEntry>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Registers a new stream from `peer` with its initial status.
    pub fn register(self: &Arc<Self>, peer: String, status: StreamStatus) -> StreamHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock_streams().insert(id, StreamEntry { id, peer, connected_at_ms: now_ms(), status, bytes_sent: 0, responses_sent: 0 });
        self.notify();
        StreamHandle { registry: self.clone(), id }
    }

    /// Updates a stream's status and adds to its byte and response counts.
    pub fn update(&self, id: u64, status: StreamStatus, bytes: u64, responses: u64) {
        let mut streams = self.lock_streams();
        if let Some(e) = streams.get_mut(&id) {
            if e.status == status && bytes == 0 && responses == 0 {
                return;
            }
            e.status = status;
            e.bytes_sent += bytes;
            e.responses_sent += responses;
        }
        drop(streams);
        self.notify();
    }

    /// Remembers a NACK for the admin API.
    pub fn record_nack(&self, node_id: &str, nack: Nack) {
        let mut nacks = self.nacks.lock().unwrap_or_else(|e| e.into_inner());
        if nacks.len() == RECENT_NACKS {
            nacks.pop_front();
        }
        nacks.push_back(NackEvent { at_ms: now_ms(), node_id: node_id.to_string(), nack });
    }

    /// Every connected stream.
    pub fn streams(&self) -> Vec<StreamEntry> {
        self.lock_streams().values().cloned().collect()
    }

    /// The most recent NACKs, oldest first.
    pub fn recent_nacks(&self) -> Vec<NackEvent> {
        self.nacks.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// Waits until at least `min_envoys` streams are connected and every connected one
    /// has ACKed `generation`. Fails at once with Envoy's text when one NACKs it, or
    /// after `timeout`. Returns how many Envoys are in sync.
    pub async fn wait_synced(&self, generation: u64, min_envoys: usize, timeout: Duration) -> Result<usize, SyncError> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            let (connected, synced, nack) = {
                let streams = self.lock_streams();
                let synced = streams.values().filter(|e| e.status.synced_generation >= generation).count();
                // A NACK fails the wait only once the stream has processed `generation`:
                // before that, a fix may be on its way.
                let nack = streams.values().find_map(|e| {
                    let n = e.status.nack.as_ref()?;
                    let judged = e.status.seen_generation >= generation;
                    (judged && e.status.synced_generation < generation)
                        .then(|| SyncError::Nacked { node_id: e.status.node_id.clone(), nack: n.clone() })
                });
                (streams.len(), synced, nack)
            };
            if let Some(err) = nack {
                return Err(err);
            }
            if connected >= min_envoys && synced == connected {
                return Ok(synced);
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(SyncError::Timeout {
                        generation,
                        timeout_ms: timeout.as_millis() as u64,
                        connected,
                        required: min_envoys,
                        synced,
                    });
                }
            }
        }
        unreachable!("the registry owns the sender, so it cannot close while borrowed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(synced: u64, nack: Option<Nack>) -> StreamStatus {
        StreamStatus {
            node_id: "n".into(),
            protocol: "delta",
            synced_generation: synced,
            seen_generation: synced.max(2),
            nack,
            kinds: vec![],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_every_stream_then_succeeds() {
        let reg = Arc::new(Registry::default());
        let a = reg.register("a".into(), status(1, None));
        let b = reg.register("b".into(), status(1, None));
        let r2 = reg.clone();
        let waiter = tokio::spawn(async move { r2.wait_synced(2, 1, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        reg.update(a.id, status(2, None), 10, 1);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        reg.update(b.id, status(3, None), 10, 1);
        assert_eq!(waiter.await.unwrap().unwrap(), 2);
        assert_eq!(reg.streams().iter().map(|s| s.bytes_sent).sum::<u64>(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn needs_min_envoys_and_times_out() {
        let reg = Arc::new(Registry::default());
        let err = reg.wait_synced(1, 1, Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(err, SyncError::Timeout { connected: 0, required: 1, .. }), "{err}");
        assert!(err.to_string().contains("check that Envoy is running"));
    }

    #[tokio::test(start_paused = true)]
    async fn nack_fails_the_wait_with_envoys_text() {
        let reg = Arc::new(Registry::default());
        let a = reg.register("a".into(), status(1, None));
        let nack = Nack { kind: "cds", generation: 2, version: "v".into(), error: "bad cluster".into() };
        reg.update(a.id, status(1, Some(nack.clone())), 0, 0);
        reg.record_nack("n", nack);
        let err = reg.wait_synced(2, 1, Duration::from_secs(5)).await.unwrap_err();
        assert!(err.to_string().contains("bad cluster"), "{err}");
        assert_eq!(reg.recent_nacks().len(), 1);
        // An older generation the stream already has still succeeds.
        assert_eq!(reg.wait_synced(1, 1, Duration::from_secs(5)).await.unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_stream_leaves_the_registry() {
        let reg = Arc::new(Registry::default());
        let a = reg.register("a".into(), status(0, None));
        assert_eq!(reg.streams().len(), 1);
        drop(a);
        assert!(reg.streams().is_empty());
    }
}
