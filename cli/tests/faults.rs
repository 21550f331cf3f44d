//! The fault-injection suite (issue 13): `docker compose up` with the offline images, a
//! steady load of `GET /hello` and `POST /add` (distinct values, answers checked), and
//! each fault injected in turn (a restart and a kill -9 of every component, Redis losing
//! its data, a replica killed, the definitions file broken then fixed, a spoofed statsd
//! flood from inside a function container). Per case: requests, failed (by reason),
//! wrong answers, recovery, whether the platform healed; a markdown table; the test
//! fails listing the targets missed. `ROOST_FAULTS_CASES=a,b` picks cases (default all).
//! `scripts/faults.sh` runs it and records the table in docs/faults.md.

#[path = "support/faults.rs"]
mod faults;

use faults::{
    check_add, check_hello, error_reason, load_settled, parse_docker_time, select, spoof_datagrams, table, CaseResult, Outcome, Sample,
    Target,
};
use roost_common::clock::now_ms;
use roost_common::keys;
use roost_common::wire::redis::load_fields;
use roost_common::wire::status::Status;
use roost_testkit::process::free_port;
use roost_testkit::workspace_root;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One compose project at a time: the tests of this file run in one process, whose id
/// names the project and its functions network.
static ONE_PLATFORM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every case, in the order they run.
const CASES: &[&str] = &[
    "redis-restart",
    "redis-kill",
    "redis-flush",
    "control-plane-restart",
    "control-plane-kill",
    "orchestrator-restart",
    "orchestrator-kill",
    "statsd-restart",
    "statsd-kill",
    "replica-kill",
    "replica-restart",
    "definitions-broken",
    "statsd-flood",
    "gate-reload",
    "gate-restart",
    "gate-kill",
    "envoy-restart",
    "envoy-kill",
];

/// The load keeps going at least this long after a fault...
const WINDOW: Duration = Duration::from_secs(4);
/// ...and until every request of the last second succeeded, or this long.
const LOAD_DEADLINE: Duration = Duration::from_secs(40);
/// How long the heal checks may take after the load stopped.
const HEAL_DEADLINE: Duration = Duration::from_secs(20);
/// Load loops: half `GET /hello`, half `POST /add`.
const LOOPS: usize = 4;
/// The pause between two requests of a loop.
const PACE: Duration = Duration::from_millis(20);

// ---------- the pure parts ----------

#[test]
fn answers_are_checked_and_failures_grouped() {
    assert_eq!(check_hello(200, r#"{"Hello": "World"}"#), Outcome::Ok);
    assert!(matches!(check_hello(200, r#"{"Hello": "Moon"}"#), Outcome::Wrong(_)));
    assert_eq!(check_hello(502, ""), Outcome::Failed("status 502".into()));
    assert_eq!(check_add(2, 40, 200, r#"{"result": 42}"#), Outcome::Ok);
    assert_eq!(check_add(2, 40, 200, r#"{"result": 42.0}"#), Outcome::Ok);
    assert!(matches!(check_add(2, 40, 200, r#"{"result": 41}"#), Outcome::Wrong(_)));
    assert!(matches!(check_add(2, 40, 200, "not json"), Outcome::Wrong(_)));
    assert_eq!(check_add(1, 1, 404, "{}"), Outcome::Failed("status 404".into()));
    assert_eq!(error_reason(true, false, "x"), "connect error");
    assert_eq!(
        error_reason(true, false, "error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)"),
        "connection refused"
    );
    assert_eq!(error_reason(false, true, "x"), "timeout");
    assert_eq!(
        error_reason(false, false, "error sending request: connection closed before message completed"),
        "connection closed mid-request"
    );
    assert_eq!(error_reason(false, false, "a: b: Connection reset by peer (os error 104)"), "connection reset");
    assert_eq!(error_reason(false, false, "error sending request: odd thing"), "error: odd thing");
}

fn sample(start_ms: u64, end_ms: u64, ok: bool) -> Sample {
    Sample { start_ms, end_ms, outcome: if ok { Outcome::Ok } else { Outcome::Failed("status 502".into()) } }
}

#[test]
fn in_flight_recovery_and_targets() {
    let s = [sample(0, 10, true), sample(5, 120, false), sample(90, 130, false), sample(130, 140, true), sample(140, 150, true)];
    assert_eq!(faults::in_flight(&s, 100), 2);
    assert_eq!(faults::in_flight(&s, 10), 1, "one that ended at 10 was not in flight at 10");
    assert_eq!(faults::recovery(&s, 100), Duration::from_millis(30));
    assert_eq!(faults::recovery(&s[..1], 100), Duration::ZERO);

    let mut r =
        CaseResult { name: "envoy-kill".into(), target: Some(Target::InFlightOnly), healed: Ok(Duration::ZERO), ..Default::default() };
    r.add_samples(&s, 100, 100, false);
    assert_eq!((r.requests, r.failed_total(), r.in_flight), (5, 2, 2));
    assert!(r.misses().is_empty(), "{:?}", r.misses());
    r.target = Some(Target::NoFailure);
    assert_eq!(r.misses(), ["2 failed (target 0)"]);
    r.target = Some(Target::InFlightOnly);
    r.in_flight = 1;
    assert_eq!(r.misses().len(), 1);
    r.healed = Err("hello: status 404".into());
    r.wrong = 1;
    assert_eq!(r.misses().len(), 3);
    let t = table(&[r]);
    assert!(t.starts_with("| case | requests | failed | wrong | recovery | notes |"), "{t}");
    assert!(t.contains("| envoy-kill | 5 | 2 | 1 | 0.0 s |") && t.contains("2 status 502") && t.contains("**MISSED**"), "{t}");
}

#[test]
fn the_load_stops_once_the_window_passed_and_it_answers_again() {
    let s = [sample(0, 100, true), sample(4000, 4100, false), sample(4100, 4200, true)];
    assert!(!load_settled(&s, 0, 3000, 4000, 1000), "inside the window");
    assert!(!load_settled(&s, 0, 4500, 4000, 1000), "a failure in the last second");
    assert!(load_settled(&s, 0, 5150, 4000, 1000));
    assert!(!load_settled(&s, 0, 9000, 4000, 1000), "nothing answered in the last second");
}

#[test]
fn cases_are_picked_by_name_in_the_suite_order() {
    assert_eq!(select(None, CASES).unwrap().len(), CASES.len());
    assert_eq!(select(Some(" "), CASES).unwrap().len(), CASES.len());
    assert_eq!(select(Some("envoy-kill,redis-kill"), CASES).unwrap(), ["redis-kill", "envoy-kill"]);
    assert!(select(Some("redis,envoy-kill"), CASES).unwrap_err().contains("\"redis\""));
}

#[test]
fn docker_times_are_read() {
    assert_eq!(parse_docker_time("1970-01-01T00:00:01.5Z"), Some(1500));
    assert_eq!(parse_docker_time("2026-12-05T03:10:11.123456789Z"), Some(1_796_440_211_123));
    assert_eq!(parse_docker_time("2000-03-01T00:00:00Z"), Some(951_868_800_000));
    assert_eq!(parse_docker_time("0001-01-01T00:00:00Z"), None);
    assert_eq!(parse_docker_time("yesterday"), None);
}

#[test]
fn spoofed_gauges_look_like_envoys() {
    let d = spoof_datagrams(&["echo"], 2);
    assert_eq!(d.len(), 4);
    assert_eq!(d[0], "envoy.cluster.fn-echo.upstream_rq_pending_active:1e15|g");
    assert_eq!(d[1], "envoy.cluster.fn-ghost-0.upstream_rq_pending_active:1e15|g");
}

#[test]
fn the_token_comes_from_the_file_named_else_the_container() {
    let file = std::env::temp_dir().join(format!("roost-faults-token-{}", std::process::id()));
    std::fs::write(&file, "from-file\n").unwrap();
    assert_eq!(control_token(Some(file.clone()), || Some("from-container".into())).as_deref(), Some("from-file"));
    std::fs::remove_file(&file).unwrap();
    assert_eq!(control_token(Some(file), || Some("from-container".into())), None, "a named file that is gone: no token");
    assert_eq!(control_token(None, || Some(" from-container\n".into())).as_deref(), Some("from-container"));
    assert_eq!(control_token(None, || Some(String::new())), None);
    assert_eq!(control_token(None, || None), None);
}

// ---------- the platform ----------

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("the docker command runs")
}

/// The compose project under test: its own name and ports, and a copy of faas-runtime
/// (the definitions case edits it; the checkout is never touched).
struct Platform {
    tool: Vec<String>,
    project: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
    gate: u16,
    orchestrator: u16,
    /// The temp folder: the faas-runtime copy and the compose override.
    scratch: PathBuf,
    /// The control token: not looked for yet, or what was found.
    token: Mutex<Option<Option<String>>>,
    /// Compose service -> container id.
    containers: Mutex<BTreeMap<String, String>>,
    /// Dump the services' logs when dropped while panicking.
    logs_on_panic: AtomicBool,
}

impl Platform {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.tool[0]);
        c.args(&self.tool[1..]).args(["-p", &self.project]);
        for f in &self.files {
            c.arg("-f").arg(f);
        }
        c.args(args).envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))).current_dir(workspace_root());
        c
    }

    fn compose(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("the Compose tool runs (install docker-compose or the compose plugin)")
    }

    /// The container of a compose service (the same one across restarts and kills).
    fn container(&self, service: &str) -> String {
        if let Some(id) = self.containers.lock().unwrap().get(service) {
            return id.clone();
        }
        let id = text(&self.compose(&["ps", "-q", service]));
        assert!(!id.is_empty(), "no container for the compose service {service}");
        self.containers.lock().unwrap().insert(service.to_string(), id.clone());
        id
    }

    fn definitions(&self) -> PathBuf {
        self.scratch.join("faas-runtime/global-function-definition.yml")
    }

    /// `redis-cli args` inside the Redis container, with the password when Redis has one
    /// in the secrets folder; its answer, or "" while Redis cannot answer.
    fn redis(&self, args: &[&str]) -> String {
        let script = "f=/run/roost/secrets/redis-password; [ -r \"$f\" ] && export REDISCLI_AUTH=\"$(cat \"$f\")\"; exec redis-cli \"$@\"";
        let redis = self.container("redis");
        let mut all = vec!["exec", redis.as_str(), "sh", "-c", script, "sh"];
        all.extend_from_slice(args);
        text(&docker(&all))
    }

    /// The control token, when the platform has one (see [`control_token`]); looked for
    /// once, and again after a 401.
    fn token(&self) -> Option<String> {
        let mut t = self.token.lock().unwrap();
        if t.is_none() {
            *t = Some(control_token(std::env::var_os("ROOST_CONTROL_TOKEN_FILE").map(PathBuf::from), || {
                let out = docker(&["exec", &self.container("orchestrator"), "cat", "/run/roost/secrets/control-token"]);
                out.status.success().then(|| text(&out))
            }));
        }
        t.clone().flatten()
    }

    async fn status(&self) -> Result<Status, String> {
        let client = client();
        let mut req = client.get(format!("http://127.0.0.1:{}/status", self.orchestrator));
        if let Some(t) = self.token() {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.map_err(|e| format!("orchestrator /status: {e}"))?;
        if r.status() == 401 {
            self.token.lock().unwrap().take(); // read again next time
        }
        let status = r.status();
        let body = r.text().await.map_err(|e| format!("orchestrator /status: {e}"))?;
        if !status.is_success() {
            return Err(format!("orchestrator /status: {status} {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("orchestrator /status: {e}: {body}"))
    }
}

/// The token the control surfaces want (`Authorization: Bearer`), if any: the content of
/// `file` (`ROOST_CONTROL_TOKEN_FILE`), else what `from_container` reads from the
/// orchestrator's secrets volume; `None` when neither has one (today's main has no token).
fn control_token(file: Option<PathBuf>, from_container: impl FnOnce() -> Option<String>) -> Option<String> {
    let token = match file {
        Some(path) => std::fs::read_to_string(&path).ok(),
        None => from_container(),
    };
    token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

impl Drop for Platform {
    fn drop(&mut self) {
        if std::thread::panicking() && self.logs_on_panic.load(Ordering::Relaxed) {
            let out = self.compose(&["logs", "--no-color", "--tail", "60"]);
            eprintln!("--- docker compose logs (last 60 lines per service) ---\n{}", String::from_utf8_lossy(&out.stdout));
        }
        let _ = self.compose(&["down", "-v", "-t", "40"]);
        // Replica containers the orchestrator no longer knew of (a case can leave one).
        let on_network = format!("label=roost.network={}", network());
        let left = text(&docker(&["ps", "-aq", "--filter", "label=roost.managed=true", "--filter", &on_network]));
        if !left.is_empty() {
            eprintln!("faults: removing replica containers compose down left behind: {}", left.replace('\n', " "));
            let mut args = vec!["rm", "-f"];
            args.extend(left.lines());
            let _ = docker(&args);
            // Down again: the networks it could not remove while they were attached.
            let _ = self.compose(&["down", "-v", "-t", "40"]);
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// This run's functions network (`ROOST_DOCKER_NETWORK`): a name of its own, so no
/// other run's network (or one an earlier run could not remove) is in its way.
fn network() -> String {
    format!("roost-faults-{}-functions", std::process::id())
}

/// Builds the offline images and brings the project up with a copy of faas-runtime.
fn up() -> Platform {
    let mut env = roost_testkit::offline_images();
    let (gate, orchestrator) = (free_port(), free_port());
    env.push(("ROOST_PORT".into(), gate.to_string()));
    env.push(("ROOST_ORCHESTRATOR_PORT".into(), orchestrator.to_string()));
    env.push(("ROOST_DOCKER_NETWORK".into(), network()));
    let project = format!("roost-faults-{}", std::process::id());
    let scratch = std::env::temp_dir().join(&project);
    let _ = std::fs::remove_dir_all(&scratch);
    copy_dir(&workspace_root().join("faas-runtime"), &scratch.join("faas-runtime"));
    // The orchestrator reads the copy: compose merges a service's volumes by their path in
    // the container, so this one replaces ./faas-runtime:/faas-runtime.
    let override_file = scratch.join("faults.override.yaml");
    std::fs::write(
        &override_file,
        format!("services:\n  orchestrator:\n    volumes:\n      - {}:/faas-runtime:ro\n", scratch.join("faas-runtime").display()),
    )
    .unwrap();
    let p = Platform {
        tool: roost_testkit::compose_command(),
        project,
        files: vec![workspace_root().join("compose.yaml"), override_file],
        env,
        gate,
        orchestrator,
        scratch,
        token: Mutex::new(None),
        containers: Mutex::new(BTreeMap::new()),
        logs_on_panic: AtomicBool::new(true),
    };
    let out = p.compose(&["up", "-d"]);
    assert!(out.status.success(), "compose up failed:\n{}", String::from_utf8_lossy(&out.stderr));
    p
}

/// The declared functions: their URL names, from the definitions file.
fn declared(p: &Platform) -> Vec<String> {
    let defs = roost_common::spec::load_file(&p.definitions()).expect("the definitions copy loads");
    defs.values().map(|s| s.name.clone()).collect()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0) // a fresh connection per request: a refused one shows
        .timeout(Duration::from_secs(15))
        .build()
        .expect("a reqwest client")
}

/// One request; its status and body, or why it got none.
async fn send(client: &reqwest::Client, gate: u16, method: reqwest::Method, path: &str, body: String) -> Result<(u16, String), String> {
    let r = client.request(method, format!("http://127.0.0.1:{gate}{path}")).body(body).send().await;
    let r = r.map_err(|e| error_reason(e.is_connect(), e.is_timeout(), &chain(&e)))?;
    let status = r.status().as_u16();
    let body = r.text().await.map_err(|e| error_reason(e.is_connect(), e.is_timeout(), &chain(&e)))?;
    Ok((status, body))
}

/// An error and its sources, joined by ": ".
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The steady load: `LOOPS` loops, each recording its samples.
struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(gate: u16, round: usize) -> Load {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..LOOPS)
            .map(|k| {
                let (samples, stop) = (samples.clone(), stop.clone());
                tokio::spawn(async move {
                    let client = client();
                    let mut i: i64 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let start_ms = now_ms();
                        let outcome = if k % 2 == 0 {
                            match send(&client, gate, reqwest::Method::GET, "/hello", String::new()).await {
                                Ok((status, body)) => check_hello(status, &body),
                                Err(reason) => Outcome::Failed(reason),
                            }
                        } else {
                            // Distinct values per loop, round and request.
                            let (a, b) = ((round * 100 + k) as i64 * 1_000_000 + i, i * 7 + 1);
                            let body = format!(r#"{{"value1": {a}, "value2": {b}}}"#);
                            match send(&client, gate, reqwest::Method::POST, "/add", body).await {
                                Ok((status, body)) => check_add(a, b, status, &body),
                                Err(reason) => Outcome::Failed(reason),
                            }
                        };
                        samples.lock().unwrap().push(Sample { start_ms, end_ms: now_ms(), outcome });
                        tokio::time::sleep(PACE).await;
                    }
                })
            })
            .collect();
        Load { samples, stop, tasks }
    }

    fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        Arc::try_unwrap(self.samples).map(|m| m.into_inner().unwrap()).unwrap_or_default()
    }
}

/// A declared function's answer to a simple call (`Ok` on 200).
async fn probe(gate: u16, function: &str) -> Result<(), String> {
    let c = client();
    let (method, path, body) = match function {
        "hello" | "sleep" => (reqwest::Method::GET, format!("/{function}?ms=1"), String::new()),
        "add" => (reqwest::Method::POST, "/add".into(), r#"{"value1": 1, "value2": 2}"#.into()),
        _ => (reqwest::Method::POST, format!("/{function}"), "a b".into()),
    };
    match send(&c, gate, method, &path, body).await {
        Ok((200, _)) => Ok(()),
        Ok((s, b)) => Err(format!("{function}: status {s} {}", b.chars().take(100).collect::<String>())),
        Err(e) => Err(format!("{function}: {e}")),
    }
}

/// The running replica containers on the functions network: (function, IP, container).
fn running_replica_containers() -> Vec<(String, String, String)> {
    let ids = text(&docker(&[
        "ps",
        "-q",
        "--filter",
        "label=roost.managed=true",
        "--filter",
        &format!("label=roost.network={}", network()),
        "--filter",
        "status=running",
    ]));
    if ids.is_empty() {
        return Vec::new();
    }
    let format = format!(
        "{{{{index .Config.Labels \"roost.function\"}}}} {{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}} {{{{.Id}}}}",
        network()
    );
    let mut args = vec!["inspect", "-f", &format];
    args.extend(ids.lines());
    text(&docker(&args))
        .lines()
        .filter_map(|l| {
            let mut w = l.split(' ');
            Some((w.next()?.to_string(), w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

/// The running replica containers: function -> their IPs.
fn running_replicas() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (f, ip, _) in running_replica_containers() {
        out.entry(f).or_default().insert(ip);
    }
    out
}

/// The IPs `/status` lists, by function.
fn listed_replicas(status: &Status) -> BTreeMap<String, BTreeSet<String>> {
    let mut listed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &status.functions {
        let ips: BTreeSet<String> =
            f.replicas.iter().map(|r| r.address.rsplit_once(':').map_or(r.address.clone(), |(ip, _)| ip.to_string())).collect();
        if !ips.is_empty() {
            listed.insert(f.name.clone(), ips);
        }
    }
    listed
}

/// Removes running replica containers `/status` does not list (after a case that left
/// one behind, so the next case starts clean); what it removed.
async fn remove_orphans(p: &Platform) -> Vec<String> {
    let Ok(status) = p.status().await else { return Vec::new() };
    let listed = listed_replicas(&status);
    let running = tokio::task::spawn_blocking(running_replica_containers).await.unwrap();
    let mut removed = Vec::new();
    for (f, ip, id) in running {
        if !listed.get(&f).is_some_and(|ips| ips.contains(&ip)) {
            let _ = docker(&["rm", "-f", &id]);
            removed.push(format!("{f} at {ip}"));
        }
    }
    removed
}

/// The platform healed: every declared function answers, `/status` lists exactly the
/// running replica containers and no definitions error, and Redis has the functions set.
async fn heal_check(p: &Platform, declared: &[String]) -> Result<(), String> {
    for f in declared {
        probe(p.gate, f).await?;
    }
    let status = p.status().await?;
    if let Some(e) = &status.definitions_error {
        return Err(format!("/status reports a definitions error: {e}"));
    }
    let running = tokio::task::spawn_blocking(running_replicas).await.unwrap();
    let listed = listed_replicas(&status);
    if listed != running {
        return Err(format!("/status lists {listed:?} but the running replica containers are {running:?}"));
    }
    let members: BTreeSet<String> = p.redis(&["smembers", keys::FUNCTIONS]).lines().map(str::to_string).collect();
    let want: BTreeSet<String> = declared.iter().cloned().collect();
    if members != want {
        return Err(format!("Redis {} is {members:?}, declared {want:?}", keys::FUNCTIONS));
    }
    Ok(())
}

/// Polls the heal checks until they pass; how long from `since`, or the last failure.
async fn heal(p: &Platform, declared: &[String], since: Instant, deadline: Duration) -> Result<Duration, String> {
    let mut last = String::new();
    while since.elapsed() < deadline {
        match heal_check(p, declared).await {
            Ok(()) => return Ok(since.elapsed()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last)
}

/// What injecting a fault found: when the component died (ms since the epoch, for the
/// in-flight count), and notes or misses of its own.
#[derive(Default)]
struct Injected {
    died_ms: Option<u64>,
    notes: Vec<String>,
    misses: Vec<String>,
}

fn finished_at(container: &str) -> Option<u64> {
    parse_docker_time(&text(&docker(&["inspect", "-f", "{{.State.FinishedAt}}", container])))
}

/// kill -9 of the container's main process (from the host, as the OOM killer or a crash
/// would: `docker kill` counts as a deliberate stop, which the restart policy leaves
/// stopped), then waits for the restart policy to bring it back (starts it by hand, and
/// says so, if it does not within 20 s).
fn kill9(container: &str, inj: &mut Injected) {
    let count = |c: &str| text(&docker(&["inspect", "-f", "{{.RestartCount}}", c])).parse::<u64>().unwrap_or(0);
    let before = count(container);
    let pid = text(&docker(&["inspect", "-f", "{{.State.Pid}}", container]));
    let killed = Command::new("kill").args(["-9", &pid]).output().is_ok_and(|o| o.status.success());
    if !killed {
        // Docker on another machine, or no right to signal: Docker's own kill, which its
        // restart policy does not answer (the miss below says so).
        inj.notes.push(format!("kill -9 {pid} from the host failed; used docker kill"));
        let out = docker(&["kill", "-s", "KILL", container]);
        assert!(out.status.success(), "docker kill: {}", String::from_utf8_lossy(&out.stderr));
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if count(container) > before && text(&docker(&["inspect", "-f", "{{.State.Running}}", container])) == "true" {
            inj.notes.push(format!("restart policy restarted it in {:.1} s", t.elapsed().as_secs_f64()));
            inj.died_ms = finished_at(container);
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    inj.misses.push("the restart policy did not restart it within 20 s".into());
    inj.died_ms = finished_at(container);
    let _ = docker(&["start", container]);
}

/// kill -9 (from the host) of the gate's nginx master: the gate's run.sh, the container's
/// main process, starts a new master beside the old workers, which finish and quit.
fn kill_nginx_master(container: &str, inj: &mut Injected) {
    let top = text(&docker(&["top", container, "-eo", "pid,args"]));
    let master = top.lines().find(|l| l.contains("nginx: master process")).and_then(|l| l.split_whitespace().next()).map(str::to_string);
    let Some(pid) = master else {
        inj.misses.push(format!("no nginx master process in the gate container: {top}"));
        return;
    };
    let killed = Command::new("kill").args(["-9", &pid]).output().is_ok_and(|o| o.status.success());
    inj.died_ms = Some(now_ms());
    if !killed {
        inj.misses.push(format!("kill -9 {pid} (the gate's nginx master) from the host failed"));
        return;
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        let top = text(&docker(&["top", container, "-eo", "pid,args"]));
        if let Some(new) = top.lines().find(|l| l.contains("nginx: master process") && !l.trim_start().starts_with(&format!("{pid} "))) {
            let new = new.split_whitespace().next().unwrap_or("?");
            inj.notes.push(format!("nginx master {pid} killed; master {new} serving {:.1} s later", t.elapsed().as_secs_f64()));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    inj.misses.push("no new nginx master within 10 s of killing the old one".into());
}

fn restart(container: &str, inj: &mut Injected) {
    let t = Instant::now();
    let out = docker(&["restart", container]);
    if !out.status.success() {
        inj.notes.push(format!("docker restart: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    inj.died_ms = finished_at(container);
    inj.notes.push(format!("docker restart took {:.1} s", t.elapsed().as_secs_f64()));
}

/// The longest-running replica container of `function`: the orchestrator drains the
/// newest first, so it is the one likeliest to stay while a case works in it (`docker ps`
/// lists the newest first; a flood in the newest was cut short by its drain).
fn a_replica(function: &str) -> Option<String> {
    let filter = format!("label=roost.function={function}");
    let on_network = format!("label=roost.network={}", network());
    let ids = text(&docker(&["ps", "-q", "--filter", &filter, "--filter", &on_network, "--filter", "status=running"]));
    ids.lines().last().map(str::to_string)
}

/// The spoof flood, sent from inside a `hello` replica: every statsd address it could try.
const FLOOD: &str = r#"
import socket, sys
lines = sys.stdin.read().split("\n")
for host in sys.argv[1:]:
    try:
        addr = (socket.gethostbyname(host), 8125)
    except OSError as e:
        print(f"{host}: unresolvable ({e})"); continue
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = errors = 0
    for l in lines:
        try:
            s.sendto(l.encode(), addr); sent += 1
        except OSError:
            errors += 1
    print(f"{host}: {sent} sent, {errors} refused")
"#;

fn flood(p: &Platform, inj: &mut Injected) {
    let listener = p.container("statsd-listener");
    let ips = text(&docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", &listener]));
    let datagrams = spoof_datagrams(&["echo", "sleep"], 500).join("\n");
    // Up to three hello replicas: the one picked may be drained (a surplus replica under
    // the load) while the flood runs in it, which ends the flood with it.
    let mut tries = Vec::new();
    for _ in 0..3 {
        let Some(replica) = a_replica("hello") else {
            tries.push("no hello replica to send the flood from".to_string());
            continue;
        };
        let mut args = vec!["exec".to_string(), "-i".into(), replica, "python3".into(), "-c".into(), FLOOD.into()];
        args.extend(["statsd-listener", "envoy"].map(String::from));
        args.extend(ips.split_whitespace().map(String::from));
        // Bounded: a replica reaped meanwhile may be paused as its function's spare, which
        // would freeze the flood inside it.
        let Some(out) =
            roost_testkit::process::output_within(Command::new("docker").args(&args), datagrams.as_bytes(), Duration::from_secs(60))
        else {
            tries.push("the flood did not finish within 60 s (the replica reaped and paused?)".into());
            continue;
        };
        let said = format!("{} {}", text(&out), String::from_utf8_lossy(&out.stderr).trim()).replace('\n', "; ");
        if out.status.success() {
            inj.notes.push(format!("flood from a hello replica: {}", said.trim()));
            if !tries.is_empty() {
                inj.notes.push(format!("earlier tries: {}", tries.join("; ")));
            }
            return;
        }
        tries.push(format!("the flood could not be sent from a hello replica ({}): {}", out.status, said.trim()));
    }
    inj.misses.push(tries.join("; "));
}

/// After the flood: no load key for a function that does not exist, no 1e15 gauge kept.
fn flood_effects(p: &Platform) -> Vec<String> {
    let mut misses = Vec::new();
    let ghosts = p.redis(&["--scan", "--pattern", &keys::load("ghost-*")]);
    let n = ghosts.lines().filter(|l| !l.is_empty()).count();
    if n > 0 {
        misses.push(format!("the flood created {n} load keys for functions that do not exist"));
    }
    for f in ["echo", "sleep"] {
        let pending = p.redis(&["hget", &keys::load(f), load_fields::PENDING]);
        if pending.parse::<f64>().is_ok_and(|v| v >= 1e6) {
            misses.push(format!("{f}'s pending gauge is {pending} (spoofed)"));
        }
    }
    misses
}

/// Injects `case`'s fault (blocking: run off the async workers).
fn inject(p: &Platform, case: &str) -> Injected {
    let mut inj = Injected::default();
    let service = |s: &str| p.container(s);
    match case {
        "redis-restart" => restart(&service("redis"), &mut inj),
        "redis-kill" => kill9(&service("redis"), &mut inj),
        "redis-flush" => {
            let said = p.redis(&["flushall"]);
            inj.died_ms = Some(now_ms());
            inj.notes.push(format!("FLUSHALL: {said}"));
        }
        "control-plane-restart" => restart(&service("control-plane"), &mut inj),
        "control-plane-kill" => kill9(&service("control-plane"), &mut inj),
        "orchestrator-restart" => restart(&service("orchestrator"), &mut inj),
        "orchestrator-kill" => kill9(&service("orchestrator"), &mut inj),
        "statsd-restart" => restart(&service("statsd-listener"), &mut inj),
        "statsd-kill" => kill9(&service("statsd-listener"), &mut inj),
        "envoy-restart" => restart(&service("envoy"), &mut inj),
        "envoy-kill" => kill9(&service("envoy"), &mut inj),
        "gate-restart" => restart(&service("gate"), &mut inj),
        "gate-kill" => kill_nginx_master(&service("gate"), &mut inj),
        "gate-reload" => {
            let out = docker(&["kill", "-s", "HUP", &service("gate")]);
            inj.died_ms = Some(now_ms());
            inj.notes.push(if out.status.success() {
                "SIGHUP (nginx reload)".into()
            } else {
                format!("SIGHUP: {}", String::from_utf8_lossy(&out.stderr))
            });
        }
        "replica-kill" | "replica-restart" => match a_replica("hello") {
            Some(c) => {
                let out = if case == "replica-kill" {
                    let pid = text(&docker(&["inspect", "-f", "{{.State.Pid}}", &c]));
                    Command::new("kill").args(["-9", &pid]).output().expect("kill runs")
                } else {
                    docker(&["restart", "-t", "5", &c])
                };
                inj.died_ms = finished_at(&c).or(Some(now_ms()));
                let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
                inj.notes.push(format!(
                    "a hello replica {}{}",
                    if case == "replica-kill" { "killed" } else { "restarted" },
                    if said.is_empty() { String::new() } else { format!(" ({said})") }
                ));
            }
            None => inj.misses.push("no running hello replica to hit".into()),
        },
        "definitions-broken" => {
            let path = p.definitions();
            let good = std::fs::read_to_string(&path).unwrap();
            let write = |text: &str| {
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, text).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
            };
            write("usable-functions:\n  hello: [this is: not valid\n");
            inj.died_ms = Some(now_ms());
            std::thread::sleep(Duration::from_millis(2500));
            let seen = tokio::runtime::Handle::current().block_on(p.status());
            match seen {
                Ok(s) if s.definitions_error.is_some() => inj.notes.push("the broken file was reported, last good definitions kept".into()),
                Ok(_) => inj.misses.push("/status did not report the broken definitions within 2.5 s".into()),
                Err(e) => inj.misses.push(format!("/status while broken: {e}")),
            }
            write(&good);
            inj.notes.push("restored after 2.5 s".into());
        }
        "statsd-flood" => {
            inj.died_ms = Some(now_ms());
            flood(p, &mut inj);
        }
        other => panic!("no injection for case {other}"),
    }
    inj
}

fn target(case: &str) -> Target {
    match case {
        // Envoy's container is the public entry: while it restarts nothing listens on the
        // platform's port.
        "envoy-kill" | "envoy-restart" => Target::Recorded,
        _ => Target::NoFailure,
    }
}

async fn run_case(p: &Arc<Platform>, case: &'static str, round: usize, declared: &[String]) -> CaseResult {
    let load = Load::start(p.gate, round);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (fault_ms, fault) = (now_ms(), Instant::now());
    let pc = p.clone();
    let inj = tokio::task::spawn_blocking(move || inject(&pc, case)).await.expect("the injection ran");
    // The load's deadline counts from the injection's end: one can take long (the flood's
    // name lookups time out on the internal network).
    let injected = Instant::now();
    let mut still_failing = true;
    while injected.elapsed() < LOAD_DEADLINE {
        if load_settled(&load.snapshot(), fault_ms, now_ms(), WINDOW.as_millis() as u64, 1000) {
            still_failing = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let samples = load.finish().await;
    let mut r =
        CaseResult { name: case.to_string(), target: Some(target(case)), notes: inj.notes, extra_misses: inj.misses, ..Default::default() };
    // Docker's exit time, unless it is an older exit's (the container had not died yet).
    let died_ms = inj.died_ms.filter(|&d| d + 1000 >= fault_ms).unwrap_or(fault_ms);
    r.add_samples(&samples, fault_ms, died_ms, still_failing);
    r.healed = heal(p, declared, fault, LOAD_DEADLINE + HEAL_DEADLINE).await;
    if r.healed.is_err() {
        let removed = remove_orphans(p).await;
        if !removed.is_empty() {
            r.notes.push(format!("the suite removed replica containers /status does not list: {}", removed.join(", ")));
        }
    }
    if case == "statsd-flood" {
        let pc = p.clone();
        r.extra_misses.extend(tokio::task::spawn_blocking(move || flood_effects(&pc)).await.unwrap());
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine with Compose: full tier (scripts/test.sh); scripts/faults.sh records its table"]
async fn every_fault_is_survived_under_load() {
    let _one = ONE_PLATFORM.lock().await;
    let cases = select(std::env::var("ROOST_FAULTS_CASES").ok().as_deref(), CASES).unwrap_or_else(|e| panic!("ROOST_FAULTS_CASES: {e}"));
    println!("faults: cases: {}", if cases.len() == CASES.len() { "all".to_string() } else { cases.join(",") });
    let started = Instant::now();
    let p = Arc::new(tokio::task::spawn_blocking(up).await.unwrap());
    let declared = declared(&p);
    // Up: every function answers once (their images are built as compose starts).
    let ready = heal(&p, &declared, Instant::now(), Duration::from_secs(240)).await;
    if let Err(e) = ready {
        panic!("the platform never came up healthy: {e}");
    }
    eprintln!("faults: platform up in {:.0} s; cases {cases:?}", started.elapsed().as_secs_f64());

    let mut results = Vec::new();
    for (round, case) in cases.iter().enumerate() {
        let r = run_case(&p, case, round, &declared).await;
        eprintln!(
            "faults: {case}: {} sent, {} failed {:?}, {} wrong, misses {:?}",
            r.requests,
            r.failed_total(),
            r.failed,
            r.wrong,
            r.misses()
        );
        results.push(r);
        tokio::time::sleep(Duration::from_secs(2)).await; // settle
    }
    let table = table(&results);
    println!("<!-- faults:table:begin -->\n{table}<!-- faults:table:end -->");
    println!("faults: {} cases in {:.0} s (platform included)", results.len(), started.elapsed().as_secs_f64());
    let missed: Vec<String> =
        results.iter().filter(|r| !r.misses().is_empty()).map(|r| format!("{}: {}", r.name, r.misses().join("; "))).collect();
    p.logs_on_panic.store(false, Ordering::Relaxed); // a missed target is in the table, not the logs
    assert!(missed.is_empty(), "fault targets missed:\n  {}", missed.join("\n  "));
}

/// The components the asynchronous-calls case kills, in turn.
const ASYNC_KILLS: &[&str] = &["async-worker", "orchestrator", "gate", "redis", "envoy", "replica"];

/// One submit of `POST /async/add` with its idempotency key, sent again until it is
/// answered 202 (a component may be down): its call id, and the failed tries.
async fn submit_until_accepted(client: &reqwest::Client, gate: u16, i: u64) -> (Option<String>, u32) {
    let body = format!(r#"{{"value1": {i}, "value2": 1000000}}"#);
    let mut failed = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(90) {
        let r = client
            .post(format!("http://127.0.0.1:{gate}/async/add"))
            .header("content-type", "application/json")
            .header("x-idempotency-key", format!("faults-{i}"))
            .body(body.clone())
            .send()
            .await;
        if let Ok(r) = r {
            if r.status() == 202 {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    return (v["id"].as_str().map(str::to_string), failed);
                }
            }
        }
        failed += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (None, failed)
}

/// kill -9 of one component of the asynchronous path (a replica of `add` for `replica`).
fn kill_for_async(p: &Platform, what: &str) -> Injected {
    let mut inj = Injected::default();
    if what == "replica" {
        match a_replica("add") {
            Some(c) => {
                let pid = text(&docker(&["inspect", "-f", "{{.State.Pid}}", &c]));
                let out = Command::new("kill").args(["-9", &pid]).output().expect("kill runs");
                inj.notes.push(format!("an add replica killed ({})", if out.status.success() { "ok" } else { "kill failed" }));
            }
            None => inj.notes.push("no add replica running at that moment".into()),
        }
        return inj;
    }
    kill9(&p.container(what), &mut inj);
    inj
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine with Compose: full tier (scripts/test.sh)"]
async fn every_asynchronous_call_completes_across_a_kill_of_each_component() {
    let _one = ONE_PLATFORM.lock().await;
    let started = Instant::now();
    let p = Arc::new(tokio::task::spawn_blocking(up).await.unwrap());
    let declared = declared(&p);
    if let Err(e) = heal(&p, &declared, Instant::now(), Duration::from_secs(240)).await {
        panic!("the platform never came up healthy: {e}");
    }
    eprintln!("faults/async: platform up in {:.0} s", started.elapsed().as_secs_f64());

    // A steady stream of submits, about 60 a second, each with its own numbers and key, while
    // each component is killed in turn (6 s apart).
    let stop = Arc::new(AtomicBool::new(false));
    let accepted: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let submitter = {
        let (stop, accepted, gate) = (stop.clone(), accepted.clone(), p.gate);
        tokio::spawn(async move {
            let client = client();
            let (mut i, mut retried, mut unaccepted) = (0u64, 0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                let (id, failed) = submit_until_accepted(&client, gate, i).await;
                retried += failed;
                match id {
                    Some(id) => accepted.lock().unwrap().push((i, id)),
                    None => unaccepted += 1,
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (retried, unaccepted)
        })
    };
    let mut notes = Vec::new();
    tokio::time::sleep(Duration::from_secs(6)).await;
    for what in ASYNC_KILLS {
        let before = accepted.lock().unwrap().len();
        let p2 = p.clone();
        let inj = tokio::task::spawn_blocking(move || kill_for_async(&p2, what)).await.unwrap();
        notes.push(format!("{what} killed after {before} accepted: {}", inj.notes.join("; ")));
        assert!(inj.misses.is_empty(), "{what}: {:?}", inj.misses);
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (submit_retries, unaccepted) = submitter.await.unwrap();
    let accepted = accepted.lock().unwrap().clone();

    // Every accepted call finishes: done with its own sum, none failed, none lost.
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut done, mut failed, mut wrong, mut lost, mut retried_calls) = (0, Vec::new(), Vec::new(), Vec::new(), 0);
    for (i, id) in &accepted {
        let record = loop {
            let r = send(&client, p.gate, reqwest::Method::GET, &format!("/async/calls/{id}"), String::new()).await;
            let record = r.ok().and_then(|(_, body)| serde_json::from_str::<roost_common::wire::calls::CallRecord>(&body).ok());
            match record {
                Some(r) if r.state.finished() => break Some(r),
                _ if Instant::now() > deadline => break None,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let Some(record) = record else {
            lost.push(id.clone());
            continue;
        };
        if record.attempts > 1 {
            retried_calls += 1;
        }
        if record.state != roost_common::wire::calls::CallState::Done {
            failed.push(format!("{id}: {:?}", record.last_error));
            continue;
        }
        let body = record.result.as_ref().and_then(|r| r.body.clone()).unwrap_or_default();
        let sum = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["result"].as_u64());
        if sum == Some(i + 1_000_000) {
            done += 1;
        } else {
            wrong.push(format!("{id}: {body}"));
        }
    }
    println!("faults/async: {}", notes.join("\n  "));
    println!(
        "faults/async: accepted {}, done {done}, failed {}, wrong {}, lost {}, attempted more than once {retried_calls}, \
         submits sent again {submit_retries}, never accepted {unaccepted}, in {:.0} s",
        accepted.len(),
        failed.len(),
        wrong.len(),
        lost.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(accepted.len() >= 1000, "a few thousand calls were meant to be submitted: {}", accepted.len());
    assert_eq!(unaccepted, 0, "every submit was answered 202 in the end");
    assert!(lost.is_empty(), "calls lost: {lost:?}");
    assert!(failed.is_empty(), "calls failed: {failed:?}");
    assert!(wrong.is_empty(), "wrong answers: {wrong:?}");
    p.logs_on_panic.store(false, Ordering::Relaxed);
}
