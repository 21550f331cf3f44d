//! Asynchronous calls through the whole platform as `roost up` starts it: submits answered
//! 202 by the async worker behind Envoy's public listener while the function sleeps, each
//! delivered through Envoy and the gate (which wakes the function), the backlog scaling
//! it up, every result kept; a 4xx final and a dead letter.
//!
//! `cargo test --workspace` builds the sibling binaries this needs; run alone, build them
//! first with `cargo build --workspace --bins`.

mod support;

use roost_common::wire::calls::{Accepted, CallRecord, CallState};
use roost_testkit::{http, wait_until, workspace_root};
use std::time::Duration;
use support::{work_dir, Platform};

const DEFS: &str = r#"
usable-functions:
  sleep:
    version: 0.1
    configuration: {programing_language: python, base_function_file_name: sleep.py, function_folder: sleep}
    scaling: {idle_timeout: 2s, max_replicas: 3}
  add:
    version: 0.1
    configuration: {programing_language: python, base_function_file_name: add.py, function_folder: add}
    async: {retries: 1, backoff: 100ms}
"#;

async fn record(port: u16, id: &str) -> Option<CallRecord> {
    let r = http::get(port, &format!("/async/calls/{id}")).await.ok()?;
    serde_json::from_str(&r.body).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy, redis-server and nginx with Lua: full tier (scripts/test.sh)"]
async fn asynchronous_calls_wake_scale_and_finish_through_the_platform() {
    let p = Platform::up(work_dir("async", DEFS, &workspace_root().join("faas-runtime")), "process").await;
    assert_eq!(p.status("sleep").await.map(|s| s.replicas.len()), Some(0), "asleep before the calls");

    // 1,000 calls of 20 ms each to a sleeping function: all accepted at once (no wait
    // for the wake), then delivered three at a time (async.concurrency defaults to
    // max_replicas x target_concurrency) while the backlog scales it to three replicas.
    const CALLS: usize = 1000;
    let mut ids = Vec::new();
    let mut took = Vec::new();
    for i in 0..CALLS {
        let body = format!(r#"{{"ms": 20, "n": {i}}}"#);
        let t = std::time::Instant::now();
        let r = http::request(p.port, "POST", "/async/sleep", &[("content-type", "application/json")], body.as_bytes()).await.unwrap();
        took.push(t.elapsed());
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(serde_json::from_str::<Accepted>(&r.body).unwrap().id);
    }
    took.sort();
    eprintln!("async submits through Envoy: p50 {:?}, p99 {:?}, max {:?}", took[CALLS / 2], took[CALLS * 99 / 100], took[CALLS - 1]);
    let most = wait_until(Duration::from_secs(60), "three sleep replicas for the backlog", || async {
        let n = p.status("sleep").await?.replicas.len();
        (n >= 3).then_some(n)
    })
    .await;
    assert_eq!(most, 3);
    for id in &ids {
        let done = wait_until(Duration::from_secs(120), "every call finished", || async {
            record(p.port, id).await.filter(|r| r.state.finished())
        })
        .await;
        assert_eq!((done.state, done.result.as_ref().map(|r| r.status)), (CallState::Done, Some(200)), "{done:?}");
    }
    // The queue empty, the function goes back to sleep after its idle timeout.
    wait_until(Duration::from_secs(60), "sleep asleep again", || async { (p.status("sleep").await?.replicas.is_empty()).then_some(()) })
        .await;

    // The OpenFaaS spelling, and a function's 4xx: final at once, kept as a dead letter
    // with the function's answer.
    let r = http::request(p.port, "POST", "/async-function/add", &[], br#"{"value1": 2, "value2": 3}"#).await.unwrap();
    let ok = serde_json::from_str::<Accepted>(&r.body).unwrap().id;
    let r = http::request(p.port, "POST", "/async/add", &[("content-type", "application/json")], b"not json").await.unwrap();
    let bad = serde_json::from_str::<Accepted>(&r.body).unwrap().id;
    let ok = wait_until(Duration::from_secs(60), "add done", || async { record(p.port, &ok).await.filter(|r| r.state.finished()) }).await;
    assert!(ok.result.as_ref().unwrap().body.as_deref().unwrap().contains('5'), "{ok:?}");
    let bad =
        wait_until(Duration::from_secs(60), "bad add failed", || async { record(p.port, &bad).await.filter(|r| r.state.finished()) }).await;
    assert_eq!((bad.state, bad.attempts), (CallState::Failed, 1), "{bad:?}");
    let status = bad.result.as_ref().unwrap().status;
    assert!((400..500).contains(&status), "{bad:?}");

    // The platform's metrics count them (the worker's statsd, served with the rest).
    let auth = format!("Bearer {}", p.api_token);
    wait_until(Duration::from_secs(30), "the async metrics", || async {
        let r = http::request(p.port, "GET", "/system/metrics", &[("Authorization", auth.as_str())], b"").await.ok()?;
        let done = format!("roost_async_finished_total{{function=\"sleep\",state=\"done\"}} {CALLS}\n");
        let failed = "roost_async_finished_total{function=\"add\",state=\"failed\"} 1\n";
        (r.body.contains(&done) && r.body.contains(failed) && r.body.contains("roost_async_queued{function=\"sleep\"} 0\n")).then_some(())
    })
    .await;

    // The CLI: a submit waited for, and the failed calls listed.
    let out = p.roost(&["invoke", "add", "--async", "--data", r#"{"value1": 40, "value2": 2}"#, "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("42"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = p.roost(&["calls", "--failed", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: roost_common::wire::calls::CallList = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.calls.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [bad.id.as_str()]);

    // Undeclared and reserved names, a callback host nobody allowed.
    assert_eq!(http::request(p.port, "POST", "/async/nope", &[], b"").await.unwrap().status, 404);
    let r = http::request(p.port, "POST", "/async/sleep", &[("x-callback-url", "http://127.0.0.1:1/")], b"").await.unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
}
