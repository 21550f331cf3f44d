//! A private `redis-server` on a free port, with no persistence.

use crate::process::{free_port, Guard};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A running redis-server, killed on drop.
#[derive(Debug)]
pub struct Redis {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    guard: Guard,
}

impl Redis {
    /// Starts redis-server on a free port and waits until it answers PING.
    pub async fn start() -> Redis {
        Self::start_on(free_port()).await
    }

    /// Starts redis-server on `port` and waits until it answers PING.
    pub async fn start_on(port: u16) -> Redis {
        let bin =
            which("redis-server").unwrap_or_else(|| panic!("redis-server not found: install Debian's redis-server (bash .ci/run does)"));
        let guard = Guard::spawn(
            "redis-server",
            Command::new(bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let redis = Redis { port, guard };
        crate::wait_until(Duration::from_secs(10), "redis-server to answer PING", || async {
            crate::http::raw_exchange(port, b"PING\r\n").await.filter(|r| r.starts_with(b"+PONG")).map(|_| ())
        })
        .await;
        redis
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.guard.kill();
    }

    /// Starts a fresh, empty server on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        *self = Redis::start_on(self.port).await;
    }
}

/// Finds an executable on PATH or in /usr/sbin and /usr/bin.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found =
        path.split(':').chain(["/usr/sbin", "/usr/bin", "/sbin"]).map(|dir| std::path::Path::new(dir).join(name)).find(|p| p.is_file());
    found
}
