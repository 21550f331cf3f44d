//! Child processes that die with the test, and free ports.

use roost_common::process;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command};
use std::time::Duration;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// How long a dropped guard's process has to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// A free TCP port on 127.0.0.1 (bound once, then released for the caller to use).
pub fn free_port() -> u16 {
    roost_common::net::free_port(LOOPBACK).expect("bind an ephemeral port on 127.0.0.1")
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    roost_common::net::free_udp_port(LOOPBACK).expect("bind an ephemeral UDP port on 127.0.0.1")
}

/// Runs `cmd` (stdout and stderr captured, `input` written to its stdin) and returns its
/// output, or `None` if it has not finished within `limit` (it is then killed). For a
/// `docker exec` into a function replica: a replica recycled as a paused spare freezes
/// whatever runs in it, and an unbounded exec would wait forever.
pub fn output_within(cmd: &mut Command, input: &[u8], limit: Duration) -> Option<std::process::Output> {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().ok()?;
    let mut stdin = child.stdin.take()?;
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let (mut out, mut err) = (child.stdout.take()?, child.stderr.take()?);
    let reader = std::thread::spawn(move || {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let _ = out.read_to_end(&mut o);
        let _ = err.read_to_end(&mut e);
        (o, e)
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let _ = writer.join();
    let (stdout, stderr) = reader.join().ok()?;
    Some(std::process::Output { status, stdout, stderr })
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
        Ok(Guard { child: Some(cmd.spawn()?), name: name.to_string() })
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
            // Both fail only when the process has exited and been reaped already.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited by itself.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        if let Err(e) = process::terminate(c.id()) {
            eprintln!("{}: SIGTERM not sent ({e}); waiting for it anyway", self.name);
        }
        c.wait().ok()
    }
}

impl Drop for Guard {
    /// SIGTERM first, so a process can stop what it started (nginx its workers, the
    /// orchestrator its replicas); SIGKILL after 10 s.
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        if let Err(e) = process::stop_child(&mut c, GRACE) {
            eprintln!("{}: cannot stop it: {e}", self.name);
        }
    }
}
