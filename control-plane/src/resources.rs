//! Turns the [`Model`] into Envoy's xDS resources: one EDS cluster and one
//! ClusterLoadAssignment per function that has a replica registered, the gate's listener
//! with its route table (two routes per such function), and, with a [`PublicEntry`], the
//! public entry (module [`public`]). Each resource carries a version that is a hash of its
//! encoded bytes, so an unchanged resource keeps its version across changes and restarts.
//!
//! A function without a replica costs Envoy nothing: no cluster, no assignment, no route
//! (see [`in_envoy`]). Envoy's configuration, and every push of it, grows with the
//! functions awake, not with the functions declared.

pub mod public;
pub use public::PublicEntry;

use crate::model::{Function, Model};
use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds,
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy},
    CircuitBreakers, Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source::ConfigSourceSpecifier, data_source, socket_address::PortSpecifier, substitution_format_string, Address,
    AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, HeaderValue, HeaderValueOption, HealthStatus, SocketAddress,
    SubstitutionFormatString,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, retry_policy::RetryHostPredicate, route::Action, route_action::ClusterSpecifier,
    route_match::PathSpecifier, DirectResponseAction, HeaderMatcher, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::google::protobuf::{value::Kind as ValueKind, Any, Duration, Struct, UInt32Value, Value};
use envoy_types::util::pack_any;
pub use roost_common::hash::fnv1a;
use roost_common::naming::cluster_name;
use roost_common::wire::calls;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Name of the listener the gate sends requests to (every function always routed to its
/// replicas).
pub const LISTENER_NAME: &str = "roost_http";
/// Name of the route table the listener asks for over RDS.
pub const ROUTE_CONFIG_NAME: &str = "roost_routes";
/// What Envoy retries: only requests that never reached a function.
pub const RETRY_ON: &str = "connect-failure,refused-stream,reset-before-request";

/// The four resource types Roost serves, in the order changes are pushed
/// (make before break: clusters, endpoints, listeners, routes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    Endpoint,
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    Route,
}

impl Kind {
    /// Every kind, in push order.
    pub const ALL: [Kind; 4] = [Kind::Cluster, Kind::Endpoint, Kind::Listener, Kind::Route];

    /// The xDS type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    /// The kind of a type URL, if Roost serves it.
    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// Short name for logs and the admin API.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Cluster => "cds",
            Kind::Endpoint => "eds",
            Kind::Listener => "lds",
            Kind::Route => "rds",
        }
    }

    /// Whether Envoy subscribes to this kind by wildcard (all resources) rather than by name.
    pub fn is_wildcard(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One resource and its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Hash of the encoded resource, as hex.
    pub version: Arc<str>,
    /// The packed resource.
    pub body: Arc<Any>,
}

impl Resource {
    /// Packs a message and versions it by the hash of its bytes.
    pub fn new(body: Any) -> Resource {
        Resource { version: format!("{:016x}", fnv1a(&body.value)).into(), body: Arc::new(body) }
    }
}

/// Every resource of every kind at one generation of the model.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Counts model changes since the control plane started; each change gets a new one.
    pub generation: u64,
    resources: [BTreeMap<String, Resource>; 4],
}

impl Snapshot {
    /// An empty snapshot at `generation`.
    pub fn empty(generation: u64) -> Snapshot {
        Snapshot { generation, resources: Default::default() }
    }

    /// The same resources at another generation.
    pub fn with_generation(&self, generation: u64) -> Snapshot {
        Snapshot { generation, resources: self.resources.clone() }
    }

    /// The resources of one kind by name.
    pub fn of(&self, kind: Kind) -> &BTreeMap<String, Resource> {
        &self.resources[kind.index()]
    }

    /// Adds or replaces a resource (used by tests to build odd snapshots).
    pub fn insert(&mut self, kind: Kind, name: impl Into<String>, body: Any) {
        self.resources[kind.index()].insert(name.into(), Resource::new(body));
    }

    /// Removes a resource, if present.
    pub fn remove(&mut self, kind: Kind, name: &str) {
        self.resources[kind.index()].remove(name);
    }

    /// The names Envoy must have subscribed to for a kind it asks for by name: every EDS
    /// cluster's endpoints, and the route tables the listeners use.
    pub fn expected_names(&self, kind: Kind) -> impl Iterator<Item = &String> {
        let source = match kind {
            Kind::Endpoint => Some(Kind::Endpoint),
            Kind::Route => Some(Kind::Route),
            _ => None,
        };
        source.into_iter().flat_map(|k| self.of(k).keys())
    }
}

/// Settings that shape every resource, from the control plane's configuration.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    /// Address the gate's listener binds inside Envoy.
    pub listener_address: String,
    /// Port of the gate's listener.
    pub listener_port: u16,
    /// Upstream connect timeout, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Retries of requests that never reached a function.
    pub num_retries: u32,
    /// Envoy as the public entry, in front of the gate; none: the gate is the entry.
    pub public: Option<PublicEntry>,
}

impl Default for BuildSettings {
    fn default() -> Self {
        BuildSettings { listener_address: "0.0.0.0".into(), listener_port: 10000, connect_timeout_ms: 250, num_retries: 3, public: None }
    }
}

/// Whether Envoy hears of a function: it has a replica registered (serving or draining),
/// or its first replica is starting ([`Function::waking`]). A function with neither has
/// no cluster and no route; the gate wakes it. Its cluster then comes while its first
/// replica starts, or at the latest in the same generation as its first endpoint
/// (clusters are pushed before endpoints and routes, and the sync wait covers the new
/// cluster's assignment).
pub fn in_envoy(f: &Function) -> bool {
    f.waking || !f.endpoints.is_empty()
}

/// Builds the snapshot of `model` at `generation`.
pub fn build(model: &Model, settings: &BuildSettings, generation: u64) -> Snapshot {
    let mut snap = Snapshot::empty(generation);
    for name in model.functions.keys() {
        put_function(&mut snap, model, name, settings);
    }
    snap.insert(Kind::Listener, LISTENER_NAME, pack_any(listener(settings)));
    snap.insert(Kind::Route, ROUTE_CONFIG_NAME, pack_any(route_table(model, settings)));
    if let Some(entry) = &settings.public {
        public::add(&mut snap, model, entry, settings);
    }
    snap
}

/// Puts one function's clusters and assignment into `snap` as `model` has it, or takes
/// them out when the function is gone or has no replica. Routes are rebuilt apart.
pub fn put_function(snap: &mut Snapshot, model: &Model, function: &str, settings: &BuildSettings) {
    let cluster = cluster_name(function);
    match model.functions.get(function).filter(|f| in_envoy(f)) {
        Some(f) => {
            snap.insert(Kind::Cluster, &cluster, pack_any(function_cluster(&cluster, f, settings)));
            snap.insert(Kind::Endpoint, &cluster, pack_any(load_assignment(&cluster, f)));
        }
        None => {
            snap.remove(Kind::Cluster, &cluster);
            snap.remove(Kind::Endpoint, &cluster);
        }
    }
    if settings.public.is_some() {
        public::put_function(snap, model, function);
    }
}

pub(crate) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

pub(crate) fn millis(ms: u64) -> Duration {
    Duration { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

pub(crate) fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

/// Cluster-wide circuit-breaker limits high enough that Envoy never rejects a request
/// for them: Roost bounds requests itself (the gate's cap, each replica's concurrency).
pub(crate) fn never_limiting() -> Thresholds {
    Thresholds {
        max_connections: u32v(100_000),
        max_pending_requests: u32v(100_000),
        max_requests: u32v(100_000),
        max_retries: u32v(1_000),
        ..Default::default()
    }
}

/// The EDS cluster of one function.
pub fn function_cluster(name: &str, f: &Function, settings: &BuildSettings) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig { eds_config: Some(ads()), service_name: String::new() }),
        connect_timeout: Some(millis(settings.connect_timeout_ms)),
        lb_policy: LbPolicy::LeastRequest as i32,
        circuit_breakers: Some(CircuitBreakers {
            // Cluster-wide limits high enough never to reject before the queue is seen.
            thresholds: vec![never_limiting()],
            // One replica serves `concurrency` requests at once; the rest queue in Envoy.
            per_host_thresholds: vec![Thresholds { max_connections: u32v(f.concurrency), ..Default::default() }],
        }),
        ..Default::default()
    }
}

/// The endpoints of one function.
pub fn load_assignment(name: &str, f: &Function) -> ClusterLoadAssignment {
    let lb_endpoints = f
        .endpoints
        .iter()
        .map(|(addr, ep)| LbEndpoint {
            health_status: if ep.draining { HealthStatus::Draining } else { HealthStatus::Healthy } as i32,
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(socket_address(&addr.ip().to_string(), addr.port())),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect::<Vec<_>>();
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: if lb_endpoints.is_empty() { vec![] } else { vec![LocalityLbEndpoints { lb_endpoints, ..Default::default() }] },
        ..Default::default()
    }
}

pub(crate) fn socket_address(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    }
}

/// The public listener: HTTP connection manager with its routes over RDS.
pub fn listener(settings: &BuildSettings) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: "roost".into(),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(RouteSpecifier::Rds(Rds { config_source: Some(ads()), route_config_name: ROUTE_CONFIG_NAME.into() })),
        http_filters: vec![router_filter()],
        // The gate sets X-Request-Id; Envoy keeps it (and makes one when it is missing).
        preserve_external_request_id: true,
        ..Default::default()
    };
    hcm_listener(LISTENER_NAME, socket_address(&settings.listener_address, settings.listener_port), hcm)
}

/// A listener whose one filter is `hcm`.
pub(crate) fn hcm_listener(name: &str, address: Address, hcm: HttpConnectionManager) -> Listener {
    Listener {
        name: name.into(),
        address: Some(address),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Envoy's router, the last HTTP filter.
pub(crate) fn router_filter() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(Router::default()))),
        ..Default::default()
    }
}

/// The route table: `/<name>` and `/<name>/...` to each function in Envoy (prefix
/// stripped), then a JSON 503 for everything else: the gate sends a request here only
/// for a function it believes awake, so a function missing here has just lost its last
/// replica, and Envoy's own 503 makes the gate wake it again (`@rewake` in nginx.conf).
pub fn route_table(model: &Model, settings: &BuildSettings) -> RouteConfiguration {
    let mut routes = Vec::new();
    // `auth: token` functions first, in Envoy or not: a call the gate holds is checked
    // here too (the gate passes the header on), so none reaches a replica without the
    // token, even one that came in before its function's declaration did.
    // Not the asynchronous paths: no function is called `async`, so the gate never sends
    // one here.
    routes.extend(all_refusals(model, RefusalsFor::Gate));
    for (name, f) in model.functions.iter().filter(|(_, f)| in_envoy(f)) {
        let exact = PathSpecifier::Path(format!("/{name}"));
        let below = PathSpecifier::Prefix(format!("/{name}/"));
        for (suffix, spec) in [("exact", exact), ("prefix", below)] {
            routes.push(function_route(name, suffix, spec, f, settings));
        }
    }
    routes.push(no_replica_route());
    RouteConfiguration {
        name: ROUTE_CONFIG_NAME.into(),
        virtual_hosts: vec![VirtualHost { name: "functions".into(), domains: vec!["*".into()], routes, ..Default::default() }],
        ..Default::default()
    }
}

/// The path prefixes under which a function is called asynchronously (the async worker's
/// submits): `/async/<name>` and `/async-function/<name>`, and below.
pub(crate) const ASYNC_PREFIXES: [&str; 2] = [calls::SUBMIT_PREFIX, calls::OPENFAAS_SUBMIT_PREFIX];

/// Which listener's route table the refusals are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusalsFor {
    /// The listener behind the gate: a function's own paths, and the 401 formatted as
    /// JSON by the route (the listener has no local reply format).
    Gate,
    /// The public listener, whose local reply format makes every answer of Envoy's JSON;
    /// with `asynchronous` (it routes the async worker's paths), the asynchronous paths
    /// too.
    Public {
        /// The async worker is routed.
        asynchronous: bool,
    },
}

/// The [`refusals`] of every `auth: token` function, in Envoy or not, for `listener`.
pub(crate) fn all_refusals(model: &Model, listener: RefusalsFor) -> impl Iterator<Item = Route> + '_ {
    let under: &[&str] = if listener == (RefusalsFor::Public { asynchronous: true }) { &ASYNC_PREFIXES } else { &[] };
    let format = (listener == RefusalsFor::Gate).then(json_error_format);
    model.functions.iter().filter_map(|(name, f)| f.auth.as_ref().map(|token| (name, token))).flat_map(move |(name, token)| {
        let format = format.clone();
        std::iter::once("").chain(under.iter().copied()).flat_map(move |prefix| refusals(prefix, name, token, format.clone()))
    })
}

/// The routes that answer 401 to a call of an `auth: token` function without `token`:
/// no `Authorization` header, or another one; for `<prefix>/<name>` and below (`prefix`
/// empty: the function's own paths; else one of [`ASYNC_PREFIXES`]). Named
/// `<name>-<exact|prefix>-auth-<missing|wrong>`, led by the prefix without its slash when
/// there is one (`async/<name>-exact-auth-missing`): a function's name has no `/`, so no
/// two collide. `body_format`: how the 401's body is written (none: the listener's own
/// local reply format).
fn refusals(prefix: &str, name: &str, token: &str, body_format: Option<SubstitutionFormatString>) -> Vec<Route> {
    let expected = format!("Bearer {token}");
    let wrong = StringMatcher { match_pattern: Some(MatchPattern::Exact(expected)), ..Default::default() };
    let missing = HeaderMatcher {
        name: "authorization".into(),
        header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
        invert_match: true,
        ..Default::default()
    };
    let unauthorized = || {
        Action::DirectResponse(DirectResponseAction {
            status: 401,
            body: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(format!(
                    "function {name:?} needs the platform's API token: send Authorization: Bearer <API token>"
                ))),
                ..Default::default()
            }),
            body_format: body_format.clone(),
        })
    };
    let label = match prefix.strip_prefix('/') {
        Some(under) => format!("{under}/{name}"),
        None => name.to_string(),
    };
    let mut routes = Vec::new();
    for (suffix, path) in
        [("exact", PathSpecifier::Path(format!("{prefix}/{name}"))), ("prefix", PathSpecifier::Prefix(format!("{prefix}/{name}/")))]
    {
        for (what, matcher) in [
            ("missing", missing.clone()),
            (
                "wrong",
                HeaderMatcher {
                    name: "authorization".into(),
                    header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(wrong.clone())),
                    invert_match: true,
                    ..Default::default()
                },
            ),
        ] {
            routes.push(Route {
                name: format!("{label}-{suffix}-auth-{what}"),
                r#match: Some(RouteMatch { path_specifier: Some(path.clone()), headers: vec![matcher], ..Default::default() }),
                action: Some(unauthorized()),
                response_headers_to_add: vec![HeaderValueOption {
                    header: Some(HeaderValue { key: "www-authenticate".into(), value: "Bearer".into(), ..Default::default() }),
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
    }
    routes
}

/// An answer of Envoy's own as the gate's are: `{"error": "<its body>"}`, in JSON. One
/// field: a protobuf Struct is a hash map, and more than one would make the resource's
/// bytes, and so its version, differ from build to build.
pub(crate) fn json_error_format() -> SubstitutionFormatString {
    let body = Struct { fields: [("error".to_string(), Value { kind: Some(ValueKind::StringValue("%LOCAL_REPLY_BODY%".into())) })].into() };
    SubstitutionFormatString {
        format: Some(substitution_format_string::Format::JsonFormat(body)),
        content_type: "application/json".into(),
        ..Default::default()
    }
}

fn function_route(name: &str, suffix: &str, spec: PathSpecifier, f: &Function, settings: &BuildSettings) -> Route {
    Route {
        name: format!("{name}-{suffix}"),
        r#match: Some(RouteMatch { path_specifier: Some(spec), ..Default::default() }),
        action: Some(Action::Route(replica_action(cluster_name(name), f, settings))),
        request_headers_to_remove: credentials_removed(f),
        ..Default::default()
    }
}

/// The headers a function's replicas must not see: the call token of an `auth: token`
/// function (checked by the public listener before).
pub(crate) fn credentials_removed(f: &Function) -> Vec<String> {
    match f.auth {
        Some(_) => vec!["authorization".into()],
        None => Vec::new(),
    }
}

/// To a function's replicas through `cluster`: the prefix stripped, the function's
/// timeout, and retries (each on another replica) of requests that never reached one.
pub(crate) fn replica_action(cluster: String, f: &Function, settings: &BuildSettings) -> RouteAction {
    RouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
        prefix_rewrite: "/".into(),
        timeout: Some(millis(f.timeout_ms)),
        retry_policy: Some(retry_policy(settings)),
        ..Default::default()
    }
}

/// Retries of requests that never reached a function, each on another replica.
pub(crate) fn retry_policy(settings: &BuildSettings) -> RetryPolicy {
    RetryPolicy {
        retry_on: RETRY_ON.into(),
        num_retries: u32v(settings.num_retries),
        retry_host_predicate: vec![RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                pack_any(PreviousHostsPredicate::default()),
            )),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

fn no_replica_route() -> Route {
    Route {
        name: "no-replica".into(),
        r#match: Some(RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/".into())), ..Default::default() }),
        action: Some(Action::DirectResponse(DirectResponseAction {
            status: 503,
            body: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(
                    r#"{"error":"no replica of this function is registered with Envoy","hint":"call functions through the platform's port, which wakes them"}"#
                        .into(),
                )),
                ..Default::default()
            }),
            body_format: None,
        })),
        response_headers_to_add: vec![HeaderValueOption {
            header: Some(HeaderValue { key: "content-type".into(), value: "application/json".into(), ..Default::default() }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Change;
    use prost::Message;

    fn model() -> Model {
        let mut m = Model::default();
        m.apply_all(&[
            Change::PutFunction { function: "hello".into(), concurrency: Some(3), timeout_ms: Some(1500), auth: None },
            Change::AddEndpoint { function: "hello".into(), address: "127.0.0.1:5000".into() },
            Change::PutFunction { function: "empty".into(), concurrency: None, timeout_ms: None, auth: None },
        ])
        .unwrap();
        m
    }

    #[test]
    fn one_cluster_and_assignment_per_function_with_a_replica_and_nothing_for_the_rest() {
        let s = build(&model(), &BuildSettings::default(), 1);
        let names: Vec<_> = s.of(Kind::Cluster).keys().cloned().collect();
        assert_eq!(names, ["fn-hello"], "\"empty\" has no replica: no cluster");
        let c = Cluster::decode(&*s.of(Kind::Cluster)["fn-hello"].body.value).unwrap();
        let per_host = &c.circuit_breakers.unwrap().per_host_thresholds[0];
        assert_eq!(per_host.max_connections, u32v(3));
        assert_eq!(c.connect_timeout, Some(millis(250)));
        let cla = ClusterLoadAssignment::decode(&*s.of(Kind::Endpoint)["fn-hello"].body.value).unwrap();
        assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1);
        assert_eq!(s.expected_names(Kind::Endpoint).collect::<Vec<_>>(), ["fn-hello"]);
        let rc = route_table(&model(), &BuildSettings::default());
        let names: Vec<_> = rc.virtual_hosts[0].routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["hello-exact", "hello-prefix", "no-replica"]);
    }

    #[test]
    fn a_declared_function_costs_envoy_nothing_until_its_first_replica() {
        // A thousand sleeping functions: the same resources as none.
        let mut many = Model::default();
        for i in 0..1000 {
            many.apply(&Change::PutFunction { function: format!("f{i}"), concurrency: None, timeout_ms: None, auth: None }).unwrap();
        }
        let settings = BuildSettings::default();
        let (a, b) = (build(&many, &settings, 1), build(&Model::default(), &settings, 1));
        for kind in Kind::ALL {
            assert_eq!(a.of(kind), b.of(kind), "{kind:?}");
        }
        // Waking: its cluster, an empty assignment and its routes, ahead of its endpoint.
        many.apply(&Change::Waking { function: "f7".into() }).unwrap();
        let w = build(&many, &settings, 2);
        assert_eq!(w.of(Kind::Cluster).keys().collect::<Vec<_>>(), ["fn-f7"]);
        let cla = ClusterLoadAssignment::decode(&*w.of(Kind::Endpoint)["fn-f7"].body.value).unwrap();
        assert!(cla.endpoints.is_empty());
        let rc = route_table(&many, &settings);
        assert_eq!(rc.virtual_hosts[0].routes.len(), 3, "f7's two routes and the fallback");
        // Its first endpoint ends the waking; the endpoint keeps it in Envoy.
        many.apply(&Change::AddEndpoint { function: "f7".into(), address: "127.0.0.1:1".into() }).unwrap();
        assert!(!many.functions["f7"].waking);
        many.apply(&Change::RemoveEndpoint { function: "f7".into(), address: "127.0.0.1:1".into() }).unwrap();
        assert!(build(&many, &settings, 3).of(Kind::Cluster).is_empty(), "its last endpoint gone: out of Envoy");
    }

    #[test]
    fn routes_match_whole_segments_and_strip_the_prefix() {
        let rc = route_table(&model(), &BuildSettings::default());
        let routes = &rc.virtual_hosts[0].routes;
        let specs: Vec<_> = routes.iter().map(|r| r.r#match.clone().unwrap().path_specifier.unwrap()).collect();
        assert!(specs.contains(&PathSpecifier::Path("/hello".into())));
        assert!(specs.contains(&PathSpecifier::Prefix("/hello/".into())));
        assert!(!specs.contains(&PathSpecifier::Prefix("/hello".into())), "/hello must not match /hello2");
        let Some(Action::Route(ra)) = &routes[0].action else { panic!("route action") };
        assert_eq!(ra.prefix_rewrite, "/");
        assert_eq!(ra.timeout, Some(millis(1500)));
        assert_eq!(ra.retry_policy.as_ref().unwrap().retry_on, RETRY_ON);
        let last = routes.last().unwrap();
        let Some(Action::DirectResponse(d)) = &last.action else { panic!("direct response") };
        assert_eq!((last.name.as_str(), d.status), ("no-replica", 503), "Envoy's own 503 makes the gate wake the function");
    }

    #[test]
    fn versions_change_only_with_content() {
        let settings = BuildSettings::default();
        let mut m = model();
        let a = build(&m, &settings, 1);
        m.apply(&Change::AddEndpoint { function: "hello".into(), address: "127.0.0.1:5001".into() }).unwrap();
        let b = build(&m, &settings, 2);
        assert_eq!(a.of(Kind::Cluster)["fn-hello"].version, b.of(Kind::Cluster)["fn-hello"].version);
        assert_ne!(a.of(Kind::Endpoint)["fn-hello"].version, b.of(Kind::Endpoint)["fn-hello"].version);
        assert_eq!(a.of(Kind::Route)[ROUTE_CONFIG_NAME].version, b.of(Kind::Route)[ROUTE_CONFIG_NAME].version);
    }

    #[test]
    fn refusals_cover_a_functions_async_paths_only_when_asked_and_keep_names_unique() {
        let mut m = Model::default();
        for name in ["s", "s-async", "public"] {
            let auth = (name != "public").then(|| format!("token-of-{name}-0123456789"));
            m.apply(&Change::PutFunction { function: name.into(), concurrency: None, timeout_ms: None, auth }).unwrap();
        }
        let spec = |r: &Route| r.r#match.clone().unwrap().path_specifier.unwrap();
        let sync: Vec<Route> = all_refusals(&m, RefusalsFor::Public { asynchronous: false }).collect();
        assert_eq!(sync.len(), 8, "two functions, four routes each: {:?}", sync.iter().map(|r| &r.name).collect::<Vec<_>>());
        assert!(sync.iter().all(|r| !r.name.contains('/')), "the function's own paths only");
        let all: Vec<Route> = all_refusals(&m, RefusalsFor::Public { asynchronous: true }).collect();
        assert_eq!(all.len(), 24);
        let names: Vec<&str> = all.iter().filter(|r| r.name.ends_with("-auth-missing")).map(|r| r.name.as_str()).collect();
        assert_eq!(
            names[..6],
            [
                "s-exact-auth-missing",
                "s-prefix-auth-missing",
                "async/s-exact-auth-missing",
                "async/s-prefix-auth-missing",
                "async-function/s-exact-auth-missing",
                "async-function/s-prefix-auth-missing",
            ]
        );
        let unique: std::collections::BTreeSet<&str> = all.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(unique.len(), all.len(), "\"s-async\"'s routes and s's async ones do not collide");
        let s_specs: Vec<PathSpecifier> =
            all.iter().filter(|r| r.name.contains("s-exact") || r.name.contains("s-prefix")).map(spec).collect();
        for expected in [
            PathSpecifier::Path("/s".into()),
            PathSpecifier::Prefix("/s/".into()),
            PathSpecifier::Path("/async/s".into()),
            PathSpecifier::Prefix("/async/s/".into()),
            PathSpecifier::Path("/async-function/s".into()),
            PathSpecifier::Prefix("/async-function/s/".into()),
        ] {
            assert!(s_specs.contains(&expected), "{expected:?}");
        }
        assert!(!s_specs.contains(&PathSpecifier::Prefix("/async/s".into())), "/async/s must not match /async/s2");
        for r in &all {
            let Some(Action::DirectResponse(d)) = &r.action else { panic!("{r:?}") };
            assert_eq!(d.status, 401, "{}", r.name);
        }
        // The gate's listener: the function's own paths only (no function is called `async`).
        let rc = route_table(&m, &BuildSettings::default());
        assert!(rc.virtual_hosts[0].routes.iter().all(|r| !r.name.contains('/')));
    }

    #[test]
    fn type_urls_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_type_url(k.type_url()), Some(k));
        }
        assert_eq!(Kind::from_type_url("type.googleapis.com/x"), None);
        assert_eq!(pack_any(Cluster::default()).type_url, Kind::Cluster.type_url());
    }
}
