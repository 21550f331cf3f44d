//! A service's own statsd metrics (cadence over UDP) to the statsd-listener, whose name is
//! looked up again every [`LOOKUP_EVERY`] (restarted, it may come back on another address).

use cadence::StatsdClient;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the statsd-listener's name is looked up again.
pub const LOOKUP_EVERY: Duration = Duration::from_secs(5);

/// A statsd client and where it sends.
#[derive(Debug, Clone)]
pub struct Statsd {
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

impl Statsd {
    /// Metrics named `<prefix>.<name>`, sent to `addr` (`host:port`) over UDP, or dropped
    /// when `addr` is `None`. A name that does not resolve yet is looked up again by
    /// [`Statsd::keep_looking_up`].
    pub fn new(prefix: &str, addr: Option<&str>) -> std::io::Result<Statsd> {
        let Some(name) = addr else {
            return Ok(Statsd { client: Arc::new(StatsdClient::from_sink(prefix, cadence::NopMetricSink)), target: None });
        };
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_nonblocking(true)?;
        let found = std::net::ToSocketAddrs::to_socket_addrs(name).ok().and_then(|mut a| a.next());
        if found.is_none() {
            tracing::warn!(statsd = name, "cannot find the statsd-listener yet; its metrics are dropped until it is found");
        }
        let target = Arc::new(Target { name: name.to_string(), socket, addr: RwLock::new(found) });
        let client = StatsdClient::from_sink(prefix, Sink(target.clone()));
        Ok(Statsd { client: Arc::new(client), target: Some(target) })
    }

    /// The client to send with.
    pub fn client(&self) -> &StatsdClient {
        &self.client
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

    #[cfg(test)]
    fn forget_address(&self) {
        if let Some(t) = &self.target {
            *t.addr.write().unwrap() = None;
        }
    }

    #[cfg(test)]
    fn found(&self) -> bool {
        self.target.as_ref().is_some_and(|t| t.addr.read().unwrap().is_some())
    }
}

/// Logs a metric that could not be sent, at debug level: metrics are best effort (a full
/// socket buffer drops them, statsd over UDP).
pub fn dropped<T>(sent: cadence::MetricResult<T>) {
    if let Err(e) = sent {
        tracing::debug!(error = %e, "a statsd metric was dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cadence::Gauged;

    #[tokio::test(start_paused = true)]
    async fn metrics_go_to_the_address_last_found() {
        let listener = UdpSocket::bind("127.0.0.1:0").unwrap();
        listener.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let m = Statsd::new("roost.test", Some(&listener.local_addr().unwrap().to_string())).unwrap();
        // Not found (as at a start before the statsd-listener's): dropped, no error.
        m.forget_address();
        dropped(m.client().gauge_with_tags("held", 3).with_tag("function", "f").try_send());
        // Found again by the lookup: the next metric arrives.
        let shutdown = CancellationToken::new();
        let lookups = tokio::spawn(m.clone().keep_looking_up(shutdown.clone()));
        for _ in 0..100 {
            if m.found() {
                break;
            }
            tokio::time::sleep(LOOKUP_EVERY / 10).await;
            tokio::task::yield_now().await;
        }
        dropped(m.client().gauge_with_tags("held", 4).with_tag("function", "f").try_send());
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).expect("a datagram");
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), "roost.test.held:4|g|#function:f");
        shutdown.cancel();
        lookups.await.unwrap();
    }
}
