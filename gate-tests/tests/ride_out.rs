//! The gate riding out the loss of Envoy and its own restarts (issue 13): the real gate
//! (nginx + Lua, supervised by run.sh) against a real Redis and a fake Envoy that can go
//! down, come back on the same port, or reset a connection after reading a request.

use roost_gate_tests::client::{self, cold_start_ms, json, Body};
use roost_gate_tests::redis_util::{self, cmd, declare};
use roost_gate_tests::{bounded, Answer, FakeEnvoy, Gate};
use roost_testkit::process::free_port;
use roost_testkit::redis::Redis;
use roost_testkit::wait_until;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TEST_LIMIT: Duration = Duration::from_secs(90);

/// nginx's notes of a failed connection to Envoy: expected when a test stops it.
const ENVOY_GONE: &[&str] = &["while connecting to upstream", "while reading response header from upstream"];

// Fields drop in order: the gate stops before Redis and the fake Envoy go away.
struct Stack {
    gate: Gate,
    _redis: Redis,
    envoy: FakeEnvoy,
    _conn: redis::aio::MultiplexedConnection,
}

/// A gate with `f` declared and ready.
async fn stack(env: &[(&str, &str)]) -> Stack {
    let redis = Redis::start().await;
    let envoy = FakeEnvoy::start().await;
    let gate = Gate::start(free_port(), redis.port, &envoy.addr(), env).await;
    let mut conn = redis_util::connect(redis.port).await;
    declare(&mut conn, "f").await;
    cmd(&mut conn, &["SET", "roost:fn:f:ready", "1"]).await;
    Stack { gate, _redis: redis, envoy, _conn: conn }
}

fn body(n: u32) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn requests_arriving_while_envoy_is_down_are_held_and_sent_once_when_it_is_back() {
    bounded(TEST_LIMIT, "envoy down, then up", async {
        let s = stack(&[("ROOST_GATE_MAX_HELD", "2"), ("ROOST_GATE_WAKE_TIMEOUT_MS", "20000")]).await;
        // A pooled connection to Envoy exists...
        assert_eq!(s.gate.get("/f/warm").await.status, 200);
        // ...when Envoy dies.
        let port = s.envoy.port;
        s.envoy.stop().await;
        // Over nginx's default body limit of 1 MB (the gate's is 10 MB).
        let big = body(2_000_000);
        let sent = big.clone();
        let gate_port = s.gate.port;
        // The POST finds Envoy gone (its body goes to the gate's stand-in too)...
        let post =
            tokio::spawn(
                async move { client::request(gate_port, "POST", "/f/b", &[("X-Request-Id", "held-post")], Body::Fixed(&sent)).await },
            );
        let down_at = Instant::now();
        s.gate.wait_held("f", 1).await;
        // ...and the GET, coming after, waits without trying it.
        let get =
            tokio::spawn(async move { client::request(gate_port, "GET", "/f/a?x=1", &[("X-Request-Id", "held-get")], Body::None).await });
        s.gate.wait_held("f", 2).await;
        // Past the cap: 503 at once, as for requests held for a wake.
        let r = s.gate.get("/f/over").await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(json(&r)["function"], "f");
        assert!(json(&r)["error"].as_str().unwrap().contains("waiting for Envoy"), "{}", r.body);

        tokio::time::sleep(Duration::from_secs(1).saturating_sub(down_at.elapsed())).await;
        let envoy = FakeEnvoy::start_on(port).await;
        let up_at = Instant::now();
        let get = get.await.unwrap().unwrap();
        let post = post.await.unwrap().unwrap();
        let answered_after = up_at.elapsed();
        for r in [&get, &post] {
            assert_eq!(r.status, 200, "{}", r.body);
            let ms = cold_start_ms(r).expect("the time held is reported");
            assert!((800..5000).contains(&ms), "held {ms} ms");
        }
        assert!(answered_after < Duration::from_millis(500), "answered {answered_after:?} after Envoy came back");
        assert_eq!(json(&get)["path"], "/f/a?x=1");
        assert_eq!(get.header("x-request-id"), Some("held-get"));
        // Delivered exactly once each, the body whole.
        let seen = envoy.seen();
        assert_eq!(seen.len(), 2, "{:?}", seen.iter().map(|x| &x.path).collect::<Vec<_>>());
        assert_eq!(s.envoy.hits(), 1, "only the warm-up reached the Envoy that died");
        let posted = seen.iter().find(|x| x.method == "POST").expect("the POST was delivered");
        assert!(posted.body == big, "the body is sent whole ({} bytes)", posted.body.len());
        assert_eq!(posted.header("x-request-id"), Some("held-post"));
        assert_eq!(s.gate.held("f").await, 0);

        // Envoy restarted in a blink (its pooled connections closed): nothing fails.
        envoy.stop().await;
        let again = FakeEnvoy::start_on(port).await;
        for i in 0..20 {
            let r = s.gate.get(&format!("/f/after/{i}")).await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
        assert_eq!(again.hits(), 20);

        // A client that hangs up while held for Envoy frees its place (well before the
        // 20 s hold time; wait_held gives up after 10 s).
        again.stop().await;
        let gone = client::send_and_keep(s.gate.port, "/f/gone").await;
        s.gate.wait_held("f", 1).await;
        drop(gone);
        s.gate.wait_held("f", 0).await;
        s.gate.assert_clean_log_but(ENVOY_GONE);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn a_request_held_for_envoy_past_the_deadline_gets_504_json() {
    bounded(TEST_LIMIT, "envoy down past the deadline", async {
        let s = stack(&[("ROOST_GATE_WAKE_TIMEOUT_MS", "800")]).await;
        s.envoy.stop().await;
        let t = Instant::now();
        let r = s.gate.request("POST", "/f/x", &[], Body::Fixed(b"{}")).await;
        let took = t.elapsed();
        assert_eq!(r.status, 504, "{}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(3), "answered after {took:?}");
        let j = json(&r);
        assert_eq!(j["error"], "Envoy did not accept connections within 800 ms; the request was not sent");
        assert_eq!(j["function"], "f");
        assert_eq!(j["request_id"], r.header("x-request-id").unwrap());
        assert_eq!(s.gate.held("f").await, 0);
        s.gate.assert_clean_log_but(ENVOY_GONE);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn a_request_envoy_had_when_it_died_is_sent_again_only_if_idempotent() {
    bounded(TEST_LIMIT, "reset mid-request", async {
        let s = stack(&[]).await;
        // A POST: Envoy read it whole, then its connection was reset.
        s.envoy.then_answer(&[Answer::ResetAfterBody]);
        let r = s.gate.request("POST", "/f/pay", &[("X-Request-Id", "pay-1")], Body::Fixed(b"{\"amount\":5}")).await;
        assert_eq!(r.status, 502, "{}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let j = json(&r);
        assert_eq!(j["error"], "the connection to Envoy failed while it had the request");
        assert_eq!((j["function"].as_str(), j["request_id"].as_str()), (Some("f"), Some("pay-1")));
        let reason = j["reason"].as_str().unwrap();
        assert!(reason.contains("mid-request") && reason.contains("POST is not idempotent"), "{reason}");
        assert_eq!(s.envoy.seen().iter().filter(|x| x.path == "/f/pay").count(), 1, "delivered once, never again");

        // A GET (and a PUT, with its body): sent again, answered 200.
        s.envoy.then_answer(&[Answer::ResetAfterBody]);
        let r = s.gate.request("GET", "/f/read?q=1", &[("X-Request-Id", "read-1")], Body::None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(json(&r)["path"], "/f/read?q=1");
        s.envoy.then_answer(&[Answer::ResetAfterBody]);
        let put = body(50_000);
        let r = s.gate.request("PUT", "/f/doc", &[], Body::Chunked(&put)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let seen = s.envoy.seen();
        let reads: Vec<_> = seen.iter().filter(|x| x.path == "/f/read?q=1").collect();
        assert_eq!(reads.len(), 2, "the GET was delivered twice: reset, then answered");
        assert!(reads.iter().all(|x| x.header("x-request-id") == Some("read-1")));
        let puts: Vec<_> = seen.iter().filter(|x| x.path == "/f/doc").collect();
        assert_eq!(puts.len(), 2);
        assert!(puts.iter().all(|x| x.body == put), "the PUT's body is sent whole both times");
        assert_eq!(s.gate.held("f").await, 0);
        s.gate.assert_clean_log_but(ENVOY_GONE);
    })
    .await;
}

/// When each load request ended, and its status (200) or what went wrong.
type Outcomes = Arc<Mutex<Vec<(Instant, Result<u16, String>)>>>;

/// A steady load of GET /f/... through the gate: `clients` loops, each one request per
/// connection (so a refused connection counts), until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    results: Outcomes,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let results: Outcomes = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|c| {
                let (stop, results) = (stop.clone(), results.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let r = client::get(port, &format!("/f/load/{c}/{i}")).await;
                        let r = match r {
                            Ok(r) if r.status == 200 => Ok(200),
                            Ok(r) => Err(format!("{} {}", r.status, r.body)),
                            Err(e) => Err(e),
                        };
                        results.lock().unwrap().push((Instant::now(), r));
                        i += 1;
                    }
                })
            })
            .collect();
        Load { stop, tasks, results }
    }

    /// Stops it: (requests answered 200, the failures).
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let results = self.results.lock().unwrap();
        let ok = results.iter().filter(|(_, r)| r.is_ok()).count();
        (ok, results.iter().filter_map(|(_, r)| r.clone().err()).collect())
    }

    fn answered(&self) -> usize {
        self.results.lock().unwrap().len()
    }
}

const CLIENTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn graceful_reloads_under_load_fail_no_request() {
    bounded(TEST_LIMIT, "reloads", async {
        let s = stack(&[]).await;
        let load = Load::start(s.gate.port, CLIENTS);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let master = s.gate.nginx_master_pid();
        for _ in 0..5 {
            // As `nginx -s reload` or `docker kill -s HUP` does (run.sh passes it on).
            s.gate.signal("HUP");
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let (ok, failed) = load.finish().await;
        eprintln!("5 reloads under a load of {CLIENTS} clients: {ok} answered 200, {} failed", failed.len());
        assert!(failed.is_empty(), "{} of {} requests failed: {:?}", failed.len(), ok + failed.len(), &failed[..failed.len().min(5)]);
        assert!(ok > 100, "the load ran: {ok}");
        assert_eq!(s.gate.nginx_master_pid(), master, "a reload keeps the master");
        assert_eq!(s.gate.get("/f").await.status, 200);
        s.gate.assert_clean_log();
    })
    .await;
}

/// Whether a process of the process group `pgid` is running (zombies aside: orphans that
/// exited wait for this machine's init to reap them).
fn group_alive(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok()).any(|stat| {
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ')'.
        let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn a_killed_nginx_master_is_replaced_and_loses_at_most_the_requests_in_flight() {
    bounded(TEST_LIMIT, "kill -9 master", async {
        let mut s = stack(&[]).await;
        let load = Load::start(s.gate.port, CLIENTS);
        // run.sh restarts a master that lived less than a second or so only after 1 s.
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let old = s.gate.nginx_master_pid();
        let before = load.answered();
        let killed_at = Instant::now();
        let status = std::process::Command::new("kill").arg("-KILL").arg(old.to_string()).status().unwrap();
        assert!(status.success());
        // A new master (run.sh starts it beside the old workers, which keep serving).
        let gate = &s.gate;
        let new = wait_until(Duration::from_secs(10), "a new nginx master", || async move {
            let pid = std::fs::read_to_string(gate.prefix.join("nginx.pid")).ok()?.trim().parse::<u32>().ok().filter(|&p| p != old)?;
            gate.healthz_now().await?;
            Some(pid)
        })
        .await;
        let new_master_after = killed_at.elapsed();
        // The old workers finish and exit (their Redis subscription's read ends within
        // ROOST_GATE_PING_MS, 5 s).
        wait_until(Duration::from_secs(15), "the old workers to exit", || async { (!group_alive(old)).then_some(()) }).await;
        let old_gone_after = killed_at.elapsed();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let during = load.answered() - before;
        let (ok, failed) = load.finish().await;
        eprintln!(
            "kill -9 of nginx's master under a load of {CLIENTS} clients: {ok} answered 200, {} failed ({during} requests from the kill \
             until the old workers were gone); new master {new} serving after {new_master_after:?}, old workers gone after {old_gone_after:?}; \
             net.ipv4.tcp_migrate_req={}; failures: {failed:?}",
            failed.len(),
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").unwrap_or_default().trim()
        );
        // At most the requests in flight at the kill (one per client).
        assert!(failed.len() <= CLIENTS, "{} failed: {:?}", failed.len(), &failed[..failed.len().min(5)]);
        assert!(new_master_after < Duration::from_secs(5), "{new_master_after:?}");
        assert!(!s.gate.exited(), "run.sh supervises the new master");
        assert_eq!(s.gate.get("/f").await.status, 200);
        assert!(s.gate.log().contains(&format!("nginx's master (pid {old}) was killed")), "run.sh says what happened");
        // And it still stops gracefully.
        s.gate.signal("QUIT");
        let gate = &mut s.gate;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gate.exited() {
            assert!(Instant::now() < deadline, "the gate did not stop on SIGQUIT after a restart; its log:\n{}", gate.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!group_alive(new), "no nginx left behind");
        s.gate.assert_clean_log();
    })
    .await;
}

/// The pure decisions of gate.lua (`last_pass`, `envoy_failure`) run by nginx's own Lua:
/// a configuration whose `init_by_lua` checks each case, so nginx fails to start on the
/// first wrong one, and otherwise exits (`os.exit`) before it would serve.
#[test]
#[ignore = "needs nginx with Lua: full tier (scripts/test.sh)"]
fn envoy_failure_decisions() {
    Gate::check_installed();
    let dir = std::env::temp_dir().join(format!("roost-gate-decisions-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // run.sh renders the gate's configuration; its load_module lines (none on OpenResty)
    // and its lua_package_path are what this one needs.
    let out = std::process::Command::new("sh")
        .arg(roost_gate_tests::gate::run_sh())
        .arg("--render")
        .env("ROOST_GATE_PREFIX", &dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "run.sh --render: {}", String::from_utf8_lossy(&out.stderr));
    let rendered = std::fs::read_to_string(dir.join("nginx.conf")).unwrap();
    let keep = |l: &&str| l.starts_with("load_module") || l.trim_start().starts_with("lua_package_path");
    let lines: Vec<&str> = rendered.lines().filter(keep).collect();
    let (modules, paths): (Vec<&str>, Vec<&str>) = lines.into_iter().partition(|l| l.starts_with("load_module"));
    let conf = format!(
        "{}\npid nginx.pid;\nevents {{}}\nhttp {{\n{}\ninit_by_lua_block {{\n{CASES}\n}}\n}}\n",
        modules.join("\n"),
        paths.join("\n")
    );
    std::fs::write(dir.join("decisions.conf"), conf).unwrap();
    let bin = if rendered.contains("load_module") { "nginx" } else { "openresty" };
    let out = std::process::Command::new(bin)
        .arg("-p")
        .arg(format!("{}/", dir.display()))
        .arg("-c")
        .arg(dir.join("decisions.conf"))
        .args(["-e", "stderr"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if let Ok(pid) = std::fs::read_to_string(dir.join("nginx.pid")) {
        // It got past init_by_lua without exiting: stop it.
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        panic!("nginx started instead of exiting after the cases: {text}");
    }
    assert!(out.status.success() && text.contains("envoy_failure: 10 cases ok"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

const CASES: &str = r#"
local g = require("roost.gate")
local function eq(a, b) return table.concat(a, "|") == table.concat(b, "|") end
assert(eq(g.last_pass("127.0.0.1:1, unix:/p/e.sock"), { "127.0.0.1:1", "unix:/p/e.sock" }))
assert(eq(g.last_pass("127.0.0.1:1, unix:/p/e.sock : 127.0.0.1:1, unix:/p/x.sock"), { "127.0.0.1:1", "unix:/p/x.sock" }))
assert(eq(g.last_pass("502, 597 : 0, 0"), { "0", "0" }))
assert(eq(g.last_pass(nil), {}))
local S = "unix:/p/envoy-down.sock"
-- method, addrs, statuses, bytes sent -> action, bytes Envoy was sent
local cases = {
  { "POST", "127.0.0.1:1, " .. S, "502, 597", "0, 120", "resend", 0 },        -- refused
  { "POST", "127.0.0.1:1, " .. S, "504, 597", "0, 120", "resend", 0 },        -- connect timeout
  { "POST", "127.0.0.1:1, " .. S, "502, 597", "180, 180", "lost", 180 },      -- reset after sending
  { "PATCH", "127.0.0.1:1, " .. S, "502, 597", "5, 5", "lost", 5 },
  { "GET", "127.0.0.1:1, " .. S, "502, 597", "90, 90", "resend", 90 },
  { "DELETE", "127.0.0.1:1, " .. S, "502, 597", "90, 90", "resend", 90 },
  { "GET", "127.0.0.1:1, " .. S, "504, 597", "90, 90", "timeout", 90 },       -- read timeout
  { "GET", "127.0.0.1:1", "597", "90", "foreign", 0 },                        -- a function's 597
  { "GET", S, "597", "90", "resend", 0 },                                     -- straight to the stand-in
  { "GET", "127.0.0.1:1, " .. S, "502, 500", "0, 90", "foreign", 0 },
}
for i, c in ipairs(cases) do
  local action, bytes = g.envoy_failure(c[1], g.last_pass(c[2]), g.last_pass(c[3]), g.last_pass(c[4]))
  if action ~= c[5] or bytes ~= c[6] then
    error("case " .. i .. " (" .. c[1] .. " " .. c[2] .. " / " .. c[3] .. " / " .. c[4] .. "): got "
      .. tostring(action) .. " " .. tostring(bytes) .. ", want " .. c[5] .. " " .. c[6])
  end
end
io.stderr:write("envoy_failure: " .. #cases .. " cases ok\n")
os.exit(0)
"#;

/// A request's path, and whether it was answered right (or what went wrong).
type PathOutcome = (String, Result<(), String>);

/// A real Envoy with a static configuration: every path to the cluster at `upstream`.
fn start_envoy(dir: &std::path::Path, port: u16, admin: u16, upstream: u16) -> roost_testkit::process::Guard {
    let config = format!(
        r#"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: public
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: public
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: function}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: function
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: function
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"#
    );
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("envoy.log")).unwrap();
    roost_testkit::process::Guard::spawn(
        "envoy",
        std::process::Command::new(roost_testkit::envoy::envoy_binary())
            .arg("-c")
            .arg(&path)
            .args(["--disable-hot-restart", "--concurrency", "2", "--log-level", "warn"])
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua, redis-server and Envoy: full tier (scripts/test.sh)"]
async fn a_real_envoy_killed_under_load_fails_only_posts_it_had() {
    bounded(TEST_LIMIT, "real envoy killed", async {
        let dir = std::env::temp_dir().join(format!("roost-gate-envoy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let function = FakeEnvoy::start().await; // the function behind Envoy
        let (port, admin) = (free_port(), free_port());
        let mut envoy = start_envoy(&dir, port, admin, function.port);
        let redis = Redis::start().await;
        let gate = Gate::start(free_port(), redis.port, &format!("127.0.0.1:{port}"), &[("ROOST_GATE_WAKE_TIMEOUT_MS", "20000")]).await;
        let mut conn = redis_util::connect(redis.port).await;
        declare(&mut conn, "f").await;
        cmd(&mut conn, &["SET", "roost:fn:f:ready", "1"]).await;
        let gate_port = gate.port;
        wait_until(Duration::from_secs(20), "Envoy to serve", || async move {
            client::get(gate_port, "/f/up").await.ok().filter(|r| r.status == 200)
        })
        .await;

        // A steady load: half GET, half POST with a body of its own (its length echoed).
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes: Arc<Mutex<Vec<PathOutcome>>> = Arc::default();
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (stop, outcomes) = (stop.clone(), outcomes.clone());
                tokio::spawn(async move {
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let post = c % 2 == 1;
                        let path = format!("/f/{c}/{i}");
                        let payload = vec![b'p'; 10 + i % 1000];
                        let r = if post {
                            client::request(gate_port, "POST", &path, &[], Body::Fixed(&payload)).await
                        } else {
                            client::get(gate_port, &path).await
                        };
                        let outcome = match r {
                            Ok(r) if r.status == 200 => {
                                let len = if post { payload.len() } else { 0 };
                                if json(&r)["body_len"] == len {
                                    Ok(())
                                } else {
                                    Err(format!("wrong answer {}", r.body))
                                }
                            }
                            Ok(r) => Err(format!("{} {}", r.status, r.body)),
                            Err(e) => Err(e),
                        };
                        outcomes.lock().unwrap().push((path, outcome));
                        i += 1;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(700)).await;
        envoy.kill();
        let killed_at = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _envoy = start_envoy(&dir, port, admin, function.port);
        wait_until(Duration::from_secs(20), "the load to go through the new Envoy", || async {
            let n = outcomes.lock().unwrap().len();
            tokio::time::sleep(Duration::from_millis(200)).await;
            (outcomes.lock().unwrap().len() > n + 20).then_some(())
        })
        .await;
        let back_after = killed_at.elapsed();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let outcomes = outcomes.lock().unwrap();
        let failed: Vec<&PathOutcome> = outcomes.iter().filter(|(_, r)| r.is_err()).collect();
        let seen = function.seen();
        let delivered = |path: &str| seen.iter().filter(|s| s.path == path).count();
        eprintln!(
            "a real Envoy killed (kill -9) under {CLIENTS} clients, started again 1 s later: {} requests, {} failed, load through \
             again {back_after:?} after the kill; failures: {failed:?}",
            outcomes.len(),
            failed.len()
        );
        for (path, r) in outcomes.iter() {
            let is_post = path.split('/').nth(2).and_then(|c| c.parse::<usize>().ok()).is_some_and(|c| c % 2 == 1);
            match r {
                Ok(()) if is_post => assert_eq!(delivered(path), 1, "{path}: a POST answered 200 was delivered once"),
                Ok(()) => assert!(delivered(path) >= 1, "{path}"),
                Err(e) => {
                    assert!(is_post, "a GET failed: {path}: {e}");
                    assert!(e.starts_with("502 ") && e.contains("not idempotent"), "{path}: {e}");
                    assert!(delivered(path) <= 1, "{path}: a failed POST was delivered {} times", delivered(path));
                }
            }
        }
        // At most the POSTs inside Envoy when it died (one per POSTing client).
        assert!(failed.len() <= CLIENTS / 2, "{} failed", failed.len());
        gate.assert_clean_log_but(ENVOY_GONE);
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
