//! Roost as a Docker Swarm stack (`scripts/swarm.sh up`: images built offline, deployed
//! by ID) with the swarm runtime, on a single-node swarm the test makes when the engine
//! is in none and leaves again: a cold start from zero, a burst that scales a function
//! up and back to zero, a rollover, the orchestrator killed and its replicas adopted, a
//! replica's task killed, and an Envoy task killed, under a steady load whose every
//! failed request is counted (0 wherever the single-host tests assert 0).

use roost_testkit::http;
use roost_testkit::process::free_port;
use roost_testkit::swarm::Swarm;
use roost_testkit::{wait_until, workspace_root};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

/// The API token the test gives the stack (ROOST_API_TOKEN).
const API_TOKEN: &str = "swarm-test-api-token-0123456789abcdef";

const DEFINITIONS: &str = r#"usable-functions:
  hello:
    version: "1"
    configuration: {programing_language: python, base_function_file_name: hello.py, function_folder: hello}
    scaling: {max_replicas: 2, idle_timeout: 4s}
  sleep:
    version: "1"
    configuration: {programing_language: python, base_function_file_name: sleep.py, function_folder: sleep}
    scaling: {max_replicas: 4, target_concurrency: 1, idle_timeout: 3s}
  whoami:
    version: "1"
    configuration: {programing_language: python, base_function_file_name: whoami.py, function_folder: whoami}
    scaling: {max_replicas: 2, idle_timeout: 30s}
"#;

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("the docker CLI runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `scripts/swarm.sh <args>` with the test's environment; panics with its output when
/// it fails.
fn swarm_sh(args: &[&str], env: &[(String, String)]) {
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/swarm.sh"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("bash runs");
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim_start().starts_with("Compiling ")).collect();
        panic!("scripts/swarm.sh {args:?} failed ({}):\n{}", out.status, lines[lines.len().saturating_sub(80)..].join("\n"));
    }
}

/// The running containers of a stack service (`envoy`, `orchestrator`) on this node.
fn stack_containers(service: &str) -> Vec<String> {
    let filter = format!("label=com.docker.swarm.service.name=roost_{service}");
    stdout(&docker(&["ps", "-q", "--filter", &filter, "--filter", "status=running"])).split_whitespace().map(String::from).collect()
}

/// The replica services of `function` (the swarm runtime's: one service per replica),
/// without its hot spare (a service started ahead, not yet a replica).
fn replica_services(function: &str) -> Vec<String> {
    let ids = |extra: &[&str]| {
        // (sorted: compared as sets)
        let filter = format!("label=roost.function={function}");
        let mut args = vec!["service", "ls", "-q", "--filter", filter.as_str()];
        for e in extra {
            args.extend(["--filter", e]);
        }
        stdout(&docker(&args)).split_whitespace().map(String::from).collect::<Vec<String>>()
    };
    let spares = ids(&["label=roost.spare=true"]);
    let mut out: Vec<String> = ids(&[]).into_iter().filter(|s| !spares.contains(s)).collect();
    out.sort();
    out
}

/// The hot spare services of `function` (started and ready, not yet replicas).
fn spare_services(function: &str) -> Vec<String> {
    let filter = format!("label=roost.function={function}");
    stdout(&docker(&["service", "ls", "-q", "--filter", &filter, "--filter", "label=roost.spare=true"]))
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// A copy of the function runtime and the three functions under `home/faas-runtime`,
/// with the test's definitions (the stack mounts `$ROOST_HOME/faas-runtime`).
fn home() -> PathBuf {
    let home = std::env::temp_dir().join(format!("roost-swarm-home-{}", std::process::id()));
    let fr = home.join("faas-runtime");
    std::fs::create_dir_all(fr.join("python/functions")).unwrap();
    let src = workspace_root().join("faas-runtime");
    let cp = |from: &Path, to: &Path| {
        let ok = Command::new("cp").arg("-r").arg(from).arg(to).status().is_ok_and(|s| s.success());
        assert!(ok, "cp -r {} {}", from.display(), to.display());
    };
    cp(&src.join("roost_runtime"), &fr.join("roost_runtime"));
    for f in ["hello", "sleep", "whoami"] {
        cp(&src.join("python/functions").join(f), &fr.join("python/functions").join(f));
    }
    std::fs::write(fr.join("global-function-definition.yml"), DEFINITIONS).unwrap();
    home
}

/// Takes the stack down (and prints the services' logs first when the test failed).
struct Down(Vec<(String, String)>, PathBuf);
impl Drop for Down {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for s in ["orchestrator", "control-plane", "envoy", "gate"] {
                let out = docker(&["service", "logs", "--no-task-ids", "--tail", "80", &format!("roost_{s}")]);
                eprintln!(
                    "--- roost_{s} (last 80 lines) ---\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let out = Command::new("bash")
            .arg(workspace_root().join("scripts/swarm.sh"))
            .args(["down", "--volumes"])
            .envs(self.0.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output();
        if let Ok(out) = out {
            if !out.status.success() {
                eprintln!("scripts/swarm.sh down failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        std::fs::remove_dir_all(&self.1).ok();
    }
}

/// A steady load: one caller of `path` at a time, counting answers and failures (with
/// the first few failures' descriptions) until stopped.
struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(port: u16, path: &'static str) -> Load {
        let (ok, failed, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (o, f, s, st) = (ok.clone(), failed.clone(), seen.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !st.load(Ordering::Relaxed) {
                match http::get(port, path).await {
                    Ok(r) if r.status == 200 => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        f.fetch_add(1, Ordering::Relaxed);
                        let mut seen = s.lock().unwrap();
                        if seen.len() < 10 {
                            seen.push(match other {
                                Ok(r) => format!("{} {}", r.status, r.body),
                                Err(e) => e.to_string(),
                            });
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Load { ok, failed, seen, stop, task }
    }

    /// (answered, failed, the first failures) so far.
    fn counts(&self) -> (u64, u64, Vec<String>) {
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), self.seen.lock().unwrap().clone())
    }

    async fn stop(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), self.seen.lock().unwrap().clone())
    }
}

/// From inside the container `replica`, a TCP connect to each of `targets`
/// (`host:port`, names or addresses): `name -> "reached" | "unreachable: ..."`.
fn connects_from(replica: &str, targets: &[String]) -> Vec<(String, String)> {
    let code = "import socket, sys\nfor t in sys.argv[1:]:\n    h, p = t.rsplit(':', 1)\n    try:\n        socket.create_connection((h, int(p)), timeout=1.5).close()\n        print(t, 'reached')\n    except Exception as e:\n        print(t, 'unreachable:', type(e).__name__)\n";
    let mut args = vec!["exec", replica, "python3", "-c", code];
    args.extend(targets.iter().map(String::as_str));
    let out = stdout(&docker(&args));
    out.lines().filter_map(|l| l.split_once(' ')).map(|(t, r)| (t.to_string(), r.to_string())).collect()
}

/// Every address of a container, on all its networks.
fn addresses_of(container: &str) -> Vec<String> {
    let out = stdout(&docker(&["inspect", container, "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"]));
    out.split_whitespace().map(String::from).collect()
}

/// The replica that answered `whoami` (its host name and process id).
async fn whoami(port: u16) -> Option<String> {
    let r = http::get(port, "/whoami").await.ok()?;
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    (r.status == 200).then(|| v["replica"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine that can be a swarm manager: full tier (scripts/test.sh)"]
async fn the_stack_on_a_swarm_serves_scales_rolls_over_and_survives_kills() {
    // Dropped last: the stack goes before the swarm is left.
    let _swarm = Swarm::join();
    let port = free_port();
    let home = home();
    let env: Vec<(String, String)> = vec![
        ("ROOST_PORT".into(), port.to_string()),
        ("ROOST_HOME".into(), home.display().to_string()),
        ("ROOST_API_TOKEN".into(), API_TOKEN.into()),
        ("ROOST_DOCKER_NETWORK".into(), format!("roost-test-stack-{}", std::process::id())),
    ];
    let _down = Down(env.clone(), home.clone());
    let t = Instant::now();
    swarm_sh(&["up", "hello"], &env);
    eprintln!("scripts/swarm.sh up (images built, stack deployed, /hello answering): {:?}", t.elapsed());
    assert_eq!(stack_containers("envoy").len(), 2, "two Envoys");
    assert_eq!(stack_containers("gate").len(), 2, "two gates");
    let r = http::get(port, "/hello").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"Hello": "World"}"#));
    // (A replica that was a hot spare is relabelled just after its start.)
    wait_until(WAIT, "hello's replica, a Swarm service", || async { (replica_services("hello").len() == 1).then_some(()) }).await;

    // Cold start: whoami from zero (its image built at declaration), answered in one call.
    // Every image is built first (two at a time, at declaration), so no call below waits
    // for a build.
    for f in ["whoami", "sleep"] {
        wait_until(WAIT, &format!("{f}'s image built"), || async {
            let out = stdout(&docker(&["images", "-q", "--filter", &format!("label=roost.function={f}")]));
            (!out.is_empty()).then_some(())
        })
        .await;
    }
    assert!(replica_services("whoami").is_empty(), "whoami sleeps before its first call");
    // Its hot spare: a replica service started and probed ahead, not registered. (Given
    // a moment to be probed ready once its task runs.)
    let spare = wait_until(WAIT, "whoami's hot spare", || async { spare_services("whoami").pop() }).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = Instant::now();
    let first = whoami(port).await.expect("whoami answers from zero");
    eprintln!("cold start of whoami through the stack, from its hot spare: {:?}", t.elapsed());
    wait_until(WAIT, "the spare, now whoami's replica", || async { (replica_services("whoami") == [spare.clone()]).then_some(()) }).await;
    wait_until(WAIT, "whoami's next hot spare", || async { spare_services("whoami").iter().any(|s| *s != spare).then_some(()) }).await;
    wait_until(WAIT, "whoami's replica service", || async { (replica_services("whoami").len() == 1).then_some(()) }).await;

    // Nothing of the control side is reachable from inside a replica: not by name (the
    // names do not resolve on the functions overlay), not by any address of theirs.
    let replica = stdout(&docker(&["ps", "-q", "--filter", "label=roost.function=whoami", "--filter", "status=running"]));
    let mut targets: Vec<String> = vec!["redis:6379".into(), "control-plane:18001".into(), "statsd-listener:9102".into()];
    for (service, port) in [("redis", 6379), ("control-plane", 18001), ("control-plane", 18000), ("async-worker", 8090)] {
        for c in stack_containers(service) {
            targets.extend(addresses_of(&c).into_iter().map(|a| format!("{a}:{port}")));
        }
    }
    let seen = connects_from(replica.lines().next().expect("a whoami replica container"), &targets);
    assert_eq!(seen.len(), targets.len(), "every probe ran: {seen:?}");
    assert!(seen.iter().all(|(_, r)| r.starts_with("unreachable")), "from inside a replica: {seen:?}");

    // A steady load on both from here on: every failure counts.
    let hello_load = Load::start(port, "/hello");
    let whoami_load = Load::start(port, "/whoami");

    // A burst on `sleep` (target concurrency 1, at most 4) from zero: every call answered,
    // several replicas, then back to zero once idle.
    let burst: Vec<_> = (0..12).map(|_| tokio::spawn(async move { http::get(port, "/sleep?ms=1000").await })).collect();
    let mut most = 0;
    for b in burst {
        let r = b.await.unwrap().expect("answered");
        assert_eq!(r.status, 200, "{}", r.body);
        most = most.max(replica_services("sleep").len());
    }
    assert!(most >= 2, "the burst scaled sleep up (at most {most} replicas seen)");
    wait_until(WAIT, "sleep back to zero replicas", || async { replica_services("sleep").is_empty().then_some(()) }).await;

    // The orchestrator killed: Swarm starts a new one, which adopts the running replicas
    // (the same services) instead of starting others.
    let old_spares: Vec<String> = ["hello", "whoami", "sleep"].iter().flat_map(|f| spare_services(f)).collect();
    let hello_services = replica_services("hello");
    let whoami_services = replica_services("whoami");
    // whoami names its replica by host name: a container's short id.
    let whoami_hosts = stdout(&docker(&["ps", "-q", "--filter", "label=roost.function=whoami", "--filter", "status=running"]));
    let orchestrator = stack_containers("orchestrator");
    assert_eq!(orchestrator.len(), 1);
    assert!(docker(&["kill", &orchestrator[0]]).status.success());
    wait_until(WAIT, "a new orchestrator running", || async {
        let now = stack_containers("orchestrator");
        (now.len() == 1 && now[0] != orchestrator[0]).then_some(())
    })
    .await;
    // Its API answers (through the public port) once it has adopted.
    wait_until(WAIT, "the new orchestrator's API", || async {
        let r = http::request(port, "GET", "/system/functions", &[("Authorization", &format!("Bearer {API_TOKEN}"))], b"").await.ok()?;
        (r.status == 200).then_some(())
    })
    .await;
    // The earlier orchestrator's spares are removed (a new one makes its own).
    wait_until(WAIT, "the earlier orchestrator's spares removed", || async {
        let now: Vec<String> = ["hello", "whoami", "sleep"].iter().flat_map(|f| spare_services(f)).collect();
        (!now.iter().any(|s| old_spares.contains(s))).then_some(())
    })
    .await;
    // Every replica from before is still there (the load may have scaled a function up
    // meanwhile, within its max_replicas of 2: a replaced one would be gone).
    for (f, before) in [("hello", &hello_services), ("whoami", &whoami_services)] {
        let now = replica_services(f);
        assert!(before.iter().all(|s| now.contains(s)), "{f}'s replicas adopted, not replaced: {before:?} before, {now:?} after");
        assert!(now.len() <= 2, "{f} within its max_replicas: {now:?}");
    }
    let answered = whoami(port).await.expect("whoami answers");
    let host = answered.split(':').next().unwrap_or_default();
    assert!(whoami_hosts.lines().any(|h| h == host), "a whoami replica from before the kill answers: {answered} not in {whoami_hosts:?}");

    // A replica's task killed: its service is removed and the function keeps answering.
    let before = hello_load.counts();
    // (A replica's, not the hot spare's: the container of one of hello's replica services.)
    let service = replica_services("hello").pop().expect("a hello replica");
    let service = stdout(&docker(&["service", "inspect", &service, "--format", "{{.ID}}"]));
    let replica =
        stdout(&docker(&["ps", "-q", "--filter", &format!("label=com.docker.swarm.service.id={service}"), "--filter", "status=running"]));
    let replica = replica.lines().next().expect("a running hello replica").to_string();
    assert!(docker(&["kill", &replica]).status.success());
    wait_until(WAIT, "the killed replica's service gone", || async {
        (!replica_services("hello").iter().any(|s| hello_services.contains(s))).then_some(())
    })
    .await;
    wait_until(WAIT, "hello answering after the kill", || async {
        let after = hello_load.counts();
        (after.0 > before.0 + 20).then_some(())
    })
    .await;

    // A rollover: a new version of whoami's definition (hot-reloaded) replaces its
    // replica, the new one ready before the old one drains.
    let defs = home.join("faas-runtime/global-function-definition.yml");
    let new = DEFINITIONS.replace("  whoami:\n    version: \"1\"", "  whoami:\n    version: \"2\"");
    assert_ne!(new, DEFINITIONS);
    std::fs::write(&defs, new).unwrap();
    wait_until(WAIT, "whoami answered by a new replica", || async {
        let now = whoami(port).await?;
        (now != first && !replica_services("whoami").iter().any(|s| whoami_services.contains(s))).then_some(())
    })
    .await;

    let (hello_ok, hello_failed, hello_seen) = hello_load.counts();
    let (whoami_ok, whoami_failed, whoami_seen) = whoami_load.counts();
    eprintln!("steady load so far: hello {hello_ok} ok / {hello_failed} failed; whoami {whoami_ok} ok / {whoami_failed} failed");
    assert_eq!(hello_failed, 0, "hello failures (burst, orchestrator kill, replica kill): {hello_seen:?}");
    assert_eq!(whoami_failed, 0, "whoami failures (orchestrator kill, rollover): {whoami_seen:?}");

    // A gate task killed: the other one takes the calls Envoy sends to the gate (a
    // function without a replica): `sleep` from zero, one call at a time.
    let gates = stack_containers("gate");
    assert_eq!(gates.len(), 2);
    assert!(docker(&["kill", &gates[0]]).status.success());
    let mut gate_failed = Vec::new();
    for _ in 0..3 {
        wait_until(WAIT, "sleep back to zero replicas", || async { replica_services("sleep").is_empty().then_some(()) }).await;
        match http::get(port, "/sleep?ms=1").await {
            Ok(r) if r.status == 200 => {}
            other => gate_failed.push(format!("{other:?}")),
        }
    }
    assert!(gate_failed.is_empty(), "cold calls with one gate killed: {gate_failed:?}");
    wait_until(WAIT, "two gates again", || async {
        let now = stack_containers("gate");
        (now.len() == 2 && !now.contains(&gates[0])).then_some(())
    })
    .await;

    // An Envoy task killed: the other one serves; only requests in flight on the killed
    // one may fail (one caller at a time per load: at most one each).
    let envoys = stack_containers("envoy");
    assert!(docker(&["kill", &envoys[0]]).status.success());
    let t = Instant::now();
    wait_until(WAIT, "two Envoys again", || async {
        let now = stack_containers("envoy");
        (now.len() == 2 && !now.contains(&envoys[0])).then_some(())
    })
    .await;
    eprintln!("a killed Envoy replaced in {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (hello_ok2, hello_failed2, hello_seen2) = hello_load.stop().await;
    let (whoami_ok2, whoami_failed2, whoami_seen2) = whoami_load.stop().await;
    eprintln!(
        "after the Envoy kill: hello {} ok / {} failed; whoami {} ok / {} failed",
        hello_ok2 - hello_ok,
        hello_failed2 - hello_failed,
        whoami_ok2 - whoami_ok,
        whoami_failed2 - whoami_failed
    );
    assert!(hello_failed2 - hello_failed <= 1, "more than the in-flight request lost with an Envoy: {hello_seen2:?}");
    assert!(whoami_failed2 - whoami_failed <= 1, "more than the in-flight request lost with an Envoy: {whoami_seen2:?}");
    assert!(hello_ok2 > hello_ok && whoami_ok2 > whoami_ok, "the other Envoy served");
}
