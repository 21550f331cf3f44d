//! Callbacks: which `X-Callback-Url`s a caller may give (only hosts the operator put on
//! the allow-list), and the loop that posts each finished call's result there, with
//! retries, until it is taken or the retries run out.

use crate::plan::backoff_ms;
use crate::store::Store;
use roost_common::clock::now_ms;
use roost_common::wire::calls::{
    CallRecord, CallState, CallbackState, CALL_ID_HEADER, CALL_STATE_HEADER, FUNCTION_NAME_HEADER, FUNCTION_STATUS_HEADER,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Longest wait for a callback's answer.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before a callback's first retry, doubled each time.
const CALLBACK_BACKOFF_MS: u64 = 1_000;
/// How often the schedule is looked at when nothing wakes the loop.
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// Callbacks sent at once.
const AT_ONCE: isize = 32;

/// The hosts callbacks may go to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    /// `(host, port)`; no port: any.
    hosts: Vec<(String, Option<u16>)>,
}

/// Why a callback URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a URL.
    #[error("X-Callback-Url {url:?} is not a URL: {reason}; give an absolute http:// or https:// URL")]
    NotUrl {
        /// What was given.
        url: String,
        /// Why.
        reason: String,
    },
    /// Not http or https, or with a user name or password.
    #[error("X-Callback-Url {url:?} must be http:// or https:// without a user name or password")]
    Scheme {
        /// What was given.
        url: String,
    },
    /// The host is not on the list.
    #[error("X-Callback-Url's host {host:?} is not on the platform's allow-list of callback hosts ({allowed}); ask the operator to add it to ROOST_ASYNC_CALLBACK_HOSTS")]
    NotAllowed {
        /// The URL's `host:port`.
        host: String,
        /// The list, for the message.
        allowed: String,
    },
}

impl Allowed {
    /// The list as the operator wrote it: `host` or `host:port` each (blank ones skipped).
    pub fn parse(entries: &[String]) -> Result<Allowed, String> {
        let mut hosts = Vec::new();
        for entry in entries.iter().map(|e| e.trim().to_ascii_lowercase()).filter(|e| !e.is_empty()) {
            let parsed =
                reqwest::Url::parse(&format!("http://{entry}/")).map_err(|e| format!("{entry:?} is not a host or host:port: {e}"))?;
            let host = parsed.host_str().ok_or_else(|| format!("{entry:?} has no host"))?.to_string();
            let port = entry.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).and_then(|(_, p)| p.parse().ok());
            hosts.push((host, port));
        }
        Ok(Allowed { hosts })
    }

    /// The URL, if a callback may go there.
    pub fn check(&self, url: &str) -> Result<reqwest::Url, Refused> {
        let parsed = reqwest::Url::parse(url).map_err(|e| Refused::NotUrl { url: url.to_string(), reason: e.to_string() })?;
        if !matches!(parsed.scheme(), "http" | "https") || !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Refused::Scheme { url: url.to_string() });
        }
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = parsed.port_or_known_default();
        if self.hosts.iter().any(|(h, p)| *h == host && p.is_none_or(|p| Some(p) == port)) {
            return Ok(parsed);
        }
        let allowed = if self.hosts.is_empty() {
            "it is empty".to_string()
        } else {
            self.hosts.iter().map(|(h, p)| p.map_or(h.clone(), |p| format!("{h}:{p}"))).collect::<Vec<_>>().join(", ")
        };
        Err(Refused::NotAllowed { host: format!("{host}:{}", port.unwrap_or(0)), allowed })
    }
}

/// What the callback loop needs.
#[derive(Debug, Clone)]
pub struct Callbacks {
    /// Redis.
    pub store: Store,
    /// The client.
    pub http: reqwest::Client,
    /// The allow-list, checked again before each send (the list may have changed since the
    /// submit: a host taken off it is not called).
    pub allowed: Arc<Allowed>,
    /// Attempts after the first.
    pub retries: u32,
    /// How long finished records are kept, in seconds.
    pub keep_s: u64,
    /// Woken when a call with a callback finished.
    pub wake: Arc<Notify>,
}

impl Callbacks {
    /// Sends due callbacks until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.store.callbacks_due(now_ms(), AT_ONCE).await {
                Ok(due) => {
                    let sends = futures::future::join_all(due.iter().map(|id| self.send(id)));
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = sends => {}
                    }
                }
                Err(e) => warn!(error = %e, "cannot read the callbacks due from Redis; trying again"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    }

    /// Sends one call's callback and records how it went.
    async fn send(&self, id: &str) {
        let record = match self.store.record(id).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                let _ = self.store.callback_gone(id).await;
                return;
            }
            Err(e) => {
                debug!(call = id, error = %e, "cannot read a call's record for its callback");
                return;
            }
        };
        let Some(callback) = record.callback.clone() else {
            let _ = self.store.callback_gone(id).await;
            return;
        };
        let attempts = match callback.state {
            CallbackState::Pending { attempts, .. } => attempts + 1,
            _ => {
                let _ = self.store.callback_gone(id).await;
                return;
            }
        };
        let sent = match self.allowed.check(&callback.url) {
            Ok(url) => self.post(url, &record).await,
            Err(refused) => Err(refused.to_string()),
        };
        let mut record = record;
        let (state, later) = match sent {
            Ok(()) => (CallbackState::Delivered { attempts }, None),
            Err(error) if attempts > self.retries => (CallbackState::Failed { attempts, last_error: error }, None),
            Err(error) => {
                let at = now_ms() + backoff_ms(CALLBACK_BACKOFF_MS, attempts);
                (CallbackState::Pending { attempts, last_error: Some(error) }, Some(at))
            }
        };
        match &state {
            CallbackState::Delivered { .. } => debug!(call = id, attempts, "callback delivered"),
            CallbackState::Failed { last_error, .. } => info!(call = id, attempts, error = %last_error, "callback failed for good"),
            CallbackState::Pending { last_error, .. } => debug!(call = id, attempts, error = ?last_error, "callback failed; trying again"),
        }
        if let Some(c) = record.callback.as_mut() {
            c.state = state;
        }
        if let Err(e) = self.store.callback_tried(&record, self.keep_s, later).await {
            warn!(call = id, error = %e, "cannot record a callback's outcome; it may be sent again");
        }
    }

    /// Posts the call's result: the function's body and content type, and headers naming
    /// the call, the function, its status and the call's state.
    async fn post(&self, url: reqwest::Url, record: &CallRecord) -> Result<(), String> {
        let mut request = self
            .http
            .post(url)
            .timeout(CALLBACK_TIMEOUT)
            .header(CALL_ID_HEADER, &record.id)
            .header(FUNCTION_NAME_HEADER, &record.function)
            .header(CALL_STATE_HEADER, if record.state == CallState::Done { "done" } else { "failed" });
        if let Some(result) = &record.result {
            request = request.header(FUNCTION_STATUS_HEADER, result.status.to_string());
            if let Some((_, ct)) = result.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-type")) {
                request = request.header("content-type", ct);
            }
            request = request.body(result.body_bytes());
        } else if let Some(error) = &record.last_error {
            request = request.header("content-type", "application/json").body(serde_json::json!({ "error": error }).to_string());
        }
        let response = request.send().await.map_err(|e| roost_common::telemetry::causes(&e))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("the callback answered {}", response.status().as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(list: &[&str]) -> Allowed {
        Allowed::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn only_hosts_on_the_list_are_called() {
        let list = allowed(&["hooks.example.com", "127.0.0.1:9000"]);
        assert!(list.check("https://hooks.example.com/x?y=1").is_ok());
        assert!(list.check("http://HOOKS.example.com:8443/").is_ok(), "a host alone allows any port");
        assert!(list.check("http://127.0.0.1:9000/done").is_ok());
        let refused = list.check("http://127.0.0.1:9001/").unwrap_err();
        assert!(matches!(refused, Refused::NotAllowed { .. }), "{refused}");
        assert!(refused.to_string().contains("ROOST_ASYNC_CALLBACK_HOSTS"), "{refused}");
        assert!(matches!(list.check("http://169.254.169.254/latest"), Err(Refused::NotAllowed { .. })));
        assert!(matches!(list.check("http://user:pw@hooks.example.com/"), Err(Refused::Scheme { .. })));
        assert!(matches!(list.check("file:///etc/passwd"), Err(Refused::Scheme { .. })));
        assert!(matches!(list.check("not a url"), Err(Refused::NotUrl { .. })));
    }

    #[test]
    fn an_empty_list_refuses_every_callback() {
        let refused = allowed(&[]).check("http://127.0.0.1/").unwrap_err();
        assert!(refused.to_string().contains("it is empty"), "{refused}");
        assert!(Allowed::parse(&["bad host!".to_string()]).is_err());
    }
}
