//! Envoy as the public entry, against the real Envoy 1.40: a function with a serving
//! replica is called straight, everything else reaches the gate (a stand-in upstream
//! here), and a replica that refuses a request hands it to the gate instead of failing it.

use roost_control_plane::{start, Config};
use roost_testkit::envoy::{Envoy, EnvoyOptions, XdsMode};
use roost_testkit::http::{self, Upstream};
use roost_testkit::process::free_port;
use roost_testkit::wait_until;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

async fn admin_ok(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let r = http::request(port, method, path, &[("content-type", "application/json")], body.as_bytes()).await.unwrap();
    assert_eq!(r.status, 200, "admin {method} {path}: {}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// A control plane with `config` and an Envoy of its, live; cancel the token to stop it.
async fn started(config: Config) -> (roost_control_plane::Running, Envoy, CancellationToken) {
    let shutdown = CancellationToken::new();
    let cp = start(config, shutdown.clone()).await.expect("control plane starts");
    let envoy = Envoy::start(&EnvoyOptions::new(cp.xds_addr.port(), XdsMode::Delta)).await;
    wait_until(WAIT, "Envoy LIVE", || async { envoy.is_live().await.then_some(()) }).await;
    (cp, envoy, shutdown)
}

/// Who answered, the path it was sent, and the headers the stand-ins echo.
#[derive(Debug)]
struct Seen {
    upstream: String,
    path: String,
    original_path: Option<String>,
    request_id: Option<String>,
    cold_start: Option<String>,
    response_id: Option<String>,
}

async fn call(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Seen {
    let r = http::request(port, method, path, headers, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert_eq!(r.status, 200, "{method} {path}: {} {}", r.status, r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    Seen {
        upstream: v["upstream"].as_str().unwrap().into(),
        path: v["path"].as_str().unwrap().into(),
        original_path: r.header("x-seen-original-path").map(String::from),
        request_id: r.header("x-seen-request-id").map(String::from),
        cold_start: r.header("x-roost-cold-start").map(String::from),
        response_id: r.header("x-request-id").map(String::from),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy (ROOST_ENVOY_BIN or scripts/install-deps.sh)"]
async fn serving_functions_go_straight_to_replicas_and_everything_else_to_the_gate() {
    let gate = Upstream::start("gate").await;
    let replica = Upstream::start("replica").await;
    let system = Upstream::start("system").await;
    let (public, listener) = (free_port(), free_port());
    let config = Config {
        listener_port: listener,
        public_bind: Some(format!("127.0.0.1:{public}").parse().unwrap()),
        // A name, as in compose: Envoy looks it up.
        gate_addr: Some(("localhost".into(), gate.port)),
        system_addr: Some(("127.0.0.1".into(), system.port)),
        gate_max_body: 1024,
        ..Config::for_tests()
    };
    let (cp, envoy, shutdown) = started(config).await;
    let admin = cp.admin_addr.port();
    let get = |path: &'static str| call(public, "GET", path, &[], b"");

    // Asleep: the gate gets the request as the client sent it.
    admin_ok(admin, "PUT", "/functions/hello?wait=true", Some(json!({"concurrency": 2, "timeout_ms": 5000}))).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match http::get(public, "/hello/x?y=1").await {
            Ok(r) if r.status == 200 => break,
            other if std::time::Instant::now() > deadline => {
                let log = envoy.log();
                panic!("the gate never answered through the public listener: {other:?}\nEnvoy:\n{}", &log[log.len().saturating_sub(4000)..])
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let s = get("/hello/x?y=1").await;
    assert_eq!((s.upstream.as_str(), s.path.as_str()), ("gate", "/hello/x?y=1"), "{s:?}");
    assert_eq!(s.original_path, None, "a client's x-envoy-original-path never reaches the gate");
    assert!(s.request_id.is_some() && s.request_id == s.response_id, "Envoy makes the request id and returns it: {s:?}");

    // Serving: straight to the replica, prefix stripped, no cold start, the client's id kept.
    let addr = format!("127.0.0.1:{}", replica.port);
    admin_ok(admin, "POST", "/functions/hello/endpoints?wait=true", Some(json!({"address": addr}))).await;
    let s = call(public, "GET", "/hello/x?y=1", &[("x-request-id", "abc-123")], b"").await;
    assert_eq!((s.upstream.as_str(), s.path.as_str()), ("replica", "/x?y=1"), "{s:?}");
    assert_eq!(s.cold_start.as_deref(), Some("none"));
    assert_eq!((s.request_id.as_deref(), s.response_id.as_deref()), (Some("abc-123"), Some("abc-123")));
    let body = vec![b'a'; 1024];
    assert_eq!(call(public, "POST", "/hello", &[], &body).await.upstream, "replica", "a body of exactly the limit goes direct");

    // Gated (the orchestrator scales it up): to the gate despite its replica, until ungated.
    admin_ok(admin, "POST", "/functions/hello/gated?wait=true", None).await;
    assert_eq!(admin_ok(admin, "GET", "/functions/hello", None).await["gated"], true);
    let s = get("/hello/x?y=1").await;
    assert_eq!((s.upstream.as_str(), s.original_path.as_deref()), ("gate", Some("/hello/x?y=1")), "gated: {s:?}");
    admin_ok(admin, "DELETE", "/functions/hello/gated?wait=true", None).await;
    assert_eq!(get("/hello/x").await.upstream, "replica", "ungated: straight again");

    // Bodies: read whole up to the limit (chunked too), 413 in JSON past it, as the gate.
    let raw = "POST /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let answer = String::from_utf8_lossy(&http::raw_exchange(public, raw.as_bytes()).await.expect("an answer")).into_owned();
    assert!(answer.contains("\"upstream\":\"replica\""), "a small chunked body goes direct: {answer}");
    for (what, raw) in [
        ("declared", format!("POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\nConnection: close\r\n\r\n{}", "a".repeat(1025))),
        (
            "chunked",
            format!(
                "POST /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n401\r\n{}\r\n0\r\n\r\n",
                "a".repeat(1025)
            ),
        ),
    ] {
        let answer = String::from_utf8_lossy(&http::raw_exchange(public, raw.as_bytes()).await.expect("an answer")).into_owned();
        assert!(
            answer.starts_with("HTTP/1.1 413") && answer.contains("over the limit of 1024 bytes"),
            "{what} body over the limit: {answer}"
        );
        assert!(answer.to_ascii_lowercase().contains("content-type: application/json"), "{answer}");
    }
    let s = call(public, "GET", "/hello", &[("x-request-id", "has space")], b"").await;
    assert_eq!(s.upstream, "gate", "an X-Request-Id the gate would replace");
    assert_eq!(get("/nope").await.upstream, "gate", "an undeclared name: the gate's 404");
    assert_eq!(get("/hello2").await.upstream, "gate", "/hello2 is not hello");

    // The management API's paths go to the orchestrator as sent, bodies past the gate's
    // limit too (a deploy); a function name that merely starts so does not.
    for path in ["/system", "/system/functions", "/system/functions/a?x=1"] {
        let s = get(path).await;
        assert_eq!((s.upstream.as_str(), s.path.as_str()), ("system", path), "{s:?}");
    }
    let big = vec![b'a'; 4096];
    let s = call(public, "PUT", "/system/functions/a", &[("content-type", "application/gzip")], &big).await;
    assert_eq!(s.upstream, "system", "a deploy larger than the gate's body limit: {s:?}");
    assert_eq!(get("/systems").await.upstream, "gate");

    // An `auth: token` function: 401 without the token or with another, asleep or awake;
    // with it, the call goes on as any other, and no replica sees the token.
    let token = "the-api-token-0123456789";
    let bearer = format!("Bearer {token}");
    admin_ok(admin, "PUT", "/functions/secret?wait=true", Some(json!({"concurrency": 1, "timeout_ms": 5000, "auth": token}))).await;
    let refused = |path: &'static str, auth: Option<&'static str>| async move {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        http::request(public, "GET", path, &headers, b"").await.unwrap()
    };
    for (path, auth) in [("/secret", None), ("/secret/x", None), ("/secret", Some("Bearer wrong")), ("/secret/x", Some("Basic abc"))] {
        let r = refused(path, auth).await;
        assert_eq!(r.status, 401, "{path} {auth:?}: {}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("a JSON 401 ({e}): {}", r.body));
        assert!(v["error"].as_str().is_some_and(|e| e.starts_with("function \"secret\" needs the platform's API token")), "{v}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    // Behind the gate (a call it held while the function woke), the same JSON 401.
    let r = http::request(listener, "GET", "/secret", &[], b"").await.unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("a JSON 401 behind the gate ({e}): {}", r.body));
    assert!(v["error"].as_str().is_some_and(|e| e.contains("API token")), "{v}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let s = call(public, "GET", "/secret/x", &[("authorization", bearer.as_str())], b"").await;
    assert_eq!(s.upstream, "gate", "asleep, with the token: the gate wakes it: {s:?}");
    admin_ok(admin, "POST", "/functions/secret/endpoints?wait=true", Some(json!({"address": format!("127.0.0.1:{}", replica.port)}))).await;
    let r = http::request(public, "GET", "/secret/x", &[("authorization", bearer.as_str())], b"").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"upstream\":\"replica\""), "{}", r.body);
    assert_eq!(r.header("x-seen-authorization"), None, "the replica never sees the token");
    assert_eq!(refused("/secret", None).await.status, 401, "awake: still refused without it");
    let r = http::request(public, "GET", "/hello", &[("authorization", "Bearer mine")], b"").await.unwrap();
    assert_eq!(r.header("x-seen-authorization"), Some("Bearer mine"), "a public function gets its callers' own Authorization");
    admin_ok(admin, "DELETE", &format!("/functions/secret/endpoints/127.0.0.1:{}?wait=true", replica.port), None).await;
    admin_ok(admin, "DELETE", "/functions/secret?wait=true", None).await;
    assert_eq!(get("/secret").await.upstream, "gate", "removed: its refusals are gone (the gate's 404)");

    // A replica that refuses: the retry goes to the gate, with the path the client sent.
    let dead = format!("127.0.0.1:{}", free_port());
    admin_ok(admin, "DELETE", &format!("/functions/hello/endpoints/{addr}?wait=true"), None).await;
    admin_ok(admin, "POST", "/functions/hello/endpoints?wait=true", Some(json!({"address": dead}))).await;
    let s = get("/hello/x?y=1").await;
    assert_eq!(s.upstream, "gate", "{s:?}");
    assert_eq!(s.original_path.as_deref(), Some("/hello/x?y=1"), "the gate finds the path as sent: {s:?}");

    // A replica that dies with the request in it (reads it, then closes the connection):
    // the request is sent once more, through the gate, as the gate did before.
    let dying = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dying_addr = dying.local_addr().unwrap().to_string();
    let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = reads.clone();
    let dier = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut conn, _)) = dying.accept().await {
            let mut buf = [0u8; 4096];
            if conn.read(&mut buf).await.unwrap_or(0) > 0 {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            drop(conn);
        }
    });
    admin_ok(admin, "DELETE", &format!("/functions/hello/endpoints/{dead}?wait=true"), None).await;
    admin_ok(admin, "POST", "/functions/hello/endpoints?wait=true", Some(json!({"address": dying_addr}))).await;
    let s = get("/hello/y").await;
    assert_eq!((s.upstream.as_str(), s.original_path.as_deref()), ("gate", Some("/hello/y")), "{s:?}");
    assert!(reads.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the dying replica had the request first");
    dier.abort();
    admin_ok(admin, "DELETE", &format!("/functions/hello/endpoints/{dying_addr}?wait=true"), None).await;

    // Draining its last replica sends the function back to the gate.
    admin_ok(admin, "POST", "/functions/hello/endpoints?wait=true", Some(json!({"address": addr}))).await;
    assert_eq!(get("/hello").await.upstream, "replica");
    let before = replica.hits();
    admin_ok(admin, "POST", &format!("/functions/hello/endpoints/{addr}/drain?wait=true"), None).await;
    for _ in 0..10 {
        assert_eq!(get("/hello").await.upstream, "gate");
    }
    assert_eq!(replica.hits(), before, "a draining replica got new requests");

    // Envoy's own answers are JSON, as the gate's.
    let answer = http::raw_exchange(public, b"GET /hello HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n").await.expect("an answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400") && answer.to_ascii_lowercase().contains("content-type: application/json"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(serde_json::from_str::<Value>(body).map(|v| v["error"].is_string()).unwrap_or(false), "{answer}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy (ROOST_ENVOY_BIN or scripts/install-deps.sh)"]
async fn a_gated_function_reaches_its_replica_while_the_gate_is_away() {
    // The gate restarting (nothing listens on its port): a gated function with a serving
    // replica is still answered, by the replica; a sleeping one cannot be.
    let replica = Upstream::start("replica").await;
    let public = free_port();
    let config = Config {
        public_bind: Some(format!("127.0.0.1:{public}").parse().unwrap()),
        gate_addr: Some(("127.0.0.1".into(), free_port())),
        ..Config::for_tests()
    };
    let (cp, _envoy, shutdown) = started(config).await;
    let admin = cp.admin_addr.port();
    admin_ok(admin, "PUT", "/functions/hello?wait=true", Some(json!({"concurrency": 2, "timeout_ms": 5000}))).await;
    admin_ok(admin, "POST", "/functions/hello/waking?wait=true", None).await;
    let addr = format!("127.0.0.1:{}", replica.port);
    admin_ok(admin, "POST", "/functions/hello/endpoints?wait=true", Some(json!({"address": addr}))).await;
    assert_eq!(admin_ok(admin, "GET", "/functions/hello", None).await["gated"], true, "waking gated it");
    let s = call(public, "GET", "/hello/x?y=1", &[], b"").await;
    assert_eq!((s.upstream.as_str(), s.path.as_str()), ("replica", "/x?y=1"), "the gate refused: the replica took it: {s:?}");
    let r = http::get(public, "/asleep").await.unwrap();
    assert_eq!(r.status, 503, "no gate, no replica: {}", r.body);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy (ROOST_ENVOY_BIN or scripts/install-deps.sh)"]
async fn asynchronous_calls_go_to_the_async_worker_as_sent_with_the_gates_body_limit() {
    let gate = Upstream::start("gate").await;
    let worker = Upstream::start_with_status("async", 202, &[]).await;
    let public = free_port();
    let config = Config {
        listener_port: free_port(),
        public_bind: Some(format!("127.0.0.1:{public}").parse().unwrap()),
        gate_addr: Some(("127.0.0.1".into(), gate.port)),
        // A name, as in compose: Envoy looks it up.
        async_addr: Some(("localhost".into(), worker.port)),
        gate_max_body: 1024,
        ..Config::for_tests()
    };
    let (cp, envoy, shutdown) = started(config).await;
    let admin = cp.admin_addr.port();
    let token = "the-api-token-0123456789";
    let bearer = format!("Bearer {token}");
    admin_ok(admin, "PUT", "/functions/hello?wait=true", Some(json!({"concurrency": 2, "timeout_ms": 5000}))).await;
    admin_ok(admin, "PUT", "/functions/secret?wait=true", Some(json!({"concurrency": 1, "timeout_ms": 5000, "auth": token}))).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match http::get(public, "/async/hello").await {
            Ok(r) if r.status == 202 => break,
            other if std::time::Instant::now() > deadline => {
                let log = envoy.log();
                panic!(
                    "the async worker never answered through the public listener: {other:?}\nEnvoy:\n{}",
                    &log[log.len().saturating_sub(4000)..]
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    // Who answered, and the path it was sent.
    let send = |method: &'static str, path: &'static str, headers: Vec<(&'static str, String)>, body: Vec<u8>| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = http::request(public, method, path, &headers, &body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        (r.status, v["upstream"].as_str().unwrap_or("").to_string(), v["path"].as_str().unwrap_or("").to_string(), r)
    };

    // Submits (both spellings) and a call's status: to the worker, the path as sent.
    for (method, path) in [
        ("POST", "/async/hello"),
        ("POST", "/async/hello/x?y=1"),
        ("PUT", "/async-function/hello"),
        ("POST", "/async-function/hello/a/b?c=d"),
        ("GET", "/async/calls/0123abcd"),
        ("GET", "/async"),
        ("POST", "/async/undeclared/x"),
    ] {
        let (status, upstream, seen, _) = send(method, path, vec![], b"{}".to_vec()).await;
        assert_eq!((status, upstream.as_str(), seen.as_str()), (202, "async", path), "{method} {path}");
    }
    // Names that merely start so, and the functions' own paths: the gate.
    for path in ["/asyncx", "/asyncx/hello", "/async-functions/hello", "/hello/async"] {
        let (status, upstream, seen, _) = send("GET", path, vec![], vec![]).await;
        assert_eq!((status, upstream.as_str(), seen.as_str()), (200, "gate", path), "{path}");
    }

    // Bodies: up to the gate's limit to the worker, 413 in JSON past it (declared or chunked).
    let (status, upstream, _, _) = send("POST", "/async/hello", vec![], vec![b'a'; 1024]).await;
    assert_eq!((status, upstream.as_str()), (202, "async"), "a body of exactly the limit");
    let before = worker.hits();
    for (what, raw) in [
        ("declared", format!("POST /async/hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\nConnection: close\r\n\r\n{}", "a".repeat(1025))),
        (
            "chunked",
            format!(
                "POST /async-function/hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n401\r\n{}\r\n0\r\n\r\n",
                "a".repeat(1025)
            ),
        ),
    ] {
        let answer = String::from_utf8_lossy(&http::raw_exchange(public, raw.as_bytes()).await.expect("an answer")).into_owned();
        assert!(
            answer.starts_with("HTTP/1.1 413") && answer.contains("over the limit of 1024 bytes"),
            "{what} body over the limit: {answer}"
        );
        assert!(answer.to_ascii_lowercase().contains("content-type: application/json"), "{answer}");
    }
    assert_eq!(worker.hits(), before, "the worker never saw a body over the limit");

    // An `auth: token` function: its async paths are refused without the token, as its own.
    for (path, auth) in [
        ("/async/secret", None),
        ("/async/secret/x", None),
        ("/async-function/secret", Some("Bearer wrong")),
        ("/async-function/secret/x?y=1", Some("Basic abc")),
    ] {
        let headers = auth.iter().map(|a| ("authorization", a.to_string())).collect();
        let (status, _, _, r) = send("POST", path, headers, b"{}".to_vec()).await;
        assert_eq!(status, 401, "{path} {auth:?}: {}", r.body);
        assert!(r.body.contains("API token"), "{}", r.body);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    let (status, upstream, seen, r) = send("POST", "/async/secret/x", vec![("authorization", bearer.clone())], b"{}".to_vec()).await;
    assert_eq!((status, upstream.as_str(), seen.as_str()), (202, "async", "/async/secret/x"));
    assert_eq!(r.header("x-seen-authorization"), Some(bearer.as_str()), "the worker gets the token, to pass on with the call");
    let (status, upstream, _, _) = send("GET", "/async/secretx", vec![], vec![]).await;
    assert_eq!((status, upstream.as_str()), (202, "async"), "another name: no token asked");
    shutdown.cancel();
}
