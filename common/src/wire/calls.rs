//! Asynchronous calls (`/async/<function>`): what the async worker answers on the public
//! port, what it keeps in Redis (the queued request, the call's record, dead letters) and
//! the settings the orchestrator publishes for it. Key names are in [`crate::keys`].

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Submit path prefix: `/async/<function>[/<path>]`.
pub const SUBMIT_PREFIX: &str = "/async";
/// The OpenFaaS spelling of [`SUBMIT_PREFIX`]: `/async-function/<function>[/<path>]`.
pub const OPENFAAS_SUBMIT_PREFIX: &str = "/async-function";
/// A call's status: `GET /async/calls/<id>`.
pub const STATUS_PREFIX: &str = "/async/calls";
/// `GET /system/async/calls[?function=<f>&failed=true]`: recent calls, behind the API token.
pub const LIST_PATH: &str = "/system/async/calls";

/// Header: a repeated submit with the same key (per function) answers the first call's id.
pub const IDEMPOTENCY_HEADER: &str = "x-idempotency-key";
/// Header: where the call's result is sent once it is done or failed.
pub const CALLBACK_HEADER: &str = "x-callback-url";
/// Header on the 202, on a delivery to the function and on a callback: the call's id.
pub const CALL_ID_HEADER: &str = "x-call-id";
/// Header on a callback: the function's HTTP status (absent when it never answered).
pub const FUNCTION_STATUS_HEADER: &str = "x-function-status";
/// Header on a callback: the function's name.
pub const FUNCTION_NAME_HEADER: &str = "x-function-name";
/// Header on a callback: `done` or `failed`.
pub const CALL_STATE_HEADER: &str = "x-call-state";

/// The consumer group every worker reads the queues in.
pub const GROUP: &str = "workers";
/// Time to live of [`crate::keys::backlog`]: the worker renews it every second.
pub const BACKLOG_TTL_MS: u64 = 5_000;
/// How long an idempotency key maps to its call, in seconds (a day).
pub const IDEMPOTENCY_TTL_S: u64 = 86_400;
/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;
/// Dead letters kept per function.
pub const DEAD_LETTERS_KEPT: isize = 10_000;
/// Calls listed by `roost calls` at most (the newest).
pub const RECENT_KEPT: isize = 10_000;

/// What the orchestrator publishes for each declared function ([`crate::keys::async_settings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsyncSettings {
    /// Calls delivered at once.
    pub concurrency: u32,
    /// Attempts after the first.
    pub retries: u32,
    /// Wait before the first retry, in milliseconds (doubled each time).
    pub backoff_ms: u64,
    /// Calls waiting at most.
    pub queue: u32,
    /// Longest one delivery may take, in milliseconds: the gate's hold while the function
    /// wakes and the function's own timeout.
    pub timeout_ms: u64,
}

impl AsyncSettings {
    /// A function's settings, from its definition.
    pub fn of(spec: &crate::spec::FunctionSpec) -> AsyncSettings {
        Self::from_parts(&spec.async_calls, spec.readiness_timeout, spec.limits.timeout)
    }

    /// For a declared function whose settings Redis lost: the defaults of a function
    /// declared with none.
    pub fn fallback() -> AsyncSettings {
        let calls = crate::spec::AsyncCalls::defaults(&crate::spec::Scaling::default());
        Self::from_parts(&calls, crate::spec::DEFAULT_READINESS_TIMEOUT, crate::spec::DEFAULT_TIMEOUT)
    }

    /// `calls` of a function with this readiness timeout and request timeout: a delivery
    /// may take the gate's hold while it wakes and then the function's own timeout.
    fn from_parts(calls: &crate::spec::AsyncCalls, readiness_timeout: std::time::Duration, timeout: std::time::Duration) -> AsyncSettings {
        AsyncSettings {
            concurrency: calls.concurrency,
            retries: calls.retries,
            backoff_ms: calls.backoff.as_millis() as u64,
            queue: calls.queue,
            timeout_ms: (crate::spec::hold(readiness_timeout) + timeout).as_millis() as u64,
        }
    }
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// Waiting for delivery (or for its next attempt).
    Queued,
    /// Being delivered.
    Running,
    /// The function answered (2xx or 3xx).
    Done,
    /// Retries ran out, or the answer was final (a 4xx): a dead letter.
    Failed,
}

impl CallState {
    /// Done or failed: nothing more happens to the call but its callback.
    pub fn finished(self) -> bool {
        matches!(self, CallState::Done | CallState::Failed)
    }
}

/// The function's answer to a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallResult {
    /// Its HTTP status.
    pub status: u16,
    /// Its headers, in order.
    pub headers: Vec<(String, String)>,
    /// Its body when it is UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Its body in base64 when it is not UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

impl CallResult {
    /// The answer, its body as text when it is text.
    pub fn new(status: u16, headers: Vec<(String, String)>, body: Vec<u8>) -> CallResult {
        match String::from_utf8(body) {
            Ok(text) => CallResult { status, headers, body: Some(text), body_base64: None },
            Err(e) => {
                use base64::Engine;
                let encoded = base64::engine::general_purpose::STANDARD.encode(e.into_bytes());
                CallResult { status, headers, body: None, body_base64: Some(encoded) }
            }
        }
    }

    /// The body's bytes.
    pub fn body_bytes(&self) -> Vec<u8> {
        use base64::Engine;
        match (&self.body, &self.body_base64) {
            (Some(text), _) => text.clone().into_bytes(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }
}

/// Where a call's callback is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum CallbackState {
    /// Not sent yet (or to be sent again).
    Pending {
        /// Attempts so far.
        attempts: u32,
        /// Why the last attempt failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_error: Option<String>,
    },
    /// The callback answered 2xx.
    Delivered {
        /// Attempts it took.
        attempts: u32,
    },
    /// Every attempt failed.
    Failed {
        /// Attempts made.
        attempts: u32,
        /// Why the last one failed.
        last_error: String,
    },
}

/// A callback: where and how far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Callback {
    /// The `X-Callback-Url` given.
    pub url: String,
    /// How far it is.
    #[serde(flatten)]
    pub state: CallbackState,
}

/// One call's record ([`crate::keys::async_call`]); `GET /async/calls/<id>` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// The call's id.
    pub id: String,
    /// The function called.
    pub function: String,
    /// Where it is.
    pub state: CallState,
    /// Deliveries started so far.
    pub attempts: u32,
    /// When it was accepted (Unix milliseconds).
    pub created_ms: u64,
    /// When its state last changed (Unix milliseconds).
    pub updated_ms: u64,
    /// When the next attempt is due, while it waits for a retry (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<u64>,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The function's answer (done, and failed with a final answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CallResult>,
    /// The callback, if one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<Callback>,
}

impl CallRecord {
    /// A call just accepted.
    pub fn queued(id: &str, function: &str, now_ms: u64, callback: Option<String>) -> CallRecord {
        CallRecord {
            id: id.to_string(),
            function: function.to_string(),
            state: CallState::Queued,
            attempts: 0,
            created_ms: now_ms,
            updated_ms: now_ms,
            next_attempt_ms: None,
            last_error: None,
            result: None,
            callback: callback.map(|url| Callback { url, state: CallbackState::Pending { attempts: 0, last_error: None } }),
        }
    }

    /// The record as stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a call record always serializes")
    }
}

/// `202 Accepted` to a submit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The call's id.
    pub id: String,
    /// The function called.
    pub function: String,
    /// Where its status is, relative to the platform's URL.
    pub status_url: String,
    /// True when an earlier submit with the same `X-Idempotency-Key` made the call.
    pub duplicate: bool,
}

/// A failed call in a function's dead-letter list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The call's id.
    pub id: String,
    /// The function.
    pub function: String,
    /// Attempts made.
    pub attempts: u32,
    /// Why it failed.
    pub error: String,
    /// When (Unix milliseconds).
    pub failed_ms: u64,
}

/// `GET /system/async/calls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallList {
    /// The calls, newest first (those whose record is gone are left out).
    pub calls: Vec<CallRecord>,
}

/// One queued call as a stream entry ([`crate::keys::async_queue`]): the request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedCall {
    /// The call's id.
    pub id: String,
    /// The request's method.
    pub method: String,
    /// The path after the function's name, with the query (`/` at least).
    pub path: String,
    /// The request's headers, in order.
    pub headers: Vec<(String, String)>,
    /// The request's body.
    pub body: Vec<u8>,
}

impl QueuedCall {
    /// The entry's fields, as XADD takes them.
    pub fn to_fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        let headers = serde_json::to_vec(&self.headers).expect("string pairs always serialize");
        vec![
            ("id", self.id.clone().into_bytes()),
            ("method", self.method.clone().into_bytes()),
            ("path", self.path.clone().into_bytes()),
            ("headers", headers),
            ("body", self.body.clone()),
        ]
    }

    /// Reads an entry's fields; `None` when one is missing or malformed.
    pub fn from_fields(mut fields: HashMap<String, Vec<u8>>) -> Option<QueuedCall> {
        let mut text = |name: &str| fields.remove(name).and_then(|v| String::from_utf8(v).ok());
        let (id, method, path) = (text("id")?, text("method")?, text("path")?);
        let headers = serde_json::from_str(&text("headers")?).ok()?;
        Some(QueuedCall { id, method, path, headers, body: fields.remove("body").unwrap_or_default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_may_take_the_gate_s_hold_and_the_function_s_timeout() {
        let defs = crate::spec::parse(
            "usable-functions:\n  f:\n    version: 1\n    runtime: {kind: image, image: x}\n    readiness: {timeout: 5s}\n    limits: {timeout: 2s}\n",
        )
        .unwrap();
        // 5 s readiness + 10 s for the start and registration, then the 2 s call.
        assert_eq!(AsyncSettings::of(&defs["f"]).timeout_ms, 17_000);
        assert_eq!(AsyncSettings::fallback().timeout_ms, 70_000, "30 s readiness + 10 s, then 30 s");
        assert_eq!(
            AsyncSettings::fallback().concurrency,
            AsyncSettings::of(
                &crate::spec::parse("usable-functions:\n  g: {version: 1, runtime: {kind: image, image: x}}\n").unwrap()["g"]
            )
            .concurrency
        );
    }

    #[test]
    fn a_queued_call_reads_back_as_written() {
        let call = QueuedCall {
            id: "c1".into(),
            method: "POST".into(),
            path: "/x?a=1".into(),
            headers: vec![("content-type".into(), "application/octet-stream".into())],
            body: vec![0, 159, 146, 150],
        };
        let fields = call.to_fields().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(QueuedCall::from_fields(fields), Some(call));
        assert_eq!(QueuedCall::from_fields(HashMap::new()), None);
    }

    #[test]
    fn a_result_keeps_text_as_text_and_bytes_as_base64() {
        let text = CallResult::new(200, vec![], b"hi".to_vec());
        assert_eq!((text.body.as_deref(), text.body_base64.as_deref()), (Some("hi"), None));
        let bytes = CallResult::new(200, vec![], vec![0xff, 0x00]);
        assert_eq!(bytes.body, None);
        assert_eq!(bytes.body_bytes(), vec![0xff, 0x00]);
    }

    #[test]
    fn a_record_round_trips_through_json() {
        let mut record = CallRecord::queued("c1", "hello", 5, Some("http://hook/x".into()));
        record.result = Some(CallResult::new(201, vec![("a".into(), "b".into())], b"ok".to_vec()));
        let back: CallRecord = serde_json::from_str(&record.to_json()).unwrap();
        assert_eq!(back, record);
        assert!(record.to_json().contains(r#""state":"pending""#), "{}", record.to_json());
    }
}
