//! The Swarm runtime against a real single-node Docker Swarm (made by the test when the
//! engine is in none, and left again): a replica is a hardened service whose task is
//! reached on the overlay, a restarted runtime adopts it, a killed task is reported with
//! how it ended and its service removed, an import error carries its traceback, a stop
//! removes the service, and a leftover is cleaned up. Without hot spares: a spare is
//! probed ready before it is kept, and this test's process is not on the overlay (the
//! stack test, `cli/tests/swarm.rs`, covers them with the orchestrator on it).

mod support;

use roost_orchestrator::runtime::swarm::{SwarmConfig, SwarmRuntime};
use roost_orchestrator::runtime::{ReplicaRuntime, RuntimeEvent};
use roost_testkit::swarm::Swarm;
use roost_testkit::{wait_until, workspace_root};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::WAIT;

const BASE: &str = "roost/base:bookworm";

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("the docker CLI runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn runtime(net: &str, definitions_dir: &Path, spares: Option<u64>) -> Arc<SwarmRuntime> {
    let ok = Command::new("docker").args(["image", "inspect", BASE]).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "the base image {BASE} is missing: run scripts/build-base-image.sh (bash .ci/run does)");
    SwarmRuntime::connect(SwarmConfig {
        socket: "/var/run/docker.sock".into(),
        base_image: BASE.into(),
        network: net.into(),
        port: 8080,
        definitions_dir: definitions_dir.to_path_buf(),
        runtime_dir: workspace_root().join("faas-runtime"),
        stop_grace: Duration::from_secs(2),
        constraints: Vec::new(),
        spare_memory: spares,
    })
    .await
    .expect("the swarm manager answers")
}

/// A Python function of the test's own, `<dir>/python/functions/<name>/<name>.py`.
fn own_function(dir: &Path, name: &str, code: &str) -> roost_common::spec::FunctionSpec {
    let folder = dir.join("python/functions").join(name);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join(format!("{name}.py")), code).unwrap();
    let yaml = format!("usable-functions:\n  {name}:\n    version: 0.1\n    configuration: {{programing_language: python, base_function_file_name: {name}.py, function_folder: {name}}}\n    limits: {{memory: 64m, pids: 64}}\n");
    roost_common::spec::parse(&yaml).unwrap().remove(name).unwrap()
}

/// GET `http://<address><path>` from a container on the overlay (the host is not on it):
/// the body, or the error Python printed.
fn get_on_overlay(net: &str, address: SocketAddr, path: &str) -> String {
    let code = format!(
        "import urllib.request\ntry:\n print(urllib.request.urlopen('http://{address}{path}', timeout=5).read().decode())\nexcept Exception as e:\n print('FAILED', e)\n"
    );
    docker(&["run", "--rm", "--network", net, BASE, "python3", "-c", &code])
}

/// The services of the test's network.
fn services_on(net: &str) -> Vec<String> {
    let out = docker(&["service", "ls", "-q", "--filter", &format!("label=roost.network={net}")]);
    out.split_whitespace().map(String::from).collect()
}

/// Removes the test's services and network when dropped, even after a failure.
struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for s in services_on(&self.0) {
            docker(&["service", "rm", &s]);
        }
        // The network can be removed once the tasks' containers are gone.
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            docker(&["network", "rm", &self.0]);
            if docker(&["network", "ls", "-q", "--filter", &format!("name=^{}$", self.0)]).is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

async fn next_exit(events: &mut tokio::sync::mpsc::UnboundedReceiver<RuntimeEvent>, replica: &str) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            let RuntimeEvent::Exited { replica_id, reason, .. } = events.recv().await.expect("events");
            if replica_id == replica {
                return reason;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no exit of {replica} reported"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine that can be a swarm manager: full tier (scripts/test.sh)"]
async fn a_replica_is_a_hardened_service_adopted_watched_and_removed() {
    // Dropped last: the services and the network go before the swarm is left.
    let _swarm = Swarm::join();
    let net = format!("roost-test-swarm-{}", std::process::id());
    let _cleanup = Cleanup(net.clone());
    let dir = std::env::temp_dir().join(format!("roost-swarm-rt-{}", std::process::id()));
    let hello = own_function(&dir, "hello", "async def handle(request):\n    return {'Hello': 'World'}\n");
    let broken = own_function(&dir, "broken", "import roost_no_such_module  # noqa\n\n\nasync def handle(request):\n    return {}\n");

    let rt = runtime(&net, &dir, Some(0)).await;
    let mut events = rt.events();
    assert_eq!(docker(&["network", "inspect", &net, "--format", "{{.Driver}} {{.Attachable}} {{.Internal}}"]), "overlay true true");
    rt.prepare(&hello, "hello-hash").await.expect("the image builds");

    // A start returns once the task runs, with its overlay address.
    let t = Instant::now();
    let replica = rt.start(&hello, "hello-hash", "hello-sw-1").await.expect("the replica starts");
    eprintln!("create -> task running: {:?}", t.elapsed());
    assert_eq!(replica.handle, docker(&["service", "inspect", "roost-hello-sw-1", "--format", "{{.ID}}"]));
    let body = get_on_overlay(&net, replica.address, "/");
    assert!(body.contains("Hello"), "the replica answers on the overlay at {}: {body}", replica.address);

    // Hardened as the Docker runtime's containers, never restarted by Swarm, by image ID.
    let spec = |field: &str| docker(&["service", "inspect", &replica.handle, "--format", field]);
    assert_eq!(spec("{{.Spec.TaskTemplate.ContainerSpec.ReadOnly}}"), "true");
    assert_eq!(spec("{{.Spec.TaskTemplate.ContainerSpec.User}}"), "65534:65534");
    assert_eq!(spec("{{json .Spec.TaskTemplate.ContainerSpec.CapabilityDrop}}"), r#"["ALL"]"#);
    assert_eq!(spec("{{.Spec.TaskTemplate.Resources.Limits.MemoryBytes}}"), (64u64 << 20).to_string());
    assert_eq!(spec("{{.Spec.TaskTemplate.Resources.Limits.Pids}}"), "64");
    assert_eq!(spec("{{.Spec.TaskTemplate.RestartPolicy.Condition}}"), "none");
    assert_eq!(spec("{{.Spec.EndpointSpec.Mode}}"), "dnsrr");
    assert!(spec("{{.Spec.TaskTemplate.ContainerSpec.Image}}").starts_with("sha256:"), "by ID: Swarm would try to pull a tag");
    let container = docker(&["ps", "-q", "--filter", "label=roost.replica=hello-sw-1"]);
    assert_eq!(docker(&["inspect", &container, "--format", "{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.Memory}}"]), "true 67108864");
    // The function reaches nothing outside the overlay.
    let own = docker(&["network", "inspect", &net, "--format", "{{range .IPAM.Config}}{{.Subnet}}{{end}}"]);
    assert!(!own.is_empty());

    // A restarted orchestrator's runtime adopts it (and a leftover service is removed).
    let again = runtime(&net, &dir, Some(0)).await;
    let listed = again.list().await.expect("list");
    assert!(listed.iter().any(|r| r.id == "hello-sw-1" && r.address == replica.address && r.handle == replica.handle), "{listed:?}");
    let mut adopted_events = again.events();
    again.close().await;

    // A killed task: reported with how it ended, and its service removed.
    docker(&["kill", &container]);
    let reason = next_exit(&mut events, "hello-sw-1").await;
    assert!(reason.starts_with("task failed (exit code 137)"), "{reason}");
    wait_until(WAIT, "the dead replica's service removed", || async { services_on(&net).is_empty().then_some(()) }).await;
    assert!(adopted_events.try_recv().is_err(), "a closed runtime reports nothing");
    // Stopping it afterwards (as the orchestrator does) is fine.
    rt.stop(&replica, Duration::from_secs(2)).await.expect("stopping a gone replica succeeds");

    // An import error: the start fails, or the task's exit is reported, with the traceback.
    rt.prepare(&broken, "broken-hash").await.expect("the image builds");
    let reason = match rt.start(&broken, "broken-hash", "broken-sw-1").await {
        Err(e) => e.to_string(),
        Ok(_) => next_exit(&mut events, "broken-sw-1").await,
    };
    assert!(reason.contains("exit code 1"), "{reason}");
    assert!(reason.contains("No module named 'roost_no_such_module'"), "its last lines: {reason}");
    wait_until(WAIT, "the broken replica's service removed", || async { services_on(&net).is_empty().then_some(()) }).await;

    // A stop removes the service and returns once its task no longer runs.
    let second = rt.start(&hello, "hello-hash", "hello-sw-2").await.expect("a second replica starts");
    let t = Instant::now();
    rt.stop(&second, Duration::from_secs(2)).await.expect("stop");
    eprintln!("stop: {:?}", t.elapsed());
    assert!(services_on(&net).is_empty());
    assert!(docker(&["ps", "-q", "--filter", "label=roost.replica=hello-sw-2"]).is_empty(), "its container still runs after stop");
    assert!(tokio::time::timeout(Duration::from_millis(600), events.recv()).await.is_err(), "a stop is not an exit");

    // A labelled service whose task is not running (a leftover) is removed by `list`.
    let third = rt.start(&hello, "hello-hash", "hello-sw-3").await.expect("a third replica starts");
    let c3 = docker(&["ps", "-q", "--filter", "label=roost.replica=hello-sw-3"]);
    let fresh = runtime(&net, &dir, Some(0)).await; // nobody watches it for this runtime
    rt.close().await;
    docker(&["kill", &c3]);
    wait_until(WAIT, "the killed task seen as failed", || async {
        let state = docker(&["service", "ps", &third.handle, "--format", "{{.CurrentState}}"]);
        state.starts_with("Failed").then_some(())
    })
    .await;
    assert!(fresh.list().await.expect("list").is_empty(), "a dead replica is not adopted");
    assert!(services_on(&net).is_empty(), "the leftover service is removed");
    fresh.close().await;
    std::fs::remove_dir_all(&dir).ok();
}
