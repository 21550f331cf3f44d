//! What Roost's parts write to and publish on Redis, besides the key names
//! ([`crate::keys`]): the ready notice, the wake and scale signals, the load hash the
//! statsd-listener writes, the replicas hash the orchestrator writes and the gates'
//! shares of the held count.
//!
//! The Lua gate (`gateway-lua/lua/roost/gate.lua`) publishes wakes and reads ready
//! notices by hand; it names the types here it follows.

use crate::naming::validate_function_name;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The message on [`crate::keys::READY_CHANNEL`]: the orchestrator publishes it when a
/// function becomes ready (its endpoint ACKed by every Envoy), stops being ready, or is
/// refused or no longer refused. The gate releases the requests it holds on `ready: true`,
/// answers them with the refusal when there is one, and forgets an earlier refusal on any
/// notice without one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyNotice {
    /// The function.
    pub function: String,
    /// Ready now, or not any more.
    pub ready: bool,
    /// Callers are answered at once with this instead of being held (and the same is in
    /// [`crate::keys::refusal`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
    /// With `ready: true`: requests the ready replicas serve at once (ready replicas times
    /// `target_concurrency`). The gate releases at most this many held requests to Envoy
    /// at a time, so a burst held while a function woke is spread over the replicas as
    /// they become ready instead of queueing in Envoy behind the first one. Absent: no
    /// limit (an older orchestrator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
}

impl ReadyNotice {
    /// The message as published.
    pub fn to_payload(&self) -> String {
        serde_json::to_string(self).expect("strings, numbers and bools always serialize")
    }
}

/// Why the gate answers a function's callers at once rather than waking it: the function is
/// invalid, its build failed, or its replicas fail to start and it is backing off. Stored
/// in [`crate::keys::refusal`] and carried by a [`ReadyNotice`]; the gate answers
/// `status` with `{"error", "function", "state", "reason", "request_id"}` and, when
/// `retry_after_s` is set, `Retry-After` (from the key, its time to live).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The HTTP status: 503 for an invalid function or a failed build (nothing to retry
    /// until the definition changes), 502 for replicas that fail to start.
    pub status: u16,
    /// The function's state as `/status` spells it (`invalid`, `failing`).
    pub state: String,
    /// One sentence: what is wrong and what to do.
    pub error: String,
    /// The details: the definition's problem, the tail of pip's output, the last lines a
    /// replica wrote before it exited.
    pub reason: String,
    /// Seconds until the function is tried again (a back-off); `None`: not before its
    /// definition or folder changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
}

impl Refusal {
    /// The JSON stored in [`crate::keys::refusal`].
    pub fn to_payload(&self) -> String {
        serde_json::to_string(self).expect("strings and numbers always serialize")
    }
}

/// The message on [`crate::keys::SCALE_CHANNEL`]: the statsd-listener saw a function's
/// requests queue or its replicas saturate. The orchestrator reads only `function`; the
/// rest says why, for whoever watches the channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleSignal {
    /// The function.
    pub function: String,
    /// Requests queued in Envoy.
    pub pending: f64,
    /// Requests in flight.
    pub in_flight: f64,
    /// Replicas serving, as the orchestrator last published.
    pub ready: u32,
    /// Requests one replica serves at once.
    pub target_concurrency: u32,
}

impl ScaleSignal {
    /// The message as published.
    pub fn to_payload(&self) -> String {
        serde_json::to_string(self).expect("a struct of numbers and a string always serializes")
    }
}

/// Time to live of one gate's share of [`crate::keys::held`] (and of the key), in
/// milliseconds: the gate renews its share at least every `ROOST_GATE_REPUBLISH_MS` (2 s
/// by default) while it holds requests.
pub const HELD_TTL_MS: u64 = 5_000;

/// One gate's share of [`crate::keys::held`]: the value of the hash field named by the
/// gate's id, `<count>:<expires_ms>`.
///
/// Why a hash of expiring shares: each gate counts only the requests it holds, and Redis
/// 7.0 has no expiry per hash field. So every share carries its own expiry (Unix
/// milliseconds on Redis's clock, `TIME`: the gates' and the orchestrator's clocks need
/// not agree) and readers sum only the unexpired ones ([`held_total`]); the gate's write
/// (one script: set or remove its field, renew the key's `PEXPIRE` to the same TTL, drop
/// expired fields, publish) keeps the key alive as long as the newest share, so the key
/// of a function no gate holds anything for goes by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldShare {
    /// Requests this gate holds for the function.
    pub count: u64,
    /// When the share stops counting unless renewed (Unix ms, Redis's clock).
    pub expires_ms: u64,
}

impl HeldShare {
    /// The field's value as stored.
    pub fn to_value(&self) -> String {
        format!("{}:{}", self.count, self.expires_ms)
    }

    /// Reads a field's value; `None` when it is not `<count>:<expires_ms>`.
    pub fn parse(value: &str) -> Option<HeldShare> {
        let (count, expires_ms) = value.trim().split_once(':')?;
        Some(HeldShare { count: count.parse().ok()?, expires_ms: expires_ms.parse().ok()? })
    }
}

/// The requests held for a function across every gate at `now_ms` (Redis's clock): the
/// sum of the shares in [`crate::keys::held`] (`HGETALL`) not expired yet. An unreadable
/// share counts as none.
pub fn held_total(shares: &HashMap<String, String>, now_ms: u64) -> u64 {
    shares.values().filter_map(|v| HeldShare::parse(v)).filter(|s| s.expires_ms >= now_ms).map(|s| s.count).fold(0, u64::saturating_add)
}

/// Unix milliseconds from Redis's `TIME` answer (seconds, microseconds).
pub fn redis_time_ms((secs, micros): (u64, u64)) -> u64 {
    secs.saturating_mul(1000).saturating_add(micros / 1000)
}

/// The gate's message on [`crate::keys::SCALE_CHANNEL`] when the number of requests it
/// holds for a function grows (written by hand in `gateway-lua/lua/roost/gate.lua`, by
/// the same script that writes its share, so atomically after it):
/// `{"function":"<f>","gate":"<id>","held":<n>}`, `held` being the sum over every gate's
/// unexpired share after the write ([`held_total`]), not this gate's own count.
///
/// The orchestrator reads the function, then the load, whose held count is that same
/// sum read from [`crate::keys::held`] at that moment (never older than the signal), so a
/// burst split over several gates is sized from all of it; `held` lets anyone else
/// watching the channel see the total, and `gate` which gate saw it grow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSignal {
    /// The function.
    pub function: String,
    /// The gate that published it (its `ROOST_GATE_ID`).
    pub gate: String,
    /// Requests every gate holds for it together, after this gate's write.
    pub held: u64,
}

/// Any JSON signal: only its function is read.
#[derive(Deserialize)]
struct Named {
    function: String,
}

/// The function a wake ([`crate::keys::WAKE_CHANNEL`]) or scale signal is for, if its
/// name is valid. A wake is the bare function name (what the gate publishes); a JSON
/// object with a `function` field (a [`ScaleSignal`], or a wake written by hand) works too.
pub fn function_of_signal(payload: &str) -> Option<String> {
    let payload = payload.trim();
    let name = if payload.starts_with('{') { serde_json::from_str::<Named>(payload).ok()?.function } else { payload.to_string() };
    validate_function_name(&name).ok()?;
    Some(name)
}

/// A number as the hashes store it: whole numbers without a fraction (`2`, not `2.0`).
pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

/// Field names of the load hash ([`crate::keys::load`]).
pub mod load_fields {
    /// Requests in flight in Envoy (`upstream_rq_active`).
    pub const IN_FLIGHT: &str = "in_flight";
    /// Requests queued in Envoy (`upstream_rq_pending_active`).
    pub const PENDING: &str = "pending";
    /// Unix time in milliseconds when the last request started (moves only when
    /// `upstream_rq_total` grows: idleness counts started requests).
    pub const LAST_REQUEST_MS: &str = "last_request_ms";
    /// Requests started per second over the last flush interval.
    pub const RPS: &str = "rps";
    /// Requests started since the statsd-listener started.
    pub const REQUESTS_TOTAL: &str = "requests_total";
    /// No-healthy-host events since the statsd-listener started.
    pub const NONE_HEALTHY_TOTAL: &str = "none_healthy_total";
    /// Unix time in milliseconds of this write.
    pub const UPDATED_MS: &str = "updated_ms";
}

/// The load hash ([`crate::keys::load`]): the statsd-listener writes it, the orchestrator
/// and `roost status` read it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadHash {
    /// Requests in flight.
    pub in_flight: f64,
    /// Requests queued in Envoy.
    pub pending: f64,
    /// Unix milliseconds of the last request start (0: none seen).
    pub last_request_ms: u64,
    /// Requests started per second over the last flush interval.
    pub rps: f64,
    /// Requests started, in total.
    pub requests_total: f64,
    /// No-healthy-host events, in total.
    pub none_healthy_total: f64,
    /// Unix milliseconds of the write.
    pub updated_ms: u64,
}

impl LoadHash {
    /// The fields and values to `HSET`.
    pub fn to_fields(&self) -> [(&'static str, String); 7] {
        use load_fields as f;
        [
            (f::IN_FLIGHT, fmt_num(self.in_flight)),
            (f::PENDING, fmt_num(self.pending)),
            (f::LAST_REQUEST_MS, self.last_request_ms.to_string()),
            (f::RPS, fmt_num(self.rps)),
            (f::REQUESTS_TOTAL, fmt_num(self.requests_total)),
            (f::NONE_HEALTHY_TOTAL, fmt_num(self.none_healthy_total)),
            (f::UPDATED_MS, self.updated_ms.to_string()),
        ]
    }

    /// Reads the hash (`HGETALL`); absent, unreadable or negative fields count as zero.
    pub fn from_fields(h: &HashMap<String, String>) -> LoadHash {
        use load_fields as f;
        let num = |k: &str| h.get(k).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite()).unwrap_or(0.0).max(0.0);
        LoadHash {
            in_flight: num(f::IN_FLIGHT),
            pending: num(f::PENDING),
            last_request_ms: num(f::LAST_REQUEST_MS) as u64,
            rps: num(f::RPS),
            requests_total: num(f::REQUESTS_TOTAL),
            none_healthy_total: num(f::NONE_HEALTHY_TOTAL),
            updated_ms: num(f::UPDATED_MS) as u64,
        }
    }
}

/// Field names of the replicas hash ([`crate::keys::replicas`]).
pub mod replica_fields {
    /// Replicas serving.
    pub const READY: &str = "ready";
    /// Requests one replica serves at once.
    pub const TARGET_CONCURRENCY: &str = "target_concurrency";
}

/// The replicas hash ([`crate::keys::replicas`]): the orchestrator writes it, the
/// statsd-listener reads it to judge saturation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicasHash {
    /// Replicas serving.
    pub ready: u32,
    /// Requests one replica serves at once.
    pub target_concurrency: u32,
}

impl ReplicasHash {
    /// The fields, in the order [`ReplicasHash::from_values`] takes them (for `HMGET`).
    pub const FIELDS: [&'static str; 2] = [replica_fields::READY, replica_fields::TARGET_CONCURRENCY];

    /// The fields and values to `HSET`.
    pub fn to_fields(&self) -> [(&'static str, u32); 2] {
        [(replica_fields::READY, self.ready), (replica_fields::TARGET_CONCURRENCY, self.target_concurrency)]
    }

    /// Reads the values of [`ReplicasHash::FIELDS`] (`HMGET`). An absent or unreadable
    /// value counts as 1: a function the orchestrator has not published yet is judged as
    /// one replica serving one request at a time.
    pub fn from_values(ready: Option<&str>, target_concurrency: Option<&str>) -> ReplicasHash {
        let num = |v: Option<&str>| v.and_then(|s| s.parse().ok()).unwrap_or(1);
        ReplicasHash { ready: num(ready), target_concurrency: num(target_concurrency) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_name_a_function() {
        assert_eq!(function_of_signal("hello"), Some("hello".into()));
        assert_eq!(function_of_signal(" hello\n"), Some("hello".into()));
        assert_eq!(function_of_signal(r#"{"function":"add","pending":3}"#), Some("add".into()));
        assert_eq!(function_of_signal("../etc"), None);
        assert_eq!(function_of_signal(r#"{"nope":1}"#), None);
        assert_eq!(function_of_signal(r#"{"function":3}"#), None);
        let scale = ScaleSignal { function: "add".into(), pending: 2.0, in_flight: 1.0, ready: 1, target_concurrency: 1 };
        assert_eq!(function_of_signal(&scale.to_payload()), Some("add".into()));
    }

    #[test]
    fn payloads_keep_today_s_spelling() {
        let n = ReadyNotice { function: "hello".into(), ready: true, refusal: None, capacity: None };
        assert_eq!(n.to_payload(), r#"{"function":"hello","ready":true}"#);
        let n = ReadyNotice { capacity: Some(3), ..n };
        assert_eq!(n.to_payload(), r#"{"function":"hello","ready":true,"capacity":3}"#);
        let held = HeldSignal { function: "hello".into(), gate: "gate-1".into(), held: 200 };
        assert_eq!(serde_json::to_string(&held).unwrap(), r#"{"function":"hello","gate":"gate-1","held":200}"#);
        assert_eq!(function_of_signal(r#"{"function":"hello","gate":"gate-1","held":200}"#), Some("hello".into()));
        let refusal = Refusal {
            status: 502,
            state: "failing".into(),
            error: "replicas of \"hello\" fail to start".into(),
            reason: "ModuleNotFoundError".into(),
            retry_after_s: Some(2),
        };
        let n = ReadyNotice { function: "hello".into(), ready: false, refusal: Some(refusal.clone()), capacity: None };
        let back: ReadyNotice = serde_json::from_str(&n.to_payload()).unwrap();
        assert_eq!(back, n);
        assert!(n.to_payload().contains(r#""refusal":{"status":502,"state":"failing""#), "{}", n.to_payload());
        let read: Refusal = serde_json::from_str(&refusal.to_payload()).unwrap();
        assert_eq!(read, refusal);
        let scale = ScaleSignal { function: "f".into(), pending: 3.0, in_flight: 2.0, ready: 1, target_concurrency: 4 };
        assert_eq!(scale.to_payload(), r#"{"function":"f","pending":3.0,"in_flight":2.0,"ready":1,"target_concurrency":4}"#);
    }

    #[test]
    fn load_hash_reads_back_what_it_wrote() {
        let load = LoadHash {
            in_flight: 3.0,
            pending: 2.0,
            last_request_ms: 1_700_000_000_000,
            rps: 1.5,
            requests_total: 9.0,
            none_healthy_total: 0.0,
            updated_ms: 1_700_000_000_001,
        };
        let fields: HashMap<String, String> = load.to_fields().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(fields["in_flight"], "3");
        assert_eq!(fields["rps"], "1.500");
        assert_eq!(LoadHash::from_fields(&fields), load);
        let mut odd = HashMap::new();
        odd.insert("pending".to_string(), "2.0".to_string());
        odd.insert("in_flight".to_string(), "-1".to_string());
        odd.insert("rps".to_string(), "NaN".to_string());
        assert_eq!(LoadHash::from_fields(&odd), LoadHash { pending: 2.0, ..LoadHash::default() });
    }

    #[test]
    fn replicas_hash_defaults_to_one() {
        assert_eq!(ReplicasHash::from_values(Some("3"), Some("8")), ReplicasHash { ready: 3, target_concurrency: 8 });
        assert_eq!(ReplicasHash::from_values(None, Some("x")), ReplicasHash { ready: 1, target_concurrency: 1 });
        assert_eq!(ReplicasHash { ready: 2, target_concurrency: 4 }.to_fields(), [("ready", 2), ("target_concurrency", 4)]);
    }

    #[test]
    fn held_shares_read_back_what_they_wrote() {
        let share = HeldShare { count: 40, expires_ms: 1_700_000_005_000 };
        assert_eq!(share.to_value(), "40:1700000005000");
        assert_eq!(HeldShare::parse(&share.to_value()), Some(share));
        for bad in ["40", "-1:5", "x:5", "4:", ":5", ""] {
            assert_eq!(HeldShare::parse(bad), None, "{bad:?}");
        }
        assert_eq!(redis_time_ms((1_700_000_000, 123_456)), 1_700_000_000_123);
    }

    #[test]
    fn the_held_total_sums_the_gates_unexpired_shares() {
        let now = 1_700_000_000_000u64;
        let shares = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>();
        let two = shares(&[("gate-a", "3:1700000004000"), ("gate-b", "5:1700000001000")]);
        assert_eq!(held_total(&two, now), 8, "two gates add up");
        assert_eq!(held_total(&two, now + 1_000), 8, "at its expiry a share still counts");
        assert_eq!(held_total(&two, now + 1_001), 3, "a gate that stopped renewing expires alone");
        assert_eq!(held_total(&two, now + 4_001), 0);
        assert_eq!(held_total(&HashMap::new(), now), 0, "no gate holds any");
        let odd = shares(&[("gate-a", "3:1700000004000"), ("old", "12"), ("junk", "lots:of")]);
        assert_eq!(held_total(&odd, now), 3, "an unreadable share counts as none");
        let huge = shares(&[("a", &format!("{}:{}", u64::MAX, u64::MAX)), ("b", "1:1700000004000")]);
        assert_eq!(held_total(&huge, now), u64::MAX, "saturates");
    }
}
