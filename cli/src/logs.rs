//! `roost logs`: a function's output from the management API on the platform's port
//! (`GET /system/functions/{name}/logs`, with the API token), or, without an API token,
//! from the orchestrator's own API (`GET /functions/{name}/logs`, with the control
//! token); one `<time> <replica> <line>` per line, the time in
//! RFC 3339 UTC with milliseconds (`2026-12-04T17:38:54.123Z`); `--json` passes the NDJSON
//! through as the orchestrator sends it.

use crate::client::Endpoints;
use roost_common::wire::logs::LogLine;
use roost_common::wire::status::ApiError;
use std::io::Write;
use std::time::Duration;

/// What `roost logs` was asked for.
#[derive(Debug, Clone, Default)]
pub struct LogsRequest {
    /// The function.
    pub function: String,
    /// Keep reading new lines until interrupted.
    pub follow: bool,
    /// `--since`: a duration back from now (`10m`) or a time (RFC 3339).
    pub since: Option<String>,
    /// At most this many of the newest kept lines.
    pub tail: Option<usize>,
    /// Print the NDJSON as received.
    pub json: bool,
}

/// Why `--since` cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--since {0:?} is neither a duration (500ms, 30s, 10m, 2h) nor a time (2026-12-04T17:00:00Z, or with an offset such as +02:00)")]
pub struct BadSince(pub String);

/// `--since` as Unix milliseconds: `now_ms` minus a duration, or an RFC 3339 time.
pub fn since_ms(since: &str, now_ms: u64) -> Result<u64, BadSince> {
    if let Some(d) = roost_common::spec::parse_duration(since) {
        return Ok(now_ms.saturating_sub(d.as_millis() as u64));
    }
    parse_rfc3339(since).ok_or_else(|| BadSince(since.to_string()))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01 (`civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)` (a space for the `T` too) into Unix ms.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let first3 = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = first3.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ => {
            let (sign, hm) = match rest.as_bytes().first()? {
                b'+' => (1, &rest[1..]),
                b'-' => (-1, &rest[1..]),
                _ => return None,
            };
            let (oh, om) = hm.split_once(':')?;
            if oh.len() != 2 || om.len() != 2 {
                return None;
            }
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    u64::try_from(secs * 1000 + millis).ok()
}

/// Unix ms as RFC 3339 UTC with milliseconds: `2026-12-04T17:38:54.123Z`.
pub fn format_time(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, day_s) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", day_s / 3600, day_s / 60 % 60, day_s % 60, ms % 1000)
}

/// One line as `roost logs` prints it.
pub fn format_line(l: &LogLine) -> String {
    format!("{} {} {}", format_time(l.time_ms), l.replica, l.line)
}

/// Splits received bytes into whole lines, keeping a line not yet ended for the next
/// chunk.
#[derive(Debug, Default)]
pub struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// The whole lines `chunk` completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(chunk);
        let Some(last) = self.pending.iter().rposition(|&b| b == b'\n') else { return Vec::new() };
        let rest = self.pending.split_off(last + 1);
        let whole = std::mem::replace(&mut self.pending, rest);
        String::from_utf8_lossy(&whole).lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
    }

    /// What is left once the answer ended (a last line without its end of line).
    pub fn finish(&mut self) -> Option<String> {
        let rest = String::from_utf8_lossy(&std::mem::take(&mut self.pending)).trim().to_string();
        (!rest.is_empty()).then_some(rest)
    }
}

/// `roost logs`: prints the function's kept lines, then (with `follow`) new ones until
/// the orchestrator ends the answer.
pub async fn run(e: &Endpoints, req: &LogsRequest) -> anyhow::Result<()> {
    let since = req.since.as_deref().map(|s| since_ms(s, roost_common::clock::now_ms())).transpose()?;
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(s) = since {
        query.push(("since_ms", s.to_string()));
    }
    if let Some(t) = req.tail {
        query.push(("tail", t.to_string()));
    }
    if req.follow {
        query.push(("follow", "true".into()));
    }
    // No overall timeout: a followed answer stays open as long as the user reads it.
    let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build()?;
    let path = format!("/functions/{}/logs", req.function);
    let mut r = match &e.api_token {
        Some(token) => {
            let url = format!("{}{}{path}", e.gate, roost_common::wire::system::PREFIX);
            client.get(&url).bearer_auth(token.expose()).query(&query).send().await.map_err(|err| {
                anyhow::anyhow!(
                    "cannot reach the platform at {} ({}): {err}; is Roost running? Point at another with --gate URL",
                    e.gate,
                    e.origin.gate
                )
            })?
        }
        None => e
            .orchestrator_request(&client, reqwest::Method::GET, &path)
            .query(&query)
            .send()
            .await
            .map_err(|err| e.orchestrator_unreachable(&err))?,
    };
    if !r.status().is_success() {
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        let said = serde_json::from_str::<ApiError>(&body).map(|a| a.error).unwrap_or(body);
        if e.api_token.is_some() {
            anyhow::bail!("the platform at {} answered {status}: {said}", e.gate);
        }
        return Err(e.orchestrator_refused(status, &said));
    }
    let mut lines = Lines::default();
    let print = |out: &mut std::io::StdoutLock<'_>, line: &str| -> anyhow::Result<()> {
        if req.json {
            writeln!(out, "{line}")?;
        } else {
            match serde_json::from_str::<LogLine>(line) {
                Ok(l) => writeln!(out, "{}", format_line(&l))?,
                Err(err) => anyhow::bail!("the orchestrator sent a line this roost cannot read ({err}): {line}; are the CLI and the orchestrator the same version?"),
            }
        }
        Ok(())
    };
    loop {
        let chunk = r.chunk().await.map_err(|err| anyhow::anyhow!("the orchestrator at {} ended the log answer: {err}", e.orchestrator))?;
        let mut out = std::io::stdout().lock();
        let Some(chunk) = chunk else {
            if let Some(last) = lines.finish() {
                print(&mut out, &last)?;
            }
            out.flush()?;
            return Ok(());
        };
        for line in lines.feed(&chunk) {
            print(&mut out, &line)?;
        }
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc3339_utc_and_read_back() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_796_406_334_123), "2026-12-04T17:45:34.123Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        for ms in [0, 1_796_406_334_123, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339(&format_time(ms)), Some(ms));
        }
        assert_eq!(parse_rfc3339("2026-12-04T19:45:34+02:00"), Some(1_796_406_334_000));
        assert_eq!(parse_rfc3339("2026-12-04 17:45:34.1z"), Some(1_796_406_334_100));
        for bad in ["2026-12-04", "2026-13-04T00:00:00Z", "2026-12-04T17:45:34", "2026-12-04T17:45:34.Z", "yesterday"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn since_is_a_duration_back_or_a_time() {
        let now = 1_796_406_334_123;
        assert_eq!(since_ms("10m", now), Ok(now - 600_000));
        assert_eq!(since_ms("500ms", now), Ok(now - 500));
        assert_eq!(since_ms("2026-12-04T17:45:34.123Z", now), Ok(now));
        let e = since_ms("ten minutes", now).unwrap_err();
        assert!(e.to_string().contains("\"ten minutes\"") && e.to_string().contains("10m"), "{e}");
    }

    #[test]
    fn lines_are_split_across_chunks() {
        let mut l = Lines::default();
        assert!(l.feed(b"{\"a\":").is_empty());
        assert_eq!(l.feed(b"1}\n{\"b\":2}\n{\"c\""), ["{\"a\":1}", "{\"b\":2}"]);
        assert_eq!(l.feed(b":3}\n"), ["{\"c\":3}"]);
        assert!(l.feed(b"\n").is_empty(), "blank lines are skipped");
        assert!(l.feed(b"{\"d\":4}").is_empty());
        assert_eq!(l.finish().as_deref(), Some("{\"d\":4}"));
        assert_eq!(l.finish(), None);
    }

    #[test]
    fn a_line_prints_time_replica_and_text() {
        let l = LogLine { time_ms: 1_796_406_334_123, replica: "hello-1a2b".into(), line: "imported".into() };
        assert_eq!(format_line(&l), "2026-12-04T17:45:34.123Z hello-1a2b imported");
    }
}
