//! HTTP for tests: a client (reqwest, one request per call), the parser the gate's tests use
//! for the raw answers of their hand-written client, and a tiny upstream server that says
//! who it is (hand-written: it answers Envoy with exactly the bytes a test asks for).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A response: status, headers (lowercased names) and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy UTF-8), chunked encoding decoded.
    pub body: String,
}

impl Response {
    /// The first header with this (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting, sending or reading failed (or the 10 s deadline passed).
    #[error("{method} {path} on 127.0.0.1:{port}: {source}")]
    Request {
        /// The method sent.
        method: String,
        /// The path sent.
        path: String,
        /// The port on 127.0.0.1.
        port: u16,
        /// What reqwest said.
        #[source]
        source: reqwest::Error,
    },
}

/// GET `path` from 127.0.0.1:`port`.
pub async fn get(port: u16, path: &str) -> Result<Response, HttpError> {
    request(port, "GET", path, &[], b"").await
}

/// Sends one request on a fresh connection with a 10 s deadline; no proxy from the
/// environment, no redirect followed.
pub async fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response, HttpError> {
    let failed = |source| HttpError::Request { method: method.to_string(), path: path.to_string(), port, source };
    // A bad method is a bug in the test itself.
    let verb = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or_else(|e| panic!("invalid HTTP method {method:?}: {e}"));
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(failed)?;
    let mut req = client.request(verb, format!("http://127.0.0.1:{port}{path}")).body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.map_err(failed)?;
    let status = r.status().as_u16();
    let headers = r.headers().iter().map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    let body = r.bytes().await.map_err(failed)?;
    Ok(Response { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// Parses a whole HTTP/1.1 response, as read to the end after the server closed the
/// connection: the status line, the headers (names lowercased) and the body, a chunked
/// one decoded (otherwise everything after the head, whatever Content-Length says).
pub fn parse_response(buf: &[u8]) -> Result<Response, String> {
    let end = find(buf, b"\r\n\r\n").ok_or_else(|| format!("answer without a complete head: {:?}", String::from_utf8_lossy(buf)))?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    let raw = &buf[end + 4..];
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    Ok(Response { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(raw, b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        raw = &raw[eol + 2..];
        if size == 0 || raw.len() < size {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
    out
}

/// Where `needle` first starts in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Writes `payload` to 127.0.0.1:`port` and returns the first bytes answered within 1 s.
pub async fn raw_exchange(port: u16, payload: &[u8]) -> Option<Vec<u8>> {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(payload).await.ok()?;
        let mut buf = vec![0; 512];
        let n = s.read(&mut buf).await.ok()?;
        buf.truncate(n);
        Some(buf)
    };
    tokio::time::timeout(Duration::from_secs(1), fut).await.ok().flatten()
}

/// An HTTP/1.1 upstream on a free port that answers every request with
/// `{"upstream":"<name>","path":"<path and query>"}`, optionally after a delay, and
/// echoes the request's `x-envoy-original-path` and `x-request-id` back as
/// `x-seen-original-path`, `x-seen-request-id` and `x-seen-authorization`. It keeps connections alive, as Envoy
/// expects.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Requests answered so far.
    pub hits: Arc<AtomicU64>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Upstream {
    /// Starts an upstream that answers at once.
    pub async fn start(name: &str) -> Upstream {
        Self::start_with_delay(name, Duration::ZERO).await
    }

    /// Starts an upstream that waits `delay` before each answer.
    pub async fn start_with_delay(name: &str, delay: Duration) -> Upstream {
        Self::spawn(name, delay, 200, &[]).await
    }

    /// Starts an upstream that answers every request with `status` and these extra
    /// headers (a function that answers 503 itself, for example).
    pub async fn start_with_status(name: &str, status: u16, headers: &[(&str, &str)]) -> Upstream {
        Self::spawn(name, Duration::ZERO, status, headers).await
    }

    async fn spawn(name: &str, delay: Duration, status: u16, headers: &[(&str, &str)]) -> Upstream {
        let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        let reply = Arc::new(Reply { name: name.to_string(), delay, status, extra });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let port = listener.local_addr().expect("upstream address").port();
        let hits = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve_conn(conn, reply.clone(), h.clone()));
            }
        });
        Upstream { port, hits, task: Arc::new(task) }
    }

    /// Requests answered so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting new connections (open ones finish on their own).
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// How an [`Upstream`] answers.
#[derive(Debug)]
struct Reply {
    name: String,
    delay: Duration,
    status: u16,
    /// Extra header lines, each ending in CRLF.
    extra: String,
}

async fn serve_conn(mut conn: TcpStream, reply: Arc<Reply>, hits: Arc<AtomicU64>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let len: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + len {
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + 4 + len);
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        hits.fetch_add(1, Ordering::SeqCst);
        let body = format!("{{\"upstream\":\"{}\",\"path\":\"{path}\"}}", reply.name);
        let seen: String = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter_map(|(k, v)| {
                let k = k.trim().to_ascii_lowercase();
                ["x-envoy-original-path", "x-request-id", "authorization"]
                    .contains(&k.as_str())
                    .then(|| format!("x-seen-{}: {}\r\n", k.trim_start_matches("x-envoy-").trim_start_matches("x-"), v.trim()))
            })
            .collect();
        let resp = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\n{seen}{}Content-Length: {}\r\n\r\n{body}",
            reply.status,
            match reply.status {
                200 => "OK",
                503 => "Service Unavailable",
                _ => "Answer",
            },
            reply.extra,
            body.len()
        );
        if conn.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_fixed_body() {
        let r = parse_response(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok").unwrap();
        assert_eq!((r.status, r.body.as_str()), (201, "ok"));
        assert_eq!(r.header("x-a"), Some("b"));
    }

    #[test]
    fn decodes_a_chunked_body_whatever_the_case() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, "abcde");
    }

    #[test]
    fn refuses_an_incomplete_head() {
        let e = parse_response(b"HTTP/1.1 200 OK\r\n").unwrap_err();
        assert!(e.contains("without a complete head"), "{e}");
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }
}
