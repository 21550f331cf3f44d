//! Stopping `roost up` while a request is in flight: Envoy is drained first (its
//! listeners told to drain, the stop waiting for its requests in flight), so the request
//! ends with its answer instead of a cut connection.
//!
//! `cargo test --workspace` builds the sibling binaries this needs; run alone, build them
//! first with `cargo build --workspace --bins`.

mod support;

use roost_cli::drain::{DRAIN_WAIT, IN_FLIGHT_FILTER};
use roost_testkit::http;
use roost_testkit::{wait_until, workspace_root};
use std::time::{Duration, Instant};
use support::{work_dir, Platform};

const WAIT: Duration = Duration::from_secs(60);

const DEFS: &str = r#"
usable-functions:
  sleep:
    version: 0.1
    configuration: {programing_language: python, base_function_file_name: sleep.py, function_folder: sleep}
    scaling: {idle_timeout: 60s}
"#;

/// How long the request in flight takes (the `sleep` function's `ms`).
const SLOW: Duration = Duration::from_millis(2000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy, redis-server and nginx with Lua: full tier (scripts/test.sh)"]
async fn stopping_roost_up_lets_a_request_in_flight_through_envoy_finish() {
    let mut p = Platform::up(work_dir("stop", DEFS, &workspace_root().join("faas-runtime")), "process").await;
    let r = http::get(p.port, "/sleep?ms=1").await.unwrap();
    assert_eq!(r.status, 200, "warming sleep: {}", r.body);

    let (gate, admin) = (p.port, p.envoy_admin());
    let slow = tokio::spawn(async move { http::get(gate, &format!("/sleep?ms={}", SLOW.as_millis())).await });
    let filter = format!("/stats?filter={IN_FLIGHT_FILTER}");
    wait_until(WAIT, "the slow request in flight in Envoy", || async {
        let r = http::get(admin, &filter).await.ok()?;
        (roost_cli::drain::in_flight(&r.body) >= 1).then_some(())
    })
    .await;

    let started = Instant::now();
    let stopping = tokio::task::spawn_blocking(move || {
        let status = p.stop();
        (status, started.elapsed())
    });
    let r = tokio::time::timeout(SLOW + Duration::from_secs(5), slow)
        .await
        .expect("the request in flight ended")
        .unwrap()
        .expect("the request in flight was answered, not cut");
    assert_eq!(r.status, 200, "the request in flight: {}", r.body);
    let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON from sleep");
    assert_eq!(body["slept_ms"], SLOW.as_millis() as u64, "{}", r.body);
    let answered = started.elapsed();

    // `roost up` exits once everything has stopped; the drain is bounded.
    let (status, stopped) = tokio::time::timeout(DRAIN_WAIT + Duration::from_secs(40), stopping).await.expect("roost up stopped").unwrap();
    assert!(status.is_some_and(|s| s.success()), "roost up exited with {status:?}");
    eprintln!("request in flight answered {answered:?} into the stop; roost up stopped after {stopped:?}");
}
