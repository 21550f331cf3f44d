//! What every function task shares: the runtime, the control plane, Redis, Envoy's
//! admin API, metrics and timing settings.

use crate::control_plane::ControlPlane;
use crate::envoy_admin::EnvoyAdmin;
use crate::function::Phases;
use crate::redis_io::RedisIo;
use crate::runtime::Runtime;
use cadence::{CountedExt, StatsdClient, Timed};
use std::sync::Arc;
use std::time::Duration;

/// Timing settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Readiness probe interval.
    pub probe_interval: Duration,
    /// Longest wait for a replica's readiness.
    pub ready_timeout: Duration,
    /// Time a stopping replica gets between SIGTERM and the hard kill.
    pub stop_grace: Duration,
}

/// The shared context.
pub struct Ctx {
    /// Where replicas run.
    pub runtime: Arc<dyn Runtime>,
    /// The control plane's admin API.
    pub cp: ControlPlane,
    /// Redis.
    pub redis: RedisIo,
    /// Envoy's admin API, for drains.
    pub envoy: EnvoyAdmin,
    /// Metrics.
    pub metrics: Metrics,
    /// Timings.
    pub settings: Settings,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("runtime", &self.runtime.kind()).field("settings", &self.settings).finish()
    }
}

/// The orchestrator's own metrics, sent as statsd (`roost.orchestrator.*`) with cadence.
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

    /// A completed cold start and its phases.
    pub fn cold_start(&self, function: &str, p: &Phases) {
        let c = &self.client;
        let _ = c.incr_with_tags("cold_starts").with_tag("function", function).try_send();
        for (phase, v) in [("start", p.start_ms), ("readiness", p.readiness_ms), ("ack", p.ack_ms), ("notice", p.notice_ms), ("total", p.total_ms)] {
            let _ = c.time_with_tags(&format!("cold_start.{phase}"), Duration::from_secs_f64(v / 1000.0))
                .with_tag("function", function)
                .try_send();
        }
    }

    /// A scale event, `up` or `down`.
    pub fn scale(&self, function: &str, direction: &str) {
        let _ = self.client.incr_with_tags(&format!("scale.{direction}")).with_tag("function", function).try_send();
    }

    /// A function scaled to zero.
    pub fn reap(&self, function: &str) {
        let _ = self.client.incr_with_tags("reaps").with_tag("function", function).try_send();
    }

    /// A failure (`start`, `crash`).
    pub fn failure(&self, function: &str, kind: &str) {
        let _ = self.client.incr_with_tags(&format!("failures.{kind}")).with_tag("function", function).try_send();
    }
}
