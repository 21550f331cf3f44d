//! The orchestrator's own metrics, sent as statsd (`roost.orchestrator.*`) with cadence,
//! over UDP to the statsd-listener, whose name is looked up again every
//! [`LOOKUP_EVERY`] (restarted, it may come back on another address).

use crate::lifecycle::Metric;
use cadence::{CountedExt, Gauged, StatsdClient, Timed};
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the statsd-listener's name is looked up again.
pub const LOOKUP_EVERY: Duration = Duration::from_secs(5);

/// The metrics client.
#[derive(Debug, Clone)]
pub struct Metrics {
    client: Arc<StatsdClient>,
    target: Option<Arc<Target>>,
}

/// Where the metrics go: `host:port`, and the address it was last found at.
#[derive(Debug)]
struct Target {
    name: String,
    socket: UdpSocket,
    addr: RwLock<Option<SocketAddr>>,
}

/// cadence's sink: one datagram per metric to the address last found.
#[derive(Debug)]
struct Sink(Arc<Target>);

impl cadence::MetricSink for Sink {
    fn emit(&self, metric: &str) -> std::io::Result<usize> {
        let addr = *self.0.addr.read().unwrap_or_else(|e| e.into_inner());
        match addr {
            Some(addr) => self.0.socket.send_to(metric.as_bytes(), addr),
            None => Err(std::io::Error::other(format!("{} not found yet", self.0.name))),
        }
    }
}

impl Metrics {
    /// Metrics sent to `addr` (`host:port`) over UDP, or dropped when `addr` is `None`.
    /// A name that does not resolve yet is looked up again by [`Metrics::keep_looking_up`].
    pub fn new(addr: Option<&str>) -> std::io::Result<Metrics> {
        let Some(name) = addr else {
            return Ok(Metrics { client: Arc::new(StatsdClient::from_sink("roost.orchestrator", cadence::NopMetricSink)), target: None });
        };
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_nonblocking(true)?;
        let found = std::net::ToSocketAddrs::to_socket_addrs(name).ok().and_then(|mut a| a.next());
        if found.is_none() {
            tracing::warn!(statsd = name, "cannot find the statsd-listener yet; its metrics are dropped until it is found");
        }
        let target = Arc::new(Target { name: name.to_string(), socket, addr: RwLock::new(found) });
        let client = StatsdClient::from_sink("roost.orchestrator", Sink(target.clone()));
        Ok(Metrics { client: Arc::new(client), target: Some(target) })
    }

    /// Looks the statsd-listener's name up every [`LOOKUP_EVERY`] until `shutdown`.
    pub async fn keep_looking_up(self, shutdown: CancellationToken) {
        let Some(target) = self.target else { return };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(LOOKUP_EVERY) => {}
            }
            let found = tokio::net::lookup_host(target.name.as_str()).await.ok().and_then(|mut a| a.next());
            if let Some(found) = found {
                let mut addr = target.addr.write().unwrap_or_else(|e| e.into_inner());
                if *addr != Some(found) {
                    tracing::info!(statsd = %target.name, address = %found, "the statsd-listener found at a new address");
                    *addr = Some(found);
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn metrics_go_to_the_address_last_found() {
        let listener = UdpSocket::bind("127.0.0.1:0").unwrap();
        listener.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let m = Metrics::new(Some(&listener.local_addr().unwrap().to_string())).unwrap();
        let target = m.target.clone().unwrap();
        // Not found (as at a start before the statsd-listener's): dropped, no error.
        *target.addr.write().unwrap() = None;
        m.held("f", 3);
        // Found again by the lookup: the next metric arrives.
        let shutdown = CancellationToken::new();
        let lookups = tokio::spawn(m.clone().keep_looking_up(shutdown.clone()));
        for _ in 0..100 {
            if target.addr.read().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(LOOKUP_EVERY / 10).await;
            tokio::task::yield_now().await;
        }
        m.held("f", 4);
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).expect("a datagram");
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), "roost.orchestrator.held:4|g|#function:f");
        shutdown.cancel();
        lookups.await.unwrap();
    }
}
