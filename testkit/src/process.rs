//! Child processes that die with the test, and free ports.

use std::net::TcpListener;
use std::process::{Child, Command};

/// A free TCP port on 127.0.0.1 (bound once, then released for the caller to use).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral UDP port on 127.0.0.1")
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Guard {
    child: Option<Child>,
    name: String,
}

impl Guard {
    /// Spawns `cmd`, panicking with `name` and the error if it cannot start.
    pub fn spawn(name: &str, cmd: &mut Command) -> Guard {
        Guard::try_spawn(name, cmd).unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"))
    }

    /// Spawns `cmd`, or says why it cannot start.
    pub fn try_spawn(name: &str, cmd: &mut Command) -> std::io::Result<Guard> {
        Ok(Guard {
            child: Some(cmd.spawn()?),
            name: name.to_string(),
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Panics if the process has already exited.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("{} exited early: {status}", self.name);
            }
        }
    }

    /// Kills the process now (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited by itself.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c.wait().ok()
    }
}

impl Drop for Guard {
    /// SIGTERM first, so a process can stop what it started (nginx its workers, the
    /// orchestrator its replicas); SIGKILL after 10 s.
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        if let Ok(None) = c.try_wait() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}
