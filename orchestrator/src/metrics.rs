//! The orchestrator's own metrics, sent as statsd (`roost.orchestrator.*`) with cadence,
//! over UDP to the statsd-listener ([`roost_common::statsd`]).

use crate::lifecycle::Metric;
use cadence::{CountedExt, Gauged, Timed};
use roost_common::statsd::{dropped, Statsd};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The metrics client.
#[derive(Debug, Clone)]
pub struct Metrics {
    statsd: Statsd,
}

impl Metrics {
    /// Metrics sent to `addr` (`host:port`) over UDP, or dropped when `addr` is `None`.
    /// A name that does not resolve yet is looked up again by [`Metrics::keep_looking_up`].
    pub fn new(addr: Option<&str>) -> std::io::Result<Metrics> {
        Ok(Metrics { statsd: Statsd::new("roost.orchestrator", addr)? })
    }

    /// Looks the statsd-listener's name up again until `shutdown`.
    pub async fn keep_looking_up(self, shutdown: CancellationToken) {
        self.statsd.keep_looking_up(shutdown).await
    }

    /// Sends `function`'s replicas ready and starting (gauges `replicas.ready` and
    /// `replicas.starting`).
    pub fn replicas(&self, function: &str, ready: usize, starting: usize) {
        let c = self.statsd.client();
        let sent = c
            .gauge_with_tags("replicas.ready", ready as u64)
            .with_tag("function", function)
            .try_send()
            .map(drop)
            .and(c.gauge_with_tags("replicas.starting", starting as u64).with_tag("function", function).try_send().map(drop));
        dropped(sent);
    }

    /// Sends how many of `function`'s requests the gate holds (gauge `held`).
    pub fn held(&self, function: &str, held: u64) {
        dropped(self.statsd.client().gauge_with_tags("held", held).with_tag("function", function).try_send());
    }

    /// Sends one metric of `function`. Metrics are best effort: a full socket buffer
    /// drops them (statsd over UDP), which is logged at debug level only.
    pub fn record(&self, function: &str, metric: &Metric) {
        let c = self.statsd.client();
        let sent = match metric {
            Metric::ColdStart(p) => {
                let phases = [
                    ("start", p.start_ms),
                    ("readiness", p.readiness_ms),
                    ("ack", p.ack_ms),
                    ("notice", p.notice_ms),
                    ("total", p.total_ms),
                ];
                let mut r = c.incr_with_tags("cold_starts").with_tag("function", function).try_send().map(drop);
                for (phase, v) in phases {
                    let key = format!("cold_start.{phase}");
                    let t = c.time_with_tags(&key, Duration::from_secs_f64(v.max(0.0) / 1000.0));
                    r = r.and(t.with_tag("function", function).try_send().map(drop));
                }
                r
            }
            Metric::Scale(up) => {
                let key = if *up { "scale.up" } else { "scale.down" };
                c.incr_with_tags(key).with_tag("function", function).try_send().map(drop)
            }
            Metric::Reap => c.incr_with_tags("reaps").with_tag("function", function).try_send().map(drop),
            Metric::StartFailure => c.incr_with_tags("failures.start").with_tag("function", function).try_send().map(drop),
            Metric::Crash => c.incr_with_tags("failures.crash").with_tag("function", function).try_send().map(drop),
        };
        dropped(sent);
    }
}
