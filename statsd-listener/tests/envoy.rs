//! The listener behind the real Envoy (statsd sink, 250 ms flush) in front of a slow
//! upstream limited to one connection, with a real Redis: queueing is seen and signalled
//! within a second of the queue forming; when the load stops, in-flight drops to zero and
//! the last-request time stops moving. Envoy's metrics come through its metrics service
//! (gRPC); every call's code and duration reach the metrics endpoint.

use roost_control_plane::{start as start_cp, Config as CpConfig};
use roost_statsd_listener::{start, Config};
use roost_testkit::envoy::{Envoy, EnvoyOptions, XdsMode};
use roost_testkit::http::{self, Upstream};
use roost_testkit::process::free_port;
use roost_testkit::redis::Redis;
use roost_testkit::wait_until;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

async fn hget(url: &str, key: &str, field: &str) -> Option<String> {
    let client = redis::Client::open(url).ok()?;
    let mut c = client.get_multiplexed_async_connection().await.ok()?;
    redis::cmd("HGET").arg(key).arg(field).query_async(&mut c).await.ok()?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy and redis-server: full tier (scripts/test.sh)"]
async fn envoy_queueing_is_seen_and_signalled_within_a_second() {
    use clap::Parser;
    let redis = Redis::start().await;
    {
        // `slow` is declared, as the orchestrator does: the listener tracks declared functions only.
        let client = redis::Client::open(redis.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("SADD").arg("roost:functions").arg("slow").query_async(&mut c).await.unwrap();
    }
    let stop = CancellationToken::new();
    let mut lc = Config::parse_from(["statsd-listener"]);
    lc.bind = "127.0.0.1:0".parse().unwrap();
    lc.metrics_bind = "127.0.0.1:0".parse().unwrap();
    lc.redis_url = redis.url();
    let listener = start(lc, stop.clone()).await.unwrap();

    let port = free_port();
    let cp = start_cp(CpConfig { listener_port: port, ..CpConfig::for_tests() }, stop.clone()).await.unwrap();
    let mut opts = EnvoyOptions::new(cp.xds_addr.port(), XdsMode::Delta);
    opts.statsd_port = Some(listener.udp_addr.port());
    opts.flush_interval = "0.25s".into();
    let envoy = Envoy::start(&opts).await;
    let slow = Upstream::start_with_delay("slow", Duration::from_millis(400)).await;
    let admin = cp.admin_addr.port();
    for (m, p, b) in [
        ("PUT", "/functions/slow?wait=true".to_string(), r#"{"concurrency": 1}"#.to_string()),
        ("POST", "/functions/slow/endpoints?wait=true".to_string(), format!(r#"{{"address": "127.0.0.1:{}"}}"#, slow.port)),
    ] {
        let r = http::request(admin, m, &p, &[], b.as_bytes()).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let _ = &envoy;

    // Listen for the scale-up signal before the load starts.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("roost:scale").await.unwrap();

    let started = Instant::now();
    let load: Vec<_> = (0..10).map(|_| tokio::spawn(async move { http::get(port, "/slow").await })).collect();
    let msg = tokio::time::timeout(WAIT, futures_next(&mut pubsub)).await.expect("a scale signal");
    let waited = started.elapsed();
    let payload: serde_json::Value = serde_json::from_str(&msg).unwrap();
    assert_eq!(payload["function"], "slow");
    assert!(payload["pending"].as_f64().unwrap() > 0.0, "{payload}");
    eprintln!("scale signal {waited:?} after the queue formed");
    assert!(waited < Duration::from_secs(1), "signal took {waited:?}");
    let pending: f64 = hget(&redis.url(), "roost:fn:slow:load", "pending").await.unwrap().parse().unwrap();
    assert!(pending > 0.0);

    for l in load {
        assert_eq!(l.await.unwrap().unwrap().status, 200);
    }
    wait_until(WAIT, "in-flight back to zero", || async {
        (hget(&redis.url(), "roost:fn:slow:load", "in_flight").await.as_deref() == Some("0")).then_some(())
    })
    .await;
    let last = hget(&redis.url(), "roost:fn:slow:load", "last_request_ms").await.unwrap();
    let updated = hget(&redis.url(), "roost:fn:slow:load", "updated_ms").await.unwrap();
    // Envoy keeps flushing (gauges at zero); the last request start must not move.
    wait_until(WAIT, "a later write", || async {
        let u = hget(&redis.url(), "roost:fn:slow:load", "updated_ms").await?;
        (u != updated).then_some(())
    })
    .await;
    assert_eq!(hget(&redis.url(), "roost:fn:slow:load", "last_request_ms").await.unwrap(), last);

    // The ten calls by code and by duration: 400 ms at the replica, one at a time, so
    // 0.4, 0.8, ... 4 s with their wait in Envoy's queue.
    let metrics = listener.metrics_addr.port();
    let text = wait_until(WAIT, "ten calls in the duration histogram", || async {
        let r = http::get(metrics, "/metrics").await.ok()?;
        r.body.contains("gateway_functions_seconds_count{function_name=\"slow\"} 10\n").then_some(r.body)
    })
    .await;
    for line in [
        "gateway_function_invocation_total{function_name=\"slow\",code=\"200\"} 10\n",
        "gateway_functions_seconds_bucket{function_name=\"slow\",le=\"0.25\"} 0\n",
        "gateway_functions_seconds_bucket{function_name=\"slow\",le=\"0.5\"} 1\n",
        "gateway_functions_seconds_bucket{function_name=\"slow\",le=\"5\"} 10\n",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    stop.cancel();
}

async fn futures_next(pubsub: &mut redis::aio::PubSub) -> String {
    use futures::StreamExt;
    let msg = pubsub.on_message().next().await.expect("subscription open");
    msg.get_payload().unwrap()
}
