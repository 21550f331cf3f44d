//! The orchestrator's lifecycle with an in-process runtime whose replicas are local HTTP
//! servers, against real Redis, the real control plane and the real Envoy. It isolates
//! the orchestration (singleflight, ACK before ready, two-phase drain, crash handling,
//! scale-up from the load in Redis) from any function runtime; the process and Docker
//! runtimes have their own tests.

mod support;

use roost_common::spec::FunctionSpec;
use roost_orchestrator::runtime::{Replica, ReplicaRuntime, RuntimeError, RuntimeEvent};
use roost_testkit::http::Upstream;
use roost_testkit::wait_until;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Replicas are in-process upstreams that answer after `delay`.
struct FakeRuntime {
    delay: Duration,
    starts: AtomicUsize,
    live: Mutex<HashMap<String, Upstream>>,
    tx: mpsc::UnboundedSender<RuntimeEvent>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<RuntimeEvent>>>,
    logs: roost_orchestrator::logs::Logs,
}

impl FakeRuntime {
    fn new(delay: Duration) -> Arc<FakeRuntime> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(FakeRuntime {
            delay,
            starts: AtomicUsize::new(0),
            live: Mutex::default(),
            tx,
            rx: Mutex::new(Some(rx)),
            logs: Default::default(),
        })
    }

    /// Simulates a crash of a replica.
    fn crash(&self, id: &str, function: &str) {
        if let Some(u) = self.live.lock().unwrap().remove(id) {
            u.stop();
        }
        let _ =
            self.tx.send(RuntimeEvent::Exited { replica_id: id.into(), function: function.into(), reason: "killed by the test".into() });
    }
}

#[async_trait::async_trait]
impl ReplicaRuntime for FakeRuntime {
    fn kind(&self) -> &'static str {
        "fake"
    }
    fn logs(&self) -> roost_orchestrator::logs::Logs {
        self.logs.clone()
    }
    async fn prepare(&self, _: &FunctionSpec, _: &str) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn start(&self, spec: &FunctionSpec, hash: &str, id: &str) -> Result<Replica, RuntimeError> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        let u = Upstream::start_with_delay(id, self.delay).await;
        let replica = Replica {
            id: id.into(),
            function: spec.name.clone(),
            version: spec.version.clone(),
            spec_hash: hash.into(),
            address: format!("127.0.0.1:{}", u.port).parse().unwrap(),
            handle: u.port.to_string(),
        };
        self.live.lock().unwrap().insert(id.into(), u);
        Ok(replica)
    }
    async fn stop(&self, replica: &Replica, _: Duration) -> Result<(), RuntimeError> {
        if let Some(u) = self.live.lock().unwrap().remove(&replica.id) {
            u.stop();
        }
        Ok(())
    }
    async fn list(&self) -> Result<Vec<Replica>, RuntimeError> {
        Ok(vec![])
    }
    fn events(&self) -> mpsc::UnboundedReceiver<RuntimeEvent> {
        self.rx.lock().unwrap().take().unwrap()
    }
}

const DEFS: &str = "usable-functions:\n  f:\n    version: 1\n    runtime: {kind: image, image: test}\n    scaling: {idle_timeout: 400ms, max_replicas: 3}\n";

async fn start(b: &Backend, defs: &Defs, rt: Arc<FakeRuntime>) -> (roost_orchestrator::Running, CancellationToken) {
    let stop = CancellationToken::new();
    let state = std::env::temp_dir().join(format!("roost-fake-{}", std::process::id()));
    let o = roost_orchestrator::start_with_runtime(b.orchestrator_config(defs, &state), rt, stop.clone()).await.unwrap();
    wait_until(WAIT, "f declared", || async { (!function_status(o.api_addr.port(), "f").await.is_null()).then_some(()) }).await;
    (o, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy and redis-server: full tier (scripts/test.sh)"]
async fn fifty_wakes_start_one_replica_and_envoy_serves_when_ready() {
    let b = Backend::start().await;
    let defs = Defs::new(DEFS);
    let rt = FakeRuntime::new(Duration::ZERO);
    let (o, stop) = start(&b, &defs, rt.clone()).await;
    let api = o.api_addr.port();
    let wakes: Vec<_> = (0..50).map(|_| tokio::spawn(wake(api, "f"))).collect();
    for w in wakes {
        assert_eq!(w.await.unwrap().0, 200);
    }
    assert_eq!(rt.starts.load(Ordering::SeqCst), 1, "singleflight: one replica for 50 wakes");
    let r = b.call("/f/x").await;
    assert_eq!(r.status, 200, "{}", r.body);
    stop.cancel();
    o.wait().await.expect("the orchestrator stops cleanly");
    assert!(rt.live.lock().unwrap().is_empty(), "shutdown stops every replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy and redis-server: full tier (scripts/test.sh)"]
async fn scale_to_zero_waits_for_the_request_in_flight() {
    let b = Backend::start().await;
    let defs = Defs::new(DEFS);
    let rt = FakeRuntime::new(Duration::from_millis(1500));
    let (o, stop) = start(&b, &defs, rt.clone()).await;
    let api = o.api_addr.port();
    assert_eq!(wake(api, "f").await.0, 200);
    // This request is still in flight when the 400 ms idle timeout passes.
    let port = b.listener;
    let slow = tokio::spawn(async move { roost_testkit::http::get(port, "/f").await });
    wait_until(WAIT, "f draining or asleep", || async {
        let f = function_status(api, "f").await;
        (f["state"] == "draining" || f["state"] == "sleeping").then_some(())
    })
    .await;
    let r = slow.await.unwrap().expect("answered");
    assert_eq!(r.status, 200, "the in-flight request must finish: {}", r.body);
    wait_until(WAIT, "f asleep", || async { (function_status(api, "f").await["state"] == "sleeping").then_some(()) }).await;
    assert!(rt.live.lock().unwrap().is_empty());
    stop.cancel();
    o.wait().await.expect("the orchestrator stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy and redis-server: full tier (scripts/test.sh)"]
async fn a_crash_removes_the_endpoint_and_queueing_scales_up() {
    let b = Backend::start().await;
    let defs = Defs::new(&DEFS.replace("400ms", "1m"));
    let rt = FakeRuntime::new(Duration::ZERO);
    let (o, stop) = start(&b, &defs, rt.clone()).await;
    let api = o.api_addr.port();
    assert_eq!(wake(api, "f").await.0, 200);
    let f = function_status(api, "f").await;
    let (id, addr) = (f["replicas"][0]["id"].as_str().unwrap().to_string(), f["replicas"][0]["address"].as_str().unwrap().to_string());
    rt.crash(&id, "f");
    let cp = b.cp.admin_addr.port();
    wait_until(WAIT, "the crashed replica's endpoint removed", || async {
        let r = support::get_authorized(cp, "/functions/f").await.ok()?;
        (!r.body.contains(&addr)).then_some(())
    })
    .await;
    // The endpoint's removal runs beside the rest of the crash's handling (clearing the
    // ready flag, reading the load), and the status is published after that: it follows
    // within a Redis round trip or two.
    wait_until(WAIT, "f asleep after its only replica crashed", || async {
        (function_status(api, "f").await["state"] == "sleeping").then_some(())
    })
    .await;

    // The load the statsd-listener would write: 1 in flight and 4 queued, target 1 per
    // replica: the orchestrator scales to what the load needs, capped at max 3.
    assert_eq!(wake(api, "f").await.0, 200);
    let client = redis::Client::open(b.redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let now = roost_common::clock::now_ms();
    let _: () = redis::cmd("HSET")
        .arg("roost:fn:f:load")
        .arg(&["in_flight", "1", "pending", "4", "updated_ms", &now.to_string()])
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("PUBLISH").arg("roost:scale").arg(r#"{"function":"f"}"#).query_async(&mut c).await.unwrap();
    wait_until(WAIT, "three replicas ready", || async { (ready_replicas(api, "f").await == 3).then_some(()) }).await;
    let replicas: String = redis::cmd("HGET").arg("roost:fn:f:replicas").arg("ready").query_async(&mut c).await.unwrap();
    assert_eq!(replicas, "3");
    stop.cancel();
    o.wait().await.expect("the orchestrator stops cleanly");
}

/// A sleeping function is not ticked; the supervisor's batched read of every quiet
/// function finds what a lost signal would have told it: requests a gate holds (the
/// function wakes), a ready flag Redis should not hold (taken away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy and redis-server: full tier (scripts/test.sh)"]
async fn a_quiet_function_is_woken_by_the_batched_read_when_its_signal_was_lost() {
    use roost_common::wire::redis::{redis_time_ms, HeldShare};
    let b = Backend::start().await;
    let defs = Defs::new(DEFS);
    let rt = FakeRuntime::new(Duration::ZERO);
    let (o, stop) = start(&b, &defs, rt.clone()).await;
    let api = o.api_addr.port();
    let client = redis::Client::open(b.redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    assert_eq!(function_status(api, "f").await["state"], "sleeping");

    // A ready flag left by a Redis restored from an older snapshot: taken away.
    let _: () = redis::cmd("SET").arg("roost:fn:f:ready").arg(1).query_async(&mut c).await.unwrap();
    wait_until(WAIT, "the stale ready flag taken away", || async {
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        let flag: Option<String> = redis::cmd("GET").arg("roost:fn:f:ready").query_async(&mut c).await.ok()?;
        flag.is_none().then_some(())
    })
    .await;
    assert_eq!(rt.starts.load(Ordering::SeqCst), 0, "a stale flag starts nothing");

    // A gate holds a request and its wake was lost: no PUBLISH, only the held share.
    let time: (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    let share = HeldShare { count: 1, expires_ms: redis_time_ms(time) + 60_000 }.to_value();
    let _: () = redis::cmd("HSET").arg("roost:fn:f:held").arg("gate-test").arg(share).query_async(&mut c).await.unwrap();
    wait_until(WAIT, "f woken by the batched read", || async { (ready_replicas(api, "f").await == 1).then_some(()) }).await;
    assert_eq!(rt.starts.load(Ordering::SeqCst), 1);
    stop.cancel();
    o.wait().await.expect("the orchestrator stops cleanly");
}

/// A TCP proxy to the control plane that forwards everything except the connection that
/// carries `PUT /functions/<stuck>`: that one is held forever (a control plane stuck on
/// one function). Requests on other connections pass.
async fn stuck_proxy(upstream: std::net::SocketAddr, stuck: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { return };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let back = tokio::spawn(async move { tokio::io::copy(&mut sr, &mut cw).await });
                let needle = format!("PUT /functions/{stuck}");
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if String::from_utf8_lossy(&buf[..n]).contains(&needle) {
                        std::future::pending::<()>().await;
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                back.abort();
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy and redis-server: full tier (scripts/test.sh)"]
async fn a_function_stuck_in_the_control_plane_delays_neither_another_wake_nor_status() {
    let b = Backend::start().await;
    let defs = Defs::new(&format!("{DEFS}  stuck:\n    version: 1\n    runtime: {{kind: image, image: test}}\n"));
    let rt = FakeRuntime::new(Duration::ZERO);
    let stop = CancellationToken::new();
    let state = std::env::temp_dir().join(format!("roost-fake-stuck-{}", std::process::id()));
    let mut config = b.orchestrator_config(&defs, &state);
    config.control_plane_url = format!("http://127.0.0.1:{}", stuck_proxy(b.cp.admin_addr, "stuck").await);
    let o = roost_orchestrator::start_with_runtime(config, rt.clone(), stop.clone()).await.unwrap();
    let api = o.api_addr.port();
    // `stuck` is declared first and never answered; `f` and /status carry on.
    let stuck_wake = tokio::spawn(wake(api, "stuck"));
    let bound = Duration::from_secs(10);
    let t0 = std::time::Instant::now();
    let f = tokio::time::timeout(bound, wake(api, "f")).await.expect("f's wake is not held behind stuck's control-plane call");
    assert_eq!(f.0, 200, "{:?}", f.1);
    let s = tokio::time::timeout(bound, status(api)).await.expect("/status is not held either");
    let names: Vec<&str> = s["functions"].as_array().unwrap().iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(names, ["f", "stuck"]);
    let stuck = s["functions"].as_array().unwrap().iter().find(|f| f["name"] == "stuck").unwrap();
    assert_eq!(stuck["state"], "waking", "{stuck}");
    assert!(!stuck_wake.is_finished(), "stuck's wake is still waiting on the control plane");
    eprintln!("f woke and /status answered in {:?}", t0.elapsed());
    assert_eq!(rt.starts.load(Ordering::SeqCst), 1, "only f started a replica");
    stop.cancel();
    o.wait().await.expect("the orchestrator stops cleanly, cancelling the stuck call");
    eprintln!("stopped after {:?}", t0.elapsed());
    stuck_wake.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy and redis-server: full tier (scripts/test.sh)"]
async fn status_read_on_the_ready_notice_already_shows_the_replica() {
    use futures::StreamExt;
    let b = Backend::start().await;
    let defs = Defs::new(DEFS);
    let rt = FakeRuntime::new(Duration::ZERO);
    let (o, stop) = start(&b, &defs, rt.clone()).await;
    let api = o.api_addr.port();
    let client = redis::Client::open(b.redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(roost_common::keys::READY_CHANNEL).await.unwrap();
    let mut notices = pubsub.on_message();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    for round in 1..=10u64 {
        // Woken as the gate wakes it: a signal, nobody waiting on the orchestrator's answer.
        let _: () = redis::cmd("PUBLISH").arg(roost_common::keys::WAKE_CHANNEL).arg("f").query_async(&mut c).await.unwrap();
        // The gate sends held requests on this notice: whoever it answers reads /status next.
        loop {
            let m = tokio::time::timeout(WAIT, notices.next()).await.expect("a ready notice").expect("subscribed");
            let payload: String = m.get_payload().unwrap();
            if payload.contains("\"ready\":true") {
                break;
            }
        }
        let f = function_status(api, "f").await;
        assert_eq!(f["state"], "ready", "round {round}: {f}");
        assert_eq!(f["cold_starts"], round, "round {round}: {f}");
        // Back to zero for the next round (idle timeout 400 ms).
        wait_until(WAIT, "f asleep", || async { (function_status(api, "f").await["state"] == "sleeping").then_some(()) }).await;
    }
    drop(notices);
    stop.cancel();
    o.wait().await.expect("the orchestrator stops cleanly");
}
