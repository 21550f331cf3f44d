//! xDS benchmark, run on demand (not a test): the release `control-plane` binary against
//! the real Envoy 1.40, over SotW and delta, with 1, 100 and 1,000 functions registered.
//!
//! For each case it measures the time from an admin-API endpoint change (sent with
//! `?wait=true`) to the answer that every Envoy has ACKed it, p50 and p99 over
//! `ROOST_BENCH_CHANGES` changes (default 200); the bytes sent to Envoy per change; and
//! the control plane's resident memory.
//!
//! ```text
//! cargo build --release -p roost-control-plane --bins --examples
//! ./target/release/examples/xds-bench
//! ```

use roost_common::wire::admin::{Applied, Change, NewEndpoint};
use roost_testkit::envoy::{Envoy, EnvoyOptions, XdsMode};
use roost_testkit::http;
use roost_testkit::process::{free_port, Guard};
use roost_testkit::wait_until;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Case {
    mode: XdsMode,
    functions: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    bytes_per_change: f64,
    rss_mb: f64,
}

/// The control token the benchmark's control plane is started with, and sends.
const TOKEN: &str = "xds-bench-0123456789abcdef";
const AUTH: (&str, &str) = ("Authorization", "Bearer xds-bench-0123456789abcdef");

async fn post(port: u16, path: &str, body: &impl serde::Serialize) -> Applied {
    let body = serde_json::to_vec(body).expect("admin bodies serialize");
    let r = http::request(port, "POST", path, &[AUTH], &body).await.unwrap_or_else(|e| panic!("POST {path}: {e}"));
    assert_eq!(r.status, 200, "POST {path}: {}", r.body);
    serde_json::from_str(&r.body).expect("the admin API's answer to a change")
}

async fn bytes_sent(admin: u16) -> u64 {
    let r = http::request(admin, "GET", "/envoys", &[AUTH], b"").await.expect("GET /envoys");
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["envoys"].as_array().unwrap().iter().map(|e| e["bytes_sent"].as_u64().unwrap()).sum()
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn run_case(binary: &std::path::Path, mode: XdsMode, functions: usize, changes: usize) -> Case {
    let (xds, admin) = (free_port(), free_port());
    let cp = Guard::spawn(
        "control-plane",
        Command::new(binary)
            .env("ROOST_XDS_BIND", format!("127.0.0.1:{xds}"))
            .env("ROOST_ADMIN_BIND", format!("127.0.0.1:{admin}"))
            .env("ROOST_CONTROL_TOKEN", TOKEN)
            .env("ROOST_LISTENER_ADDRESS", "127.0.0.1")
            .env("ROOST_LISTENER_PORT", free_port().to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    wait_until(Duration::from_secs(20), "control plane", || async { http::get(admin, "/healthz").await.ok().filter(|r| r.status == 200) })
        .await;
    let _envoy = Envoy::start(&EnvoyOptions::new(xds, mode)).await;
    let mut batch = Vec::new();
    for i in 0..functions {
        batch.push(Change::PutFunction { function: format!("f{i}"), concurrency: Some(4), timeout_ms: None, auth: None });
        batch.push(Change::AddEndpoint { function: format!("f{i}"), address: format!("127.0.0.1:{}", 20000 + i) });
    }
    post(admin, "/changes?wait=true&timeout_ms=60000", &batch).await;

    let bytes_before = bytes_sent(admin).await;
    let mut samples = Vec::with_capacity(changes);
    for i in 0..changes {
        // Alternately add and remove a second endpoint of one function.
        let t = Instant::now();
        if i % 2 == 0 {
            post(admin, "/functions/f0/endpoints?wait=true", &NewEndpoint { address: "127.0.0.1:19999".into() }).await;
        } else {
            let r = http::request(admin, "DELETE", "/functions/f0/endpoints/127.0.0.1:19999?wait=true", &[], b"")
                .await
                .expect("DELETE endpoint");
            assert_eq!(r.status, 200, "{}", r.body);
        }
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let bytes = bytes_sent(admin).await - bytes_before;
    let pid = cp.pid().expect("control plane running");
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Case {
        mode,
        functions,
        p50_ms: percentile(&samples, 0.5),
        p99_ms: percentile(&samples, 0.99),
        max_ms: *samples.last().unwrap(),
        bytes_per_change: bytes as f64 / changes as f64,
        rss_mb: rss_mb(pid),
    }
}

#[tokio::main]
async fn main() {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("control-plane")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| {
            eprintln!("xds-bench: control-plane binary not found next to the examples folder; run `cargo build --release -p roost-control-plane --bins --examples` first");
            std::process::exit(2)
        });
    let changes: usize = std::env::var("ROOST_BENCH_CHANGES").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    println!("| ADS | functions | change->ACK p50 | p99 | max | bytes to Envoy per change | control-plane RSS |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for mode in [XdsMode::Delta, XdsMode::Sotw] {
        for functions in [1, 100, 1000] {
            let c = run_case(&binary, mode, functions, changes).await;
            println!(
                "| {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} B | {:.1} MB |",
                if c.mode == XdsMode::Delta { "delta" } else { "SotW" },
                c.functions,
                c.p50_ms,
                c.p99_ms,
                c.max_ms,
                c.bytes_per_change,
                c.rss_mb
            );
        }
    }
    println!("({changes} endpoint changes per case, each sent with ?wait=true and timed until the answer)");
}
