//! The control plane's desired state: functions, their routing settings and their
//! endpoints, changed only through validated, all-or-nothing [`Change`]s.

use roost_common::naming::validate_function_name;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Largest per-replica concurrency accepted (Envoy's per-host `max_connections`).
pub const MAX_CONCURRENCY: u32 = 10_000;
/// Longest request timeout accepted: one hour.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// Most endpoints one function may have.
pub const MAX_ENDPOINTS: usize = 1_000;

/// Default per-replica concurrency when a function is created without one.
pub const DEFAULT_CONCURRENCY: u32 = 1;
/// Default request timeout when a function is created without one.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// Everything Envoy is told, before it is turned into xDS resources.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    /// Functions by name.
    pub functions: BTreeMap<String, Function>,
}

/// One function's routing settings and endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Function {
    /// Requests one replica serves at once: Envoy's per-host `max_connections`, so extra
    /// requests queue inside Envoy where the statsd-listener sees them.
    pub concurrency: u32,
    /// Route timeout for one request, in milliseconds.
    pub timeout_ms: u64,
    /// Endpoints by address.
    pub endpoints: BTreeMap<SocketAddr, Endpoint>,
    /// Its first replica is starting ([`Change::Waking`]): it is in Envoy before it has
    /// an endpoint. Cleared by its first endpoint.
    #[serde(default)]
    pub waking: bool,
    /// The bearer token every call must carry (`auth: token`); none: public.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// The public entry sends its requests through the gate even while it has a serving
    /// replica ([`Change::Gated`]; set by [`Change::Waking`] too).
    #[serde(default)]
    pub gated: bool,
}

/// One replica's address as Envoy sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// A draining endpoint gets no new requests; requests already on it finish.
    pub draining: bool,
}

/// The admin API's change types live with the rest of its wire, in `roost_common`.
pub use roost_common::wire::admin::{Change, FunctionSettings};

/// Why a change was refused. Nothing of a refused list of changes is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The function name is not a safe URL path segment.
    #[error("{0}")]
    InvalidName(#[from] roost_common::naming::InvalidName),
    /// The function does not exist.
    #[error("function {0:?} does not exist: create it first with PUT /functions/{0}")]
    UnknownFunction(String),
    /// The endpoint does not exist.
    #[error("function {function:?} has no endpoint {address}: GET /functions/{function} lists its endpoints")]
    UnknownEndpoint {
        /// Function name.
        function: String,
        /// The address asked for.
        address: String,
    },
    /// The address is not `ip:port`.
    #[error("invalid endpoint address {0:?}: give an IP address and a port, like 172.18.0.5:5000 or [::1]:5000 (Envoy cannot resolve host names in endpoints)")]
    InvalidAddress(String),
    /// A setting is out of range.
    #[error("invalid {field} {value} for function {function:?}: {allowed}")]
    OutOfRange {
        /// Function name.
        function: String,
        /// Field name.
        field: &'static str,
        /// The refused value.
        value: u64,
        /// What is allowed.
        allowed: String,
    },
    /// Too many endpoints.
    #[error("function {function:?} already has {MAX_ENDPOINTS} endpoints, the most allowed")]
    TooManyEndpoints {
        /// Function name.
        function: String,
    },
    /// A call token that a header cannot carry.
    #[error("the auth token of function {0:?} must be 16 or more printable ASCII characters without spaces")]
    InvalidAuth(String),
}

impl ModelError {
    /// Whether the error is about something that does not exist (HTTP 404) rather than
    /// bad input (HTTP 400).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ModelError::UnknownFunction(_) | ModelError::UnknownEndpoint { .. })
    }
}

/// Parses an endpoint address, `ip:port` with a port above 0.
pub fn parse_address(address: &str) -> Result<SocketAddr, ModelError> {
    match address.trim().parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(a),
        _ => Err(ModelError::InvalidAddress(address.to_string())),
    }
}

impl Model {
    /// Applies `changes` in order, all of them or none: on the first error the model is
    /// left exactly as it was. Only the functions the changes name are copied aside, so
    /// a change costs the same with ten functions or ten thousand.
    pub fn apply_all(&mut self, changes: &[Change]) -> Result<(), ModelError> {
        let mut before: BTreeMap<&str, Option<Function>> = BTreeMap::new();
        for change in changes {
            let name = change.function();
            before.entry(name).or_insert_with(|| self.functions.get(name).cloned());
            if let Err(e) = self.apply(change) {
                for (name, f) in before {
                    match f {
                        Some(f) => self.functions.insert(name.to_string(), f),
                        None => self.functions.remove(name),
                    };
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Applies one change; on error the model is unchanged.
    pub fn apply(&mut self, change: &Change) -> Result<(), ModelError> {
        match change {
            Change::PutFunction { function, concurrency, timeout_ms, auth } => {
                validate_function_name(function)?;
                if auth.as_ref().is_some_and(|t| t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic())) {
                    return Err(ModelError::InvalidAuth(function.clone()));
                }
                let current = self.functions.get(function);
                let concurrency = concurrency.or(current.map(|f| f.concurrency));
                let timeout_ms = timeout_ms.or(current.map(|f| f.timeout_ms));
                let concurrency = concurrency.unwrap_or(DEFAULT_CONCURRENCY);
                let timeout_ms = timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
                check_range(function, "concurrency", concurrency.into(), 1, MAX_CONCURRENCY.into())?;
                check_range(function, "timeout_ms", timeout_ms, 1, MAX_TIMEOUT_MS)?;
                let f = self.functions.entry(function.clone()).or_insert_with(|| Function {
                    concurrency,
                    timeout_ms,
                    endpoints: BTreeMap::new(),
                    waking: false,
                    auth: None,
                    gated: false,
                });
                f.concurrency = concurrency;
                f.timeout_ms = timeout_ms;
                f.auth = auth.clone();
            }
            Change::Waking { function } => {
                // One with an endpoint is in Envoy already, and a late notice must not
                // keep it there after its last endpoint.
                let f = self.function_mut(function)?;
                f.waking = f.endpoints.is_empty();
                f.gated |= f.waking;
            }
            Change::Gated { function, gated } => {
                self.function_mut(function)?.gated = *gated;
            }
            Change::RemoveFunction { function } => {
                self.functions.remove(function).ok_or_else(|| ModelError::UnknownFunction(function.clone()))?;
            }
            Change::AddEndpoint { function, address } => {
                let addr = parse_address(address)?;
                let f = self.function_mut(function)?;
                if !f.endpoints.contains_key(&addr) && f.endpoints.len() >= MAX_ENDPOINTS {
                    return Err(ModelError::TooManyEndpoints { function: function.clone() });
                }
                f.endpoints.insert(addr, Endpoint { draining: false });
                f.waking = false;
            }
            Change::DrainEndpoint { function, address } => {
                self.endpoint_mut(function, address)?.draining = true;
            }
            Change::RemoveEndpoint { function, address } => {
                let addr = parse_address(address)?;
                let f = self.function_mut(function)?;
                f.endpoints
                    .remove(&addr)
                    .ok_or_else(|| ModelError::UnknownEndpoint { function: function.clone(), address: addr.to_string() })?;
            }
        }
        Ok(())
    }

    fn function_mut(&mut self, function: &str) -> Result<&mut Function, ModelError> {
        self.functions.get_mut(function).ok_or_else(|| ModelError::UnknownFunction(function.to_string()))
    }

    fn endpoint_mut(&mut self, function: &str, address: &str) -> Result<&mut Endpoint, ModelError> {
        let addr = parse_address(address)?;
        self.function_mut(function)?
            .endpoints
            .get_mut(&addr)
            .ok_or_else(|| ModelError::UnknownEndpoint { function: function.to_string(), address: addr.to_string() })
    }
}

fn check_range(function: &str, field: &'static str, value: u64, min: u64, max: u64) -> Result<(), ModelError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ModelError::OutOfRange { function: function.to_string(), field, value, allowed: format!("use {min} to {max}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(name: &str) -> Change {
        Change::PutFunction { function: name.into(), concurrency: None, timeout_ms: None, auth: None }
    }

    fn add(name: &str, addr: &str) -> Change {
        Change::AddEndpoint { function: name.into(), address: addr.into() }
    }

    #[test]
    fn put_creates_with_defaults_and_update_keeps_endpoints() {
        let mut m = Model::default();
        m.apply_all(&[put("hello"), add("hello", "127.0.0.1:5000")]).unwrap();
        let f = &m.functions["hello"];
        assert_eq!((f.concurrency, f.timeout_ms), (DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_MS));
        m.apply(&Change::PutFunction { function: "hello".into(), concurrency: Some(4), timeout_ms: None, auth: None }).unwrap();
        let f = &m.functions["hello"];
        assert_eq!((f.concurrency, f.timeout_ms, f.endpoints.len()), (4, DEFAULT_TIMEOUT_MS, 1));
    }

    #[test]
    fn a_failing_list_applies_nothing() {
        let mut m = Model::default();
        let before = m.clone();
        let err = m.apply_all(&[put("hello"), add("hello", "not-an-ip:80")]).unwrap_err();
        assert!(matches!(err, ModelError::InvalidAddress(_)));
        assert_eq!(m, before);
    }

    #[test]
    fn rejects_bad_input_with_actionable_errors() {
        let mut m = Model::default();
        let e = m.apply(&put("Hello")).unwrap_err();
        assert!(e.to_string().contains("invalid function name"));
        let e = m.apply(&add("ghost", "127.0.0.1:1")).unwrap_err();
        assert!(e.is_not_found() && e.to_string().contains("PUT /functions/ghost"));
        m.apply(&put("f")).unwrap();
        for bad in ["127.0.0.1", "127.0.0.1:0", "localhost:80", "", "1.2.3.4:99999"] {
            assert!(matches!(m.apply(&add("f", bad)), Err(ModelError::InvalidAddress(_))), "{bad}");
        }
        let e = m.apply(&Change::PutFunction { function: "f".into(), concurrency: Some(0), timeout_ms: None, auth: None }).unwrap_err();
        assert!(e.to_string().contains("use 1 to 10000"), "{e}");
        let e = m.apply(&Change::RemoveEndpoint { function: "f".into(), address: "127.0.0.1:9".into() }).unwrap_err();
        assert!(e.is_not_found());
    }

    #[test]
    fn drain_then_add_brings_endpoint_back() {
        let mut m = Model::default();
        m.apply_all(&[put("f"), add("f", "127.0.0.1:5000")]).unwrap();
        m.apply(&Change::DrainEndpoint { function: "f".into(), address: "127.0.0.1:5000".into() }).unwrap();
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert!(m.functions["f"].endpoints[&a].draining);
        m.apply(&add("f", "127.0.0.1:5000")).unwrap();
        assert!(!m.functions["f"].endpoints[&a].draining);
    }

    #[test]
    fn changes_parse_from_json() {
        let c: Vec<Change> = serde_json::from_str(
            r#"[{"op":"put_function","function":"a","concurrency":2},
                {"op":"add_endpoint","function":"a","address":"10.0.0.1:80"}]"#,
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        assert!(serde_json::from_str::<Change>(r#"{"op":"put_function","function":"a","bogus":1}"#).is_err());
    }
}

#[cfg(test)]
mod persistence_tests {
    use super::*;

    #[test]
    fn model_round_trips_through_json() {
        let mut m = Model::default();
        m.apply_all(&[
            Change::PutFunction { function: "f".into(), concurrency: Some(2), timeout_ms: Some(10), auth: None },
            Change::AddEndpoint { function: "f".into(), address: "[::1]:5000".into() },
            Change::AddEndpoint { function: "f".into(), address: "10.0.0.1:80".into() },
        ])
        .unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Model>(&json).unwrap(), m);
    }
}
