//! One delivery attempt: the stored request sent through the platform's public entry, as
//! any caller's would be (so a sleeping function wakes, its cap and scaling apply), and
//! its answer read.

use crate::plan::Attempt;
use roost_common::telemetry::causes;
use roost_common::wire::calls::{CallResult, QueuedCall, CALLBACK_HEADER, CALL_ID_HEADER, IDEMPOTENCY_HEADER};
use std::time::Duration;

/// Headers not passed on: those of one hop, and the worker's own.
const NOT_PASSED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "expect",
    IDEMPOTENCY_HEADER,
    CALLBACK_HEADER,
    CALL_ID_HEADER,
];

/// Whether a request header is kept with a queued call.
pub fn kept(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    !NOT_PASSED.contains(&name.as_str()) && !name.starts_with("x-envoy-")
}

/// What one attempt gave: how it ended, and the function's answer when there was one.
#[derive(Debug)]
pub struct Delivered {
    /// How it ended.
    pub attempt: Attempt,
    /// The answer (absent when none came, or its body was over `max_body`).
    pub result: Option<CallResult>,
    /// Why an answer that came is not kept.
    pub note: Option<String>,
}

/// Sends `call` to `function` through `public` (the platform's entry), waiting at most
/// `timeout`; an answer's body over `max_body` bytes is not kept.
pub async fn deliver(
    http: &reqwest::Client,
    public: &reqwest::Url,
    function: &str,
    call: &QueuedCall,
    timeout: Duration,
    max_body: u64,
) -> Delivered {
    let url = match public.join(&format!("/{function}{}", call.path)) {
        Ok(url) => url,
        Err(e) => {
            return Delivered { attempt: Attempt::Answered(400), result: None, note: Some(format!("the call's path is not valid: {e}")) }
        }
    };
    let method = reqwest::Method::from_bytes(call.method.as_bytes()).unwrap_or(reqwest::Method::POST);
    let mut request = http.request(method, url).timeout(timeout).body(call.body.clone());
    for (name, value) in call.headers.iter().filter(|(n, _)| kept(n)) {
        request = request.header(name, value);
    }
    request = request.header(CALL_ID_HEADER, &call.id);
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) if e.is_timeout() => return Delivered { attempt: Attempt::TimedOut, result: None, note: None },
        Err(e) => return Delivered { attempt: Attempt::Unreachable(causes(&e)), result: None, note: None },
    };
    let status = response.status().as_u16();
    let headers = response.headers().iter().map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    if response.content_length().is_some_and(|n| n > max_body) {
        return Delivered { attempt: Attempt::Answered(status), result: None, note: Some(too_large(max_body)) };
    }
    match read_capped(response, max_body).await {
        Ok(Some(body)) => {
            Delivered { attempt: Attempt::Answered(status), result: Some(CallResult::new(status, headers, body)), note: None }
        }
        Ok(None) => Delivered { attempt: Attempt::Answered(status), result: None, note: Some(too_large(max_body)) },
        Err(e) if e.is_timeout() => Delivered { attempt: Attempt::TimedOut, result: None, note: None },
        Err(e) => Delivered { attempt: Attempt::Unreachable(causes(&e)), result: None, note: None },
    }
}

fn too_large(max_body: u64) -> String {
    format!("the answer's body is over {max_body} bytes (ROOST_GATE_MAX_BODY) and is not kept")
}

/// The body, or `None` once it grows past `max` bytes.
async fn read_capped(mut response: reqwest::Response, max: u64) -> reqwest::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() as u64 + chunk.len() as u64 > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_headers_and_the_worker_s_own_are_not_passed_on() {
        for name in
            ["Connection", "transfer-encoding", "Host", "content-length", "X-Idempotency-Key", "x-callback-url", "x-envoy-original-path"]
        {
            assert!(!kept(name), "{name}");
        }
        for name in ["content-type", "authorization", "x-request-id", "x-custom"] {
            assert!(kept(name), "{name}");
        }
    }
}
