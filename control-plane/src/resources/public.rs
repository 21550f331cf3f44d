//! Envoy as the public entry: one listener that sends a function's requests straight to
//! its replicas while it has one serving, and everything else to the gate (asleep,
//! waking, scaling up, draining to zero, an undeclared name, a body the gate must judge).
//!
//! The switch is the route: a function with a serving (not draining) endpoint that is not
//! gated (the orchestrator gates a function while it scales up: the gate then counts every
//! request against the ready replicas' capacity and holds the rest, so a burst waits for
//! the replicas starting for it instead of queueing in Envoy behind the first one) is
//! routed to its aggregate cluster `direct.<name>`, else to the gate. The aggregate cluster lists the
//! function's cluster first and the gate second, so a request that the route sent "direct"
//! in the moment a function lost its last serving replica still reaches the gate: Envoy
//! applies endpoints before routes, and on the way down the endpoint is draining (no
//! healthy host: the aggregate falls over to the gate) before the route says "gate". A
//! request that never reached a replica (refused, reset before it was sent) is retried on
//! the next priority, the gate, which holds it while the function wakes again.

use super::{
    ads, hcm_listener, millis, never_limiting, replica_action, router_filter, socket_address, u32v, BuildSettings, Kind, Snapshot,
};
use crate::model::{Function, Model};
use envoy_types::pb::envoy::config::accesslog::v3::{
    access_log_filter::FilterSpecifier, comparison_filter::Op, AccessLogFilter, ComparisonFilter, StatusCodeFilter,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, CustomClusterType, DiscoveryType, DnsLookupFamily, LbPolicy},
    CircuitBreakers, Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    data_source, header_value_option::HeaderAppendAction, DataSource, HeaderValue, HeaderValueOption, RuntimeUInt32,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, retry_policy::RetryPriority, route::Action, route_action::ClusterSpecifier,
    route_match::PathSpecifier, HeaderMatcher, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig as AggregateConfig;
use envoy_types::pb::envoy::extensions::filters::http::buffer::v3::{buffer_per_route, Buffer, BufferPerRoute};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier, ServerHeaderTransformation},
    http_filter, HttpConnectionManager, HttpFilter, LocalReplyConfig, Rds, ResponseMapper,
};
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, RegexMatcher, StringMatcher};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use roost_common::naming::cluster_name;
use std::net::{IpAddr, SocketAddr};

/// Name of the public listener.
pub const PUBLIC_LISTENER_NAME: &str = "roost_public";
/// Name of the public listener's route table.
pub const PUBLIC_ROUTE_CONFIG_NAME: &str = "roost_public_routes";
/// Name of the gate's cluster.
pub const GATE_CLUSTER: &str = "roost_gate";
/// Name of the management API's cluster (the orchestrator's API).
pub const SYSTEM_CLUSTER: &str = "roost_system";
/// Name of the async worker's cluster (asynchronous calls and their status).
pub const ASYNC_CLUSTER: &str = "roost_async";
/// How long the async worker has to answer: it stores a call and answers (202), or reads
/// a call's status, within milliseconds.
pub const ASYNC_TIMEOUT_MS: u64 = 30_000;
/// The X-Request-Id the gate keeps as it is (nginx.conf's `$roost_request_id`); a request
/// with any other goes through the gate, which replaces it.
pub const REQUEST_ID_PATTERN: &str = r"[\x21-\x7e]{1,200}";

/// The aggregate cluster of a function's direct route: its replicas, then the gate. Not
/// `fn-` prefixed: the statsd-listener reads only the function clusters.
pub fn direct_cluster(function: &str) -> String {
    format!("direct.{function}")
}

/// The aggregate cluster of a gated function's route: the gate, then its replicas (for
/// a request the gate could not take: restarting, say).
pub fn gated_cluster(function: &str) -> String {
    format!("gated.{function}")
}

/// Envoy as the public entry, in front of the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicEntry {
    /// Where the public listener binds inside Envoy.
    pub bind: SocketAddr,
    /// The gate's host (an IP address, or a name Envoy resolves) and port.
    pub gate_host: String,
    /// The gate's port.
    pub gate_port: u16,
    /// The gate's body limit: Envoy reads a body whole before it sends it on (as the gate
    /// does) and answers 413 to one over the limit, in JSON.
    pub max_body: u64,
    /// The orchestrator's API, host and port, which the management API's paths
    /// (`/system/...`) go to; none: those paths are the gate's (a 404).
    pub system: Option<(String, u16)>,
    /// The async worker, host and port, which asynchronous calls (`/async/...`,
    /// `/async-function/...`, a call's status at `/async/calls/<id>`) go to; none: those
    /// paths are the gate's (a 404).
    pub async_worker: Option<(String, u16)>,
}

/// Whether a function has a replica that takes new requests.
pub fn serving(f: &Function) -> bool {
    f.endpoints.values().any(|e| !e.draining)
}

/// Where the public entry sends a function's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicRoute {
    /// To the gate, by the catch-all route: no serving replica (asleep, waking, draining
    /// to zero), or gated with a call token (which must reach the gate's Envoy listener).
    Gate,
    /// Straight to its replicas, then the gate: it has a serving replica.
    Direct,
    /// To the gate, then its replicas: it has a serving replica and is gated (scaling up:
    /// the gate spreads a burst over the replicas as they become ready).
    Gated,
}

/// Where the public entry sends `f`'s requests.
pub fn public_route(f: &Function) -> PublicRoute {
    match (serving(f), f.gated) {
        (false, _) => PublicRoute::Gate,
        (true, false) => PublicRoute::Direct,
        (true, true) if f.auth.is_some() => PublicRoute::Gate,
        (true, true) => PublicRoute::Gated,
    }
}

/// Adds the public entry's resources to `snap`.
pub(super) fn add(snap: &mut Snapshot, model: &Model, entry: &PublicEntry, settings: &BuildSettings) {
    snap.insert(Kind::Cluster, GATE_CLUSTER, pack_any(gate_cluster(entry)));
    if let Some((host, port)) = &entry.system {
        snap.insert(Kind::Cluster, SYSTEM_CLUSTER, pack_any(peer_cluster(SYSTEM_CLUSTER, host, *port)));
    }
    if let Some((host, port)) = &entry.async_worker {
        snap.insert(Kind::Cluster, ASYNC_CLUSTER, pack_any(peer_cluster(ASYNC_CLUSTER, host, *port)));
    }
    snap.insert(Kind::Listener, PUBLIC_LISTENER_NAME, pack_any(listener(entry)));
    put_routes(snap, model, settings);
}

/// Adds one function's aggregate clusters, or removes them when the function is gone or
/// has no replica (as its own cluster, [`super::put_function`], which calls this). Both
/// stay while it is in Envoy, so a switch between direct and gated changes the route
/// alone and never leaves it naming a cluster Envoy has not got.
pub(super) fn put_function(snap: &mut Snapshot, model: &Model, function: &str) {
    let replicas = cluster_name(function);
    let gate = GATE_CLUSTER.to_string();
    for (name, clusters) in [(direct_cluster(function), [replicas.clone(), gate.clone()]), (gated_cluster(function), [gate, replicas])] {
        match model.functions.get(function).is_some_and(super::in_envoy) {
            true => snap.insert(Kind::Cluster, name.clone(), pack_any(aggregate_cluster(name, clusters))),
            false => snap.remove(Kind::Cluster, &name),
        }
    }
}

/// Rebuilds the public route table.
pub fn put_routes(snap: &mut Snapshot, model: &Model, settings: &BuildSettings) {
    snap.insert(Kind::Route, PUBLIC_ROUTE_CONFIG_NAME, pack_any(route_table(model, settings)));
}

// `dns_refresh_rate` is deprecated in favour of the DNS cluster extension; Envoy 1.40
// still reads it, and the plain STRICT_DNS type keeps this cluster readable.
fn gate_cluster(entry: &PublicEntry) -> Cluster {
    peer_cluster(GATE_CLUSTER, &entry.gate_host, entry.gate_port)
}

/// A cluster of one Roost part at `host:port` (an IP address, or a name looked up again
/// every second: a restarted part may come back on another address).
#[allow(deprecated)]
fn peer_cluster(name: &str, host: &str, port: u16) -> Cluster {
    let by_name = host.parse::<IpAddr>().is_err();
    let endpoint = LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint { address: Some(socket_address(host, port)), ..Default::default() })),
        ..Default::default()
    };
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            if by_name { DiscoveryType::StrictDns } else { DiscoveryType::Static } as i32
        )),
        dns_refresh_rate: by_name.then(|| millis(1000)),
        dns_lookup_family: DnsLookupFamily::V4Preferred as i32,
        connect_timeout: Some(millis(1000)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints { lb_endpoints: vec![endpoint], ..Default::default() }],
            ..Default::default()
        }),
        // The gate holds requests by the thousand (ROOST_GATE_MAX_HELD per function).
        circuit_breakers: Some(CircuitBreakers { thresholds: vec![never_limiting()], ..Default::default() }),
        ..Default::default()
    }
}

/// An aggregate cluster: `clusters` in priority order (the next one is tried when the
/// one before has no healthy host, or on a retry).
fn aggregate_cluster(name: String, clusters: [String; 2]) -> Cluster {
    let config = AggregateConfig { clusters: clusters.into() };
    Cluster {
        name,
        cluster_discovery_type: Some(ClusterDiscoveryType::ClusterType(CustomClusterType {
            name: "envoy.clusters.aggregate".into(),
            typed_config: Some(pack_any(config)),
        })),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(millis(1000)),
        ..Default::default()
    }
}

fn listener(entry: &PublicEntry) -> Listener {
    let limit = u32::try_from(entry.max_body).unwrap_or(u32::MAX);
    let hcm = HttpConnectionManager {
        stat_prefix: "public".into(),
        // HTTP/1 only, as the gate.
        codec_type: CodecType::Http1 as i32,
        route_specifier: Some(RouteSpecifier::Rds(Rds { config_source: Some(ads()), route_config_name: PUBLIC_ROUTE_CONFIG_NAME.into() })),
        http_filters: vec![
            HttpFilter {
                name: "envoy.filters.http.buffer".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(Buffer { max_request_bytes: u32v(limit) }))),
                ..Default::default()
            },
            router_filter(),
        ],
        // The client's address in X-Forwarded-For, and its x-envoy-* headers dropped.
        use_remote_address: Some(BoolValue { value: true }),
        // A valid X-Request-Id is kept (others go to the gate), a missing one is made, and
        // every answer carries it.
        preserve_external_request_id: true,
        always_set_request_id_in_response: true,
        server_header_transformation: ServerHeaderTransformation::PassThrough as i32,
        local_reply_config: Some(LocalReplyConfig {
            mappers: vec![ResponseMapper {
                filter: Some(AccessLogFilter {
                    filter_specifier: Some(FilterSpecifier::StatusCodeFilter(StatusCodeFilter {
                        comparison: Some(ComparisonFilter {
                            op: Op::Eq as i32,
                            value: Some(RuntimeUInt32 { default_value: 413, runtime_key: "roost.public.too_large".into() }),
                        }),
                    })),
                }),
                body: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(format!(
                        "the request body is over the limit of {limit} bytes (ROOST_GATE_MAX_BODY)"
                    ))),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            // Envoy's own answers (a request it cannot parse, no upstream) in JSON like
            // the gate's.
            body_format: Some(super::json_error_format()),
        }),
        ..Default::default()
    };
    hcm_listener(PUBLIC_LISTENER_NAME, socket_address(&entry.bind.ip().to_string(), entry.bind.port()), hcm)
}

fn header(name: &str, spec: HeaderMatchSpecifier, invert_match: bool) -> HeaderMatcher {
    HeaderMatcher { name: name.into(), header_match_specifier: Some(spec), invert_match, ..Default::default() }
}

/// The public route table: first the platform's own paths to their services (the
/// management API; with the async worker, asynchronous calls after the refusals of
/// `auth: token` functions, so those are checked for the token too), then the requests
/// only the gate judges (an X-Request-Id it would replace), then each function that has
/// a serving replica and is not gated, direct; everything else to the gate (asleep,
/// waking, scaling up, draining to zero, undeclared: the gate's 404). The table grows with
/// the functions going direct, not with the functions declared.
pub fn route_table(model: &Model, settings: &BuildSettings) -> RouteConfiguration {
    let id_regex = StringMatcher {
        match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher { regex: REQUEST_ID_PATTERN.into(), ..Default::default() })),
        ..Default::default()
    };
    let mut routes = Vec::new();
    if settings.public.as_ref().is_some_and(|p| p.system.is_some()) {
        routes.push(to_system());
    }
    let asynchronous = settings.public.as_ref().is_some_and(|p| p.async_worker.is_some());
    // `auth: token` functions, awake or not: a call without the token is answered here,
    // an asynchronous one too.
    routes.extend(super::all_refusals(model, super::RefusalsFor::Public { asynchronous }));
    if asynchronous {
        routes.extend(super::ASYNC_PREFIXES.map(|prefix| to_async(prefix, settings)));
    }
    routes.push(to_gate("other-request-id", vec![header("x-request-id", HeaderMatchSpecifier::StringMatch(id_regex), true)]));
    for (name, f) in &model.functions {
        let action = match public_route(f) {
            PublicRoute::Gate => continue,
            PublicRoute::Direct => direct_action(name, f, settings),
            PublicRoute::Gated => gated_action(name, f, settings),
        };
        let exact = PathSpecifier::Path(format!("/{name}"));
        let below = PathSpecifier::Prefix(format!("/{name}/"));
        for (suffix, spec) in [("exact", exact), ("prefix", below)] {
            routes.push(Route {
                name: format!("{name}-{suffix}"),
                r#match: Some(RouteMatch { path_specifier: Some(spec), ..Default::default() }),
                action: Some(Action::Route(action.clone())),
                request_headers_to_remove: super::credentials_removed(f),
                ..Default::default()
            });
        }
    }
    routes.push(to_gate("other", vec![]));
    RouteConfiguration {
        name: PUBLIC_ROUTE_CONFIG_NAME.into(),
        virtual_hosts: vec![VirtualHost {
            name: "public".into(),
            domains: vec!["*".into()],
            routes,
            retry_policy: Some(retry_policy(settings)),
            // The gate takes the path a direct route rewrote from this header (a request a
            // replica refused); a client's own must not reach it. Envoy sets it after this
            // removal, on the direct routes' rewrite.
            request_headers_to_remove: vec!["x-envoy-original-path".into()],
            // The gate says how long it held a request; a request that went direct says none.
            response_headers_to_add: vec![HeaderValueOption {
                header: Some(HeaderValue { key: "x-roost-cold-start".into(), value: "none".into(), ..Default::default() }),
                append_action: HeaderAppendAction::AddIfAbsent as i32,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// To a function's replicas, then the gate: the function's timeout, its prefix stripped.
/// The retry policy is the virtual host's.
fn direct_action(name: &str, f: &Function, settings: &BuildSettings) -> RouteAction {
    RouteAction { retry_policy: None, ..replica_action(direct_cluster(name), f, settings) }
}

/// To the gate, then (a request the gate did not take: it restarts) the function's
/// replicas, its prefix stripped (the gate reads the path as sent from
/// `X-Envoy-Original-Path`). No timeout here, as on every route to the gate: it holds a
/// request for as long as the function's hold time, and Envoy's listener behind it, or a
/// replica's runtime, keeps the function's own.
fn gated_action(name: &str, f: &Function, settings: &BuildSettings) -> RouteAction {
    RouteAction { retry_policy: None, timeout: Some(millis(0)), ..replica_action(gated_cluster(name), f, settings) }
}

/// What the public listener retries: a request that never reached a replica, and one
/// whose replica went away under it (killed, crashed) before it answered. The second is
/// what the gate always did behind Envoy (it sent a request again after Envoy's own 503),
/// so a request in flight on a replica that dies is sent once more, through the gate, as
/// before: at least once, not exactly once, for that request.
pub const PUBLIC_RETRY_ON: &str = "connect-failure,refused-stream,reset";

/// Retries for every route: each on a host not tried yet (another replica) and a
/// priority not tried yet (after the replicas, the gate). Set once on the virtual host,
/// so each route costs only its match and cluster: the table is sent whole whenever a
/// function starts or stops going direct.
fn retry_policy(settings: &BuildSettings) -> RetryPolicy {
    let mut policy = RetryPolicy { retry_on: PUBLIC_RETRY_ON.into(), ..super::retry_policy(settings) };
    policy.retry_priority = Some(RetryPriority {
        name: "envoy.retry_priorities.previous_priorities".into(),
        config_type: Some(envoy_types::pb::envoy::config::route::v3::retry_policy::retry_priority::ConfigType::TypedConfig(pack_any(
            PreviousPrioritiesConfig { update_frequency: 1 },
        ))),
    });
    policy
}

/// The management API's paths, to the orchestrator: the path as sent, no timeout (a log
/// may be followed), and the body not buffered (a deploy may be larger than the gate's
/// limit; the orchestrator has its own).
fn to_system() -> Route {
    let unbuffered = BufferPerRoute { r#override: Some(buffer_per_route::Override::Disabled(true)) };
    Route {
        name: "system".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::PathSeparatedPrefix(roost_common::wire::system::PREFIX.into())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(SYSTEM_CLUSTER.into())),
            timeout: Some(millis(0)),
            ..Default::default()
        })),
        typed_per_filter_config: [("envoy.filters.http.buffer".to_string(), pack_any(unbuffered))].into(),
        ..Default::default()
    }
}

/// Asynchronous calls under `prefix` (`/async` itself and below, not `/asyncx`), to the
/// async worker: the path as sent, a timeout (it answers as soon as it has stored the
/// call), and the body buffered as for a function call (the gate's limit, 413 in JSON,
/// holds for a call queued as for one sent). Named after its prefix (`async`,
/// `async-function`): no function is called so. Retried only when the submit never
/// reached the worker: a reset after it arrived may come after the call was stored, and
/// sending it again would store it twice.
fn to_async(prefix: &str, settings: &BuildSettings) -> Route {
    Route {
        name: prefix.trim_start_matches('/').into(),
        r#match: Some(RouteMatch { path_specifier: Some(PathSpecifier::PathSeparatedPrefix(prefix.into())), ..Default::default() }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(ASYNC_CLUSTER.into())),
            timeout: Some(millis(ASYNC_TIMEOUT_MS)),
            retry_policy: Some(super::retry_policy(settings)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A route to the gate: the path as sent, and no timeout (the gate bounds how long it
/// holds a request, Envoy's listener behind it the function's timeout).
fn to_gate(name: &str, headers: Vec<HeaderMatcher>) -> Route {
    Route {
        name: name.into(),
        r#match: Some(RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/".into())), headers, ..Default::default() }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(GATE_CLUSTER.into())),
            timeout: Some(millis(0)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Change;
    use crate::resources::build;
    use prost::Message;

    fn entry() -> PublicEntry {
        PublicEntry {
            bind: "0.0.0.0:8080".parse().unwrap(),
            gate_host: "gate".into(),
            gate_port: 8081,
            max_body: 1024,
            system: None,
            async_worker: None,
        }
    }

    fn settings() -> BuildSettings {
        BuildSettings { public: Some(entry()), ..BuildSettings::default() }
    }

    fn model(changes: &[Change]) -> Model {
        let mut m = Model::default();
        m.apply_all(changes).unwrap();
        m
    }

    fn put(name: &str) -> Change {
        Change::PutFunction { function: name.into(), concurrency: None, timeout_ms: Some(1500), auth: None }
    }

    fn routes(s: &Snapshot) -> Vec<Route> {
        let rc = RouteConfiguration::decode(&*s.of(Kind::Route)[PUBLIC_ROUTE_CONFIG_NAME].body.value).unwrap();
        rc.virtual_hosts[0].routes.clone()
    }

    fn cluster_of(r: &Route) -> String {
        let Some(Action::Route(RouteAction { cluster_specifier: Some(ClusterSpecifier::Cluster(c)), .. })) = &r.action else {
            panic!("{r:?}")
        };
        c.clone()
    }

    #[test]
    fn an_auth_function_is_refused_without_its_token_asleep_or_awake_and_its_replicas_never_see_it() {
        let token = "the-api-token-0123456789";
        let put_secret = Change::PutFunction { function: "s".into(), concurrency: None, timeout_ms: None, auth: Some(token.into()) };
        let add = Change::AddEndpoint { function: "s".into(), address: "127.0.0.1:5000".into() };
        let with_system = BuildSettings { public: Some(PublicEntry { system: Some(("orch".into(), 18002)), ..entry() }), ..settings() };
        for (what, changes) in [("asleep", vec![put_secret.clone()]), ("awake", vec![put_secret.clone(), add.clone()])] {
            let snap = build(&model(&changes), &with_system, 1);
            let names: Vec<String> = routes(&snap).iter().map(|r| r.name.clone()).collect();
            assert_eq!(
                names[..5],
                ["system", "s-exact-auth-missing", "s-exact-auth-wrong", "s-prefix-auth-missing", "s-prefix-auth-wrong"],
                "{what}: the refusals come right after the management API, before any way to the gate or a replica"
            );
            let wrong = &routes(&snap)[2];
            assert!(matches!(&wrong.action, Some(Action::DirectResponse(d)) if d.status == 401), "{wrong:?}");
            let m = &wrong.r#match.as_ref().unwrap().headers[0];
            assert!(m.invert_match && m.name == "authorization", "{m:?}");
            // The gate's listener checks too: a held call reaches a replica only with the token.
            let gates = RouteConfiguration::decode(&*snap.of(Kind::Route)[crate::resources::ROUTE_CONFIG_NAME].body.value).unwrap();
            let names: Vec<&str> = gates.virtual_hosts[0].routes.iter().map(|r| r.name.as_str()).collect();
            assert_eq!(
                names[..4],
                ["s-exact-auth-missing", "s-exact-auth-wrong", "s-prefix-auth-missing", "s-prefix-auth-wrong"],
                "{what}"
            );
        }
        let awake = build(&model(&[put_secret.clone(), add.clone()]), &with_system, 1);
        let direct = routes(&awake).into_iter().find(|r| r.name == "s-exact").unwrap();
        assert_eq!(direct.request_headers_to_remove, ["authorization"], "stripped before the replica");
        let gates = RouteConfiguration::decode(&*awake.of(Kind::Route)[crate::resources::ROUTE_CONFIG_NAME].body.value).unwrap();
        let behind_gate = gates.virtual_hosts[0].routes.iter().find(|r| r.name == "s-exact").unwrap();
        assert_eq!(behind_gate.request_headers_to_remove, ["authorization"], "and on the gate's way");
        // A public function keeps its callers' Authorization.
        let public =
            build(&model(&[put("p"), Change::AddEndpoint { function: "p".into(), address: "127.0.0.1:5001".into() }]), &settings(), 1);
        assert!(routes(&public).iter().find(|r| r.name == "p-exact").unwrap().request_headers_to_remove.is_empty());
    }

    /// The route Envoy picks for a request: the first whose path and headers match (the
    /// matchers these tables use; a header not sent matches only an inverted presence).
    fn first_match<'a>(routes: &'a [Route], path: &str, headers: &[(&str, &str)]) -> &'a Route {
        let path_matches = |spec: &PathSpecifier| match spec {
            PathSpecifier::Path(p) => path == p,
            PathSpecifier::Prefix(p) => path.starts_with(p.as_str()),
            PathSpecifier::PathSeparatedPrefix(p) => {
                path.strip_prefix(p.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            other => panic!("no such matcher here: {other:?}"),
        };
        let header_matches = |h: &HeaderMatcher| {
            let value = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(&h.name)).map(|(_, v)| *v);
            match (h.header_match_specifier.as_ref().unwrap(), value) {
                (HeaderMatchSpecifier::PresentMatch(present), v) => (v.is_some() == *present) != h.invert_match,
                (_, None) => false,
                (HeaderMatchSpecifier::StringMatch(StringMatcher { match_pattern: Some(MatchPattern::Exact(e)), .. }), Some(v)) => {
                    (v == e) != h.invert_match
                }
                (other, _) => panic!("no such matcher here: {other:?}"),
            }
        };
        routes
            .iter()
            .find(|r| {
                let m = r.r#match.as_ref().unwrap();
                path_matches(m.path_specifier.as_ref().unwrap()) && m.headers.iter().all(header_matches)
            })
            .unwrap_or_else(|| panic!("no route for {path}"))
    }

    fn with_async(system: bool) -> BuildSettings {
        let public =
            PublicEntry { system: system.then(|| ("orch".into(), 18002)), async_worker: Some(("async-worker".into(), 8083)), ..entry() };
        BuildSettings { public: Some(public), ..settings() }
    }

    #[test]
    fn asynchronous_calls_go_to_the_async_worker_after_the_management_api_and_the_refusals() {
        let token = "the-api-token-0123456789";
        let put_secret = Change::PutFunction { function: "s".into(), concurrency: None, timeout_ms: None, auth: Some(token.into()) };
        let add = Change::AddEndpoint { function: "hello".into(), address: "127.0.0.1:5000".into() };
        let snap = build(&model(&[put_secret, put("hello"), add]), &with_async(true), 1);
        let r = routes(&snap);
        let names: Vec<&str> = r.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "system",
                "s-exact-auth-missing",
                "s-exact-auth-wrong",
                "s-prefix-auth-missing",
                "s-prefix-auth-wrong",
                "async/s-exact-auth-missing",
                "async/s-exact-auth-wrong",
                "async/s-prefix-auth-missing",
                "async/s-prefix-auth-wrong",
                "async-function/s-exact-auth-missing",
                "async-function/s-exact-auth-wrong",
                "async-function/s-prefix-auth-missing",
                "async-function/s-prefix-auth-wrong",
                "async",
                "async-function",
                "other-request-id",
                "hello-exact",
                "hello-prefix",
                "other",
            ]
        );
        for (route, prefix) in [(&r[13], "/async"), (&r[14], "/async-function")] {
            let spec = route.r#match.as_ref().unwrap().path_specifier.clone().unwrap();
            assert_eq!(spec, PathSpecifier::PathSeparatedPrefix(prefix.into()), "/async itself and below, not /asyncx");
            assert!(route.r#match.as_ref().unwrap().headers.is_empty());
            let Some(Action::Route(ra)) = &route.action else { panic!("{route:?}") };
            assert_eq!(cluster_of(route), ASYNC_CLUSTER);
            assert_eq!((ra.prefix_rewrite.as_str(), ra.timeout), ("", Some(millis(30_000))), "the path as sent, 30 s");
            let retry = ra.retry_policy.as_ref().expect("its own retry policy");
            assert!(
                !retry.retry_on.split(',').any(|on| on == "reset"),
                "a submit that reached the worker is not sent again: {}",
                retry.retry_on
            );
            assert!(ra.regex_rewrite.is_none() && ra.path_rewrite_policy.is_none());
            assert!(route.typed_per_filter_config.is_empty(), "the body buffered as a function call's: the gate's limit holds");
            assert!(route.request_headers_to_remove.is_empty(), "the worker gets the caller's Authorization, to pass on");
        }
        // The management API's route still turns the buffer off; the async ones do not.
        assert!(r[0].typed_per_filter_config.contains_key("envoy.filters.http.buffer"));

        let worker = Cluster::decode(&*snap.of(Kind::Cluster)[ASYNC_CLUSTER].body.value).unwrap();
        assert_eq!(worker, peer_cluster(ASYNC_CLUSTER, "async-worker", 8083), "a peer like the orchestrator's API");
        assert_eq!(worker.cluster_discovery_type, Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32)));
        assert!(snap.of(Kind::Cluster).contains_key(SYSTEM_CLUSTER));
        assert!(!snap.expected_names(Kind::Endpoint).any(|n| n == ASYNC_CLUSTER), "no EDS to subscribe to");

        // Without the management API, the async routes come right after the refusals.
        let names: Vec<String> = routes(&build(&model(&[put("hello")]), &with_async(false), 1)).iter().map(|r| r.name.clone()).collect();
        assert_eq!(names, ["async", "async-function", "other-request-id", "other"]);
    }

    #[test]
    fn without_the_async_worker_its_paths_are_the_gates() {
        let token = "the-api-token-0123456789";
        let put_secret = Change::PutFunction { function: "s".into(), concurrency: None, timeout_ms: None, auth: Some(token.into()) };
        let with_system = BuildSettings { public: Some(PublicEntry { system: Some(("orch".into(), 18002)), ..entry() }), ..settings() };
        let snap = build(&model(&[put_secret, put("hello")]), &with_system, 1);
        let r = routes(&snap);
        let names: Vec<&str> = r.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "system",
                "s-exact-auth-missing",
                "s-exact-auth-wrong",
                "s-prefix-auth-missing",
                "s-prefix-auth-wrong",
                "other-request-id",
                "other"
            ],
            "no async route, and no refusal of an async path"
        );
        assert!(!snap.of(Kind::Cluster).contains_key(ASYNC_CLUSTER));
        for path in ["/async/s", "/async/s/x", "/async-function/s", "/async/hello", "/async/calls/c1"] {
            assert_eq!(first_match(&r, path, &[]).name, "other", "{path}: the gate, as before (its 404)");
        }
    }

    #[test]
    fn an_auth_functions_async_paths_are_refused_without_its_token_before_the_async_route() {
        let token = "the-api-token-0123456789";
        let bearer = format!("Bearer {token}");
        let put_secret = Change::PutFunction { function: "s".into(), concurrency: None, timeout_ms: None, auth: Some(token.into()) };
        let add = Change::AddEndpoint { function: "s".into(), address: "127.0.0.1:5000".into() };
        for (what, changes) in [("asleep", vec![put_secret.clone(), put("p")]), ("awake", vec![put_secret.clone(), put("p"), add.clone()])]
        {
            let r = routes(&build(&model(&changes), &with_async(true), 1));
            let none: &[(&str, &str)] = &[];
            let wrong: &[(&str, &str)] = &[("authorization", "Bearer wrong")];
            let right: &[(&str, &str)] = &[("authorization", bearer.as_str())];
            for (path, headers, expected) in [
                ("/async/s", none, "async/s-exact-auth-missing"),
                ("/async/s", wrong, "async/s-exact-auth-wrong"),
                ("/async/s/x/y", none, "async/s-prefix-auth-missing"),
                ("/async/s/", wrong, "async/s-prefix-auth-wrong"),
                ("/async-function/s", none, "async-function/s-exact-auth-missing"),
                ("/async-function/s/x", wrong, "async-function/s-prefix-auth-wrong"),
                // With the token: the worker.
                ("/async/s/x", right, "async"),
                ("/async-function/s", right, "async-function"),
                // Another function's, or a name that merely starts so: the worker, no token asked.
                ("/async/p/x", none, "async"),
                ("/async/s2", none, "async"),
                ("/async-function/sx/y", none, "async-function"),
                ("/async/calls/c1", none, "async"),
                ("/async", none, "async"),
                // Not the worker's prefixes.
                ("/asyncx/s", none, "other"),
                ("/async-functions/s", none, "other"),
                // The function's own paths: refused as before.
                ("/s/x", none, "s-prefix-auth-missing"),
            ] {
                let route = first_match(&r, path, headers);
                assert_eq!(route.name, expected, "{what}: {path} {headers:?}");
                if expected.contains("-auth-") {
                    let Some(Action::DirectResponse(d)) = &route.action else { panic!("{route:?}") };
                    let Some(data_source::Specifier::InlineString(body)) = d.body.as_ref().and_then(|b| b.specifier.clone()) else {
                        panic!("{d:?}")
                    };
                    assert_eq!(d.status, 401, "{path}");
                    assert_eq!(body, r#"function "s" needs the platform's API token: send Authorization: Bearer <API token>"#);
                    assert_eq!(route.response_headers_to_add[0].header.as_ref().unwrap().key, "www-authenticate");
                }
            }
        }
    }

    #[test]
    fn a_function_goes_direct_only_while_it_has_a_serving_replica() {
        let addr = "127.0.0.1:5000";
        let asleep = build(&model(&[put("hello")]), &settings(), 1);
        let awake = build(&model(&[put("hello"), Change::AddEndpoint { function: "hello".into(), address: addr.into() }]), &settings(), 2);
        let draining = build(
            &model(&[
                put("hello"),
                Change::AddEndpoint { function: "hello".into(), address: addr.into() },
                Change::DrainEndpoint { function: "hello".into(), address: addr.into() },
            ]),
            &settings(),
            3,
        );
        let names = |s: &Snapshot| routes(s).iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        let hello = |s: &Snapshot| routes(s).iter().filter(|r| r.name.starts_with("hello-")).map(cluster_of).collect::<Vec<_>>();
        assert_eq!(names(&asleep), ["other-request-id", "other"], "asleep: the catch-all sends it to the gate");
        assert_eq!(hello(&awake), ["direct.hello", "direct.hello"]);
        assert_eq!(names(&draining), ["other-request-id", "other"], "the last replica draining sends the function back to the gate");
        assert!(asleep.of(Kind::Cluster).get("direct.hello").is_none(), "no aggregate for a function without a replica");
        assert!(draining.of(Kind::Cluster).contains_key("direct.hello"), "kept while a replica drains");

        let direct = routes(&awake).into_iter().find(|r| r.name == "hello-exact").unwrap();
        let Some(Action::Route(ra)) = direct.action else { panic!() };
        assert_eq!((ra.prefix_rewrite.as_str(), ra.timeout), ("/", Some(millis(1500))));
        assert_eq!(ra.retry_policy, None, "the virtual host's");
        let rc = RouteConfiguration::decode(&*awake.of(Kind::Route)[PUBLIC_ROUTE_CONFIG_NAME].body.value).unwrap();
        let retry = rc.virtual_hosts[0].retry_policy.clone().unwrap();
        assert_eq!(retry.retry_priority.unwrap().name, "envoy.retry_priorities.previous_priorities");
        assert_eq!(retry.retry_on, PUBLIC_RETRY_ON);
        let asleep_route = routes(&asleep).into_iter().find(|r| r.name == "other").unwrap();
        let Some(Action::Route(ra)) = asleep_route.action else { panic!() };
        assert_eq!(
            (ra.prefix_rewrite.as_str(), ra.timeout),
            ("", Some(millis(0))),
            "the gate gets the path as sent, and holds without Envoy's timeout"
        );
    }

    #[test]
    fn a_gated_function_goes_to_the_gate_first_until_it_is_ungated() {
        let add = |f: &str| Change::AddEndpoint { function: f.into(), address: "127.0.0.1:5000".into() };
        let gated = |f: &str, g: bool| Change::Gated { function: f.into(), gated: g };
        let clusters = |m: &Model| {
            let s = build(m, &settings(), 1);
            routes(&s).iter().map(|r| format!("{} {}", r.name, cluster_of(r))).collect::<Vec<_>>()
        };
        let mut m = model(&[put("hello"), add("hello"), gated("hello", true)]);
        assert_eq!(
            clusters(&m)[1..3],
            ["hello-exact gated.hello", "hello-prefix gated.hello"],
            "scaling up: to the gate despite its replica, and to the replica if the gate cannot take it"
        );
        let s = build(&m, &settings(), 1);
        let c = Cluster::decode(&*s.of(Kind::Cluster)["gated.hello"].body.value).unwrap();
        let Some(ClusterDiscoveryType::ClusterType(t)) = c.cluster_discovery_type else { panic!("an aggregate") };
        let order = AggregateConfig::decode(&*t.typed_config.unwrap().value).unwrap().clusters;
        assert_eq!(order, [GATE_CLUSTER, "fn-hello"], "the gate first");
        assert!(s.of(Kind::Cluster).contains_key("direct.hello"), "both aggregates stay, ready for the switch");
        let gated_route = routes(&s).into_iter().find(|r| r.name == "hello-exact").unwrap();
        let Some(Action::Route(ra)) = gated_route.action else { panic!() };
        assert_eq!((ra.prefix_rewrite.as_str(), ra.timeout), ("/", Some(millis(0))), "the gate holds without Envoy's timeout");
        m.apply(&gated("hello", false)).unwrap();
        assert_eq!(clusters(&m)[1..3], ["hello-exact direct.hello", "hello-prefix direct.hello"]);
        // Waking gates: the first endpoint keeps the function at the gate until it is ungated.
        let m = model(&[put("hello"), Change::Waking { function: "hello".into() }, add("hello")]);
        assert!(m.functions["hello"].gated);
        assert_eq!(clusters(&m)[1], "hello-exact gated.hello");
        // A call token must reach the gate's listener, never a replica: to the gate alone.
        let put_secret =
            Change::PutFunction { function: "s".into(), concurrency: None, timeout_ms: None, auth: Some("s-token-0123456789".into()) };
        let m = model(&[put_secret, add("s"), gated("s", true)]);
        let names: Vec<String> = routes(&build(&m, &settings(), 1)).iter().map(|r| r.name.clone()).collect();
        assert!(!names.iter().any(|n| n == "s-exact" || n == "s-prefix"), "{names:?}");
    }

    #[test]
    fn an_id_the_gate_would_replace_goes_to_it_first_and_anything_undeclared_last() {
        let s = build(
            &model(&[put("hello"), Change::AddEndpoint { function: "hello".into(), address: "127.0.0.1:5000".into() }]),
            &settings(),
            1,
        );
        let r = routes(&s);
        let names: Vec<_> = r.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["other-request-id", "hello-exact", "hello-prefix", "other"]);
        assert!(r[0].r#match.as_ref().unwrap().headers[0].invert_match);
        assert_eq!(cluster_of(&r[0]), GATE_CLUSTER);
        assert_eq!(cluster_of(&r[3]), GATE_CLUSTER);
    }

    #[test]
    fn the_aggregate_lists_the_replicas_before_the_gate_and_the_gate_is_found_by_name() {
        let s = build(
            &model(&[put("hello"), put("asleep"), Change::AddEndpoint { function: "hello".into(), address: "127.0.0.1:5000".into() }]),
            &settings(),
            1,
        );
        let c = Cluster::decode(&*s.of(Kind::Cluster)["direct.hello"].body.value).unwrap();
        let Some(ClusterDiscoveryType::ClusterType(t)) = c.cluster_discovery_type else { panic!() };
        let config = AggregateConfig::decode(&*t.typed_config.unwrap().value).unwrap();
        assert_eq!(config.clusters, ["fn-hello", GATE_CLUSTER]);
        let gate = Cluster::decode(&*s.of(Kind::Cluster)[GATE_CLUSTER].body.value).unwrap();
        assert_eq!(gate.cluster_discovery_type, Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32)));
        let by_ip = PublicEntry { gate_host: "127.0.0.1".into(), ..entry() };
        let g = gate_cluster(&by_ip);
        assert_eq!(g.cluster_discovery_type, Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)));
        // Only the function clusters have endpoints to subscribe to.
        assert_eq!(s.expected_names(Kind::Endpoint).collect::<Vec<_>>(), ["fn-hello"]);
    }

    #[test]
    fn the_public_listener_is_the_same_bytes_every_build() {
        let a = build(&model(&[put("a")]), &settings(), 1);
        let b = build(&model(&[put("a"), put("b")]), &settings(), 2);
        assert_eq!(a.of(Kind::Listener)[PUBLIC_LISTENER_NAME].version, b.of(Kind::Listener)[PUBLIC_LISTENER_NAME].version);
        assert!(build(&model(&[put("a")]), &BuildSettings::default(), 1).of(Kind::Listener).get(PUBLIC_LISTENER_NAME).is_none());
    }
}
