//! The orchestrator's HTTP/JSON API: `/status` (functions, replicas, states, the
//! definitions file's problems), `POST /functions/{name}/wake` (answers once the
//! function is ready, with the cold start's phases), `GET /functions/{name}/logs` (the
//! function's output as NDJSON, optionally followed), and `/healthz` (ready only when
//! Redis answers and the supervisor runs). Bodies are [`roost_common::wire::status`]'s
//! and [`roost_common::wire::logs`]'s.

use crate::function::WakeError;
use crate::logs::Logs;
use crate::redis_io::RedisIo;
use crate::supervisor::Request;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use roost_common::clock::now_ms;
use roost_common::wire::logs::{LogLine, LogQuery, NOTICE_SOURCE};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// What `/healthz` checks.
#[derive(Debug, Default)]
pub struct Health {
    /// The supervisor serves requests.
    pub supervisor: Arc<AtomicBool>,
    /// Redis, once connected.
    pub redis: OnceLock<RedisIo>,
}

/// What the API's handlers (and the management API's, [`crate::system`]) share.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    pub(crate) tx: mpsc::Sender<Request>,
    health: Arc<Health>,
    pub(crate) logs: Logs,
    /// Ends followed log answers, so a graceful shutdown does not wait on them.
    shutdown: CancellationToken,
    /// The management API's store and limits.
    pub(crate) deploys: Arc<crate::shared::Deploys>,
}

impl Api {
    /// The handlers' state: requests go to the supervisor through `tx`, logs are read from
    /// `logs`, and `shutdown` ends the answers that follow a log.
    pub(crate) fn new(
        tx: mpsc::Sender<Request>,
        health: Arc<Health>,
        logs: Logs,
        shutdown: CancellationToken,
        deploys: Arc<crate::shared::Deploys>,
    ) -> Api {
        Api { tx, health, logs, shutdown, deploys }
    }
}

/// The API's routes (for Roost's own parts, behind the control token).
pub(crate) fn router(api: Api) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/functions/{name}/wake", post(wake))
        .route("/functions/{name}/logs", get(function_logs))
        .with_state(api)
}

pub(crate) use crate::shared::error;

pub(crate) fn unavailable() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "the orchestrator is starting or shutting down; retry")
}

/// The body of a healthy `/healthz`.
#[derive(Debug, serde::Serialize)]
struct Healthy {
    status: &'static str,
}

async fn healthz(State(api): State<Api>) -> Response {
    if !api.health.supervisor.load(Ordering::Acquire) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the supervisor is not running yet (adopting replicas) or is stopping");
    }
    let Some(redis) = api.health.redis.get() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "Redis is not reachable yet");
    };
    match tokio::time::timeout(Duration::from_secs(1), redis.ping()).await {
        Ok(Ok(())) => Json(Healthy { status: "ok" }).into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, format!("Redis does not answer: {e}")),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "Redis did not answer PING within 1 s"),
    }
}

async fn status(State(api): State<Api>) -> Response {
    let (reply, rx) = oneshot::channel();
    if api.tx.try_send(Request::Status(reply)).is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(s) => Json(s).into_response(),
        Err(_) => unavailable(),
    }
}

async fn wake(State(api): State<Api>, Path(name): Path<String>) -> Response {
    let (reply, rx) = oneshot::channel();
    if api.tx.try_send(Request::Wake(name, reply)).is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e @ WakeError::Unknown(_))) => error(StatusCode::NOT_FOUND, e.to_string()),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(_) => unavailable(),
    }
}

/// The content type of a log answer: one JSON [`LogLine`] per line.
pub const NDJSON: &str = "application/x-ndjson";

/// Whether `name` is a function the supervisor knows (declared in the definitions);
/// `None` when the supervisor does not answer.
async fn declared(api: &Api, name: &str) -> Option<bool> {
    let (reply, rx) = oneshot::channel();
    api.tx.try_send(Request::Status(reply)).ok()?;
    rx.await.ok().map(|s| s.function(name).is_some())
}

pub(crate) async fn function_logs(State(api): State<Api>, Path(name): Path<String>, Query(q): Query<LogQuery>) -> Response {
    // Subscribed before the kept lines are read, so no line falls between the two.
    let rx = q.follow.then(|| api.logs.subscribe());
    let subscribed_ms = now_ms();
    let kept = api.logs.lines(&name, q.since_ms, q.tail);
    if kept.is_empty() {
        match declared(&api, &name).await {
            Some(true) => {}
            Some(false) => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no function {name:?}: it is not in the definitions and has written nothing; `roost ls` lists the functions"),
                )
            }
            None => return unavailable(),
        }
    }
    let mut body = Vec::new();
    for line in &kept {
        push_json(&mut body, line);
    }
    let head = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(Bytes::from(body)) });
    let stream: Body = match rx {
        None => Body::from_stream(head),
        Some(rx) => {
            let follower = Follower::new(rx, name, &kept, subscribed_ms, api.shutdown.clone());
            let rest = futures::stream::unfold(follower, |mut f| async move { f.next().await.map(|b| (Ok(b), f)) });
            Body::from_stream(futures::StreamExt::chain(head, rest))
        }
    };
    ([(header::CONTENT_TYPE, NDJSON)], stream).into_response()
}

/// Appends `line` as one JSON line.
fn push_json(buf: &mut Vec<u8>, line: &LogLine) {
    serde_json::to_writer(&mut *buf, line).expect("a log line serializes");
    buf.push(b'\n');
}

/// How far back a kept line may have been stamped and still be broadcast after a
/// follower subscribed (stamped before the store's lock, sent after it).
const OVERLAP_MS: u64 = 1000;

/// The lines a followed answer sends after the kept ones: new lines of one function from
/// the store's broadcast, without those already sent as kept, until the broadcast closes
/// or the orchestrator shuts down (the client going away drops it).
struct Follower {
    rx: broadcast::Receiver<(String, LogLine)>,
    function: String,
    /// Kept lines stamped near the subscription, which the broadcast may bring again.
    sent: Vec<LogLine>,
    shutdown: CancellationToken,
}

impl Follower {
    fn new(
        rx: broadcast::Receiver<(String, LogLine)>,
        function: String,
        kept: &[LogLine],
        subscribed_ms: u64,
        shutdown: CancellationToken,
    ) -> Follower {
        let sent = kept.iter().filter(|l| l.time_ms + OVERLAP_MS >= subscribed_ms).cloned().collect();
        Follower { rx, function, sent, shutdown }
    }

    /// The next chunk to send: a new line, or a notice that lines were skipped; `None`
    /// at the end.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            let received = tokio::select! {
                // Shutdown first: a busy log must not keep the answer open.
                biased;
                _ = self.shutdown.cancelled() => return None,
                r = self.rx.recv() => r,
            };
            let line = match received {
                Ok((function, line)) if function == self.function => {
                    if let Some(i) = self.sent.iter().position(|s| *s == line) {
                        self.sent.swap_remove(i);
                        continue;
                    }
                    line
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => LogLine {
                    time_ms: now_ms(),
                    replica: NOTICE_SOURCE.to_string(),
                    line: format!("[{n} lines skipped: this follower fell behind the orchestrator's log; `roost logs` without --follow shows the kept lines]"),
                },
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            let mut buf = Vec::new();
            push_json(&mut buf, &line);
            return Some(Bytes::from(buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_common::auth::ControlToken;
    use roost_common::wire::status::{FunctionState, FunctionStatus, Status};

    const WAIT: Duration = Duration::from_secs(10);

    /// The API on a port of its own, with a supervisor that declares `declared`.
    struct Served {
        base: String,
        logs: Logs,
        shutdown: CancellationToken,
        server: tokio::task::JoinHandle<()>,
        supervisor: tokio::task::JoinHandle<()>,
    }

    impl Served {
        async fn start(logs: Logs, declared: &'static [&'static str]) -> Served {
            Served::start_guarded(logs, declared, None).await
        }

        /// [`Served::start`] behind the control token, as `lib.rs` serves it.
        async fn start_guarded(logs: Logs, declared: &'static [&'static str], token: Option<ControlToken>) -> Served {
            let (tx, mut rx) = mpsc::channel::<Request>(8);
            let supervisor = tokio::spawn(async move {
                while let Some(r) = rx.recv().await {
                    if let Request::Status(reply) = r {
                        let functions = declared.iter().map(|name| function(name)).collect();
                        let _ = reply.send(Status {
                            runtime: "test".into(),
                            definitions: "defs.yml".into(),
                            definitions_error: None,
                            functions,
                            deployed: Vec::new(),
                        });
                    }
                }
            });
            let shutdown = CancellationToken::new();
            let api = Api::new(tx, Arc::default(), logs.clone(), shutdown.clone(), crate::shared::deploys(None, 1024, None, None));
            let app = roost_common::auth::guard(router(api), token, "orchestrator");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let server = tokio::spawn({
                let stop = shutdown.clone();
                async move {
                    axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await.unwrap();
                }
            });
            Served { base, logs, shutdown, server, supervisor }
        }

        async fn get(&self, path: &str) -> reqwest::Response {
            reqwest::get(format!("{}{path}", self.base)).await.unwrap()
        }
    }

    #[tokio::test]
    async fn with_a_token_every_route_but_healthz_wants_it() {
        let token = ControlToken::new("0123456789abcdef0123").unwrap();
        let api = Served::start_guarded(Logs::default(), &["f"], Some(token.clone())).await;
        let http = reqwest::Client::new();
        for (method, path) in [("GET", "/status"), ("POST", "/functions/f/wake"), ("GET", "/functions/f/logs")] {
            let r = http.request(method.parse().unwrap(), format!("{}{path}", api.base)).send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path}");
            let body: serde_json::Value = r.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains("missing Authorization: Bearer"), "{body}");
        }
        let wrong = http.get(format!("{}/status", api.base)).bearer_auth("0123456789abcdef0124").send().await.unwrap();
        assert_eq!(wrong.status(), 401);
        let body: serde_json::Value = wrong.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("not this platform's control token"), "{body}");
        assert_ne!(api.get("/healthz").await.status(), 401, "liveness is open");
        let ok = http.get(format!("{}/status", api.base)).headers(token.headers()).send().await.unwrap();
        assert_eq!(ok.status(), 200);
        let logs = http.get(format!("{}/functions/f/logs", api.base)).headers(token.headers()).send().await.unwrap();
        assert_eq!(logs.status(), 200);
        api.shutdown.cancel();
    }

    fn function(name: &str) -> FunctionStatus {
        FunctionStatus::empty(name, FunctionState::Sleeping)
    }

    fn parse(body: &str) -> Vec<LogLine> {
        body.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not a LogLine: {e}"))).collect()
    }

    /// Reads a streamed answer until it holds `n` lines.
    async fn read_lines(r: &mut reqwest::Response, buf: &mut String, n: usize) -> Vec<LogLine> {
        tokio::time::timeout(WAIT, async {
            while buf.lines().count() < n {
                let chunk = r.chunk().await.unwrap().expect("the followed answer stays open");
                buf.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .expect("the lines come");
        parse(buf)
    }

    #[tokio::test]
    async fn kept_lines_as_ndjson_oldest_first_with_tail_and_since() {
        let logs = Logs::default();
        for i in 0..5 {
            logs.push("f", "f-1", &format!("line {i}"));
        }
        logs.push("g", "g-1", "not f's");
        let api = Served::start(logs, &["f"]).await;
        let r = api.get("/functions/f/logs").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CONTENT_TYPE], NDJSON);
        let lines = parse(&r.text().await.unwrap());
        assert_eq!(lines.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(), ["line 0", "line 1", "line 2", "line 3", "line 4"]);
        assert!(lines.iter().all(|l| l.replica == "f-1"));

        let tail = parse(&api.get("/functions/f/logs?tail=2").await.text().await.unwrap());
        assert_eq!(tail.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(), ["line 3", "line 4"]);
        let future = parse(&api.get(&format!("/functions/f/logs?since_ms={}", now_ms() + 60_000)).await.text().await.unwrap());
        assert!(future.is_empty());
        api.shutdown.cancel();
    }

    #[tokio::test]
    async fn an_unknown_function_is_a_404_and_a_declared_silent_one_is_empty() {
        let api = Served::start(Logs::default(), &["quiet"]).await;
        let r = api.get("/functions/nope/logs").await;
        assert_eq!(r.status(), 404);
        let e: roost_common::wire::status::ApiError = r.json().await.unwrap();
        assert!(e.error.contains("\"nope\"") && e.error.contains("roost ls"), "{}", e.error);
        let r = api.get("/functions/quiet/logs").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "");
        let r = api.get("/functions/quiet/logs?tail=abc").await;
        assert_eq!(r.status(), 400, "a bad query is refused");
        api.shutdown.cancel();
    }

    #[tokio::test]
    async fn follow_sends_kept_lines_then_new_ones_and_ends_on_shutdown() {
        let logs = Logs::default();
        logs.push("f", "f-1", "before");
        let api = Served::start(logs, &["f"]).await;
        let mut r = api.get("/functions/f/logs?follow=true").await;
        assert_eq!(r.status(), 200);
        let mut buf = String::new();
        assert_eq!(read_lines(&mut r, &mut buf, 1).await[0].line, "before");
        // Pushed after the answer began: it follows, another function's line does not.
        api.logs.push("g", "g-1", "not f's");
        api.logs.push("f", "f-2", "after");
        let lines = read_lines(&mut r, &mut buf, 2).await;
        assert_eq!((lines[1].replica.as_str(), lines[1].line.as_str()), ("f-2", "after"));
        // Shutdown ends the followed answer, and the server with it.
        api.shutdown.cancel();
        let end = tokio::time::timeout(WAIT, r.chunk()).await.expect("the answer ends on shutdown");
        assert!(matches!(end, Ok(None)), "{end:?}");
        tokio::time::timeout(WAIT, api.server).await.expect("graceful shutdown does not wait on followers").unwrap();
        api.supervisor.abort();
    }

    #[tokio::test]
    async fn a_follower_that_goes_away_is_dropped() {
        let logs = Logs::default();
        logs.push("f", "f-1", "before");
        let api = Served::start(logs, &["f"]).await;
        let mut r = api.get("/functions/f/logs?follow=true").await;
        let mut buf = String::new();
        read_lines(&mut r, &mut buf, 1).await;
        assert_eq!(api.logs.followers(), 1);
        drop(r);
        // Gone while no line comes: the server notices the closed connection.
        tokio::time::timeout(WAIT, async {
            while api.logs.followers() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the follower is dropped once its client has gone");
        api.shutdown.cancel();
    }

    #[tokio::test]
    async fn a_lagging_follower_is_told_and_carries_on() {
        let logs = Logs::default();
        let rx = logs.subscribe();
        let shutdown = CancellationToken::new();
        let mut follower = Follower::new(rx, "f".into(), &[], now_ms(), shutdown.clone());
        // More than the broadcast holds (1024) before the follower reads one.
        for i in 0..1100 {
            logs.push("f", "f-1", &format!("line {i}"));
        }
        let next = |b: Bytes| serde_json::from_slice::<LogLine>(&b).unwrap();
        let notice = next(follower.next().await.unwrap());
        assert_eq!(notice.replica, NOTICE_SOURCE);
        assert!(notice.line.contains("76 lines skipped"), "{}", notice.line);
        assert_eq!(next(follower.next().await.unwrap()).line, "line 76", "the oldest still held follows");
        shutdown.cancel();
        assert!(follower.next().await.is_none());
    }

    #[tokio::test]
    async fn a_kept_line_broadcast_after_the_subscription_is_sent_once() {
        let logs = Logs::default();
        let rx = logs.subscribe();
        logs.push("f", "f-1", "both kept and broadcast");
        let kept = logs.lines("f", None, None);
        logs.push("f", "f-1", "new");
        let mut follower = Follower::new(rx, "f".into(), &kept, now_ms(), CancellationToken::new());
        let line: LogLine = serde_json::from_slice(&follower.next().await.unwrap()).unwrap();
        assert_eq!(line.line, "new");
    }
}
