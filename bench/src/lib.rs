//! roost-bench: Roost's benchmark suite. One command starts the real platform (processes,
//! and containers where a Docker engine answers), measures cold start, a burst from zero,
//! warm overhead, autoscale reaction and scale to zero, measures the machine's own floor
//! in the same run, runs the component benchmarks, and writes it all to
//! `docs/benchmarks.md`. Bounded in time and requests; it talks to loopback and the
//! project's own containers only.

pub mod client;
pub mod components;
pub mod floors;
pub mod machine;
pub mod many;
pub mod platform;
pub mod report;
pub mod scenarios;
pub mod spares;
pub mod stats;
pub mod swarm;

use report::{Floors, Report, RuntimeRun};
use roost_cli::up::Runtime;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The suite's options; each is also read from a `ROOST_BENCH_...` variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "roost-bench",
    version,
    about = "Roost's benchmark suite: measures the platform and the machine's floor, writes docs/benchmarks.md."
)]
pub struct Config {
    /// The repository (envoy/, gateway-lua/, faas-runtime/, docs/).
    #[arg(long, env = "ROOST_HOME", default_value = ".")]
    pub home: PathBuf,
    /// Folder of the release binaries and examples; default: this program's folder.
    #[arg(long, env = "ROOST_BENCH_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// The markdown file the results go into (between its markers); `-` prints only.
    #[arg(long, env = "ROOST_BENCH_OUT", default_value = "docs/benchmarks.md")]
    pub out: String,
    /// Runtimes to measure; default: process, and docker when an engine answers.
    #[arg(long, env = "ROOST_BENCH_RUNTIMES", value_enum, value_delimiter = ',')]
    pub runtimes: Vec<Runtime>,
    /// Cold starts per runtime (and samples of each floor).
    #[arg(long, env = "ROOST_BENCH_ROUNDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub rounds: u64,
    /// Requests in the burst from zero.
    #[arg(long, env = "ROOST_BENCH_BURST", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=2000))]
    pub burst: u64,
    /// Fewest requests of the on/off load.
    #[arg(long, env = "ROOST_BENCH_ONOFF_REQUESTS", default_value_t = 10_000)]
    pub onoff_requests: u64,
    /// Length of each warm-overhead slice, in milliseconds (three per path).
    #[arg(long, env = "ROOST_BENCH_SLICE_MS", default_value_t = 2_000)]
    pub slice_ms: u64,
    /// Scenarios to run (default: all). A run of only some prints its report and cannot
    /// write `docs/benchmarks.md` (use `--out -`), so the page always holds a whole run.
    #[arg(long, env = "ROOST_BENCH_SCENARIOS", value_enum, value_delimiter = ',')]
    pub scenarios: Vec<Scenario>,
    /// Skip the component benchmarks (xds-bench, statsd-bench).
    #[arg(long, env = "ROOST_BENCH_SKIP_COMPONENTS")]
    pub skip_components: bool,
    /// Docker socket.
    #[arg(long, env = "ROOST_DOCKER_SOCKET", default_value = "/var/run/docker.sock")]
    pub docker_socket: String,
    /// Base image used for the docker floor (and the function images).
    #[arg(long, env = "ROOST_BASE_IMAGE", default_value = "roost/base:bookworm")]
    pub base_image: String,
    /// Python of the process runtime.
    #[arg(long, env = "ROOST_PYTHON", default_value = "python3")]
    pub python: String,
    /// Functions declared in the "many" scenario with the Docker runtime.
    #[arg(long, env = "ROOST_BENCH_MANY_DOCKER", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub many_docker: u64,
    /// Functions declared in the "many" scenario with the process runtime.
    #[arg(long, env = "ROOST_BENCH_MANY_PROCESS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub many_process: u64,
    /// Keep the run's work directory (every component's logs) and say where it is.
    #[arg(long, env = "ROOST_BENCH_KEEP")]
    pub keep: bool,
}

/// One scenario of a runtime's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Cold start from zero, by phase.
    Cold,
    /// A burst from zero.
    Burst,
    /// Warm overhead: direct, a bare Envoy, the public entry, gate and Envoy.
    Overhead,
    /// Autoscale reaction.
    Autoscale,
    /// Scale to zero and the on/off load.
    Zero,
    /// Asynchronous calls: submit latency and delivery rate.
    Async,
    /// Spare policies compared on many functions (Docker only).
    Spares,
    /// Many functions on one host: --many-docker in containers, --many-process as processes.
    Many,
    /// Roost as a Docker Swarm stack, with the swarm and the Docker runtimes (run on its
    /// own, never part of the whole suite: it deploys the stack twice).
    Swarm,
}

impl Config {
    fn runs(&self, s: Scenario) -> bool {
        (self.scenarios.is_empty() && s != Scenario::Swarm) || self.scenarios.contains(&s)
    }

    /// Only the swarm scenario was asked for (it runs on its own).
    pub fn swarm_only(&self) -> bool {
        self.scenarios == [Scenario::Swarm]
    }

    /// Refuses a partial run that would overwrite the page's whole one.
    pub fn check(&self) -> Result<(), String> {
        if !self.scenarios.is_empty() && self.out != "-" {
            return Err("--scenarios runs only part of the suite: add --out - (the page keeps whole runs only)".into());
        }
        if self.scenarios.contains(&Scenario::Swarm) && !self.swarm_only() {
            return Err("--scenarios swarm runs on its own: give it alone".into());
        }
        Ok(())
    }
}

const NOT_SELECTED: &str = "not run (--scenarios)";

/// Runs scenario `s` (saying `what`) if it is selected; its figures, or why there are none.
async fn selected<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    c: &Config,
    s: Scenario,
    what: String,
    run: impl FnOnce() -> F,
) -> Result<T, String> {
    if !c.runs(s) {
        return Err(NOT_SELECTED.to_string());
    }
    progress(&what);
    err(run().await)
}

/// Figures, or a scenario left out on purpose.
fn ran<T>(r: &Result<T, String>) -> bool {
    r.as_ref().err().is_none_or(|e| e == NOT_SELECTED)
}

/// A failure as the report shows it: printed whole on stderr, kept to one short line
/// (markdown-safe) for the table.
fn err<T>(r: anyhow::Result<T>) -> Result<T, String> {
    r.map_err(|e| {
        let full = format!("{e:#}");
        progress(&format!("failed: {full}"));
        let line: String = full.replace('|', "/").replace('\n', " ").chars().take(300).collect();
        if line.len() < full.len() {
            format!("{line}... (whole error on stderr)")
        } else {
            line
        }
    })
}

async fn docker_answers(socket: &str) -> bool {
    match bollard::Docker::connect_with_unix(socket, 5, bollard::API_DEFAULT_VERSION) {
        Ok(d) => d.ping().await.is_ok(),
        Err(_) => false,
    }
}

fn progress(what: &str) {
    eprintln!("roost-bench: {what}");
}

/// Runs every scenario of one runtime on a freshly started platform.
async fn run_runtime(c: &Config, bin_dir: &std::path::Path, work: &std::path::Path, runtime: Runtime) -> RuntimeRun {
    let name = runtime.as_str().to_string();
    let failed = |e: &String| {
        let see = "not run: see the cold start".to_string();
        RuntimeRun {
            runtime: name.clone(),
            cold: Err(e.clone()),
            burst: Err(see.clone()),
            overhead: Err(see.clone()),
            autoscale: Err(see.clone()),
            zero: Err(see.clone()),
            asynchronous: Err(see),
        }
    };
    progress(&format!("{name}: starting the platform"));
    let mut roost = match platform::Roost::start(&c.home, bin_dir, &work.join(&name), runtime).await {
        Ok(r) => r,
        Err(e) => return failed(&err::<()>(Err(e.context("the platform did not start"))).unwrap_err()),
    };
    let rounds = c.rounds as usize;
    let cold = selected(c, Scenario::Cold, format!("{name}: cold start, {rounds} rounds"), || scenarios::cold_start(&roost, rounds)).await;
    let burst = selected(c, Scenario::Burst, format!("{name}: burst of {}", c.burst), || scenarios::burst(&roost, c.burst as usize)).await;
    let overhead = selected(c, Scenario::Overhead, format!("{name}: warm overhead"), || {
        scenarios::overhead(&roost, &[1, 16], 3, Duration::from_millis(c.slice_ms))
    })
    .await;
    let autoscale =
        selected(c, Scenario::Autoscale, format!("{name}: autoscale reaction"), || scenarios::autoscale(&roost, 5, 4, 50)).await;
    let zero = selected(c, Scenario::Zero, format!("{name}: scale to zero and the on/off load"), || {
        scenarios::scale_to_zero(&roost, 5, 8, c.onoff_requests, Duration::from_secs(180))
    })
    .await;
    let asynchronous = selected(c, Scenario::Async, format!("{name}: asynchronous calls"), || {
        scenarios::asynchronous(&roost, &[1, 16], Duration::from_millis(c.slice_ms))
    })
    .await;
    let check = roost.check();
    roost.stop();
    let mut run = RuntimeRun { runtime: name.clone(), cold, burst, overhead, autoscale, zero, asynchronous };
    if let Err(e) = check {
        // A component died during the run: no figure of it can be trusted.
        run = failed(&format!("a component exited during the run: {e:#}"));
    }
    run
}

/// Runs the suite; returns the report and whether every scenario produced figures.
pub async fn run(c: Config, command: String) -> anyhow::Result<(Report, bool)> {
    let t0 = Instant::now();
    let home = std::fs::canonicalize(&c.home)?;
    let launcher = floors::launcher(&c.python, &home.join("faas-runtime"));
    let c = Config { home: home.clone(), python: launcher.python().display().to_string(), ..c };
    let bin_dir = match &c.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().map(PathBuf::from).unwrap_or_default(),
    };
    let envoy = roost_cli::up::find_envoy(&home)?;
    let machine = machine::read(&home, &envoy, &c.python);
    let docker = docker_answers(&c.docker_socket).await;
    let mut runtimes = c.runtimes.clone();
    let mut skipped = Vec::new();
    if runtimes.is_empty() {
        runtimes.push(Runtime::Process);
        if docker {
            runtimes.push(Runtime::Docker);
        } else {
            skipped.push(format!("the Docker runtime: no Docker engine answered on {}", c.docker_socket));
        }
    }
    let rounds = c.rounds as usize;

    progress("floor: loopback HTTP, python, the runtime by hand (fresh and as a spare), docker start");
    let mut loopback = Vec::new();
    for conns in [1, 16] {
        loopback.push((conns, floors::loopback_http(conns, Duration::from_millis(c.slice_ms * 3)).await));
    }
    let python = err(floors::python_bare(&c.python, &[], rounds));
    let python_s = err(floors::python_bare(&c.python, &["-S"], rounds));
    let runtime_floor = err(floors::runtime_bare(&launcher, &home.join("faas-runtime"), rounds).await);
    let spare_floor = err(floors::spare_bare(&launcher, &home.join("faas-runtime"), rounds).await);
    let docker_floor = if docker { Some(err(floors::docker(&c.docker_socket, &c.base_image, rounds).await)) } else { None };
    let floors = Floors { loopback, python, python_s, runtime: runtime_floor, spare: spare_floor, docker: docker_floor };

    let work = std::env::temp_dir().join(format!("roost-bench-{}", std::process::id()));
    let with_docker = runtimes.contains(&Runtime::Docker);
    let mut runs = Vec::new();
    let per_runtime = c.scenarios.is_empty() || c.scenarios.iter().any(|s| !matches!(s, Scenario::Spares | Scenario::Many));
    let many_runtimes = if c.runs(Scenario::Many) { runtimes.clone() } else { vec![] };
    for rt in runtimes.into_iter().filter(|_| per_runtime) {
        runs.push(run_runtime(&c, &bin_dir, &work, rt).await);
    }
    let spares = if with_docker && c.runs(Scenario::Spares) {
        progress(&format!("docker: spare policies, {} functions, {} calls each", spares::FUNCTIONS, spares::CALLS));
        Some(err(spares::compare(&home, &bin_dir, &work, &c.docker_socket).await))
    } else {
        None
    };
    let mut many = Vec::new();
    for rt in many_runtimes {
        let n = match rt {
            Runtime::Docker => c.many_docker,
            Runtime::Process => c.many_process,
        } as usize;
        progress(&format!("{}: {n} functions on one host", rt.as_str()));
        many.push((rt.as_str().to_string(), err(many::run(&home, &bin_dir, &work, rt, n, &c.docker_socket).await)));
    }
    if c.keep {
        progress(&format!("kept the work directory (logs under each run's logs/): {}", work.display()));
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }

    let (xds, statsd) = if c.skip_components {
        (None, None)
    } else {
        let examples = bin_dir.join("examples");
        progress("components: xds-bench");
        let xds = err(components::xds(&examples));
        progress("components: statsd-bench");
        let statsd = err(components::statsd(&examples));
        (Some(xds), Some(statsd))
    };
    let complete = runs.iter().all(|r| ran(&r.cold) && ran(&r.burst) && ran(&r.overhead) && ran(&r.autoscale) && ran(&r.zero))
        && floors.python.is_ok()
        && floors.python_s.is_ok()
        && floors.runtime.is_ok()
        && floors.spare.is_ok()
        && floors.docker.as_ref().is_none_or(|d| d.is_ok())
        && [&xds, &statsd].iter().all(|x| x.as_ref().is_none_or(|x| x.is_ok()))
        && spares.as_ref().is_none_or(|s| s.is_ok())
        && many.iter().all(|(_, m)| m.is_ok());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let report = Report {
        machine,
        date,
        command,
        seconds: t0.elapsed().as_secs_f64(),
        rounds,
        burst_size: c.burst as usize,
        runtimes: runs,
        spares,
        many,
        skipped,
        floors,
        xds,
        statsd,
    };
    Ok((report, complete))
}
