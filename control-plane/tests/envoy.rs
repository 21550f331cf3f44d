//! The control plane against the real Envoy 1.40: routing, load sharing, draining, NACKs
//! and restarts, over state-of-the-world and delta ADS. Envoy is checked through its
//! admin API and through real requests to real local upstreams.

use roost_control_plane::resources::Kind;
use roost_control_plane::{start, Config, Running};
use roost_testkit::envoy::{Envoy, EnvoyOptions, XdsMode};
use roost_testkit::http::{self, Upstream};
use roost_testkit::process::{free_port, Guard};
use roost_testkit::redis::Redis;
use roost_testkit::wait_until;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

/// Calls the admin API; returns the status and the JSON body.
async fn admin(port: u16, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let r = http::request(port, method, path, &[("content-type", "application/json")], body.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("admin {method} {path}: {e}"));
    let v = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("admin {method} {path} gave non-JSON {:?}: {e}", r.body));
    (r.status, v)
}

/// Calls the admin API and insists on 200.
async fn admin_ok(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = admin(port, method, path, body).await;
    assert_eq!(status, 200, "admin {method} {path}: {v}");
    v
}

struct Harness {
    cp: Running,
    shutdown: CancellationToken,
    envoy: Envoy,
    listener: u16,
}

impl Harness {
    async fn start(mode: XdsMode) -> Harness {
        let listener = free_port();
        let config = Config { listener_port: listener, ..Config::for_tests() };
        let shutdown = CancellationToken::new();
        let cp = start(config, shutdown.clone()).await.expect("control plane starts");
        let envoy = Envoy::start(&EnvoyOptions::new(cp.xds_addr.port(), mode)).await;
        let h = Harness { cp, shutdown, envoy, listener };
        wait_until(WAIT, "Envoy to finish its initial xDS fetch (LIVE)", || async { h.envoy.is_live().await.then_some(()) }).await;
        h
    }

    fn admin_port(&self) -> u16 {
        self.cp.admin_addr.port()
    }

    async fn get(&self, path: &str) -> http::Response {
        http::get(self.listener, path).await.unwrap_or_else(|e| panic!("GET {path} through Envoy: {e}"))
    }

    /// GET through Envoy; the name of the upstream that answered.
    async fn hit(&self, path: &str) -> String {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {} {}\nEnvoy log:\n{}", r.status, r.body, tail(&self.envoy.log()));
        let v: Value = serde_json::from_str(&r.body).expect("upstream JSON");
        v["upstream"].as_str().unwrap().to_string()
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

async fn routing_and_load_sharing(mode: XdsMode) {
    let h = Harness::start(mode).await;
    let port = h.admin_port();
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;

    admin_ok(port, "PUT", "/functions/hello?wait=true", Some(json!({"concurrency": 4, "timeout_ms": 5000}))).await;
    let v = admin_ok(port, "POST", "/functions/hello/endpoints?wait=true", Some(json!({"address": format!("127.0.0.1:{}", a.port)}))).await;
    assert_eq!(v["synced"], true);
    assert_eq!(v["envoys"], 1);

    // Right after the ACK, with no retry or sleep, the first request is served.
    let r = h.get("/hello/x?y=1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap(), json!({"upstream": "a", "path": "/x?y=1"}));
    let r: Value = serde_json::from_str(&h.get("/hello").await.body).unwrap();
    assert_eq!(r["path"], "/");
    let r: Value = serde_json::from_str(&h.get("/hello?q=2").await.body).unwrap();
    assert_eq!(r["path"], "/?q=2");
    let r = h.get("/hello2").await;
    assert_eq!(r.status, 503, "/hello2 must not reach hello: {}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.body.contains("no replica of this function"), "{}", r.body);

    let dump = h.envoy.admin("/config_dump?include_eds").await;
    assert!(dump.contains("fn-hello") && dump.contains(&format!("\"port_value\": {}", a.port)), "config_dump lacks hello's endpoint");

    // A second endpoint shares the load.
    let addr_b = format!("127.0.0.1:{}", b.port);
    admin_ok(port, "POST", "/functions/hello/endpoints?wait=true", Some(json!({"address": addr_b}))).await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..40 {
        *seen.entry(h.hit("/hello").await).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both endpoints serve: {seen:?}");

    // Removed and ACKed: no more traffic to a.
    let a_before = a.hits();
    admin_ok(port, "DELETE", &format!("/functions/hello/endpoints/127.0.0.1:{}?wait=true", a.port), None).await;
    for _ in 0..20 {
        assert_eq!(h.hit("/hello").await, "b");
    }
    assert_eq!(a.hits(), a_before, "a removed endpoint got traffic");

    // Draining: a comes back, b drains and gets nothing new.
    admin_ok(port, "POST", "/functions/hello/endpoints?wait=true", Some(json!({"address": format!("127.0.0.1:{}", a.port)}))).await;
    let b_before = b.hits();
    admin_ok(port, "POST", &format!("/functions/hello/endpoints/{addr_b}/drain?wait=true"), None).await;
    for _ in 0..20 {
        assert_eq!(h.hit("/hello").await, "a");
    }
    assert_eq!(b.hits(), b_before, "a draining endpoint got new traffic");

    // The function removed: its route goes, and the admin API says so.
    admin_ok(port, "DELETE", "/functions/hello?wait=true", None).await;
    assert_eq!(h.get("/hello").await.status, 503);
    let (status, v) = admin(port, "GET", "/functions/hello", None).await;
    assert_eq!(status, 404, "{v}");

    // Envoy's own view: the stream is in sync with the latest generation.
    let envoys = admin_ok(port, "GET", "/envoys", None).await;
    let stream = &envoys["envoys"][0];
    assert_eq!(stream["protocol"], if mode == XdsMode::Sotw { "sotw" } else { "delta" });
    assert_eq!(stream["node_id"], "test-envoy");
    assert_eq!(stream["synced_generation"], json!(h.cp.store.generation()));
    h.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy: full tier (scripts/test.sh)"]
async fn sotw_routes_shares_load_removes_and_drains() {
    routing_and_load_sharing(XdsMode::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy: full tier (scripts/test.sh)"]
async fn delta_routes_shares_load_removes_and_drains() {
    routing_and_load_sharing(XdsMode::Delta).await;
}

async fn nack_keeps_last_good_config(mode: XdsMode) {
    let h = Harness::start(mode).await;
    let port = h.admin_port();
    let up = Upstream::start("good").await;
    admin_ok(port, "PUT", "/functions/hello?wait=true", None).await;
    admin_ok(port, "POST", "/functions/hello/endpoints?wait=true", Some(json!({"address": format!("127.0.0.1:{}", up.port)}))).await;
    assert_eq!(h.hit("/hello").await, "good");

    // A cluster Envoy must refuse: a connect timeout of minus one second.
    let generation = h.cp.store.publish_edited(|snap| {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        use prost::Message;
        let mut c = Cluster::decode(&*snap.of(Kind::Cluster)["fn-hello"].body.value).unwrap();
        c.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration { seconds: -1, nanos: 0 });
        snap.insert(Kind::Cluster, "fn-hello", envoy_types::util::pack_any(c));
    });
    let (status, v) = admin(port, "GET", &format!("/sync/{generation}?timeout_ms=10000"), None).await;
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["nack"]["kind"], "cds");
    let text = v["error"].as_str().unwrap();
    assert!(text.contains("rejected") && text.contains("Expected positive duration"), "NACK text should carry Envoy's reason: {text}");
    let status_page = admin_ok(port, "GET", "/status", None).await;
    assert!(status_page["recent_nacks"][0]["error"].as_str().unwrap().contains("positive duration"), "{status_page}");
    assert!(status_page["envoys"][0]["nack"].is_object());

    // Envoy keeps serving its last good configuration.
    for _ in 0..10 {
        assert_eq!(h.hit("/hello").await, "good");
    }

    // A valid change replaces the bad cluster; Envoy ACKs and the NACK clears.
    admin_ok(port, "PUT", "/functions/hello?wait=true", Some(json!({"concurrency": 2}))).await;
    let envoys = admin_ok(port, "GET", "/envoys", None).await;
    assert!(envoys["envoys"][0]["nack"].is_null(), "{envoys}");
    assert_eq!(h.hit("/hello").await, "good");
    h.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy: full tier (scripts/test.sh)"]
async fn sotw_nack_keeps_last_good_config() {
    nack_keeps_last_good_config(XdsMode::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy: full tier (scripts/test.sh)"]
async fn delta_nack_keeps_last_good_config() {
    nack_keeps_last_good_config(XdsMode::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy: full tier (scripts/test.sh)"]
async fn bad_admin_input_gets_400_and_changes_nothing() {
    let h = Harness::start(XdsMode::Delta).await;
    let port = h.admin_port();
    let before = h.cp.store.generation();
    let cases: [(&str, &str, Option<Value>, u16, &str); 7] = [
        ("PUT", "/functions/Bad.Name", None, 400, "invalid function name"),
        ("PUT", "/functions/ok", Some(json!({"concurrency": 0})), 400, "use 1 to 10000"),
        ("PUT", "/functions/ok", Some(json!({"concurrancy": 2})), 400, "unknown field"),
        ("POST", "/functions/ghost/endpoints", Some(json!({"address": "127.0.0.1:1"})), 404, "does not exist"),
        (
            "POST",
            "/changes",
            Some(json!([{"op": "put_function", "function": "x"}, {"op": "add_endpoint", "function": "x", "address": "db:5432"}])),
            400,
            "IP address",
        ),
        ("PUT", "/functions/ok?wait=maybe", None, 400, "wait"),
        ("GET", "/nope", None, 404, "no such admin endpoint"),
    ];
    for (method, path, body, want, text) in cases {
        let (status, v) = admin(port, method, path, body).await;
        assert_eq!(status, want, "{method} {path}: {v}");
        assert!(v["error"].as_str().unwrap().contains(text), "{method} {path}: {v}");
    }
    assert_eq!(h.cp.store.generation(), before, "a refused change must not bump the generation");
    assert_eq!(admin_ok(port, "GET", "/functions", None).await["functions"], json!({}));
    // Not-JSON body.
    let r = http::request(port, "POST", "/changes", &[], b"{not json").await.unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body.contains("invalid JSON body"));
    h.shutdown.cancel();
}

/// The control plane as a real process, so it can be killed.
fn spawn_control_plane(xds: u16, admin_port: u16, listener: u16, redis_url: &str) -> Guard {
    Guard::spawn(
        "control-plane",
        Command::new(env!("CARGO_BIN_EXE_control-plane"))
            .env("ROOST_XDS_BIND", format!("127.0.0.1:{xds}"))
            .env("ROOST_ADMIN_BIND", format!("127.0.0.1:{admin_port}"))
            .env("ROOST_LISTENER_ADDRESS", "127.0.0.1")
            .env("ROOST_LISTENER_PORT", listener.to_string())
            .env("ROOST_REDIS_URL", redis_url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// Envoy's dynamic configuration without timestamps and version strings.
async fn dynamic_config(envoy: &Envoy) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("last_updated");
                m.remove("version_info");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: Value = serde_json::from_str(&envoy.admin("/config_dump?include_eds").await).unwrap();
    let configs = v["configs"].as_array_mut().unwrap();
    configs.retain(|c| !c["@type"].as_str().unwrap_or("").contains("Bootstrap"));
    strip(&mut v);
    v
}

/// How the control plane comes back in [`restart_under_traffic`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Comeback {
    /// With its saved model in Redis.
    Restored,
    /// Without it (Redis lost it): it must hold Envoy's stream until confirmed.
    ModelLost,
}

async fn restart_under_traffic(mode: XdsMode, comeback: Comeback) {
    let redis = Redis::start().await;
    let (xds, admin_port, listener) = (free_port(), free_port(), free_port());
    let mut cp = spawn_control_plane(xds, admin_port, listener, &redis.url());
    wait_until(WAIT, "the control plane's admin API", || async {
        http::get(admin_port, "/healthz").await.ok().filter(|r| r.status == 200)
    })
    .await;
    // A first start (no saved model) is unconfirmed until the orchestrator's hand-over;
    // here there is nothing running yet to hand over.
    assert_eq!(admin_ok(admin_port, "GET", "/functions", None).await["confirmed"], false);
    admin_ok(admin_port, "POST", "/confirm", Some(json!([]))).await;
    let envoy = Envoy::start(&EnvoyOptions::new(xds, mode)).await;
    let up = Upstream::start("steady").await;
    admin_ok(admin_port, "PUT", "/functions/hello?wait=true", None).await;
    admin_ok(admin_port, "POST", "/functions/hello/endpoints?wait=true", Some(json!({"address": format!("127.0.0.1:{}", up.port)}))).await;
    admin_ok(admin_port, "PUT", "/functions/other?wait=true", Some(json!({"concurrency": 3}))).await;
    let before = dynamic_config(&envoy).await;
    let model_before = admin_ok(admin_port, "GET", "/functions", None).await["functions"].clone();

    // Steady traffic through Envoy for the whole restart.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let traffic = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match http::get(listener, "/hello").await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    other => {
                        failures.push(format!("{other:?}"));
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
                // Paces the steady traffic (a request every ~2 ms); not a handshake.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            failures
        })
    };
    wait_until(WAIT, "traffic to flow", || async { (ok.load(Ordering::SeqCst) > 20).then_some(()) }).await;

    cp.kill();
    let served_while_down = ok.load(Ordering::SeqCst);
    wait_until(WAIT, "requests served while the control plane is down", || async {
        (ok.load(Ordering::SeqCst) > served_while_down + 50).then_some(())
    })
    .await;
    if comeback == Comeback::ModelLost {
        let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let deleted: u64 = redis::cmd("DEL").arg(roost_common::keys::CONTROL_PLANE_STATE).query_async(&mut conn).await.unwrap();
        assert_eq!(deleted, 1, "the saved model was in Redis");
    }
    let _cp2 = spawn_control_plane(xds, admin_port, listener, &redis.url());
    if comeback == Comeback::ModelLost {
        // Started empty: it says so, holds Envoy's stream, and Envoy keeps routing.
        wait_until(WAIT, "Envoy's stream to be held by the restarted control plane", || async {
            let r = http::get(admin_port, "/status").await.ok().filter(|r| r.status == 200)?;
            let v: Value = serde_json::from_str(&r.body).ok()?;
            (v["confirmed"] == false && v["held_envoys"] == 1).then_some(())
        })
        .await;
        let held_from = ok.load(Ordering::SeqCst);
        wait_until(WAIT, "traffic while the stream is held", || async { (ok.load(Ordering::SeqCst) > held_from + 100).then_some(()) })
            .await;
        assert_eq!(dynamic_config(&envoy).await, before, "Envoy's configuration changed before the model was confirmed");
        let listing = admin_ok(admin_port, "GET", "/functions", None).await;
        assert_eq!(listing["confirmed"], false, "{listing}");
        // The orchestrator's hand-over: everything that runs.
        let handover = json!([
            {"op": "put_function", "function": "hello"},
            {"op": "add_endpoint", "function": "hello", "address": format!("127.0.0.1:{}", up.port)},
            {"op": "put_function", "function": "other", "concurrency": 3},
        ]);
        admin_ok(admin_port, "POST", "/confirm?wait=true", Some(handover)).await;
        let status = admin_ok(admin_port, "GET", "/status", None).await;
        assert_eq!((status["confirmed"].clone(), status["held_envoys"].clone()), (json!(true), json!(0)), "{status}");
    }
    wait_until(WAIT, "Envoy to reconnect and sync with the restarted control plane", || async {
        let r = http::get(admin_port, "/sync/1?timeout_ms=1000").await.ok()?;
        let v: Value = serde_json::from_str(&r.body).ok()?;
        (r.status == 200 && v["envoys"] == 1).then_some(())
    })
    .await;
    let after_reconnect = ok.load(Ordering::SeqCst);
    wait_until(WAIT, "traffic after the reconnect", || async { (ok.load(Ordering::SeqCst) > after_reconnect + 50).then_some(()) }).await;
    stop.store(true, Ordering::SeqCst);
    let failures = traffic.await.unwrap();
    assert!(failures.is_empty(), "{} failed requests: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert_eq!(admin_ok(admin_port, "GET", "/functions", None).await["functions"], model_before, "model restored from Redis");
    assert_eq!(dynamic_config(&envoy).await, before, "Envoy's configuration after reconnect differs");
    eprintln!("restart under traffic ({mode:?}, {comeback:?}): {} requests, 0 failed", ok.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy and redis-server: full tier (scripts/test.sh)"]
async fn sotw_control_plane_restart_under_traffic() {
    restart_under_traffic(XdsMode::Sotw, Comeback::Restored).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy and redis-server: full tier (scripts/test.sh)"]
async fn delta_control_plane_restart_under_traffic() {
    restart_under_traffic(XdsMode::Delta, Comeback::Restored).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy and redis-server: full tier (scripts/test.sh)"]
async fn sotw_control_plane_restarted_without_its_model_keeps_envoys_configuration_until_confirmed() {
    restart_under_traffic(XdsMode::Sotw, Comeback::ModelLost).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy and redis-server: full tier (scripts/test.sh)"]
async fn delta_control_plane_restarted_without_its_model_keeps_envoys_configuration_until_confirmed() {
    restart_under_traffic(XdsMode::Delta, Comeback::ModelLost).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: full tier (scripts/test.sh)"]
async fn a_saved_model_that_redis_lost_is_saved_again() {
    let redis = Redis::start().await;
    let (xds, admin_port, listener) = (free_port(), free_port(), free_port());
    let _cp = spawn_control_plane(xds, admin_port, listener, &redis.url());
    wait_until(WAIT, "the control plane's admin API", || async {
        http::get(admin_port, "/healthz").await.ok().filter(|r| r.status == 200)
    })
    .await;
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let saved = |mut conn: redis::aio::MultiplexedConnection| async move {
        let v: Option<String> = redis::cmd("GET").arg(roost_common::keys::CONTROL_PLANE_STATE).query_async(&mut conn).await.unwrap();
        v
    };
    // Unconfirmed: nothing is saved, even after a change.
    admin_ok(admin_port, "PUT", "/functions/early", None).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(saved(conn.clone()).await, None, "an unconfirmed model was saved");
    admin_ok(admin_port, "POST", "/confirm", Some(json!([{"op": "put_function", "function": "hello"}]))).await;
    wait_until(WAIT, "the confirmed model saved", || async { saved(conn.clone()).await.filter(|m| m.contains("hello")) }).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let lost = std::time::Instant::now();
    let back = wait_until(WAIT, "the model saved again", || async { saved(conn.clone()).await }).await;
    assert!(back.contains("hello") && back.contains("early"), "{back}");
    eprintln!("the saved model was back in Redis {:?} after a FLUSHALL", lost.elapsed());
}

/// How many Envoys hold an ADS stream to the control plane, from its `/envoys`.
async fn envoys_connected(admin_port: u16) -> Option<usize> {
    let r = http::get(admin_port, "/envoys").await.ok().filter(|r| r.status == 200)?;
    let v: Value = serde_json::from_str(&r.body).ok()?;
    v["envoys"].as_array().map(Vec::len)
}

/// How long the control plane stays down: longer than Envoy's default reconnect back-off
/// (base 0.5 s, doubling, jittered, up to 30 s) takes to grow past a few seconds.
const OUTAGE: Duration = Duration::from_secs(5);

/// How soon after the control plane is back Envoy must hold its ADS stream again: the
/// bootstrap bounds the back-off to 1 s (`retry_back_off` in envoy/bootstrap.yaml).
const RECONNECT_BOUND: Duration = Duration::from_millis(1500);

async fn reconnects_within_a_second_after_an_outage(mode: XdsMode) {
    let redis = Redis::start().await;
    let (xds, admin_port, listener) = (free_port(), free_port(), free_port());
    let healthy = || async { http::get(admin_port, "/healthz").await.ok().filter(|r| r.status == 200) };
    let mut cp = spawn_control_plane(xds, admin_port, listener, &redis.url());
    wait_until(WAIT, "the control plane's admin API", healthy).await;
    // A first start is unconfirmed (Envoy's stream held) until the orchestrator's
    // hand-over; nothing runs here. Confirmed, the model is saved and the restarted
    // control plane loads it.
    admin_ok(admin_port, "POST", "/confirm", Some(json!([]))).await;
    let envoy = Envoy::start(&EnvoyOptions::new(xds, mode)).await;
    wait_until(WAIT, "Envoy's ADS stream", || async { (envoys_connected(admin_port).await? == 1).then_some(()) }).await;

    cp.kill();
    // The outage itself: Envoy retries all along and its back-off grows meanwhile.
    tokio::time::sleep(OUTAGE).await;
    let _cp2 = spawn_control_plane(xds, admin_port, listener, &redis.url());
    wait_until(WAIT, "the restarted control plane's admin API", healthy).await;
    let back = std::time::Instant::now();
    wait_until(WAIT, "Envoy's ADS stream to the restarted control plane", || async {
        (envoys_connected(admin_port).await? == 1).then_some(())
    })
    .await;
    let took = back.elapsed();
    eprintln!("reconnect ({mode:?}) after a {OUTAGE:?} outage: {took:?} after the control plane was back");
    assert!(
        took <= RECONNECT_BOUND,
        "Envoy reconnected {took:?} after the control plane was back, more than {RECONNECT_BOUND:?}\nEnvoy log:\n{}",
        tail(&envoy.log())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy and redis-server: full tier (scripts/test.sh)"]
async fn sotw_reconnects_within_a_second_after_a_control_plane_outage() {
    reconnects_within_a_second_after_an_outage(XdsMode::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy and redis-server: full tier (scripts/test.sh)"]
async fn delta_reconnects_within_a_second_after_a_control_plane_outage() {
    reconnects_within_a_second_after_an_outage(XdsMode::Delta).await;
}

/// `envoy/entrypoint.sh` (compose's Envoy) run here as Docker runs it, its SIGTERM sent
/// to the script alone: it drains Envoy, waits for the request in flight, then stops
/// Envoy; the request ends with its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy and bash: full tier (scripts/test.sh)"]
async fn the_compose_entry_point_drains_envoy_on_sigterm() {
    const SLOW: Duration = Duration::from_millis(2000);
    let listener = free_port();
    let shutdown = CancellationToken::new();
    let cp = start(Config { listener_port: listener, ..Config::for_tests() }, shutdown.clone()).await.expect("control plane starts");
    let dir = std::env::temp_dir().join(format!("roost-entrypoint-{}-{listener}", std::process::id()));
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::os::unix::fs::symlink(roost_testkit::envoy::envoy_binary(), dir.join("bin/envoy")).unwrap();
    let (admin, statsd) = (free_port(), roost_testkit::process::free_udp_port());
    let log = dir.join("entrypoint.log");
    let mut entry = Guard::spawn(
        "envoy/entrypoint.sh",
        Command::new("sh")
            .arg(roost_testkit::workspace_root().join("envoy/entrypoint.sh"))
            .args(["--concurrency", "1", "-l", "warning"])
            .env("PATH", format!("{}:{}", dir.join("bin").display(), std::env::var("PATH").unwrap_or_default()))
            .env("ROOST_XDS_ADDR", cp.xds_addr.to_string())
            .env("ROOST_ENVOY_ADMIN_BIND", format!("127.0.0.1:{admin}"))
            .env("ROOST_STATSD_ADDR", format!("127.0.0.1:{statsd}"))
            .env("ROOST_ENVOY_CONFIG", dir.join("envoy.yaml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    wait_until(WAIT, "Envoy (started by the entry point) LIVE", || async {
        http::get(admin, "/ready").await.ok().filter(|r| r.status == 200)
    })
    .await;
    let up = Upstream::start_with_delay("slow", SLOW).await;
    let port = cp.admin_addr.port();
    admin_ok(port, "PUT", "/functions/slow?wait=true", None).await;
    admin_ok(port, "POST", "/functions/slow/endpoints?wait=true", Some(json!({"address": format!("127.0.0.1:{}", up.port)}))).await;

    let request = tokio::spawn(async move { http::get(listener, "/slow").await });
    wait_until(WAIT, "the slow request in flight in Envoy", || async {
        let r = http::get(admin, "/stats?filter=^cluster\\.fn-slow\\.upstream_rq_active$").await.ok()?;
        r.body.contains("upstream_rq_active: 1").then_some(())
    })
    .await;
    let stopping = tokio::task::spawn_blocking(move || entry.terminate());
    let r = tokio::time::timeout(SLOW + Duration::from_secs(5), request)
        .await
        .expect("the request in flight ended")
        .unwrap()
        .unwrap_or_else(|e| panic!("the request in flight was cut: {e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    assert_eq!(r.status, 200, "{}", r.body);
    let status = tokio::time::timeout(Duration::from_secs(20), stopping).await.expect("the entry point exited").unwrap();
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.is_some_and(|s| s.success()), "the entry point exited with {status:?}:\n{said}");
    assert!(said.contains("draining Envoy"), "{said}");
    assert!(http::get(admin, "/ready").await.is_err(), "Envoy still answers after the entry point exited");
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the gate (`on_503` in gateway-lua/lua/roost/gate.lua) concludes from a 503 that
/// came through Envoy, from the same two headers it reads: Envoy's router stamps
/// `x-envoy-upstream-service-time` on every answer an upstream gave, and
/// `x-envoy-overloaded` on a circuit breaker's overflow; a 503 with neither is Envoy's own
/// (no healthy host), which the gate sends through the wake path once.
fn gate_reading(r: &http::Response) -> &'static str {
    match (r.header("x-envoy-upstream-service-time"), r.header("x-envoy-overloaded")) {
        (_, Some(_)) => "envoy (overloaded)",
        (Some(_), None) => "function",
        (None, None) => "envoy's own (no replica)",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy: full tier (scripts/test.sh)"]
async fn envoys_own_503_and_a_functions_503_differ_by_the_headers_the_gate_reads() {
    let h = Harness::start(XdsMode::Delta).await;
    let port = h.admin_port();

    // A replica that answers 503 itself: Envoy passes it through, stamped, and once.
    let busy = Upstream::start_with_status("busy", 503, &[("retry-after", "7")]).await;
    admin_ok(port, "PUT", "/functions/busy?wait=true", None).await;
    admin_ok(port, "POST", "/functions/busy/endpoints?wait=true", Some(json!({"address": format!("127.0.0.1:{}", busy.port)}))).await;
    let r = h.get("/busy").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("x-envoy-upstream-service-time").is_some(), "a function's 503 is stamped: {:?}", r.headers);
    assert_eq!(r.header("x-envoy-overloaded"), None, "{:?}", r.headers);
    assert_eq!(r.header("retry-after"), Some("7"), "the function's own headers pass");
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap()["upstream"], "busy");
    assert_eq!(gate_reading(&r), "function");
    assert_eq!(busy.hits(), 1, "Envoy does not retry a function's 503");

    // Declared, no endpoint (scaled to zero, or the last replica vanished): not in Envoy
    // at all, and Envoy's own 503.
    admin_ok(port, "PUT", "/functions/empty?wait=true", None).await;
    let r = h.get("/empty").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("no replica of this function"), "{}", r.body);
    assert!(!h.envoy.admin("/config_dump?include_eds").await.contains("fn-empty"), "a function without a replica has no cluster");
    assert_eq!(r.header("x-envoy-upstream-service-time"), None, "{:?}", r.headers);
    assert_eq!(r.header("x-envoy-overloaded"), None, "{:?}", r.headers);
    assert_eq!(gate_reading(&r), "envoy's own (no replica)");

    // Its last endpoint removed (the replica stopped in a scale-down): no healthy host.
    let old = Upstream::start("old").await;
    let addr = format!("127.0.0.1:{}", old.port);
    admin_ok(port, "PUT", "/functions/going?wait=true", None).await;
    admin_ok(port, "POST", "/functions/going/endpoints?wait=true", Some(json!({"address": addr}))).await;
    assert_eq!(h.hit("/going").await, "old");
    admin_ok(port, "DELETE", &format!("/functions/going/endpoints/{addr}?wait=true"), None).await;
    let r = h.get("/going").await;
    assert_eq!(r.status, 503, "{:?}", r.headers);
    assert!(r.body.contains("no replica of this function"), "{}", r.body);
    assert_eq!(r.header("x-envoy-upstream-service-time"), None, "{:?}", r.headers);
    assert_eq!(r.header("x-envoy-overloaded"), None, "{:?}", r.headers);
    assert_eq!(gate_reading(&r), "envoy's own (no replica)");
    assert_eq!(old.hits(), 1, "the removed endpoint got nothing new");

    // Envoy's queue overflows: one connection to a slow replica (concurrency 1) and, set
    // through the control plane's published snapshot, room for one pending request.
    // Four requests at once: at least two overflow, with `x-envoy-overloaded`.
    let slow = Upstream::start_with_delay("slow", Duration::from_millis(1000)).await;
    admin_ok(port, "PUT", "/functions/slow?wait=true", Some(json!({"concurrency": 1}))).await;
    admin_ok(port, "POST", "/functions/slow/endpoints?wait=true", Some(json!({"address": format!("127.0.0.1:{}", slow.port)}))).await;
    let generation = h.cp.store.publish_edited(|snap| {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        use prost::Message;
        let mut c = Cluster::decode(&*snap.of(Kind::Cluster)["fn-slow"].body.value).unwrap();
        let limits = &mut c.circuit_breakers.as_mut().unwrap().thresholds[0];
        limits.max_pending_requests = Some(envoy_types::pb::google::protobuf::UInt32Value { value: 1 });
        snap.insert(Kind::Cluster, "fn-slow", envoy_types::util::pack_any(c));
    });
    let (status, v) = admin(port, "GET", &format!("/sync/{generation}?timeout_ms=10000"), None).await;
    assert_eq!(status, 200, "Envoy ACKs the smaller queue: {v}");
    let listener = h.listener;
    let burst: Vec<_> = (0..4).map(|_| tokio::spawn(async move { http::get(listener, "/slow").await })).collect();
    let mut readings = Vec::new();
    for b in burst {
        let r = b.await.unwrap().expect("an answer through Envoy");
        match r.status {
            200 => {
                assert!(r.header("x-envoy-upstream-service-time").is_some(), "{:?}", r.headers);
                assert_eq!(gate_reading(&r), "function");
            }
            503 => {
                assert_eq!(r.header("x-envoy-overloaded"), Some("true"), "{:?} {}", r.headers, r.body);
                assert_eq!(r.header("x-envoy-upstream-service-time"), None, "{:?}", r.headers);
                assert!(r.body.contains("overflow"), "{}", r.body);
                assert_eq!(gate_reading(&r), "envoy (overloaded)");
            }
            other => panic!("GET /slow in the burst: {other} {}", r.body),
        }
        readings.push(r.status);
    }
    assert!(readings.iter().filter(|&&s| s == 503).count() >= 2, "one active and one pending at most: {readings:?}");
    assert!(readings.contains(&200), "the request on the connection is served: {readings:?}");
    h.shutdown.cancel();
}
