//! The gate (gateway-lua: the real nginx with the Lua module) against a real Redis, with
//! a fake Envoy and a fake orchestrator written against the Redis contract of
//! common/src/keys.rs. Every wait is bounded; nothing is skipped when nginx is missing
//! (the test fails and says what to install).

use futures::StreamExt;
use roost_common::wire::redis::Refusal;
use roost_gate_tests::client::{self, cold_start_ms, json, Body};
use roost_gate_tests::redis_util::{
    self, calls, cmd, declare, held_in_redis, held_shares, lift, mark_asleep, mark_ready, mark_ready_with, refuse,
};
use roost_gate_tests::{bounded, Answer, Behaviour, FakeEnvoy, FakeOrchestrator, Gate};
use roost_testkit::process::free_port;
use roost_testkit::redis::Redis;
use roost_testkit::wait_until;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TEST_LIMIT: Duration = Duration::from_secs(90);

// Fields drop in order: the gate stops before Redis and the fake Envoy go away.
struct Stack {
    gate: Gate,
    redis: Redis,
    envoy: FakeEnvoy,
    conn: redis::aio::MultiplexedConnection,
}

async fn stack(env: &[(&str, &str)]) -> Stack {
    let redis = Redis::start().await;
    let envoy = FakeEnvoy::start().await;
    let gate = Gate::start(free_port(), redis.port, &envoy.addr(), env).await;
    let conn = redis_util::connect(redis.port).await;
    Stack { gate, redis, envoy, conn }
}

fn is_generated_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn healthz_answers_200_json() {
    bounded(TEST_LIMIT, "healthz", async {
        let s = stack(&[]).await;
        let r = s.gate.get("/healthz").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let j = json(&r);
        assert_eq!(j["status"], "ok");
        assert_eq!(j["workers"], 2);
        assert_eq!(j["subscribed"], 2, "each worker holds a roost:ready subscription");
        assert_eq!(s.envoy.hits(), 0);
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn unknown_function_gets_404_json() {
    bounded(TEST_LIMIT, "404", async {
        let mut s = stack(&[]).await;
        declare(&mut s.conn, "known").await;
        for (path, name) in [("/nope", Some("nope")), ("/nope/deeper?x=1", Some("nope")), ("/", None), ("/Upper", Some("Upper"))] {
            let r = s.gate.get(path).await;
            assert_eq!(r.status, 404, "{path}: {}", r.body);
            assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
            let j = json(&r);
            if let Some(name) = name {
                assert_eq!(j["error"], format!("no function named \"{name}\""), "{path}");
            }
            let id = r.header("x-request-id").expect("X-Request-Id on a 404");
            assert_eq!(j["request_id"], id);
            assert_eq!(cold_start_ms(&r), None);
        }
        assert_eq!(s.envoy.hits(), 0, "nothing unknown reaches Envoy");

        // Declared a moment later (the orchestrator read a new definition): it answers
        // well within a second, the negative cache is short.
        declare(&mut s.conn, "nope").await;
        cmd(&mut s.conn, &["SET", "roost:fn:nope:ready", "1"]).await;
        let t = Instant::now();
        let port = s.gate.port;
        wait_until(Duration::from_secs(2), "a newly declared function to answer", || async move {
            client::get(port, "/nope").await.ok().filter(|r| r.status == 200)
        })
        .await;
        assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn ready_function_is_proxied_with_path_query_and_request_id() {
    bounded(TEST_LIMIT, "proxy", async {
        let mut s = stack(&[]).await;
        declare(&mut s.conn, "f").await;
        cmd(&mut s.conn, &["SET", "roost:fn:f:ready", "1"]).await;

        // Path and query exactly as sent; the request id kept.
        let path = "/f/a/b%20c/?x=1&y=two%2Fthree&x=2";
        let r = s.gate.request("GET", path, &[("X-Request-Id", "keep-me-123")], Body::None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let seen = s.envoy.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].path, path, "Envoy gets the full path and query");
        assert_eq!(seen[0].header("x-request-id"), Some("keep-me-123"));
        assert_eq!(r.header("x-request-id"), Some("keep-me-123"));
        assert_eq!(cold_start_ms(&r), None);
        assert_eq!(json(&r)["path"], path);

        // The bare function path, and no request id: one is made, sent and returned.
        let a = s.gate.get("/f").await;
        let b = s.gate.get("/f?q").await;
        let seen = s.envoy.seen();
        assert_eq!((seen[1].path.as_str(), seen[2].path.as_str()), ("/f", "/f?q"));
        for (r, seen) in [(&a, &seen[1]), (&b, &seen[2])] {
            assert_eq!(r.status, 200);
            let id = r.header("x-request-id").expect("a generated X-Request-Id");
            assert!(is_generated_id(id), "{id}");
            assert_eq!(seen.header("x-request-id"), Some(id), "Envoy gets the id the client gets");
        }
        assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
        // A malformed id (a space in it) is replaced.
        let r = s.gate.request("GET", "/f", &[("X-Request-Id", "a b")], Body::None).await;
        assert!(is_generated_id(r.header("x-request-id").unwrap()));

        // A request Envoy's public listener first tried on a replica comes with its
        // prefix stripped and the path as sent in X-Envoy-Original-Path: that is the one
        // the gate judges and sends on.
        let r = s.gate.request("GET", "/a?x=1", &[("X-Envoy-Original-Path", "/f/a?x=1")], Body::None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(s.envoy.seen().last().unwrap().path, "/f/a?x=1");
        let r = s.gate.request("GET", "/a", &[("X-Envoy-Original-Path", "/nope/a")], Body::None).await;
        assert_eq!((r.status, json(&r)["error"].as_str()), (404, Some("no function named \"nope\"")));

        // No Redis round trip per request: the cache is refreshed in the background at
        // most once per period (1 s), for both workers together.
        cmd(&mut s.conn, &["CONFIG", "RESETSTAT"]).await;
        let t = Instant::now();
        for i in 0..200 {
            let r = s.gate.get(&format!("/f/{i}")).await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let secs = t.elapsed().as_secs_f64();
        let lookups = calls(&mut s.conn, "get").await + calls(&mut s.conn, "sismember").await;
        let bound = 2 * (secs.ceil() as u64 + 1);
        assert!(lookups <= bound, "200 requests in {secs:.2} s cost {lookups} Redis lookups (bound {bound})");
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn fifty_concurrent_cold_requests_wake_the_function_once() {
    bounded(TEST_LIMIT, "one wake", async {
        let mut s = stack(&[]).await;
        declare(&mut s.conn, "cold").await;
        let orch = FakeOrchestrator::start(s.redis.port, Duration::from_millis(300), Behaviour::Answer).await;
        let port = s.gate.port;
        let started = Instant::now();
        let held: Vec<_> = (0..50).map(|i| tokio::spawn(async move { (i, client::get(port, &format!("/cold/x?i={i}")).await) })).collect();
        let mut ids = std::collections::HashSet::new();
        let mut waits = Vec::new();
        for h in held {
            let (i, r) = h.await.unwrap();
            let r = r.unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(r.status, 200, "request {i}: {}", r.body);
            assert_eq!(json(&r)["path"], format!("/cold/x?i={i}"));
            let ms = cold_start_ms(&r).unwrap_or_else(|| panic!("request {i} waited but says none"));
            waits.push(ms);
            ids.insert(r.header("x-request-id").unwrap().to_string());
        }
        let all_done = started.elapsed();
        assert_eq!(ids.len(), 50, "each request has its own id");
        assert!(waits.iter().all(|&ms| (100..2000).contains(&ms)), "cold starts: {waits:?}");
        assert!(*waits.iter().max().unwrap() >= 280, "the orchestrator took 300 ms: {waits:?}");
        // The periodic re-publish starts 2 s into a wait; all were answered before it.
        assert!(all_done < Duration::from_millis(1900), "50 cold requests took {all_done:?}");
        assert_eq!(orch.wake_count(), 1, "50 held requests, one wake: {:?}", orch.wakes());
        assert_eq!(s.envoy.hits(), 50, "no request reached Envoy before the function was ready");
        assert_eq!(s.gate.held("cold").await, 0);

        // Ready now: served at once, no wake.
        let r = s.gate.get("/cold").await;
        assert_eq!((r.status, cold_start_ms(&r)), (200, None));
        assert_eq!(orch.wake_count(), 1);
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn a_held_burst_is_counted_in_redis_and_released_within_the_ready_capacity() {
    bounded(TEST_LIMIT, "burst", async {
        let mut s = stack(&[]).await;
        declare(&mut s.conn, "burst").await;
        s.envoy.set_delay(Duration::from_millis(50));
        // Every scale signal the gate publishes.
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", s.redis.port)).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe("roost:scale").await.unwrap();
        let signals = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
        let sig = signals.clone();
        let listener = tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(m) = messages.next().await {
                let text: String = m.get_payload().unwrap();
                sig.lock().unwrap().push(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}")));
            }
        });

        // 40 requests while the function sleeps: the count reaches Redis as they arrive.
        let port = s.gate.port;
        let spawn = |i: usize| tokio::spawn(async move { client::get(port, &format!("/burst?i={i}")).await });
        let mut calls: Vec<_> = (0..40).map(spawn).collect();
        s.gate.wait_held("burst", 40).await;
        let conn = s.conn.clone();
        wait_until(Duration::from_secs(5), "the held count in Redis", || {
            let mut c = conn.clone();
            async move { (held_in_redis(&mut c, "burst").await == Some(40)).then_some(()) }
        })
        .await;
        let pttl = match cmd(&mut s.conn, &["PTTL", "roost:fn:burst:held"]).await {
            redis::Value::Int(n) => n,
            other => panic!("PTTL answered {other:?}"),
        };
        assert!((1..=5000).contains(&pttl), "the count expires unless renewed: {pttl} ms left");
        wait_until(Duration::from_secs(5), "a scale signal with all 40", || async {
            signals.lock().unwrap().iter().any(|v| v["held"] == 40).then_some(())
        })
        .await;
        let id = s.gate.healthz().await["gate"].as_str().unwrap().to_string();
        assert!(!id.is_empty(), "the gate's id defaults to the host name");
        assert_eq!(held_shares(&mut s.conn, "burst").await.keys().collect::<Vec<_>>(), [&id], "one share, the gate's own");
        for v in signals.lock().unwrap().iter() {
            assert_eq!(v["function"], "burst", "{v}");
            assert_eq!(v["gate"], id.as_str(), "{v}");
        }
        assert_eq!(s.envoy.hits(), 0);

        // One replica serving 2 at a time: never more than 2 reach Envoy at once, and
        // requests that arrive meanwhile queue behind the held ones.
        mark_ready_with(&mut s.conn, "burst", 2).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        calls.extend((40..45).map(spawn));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let early = s.envoy.hits();
        assert!((2..40).contains(&early), "{early} requests reached Envoy at a capacity of 2 in 350 ms");
        assert_eq!(s.envoy.max_in_progress(), 2, "the capacity of the ready replicas bounds what Envoy gets");

        // More replicas ready: the rest go, at most 8 at a time.
        mark_ready_with(&mut s.conn, "burst", 8).await;
        for (i, c) in calls.into_iter().enumerate() {
            let r = c.await.unwrap().unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(r.status, 200, "request {i}: {}", r.body);
        }
        let most = s.envoy.max_in_progress();
        assert!((3..=8).contains(&most), "at most 8 at once after the second notice, and more than 2: {most}");
        assert_eq!(s.envoy.hits(), 45);

        // Nothing held: the count leaves Redis and every slot is given back.
        let conn = s.conn.clone();
        wait_until(Duration::from_secs(5), "the held count gone from Redis", || {
            let mut c = conn.clone();
            async move { held_in_redis(&mut c, "burst").await.is_none().then_some(()) }
        })
        .await;
        let h = s.gate.healthz().await;
        assert_eq!(h["released"]["burst"], 0, "{h}");
        assert_eq!(s.gate.held("burst").await, 0);
        listener.abort();
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn a_burst_on_a_ready_function_waits_in_the_gate_beyond_its_capacity_and_is_counted() {
    // What a gated function's requests meet (the public entry sends a ready function
    // through the gate while it scales up): no request held, a replica ready with room
    // for 2, then 12 at once.
    bounded(TEST_LIMIT, "burst on a ready function", async {
        let mut s = stack(&[]).await;
        declare(&mut s.conn, "busy").await;
        s.envoy.set_delay(Duration::from_millis(100));
        mark_ready_with(&mut s.conn, "busy", 2).await;
        let r = s.gate.get("/busy").await;
        assert_eq!((r.status, cold_start_ms(&r)), (200, None), "ready: served at once");

        let port = s.gate.port;
        let calls: Vec<_> = (0..12).map(|i| tokio::spawn(async move { client::get(port, &format!("/busy?i={i}")).await })).collect();
        // Beyond the capacity they wait in the gate, and the orchestrator hears of them.
        let conn = s.conn.clone();
        wait_until(Duration::from_secs(5), "the requests beyond the capacity counted as held in Redis", || {
            let mut c = conn.clone();
            async move { held_in_redis(&mut c, "busy").await.filter(|n| *n >= 5).map(drop) }
        })
        .await;
        let mut held = 0;
        for (i, c) in calls.into_iter().enumerate() {
            let r = c.await.unwrap().unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(r.status, 200, "request {i}: {}", r.body);
            held += usize::from(cold_start_ms(&r).is_some());
        }
        assert_eq!(s.envoy.max_in_progress(), 2, "never more in Envoy than the replicas have room for");
        assert!(held >= 10, "the ones beyond the capacity say how long they waited: {held} of 12");
        let h = s.gate.healthz().await;
        assert_eq!(h["released"]["busy"], 0, "every slot given back: {h}");
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn held_requests_over_the_cap_get_503_with_retry_after() {
    bounded(TEST_LIMIT, "cap", async {
        let mut s = stack(&[("ROOST_GATE_MAX_HELD", "3"), ("ROOST_GATE_WAKE_TIMEOUT_MS", "20000")]).await;
        declare(&mut s.conn, "capped").await;
        let orch = FakeOrchestrator::start(s.redis.port, Duration::ZERO, Behaviour::Mute).await;
        let port = s.gate.port;
        let held: Vec<_> = (0..3).map(|_| tokio::spawn(async move { client::get(port, "/capped").await })).collect();
        s.gate.wait_held("capped", 3).await;

        let r = s.gate.get("/capped").await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let j = json(&r);
        assert!(j["error"].as_str().unwrap().contains("too many requests"), "{j}");
        assert_eq!(j["function"], "capped");
        assert!(r.header("x-request-id").is_some());

        // The function wakes: the three held requests go through, the count is back to 0.
        mark_ready(&mut s.conn, "capped").await;
        for h in held {
            let r = h.await.unwrap().unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            assert!(cold_start_ms(&r).is_some());
        }
        assert_eq!(s.gate.held("capped").await, 0);
        assert!(orch.wake_count() >= 1);
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn a_request_held_past_the_deadline_gets_504() {
    bounded(TEST_LIMIT, "deadline", async {
        let mut s = stack(&[("ROOST_GATE_WAKE_TIMEOUT_MS", "800")]).await;
        declare(&mut s.conn, "slow").await;
        let orch = FakeOrchestrator::start(s.redis.port, Duration::ZERO, Behaviour::Mute).await;
        let t = Instant::now();
        let r = s.gate.get("/slow/x").await;
        let took = t.elapsed();
        assert_eq!(r.status, 504, "{}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(3), "answered after {took:?}");
        let j = json(&r);
        assert_eq!(j["error"], "function \"slow\" did not become ready within 800 ms");
        let ms = cold_start_ms(&r).expect("the wait is reported");
        assert!((790..3000).contains(&ms), "{ms}");
        assert_eq!(orch.wake_count(), 1, "one wake, no re-publish at the deadline: {:?}", orch.wakes());
        assert_eq!(s.envoy.hits(), 0);
        assert_eq!(s.gate.held("slow").await, 0);
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn the_gates_own_answers_are_counted_by_function_and_status_over_statsd() {
    bounded(TEST_LIMIT, "answers counted", async {
        let statsd = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = statsd.local_addr().unwrap().to_string();
        let mut s = stack(&[("ROOST_GATE_WAKE_TIMEOUT_MS", "800"), ("ROOST_GATE_MAX_HELD", "1"), ("ROOST_STATSD_ADDR", &addr)]).await;
        declare(&mut s.conn, "slow").await;
        let _orch = FakeOrchestrator::start(s.redis.port, Duration::ZERO, Behaviour::Mute).await;
        let port = s.gate.port;
        let held = tokio::spawn(async move { client::get(port, "/slow").await });
        s.gate.wait_held("slow", 1).await;
        assert_eq!(s.gate.get("/slow").await.status, 503, "over the cap of 1");
        assert_eq!(held.await.unwrap().unwrap().status, 504, "past the deadline");
        assert_eq!(s.gate.get("/nobody").await.status, 404, "not declared: not counted");

        // Sent once a second, in one or more datagrams: add them up until both are in.
        let mut counts = std::collections::BTreeMap::new();
        let mut buf = vec![0u8; 65536];
        while counts.len() < 2 {
            let n = tokio::time::timeout(Duration::from_secs(5), statsd.recv(&mut buf)).await.expect("a count within 5 s").unwrap();
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                let (value, tags) = line.strip_prefix("roost.gate.answers:").and_then(|l| l.split_once("|c|#")).expect(line);
                *counts.entry(tags.to_string()).or_insert(0) += value.parse::<u32>().unwrap();
            }
        }
        let expected: std::collections::BTreeMap<String, u32> =
            [("function:slow,code:503".to_string(), 1), ("function:slow,code:504".to_string(), 1)].into();
        assert_eq!(counts, expected);
        let more = tokio::time::timeout(Duration::from_millis(2500), statsd.recv(&mut buf)).await;
        assert!(more.is_err(), "a count sent twice: {:?}", more.map(|r| String::from_utf8_lossy(&buf[..r.unwrap()]).to_string()));
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn a_body_over_the_limit_gets_413_json() {
    bounded(TEST_LIMIT, "413", async {
        let mut s = stack(&[("ROOST_GATE_MAX_BODY", "1024")]).await;
        declare(&mut s.conn, "up").await;
        cmd(&mut s.conn, &["SET", "roost:fn:up:ready", "1"]).await;
        declare(&mut s.conn, "asleep").await;
        let orch = FakeOrchestrator::start(s.redis.port, Duration::from_millis(50), Behaviour::Answer).await;
        let big = vec![b'x'; 4096];
        for (path, body) in
            [("/up", Body::Fixed(&big)), ("/up", Body::Chunked(&big)), ("/asleep", Body::Fixed(&big)), ("/asleep", Body::Chunked(&big))]
        {
            let r = s.gate.request("POST", path, &[], body).await;
            assert_eq!(r.status, 413, "{path} {body:?}: {}", r.body);
            assert_eq!(r.header("content-type"), Some("application/json"));
            let j = json(&r);
            assert_eq!(j["limit"], 1024);
            assert!(j["error"].as_str().unwrap().contains("over the limit"), "{j}");
            assert!(r.header("x-request-id").is_some());
        }
        assert_eq!(s.envoy.hits(), 0);
        assert_eq!(orch.wake_count(), 0, "a refused body wakes nothing");

        // At the limit: through, intact.
        let ok: Vec<u8> = (0..1024u32).map(|i| b'a' + (i % 26) as u8).collect();
        let r = s.gate.request("POST", "/up/in", &[], Body::Fixed(&ok)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = s.gate.request("POST", "/up/in", &[], Body::Chunked(&ok)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(s.envoy.seen().iter().all(|seen| seen.body == ok));
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn envoys_own_503_sends_the_request_through_the_wake_path_once() {
    bounded(TEST_LIMIT, "rewake", async {
        let mut s = stack(&[]).await;
        declare(&mut s.conn, "h").await;
        // Ready as far as the gate knows... but the replica went away in a scale-down.
        cmd(&mut s.conn, &["SET", "roost:fn:h:ready", "1"]).await;
        let orch = FakeOrchestrator::start(s.redis.port, Duration::from_millis(200), Behaviour::Answer).await;
        s.envoy.then_answer(&[Answer::NoHealthyUpstream]);
        let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let headers = [("Content-Type", "application/octet-stream"), ("X-Request-Id", "rw-1")];
        let r = s.gate.request("POST", "/h/p?q=1", &headers, Body::Fixed(&body)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let seen = s.envoy.seen();
        assert_eq!(seen.len(), 2, "Envoy saw the request twice");
        for seen in &seen {
            assert_eq!((seen.method.as_str(), seen.path.as_str()), ("POST", "/h/p?q=1"));
            assert_eq!(seen.header("x-request-id"), Some("rw-1"));
            assert!(seen.body == body, "the body is sent again whole ({} bytes)", seen.body.len());
        }
        assert_eq!(orch.wake_count(), 1, "the 503 woke the function once");
        assert!(seen[1].at.duration_since(seen[0].at) >= Duration::from_millis(180), "sent again only once ready");
        let ms = cold_start_ms(&r).expect("the second pass waited for a cold start");
        assert!(ms >= 180, "{ms}");
        assert_eq!(r.header("x-request-id"), Some("rw-1"));

        // Only once: if Envoy answers 503 again, the client gets that 503.
        s.envoy.then_answer(&[Answer::NoHealthyUpstream, Answer::NoHealthyUpstream]);
        let r = s.gate.request("POST", "/h/again", &[], Body::Fixed(b"{}")).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "no healthy upstream");
        assert_eq!(s.envoy.hits(), 4);
        assert_eq!(orch.wake_count(), 2);
        assert_eq!(s.gate.held("h").await, 0);
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn a_functions_own_503_is_answered_and_never_sent_again() {
    bounded(TEST_LIMIT, "function 503", async {
        let mut s = stack(&[]).await;
        declare(&mut s.conn, "busy").await;
        cmd(&mut s.conn, &["SET", "roost:fn:busy:ready", "1"]).await;
        let orch = FakeOrchestrator::start(s.redis.port, Duration::ZERO, Behaviour::Answer).await;
        for (answer, from, retry) in [(Answer::FunctionUnavailable, "function", "7"), (Answer::Overloaded, "envoy (overloaded)", "1")] {
            s.envoy.then_answer(&[answer]);
            let before = s.envoy.hits();
            let r = s.gate.request("POST", "/busy", &[], Body::Fixed(b"{\"n\":1}")).await;
            assert_eq!(r.status, 503, "{}", r.body);
            assert_eq!(s.envoy.hits(), before + 1, "a POST the function may have run is not sent again");
            assert_eq!(json(&r)["from"], from);
            assert_eq!(r.header("retry-after"), Some(retry));
        }
        assert_eq!(orch.wake_count(), 0);
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn a_not_ready_notice_makes_the_next_request_wake_the_function() {
    bounded(TEST_LIMIT, "not ready", async {
        let mut s = stack(&[]).await;
        declare(&mut s.conn, "nap").await;
        cmd(&mut s.conn, &["SET", "roost:fn:nap:ready", "1"]).await;
        let r = s.gate.get("/nap").await;
        assert_eq!((r.status, cold_start_ms(&r)), (200, None));
        let orch = FakeOrchestrator::start(s.redis.port, Duration::from_millis(200), Behaviour::Answer).await;

        // The orchestrator scales it to zero. The notice reaches each worker's subscriber
        // a moment after PUBLISH returns, so requests sent meanwhile may still pass (the
        // orchestrator drains before it stops anything); the flag must go well before
        // the 1 s cache period would have ended it.
        mark_asleep(&mut s.conn, "nap").await;
        let t = Instant::now();
        let mut passed = 0;
        let r = loop {
            let r = s.gate.get("/nap").await;
            assert_eq!(r.status, 200, "{}", r.body);
            if cold_start_ms(&r).is_some() {
                break r;
            }
            passed += 1;
            assert!(t.elapsed() < Duration::from_millis(400), "the not-ready notice was not applied ({passed} passed)");
        };
        let ms = cold_start_ms(&r).unwrap();
        assert!(ms >= 150, "held until the orchestrator answered: {ms}");
        assert_eq!(orch.wake_count(), 1);
        assert_eq!(s.envoy.hits(), 2 + passed, "nothing reached Envoy while the function slept");
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn a_lost_ready_notice_is_recovered_without_held_requests_polling() {
    bounded(TEST_LIMIT, "lost notice", async {
        let mut s = stack(&[]).await;
        declare(&mut s.conn, "q").await;
        let orch = FakeOrchestrator::start(s.redis.port, Duration::from_millis(100), Behaviour::ReadyWithoutNotice).await;
        let port = s.gate.port;
        let held: Vec<_> = (0..20).map(|_| tokio::spawn(async move { client::get(port, "/q").await })).collect();
        s.gate.wait_held("q", 20).await;
        cmd(&mut s.conn, &["CONFIG", "RESETSTAT"]).await;
        let t = Instant::now();
        for h in held {
            let r = h.await.unwrap().unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let took = t.elapsed();
        assert!(took < Duration::from_secs(4), "recovered after {took:?} (re-check every 2 s)");
        let gets = calls(&mut s.conn, "get").await;
        assert!(gets <= 4, "20 held requests asked Redis {gets} times in {took:?}: they must not each poll");
        assert_eq!(orch.wake_count(), 1, "ready on the re-check: nothing published again");
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn a_lost_wake_is_published_again_every_two_seconds() {
    bounded(TEST_LIMIT, "lost wake", async {
        let mut s = stack(&[]).await;
        declare(&mut s.conn, "w").await;
        let port = s.gate.port;
        // Nobody listens to roost:wake (the orchestrator is restarting): the wake is lost.
        let held: Vec<_> = (0..10).map(|_| tokio::spawn(async move { client::get(port, "/w").await })).collect();
        s.gate.wait_held("w", 10).await;
        let t = Instant::now();
        cmd(&mut s.conn, &["CONFIG", "RESETSTAT"]).await;
        let orch = FakeOrchestrator::start(s.redis.port, Duration::from_millis(100), Behaviour::Answer).await;
        for h in held {
            let r = h.await.unwrap().unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let took = t.elapsed();
        assert!(took < Duration::from_secs(4), "answered {took:?} after the orchestrator came back");
        // At most one re-publish per worker and period; not one per held request.
        let wakes = orch.wake_count();
        assert!((1..=2).contains(&wakes), "{wakes} wakes re-published for 10 held requests");
        let publishes = calls(&mut s.conn, "publish").await;
        assert!(publishes <= 4, "{publishes} PUBLISHes (the wakes and the ready notices)");
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn a_client_that_hangs_up_while_held_frees_its_place() {
    bounded(TEST_LIMIT, "abort", async {
        let mut s = stack(&[("ROOST_GATE_MAX_HELD", "2")]).await;
        declare(&mut s.conn, "gone").await;
        let _orch = FakeOrchestrator::start(s.redis.port, Duration::ZERO, Behaviour::Mute).await;
        let a = client::send_and_keep(s.gate.port, "/gone").await;
        let b = client::send_and_keep(s.gate.port, "/gone").await;
        s.gate.wait_held("gone", 2).await;
        drop((a, b));
        s.gate.wait_held("gone", 0).await;
        // Its places are free again.
        let port = s.gate.port;
        let c = tokio::spawn(async move { client::get(port, "/gone").await });
        s.gate.wait_held("gone", 1).await;
        mark_ready(&mut s.conn, "gone").await;
        let r = c.await.unwrap().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(s.envoy.hits(), 1, "the requests of the clients that left never reached Envoy");
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn the_subscription_comes_back_after_redis_restarts() {
    bounded(TEST_LIMIT, "redis restart", async {
        let mut s = stack(&[]).await;
        let before = s.gate.healthz().await["subscriptions"].as_u64().unwrap();
        s.redis.restart().await;
        let gate = &s.gate;
        wait_until(Duration::from_secs(10), "both workers to subscribe again", || async move {
            let j = gate.healthz().await;
            (j["subscriptions"].as_u64().unwrap() >= before + 2 && j["subscribed"] == 2).then_some(())
        })
        .await;
        // The new Redis is empty: declare again, and wake through the new subscription
        // (well before the 2 s re-check could stand in for it).
        let mut conn = redis_util::connect(s.redis.port).await;
        declare(&mut conn, "back").await;
        let orch = FakeOrchestrator::start(s.redis.port, Duration::from_millis(100), Behaviour::Answer).await;
        let r = s.gate.get("/back").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let ms = cold_start_ms(&r).unwrap();
        assert!(ms < 1500, "woken by the notice, not by the re-check: {ms} ms");
        assert_eq!(orch.wake_count(), 1);
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn an_idle_subscription_stays_up_and_a_silent_redis_is_left_for_a_new_one() {
    bounded(TEST_LIMIT, "idle subscription", async {
        let mut s = stack(&[("ROOST_GATE_PING_MS", "200")]).await;
        let start = s.gate.healthz().await["subscriptions"].as_u64().unwrap();
        // Idle for several ping periods: the pongs keep both subscriptions.
        let watch_until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < watch_until {
            let j = s.gate.healthz().await;
            let now = (j["subscriptions"].as_u64().unwrap(), j["subscribed"].as_u64().unwrap());
            assert_eq!(now, (start, 2), "an idle subscription was dropped: {j}");
            // Samples the window (what is checked is that nothing changes in it); not a handshake.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Redis stops answering (CLIENT PAUSE): no pong, so each worker subscribes anew.
        cmd(&mut s.conn, &["CLIENT", "PAUSE", "2000", "ALL"]).await;
        let gate = &s.gate;
        wait_until(Duration::from_secs(10), "both workers to subscribe again", || async move {
            let j = gate.healthz().await;
            (j["subscriptions"].as_u64().unwrap() >= start + 2 && j["subscribed"] == 2).then_some(())
        })
        .await;
        declare(&mut s.conn, "idle").await;
        let orch = FakeOrchestrator::start(s.redis.port, Duration::from_millis(100), Behaviour::Answer).await;
        let r = s.gate.get("/idle").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(cold_start_ms(&r).unwrap() < 1500, "woken by the notice on the new subscription");
        assert_eq!(orch.wake_count(), 1);
        s.gate.assert_clean_log();
    })
    .await;
}

#[test]
fn run_sh_says_what_to_install_when_nginx_is_missing() {
    let out = std::process::Command::new("sh")
        .arg(roost_gate_tests::gate::run_sh())
        .arg("--check")
        .env("ROOST_GATE_NGINX", "/nonexistent/nginx")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("libnginx-mod-http-lua") && err.contains("lua-nginx-redis"), "{err}");
}

fn failing(retry_after_s: Option<u64>) -> Refusal {
    Refusal {
        status: 502,
        state: "failing".into(),
        error: "function \"broken\" failed to start; it is tried again in 2 s".into(),
        reason: "replica broken-1 exited before it was ready: exit code 1; last output:\nModuleNotFoundError: No module named 'nope'"
            .into(),
        retry_after_s,
    }
}

/// A request for `function`, refused no longer, wakes it (one more wake than `wakes`) and
/// is answered once it is ready.
async fn wakes_again(s: &mut Stack, orch: &FakeOrchestrator, function: &'static str, wakes: usize) {
    let port = s.gate.port;
    let waiting = tokio::spawn(async move { client::get(port, &format!("/{function}")).await });
    wait_until(Duration::from_secs(5), "a wake once the refusal ended", || async { (orch.wake_count() > wakes).then_some(()) }).await;
    mark_ready(&mut s.conn, function).await;
    assert_eq!(waiting.await.unwrap().unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn held_requests_are_answered_at_once_with_a_refusal_and_later_ones_without_a_wake() {
    bounded(TEST_LIMIT, "refusal", async {
        let mut s = stack(&[("ROOST_GATE_WAKE_TIMEOUT_MS", "20000")]).await;
        declare(&mut s.conn, "broken").await;
        let orch = FakeOrchestrator::start(s.redis.port, Duration::ZERO, Behaviour::Mute).await;
        let port = s.gate.port;
        let held: Vec<_> = (0..3).map(|_| tokio::spawn(async move { client::get(port, "/broken").await })).collect();
        s.gate.wait_held("broken", 3).await;
        let t = Instant::now();
        refuse(&mut s.conn, "broken", &failing(Some(30))).await;
        for h in held {
            let r = h.await.unwrap().unwrap();
            assert_eq!(r.status, 502, "{}", r.body);
            let j = json(&r);
            assert_eq!(j["state"], "failing");
            assert_eq!(j["function"], "broken");
            assert!(j["reason"].as_str().unwrap().contains("No module named 'nope'"), "{j}");
            assert!(is_generated_id(j["request_id"].as_str().unwrap()), "{j}");
            let retry: u64 = r.header("retry-after").expect("Retry-After while it backs off").parse().unwrap();
            assert!((1..=30).contains(&retry), "{retry}");
        }
        assert!(t.elapsed() < Duration::from_secs(1), "held requests answered within a second: {:?}", t.elapsed());
        // Later callers are answered at once, without a wake.
        let wakes = orch.wake_count();
        for _ in 0..5 {
            let r = s.gate.get("/broken").await;
            assert_eq!(r.status, 502, "{}", r.body);
            assert!(r.header("retry-after").is_some());
        }
        assert_eq!(orch.wake_count(), wakes, "no wake during a back-off");
        assert_eq!(s.envoy.hits(), 0);
        // The back-off ends: the next request wakes the function again.
        lift(&mut s.conn, "broken").await;
        wakes_again(&mut s, &orch, "broken", wakes).await;
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn a_refusal_in_redis_answers_callers_and_ends_with_its_expiry() {
    bounded(TEST_LIMIT, "refusal key", async {
        let mut s = stack(&[]).await;
        declare(&mut s.conn, "invalid").await;
        // Set without a notice (as after a gate restart): read from Redis.
        let invalid = Refusal {
            status: 503,
            state: "invalid".into(),
            error: "function \"invalid\" is not valid in the definitions file; fix it there (the other functions serve)".into(),
            reason: "scaling.max_replicas: 0 is not allowed".into(),
            retry_after_s: None,
        };
        cmd(&mut s.conn, &["SET", &roost_common::keys::refusal("invalid"), &invalid.to_payload()]).await;
        let r = s.gate.get("/invalid").await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.header("retry-after"), None, "nothing to retry until the file is fixed");
        let j = json(&r);
        assert_eq!((j["state"].as_str(), j["reason"].as_str()), (Some("invalid"), Some("scaling.max_replicas: 0 is not allowed")));
        // A back-off with an expiry: Retry-After from its time to live; gone with it.
        declare(&mut s.conn, "broken").await;
        let orch = FakeOrchestrator::start(s.redis.port, Duration::ZERO, Behaviour::Mute).await;
        cmd(&mut s.conn, &["SET", &roost_common::keys::refusal("broken"), &failing(Some(2)).to_payload(), "PX", "1500"]).await;
        let r = s.gate.get("/broken").await;
        assert_eq!((r.status, r.header("retry-after")), (502, Some("2")), "{}", r.body);
        tokio::time::sleep(Duration::from_millis(1700)).await;
        wakes_again(&mut s, &orch, "broken", 0).await;
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn a_function_s_own_hold_time_bounds_the_wait() {
    bounded(TEST_LIMIT, "hold_ms", async {
        let mut s = stack(&[("ROOST_GATE_WAKE_TIMEOUT_MS", "20000")]).await;
        declare(&mut s.conn, "quick").await;
        cmd(&mut s.conn, &["SET", &roost_common::keys::hold_ms("quick"), "700"]).await;
        let _orch = FakeOrchestrator::start(s.redis.port, Duration::ZERO, Behaviour::Mute).await;
        let t = Instant::now();
        let r = s.gate.get("/quick").await;
        assert_eq!(r.status, 504, "{}", r.body);
        assert!(t.elapsed() >= Duration::from_millis(700) && t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!(json(&r)["error"], "function \"quick\" did not become ready within 700 ms");
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn an_emptied_redis_does_not_turn_a_declared_function_into_a_404() {
    bounded(TEST_LIMIT, "emptied redis", async {
        let mut s = stack(&[("ROOST_GATE_EMPTY_WAIT_MS", "1500")]).await;
        declare(&mut s.conn, "kept").await;
        mark_ready(&mut s.conn, "kept").await;
        assert_eq!(s.gate.get("/kept").await.status, 200);
        // Redis loses everything (a restart without persistence); the orchestrator writes
        // the function back 400 ms later, as its tick does.
        cmd(&mut s.conn, &["FLUSHALL"]).await;
        mark_asleep(&mut s.conn, "kept").await;
        let port = s.gate.port;
        let asked = tokio::spawn(async move { client::get(port, "/kept").await });
        tokio::time::sleep(Duration::from_millis(400)).await;
        declare(&mut s.conn, "kept").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        mark_ready(&mut s.conn, "kept").await;
        let r = asked.await.unwrap().unwrap();
        assert_eq!(r.status, 200, "held, not a 404: {}", r.body);
        // An unknown name still gets its 404 while the set exists.
        assert_eq!(s.gate.get("/never-declared").await.status, 404);
        // With no set at all and nobody writing it back: a 404 after the wait (for a
        // function the gate does not hold ready in its cache).
        cmd(&mut s.conn, &["FLUSHALL"]).await;
        let t = Instant::now();
        let r = s.gate.get("/gone").await;
        assert_eq!(r.status, 404, "{}", r.body);
        assert!(t.elapsed() >= Duration::from_millis(1400) && t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        s.gate.assert_clean_log();
    })
    .await;
}

/// Request lines and headers no client library would send: (what, the bytes, the status
/// the gate answers; `None` for HTTP/0.9, answered with the body alone).
fn nasty_requests() -> Vec<(&'static str, Vec<u8>, Option<u16>)> {
    let close = "Host: x\r\nConnection: close\r\n\r\n";
    let get = |path: &[u8]| [b"GET ".as_slice(), path, b" HTTP/1.1\r\n", close.as_bytes()].concat();
    let header = |h: &[u8]| [b"GET /x HTTP/1.1\r\n".as_slice(), h, b"\r\n", close.as_bytes()].concat();
    let post = |h: &str, body: &str| format!("POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{h}\r\n\r\n{body}").into_bytes();
    vec![
        ("raw bytes 0xff 0xfe in the path", get(b"/\xff\xfe"), Some(404)),
        ("every byte 0x80-0xff in the path", get(&[b"/".as_slice(), &(0x80..=0xffu8).collect::<Vec<_>>()].concat()), Some(404)),
        ("raw UTF-8 in the path", get("/café".as_bytes()), Some(404)),
        ("a NUL in the path", get(b"/a\x00b"), Some(400)),
        ("a control byte in the path", get(b"/a\x01b"), Some(400)),
        ("a percent-encoded NUL", get(b"/%00"), Some(400)),
        ("a path above the root", get(b"/../../etc/passwd"), Some(400)),
        ("a request line of garbage", b"GARBAGE\r\n\r\n".to_vec(), Some(400)),
        ("an invalid method", b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Some(400)),
        ("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Some(400)),
        ("HTTP/2.0 in an HTTP/1 request line", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(), Some(400)),
        ("the HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), Some(400)),
        ("HTTP/9.9", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(), Some(400)),
        ("a TLS ClientHello", [[0x16u8, 3, 1, 0, 0x2e, 1, 0, 0, 0x2a, 3, 3].as_slice(), &[0; 40]].concat(), Some(400)),
        ("a NUL in a header", header(b"X-A: a\x00b"), Some(400)),
        ("a control byte in a header", header(b"X-A: a\x01b"), Some(404)),
        ("bytes 0xff in a header", header(b"X-A: \xff\xfe"), Some(404)),
        ("a header name with parentheses", header(b"X(A): b"), Some(404)),
        ("a folded header", header(b" X-Fold: y"), Some(400)),
        ("a 20000-byte header", header(&[b"X-A: ".as_slice(), &[b'a'; 20000]].concat()), Some(431)),
        ("3000 headers", header(&(0..3000).flat_map(|i| format!("X-{i}: y\r\n").into_bytes()).collect::<Vec<_>>()[..]), Some(431)),
        ("a 20000-byte path", get(&[b"/".as_slice(), &[b'a'; 20000]].concat()), Some(414)),
        ("a Host with a slash", b"GET /x HTTP/1.1\r\nHost: a/b\r\nConnection: close\r\n\r\n".to_vec(), Some(400)),
        ("two Hosts", b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n".to_vec(), Some(400)),
        ("HTTP/1.1 without Host", b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), Some(400)),
        ("an X-Request-Id of bytes 0xff", header(b"X-Request-Id: \xff\xfe"), Some(404)),
        ("a bad chunk size", post("Transfer-Encoding: chunked", "zz\r\nabc\r\n0\r\n\r\n"), Some(400)),
        ("chunked and Content-Length", post("Transfer-Encoding: chunked\r\nContent-Length: 3", "0\r\n\r\n"), Some(400)),
        ("Transfer-Encoding: gzip", post("Transfer-Encoding: gzip", ""), Some(400)),
        ("Content-Length: abc", post("Content-Length: abc", ""), Some(400)),
        ("HTTP/0.9 GET", b"GET /\r\n".to_vec(), None),
        ("HTTP/0.9 POST", b"POST /\r\n".to_vec(), None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn any_bytes_in_a_request_line_or_header_get_a_4xx_in_valid_json() {
    bounded(TEST_LIMIT, "nasty bytes", async {
        let mut s = stack(&[]).await;
        declare(&mut s.conn, "ok").await;
        cmd(&mut s.conn, &["SET", "roost:fn:ok:ready", "1"]).await;
        for (what, bytes, status) in nasty_requests() {
            let r = client::raw(s.gate.port, &bytes).await.unwrap_or_else(|e| panic!("{what}: {e}"));
            // serde_json reads bytes strictly: invalid UTF-8 is an error.
            let j: serde_json::Value = serde_json::from_slice(&r.body)
                .unwrap_or_else(|e| panic!("{what}: the body is not valid JSON ({e}): {:?}", String::from_utf8_lossy(&r.body)));
            assert!(j["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {j}");
            assert_eq!(r.status, status, "{what}: {j}");
            if r.status.is_none() {
                continue; // HTTP/0.9: no headers
            }
            assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
            let id = r.header("x-request-id").unwrap_or_else(|| panic!("{what}: no X-Request-Id"));
            assert!(is_generated_id(id), "{what}: {id}");
            assert_eq!(j["request_id"], id, "{what}");
            // The gate still serves.
            let ok = s.gate.get("/ok").await;
            assert_eq!(ok.status, 200, "after {what}: {}", ok.body);
        }
        // A name that is not valid UTF-8, or not a name, is shown percent-encoded.
        let r = client::raw(s.gate.port, b"GET /\xff\xfe/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["error"], "no function named \"%FF%FE\"");
        let r = client::raw(s.gate.port, "GET /café HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".as_bytes()).await.unwrap();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["error"], "no function named \"caf%C3%A9\"");
        // The internal path of those answers, asked for, names no function.
        let r = s.gate.get("/.roost/malformed").await;
        assert_eq!(r.status, 404, "{}", r.body);
        assert_eq!(json(&r)["error"], "no function named \".roost\"");
        assert_eq!(s.envoy.hits(), s.envoy.seen().iter().filter(|seen| seen.path == "/ok").count(), "nothing else reached Envoy");
        s.gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn sigquit_refuses_new_connections_and_answers_the_held_requests_before_exiting() {
    bounded(TEST_LIMIT, "graceful stop", async {
        let mut s = stack(&[("ROOST_GATE_WAKE_TIMEOUT_MS", "20000")]).await;
        declare(&mut s.conn, "late").await;
        declare(&mut s.conn, "broken").await;
        let _orch = FakeOrchestrator::start(s.redis.port, Duration::ZERO, Behaviour::Mute).await;
        let port = s.gate.port;
        let late = tokio::spawn(async move { client::get(port, "/late").await });
        let broken = tokio::spawn(async move { client::get(port, "/broken").await });
        s.gate.wait_held("late", 1).await;
        s.gate.wait_held("broken", 1).await;

        // compose's stop_signal, sent to run.sh (PID 1 in compose), which passes it on to nginx.
        s.gate.signal("QUIT");
        wait_until(Duration::from_secs(5), "the gate to stop accepting connections", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err().then_some(())
        })
        .await;
        assert!(!late.is_finished() && !broken.is_finished(), "the held requests are still held");
        assert!(!s.gate.exited(), "nginx waits for the held requests");

        // The function wakes; the other one is refused: both held requests get their answer.
        mark_ready(&mut s.conn, "late").await;
        refuse(&mut s.conn, "broken", &failing(None)).await;
        let r = late.await.unwrap().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(cold_start_ms(&r).is_some());
        let r = broken.await.unwrap().unwrap();
        assert_eq!(r.status, 502, "{}", r.body);
        assert_eq!(json(&r)["state"], "failing");
        assert_eq!(s.envoy.hits(), 1);

        // Then nginx exits.
        let gate = &mut s.gate;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gate.exited() {
            assert!(Instant::now() < deadline, "nginx did not exit within 10 s of its last request; its log:\n{}", gate.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        s.gate.assert_clean_log();
    })
    .await;
}
