//! The whole platform as a user runs it without Docker: `roost up` starts redis-server,
//! the control plane, the statsd-listener, Envoy, the orchestrator (functions as
//! processes) and the gate (Debian's nginx with Lua); requests go to the gate.
//!
//! `cargo test --workspace` builds the sibling binaries this needs; run alone, build them
//! first with `cargo build --workspace --bins`.

mod support;

use roost_common::wire::status::{FunctionState, FunctionStatus};
use roost_testkit::http;
use roost_testkit::{wait_until, workspace_root};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{work_dir, write_atomically, Platform};

const WAIT: Duration = Duration::from_secs(60);

const DEFS: &str = r#"
usable-functions:
  hello:
    version: 0.1
    configuration: {programing_language: python, base_function_file_name: hello.py, function_folder: hello}
    scaling: {idle_timeout: 2s}
  add:
    version: 0.1
    configuration: {programing_language: python, base_function_file_name: add.py, function_folder: add}
    scaling: {idle_timeout: 2s, target_concurrency: 100}
  sleep:
    version: 0.1
    configuration: {programing_language: python, base_function_file_name: sleep.py, function_folder: sleep}
    scaling: {idle_timeout: 2s, max_replicas: 3}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy, redis-server and nginx with Lua: full tier (scripts/test.sh)"]
async fn roost_up_serves_wakes_scales_and_sleeps_without_errors() {
    let p = Platform::up(work_dir("e2e", DEFS, &workspace_root().join("faas-runtime")), "process").await;

    // A cold /hello: held by the gate while the function wakes, then answered.
    let t = Instant::now();
    let r = http::get(p.port, "/hello").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap(), serde_json::json!({"Hello": "World"}));
    let cold = r.header("x-roost-cold-start").unwrap_or("none").to_string();
    assert!(cold.ends_with("ms"), "the first request waited for a cold start: {cold}");
    assert!(r.header("x-request-id").is_some_and(|id| !id.is_empty()));
    eprintln!("cold /hello answered in {:?} (gate says {cold})", t.elapsed());
    let r = http::request(p.port, "GET", "/hello", &[("X-Request-Id", "my-id-1")], b"").await.unwrap();
    assert_eq!((r.status, r.header("x-request-id"), r.header("x-roost-cold-start")), (200, Some("my-id-1"), Some("none")));

    // 100 concurrent requests to a sleeping `add`, each with its own numbers: all right,
    // from one replica.
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let port = p.port;
            tokio::spawn(async move {
                let body = format!(r#"{{"value1": {i}, "value2": 1000}}"#);
                let r = http::request(port, "POST", "/add", &[("Content-Type", "application/json")], body.as_bytes()).await.unwrap();
                (i, r)
            })
        })
        .collect();
    for c in calls {
        let (i, r) = c.await.unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap()["result"], i + 1000, "request {i}");
    }
    let add = p.status("add").await.expect("add is declared");
    assert_eq!(add.cold_starts, 1, "one replica for 100 concurrent cold requests: {add:?}");

    // Unknown function and oversized body.
    let r = http::get(p.port, "/nope").await.unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("no function named"));
    let big = vec![b'x'; 11 * 1024 * 1024];
    let r = http::request(p.port, "POST", "/add", &[], &big).await.unwrap();
    assert_eq!(r.status, 413, "{}", r.body);

    // An edit that adds a function makes it answer within 2 s.
    let t = Instant::now();
    let more = format!("{DEFS}  echo:\n    version: 0.1\n    configuration: {{programing_language: python, base_function_file_name: echo.py, function_folder: echo}}\n");
    write_atomically(&p.definitions(), &more);
    wait_until(Duration::from_secs(2), "echo to answer after the edit", || async {
        let r = http::get(p.port, "/echo/x?y=1").await.ok()?;
        (r.status == 200 && r.body.contains("\"path\": \"/x\"")).then_some(())
    })
    .await;
    eprintln!("edit to first answer: {:?}", t.elapsed());

    // Sustained load on `sleep` adds replicas, with no error. (Requests already queued
    // behind a replica stay with it: Envoy binds a pending request to the host it picked,
    // so the burst is sized to finish within the client's 10 s even served one by one.)
    let mut errors = Vec::new();
    let load: Vec<_> = (0..8)
        .map(|_| {
            let port = p.port;
            tokio::spawn(async move { http::get(port, "/sleep?ms=500").await })
        })
        .collect();
    let mut peak = 0;
    for _ in 0..100 {
        let n = p.status("sleep").await.map_or(0, |f| f.replicas.len());
        peak = peak.max(n);
        if peak >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for l in load {
        match l.await.unwrap() {
            Ok(r) if r.status == 200 => {}
            other => errors.push(format!("{other:?}")),
        }
    }
    assert!(peak >= 2, "queueing should add a replica (peak {peak})");
    assert!(errors.is_empty(), "{errors:?}");

    // The CLI against the running platform: ls, invoke, validate and the load script.
    let roost = |args: &[&str]| p.roost(args);
    let ls = roost(&["ls", "--json"]);
    assert!(ls.status.success());
    let listed: Vec<FunctionStatus> = serde_json::from_slice(&ls.stdout).unwrap();
    assert!(listed.iter().any(|f| f.name == "add"), "{listed:?}");
    let inv = roost(&["invoke", "add", "--data", r#"{"value1": 20, "value2": 22}"#]);
    assert!(inv.status.success());
    assert!(String::from_utf8_lossy(&inv.stdout).contains("42"));
    let val = roost(&["validate", p.definitions().to_str().unwrap()]);
    assert!(val.status.success(), "{}", String::from_utf8_lossy(&val.stderr));
    let load = roost(&["load", "hello", "--rate", "40", "--seconds", "2"]);
    let out = String::from_utf8_lossy(&load.stdout);
    assert!(load.status.success(), "{out}");
    assert!(out.contains("REQ/S") && out.contains(", 0 errors"), "{out}");
    // --json on every command that prints: a JSON object per line.
    let lines = |o: &std::process::Output| -> Vec<serde_json::Value> {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
    };
    let load = lines(&roost(&["load", "hello", "--rate", "20", "--seconds", "2", "--json"]));
    assert_eq!(load.last().unwrap()["total_errors"], 0, "{load:?}");
    assert!(load.iter().any(|l| l["second"] == 1 && l["ok"].as_u64().unwrap() > 0), "{load:?}");
    let status = lines(&roost(&["status", "--once", "--json"]));
    assert!(status[0]["functions"].as_array().unwrap().iter().any(|f| f["name"] == "hello" && f["live"].as_u64().is_some()), "{status:?}");
    let val = lines(&roost(&["validate", p.definitions().to_str().unwrap(), "--json"]));
    assert_eq!(val[0]["ok"], true, "{val:?}");

    // No flag, no variable, run in the folder `roost up` ran in: the endpoints file
    // (.roost/endpoints.env) names the platform.
    let bare = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_roost"));
        cmd.args(args).current_dir(&p.dir);
        for var in [
            "ROOST_GATE_URL",
            "ROOST_ORCHESTRATOR_URL",
            "ROOST_REDIS_URL",
            "ROOST_WORK_DIR",
            "ROOST_CONTROL_TOKEN",
            "ROOST_CONTROL_TOKEN_FILE",
        ] {
            cmd.env_remove(var);
        }
        cmd.output().unwrap()
    };
    let ls = bare(&["ls"]);
    let out = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success(), "{}", String::from_utf8_lossy(&ls.stderr));
    assert!(out.contains("hello") && out.contains("add"), "{out}");
    // `roost logs`: `<time> <replica> <line>`, and the NDJSON as is.
    let logs = bare(&["logs", "hello"]);
    let out = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.status.success(), "{}", String::from_utf8_lossy(&logs.stderr));
    assert!(out.lines().any(|l| l.starts_with("20") && l.contains("Z hello-")), "{out}");
    let json = bare(&["logs", "hello", "--json", "--tail", "1"]);
    let out = String::from_utf8_lossy(&json.stdout);
    assert_eq!(out.lines().count(), 1, "{out}");
    let line: roost_common::wire::logs::LogLine = serde_json::from_str(out.trim()).unwrap();
    assert!(line.replica.starts_with("hello-"), "{line:?}");
    let nope = bare(&["logs", "nope"]);
    assert!(!nope.status.success());
    assert!(String::from_utf8_lossy(&nope.stderr).contains("404"), "{}", String::from_utf8_lossy(&nope.stderr));

    // The control token: the orchestrator's API refuses a request without it (or with
    // another), /healthz stays open, and the token file is its owner's only. `roost ls`
    // above found it in endpoints.env.
    let refused = http::get(p.orchestrator, "/status").await.unwrap();
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.body.contains("missing Authorization: Bearer"), "{}", refused.body);
    let wrong = http::request(p.orchestrator, "POST", "/functions/hello/wake", &[("Authorization", "Bearer 0000000000000000")], b"").await;
    assert_eq!(wrong.unwrap().status, 401);
    assert_eq!(http::get(p.orchestrator, "/healthz").await.unwrap().status, 200);
    assert_eq!(p.orchestrator_get("/status").await.status, 200);
    let token_file = p.dir.join(".roost/control-token");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), p.control_token);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
    let no_token = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_roost"));
        cmd.args(["ls", "--orchestrator", &format!("http://127.0.0.1:{}", p.orchestrator)]).env_remove("ROOST_CONTROL_TOKEN");
        cmd.env_remove("ROOST_CONTROL_TOKEN_FILE").env_remove("ROOST_WORK_DIR").current_dir(std::env::temp_dir());
        cmd.output().unwrap()
    };
    assert!(!no_token.status.success());
    assert!(
        String::from_utf8_lossy(&no_token.stderr).contains("requires its control token"),
        "{}",
        String::from_utf8_lossy(&no_token.stderr)
    );

    // Redis: a password only Roost's parts know, and its data in an append-only file in the
    // work dir (kept across restarts).
    let env_file = std::fs::read_to_string(p.dir.join(".roost/endpoints.env")).unwrap();
    let url = env_file.lines().find_map(|l| l.strip_prefix("ROOST_REDIS_URL=")).expect("the Redis URL").to_string();
    let (password, port) = url
        .strip_prefix("redis://:")
        .and_then(|rest| rest.split_once("@127.0.0.1:"))
        .map(|(pw, port)| (pw.to_string(), port.trim_end_matches('/').parse::<u16>().unwrap()))
        .expect("redis://:<password>@127.0.0.1:<port>/");
    assert!(password.len() >= 32, "{password}");
    let ask = |command: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(command.as_bytes()).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert!(ask("PING\r\n").starts_with("-NOAUTH"), "Redis answers without its password");
    assert_eq!(ask(&format!("AUTH {password}\r\nCONFIG GET appendonly\r\n")), "+OK\r\n*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n");
    assert!(p.dir.join(".roost/redis/appendonlydir").is_dir(), "the append-only file is in the work dir");

    // Idle brings everything back to zero.
    wait_until(WAIT, "every function at zero replicas", || async {
        for f in ["hello", "add", "sleep", "echo"] {
            if p.status(f).await.map(|s| s.state) != Some(FunctionState::Sleeping) {
                return None;
            }
        }
        Some(())
    })
    .await;
}
