//! The Swarm service of one replica (pure): its name, labels, limits, hardening, network
//! and placement, from the function's definition.
//!
//! One service per replica, one task, never restarted by Swarm: the orchestrator decides
//! how many replicas run, which one drains and when, and replaces a dead one itself (with
//! its back-off and refusal); Swarm only places and runs. With one service per function
//! scaled by its replica count, Swarm would choose which task a scale-down removes, and
//! the two-phase drain of a chosen replica would be impossible
//! (docs/design/swarm-research.md, section 1).

use crate::runtime::docker::container::{replica_env, replica_labels};
use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, Limit, Mount, MountTmpfsOptions, MountType, NetworkAttachmentConfig, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec, TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum,
};
use roost_common::spec::FunctionSpec;
use std::time::Duration;

/// The label of a hot spare's service (not yet a replica: a restarted orchestrator
/// removes it instead of adopting it).
pub const SPARE_LABEL: &str = "roost.spare";

/// Longest service name Swarm accepts.
const MAX_NAME: usize = 63;

/// Size of a replica's writable `/tmp` (everything else is read-only), as the Docker
/// runtime's.
const TMP_BYTES: i64 = 16 * 1024 * 1024;

/// What a replica's service is made from besides its function.
#[derive(Debug, Clone)]
pub struct ServiceInput<'a> {
    /// The replica's id (the orchestrator's).
    pub replica_id: &'a str,
    /// The definition's hash.
    pub spec_hash: &'a str,
    /// The function's image, by ID (`sha256:...`): a tag makes Swarm try a registry pull
    /// at every task start.
    pub image: &'a str,
    /// The overlay network the replica joins, and nothing else.
    pub network: &'a str,
    /// The port the runtime listens on in the task.
    pub port: u16,
    /// Time between SIGTERM and SIGKILL when the service is removed.
    pub stop_grace: Duration,
    /// Placement constraints (`node.labels.roost.functions==true`); none: any node.
    pub constraints: &'a [String],
    /// A hot spare's service (labelled [`SPARE_LABEL`]).
    pub spare: bool,
}

/// The service's name: `roost-<replica id>`, or `roost-<hash of it>` when that is longer
/// than Swarm allows. The function and the replica are in its labels either way.
pub fn service_name(replica_id: &str) -> String {
    let name = format!("roost-{replica_id}");
    if name.len() <= MAX_NAME && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
        return name;
    }
    let digest = roost_common::hash::fnv1a(replica_id.as_bytes());
    format!("roost-r-{digest:016x}")
}

/// The service of one replica of `spec`.
pub fn service_spec(spec: &FunctionSpec, input: &ServiceInput<'_>) -> ServiceSpec {
    let labels = replica_labels(spec, input.spec_hash, input.replica_id, input.network);
    let mut service_labels = labels.clone();
    if input.spare {
        service_labels.insert(SPARE_LABEL.to_string(), "true".to_string());
    }
    let container = TaskSpecContainerSpec {
        image: Some(input.image.to_string()),
        labels: Some(labels.clone()),
        env: Some(replica_env(spec, input.port)),
        user: Some("65534:65534".into()),
        read_only: Some(true),
        mounts: Some(vec![Mount {
            target: Some("/tmp".into()),
            typ: Some(MountType::TMPFS),
            tmpfs_options: Some(MountTmpfsOptions { size_bytes: Some(TMP_BYTES), ..Default::default() }),
            ..Default::default()
        }]),
        capability_drop: Some(vec!["ALL".into()]),
        stop_grace_period: Some(i64::try_from(input.stop_grace.as_nanos()).unwrap_or(i64::MAX)),
        ..Default::default()
    };
    let limits = Limit {
        memory_bytes: Some(spec.limits.memory as i64),
        nano_cpus: Some((spec.limits.cpu * 1e9) as i64),
        pids: Some(i64::from(spec.limits.pids)),
    };
    let task = TaskSpec {
        container_spec: Some(container),
        resources: Some(TaskSpecResources { limits: Some(limits), ..Default::default() }),
        restart_policy: Some(TaskSpecRestartPolicy { condition: Some(TaskSpecRestartPolicyConditionEnum::NONE), ..Default::default() }),
        placement: (!input.constraints.is_empty())
            .then(|| TaskSpecPlacement { constraints: Some(input.constraints.to_vec()), ..Default::default() }),
        networks: Some(vec![NetworkAttachmentConfig { target: Some(input.network.to_string()), ..Default::default() }]),
        ..Default::default()
    };
    ServiceSpec {
        name: Some(service_name(input.replica_id)),
        labels: Some(service_labels),
        task_template: Some(task),
        mode: Some(ServiceSpecMode { replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }), ..Default::default() }),
        // One overlay address per replica, no virtual IP nor IPVS entry: Envoy reaches
        // each task by its own address.
        endpoint_spec: Some(EndpointSpec { mode: Some(EndpointSpecModeEnum::DNSRR), ..Default::default() }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FunctionSpec {
        let yaml = "usable-functions:\n  hello:\n    version: 1\n    configuration: {base_function_file_name: hello.py, function_folder: hello}\n    limits: {memory: 64m, cpu: 0.5, pids: 32}\n";
        roost_common::spec::parse(yaml).unwrap().remove("hello").unwrap()
    }

    fn input<'a>(constraints: &'a [String]) -> ServiceInput<'a> {
        ServiceInput {
            replica_id: "hello-abc-1",
            spec_hash: "h1",
            image: "sha256:0123",
            network: "roost-functions",
            port: 8080,
            stop_grace: Duration::from_secs(5),
            constraints,
            spare: false,
        }
    }

    #[test]
    fn a_replica_is_one_hardened_task_never_restarted() {
        let s = service_spec(&spec(), &input(&[]));
        assert_eq!(s.name.as_deref(), Some("roost-hello-abc-1"));
        let labels = s.labels.as_ref().unwrap();
        assert_eq!(labels["roost.managed"], "true");
        assert_eq!(labels["roost.function"], "hello");
        assert_eq!(labels["roost.replica"], "hello-abc-1");
        assert_eq!(labels["roost.spec-hash"], "h1");
        assert_eq!(labels["roost.network"], "roost-functions");
        assert_eq!(s.mode.as_ref().unwrap().replicated.as_ref().unwrap().replicas, Some(1));
        assert_eq!(s.endpoint_spec.as_ref().unwrap().mode, Some(EndpointSpecModeEnum::DNSRR));
        let task = s.task_template.as_ref().unwrap();
        assert_eq!(task.restart_policy.as_ref().unwrap().condition, Some(TaskSpecRestartPolicyConditionEnum::NONE));
        assert_eq!(task.networks.as_ref().unwrap()[0].target.as_deref(), Some("roost-functions"));
        assert!(task.placement.is_none());
        let limits = task.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits.memory_bytes, Some(64 * 1024 * 1024));
        assert_eq!(limits.nano_cpus, Some(500_000_000));
        assert_eq!(limits.pids, Some(32));
        let c = task.container_spec.as_ref().unwrap();
        assert_eq!(c.image.as_deref(), Some("sha256:0123"));
        assert_eq!(c.user.as_deref(), Some("65534:65534"));
        assert_eq!(c.read_only, Some(true));
        assert_eq!(c.capability_drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(c.stop_grace_period, Some(5_000_000_000));
        let tmp = &c.mounts.as_ref().unwrap()[0];
        assert_eq!((tmp.target.as_deref(), tmp.typ), (Some("/tmp"), Some(MountType::TMPFS)));
        assert!(c.env.as_ref().unwrap().iter().any(|e| e.starts_with("ROOST_")), "the runtime's environment: {:?}", c.env);
        assert_eq!(c.labels, s.labels, "the containers carry the labels too");
    }

    #[test]
    fn a_spare_is_labelled_on_its_service_only() {
        let s = service_spec(&spec(), &ServiceInput { spare: true, ..input(&[]) });
        assert_eq!(s.labels.as_ref().unwrap()[SPARE_LABEL], "true");
        let container = s.task_template.unwrap().container_spec.unwrap().labels.unwrap();
        assert!(!container.contains_key(SPARE_LABEL), "relabelled on the service when claimed; the task is not restarted");
    }

    #[test]
    fn constraints_place_the_task() {
        let constraints = vec!["node.labels.roost.functions==true".to_string()];
        let s = service_spec(&spec(), &input(&constraints));
        let placement = s.task_template.unwrap().placement.unwrap();
        assert_eq!(placement.constraints, Some(constraints));
    }

    #[test]
    fn names_fit_swarm() {
        assert_eq!(service_name("hello-abc-1"), "roost-hello-abc-1");
        let long = format!("{}-abc-1", "f".repeat(60));
        let name = service_name(&long);
        assert!(name.len() <= MAX_NAME && name.starts_with("roost-r-"), "{name}");
        assert_eq!(name, service_name(&long), "stable");
        assert_ne!(name, service_name(&format!("{}-abc-2", "f".repeat(60))));
    }
}
