//! A single-node Docker Swarm for a test: joined (`docker swarm init --advertise-addr
//! 127.0.0.1`) when the engine is not in one, and left again (`docker swarm leave
//! --force`, and the `docker_gwbridge` network it made) when the guard drops. An engine
//! already in a swarm is used as it is and left in it. One guard at a time per test
//! binary: a second test waits for the first's guard, so no test leaves the swarm under
//! another.

use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// Held by the one guard of this process.
static ONE: Mutex<()> = Mutex::new(());

/// The engine's swarm, for the guard's life.
#[derive(Debug)]
pub struct Swarm {
    /// This guard made the swarm (and leaves it).
    created: bool,
    /// Dropped last (fields drop in order): the next test's guard waits until the swarm
    /// is left.
    _one: MutexGuard<'static, ()>,
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().unwrap_or_else(|e| panic!("cannot run docker {args:?}: {e}; is the Docker CLI installed?"))
}

/// The engine's swarm state: `active`, `inactive`, ...
pub fn state() -> String {
    let out = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    assert!(out.status.success(), "docker info failed (is dockerd running?): {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Swarm {
    /// Makes the engine a single-node swarm manager, unless it already is one; panics
    /// with the engine's words when it cannot (a test never skips silently).
    pub fn join() -> Swarm {
        // A test that failed holding it has still dropped its guard (left the swarm).
        let one = ONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match state().as_str() {
            "active" => {
                let out = docker(&["info", "--format", "{{.Swarm.ControlAvailable}}"]);
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "true", "the engine is in a swarm but not a manager");
                Swarm { created: false, _one: one }
            }
            "inactive" => {
                let out = docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
                assert!(out.status.success(), "docker swarm init failed: {}", String::from_utf8_lossy(&out.stderr));
                Swarm { created: true, _one: one }
            }
            other => panic!("the engine's swarm is {other:?}: neither in one nor out of one; see `docker info`"),
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if self.created {
            let out = docker(&["swarm", "leave", "--force"]);
            if !out.status.success() {
                eprintln!("docker swarm leave --force failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            // Swarm made it at init and leaves it behind.
            docker(&["network", "rm", "docker_gwbridge"]);
        }
    }
}
