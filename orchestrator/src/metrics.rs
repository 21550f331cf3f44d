//! The orchestrator's own metrics, sent as statsd (`roost.orchestrator.*`) with cadence.

use crate::lifecycle::Metric;
use cadence::{CountedExt, Gauged, StatsdClient, Timed};
use std::sync::Arc;
use std::time::Duration;

/// The metrics client.
#[derive(Debug, Clone)]
pub struct Metrics {
    client: Arc<StatsdClient>,
}

impl Metrics {
    /// Metrics sent to `addr` over UDP, or dropped when `addr` is `None`.
    pub fn new(addr: Option<&str>) -> std::io::Result<Metrics> {
        let client = match addr {
            Some(addr) => {
                let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
                socket.set_nonblocking(true)?;
                let sink = cadence::UdpMetricSink::from(addr, socket).map_err(std::io::Error::other)?;
                StatsdClient::from_sink("roost.orchestrator", sink)
            }
            None => StatsdClient::from_sink("roost.orchestrator", cadence::NopMetricSink),
        };
        Ok(Metrics { client: Arc::new(client) })
    }

    /// Sends `function`'s replicas ready and starting (gauges `replicas.ready` and
    /// `replicas.starting`).
    pub fn replicas(&self, function: &str, ready: usize, starting: usize) {
        let c = &self.client;
        let sent = c
            .gauge_with_tags("replicas.ready", ready as u64)
            .with_tag("function", function)
            .try_send()
            .map(drop)
            .and(c.gauge_with_tags("replicas.starting", starting as u64).with_tag("function", function).try_send().map(drop));
        if let Err(e) = sent {
            tracing::debug!(error = %e, "a statsd metric was dropped");
        }
    }

    /// Sends how many of `function`'s requests the gate holds (gauge `held`).
    pub fn held(&self, function: &str, held: u64) {
        if let Err(e) = self.client.gauge_with_tags("held", held).with_tag("function", function).try_send() {
            tracing::debug!(error = %e, "a statsd metric was dropped");
        }
    }

    /// Sends one metric of `function`. Metrics are best effort: a full socket buffer
    /// drops them (statsd over UDP), which is logged at debug level only.
    pub fn record(&self, function: &str, metric: &Metric) {
        let c = &self.client;
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
        if let Err(e) = sent {
            tracing::debug!(error = %e, "a statsd metric was dropped");
        }
    }
}
