//! Cold-start benchmark, run on demand (not a test): the orchestrator against real Redis,
//! the real control plane and the real Envoy. Each round wakes `hello` from zero through
//! the orchestrator's API, records the phases it reports (start, readiness, xDS ACK,
//! ready notice) and the time until a request through Envoy answers 200, then lets the
//! function go back to zero (idle timeout 300 ms) before the next round.
//!
//! ```text
//! cargo run --release -p roost-orchestrator --example cold-start -- process 30
//! cargo run --release -p roost-orchestrator --example cold-start -- docker 30
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use roost_orchestrator::RuntimeKind;
use roost_testkit::wait_until;
use std::time::{Duration, Instant};
use support::*;

const DEFS: &str = r#"
usable-functions:
  hello:
    version: 0.1
    configuration:
      programing_language: python
      base_function_file_name: hello.py
      function_folder: hello
    scaling: {idle_timeout: 300ms}
"#;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = match args.get(1).map(String::as_str).unwrap_or("process") {
        "process" => RuntimeKind::Process,
        "docker" => RuntimeKind::Docker,
        other => panic!("unknown runtime {other:?}: use process or docker"),
    };
    let rounds: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(30);
    let b = Backend::start().await;
    let defs = Defs::new(DEFS);
    let state = std::env::temp_dir().join(format!("roost-bench-{}", std::process::id()));
    let mut config = b.orchestrator_config(&defs, &state);
    config.runtime = runtime;
    let stop = tokio_util::sync::CancellationToken::new();
    let o = roost_orchestrator::start(config, stop.clone()).await.expect("orchestrator starts");
    let api = o.api_addr.port();
    wait_until(WAIT, "hello declared", || async { (!function_status(api, "hello").await.is_null()).then_some(()) }).await;
    // One warm-up round (Docker: the image is built before the first start).
    let (s, body) = wake(api, "hello").await;
    assert_eq!(s, 200, "{body}");

    let names = ["start", "readiness", "ack", "notice", "total", "first 200 via Envoy"];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 0..rounds {
        wait_until(WAIT, "hello back at zero", || async { (function_status(api, "hello").await["state"] == "sleeping").then_some(()) })
            .await;
        let t = Instant::now();
        let (s, body) = wake(api, "hello").await;
        assert_eq!(s, 200, "round {round}: {body}");
        let r = b.call("/hello").await;
        assert_eq!(r.status, 200, "round {round}: {}", r.body);
        let e2e = t.elapsed().as_secs_f64() * 1000.0;
        let p = &body["phases"];
        for (i, key) in ["start_ms", "readiness_ms", "ack_ms", "notice_ms", "total_ms"].iter().enumerate() {
            samples[i].push(p[key].as_f64().expect("phases reported"));
        }
        samples[5].push(e2e);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("cold start, {runtime:?} runtime, {rounds} rounds");
    println!("| phase | p50 | p99 |");
    println!("|---|---:|---:|");
    for (name, v) in names.iter().zip(samples.iter_mut()) {
        println!("| {name} | {:.1} ms | {:.1} ms |", pct(v, 0.5), pct(v, 0.99));
    }
    stop.cancel();
    o.wait().await.expect("the orchestrator stops cleanly");
}
