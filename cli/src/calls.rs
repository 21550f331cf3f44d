//! Asynchronous calls: `roost invoke NAME --async` (submits to `/async/NAME` on the
//! platform's port and prints the call's id; with `--wait`, polls `/async/calls/<id>` and
//! prints the function's answer), `roost calls` (the newest calls, or the failed ones,
//! from the management API, with the API token) and `roost calls ID` (one call's record).

use crate::client::{self, causes, Endpoints};
use crate::manage;
use roost_common::naming::validate_function_name;
use roost_common::wire::calls::{
    Accepted, CallList, CallRecord, CallState, CallbackState, CALLBACK_HEADER, IDEMPOTENCY_HEADER, LIST_PATH, MAX_IDEMPOTENCY_KEY,
    STATUS_PREFIX, SUBMIT_PREFIX,
};
use roost_common::wire::status::ApiError;
use roost_common::wire::system::PREFIX;
use std::io::Write;
use std::time::{Duration, Instant};

/// How often `--wait` asks for the call's record.
pub const POLL_EVERY: Duration = Duration::from_millis(200);
/// `--wait`'s deadline when `--timeout` is not given.
pub const DEFAULT_TIMEOUT: &str = "120s";
/// The longest error shown in a table row.
const ERROR_CHARS: usize = 80;

/// What `roost invoke NAME --async` was asked for.
#[derive(Debug, Clone, Default)]
pub struct Submit {
    /// The function.
    pub function: String,
    /// A JSON body (else an empty one; the call is a POST either way).
    pub data: Option<String>,
    /// Path and query after the function's name.
    pub path: String,
    /// Send the API token (a function with `auth: token` wants it).
    pub auth: bool,
    /// `X-Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// `X-Callback-Url`.
    pub callback: Option<String>,
    /// Wait for the call's end, at most this long, and print its answer.
    pub wait: Option<Duration>,
    /// Print JSON: the `Accepted` answer, or with `wait` the call's record.
    pub json: bool,
}

/// What `roost calls` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRequest {
    /// Only this function's calls.
    pub function: Option<String>,
    /// Only failed calls.
    pub failed: bool,
    /// At most this many (1 to 1000).
    pub limit: u32,
    /// Print the answer's JSON.
    pub json: bool,
}

/// `--timeout`: a duration (`30s`, `2m`, `500ms`; a bare number is seconds), not zero.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    roost_common::spec::parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?} is not a duration above zero (500ms, 30s, 2m)"))
}

/// `--callback`: an absolute http:// or https:// URL.
pub fn parse_callback(s: &str) -> Result<String, String> {
    match reqwest::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(s.to_string()),
        Ok(_) => Err(format!("{s:?} is not an http:// or https:// URL")),
        Err(e) => Err(format!("{s:?} is not a URL: {e}")),
    }
}

/// `--idempotency-key`: 1 to 200 visible ASCII characters, no spaces (as the platform takes it).
pub fn parse_idempotency_key(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_IDEMPOTENCY_KEY {
        return Err(format!("an idempotency key has 1 to {MAX_IDEMPOTENCY_KEY} characters; this one has {}", s.len()));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("an idempotency key is visible ASCII characters without spaces".into());
    }
    Ok(s.to_string())
}

/// A call's id as `roost calls ID` takes it: letters, digits, `-` and `_`.
pub fn parse_call_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 200 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("{s:?} is not a call's id (as `roost invoke --async` prints it: letters, digits, '-' and '_')"));
    }
    Ok(s.to_string())
}

/// `--function`: a valid function name.
pub fn parse_function(s: &str) -> Result<String, String> {
    validate_function_name(s).map(|()| s.to_string()).map_err(|e| e.to_string())
}

/// Where a call of `function` is submitted, relative to the platform's URL.
pub fn submit_path(function: &str, path: &str) -> String {
    format!("{SUBMIT_PREFIX}/{function}{path}")
}

/// Where call `id`'s record is read, relative to the platform's URL.
pub fn status_path(id: &str) -> String {
    format!("{STATUS_PREFIX}/{id}")
}

/// The list's path under the management API's prefix, and its query.
pub fn list_request(r: &ListRequest) -> (&'static str, Vec<(&'static str, String)>) {
    let path = LIST_PATH.strip_prefix(PREFIX).expect("the list is a management API path");
    let mut query = Vec::new();
    if let Some(f) = &r.function {
        query.push(("function", f.clone()));
    }
    if r.failed {
        query.push(("failed", "true".to_string()));
    }
    query.push(("limit", r.limit.to_string()));
    (path, query)
}

/// How long ago, in its largest whole unit: `12s`, `5m`, `3h`, `2d`.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3_599 => format!("{}m", s / 60),
        3_600..=86_399 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The state's name, as the JSON spells it.
pub fn state_name(state: CallState) -> &'static str {
    match state {
        CallState::Queued => "queued",
        CallState::Running => "running",
        CallState::Done => "done",
        CallState::Failed => "failed",
    }
}

/// The state with what it waits for: `queued, retry in 4s`.
fn state_label(c: &CallRecord, now_ms: u64) -> String {
    match c.next_attempt_ms.filter(|at| c.state == CallState::Queued && *at > now_ms) {
        Some(at) => format!("queued, retry in {}s", (at - now_ms).div_ceil(1000)),
        None => state_name(c.state).to_string(),
    }
}

/// An error's first line, at most [`ERROR_CHARS`] characters.
fn short(error: Option<&str>) -> String {
    let line = error.and_then(|e| e.lines().next()).unwrap_or("");
    if line.chars().count() <= ERROR_CHARS {
        return line.to_string();
    }
    let cut: String = line.chars().take(ERROR_CHARS - 1).collect();
    format!("{cut}…")
}

/// `roost calls` as a table: id, function, state, attempts, age and last error.
pub fn table(calls: &[CallRecord], now_ms: u64) -> String {
    let rows: Vec<[String; 6]> = calls
        .iter()
        .map(|c| {
            [
                c.id.clone(),
                c.function.clone(),
                state_label(c, now_ms),
                c.attempts.to_string(),
                age(now_ms.saturating_sub(c.created_ms)),
                short(c.last_error.as_deref()),
            ]
        })
        .collect();
    let header = ["ID", "FUNCTION", "STATE", "ATTEMPTS", "AGE", "LAST ERROR"].map(str::to_string);
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).chain([header[i].len()]).max().unwrap_or(0);
    let widths = [width(0), width(1), width(2), width(3), width(4)];
    let line = |r: &[String; 6]| {
        let [w0, w1, w2, w3, w4] = widths;
        let text = format!("{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {:>w4$}  {}", r[0], r[1], r[2], r[3], r[4], r[5]);
        format!("{}\n", text.trim_end())
    };
    std::iter::once(&header).chain(&rows).map(line).collect()
}

/// A callback's state in words.
fn callback_label(state: &CallbackState) -> String {
    match state {
        CallbackState::Pending { attempts, last_error: None } => format!("pending, {attempts} attempt(s)"),
        CallbackState::Pending { attempts, last_error: Some(e) } => format!("pending, {attempts} attempt(s), last: {e}"),
        CallbackState::Delivered { attempts } => format!("delivered after {attempts} attempt(s)"),
        CallbackState::Failed { attempts, last_error } => format!("failed after {attempts} attempt(s): {last_error}"),
    }
}

/// One call's record as text (`roost calls ID`).
pub fn describe(c: &CallRecord, now_ms: u64) -> String {
    let when = |ms: u64| format!("{} ({} ago)", crate::logs::format_time(ms), age(now_ms.saturating_sub(ms)));
    let mut fields = vec![
        ("id", c.id.clone()),
        ("function", c.function.clone()),
        ("state", state_label(c, now_ms)),
        ("attempts", c.attempts.to_string()),
        ("created", when(c.created_ms)),
        ("updated", when(c.updated_ms)),
    ];
    if let Some(at) = c.next_attempt_ms {
        fields.push(("next try", crate::logs::format_time(at)));
    }
    if let Some(e) = &c.last_error {
        fields.push(("last error", e.clone()));
    }
    if let Some(cb) = &c.callback {
        fields.push(("callback", format!("{} ({})", cb.url, callback_label(&cb.state))));
    }
    if let Some(r) = &c.result {
        let text = if r.body.is_some() { "" } else { ", not text (--json shows them in base64)" };
        fields.push(("answer", format!("HTTP {}, {} bytes{text}", r.status, r.body_bytes().len())));
    }
    let mut out: String = fields.into_iter().map(|(label, value)| format!("{:<12}{value}\n", format!("{label}:"))).collect();
    if let Some(body) = c.result.as_ref().and_then(|r| r.body.as_deref()) {
        out += body;
        out += "\n";
    }
    out
}

/// The request to read call `id` (open: the id is the secret, and no function sees it).
fn status_request(e: &Endpoints, client: &reqwest::Client, id: &str) -> reqwest::RequestBuilder {
    client.get(format!("{}{}", e.gate, status_path(id)))
}

fn api_token<'a>(e: &'a Endpoints, flag: &str) -> anyhow::Result<&'a str> {
    e.api_token
        .as_ref()
        .map(|t| t.expose())
        .ok_or_else(|| anyhow::anyhow!("{flag} needs the API token: give it with --api-token or {}", roost_common::env::API_TOKEN))
}

/// `roost invoke NAME --async`: submits the call; prints its id (or the `Accepted` JSON),
/// or with `wait` its answer once it has one. True when accepted, or done.
pub async fn submit(e: &Endpoints, s: &Submit) -> anyhow::Result<bool> {
    let client = client::http();
    let mut req = client.post(format!("{}{}", e.gate, submit_path(&s.function, &s.path)));
    req = match &s.data {
        Some(d) => req.header("content-type", "application/json").body(d.clone()),
        None => req.body(""),
    };
    if let Some(key) = &s.idempotency_key {
        req = req.header(IDEMPOTENCY_HEADER, key);
    }
    if let Some(url) = &s.callback {
        req = req.header(CALLBACK_HEADER, url);
    }
    if s.auth {
        req = req.bearer_auth(api_token(e, "--auth")?);
    }
    let started = Instant::now();
    let (_, accepted): (_, Accepted) = manage::send(e, req).await?;
    let Some(timeout) = s.wait else {
        if s.json {
            println!("{}", serde_json::to_string_pretty(&accepted)?);
        } else {
            println!("{}", accepted.id);
            let again = if accepted.duplicate { " (already submitted with this idempotency key)" } else { "" };
            eprintln!("accepted: call {} of {}{again}; `roost calls {}` shows it", accepted.id, accepted.function, accepted.id);
        }
        return Ok(true);
    };
    let record = wait(e, &client, &accepted.id, started + timeout, timeout).await?;
    finish(&record, s.json)
}

/// What one read of a call's record gave.
enum Poll {
    /// The record.
    Record(Box<CallRecord>),
    /// Nothing this time, and why (the platform restarting, say): ask again.
    Again(String),
}

/// Reads call `id`'s record once.
async fn poll(e: &Endpoints, client: &reqwest::Client, id: &str, left: Duration) -> anyhow::Result<Poll> {
    let r = match status_request(e, client, id).timeout(left.max(Duration::from_millis(100))).send().await {
        Ok(r) => r,
        Err(err) => return Ok(Poll::Again(format!("the platform at {} did not answer: {}", e.gate, causes(&err)))),
    };
    let status = r.status();
    let body = r.bytes().await.unwrap_or_default();
    if status.is_success() {
        let record = serde_json::from_slice(&body).map_err(|err| {
            anyhow::anyhow!("the call's record is not what this roost reads ({err}); are the CLI and the platform the same version?")
        })?;
        return Ok(Poll::Record(Box::new(record)));
    }
    let said = serde_json::from_slice::<ApiError>(&body).map(|a| a.error).unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Ok(Poll::Again(format!("{status}: {said}")));
    }
    if status == reqwest::StatusCode::NOT_FOUND {
        anyhow::bail!("the platform knows no call {id} ({said}): its record expired, or Redis lost it");
    }
    anyhow::bail!("{status}: {said}")
}

/// Polls call `id` every [`POLL_EVERY`] until it is done or failed, or `deadline`.
async fn wait(e: &Endpoints, client: &reqwest::Client, id: &str, deadline: Instant, timeout: Duration) -> anyhow::Result<CallRecord> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let last = match poll(e, client, id, left).await? {
            Poll::Record(r) if r.state.finished() => return Ok(*r),
            Poll::Record(r) => format!("still {} ({} attempt(s) so far)", state_label(&r, roost_common::clock::now_ms()), r.attempts),
            Poll::Again(why) => format!("unknown (the last read: {why})"),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            anyhow::bail!(
                "call {id} is {last} after waiting {}; it goes on: `roost calls {id}` shows it later (or wait longer with --timeout)",
                roost_common::spec::format_duration(timeout)
            );
        }
        tokio::time::sleep(POLL_EVERY.min(left)).await;
    }
}

/// Prints a finished call as `roost invoke` prints an answer (or its record as JSON);
/// true when it is done.
fn finish(c: &CallRecord, json: bool) -> anyhow::Result<bool> {
    let done = c.state == CallState::Done;
    if json {
        println!("{}", serde_json::to_string_pretty(c)?);
        return Ok(done);
    }
    if let Some(r) = &c.result {
        let mut out = std::io::stdout().lock();
        out.write_all(&r.body_bytes())?;
        if r.body.is_some() {
            writeln!(out)?;
        }
        out.flush()?;
        eprintln!("HTTP {}, call {}, {} attempt(s)", r.status, c.id, c.attempts);
    }
    if !done {
        let why = c.last_error.as_deref().unwrap_or("no error recorded");
        eprintln!("call {} failed after {} attempt(s): {why}", c.id, c.attempts);
    }
    Ok(done)
}

/// `roost calls`: the newest calls (of a function, or only the failed ones) as a table or
/// JSON, from the management API.
pub async fn list(e: &Endpoints, r: &ListRequest) -> anyhow::Result<()> {
    let client = client::http();
    let (path, query) = list_request(r);
    let req = manage::request(e, &client, reqwest::Method::GET, path)?.query(&query);
    let (_, list): (_, CallList) = manage::send(e, req).await?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", table(&list.calls, roost_common::clock::now_ms()));
    }
    Ok(())
}

/// `roost calls ID`: one call's record.
pub async fn show(e: &Endpoints, id: &str, json: bool) -> anyhow::Result<()> {
    let client = client::http();
    let (_, record): (_, CallRecord) = manage::send(e, status_request(e, &client, id)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        print!("{}", describe(&record, roost_common::clock::now_ms()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_common::wire::calls::{CallResult, Callback};

    const NOW: u64 = 1_800_000_000_000;

    fn call(id: &str, function: &str, state: CallState, attempts: u32, age_ms: u64, error: Option<&str>) -> CallRecord {
        CallRecord { state, attempts, last_error: error.map(str::to_string), ..CallRecord::queued(id, function, NOW - age_ms, None) }
    }

    #[test]
    fn ages_are_in_their_largest_unit() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(60_000), "1m");
        assert_eq!(age(3_599_999), "59m");
        assert_eq!(age(7_200_000), "2h");
        assert_eq!(age(3 * 86_400_000 + 5), "3d");
    }

    #[test]
    fn the_table_lines_up_its_columns() {
        let long = "x".repeat(200);
        let mut retrying = call("0a1b2c3d4e5f", "add", CallState::Queued, 2, 90_000, Some("HTTP 503\nmore lines"));
        retrying.next_attempt_ms = Some(NOW + 3_500);
        let calls = [
            call("c1", "hello", CallState::Done, 1, 12_000, None),
            retrying,
            call("c3", "a", CallState::Failed, 4, 7_200_000, Some(&long)),
        ];
        let text = table(&calls, NOW);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID            FUNCTION  STATE                ATTEMPTS  AGE  LAST ERROR");
        assert_eq!(lines[1], "c1            hello     done                        1  12s");
        assert_eq!(lines[2], "0a1b2c3d4e5f  add       queued, retry in 4s         2   1m  HTTP 503");
        assert!(lines[3].starts_with("c3            a         failed                      4   2h  xxx"), "{}", lines[3]);
        assert!(lines[3].ends_with(&format!("{}…", "x".repeat(79))), "{}", lines[3]);
        assert!(!lines[3].ends_with(&format!("{}…", "x".repeat(80))), "cut to 80 characters: {}", lines[3]);
        assert_eq!(table(&[], NOW), "ID  FUNCTION  STATE  ATTEMPTS  AGE  LAST ERROR\n");
    }

    #[test]
    fn a_record_shows_its_answer_and_callback() {
        let mut c = call("c9", "hello", CallState::Done, 1, 5_000, None);
        c.result = Some(CallResult::new(200, vec![], b"{\"hello\": \"world\"}".to_vec()));
        c.callback = Some(Callback { url: "http://hook/x".into(), state: CallbackState::Delivered { attempts: 2 } });
        let text = describe(&c, NOW);
        assert!(text.starts_with("id:         c9\nfunction:   hello\nstate:      done\nattempts:   1\n"), "{text}");
        assert!(text.contains("created:    2027-01-15T07:59:55.000Z (5s ago)\n"), "{text}");
        assert!(text.contains("callback:   http://hook/x (delivered after 2 attempt(s))\n"), "{text}");
        assert!(text.ends_with("answer:     HTTP 200, 18 bytes\n{\"hello\": \"world\"}\n"), "{text}");
        c.result = Some(CallResult::new(500, vec![], vec![0xff, 0]));
        assert!(describe(&c, NOW).contains("HTTP 500, 2 bytes, not text"));
    }

    #[test]
    fn flags_are_checked_before_anything_is_sent() {
        assert_eq!(parse_timeout("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("30"), Ok(Duration::from_secs(30)));
        assert!(parse_timeout("0s").is_err() && parse_timeout("soon").is_err());
        assert_eq!(parse_timeout(DEFAULT_TIMEOUT), Ok(Duration::from_secs(120)));
        assert!(parse_callback("https://example.invalid/hook?x=1").is_ok());
        assert!(parse_callback("ftp://example.invalid/").unwrap_err().contains("http://"));
        assert!(parse_callback("/hook").unwrap_err().contains("not a URL"));
        assert!(parse_idempotency_key("order-42").is_ok());
        assert!(parse_idempotency_key("").is_err() && parse_idempotency_key(&"k".repeat(201)).is_err());
        assert!(parse_idempotency_key("a\nb").is_err() && parse_idempotency_key("a b").is_err());
        assert!(parse_call_id("01HV-x_9").is_ok());
        assert!(parse_call_id("../system").is_err() && parse_call_id("a?b").is_err() && parse_call_id("").is_err());
        assert!(parse_function("hello").is_ok() && parse_function("Hello").is_err());
    }

    #[test]
    fn paths_and_the_list_query() {
        assert_eq!(submit_path("add", ""), "/async/add");
        assert_eq!(submit_path("add", "/x?a=1"), "/async/add/x?a=1");
        assert_eq!(status_path("c1"), "/async/calls/c1");
        let r = ListRequest { function: Some("hello".into()), failed: true, limit: 10, json: false };
        let (path, query) = list_request(&r);
        assert_eq!(format!("{PREFIX}{path}"), LIST_PATH);
        assert_eq!(query, [("function", "hello".to_string()), ("failed", "true".into()), ("limit", "10".into())]);
        let (_, query) = list_request(&ListRequest { function: None, failed: false, limit: 50, json: true });
        assert_eq!(query, [("limit", "50".to_string())]);
    }
}
