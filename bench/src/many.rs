//! Many functions on one host: a fresh platform with `n` functions declared at once (1,000
//! in containers, 10,000 as processes by default). It measures the time until every
//! function is declared and the first call is answered, what each component holds in
//! memory and burns in CPU while every function sleeps (and the paused spares, with
//! Docker), the bytes and the ACK latency of one xDS change (a function's first endpoint
//! and its removal), and cold starts under a Zipf workload.

use crate::client;
use crate::platform::Roost;
use crate::spares;
use roost_cli::up::Runtime;
use roost_common::wire::status::FunctionState;
use std::path::Path;
use std::time::{Duration, Instant};

/// Calls in the Zipf workload.
pub const CALLS: usize = 300;
/// Mean time between two calls (exponential gaps).
pub const MEAN_GAP: Duration = Duration::from_millis(500);
/// How long the components are watched while every function sleeps.
pub const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// One component's memory and CPU while every function sleeps.
#[derive(Debug, Clone)]
pub struct Usage {
    /// The component (with its child processes).
    pub name: String,
    /// Resident memory, bytes.
    pub rss: u64,
    /// CPU over [`IDLE_WINDOW`], percent of one core.
    pub cpu_percent: f64,
}

/// One xDS change as Envoy gets it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Push {
    /// Bytes the control plane sent to Envoy for it.
    pub bytes: u64,
    /// From the request to the control plane until Envoy's ACK, ms.
    pub ms: f64,
}

/// What one runtime got.
#[derive(Debug, Clone)]
pub struct ManyRun {
    /// `process` or `docker`.
    pub runtime: String,
    /// Functions declared.
    pub functions: usize,
    /// From `roost up`'s start until the orchestrator lists every function.
    pub declared: Duration,
    /// From `roost up`'s start until every function's image is built (no function
    /// `building`; at once for processes).
    pub built: Duration,
    /// From `roost up`'s start until the first call (to the last function) is answered.
    pub serving: Duration,
    /// Every component while all sleep.
    pub components: Vec<Usage>,
    /// Paused spare containers and the memory they hold (Docker).
    pub spares: Option<(usize, u64)>,
    /// A function's first endpoint (its route goes direct).
    pub push_add: Push,
    /// Its removal (its route goes back to the gate).
    pub push_remove: Push,
    /// The Zipf workload's calls.
    pub calls: spares::Calls,
}

impl ManyRun {
    /// Memory of every component and spare together, bytes.
    pub fn total_bytes(&self) -> u64 {
        self.components.iter().map(|c| c.rss).sum::<u64>() + self.spares.map_or(0, |(_, b)| b)
    }
}

/// `n` functions named `m00000`... (hottest first, and declared in that order: the
/// spare budget gives functions never started their spares in declaration order, so
/// here the hottest get them first), each the `hello` example.
pub fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i:05}")).collect()
}

// ---------- /proc ----------

/// A process's parent, resident bytes and CPU ticks, from /proc.
fn proc_stat(pid: u32) -> Option<(u32, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (in parentheses, which may hold spaces).
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let ticks = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    let rss_pages: u64 = rest.get(21)?.parse().ok()?;
    Some((ppid, rss_pages * 4096, ticks))
}

/// A process and all its descendants.
fn tree(root: u32) -> Vec<u32> {
    let all: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?.0)))
        .collect();
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    out
}

/// Resident bytes and CPU ticks of a process tree now.
fn tree_usage(root: u32) -> (u64, u64) {
    tree(root).into_iter().filter_map(proc_stat).fold((0, 0), |(r, t), (_, rss, ticks)| (r + rss, t + ticks))
}

async fn components(roost: &Roost) -> Vec<Usage> {
    let pids = roost.pids();
    let before: Vec<u64> = pids.iter().map(|(_, p)| tree_usage(*p).1).collect();
    tokio::time::sleep(IDLE_WINDOW).await;
    // /proc counts CPU time in clock ticks, 100 a second on Linux (sysconf(_SC_CLK_TCK)).
    let ticks_per_s = 100.0;
    pids.iter()
        .zip(before)
        .map(|((name, pid), t0)| {
            let (rss, t1) = tree_usage(*pid);
            Usage {
                name: name.to_string(),
                rss,
                cpu_percent: (t1.saturating_sub(t0)) as f64 / ticks_per_s / IDLE_WINDOW.as_secs_f64() * 100.0,
            }
        })
        .collect()
}

// ---------- the control plane ----------

async fn sent_bytes(roost: &Roost) -> anyhow::Result<u64> {
    let r = roost.control_plane_api("GET", "/envoys", b"").await?;
    let v: serde_json::Value = serde_json::from_str(&r)?;
    Ok(v["envoys"].as_array().map_or(0, |a| a.iter().filter_map(|e| e["bytes_sent"].as_u64()).sum()))
}

/// One change through the control plane's admin API, waited for Envoy's ACK.
async fn push(roost: &Roost, method: &str, path: &str, body: &[u8]) -> anyhow::Result<Push> {
    let before = sent_bytes(roost).await?;
    let t = Instant::now();
    roost.control_plane_api(method, path, body).await?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    // The response is sent before the ACK comes back: the byte count is already final.
    Ok(Push { bytes: sent_bytes(roost).await?.saturating_sub(before), ms })
}

// ---------- the run ----------

/// Runs `n` functions on a fresh platform of `runtime`.
pub async fn run(home: &Path, bin_dir: &Path, work: &Path, runtime: Runtime, n: usize, docker_socket: &str) -> anyhow::Result<ManyRun> {
    let names = names(n);
    let defs = spares::definitions(&names);
    let t0 = Instant::now();
    let mut roost = Roost::start_declared(home, bin_dir, &work.join(format!("many-{}", runtime.as_str())), runtime, &defs, n).await?;
    let declared = t0.elapsed();
    let out = measure(&roost, runtime, &names, t0, declared, docker_socket).await;
    let check = roost.check();
    roost.stop();
    check?;
    out
}

async fn measure(
    roost: &Roost,
    runtime: Runtime,
    names: &[String],
    t0: Instant,
    declared: Duration,
    docker_socket: &str,
) -> anyhow::Result<ManyRun> {
    let last = names.last().expect("at least one function");
    // Docker builds an image per function as it is declared (at most two at once): the
    // first call waits for them all, or a call to a function still queued would wait for
    // the builds before it.
    roost
        .wait_for_slowly("every image built", Duration::from_secs(3600), |s| s.functions.iter().all(|f| f.state != FunctionState::Building))
        .await?;
    let built = t0.elapsed();
    let first = client::get_once(roost.public, &format!("/{last}")).await?;
    anyhow::ensure!(first.head.status == 200, "the first call to {last} answered {}", first.head.status);
    let serving = t0.elapsed();
    roost
        .wait_for_slowly("every function asleep", Duration::from_secs(300), |s| s.functions.iter().all(|f| f.ready_replicas() == 0))
        .await?;
    let docker = match runtime {
        Runtime::Docker => Some(bollard::Docker::connect_with_unix(docker_socket, 60, bollard::API_DEFAULT_VERSION)?),
        Runtime::Process => None,
    };
    if let Some(d) = &docker {
        spares::settle(d).await?;
    }
    let components = components(roost).await;
    let spares = match &docker {
        Some(d) => Some(spares::paused_spares(d).await?),
        None => None,
    };
    // The coldest function gets an endpoint nobody calls, and loses it.
    let quiet = &names[names.len() / 2];
    let addr = "127.0.0.1:9";
    let push_add =
        push(roost, "POST", &format!("/functions/{quiet}/endpoints?wait=true"), format!(r#"{{"address":"{addr}"}}"#).as_bytes()).await?;
    let push_remove = push(roost, "DELETE", &format!("/functions/{quiet}/endpoints/{addr}?wait=true"), b"").await?;

    let calls = spares::run_calls(roost.public, names, &spares::zipf_workload(names.len(), CALLS, MEAN_GAP)).await?;
    Ok(ManyRun {
        runtime: runtime.as_str().to_string(),
        functions: names.len(),
        declared,
        built,
        serving,
        components,
        spares,
        push_add,
        push_remove,
        calls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_tree_is_read_from_proc() {
        let me = std::process::id();
        let (rss, _) = tree_usage(me);
        assert!(rss > 1024 * 1024, "this test process holds more than 1 MiB: {rss}");
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert!(tree(me).contains(&child.id()), "a child is in its parent's tree");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(names(3), ["m00000", "m00001", "m00002"]);
    }
}
