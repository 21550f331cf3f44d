//! The machine's own floor, measured in the same run as Roost: a loopback HTTP request
//! with nothing in between, the Python interpreter and the function runtime started by
//! hand, and `docker start` (and `unpause`) of a prepared container through the API.

use crate::client::{self, LoadResult};
use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::{ClientVersion, Docker};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Closed-loop requests to an in-process Rust HTTP server (no proxy, no Python).
pub async fn loopback_http(concurrency: usize, duration: Duration) -> LoadResult {
    let up = roost_testkit::http::Upstream::start("floor").await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], up.port));
    let _ = client::closed_loop(addr, "/", concurrency, Duration::from_millis(200)).await;
    let r = client::closed_loop(addr, "/", concurrency, duration).await;
    up.stop();
    r
}

/// `python <flags> -c pass`, spawn to exit, `rounds` times (ms).
pub fn python_bare(python: &str, flags: &[&str], rounds: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let status = Command::new(python).args(flags).args(["-c", "pass"]).status()?;
        anyhow::ensure!(status.success(), "{python} -c pass failed: {status}");
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

/// The function runtime started by hand as the process runtime starts it (`python -S -m
/// roost_runtime python`, the `hello` function), from spawn until its first answer to
/// `GET /`: it announces `ROOST_READY <port>` on stdout, so nothing polls.
pub async fn runtime_bare(python: &str, runtime_dir: &Path, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let dir = runtime_dir.join("python/functions/hello");
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let mut child = Command::new(python)
            .args(["-S", "-m", "roost_runtime", "python"])
            .current_dir(&dir)
            .env("PYTHONPATH", runtime_dir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PORT", "0")
            .env("ROOST_BIND", "127.0.0.1")
            .env("ROOST_FUNCTION_NAME", "hello")
            .env("ROOST_FUNCTION_DIR", &dir)
            .env("ROOST_FUNCTION_FILE", "hello.py")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await??;
        let port: Option<u16> = line.trim().strip_prefix("ROOST_READY ").and_then(|p| p.parse().ok());
        let answered = match port {
            Some(port) => client::get_once(std::net::SocketAddr::from(([127, 0, 0, 1], port)), "/").await.map(|r| r.head.status == 200).unwrap_or(false),
            None => false,
        };
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        let _ = child.kill();
        let _ = child.wait();
        anyhow::ensure!(answered, "the runtime did not start: it printed {line:?} instead of ROOST_READY <port>");
    }
    Ok(out)
}

/// Docker's own cost, measured through the API as the orchestrator calls it.
#[derive(Debug, Clone)]
pub struct DockerFloor {
    /// `start` of a created container (same hardening and network kind as replicas), ms.
    pub start_ms: Vec<f64>,
    /// `unpause` of a paused running container, ms.
    pub unpause_ms: Vec<f64>,
}

const FLOOR_NETWORK: &str = "roost-bench-floor";

/// Measures `start` and `unpause` `rounds` times each on `image` (which must have
/// `sleep`), on an internal network of its own that is removed afterwards.
pub async fn docker(socket: &str, image: &str, rounds: usize) -> anyhow::Result<DockerFloor> {
    let docker = Docker::connect_with_unix(socket, 60, &ClientVersion { major_version: 1, minor_version: 41 })?;
    docker.ping().await?;
    if docker.inspect_network(FLOOR_NETWORK, None).await.is_err() {
        let req = NetworkCreateRequest { name: FLOOR_NETWORK.into(), driver: Some("bridge".into()), internal: Some(true), ..Default::default() };
        docker.create_network(req).await?;
    }
    let body = || ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["sleep".into(), "600".into()]),
        user: Some("65534:65534".into()),
        labels: Some(HashMap::from([("roost.bench".to_string(), "floor".to_string())])),
        host_config: Some(HostConfig {
            memory: Some(256 << 20),
            nano_cpus: Some(1_000_000_000),
            pids_limit: Some(128),
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            network_mode: Some(FLOOR_NETWORK.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let remove = RemoveContainerOptionsBuilder::default().force(true).build();
    let mut floor = DockerFloor { start_ms: Vec::new(), unpause_ms: Vec::new() };
    let result: anyhow::Result<()> = async {
        for i in 0..rounds {
            let name = format!("roost-bench-floor-{}-{i}", std::process::id());
            let id = docker.create_container(Some(CreateContainerOptionsBuilder::default().name(&name).build()), body()).await?.id;
            let t = Instant::now();
            let started = docker.start_container(&id, None).await;
            floor.start_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            let paused = async {
                started?;
                docker.pause_container(&id).await?;
                let t = Instant::now();
                docker.unpause_container(&id).await?;
                floor.unpause_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                Ok::<_, bollard::errors::Error>(())
            }
            .await;
            docker.remove_container(&id, Some(remove.clone())).await?;
            paused?;
        }
        Ok(())
    }
    .await;
    let _ = docker.remove_network(FLOOR_NETWORK).await;
    result.map(|_| floor)
}
