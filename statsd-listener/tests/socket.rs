//! The listener on real sockets: cadence as the client, garbage on the port, a 64 KiB
//! datagram, and a real Redis that is killed and restarted mid-test; what it refuses to
//! believe: a flood from a source not allowed, gauges of an undeclared function, a gauge
//! that stopped coming; Envoy's metrics service (gRPC) from an allowed source and from a
//! stranger.

use cadence::{Counted, Gauged, StatsdClient, UdpMetricSink};
use roost_statsd_listener::{start, Config, Running};
use roost_testkit::http;
use roost_testkit::redis::Redis;
use roost_testkit::wait_until;
use std::net::UdpSocket;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

fn config(redis_url: &str) -> Config {
    use clap::Parser;
    let mut c = Config::parse_from(["statsd-listener"]);
    c.bind = "127.0.0.1:0".parse().unwrap();
    c.metrics_bind = "127.0.0.1:0".parse().unwrap();
    c.redis_url = redis_url.to_string();
    c.flush_interval_ms = 50;
    c
}

async fn listener(redis_url: &str) -> (Running, CancellationToken) {
    start_with(config(redis_url)).await
}

async fn start_with(c: Config) -> (Running, CancellationToken) {
    let stop = CancellationToken::new();
    (start(c, stop.clone()).await.expect("listener starts"), stop)
}

/// Lists the functions in `roost:functions`, as the orchestrator does.
async fn declare(redis: &Redis, functions: &[&str]) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SADD").arg("roost:functions").arg(functions).query_async(&mut c).await.unwrap();
}

async fn exists(redis: &Redis, key: &str) -> bool {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("EXISTS").arg(key).query_async::<u64>(&mut c).await.unwrap() == 1
}

/// The value of one counter in `/metrics`.
async fn counter(r: &Running, name: &str) -> u64 {
    let m = metrics(r).await;
    let line = m.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name} not in {m}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

async fn metrics(r: &Running) -> String {
    http::get(r.metrics_addr.port(), "/metrics").await.expect("/metrics").body
}

async fn hget(redis: &Redis, key: &str, field: &str) -> Option<String> {
    let client = redis::Client::open(redis.url()).ok()?;
    let mut c = client.get_multiplexed_async_connection().await.ok()?;
    redis::cmd("HGET").arg(key).arg(field).query_async(&mut c).await.ok()?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: full tier (scripts/test.sh)"]
async fn cadence_metrics_reach_redis_and_metrics_and_garbage_is_counted() {
    let redis = Redis::start().await;
    declare(&redis, &["hello", "big"]).await;
    let (r, stop) = listener(&redis.url()).await;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sink = UdpMetricSink::from(r.udp_addr, socket).unwrap();
    let client = StatsdClient::from_sink("envoy.cluster.fn-hello", sink);
    client.gauge("upstream_rq_active", 2).unwrap();
    client.count("upstream_rq_total", 5).unwrap();

    // Garbage: bad UTF-8, truncated, unknown type, absurd value; and one 64 KiB datagram.
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    for junk in [&b"\xff\xfe\xfd"[..], b"envoy.cluster.fn-hello.upstream_rq_act", b"x:1|zz", b"x:1e999|g"] {
        raw.send_to(junk, r.udp_addr).unwrap();
    }
    let line = "envoy.cluster.fn-big.upstream_rq_total:1|c\n";
    let big = line.repeat(65_000 / line.len());
    raw.send_to(big.as_bytes(), r.udp_addr).unwrap();

    // The gauge and the count travel in separate datagrams, maybe across a flush.
    wait_until(WAIT, "hello's load in Redis", || async {
        let in_flight = hget(&redis, "roost:fn:hello:load", "in_flight").await;
        let total = hget(&redis, "roost:fn:hello:load", "requests_total").await;
        (in_flight.as_deref() == Some("2") && total.as_deref() == Some("5")).then_some(())
    })
    .await;
    wait_until(WAIT, "the big datagram counted", || async {
        let n = (65_000 / line.len()).to_string();
        (hget(&redis, "roost:fn:big:load", "requests_total").await.as_deref() == Some(n.as_str())).then_some(())
    })
    .await;
    let m = metrics(&r).await;
    assert!(m.contains("roost_statsd_parse_errors_total 4\n"), "{m}");
    assert!(m.contains("roost_function_in_flight{function=\"hello\"} 2\n"), "{m}");
    stop.cancel();
    r.wait().await.expect("the statsd-listener stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: full tier (scripts/test.sh)"]
async fn survives_a_redis_restart_without_restarting() {
    let mut redis = Redis::start().await;
    declare(&redis, &["a"]).await;
    let (r, stop) = listener(&redis.url()).await;
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    raw.send_to(b"envoy.cluster.fn-a.upstream_rq_active:1|g", r.udp_addr).unwrap();
    wait_until(WAIT, "first write", || async { hget(&redis, "roost:fn:a:load", "in_flight").await }).await;

    redis.kill();
    for i in 0..200 {
        raw.send_to(format!("envoy.cluster.fn-a.upstream_rq_active:{}|g", i % 7).as_bytes(), r.udp_addr).unwrap();
    }
    raw.send_to(b"envoy.cluster.fn-a.upstream_rq_active:3|g", r.udp_addr).unwrap();
    wait_until(WAIT, "a Redis error counted", || async {
        let m = metrics(&r).await;
        (!m.contains("roost_statsd_redis_errors_total 0\n")).then_some(())
    })
    .await;
    redis.restart().await; // a fresh, empty Redis on the same port
    declare(&redis, &["a"]).await; // as the orchestrator re-asserts it every tick
    raw.send_to(b"envoy.cluster.fn-a.upstream_rq_active:3|g", r.udp_addr).unwrap();
    wait_until(WAIT, "writes resume after Redis came back", || async {
        (hget(&redis, "roost:fn:a:load", "in_flight").await.as_deref() == Some("3")).then_some(())
    })
    .await;
    stop.cancel();
    r.wait().await.expect("the statsd-listener stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: full tier (scripts/test.sh)"]
async fn a_flood_from_a_source_not_allowed_changes_nothing() {
    let redis = Redis::start().await;
    declare(&redis, &["idle"]).await;
    // Only 127.0.0.2 is believed; the flood comes from 127.0.0.1.
    let mut c = config(&redis.url());
    c.allowed_sources = vec!["127.0.0.2".into()];
    let (r, stop) = start_with(c).await;
    let spoofer = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..300 {
        let lines = format!(
            "envoy.cluster.fn-idle.upstream_rq_pending_active:1e15|g\nenvoy.cluster.fn-ghost{i}.upstream_rq_active:10|g\nenvoy.cluster.fn-idle.upstream_rq_total:9|c"
        );
        spoofer.send_to(lines.as_bytes(), r.udp_addr).unwrap();
    }
    wait_until(WAIT, "the flood counted as refused", || async {
        (counter(&r, "roost_statsd_denied_datagrams_total").await == 300).then_some(())
    })
    .await;
    assert_eq!(counter(&r, "roost_statsd_packets_total").await, 0, "nothing of it was read");
    assert_eq!(counter(&r, "roost_statsd_scale_signals_total").await, 0);

    // The allowed source is heard; the flood left nothing behind in Redis.
    let envoy = UdpSocket::bind("127.0.0.2:0").unwrap();
    envoy.send_to(b"envoy.cluster.fn-idle.upstream_rq_active:0|g", r.udp_addr).unwrap();
    wait_until(WAIT, "the allowed source's reading in Redis", || async { hget(&redis, "roost:fn:idle:load", "in_flight").await }).await;
    assert_eq!(hget(&redis, "roost:fn:idle:load", "pending").await.as_deref(), Some("0"));
    assert_eq!(hget(&redis, "roost:fn:idle:load", "requests_total").await.as_deref(), Some("0"));
    for i in [0, 150, 299] {
        assert!(!exists(&redis, &format!("roost:fn:ghost{i}:load")).await);
    }
    stop.cancel();
    r.wait().await.expect("the statsd-listener stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: full tier (scripts/test.sh)"]
async fn gauges_of_an_undeclared_function_create_no_key() {
    let redis = Redis::start().await;
    declare(&redis, &["hello"]).await;
    let (r, stop) = listener(&redis.url()).await;
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..300 {
        raw.send_to(format!("envoy.cluster.fn-nope{i}.upstream_rq_pending_active:5|g").as_bytes(), r.udp_addr).unwrap();
    }
    raw.send_to(b"envoy.cluster.fn-hello.upstream_rq_active:1|g", r.udp_addr).unwrap();
    wait_until(WAIT, "hello's load in Redis", || async { hget(&redis, "roost:fn:hello:load", "in_flight").await }).await;
    wait_until(WAIT, "the unknown names counted", || async {
        (counter(&r, "roost_statsd_unknown_functions_total").await == 300).then_some(())
    })
    .await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("roost:fn:*:load").query_async(&mut c).await.unwrap();
    assert_eq!(keys, ["roost:fn:hello:load"]);
    assert_eq!(counter(&r, "roost_statsd_scale_signals_total").await, 0);

    // Declared later: read within a second or so, then tracked.
    declare(&redis, &["late"]).await;
    wait_until(WAIT, "late's load in Redis once declared", || async {
        raw.send_to(b"envoy.cluster.fn-late.upstream_rq_active:2|g", r.udp_addr).unwrap();
        (hget(&redis, "roost:fn:late:load", "in_flight").await.as_deref() == Some("2")).then_some(())
    })
    .await;
    stop.cancel();
    r.wait().await.expect("the statsd-listener stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: full tier (scripts/test.sh)"]
async fn a_pending_gauge_that_stops_coming_goes_back_to_zero_within_the_ttl() {
    let redis = Redis::start().await;
    declare(&redis, &["q"]).await;
    let mut c = config(&redis.url());
    c.gauge_ttl_ms = 500;
    let (r, stop) = start_with(c).await;
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Keep it coming until Redis shows it, as Envoy repeats it every flush.
    wait_until(WAIT, "pending 7 in Redis", || async {
        raw.send_to(b"envoy.cluster.fn-q.upstream_rq_pending_active:7|g", r.udp_addr).unwrap();
        (hget(&redis, "roost:fn:q:load", "pending").await.as_deref() == Some("7")).then_some(())
    })
    .await;
    let stopped = std::time::Instant::now();
    wait_until(WAIT, "pending back to 0", || async {
        (hget(&redis, "roost:fn:q:load", "pending").await.as_deref() == Some("0")).then_some(())
    })
    .await;
    let took = stopped.elapsed();
    eprintln!("pending back to 0 {took:?} after the gauge stopped (TTL 500 ms, flush 50 ms)");
    // The TTL, plus a flush, plus the write and a poll: well under a second more.
    assert!(took >= Duration::from_millis(400) && took < Duration::from_millis(1_500), "took {took:?}");
    assert!(counter(&r, "roost_statsd_expired_gauges_total").await >= 1);
    stop.cancel();
    r.wait().await.expect("the statsd-listener stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: full tier (scripts/test.sh)"]
async fn envoys_metrics_service_is_heard_from_allowed_sources_only() {
    use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
    use envoy_types::pb::envoy::service::metrics::v3::StreamMetricsMessage;
    use envoy_types::pb::io::prometheus::client::{Bucket, Gauge, Histogram, Metric, MetricFamily, MetricType};
    let redis = Redis::start().await;
    declare(&redis, &["grpc"]).await;
    let mut c = config(&redis.url());
    c.allowed_sources = vec!["127.0.0.2".into()];
    let (r, stop) = start_with(c).await;
    let message = |active: f64| StreamMetricsMessage {
        identifier: None,
        envoy_metrics: vec![
            MetricFamily {
                name: Some("cluster.fn-grpc.upstream_rq_active".into()),
                r#type: Some(MetricType::Gauge as i32),
                metric: vec![Metric { gauge: Some(Gauge { value: Some(active) }), ..Default::default() }],
                ..Default::default()
            },
            MetricFamily {
                name: Some("cluster.fn-grpc.upstream_rq_time".into()),
                r#type: Some(MetricType::Histogram as i32),
                metric: vec![Metric {
                    histogram: Some(Histogram {
                        sample_count: Some(1),
                        sample_sum: Some(7.0),
                        bucket: vec![Bucket { upper_bound: Some(10.0), cumulative_count: Some(1), ..Default::default() }],
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
    };
    let endpoint = |from: &str| {
        tonic::transport::Endpoint::from_shared(format!("http://{}", r.udp_addr)).unwrap().local_address(Some(from.parse().unwrap()))
    };

    // A stranger (127.0.0.1) is refused: its stream fails, and nothing of it is read.
    let stranger = async {
        let mut client = MetricsServiceClient::new(endpoint("127.0.0.1").connect().await?);
        client.stream_metrics(tokio_stream::iter(vec![message(9.0)])).await.map_err(Into::into)
    };
    let refused: Result<_, Box<dyn std::error::Error>> = tokio::time::timeout(WAIT, stranger).await.expect("answered in time");
    assert!(refused.is_err(), "a stranger's stream was accepted");
    assert!(counter(&r, "roost_statsd_denied_datagrams_total").await >= 1, "its connection counted as refused");
    tokio::time::sleep(Duration::from_millis(200)).await; // past a flush (50 ms)
    assert!(!exists(&redis, "roost:fn:grpc:load").await, "the stranger's gauge was believed");

    // Envoy (127.0.0.2): its gauge reaches Redis, its histogram the metrics.
    let mut client = MetricsServiceClient::new(endpoint("127.0.0.2").connect().await.unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let stream = tokio::spawn(async move { client.stream_metrics(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    tx.send(message(3.0)).await.unwrap();
    wait_until(WAIT, "Envoy's gauge in Redis", || async {
        (hget(&redis, "roost:fn:grpc:load", "in_flight").await.as_deref() == Some("3")).then_some(())
    })
    .await;
    assert!(metrics(&r).await.contains("roost_function_seconds_bucket{function=\"grpc\",le=\"0.01\"} 1\n"));
    drop(tx);
    assert!(stream.await.unwrap().is_ok(), "the stream ends cleanly when Envoy ends it");

    // A stream Envoy keeps open does not hold the listener's shutdown.
    let mut client = MetricsServiceClient::new(endpoint("127.0.0.2").connect().await.unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let open = tokio::spawn(async move { client.stream_metrics(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    tx.send(message(1.0)).await.unwrap();
    wait_until(WAIT, "the open stream heard", || async {
        (hget(&redis, "roost:fn:grpc:load", "in_flight").await.as_deref() == Some("1")).then_some(())
    })
    .await;
    stop.cancel();
    tokio::time::timeout(WAIT, r.wait()).await.expect("stopped with a stream open").expect("the statsd-listener stops cleanly");
    drop((tx, open));
}
