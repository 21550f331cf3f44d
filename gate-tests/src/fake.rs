//! Stand-ins for Envoy and the orchestrator, so the gate is tested on its own.

use crate::client::find;
use crate::redis_util;
use futures::StreamExt;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the fake Envoy answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200 with JSON `{"path", "request_id", "body_len"}`, stamped with
    /// `x-envoy-upstream-service-time` as Envoy's router does.
    Ok,
    /// Envoy's own 503 when a cluster has no endpoint left: `no healthy upstream`, no
    /// `x-envoy-upstream-service-time`.
    NoHealthyUpstream,
    /// A function's own 503, passed through Envoy's router (so stamped), with
    /// `Retry-After: 7`.
    FunctionUnavailable,
    /// Envoy's 503 when its queue overflows (`x-envoy-overloaded`).
    Overloaded,
    /// Reads the whole request (recorded as seen: delivered), then resets the connection
    /// (RST, no answer): Envoy dying while it has the request.
    ResetAfterBody,
}

/// A request the fake Envoy received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The method.
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: Instant,
}

impl Seen {
    /// The first header with this (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct EnvoyState {
    script: VecDeque<Answer>,
    seen: Vec<Seen>,
    /// The tasks serving connections, aborted (their connections closed) by `stop`.
    conns: Vec<tokio::task::AbortHandle>,
    /// How long each request takes before it is answered (a function at work).
    delay: Duration,
    /// Requests received and not answered yet, and the most there were at once.
    active: usize,
    max_active: usize,
}

/// An HTTP/1.1 server (keep-alive) in Envoy's place. It answers [`Answer::Ok`] unless
/// told otherwise with [`FakeEnvoy::then_answer`]. [`FakeEnvoy::stop`] takes it down
/// (its port refuses connections) and [`FakeEnvoy::start_on`] brings one up on the same port.
pub struct FakeEnvoy {
    /// The loopback address it listens on (127.0.0.1 unless started with [`FakeEnvoy::start_at`]).
    pub ip: std::net::Ipv4Addr,
    /// Its port.
    pub port: u16,
    state: Arc<Mutex<EnvoyState>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeEnvoy {
    /// Starts on a free port.
    pub async fn start() -> FakeEnvoy {
        Self::start_on(0).await
    }

    /// Starts on 127.0.0.1:`port` (0: a free one), e.g. the port of one that was stopped.
    pub async fn start_on(port: u16) -> FakeEnvoy {
        Self::start_at(std::net::Ipv4Addr::LOCALHOST, port).await
    }

    /// Starts on `ip`:`port` (0: a free one): another loopback address (127.0.0.2, ...)
    /// stands for another Envoy, e.g. one behind the same host name.
    pub async fn start_at(ip: std::net::Ipv4Addr, port: u16) -> FakeEnvoy {
        let listener = TcpListener::bind((ip, port)).await.unwrap_or_else(|e| panic!("bind the fake Envoy on {ip}:{port}: {e}"));
        let port = listener.local_addr().expect("fake Envoy address").port();
        let state = Arc::new(Mutex::new(EnvoyState::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let handle = tokio::spawn(serve(conn, st.clone()));
                st.lock().unwrap().conns.push(handle.abort_handle());
            }
        });
        FakeEnvoy { ip, port, state, task }
    }

    /// Goes down as a killed Envoy does: every open connection is closed, and once this
    /// returns the port refuses connections.
    pub async fn stop(&self) {
        self.abort_all();
        let (ip, port) = (self.ip, self.port);
        crate::bounded(Duration::from_secs(5), "the fake Envoy's port to refuse connections", async move {
            while TcpStream::connect((ip, port)).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    fn abort_all(&self) {
        self.task.abort();
        for c in self.state.lock().unwrap().conns.drain(..) {
            c.abort();
        }
    }

    /// `<ip>:<port>`, for `ROOST_ENVOY_ADDR`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// The next requests get these answers, in order (then [`Answer::Ok`] again).
    pub fn then_answer(&self, answers: &[Answer]) {
        self.state.lock().unwrap().script.extend(answers.iter().copied());
    }

    /// Each request from now on is answered only after `delay` (a function at work).
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// The most requests this fake had received and not yet answered at one time.
    pub fn max_in_progress(&self) -> usize {
        self.state.lock().unwrap().max_active
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// How many requests arrived.
    pub fn hits(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }
}

impl Drop for FakeEnvoy {
    fn drop(&mut self) {
        self.abort_all();
    }
}

async fn serve(mut conn: TcpStream, state: Arc<Mutex<EnvoyState>>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            if !read_more(&mut conn, &mut buf).await {
                return;
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_string();
        let path = request_line.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> =
            lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
        let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        while buf.len() < end + 4 + len {
            if !read_more(&mut conn, &mut buf).await {
                return;
            }
        }
        let body = buf[end + 4..end + 4 + len].to_vec();
        buf.drain(..end + 4 + len);
        let request_id = headers.iter().find(|(k, _)| k == "x-request-id").map(|(_, v)| v.clone()).unwrap_or_default();
        let (answer, delay) = {
            let mut st = state.lock().unwrap();
            st.seen.push(Seen { method, path: path.clone(), headers, body: body.clone(), at: Instant::now() });
            st.active += 1;
            st.max_active = st.max_active.max(st.active);
            (st.script.pop_front().unwrap_or(Answer::Ok), st.delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        state.lock().unwrap().active -= 1;
        if answer == Answer::ResetAfterBody {
            // SO_LINGER 0: close sends RST, not FIN.
            let _ = conn.set_zero_linger();
            return;
        }
        let (status, extra, body) = match answer {
            Answer::Ok => (
                "200 OK",
                "content-type: application/json\r\nx-envoy-upstream-service-time: 1\r\n",
                serde_json::json!({"path": path, "request_id": request_id, "body_len": body.len()}).to_string(),
            ),
            Answer::NoHealthyUpstream => ("503 Service Unavailable", "content-type: text/plain\r\n", "no healthy upstream".to_string()),
            Answer::FunctionUnavailable => (
                "503 Service Unavailable",
                "content-type: application/json\r\nx-envoy-upstream-service-time: 2\r\nretry-after: 7\r\n",
                r#"{"busy":true}"#.to_string(),
            ),
            Answer::Overloaded => (
                "503 Service Unavailable",
                "content-type: text/plain\r\nx-envoy-overloaded: true\r\n",
                "upstream connect error or disconnect/reset before headers. reset reason: overflow".to_string(),
            ),
            Answer::ResetAfterBody => unreachable!("answered above"),
        };
        let resp = format!("HTTP/1.1 {status}\r\n{extra}server: envoy\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        if conn.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16384];
    match conn.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// What the fake orchestrator does with a wake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// After the delay: `SET roost:fn:<f>:ready 1`, `DEL roost:fn:<f>:waking`, and
    /// `PUBLISH roost:ready {"function":"<f>","ready":true}` (the real contract).
    Answer,
    /// Only counts the wakes.
    Mute,
    /// Sets the ready key and deletes the lock but publishes nothing: a lost notice.
    ReadyWithoutNotice,
}

/// The orchestrator's side of the Redis contract, for tests of the gate.
pub struct FakeOrchestrator {
    wakes: Arc<Mutex<Vec<(Instant, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeOrchestrator {
    /// Subscribes to `roost:wake` on the Redis at `redis_port` and returns once
    /// subscribed.
    pub async fn start(redis_port: u16, delay: Duration, behaviour: Behaviour) -> FakeOrchestrator {
        let mut probe = redis_util::connect(redis_port).await;
        let before = redis_util::subscribers(&mut probe, "roost:wake").await;
        let conn = redis_util::connect(redis_port).await;
        let client = redis::Client::open(format!("redis://127.0.0.1:{redis_port}/")).expect("a Redis URL");
        let mut pubsub = client.get_async_pubsub().await.expect("a Redis pub/sub connection");
        pubsub.subscribe("roost:wake").await.expect("SUBSCRIBE roost:wake");
        let wakes = Arc::new(Mutex::new(Vec::new()));
        let w = wakes.clone();
        let task = tokio::spawn(async move {
            let mut messages = pubsub.on_message();
            while let Some(m) = messages.next().await {
                let f: String = m.get_payload().expect("a function name on roost:wake");
                w.lock().unwrap().push((Instant::now(), f.clone()));
                if behaviour == Behaviour::Mute {
                    continue;
                }
                let mut c = conn.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if behaviour == Behaviour::Answer {
                        redis_util::mark_ready(&mut c, &f).await;
                    } else {
                        redis_util::cmd(&mut c, &["SET", &format!("roost:fn:{f}:ready"), "1"]).await;
                        redis_util::cmd(&mut c, &["DEL", &format!("roost:fn:{f}:waking")]).await;
                    }
                });
            }
        });
        roost_testkit::wait_until(Duration::from_secs(10), "the fake orchestrator's subscription", || {
            let mut probe = probe.clone();
            async move { (redis_util::subscribers(&mut probe, "roost:wake").await > before).then_some(()) }
        })
        .await;
        FakeOrchestrator { wakes, task }
    }

    /// Every wake heard: when, and which function.
    pub fn wakes(&self) -> Vec<(Instant, String)> {
        self.wakes.lock().unwrap().clone()
    }

    /// How many wakes were heard.
    pub fn wake_count(&self) -> usize {
        self.wakes.lock().unwrap().len()
    }
}

impl Drop for FakeOrchestrator {
    fn drop(&mut self) {
        self.task.abort();
    }
}
