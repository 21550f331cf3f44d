//! The control plane's admin API, as the control plane serves it and the orchestrator
//! calls it: the request bodies (put a function, add an endpoint, a list of changes), the
//! `?wait=&timeout_ms=&min_envoys=` query, the answers (a change's generation, the
//! functions listing) and the error body.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

/// The error body of every admin answer that is not 200: the same `{"error": ...}` as the
/// orchestrator's API.
pub use super::status::ApiError;

/// Longest wait for Envoy's ACK a caller may ask for (`timeout_ms`).
pub const MAX_WAIT_MS: u64 = 60_000;

/// The body of `PUT /functions/{name}`: the settings of a function, each optional: absent
/// ones keep their current value (or the default for a new function). An empty body is
/// all absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSettings {
    /// Requests one replica serves at once (Envoy's per-host `max_connections`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Route timeout for one request, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The bearer token every call must carry (Envoy checks it, and removes it before the
    /// function sees it); absent: a public function. Unlike the others, not kept from
    /// before: every put says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
}

/// The body of `POST /functions/{name}/endpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    /// `ip:port`; Envoy needs an IP address, not a host name.
    pub address: String,
}

/// One change to the model (`POST /changes` takes a list of them, applied all together or
/// not at all; the other change routes build one each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// Creates a function, or updates its settings (endpoints are kept).
    PutFunction {
        /// Function name.
        function: String,
        /// See [`FunctionSettings::concurrency`]; absent keeps the current value.
        #[serde(default)]
        concurrency: Option<u32>,
        /// See [`FunctionSettings::timeout_ms`]; absent keeps the current value.
        #[serde(default)]
        timeout_ms: Option<u64>,
        /// See [`FunctionSettings::auth`]; absent: public.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth: Option<String>,
    },
    /// The function's first replica is starting: its cluster goes into Envoy now, while
    /// the replica starts, so that the replica's registration sends Envoy only its
    /// endpoint. A function without replicas is otherwise not in Envoy at all. Ends with
    /// the function's first endpoint; changes nothing for a function that has one. It
    /// also gates the function ([`Change::Gated`]): a function waking from zero keeps its
    /// requests in the gate until the orchestrator ends that.
    Waking {
        /// Function name.
        function: String,
    },
    /// Whether the public entry sends the function's requests through the gate even while
    /// it has a serving replica (`true`), or straight to its replicas (`false`, the
    /// default). The orchestrator gates a function while it scales up, so that a burst
    /// waits in the gate, which releases it as replicas become ready, instead of queueing
    /// in Envoy behind the replicas that were ready first. [`Change::Waking`] gates too.
    Gated {
        /// Function name.
        function: String,
        /// Through the gate.
        gated: bool,
    },
    /// Removes a function, its route, cluster and endpoints.
    RemoveFunction {
        /// Function name.
        function: String,
    },
    /// Adds an endpoint (or brings a draining one back into rotation).
    AddEndpoint {
        /// Function name.
        function: String,
        /// `ip:port`; Envoy needs an IP address, not a host name.
        address: String,
    },
    /// Marks an endpoint draining: no new requests, in-flight ones finish.
    DrainEndpoint {
        /// Function name.
        function: String,
        /// `ip:port`.
        address: String,
    },
    /// Removes an endpoint.
    RemoveEndpoint {
        /// Function name.
        function: String,
        /// `ip:port`.
        address: String,
    },
}

impl Change {
    /// The function the change is about.
    pub fn function(&self) -> &str {
        match self {
            Change::PutFunction { function, .. }
            | Change::Waking { function }
            | Change::Gated { function, .. }
            | Change::RemoveFunction { function }
            | Change::AddEndpoint { function, .. }
            | Change::DrainEndpoint { function, .. }
            | Change::RemoveEndpoint { function, .. } => function,
        }
    }
}

/// The query of every change route and of `GET /sync/{generation}`: whether to answer
/// only once every connected Envoy has ACKed the change, how long to wait for that, and
/// how many Envoys must be connected. Absent values take the control plane's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WaitQuery {
    /// Wait for Envoy's ACK (a change route answers at once without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
    /// How long to wait, 1 to [`MAX_WAIT_MS`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Envoys that must be connected and in sync for the wait to succeed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_envoys: Option<usize>,
}

/// A query parameter the control plane cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid query parameter {name}={value:?}: {allowed}")]
pub struct InvalidQuery {
    /// The parameter.
    pub name: &'static str,
    /// What it was given.
    pub value: String,
    /// What it accepts.
    pub allowed: String,
}

impl WaitQuery {
    /// Wait for Envoy's ACK, at most `timeout_ms`: what the orchestrator asks on every change.
    pub fn until_acked(timeout_ms: u64) -> WaitQuery {
        WaitQuery { wait: Some(true), timeout_ms: Some(timeout_ms), min_envoys: None }
    }

    /// Answer as soon as the change is applied, without waiting for Envoy.
    pub fn at_once() -> WaitQuery {
        WaitQuery { wait: Some(false), ..WaitQuery::default() }
    }

    /// Reads the query as a browser or curl may spell it: `wait` is `true`, `1` or empty
    /// (bare `?wait`) for yes, `false` or `0` for no. Other parameters are ignored.
    pub fn parse(q: &HashMap<String, String>) -> Result<WaitQuery, InvalidQuery> {
        let bad = |name: &'static str, v: &str, allowed: &str| InvalidQuery { name, value: v.to_string(), allowed: allowed.to_string() };
        let wait = match q.get("wait").map(String::as_str) {
            None => None,
            Some("false") | Some("0") => Some(false),
            Some("true") | Some("1") | Some("") => Some(true),
            Some(v) => return Err(bad("wait", v, "use true or false")),
        };
        let timeout_ms = match q.get("timeout_ms") {
            None => None,
            Some(v) => match v.parse::<u64>() {
                Ok(ms) if (1..=MAX_WAIT_MS).contains(&ms) => Some(ms),
                _ => return Err(bad("timeout_ms", v, &format!("use 1 to {MAX_WAIT_MS}"))),
            },
        };
        let min_envoys = match q.get("min_envoys") {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| bad("min_envoys", v, "use a whole number"))?),
        };
        Ok(WaitQuery { wait, timeout_ms, min_envoys })
    }
}

/// The answer to a change (200): its generation; with `?wait=true` also that every Envoy
/// ACKed it and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The model generation the change made.
    pub generation: u64,
    /// Every connected Envoy ACKed it (only when waited for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced: Option<bool>,
    /// Envoys in sync (only when waited for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoys: Option<usize>,
}

/// One endpoint in the functions listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    /// Where the replica listens.
    pub address: SocketAddr,
    /// Gets no new requests; requests already on it finish.
    pub draining: bool,
}

/// One function in the functions listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionView {
    /// Requests one replica serves at once.
    pub concurrency: u32,
    /// Route timeout for one request, in milliseconds.
    pub timeout_ms: u64,
    /// Its endpoints, by address.
    pub endpoints: Vec<EndpointView>,
    /// Its requests go through the gate even while it has a serving replica
    /// ([`Change::Gated`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gated: bool,
}

/// `GET /functions`: every function, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Functions {
    /// The model generation this listing is of.
    pub generation: u64,
    /// Whether the model is known to describe what runs (loaded from the saved state,
    /// or handed over by the orchestrator with `POST /confirm`). A control plane that
    /// started without a saved model holds Envoy's streams until it is.
    #[serde(default = "yes")]
    pub confirmed: bool,
    /// Functions by name.
    pub functions: BTreeMap<String, FunctionView>,
}

fn yes() -> bool {
    true
}

/// `GET /functions/{name}`: one function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionEntry {
    /// Function name.
    pub name: String,
    /// The model generation this entry is of.
    pub generation: u64,
    /// Its settings and endpoints.
    #[serde(flatten)]
    pub function: FunctionView,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn wait_query_reads_what_the_client_writes_and_refuses_nonsense() {
        let q = WaitQuery::until_acked(5000);
        assert_eq!(WaitQuery::parse(&query(&[("wait", "true"), ("timeout_ms", "5000")])), Ok(q));
        assert_eq!(WaitQuery::parse(&query(&[("wait", "")])).unwrap().wait, Some(true));
        assert_eq!(WaitQuery::parse(&query(&[("wait", "0")])).unwrap().wait, Some(false));
        assert_eq!(WaitQuery::parse(&query(&[])), Ok(WaitQuery::default()));
        let e = WaitQuery::parse(&query(&[("wait", "maybe")])).unwrap_err();
        assert_eq!(e.to_string(), r#"invalid query parameter wait="maybe": use true or false"#);
        assert!(WaitQuery::parse(&query(&[("timeout_ms", "0")])).is_err());
        assert!(WaitQuery::parse(&query(&[("timeout_ms", "60001")])).is_err());
        assert!(WaitQuery::parse(&query(&[("min_envoys", "-1")])).is_err());
    }

    #[test]
    fn listing_and_answers_keep_today_s_spelling() {
        let body = r#"{"generation":7,"confirmed":false,"functions":{"hello":{"concurrency":2,"timeout_ms":5000,"endpoints":[{"address":"[::1]:5000","draining":true}]}}}"#;
        let f: Functions = serde_json::from_str(body).unwrap();
        assert_eq!(f.functions["hello"].endpoints[0].address, "[::1]:5000".parse().unwrap());
        assert_eq!(serde_json::to_string(&f).unwrap(), body);
        // A listing from before `confirmed` existed reads as confirmed.
        let old: Functions = serde_json::from_str(&body.replace(r#""confirmed":false,"#, "")).unwrap();
        assert!(old.confirmed && !f.confirmed);
        let entry = FunctionEntry { name: "hello".into(), generation: 7, function: f.functions["hello"].clone() };
        let v = serde_json::to_value(&entry).unwrap();
        assert_eq!((v["name"].as_str(), v["concurrency"].as_u64()), (Some("hello"), Some(2)));
        assert_eq!(serde_json::to_string(&Applied { generation: 3, synced: None, envoys: None }).unwrap(), r#"{"generation":3}"#);
        assert_eq!(
            serde_json::to_string(&FunctionSettings { concurrency: Some(4), timeout_ms: None, auth: None }).unwrap(),
            r#"{"concurrency":4}"#
        );
        assert!(serde_json::from_str::<FunctionSettings>(r#"{"concurrancy":2}"#).is_err());
        let c: Vec<Change> = serde_json::from_str(r#"[{"op":"add_endpoint","function":"f","address":"127.0.0.1:1"}]"#).unwrap();
        assert_eq!(c, [Change::AddEndpoint { function: "f".into(), address: "127.0.0.1:1".into() }]);
    }
}
