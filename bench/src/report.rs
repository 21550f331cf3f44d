//! The report: every figure of a run as markdown (a summary against the targets and the
//! floor, then the detail of each scenario), and its place in `docs/benchmarks.md`
//! between two marker lines, so the prose around it stays as written.

use crate::client::LoadResult;
use crate::components::Component;
use crate::floors::DockerFloor;
use crate::machine::Machine;
use crate::scenarios::{
    Asynchronous, Autoscale, Burst, ColdStart, Overhead, ScaleToZero, BURST_HANDLER_MS, BURST_MAX_REPLICAS, OFF_FACTORS,
};
use crate::stats::Summary;
use std::fmt::Write;

/// The line before the generated part.
pub const BEGIN: &str = "<!-- roost-bench:begin: written by `bash scripts/bench.sh`; edit outside these markers -->";
/// The line after it.
pub const END: &str = "<!-- roost-bench:end -->";

/// One phase's samples of a cold start.
type PhaseOf = fn(&ColdStart) -> &Vec<f64>;

/// A scenario's result, or why it has none.
pub type Outcome<T> = Result<T, String>;

/// Everything measured on one runtime.
#[derive(Debug, Clone)]
pub struct RuntimeRun {
    /// `process` or `docker`.
    pub runtime: String,
    /// Cold start by phase.
    pub cold: Outcome<ColdStart>,
    /// Burst from zero.
    pub burst: Outcome<Burst>,
    /// Warm overhead at each concurrency.
    pub overhead: Outcome<Vec<Overhead>>,
    /// Autoscale reaction.
    pub autoscale: Outcome<Autoscale>,
    /// Scale to zero.
    pub zero: Outcome<ScaleToZero>,
    /// Asynchronous calls.
    pub asynchronous: Outcome<Vec<Asynchronous>>,
}

/// The machine's floor.
#[derive(Debug, Clone)]
pub struct Floors {
    /// Loopback HTTP with no proxy, per concurrency.
    pub loopback: Vec<(usize, LoadResult)>,
    /// `python -c pass`, ms.
    pub python: Outcome<Vec<f64>>,
    /// `python -S -c pass` (no `site` module), ms.
    pub python_s: Outcome<Vec<f64>>,
    /// The runtime started by hand until its first answer, ms.
    pub runtime: Outcome<Vec<f64>>,
    /// A spare runtime told its function by hand, until its first answer, ms.
    pub spare: Outcome<Vec<f64>>,
    /// Docker start and unpause (None: no Docker engine).
    pub docker: Option<Outcome<DockerFloor>>,
}

/// One run of the suite.
#[derive(Debug, Clone)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// When (UTC, as `date -u` prints it).
    pub date: String,
    /// The command that ran it.
    pub command: String,
    /// Wall time of the whole suite, seconds.
    pub seconds: f64,
    /// Cold-start rounds per runtime.
    pub rounds: usize,
    /// Size of the burst.
    pub burst_size: usize,
    /// Per runtime.
    pub runtimes: Vec<RuntimeRun>,
    /// Runtimes not measured, and why.
    pub skipped: Vec<String>,
    /// The floor.
    pub floors: Floors,
    /// The spare policies compared (None: not run, no Docker engine or not selected).
    pub spares: Option<Outcome<Vec<crate::spares::PolicyRun>>>,
    /// Many functions on one host, per runtime (empty: not selected).
    pub many: Vec<(String, Outcome<crate::many::ManyRun>)>,
    /// `xds-bench`.
    pub xds: Option<Outcome<Component>>,
    /// `statsd-bench`.
    pub statsd: Option<Outcome<Component>>,
}

/// A Zipf workload's cells: calls / errors | cold starts (share) | cold p50 / p99 of the
/// hottest | cold p50 / p99 of the rest.
fn calls_cells(c: &crate::spares::Calls) -> String {
    let calls = c.load.ok + c.load.errors;
    format!(
        "{calls} / {} | {} ({:.0} %) | {} / {} | {} / {}",
        c.load.errors,
        c.cold,
        100.0 * c.cold as f64 / calls.max(1) as f64,
        ms(p50(&c.cold_hot_ms)),
        ms(p99(&c.cold_hot_ms)),
        ms(p50(&c.cold_rest_ms)),
        ms(p99(&c.cold_rest_ms)),
    )
}

/// Milliseconds, with two decimals below 10 and one above.
pub fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.abs() < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// A difference in milliseconds, signed.
pub fn delta_ms(v: f64) -> String {
    if v < 0.0 {
        format!("-{}", ms(-v))
    } else {
        format!("+{}", ms(v))
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.1}x", a / b)
    } else {
        "-".into()
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

fn p50(v: &[f64]) -> f64 {
    Summary::of(v).map_or(f64::NAN, |s| s.p50)
}

fn p99(v: &[f64]) -> f64 {
    Summary::of(v).map_or(f64::NAN, |s| s.p99)
}

fn max(v: &[f64]) -> f64 {
    Summary::of(v).map_or(f64::NAN, |s| s.max)
}

/// The cold-start target of a runtime (p50, ms): 100 ms for processes, faasd's 390 ms
/// start of a stopped function for containers.
pub fn cold_target(runtime: &str) -> f64 {
    if runtime == "docker" {
        390.0
    } else {
        100.0
    }
}

impl Report {
    /// Renders the generated part (without the markers).
    pub fn render(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "## Suite results\n");
        let _ = writeln!(
            s,
            "Commit `{}`, {}. Command: `{}` ({:.0} s in all).\n\nMachine: {} x {}, {:.1} GiB RAM, {}, Linux {}, Docker Engine {}, Envoy {}, Python {}. Every figure below comes from this one run; the floor was measured on the same machine in the same run.\n",
            m.commit,
            self.date,
            self.command,
            self.seconds,
            m.cpus,
            m.cpu,
            m.memory_gib,
            m.os,
            m.kernel,
            m.docker.as_deref().unwrap_or("(none)"),
            m.envoy,
            m.python
        );
        for why in &self.skipped {
            let _ = writeln!(s, "Not measured: {why}\n");
        }
        self.summary(&mut s);
        self.cold_detail(&mut s);
        self.burst_detail(&mut s);
        self.overhead_detail(&mut s);
        self.autoscale_detail(&mut s);
        self.zero_detail(&mut s);
        self.async_detail(&mut s);
        self.spares_detail(&mut s);
        self.many_detail(&mut s);
        self.floor_detail(&mut s);
        self.components_detail(&mut s);
        s
    }

    fn summary(&self, s: &mut String) {
        let _ = writeln!(s, "### Against the targets\n");
        let _ = writeln!(s, "| measure | Roost | floor | Roost / floor | target | |");
        let _ = writeln!(s, "|---|---:|---:|---:|---|---|");
        let spare_floor = self.floors.spare.as_ref().ok().map(|v| p50(v));
        let unpause_floor = self.floors.docker.as_ref().and_then(|d| d.as_ref().ok()).map(|d| p50(&d.unpause_ms));
        for r in &self.runtimes {
            let rt = r.runtime.as_str();
            match &r.cold {
                Ok(c) => {
                    // What a cold start does at best: unpause the warm spare container, or
                    // hand the spare runtime its function.
                    let (floor, what) = if rt == "docker" {
                        (unpause_floor, "docker unpause")
                    } else {
                        (spare_floor, "a spare runtime told its function by hand")
                    };
                    let target = cold_target(rt);
                    let _ = writeln!(
                        s,
                        "| cold start through the gate, {rt}, p50 / p99 | {} / {} | {} ({what}) | {} | p50 <= {target:.0} ms | {} |",
                        ms(p50(&c.e2e)),
                        ms(p99(&c.e2e)),
                        floor.map_or("-".into(), ms),
                        floor.map_or("-".into(), |f| ratio(p50(&c.e2e), f)),
                        met(p50(&c.e2e) <= target)
                    );
                }
                Err(e) => {
                    let _ = writeln!(s, "| cold start, {rt} | failed: {e} | | | | **failed** |");
                }
            }
            match &r.burst {
                Ok(b) => {
                    for (round, which) in [(&b.first, "from zero"), (&b.again, "from zero again")] {
                        let _ = writeln!(
                            s,
                            "| burst of {} {which} ({} ms each), {rt}: errors; p50 / p99; replicas started | {} errors; {} / {}; {} | {} | {} | 0 errors, {} replicas, p99 <= 1.5 s | {} |",
                            self.burst_size,
                            BURST_HANDLER_MS,
                            round.load.errors,
                            ms(p50(&round.load.latencies_ms)),
                            ms(p99(&round.load.latencies_ms)),
                            round.replicas_started,
                            ms(self.burst_floor_ms()),
                            ratio(p99(&round.load.latencies_ms), self.burst_floor_ms()),
                            BURST_MAX_REPLICAS,
                            met(round.load.errors == 0
                                && round.replicas_started as usize >= BURST_MAX_REPLICAS.min(self.burst_size)
                                && p99(&round.load.latencies_ms) <= 1500.0)
                        );
                    }
                }
                Err(e) => {
                    let _ = writeln!(s, "| burst, {rt} | failed: {e} | | | | **failed** |");
                }
            }
            match &r.overhead {
                Ok(os) => {
                    for o in os {
                        let (d, p, b) = (&o.direct.latencies_ms, &o.public.latencies_ms, &o.bare_envoy.latencies_ms);
                        let (add50, add99) = (p50(p) - p50(d), p99(p) - p99(d));
                        let (floor50, floor99) = (p50(b) - p50(d), p99(b) - p99(d));
                        let _ = writeln!(
                            s,
                            "| warm overhead, {rt}, {} conn: added p50 / p99 (public entry minus direct) | {} / {} | {} / {} (bare Envoy) | {} / {} | <= 1.1x the floor's | {} |",
                            o.concurrency,
                            delta_ms(add50),
                            delta_ms(add99),
                            delta_ms(floor50),
                            delta_ms(floor99),
                            ratio(add50, floor50),
                            ratio(add99, floor99),
                            met(add50 <= 1.1 * floor50 && add99 <= 1.1 * floor99)
                        );
                        let floor = o.bare_envoy.throughput().max(1e-9);
                        let tr = o.public.throughput() / floor;
                        let _ = writeln!(
                            s,
                            "| warm throughput, {rt}, {} conn: public entry / bare Envoy | {:.0} / {:.0} req/s | {:.0} req/s direct | {tr:.2} | >= 0.9 | {} |",
                            o.concurrency,
                            o.public.throughput(),
                            o.bare_envoy.throughput(),
                            o.direct.throughput(),
                            met(tr >= 0.9 && o.public.errors == 0)
                        );
                    }
                }
                Err(e) => {
                    let _ = writeln!(s, "| warm overhead, {rt} | failed: {e} | | | | **failed** |");
                }
            }
            match &r.autoscale {
                Ok(a) => {
                    let _ = writeln!(
                        s,
                        "| autoscale: load start to a second replica answering, {rt}, p50 / max | {} / {} | | | <= 1500 ms | {} |",
                        ms(p50(&a.samples)),
                        ms(max(&a.samples)),
                        met(max(&a.samples) <= 1500.0 && a.load.errors == 0)
                    );
                }
                Err(e) => {
                    let _ = writeln!(s, "| autoscale, {rt} | failed: {e} | | | | **failed** |");
                }
            }
            match &r.zero {
                Ok(z) => {
                    let _ = writeln!(
                        s,
                        "| scale to zero: at zero after the idle timeout, {rt}, p50 / max | {} / {} | | | <= 1000 ms | {} |",
                        delta_ms(p50(&z.late_ms)),
                        delta_ms(max(&z.late_ms)),
                        met(max(&z.late_ms) <= 1000.0)
                    );
                    let total = z.onoff.ok + z.onoff.errors;
                    let _ = writeln!(
                        s,
                        "| on/off load, {rt}: failed requests ({} cycles, {} cold starts) | {} of {total} | | | 0 of >= 10,000 | {} |",
                        z.cycles,
                        z.cold_starts,
                        z.onoff.errors,
                        met(z.onoff.errors == 0 && total >= 10_000)
                    );
                }
                Err(e) => {
                    let _ = writeln!(s, "| scale to zero, {rt} | failed: {e} | | | | **failed** |");
                }
            }
        }
        for c in [&self.xds, &self.statsd].into_iter().flatten() {
            match c {
                Ok(c) => {
                    for (what, value, target) in &c.headlines {
                        let _ = writeln!(s, "| {what} | {value} | | | {target} | see below |");
                    }
                }
                Err(e) => {
                    let _ = writeln!(s, "| component benchmark | failed: {e} | | | | **failed** |");
                }
            }
        }
        let _ = writeln!(s);
    }

    fn cold_detail(&self, s: &mut String) {
        let runs: Vec<(&str, &ColdStart)> =
            self.runtimes.iter().filter_map(|r| r.cold.as_ref().ok().map(|c| (r.runtime.as_str(), c))).collect();
        if runs.is_empty() {
            return;
        }
        let _ = writeln!(s, "### Cold start from zero, by phase ({} rounds per runtime)\n", self.rounds);
        let _ = writeln!(s, "Each round waits until `cold` is at zero (idle timeout 300 ms), sends one GET through the gate and times it until the 200 arrives; the phases are the orchestrator's own (`last_cold_start` in its `/status`). *Outside the orchestrator* is the rest: the gate's wake reaching the orchestrator through Redis, the ready notice reaching the gate, and the first request through gate, Envoy and runtime.\n");
        let mut head = "| phase |".to_string();
        let mut rule = "|---|".to_string();
        for (rt, _) in &runs {
            let _ = write!(head, " {rt} p50 | {rt} p99 |");
            rule.push_str("---:|---:|");
        }
        let _ = writeln!(s, "{head}\n{rule}");
        let rows: [(&str, PhaseOf); 7] = [
            ("start (a spare told its function, a process spawned, or a container unpaused or started)", |c| &c.start),
            ("readiness (probed every 10 ms)", |c| &c.readiness),
            ("xDS: endpoint ACKed by Envoy", |c| &c.ack),
            ("ready notice in Redis", |c| &c.notice),
            ("orchestrator total", |c| &c.total),
            ("outside the orchestrator", |c| &c.outside),
            ("**request to 200 through the gate**", |c| &c.e2e),
        ];
        for (name, get) in rows {
            let mut line = format!("| {name} |");
            for (_, c) in &runs {
                let _ = write!(line, " {} | {} |", ms(p50(get(c))), ms(p99(get(c))));
            }
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(s, "\nWith {} samples the p99 is the slowest round.\n", self.rounds);
    }

    /// The last answer of the burst if every replica served from the first instant.
    fn burst_floor_ms(&self) -> f64 {
        (self.burst_size.div_ceil(BURST_MAX_REPLICAS) as u64 * BURST_HANDLER_MS) as f64
    }

    fn burst_detail(&self, s: &mut String) {
        let _ = writeln!(s, "### Burst from zero\n");
        let _ = writeln!(
            s,
            "{} GETs sent at once, each on its own connection, through the gate to `burst` (the `whoami` function answering after {} ms) while it is at zero (target concurrency 1, at most {} replicas). The floor is the handler's time alone with every replica at work from the first instant: {} requests x {} ms / {} replicas = {} (no cold start, no proxy).\n",
            self.burst_size,
            BURST_HANDLER_MS,
            BURST_MAX_REPLICAS,
            self.burst_size,
            BURST_HANDLER_MS,
            BURST_MAX_REPLICAS,
            ms(self.burst_floor_ms())
        );
        let _ = writeln!(
            s,
            "Each runtime gets the burst twice, the function back at zero before each: *first* on a function never called in bursts, *again* once its recent calls include one (the Docker runtime then keeps a paused container for each replica the burst started, within `ROOST_SPARE_MEMORY`).\n"
        );
        let _ = writeln!(s, "| runtime | burst | answered 200 | errors | p50 | p99 | max | replicas started | first errors |");
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---|");
        for r in &self.runtimes {
            match &r.burst {
                Ok(b) => {
                    for (round, which) in [(&b.first, "first"), (&b.again, "again")] {
                        let _ = writeln!(
                            s,
                            "| {} | {which} | {} | {} | {} | {} | {} | {} | {} |",
                            r.runtime,
                            round.load.ok,
                            round.load.errors,
                            ms(p50(&round.load.latencies_ms)),
                            ms(p99(&round.load.latencies_ms)),
                            ms(max(&round.load.latencies_ms)),
                            round.replicas_started,
                            round.load.failures.join("; ")
                        );
                    }
                }
                Err(e) => {
                    let _ = writeln!(s, "| {} | | failed: {e} | | | | | | |", r.runtime);
                }
            }
        }
        let _ = writeln!(s);
    }

    fn overhead_detail(&self, s: &mut String) {
        let _ = writeln!(s, "### Warm overhead\n");
        let _ = writeln!(s, "`warm` (the `hello` function, one replica, never asleep) under a closed loop: each connection sends its next GET when the last is answered. The five paths take turns in three slices each, so the machine's drift hits them alike: direct to the replica; a bare Envoy (one static route and cluster, no xDS, Roost's worker count) and a bare nginx in front of it (the gate's proxy settings and worker count, no Lua), which are the floor of any nginx and Envoy on this machine; Roost's Envoy; and the gate with Roost's Envoy. The loopback floor is the same client against a Rust HTTP server in the suite's own process.\n");
        let _ = writeln!(s, "| runtime | connections | path | p50 | p99 | req/s | errors |");
        let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---:|");
        for (c, l) in &self.floors.loopback {
            let _ = writeln!(
                s,
                "| (floor) | {c} | loopback, no proxy | {} | {} | {:.0} | {} |",
                ms(p50(&l.latencies_ms)),
                ms(p99(&l.latencies_ms)),
                l.throughput(),
                l.errors
            );
        }
        for r in &self.runtimes {
            match &r.overhead {
                Ok(os) => {
                    for o in os {
                        let paths = [
                            ("direct to the replica", &o.direct),
                            ("bare Envoy (floor)", &o.bare_envoy),
                            ("Roost's public entry (Envoy)", &o.public),
                            ("Roost's gate + Envoy (a woken function's held requests)", &o.gate),
                        ];
                        for (path, l) in paths {
                            let _ = writeln!(
                                s,
                                "| {} | {} | {path} | {} | {} | {:.0} | {} |",
                                r.runtime,
                                o.concurrency,
                                ms(p50(&l.latencies_ms)),
                                ms(p99(&l.latencies_ms)),
                                l.throughput(),
                                l.errors
                            );
                        }
                    }
                }
                Err(e) => {
                    let _ = writeln!(s, "| {} | | failed: {e} | | | | |", r.runtime);
                }
            }
        }
        let _ = writeln!(s);
    }

    fn async_detail(&self, s: &mut String) {
        let _ = writeln!(s, "### Asynchronous calls\n");
        let _ = writeln!(s, "`warm` (one replica, 64 requests at once) under a closed loop of body-less POSTs through the public entry: first `POST /warm` (the function's own answer, the comparison), then `POST /async/warm` (answered 202 once the call is stored in Redis by the async worker, which then delivers it through the same entry, `async.concurrency` 64 at once). *Delivered after*: from the first submit until the function's queue was empty; *delivered/s*: the submits over that time. The loopback floor is in \"Warm overhead\".\n");
        let _ = writeln!(
            s,
            "| runtime | connections | call p50 / p99 | calls/s | submit p50 / p99 | submits/s | errors | delivered after | delivered/s |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.runtimes {
            match &r.asynchronous {
                Ok(runs) => {
                    for a in runs {
                        let _ = writeln!(
                            s,
                            "| {} | {} | {} / {} | {:.0} | {} / {} | {:.0} | {} | {:.1} s | {:.0} |",
                            r.runtime,
                            a.concurrency,
                            ms(p50(&a.call.latencies_ms)),
                            ms(p99(&a.call.latencies_ms)),
                            a.call.throughput(),
                            ms(p50(&a.submit.latencies_ms)),
                            ms(p99(&a.submit.latencies_ms)),
                            a.submit.throughput(),
                            a.call.errors + a.submit.errors,
                            a.delivered_after_ms / 1000.0,
                            a.submit.ok as f64 / (a.delivered_after_ms / 1000.0).max(1e-9)
                        );
                    }
                }
                Err(e) => {
                    let _ = writeln!(s, "| {} | | failed: {e} | | | | | | |", r.runtime);
                }
            }
        }
        let _ = writeln!(s);
    }

    fn autoscale_detail(&self, s: &mut String) {
        let _ = writeln!(s, "### Autoscale reaction\n");
        let _ = writeln!(s, "`whoami` (one request at a time per replica, each answer names its replica) starts each round with one warm replica; then 4 connections call `/whoami?ms=50` back to back through the gate. A sample is the time from the load's start until an answer names a second replica, so it includes that answer's 50 ms.\n");
        let _ = writeln!(s, "| runtime | rounds | p50 | max | samples | requests | errors |");
        let _ = writeln!(s, "|---|---:|---:|---:|---|---:|---:|");
        for r in &self.runtimes {
            match &r.autoscale {
                Ok(a) => {
                    let list: Vec<String> = a.samples.iter().map(|v| format!("{v:.0}")).collect();
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} ms | {} | {} |",
                        r.runtime,
                        a.samples.len(),
                        ms(p50(&a.samples)),
                        ms(max(&a.samples)),
                        list.join(", "),
                        a.load.ok + a.load.errors,
                        a.load.errors
                    );
                }
                Err(e) => {
                    let _ = writeln!(s, "| {} | failed: {e} | | | | | |", r.runtime);
                }
            }
        }
        let _ = writeln!(s);
    }

    /// `docker start` plus the runtime's own start, p50: what a cold start without a spare
    /// cannot beat on this machine.
    fn no_spare_floor_ms(&self) -> Option<f64> {
        let docker = self.floors.docker.as_ref()?.as_ref().ok()?;
        let runtime = self.floors.runtime.as_ref().ok()?;
        Some(p50(&docker.start_ms) + p50(runtime))
    }

    fn spares_detail(&self, s: &mut String) {
        let Some(spares) = &self.spares else { return };
        let _ = writeln!(s, "### Spare policies (Docker)\n");
        let _ = writeln!(
            s,
            "{} functions (the `hello` example, at most one replica each, back to zero 2 s after their last call), {} calls drawn with a Zipf popularity (s = {}) at random times ({} ms apart on average, exponential gaps, a fixed seed: the same calls for every policy), one GET each through the gate. Each policy runs on its own freshly started platform, after every function was woken once (building its image) and went back to zero, and the spares it keeps were prepared. \"Hottest\" are the {} most popular functions. Floor of a cold start without a spare: `docker start` p50 + the runtime's own start p50 = {}.\n",
            crate::spares::FUNCTIONS,
            crate::spares::CALLS,
            crate::spares::ZIPF_S,
            crate::spares::MEAN_GAP.as_millis(),
            crate::spares::HOTTEST,
            self.no_spare_floor_ms().map_or("-".into(), ms),
        );
        match spares {
            Ok(runs) => {
                let _ = writeln!(s, "| policy (`ROOST_SPARE_MEMORY`) | spares held | their memory | calls / errors | cold starts | cold p50 / p99, hottest | cold p50 / p99, the rest | every call p50 / p99 |");
                let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
                for r in runs {
                    let _ = writeln!(
                        s,
                        "| {} (`{}`) | {} | {:.0} MB | {} | {} / {} |",
                        r.policy.name,
                        r.policy.spare_memory,
                        r.spares,
                        r.spare_bytes as f64 / 1_048_576.0,
                        calls_cells(&r.calls),
                        ms(p50(&r.calls.load.latencies_ms)),
                        ms(p99(&r.calls.load.latencies_ms)),
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(s, "Failed: {e}");
            }
        }
        let _ = writeln!(s);
    }

    fn many_detail(&self, s: &mut String) {
        if self.many.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "### Many functions on one host
"
        );
        let _ = writeln!(
            s,
            "A fresh platform with every function declared at once (the `hello` example, at most one replica each, back to zero 2 s after its last call). *Declared*: from `roost up`'s start until the orchestrator lists every function (every component up, Envoy configured with every function). *Built*: until no function is building its image (Docker builds one per function, at most two at once). *First answer*: until the first call (to the last function, a cold start) is answered. Memory (resident, each component with its child processes; with Docker, plus the paused spares less reclaimable page cache) and CPU (over {} s) while every function sleeps. *xDS*: the bytes the control plane sent Envoy and the time until Envoy's ACK, for a function's first endpoint (its public route goes direct) and for its removal. Then {} calls drawn with a Zipf popularity (s = {}, {} ms apart on average, a fixed seed) through the public entry; \"hottest\" are the {} most popular functions.\n",
            crate::many::IDLE_WINDOW.as_secs(),
            crate::many::CALLS,
            crate::spares::ZIPF_S,
            crate::many::MEAN_GAP.as_millis(),
            crate::spares::HOTTEST,
        );
        let _ = writeln!(s, "| runtime | functions | declared | built | first answer | memory asleep (all) | CPU asleep | xDS: first endpoint | xDS: removal | calls / errors | cold starts | cold p50 / p99, hottest | cold p50 / p99, the rest |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mib = |b: u64| format!("{:.0} MB", b as f64 / 1_048_576.0);
        let push = |p: &crate::many::Push| format!("{:.0} KB, {}", p.bytes as f64 / 1024.0, ms(p.ms));
        for (rt, run) in &self.many {
            match run {
                Ok(r) => {
                    let _ = writeln!(
                        s,
                        "| {rt} | {} | {:.1} s | {:.1} s | {:.1} s | {} | {:.1} % | {} | {} | {} |",
                        r.functions,
                        r.declared.as_secs_f64(),
                        r.built.as_secs_f64(),
                        r.serving.as_secs_f64(),
                        mib(r.total_bytes()),
                        r.components.iter().map(|c| c.cpu_percent).sum::<f64>(),
                        push(&r.push_add),
                        push(&r.push_remove),
                        calls_cells(&r.calls),
                    );
                }
                Err(e) => {
                    let _ = writeln!(s, "| {rt} | failed: {e} | | | | | | | | | | | |");
                }
            }
        }
        let _ = writeln!(s, "\nBy component, while every function sleeps:\n");
        let _ = writeln!(s, "| runtime | component | memory | CPU |");
        let _ = writeln!(s, "|---|---|---:|---:|");
        for (rt, r) in self.many.iter().filter_map(|(rt, r)| Some((rt, r.as_ref().ok()?))) {
            for c in &r.components {
                let _ = writeln!(s, "| {rt} | {} | {} | {:.1} % |", c.name, mib(c.rss), c.cpu_percent);
            }
            if let Some((n, b)) = r.spares {
                let _ = writeln!(s, "| {rt} | {n} paused spare containers | {} | 0 % |", mib(b));
            }
        }
        let _ = writeln!(s);
    }

    fn zero_detail(&self, s: &mut String) {
        let _ = writeln!(s, "### Scale to zero\n");
        let factors: Vec<String> = OFF_FACTORS.iter().map(|f| format!("{f}")).collect();
        let _ = writeln!(s, "`onoff` has an idle timeout of 1 s. *Late* is the time from the last answer plus the idle timeout until the orchestrator reports the function at zero (no replica left, all stopped). The on/off load then alternates 1 s of 8 connections calling back to back through the gate with a pause of {} times the idle timeout, so loads start before, while and after the function goes to sleep.\n", factors.join(", "));
        let _ = writeln!(s, "| runtime | late p50 | late max | on/off cycles | requests | failed | cold starts | first failures |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---|");
        for r in &self.runtimes {
            match &r.zero {
                Ok(z) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} | {} | {} | {} |",
                        r.runtime,
                        ms(p50(&z.late_ms)),
                        ms(max(&z.late_ms)),
                        z.cycles,
                        z.onoff.ok + z.onoff.errors,
                        z.onoff.errors,
                        z.cold_starts,
                        z.onoff.failures.join("; ")
                    );
                }
                Err(e) => {
                    let _ = writeln!(s, "| {} | failed: {e} | | | | | | |", r.runtime);
                }
            }
        }
        let _ = writeln!(s);
    }

    fn floor_detail(&self, s: &mut String) {
        let _ = writeln!(s, "### The floor\n");
        let _ = writeln!(s, "| what | p50 | p99 | samples |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        let mut row = |what: &str, v: &Outcome<Vec<f64>>| {
            let _ = match v {
                Ok(v) => writeln!(s, "| {what} | {} | {} | {} |", ms(p50(v)), ms(p99(v)), v.len()),
                Err(e) => writeln!(s, "| {what} | failed: {e} | | |"),
            };
        };
        row("`python -c pass` (the interpreter alone)", &self.floors.python);
        row("`python -S -c pass` (the interpreter without `site`, as replicas start)", &self.floors.python_s);
        row("runtime started by hand until its first answer (`python -S -m roost_runtime python`, `hello`)", &self.floors.runtime);
        row(
            "a spare runtime (`python -S -m roost_runtime spare`, imports done) told `hello` on stdin, until its first answer",
            &self.floors.spare,
        );
        match &self.floors.docker {
            Some(Ok(d)) => {
                row("`docker start` of a created container (API, hardened, internal network)", &Ok(d.start_ms.clone()));
                row("`docker unpause` of a paused container (API)", &Ok(d.unpause_ms.clone()));
            }
            Some(Err(e)) => row("docker start", &Err(e.clone())),
            None => {}
        }
        for (c, l) in &self.floors.loopback {
            row(&format!("loopback HTTP request, no proxy, {c} connection(s)"), &Ok(l.latencies_ms.clone()));
        }
        let _ = writeln!(s);
    }

    fn components_detail(&self, s: &mut String) {
        for (title, c) in [("Control plane: `xds-bench`", &self.xds), ("statsd-listener: `statsd-bench`", &self.statsd)] {
            match c {
                Some(Ok(c)) => {
                    let _ = writeln!(s, "### {title}\n\n{}\n", c.table.trim_end());
                }
                Some(Err(e)) => {
                    let _ = writeln!(s, "### {title}\n\nFailed: {e}\n");
                }
                None => {}
            }
        }
    }
}

/// Puts `generated` between the markers of `doc`, or, when they are missing, at the end.
pub fn splice(doc: &str, generated: &str) -> String {
    let block = format!("{BEGIN}\n\n{}\n\n{END}\n", generated.trim_end());
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if e > b => {
            let rest = doc[e + END.len()..].trim_start_matches('\n');
            if rest.is_empty() {
                format!("{}{block}", &doc[..b])
            } else {
                format!("{}{block}\n{rest}", &doc[..b])
            }
        }
        _ => format!("{}\n\n{block}", doc.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::BurstRound;

    #[test]
    fn splice_replaces_only_between_the_markers() {
        let doc = format!("# Benchmarks\n\nintro\n\n{BEGIN}\nold figures\n{END}\n\n## Notes\nkept\n");
        let out = splice(&doc, "new figures\n");
        assert_eq!(out, format!("# Benchmarks\n\nintro\n\n{BEGIN}\n\nnew figures\n\n{END}\n\n## Notes\nkept\n"));
        assert_eq!(splice(&out, "new figures"), out, "splicing twice changes nothing");
        let appended = splice("# Benchmarks\n", "x");
        assert!(appended.starts_with("# Benchmarks\n\n") && appended.contains(&format!("{BEGIN}\n\nx\n\n{END}")));
    }

    fn load(lat: &[f64], errors: u64, secs: f64) -> LoadResult {
        LoadResult {
            ok: lat.len() as u64,
            errors,
            latencies_ms: lat.to_vec(),
            failures: vec![],
            elapsed: std::time::Duration::from_secs_f64(secs),
        }
    }

    #[test]
    fn summary_judges_targets_and_ratios_from_the_samples() {
        let cold = ColdStart { e2e: vec![80.0, 90.0, 150.0], total: vec![70.0, 80.0, 140.0], outside: vec![10.0; 3], ..Default::default() };
        let run = RuntimeRun {
            runtime: "process".into(),
            cold: Ok(cold),
            burst: Ok(Burst {
                first: BurstRound { load: load(&[100.0, 200.0], 1, 1.0), replicas_started: 3 },
                again: BurstRound { load: load(&[100.0, 200.0], 0, 1.0), replicas_started: 3 },
            }),
            overhead: Ok(vec![Overhead {
                concurrency: 1,
                direct: load(&[1.0, 1.0], 0, 1.0),
                bare_envoy: load(&[1.2, 2.0], 0, 1.0),
                public: load(&[1.4, 4.0], 0, 1.0),
                gate: load(&[1.5, 4.5], 0, 1.0),
            }]),
            autoscale: Ok(Autoscale { samples: vec![400.0, 1600.0], load: load(&[50.0], 0, 1.0) }),
            zero: Err("Redis went away".into()),
            asynchronous: Ok(vec![Asynchronous {
                concurrency: 16,
                call: load(&[1.0, 2.0], 0, 1.0),
                submit: load(&[3.0, 5.0], 0, 1.0),
                delivered_after_ms: 2000.0,
            }]),
        };
        let r = Report {
            machine: crate::machine::Machine {
                cpu: "cpu".into(),
                cpus: 2,
                memory_gib: 23.0,
                kernel: "6".into(),
                os: "Debian".into(),
                docker: None,
                envoy: "1.40.0".into(),
                python: "3.11".into(),
                commit: "abc".into(),
            },
            date: "today".into(),
            command: "bash scripts/bench.sh".into(),
            seconds: 1.0,
            rounds: 3,
            burst_size: 2,
            runtimes: vec![run],
            spares: None,
            many: vec![],
            skipped: vec!["docker: no engine".into()],
            floors: Floors {
                loopback: vec![(1, load(&[0.1, 0.1], 0, 1.0))],
                python: Ok(vec![10.0]),
                python_s: Ok(vec![5.0]),
                runtime: Ok(vec![45.0]),
                spare: Ok(vec![9.0]),
                docker: None,
            },
            xds: None,
            statsd: None,
        };
        let text = r.render();
        let line =
            |start: &str| text.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no line {start:?} in\n{text}")).to_string();
        // Cold p50 90 ms <= 100: met; ratio to the 9 ms floor (a spare told by hand) 10.0x.
        let cold = line("| cold start through the gate, process");
        assert!(cold.contains("90.0 ms / 150.0 ms") && cold.contains("10.0x") && cold.ends_with("| met |"), "{cold}");
        // One burst error misses the target.
        assert!(line("| burst of 2 from zero (").ends_with("**missed** |"));
        // The second burst, without an error, meets it; each has its own row.
        assert!(line("| burst of 2 from zero again").ends_with("| met |"), "{}", line("| burst of 2 from zero again"));
        // The public entry adds +0.40 / +3.00 ms, the bare Envoy +0.20 / +1.00 ms: 2.0x and
        // 3.0x its floor, over 1.1x.
        let o = line("| warm overhead, process, 1 conn");
        assert!(
            o.contains("+0.40 ms / +3.00 ms")
                && o.contains("+0.20 ms / +1.00 ms (bare Envoy)")
                && o.contains("| 2.0x / 3.0x |")
                && o.ends_with("**missed** |"),
            "{o}"
        );
        assert!(line("| warm throughput, process, 1 conn").contains("| 1.00 | >= 0.9 | met |"));
        assert!(line("| autoscale").contains("**missed**"));
        assert!(line("| scale to zero, process").contains("failed: Redis went away"));
        let a = line("| process | 16 | 1.00 ms / 2.00 ms");
        assert!(a.contains("| 3.00 ms / 5.00 ms |") && a.ends_with("| 2.0 s | 1 |"), "{a}");
        assert!(text.contains("Not measured: docker: no engine"));
    }
}
