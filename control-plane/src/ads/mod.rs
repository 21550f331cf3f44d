//! The per-stream ADS protocol as plain synchronous code: no I/O, no clock, no tasks.
//! The server feeds each stream's state machine Envoy's requests and new snapshots; the
//! state machine answers with the responses to send and keeps the ACK/NACK bookkeeping
//! that the admin API's "wait until Envoy has it" relies on.
//!
//! - [`sotw`]: state of the world (`StreamAggregatedResources`).
//! - [`delta`]: incremental (`DeltaAggregatedResources`).
//!
//! Both push a change in the order clusters, endpoints, listeners, routes, and remove
//! stale clusters last, so no route ever points at a cluster Envoy does not have yet.

pub mod delta;
pub mod sotw;

use crate::resources::{fnv1a, Kind, Resource, Snapshot};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// A response sent and not yet answered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    nonce: String,
    generation: u64,
    version: String,
}

/// Envoy rejected a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nack {
    /// Which resource type (`cds`, `eds`, `lds`, `rds`).
    pub kind: &'static str,
    /// The model generation of the rejected response.
    pub generation: u64,
    /// The version Envoy rejected.
    pub version: String,
    /// Envoy's error text.
    pub error: String,
}

/// One resource type on one stream: the subscription, what was sent and what Envoy
/// answered.
#[derive(Debug, Clone)]
struct TypeState {
    kind: Kind,
    /// Envoy has sent its first request for this type.
    initialized: bool,
    /// Subscribed to every resource of the type.
    wildcard: bool,
    /// Resource names subscribed to by name.
    names: BTreeSet<String>,
    /// Name -> version: in SotW what was last sent, in delta what Envoy has.
    sent: BTreeMap<String, Arc<str>>,
    /// Responses sent, oldest first, not answered yet.
    pending: VecDeque<Pending>,
    /// Newest generation whose content Envoy has ACKed for this type.
    acked_generation: u64,
    /// Version string of the last ACKed response.
    acked_version: String,
    /// Set while the newest answered response was NACKed.
    nack: Option<Nack>,
    /// Nonce of the newest response sent.
    last_nonce: String,
}

impl TypeState {
    fn new(kind: Kind) -> Self {
        TypeState {
            kind,
            initialized: false,
            wildcard: false,
            names: BTreeSet::new(),
            sent: BTreeMap::new(),
            pending: VecDeque::new(),
            acked_generation: 0,
            acked_version: String::new(),
            nack: None,
            last_nonce: String::new(),
        }
    }

    /// Whether `nonce` is neither outstanding nor the newest one sent: Envoy wrote the
    /// request before it saw a newer response, which will bring a fresher request.
    fn is_stale(&self, nonce: &str) -> bool {
        nonce != self.last_nonce && !self.pending.iter().any(|p| p.nonce == nonce)
    }

    fn record_sent(&mut self, nonce: String, generation: u64, version: String) {
        self.last_nonce = nonce.clone();
        self.pending.push_back(Pending { nonce, generation, version });
    }

    /// Envoy answered `nonce`. Returns false when no response with that nonce is
    /// outstanding (a stale or unknown nonce): the answer is then ignored.
    fn answer(&mut self, nonce: &str, error: Option<String>) -> bool {
        let Some(pos) = self.pending.iter().position(|p| p.nonce == nonce) else {
            return false;
        };
        let answered = self.pending.drain(..=pos).next_back().expect("position is in range");
        match error {
            None => {
                self.acked_generation = answered.generation;
                self.acked_version = answered.version;
                self.nack = None;
            }
            Some(error) => {
                self.nack = Some(Nack { kind: self.kind.short(), generation: answered.generation, version: answered.version, error });
            }
        }
        true
    }

    /// The snapshot at `generation` needs nothing sent for this type: whatever is
    /// outstanding (or already ACKed) also stands for this generation.
    fn unchanged_at(&mut self, generation: u64) {
        if !self.initialized {
            return;
        }
        match self.pending.back_mut() {
            Some(p) => p.generation = generation,
            None if self.nack.is_none() => self.acked_generation = generation,
            None => {}
        }
    }

    fn subscribed_to(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Newest generation this type is known to be in sync with at `snapshot`.
    fn synced_generation(&self, snapshot: &Snapshot) -> u64 {
        if !self.initialized {
            // Envoy asks for a kind it takes by name once something names it (an EDS
            // cluster, a listener's route table): while nothing does, it lacks nothing.
            let nothing_named = !self.kind.is_wildcard() && snapshot.expected_names(self.kind).next().is_none();
            return if nothing_named { snapshot.generation } else { 0 };
        }
        let missing = snapshot.expected_names(self.kind).any(|n| !self.subscribed_to(n));
        if missing || !self.pending.is_empty() {
            self.acked_generation.min(snapshot.generation.saturating_sub(1))
        } else {
            self.acked_generation
        }
    }

    fn status(&self) -> KindStatus {
        KindStatus {
            kind: self.kind.short(),
            initialized: self.initialized,
            wildcard: self.wildcard,
            subscribed: self.names.len(),
            acked_generation: self.acked_generation,
            acked_version: self.acked_version.clone(),
            pending: self.pending.len(),
        }
    }
}

/// What the admin API shows of one type on one stream.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KindStatus {
    /// `cds`, `eds`, `lds` or `rds`.
    pub kind: &'static str,
    /// Envoy has asked for this type.
    pub initialized: bool,
    /// Subscribed to all resources of the type.
    pub wildcard: bool,
    /// Number of names subscribed to explicitly.
    pub subscribed: usize,
    /// Newest generation ACKed.
    pub acked_generation: u64,
    /// Version of the last ACKed response.
    pub acked_version: String,
    /// Responses awaiting an answer.
    pub pending: usize,
}

/// What the admin API and the sync waiters know of one stream.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StreamStatus {
    /// Envoy's node id.
    pub node_id: String,
    /// `sotw` or `delta`.
    pub protocol: &'static str,
    /// Newest model generation that Envoy has ACKed completely on this stream.
    pub synced_generation: u64,
    /// Newest model generation the stream has processed (sent, or found nothing to send).
    pub seen_generation: u64,
    /// The current NACK: the newest answer to some type was a rejection and no newer
    /// response of that type is awaiting an answer.
    pub nack: Option<Nack>,
    /// Per type.
    pub kinds: Vec<KindStatus>,
}

/// The four type states of a stream, and the nonce counter they share.
#[derive(Debug, Clone)]
struct Types {
    states: [TypeState; 4],
    next_nonce: u64,
    node_id: String,
}

impl Types {
    fn new() -> Self {
        Types { states: Kind::ALL.map(TypeState::new), next_nonce: 0, node_id: String::new() }
    }

    fn get(&mut self, kind: Kind) -> &mut TypeState {
        &mut self.states[kind as usize]
    }

    /// Starts handling a request: remembers Envoy's node id (sent on the first request
    /// only), finds the type, and marks it initialized. Returns the type and whether this
    /// was its first request; `None` for a type Roost does not serve.
    fn begin(&mut self, node: Option<&envoy_types::pb::envoy::config::core::v3::Node>, type_url: &str) -> Option<(Kind, bool)> {
        if let Some(node) = node {
            if self.node_id.is_empty() {
                self.node_id = node.id.clone();
            }
        }
        let kind = Kind::from_type_url(type_url)?;
        let st = self.get(kind);
        let first = !st.initialized;
        st.initialized = true;
        Some((kind, first))
    }

    fn nonce(&mut self) -> String {
        self.next_nonce += 1;
        self.next_nonce.to_string()
    }

    fn status(&self, protocol: &'static str, snapshot: &Snapshot) -> StreamStatus {
        StreamStatus {
            node_id: self.node_id.clone(),
            protocol,
            synced_generation: self.states.iter().map(|s| s.synced_generation(snapshot)).min().unwrap_or(0),
            seen_generation: snapshot.generation,
            // A NACK stands until a newer response of its type is answered; while one is
            // on its way, Envoy's verdict on it is still open.
            nack: self.states.iter().filter(|s| s.pending.is_empty()).find_map(|s| s.nack.clone()),
            kinds: self.states.iter().map(TypeState::status).collect(),
        }
    }
}

/// A stable version string for a set of resources: the hash of their names and versions.
fn content_version<'a>(items: impl Iterator<Item = (&'a String, &'a Resource)>) -> String {
    let mut text = String::new();
    for (name, r) in items {
        text.push_str(name);
        text.push('=');
        text.push_str(&r.version);
        text.push(';');
    }
    format!("{:016x}", fnv1a(text.as_bytes()))
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Snapshots for the state machine tests.
    use crate::model::{Change, Model};
    use crate::resources::{build, BuildSettings, Snapshot};

    pub fn snapshot(generation: u64, functions: &[(&str, &[&str])]) -> Snapshot {
        let mut m = Model::default();
        for (f, eps) in functions {
            m.apply(&Change::PutFunction { function: (*f).into(), concurrency: None, timeout_ms: None, auth: None }).unwrap();
            for e in *eps {
                m.apply(&Change::AddEndpoint { function: (*f).into(), address: (*e).into() }).unwrap();
            }
        }
        build(&m, &BuildSettings::default(), generation)
    }
}
