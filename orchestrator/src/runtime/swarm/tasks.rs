//! Swarm tasks as the engine reports them (`GET /tasks`, read here through the Docker
//! socket with reqwest), and what the runtime makes of one: where it listens, and
//! whether it is starting, running or ended.
//!
//! Why not bollard: bollard 0.21's `Task` has no `NetworksAttachments` (moby's API
//! description never declared it, so the generated type drops it), and that is the only
//! place the engine gives a task's overlay address cluster-wide. The network's verbose
//! inspect has addresses too, but only this node's view and only for started containers.
//! So this one call is made by hand, into a struct of our own with just what is read.

use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// A task, with the fields the runtime reads.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct TaskView {
    /// The task's id.
    #[serde(rename = "ID", default)]
    pub id: String,
    /// Its service's id.
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    /// Raft version: a newer task of a service has a higher index.
    #[serde(default)]
    pub version: TaskVersion,
    /// What Swarm wants it to be (`running`, `shutdown`, ...).
    #[serde(default)]
    pub desired_state: String,
    /// What it is.
    #[serde(default)]
    pub status: TaskStatus,
    /// Its addresses on each network it is attached to.
    #[serde(default)]
    pub networks_attachments: Vec<Attachment>,
}

/// A task's raft version.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct TaskVersion {
    /// The index.
    #[serde(default)]
    pub index: u64,
}

/// A task's state.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct TaskStatus {
    /// `new`, `pending`, ..., `running`, `complete`, `failed`, ...
    #[serde(default)]
    pub state: String,
    /// Swarm's short message (`started`, `finished`, `no suitable node ...`).
    #[serde(default)]
    pub message: String,
    /// The error, when it failed or cannot be placed.
    #[serde(default)]
    pub err: String,
    /// Its container, once it has one.
    #[serde(default)]
    pub container_status: Option<ContainerStatus>,
}

/// A task's container.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerStatus {
    /// The container's exit code, once it exited.
    #[serde(default)]
    pub exit_code: Option<i64>,
}

/// A task's attachment to a network.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Attachment {
    /// The network.
    #[serde(default)]
    pub network: AttachedNetwork,
    /// Its addresses there, with their prefix length (`10.0.1.3/24`).
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// The network of an attachment.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct AttachedNetwork {
    /// Its id.
    #[serde(rename = "ID", default)]
    pub id: String,
    /// Its spec (the name).
    #[serde(default)]
    pub spec: NetworkSpecName,
}

/// The name in a network's spec.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSpecName {
    /// The network's name.
    #[serde(default)]
    pub name: String,
}

/// Where a task is in its life, as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not running yet (`new` ... `starting`); `why` is Swarm's message (a task that
    /// cannot be placed stays `pending` with it: `no suitable node ...`).
    Starting {
        /// Swarm's message or error, for an error when it never starts.
        why: String,
    },
    /// Running.
    Running,
    /// Ended (exited, failed, rejected, shut down, orphaned): how, for the log and the
    /// function's failure reason.
    Ended {
        /// How it ended.
        how: String,
    },
}

impl TaskView {
    /// Its phase.
    pub fn phase(&self) -> Phase {
        let s = &self.status;
        match s.state.as_str() {
            "running" => Phase::Running,
            "" => Phase::Starting { why: "task not reported yet".into() },
            "new" | "allocated" | "pending" | "assigned" | "accepted" | "preparing" | "ready" | "starting" => {
                let why = if s.err.is_empty() { s.message.clone() } else { s.err.clone() };
                Phase::Starting { why: format!("task {}: {why}", s.state) }
            }
            state => {
                let mut how = format!("task {state}");
                if let Some(code) = s.container_status.as_ref().and_then(|c| c.exit_code) {
                    how.push_str(&format!(" (exit code {code})"));
                }
                let detail = if s.err.is_empty() { &s.message } else { &s.err };
                if !detail.is_empty() {
                    how.push_str(&format!(": {detail}"));
                }
                Phase::Ended { how }
            }
        }
    }

    /// Its address on `network` (by name or id), without the prefix length.
    pub fn address_on(&self, network: &str) -> Option<IpAddr> {
        self.networks_attachments
            .iter()
            .filter(|a| a.network.spec.name == network || a.network.id == network)
            .flat_map(|a| &a.addresses)
            .find_map(|a| a.split('/').next()?.parse().ok())
    }
}

/// The newest task of each service in `tasks` (a service of this runtime has one task:
/// one replica, never restarted; the newest wins should there be more).
pub fn newest_by_service(tasks: Vec<TaskView>) -> HashMap<String, TaskView> {
    let mut out: HashMap<String, TaskView> = HashMap::new();
    for t in tasks {
        match out.get(&t.service_id) {
            Some(have) if have.version.index >= t.version.index => {}
            _ => {
                out.insert(t.service_id.clone(), t);
            }
        }
    }
    out
}

/// Why the tasks could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TasksError {
    /// No answer on the socket.
    #[error("cannot read the Swarm tasks from the Docker engine: {0}")]
    Unreachable(#[source] reqwest::Error),
    /// An answer that is not 200 (this engine is not a swarm manager: 503).
    #[error("the Docker engine answered {status} to GET /tasks: {body}")]
    Refused {
        /// Its status.
        status: reqwest::StatusCode,
        /// Its message.
        body: String,
    },
    /// An answer that is not the list of tasks.
    #[error("the Docker engine's list of tasks does not parse: {0}")]
    Parse(#[source] reqwest::Error),
}

/// How many services one `/tasks` call names at most (the filter goes in the URL).
const SERVICES_PER_CALL: usize = 100;

/// The engine's `/tasks`, over its Unix socket.
#[derive(Debug, Clone)]
pub struct TasksApi {
    http: reqwest::Client,
}

impl TasksApi {
    /// Reads `/tasks` through the Docker socket at `socket`.
    pub fn new(socket: &Path) -> TasksApi {
        let http = reqwest::Client::builder()
            .unix_socket(socket.to_path_buf())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a plain HTTP client over a Unix socket always builds");
        TasksApi { http }
    }

    /// Every task of the services `services` (ids), whatever their state.
    pub async fn of_services(&self, services: &[String]) -> Result<Vec<TaskView>, TasksError> {
        let mut all = Vec::new();
        for chunk in services.chunks(SERVICES_PER_CALL) {
            let filters = serde_json::json!({ "service": chunk }).to_string();
            let resp = self
                .http
                // The host is ignored on a Unix socket; 1.41 is the API the runtime speaks.
                .get("http://docker/v1.41/tasks")
                .query(&[("filters", filters)])
                .send()
                .await
                .map_err(TasksError::Unreachable)?;
            if !resp.status().is_success() {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                return Err(TasksError::Refused { status, body: body.trim().to_string() });
            }
            all.extend(resp.json::<Vec<TaskView>>().await.map_err(TasksError::Parse)?);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task as the engine (20.10, API 1.41) sends it, trimmed to what matters.
    const RUNNING: &str = r#"{
        "ID": "t1", "Version": {"Index": 12}, "ServiceID": "s1", "Slot": 1, "NodeID": "n1",
        "DesiredState": "running",
        "Status": {"Timestamp": "2026-12-05T10:00:00.5Z", "State": "running", "Message": "started",
                   "ContainerStatus": {"ContainerID": "c1", "PID": 42, "ExitCode": 0}},
        "NetworksAttachments": [
            {"Network": {"ID": "ingress1", "Spec": {"Name": "ingress"}}, "Addresses": ["10.0.0.9/24"]},
            {"Network": {"ID": "net1", "Spec": {"Name": "roost-functions"}}, "Addresses": ["10.0.1.3/24"]}
        ]
    }"#;

    fn task(json: &str) -> TaskView {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_running_task_has_its_address_on_the_named_network() {
        let t = task(RUNNING);
        assert_eq!(t.phase(), Phase::Running);
        assert_eq!(t.address_on("roost-functions"), Some("10.0.1.3".parse().unwrap()));
        assert_eq!(t.address_on("net1"), Some("10.0.1.3".parse().unwrap()), "by id too");
        assert_eq!(t.address_on("other"), None);
    }

    #[test]
    fn ended_tasks_say_how() {
        let failed = task(
            r#"{"ID":"t","ServiceID":"s","Status":{"State":"failed","Message":"started","Err":"task: non-zero exit (3)",
                "ContainerStatus":{"ExitCode":3}}}"#,
        );
        assert_eq!(failed.phase(), Phase::Ended { how: "task failed (exit code 3): task: non-zero exit (3)".into() });
        let rejected = task(r#"{"ID":"t","ServiceID":"s","Status":{"State":"rejected","Err":"No such image: sha256:ab"}}"#);
        assert_eq!(rejected.phase(), Phase::Ended { how: "task rejected: No such image: sha256:ab".into() });
        let complete =
            task(r#"{"ID":"t","ServiceID":"s","Status":{"State":"complete","Message":"finished","ContainerStatus":{"ExitCode":0}}}"#);
        assert_eq!(complete.phase(), Phase::Ended { how: "task complete (exit code 0): finished".into() });
    }

    #[test]
    fn a_task_that_cannot_be_placed_is_starting_with_the_reason() {
        let pending = task(
            r#"{"ID":"t","ServiceID":"s","Status":{"State":"pending","Message":"pending task scheduling","Err":"no suitable node (1 node not available for new tasks)"}}"#,
        );
        assert_eq!(pending.phase(), Phase::Starting { why: "task pending: no suitable node (1 node not available for new tasks)".into() });
        // Fields the engine leaves out parse as empty.
        let bare = task(r#"{"ID":"t"}"#);
        assert_eq!(bare.phase(), Phase::Starting { why: "task not reported yet".into() });
        assert_eq!(bare.address_on("roost-functions"), None);
    }

    #[test]
    fn the_newest_task_of_a_service_wins() {
        let mut old = task(RUNNING);
        old.version.index = 3;
        old.id = "old".into();
        let new = task(RUNNING);
        let mut other = task(RUNNING);
        other.service_id = "s2".into();
        let by = newest_by_service(vec![new.clone(), old.clone(), other.clone()]);
        assert_eq!(by["s1"].id, "t1");
        assert_eq!(by["s2"], other);
        let by = newest_by_service(vec![old, new]);
        assert_eq!(by["s1"].id, "t1");
    }
}
