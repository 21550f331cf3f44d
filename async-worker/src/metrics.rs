//! The worker's metrics, sent as statsd (`roost.async.*`, tagged by function) to the
//! statsd-listener, which serves them on the platform's `/metrics`.

use cadence::{CountedExt, Gauged};
use roost_common::statsd::{dropped, Statsd};
use tokio_util::sync::CancellationToken;

/// The metrics client.
#[derive(Debug, Clone)]
pub struct Metrics {
    statsd: Statsd,
}

impl Metrics {
    /// Metrics sent to `addr` (`host:port`), or dropped when `None`.
    pub fn new(addr: Option<&str>) -> std::io::Result<Metrics> {
        Ok(Metrics { statsd: Statsd::new("roost.async", addr)? })
    }

    /// Looks the statsd-listener's name up again until `shutdown`.
    pub async fn keep_looking_up(self, shutdown: CancellationToken) {
        self.statsd.keep_looking_up(shutdown).await
    }

    /// A submit and what became of it (`accepted`, `duplicate`, `full`, ...): counter
    /// `submitted`.
    pub fn submitted(&self, function: &str, outcome: &str) {
        let c = self.statsd.client();
        dropped(c.incr_with_tags("submitted").with_tag("function", function).with_tag("outcome", outcome).try_send());
    }

    /// A call finished (`done` or `failed`): counter `finished`.
    pub fn finished(&self, function: &str, state: &str) {
        let c = self.statsd.client();
        dropped(c.incr_with_tags("finished").with_tag("function", function).with_tag("state", state).try_send());
    }

    /// A call waits for a retry: counter `retries`.
    pub fn retry(&self, function: &str) {
        dropped(self.statsd.client().incr_with_tags("retries").with_tag("function", function).try_send());
    }

    /// A function's queue: calls in it (gauge `queued`) and the age of the oldest in
    /// milliseconds (gauge `oldest_ms`).
    pub fn queue(&self, function: &str, queued: u64, oldest_ms: u64) {
        let c = self.statsd.client();
        dropped(c.gauge_with_tags("queued", queued).with_tag("function", function).try_send());
        dropped(c.gauge_with_tags("oldest_ms", oldest_ms).with_tag("function", function).try_send());
    }
}
