//! Draining Envoy before it is stopped: its admin API's `POST /drain_listeners?graceful`,
//! then a bounded wait for the requests it has in flight to the functions, so a stop ends
//! them instead of cutting them (Envoy itself exits at once on SIGTERM, closing every
//! connection). The parsing is pure; the admin calls are blocking, for a stop that runs
//! in `Drop`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long Envoy keeps its listeners open once told to drain (its `--drain-time-s`),
/// answering with `Connection: close`; after it they take no new connection. It is also
/// how long a listener the control plane replaces keeps serving its connections.
pub const DRAIN_TIME_S: u32 = 5;

/// The longest a stop waits for Envoy's requests in flight before stopping it anyway.
pub const DRAIN_WAIT: Duration = Duration::from_secs(10);

/// How often the wait looks at Envoy's stats.
const POLL: Duration = Duration::from_millis(50);

/// Envoy's stats filter for the requests it has in flight to the functions: active and
/// queued (pending) per function cluster, the gauges `envoy/bootstrap.yaml` keeps.
pub const IN_FLIGHT_FILTER: &str = r"^cluster\.fn-.*\.upstream_rq_(active|pending_active)$";

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Nothing left in flight, after this long.
    Idle(Duration),
    /// Still this many requests in flight when the wait ran out.
    TimedOut(u64),
}

/// The requests in flight in a `/stats` answer filtered by [`IN_FLIGHT_FILTER`]: the sum
/// of its `name: value` lines (a line that is not one counts nothing).
pub fn in_flight(stats: &str) -> u64 {
    stats.lines().filter_map(|l| l.rsplit_once(": ")).filter_map(|(_, v)| v.trim().parse::<u64>().ok()).sum()
}

/// The status and body of a whole HTTP/1.1 response (`Connection: close`), its body
/// de-chunked when sent chunked; `None` when it is not one.
pub fn parse_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let body = &raw[split + 4..];
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked"))
    });
    if !chunked {
        return Some((status, body.to_vec()));
    }
    let (mut out, mut rest) = (Vec::new(), body);
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some((status, out));
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// One call to Envoy's admin API on 127.0.0.1:`port`; its status and body.
fn admin(port: u16, method: &str, path: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let (status, body) = parse_response(&raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("Envoy admin {method} {path}: not an HTTP response")))?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Drains the Envoy whose admin API is on 127.0.0.1:`admin_port`: tells its listeners to
/// drain gracefully, then waits (at most `wait`) until it has no request in flight to a
/// function. Envoy keeps running; stop it afterwards.
pub fn drain(admin_port: u16, wait: Duration) -> io::Result<Drained> {
    let started = Instant::now();
    let (status, body) = admin(admin_port, "POST", "/drain_listeners?graceful")?;
    if status != 200 {
        return Err(io::Error::other(format!("Envoy refused to drain: {status} {}", body.trim())));
    }
    let stats = format!("/stats?filter={IN_FLIGHT_FILTER}");
    loop {
        let (status, body) = admin(admin_port, "GET", &stats)?;
        if status != 200 {
            return Err(io::Error::other(format!("Envoy's stats: {status} {}", body.trim())));
        }
        let n = in_flight(&body);
        if n == 0 {
            return Ok(Drained::Idle(started.elapsed()));
        }
        if started.elapsed() >= wait {
            return Ok(Drained::TimedOut(n));
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_sums_active_and_pending_over_functions() {
        let stats = "cluster.fn-a.upstream_rq_active: 2\ncluster.fn-a.upstream_rq_pending_active: 1\n\
                     cluster.fn-b.upstream_rq_active: 0\n";
        assert_eq!(in_flight(stats), 3);
        assert_eq!(in_flight(""), 0);
        assert_eq!(in_flight("garbage\ncluster.fn-a.upstream_rq_active: x\n"), 0);
    }

    #[test]
    fn parse_response_reads_plain_and_chunked_bodies() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nOK";
        assert_eq!(parse_response(plain), Some((200, b"OK".to_vec())));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nclust\r\nb;x=1\r\ner.fn-a: 1\n\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((200, b"cluster.fn-a: 1\n".to_vec())));
        // A chunk split across the line still sums as one line.
        assert_eq!(in_flight(std::str::from_utf8(&parse_response(chunked).unwrap().1).unwrap()), 1);
    }

    #[test]
    fn parse_response_refuses_what_is_not_a_whole_response() {
        assert_eq!(parse_response(b""), None);
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n"), None);
        assert_eq!(parse_response(b"HTTP/1.1 abc OK\r\n\r\n"), None);
        // Cut inside a chunk.
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\nabc"), None);
    }
}
