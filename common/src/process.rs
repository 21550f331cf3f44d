//! Child processes: stopping one the same way everywhere (SIGTERM, a grace period, then
//! SIGKILL).

use std::future::Future;
use std::io;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How often a stop looks again whether the process has exited.
const POLL: Duration = Duration::from_millis(20);

/// How a stopped process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It exited within the grace period after SIGTERM (or was gone already).
    Exited,
    /// It ignored SIGTERM for the whole grace period and was killed (SIGKILL).
    Killed,
}

/// Sends `signal` to the process `pid`. A pid that is not a single process (0, or above
/// `i32::MAX`, which `kill` would read as a process group) is never signalled.
pub fn signal(pid: u32, signal: i32) -> io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{pid} is not a process id")))?;
    // SAFETY: sending a signal to a process id has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends SIGTERM to the process `pid` (see [`signal`]).
pub fn terminate(pid: u32) -> io::Result<()> {
    signal(pid, libc::SIGTERM)
}

/// Whether a process `pid` exists (signal 0 only checks).
pub fn is_alive(pid: u32) -> bool {
    signal(pid, 0).is_ok()
}

/// Resolves once no process `pid` exists any more (polled, for a process that is not
/// this one's child).
pub async fn gone(pid: u32) {
    while is_alive(pid) {
        tokio::time::sleep(POLL).await;
    }
}

/// Stops the process `pid`: SIGTERM, then SIGKILL if `exited` has not resolved within
/// `grace`. `exited` tells when the process is gone: a child's exit watch, or [`gone`].
pub async fn stop_pid(pid: u32, grace: Duration, exited: impl Future<Output = ()>) -> Stopped {
    // A process that is gone already cannot be signalled; `exited` then resolves at once.
    if let Err(e) = terminate(pid) {
        tracing::debug!(pid, error = %e, "SIGTERM not sent; the process is gone");
    }
    if tokio::time::timeout(grace, exited).await.is_ok() {
        return Stopped::Exited;
    }
    if let Err(e) = signal(pid, libc::SIGKILL) {
        tracing::debug!(pid, error = %e, "SIGKILL not sent; the process is gone");
    }
    Stopped::Killed
}

/// Stops a child process and reaps it: SIGTERM, then SIGKILL if it has not exited within
/// `grace`. Blocks the thread (for drops and synchronous callers).
pub fn stop_child(child: &mut Child, grace: Duration) -> io::Result<(ExitStatus, Stopped)> {
    if let Some(status) = child.try_wait()? {
        return Ok((status, Stopped::Exited));
    }
    terminate(child.id())?;
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok((status, Stopped::Exited));
        }
        std::thread::sleep(POLL);
    }
    child.kill()?;
    Ok((child.wait()?, Stopped::Killed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_child_that_takes_sigterm_exits_within_the_grace() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let (status, stopped) = stop_child(&mut child, Duration::from_secs(10)).unwrap();
        assert_eq!(stopped, Stopped::Exited);
        assert!(!status.success());
    }

    #[test]
    fn a_child_that_ignores_sigterm_is_killed_after_the_grace() {
        let mut child =
            Command::new("sh").args(["-c", "trap '' TERM; echo up; exec sleep 30"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
        // Wait for the trap to be set before signalling.
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        let t = Instant::now();
        let (_, stopped) = stop_child(&mut child, Duration::from_millis(200)).unwrap();
        assert_eq!(stopped, Stopped::Killed);
        assert!(t.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn stop_pid_waits_for_the_exit_it_is_given() {
        let mut child = tokio::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id().unwrap();
        let exited = async {
            child.wait().await.unwrap();
        };
        assert_eq!(stop_pid(pid, Duration::from_secs(10), exited).await, Stopped::Exited);
        assert!(!is_alive(pid));
    }

    #[test]
    fn no_process_group_is_ever_signalled() {
        assert!(signal(0, 0).is_err());
        assert!(signal(u32::MAX, 0).is_err());
        assert!(!is_alive(0));
        assert!(is_alive(std::process::id()));
    }
}
