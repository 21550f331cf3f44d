//! A small HTTP/1.1 client: one request per connection (`Connection: close`), a fixed
//! or chunked body, and a deadline. A server may answer before it has read the whole
//! body (413): a failed write still reads the answer.
//!
//! Hand-written on purpose, where the other tests use reqwest (`roost_testkit::http`):
//! the gate's tests need the exact bytes on the wire (chunks of 1000 bytes, no
//! Content-Length on a bodiless request), the answer to a body the gate refuses half-way
//! (a client library reports the broken write instead), and a request left open, unread,
//! whose client then hangs up ([`send_and_keep`]).

pub(crate) use roost_testkit::http::find;
pub use roost_testkit::http::parse_response;
use roost_testkit::http::Response;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request body.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// No body (and no Content-Length).
    None,
    /// With Content-Length.
    Fixed(&'a [u8]),
    /// With Transfer-Encoding: chunked, in chunks of at most 1000 bytes.
    Chunked(&'a [u8]),
}

/// How long one request may take.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// GET `path` from 127.0.0.1:`port`.
pub async fn get(port: u16, path: &str) -> Result<Response, String> {
    request(port, "GET", path, &[], Body::None).await
}

/// Sends one request and reads the whole answer.
pub async fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: Body<'_>) -> Result<Response, String> {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
        match body {
            Body::None => {}
            Body::Fixed(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
            Body::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n"),
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        match body {
            Body::None => {}
            Body::Fixed(b) => out.extend_from_slice(b),
            Body::Chunked(b) => {
                for chunk in b.chunks(1000) {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
        }
        // The server may refuse the body and close early; its answer is still there.
        let _ = s.write_all(&out).await;
        let mut buf = Vec::new();
        let read = s.read_to_end(&mut buf).await;
        if buf.is_empty() {
            return Err(format!("{method} {path}: no answer ({read:?})"));
        }
        parse_response(&buf)
    };
    tokio::time::timeout(DEADLINE, fut).await.map_err(|_| format!("{method} {path} on port {port}: no answer in {DEADLINE:?}"))?
}

/// Opens a connection and sends a GET without reading the answer: a client that will
/// hang up (drop the stream) while the gate holds its request.
pub async fn send_and_keep(port: u16, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.expect("connect to the gate");
    let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("send a request to the gate");
    s
}

/// An answer to [`raw`], its body as bytes (not made valid UTF-8 on the way).
#[derive(Debug)]
pub struct RawAnswer {
    /// The status; `None` for an HTTP/0.9 answer (the body alone, no status line).
    pub status: Option<u16>,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// The first header with this (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Writes `bytes` as they are (a request line and headers no client library would send)
/// and reads the whole answer, until the server closes (or [`DEADLINE`]). `Err` when
/// the connection is dropped without an answer.
pub async fn raw(port: u16, bytes: &[u8]) -> Result<RawAnswer, String> {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
        // The server may answer (and close) before it has read everything.
        let _ = s.write_all(bytes).await;
        let mut buf = Vec::new();
        let read = s.read_to_end(&mut buf).await;
        if buf.is_empty() {
            return Err(format!("no answer ({read:?})"));
        }
        if !buf.starts_with(b"HTTP/") {
            return Ok(RawAnswer { status: None, headers: Vec::new(), body: buf });
        }
        let end = find(&buf, b"\r\n\r\n").ok_or_else(|| format!("answer without a complete head: {:?}", String::from_utf8_lossy(&buf)))?;
        // The head through parse_response; the body from the raw bytes.
        let head = parse_response(&buf[..end + 4])?;
        let raw_body = &buf[end + 4..];
        let chunked = head.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let body = if chunked { dechunk(raw_body)? } else { raw_body.to_vec() };
        Ok(RawAnswer { status: Some(head.status), headers: head.headers, body })
    };
    tokio::time::timeout(DEADLINE, fut).await.map_err(|_| format!("no answer on port {port} in {DEADLINE:?}"))?
}

/// A chunked body, strictly: a broken framing is an error, not a shorter body.
fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = find(raw, b"\r\n").ok_or("a chunk size without its line end")?;
        let size_text = std::str::from_utf8(&raw[..eol]).map_err(|_| "a chunk size that is not text")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("a bad chunk size {size_text:?}"))?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 || &raw[size..size + 2] != b"\r\n" {
            return Err(format!("a chunk of {size} bytes cut short"));
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// The body of an answer as JSON, or a panic that shows it.
pub fn json(r: &Response) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("the body of a {} answer is not JSON ({e}): {:?}", r.status, r.body))
}

/// `X-Roost-Cold-Start` in milliseconds: `None` for `none`; panics on anything else.
pub fn cold_start_ms(r: &Response) -> Option<u64> {
    let v = r.header("x-roost-cold-start").unwrap_or_else(|| panic!("no X-Roost-Cold-Start in a {} answer: {:?}", r.status, r.headers));
    if v == "none" {
        return None;
    }
    Some(
        v.strip_suffix("ms")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("X-Roost-Cold-Start is neither `none` nor `<n>ms`: {v:?}")),
    )
}
