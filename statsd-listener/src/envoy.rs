//! Envoy's metrics over gRPC: Envoy's MetricsService sink streams, every stats flush, its
//! counters (as deltas since the last flush), gauges and histograms (the flush interval's
//! samples, by bucket). Connections are taken from allowed sources only; each message
//! goes to the receive loop with the stream's peer address (its gauges' source), which
//! reads it as it reads statsd ([`Reading`]), and so does the stream's end (its gauges
//! are forgotten: that Envoy stopped, or comes back on a new connection).
//!
//! Why not statsd from Envoy: both of its statsd sinks send every histogram sample on
//! the request's path (a datagram, or a write into a TCP connection), which cost 12 to
//! 25 % of the warm throughput once `upstream_rq_time` was kept; this sink sends the
//! histograms with the counters, once per flush (docs/benchmarks.md, "Issue 15").

use crate::allow::AllowList;
use crate::metrics::Stats;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_server::{MetricsService, MetricsServiceServer};
use envoy_types::pb::envoy::service::metrics::v3::{StreamMetricsMessage, StreamMetricsResponse};
use envoy_types::pb::io::prometheus::client::{MetricFamily, MetricType};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Messages waiting for the receive loop (a few flushes' worth).
pub const CHANNEL_MESSAGES: usize = 64;

/// What a metrics stream hands the receive loop.
#[derive(Debug)]
pub enum FromEnvoy {
    /// One message's metric families, from the stream with this peer.
    Metrics(SocketAddr, Vec<MetricFamily>),
    /// The stream with this peer ended (or failed): its gauges no longer count.
    Ended(SocketAddr),
}

/// The source a stream's readings are kept under when tonic does not know its peer (it
/// always does over TCP).
const UNKNOWN_PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// One of Envoy's metrics, read off a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading<'a> {
    /// A counter's increase since the last flush, or a gauge's value, as a statsd line
    /// would give it.
    Line(crate::parser::Metric<'a>),
    /// A histogram's samples of the last flush interval.
    Histogram {
        /// The stat's name (`cluster.fn-hello.upstream_rq_time`).
        name: &'a str,
        /// (upper bound, samples at or below it), rising bounds, in the stat's unit
        /// (milliseconds for times).
        buckets: Vec<(f64, f64)>,
        /// Samples.
        count: f64,
        /// Their sum.
        sum: f64,
    },
}

/// Every reading of a message's metric families, pure. A family of a type Envoy's sink
/// does not send for Roost's stats (a summary, untyped) is skipped.
pub fn readings(families: &[MetricFamily]) -> impl Iterator<Item = Reading<'_>> {
    use crate::parser::{Kind, Metric};
    families.iter().flat_map(|family| {
        let name = family.name.as_deref().unwrap_or("");
        let kind = family.r#type.and_then(|t| MetricType::try_from(t).ok());
        family.metric.iter().filter_map(move |m| {
            let line = |value: Option<f64>, kind| {
                Some(Reading::Line(Metric { name, value: value?, kind, sample_rate: 1.0, tags: None, set_member: None }))
            };
            match kind? {
                MetricType::Counter => line(m.counter.as_ref()?.value, Kind::Counter),
                MetricType::Gauge => line(m.gauge.as_ref()?.value, Kind::Gauge { delta: false }),
                MetricType::Histogram => {
                    let h = m.histogram.as_ref()?;
                    let buckets = h.bucket.iter().filter_map(|b| Some((b.upper_bound?, b.cumulative_count? as f64))).collect();
                    Some(Reading::Histogram { name, buckets, count: h.sample_count.unwrap_or(0) as f64, sum: h.sample_sum.unwrap_or(0.0) })
                }
                _ => None,
            }
        })
    })
}

/// The MetricsService: hands every message's families to the receive loop.
#[derive(Debug)]
struct Service {
    to_loop: mpsc::Sender<FromEnvoy>,
    /// Ends the streams at shutdown: Envoy's stream never ends by itself, and the server
    /// waits for its streams before it stops.
    shutdown: CancellationToken,
}

#[tonic::async_trait]
impl MetricsService for Service {
    async fn stream_metrics(
        &self,
        request: tonic::Request<tonic::Streaming<StreamMetricsMessage>>,
    ) -> Result<tonic::Response<StreamMetricsResponse>, tonic::Status> {
        let peer = request.remote_addr().unwrap_or(UNKNOWN_PEER);
        let mut stream = request.into_inner();
        let result = self.forward(peer, &mut stream).await;
        // However it ended, its gauges go with it (best effort: a loop that stopped has
        // nothing to forget).
        let _ = self.to_loop.send(FromEnvoy::Ended(peer)).await;
        result
    }
}

impl Service {
    /// Hands each message of the stream to the receive loop until the stream ends.
    async fn forward(
        &self,
        peer: SocketAddr,
        stream: &mut tonic::Streaming<StreamMetricsMessage>,
    ) -> Result<tonic::Response<StreamMetricsResponse>, tonic::Status> {
        loop {
            let message = tokio::select! {
                _ = self.shutdown.cancelled() => return Err(tonic::Status::unavailable("the statsd-listener is stopping")),
                m = stream.message() => m?,
            };
            let Some(message) = message else { return Ok(tonic::Response::new(StreamMetricsResponse {})) };
            if self.to_loop.send(FromEnvoy::Metrics(peer, message.envoy_metrics)).await.is_err() {
                return Err(tonic::Status::unavailable("the statsd-listener is stopping"));
            }
        }
    }
}

/// Serves the MetricsService on `listener` until `shutdown`, to allowed sources only (a
/// connection from another is closed at once and counted as refused).
pub async fn serve(
    listener: TcpListener,
    allow: watch::Receiver<Arc<AllowList>>,
    stats: Arc<Stats>,
    to_loop: mpsc::Sender<FromEnvoy>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    use tokio_stream::StreamExt;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).filter(move |conn| {
        let Ok(stream) = conn else { return true }; // tonic logs and goes on
        let from = stream.peer_addr().map(|a| a.ip());
        let allowed = from.as_ref().is_ok_and(|ip| allow.borrow().allows(*ip));
        if !allowed {
            stats.denied_datagrams.fetch_add(1, Ordering::Relaxed);
            warn!(source = ?from, "refused Envoy's metrics from a source not allowed; add it to ROOST_STATSD_ALLOWED_SOURCES if it is Envoy");
        }
        allowed
    });
    tonic::transport::Server::builder()
        .add_service(MetricsServiceServer::new(Service { to_loop, shutdown: shutdown.clone() }))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::Kind;
    use envoy_types::pb::io::prometheus::client::{Bucket, Counter, Gauge, Histogram, Metric};

    fn family(name: &str, kind: MetricType, metric: Metric) -> MetricFamily {
        MetricFamily { name: Some(name.into()), r#type: Some(kind as i32), metric: vec![metric], ..Default::default() }
    }

    #[test]
    fn counters_gauges_and_histograms_become_readings() {
        let families = vec![
            family(
                "cluster.fn-a.upstream_rq_total",
                MetricType::Counter,
                Metric { counter: Some(Counter { value: Some(3.0), ..Default::default() }), ..Default::default() },
            ),
            family(
                "cluster.fn-a.upstream_rq_active",
                MetricType::Gauge,
                Metric { gauge: Some(Gauge { value: Some(2.0) }), ..Default::default() },
            ),
            family(
                "cluster.fn-a.upstream_rq_time",
                MetricType::Histogram,
                Metric {
                    histogram: Some(Histogram {
                        sample_count: Some(4),
                        sample_sum: Some(30.5),
                        bucket: vec![
                            Bucket { upper_bound: Some(5.0), cumulative_count: Some(1), ..Default::default() },
                            Bucket { upper_bound: Some(10.0), cumulative_count: Some(4), ..Default::default() },
                        ],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
            family("cluster.fn-a.summary", MetricType::Summary, Metric::default()),
            family("cluster.fn-a.no_value", MetricType::Counter, Metric::default()),
        ];
        let got: Vec<Reading> = readings(&families).collect();
        assert_eq!(got.len(), 3, "{got:?}");
        let Reading::Line(c) = &got[0] else { panic!("{got:?}") };
        assert_eq!((c.name, c.value, c.kind), ("cluster.fn-a.upstream_rq_total", 3.0, Kind::Counter));
        let Reading::Line(g) = &got[1] else { panic!("{got:?}") };
        assert_eq!((g.value, g.kind), (2.0, Kind::Gauge { delta: false }));
        assert_eq!(
            got[2],
            Reading::Histogram { name: "cluster.fn-a.upstream_rq_time", buckets: vec![(5.0, 1.0), (10.0, 4.0)], count: 4.0, sum: 30.5 }
        );
    }
}
