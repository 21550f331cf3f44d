//! Readiness probes: a plain HTTP/1.1 GET on the replica's readiness path, repeated every
//! few milliseconds until it answers 2xx or a deadline passes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One GET; true when the status line says 2xx.
pub async fn check(address: SocketAddr, path: &str, timeout: Duration) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(address).await.ok()?;
        s.set_nodelay(true).ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nUser-Agent: roost-probe\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; 16];
        let mut n = 0;
        while n < 12 {
            let r = s.read(&mut buf[n..]).await.ok()?;
            if r == 0 {
                break;
            }
            n += r;
        }
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        Some(head.starts_with("HTTP/1.") && head.as_bytes().get(9) == Some(&b'2'))
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten().unwrap_or(false)
}

/// Probes every `interval` until a 2xx or `deadline`; returns how long it took.
pub async fn until_ready(address: SocketAddr, path: &str, interval: Duration, deadline: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check(address, path, Duration::from_secs(2)).await {
            return Some(start.elapsed());
        }
        if start.elapsed() >= deadline {
            return None;
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn server(status: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut buf = [0u8; 256];
                let _ = c.read(&mut buf).await;
                let _ = c.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn two_hundred_is_ready_and_others_are_not() {
        assert!(check(server("200 OK").await, "/healthz", Duration::from_secs(1)).await);
        assert!(check(server("204 No Content").await, "/healthz", Duration::from_secs(1)).await);
        assert!(!check(server("503 Service Unavailable").await, "/healthz", Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn nothing_listening_times_out_at_the_deadline() {
        let addr: SocketAddr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let r = until_ready(addr, "/", Duration::from_millis(10), Duration::from_millis(100)).await;
        assert!(r.is_none());
    }
}
