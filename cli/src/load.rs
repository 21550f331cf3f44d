//! `roost load`: sends requests to one function at a fixed rate for a fixed time and
//! prints, every second, requests answered, errors, latency p50/p99 and the function's
//! replicas, so a user watches the platform scale up and back down.

use crate::client::{self, Endpoints};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Function name.
    pub function: String,
    /// Path after the function (with query), e.g. `/` or `/?ms=200`.
    pub path: String,
    /// Requests started per second.
    pub rate: u32,
    /// How long to send.
    pub duration: Duration,
    /// Most requests outstanding at once (beyond it a tick's requests are skipped and
    /// counted as errors: the client, not the platform, is then the bottleneck).
    pub max_outstanding: usize,
    /// Print JSON lines instead of a table.
    pub json: bool,
}

#[derive(Default)]
struct Second {
    ok: u64,
    errors: u64,
    latencies_ms: Vec<f64>,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs the load; returns the total (ok, errors).
pub async fn run(e: &Endpoints, spec: &LoadSpec) -> anyhow::Result<(u64, u64)> {
    let client = client::http();
    let url = format!("{}/{}{}", e.gate, spec.function, spec.path);
    let window = Arc::new(Mutex::new(Second::default()));
    let outstanding = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (mut total_ok, mut total_err) = (0u64, 0u64);
    if !spec.json {
        println!("{:>4} {:>7} {:>7} {:>9} {:>9} {:>9}", "SEC", "REQ/S", "ERRORS", "P50 MS", "P99 MS", "REPLICAS");
    }
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(spec.rate.max(1)));
    let mut next = Instant::now();
    let mut next_report = start + Duration::from_secs(1);
    let mut sec = 0;
    while start.elapsed() < spec.duration || outstanding.load(std::sync::atomic::Ordering::SeqCst) > 0 {
        let now = Instant::now();
        if start.elapsed() < spec.duration && now >= next {
            next += period;
            if outstanding.load(std::sync::atomic::Ordering::SeqCst) >= spec.max_outstanding {
                window.lock().unwrap().errors += 1;
            } else {
                outstanding.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (client, url, window, outstanding) = (client.clone(), url.clone(), window.clone(), outstanding.clone());
                tokio::spawn(async move {
                    let t = Instant::now();
                    let ok = matches!(client.get(&url).send().await, Ok(r) if r.status().is_success());
                    let mut w = window.lock().unwrap();
                    if ok {
                        w.ok += 1;
                        w.latencies_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        w.errors += 1;
                    }
                    outstanding.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        }
        if now >= next_report {
            next_report += Duration::from_secs(1);
            sec += 1;
            let mut w = std::mem::take(&mut *window.lock().unwrap());
            total_ok += w.ok;
            total_err += w.errors;
            let replicas = client::status(&client, e).await.ok().and_then(|s| s.function(&spec.function).map(|f| f.ready_replicas()));
            let (p50, p99) = (pct(&mut w.latencies_ms, 0.5), pct(&mut w.latencies_ms, 0.99));
            if spec.json {
                let line = serde_json::json!({ "second": sec, "ok": w.ok, "errors": w.errors, "p50_ms": p50, "p99_ms": p99, "replicas": replicas });
                println!("{line}");
            } else {
                let replicas = replicas.map_or_else(|| "?".into(), |r| r.to_string());
                println!("{sec:>4} {:>7} {:>7} {p50:>9.1} {p99:>9.1} {replicas:>9}", w.ok, w.errors);
            }
        }
        let wake = next.min(next_report);
        tokio::time::sleep_until(tokio::time::Instant::from_std(wake.max(Instant::now()))).await;
    }
    let w = std::mem::take(&mut *window.lock().unwrap());
    total_ok += w.ok;
    total_err += w.errors;
    if spec.json {
        println!("{}", serde_json::json!({ "total_ok": total_ok, "total_errors": total_err }));
    } else {
        println!("total: {total_ok} ok, {total_err} errors");
    }
    Ok((total_ok, total_err))
}
