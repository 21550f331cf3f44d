//! State-of-the-world ADS: every response carries all resources of its type.
//!
//! Envoy asks for clusters and listeners by wildcard and for endpoints and routes by
//! name. Roost answers endpoint and route requests with every assignment and route table
//! it has (Envoy ignores the ones it does not watch), so a cluster's assignment reaches
//! Envoy right behind the cluster, before Envoy has even asked for it by name.

use super::{content_version, StreamStatus, Types};
use crate::resources::{Kind, Resource, Snapshot};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use std::collections::BTreeMap;

/// One SotW ADS stream.
#[derive(Debug, Clone)]
pub struct SotwStream {
    types: Types,
    /// The clusters last sent, kept so a removed cluster can stay until routes move off it.
    last_clusters: BTreeMap<String, Resource>,
}

impl Default for SotwStream {
    fn default() -> Self {
        Self::new()
    }
}

impl SotwStream {
    /// A new stream that has heard nothing yet.
    pub fn new() -> Self {
        SotwStream { types: Types::new(), last_clusters: BTreeMap::new() }
    }

    /// Handles one request from Envoy: the first request of a type gets the full state;
    /// an ACK or NACK updates the bookkeeping; a stale nonce is ignored.
    pub fn on_request(&mut self, req: &DiscoveryRequest, snapshot: &Snapshot) -> Vec<DiscoveryResponse> {
        let Some((kind, first)) = self.types.begin(req.node.as_ref(), &req.type_url) else {
            return vec![];
        };
        let st = self.types.get(kind);
        if !first && !req.response_nonce.is_empty() {
            if st.is_stale(&req.response_nonce) {
                return vec![]; // a newer response is on its way to Envoy
            }
            let error = req.error_detail.as_ref().map(|s| s.message.clone());
            st.answer(&req.response_nonce, error);
        }
        let wildcard = req.resource_names.iter().any(|n| n == "*");
        st.wildcard = wildcard || (kind.is_wildcard() && req.resource_names.is_empty());
        let names: std::collections::BTreeSet<String> = req.resource_names.iter().filter(|n| *n != "*").cloned().collect();
        let added = !names.is_subset(&st.names);
        st.names = names;
        // Envoy asking for a name it did not watch before gets an answer, even when the
        // content is unchanged: it may be waiting on it to warm a cluster.
        if first || (added && !kind.is_wildcard()) {
            vec![self.respond(kind, snapshot, snapshot.of(kind).clone())]
        } else {
            vec![]
        }
    }

    /// Handles a new snapshot: sends what changed, clusters first, then endpoints
    /// (always after a cluster change, so Envoy can finish warming the cluster),
    /// listeners, routes, and last the cluster set without removed clusters.
    pub fn on_snapshot(&mut self, snapshot: &Snapshot) -> Vec<DiscoveryResponse> {
        let mut out = Vec::new();
        let mut stale = BTreeMap::new();
        let mut clusters_sent = false;
        if self.types.get(Kind::Cluster).initialized {
            let now = snapshot.of(Kind::Cluster);
            stale = self.last_clusters.iter().filter(|(n, _)| !now.contains_key(*n)).map(|(n, r)| (n.clone(), r.clone())).collect();
            let st = self.types.get(Kind::Cluster);
            let added_or_changed = now.iter().any(|(n, r)| st.sent.get(n) != Some(&r.version));
            if added_or_changed {
                let mut first_phase = now.clone();
                first_phase.extend(stale.clone());
                out.push(self.respond(Kind::Cluster, snapshot, first_phase));
                clusters_sent = true;
            }
        }
        for kind in [Kind::Endpoint, Kind::Listener, Kind::Route] {
            let st = self.types.get(kind);
            if !st.initialized {
                continue;
            }
            let content = snapshot.of(kind);
            let same = st.sent.len() == content.len() && content.iter().all(|(n, r)| st.sent.get(n) == Some(&r.version));
            if same && !(kind == Kind::Endpoint && clusters_sent) {
                st.unchanged_at(snapshot.generation);
            } else {
                out.push(self.respond(kind, snapshot, content.clone()));
            }
        }
        if !stale.is_empty() {
            out.push(self.respond(Kind::Cluster, snapshot, snapshot.of(Kind::Cluster).clone()));
        } else if !clusters_sent {
            self.types.get(Kind::Cluster).unchanged_at(snapshot.generation);
        }
        out
    }

    /// The stream's bookkeeping for the admin API and sync waiters.
    pub fn status(&self, snapshot: &Snapshot) -> StreamStatus {
        self.types.status("sotw", snapshot)
    }

    fn respond(&mut self, kind: Kind, snapshot: &Snapshot, content: BTreeMap<String, Resource>) -> DiscoveryResponse {
        let version = content_version(content.iter());
        let nonce = self.types.nonce();
        let st = self.types.get(kind);
        st.sent = content.iter().map(|(n, r)| (n.clone(), r.version.clone())).collect();
        st.record_sent(nonce.clone(), snapshot.generation, version.clone());
        let resources = content.values().map(|r| (*r.body).clone()).collect();
        if kind == Kind::Cluster {
            self.last_clusters = content;
        }
        DiscoveryResponse { version_info: version, resources, type_url: kind.type_url().to_string(), nonce, ..Default::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ads::test_support::snapshot;
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::google::rpc::Status;

    fn req(kind: Kind, names: &[&str], nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: kind.type_url().into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn nack(kind: Kind, nonce: &str, msg: &str) -> DiscoveryRequest {
        DiscoveryRequest { error_detail: Some(Status { code: 3, message: msg.into(), details: vec![] }), ..req(kind, &["fn-a"], nonce) }
    }

    /// Connects a stream the way Envoy does and ACKs everything; returns it synced.
    fn connected(snap: &Snapshot) -> SotwStream {
        let mut s = SotwStream::new();
        let mut first = req(Kind::Cluster, &[], "");
        first.node = Some(Node { id: "envoy-1".into(), ..Default::default() });
        let r = s.on_request(&first, snap);
        assert_eq!(r.len(), 1);
        s.on_request(&req(Kind::Cluster, &[], &r[0].nonce), snap);
        let clusters: Vec<&str> = snap.of(Kind::Cluster).keys().map(|s| s.as_str()).collect();
        let r = s.on_request(&req(Kind::Endpoint, &clusters, ""), snap);
        s.on_request(&req(Kind::Endpoint, &clusters, &r[0].nonce), snap);
        let r = s.on_request(&req(Kind::Listener, &[], ""), snap);
        s.on_request(&req(Kind::Listener, &[], &r[0].nonce), snap);
        let r = s.on_request(&req(Kind::Route, &["roost_routes"], ""), snap);
        s.on_request(&req(Kind::Route, &["roost_routes"], &r[0].nonce), snap);
        s
    }

    fn ack_all(s: &mut SotwStream, responses: &[DiscoveryResponse], snap: &Snapshot) {
        let clusters: Vec<&str> = snap.of(Kind::Cluster).keys().map(|s| s.as_str()).collect();
        for r in responses {
            let kind = Kind::from_type_url(&r.type_url).unwrap();
            let names: Vec<&str> = match kind {
                Kind::Endpoint => clusters.clone(),
                Kind::Route => vec!["roost_routes"],
                _ => vec![],
            };
            s.on_request(&req(kind, &names, &r.nonce), snap);
        }
    }

    fn kinds_of(rs: &[DiscoveryResponse]) -> Vec<Kind> {
        rs.iter().map(|r| Kind::from_type_url(&r.type_url).unwrap()).collect()
    }

    #[test]
    fn first_request_gets_everything_and_ack_syncs() {
        let snap = snapshot(1, &[("hello", &["127.0.0.1:5000"])]);
        let s = connected(&snap);
        let st = s.status(&snap);
        assert_eq!(st.node_id, "envoy-1");
        assert_eq!(st.synced_generation, 1);
        assert!(st.nack.is_none());
    }

    #[test]
    fn wildcard_clusters_get_all_and_new_ones_are_pushed() {
        let snap = snapshot(1, &[("a", &["127.0.0.1:9"])]);
        let mut s = SotwStream::new();
        let r = s.on_request(&req(Kind::Cluster, &[], ""), &snap);
        assert_eq!(r[0].resources.len(), 1);
        let snap2 = snapshot(2, &[("a", &["127.0.0.1:9"]), ("b", &["127.0.0.1:9"])]);
        s.on_request(&req(Kind::Cluster, &[], &r[0].nonce), &snap2);
        let pushed = s.on_snapshot(&snap2);
        assert_eq!(pushed[0].type_url, Kind::Cluster.type_url());
        assert_eq!(pushed[0].resources.len(), 2);
    }

    #[test]
    fn endpoint_change_sends_only_endpoints_and_waits_for_ack() {
        let snap1 = snapshot(1, &[("hello", &["127.0.0.1:5000"])]);
        let mut s = connected(&snap1);
        let snap2 = snapshot(2, &[("hello", &["127.0.0.1:5000", "127.0.0.1:5001"])]);
        let pushed = s.on_snapshot(&snap2);
        let kinds: Vec<_> = pushed.iter().map(|r| Kind::from_type_url(&r.type_url).unwrap()).collect();
        assert_eq!(kinds, [Kind::Endpoint]);
        assert_eq!(s.status(&snap2).synced_generation, 1, "not synced before the ACK");
        ack_all(&mut s, &pushed, &snap2);
        assert_eq!(s.status(&snap2).synced_generation, 2);
    }

    #[test]
    fn new_function_pushes_in_make_before_break_order() {
        let snap1 = snapshot(1, &[("a", &["127.0.0.1:9"])]);
        let mut s = connected(&snap1);
        let snap2 = snapshot(2, &[("a", &["127.0.0.1:9"]), ("b", &["127.0.0.1:1"])]);
        let pushed = s.on_snapshot(&snap2);
        let kinds: Vec<_> = pushed.iter().map(|r| Kind::from_type_url(&r.type_url).unwrap()).collect();
        assert_eq!(kinds, [Kind::Cluster, Kind::Endpoint, Kind::Route]);
        // Envoy has not subscribed to fn-b's endpoints yet: not synced even after ACKs
        // that still name only fn-a.
        for r in &pushed {
            let kind = Kind::from_type_url(&r.type_url).unwrap();
            let names: &[&str] = match kind {
                Kind::Endpoint => &["fn-a"],
                Kind::Route => &["roost_routes"],
                _ => &[],
            };
            s.on_request(&req(kind, names, &r.nonce), &snap2);
        }
        assert_eq!(s.status(&snap2).synced_generation, 1);
        let eds_nonce = pushed[1].nonce.clone();
        let again = s.on_request(&req(Kind::Endpoint, &["fn-a", "fn-b"], &eds_nonce), &snap2);
        assert_eq!(kinds_of(&again), [Kind::Endpoint], "a newly watched name is answered");
        assert_eq!(s.status(&snap2).synced_generation, 1);
        s.on_request(&req(Kind::Endpoint, &["fn-a", "fn-b"], &again[0].nonce), &snap2);
        assert_eq!(s.status(&snap2).synced_generation, 2);
    }

    #[test]
    fn removed_cluster_goes_last() {
        let snap1 = snapshot(1, &[("a", &["127.0.0.1:9"]), ("b", &["127.0.0.1:9"])]);
        let mut s = connected(&snap1);
        let snap2 = snapshot(2, &[("a", &["127.0.0.1:9"])]);
        let pushed = s.on_snapshot(&snap2);
        let kinds: Vec<_> = pushed.iter().map(|r| Kind::from_type_url(&r.type_url).unwrap()).collect();
        assert_eq!(kinds, [Kind::Endpoint, Kind::Route, Kind::Cluster]);
        assert_eq!(pushed.last().unwrap().resources.len(), 1);
    }

    #[test]
    fn nack_is_recorded_and_cleared_by_a_later_ack() {
        let snap1 = snapshot(1, &[("a", &["127.0.0.1:9"])]);
        let mut s = connected(&snap1);
        let snap2 = snapshot(2, &[("a", &["127.0.0.1:19"])]);
        let pushed = s.on_snapshot(&snap2);
        s.on_request(&nack(Kind::Endpoint, &pushed[0].nonce, "bad endpoint"), &snap2);
        let st = s.status(&snap2);
        assert_eq!(st.synced_generation, 1);
        let n = st.nack.expect("nack recorded");
        assert_eq!((n.kind, n.generation, n.error.as_str()), ("eds", 2, "bad endpoint"));
        // Nothing is re-sent for the NACK, and an unrelated generation does not clear it.
        let snap3 = snap2.with_generation(3);
        assert!(s.on_snapshot(&snap3).is_empty());
        assert!(s.status(&snap3).nack.is_some());
        let snap4 = snapshot(4, &[("a", &["127.0.0.1:10"])]);
        let pushed = s.on_snapshot(&snap4);
        ack_all(&mut s, &pushed, &snap4);
        let st = s.status(&snap4);
        assert!(st.nack.is_none());
        assert_eq!(st.synced_generation, 4, "{st:?}");
    }

    #[test]
    fn stale_nonce_is_ignored() {
        let snap1 = snapshot(1, &[("a", &["127.0.0.1:9"])]);
        let mut s = connected(&snap1);
        let snap2 = snapshot(2, &[("a", &["127.0.0.1:1"])]);
        let first = s.on_snapshot(&snap2);
        let snap3 = snapshot(3, &[("a", &["127.0.0.1:2"])]);
        let second = s.on_snapshot(&snap3);
        // An unknown nonce changes nothing.
        assert!(s.on_request(&req(Kind::Endpoint, &["fn-a"], "999"), &snap3).is_empty());
        assert_eq!(s.status(&snap3).synced_generation, 1);
        // ACK of the older response: still waiting for the newer one.
        s.on_request(&req(Kind::Endpoint, &["fn-a"], &first[0].nonce), &snap3);
        assert_eq!(s.status(&snap3).synced_generation, 2);
        s.on_request(&req(Kind::Endpoint, &["fn-a"], &second[0].nonce), &snap3);
        assert_eq!(s.status(&snap3).synced_generation, 3);
    }

    #[test]
    fn unchanged_snapshot_needs_no_push_and_counts_as_synced() {
        let snap1 = snapshot(1, &[("a", &["127.0.0.1:9"])]);
        let mut s = connected(&snap1);
        let snap2 = snap1.with_generation(2);
        assert!(s.on_snapshot(&snap2).is_empty());
        assert_eq!(s.status(&snap2).synced_generation, 2);
    }

    #[test]
    fn with_no_function_awake_envoy_never_asks_for_endpoints_and_is_synced_without() {
        // Only sleeping functions: no EDS cluster, so Envoy sends no EDS request at all.
        let snap = snapshot(1, &[("asleep", &[])]);
        let mut s = SotwStream::new();
        for (kind, names) in [(Kind::Cluster, &[][..]), (Kind::Listener, &[]), (Kind::Route, &["roost_routes"])] {
            let r = s.on_request(&req(kind, names, ""), &snap);
            s.on_request(&req(kind, names, &r[0].nonce), &snap);
        }
        assert_eq!(s.status(&snap).synced_generation, 1);
        // The first replica brings a cluster: now Envoy must ask for its endpoints.
        let snap2 = snapshot(2, &[("asleep", &["127.0.0.1:1"])]);
        let pushed = s.on_snapshot(&snap2);
        assert_eq!(kinds_of(&pushed), [Kind::Cluster, Kind::Route]);
        for r in &pushed {
            let kind = Kind::from_type_url(&r.type_url).unwrap();
            let names: &[&str] = if kind == Kind::Route { &["roost_routes"] } else { &[] };
            s.on_request(&req(kind, names, &r.nonce), &snap2);
        }
        assert_eq!(s.status(&snap2).synced_generation, 0, "fn-asleep's endpoints not asked for yet");
        let r = s.on_request(&req(Kind::Endpoint, &["fn-asleep"], ""), &snap2);
        s.on_request(&req(Kind::Endpoint, &["fn-asleep"], &r[0].nonce), &snap2);
        assert_eq!(s.status(&snap2).synced_generation, 2);
    }

    #[test]
    fn unknown_type_is_ignored() {
        let snap = snapshot(1, &[]);
        let mut s = SotwStream::new();
        let r = DiscoveryRequest { type_url: "type.googleapis.com/envoy.Secret".into(), ..Default::default() };
        assert!(s.on_request(&r, &snap).is_empty());
        assert_eq!(s.status(&snap).synced_generation, 0, "never synced before Envoy asks");
    }
}
