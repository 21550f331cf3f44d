//! `roost ls`, `roost invoke`, `roost status` and `roost validate`.

use crate::client::{self, Endpoints};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// `roost ls`: functions, replicas and state, as a table or JSON.
pub async fn ls(e: &Endpoints, json: bool) -> anyhow::Result<()> {
    let s = client::status(&client::http(), e).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s.functions)?);
        return Ok(());
    }
    println!("{:<24} {:<10} {:>8} {:>8} {:>11}  LAST ERROR", "FUNCTION", "STATE", "READY", "STARTING", "COLD STARTS");
    for f in &s.functions {
        println!(
            "{:<24} {:<10} {:>8} {:>8} {:>11}  {}",
            f.name,
            f.state.as_str(),
            f.ready_replicas(),
            f.starting,
            f.cold_starts,
            f.last_error.as_deref().unwrap_or("")
        );
    }
    if let Some(err) = &s.definitions_error {
        println!("\nthe newest edit of {} was refused (the last good definitions serve):\n{err}", s.definitions);
    }
    Ok(())
}

/// `roost invoke`: calls a function through the gate and prints the answer.
pub async fn invoke(e: &Endpoints, function: &str, data: Option<&str>, path: &str) -> anyhow::Result<bool> {
    let url = format!("{}/{}{}", e.gate, function, path);
    let client = client::http();
    let req = match data {
        Some(d) => client.post(&url).header("content-type", "application/json").body(d.to_string()),
        None => client.get(&url),
    };
    let r = req.send().await.map_err(|err| e.gate_unreachable(&err))?;
    let status = r.status();
    let cold = r.headers().get("x-roost-cold-start").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = r.text().await?;
    println!("{body}");
    eprintln!("HTTP {}{}", status.as_u16(), cold.map(|c| format!(", cold start: {c}")).unwrap_or_default());
    Ok(status.is_success())
}

/// `roost status`: replicas, in flight, queued and cold starts, refreshed every second.
pub async fn watch(e: &Endpoints, once: bool) -> anyhow::Result<()> {
    let client = client::http();
    let mut redis = redis::Client::open(e.redis.as_str())?.get_multiplexed_async_connection().await?;
    loop {
        let s = client::status(&client, e).await?;
        let mut out = String::new();
        if !once {
            out.push_str("\x1b[2J\x1b[H");
        }
        out.push_str(&format!(
            "{:<24} {:<10} {:>6} {:>9} {:>7} {:>11}\n",
            "FUNCTION", "STATE", "LIVE", "IN FLIGHT", "QUEUED", "COLD STARTS"
        ));
        for f in &s.functions {
            let (in_flight, queued) = client::load(&mut redis, &f.name).await;
            out.push_str(&format!(
                "{:<24} {:<10} {:>6} {:>9} {:>7} {:>11}\n",
                f.name,
                f.state.as_str(),
                f.replicas.len(),
                in_flight,
                queued,
                f.cold_starts
            ));
        }
        print!("{out}");
        std::io::stdout().flush()?;
        if once {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `roost validate`: checks a definitions file; true when valid.
pub fn validate(path: &Path) -> bool {
    match roost_common::spec::load_file(path) {
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
