//! The Docker runtime against the real Docker engine (images built offline from the
//! debootstrap base, see scripts/build-base-image.sh): a container is built, started,
//! probed, hardened, routed through the real Envoy and reaped; and a function container
//! cannot reach Redis on the control side.

mod support;

use bollard::query_parameters::{InspectContainerOptions, RemoveContainerOptionsBuilder};
use roost_orchestrator::runtime::docker::{DockerConfig, DockerRuntime};
use roost_orchestrator::runtime::ReplicaRuntime;
use roost_testkit::wait_until;
use roost_testkit::workspace_root;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use support::*;

const BASE: &str = "roost/base:bookworm";

fn network() -> String {
    format!("roost-test-fn-{}", std::process::id())
}

async fn runtime(net: &str) -> Arc<DockerRuntime> {
    let repo = workspace_root().join("faas-runtime");
    runtime_in(net, &repo, true).await
}

/// A runtime whose function folders are under `definitions_dir`.
async fn runtime_in(net: &str, definitions_dir: &std::path::Path, warm_spares: bool) -> Arc<DockerRuntime> {
    let ok = std::process::Command::new("docker").args(["image", "inspect", BASE]).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "the base image {BASE} is missing: run scripts/build-base-image.sh (bash .ci/run does)");
    DockerRuntime::connect(DockerConfig {
        socket: "/var/run/docker.sock".into(),
        base_image: BASE.into(),
        network: net.into(),
        port: 8080,
        definitions_dir: definitions_dir.to_path_buf(),
        runtime_dir: workspace_root().join("faas-runtime"),
        warm_spares,
        spare_memory: None,
        recycle: true,
    })
    .await
    .expect("the Docker engine answers (is dockerd running?)")
}

fn hello() -> roost_common::spec::FunctionSpec {
    let yaml = "usable-functions:\n  hello:\n    version: 0.1\n    configuration: {programing_language: python, base_function_file_name: hello.py, function_folder: hello}\n    limits: {memory: 64m, pids: 64}\n";
    roost_common::spec::parse(yaml).unwrap().remove("hello").unwrap()
}

/// Removes the test's containers and network when dropped, even after a failure.
struct NetworkGuard(String);
impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let docker = |args: &[&str]| std::process::Command::new("docker").args(args).output().ok();
        let label = format!("label=roost.network={}", self.0);
        let network = format!("network={}", self.0);
        for filter in [label, network] {
            if let Some(out) = docker(&["ps", "-aq", "--filter", &filter]) {
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    docker(&["rm", "-f", id]);
                }
            }
        }
        docker(&["network", "rm", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine: full tier (scripts/test.sh)"]
async fn container_is_built_started_hardened_probed_and_stopped() {
    let net = network() + "-a";
    let _g = NetworkGuard(net.clone());
    let rt = runtime(&net).await;
    let spec = hello();
    rt.prepare(&spec, "testhash0001").await.expect("image builds");
    let replica = rt.start(&spec, "testhash0001", "hello-test-a").await.expect("container starts");
    let ready =
        roost_orchestrator::probe::until_ready(replica.address, "/healthz", Duration::from_millis(10), Duration::from_secs(20)).await;
    assert!(ready.is_some(), "the container never answered /healthz on {}", replica.address);
    // testkit's HTTP helper speaks to 127.0.0.1 only; the container is on its network.
    let body = raw_get(replica.address, "/").await;
    assert!(body.contains(r#"{"Hello": "World"}"#), "{body}");

    let listed = rt.list().await.unwrap();
    assert!(listed.iter().any(|r| r.id == "hello-test-a" && r.address == replica.address), "{listed:?}");
    // No other spare is prepared while the function's replica runs: the replica becomes
    // the spare when it stops.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(containers_on(&net, "paused") + containers_on(&net, "created"), 0, "no spare beside a running replica");

    let docker =
        bollard::Docker::connect_with_unix("/var/run/docker.sock", 60, &bollard::ClientVersion { major_version: 1, minor_version: 41 })
            .unwrap();
    let c = docker.inspect_container(&replica.handle, None::<InspectContainerOptions>).await.unwrap();
    let host = c.host_config.unwrap();
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert!(host.security_opt.unwrap().contains(&"no-new-privileges".to_string()));
    assert_eq!(host.memory, Some(64 << 20));
    assert_eq!(host.pids_limit, Some(64));
    assert_eq!(c.config.unwrap().user.as_deref(), Some("65534:65534"));
    // The first cold start came while `prepare`'s spare was being prepared: it waited for
    // it and took it instead of starting a container of its own beside the preparation.
    // A spare's container is named after its label.
    assert!(c.name.unwrap_or_default().starts_with("/roost-hello-spare-"), "the first replica is not the prepared spare");

    // A second replica (no spare: a container of its own).
    let second = rt.start(&spec, "testhash0001", "hello-test-a2").await.expect("a second container starts");
    assert_ne!(second.handle, replica.handle);
    assert!(roost_orchestrator::probe::until_ready(second.address, "/healthz", Duration::from_millis(10), Duration::from_secs(20))
        .await
        .is_some());
    assert!(raw_get(second.address, "/").await.contains(r#"{"Hello": "World"}"#));

    // The first to stop becomes the spare (paused, listed as neither replica nor
    // leftover); the second is removed, the slot being taken.
    rt.stop(&replica, Duration::from_secs(5)).await.unwrap();
    assert_eq!(containers_on(&net, "paused"), 1, "the stopped replica is kept as the spare");
    let listed = rt.list().await.unwrap();
    assert_eq!(listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["hello-test-a2"], "{listed:?}");
    assert_eq!(containers_on(&net, "paused"), 1, "list removed the recycled spare");
    rt.stop(&second, Duration::from_secs(5)).await.unwrap();
    assert!(docker.inspect_container(&second.handle, None::<InspectContainerOptions>).await.is_err(), "container removed");

    // The next cold start unpauses the recycled container, now a replica of another id.
    let third = rt.start(&spec, "testhash0001", "hello-test-a3").await.expect("the recycled spare starts");
    assert_eq!(third.handle, replica.handle, "the recycled container serves again");
    assert_eq!(third.id, "hello-test-a3");
    assert!(raw_get(third.address, "/").await.contains(r#"{"Hello": "World"}"#));
    assert!(rt.list().await.unwrap().iter().any(|r| r.id == "hello-test-a3"), "listed under its new id");
    rt.stop(&third, Duration::from_secs(5)).await.unwrap();
    // The spare (recycled once more) is paused; close removes it.
    assert_eq!(containers_on(&net, "paused"), 1);
    rt.close().await;
    assert_eq!(
        containers_on(&net, "paused") + containers_on(&net, "running") + containers_on(&net, "created"),
        0,
        "close left a container behind"
    );
}

/// How many containers of the test's network are in `status` (paused, running, ...).
fn containers_on(net: &str, status: &str) -> usize {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=roost.network={net}"), "--filter", &format!("status={status}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().count()
}

async fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to the container");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine: full tier (scripts/test.sh)"]
async fn a_function_container_cannot_reach_redis_on_the_control_network() {
    let net = network() + "-b";
    let control = network() + "-control";
    let _g = (NetworkGuard(net.clone()), NetworkGuard(control.clone()));
    let rt = runtime(&net).await;
    let spec = hello();
    rt.prepare(&spec, "testhash0001").await.unwrap();
    let docker =
        bollard::Docker::connect_with_unix("/var/run/docker.sock", 60, &bollard::ClientVersion { major_version: 1, minor_version: 41 })
            .unwrap();
    // Redis on the control side, as in compose: its own network, which Envoy and the
    // orchestrator share but functions do not.
    let _ = docker
        .create_network(bollard::models::NetworkCreateRequest {
            name: control.clone(),
            driver: Some("bridge".into()),
            ..Default::default()
        })
        .await;
    let redis_name = format!("roost-test-redis-{}", std::process::id());
    let body = bollard::models::ContainerCreateBody {
        image: Some(BASE.into()),
        cmd: Some(vec!["redis-server".into(), "--bind".into(), "0.0.0.0".into(), "--protected-mode".into(), "no".into()]),
        host_config: Some(bollard::models::HostConfig { network_mode: Some(control.clone()), ..Default::default() }),
        ..Default::default()
    };
    docker
        .create_container(Some(bollard::query_parameters::CreateContainerOptionsBuilder::default().name(&redis_name).build()), body)
        .await
        .unwrap();
    docker.start_container(&redis_name, None::<bollard::query_parameters::StartContainerOptions>).await.unwrap();
    let cleanup = || async {
        let _ = docker.remove_container(&redis_name, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
    };
    let redis_ip =
        docker.inspect_container(&redis_name, None::<InspectContainerOptions>).await.unwrap().network_settings.unwrap().networks.unwrap()
            [&control]
            .ip_address
            .clone()
            .unwrap();
    // The host reaches it (so Redis is really up)...
    wait_until(WAIT, "redis in its container answers the host", || async {
        let mut s = tokio::net::TcpStream::connect((redis_ip.as_str(), 6379)).await.ok()?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"PING\r\n").await.ok()?;
        let mut b = [0u8; 5];
        s.read_exact(&mut b).await.ok()?;
        (&b == b"+PONG").then_some(())
    })
    .await;
    // ...the function container does not.
    let replica = rt.start(&spec, "testhash0001", "hello-test-b").await.unwrap();
    let probe = format!("import socket\ntry:\n socket.create_connection(('{redis_ip}', 6379), 2)\n print('REACHED')\nexcept OSError as e:\n print('BLOCKED', e)\n");
    let exec = docker
        .create_exec(
            &replica.handle,
            bollard::models::ExecConfig {
                cmd: Some(vec!["python3".into(), "-c".into(), probe]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut output = String::new();
    if let bollard::exec::StartExecResults::Attached { output: mut o, .. } = docker.start_exec(&exec.id, None).await.unwrap() {
        use futures::StreamExt;
        while let Some(Ok(chunk)) = o.next().await {
            output.push_str(&chunk.to_string());
        }
    }
    rt.stop(&replica, Duration::from_secs(5)).await.unwrap();
    cleanup().await;
    assert!(output.contains("BLOCKED") && !output.contains("REACHED"), "a function container reached Redis: {output:?}");
    let _ = HashMap::<(), ()>::new();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine: full tier (scripts/test.sh)"]
async fn orchestrator_routes_a_container_through_envoy_and_reaps_it() {
    let net = network() + "-c";
    let _g = NetworkGuard(net.clone());
    let rt = runtime(&net).await;
    // Build the image first: a first build can outlast the test client's 10 s timeout on
    // a busy machine, and the cold start measured here is the one after it.
    rt.prepare(&hello(), "warm-up").await.expect("image builds");
    let b = Backend::start().await;
    let defs = Defs::new("usable-functions:\n  hello:\n    version: 0.1\n    configuration: {programing_language: python, base_function_file_name: hello.py, function_folder: hello}\n    limits: {memory: 64m, pids: 64}\n    scaling: {idle_timeout: 1s}\n");
    let stop = tokio_util::sync::CancellationToken::new();
    let state = std::env::temp_dir().join(format!("roost-docker-{}", std::process::id()));
    let o = roost_orchestrator::start_with_runtime(b.orchestrator_config(&defs, &state), rt, stop.clone()).await.unwrap();
    let api = o.api_addr.port();
    let (status, body) = wake(api, "hello").await;
    assert_eq!(status, 200, "{body}");
    eprintln!("docker cold start phases: {}", body["phases"]);
    let r = b.call("/hello").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("World"));
    wait_until(WAIT, "hello reaped after the idle timeout", || async {
        (function_status(api, "hello").await["state"] == "sleeping").then_some(())
    })
    .await;
    let ps = |status: &str| {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-q",
                "--filter",
                "label=roost.function=hello",
                "--filter",
                &format!("network={net}"),
                "--filter",
                &format!("status={status}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().count()
    };
    assert_eq!(ps("running"), 0, "a container was left running");
    // The next cold start's spare: started, ready, and paused (no CPU) until it is needed
    // (the test's own warm-up prepare above left one more, for its other hash).
    wait_until(WAIT, "a paused spare", || async { (ps("paused") >= 1).then_some(()) }).await;
    stop.cancel();
    o.wait().await.expect("the orchestrator stops cleanly");
    assert_eq!(ps("paused") + ps("running") + ps("created"), 0, "the orchestrator's stop left a container behind");
}

/// The function `deps` in a new definitions folder (its handler imports humanize), with
/// `words` as its pip words (built by hand: the words may hold pip options).
fn deps_function(root: &std::path::Path, words: &[&str]) -> roost_common::spec::FunctionSpec {
    let folder = root.join("python/functions/deps");
    std::fs::create_dir_all(&folder).unwrap();
    let handler = "import humanize, importlib.metadata\n\nasync def handle(request):\n    return {\"file\": humanize.__file__, \"version\": importlib.metadata.version(\"humanize\")}\n";
    std::fs::write(folder.join("deps.py"), handler).unwrap();
    let yaml = "usable-functions:\n  deps:\n    version: 1\n    configuration: {base_function_file_name: deps.py, function_folder: deps}\n    limits: {memory: 64m, pids: 64}\n";
    let mut s = roost_common::spec::parse(yaml).unwrap().remove("deps").unwrap();
    if let roost_common::spec::FunctionKind::Python { extra_dependencies, .. } = &mut s.runtime {
        *extra_dependencies = words.iter().map(|w| w.to_string()).collect();
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine, roost/base:bookworm with python3-pip, and PyPI: full tier (scripts/test.sh)"]
async fn extra_dependencies_are_pip_installed_into_the_image_and_a_failed_build_is_remembered() {
    use roost_common::wire::logs::BUILD_SOURCE;
    let net = network() + "-d";
    let _g = NetworkGuard(net.clone());
    let root = std::env::temp_dir().join(format!("roost-docker-deps-{}", std::process::id()));
    let spec = deps_function(&root, &["humanize==4.9.0"]);
    let rt = runtime_in(&net, &root, true).await;
    let logs = rt.logs();
    rt.prepare(&spec, "deps-hash-1").await.expect("the image builds, pip through the host's proxy and CA");
    let build = logs.lines("deps", None, None);
    assert!(build.iter().all(|l| l.replica == BUILD_SOURCE));
    assert!(build.iter().any(|l| l.line.contains("Successfully installed humanize-4.9.0")), "{build:?}");
    let replica = rt.start(&spec, "deps-hash-1", "deps-test-d").await.expect("container starts");
    let ready =
        roost_orchestrator::probe::until_ready(replica.address, "/healthz", Duration::from_millis(10), Duration::from_secs(20)).await;
    assert!(ready.is_some(), "the container never answered /healthz on {}", replica.address);
    let body = raw_get(replica.address, "/").await;
    assert!(body.contains("/opt/roost/deps/humanize/") && body.contains("4.9.0"), "{body}");
    rt.stop(&replica, Duration::from_secs(5)).await.unwrap();

    // A bad package: the build fails with pip's last lines, then is not tried again.
    let bad = deps_function(&root, &["roost-no-such-package-7f3a9c"]);
    let e = rt.prepare(&bad, "deps-hash-2").await.unwrap_err().to_string();
    assert!(e.contains("No matching distribution found for roost-no-such-package-7f3a9c"), "{e}");
    let logged = logs.lines("deps", None, None).len();
    let t = std::time::Instant::now();
    assert_eq!(rt.prepare(&bad, "deps-hash-2").await.unwrap_err().to_string(), e);
    assert_eq!(rt.start(&bad, "deps-hash-2", "deps-test-d2").await.unwrap_err().to_string(), e);
    assert!(t.elapsed() < Duration::from_secs(2), "remembered, not built again: {:?}", t.elapsed());
    assert_eq!(logs.lines("deps", None, None).len(), logged, "nothing built again");
    rt.close().await;
    std::fs::remove_dir_all(&root).ok();
    // The test's images (`deps` is its own function).
    remove_images("roost-fn-deps");
}

/// Removes the images of `reference` (a test's own function's), best effort.
fn remove_images(reference: &str) {
    if let Ok(out) = std::process::Command::new("docker").args(["images", "-q", "--filter", &format!("reference={reference}")]).output() {
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            std::process::Command::new("docker").args(["rmi", "-f", id]).output().ok();
        }
    }
}

/// A Python function of the test's own, `<dir>/python/functions/<name>/<name>.py`.
fn own_function(dir: &std::path::Path, name: &str, code: &str) -> roost_common::spec::FunctionSpec {
    let folder = dir.join("python/functions").join(name);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join(format!("{name}.py")), code).unwrap();
    let yaml = format!("usable-functions:\n  {name}:\n    version: 0.1\n    configuration: {{programing_language: python, base_function_file_name: {name}.py, function_folder: {name}}}\n    limits: {{memory: 64m, pids: 64}}\n");
    roost_common::spec::parse(&yaml).unwrap().remove(name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine: full tier (scripts/test.sh)"]
async fn a_containers_output_is_in_the_log_store_and_an_import_error_ends_in_the_exit_reason() {
    let dir = std::env::temp_dir().join(format!("roost-docker-logs-{}", std::process::id()));
    let printer = own_function(&dir, "printer", "print('printer: imported', flush=True)\n\n\nasync def handle(request):\n    return {}\n");
    let broken = own_function(&dir, "broken", "import roost_no_such_module  # noqa\n\n\nasync def handle(request):\n    return {}\n");

    // Warm spares: the spare imports the function (and prints) before it is handed out;
    // that output is the replica's too.
    let net = network() + "-logs";
    let _g = NetworkGuard(net.clone());
    let rt = runtime_in(&net, &dir, true).await;
    rt.prepare(&printer, "printer-hash").await.expect("image builds");
    let replica = rt.start(&printer, "printer-hash", "printer-test-1").await.expect("container starts");
    let logs = rt.logs();
    wait_until(WAIT, "the printer's import line in the store", || async {
        logs.lines("printer", None, None).into_iter().find(|l| l.line == "printer: imported" && l.replica == "printer-test-1")
    })
    .await;
    rt.stop(&replica, Duration::from_secs(1)).await.unwrap();
    rt.close().await;

    // An import error (created spares here, so the start is not held by a warm-up that
    // cannot succeed): the exit's reason ends with the traceback.
    let net2 = network() + "-e";
    let _g2 = NetworkGuard(net2.clone());
    let rt = runtime_in(&net2, &dir, false).await;
    let mut events = rt.events();
    rt.prepare(&broken, "broken-hash").await.expect("image builds");
    rt.start(&broken, "broken-hash", "broken-test-1").await.expect("container starts");
    let reason = tokio::time::timeout(WAIT, async {
        loop {
            let roost_orchestrator::runtime::RuntimeEvent::Exited { replica_id, reason, .. } = events.recv().await.expect("events");
            if replica_id == "broken-test-1" {
                return reason;
            }
        }
    })
    .await
    .expect("the broken container exits");
    assert!(reason.starts_with("container died (exit code "), "{reason}");
    assert!(reason.contains("; last output:\n"), "{reason}");
    assert!(reason.contains("ModuleNotFoundError: No module named 'roost_no_such_module'"), "{reason}");
    assert!(reason.lines().count() <= 11, "at most the last 10 lines: {reason}");
    let logs = rt.logs();
    wait_until(WAIT, "the traceback in the store", || async {
        logs.lines("broken", None, None).into_iter().find(|l| l.line.contains("ModuleNotFoundError") && l.replica == "broken-test-1")
    })
    .await;
    rt.close().await;

    // With warm spares the spare's warm-up sees the container exit: the start that claims
    // it fails at once with how, and no container is left running.
    let net3 = network() + "-f";
    let _g3 = NetworkGuard(net3.clone());
    let rt = runtime_in(&net3, &dir, true).await;
    rt.prepare(&broken, "broken-hash").await.expect("image builds");
    let t = std::time::Instant::now();
    let e = rt.start(&broken, "broken-hash", "broken-test-2").await.expect_err("the function cannot start").to_string();
    assert!(e.contains("exited while it started: exit code 1; last output:"), "{e}");
    assert!(e.contains("No module named 'roost_no_such_module'"), "{e}");
    eprintln!("a warm spare's failed start reported in {:?}", t.elapsed());
    rt.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The containers on `net` in a state (`paused`, `running`, ...), with their spec hash.
fn containers_in_state(net: &str, state: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=roost.network={net}"),
            "--filter",
            &format!("status={state}"),
            "--format",
            "{{.Label \"roost.spec-hash\"}}",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
}

/// A runtime on `net` with a spare budget of `budget` bytes (`None`: one per function).
async fn budget_runtime(net: &str, budget: Option<u64>) -> Arc<DockerRuntime> {
    DockerRuntime::connect(DockerConfig {
        socket: "/var/run/docker.sock".into(),
        base_image: BASE.into(),
        network: net.into(),
        port: 8080,
        definitions_dir: workspace_root().join("faas-runtime"),
        runtime_dir: workspace_root().join("faas-runtime"),
        warm_spares: true,
        spare_memory: budget,
        recycle: true,
    })
    .await
    .expect("the Docker engine answers (is dockerd running?)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine: full tier (scripts/test.sh)"]
async fn the_spare_budget_decides_which_spares_exist() {
    // No memory for spares: none is made, and a cold start makes its own container.
    let net = network() + "-budget0";
    let _g = NetworkGuard(net.clone());
    let rt = budget_runtime(&net, Some(0)).await;
    let spec = hello();
    rt.prepare(&spec, "budgethash01").await.expect("image builds");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(containers_in_state(&net, "paused").is_empty() && containers_in_state(&net, "created").is_empty(), "no spare within 0 bytes");
    let replica = rt.start(&spec, "budgethash01", "hello-budget-a").await.expect("a cold start without a spare");
    let ready =
        roost_orchestrator::probe::until_ready(replica.address, "/healthz", Duration::from_millis(10), Duration::from_secs(20)).await;
    assert!(ready.is_some(), "the replica answers");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(containers_in_state(&net, "paused").is_empty(), "still no spare after a start");
    rt.stop(&replica, Duration::from_secs(1)).await.unwrap();
    rt.close().await;

    // One spare per function (no budget): the spare follows the newest definition, and
    // the spare of the one before is removed.
    let net = network() + "-budgetall";
    let _g2 = NetworkGuard(net.clone());
    let rt = budget_runtime(&net, None).await;
    rt.prepare(&spec, "budgethash01").await.expect("image builds");
    wait_until(Duration::from_secs(60), "a paused spare", || async {
        (containers_in_state(&net, "paused") == ["budgethash01"]).then_some(())
    })
    .await;
    let mut newer = spec.clone();
    newer.version = "0.2".into();
    rt.prepare(&newer, "budgethash02").await.expect("image builds");
    wait_until(Duration::from_secs(60), "the spare of the newer definition only", || async {
        (containers_in_state(&net, "paused") == ["budgethash02"]).then_some(())
    })
    .await;
    // A replica someone runs a command in is stopped, not kept as the spare (pausing it
    // would freeze their session).
    let replica = rt.start(&newer, "budgethash02", "hello-budget-b").await.expect("the spare starts");
    let mut exec = std::process::Command::new("docker").args(["exec", &replica.handle, "sleep", "30"]).spawn().unwrap();
    let handle = replica.handle.clone();
    wait_until(Duration::from_secs(10), "the exec session listed", || {
        let handle = handle.clone();
        async move {
            let out = std::process::Command::new("docker").args(["inspect", "-f", "{{len .ExecIDs}}", &handle]).output().ok()?;
            (String::from_utf8_lossy(&out.stdout).trim() != "0").then_some(())
        }
    })
    .await;
    rt.stop(&replica, Duration::from_secs(1)).await.unwrap();
    let _ = exec.kill();
    let _ = exec.wait();
    let gone = std::process::Command::new("docker").args(["inspect", &replica.handle]).output().unwrap();
    assert!(!gone.status.success(), "a replica with an exec session was removed, not paused");
    // The function removed from the definitions: its spare goes with it.
    rt.prepare(&newer, "budgethash02").await.expect("built already");
    wait_until(Duration::from_secs(60), "the spare made again", || async {
        (containers_in_state(&net, "paused") == ["budgethash02"]).then_some(())
    })
    .await;
    rt.forget(&newer.name);
    wait_until(Duration::from_secs(30), "no spare kept for a removed function", || async {
        (containers_in_state(&net, "paused").is_empty() && containers_in_state(&net, "created").is_empty()).then_some(())
    })
    .await;
    rt.close().await;
    assert!(containers_in_state(&net, "paused").is_empty(), "close removes the spares");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine: full tier (scripts/test.sh)"]
async fn a_bursts_replicas_become_its_spares_and_the_next_burst_takes_them_all() {
    let net = network() + "-bursty";
    let _g = NetworkGuard(net.clone());
    let rt = budget_runtime(&net, None).await;
    let spec = hello();
    rt.prepare(&spec, "bursthash01").await.expect("image builds");
    let paused = || containers_in_state(&net, "paused");
    wait_until(Duration::from_secs(60), "the first spare", || async { (paused() == ["bursthash01"]).then_some(()) }).await;

    // A burst: three replicas started within one episode (the first takes the spare).
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(rt.start(&spec, "bursthash01", &format!("hello-burst-{i}")).await.expect("a start"));
    }
    for r in &replicas {
        let ready = roost_orchestrator::probe::until_ready(r.address, "/healthz", Duration::from_millis(10), Duration::from_secs(30)).await;
        assert!(ready.is_some(), "{} answers", r.id);
    }
    // As they stop (all at once, as a burst's replicas scale down), each is kept
    // paused: the first spare and two for the burst.
    for stopped in futures::future::join_all(replicas.iter().map(|r| rt.stop(r, Duration::from_secs(1)))).await {
        stopped.unwrap();
    }
    wait_until(Duration::from_secs(30), "three paused spares", || async { (paused().len() == 3).then_some(()) }).await;
    let kept: std::collections::BTreeSet<String> = replicas.iter().map(|r| r.handle.clone()).collect();

    // The next burst unpauses all three: the very containers that served the first.
    let mut again = Vec::new();
    for i in 3..6 {
        again.push(rt.start(&spec, "bursthash01", &format!("hello-burst-{i}")).await.expect("a start"));
    }
    let resumed: std::collections::BTreeSet<String> = again.iter().map(|r| r.handle.clone()).collect();
    assert_eq!(resumed, kept, "every start of the second burst took a spare");
    for r in &again {
        rt.stop(r, Duration::from_secs(1)).await.unwrap();
    }
    rt.close().await;
    assert!(paused().is_empty(), "close removes every spare");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine: full tier (scripts/test.sh)"]
async fn an_edit_of_the_functions_folder_is_built_into_the_next_start() {
    // Every start prepares first (as the orchestrator does): unchanged, that is a look at
    // the folder's metadata; edited, a new image the next start runs, not a spare (or a
    // recycled replica) of the old one. With created spares, then with warm (paused) ones.
    let dir = std::env::temp_dir().join(format!("roost-docker-edit-{}", std::process::id()));
    let code = |v: u32| format!("async def handle(request):\n    return {{\"v\": {v}}}\n");
    let spec = own_function(&dir, "edited", &code(1));
    for warm in [false, true] {
        std::fs::write(dir.join("python/functions/edited/edited.py"), code(1)).unwrap();
        let net = format!("{}-edit-{warm}", network());
        let _g = NetworkGuard(net.clone());
        let rt = runtime_in(&net, &dir, warm).await;
        let serve = |id: &'static str| {
            let (rt, spec) = (rt.clone(), spec.clone());
            async move {
                rt.prepare(&spec, "edithash01").await.expect("prepared");
                let r = rt.start(&spec, "edithash01", id).await.expect("container starts");
                assert!(roost_orchestrator::probe::until_ready(r.address, "/healthz", Duration::from_millis(10), Duration::from_secs(20))
                    .await
                    .is_some());
                let body = raw_get(r.address, "/").await;
                rt.stop(&r, Duration::from_secs(5)).await.unwrap();
                body
            }
        };
        assert!(serve("edited-1").await.contains(r#"{"v": 1}"#), "warm {warm}");
        let unchanged = std::time::Instant::now();
        rt.prepare(&spec, "edithash01").await.expect("prepared");
        eprintln!("an unchanged prepare took {:?}", unchanged.elapsed());
        assert!(serve("edited-2").await.contains(r#"{"v": 1}"#), "unchanged: the same code (warm {warm})");
        std::fs::write(dir.join("python/functions/edited/edited.py"), code(2)).unwrap();
        assert!(serve("edited-3").await.contains(r#"{"v": 2}"#), "edited: the new code (warm {warm})");
        rt.close().await;
    }
    std::fs::remove_dir_all(&dir).ok();
    remove_images("roost-fn-edited");
}
