//! The gate (Debian's nginx + Lua, from gateway-lua/run.sh) against a real Redis, with a
//! stand-in for Envoy and a stand-in orchestrator written here: wake once, hold until the
//! ready notice, the cap on held requests, the deadline, and the second pass through the
//! wake path when Envoy itself answers 503.

use futures::StreamExt;
use roost_testkit::http;
use roost_testkit::process::{free_port, Guard};
use roost_testkit::redis::Redis;
use roost_testkit::{wait_until, workspace_root};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

fn gate(redis: &Redis, envoy: u16, extra: &[(&str, &str)]) -> (Guard, u16) {
    let port = free_port();
    let prefix = std::env::temp_dir().join(format!("roost-gate-test-{}-{port}", std::process::id()));
    let mut cmd = Command::new("sh");
    cmd.arg(workspace_root().join("gateway-lua/run.sh"))
        .env("ROOST_GATE_PORT", port.to_string())
        .env("ROOST_GATE_PREFIX", &prefix)
        .env("ROOST_REDIS_HOST", "127.0.0.1")
        .env("ROOST_REDIS_PORT", redis.port.to_string())
        .env("ROOST_ENVOY_ADDR", format!("127.0.0.1:{envoy}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    (Guard::spawn("gate (nginx; install nginx-light libnginx-mod-http-lua lua-nginx-redis lua-cjson)", &mut cmd), port)
}

async fn wait_gate(port: u16) {
    wait_until(WAIT, "the gate's /healthz (is nginx with the Lua module installed?)", || async {
        http::get(port, "/healthz").await.ok().filter(|r| r.status == 200)
    })
    .await;
}

async fn redis_cmd(redis: &Redis, args: &[&str]) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query_async(&mut c).await.unwrap();
}

/// A stand-in orchestrator: counts wakes; after `delay` marks the function ready.
fn fake_orchestrator(redis: &Redis, delay: Duration) -> Arc<AtomicU64> {
    let wakes = Arc::new(AtomicU64::new(0));
    let (w, url) = (wakes.clone(), redis.url());
    tokio::spawn(async move {
        let client = redis::Client::open(url).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe("roost:wake").await.unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut messages = pubsub.on_message();
        while let Some(m) = messages.next().await {
            let f: String = m.get_payload().unwrap();
            w.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            let _: () = redis::cmd("SET").arg(format!("roost:fn:{f}:ready")).arg(1).query_async(&mut conn).await.unwrap();
            let msg = format!(r#"{{"function":"{f}","ready":true}}"#);
            let _: () = redis::cmd("PUBLISH").arg("roost:ready").arg(msg).query_async(&mut conn).await.unwrap();
        }
    });
    wakes
}

/// A stand-in for Envoy: its first `fail` requests get Envoy's own 503 (no
/// x-envoy-upstream-service-time), then 200 with the path it saw.
async fn fake_envoy(fail: u64) -> (u16, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let Ok(n) = s.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let i = c.fetch_add(1, Ordering::SeqCst);
                    let resp = if i < fail {
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 19\r\nServer: envoy\r\n\r\nno healthy upstream".to_string()
                    } else {
                        let body = format!(r#"{{"path":"{path}"}}"#);
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nx-envoy-upstream-service-time: 1\r\n\r\n{body}", body.len())
                    };
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakes_once_holds_until_ready_and_keeps_path_and_request_id() {
    let redis = Redis::start().await;
    let (envoy, _) = fake_envoy(0).await;
    let (_g, port) = gate(&redis, envoy, &[]);
    wait_gate(port).await;
    redis_cmd(&redis, &["SADD", "roost:functions", "f"]).await;
    let wakes = fake_orchestrator(&redis, Duration::from_millis(300));
    let held: Vec<_> = (0..50)
        .map(|i| tokio::spawn(async move { http::get(port, &format!("/f/x?i={i}")).await.unwrap() }))
        .collect();
    for h in held {
        let r = h.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("/f/x?i="), "path and query reach Envoy intact: {}", r.body);
        assert!(r.header("x-roost-cold-start").is_some_and(|c| c.ends_with("ms")));
    }
    assert_eq!(wakes.load(Ordering::SeqCst), 1, "50 held requests, one wake");
    // Ready now: proxied at once; the request id is kept.
    let r = http::request(port, "GET", "/f", &[("X-Request-Id", "abc-123")], b"").await.unwrap();
    assert_eq!((r.status, r.header("x-request-id"), r.header("x-roost-cold-start")), (200, Some("abc-123"), Some("none")));
    let r = http::get(port, "/unknown").await.unwrap();
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_are_capped_and_time_out() {
    let redis = Redis::start().await;
    let (envoy, _) = fake_envoy(0).await;
    let (_g, port) = gate(&redis, envoy, &[("ROOST_GATE_MAX_HELD", "2"), ("ROOST_GATE_WAKE_TIMEOUT_MS", "700")]);
    wait_gate(port).await;
    redis_cmd(&redis, &["SADD", "roost:functions", "g"]).await;
    // Nobody wakes g: the first two wait out the deadline, the third is over the cap.
    let a = tokio::spawn(async move { http::get(port, "/g").await.unwrap() });
    let b = tokio::spawn(async move { http::get(port, "/g").await.unwrap() });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let c = http::get(port, "/g").await.unwrap();
    assert_eq!(c.status, 503, "{}", c.body);
    assert_eq!(c.header("retry-after"), Some("1"));
    for r in [a.await.unwrap(), b.await.unwrap()] {
        assert_eq!(r.status, 504, "{}", r.body);
        assert!(r.body.contains("did not become ready"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_own_503_sends_the_request_through_the_wake_path_again() {
    let redis = Redis::start().await;
    let (envoy, hits) = fake_envoy(1).await;
    let (_g, port) = gate(&redis, envoy, &[]);
    wait_gate(port).await;
    redis_cmd(&redis, &["SADD", "roost:functions", "h"]).await;
    redis_cmd(&redis, &["SET", "roost:fn:h:ready", "1"]).await; // ready... but its replica just went away
    let wakes = fake_orchestrator(&redis, Duration::from_millis(100));
    let r = http::request(port, "POST", "/h/p", &[("Content-Type", "application/json")], br#"{"a":1}"#).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(hits.load(Ordering::SeqCst), 2, "Envoy saw the request twice");
    assert_eq!(wakes.load(Ordering::SeqCst), 1, "the 503 woke the function");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ready_notice_is_recovered_without_held_requests_polling() {
    let redis = Redis::start().await;
    let (envoy, _) = fake_envoy(0).await;
    let (_g, port) = gate(&redis, envoy, &[]);
    wait_gate(port).await;
    redis_cmd(&redis, &["SADD", "roost:functions", "q"]).await;
    let held: Vec<_> = (0..20).map(|_| tokio::spawn(async move { http::get(port, "/q").await.unwrap() })).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis_cmd(&redis, &["CONFIG", "RESETSTAT"]).await;
    // The function becomes ready, but the notice is lost (no PUBLISH).
    redis_cmd(&redis, &["SET", "roost:fn:q:ready", "1"]).await;
    for h in held {
        let r = h.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut c).await.unwrap();
    let gets: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
        .and_then(|v| v.split(',').next()?.parse().ok())
        .unwrap_or(0);
    assert!(gets <= 3, "20 held requests asked Redis {gets} times: they must not each poll");
}
