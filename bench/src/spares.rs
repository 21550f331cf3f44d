//! Spare policies compared (Docker runtime): one paused spare per function, none, and the
//! memory budget (`ROOST_SPARE_MEMORY`), each on its own freshly started platform with the
//! same many functions and the same seeded workload: calls drawn with a Zipf popularity
//! at random times, each function back to zero two seconds after its last call, so most
//! calls of all but the hottest functions are cold starts.

use crate::client::{self, LoadResult};
use crate::platform::Roost;
use bollard::query_parameters::ListContainersOptionsBuilder;
use roost_cli::up::Runtime;
use roost_orchestrator::runtime::docker::held_memory;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Functions declared.
pub const FUNCTIONS: usize = 60;
/// Calls in the workload.
pub const CALLS: usize = 240;
/// Mean time between two calls (exponential gaps).
pub const MEAN_GAP: Duration = Duration::from_millis(500);
/// The Zipf exponent of the functions' popularity.
pub const ZIPF_S: f64 = 1.0;
/// The functions counted as the hottest (by rank in the popularity).
pub const HOTTEST: usize = 10;

/// One policy, as `ROOST_SPARE_MEMORY` says it.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// For the report.
    pub name: &'static str,
    /// The setting.
    pub spare_memory: &'static str,
}

/// The policies compared, in the report's order.
pub const POLICIES: [Policy; 3] = [
    Policy { name: "one spare per function", spare_memory: "unlimited" },
    Policy { name: "no spares", spare_memory: "0" },
    Policy { name: "budget of 512 MB (the default)", spare_memory: "512m" },
];

/// What one policy got.
#[derive(Debug, Clone)]
pub struct PolicyRun {
    /// The policy.
    pub policy: Policy,
    /// The workload's calls.
    pub calls: Calls,
    /// Paused spares when the workload started, and the memory they held.
    pub spares: usize,
    /// Bytes the paused spares held (`docker stats`, less reclaimable page cache).
    pub spare_bytes: u64,
}

/// The functions' names, hottest first.
pub fn names() -> Vec<String> {
    (0..FUNCTIONS).map(|i| format!("f{i:03}")).collect()
}

/// Definitions of `names`, each the `hello` example, at most one replica, back to zero 2 s
/// after its last call.
pub fn definitions(names: &[String]) -> String {
    let mut d = String::from("# Written by roost-bench: the spare-policy workload's functions.\nusable-functions:\n");
    for n in names {
        d.push_str(&format!(
            "  {n}:\n    version: \"1\"\n    configuration: {{programing_language: python, base_function_file_name: hello.py, function_folder: hello}}\n    scaling: {{max_replicas: 1, idle_timeout: 2s}}\n"
        ));
    }
    d
}

/// xorshift64*: a small seeded generator, so every policy gets the same workload.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The workload: (time from the start, function index), from a fixed seed.
pub fn workload() -> Vec<(Duration, usize)> {
    zipf_workload(FUNCTIONS, CALLS, MEAN_GAP)
}

/// `calls` calls over `functions` functions (index 0 the most popular, Zipf with
/// exponent [`ZIPF_S`]), `mean_gap` apart on average (exponential gaps), from a fixed seed.
pub fn zipf_workload(functions: usize, calls: usize, mean_gap: Duration) -> Vec<(Duration, usize)> {
    let weights: Vec<f64> = (1..=functions).map(|k| 1.0 / (k as f64).powf(ZIPF_S)).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(functions);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cdf.push(acc);
    }
    let mut rng = Rng(0x05ee_d0f5_a2e5);
    let mut at = Duration::ZERO;
    (0..calls)
        .map(|_| {
            at += mean_gap.mul_f64(-(1.0 - rng.next_f64()).ln());
            let u = rng.next_f64();
            (at, cdf.partition_point(|c| *c < u).min(functions - 1))
        })
        .collect()
}

/// The paused containers on the functions' network and the memory they hold.
pub async fn paused_spares(docker: &bollard::Docker) -> anyhow::Result<(usize, u64)> {
    let filters = HashMap::from([("label", vec!["roost.managed=true"]), ("status", vec!["paused"])]);
    let list = docker.list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build())).await?;
    let mut bytes = 0;
    for id in list.iter().filter_map(|c| c.id.as_deref()) {
        bytes += held_memory(docker, id).await.unwrap_or(0);
    }
    Ok((list.len(), bytes))
}

/// Waits until the number of paused spares has not changed for 5 s (at most 5 minutes):
/// the policy has prepared what it keeps.
pub async fn settle(docker: &bollard::Docker) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = (usize::MAX, Instant::now());
    while Instant::now() < deadline {
        let (n, _) = paused_spares(docker).await?;
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() >= Duration::from_secs(5) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("the spares did not settle within 5 minutes")
}

/// Runs the workload under each policy.
pub async fn compare(home: &Path, bin_dir: &Path, work: &Path, docker_socket: &str) -> anyhow::Result<Vec<PolicyRun>> {
    let docker = bollard::Docker::connect_with_unix(docker_socket, 60, bollard::API_DEFAULT_VERSION)?;
    let names = names();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let defs = definitions(&names);
    let calls = workload();
    let mut out = Vec::new();
    for (i, policy) in POLICIES.into_iter().enumerate() {
        // The orchestrator `roost up` starts inherits it.
        std::env::set_var(roost_common::env::SPARE_MEMORY, policy.spare_memory);
        let mut roost = Roost::start_with(home, bin_dir, &work.join(format!("spares-{i}")), Runtime::Docker, &defs, &refs).await;
        std::env::remove_var(roost_common::env::SPARE_MEMORY);
        let run = match roost.as_mut() {
            Ok(roost) => run_policy(roost, &docker, policy, &names, &calls).await,
            Err(e) => Err(anyhow::anyhow!("{e:#}")),
        };
        if let Ok(mut roost) = roost {
            let check = roost.check();
            roost.stop();
            check?;
        }
        out.push(run?);
    }
    Ok(out)
}

async fn run_policy(
    roost: &Roost,
    docker: &bollard::Docker,
    policy: Policy,
    names: &[String],
    calls: &[(Duration, usize)],
) -> anyhow::Result<PolicyRun> {
    // Every function back at zero, and the spares the policy keeps prepared.
    roost.wait_for("every function asleep", Duration::from_secs(120), |s| s.functions.iter().all(|f| f.ready_replicas() == 0)).await?;
    settle(docker).await?;
    let (spares, spare_bytes) = paused_spares(docker).await?;
    let calls = run_calls(roost.public, names, calls).await?;
    Ok(PolicyRun { policy, calls, spares, spare_bytes })
}

/// What a workload of calls got.
#[derive(Debug, Clone, Default)]
pub struct Calls {
    /// Every call.
    pub load: LoadResult,
    /// Calls answered after a cold start (`X-Roost-Cold-Start` other than `none`).
    pub cold: u64,
    /// Latency of cold calls to the [`HOTTEST`] functions, ms.
    pub cold_hot_ms: Vec<f64>,
    /// Latency of cold calls to the others, ms.
    pub cold_rest_ms: Vec<f64>,
}

/// Sends `calls` (time from now, function index) through `public`, each a GET of its
/// function on a connection of its own.
pub async fn run_calls(public: std::net::SocketAddr, names: &[String], calls: &[(Duration, usize)]) -> anyhow::Result<Calls> {
    let start = Instant::now();
    let tasks: Vec<_> = calls
        .iter()
        .map(|&(at, f)| {
            let path = format!("/{}", names[f]);
            tokio::spawn(async move {
                tokio::time::sleep_until((start + at).into()).await;
                let t = Instant::now();
                let r = client::get_once(public, &path).await;
                (f, t.elapsed(), r)
            })
        })
        .collect();
    let mut out = Calls::default();
    for t in futures::future::join_all(tasks).await {
        let (f, took, r) = t?;
        if r.as_ref().ok().and_then(|r| r.head.header("x-roost-cold-start")).is_some_and(|v| v != "none") {
            out.cold += 1;
            let ms = took.as_secs_f64() * 1000.0;
            if f < HOTTEST {
                out.cold_hot_ms.push(ms);
            } else {
                out.cold_rest_ms.push(ms);
            }
        }
        out.load.record_took(took, r);
    }
    out.load.elapsed = start.elapsed();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_is_the_same_every_time_and_zipf_shaped() {
        let a = workload();
        assert_eq!(a, workload());
        assert_eq!(a.len(), CALLS);
        let mut per = vec![0usize; FUNCTIONS];
        for (_, f) in &a {
            per[*f] += 1;
        }
        assert!(per[0] > per[9] && per[9] > 0, "{per:?}");
        let hot: usize = per[..HOTTEST].iter().sum();
        assert!(hot > CALLS / 3, "the ten hottest take a large share: {hot}");
        let span = a.last().unwrap().0;
        assert!(span > Duration::from_secs(90) && span < Duration::from_secs(180), "{span:?}");
    }
}
