//! statsd-listener benchmark, run on demand (not a test).
//!
//! 1. Parse + aggregate throughput on one core: Envoy-shaped lines for 100 functions,
//!    packed into ~1,400-byte datagrams, fed to the same code the UDP loop runs.
//! 2. Datagrams per second received with zero loss: the listener (this process, one
//!    runtime thread) and a second process sending at fixed rates on loopback for 1 s
//!    each; a rate passes when every datagram sent was counted.
//!
//! ```text
//! cargo run --release -p roost-statsd-listener --example statsd-bench
//! ```

use roost_statsd_listener::aggregate::Aggregator;
use roost_statsd_listener::metrics::Stats;
use roost_statsd_listener::server::handle_datagram;
use std::collections::HashSet;
use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn datagrams() -> Vec<Vec<u8>> {
    let stats = ["upstream_rq_active:3|g", "upstream_rq_pending_active:0|g", "upstream_rq_total:7|c", "upstream_cx_none_healthy:0|c"];
    let mut out = Vec::new();
    let mut d = String::new();
    for i in 0..10_000 {
        let line = format!("envoy.cluster.fn-f{}.{}\n", i % 100, stats[i % stats.len()]);
        if d.len() + line.len() > 1400 {
            out.push(std::mem::take(&mut d).into_bytes());
        }
        d.push_str(&line);
    }
    out.push(d.into_bytes());
    out
}

fn parse_throughput() -> f64 {
    let data = datagrams();
    let mut agg = Aggregator::default();
    agg.set_declared((0..100).map(|i| format!("f{i}")).collect());
    let stats = Stats::default();
    let mut queued = HashSet::new();
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        for d in &data {
            handle_datagram(&mut agg, &stats, d, ([127, 0, 0, 1], 8125).into(), 1, &mut queued);
        }
        rounds += 1;
    }
    let _ = rounds;
    stats.lines.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn sender(addr: &str, rate: u64) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let payload = b"envoy.cluster.fn-f1.upstream_rq_active:3|g\nenvoy.cluster.fn-f1.upstream_rq_total:1|c";
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < rate {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due.min(rate) {
            if socket.send_to(payload, addr).is_ok() {
                sent += 1;
            }
        }
        if sent < due {
            continue;
        }
        std::hint::spin_loop();
    }
    println!("{sent} {}", start.elapsed().as_secs_f64());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("send") {
        sender(&args[2], args[3].parse().unwrap());
        return;
    }
    let lines = parse_throughput();
    println!("| measure | result | target |");
    println!("|---|---:|---:|");
    println!("| lines parsed and aggregated per second, one core | {:.2} million | 2 million |", lines / 1e6);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use clap::Parser;
        let mut c = roost_statsd_listener::Config::parse_from(["statsd-listener"]);
        c.bind = "127.0.0.1:0".parse().unwrap();
        c.metrics_bind = "127.0.0.1:0".parse().unwrap();
        c.redis_url = "redis://127.0.0.1:1/".into(); // no Redis: measures receiving only
        let stop = tokio_util::sync::CancellationToken::new();
        let running = roost_statsd_listener::start(c, stop.clone()).await.unwrap();
        let addr = running.udp_addr.to_string();
        let mut best = 0;
        for rate in [50_000u64, 100_000, 200_000, 300_000, 400_000] {
            let before = running.stats.packets.load(Ordering::Relaxed);
            let exe = std::env::current_exe().unwrap();
            let out = tokio::process::Command::new(exe).args(["send", &addr, &rate.to_string()]).output().await.unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let mut parts = text.split_whitespace();
            let sent: u64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let secs: f64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let got = running.stats.packets.load(Ordering::Relaxed) - before;
            let lost = sent.saturating_sub(got);
            let achieved = sent as f64 / secs;
            println!(
                "| asked {rate}/s, sent {sent} in {secs:.2} s ({achieved:.0}/s): received {got} | {lost} lost | 0 lost at 200,000/s |"
            );
            if lost == 0 && achieved > best as f64 {
                best = achieved as u64;
            }
        }
        println!("| highest achieved send rate with zero loss | {best} datagrams/s | 200,000 |");
        stop.cancel();
    });
}
