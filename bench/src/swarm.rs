//! The swarm scenario (`--scenarios swarm`, run on its own): Roost as a Docker Swarm
//! stack (`scripts/swarm.sh up`) on a single-node swarm, once with the swarm runtime and
//! once with the Docker runtime (plain containers on the same overlay), measured from
//! this host through the public port: cold start from zero and warm latency and
//! throughput. Beside them, in the same run, the floors: a bare Swarm service created
//! until its task runs (the swarm runtime's cold start without Roost), `docker unpause`
//! (the Docker runtime's), and the same function image in a container of its own,
//! published by Docker on this host (the warm path without Roost).
//!
//! The swarm is made for the run and left again unless the engine was in one already.

use crate::client::{closed_loop, get_once, LoadResult};
use crate::floors;
use crate::stats::Summary;
use bollard::models::{ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec};
use bollard::query_parameters::ListTasksOptionsBuilder;
use bollard::{ClientVersion, Docker};
use roost_common::wire::status::FunctionState;
use roost_common::wire::system::Describe;
use roost_testkit::process::free_port;
use roost_testkit::swarm::Swarm;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The functions the scenario calls.
const DEFINITIONS: &str = r#"# Written by roost-bench's swarm scenario.
usable-functions:
  cold:
    version: "1"
    configuration: {programing_language: python, base_function_file_name: hello.py, function_folder: hello}
    scaling: {max_replicas: 1, idle_timeout: 300ms}
  warm:
    version: "1"
    configuration: {programing_language: python, base_function_file_name: hello.py, function_folder: hello}
    scaling: {min_replicas: 1, max_replicas: 1, target_concurrency: 64, idle_timeout: 1h}
"#;

const API_TOKEN: &str = "roost-bench-swarm-api-token-0123456789";

/// One runtime's figures.
#[derive(Debug)]
pub struct RuntimeFigures {
    /// `swarm` or `docker`.
    pub runtime: &'static str,
    /// Cold starts, ms.
    pub cold: Summary,
    /// Warm at 1 and 16 connections.
    pub warm: Vec<(usize, LoadResult)>,
}

/// The run's floors.
#[derive(Debug)]
pub struct Floors {
    /// A bare service created until its task runs, ms.
    pub service_running: Summary,
    /// `docker unpause`, ms.
    pub unpause: Summary,
    /// The function image as a bare service published on the routing mesh, at 1 and 16.
    pub direct: Vec<(usize, LoadResult)>,
}

fn sh(home: &Path, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<()> {
    let out =
        Command::new("bash").arg(home.join("scripts/swarm.sh")).args(args).envs(env.iter().map(|(k, v)| (*k, v.as_str()))).output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(30).collect();
        anyhow::bail!("scripts/swarm.sh {args:?} failed: {}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    Ok(())
}

/// A work folder laid out as `$ROOST_HOME/faas-runtime` with the scenario's definitions.
fn work_home(home: &Path, work: &Path) -> anyhow::Result<()> {
    let fr = work.join("faas-runtime");
    std::fs::create_dir_all(fr.join("python/functions"))?;
    for (from, to) in [("faas-runtime/roost_runtime", "roost_runtime"), ("faas-runtime/python/functions/hello", "python/functions/hello")] {
        let ok = Command::new("cp").arg("-r").arg(home.join(from)).arg(fr.join(to)).status()?.success();
        anyhow::ensure!(ok, "cannot copy {from}");
    }
    std::fs::write(fr.join("global-function-definition.yml"), DEFINITIONS)?;
    Ok(())
}

/// Whether `function` has no replica (the management API's view).
async fn sleeping(port: u16, function: &str) -> bool {
    let auth = format!("Bearer {API_TOKEN}");
    let Ok(r) = roost_testkit::http::request(port, "GET", &format!("/system/functions/{function}"), &[("Authorization", &auth)], b"").await
    else {
        return false;
    };
    let Ok(d) = serde_json::from_str::<Describe>(&r.body) else { return false };
    d.info.status.state == FunctionState::Sleeping && d.info.status.replicas.is_empty()
}

async fn one_runtime(home: &Path, work: &Path, runtime: &'static str, rounds: usize, slice: Duration) -> anyhow::Result<RuntimeFigures> {
    let port = free_port();
    let env = [
        ("ROOST_PORT", port.to_string()),
        ("ROOST_HOME", work.display().to_string()),
        ("ROOST_API_TOKEN", API_TOKEN.to_string()),
        ("ROOST_SWARM_RUNTIME", runtime.to_string()),
        // A functions network of the run's own: `roost up --runtime docker` leaves a
        // bridge named roost-functions behind, which an overlay cannot replace.
        ("ROOST_DOCKER_NETWORK", format!("roost-bench-swarm-{}", std::process::id())),
    ];
    eprintln!("roost-bench: swarm stack with the {runtime} runtime: up");
    sh(home, &["up", "warm"], &env)?;
    let result = async {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut warm = Vec::new();
        for conns in [1, 16] {
            closed_loop(addr, "/warm", conns, Duration::from_millis(500)).await; // connections made, caches warm
            warm.push((conns, closed_loop(addr, "/warm", conns, slice).await));
        }
        let mut cold = Vec::new();
        for round in 0..rounds {
            let t = Instant::now();
            while !sleeping(port, "cold").await {
                anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "cold did not go back to sleep within 60 s (round {round})");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let t = Instant::now();
            let r = get_once(addr, "/cold").await?;
            anyhow::ensure!(r.head.status == 200, "a cold call answered {}", r.head.status);
            cold.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(RuntimeFigures { runtime, cold: Summary::of(&cold).ok_or_else(|| anyhow::anyhow!("no cold start"))?, warm })
    }
    .await;
    eprintln!("roost-bench: swarm stack with the {runtime} runtime: down");
    let down = sh(home, &["down", "--volumes"], &env);
    let figures = result?;
    down?;
    Ok(figures)
}

/// The ID of the `hello` function image the stack built.
fn hello_image() -> anyhow::Result<String> {
    let out = Command::new("docker").args(["images", "-q", "--no-trunc", "--filter", "label=roost.function=cold"]).output()?;
    let id = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string();
    anyhow::ensure!(!id.is_empty(), "no function image of `cold`");
    Ok(id)
}

/// A bare service of `image` (its runtime on 8080).
fn bare_service(name: &str, image: &str) -> ServiceSpec {
    ServiceSpec {
        name: Some(name.to_string()),
        task_template: Some(TaskSpec {
            container_spec: Some(bollard::models::TaskSpecContainerSpec {
                image: Some(image.to_string()),
                env: Some(vec!["PORT=8080".into(), "ROOST_BIND=0.0.0.0".into()]),
                user: Some("65534:65534".into()),
                ..Default::default()
            }),
            restart_policy: Some(bollard::models::TaskSpecRestartPolicy {
                condition: Some(bollard::models::TaskSpecRestartPolicyConditionEnum::NONE),
                ..Default::default()
            }),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode { replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }), ..Default::default() }),
        ..Default::default()
    }
}

async fn running(docker: &Docker, service: &str) -> anyhow::Result<bool> {
    let filters = HashMap::from([("service", vec![service])]);
    let tasks = docker.list_tasks(Some(ListTasksOptionsBuilder::default().filters(&filters).build())).await?;
    Ok(tasks.iter().any(|t| t.status.as_ref().and_then(|s| s.state.as_ref()).is_some_and(|s| s.to_string() == "running")))
}

async fn measure_floors(socket: &str, base_image: &str, rounds: usize, slice: Duration) -> anyhow::Result<Floors> {
    let docker = Docker::connect_with_unix(socket, 60, &ClientVersion { major_version: 1, minor_version: 41 })?;
    let image = hello_image()?;
    let mut created = Vec::new();
    for i in 0..rounds {
        let name = format!("roost-bench-floor-{i}");
        let t = Instant::now();
        let id = docker.create_service(bare_service(&name, &image), None).await?.id.unwrap_or(name.clone());
        while !running(&docker, &id).await? {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "a bare service did not run within 60 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        created.push(t.elapsed().as_secs_f64() * 1000.0);
        docker.delete_service(&id).await?;
    }
    // The function image alone, published by Docker on this host (no IPVS needed).
    let port = free_port();
    let published = format!("127.0.0.1:{port}:8080");
    let run = Command::new("docker")
        .args(["run", "-d", "--rm", "--user", "65534:65534", "-e", "PORT=8080", "-e", "ROOST_BIND=0.0.0.0", "-p", &published, &image])
        .output()?;
    anyhow::ensure!(run.status.success(), "docker run of the function image: {}", String::from_utf8_lossy(&run.stderr));
    let container = String::from_utf8_lossy(&run.stdout).trim().to_string();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let measured = async {
        let t = Instant::now();
        while !get_once(addr, "/").await.is_ok_and(|r| r.head.status == 200) {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "the function container never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut direct = Vec::new();
        for conns in [1, 16] {
            closed_loop(addr, "/", conns, Duration::from_millis(500)).await;
            direct.push((conns, closed_loop(addr, "/", conns, slice).await));
        }
        Ok(direct)
    }
    .await;
    Command::new("docker").args(["rm", "-f", &container]).output()?;
    let direct = measured?;
    let unpause = floors::docker(socket, base_image, rounds).await?.unpause_ms;
    Ok(Floors {
        service_running: Summary::of(&created).ok_or_else(|| anyhow::anyhow!("no floor sample"))?,
        unpause: Summary::of(&unpause).ok_or_else(|| anyhow::anyhow!("no unpause sample"))?,
        direct,
    })
}

/// Runs the scenario and returns its report (markdown).
pub async fn run(home: &Path, socket: &str, base_image: &str, rounds: usize, slice: Duration) -> anyhow::Result<String> {
    let _swarm = Swarm::join();
    let work = std::env::temp_dir().join(format!("roost-bench-swarm-{}", std::process::id()));
    work_home(home, &work)?;
    let mut runs = Vec::new();
    for runtime in ["swarm", "docker"] {
        runs.push(one_runtime(home, &work, runtime, rounds, slice).await?);
    }
    eprintln!("roost-bench: swarm floors");
    let floors = measure_floors(socket, base_image, rounds, slice).await?;
    std::fs::remove_dir_all(&work).ok();
    Ok(render(&runs, &floors, rounds))
}

fn render(runs: &[RuntimeFigures], floors: &Floors, rounds: usize) -> String {
    let ms = |s: &Summary| format!("{:.1} / {:.1} ms", s.p50, s.p99);
    let load = |l: &LoadResult| {
        let s = Summary::of(&l.latencies_ms);
        format!("{} | {:.0}/s | {}", s.map(|s| format!("{:.2} / {:.2} ms", s.p50, s.p99)).unwrap_or_default(), l.throughput(), l.errors)
    };
    let mut out = String::new();
    let entry = if Path::new("/proc/sys/net/ipv4/vs").exists() {
        "Swarm's routing mesh"
    } else {
        "the entry relay (this kernel has no IPVS for the routing mesh)"
    };
    let _ = writeln!(out, "Through the public port, published by {entry}.\n");
    let _ = writeln!(out, "Cold start from zero, {rounds} rounds, p50 / p99:\n");
    let _ = writeln!(out, "| runtime | cold start | floor in the same run |\n|---|---:|---|");
    for r in runs {
        let floor = match r.runtime {
            "swarm" => format!("a bare service created until its task runs: {}", ms(&floors.service_running)),
            _ => format!("`docker unpause`: {}", ms(&floors.unpause)),
        };
        let _ = writeln!(out, "| {} | {} | {floor} |", r.runtime, ms(&r.cold));
    }
    let _ = writeln!(out, "\nWarm `hello`, closed loop (latency p50 / p99 | throughput | errors):\n");
    let _ = writeln!(out, "| path | connections | latency | throughput | errors |\n|---|---:|---:|---:|---:|");
    for (conns, l) in &floors.direct {
        let _ = writeln!(out, "| floor: the function's container alone, published by Docker on this host | {conns} | {} |", load(l));
    }
    for r in runs {
        for (conns, l) in &r.warm {
            let _ = writeln!(out, "| Roost, {} runtime | {conns} | {} |", r.runtime, load(l));
        }
    }
    out
}
