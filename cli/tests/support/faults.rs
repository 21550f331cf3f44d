//! The fault-injection suite's pure parts (issue 13): what one load request's answer
//! counts as, the tally of a case, its target and whether it was met, the markdown
//! table, which cases to run, and Docker's timestamps. No I/O; unit-tested in
//! `cli/tests/faults.rs`.

#![allow(dead_code)] // the test file uses what it needs

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// How one load request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The right answer.
    Ok,
    /// A 200 whose body is not the right answer (what it was).
    Wrong(String),
    /// No answer or not a 200: the reason, grouped ("status 502", "connect error", ...).
    Failed(String),
}

/// One load request: when it started and ended (ms since the Unix epoch, to compare with
/// Docker's timestamps) and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Sent at.
    pub start_ms: u64,
    /// Answered (or failed) at.
    pub end_ms: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// `GET /hello`'s answer checked: 200 and `{"Hello": "World"}`.
pub fn check_hello(status: u16, body: &str) -> Outcome {
    if status != 200 {
        return Outcome::Failed(format!("status {status}"));
    }
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) if v == serde_json::json!({"Hello": "World"}) => Outcome::Ok,
        _ => Outcome::Wrong(format!("hello answered {}", clip(body))),
    }
}

/// `POST /add {"value1": a, "value2": b}`'s answer checked: 200 and `{"result": a + b}`.
pub fn check_add(a: i64, b: i64, status: u16, body: &str) -> Outcome {
    if status != 200 {
        return Outcome::Failed(format!("status {status}"));
    }
    let result = serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| v.get("result")?.as_f64());
    match result {
        Some(r) if r == (a + b) as f64 => Outcome::Ok,
        _ => Outcome::Wrong(format!("add {a}+{b} answered {}", clip(body))),
    }
}

/// What a client error counts as: the reason groups of the table. `chain` is the error
/// and its sources, joined by ": ".
pub fn error_reason(is_connect: bool, is_timeout: bool, chain: &str) -> String {
    let lower = chain.to_lowercase();
    if is_timeout {
        "timeout".into()
    } else if lower.contains("connection refused") {
        "connection refused".into()
    } else if is_connect {
        "connect error".into()
    } else if lower.contains("reset by peer") || lower.contains("connection reset") {
        "connection reset".into()
    } else if lower.contains("closed") || lower.contains("incomplete") || lower.contains("canceled") {
        "connection closed mid-request".into()
    } else {
        format!("error: {}", clip(chain.rsplit(": ").next().unwrap_or(chain)))
    }
}

fn clip(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(80).collect::<String>())
    } else {
        s.to_string()
    }
}

/// What a case must achieve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Not one request fails or is answered wrong.
    NoFailure,
    /// At most the requests in flight when the component died fail; none is answered wrong.
    InFlightOnly,
    /// Failures are recorded, not targeted: the component is away for the fault's whole
    /// length and nothing can answer in its place (Envoy's container restarted: nothing
    /// listens on the public port meanwhile). It must still heal and answer nothing wrong.
    Recorded,
}

/// One case's figures.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's name (as `ROOST_FAULTS_CASES` spells it).
    pub name: String,
    /// Its target (`None`: not run, see `notes`).
    pub target: Option<Target>,
    /// Load requests sent.
    pub requests: usize,
    /// Failed requests, by reason.
    pub failed: BTreeMap<String, usize>,
    /// Wrong answers (a 200 with the wrong body).
    pub wrong: usize,
    /// Requests in flight when the component died.
    pub in_flight: usize,
    /// From the fault until the load was answered again (the last failure's end; zero if
    /// none failed); `None`: still failing when the load stopped.
    pub recovery: Option<Duration>,
    /// From the fault until the heal checks passed; `Err`: what still fails.
    pub healed: Result<Duration, String>,
    /// Anything else worth knowing.
    pub notes: Vec<String>,
    /// Extra misses the case found itself (a spoof that took effect, ...).
    pub extra_misses: Vec<String>,
}

impl Default for CaseResult {
    fn default() -> Self {
        CaseResult {
            name: String::new(),
            target: None,
            requests: 0,
            failed: BTreeMap::new(),
            wrong: 0,
            in_flight: 0,
            recovery: None,
            healed: Err("not checked".into()),
            notes: Vec::new(),
            extra_misses: Vec::new(),
        }
    }
}

impl CaseResult {
    /// Total failed requests.
    pub fn failed_total(&self) -> usize {
        self.failed.values().sum()
    }

    /// Adds the load's samples: counts, reasons, in-flight at `died_ms`, recovery from
    /// `fault_ms`.
    pub fn add_samples(&mut self, samples: &[Sample], fault_ms: u64, died_ms: u64, still_failing: bool) {
        self.requests += samples.len();
        for s in samples {
            match &s.outcome {
                Outcome::Ok => {}
                Outcome::Wrong(_) => self.wrong += 1,
                Outcome::Failed(reason) => *self.failed.entry(reason.clone()).or_default() += 1,
            }
        }
        self.in_flight = in_flight(samples, died_ms);
        self.recovery = if still_failing { None } else { Some(recovery(samples, fault_ms)) };
    }

    /// Why this case missed its target (empty: met).
    pub fn misses(&self) -> Vec<String> {
        let mut out = Vec::new();
        let failed = self.failed_total();
        match self.target {
            None => {}
            Some(Target::NoFailure) if failed > 0 => out.push(format!("{failed} failed (target 0)")),
            Some(Target::InFlightOnly) if failed > self.in_flight => {
                out.push(format!("{failed} failed (target: at most the {} in flight at the fault)", self.in_flight))
            }
            Some(_) => {}
        }
        if self.wrong > 0 {
            out.push(format!("{} wrong answers (target 0)", self.wrong));
        }
        if self.target.is_some() && self.recovery.is_none() {
            out.push("the load was still failing when it stopped".into());
        }
        if let Err(e) = &self.healed {
            out.push(format!("did not heal: {e}"));
        }
        out.extend(self.extra_misses.iter().cloned());
        out
    }
}

/// Requests in flight at `at_ms`: sent before it and not yet answered.
pub fn in_flight(samples: &[Sample], at_ms: u64) -> usize {
    samples.iter().filter(|s| s.start_ms <= at_ms && s.end_ms > at_ms).count()
}

/// From `fault_ms` to the end of the last request that failed or was wrong (zero when
/// none did, or all did before the fault).
pub fn recovery(samples: &[Sample], fault_ms: u64) -> Duration {
    let last = samples.iter().filter(|s| s.outcome != Outcome::Ok).map(|s| s.end_ms).max();
    Duration::from_millis(last.map_or(0, |end| end.saturating_sub(fault_ms)))
}

/// Whether the load may stop: at least `window_ms` after the fault, and every request that
/// ended in the last `quiet_ms` succeeded (and at least one did).
pub fn load_settled(samples: &[Sample], fault_ms: u64, now_ms: u64, window_ms: u64, quiet_ms: u64) -> bool {
    if now_ms < fault_ms + window_ms {
        return false;
    }
    let recent: Vec<&Sample> = samples.iter().filter(|s| s.end_ms + quiet_ms >= now_ms).collect();
    !recent.is_empty() && recent.iter().all(|s| s.outcome == Outcome::Ok)
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The markdown table: case | requests | failed | wrong | recovery | notes.
pub fn table(results: &[CaseResult]) -> String {
    let mut out = String::from("| case | requests | failed | wrong | recovery | notes |\n|---|---:|---:|---:|---:|---|\n");
    for r in results {
        let mut notes = Vec::new();
        match r.target {
            Some(Target::NoFailure) => notes.push("target 0 failed".to_string()),
            Some(Target::InFlightOnly) => notes.push(format!("target <= in flight ({})", r.in_flight)),
            Some(Target::Recorded) => notes.push("failures recorded, not targeted (nothing listens while it is away)".to_string()),
            None => {}
        }
        if !r.failed.is_empty() {
            let reasons: Vec<String> = r.failed.iter().map(|(k, v)| format!("{v} {k}")).collect();
            notes.push(reasons.join(", "));
        }
        match &r.healed {
            Ok(d) => notes.push(format!("healed {}", seconds(*d))),
            Err(e) => notes.push(format!("NOT HEALED: {e}")),
        }
        notes.extend(r.notes.iter().cloned());
        let misses = r.misses();
        if !misses.is_empty() {
            notes.push(format!("**MISSED**: {}", misses.join("; ")));
        }
        let recovery = match (r.target, r.recovery) {
            (None, _) => "-".to_string(),
            (_, Some(d)) => seconds(d),
            (_, None) => "never".to_string(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.name,
            r.requests,
            r.failed_total(),
            r.wrong,
            recovery,
            notes.join("; ").replace('|', "\\|").replace('\n', " ")
        );
    }
    out
}

/// The cases to run: `spec` is a comma-separated list of names (`None` or empty: all),
/// in the suite's order.
pub fn select<'a>(spec: Option<&str>, all: &[&'a str]) -> Result<Vec<&'a str>, String> {
    let wanted: Vec<&str> = spec.unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if wanted.is_empty() {
        return Ok(all.to_vec());
    }
    let unknown: Vec<&str> = wanted.iter().copied().filter(|w| !all.contains(w)).collect();
    if !unknown.is_empty() {
        return Err(format!("unknown fault cases {unknown:?}: choose among {}", all.join(",")));
    }
    Ok(all.iter().copied().filter(|c| wanted.contains(c)).collect())
}

/// Docker's RFC 3339 time (`2026-12-05T03:10:11.123456789Z`, UTC) as ms since the Unix
/// epoch; `None` for anything else (a zero time, `0001-01-01T00:00:00Z`, is `None` too).
pub fn parse_docker_time(s: &str) -> Option<u64> {
    let s = s.trim().strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if y < 1970 || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let ms_frac: i64 = format!("{:0<3}", frac.get(..3.min(frac.len()))?).parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + hh) * 60 + mm) * 60 + ss).ok().map(|secs| secs * 1000 + ms_frac as u64)
}

/// Spoofed statsd gauges: `pending` of 1e15 for each of `functions` (the way Envoy names
/// its cluster stats), `n` rounds.
pub fn spoof_datagrams(functions: &[&str], n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        for f in functions {
            out.push(format!("envoy.cluster.fn-{f}.upstream_rq_pending_active:1e15|g"));
        }
        out.push(format!("envoy.cluster.fn-ghost-{i}.upstream_rq_pending_active:1e15|g"));
    }
    out
}
