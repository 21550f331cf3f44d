//! The load generator: HTTP/1.1 keep-alive connections on loopback, a closed loop at
//! fixed concurrency, and a burst of simultaneous requests. Written for measurement: one
//! small fixed request, a response parser that copies nothing it does not need.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for one response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection before a whole response.
    #[error("connection closed before a whole response")]
    Closed,
    /// Not an HTTP/1.x response.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// No response in time.
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

/// The parts of a response head the benchmarks use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    /// Length of the head including the blank line.
    pub len: usize,
}

impl Head {
    /// The first header with this lowercase name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// How the body of a response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` bytes.
    Length(usize),
    /// Chunked transfer coding.
    Chunked,
    /// Until the peer closes.
    Close,
}

/// Parses a response head from the start of `buf`; `Ok(None)` when it is not complete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, ClientError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| ClientError::Malformed("head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    if !status_line.starts_with("HTTP/1.") {
        return Err(ClientError::Malformed(format!("status line {status_line:?}")));
    }
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Malformed(format!("status line {status_line:?}")))?;
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    Ok(Some(Head { status, headers, len: end + 4 }))
}

/// How the body after `head` is framed (RFC 9112, section 6.3, for a GET's response).
pub fn framing(head: &Head) -> Result<Framing, ClientError> {
    if head.status == 204 || head.status == 304 || (100..200).contains(&head.status) {
        return Ok(Framing::Length(0));
    }
    if head.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        return Ok(Framing::Chunked);
    }
    match head.header("content-length") {
        Some(v) => v.parse().map(Framing::Length).map_err(|_| ClientError::Malformed(format!("content-length {v:?}"))),
        None => Ok(Framing::Close),
    }
}

/// Where a chunked body that starts at `body[0]` ends (just past its last CRLF), if it
/// is complete; trailers are not expected.
pub fn chunked_end(body: &[u8]) -> Result<Option<usize>, ClientError> {
    let mut at = 0;
    loop {
        let Some(eol) = body[at..].windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let size_text = std::str::from_utf8(&body[at..at + eol]).map_err(|_| ClientError::Malformed("chunk size".into()))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| ClientError::Malformed(format!("chunk size {size_text:?}")))?;
        at += eol + 2;
        if size == 0 {
            return Ok((body.len() >= at + 2).then_some(at + 2));
        }
        if body.len() < at + size + 2 {
            return Ok(None);
        }
        at += size + 2;
    }
}

/// A response: status, headers, body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The head.
    pub head: Head,
    /// The body bytes (chunk framing left in place).
    pub body: Vec<u8>,
}

/// One keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    open: bool,
    /// Extra header lines of every request (the orchestrator's control token).
    extra: String,
}

impl Conn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Conn, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, buf: Vec::with_capacity(4096), open: true, extra: String::new() })
    }

    /// Every request on this connection carries `Authorization: Bearer <token>` (the
    /// orchestrator's API; never the gate's, whose functions must not see it).
    pub fn with_token(mut self, token: &str) -> Conn {
        self.extra = format!("Authorization: Bearer {token}\r\n");
        self
    }

    /// Whether the connection can take another request.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Sends `GET path` and reads the whole response.
    pub async fn get(&mut self, path: &str) -> Result<Reply, ClientError> {
        self.request("GET", path, REQUEST_TIMEOUT).await
    }

    /// Sends a body-less request and reads the whole response, waiting at most `timeout`.
    pub async fn request(&mut self, method: &str, path: &str, timeout: Duration) -> Result<Reply, ClientError> {
        let body_length = if method == "GET" { "" } else { "Content-Length: 0\r\n" };
        let req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: roost-bench\r\n{}{body_length}\r\n", self.extra);
        match tokio::time::timeout(timeout, self.exchange(req.as_bytes())).await {
            Ok(r) => r.inspect_err(|_| self.open = false),
            Err(_) => {
                self.open = false;
                Err(ClientError::Timeout(timeout))
            }
        }
    }

    async fn fill(&mut self) -> Result<bool, ClientError> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    async fn exchange(&mut self, req: &[u8]) -> Result<Reply, ClientError> {
        self.stream.write_all(req).await?;
        let head = loop {
            if let Some(h) = parse_head(&self.buf)? {
                break h;
            }
            if !self.fill().await? {
                return Err(ClientError::Closed);
            }
        };
        let framing = framing(&head)?;
        let body_end = loop {
            let body = &self.buf[head.len..];
            let end = match framing {
                Framing::Length(n) => (body.len() >= n).then_some(n),
                Framing::Chunked => chunked_end(body)?,
                Framing::Close => None,
            };
            if let Some(end) = end {
                break end;
            }
            if !self.fill().await? {
                if framing == Framing::Close {
                    self.open = false;
                    break self.buf.len() - head.len;
                }
                return Err(ClientError::Closed);
            }
        };
        let body = self.buf[head.len..head.len + body_end].to_vec();
        self.buf.drain(..head.len + body_end);
        if head.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            self.open = false;
        }
        Ok(Reply { head, body })
    }
}

/// One request on a fresh connection.
pub async fn get_once(addr: SocketAddr, path: &str) -> Result<Reply, ClientError> {
    Conn::connect(addr).await?.get(path).await
}

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct LoadResult {
    /// 2xx answers.
    pub ok: u64,
    /// Failed requests: no answer, or not 2xx.
    pub errors: u64,
    /// Latency of every 2xx answer, in milliseconds.
    pub latencies_ms: Vec<f64>,
    /// The first few failures, described.
    pub failures: Vec<String>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl LoadResult {
    /// 2xx answers per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Adds another run's counts and samples (elapsed times add up).
    pub fn merge(&mut self, other: LoadResult) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.latencies_ms.extend(other.latencies_ms);
        for f in other.failures {
            self.note(f);
        }
        self.elapsed += other.elapsed;
    }

    fn note(&mut self, failure: String) {
        if self.failures.len() < 5 {
            self.failures.push(failure);
        }
    }

    /// Counts one request that started at `started`: a 2xx answer with its latency, or
    /// a failure, described.
    pub fn record(&mut self, started: Instant, result: Result<Reply, ClientError>) {
        self.record_took(started.elapsed(), result)
    }

    /// Counts one request that took `took` (measured when its answer came).
    pub fn record_took(&mut self, took: Duration, result: Result<Reply, ClientError>) {
        match result {
            Ok(r) if (200..300).contains(&r.head.status) => {
                self.ok += 1;
                self.latencies_ms.push(took.as_secs_f64() * 1000.0);
            }
            Ok(r) => {
                self.errors += 1;
                self.note(format!("HTTP {}: {}", r.head.status, String::from_utf8_lossy(&r.body).chars().take(200).collect::<String>()));
            }
            Err(e) => {
                self.errors += 1;
                self.note(e.to_string());
            }
        }
    }
}

/// One connection of a closed loop: sends `GET path` again as soon as the last answer
/// came, while `go()` holds, showing each answer to `seen`; a failed connection is
/// replaced.
pub async fn loop_worker(addr: SocketAddr, path: &str, go: impl Fn() -> bool, seen: impl FnMut(&Reply)) -> LoadResult {
    loop_requests(addr, "GET", path, go, seen).await
}

/// [`loop_worker`] with another method (a body-less request).
pub async fn loop_requests(addr: SocketAddr, method: &str, path: &str, go: impl Fn() -> bool, mut seen: impl FnMut(&Reply)) -> LoadResult {
    let mut result = LoadResult::default();
    let mut conn: Option<Conn> = None;
    while go() {
        let t = Instant::now();
        let mut c = match conn.take() {
            Some(c) if c.is_open() => c,
            _ => match Conn::connect(addr).await {
                Ok(c) => c,
                Err(e) => {
                    result.record(t, Err(e));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let r = c.request(method, path, REQUEST_TIMEOUT).await;
        if let Ok(reply) = &r {
            seen(reply);
        }
        result.record(t, r);
        conn = Some(c);
    }
    result
}

/// `concurrency` keep-alive connections, each sending its next request as soon as the
/// last is answered, until `duration` has passed. A failed connection is replaced.
pub async fn closed_loop(addr: SocketAddr, path: &str, concurrency: usize, duration: Duration) -> LoadResult {
    closed_loop_method(addr, "GET", path, concurrency, duration).await
}

/// [`closed_loop`] with another method (a body-less request).
pub async fn closed_loop_method(addr: SocketAddr, method: &str, path: &str, concurrency: usize, duration: Duration) -> LoadResult {
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (method, path) = (method.to_string(), path.to_string());
            tokio::spawn(async move { loop_requests(addr, &method, &path, || Instant::now() < deadline, |_| {}).await })
        })
        .collect();
    let mut total = LoadResult::default();
    for w in futures::future::join_all(workers).await {
        total.merge(w.expect("load worker panicked"));
    }
    total.elapsed = start.elapsed();
    total
}

/// `n` requests sent at once, each on its own connection; every answer is awaited.
pub async fn burst(addr: SocketAddr, path: &str, n: usize) -> LoadResult {
    let start = Instant::now();
    let gate = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (path, gate) = (path.to_string(), gate.clone());
            tokio::spawn(async move {
                let conn = Conn::connect(addr).await;
                gate.wait().await;
                let t = Instant::now();
                let r = match conn {
                    Ok(mut c) => c.get(&path).await,
                    Err(e) => Err(e),
                };
                // Timed here, when the answer came (not when every task is joined).
                (t.elapsed(), r)
            })
        })
        .collect();
    let mut total = LoadResult::default();
    for t in futures::future::join_all(tasks).await {
        let (took, r) = t.expect("burst task panicked");
        total.record_took(took, r);
    }
    total.elapsed = start.elapsed();
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing_and_framing() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Len").unwrap().is_none());
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello").unwrap().unwrap();
        assert_eq!((h.status, h.len, h.header("x-a")), (200, 46, Some("b")));
        assert_eq!(framing(&h).unwrap(), Framing::Length(5));
        let h = parse_head(b"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap().unwrap();
        assert_eq!(framing(&h).unwrap(), Framing::Chunked);
        let h = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(framing(&h).unwrap(), Framing::Close);
        let h = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap().unwrap();
        assert_eq!(framing(&h).unwrap(), Framing::Length(0));
        assert!(parse_head(b"SSH-2.0-x\r\n\r\n").is_err());
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").unwrap().unwrap();
        assert!(framing(&h).is_err());
    }

    #[test]
    fn chunked_bodies_end_after_the_last_chunk() {
        assert_eq!(chunked_end(b"5\r\nhello\r\n0\r\n\r\n").unwrap(), Some(15));
        assert_eq!(chunked_end(b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1").unwrap(), Some(15));
        assert_eq!(chunked_end(b"5\r\nhello\r\n0\r\n").unwrap(), None);
        assert_eq!(chunked_end(b"5\r\nhel").unwrap(), None);
        assert!(chunked_end(b"zz\r\n").is_err());
    }

    #[tokio::test]
    async fn keep_alive_requests_and_a_burst_against_a_real_server() {
        let up = roost_testkit::http::Upstream::start("floor").await;
        let addr = SocketAddr::from(([127, 0, 0, 1], up.port));
        let mut c = Conn::connect(addr).await.unwrap();
        for _ in 0..3 {
            let r = c.get("/x?y=1").await.unwrap();
            assert_eq!(r.head.status, 200);
            assert_eq!(r.body, br#"{"upstream":"floor","path":"/x?y=1"}"#);
        }
        let load = closed_loop(addr, "/", 4, Duration::from_millis(200)).await;
        assert_eq!(load.errors, 0, "{:?}", load.failures);
        assert!(load.ok > 4 && load.latencies_ms.len() as u64 == load.ok);
        let b = burst(addr, "/", 50).await;
        assert_eq!((b.ok, b.errors), (50, 0));
        up.stop();
        // Nothing listens any more: every request of a burst fails and says why.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let b = burst(dead, "/", 3).await;
        assert_eq!((b.ok, b.errors), (0, 3));
        assert!(b.failures[0].contains("refused"), "{:?}", b.failures);
    }

    #[tokio::test]
    async fn each_request_of_a_burst_is_timed_when_its_own_answer_comes() {
        // The first connection is answered at once, the second after 300 ms.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for delay in [0u64, 300] {
                let (mut c, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = c.read(&mut buf).await;
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                });
            }
        });
        let mut b = burst(addr, "/", 2).await;
        assert_eq!((b.ok, b.errors), (2, 0));
        b.latencies_ms.sort_by(f64::total_cmp);
        assert!(b.latencies_ms[0] < 250.0 && b.latencies_ms[1] >= 300.0, "{:?}", b.latencies_ms);
    }
}
