//! The listener on real sockets: cadence as the client, garbage on the port, a 64 KiB
//! datagram, and a real Redis that is killed and restarted mid-test.

use cadence::{Counted, Gauged, StatsdClient, UdpMetricSink};
use roost_statsd_listener::{start, Config, Running};
use roost_testkit::http;
use roost_testkit::redis::Redis;
use roost_testkit::wait_until;
use std::net::UdpSocket;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

async fn listener(redis_url: &str) -> (Running, CancellationToken) {
    use clap::Parser;
    let mut c = Config::parse_from(["statsd-listener"]);
    c.bind = "127.0.0.1:0".parse().unwrap();
    c.metrics_bind = "127.0.0.1:0".parse().unwrap();
    c.redis_url = redis_url.to_string();
    c.flush_interval_ms = 50;
    let stop = CancellationToken::new();
    (start(c, stop.clone()).await.expect("listener starts"), stop)
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
    raw.send_to(b"envoy.cluster.fn-a.upstream_rq_active:3|g", r.udp_addr).unwrap();
    wait_until(WAIT, "writes resume after Redis came back", || async {
        (hget(&redis, "roost:fn:a:load", "in_flight").await.as_deref() == Some("3")).then_some(())
    })
    .await;
    stop.cancel();
    r.wait().await.expect("the statsd-listener stops cleanly");
}
