//! The web console, `/system/console` behind the API token: every function with its
//! state, replicas, cold starts (the last one by phase), calls by status class, rate and duration (from the
//! platform's metrics), asynchronous calls queued and failed, last error, recent log lines and definition. Rendered here as HTML; a few
//! lines of JavaScript fetch the live part again every two seconds. No script or style
//! from elsewhere: it works offline. A browser logs in once at `/system/login?token=...`
//! (or its form), which sets the token as an HttpOnly, SameSite=Strict cookie.

use crate::api::Api;
use crate::shared::{ask, source_of, Failure};
use crate::supervisor::Request;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use roost_common::auth::{is_api_token, CONSOLE_COOKIE};
use roost_common::wire::status::FunctionStatus;
use roost_common::wire::system::Source;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Log lines shown per function.
pub const LOG_LINES: usize = 8;

/// Text made safe inside HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One function's call figures from the metrics text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Calls {
    /// Answers 1xx-3xx, 4xx and 5xx, since the statsd-listener started.
    pub ok: f64,
    /// 4xx answers.
    pub client_errors: f64,
    /// 5xx answers.
    pub server_errors: f64,
    /// Requests started per second, last flush.
    pub rate: f64,
    /// The call-duration histogram: (upper bound in seconds, calls at or below it), in
    /// the order of the metrics text (rising bounds, `+Inf` last).
    pub durations: Vec<(f64, f64)>,
    /// Asynchronous calls in the function's queue.
    pub async_queued: f64,
    /// Asynchronous calls failed (dead letters), since the statsd-listener started.
    pub async_failed: f64,
}

impl Calls {
    /// The `q` quantile of the call durations in seconds, interpolated within its bucket
    /// as Prometheus's `histogram_quantile` does; `None` before any call. A quantile in
    /// the last bucket (`+Inf`) is given as the highest finite bound.
    pub fn duration_quantile(&self, q: f64) -> Option<f64> {
        let total = self.durations.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(bound, count) in &self.durations {
            if count >= rank {
                if bound.is_infinite() {
                    return Some(lower);
                }
                let inside = count - below;
                return Some(if inside > 0.0 { lower + (bound - lower) * (rank - below) / inside } else { bound });
            }
            (lower, below) = (bound, count);
        }
        Some(lower)
    }
}

/// Every function's [`Calls`] from the Prometheus text of the statsd-listener.
pub fn calls_of(metrics: &str) -> BTreeMap<String, Calls> {
    let mut out: BTreeMap<String, Calls> = BTreeMap::new();
    for line in metrics.lines() {
        let (series, value) = match line.rsplit_once(' ') {
            Some((s, v)) => (s, v.parse::<f64>().unwrap_or(0.0)),
            None => continue,
        };
        let label = |name: &str| series.split(&format!("{name}=\"")).nth(1).and_then(|r| r.split('"').next());
        if series.starts_with("roost_function_calls_total{") {
            let (Some(f), Some(code)) = (label("function"), label("code")) else { continue };
            let c = out.entry(f.to_string()).or_default();
            match code.as_bytes().first() {
                Some(b'4') => c.client_errors += value,
                Some(b'5') => c.server_errors += value,
                _ => c.ok += value,
            }
        } else if series.starts_with("roost_function_seconds_bucket{") {
            let (Some(f), Some(le)) = (label("function"), label("le")) else { continue };
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
            out.entry(f.to_string()).or_default().durations.push((bound, value));
        } else if series.starts_with("roost_function_requests_per_second{") {
            if let Some(f) = label("function") {
                out.entry(f.to_string()).or_default().rate = value;
            }
        } else if series.starts_with("roost_async_queued{") {
            if let Some(f) = label("function") {
                out.entry(f.to_string()).or_default().async_queued = value;
            }
        } else if series.starts_with("roost_async_finished_total{") && label("state") == Some("failed") {
            if let Some(f) = label("function") {
                out.entry(f.to_string()).or_default().async_failed += value;
            }
        }
    }
    out
}

/// A duration for the table: milliseconds below a second.
fn duration(seconds: Option<f64>) -> String {
    match seconds {
        None => String::new(),
        Some(s) if s < 1.0 => format!("{:.1} ms", s * 1000.0),
        Some(s) => format!("{s:.2} s"),
    }
}

fn figure(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The live part: the functions table and each function's details.
pub fn live(
    functions: &[(FunctionStatus, bool)],
    calls: &BTreeMap<String, Calls>,
    details: &BTreeMap<String, (String, Vec<String>)>,
    problems: Option<&str>,
) -> String {
    let mut h = String::new();
    h.push_str("<table id=\"functions\"><thead><tr><th>function</th><th>source</th><th>state</th><th>ready</th><th>starting</th>");
    h.push_str("<th>cold starts</th><th>last cold start</th><th>calls/s</th><th>ok</th><th>4xx</th><th>5xx</th><th>p50</th><th>p99</th><th>async queued</th><th>async failed</th><th>last error</th></tr></thead><tbody>");
    for (f, deployed) in functions {
        let c = calls.get(&f.name).cloned().unwrap_or_default();
        // The last cold start and its phases (start, readiness probe, Envoy's ACK, notice).
        let cold = f
            .last_cold_start
            .map(|p| {
                format!(
                    "{:.1} ms <small class=\"phases\">(start {:.1}, ready {:.1}, ack {:.1}, notice {:.1})</small>",
                    p.total_ms, p.start_ms, p.readiness_ms, p.ack_ms, p.notice_ms
                )
            })
            .unwrap_or_default();
        let error = f.reason.as_deref().or(f.last_error.as_deref()).and_then(|e| e.lines().next()).unwrap_or("");
        let _ = write!(
            h,
            "<tr data-function=\"{name}\"><td class=\"name\">{name}</td><td>{source}</td><td class=\"state {state}\">{state}</td>\
             <td class=\"ready\">{ready}</td><td>{starting}</td><td class=\"cold-starts\">{colds}</td><td class=\"last-cold-start\">{cold}</td>\
             <td>{rate}</td><td class=\"calls-ok\">{ok}</td><td class=\"calls-4xx\">{e4}</td><td class=\"calls-5xx\">{e5}</td>\
             <td class=\"p50\">{p50}</td><td class=\"p99\">{p99}</td><td class=\"async-queued\">{aq}</td><td class=\"async-failed\">{af}</td>\
             <td class=\"error\">{error}</td></tr>",
            name = escape(&f.name),
            source = if *deployed { "deployed" } else { "file" },
            state = f.state,
            ready = f.ready_replicas(),
            starting = f.starting,
            colds = f.cold_starts,
            rate = figure(c.rate),
            ok = figure(c.ok),
            e4 = figure(c.client_errors),
            e5 = figure(c.server_errors),
            p50 = duration(c.duration_quantile(0.5)),
            p99 = duration(c.duration_quantile(0.99)),
            aq = figure(c.async_queued),
            af = figure(c.async_failed),
            error = escape(error),
        );
    }
    h.push_str("</tbody></table>");
    if let Some(p) = problems {
        let _ = write!(h, "<h2>Problems in the definitions</h2><pre class=\"problems\">{}</pre>", escape(p));
    }
    h.push_str("<h2>Functions</h2>");
    for (name, (definition, lines)) in details {
        let _ = write!(
            h,
            "<details data-function=\"{n}\"><summary>{n}</summary><h3>Definition</h3><pre>{d}</pre><h3>Recent log lines</h3><pre class=\"log\">{l}</pre></details>",
            n = escape(name),
            d = escape(definition),
            l = escape(&lines.join("\n")),
        );
    }
    h
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}table{border-collapse:collapse;width:100%}\
th,td{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;font-size:.9rem}th{background:#f4f4f4}\
td.state.ready{color:#17803d}td.state.failing,td.state.invalid{color:#b42318}td.error{color:#b42318;max-width:28rem}\
pre{background:#f7f7f7;padding:.6rem;overflow:auto;font-size:.8rem}summary{cursor:pointer;font-weight:600;margin:.4rem 0}";

const SCRIPT: &str = "setInterval(async()=>{try{const r=await fetch('/system/console/live',{credentials:'same-origin'});\
if(r.ok){const open=[...document.querySelectorAll('details[open]')].map(d=>d.dataset.function);\
document.getElementById('live').innerHTML=await r.text();\
for(const f of open){const d=document.querySelector('details[data-function=\"'+f+'\"]');if(d)d.open=true}\
document.getElementById('updated').textContent=new Date().toLocaleTimeString()}}catch(e){}},2000);";

/// The live part, as now. Without the platform's metrics (none configured, or the
/// statsd-listener away) the call figures show zero.
async fn render_live(api: &Api) -> Result<String, Failure> {
    let status = ask(&api.tx, Request::Status).await?;
    let definitions = ask(&api.tx, Request::Definitions).await?;
    let metrics = api.deploys.metrics_text().await.unwrap_or_default();
    let mut details = BTreeMap::new();
    for f in &status.functions {
        let definition = definitions
            .get(&f.name)
            .map(|s| serde_yaml::to_string(s).unwrap_or_default())
            .unwrap_or_else(|| "(invalid: see the problems)".into());
        let lines = api.logs.lines(&f.name, None, Some(LOG_LINES)).into_iter().map(|l| format!("{} {}", l.replica, l.line)).collect();
        details.insert(f.name.clone(), (definition, lines));
    }
    let functions: Vec<(FunctionStatus, bool)> =
        status.functions.iter().map(|f| (f.clone(), source_of(&status, &f.name) == Source::Deployed)).collect();
    Ok(live(&functions, &calls_of(&metrics), &details, status.definitions_error.as_deref()))
}

/// `GET /system/console`: the whole page.
pub async fn page(State(api): State<Api>) -> Result<Html<String>, Failure> {
    let live = render_live(&api).await?;
    Ok(Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Roost console</title><style>{STYLE}</style></head>\
         <body><h1>Roost</h1><p>Functions, live. Updated <span id=\"updated\">now</span>. Metrics: <a href=\"/system/metrics\">/system/metrics</a>.</p>\
         <div id=\"live\">{live}</div><script>{SCRIPT}</script></body></html>"
    )))
}

/// `GET /system/console/live`: the live part alone, for the page's refresh.
pub async fn live_part(State(api): State<Api>) -> Result<Html<String>, Failure> {
    render_live(&api).await.map(Html)
}

/// The query of `GET /system/login`.
#[derive(Debug, serde::Deserialize)]
pub struct Login {
    token: Option<String>,
}

/// `GET /system/login[?token=...]`: with the API token, sets the console's cookie and
/// goes to the console; without one, a form that asks for it; a wrong one, 401.
pub async fn login(State(api): State<Api>, Query(q): Query<Login>) -> Response {
    let Some(given) = q.token.filter(|t| !t.is_empty()) else {
        return Html(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Roost console</title><style>{STYLE}</style></head>\
             <body><h1>Roost</h1><form method=\"get\" action=\"/system/login\"><label>API token <input name=\"token\" type=\"password\" autofocus></label> \
             <button>Open the console</button></form><p>The token is in the data directory's <code>api-token</code>; <code>roost up</code> prints it.</p></body></html>"
        ))
        .into_response();
    };
    match api.deploys.token.as_ref().filter(|t| is_api_token(t, &given)) {
        Some(_) => {
            let cookie = format!("{CONSOLE_COOKIE}={given}; Path=/system; HttpOnly; SameSite=Strict");
            (StatusCode::SEE_OTHER, [(header::SET_COOKIE, cookie), (header::LOCATION, "/system/console".to_string())]).into_response()
        }
        None => (
            StatusCode::UNAUTHORIZED,
            Html("<!doctype html><p>That is not this platform's API token. <a href=\"/system/login\">Try again</a>.</p>"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_common::wire::status::FunctionState;

    #[test]
    fn calls_are_read_by_status_class_from_the_metrics() {
        let text = "# HELP x\nroost_function_calls_total{function=\"a\",code=\"200\"} 5\nroost_function_calls_total{function=\"a\",code=\"404\"} 2\n\
                    roost_function_calls_total{function=\"a\",code=\"503\"} 1\nroost_function_requests_per_second{function=\"a\"} 2.5\n\
                    roost_async_queued{function=\"a\"} 7\nroost_async_finished_total{function=\"a\",state=\"done\"} 9\n\
                    roost_async_finished_total{function=\"a\",state=\"failed\"} 3\n";
        let c = calls_of(text);
        assert_eq!(
            c["a"],
            Calls { ok: 5.0, client_errors: 2.0, server_errors: 1.0, rate: 2.5, durations: vec![], async_queued: 7.0, async_failed: 3.0 }
        );
        let html = live(&[(FunctionStatus::empty("a", FunctionState::Ready), false)], &c, &BTreeMap::new(), None);
        assert!(html.contains("<td class=\"async-queued\">7</td><td class=\"async-failed\">3</td>"), "{html}");
        assert_eq!(c["a"].duration_quantile(0.5), None, "no call timed yet");
    }

    #[test]
    fn duration_quantiles_are_interpolated_within_their_bucket() {
        // 10 calls: 4 at most 10 ms, 9 at most 100 ms, 1 slower than the last bound.
        let text = "roost_function_seconds_bucket{function=\"a\",le=\"0.01\"} 4\nroost_function_seconds_bucket{function=\"a\",le=\"0.1\"} 9\n\
                    roost_function_seconds_bucket{function=\"a\",le=\"60\"} 9\nroost_function_seconds_bucket{function=\"a\",le=\"+Inf\"} 10\n\
                    roost_function_seconds_count{function=\"a\"} 10\n";
        let c = &calls_of(text)["a"];
        let p50 = c.duration_quantile(0.5).unwrap();
        assert!((p50 - 0.028).abs() < 1e-9, "rank 5: a fifth of the way from 10 to 100 ms, {p50}");
        assert_eq!(c.duration_quantile(0.99), Some(60.0), "in +Inf: the highest finite bound");
        assert_eq!(duration(Some(p50)), "28.0 ms");
        let mut f = FunctionStatus::empty("a", FunctionState::Ready);
        f.last_cold_start =
            Some(roost_common::wire::status::Phases { start_ms: 3.0, readiness_ms: 2.5, ack_ms: 1.5, notice_ms: 0.5, total_ms: 7.5 });
        let html = live(&[(f, false)], &calls_of(text), &BTreeMap::new(), None);
        assert!(html.contains("<td class=\"p50\">28.0 ms</td><td class=\"p99\">60.00 s</td>"), "{html}");
        assert!(html.contains("7.5 ms <small class=\"phases\">(start 3.0, ready 2.5, ack 1.5, notice 0.5)</small>"), "{html}");
    }

    #[test]
    fn the_table_escapes_what_functions_and_users_wrote() {
        let mut f = FunctionStatus::empty("a", FunctionState::Failing);
        f.last_error = Some("<script>alert(1)</script>".into());
        let details = BTreeMap::from([("a".to_string(), ("env: {X: \"<b>\"}".to_string(), vec!["r1 <i>hi</i>".to_string()]))]);
        let html = live(&[(f, true)], &BTreeMap::new(), &details, Some("bad & worse"));
        assert!(!html.contains("<script>") && !html.contains("<b>") && !html.contains("<i>"), "{html}");
        assert!(html.contains("&lt;script&gt;") && html.contains("bad &amp; worse"), "{html}");
        assert!(html.contains("<td>deployed</td>") && html.contains("class=\"state failing\""), "{html}");
    }
}
