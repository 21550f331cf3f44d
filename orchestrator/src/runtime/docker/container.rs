//! One replica container: created with its labels, limits and hardening, its address on
//! the functions network, the warm-up of a spare, and the exits Docker reports (and the
//! removal of the dead containers).

use super::image::FUNCTION_DIR;
use super::logs::{last_lines, Followers, TAIL_WAIT};
use super::{ContainerError, DockerConfig, DockerRuntime, MANAGED};
use crate::runtime::env::{function_env, runtime_env, PythonPath};
use crate::runtime::{with_last_output, Replica, RuntimeEvent, LAST_LINES};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, EventsOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;
use futures::StreamExt;
use roost_common::spec::FunctionSpec;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, warn};

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

/// A replica's environment in its image (`KEY=value`): the function's, then the
/// runtime's, listening on every address at `port`. The Swarm runtime's tasks get the same.
pub(crate) fn replica_env(spec: &FunctionSpec, port: u16) -> Vec<String> {
    let function = function_env(spec, Path::new(FUNCTION_DIR)).into_iter().map(|(k, v)| format!("{k}={v}"));
    let runtime =
        runtime_env(&PythonPath::Image, port, [0, 0, 0, 0].into()).into_iter().map(|(k, v)| format!("{k}={}", v.to_string_lossy()));
    function.chain(runtime).collect()
}

/// The labels that make a container (or a Swarm service) a replica of this runtime on
/// `network`: what `list` adopts after a restart and the exit follower recognises.
pub(crate) fn replica_labels(spec: &FunctionSpec, spec_hash: &str, replica_id: &str, network: &str) -> HashMap<String, String> {
    HashMap::from([
        (MANAGED.to_string(), "true".to_string()),
        ("roost.function".to_string(), spec.name.clone()),
        ("roost.version".to_string(), spec.version.clone()),
        ("roost.replica".to_string(), replica_id.to_string()),
        ("roost.spec-hash".to_string(), spec_hash.to_string()),
        ("roost.network".to_string(), network.to_string()),
    ])
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
    let env = replica_env(spec, config.port);
    let labels = replica_labels(spec, spec_hash, replica_id, &config.network);
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

/// What becomes of a container Docker reports dead, decided from the event's attributes
/// (the container's labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AfterDeath {
    /// Not a replica container of this runtime's network (another Roost's on the same
    /// engine, or not a replica): left alone.
    Ignore,
    /// Reported as the exit of the replica labelled `label` (the orchestrator's id for
    /// it is found through the aliases), with its last lines.
    Report {
        /// Its `roost.replica` label.
        label: String,
        /// Its function.
        function: String,
        /// Removed once its output is read. Every dead replica container is: whether the
        /// orchestrator stops it (a ready replica that crashed) or not (one that exited
        /// while it started, before it was ready), a dead one is not restarted, and `roost
        /// up` ending must not leave it behind. Except a spare this runtime keeps (the
        /// spares' own code reads a dead spare's last lines, the cold start that claims it
        /// fails with them, and removes it) and a container the runtime's `stop` is
        /// stopping (it removes it itself, and returns once it is gone).
        remove: bool,
    },
}

/// What becomes of a dead container with `labels`, for the runtime on `network` whose
/// kept spares are labelled `own_spares`; `stopping`: the runtime's `stop` is stopping it.
pub(super) fn after_death(labels: &HashMap<String, String>, network: &str, own_spares: &HashSet<String>, stopping: bool) -> AfterDeath {
    let label = |key: &str| labels.get(key).map(String::as_str);
    if label(MANAGED) != Some("true") || label("roost.network") != Some(network) {
        return AfterDeath::Ignore;
    }
    match (label("roost.replica"), label("roost.function")) {
        (Some(id), Some(function)) => {
            let remove = !own_spares.contains(id) && !stopping;
            AfterDeath::Report { label: id.to_string(), function: function.to_string(), remove }
        }
        _ => AfterDeath::Ignore,
    }
}

/// A time (Unix nanoseconds) as the engine's `since` takes it: seconds with a fraction.
fn since_text(nanos: i64) -> String {
    format!("{}.{:09}", nanos.div_euclid(1_000_000_000), nanos.rem_euclid(1_000_000_000))
}

/// What the follower of container exits reads and changes of the runtime.
pub(super) struct Exits {
    pub(super) docker: Docker,
    /// The runtime's functions network: only its containers are this runtime's.
    pub(super) network: String,
    pub(super) tx: mpsc::UnboundedSender<RuntimeEvent>,
    pub(super) aliases: Arc<Mutex<HashMap<String, String>>>,
    pub(super) own_spares: Arc<Mutex<HashSet<String>>>,
    pub(super) stopping: Arc<Mutex<HashSet<String>>>,
    pub(super) following: Followers,
    pub(super) logs: crate::logs::Logs,
    /// Cancelled by `close`.
    pub(super) closing: tokio_util::sync::CancellationToken,
}

/// Follows Docker's events and reports the replica containers of this runtime that die,
/// with their last lines (read from the engine: a dead container's output is complete;
/// the log store's copy of them is `logs`'s, for a container whose output could not be
/// read), then removes them (see [`AfterDeath`]) once their followers have their whole
/// output. Ends when `closing` is cancelled, between two deaths: a death being handled
/// is handled to its end (its container removed), so `close` waits for it.
///
/// A lost event stream is followed again from the last event seen, so a death meanwhile
/// is not missed (one seen twice is reported twice: an exit of a replica already gone is
/// ignored, and removing a removed container is fine).
pub(super) async fn follow_exits(exits: Exits) {
    let Exits { docker, network, tx, aliases, own_spares, stopping, following, logs, closing } = exits;
    let mine = format!("roost.network={network}");
    // From now; after a lost stream, from just after the last death seen.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut since = since_text(i64::try_from(now.as_nanos()).unwrap_or(i64::MAX));
    loop {
        let filters =
            HashMap::from([("type", vec!["container"]), ("event", vec!["die"]), ("label", vec!["roost.managed=true", mine.as_str()])]);
        let mut events = docker.events(Some(EventsOptionsBuilder::default().filters(&filters).since(&since).build()));
        loop {
            let ev = tokio::select! {
                biased;
                _ = closing.cancelled() => return,
                ev = events.next() => ev,
            };
            let Some(Ok(ev)) = ev else { break };
            if let Some(nanos) = ev.time_nano {
                // A nanosecond later: not this one again.
                since = since_text(nanos.saturating_add(1));
            }
            let (container, attrs) = ev.actor.map(|a| (a.id.unwrap_or_default(), a.attributes.unwrap_or_default())).unwrap_or_default();
            let stopped_by_us = stopping.lock().unwrap().contains(&container);
            let after = after_death(&attrs, &network, &own_spares.lock().unwrap(), stopped_by_us);
            let AfterDeath::Report { label, function, remove: removed } = after else { continue };
            let id = aliases.lock().unwrap().remove(&label).unwrap_or(label);
            let how = format!("container died (exit code {})", attrs.get("exitCode").map(String::as_str).unwrap_or("?"));
            let tail = match last_lines(&docker, &container, LAST_LINES).await {
                Some(tail) => Some(tail),
                None => logs.tail_of(&function, &id, LAST_LINES),
            };
            let reason = with_last_output(how, tail);
            let listened = tx.send(RuntimeEvent::Exited { replica_id: id.clone(), function, reason }).is_ok();
            if removed {
                if !following.ended(&container, TAIL_WAIT).await {
                    debug!(container, replica = %id, "the replica's output is still being followed; removing it anyway");
                }
                remove(&docker, &container).await;
            }
            if !listened {
                return;
            }
        }
        warn!("Docker event stream ended; following again");
        tokio::select! {
            _ = closing.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// A die event's attributes for a replica container of `network` labelled `replica`.
    fn died(replica: &str, network: &str) -> HashMap<String, String> {
        labels(&[
            (MANAGED, "true"),
            ("roost.function", "f"),
            ("roost.replica", replica),
            ("roost.network", network),
            ("exitCode", "1"),
            ("name", "roost-x"),
        ])
    }

    fn reported(label: &str, remove: bool) -> AfterDeath {
        AfterDeath::Report { label: label.to_string(), function: "f".to_string(), remove }
    }

    #[test]
    fn a_dead_replica_is_reported_and_removed() {
        // Whatever the orchestrator does next: a replica that exits while it starts (its
        // import fails) is never stopped by it, and would stay behind.
        assert_eq!(after_death(&died("f-7-1", "net"), "net", &HashSet::new(), false), reported("f-7-1", true));
        // A spare handed out to a replica is no longer one this runtime keeps.
        let kept = HashSet::from(["f-spare-2".to_string()]);
        assert_eq!(after_death(&died("f-spare-1", "net"), "net", &kept, false), reported("f-spare-1", true));
    }

    #[test]
    fn a_kept_spare_is_reported_but_left_to_the_spares() {
        // Its warm-up reads its last lines, and the cold start that claims it fails with
        // them and removes it.
        let kept = HashSet::from(["f-spare-1".to_string()]);
        assert_eq!(after_death(&died("f-spare-1", "net"), "net", &kept, false), reported("f-spare-1", false));
    }

    #[test]
    fn a_replica_being_stopped_is_reported_but_left_to_its_stop() {
        // `stop` removes it itself and returns once it is gone (a removal by the exit
        // follower meanwhile would make its own answer "already being removed").
        assert_eq!(after_death(&died("f-7-1", "net"), "net", &HashSet::new(), true), reported("f-7-1", false));
    }

    #[test]
    fn other_containers_are_left_alone() {
        let none = HashSet::new();
        assert_eq!(after_death(&died("f-7-1", "other-net"), "net", &none, false), AfterDeath::Ignore, "another Roost's");
        let mut unmanaged = died("f-7-1", "net");
        unmanaged.remove(MANAGED);
        assert_eq!(after_death(&unmanaged, "net", &none, false), AfterDeath::Ignore, "not Roost's");
        unmanaged.insert(MANAGED.to_string(), "false".to_string());
        assert_eq!(after_death(&unmanaged, "net", &none, false), AfterDeath::Ignore, "not Roost's");
        for missing in ["roost.replica", "roost.function", "roost.network"] {
            let mut d = died("f-7-1", "net");
            d.remove(missing);
            assert_eq!(after_death(&d, "net", &none, false), AfterDeath::Ignore, "without {missing}");
        }
    }

    #[test]
    fn since_is_seconds_with_nine_decimals() {
        assert_eq!(since_text(1_700_000_000_123_456_789), "1700000000.123456789");
        assert_eq!(since_text(1_700_000_000_000_000_001), "1700000000.000000001");
        assert_eq!(since_text(0), "0.000000000");
    }
}
