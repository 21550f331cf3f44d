//! Which replica services the Swarm runtime watches for an exit, and which of them ended,
//! decided from one reading of their tasks (pure: no engine in it).
//!
//! The Engine API has no task events, so the runtime reads the tasks of the services it
//! watches every [`super::WATCH_EVERY`] and hands the reading to [`Watch::ended`]. A
//! service is watched from the moment its task runs (a start that fails says so itself)
//! until `stop` takes it off (before it deletes the service), so a replica the
//! orchestrator stops is never reported as an exit.

use super::tasks::{newest_by_service, Phase, TaskView};
use std::collections::HashMap;

/// A watched replica.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Watched {
    replica_id: String,
    function: String,
}

/// A replica whose task ended without the orchestrator stopping it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// Its service.
    pub service: String,
    /// Its task, when one was read (for its last lines).
    pub task: Option<String>,
    /// The replica's id.
    pub replica_id: String,
    /// Its function.
    pub function: String,
    /// How it ended.
    pub how: String,
}

/// The watched replica services.
#[derive(Debug, Default)]
pub struct Watch {
    watched: HashMap<String, Watched>,
}

impl Watch {
    /// Watches `service`, the replica `replica_id` of `function`.
    pub fn watch(&mut self, service: &str, replica_id: &str, function: &str) {
        self.watched.insert(service.to_string(), Watched { replica_id: replica_id.to_string(), function: function.to_string() });
    }

    /// Stops watching `service` (the orchestrator stops it); true if it was watched.
    pub fn unwatch(&mut self, service: &str) -> bool {
        self.watched.remove(service).is_some()
    }

    /// The watched services' ids, for the next reading.
    pub fn services(&self) -> Vec<String> {
        self.watched.keys().cloned().collect()
    }

    /// The replicas that ended, given `tasks`: every task of the services in `asked` (the
    /// ids read, from [`Watch::services`] just before). Each is reported once and no
    /// longer watched. A service asked for with no task at all was removed outside the
    /// runtime (`docker service rm`): ended too. A service no longer watched (stopped
    /// meanwhile) is left alone, and so is one watched after the reading began.
    pub fn ended(&mut self, asked: &[String], tasks: Vec<TaskView>) -> Vec<Ended> {
        let newest = newest_by_service(tasks);
        let mut out = Vec::new();
        for service in asked {
            let Some(w) = self.watched.get(service) else { continue };
            let (task, how) = match newest.get(service) {
                Some(t) => match t.phase() {
                    Phase::Ended { how } => (Some(t.id.clone()), how),
                    Phase::Running | Phase::Starting { .. } => continue,
                },
                None => (None, "its service was removed outside Roost".to_string()),
            };
            out.push(Ended { service: service.clone(), task, replica_id: w.replica_id.clone(), function: w.function.clone(), how });
            self.watched.remove(service);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::swarm::tasks::{ContainerStatus, TaskStatus, TaskVersion};

    fn task(service: &str, id: &str, index: u64, state: &str, exit: Option<i64>) -> TaskView {
        TaskView {
            id: id.into(),
            service_id: service.into(),
            version: TaskVersion { index },
            desired_state: "running".into(),
            status: TaskStatus { state: state.into(), container_status: Some(ContainerStatus { exit_code: exit }), ..Default::default() },
            networks_attachments: vec![],
        }
    }

    fn watching(services: &[(&str, &str)]) -> Watch {
        let mut w = Watch::default();
        for (s, r) in services {
            w.watch(s, r, "f");
        }
        w
    }

    #[test]
    fn a_failed_task_is_reported_once_with_how() {
        let mut w = watching(&[("s1", "f-1"), ("s2", "f-2")]);
        let asked = vec!["s1".to_string(), "s2".to_string()];
        let tasks = vec![task("s1", "t1", 5, "failed", Some(137)), task("s2", "t2", 6, "running", None)];
        let ended = w.ended(&asked, tasks.clone());
        assert_eq!(
            ended,
            vec![Ended {
                service: "s1".into(),
                task: Some("t1".into()),
                replica_id: "f-1".into(),
                function: "f".into(),
                how: "task failed (exit code 137)".into()
            }]
        );
        assert_eq!(w.services(), vec!["s2".to_string()]);
        assert!(w.ended(&asked, tasks).is_empty(), "reported once");
    }

    #[test]
    fn a_service_removed_behind_the_runtime_is_an_exit() {
        let mut w = watching(&[("s1", "f-1")]);
        let ended = w.ended(&["s1".to_string()], vec![]);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].task, None);
        assert_eq!(ended[0].how, "its service was removed outside Roost");
    }

    #[test]
    fn a_stopped_replica_is_never_reported() {
        // The reading began while it was watched; `stop` took it off, then deleted it.
        let mut w = watching(&[("s1", "f-1")]);
        let asked = w.services();
        assert!(w.unwatch("s1"));
        assert!(w.ended(&asked, vec![task("s1", "t1", 5, "shutdown", Some(0))]).is_empty());
        assert!(w.ended(&asked, vec![]).is_empty(), "nor when its task is gone");
        assert!(!w.unwatch("s1"));
    }

    #[test]
    fn a_replica_watched_after_the_reading_began_waits_for_the_next() {
        let mut w = watching(&[("s1", "f-1")]);
        let asked = w.services();
        w.watch("s2", "f-2", "f");
        // s2 was not asked about: no task for it here means nothing.
        assert!(w.ended(&asked, vec![task("s1", "t1", 5, "running", None)]).is_empty());
        assert_eq!(w.services().len(), 2);
    }

    #[test]
    fn the_newest_task_decides() {
        let mut w = watching(&[("s1", "f-1")]);
        let asked = w.services();
        let tasks = vec![task("s1", "old", 3, "failed", Some(1)), task("s1", "new", 9, "running", None)];
        assert!(w.ended(&asked, tasks).is_empty());
    }
}
