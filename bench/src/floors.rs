//! The machine's own floor, measured in the same run as Roost: a loopback HTTP request
//! with nothing in between, a bare nginx and a bare Envoy in front of the same replica,
//! the Python interpreter, the function runtime started by hand (fresh, and as a spare
//! told its function), and `docker start` (and `unpause`) of a prepared container
//! through the API.

use crate::client::{self, LoadResult};
use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::{ClientVersion, Docker};
use roost_orchestrator::runtime::process::{function_env, spare_assignment, Launcher, ProcessConfig};
use roost_testkit::process::{free_port, Guard};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Closed-loop requests to an in-process Rust HTTP server (no proxy, no Python).
pub async fn loopback_http(concurrency: usize, duration: Duration) -> LoadResult {
    let up = roost_testkit::http::Upstream::start("floor").await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], up.port));
    // A warm-up (not a Result): its figures are not kept.
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

/// Starts the function runtime exactly as the orchestrator's process runtime does.
pub fn launcher(python: &str, runtime_dir: &Path) -> Launcher {
    Launcher::new(ProcessConfig {
        definitions_dir: runtime_dir.to_path_buf(),
        runtime_dir: runtime_dir.to_path_buf(),
        python: PathBuf::from(python),
        state_dir: std::env::temp_dir(),
        bind_ip: [127, 0, 0, 1].into(),
        spares: roost_orchestrator::runtime::process::SpareCount::Fixed(0),
        spare_memory: None,
    })
}

/// The `hello` example's folder and the environment a replica of it gets.
fn hello(runtime_dir: &Path) -> anyhow::Result<(PathBuf, Vec<(String, String)>)> {
    let yaml = "usable-functions:\n  hello:\n    version: \"1\"\n    configuration: {programing_language: python, base_function_file_name: hello.py, function_folder: hello}\n";
    let spec = roost_common::spec::parse(yaml)?.remove("hello").expect("declared above");
    let dir = runtime_dir.join("python/functions/hello");
    let env = function_env(&spec, &dir);
    Ok((dir, env))
}

fn null() -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).open("/dev/null")
}

/// Reads `ROOST_READY <port>` from a runtime's stdout, then `GET /` must answer 200.
async fn first_answer(child: &mut tokio::process::Child) -> anyhow::Result<()> {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout piped")).read_line(&mut line).await?;
    let port: u16 = line
        .trim()
        .strip_prefix("ROOST_READY ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("the runtime printed {line:?} instead of ROOST_READY <port>"))?;
    let r = client::get_once(SocketAddr::from(([127, 0, 0, 1], port)), "/").await?;
    anyhow::ensure!(r.head.status == 200, "the runtime answered {}", r.head.status);
    Ok(())
}

/// The function runtime started by hand as the process runtime starts a fresh replica
/// (`python -S -m roost_runtime python`, the `hello` function), from spawn until its
/// first answer to `GET /`: it announces `ROOST_READY <port>` on stdout, so nothing
/// polls.
pub async fn runtime_bare(launcher: &Launcher, runtime_dir: &Path, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let (dir, env) = hello(runtime_dir)?;
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let mut cmd = launcher.command("python", 0, null()?, &env)?;
        let mut child = cmd.current_dir(&dir).stdin(Stdio::null()).stdout(Stdio::piped()).kill_on_drop(true).spawn()?;
        let answered = first_answer(&mut child).await;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        // Fails only if it has exited already.
        let _ = child.kill().await;
        answered?;
    }
    Ok(out)
}

/// A spare runtime (`python -S -m roost_runtime spare`, started and given time to
/// import) told its function on stdin, as the process runtime's cold start does, until
/// its first answer to `GET /`.
pub async fn spare_bare(launcher: &Launcher, runtime_dir: &Path, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let (_, env) = hello(runtime_dir)?;
    let line = spare_assignment("python", &env);
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let port = free_port();
        let mut cmd = launcher.command("spare", port, null()?, &[])?;
        let mut child = cmd.current_dir(std::env::temp_dir()).stdin(Stdio::piped()).stdout(Stdio::piped()).kill_on_drop(true).spawn()?;
        // A spare in the pool has long finished importing when a cold start takes it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        let mut stdin = child.stdin.take().expect("stdin piped");
        stdin.write_all(&line).await?;
        drop(stdin);
        let answered = first_answer(&mut child).await;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        // Fails only if it has exited already.
        let _ = child.kill().await;
        answered?;
    }
    Ok(out)
}

/// What any nginx and Envoy cost on this machine: a bare Envoy (one static route and
/// cluster, no xDS, as many workers as Roost's) and a bare nginx in front of it (the
/// gate's proxy settings and worker count, no Lua), before one replica.
pub struct ProxyChain {
    envoy: Guard,
    nginx: Guard,
    /// The bare Envoy's listener.
    pub envoy_addr: SocketAddr,
    /// The bare nginx.
    pub nginx_addr: SocketAddr,
    dir: PathBuf,
}

/// nginx as the gate's run.sh finds it.
fn nginx_binary() -> PathBuf {
    if let Ok(p) = std::env::var("ROOST_GATE_NGINX") {
        return PathBuf::from(p);
    }
    let on_path =
        |name: &str| std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()));
    on_path("openresty").or_else(|| on_path("nginx")).unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

impl ProxyChain {
    /// Starts both before `upstream`, routing `path` to its `/` as Roost routes a
    /// function (files under `dir`), and waits until a request through both is answered.
    pub async fn start(envoy_bin: &Path, upstream: SocketAddr, path: &str, dir: &Path) -> anyhow::Result<ProxyChain> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let (envoy_port, admin_port, nginx_port) = (free_port(), free_port(), free_port());
        let envoy_conf = dir.join("envoy.yaml");
        std::fs::write(&envoy_conf, format!(
            "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}}}\n\
             static_resources:\n  listeners:\n  - name: bare\n    address: {{socket_address: {{address: 127.0.0.1, port_value: {envoy_port}}}}}\n    filter_chains:\n    - filters:\n      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          stat_prefix: bare\n          route_config: {{virtual_hosts: [{{name: all, domains: [\"*\"], routes: [{{match: {{path: \"{path}\"}}, route: {{cluster: replica, prefix_rewrite: \"/\"}}}}]}}]}}\n          http_filters: [{{name: envoy.filters.http.router, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]\n  clusters:\n  - name: replica\n    type: STATIC\n    load_assignment: {{cluster_name: replica, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: \"{}\", port_value: {}}}}}}}}}]}}]}}\n",
            upstream.ip(), upstream.port()
        ))?;
        let nginx_conf = dir.join("nginx.conf");
        std::fs::write(&nginx_conf, format!(
            "worker_processes auto;\ndaemon off;\nerror_log stderr warn;\npid nginx.pid;\nevents {{ worker_connections 8192; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path body_temp;\n  proxy_temp_path proxy_temp;\n  fastcgi_temp_path fastcgi_temp;\n  uwsgi_temp_path uwsgi_temp;\n  scgi_temp_path scgi_temp;\n\
               upstream envoy {{ server 127.0.0.1:{envoy_port} max_fails=0; keepalive 128; keepalive_timeout 30s; }}\n\
               server {{\n    listen 127.0.0.1:{nginx_port} reuseport;\n    proxy_http_version 1.1;\n    proxy_set_header Connection \"\";\n    proxy_set_header Host $http_host;\n    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n    proxy_set_header X-Forwarded-Proto $scheme;\n    proxy_buffering off;\n    location / {{ proxy_pass http://envoy$request_uri; }}\n  }}\n}}\n"
        ))?;
        let log = |name: &str| std::fs::File::create(dir.join("logs").join(name));
        let envoy = Guard::try_spawn(
            "the bare Envoy",
            Command::new(envoy_bin)
                .arg("-c")
                .arg(&envoy_conf)
                .args(["--disable-hot-restart", "--concurrency", "2"])
                .stdout(Stdio::from(log("envoy.log")?))
                .stderr(Stdio::from(log("envoy.log")?)),
        )?;
        let nginx = Guard::try_spawn(
            "the bare nginx",
            Command::new(nginx_binary())
                .arg("-p")
                .arg(format!("{}/", dir.display()))
                .arg("-c")
                .arg(&nginx_conf)
                .args(["-e", "stderr"])
                .stdout(Stdio::from(log("nginx.log")?))
                .stderr(Stdio::from(log("nginx.log")?)),
        )?;
        let chain = ProxyChain {
            envoy,
            nginx,
            envoy_addr: SocketAddr::from(([127, 0, 0, 1], envoy_port)),
            nginx_addr: SocketAddr::from(([127, 0, 0, 1], nginx_port)),
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client::get_once(chain.nginx_addr, path).await {
                if r.head.status == 200 {
                    return Ok(chain);
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the bare nginx and Envoy did not answer within 30 s; see {}",
                dir.join("logs").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops both (SIGTERM: nginx takes its workers with it) and removes their files.
    pub async fn stop(self) {
        let ProxyChain { envoy, nginx, dir, .. } = self;
        tokio::task::spawn_blocking(move || drop((nginx, envoy))).await.expect("stopping the proxy floor");
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("roost-bench: cannot remove the proxy floor's folder {}: {e}", dir.display());
        }
    }
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
        let req =
            NetworkCreateRequest { name: FLOOR_NETWORK.into(), driver: Some("bridge".into()), internal: Some(true), ..Default::default() };
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
    if let Err(e) = docker.remove_network(FLOOR_NETWORK).await {
        eprintln!("roost-bench: cannot remove the floor's network {FLOOR_NETWORK}: {e}");
    }
    result.map(|_| floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    #[ignore = "needs nginx and envoy: full tier (scripts/test.sh)"]
    async fn the_proxy_floor_routes_through_a_bare_nginx_and_a_bare_envoy() {
        let home = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let envoy = roost_cli::up::find_envoy(home).expect("Envoy installed (scripts/install-deps.sh)");
        let up = roost_testkit::http::Upstream::start("replica").await;
        let dir = std::env::temp_dir().join(format!("roost-bench-chain-{}", std::process::id()));
        let chain = ProxyChain::start(&envoy, SocketAddr::from(([127, 0, 0, 1], up.port)), "/warm", &dir).await.unwrap();
        // Both paths reach the replica with the function's prefix taken off, as Roost's do.
        for addr in [chain.nginx_addr, chain.envoy_addr] {
            let r = client::get_once(addr, "/warm").await.unwrap();
            assert_eq!((r.head.status, r.body.as_slice()), (200, br#"{"upstream":"replica","path":"/"}"#.as_slice()));
        }
        let nginx = chain.nginx_addr;
        chain.stop().await;
        assert!(client::get_once(nginx, "/warm").await.is_err(), "nginx stopped");
        assert!(!dir.exists(), "its files removed");
        up.stop();
    }
}
