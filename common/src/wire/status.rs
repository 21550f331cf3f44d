//! The orchestrator's HTTP API: `GET /status` and `POST /functions/{name}/wake`, as the
//! orchestrator serves them and the CLI, the benchmark suite and the tests read them.

use serde::{Deserialize, Serialize};

/// How long each phase of one cold start took, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Phases {
    /// Process or container started.
    pub start_ms: f64,
    /// Readiness probe passed.
    pub readiness_ms: f64,
    /// Endpoint added and ACKed by every Envoy.
    pub ack_ms: f64,
    /// Marked ready in Redis and the gate told.
    pub notice_ms: f64,
    /// All of it.
    pub total_ms: f64,
}

/// The answer to a wake (`POST /functions/{name}/wake`, 200).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WakeReport {
    /// The function already had a ready replica.
    pub already_ready: bool,
    /// The cold start's phases, when this wake waited for one.
    pub phases: Option<Phases>,
}

/// The error body of every API answer that is not 200.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    /// What went wrong, and what to do.
    pub error: String,
}

/// Where a replica is in its life, as `/status` shows it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaPhase {
    /// Routed to by Envoy.
    Ready,
    /// Being taken out of service.
    Draining,
}

/// A replica as `/status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplicaStatus {
    /// Replica id.
    pub id: String,
    /// Where it listens.
    pub address: String,
    /// Ready or draining.
    pub phase: ReplicaPhase,
    /// The function version it runs.
    pub version: String,
    /// Started from an older definition (being rolled over).
    pub outdated: bool,
}

/// Where a function is in its life, as `/status` shows it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FunctionState {
    /// No replica, none starting.
    Sleeping,
    /// A replica is starting and none is ready.
    Waking,
    /// At least one replica is ready.
    Ready,
    /// Only draining replicas are left (going to zero).
    Draining,
    /// Removed from the definitions; its replicas are going.
    Removing,
    /// What it needs before its first start is being built (a Docker image, a virtual
    /// environment with its `extra_dependencies`); callers are held.
    Building,
    /// Its build failed, or its replicas fail to start and it backs off: callers are
    /// answered at once with the reason.
    Failing,
    /// Its definition is invalid: callers are answered at once with the problem until the
    /// definitions file is fixed.
    Invalid,
}

impl FunctionState {
    /// The state as `/status` spells it (`sleeping`, `ready`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionState::Sleeping => "sleeping",
            FunctionState::Waking => "waking",
            FunctionState::Ready => "ready",
            FunctionState::Draining => "draining",
            FunctionState::Removing => "removing",
            FunctionState::Building => "building",
            FunctionState::Failing => "failing",
            FunctionState::Invalid => "invalid",
        }
    }
}

impl std::fmt::Display for FunctionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One function as `/status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionStatus {
    /// Function name.
    pub name: String,
    /// Where the function is in its life.
    pub state: FunctionState,
    /// Replicas ready or draining.
    pub replicas: Vec<ReplicaStatus>,
    /// Replicas being started.
    pub starting: usize,
    /// Cold starts completed.
    pub cold_starts: u64,
    /// The phases of the last completed cold start.
    pub last_cold_start: Option<Phases>,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Why it is `failing` or `invalid`: the definition's problem, the tail of the
    /// build's output, the last lines a replica wrote before it exited.
    #[serde(default)]
    pub reason: Option<String>,
    /// How long it has been in its state, in milliseconds (set while `building`).
    #[serde(default)]
    pub state_for_ms: Option<u64>,
    /// When it is tried again, in milliseconds from now (set while `failing` backs off;
    /// absent for a failed build, tried again when its definition or folder changes).
    #[serde(default)]
    pub retry_in_ms: Option<u64>,
}

impl FunctionStatus {
    /// A function in `state` with no replica, no cold start and nothing to report yet.
    pub fn empty(name: &str, state: FunctionState) -> FunctionStatus {
        FunctionStatus {
            name: name.to_string(),
            state,
            replicas: Vec::new(),
            starting: 0,
            cold_starts: 0,
            last_cold_start: None,
            last_error: None,
            reason: None,
            state_for_ms: None,
            retry_in_ms: None,
        }
    }

    /// Replicas routed to now (not draining).
    pub fn ready_replicas(&self) -> usize {
        self.replicas.iter().filter(|r| r.phase == ReplicaPhase::Ready).count()
    }
}

/// The orchestrator's `/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// `process` or `docker`.
    pub runtime: String,
    /// The definitions file.
    pub definitions: String,
    /// The problems of the newest edit, if it was refused (the last good definitions serve).
    pub definitions_error: Option<String>,
    /// Every function.
    pub functions: Vec<FunctionStatus>,
    /// The functions deployed over the management API (the others are the file's).
    #[serde(default)]
    pub deployed: Vec<String>,
}

impl Status {
    /// One function's entry, if it is declared.
    pub fn function(&self, name: &str) -> Option<&FunctionStatus> {
        self.functions.iter().find(|f| f.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_back_what_it_wrote_with_today_s_spelling() {
        let s = Status {
            runtime: "process".into(),
            definitions: "defs.yml".into(),
            definitions_error: None,
            deployed: vec!["hello".into()],
            functions: vec![FunctionStatus {
                name: "hello".into(),
                state: FunctionState::Ready,
                replicas: vec![ReplicaStatus {
                    id: "hello-1".into(),
                    address: "127.0.0.1:9000".into(),
                    phase: ReplicaPhase::Draining,
                    version: "1".into(),
                    outdated: true,
                }],
                starting: 0,
                cold_starts: 1,
                last_cold_start: Some(Phases { total_ms: 8.0, ..Default::default() }),
                last_error: None,
                reason: None,
                state_for_ms: None,
                retry_in_ms: None,
            }],
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""state":"ready""#) && json.contains(r#""phase":"draining""#), "{json}");
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.function("hello").map(FunctionStatus::ready_replicas), Some(0));
    }

    #[test]
    fn state_names_are_the_wire_s() {
        use FunctionState::*;
        for s in [Sleeping, Waking, Ready, Draining, Removing, Building, Failing, Invalid] {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }
}
