//! `roost ls`, `roost invoke`, `roost status` and `roost validate`.

use crate::client::{self, Endpoints};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// `roost ls`: functions, replicas and state, as a table or JSON. A function that is
/// building shows for how long, one that is failing when it is tried again; the reasons of
/// failing and invalid functions follow the table in full.
pub async fn ls(e: &Endpoints, json: bool) -> anyhow::Result<()> {
    let s = client::status(&client::http(), e).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s.functions)?);
        return Ok(());
    }
    println!("{:<24} {:<22} {:>6} {:>9} {:>12}  LAST ERROR", "FUNCTION", "STATE", "READY", "STARTING", "COLD STARTS");
    for f in &s.functions {
        println!(
            "{:<24} {:<22} {:>6} {:>9} {:>12}  {}",
            f.name,
            state_label(f),
            f.ready_replicas(),
            f.starting,
            f.cold_starts,
            f.last_error.as_deref().and_then(|e| e.lines().next()).unwrap_or("")
        );
    }
    for f in s.functions.iter().filter(|f| f.reason.is_some()) {
        let reason = f.reason.as_deref().unwrap_or_default();
        println!("\n{} is {}:\n{}", f.name, f.state, indent(reason));
    }
    if let Some(err) = &s.definitions_error {
        println!(
            "\nproblems in {} (the valid functions serve; an invalid one keeps its last good definition, or is refused):\n{err}",
            s.definitions
        );
    }
    Ok(())
}

/// The state with what it waits for: `building 12s`, `failing, retry in 4s`.
fn state_label(f: &roost_common::wire::status::FunctionStatus) -> String {
    let secs = |ms: u64| format!("{}s", ms.div_ceil(1000));
    match (f.state_for_ms, f.retry_in_ms) {
        (Some(ms), _) => format!("{} {}", f.state, secs(ms)),
        (None, Some(ms)) => format!("{}, retry in {}", f.state, secs(ms)),
        (None, None) => f.state.to_string(),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// `roost invoke`: calls a function through the gate and prints the answer.
/// With `auth`, it sends the API token (a function with `auth: token` wants it).
pub async fn invoke(e: &Endpoints, function: &str, data: Option<&str>, path: &str, auth: bool) -> anyhow::Result<bool> {
    let url = format!("{}/{}{}", e.gate, function, path);
    let client = client::http();
    let mut req = match data {
        Some(d) => client.post(&url).header("content-type", "application/json").body(d.to_string()),
        None => client.get(&url),
    };
    if auth {
        let token = e
            .api_token
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("--auth needs the API token: give it with --api-token or {}", roost_common::env::API_TOKEN))?;
        req = req.bearer_auth(token.expose());
    }
    let r = req.send().await.map_err(|err| e.gate_unreachable(&err))?;
    let status = r.status();
    let cold = r.headers().get("x-roost-cold-start").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = r.text().await?;
    println!("{body}");
    eprintln!("HTTP {}{}", status.as_u16(), cold.map(|c| format!(", cold start: {c}")).unwrap_or_default());
    Ok(status.is_success())
}

/// `roost status`: replicas, in flight, queued and cold starts, refreshed every second.
pub async fn watch(e: &Endpoints, once: bool, json: bool) -> anyhow::Result<()> {
    let client = client::http();
    let mut redis = redis::Client::open(e.redis.as_str())?.get_multiplexed_async_connection().await?;
    loop {
        let s = client::status(&client, e).await?;
        let mut rows = Vec::with_capacity(s.functions.len());
        for f in &s.functions {
            let (in_flight, queued) = client::load(&mut redis, &f.name).await;
            rows.push(StatusRow {
                name: f.name.clone(),
                state: f.state.as_str(),
                live: f.replicas.len(),
                in_flight,
                queued,
                cold_starts: f.cold_starts,
            });
        }
        let mut out = String::new();
        if json {
            out.push_str(&serde_json::json!({ "functions": rows }).to_string());
            out.push('\n');
        } else {
            if !once {
                out.push_str("\x1b[2J\x1b[H");
            }
            out.push_str(&format!(
                "{:<24} {:<10} {:>6} {:>9} {:>7} {:>11}\n",
                "FUNCTION", "STATE", "LIVE", "IN FLIGHT", "QUEUED", "COLD STARTS"
            ));
            for r in &rows {
                out.push_str(&format!(
                    "{:<24} {:<10} {:>6} {:>9} {:>7} {:>11}\n",
                    r.name, r.state, r.live, r.in_flight, r.queued, r.cold_starts
                ));
            }
        }
        print!("{out}");
        std::io::stdout().flush()?;
        if once {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One function's line of `roost status`.
#[derive(Debug, serde::Serialize)]
struct StatusRow {
    name: String,
    state: &'static str,
    live: usize,
    in_flight: u64,
    queued: u64,
    cold_starts: u64,
}

/// `roost validate`: checks a definitions file; true when valid.
pub fn validate(path: &Path, json: bool) -> bool {
    let result = roost_common::spec::load_file(path);
    if json {
        let answer = match &result {
            Ok(defs) => serde_json::json!({
                "file": path,
                "ok": true,
                "functions": defs.iter().map(|(name, spec)| serde_json::json!({
                    "name": name, "runtime": spec.runtime.kind(), "version": spec.version,
                })).collect::<Vec<_>>(),
            }),
            Err(errors) => serde_json::json!({
                "file": path,
                "ok": false,
                "problems": errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            }),
        };
        println!("{answer}");
        return result.is_ok();
    }
    match result {
        Ok(defs) => {
            println!("{}: {} function(s) OK", path.display(), defs.len());
            for (name, spec) in &defs {
                println!("  {name:<20} {} {}", spec.runtime.kind(), spec.version);
            }
            true
        }
        Err(errors) => {
            eprintln!("{}: {} problem(s):", path.display(), errors.0.len());
            eprintln!("{errors}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_common::wire::status::{FunctionState, FunctionStatus};

    fn status(state: FunctionState, state_for_ms: Option<u64>, retry_in_ms: Option<u64>) -> FunctionStatus {
        FunctionStatus { state_for_ms, retry_in_ms, ..FunctionStatus::empty("f", state) }
    }

    #[test]
    fn states_say_what_they_wait_for() {
        assert_eq!(state_label(&status(FunctionState::Building, Some(12_300), None)), "building 13s");
        assert_eq!(state_label(&status(FunctionState::Failing, None, Some(3_500))), "failing, retry in 4s");
        assert_eq!(state_label(&status(FunctionState::Invalid, None, None)), "invalid");
        assert_eq!(indent("a\nb"), "    a\n    b");
    }
}
