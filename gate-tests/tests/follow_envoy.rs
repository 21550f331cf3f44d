//! The gate following Envoy's addresses: `ROOST_ENVOY_ADDR` names a host, run.sh resolves
//! it to every IPv4 address (one `server` line each) and again every
//! `ROOST_GATE_RESOLVE_EVERY_S`, reloading nginx when the set changes (Swarm replaces a
//! dead Envoy task with one on a new address; two tasks share the name `envoy`).
//!
//! No DNS server: run.sh resolves with `getent ahostsv4`, and these tests put a `getent`
//! of their own first in the gate's PATH, answering from a file the test rewrites. The
//! stand-in Envoys listen on other loopback addresses (127.0.0.2, 127.0.0.3) on one port.

use roost_gate_tests::redis_util::{self, cmd, declare};
use roost_gate_tests::{bounded, client, FakeEnvoy, Gate};
use roost_testkit::process::free_port;
use roost_testkit::redis::Redis;
use roost_testkit::wait_until;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TEST_LIMIT: Duration = Duration::from_secs(90);
const NAME: &str = "envoy.roost.test";
const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// A `getent` answering `ahostsv4 envoy.roost.test` from a file (one address a line, in
/// getent's format), and nothing else; removed on drop.
struct FakeDns {
    dir: PathBuf,
}

impl FakeDns {
    fn new() -> FakeDns {
        let dir = std::env::temp_dir().join(format!("roost-gate-getent-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("create the fake getent's folder");
        let hosts = dir.join("hosts");
        let script = format!(
            "#!/bin/sh\n# gate-tests: getent ahostsv4 {NAME}, from {hosts}\n\
             [ \"$1\" = ahostsv4 ] && [ \"$2\" = {NAME} ] && [ -s {hosts} ] || exit 2\n\
             sed 's/$/ STREAM {NAME}/' {hosts}\n",
            hosts = hosts.display()
        );
        let getent = dir.join("getent");
        std::fs::write(&getent, script).expect("write the fake getent");
        let status = std::process::Command::new("chmod").arg("+x").arg(&getent).status().expect("run chmod");
        assert!(status.success());
        let dns = FakeDns { dir };
        dns.set(&[]);
        dns
    }

    /// From now on the name resolves to `ips` (none: it does not resolve). Written whole
    /// and renamed, so getent never reads half a file.
    fn set(&self, ips: &[Ipv4Addr]) {
        let text: String = ips.iter().map(|ip| format!("{ip}\n")).collect();
        let tmp = self.dir.join("hosts.tmp");
        std::fs::write(&tmp, text).expect("write the fake hosts");
        std::fs::rename(&tmp, self.dir.join("hosts")).expect("rename the fake hosts");
    }

    /// The gate's PATH: this folder first.
    fn path(&self) -> String {
        format!("{}:{}", self.dir.display(), std::env::var("PATH").unwrap_or_default())
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Redis with `f` declared and ready; the connection is kept for the test's lifetime.
async fn redis_with_f() -> (Redis, redis::aio::MultiplexedConnection) {
    let redis = Redis::start().await;
    let mut conn = redis_util::connect(redis.port).await;
    declare(&mut conn, "f").await;
    cmd(&mut conn, &["SET", "roost:fn:f:ready", "1"]).await;
    (redis, conn)
}

/// A steady load of GET /f/... through the gate: `clients` loops, one request per
/// connection, until stopped; every answer but a 200 is a failure.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    failed: Arc<Mutex<Vec<String>>>,
    ok: Arc<Mutex<usize>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let ok = Arc::new(Mutex::new(0));
        let tasks = (0..clients)
            .map(|c| {
                let (stop, failed, ok) = (stop.clone(), failed.clone(), ok.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        match client::get(port, &format!("/f/load/{c}/{i}")).await {
                            Ok(r) if r.status == 200 => *ok.lock().unwrap() += 1,
                            Ok(r) => failed.lock().unwrap().push(format!("{} {}", r.status, r.body)),
                            Err(e) => failed.lock().unwrap().push(e),
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Load { stop, tasks, failed, ok }
    }

    /// Stops it: (requests answered 200, the failures).
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let ok = *self.ok.lock().unwrap();
        let failed = self.failed.lock().unwrap().clone();
        (ok, failed)
    }
}

/// How many requests each stand-in gets over `window`.
async fn hits_over(a: &FakeEnvoy, b: &FakeEnvoy, window: Duration) -> (usize, usize) {
    let (a0, b0) = (a.hits(), b.hits());
    tokio::time::sleep(window).await;
    (a.hits() - a0, b.hits() - b0)
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

fn gate_env(dns: &FakeDns) -> Vec<(&'static str, String)> {
    vec![("PATH", dns.path())]
}

async fn start_gate(redis_port: u16, dns: &FakeDns, envoy_port: u16) -> Gate {
    let env = gate_env(dns);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Gate::start(free_port(), redis_port, &format!("{NAME}:{envoy_port}"), &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn the_gate_follows_envoys_addresses_as_the_name_changes() {
    bounded(TEST_LIMIT, "following Envoy's addresses", async {
        let (redis, _conn) = redis_with_f().await;
        let a = FakeEnvoy::start_at(A, 0).await;
        let b = FakeEnvoy::start_at(B, a.port).await;
        let dns = FakeDns::new();
        dns.set(&[A]);
        let gate = start_gate(redis.port, &dns, a.port).await;
        let conf = std::fs::read_to_string(gate.prefix.join("nginx.conf")).unwrap();
        assert_eq!(count(&conf, &format!("server {A}:{} max_fails=0;", a.port)), 2, "one line in each upstream:\n{conf}");
        let master = gate.nginx_master_pid();

        // The name's one address: every call reaches A.
        for i in 0..10 {
            assert_eq!(gate.get(&format!("/f/a/{i}")).await.status, 200);
        }
        assert_eq!((a.hits(), b.hits()), (10, 0));

        // Under a steady load, the name moves to B (A stays up, as a replaced Envoy task
        // may for a moment): within the resolve period (2 s) and a reload, calls reach B
        // only, and none fails across the switch.
        let load = Load::start(gate.port, 8);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(a.hits() > 10 && b.hits() == 0, "the load goes to A first");
        dns.set(&[B]);
        let moved_at = Instant::now();
        let (a_ref, b_ref) = (&a, &b);
        wait_until(Duration::from_secs(6), "calls reaching B", || async move { (b_ref.hits() > 0).then_some(()) }).await;
        let reached_b = moved_at.elapsed();
        // The old workers finish their requests on A; new ones all go to B.
        wait_until(Duration::from_secs(5), "A to get no more calls", || async move {
            let (to_a, to_b) = hits_over(a_ref, b_ref, Duration::from_millis(300)).await;
            (to_a == 0 && to_b > 0).then_some(())
        })
        .await;
        let only_b = moved_at.elapsed();

        // Two addresses: the calls are spread over both.
        let a_before = a.hits();
        dns.set(&[A, B]);
        wait_until(Duration::from_secs(6), "calls reaching A again", || async move { (a_ref.hits() > a_before).then_some(()) }).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (to_a, to_b) = hits_over(&a, &b, Duration::from_secs(1)).await;
        let share_a = to_a as f64 / (to_a + to_b) as f64;
        assert!((0.25..=0.75).contains(&share_a), "calls spread over A and B: {to_a} and {to_b}");
        let conf = std::fs::read_to_string(gate.prefix.join("nginx.conf")).unwrap();
        assert!(
            conf.contains(&format!("server {A}:{p} max_fails=0;\n        server {B}:{p} max_fails=0;  #@envoy\n", p = a.port)),
            "one line per address, sorted:\n{conf}"
        );

        // The name stops resolving: the configuration stays (calls keep reaching both),
        // logged once; then it resolves again, to the same set: no reload.
        dns.set(&[]);
        tokio::time::sleep(Duration::from_millis(4500)).await;
        let (to_a, to_b) = hits_over(&a, &b, Duration::from_millis(500)).await;
        assert!(to_a > 0 && to_b > 0, "calls still reach A and B: {to_a} and {to_b}");
        dns.set(&[A, B]);
        tokio::time::sleep(Duration::from_millis(2500)).await;

        let (ok, failed) = load.finish().await;
        eprintln!(
            "Envoy's name moved from A to B under 8 clients: B reached after {reached_b:?}, A no longer after {only_b:?}; \
             {ok} answered 200, {} failed",
            failed.len()
        );
        assert!(failed.is_empty(), "{} of {} calls failed: {:?}", failed.len(), ok + failed.len(), &failed[..failed.len().min(5)]);
        assert!(ok > 100, "the load ran: {ok}");
        assert_eq!(gate.nginx_master_pid(), master, "reloads, not restarts");
        let log = gate.log();
        assert_eq!(count(&log, "moved from"), 2, "two changes, two reloads:\n{log}");
        assert_eq!(count(&log, "does not resolve now"), 1, "logged once:\n{log}");
        assert_eq!(count(&log, "resolves again"), 1, "{log}");
        gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn a_name_that_does_not_resolve_yet_is_waited_for() {
    bounded(TEST_LIMIT, "waiting for Envoy's name", async {
        let (redis, _conn) = redis_with_f().await;
        let a = FakeEnvoy::start_at(A, 0).await;
        let dns = FakeDns::new();
        // Swarm registers a task's name once it runs: the gate may start first.
        let started = Instant::now();
        let gate = {
            let start = start_gate(redis.port, &dns, a.port);
            let resolve_later = async {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                dns.set(&[A]);
            };
            tokio::join!(start, resolve_later).0
        };
        assert!(started.elapsed() >= Duration::from_millis(2500), "it waited for the name");
        assert_eq!(gate.get("/f/x").await.status, 200);
        assert_eq!(a.hits(), 1);
        let log = gate.log();
        assert_eq!(count(&log, "does not resolve to an IPv4 address yet"), 1, "{log}");
        gate.assert_clean_log();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn an_ip_address_is_used_as_it_is() {
    bounded(TEST_LIMIT, "an IP literal", async {
        let dns = FakeDns::new();
        let out = std::process::Command::new("sh")
            .arg(roost_gate_tests::gate::run_sh())
            .arg("--render")
            .env("PATH", dns.path())
            .env("ROOST_GATE_PREFIX", dns.dir.join("prefix"))
            .env("ROOST_ENVOY_ADDR", "127.0.0.2:10000")
            .output()
            .unwrap();
        assert!(out.status.success(), "run.sh --render: {}", String::from_utf8_lossy(&out.stderr));
        let conf = std::fs::read_to_string(dns.dir.join("prefix/nginx.conf")).unwrap();
        assert_eq!(count(&conf, "server 127.0.0.2:10000 max_fails=0;  #@envoy"), 2, "{conf}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("Envoy ("), "no resolving");
    })
    .await;
}
