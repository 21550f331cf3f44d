//! One replica container: created with its labels, limits and hardening, its address on
//! the functions network, the warm-up of a spare, and the exits Docker reports.

use super::image::FUNCTION_DIR;
use super::logs::last_lines;
use super::{ContainerError, DockerConfig, DockerRuntime, MANAGED};
use crate::runtime::env::{function_env, runtime_env, PythonPath};
use crate::runtime::{with_last_output, Replica, RuntimeEvent, LAST_LINES};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, EventsOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;
use futures::StreamExt;
use roost_common::spec::FunctionSpec;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::warn;

/// How long a spare's warm-up may take to answer its readiness path.
pub(super) const WARM_UP_DEADLINE: Duration = Duration::from_secs(30);

impl DockerRuntime {
    pub(super) fn replica_of(&self, c: &bollard::models::ContainerSummary) -> Option<Replica> {
        let labels = c.labels.as_ref()?;
        let ip = c.network_settings.as_ref()?.networks.as_ref()?.get(&self.config.network)?.ip_address.clone()?;
        let label_id = labels.get("roost.replica")?;
        Some(Replica {
            // A spare taken by a start is the replica the orchestrator named.
            id: self.aliases.lock().unwrap().get(label_id).unwrap_or(label_id).clone(),
            function: labels.get("roost.function")?.clone(),
            version: labels.get("roost.version")?.clone(),
            spec_hash: labels.get("roost.spec-hash")?.clone(),
            address: SocketAddr::new(ip.parse().ok()?, self.config.port),
            handle: c.id.clone()?,
        })
    }
}

/// Creates (does not start) a replica container of a prepared function.
pub(super) async fn create(
    docker: &Docker,
    config: &DockerConfig,
    spec: &FunctionSpec,
    spec_hash: &str,
    image: &str,
    replica_id: &str,
) -> Result<String, ContainerError> {
    let function = function_env(spec, Path::new(FUNCTION_DIR)).into_iter().map(|(k, v)| format!("{k}={v}"));
    let runtime =
        runtime_env(&PythonPath::Image, config.port, [0, 0, 0, 0].into()).into_iter().map(|(k, v)| format!("{k}={}", v.to_string_lossy()));
    let env: Vec<String> = function.chain(runtime).collect();
    let labels = HashMap::from([
        (MANAGED.to_string(), "true".to_string()),
        ("roost.function".to_string(), spec.name.clone()),
        ("roost.version".to_string(), spec.version.clone()),
        ("roost.replica".to_string(), replica_id.to_string()),
        ("roost.spec-hash".to_string(), spec_hash.to_string()),
        ("roost.network".to_string(), config.network.clone()),
    ]);
    let host = HostConfig {
        memory: Some(spec.limits.memory as i64),
        memory_swap: Some(spec.limits.memory as i64),
        nano_cpus: Some((spec.limits.cpu * 1e9) as i64),
        pids_limit: Some(i64::from(spec.limits.pids)),
        readonly_rootfs: Some(true),
        tmpfs: Some(HashMap::from([("/tmp".to_string(), "rw,noexec,nosuid,size=16m".to_string())])),
        security_opt: Some(vec!["no-new-privileges".into()]),
        cap_drop: Some(vec!["ALL".into()]),
        network_mode: Some(config.network.clone()),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        env: Some(env),
        labels: Some(labels),
        user: Some("65534:65534".into()),
        host_config: Some(host),
        ..Default::default()
    };
    let name = format!("roost-{replica_id}");
    docker
        .create_container(Some(CreateContainerOptionsBuilder::default().name(&name).build()), body)
        .await
        .map(|c| c.id)
        .map_err(ContainerError::Create)
}

/// Removes a container by force (a spare, a leftover, or one that would not start); one
/// already gone is fine, any other failure is logged (the container stays behind, and a
/// later `list` removes it as a leftover).
pub(super) async fn remove(docker: &Docker, container: &str) {
    match docker.remove_container(container, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await {
        Ok(()) => {}
        Err(e) if super::is_gone(&e) => {}
        Err(e) => warn!(container, error = %e, "cannot remove the container; it stays behind"),
    }
}

/// Where a started container listens on the functions network.
pub(super) async fn address_of(docker: &Docker, config: &DockerConfig, container: &str) -> Result<SocketAddr, ContainerError> {
    let inspect = docker.inspect_container(container, None).await.map_err(ContainerError::Inspect)?;
    let ip = inspect
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| n.get(&config.network).and_then(|e| e.ip_address.clone()))
        .filter(|ip| !ip.is_empty())
        .ok_or_else(|| ContainerError::NoAddress { network: config.network.clone() })?;
    let ip = ip.parse().map_err(|source| ContainerError::BadAddress { address: ip, source })?;
    Ok(SocketAddr::new(ip, config.port))
}

/// Starts a created spare, waits until it answers its readiness path, and pauses it.
pub(super) async fn warm_up(
    docker: &Docker,
    config: &DockerConfig,
    spec: &FunctionSpec,
    container: &str,
) -> Result<SocketAddr, ContainerError> {
    docker.start_container(container, None).await.map_err(ContainerError::Start)?;
    let address = address_of(docker, config, container).await?;
    // A function that fails at import exits at once: the warm-up ends with it, so a cold
    // start waiting for this spare is not held for the whole deadline.
    let mut exited = docker.wait_container(container, None::<bollard::query_parameters::WaitContainerOptions>);
    tokio::select! {
        ready = crate::probe::until_ready(address, &spec.readiness_path, Duration::from_millis(10), WARM_UP_DEADLINE) => {
            ready.ok_or_else(|| ContainerError::NotReady { path: spec.readiness_path.clone(), deadline: WARM_UP_DEADLINE })?;
        }
        exit = exited.next() => {
            // A non-zero exit comes as an error carrying its code.
            let code = match exit {
                Some(Ok(r)) => r.status_code.to_string(),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code.to_string(),
                _ => "?".to_string(),
            };
            let output = last_lines(docker, container, LAST_LINES).await;
            return Err(ContainerError::ExitedWarmingUp(with_last_output(format!("exit code {code}"), output)));
        }
    }
    docker.pause_container(container).await.map_err(ContainerError::Pause)?;
    Ok(address)
}

/// Follows Docker's events and reports Roost containers that die, with their last lines
/// (read from the engine: a dead container's output is complete); the log store's copy
/// of them is `logs`'s, for a container whose output could not be read.
pub(super) async fn follow_exits(
    docker: Docker,
    tx: mpsc::UnboundedSender<RuntimeEvent>,
    aliases: std::sync::Arc<Mutex<HashMap<String, String>>>,
    logs: crate::logs::Logs,
) {
    loop {
        let filters = HashMap::from([("type", vec!["container"]), ("event", vec!["die"]), ("label", vec!["roost.managed=true"])]);
        let mut events = docker.events(Some(EventsOptionsBuilder::default().filters(&filters).build()));
        while let Some(ev) = events.next().await {
            let Ok(ev) = ev else { break };
            let (container, attrs) = ev.actor.map(|a| (a.id.unwrap_or_default(), a.attributes.unwrap_or_default())).unwrap_or_default();
            let (Some(id), Some(function)) = (attrs.get("roost.replica"), attrs.get("roost.function")) else { continue };
            let id = aliases.lock().unwrap().remove(id).unwrap_or_else(|| id.clone());
            let how = format!("container died (exit code {})", attrs.get("exitCode").map(String::as_str).unwrap_or("?"));
            let tail = match last_lines(&docker, &container, LAST_LINES).await {
                Some(tail) => Some(tail),
                None => logs.tail_of(function, &id, LAST_LINES),
            };
            let reason = with_last_output(how, tail);
            if tx.send(RuntimeEvent::Exited { replica_id: id.clone(), function: function.clone(), reason }).is_err() {
                return;
            }
        }
        warn!("Docker event stream ended; following again");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
