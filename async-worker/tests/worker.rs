//! The async worker against a real redis-server, with a stand-in for the platform's public
//! entry (functions that answer, fail for a while, refuse, or take their time), and the
//! worker's binary killed with SIGKILL mid-run. The whole platform's path (Envoy, the
//! gate, a sleeping function woken) is tested by `cli/tests/async_calls.rs`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use redis::AsyncCommands;
use roost_async_worker::{start, Config};
use roost_common::keys;
use roost_common::wire::calls::{Accepted, AsyncSettings, CallRecord, CallState, DeadLetter};
use roost_testkit::redis::Redis;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the stand-in saw: each body delivered and how often, and each function's calls.
#[derive(Default)]
struct Seen {
    bodies: HashMap<String, u32>,
    calls: HashMap<String, u32>,
}

type Shared = Arc<Mutex<Seen>>;

/// The stand-in platform: `/echo/...` echoes, `/flaky` answers 503 to its first two
/// calls, `/down` always 503, `/bad` 400, `/slow` waits 50 ms, `/tiny` a second.
async fn platform(seen: Shared) -> u16 {
    async fn handle(
        State(seen): State<Shared>,
        Path(function): Path<String>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: String,
    ) -> impl IntoResponse {
        let calls = {
            let mut s = seen.lock().unwrap();
            *s.bodies.entry(body.clone()).or_default() += 1;
            let c = s.calls.entry(function.clone()).or_default();
            *c += 1;
            *c
        };
        let call_id = headers.get("x-call-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        match function.as_str() {
            "flaky" if calls <= 2 => (StatusCode::SERVICE_UNAVAILABLE, "not yet".to_string()).into_response(),
            "down" => (StatusCode::SERVICE_UNAVAILABLE, "down".to_string()).into_response(),
            "bad" => (StatusCode::BAD_REQUEST, "bad input".to_string()).into_response(),
            "slow" => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                body.into_response()
            }
            "tiny" => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                body.into_response()
            }
            _ => ([("x-echo", "yes")], format!("{method} {uri} {body} id={call_id}")).into_response(),
        }
    }
    let app = axum::Router::new()
        .route("/{function}", axum::routing::any(handle))
        .route(
            "/{function}/{*rest}",
            axum::routing::any(|state, Path((function, _rest)): Path<(String, String)>, method, uri, headers, body| {
                handle(state, Path(function), method, uri, headers, body)
            }),
        )
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// A callback receiver: every call id it was told of, with the state header.
async fn receiver(got: Arc<Mutex<Vec<(String, String, String)>>>) -> u16 {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let got = got.clone();
            async move {
                let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                got.lock().unwrap().push((h("x-call-id"), h("x-call-state"), body));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

async fn declare(redis: &Redis, function: &str, settings: AsyncSettings) {
    let mut c = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = c.sadd(keys::FUNCTIONS, function).await.unwrap();
    let _: () = c.set(keys::async_settings(function), serde_json::to_string(&settings).unwrap()).await.unwrap();
}

fn settings(concurrency: u32, retries: u32, queue: u32) -> AsyncSettings {
    AsyncSettings { concurrency, retries, backoff_ms: 50, queue, timeout_ms: 5_000 }
}

fn config(redis: &Redis, public: u16, callback_port: u16) -> Config {
    use clap::Parser;
    Config::parse_from([
        "async-worker",
        "--bind",
        "127.0.0.1:0",
        "--public-url",
        &format!("http://127.0.0.1:{public}"),
        "--redis-url",
        &redis.url(),
        "--callback-hosts",
        &format!("127.0.0.1:{callback_port}"),
        "--keep-s",
        "600",
    ])
}

async fn submit(http: &reqwest::Client, worker: &str, path: &str, headers: &[(&str, &str)], body: &str) -> reqwest::Response {
    let mut r = http.post(format!("{worker}{path}")).body(body.to_string());
    for (n, v) in headers {
        r = r.header(*n, *v);
    }
    r.send().await.unwrap()
}

async fn finished(http: &reqwest::Client, worker: &str, id: &str) -> CallRecord {
    roost_testkit::wait_until(Duration::from_secs(30), "the call to finish", || async {
        let r = http.get(format!("{worker}/async/calls/{id}")).send().await.ok()?;
        let record: CallRecord = r.json().await.ok()?;
        record.state.finished().then_some(record)
    })
    .await
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn calls_are_stored_delivered_retried_and_kept_with_their_results() {
    let redis = Redis::start().await;
    let seen: Shared = Arc::default();
    let public = platform(seen.clone()).await;
    let hooks = Arc::new(Mutex::new(Vec::new()));
    let hook_port = receiver(hooks.clone()).await;
    for f in ["echo", "flaky", "bad", "slow"] {
        declare(&redis, f, settings(4, 2, 100)).await;
    }
    declare(&redis, "down", settings(4, 1, 100)).await;
    declare(&redis, "tiny", settings(1, 0, 2)).await;
    let shutdown = CancellationToken::new();
    let running = start(config(&redis, public, hook_port), shutdown.clone()).await.unwrap();
    let worker = format!("http://{}", running.addr);
    let http = reqwest::Client::new();

    // Accepted at once, delivered with its method, path, query and body, kept with its answer.
    let r = submit(&http, &worker, "/async/echo/a/b?q=1", &[("content-type", "text/plain")], "hello").await;
    assert_eq!(r.status(), 202);
    assert!(r.headers().get("x-call-id").is_some() && r.headers().get("location").is_some());
    let accepted: Accepted = r.json().await.unwrap();
    assert_eq!((accepted.function.as_str(), accepted.duplicate), ("echo", false));
    assert_eq!(accepted.status_url, format!("/async/calls/{}", accepted.id));
    let record = finished(&http, &worker, &accepted.id).await;
    assert_eq!((record.state, record.attempts), (CallState::Done, 1));
    let result = record.result.unwrap();
    assert_eq!(result.status, 200);
    assert_eq!(result.body.as_deref(), Some(format!("POST /echo/a/b?q=1 hello id={}", accepted.id).as_str()));
    assert!(result.headers.iter().any(|(n, v)| n == "x-echo" && v == "yes"), "{:?}", result.headers);
    // The OpenFaaS path.
    let r = submit(&http, &worker, "/async-function/echo", &[], "of").await;
    assert_eq!(r.status(), 202);

    // A 5xx is retried with a back-off until it passes.
    let id = submit(&http, &worker, "/async/flaky", &[], "f").await.json::<Accepted>().await.unwrap().id;
    let record = finished(&http, &worker, &id).await;
    assert_eq!((record.state, record.attempts), (CallState::Done, 3), "{record:?}");

    // A 4xx is final: failed at once, into the dead letters with the answer kept.
    let bad = submit(&http, &worker, "/async/bad", &[], "b").await.json::<Accepted>().await.unwrap().id;
    let record = finished(&http, &worker, &bad).await;
    assert_eq!((record.state, record.attempts), (CallState::Failed, 1));
    assert!(record.last_error.as_deref().unwrap().contains("answered 400"), "{record:?}");
    assert_eq!(record.result.unwrap().body.as_deref(), Some("bad input"));

    // Retries run out: failed after 1 + retries attempts, with the last error, and a
    // callback tells the allowed host.
    let hook = format!("http://127.0.0.1:{hook_port}/hook");
    let down = submit(&http, &worker, "/async/down", &[("x-callback-url", &hook)], "d").await.json::<Accepted>().await.unwrap().id;
    let record = finished(&http, &worker, &down).await;
    assert_eq!((record.state, record.attempts), (CallState::Failed, 2), "{record:?}");
    assert!(record.last_error.as_deref().unwrap().contains("gave up after 2 attempt(s)"), "{record:?}");
    let mut c = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let letters: Vec<String> = c.lrange(keys::async_dead("down"), 0, -1).await.unwrap();
    let letter: DeadLetter = serde_json::from_str(&letters[0]).unwrap();
    assert_eq!((letter.id.as_str(), letter.attempts), (down.as_str(), 2));
    roost_testkit::wait_until(Duration::from_secs(10), "the callback", || async {
        hooks.lock().unwrap().iter().any(|(id, state, body)| id == &down && state == "failed" && body == "down").then_some(())
    })
    .await;

    // A callback to a host not on the list is refused before anything is stored.
    let r = submit(&http, &worker, "/async/echo", &[("x-callback-url", "http://169.254.169.254/x")], "x").await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("ROOST_ASYNC_CALLBACK_HOSTS"));

    // The same idempotency key gives the first call's id, and the call runs once.
    let key = [("x-idempotency-key", "order-1")];
    let first: Accepted = submit(&http, &worker, "/async/echo", &key, "once").await.json().await.unwrap();
    let second: Accepted = submit(&http, &worker, "/async/echo", &key, "once").await.json().await.unwrap();
    assert_eq!((second.id.as_str(), second.duplicate), (first.id.as_str(), true));
    finished(&http, &worker, &first.id).await;

    // Undeclared and reserved names are 404s; a full queue is 429 with Retry-After.
    assert_eq!(submit(&http, &worker, "/async/ghost", &[], "").await.status(), 404);
    assert_eq!(submit(&http, &worker, "/async/calls", &[], "").await.status(), 404);
    assert_eq!(http.get(format!("{worker}/async/calls/nope")).send().await.unwrap().status(), 404);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = submit(&http, &worker, "/async/tiny", &[], "t").await;
        statuses.push((r.status().as_u16(), r.headers().get("retry-after").is_some()));
    }
    // `tiny` takes a second a call and its queue holds 2 (the call in delivery counts).
    assert_eq!(statuses, [(202, false), (202, false), (429, true), (429, true)]);

    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.bodies.get("once"), Some(&1), "an idempotent submit runs once");
        assert_eq!(seen.calls.get("flaky"), Some(&3));
    }
    shutdown.cancel();
    running.wait().await.unwrap();
}

#[tokio::test]
#[ignore = "needs redis-server: run with --include-ignored"]
async fn every_call_accepted_is_delivered_across_a_kill_of_the_worker() {
    const CALLS: usize = 400;
    let redis = Redis::start().await;
    let seen: Shared = Arc::default();
    let public = platform(seen.clone()).await;
    declare(&redis, "slow", settings(8, 3, 10_000)).await;
    let port = roost_testkit::process::free_port();
    let spawn = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_async-worker"));
        cmd.env_clear()
            .env("ROOST_ASYNC_BIND", format!("127.0.0.1:{port}"))
            .env("ROOST_PUBLIC_URL", format!("http://127.0.0.1:{public}"))
            .env("ROOST_REDIS_URL", redis.url())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        roost_testkit::process::Guard::spawn("async-worker", &mut cmd)
    };
    let worker = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut first = spawn();
    roost_testkit::wait_until(Duration::from_secs(10), "the worker to answer", || async {
        http.get(format!("{worker}/healthz")).send().await.ok().filter(|r| r.status() == 200).map(|_| ())
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..CALLS {
        let r = submit(&http, &worker, "/async/slow", &[], &format!("payload-{i}")).await;
        assert_eq!(r.status(), 202);
        ids.push(r.json::<Accepted>().await.unwrap().id);
    }
    // Killed with a third delivered: eight calls in delivery die with it.
    roost_testkit::wait_until(Duration::from_secs(30), "a third of the calls delivered", || async {
        (seen.lock().unwrap().bodies.len() >= CALLS / 3).then_some(())
    })
    .await;
    first.kill();
    let delivered_before = seen.lock().unwrap().bodies.len();
    assert!(delivered_before < CALLS, "the kill came mid-run");
    let _second = spawn();
    let c = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let mut done = 0;
    for id in &ids {
        let record: CallRecord = roost_testkit::wait_until(Duration::from_secs(60), "every call to finish", || async {
            let v: Option<String> = c.clone().get(keys::async_call(id)).await.ok()?;
            let record: CallRecord = serde_json::from_str(&v?).ok()?;
            record.state.finished().then_some(record)
        })
        .await;
        assert_eq!(record.state, CallState::Done, "{record:?}");
        done += 1;
    }
    let seen = seen.lock().unwrap();
    let lost = (0..CALLS).filter(|i| !seen.bodies.contains_key(&format!("payload-{i}"))).count();
    let duplicated = seen.bodies.values().filter(|n| **n > 1).count();
    println!("accepted {CALLS}, completed {done}, delivered before the kill {delivered_before}, duplicated {duplicated}, lost {lost}");
    assert_eq!(lost, 0);
    assert_eq!(done, CALLS);
    assert!(duplicated <= 8, "at most the calls in delivery at the kill run twice: {duplicated}");
}
