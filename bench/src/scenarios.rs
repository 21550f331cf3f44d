//! The scenarios run against a started platform: cold start by phase, a burst from
//! zero, warm overhead (direct, Envoy, gate and Envoy), autoscale reaction, scale to zero
//! with an on/off load, and asynchronous calls (submit latency, delivery rate). Each is
//! bounded in requests and time.

use crate::client::{self, LoadResult};
use crate::floors;
use crate::platform::{show, Roost, IDLE_TIMEOUT};
use roost_common::wire::status::FunctionState;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Cold starts through the gate, with the orchestrator's phases of each.
#[derive(Debug, Default, Clone)]
pub struct ColdStart {
    /// Request sent to the gate until its 200 arrived, ms.
    pub e2e: Vec<f64>,
    /// Process or container started.
    pub start: Vec<f64>,
    /// Readiness probe passed.
    pub readiness: Vec<f64>,
    /// Endpoint ACKed by Envoy.
    pub ack: Vec<f64>,
    /// Ready flag set and published.
    pub notice: Vec<f64>,
    /// The orchestrator's total.
    pub total: Vec<f64>,
    /// The rest: the gate's wake signal reaching the orchestrator, the ready notice
    /// reaching the gate, and the first request through gate, Envoy and runtime.
    pub outside: Vec<f64>,
}

/// `rounds` cold starts of `cold` (idle timeout 300 ms) through the gate, after one
/// uncounted warm-up (which, with Docker, builds the image).
pub async fn cold_start(roost: &Roost, rounds: usize) -> anyhow::Result<ColdStart> {
    let mut out = ColdStart::default();
    for round in 0..=rounds {
        let f = roost.wait_function("cold", "back at zero", WAIT, |f| f.state == FunctionState::Sleeping).await?;
        let before = f.cold_starts;
        let t = Instant::now();
        let r = client::get_once(roost.public, "/cold").await?;
        let e2e = ms(t.elapsed());
        anyhow::ensure!(r.head.status == 200, "cold start round {round}: HTTP {}: {}", r.head.status, String::from_utf8_lossy(&r.body));
        let f = roost.function("cold").await?;
        anyhow::ensure!(f.cold_starts == before + 1, "cold start round {round}: expected one cold start, status: {}", show(&f));
        if round == 0 {
            continue;
        }
        let p = f.last_cold_start.ok_or_else(|| anyhow::anyhow!("status without last_cold_start: {}", show(&f)))?;
        out.e2e.push(e2e);
        out.start.push(p.start_ms);
        out.readiness.push(p.readiness_ms);
        out.ack.push(p.ack_ms);
        out.notice.push(p.notice_ms);
        out.total.push(p.total_ms);
        out.outside.push(e2e - p.total_ms);
    }
    Ok(out)
}

/// One burst of simultaneous requests to a sleeping function.
#[derive(Debug, Clone)]
pub struct BurstRound {
    /// What the clients saw.
    pub load: LoadResult,
    /// Replicas started for it (counted 1 s after the last answer).
    pub replicas_started: u64,
}

/// The same burst twice, the function back at zero before each: the first on a function
/// never called in bursts, the second once its history has one (what the runtime keeps
/// for a bursty function).
#[derive(Debug, Clone)]
pub struct Burst {
    /// The first burst.
    pub first: BurstRound,
    /// The second.
    pub again: BurstRound,
}

/// How long each request of the burst keeps its replica busy.
pub const BURST_HANDLER_MS: u64 = 50;
/// The burst function's `max_replicas` (platform.rs).
pub const BURST_MAX_REPLICAS: usize = 10;

/// `n` requests at once to `burst`, asleep, each taking [`BURST_HANDLER_MS`]; twice.
pub async fn burst(roost: &Roost, n: usize) -> anyhow::Result<Burst> {
    let first = burst_round(roost, n).await?;
    // Back to zero, and what a runtime keeps after a burst is in place (a paused
    // container is kept as each replica stops).
    let again = burst_round(roost, n).await?;
    Ok(Burst { first, again })
}

async fn burst_round(roost: &Roost, n: usize) -> anyhow::Result<BurstRound> {
    let f = roost.wait_function("burst", "asleep", WAIT, |f| f.state == FunctionState::Sleeping).await?;
    let before = f.cold_starts;
    let load = client::burst(roost.public, &format!("/burst?ms={BURST_HANDLER_MS}"), n).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = roost.function("burst").await?.cold_starts;
    Ok(BurstRound { load, replicas_started: after - before })
}

/// The same function at one concurrency, four ways.
#[derive(Debug, Clone)]
pub struct Overhead {
    /// Connections, each with one request outstanding.
    pub concurrency: usize,
    /// Straight to the replica.
    pub direct: LoadResult,
    /// Through a bare Envoy (static configuration, one route): the floor.
    pub bare_envoy: LoadResult,
    /// Through Roost's public entry (Envoy's public listener): what users get.
    pub public: LoadResult,
    /// Through the gate and Envoy's listener behind it: the way a request for a function
    /// without a serving replica takes once it is released.
    pub gate: LoadResult,
}

/// `warm` (one replica, never asleep) at each concurrency: direct, through a bare Envoy
/// (the floor, [`floors::ProxyChain`]'s Envoy), through Roost's public entry, and through
/// Roost's gate and the Envoy listener behind it, interleaved in `reps` slices of `slice`
/// each so drift on the machine hits all four alike.
pub async fn overhead(roost: &Roost, concurrencies: &[usize], reps: usize, slice: Duration) -> anyhow::Result<Vec<Overhead>> {
    let f = roost.wait_function("warm", "its replica ready", WAIT, |f| f.ready_replicas() == 1).await?;
    let direct: SocketAddr = f.replicas.first().map(|r| r.address.as_str()).unwrap_or_default().parse()?;
    let chain = floors::ProxyChain::start(&roost.envoy_bin, direct, "/warm", &roost.work_dir.join("proxy-floor")).await?;
    let paths = [(direct, "/"), (chain.envoy_addr, "/warm"), (roost.public, "/warm"), (roost.public, "/warm")];
    let mut out = Vec::new();
    for &c in concurrencies {
        for (addr, path) in paths {
            let _ = client::closed_loop(addr, path, c, Duration::from_millis(300)).await;
        }
        let mut runs: [LoadResult; 4] = Default::default();
        for _ in 0..reps {
            for (run, (addr, path)) in runs.iter_mut().zip(paths) {
                run.merge(client::closed_loop(addr, path, c, slice).await);
            }
        }
        let [direct, bare_envoy, public, gate] = runs;
        out.push(Overhead { concurrency: c, direct, bare_envoy, public, gate });
    }
    chain.stop().await;
    Ok(out)
}

/// Asynchronous calls at one concurrency.
#[derive(Debug, Default, Clone)]
pub struct Asynchronous {
    /// Connections.
    pub concurrency: usize,
    /// `POST /warm` answered by the function through the public entry (the comparison).
    pub call: LoadResult,
    /// `POST /async/warm` answered 202 (stored in Redis) through the public entry.
    pub submit: LoadResult,
    /// From the first submit until the function's queue was empty, ms.
    pub delivered_after_ms: f64,
}

/// Per concurrency: a closed loop of `POST /warm`, then one of `POST /async/warm` for
/// `slice`, then the wait until the worker has delivered every submitted call (the
/// function's queue in Redis is empty).
pub async fn asynchronous(roost: &Roost, concurrencies: &[usize], slice: Duration) -> anyhow::Result<Vec<Asynchronous>> {
    roost.wait_function("warm", "its replica ready", WAIT, |f| f.ready_replicas() == 1).await?;
    let redis = redis::Client::open(roost.redis_url.as_str())?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let queue = roost_common::keys::async_queue("warm");
    let mut out = Vec::new();
    for &c in concurrencies {
        let _ = client::closed_loop_method(roost.public, "POST", "/warm", c, Duration::from_millis(300)).await;
        let call = client::closed_loop_method(roost.public, "POST", "/warm", c, slice).await;
        let start = Instant::now();
        let submit = client::closed_loop_method(roost.public, "POST", "/async/warm", c, slice).await;
        let deadline = start + Duration::from_secs(300);
        loop {
            let left: u64 = redis::cmd("XLEN").arg(&queue).query_async(&mut conn).await?;
            if left == 0 {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{left} calls still queued 300 s after the first submit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        out.push(Asynchronous { concurrency: c, call, submit, delivered_after_ms: ms(start.elapsed()) });
    }
    Ok(out)
}

/// Autoscale reaction rounds.
#[derive(Debug, Default, Clone)]
pub struct Autoscale {
    /// Load start until the first answer from a second replica, ms.
    pub samples: Vec<f64>,
    /// Requests answered and failed during the rounds.
    pub load: LoadResult,
}

/// `rounds` times: `whoami` at one warm replica (one request at a time each), then
/// `concurrency` clients each calling `/whoami?ms=<handler_ms>` back to back through the
/// gate; the sample is the time until an answer names another replica.
pub async fn autoscale(roost: &Roost, rounds: usize, concurrency: usize, handler_ms: u64) -> anyhow::Result<Autoscale> {
    let mut out = Autoscale::default();
    let path = format!("/whoami?ms={handler_ms}");
    for round in 0..rounds {
        roost
            .wait_function("whoami", "exactly one replica", WAIT, |f| f.ready_replicas() == 1 && f.replicas.len() == 1 && f.starting == 0)
            .await?;
        let first = client::get_once(roost.public, "/whoami").await?;
        anyhow::ensure!(first.head.status == 200, "whoami answered {}", first.head.status);
        let first: serde_json::Value = serde_json::from_slice(&first.body)?;
        let first = first["replica"].as_str().unwrap_or_default().to_string();
        let start = Instant::now();
        let deadline = start + Duration::from_secs(10);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (path, first, tx, stop, gate) = (path.clone(), first.clone(), tx.clone(), stop.clone(), roost.gate);
                tokio::spawn(async move {
                    let go = || !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline;
                    client::loop_worker(gate, &path, go, |r| {
                        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                        if r.head.status == 200 && v["replica"].as_str().is_some_and(|id| id != first) {
                            let _ = tx.send(start.elapsed());
                        }
                    })
                    .await
                })
            })
            .collect();
        drop(tx);
        let seen = rx.recv().await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in futures::future::join_all(workers).await {
            out.load.merge(w?);
        }
        let seen = seen.ok_or_else(|| anyhow::anyhow!("autoscale round {round}: no second replica answered within 10 s"))?;
        out.samples.push(ms(seen));
    }
    Ok(out)
}

/// Scale to zero: timing and an on/off load.
#[derive(Debug, Default, Clone)]
pub struct ScaleToZero {
    /// From the idle timeout's end (last answer + timeout) until the function was at
    /// zero, ms.
    pub late_ms: Vec<f64>,
    /// Every request of the on/off load.
    pub onoff: LoadResult,
    /// On/off cycles run.
    pub cycles: usize,
    /// Cold starts during the on/off load.
    pub cold_starts: u64,
}

/// The pauses of the on/off load, as multiples of the idle timeout: some end before it,
/// some just at or after it (while the function goes to sleep), some long after.
pub const OFF_FACTORS: [f64; 8] = [0.5, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0];

/// `rounds` timings of `onoff` going to zero, then on/off cycles (1 s at
/// `concurrency`, then a pause from [`OFF_FACTORS`]) until at least `min_requests`
/// requests and every pause were run, or `max_time` passed.
pub async fn scale_to_zero(
    roost: &Roost,
    rounds: usize,
    concurrency: usize,
    min_requests: u64,
    max_time: Duration,
) -> anyhow::Result<ScaleToZero> {
    let mut out = ScaleToZero::default();
    for round in 0..rounds {
        roost.wait_function("onoff", "asleep", WAIT, |f| f.state == FunctionState::Sleeping).await?;
        let r = client::get_once(roost.public, "/onoff").await?;
        anyhow::ensure!(r.head.status == 200, "scale-to-zero round {round}: HTTP {}", r.head.status);
        let last = Instant::now();
        roost.wait_function("onoff", "back at zero", WAIT, |f| f.state == FunctionState::Sleeping).await?;
        out.late_ms.push(ms(last.elapsed()) - ms(IDLE_TIMEOUT));
    }
    let before = roost.function("onoff").await?.cold_starts;
    let start = Instant::now();
    while (out.onoff.ok + out.onoff.errors < min_requests || out.cycles < OFF_FACTORS.len()) && start.elapsed() < max_time {
        out.onoff.merge(client::closed_loop(roost.public, "/onoff", concurrency, Duration::from_secs(1)).await);
        tokio::time::sleep(IDLE_TIMEOUT.mul_f64(OFF_FACTORS[out.cycles % OFF_FACTORS.len()])).await;
        out.cycles += 1;
    }
    out.cold_starts = roost.function("onoff").await?.cold_starts - before;
    Ok(out)
}
