//! What a starting orchestrator does with what an earlier one left: which running
//! replicas it adopts, and which control-plane functions and endpoints it removes; and
//! what it hands over to a control plane that started without a saved model. Pure: the
//! supervisor lists, probes and registers, then asks here.

use roost_common::auth::ApiToken;
use roost_common::spec::{Auth, FunctionSpec};
use roost_common::wire::admin::{Change, FunctionSettings};
use roost_common::wire::status::{FunctionStatus, ReplicaPhase};
use std::collections::HashSet;
use std::net::SocketAddr;

/// A function's routing settings: with `auth: token`, calls must carry `call_token`.
pub fn settings(spec: &FunctionSpec, call_token: &ApiToken) -> FunctionSettings {
    FunctionSettings {
        concurrency: Some(spec.scaling.target_concurrency),
        timeout_ms: Some(spec.limits.timeout.as_millis() as u64),
        auth: (spec.auth == Auth::Token).then(|| call_token.expose().to_string()),
    }
}

/// A function's [`settings`], as the change that declares it to the control plane.
pub fn declaration(spec: &FunctionSpec, call_token: &ApiToken) -> Change {
    let FunctionSettings { concurrency, timeout_ms, auth } = settings(spec, call_token);
    Change::PutFunction { function: spec.name.clone(), concurrency, timeout_ms, auth }
}

/// A function's ready replicas, as the changes that route to them: with each function's
/// [`declaration`], what the orchestrator hands over to a control plane that has no
/// confirmed model (draining replicas are leaving and are not handed over).
pub fn ready_endpoints(status: &FunctionStatus) -> impl Iterator<Item = Change> + '_ {
    let ready = status.replicas.iter().filter(|r| r.phase == ReplicaPhase::Ready);
    ready.map(|r| Change::AddEndpoint { function: status.name.clone(), address: r.address.clone() })
}

/// What became of a replica found running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its function is defined, it answered its readiness probe and Envoy took its
    /// endpoint: it serves again.
    Adopt,
    /// Anything else: stopped as a stray (a restart starts a fresh one when needed).
    Stop,
}

/// Whether a replica found running is adopted: only a defined function's replica that is
/// healthy and registered.
pub fn verdict(defined: bool, healthy: bool, registered: bool) -> Verdict {
    if defined && healthy && registered {
        Verdict::Adopt
    } else {
        Verdict::Stop
    }
}

/// Control-plane state no replica backs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// A function the definitions no longer have.
    Function(String),
    /// An endpoint of a defined function that no adopted replica backs.
    Endpoint(String, SocketAddr),
}

/// What to remove from the control plane, given what it routes (`routed`: functions and
/// their endpoints), which functions are defined, and the adopted replicas' endpoints.
pub fn stale(routed: &[(String, Vec<SocketAddr>)], defined: impl Fn(&str) -> bool, adopted: &HashSet<(String, SocketAddr)>) -> Vec<Stale> {
    let mut out = Vec::new();
    for (name, endpoints) in routed {
        if !defined(name) {
            out.push(Stale::Function(name.clone()));
            continue;
        }
        for addr in endpoints {
            if !adopted.contains(&(name.clone(), *addr)) {
                out.push(Stale::Endpoint(name.clone(), *addr));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn only_a_defined_healthy_registered_replica_is_adopted() {
        assert_eq!(verdict(true, true, true), Verdict::Adopt);
        assert_eq!(verdict(false, true, true), Verdict::Stop, "its function left the definitions");
        assert_eq!(verdict(true, false, false), Verdict::Stop, "it does not answer its probe");
        assert_eq!(verdict(true, true, false), Verdict::Stop, "Envoy did not take it");
    }

    #[test]
    fn functions_gone_and_endpoints_nobody_backs_are_stale() {
        let routed = vec![("gone".to_string(), vec![addr(1)]), ("f".to_string(), vec![addr(2), addr(3)])];
        let adopted: HashSet<_> = [("f".to_string(), addr(2))].into();
        let got = stale(&routed, |n| n == "f", &adopted);
        assert_eq!(got, [Stale::Function("gone".into()), Stale::Endpoint("f".into(), addr(3))]);
        assert!(stale(&[("f".to_string(), vec![addr(2)])], |_| true, &adopted).is_empty());
    }

    #[test]
    fn a_handover_declares_a_function_and_only_its_ready_replicas() {
        use roost_common::wire::status::{FunctionState, ReplicaStatus};
        let yaml = "usable-functions:\n  f:\n    version: 1\n    runtime: {kind: image, image: x}\n    scaling: {target_concurrency: 3}\n    limits: {timeout: 7s}\n  g:\n    version: 1\n    runtime: {kind: image, image: x}\n    auth: token\n";
        let token = ApiToken::new("the-api-token-0123456789").unwrap();
        let defs = roost_common::spec::parse(yaml).unwrap();
        let replica = |id: &str, address: &str, phase| ReplicaStatus {
            id: id.into(),
            address: address.into(),
            phase,
            version: "1".into(),
            outdated: false,
        };
        let mut f = FunctionStatus::empty("f", FunctionState::Ready);
        f.replicas = vec![replica("f-1", "10.0.0.1:8000", ReplicaPhase::Ready), replica("f-2", "10.0.0.2:8000", ReplicaPhase::Draining)];
        let put = |name: &str, c, t, auth: Option<&str>| Change::PutFunction {
            function: name.into(),
            concurrency: Some(c),
            timeout_ms: Some(t),
            auth: auth.map(String::from),
        };
        assert_eq!(declaration(&defs["f"], &token), put("f", 3, 7000, None), "public: no token");
        let g = &defs["g"];
        let want = put("g", g.scaling.target_concurrency, g.limits.timeout.as_millis() as u64, Some("the-api-token-0123456789"));
        assert_eq!(declaration(g, &token), want, "auth: token: calls carry the API token");
        let got: Vec<Change> = ready_endpoints(&f).collect();
        assert_eq!(got, [Change::AddEndpoint { function: "f".into(), address: "10.0.0.1:8000".into() }]);
    }
}
