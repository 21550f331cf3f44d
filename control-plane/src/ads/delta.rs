//! Incremental (delta) ADS: each response carries only the resources that changed, and
//! the names of the ones removed, so a one-endpoint change costs the same bytes whether
//! Roost serves one function or a thousand.

use super::{StreamStatus, Types};
use crate::resources::{Kind, Snapshot};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as XdsResource};
use std::sync::Arc;

/// One delta ADS stream.
#[derive(Debug, Clone)]
pub struct DeltaStream {
    types: Types,
}

impl Default for DeltaStream {
    fn default() -> Self {
        Self::new()
    }
}

/// What to send for one type.
#[derive(Debug, Default)]
struct Diff {
    upserts: Vec<String>,
    removals: Vec<String>,
}

impl DeltaStream {
    /// A new stream that has heard nothing yet.
    pub fn new() -> Self {
        DeltaStream { types: Types::new() }
    }

    /// Handles one request: applies its subscribe and unsubscribe lists, its ACK or
    /// NACK (a stale nonce only skips the bookkeeping; the subscription change still
    /// counts), and answers with what Envoy is now missing. The first request of a type
    /// is always answered, even with nothing, so Envoy finishes its initial fetch.
    pub fn on_request(&mut self, req: &DeltaDiscoveryRequest, snapshot: &Snapshot) -> Vec<DeltaDiscoveryResponse> {
        let Some((kind, first)) = self.types.begin(req.node.as_ref(), &req.type_url) else {
            return vec![];
        };
        let st = self.types.get(kind);
        if first {
            st.wildcard = kind.is_wildcard() && req.resource_names_subscribe.is_empty();
            st.sent = req.initial_resource_versions.iter().map(|(n, v)| (n.clone(), Arc::from(v.as_str()))).collect();
        } else if !req.response_nonce.is_empty() && !st.is_stale(&req.response_nonce) {
            let error = req.error_detail.as_ref().map(|s| s.message.clone());
            st.answer(&req.response_nonce, error);
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                st.wildcard = true;
            } else {
                st.names.insert(name.clone());
                if !first {
                    // A (re)subscription wants the resource sent even if Envoy had it:
                    // Envoy re-subscribes an assignment while it warms a changed cluster.
                    st.sent.remove(name);
                }
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                st.names.remove(name);
                st.sent.remove(name);
            }
        }
        let diff = self.diff(kind, snapshot);
        if first || !diff.upserts.is_empty() || !diff.removals.is_empty() {
            vec![self.respond(kind, snapshot, diff)]
        } else {
            vec![]
        }
    }

    /// Handles a new snapshot: changed clusters, then endpoints (a changed cluster's
    /// assignment is always re-sent), listeners, routes, and removed clusters last.
    pub fn on_snapshot(&mut self, snapshot: &Snapshot) -> Vec<DeltaDiscoveryResponse> {
        let mut out = Vec::new();
        let mut cluster_removals = Vec::new();
        for kind in Kind::ALL {
            if !self.types.get(kind).initialized {
                continue;
            }
            let mut diff = self.diff(kind, snapshot);
            if kind == Kind::Cluster {
                cluster_removals = std::mem::take(&mut diff.removals);
                let eds = self.types.get(Kind::Endpoint);
                for name in &diff.upserts {
                    eds.sent.remove(name);
                }
                if diff.upserts.is_empty() {
                    continue;
                }
            }
            if diff.upserts.is_empty() && diff.removals.is_empty() {
                self.types.get(kind).unchanged_at(snapshot.generation);
            } else {
                out.push(self.respond(kind, snapshot, diff));
            }
        }
        let cds = self.types.get(Kind::Cluster);
        if !cluster_removals.is_empty() {
            let diff = Diff { upserts: vec![], removals: cluster_removals };
            out.push(self.respond(Kind::Cluster, snapshot, diff));
        } else if cds.initialized && !out.iter().any(|r| r.type_url == Kind::Cluster.type_url()) {
            cds.unchanged_at(snapshot.generation);
        }
        out
    }

    /// The stream's bookkeeping for the admin API and sync waiters.
    pub fn status(&self, snapshot: &Snapshot) -> StreamStatus {
        self.types.status("delta", snapshot)
    }

    /// What Envoy lacks of `kind`: resources it subscribes to at another version than it
    /// has, and (for wildcard types) resources it has that no longer exist. Assignments
    /// and route tables that no longer exist are forgotten without a removal: their
    /// cluster's or listener's removal makes Envoy drop them.
    fn diff(&mut self, kind: Kind, snapshot: &Snapshot) -> Diff {
        let st = self.types.get(kind);
        let now = snapshot.of(kind);
        let upserts =
            now.iter().filter(|(n, r)| st.subscribed_to(n) && st.sent.get(*n) != Some(&r.version)).map(|(n, _)| n.clone()).collect();
        let gone: Vec<String> = st.sent.keys().filter(|n| !now.contains_key(*n)).cloned().collect();
        let removals = if kind.is_wildcard() {
            gone
        } else {
            for n in &gone {
                st.sent.remove(n);
            }
            vec![]
        };
        Diff { upserts, removals }
    }

    fn respond(&mut self, kind: Kind, snapshot: &Snapshot, diff: Diff) -> DeltaDiscoveryResponse {
        let nonce = self.types.nonce();
        let st = self.types.get(kind);
        let now = snapshot.of(kind);
        let mut resources = Vec::with_capacity(diff.upserts.len());
        for name in diff.upserts {
            let r = &now[&name];
            st.sent.insert(name.clone(), r.version.clone());
            resources.push(XdsResource { name, version: r.version.to_string(), resource: Some((*r.body).clone()), ..Default::default() });
        }
        for name in &diff.removals {
            st.sent.remove(name);
        }
        let version = snapshot.generation.to_string();
        st.record_sent(nonce.clone(), snapshot.generation, version.clone());
        DeltaDiscoveryResponse {
            system_version_info: version,
            resources,
            type_url: kind.type_url().to_string(),
            removed_resources: diff.removals,
            nonce,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ads::test_support::snapshot;
    use envoy_types::pb::google::rpc::Status;

    fn req(kind: Kind, subscribe: &[&str], unsubscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: kind.type_url().into(),
            resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn ack(kind: Kind, nonce: &str) -> DeltaDiscoveryRequest {
        req(kind, &[], &[], nonce)
    }

    fn kinds(rs: &[DeltaDiscoveryResponse]) -> Vec<Kind> {
        rs.iter().map(|r| Kind::from_type_url(&r.type_url).unwrap()).collect()
    }

    fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
        r.resources.iter().map(|r| r.name.as_str()).collect()
    }

    fn connected(snap: &Snapshot) -> DeltaStream {
        let mut s = DeltaStream::new();
        let r = s.on_request(&req(Kind::Cluster, &[], &[], ""), snap);
        s.on_request(&ack(Kind::Cluster, &r[0].nonce), snap);
        let clusters: Vec<&str> = snap.of(Kind::Cluster).keys().map(|s| s.as_str()).collect();
        let r = s.on_request(&req(Kind::Endpoint, &clusters, &[], ""), snap);
        s.on_request(&ack(Kind::Endpoint, &r[0].nonce), snap);
        let r = s.on_request(&req(Kind::Listener, &[], &[], ""), snap);
        s.on_request(&ack(Kind::Listener, &r[0].nonce), snap);
        let r = s.on_request(&req(Kind::Route, &["roost_routes"], &[], ""), snap);
        s.on_request(&ack(Kind::Route, &r[0].nonce), snap);
        assert_eq!(s.status(snap).synced_generation, snap.generation);
        s
    }

    #[test]
    fn first_request_is_answered_even_when_empty() {
        let snap = snapshot(1, &[]);
        let mut s = DeltaStream::new();
        let r = s.on_request(&req(Kind::Cluster, &[], &[], ""), &snap);
        assert_eq!(r.len(), 1);
        assert!(r[0].resources.is_empty());
    }

    #[test]
    fn endpoint_change_sends_one_resource() {
        let fns: Vec<(String, Vec<&str>)> = (0..50).map(|i| (format!("f{i}"), vec!["127.0.0.1:9"])).collect();
        let refs: Vec<(&str, &[&str])> = fns.iter().map(|(n, e)| (n.as_str(), e.as_slice())).collect();
        let snap1 = snapshot(1, &refs);
        let mut s = connected(&snap1);
        let mut refs2 = refs.clone();
        refs2[7] = ("f7", &["127.0.0.1:5000"]);
        let snap2 = snapshot(2, &refs2);
        let pushed = s.on_snapshot(&snap2);
        assert_eq!(kinds(&pushed), [Kind::Endpoint]);
        assert_eq!(names(&pushed[0]), ["fn-f7"]);
        assert_eq!(s.status(&snap2).synced_generation, 1);
        s.on_request(&ack(Kind::Endpoint, &pushed[0].nonce), &snap2);
        assert_eq!(s.status(&snap2).synced_generation, 2);
    }

    #[test]
    fn reconnect_with_equal_versions_sends_nothing_new() {
        let snap = snapshot(1, &[("a", &["127.0.0.1:1"])]);
        let mut s = DeltaStream::new();
        let mut first = req(Kind::Cluster, &[], &[], "");
        first.initial_resource_versions = snap.of(Kind::Cluster).iter().map(|(n, r)| (n.clone(), r.version.to_string())).collect();
        let r = s.on_request(&first, &snap);
        assert_eq!(r.len(), 1);
        assert!(r[0].resources.is_empty() && r[0].removed_resources.is_empty());
    }

    #[test]
    fn reconnect_removes_what_no_longer_exists() {
        let snap = snapshot(1, &[]);
        let mut s = DeltaStream::new();
        let mut first = req(Kind::Cluster, &[], &[], "");
        first.initial_resource_versions.insert("fn-gone".into(), "v1".into());
        let r = s.on_request(&first, &snap);
        assert_eq!(r[0].removed_resources, ["fn-gone"]);
    }

    #[test]
    fn new_function_pushes_cluster_then_assignment_on_subscribe() {
        let snap1 = snapshot(1, &[("a", &["127.0.0.1:9"])]);
        let mut s = connected(&snap1);
        let snap2 = snapshot(2, &[("a", &["127.0.0.1:9"]), ("b", &["127.0.0.1:1"])]);
        let pushed = s.on_snapshot(&snap2);
        assert_eq!(kinds(&pushed), [Kind::Cluster, Kind::Route]);
        assert_eq!(names(&pushed[0]), ["fn-b"]);
        for r in &pushed {
            s.on_request(&ack(Kind::from_type_url(&r.type_url).unwrap(), &r.nonce), &snap2);
        }
        assert_eq!(s.status(&snap2).synced_generation, 1, "fn-b's endpoints not subscribed yet");
        // A name asked for before it exists is sent as soon as it does: here it exists.
        let r = s.on_request(&req(Kind::Endpoint, &["fn-b"], &[], ""), &snap2);
        assert_eq!(names(&r[0]), ["fn-b"]);
        s.on_request(&ack(Kind::Endpoint, &r[0].nonce), &snap2);
        assert_eq!(s.status(&snap2).synced_generation, 2);
    }

    #[test]
    fn name_subscribed_before_it_exists_is_pushed_when_it_appears() {
        let snap1 = snapshot(1, &[]);
        let mut s = connected(&snap1);
        assert!(s.on_request(&req(Kind::Endpoint, &["fn-late"], &[], ""), &snap1).is_empty());
        let snap2 = snapshot(2, &[("late", &["127.0.0.1:1"])]);
        let pushed = s.on_snapshot(&snap2);
        assert_eq!(kinds(&pushed), [Kind::Cluster, Kind::Endpoint, Kind::Route]);
        assert_eq!(names(&pushed[1]), ["fn-late"]);
    }

    #[test]
    fn changed_cluster_resends_its_assignment() {
        let snap1 = snapshot(1, &[("a", &["127.0.0.1:1"])]);
        let mut s = connected(&snap1);
        let mut m = crate::model::Model::default();
        m.apply_all(&[
            crate::model::Change::PutFunction { function: "a".into(), concurrency: Some(7), timeout_ms: None, auth: None },
            crate::model::Change::AddEndpoint { function: "a".into(), address: "127.0.0.1:1".into() },
        ])
        .unwrap();
        let snap2 = crate::resources::build(&m, &Default::default(), 2);
        let pushed = s.on_snapshot(&snap2);
        assert_eq!(kinds(&pushed), [Kind::Cluster, Kind::Endpoint]);
        assert_eq!(names(&pushed[1]), ["fn-a"], "same assignment, re-sent for warming");
    }

    #[test]
    fn removed_function_drops_route_before_cluster() {
        let snap1 = snapshot(1, &[("a", &["127.0.0.1:9"]), ("b", &["127.0.0.1:9"])]);
        let mut s = connected(&snap1);
        let snap2 = snapshot(2, &[("a", &["127.0.0.1:9"])]);
        let pushed = s.on_snapshot(&snap2);
        assert_eq!(kinds(&pushed), [Kind::Route, Kind::Cluster]);
        assert_eq!(pushed[1].removed_resources, ["fn-b"]);
    }

    #[test]
    fn unsubscribe_stops_updates() {
        let snap1 = snapshot(1, &[("a", &["127.0.0.1:1"])]);
        let mut s = connected(&snap1);
        assert!(s.on_request(&req(Kind::Endpoint, &[], &["fn-a"], ""), &snap1).is_empty());
        let snap2 = snapshot(2, &[("a", &["127.0.0.1:2"])]);
        assert!(s.on_snapshot(&snap2).is_empty());
    }

    #[test]
    fn nack_keeps_last_good_and_is_reported() {
        let snap1 = snapshot(1, &[("a", &["127.0.0.1:9"])]);
        let mut s = connected(&snap1);
        let snap2 = snapshot(2, &[("a", &["127.0.0.1:1"])]);
        let pushed = s.on_snapshot(&snap2);
        let mut n = ack(Kind::Endpoint, &pushed[0].nonce);
        n.error_detail = Some(Status { code: 3, message: "rejected".into(), details: vec![] });
        assert!(s.on_request(&n, &snap2).is_empty(), "a NACK is not answered with the same thing");
        let st = s.status(&snap2);
        assert_eq!(st.synced_generation, 1);
        assert_eq!(st.nack.unwrap().error, "rejected");
    }

    #[test]
    fn stale_nonce_does_not_ack_but_subscription_counts() {
        let snap1 = snapshot(1, &[("a", &["127.0.0.1:9"])]);
        let mut s = connected(&snap1);
        let snap2 = snapshot(2, &[("a", &["127.0.0.1:1"])]);
        let pushed = s.on_snapshot(&snap2);
        let r = s.on_request(&req(Kind::Endpoint, &["fn-x"], &[], "stale"), &snap2);
        assert!(r.is_empty());
        assert_eq!(s.status(&snap2).synced_generation, 1);
        s.on_request(&ack(Kind::Endpoint, &pushed[0].nonce), &snap2);
        assert_eq!(s.status(&snap2).synced_generation, 2);
        let snap3 = snapshot(3, &[("a", &["127.0.0.1:1"]), ("x", &["127.0.0.1:9"])]);
        let pushed = s.on_snapshot(&snap3);
        assert!(pushed.iter().any(|r| names(r) == ["fn-x"] && r.type_url == Kind::Endpoint.type_url()));
    }
}
