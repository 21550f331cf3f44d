//! `docker compose up` on a machine with a Docker engine and no registry: every image is
//! built offline (scripts/build-offline-images.sh), the platform comes up, `/hello`
//! answers through the gate, a burst scales `sleep` up, idle reaps it, and
//! `docker compose down` leaves no function container behind. From inside a running
//! function replica nothing of the platform's control side answers (issue 13).

use roost_common::wire::status::{FunctionState, Status};
use roost_testkit::http;
use roost_testkit::process::free_port;
use roost_testkit::{wait_until, workspace_root};
use serde_json::Value;
use std::process::{Command, Output};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

fn run(args: &[&str], env: &[(String, String)]) -> Output {
    let c = roost_testkit::compose_command();
    let out = Command::new(&c[0])
        .args(&c[1..])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(workspace_root())
        .output()
        .expect("the Compose tool runs (install docker-compose or the compose plugin)");
    assert!(out.status.success(), "{c:?} {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn managed_containers() -> String {
    let out = Command::new("docker").args(["ps", "-a", "--filter", "label=roost.managed=true", "--format", "{{.Names}}"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Down(Vec<(String, String)>, String);
impl Drop for Down {
    fn drop(&mut self) {
        let c = roost_testkit::compose_command();
        if std::thread::panicking() {
            // The platform's own account of the failure, before it is taken down.
            if let Ok(out) = Command::new(&c[0])
                .args(&c[1..])
                .args(["-p", &self.1, "logs", "--no-color", "--tail", "200"])
                .envs(self.0.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .current_dir(workspace_root())
                .output()
            {
                eprintln!(
                    "--- docker compose logs (last 200 lines per service) ---\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let _ = Command::new(&c[0])
            .args(&c[1..])
            .args(["-p", &self.1, "down", "-v", "-t", "40"])
            .envs(self.0.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(workspace_root())
            .output();
    }
}

/// The id of `service`'s container in `project`.
fn container_of(project: &str, service: &str, env: &[(String, String)]) -> String {
    let id = String::from_utf8_lossy(&run(&["-p", project, "ps", "-q", service], env).stdout).trim().to_string();
    assert!(!id.is_empty(), "no {service} container");
    id
}

/// Every IP address of a container, one per network.
fn ips_of(container: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}

/// One TCP exchange from the host: what came back first (up to 200 bytes), or why nothing.
fn tcp_ask(host: &str, port: u16, payload: &[u8]) -> String {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::new(host.parse().unwrap(), port);
    let mut s = match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => return format!("unreachable: {e}"),
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(payload).unwrap();
    let mut buf = [0u8; 200];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).to_string()
}

/// Run inside a function replica (python3 is in the base image): each probe
/// `[name, host, port, payload]`, all at once (the replica may be reaped when idle),
/// connects (1.5 s), sends the payload and reads the first line back; prints
/// `{name: "unreachable: ..." | "answered: <first line>" | "connected, then: ..."}`.
const PROBE: &str = r#"
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def probe(name, host, port, payload):
    try:
        s = socket.create_connection((host, port), timeout=1.5)
    except Exception as e:
        return name, "unreachable: %s: %s" % (type(e).__name__, e)
    try:
        s.settimeout(3)
        s.sendall(payload.encode())
        return name, "answered: " + s.recv(300).decode("latin-1").split("\r\n")[0]
    except Exception as e:
        return name, "connected, then: %s: %s" % (type(e).__name__, e)
    finally:
        s.close()
probes = json.loads(sys.argv[1])
with ThreadPoolExecutor(len(probes)) as pool:
    print(json.dumps(dict(pool.map(lambda p: probe(*p), probes))))
"#;

/// The probes of [`assert_isolated`]: `[name, host, port, payload]`.
type Probes = Vec<(String, String, u16, String)>;

/// What to try from inside a function replica: the control side by every address its
/// containers have (the names do not even resolve on the functions network), Envoy's
/// admin on every address of Envoy's, its guarded listener, the orchestrator's API.
fn isolation_probes(project: &str, env: &[(String, String)]) -> Probes {
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let post = |path: &str| format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let mut probes: Probes = Vec::new();
    for (service, ports) in
        [("redis", &[6379][..]), ("control-plane", &[18000, 18001]), ("statsd-listener", &[9102]), ("async-worker", &[8090])]
    {
        for ip in ips_of(&container_of(project, service, env)) {
            for port in ports {
                probes.push((format!("{service} {ip}:{port}"), ip.clone(), *port, "PING\r\n".into()));
            }
        }
        probes.push((format!("{service} by name"), service.into(), 80, String::new()));
    }
    for ip in ips_of(&container_of(project, "envoy", env)) {
        probes.push((format!("envoy admin {ip}:9901"), ip, 9901, post("/quitquitquit")));
    }
    probes.push(("envoy guard GET /clusters".into(), "envoy".into(), 9902, get("/clusters")));
    probes.push(("envoy guard POST /quitquitquit".into(), "envoy".into(), 9902, post("/quitquitquit")));
    probes.push(("orchestrator GET /status".into(), "orchestrator".into(), 18002, get("/status")));
    probes.push(("orchestrator POST wake hello".into(), "orchestrator".into(), 18002, post("/functions/hello/wake")));
    probes.push(("orchestrator POST wake sleep".into(), "orchestrator".into(), 18002, post("/functions/sleep/wake")));
    probes
}

/// From inside `replica`'s network namespace: Redis, the control plane, the
/// statsd-listener, the async worker and Envoy's admin are unreachable, and the orchestrator's API and
/// Envoy's guarded admin listener refuse a request without the control token. False
/// when the replica went away before the probes ran (reaped when idle).
fn assert_isolated(replica: &str, probes: &Probes) -> bool {
    let args = serde_json::to_string(&probes).unwrap();
    // Bounded: a replica reaped meanwhile is paused as its function's spare, which
    // freezes the probe inside it.
    let Some(out) = roost_testkit::process::output_within(
        Command::new("docker").args(["exec", replica, "python3", "-c", PROBE, &args]),
        b"",
        Duration::from_secs(30),
    ) else {
        eprintln!("the probe in {replica} did not finish within 30 s (reaped and paused?)");
        return false;
    };
    if !out.status.success() {
        eprintln!("the probe did not run in {replica} (reaped?): {}: {}", out.status, String::from_utf8_lossy(&out.stderr));
        return false;
    }
    let seen: std::collections::BTreeMap<String, String> = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("isolation probes from inside {replica}:");
    for (name, got) in &seen {
        eprintln!("  {name:40} {got}");
    }
    for (name, got) in &seen {
        let ok = if name.starts_with("orchestrator") {
            got.starts_with("answered: HTTP/1.1 401")
        } else if name.starts_with("envoy guard") {
            got.starts_with("answered: HTTP/1.1 403")
        } else {
            got.starts_with("unreachable")
        };
        assert!(ok, "from inside a function replica, {name}: {got}");
    }
    assert_eq!(seen.len(), probes.len());
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine with Compose: full tier (scripts/test.sh)"]
async fn compose_up_with_offline_images_serves_scales_reaps_and_cleans_up() {
    let mut env = roost_testkit::offline_images();
    assert_eq!(env.len(), 7, "seven image overrides: {env:?}");
    let (gate, orch) = (free_port(), free_port());
    env.push(("ROOST_PORT".into(), gate.to_string()));
    env.push(("ROOST_ORCHESTRATOR_PORT".into(), orch.to_string()));
    let project = format!("roost-e2e-{}", std::process::id());
    // A functions network of its own: no other run's (or one an earlier run could not
    // remove) is in its way.
    env.push(("ROOST_DOCKER_NETWORK".into(), format!("{project}-functions")));
    let _down = Down(env.clone(), project.clone());
    run(&["-p", &project, "up", "-d"], &env);

    wait_until(WAIT, "/hello through the gate", || async {
        let r = http::get(gate, "/hello").await.ok()?;
        (r.status == 200).then_some(r)
    })
    .await;
    let r = http::get(gate, "/hello").await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap(), serde_json::json!({"Hello": "World"}));

    // The control token, as README tells a compose user to read it.
    let token = String::from_utf8_lossy(
        &run(&["-p", &project, "exec", "-T", "orchestrator", "cat", "/run/roost/secrets/control-token"], &env).stdout,
    )
    .trim()
    .to_string();
    assert!(token.len() >= 32 && token.chars().all(|c| c.is_ascii_hexdigit()), "{token:?}");
    let auth = format!("Bearer {token}");
    let status = |name: &'static str| {
        let auth = auth.clone();
        async move {
            let r = http::request(orch, "GET", "/status", &[("Authorization", auth.as_str())], b"").await.ok()?;
            let s: Status = serde_json::from_str(&r.body).ok()?;
            s.function(name).cloned()
        }
    };
    assert_eq!(http::get(orch, "/status").await.unwrap().status, 401, "the orchestrator's API wants the token");

    // Isolation, from inside a running hello replica (called just before, so it is up;
    // tried again on a fresh one if it was reaped meanwhile).
    let sleeping_before = status("sleep").await.expect("sleep declared").replicas.len();
    let probes = isolation_probes(&project, &env);
    let mut probed = false;
    for _ in 0..3 {
        assert_eq!(http::get(gate, "/hello").await.unwrap().status, 200);
        let running = Command::new("docker")
            .args(["ps", "-q", "--filter", "label=roost.function=hello", "--filter", "status=running"])
            .output()
            .unwrap();
        let replica = String::from_utf8_lossy(&running.stdout).lines().next().expect("a running hello replica").to_string();
        if assert_isolated(&replica, &probes) {
            probed = true;
            break;
        }
    }
    assert!(probed, "no hello replica stayed up for the probes");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(status("sleep").await.unwrap().replicas.len(), sleeping_before, "a wake without the token woke nothing");
    // From the host: Redis wants its password, the control plane's admin API its token.
    let redis_ip = ips_of(&container_of(&project, "redis", &env)).remove(0);
    assert!(tcp_ask(&redis_ip, 6379, b"PING\r\n").starts_with("-NOAUTH"), "Redis answers without its password");
    let cp_ip = ips_of(&container_of(&project, "control-plane", &env)).remove(0);
    let cp = tcp_ask(&cp_ip, 18001, b"PUT /functions/evil HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
    assert!(cp.starts_with("HTTP/1.1 401"), "the control plane's admin API without the token: {cp}");

    // Redis keeps its data across a restart (append-only file on a named volume): the
    // control plane's saved model is still there, and /hello still answers.
    // Its answer, or "" while it cannot answer (restarting).
    let redis_cli = |args: &[&str]| {
        let c = roost_testkit::compose_command();
        let out = Command::new(&c[0])
            .args(&c[1..])
            .args(["-p", project.as_str(), "exec", "-T", "redis", "sh", "-c"])
            .arg(r#"REDISCLI_AUTH="$(cat /run/roost/secrets/redis-password)" exec redis-cli "$@""#)
            .arg("redis-cli")
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(workspace_root())
            .output()
            .expect("the Compose tool runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(redis_cli(&["config", "get", "appendonly"]), "appendonly\nyes");
    run(&["-p", &project, "restart", "redis"], &env);
    wait_until(WAIT, "Redis back", || async { (redis_cli(&["ping"]) == "PONG").then_some(()) }).await;
    assert_eq!(redis_cli(&["exists", "roost:cp:state"]), "1", "the control plane's saved model survived the restart");
    wait_until(WAIT, "/hello after the Redis restart", || async {
        let r = http::get(gate, "/hello").await.ok()?;
        (r.status == 200).then_some(())
    })
    .await;

    // `sleep`'s image is built when compose starts (with the others, in parallel; a minute
    // on a slow storage driver), and a call held longer than the gate's 30 s gets a
    // 504: call it until its image is built and it answers.
    wait_until(WAIT, "/sleep answering once its image is built", || async {
        let r = http::get(gate, "/sleep?ms=1").await.ok()?;
        (r.status == 200).then_some(())
    })
    .await;
    // A burst on `sleep` (target concurrency 1) brings a second container.
    let burst: Vec<_> = (0..6).map(|_| tokio::spawn(async move { http::get(gate, "/sleep?ms=1500").await })).collect();
    wait_until(WAIT, "a second sleep container", || async {
        let f = status("sleep").await?;
        (f.replicas.len() >= 2).then_some(())
    })
    .await;
    for b in burst {
        let r = b.await.unwrap().expect("answered");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // Idle (sleep's idle timeout is 5 s) reaps it.
    wait_until(WAIT, "sleep reaped", || async { (status("sleep").await?.state == FunctionState::Sleeping).then_some(()) }).await;

    // An asynchronous call: answered 202 at once by the async worker behind Envoy,
    // delivered through Envoy to a sleeping function, its result kept.
    let r = http::request(gate, "POST", "/async/hello", &[], b"").await.unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let id = serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["id"].as_str().unwrap().to_string();
    wait_until(WAIT, "the asynchronous call done", || async {
        let r = http::get(gate, &format!("/async/calls/{id}")).await.ok()?;
        let record: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        (record["state"] == "done").then(|| assert_eq!(record["result"]["status"], 200, "{record}"))
    })
    .await;

    // The statsd-listener restarted: Envoy (which looks its name up again) and the others
    // find it, and what follows is counted (the metrics below).
    run(&["-p", &project, "restart", "statsd-listener"], &env);

    // A function deployed over the management API (on the public port, with the API
    // token read as README tells) survives `docker compose down` and `up`: it is kept on
    // the roost-data volume.
    let api_token =
        String::from_utf8_lossy(&run(&["-p", &project, "exec", "-T", "orchestrator", "cat", "/var/lib/roost/api-token"], &env).stdout)
            .trim()
            .to_string();
    let api_auth = format!("Bearer {api_token}");
    let code = b"async def handle(request):\n    return 'kept ok'\n";
    let r = http::request(gate, "PUT", "/system/functions/kept?file=kept.py", &[], code).await.unwrap();
    assert_eq!(r.status, 401, "a deploy without the API token: {}", r.body);
    let r = http::request(gate, "PUT", "/system/functions/kept?file=kept.py", &[("Authorization", api_auth.as_str())], code).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let kept = || async {
        let r = http::get(gate, "/kept").await.ok()?;
        (r.status == 200 && r.body.contains("kept ok")).then_some(())
    };
    wait_until(WAIT, "/kept answering after its deploy", kept).await;

    // The platform's metrics across the containers, all sent since the statsd-listener's
    // restart: Envoy's calls and durations (its metrics service), the orchestrator's
    // cold starts (kept's, statsd), and the gate's own answers (statsd, believed by the
    // host name `gate`): a function whose image is missing is answered by the gate with
    // its refusal.
    let r = http::request(
        gate,
        "PUT",
        "/system/functions/ghost",
        &[("Authorization", api_auth.as_str()), ("content-type", "application/yaml")],
        b"version: 1\nruntime: {kind: image, image: roost-no-such-image:1}\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let refused = http::get(gate, "/ghost").await.unwrap();
    assert!(refused.status >= 500, "{} {}", refused.status, refused.body);
    let wanted = [
        "gateway_function_invocation_total{function_name=\"kept\",code=\"200\"}".to_string(),
        "gateway_functions_seconds_count{function_name=\"kept\"}".to_string(),
        "roost_cold_starts_total{function=\"kept\"}".to_string(),
        format!("gateway_function_invocation_total{{function_name=\"ghost\",code=\"{}\"}}", refused.status),
    ];
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = http::request(gate, "GET", "/system/metrics", &[("Authorization", api_auth.as_str())], b"").await.unwrap();
        if wanted.iter().all(|w| r.body.contains(w.as_str())) {
            break;
        }
        if std::time::Instant::now() >= deadline {
            let ours: Vec<&str> = r.body.lines().filter(|l| l.contains("function") && !l.contains("_bucket")).collect();
            panic!("/system/metrics never showed {wanted:#?}: {} {ours:#?}", r.status);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let r = http::request(gate, "DELETE", "/system/functions/ghost", &[("Authorization", api_auth.as_str())], b"").await.unwrap();
    assert_eq!(r.status, 202, "removed (its replicas drain): {}", r.body);

    run(&["-p", &project, "down", "-t", "40"], &env);
    assert_eq!(managed_containers(), "", "docker compose down left function containers behind");
    run(&["-p", &project, "up", "-d"], &env);
    wait_until(WAIT, "/kept answering after down and up", kept).await;
    // Envoy finds the restarted orchestrator by name (looked up again every second): until
    // it has, it answers its own 503 "no healthy upstream"; any other answer is the API's.
    let r = wait_until(WAIT, "the management API after down and up", || async {
        let r = http::request(gate, "GET", "/system/functions/kept", &[("Authorization", api_auth.as_str())], b"").await.ok()?;
        (!r.body.contains("no healthy upstream")).then_some(r)
    })
    .await;
    assert_eq!(r.status, 200, "the same API token after down and up: {}", r.body);

    run(&["-p", &project, "down", "-v", "-t", "40"], &env);
    assert_eq!(managed_containers(), "", "docker compose down left function containers behind");
}
