//! The platform's Prometheus series built from statsd, pure (no socket, no clock): each
//! function's calls by status code and their durations (Envoy's function clusters, and
//! their aggregates for the calls that went straight to a replica; the gate's own
//! answers, which reach no replica, by code), cold starts and their
//! phases (the orchestrator's), replicas ready and starting and requests held at the gate
//! (the orchestrator's gauges), and asynchronous calls (the async worker's: queued, the
//! oldest's age, submits by outcome, finished calls by state, retries). Rendered under Roost's names and under the names
//! OpenFaaS's dashboards read (`gateway_function_invocation_total`,
//! `gateway_functions_seconds`, `gateway_service_count`). Only declared functions are
//! shown. A function not (yet) in the listener's list of declared ones is kept apart for
//! up to [`CONFIRM_WITHIN_MS`] (at most [`MAX_UNCONFIRMED`] of them, so a flood of odd
//! names cannot grow it): a function called at once after its deploy has its first
//! calls counted before the list, read every second, names it.
//!
//! A call's duration is Envoy's `upstream_rq_time` (each flush interval's histogram, from
//! its metrics service; a statsd timer sample is taken too): from Envoy routing the call to the
//! function's replicas (its wait in Envoy's queue for a free replica included) until the
//! replica's answer, in whole milliseconds. A cold call's wait at the gate is not in it;
//! the cold start is, phase by phase, in `roost_cold_start_seconds`.

use crate::parser::{Kind, Metric};
use roost_common::naming::function_of_cluster;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

/// Histogram bucket bounds, in seconds: Prometheus's defaults, 0.5 and 1 ms below them
/// (a warm call's time is often under a millisecond), and 30 and 60 s for the longest
/// calls and cold starts. Envoy's own default bounds include every one of them.
pub const BUCKETS: [f64; 15] = [0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Cold-start phases the orchestrator times (`roost.orchestrator.cold_start.<phase>`).
pub const PHASES: [&str; 5] = ["start", "readiness", "ack", "notice", "total"];

/// Functions kept apart while not known to be declared, at most.
pub const MAX_UNCONFIRMED: usize = 256;

/// How long a function's series wait for it to be declared, in milliseconds.
pub const CONFIRM_WITHIN_MS: u64 = 10_000;

/// A cumulative histogram in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Samples at or below each of [`BUCKETS`].
    pub buckets: [f64; BUCKETS.len()],
    /// All samples.
    pub count: f64,
    /// Their sum, in seconds.
    pub sum: f64,
}

impl Histogram {
    /// Records `weight` samples of `seconds`.
    pub fn observe(&mut self, seconds: f64, weight: f64) {
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.buckets[i] += weight;
            }
        }
        self.count += weight;
        self.sum += seconds * weight;
    }
}

/// Every function's series.
#[derive(Debug, Default)]
pub struct Series {
    /// Calls by status code: answered by a replica, or by the gate itself.
    calls: BTreeMap<(String, u16), f64>,
    /// Their durations.
    durations: BTreeMap<String, Histogram>,
    /// Cold starts completed.
    cold_starts: BTreeMap<String, f64>,
    /// Cold-start phases.
    phases: BTreeMap<(String, &'static str), Histogram>,
    /// Replicas ready and starting.
    replicas: BTreeMap<String, (f64, f64)>,
    /// Requests the gate holds (asleep or waking, or past the ready capacity).
    held: BTreeMap<String, f64>,
    /// Asynchronous calls queued, and the oldest's age in milliseconds.
    async_queues: BTreeMap<String, (f64, f64)>,
    /// Asynchronous calls counted: (function, what, its label's value): `submitted` by
    /// outcome, `finished` by state, `retries`.
    async_counts: BTreeMap<(String, &'static str, String), f64>,
    /// Functions with series not known to be declared yet, and when each was first seen
    /// (ms): not rendered.
    unconfirmed: HashMap<String, u64>,
}

/// The value of tag `key` in a DogStatsD tag list (`a:b,c:d`).
fn tag<'a>(tags: Option<&'a str>, key: &str) -> Option<&'a str> {
    tags?.split(',').find_map(|t| t.split_once(':').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

impl Series {
    /// Whether `function`'s series are kept: declared, or kept apart until it is.
    fn admit(&mut self, function: &str, declared: bool, now_ms: u64) -> bool {
        if declared || self.unconfirmed.contains_key(function) {
            return true;
        }
        if self.unconfirmed.len() >= MAX_UNCONFIRMED || roost_common::naming::validate_function_name(function).is_err() {
            return false;
        }
        self.unconfirmed.insert(function.to_string(), now_ms);
        true
    }

    /// Functions kept apart now declared are shown from now on; those still not after
    /// [`CONFIRM_WITHIN_MS`] are dropped.
    pub fn confirm(&mut self, declared: impl Fn(&str) -> bool, now_ms: u64) {
        let mut dropped = Vec::new();
        self.unconfirmed.retain(|f, first| {
            let waiting = !declared(f) && now_ms.saturating_sub(*first) <= CONFIRM_WITHIN_MS;
            if !waiting && !declared(f) {
                dropped.push(f.clone());
            }
            waiting
        });
        for f in dropped {
            self.forget(&f);
        }
    }

    /// Whether a function is kept apart (the list of declared ones may be worth reading
    /// again).
    pub fn unconfirmed(&self) -> bool {
        !self.unconfirmed.is_empty()
    }

    /// Takes in one metric at `now_ms`; `declared` says whether a function is declared.
    /// Returns whether the metric was one of these series.
    pub fn observe(&mut self, m: &Metric, declared: impl Fn(&str) -> bool, now_ms: u64) -> bool {
        let weight = 1.0 / m.sample_rate;
        let name = m.name.strip_prefix("envoy.").unwrap_or(m.name);
        if let Some((function, stat)) = function_stat(name) {
            if !self.admit(function, declared(function), now_ms) {
                return false;
            }
            if (stat, m.kind) == ("upstream_rq_time", Kind::Timer) {
                self.durations.entry(function.to_string()).or_default().observe(m.value / 1000.0, weight);
                return true;
            }
            let code = stat.strip_prefix("upstream_rq_").and_then(|c| (c.len() == 3).then(|| c.parse::<u16>().ok()).flatten());
            return match (code, m.kind) {
                (Some(code), Kind::Counter) if (100..600).contains(&code) => {
                    *self.calls.entry((function.to_string(), code)).or_default() += m.value * weight;
                    true
                }
                _ => false,
            };
        }
        if name == "roost.gate.answers" {
            // The gate's own answers (503 at its cap, 504 past the deadline, ...): calls
            // that never reached the function's cluster.
            let function = tag(m.tags, "function").filter(|f| self.admit(f, declared(f), now_ms));
            let code = tag(m.tags, "code").and_then(|c| c.parse::<u16>().ok()).filter(|c| (100..600).contains(c));
            let (Some(function), Some(code), Kind::Counter) = (function, code, m.kind) else { return false };
            *self.calls.entry((function.to_string(), code)).or_default() += m.value * weight;
            return true;
        }
        if let Some(stat) = name.strip_prefix("roost.async.") {
            return self.observe_async(stat, m, declared, now_ms);
        }
        let Some(stat) = name.strip_prefix("roost.orchestrator.") else { return false };
        let Some(function) = tag(m.tags, "function").filter(|f| self.admit(f, declared(f), now_ms)) else { return false };
        match (stat, m.kind) {
            ("cold_starts", Kind::Counter) => *self.cold_starts.entry(function.to_string()).or_default() += m.value * weight,
            ("replicas.ready", Kind::Gauge { delta: false }) => self.replicas.entry(function.to_string()).or_default().0 = m.value,
            ("replicas.starting", Kind::Gauge { delta: false }) => self.replicas.entry(function.to_string()).or_default().1 = m.value,
            ("held", Kind::Gauge { delta: false }) => {
                self.held.insert(function.to_string(), m.value);
            }
            (phase, Kind::Timer) => {
                let Some(phase) = phase.strip_prefix("cold_start.").and_then(|p| PHASES.into_iter().find(|k| *k == p)) else {
                    return false;
                };
                self.phases.entry((function.to_string(), phase)).or_default().observe(m.value / 1000.0, weight);
            }
            _ => return false,
        }
        true
    }

    /// The async worker's metric `roost.async.<stat>`.
    fn observe_async(&mut self, stat: &str, m: &Metric, declared: impl Fn(&str) -> bool, now_ms: u64) -> bool {
        let weight = 1.0 / m.sample_rate;
        let Some(function) = tag(m.tags, "function").filter(|f| self.admit(f, declared(f), now_ms)) else { return false };
        let counted = match (stat, m.kind) {
            ("queued", Kind::Gauge { delta: false }) => {
                self.async_queues.entry(function.to_string()).or_default().0 = m.value;
                return true;
            }
            ("oldest_ms", Kind::Gauge { delta: false }) => {
                self.async_queues.entry(function.to_string()).or_default().1 = m.value;
                return true;
            }
            ("submitted", Kind::Counter) => ("submitted", tag(m.tags, "outcome")),
            ("finished", Kind::Counter) => ("finished", tag(m.tags, "state")),
            ("retries", Kind::Counter) => ("retries", Some("")),
            _ => return false,
        };
        let (what, Some(label)) = counted else { return false };
        // Labels are the worker's own words; anything else is not counted.
        if !label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return false;
        }
        *self.async_counts.entry((function.to_string(), what, label.to_string())).or_default() += m.value * weight;
        true
    }

    /// Takes in one flush interval's histogram of a stat of Envoy's (`buckets`: rising
    /// upper bounds in milliseconds with the samples at or below each). Only a function
    /// cluster's `upstream_rq_time` is one of these series; returns whether it was.
    /// Each of [`BUCKETS`] gets the count at the highest of Envoy's bounds not above it
    /// (Envoy's default bounds include every one of them).
    pub fn observe_histogram(
        &mut self,
        name: &str,
        buckets: &[(f64, f64)],
        count: f64,
        sum_ms: f64,
        declared: impl Fn(&str) -> bool,
        now_ms: u64,
    ) -> bool {
        let Some((function, "upstream_rq_time")) = function_stat(name) else { return false };
        if !self.admit(function, declared(function), now_ms) {
            return false;
        }
        let h = self.durations.entry(function.to_string()).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            let within = buckets.iter().take_while(|(ms, _)| *ms <= bound * 1000.0 + 1e-9).last().map_or(0.0, |(_, n)| *n);
            h.buckets[i] += within;
        }
        h.count += count;
        h.sum += sum_ms / 1000.0;
        true
    }

    /// Drops every series of `function` (no longer declared).
    pub fn forget(&mut self, function: &str) {
        self.calls.retain(|(f, _), _| f != function);
        self.durations.remove(function);
        self.cold_starts.remove(function);
        self.phases.retain(|(f, _), _| f != function);
        self.replicas.remove(function);
        self.held.remove(function);
        self.async_queues.remove(function);
        self.async_counts.retain(|(f, _, _), _| f != function);
        self.unconfirmed.remove(function);
    }

    /// The asynchronous calls' series.
    fn render_async(&self, out: &mut String, head: &dyn Fn(&mut String, &str, &str, &str), shown: &dyn Fn(&String) -> bool) {
        head(
            out,
            "roost_async_queued",
            "gauge",
            "Asynchronous calls in the function's queue (waiting, waiting for a retry, or being delivered).",
        );
        for (f, (queued, _)) in self.async_queues.iter().filter(|(f, _)| shown(f)) {
            let _ = writeln!(out, "roost_async_queued{{function=\"{f}\"}} {queued}");
        }
        head(out, "roost_async_oldest_seconds", "gauge", "Age of the oldest asynchronous call in the function's queue.");
        for (f, (_, oldest_ms)) in self.async_queues.iter().filter(|(f, _)| shown(f)) {
            let _ = writeln!(out, "roost_async_oldest_seconds{{function=\"{f}\"}} {}", oldest_ms / 1000.0);
        }
        for (what, name, label, help) in [
            (
                "submitted",
                "roost_async_submitted_total",
                "outcome",
                "Asynchronous submits by outcome: accepted, duplicate, full (429), undeclared, refused, error.",
            ),
            ("finished", "roost_async_finished_total", "state", "Asynchronous calls finished: done, or failed (a dead letter)."),
            ("retries", "roost_async_retries_total", "", "Asynchronous call attempts that failed and wait for a retry."),
        ] {
            head(out, name, "counter", help);
            for ((f, _, value), v) in self.async_counts.iter().filter(|((f, w, _), _)| *w == what && shown(f)) {
                if label.is_empty() {
                    let _ = writeln!(out, "{name}{{function=\"{f}\"}} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{function=\"{f}\",{label}=\"{value}\"}} {v}");
                }
            }
        }
    }

    /// Appends the Prometheus text exposition of every series.
    pub fn render(&self, out: &mut String) {
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(out, "roost_requests_held", "gauge", "Requests the gate holds for the function (asleep, waking, or past its ready capacity).");
        let shown = |f: &String| !self.unconfirmed.contains_key(f);
        for (f, v) in self.held.iter().filter(|(f, _)| shown(f)) {
            let _ = writeln!(out, "roost_requests_held{{function=\"{f}\"}} {v}");
        }
        for (name, label, help) in [
            ("roost_function_calls_total", "function", "Calls by status code: the replica's answer, or the gate's own (503, 504, 502)."),
            (
                "gateway_function_invocation_total",
                "function_name",
                "Invocations by status code (OpenFaaS's name; the replica's answer, or the gate's own).",
            ),
        ] {
            head(out, name, "counter", help);
            for ((f, code), v) in self.calls.iter().filter(|((f, _), _)| shown(f)) {
                let _ = writeln!(out, "{name}{{{label}=\"{f}\",code=\"{code}\"}} {v}");
            }
        }
        for (name, label, help) in [
            (
                "roost_function_seconds",
                "function",
                "Call durations: from Envoy routing the call to a replica (queue included) to its answer.",
            ),
            (
                "gateway_functions_seconds",
                "function_name",
                "Call durations (OpenFaaS's name; from Envoy routing the call to a replica, queue included, to its answer).",
            ),
        ] {
            head(out, name, "histogram", help);
            for (f, h) in self.durations.iter().filter(|(f, _)| shown(f)) {
                histogram(out, name, &format!("{label}=\"{f}\""), h);
            }
        }
        self.render_async(out, &head, &shown);
        head(out, "roost_cold_starts_total", "counter", "Cold starts completed (a replica started for a waiting call).");
        for (f, v) in self.cold_starts.iter().filter(|(f, _)| shown(f)) {
            let _ = writeln!(out, "roost_cold_starts_total{{function=\"{f}\"}} {v}");
        }
        head(out, "roost_cold_start_seconds", "histogram", "Cold-start time by phase: start, readiness, ack, notice, total.");
        for ((f, phase), h) in self.phases.iter().filter(|((f, _), _)| shown(f)) {
            histogram(out, "roost_cold_start_seconds", &format!("function=\"{f}\",phase=\"{phase}\""), h);
        }
        for (name, label, help, pick) in [
            ("roost_replicas_ready", "function", "Replicas ready.", 0),
            ("roost_replicas_starting", "function", "Replicas starting.", 1),
            ("gateway_service_count", "function_name", "Replicas ready (OpenFaaS's name).", 0),
        ] {
            head(out, name, "gauge", help);
            for (f, (ready, starting)) in self.replicas.iter().filter(|(f, _)| shown(f)) {
                let _ = writeln!(out, "{name}{{{label}=\"{f}\"}} {}", if pick == 0 { ready } else { starting });
            }
        }
    }
}

/// The function and the stat of one of Envoy's cluster stats: a call through the gate is
/// answered on the function's cluster (`fn-<f>`), one that went straight to a replica on
/// its aggregate cluster (`direct.<f>`).
fn function_stat(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("envoy.").unwrap_or(name).strip_prefix("cluster.")?;
    let (cluster, stat) = rest.rsplit_once('.')?;
    let function = cluster.strip_prefix("direct.").filter(|f| !f.contains('.')).or_else(|| function_of_cluster(cluster))?;
    Some((function, stat))
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    for (bound, n) in BUCKETS.iter().zip(h.buckets) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels},le=\"+Inf\"}} {}\n{name}_sum{{{labels}}} {}\n{name}_count{{{labels}}} {}",
        h.count, h.sum, h.count
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse_datagram;

    fn feed(s: &mut Series, lines: &str) -> usize {
        parse_datagram(lines.as_bytes()).filter_map(Result::ok).filter(|m| s.observe(m, |f| f != "ghost", 0)).count()
    }

    #[test]
    fn envoy_codes_through_the_gate_and_direct_become_calls() {
        let mut s = Series::default();
        let taken = feed(
            &mut s,
            "envoy.cluster.fn-hello.upstream_rq_200:3|c\nenvoy.cluster.fn-hello.upstream_rq_503:1|c\nenvoy.cluster.fn-hello.upstream_rq_2xx:3|c\n\
             envoy.cluster.fn-ghost.upstream_rq_200:9|c\nenvoy.cluster.roost_gate.upstream_rq_200:9|c\n\
             envoy.cluster.direct.hello.upstream_rq_200:4|c|@0.5\nenvoy.cluster.direct.ghost.upstream_rq_200:4|c\n\
             envoy.cluster.fn-hello.upstream_rq_time:12|ms\nenvoy.cluster.direct.hello.upstream_rq_time:3|ms\n\
             envoy.cluster.direct.hello.upstream_rq_time:700|ms|@0.5\nenvoy.cluster.fn-ghost.upstream_rq_time:1|ms\n\
             envoy.cluster.roost_gate.upstream_rq_time:5|ms\nenvoy.cluster.fn-hello.upstream_rq_time:5|c\n",
        );
        assert_eq!(taken, 9, "the 2xx class, the gate's cluster and a time that is no timer are not taken (ghost's are kept apart)");
        let mut out = String::new();
        s.render(&mut out);
        assert!(
            out.contains("gateway_function_invocation_total{function_name=\"hello\",code=\"200\"} 11\n"),
            "3 + 4 sampled at 0.5: {out}"
        );
        assert!(out.contains("roost_function_calls_total{function=\"hello\",code=\"503\"} 1\n"), "{out}");
        assert!(out.contains("# TYPE gateway_function_invocation_total counter"));
        assert!(!out.contains("ghost"));
        // 12 ms through the gate, 3 ms direct, and 700 ms direct sampled at 0.5 (twice).
        for line in [
            "gateway_functions_seconds_bucket{function_name=\"hello\",le=\"0.005\"} 1\n",
            "gateway_functions_seconds_bucket{function_name=\"hello\",le=\"0.025\"} 2\n",
            "gateway_functions_seconds_bucket{function_name=\"hello\",le=\"0.5\"} 2\n",
            "gateway_functions_seconds_bucket{function_name=\"hello\",le=\"1\"} 4\n",
            "gateway_functions_seconds_count{function_name=\"hello\"} 4\n",
            "roost_function_seconds_sum{function=\"hello\"} 1.41", // 1.415, give or take a rounding
            "# TYPE gateway_functions_seconds histogram\n",
        ] {
            assert!(out.contains(line), "{line} in {out}");
        }
    }

    #[test]
    fn a_function_not_yet_declared_is_kept_apart_then_shown_or_dropped() {
        let mut s = Series::default();
        let line = |f: &str| format!("envoy.cluster.direct.{f}.upstream_rq_200:130|c");
        for f in ["fresh", "stale", "Bad_Name"] {
            let text = line(f);
            s.observe(&crate::parser::parse_line(text.as_bytes()).unwrap(), |_| false, 1_000);
        }
        let mut out = String::new();
        s.render(&mut out);
        assert!(!out.contains("fresh") && !out.contains("stale") && s.unconfirmed(), "not shown while unknown: {out}");
        // The list names `fresh` a moment later: its first calls count.
        s.confirm(|f| f == "fresh", 1_200);
        let mut out = String::new();
        s.render(&mut out);
        assert!(out.contains("roost_function_calls_total{function=\"fresh\",code=\"200\"} 130\n"), "{out}");
        // `stale` never is: dropped after the wait.
        s.confirm(|f| f == "fresh", 1_000 + CONFIRM_WITHIN_MS + 1);
        assert!(!s.unconfirmed());
        s.confirm(|f| f == "fresh" || f == "stale", 20_000);
        let mut out = String::new();
        s.render(&mut out);
        assert!(!out.contains("stale") && !out.contains("Bad_Name"), "{out}");
        // Bounded: past MAX_UNCONFIRMED names, more are not kept.
        for i in 0..MAX_UNCONFIRMED + 10 {
            let text = line(&format!("f{i}"));
            let kept = s.observe(&crate::parser::parse_line(text.as_bytes()).unwrap(), |_| false, 30_000);
            assert_eq!(kept, i < MAX_UNCONFIRMED, "name {i}");
        }
    }

    #[test]
    fn envoys_interval_histograms_add_up_by_function() {
        // Envoy's default bounds (ms), cumulative counts of one flush interval.
        let bounds = [0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0];
        let interval = |counts: [f64; 16]| bounds.iter().copied().zip(counts).collect::<Vec<_>>();
        let mut s = Series::default();
        let declared = |f: &str| f == "hello";
        // 3 calls of 2-5 ms through the gate, then 2 direct: one of 40 ms, one of 3 s.
        let first = interval([0., 0., 3., 3., 3., 3., 3., 3., 3., 3., 3., 3., 3., 3., 3., 3.]);
        assert!(s.observe_histogram("cluster.fn-hello.upstream_rq_time", &first, 3.0, 10.5, declared, 0));
        let second = interval([0., 0., 0., 0., 0., 1., 1., 1., 1., 1., 1., 2., 2., 2., 2., 2.]);
        assert!(s.observe_histogram("cluster.direct.hello.upstream_rq_time", &second, 2.0, 3040.0, declared, 0));
        assert!(s.observe_histogram("cluster.fn-ghost.upstream_rq_time", &first, 3.0, 10.5, declared, 0), "kept apart");
        assert!(!s.observe_histogram("cluster.fn-hello.upstream_cx_length_ms", &first, 3.0, 10.5, declared, 0), "another stat");
        let mut out = String::new();
        s.render(&mut out);
        for line in [
            "roost_function_seconds_bucket{function=\"hello\",le=\"0.005\"} 3\n",
            "roost_function_seconds_bucket{function=\"hello\",le=\"0.05\"} 4\n",
            "roost_function_seconds_bucket{function=\"hello\",le=\"2.5\"} 4\n",
            "roost_function_seconds_bucket{function=\"hello\",le=\"5\"} 5\n",
            "roost_function_seconds_bucket{function=\"hello\",le=\"+Inf\"} 5\n",
            "roost_function_seconds_sum{function=\"hello\"} 3.0505\n",
        ] {
            assert!(out.contains(line), "{line} in {out}");
        }
        assert!(!out.contains("ghost"));
    }

    #[test]
    fn the_async_workers_queues_and_counts_by_function() {
        let mut s = Series::default();
        let declared = |f: &str| f == "hello";
        for line in "roost.async.queued:12|g|#function:hello\nroost.async.oldest_ms:2500|g|#function:hello\n\
                     roost.async.submitted:3|c|#function:hello,outcome:accepted\nroost.async.submitted:1|c|#function:hello,outcome:full\n\
                     roost.async.finished:2|c|#function:hello,state:done\nroost.async.finished:1|c|#function:hello,state:failed\n\
                     roost.async.retries:4|c|#function:hello\nroost.async.finished:1|c|#function:hello,state:Bad{}\n"
            .lines()
        {
            let m = crate::parser::parse_line(line.trim().as_bytes()).unwrap();
            s.observe(&m, declared, 0);
        }
        let mut out = String::new();
        s.render(&mut out);
        for want in [
            "roost_async_queued{function=\"hello\"} 12\n",
            "roost_async_oldest_seconds{function=\"hello\"} 2.5\n",
            "roost_async_submitted_total{function=\"hello\",outcome=\"accepted\"} 3\n",
            "roost_async_submitted_total{function=\"hello\",outcome=\"full\"} 1\n",
            "roost_async_finished_total{function=\"hello\",state=\"failed\"} 1\n",
            "roost_async_retries_total{function=\"hello\"} 4\n",
        ] {
            assert!(out.contains(want), "{want} in {out}");
        }
        assert!(!out.contains("Bad"), "a label that is not the worker's is not counted: {out}");
    }

    #[test]
    fn the_orchestrators_cold_starts_and_replicas_by_function() {
        let mut s = Series::default();
        let taken = feed(
            &mut s,
            "roost.orchestrator.cold_starts:1|c|#function:hello\nroost.orchestrator.cold_start.total:8.5|ms|#function:hello\n\
             roost.orchestrator.cold_start.ack:1.5|ms|#function:hello\nroost.orchestrator.cold_start.bogus:1|ms|#function:hello\n\
             roost.orchestrator.replicas.ready:2|g|#function:hello\nroost.orchestrator.replicas.starting:1|g|#function:hello\n\
             roost.orchestrator.held:7|g|#function:hello\n\
             roost.orchestrator.cold_starts:1|c|#function:ghost\nroost.orchestrator.cold_starts:1|c\n\
             roost.gate.answers:4|c|#function:hello,code:504\nroost.gate.answers:1|c|#function:ghost,code:503\n\
             roost.gate.answers:1|c|#function:hello,code:99\nroost.gate.answers:1|g|#function:hello,code:503\n",
        );
        assert_eq!(taken, 9, "the gate's answers with no status or as a gauge are not taken (ghost's are kept apart)");
        let mut out = String::new();
        s.render(&mut out);
        assert!(out.contains("roost_cold_starts_total{function=\"hello\"} 1\n"), "{out}");
        assert!(out.contains("roost_cold_start_seconds_bucket{function=\"hello\",phase=\"total\",le=\"0.01\"} 1\n"), "{out}");
        assert!(out.contains("roost_cold_start_seconds_count{function=\"hello\",phase=\"ack\"} 1\n"), "{out}");
        assert!(out.contains("gateway_service_count{function_name=\"hello\"} 2\n"), "{out}");
        assert!(out.contains("roost_replicas_starting{function=\"hello\"} 1\n"), "{out}");
        assert!(out.contains("roost_requests_held{function=\"hello\"} 7\n"), "{out}");
        assert!(out.contains("gateway_function_invocation_total{function_name=\"hello\",code=\"504\"} 4\n"), "{out}");
        s.forget("hello");
        let mut out = String::new();
        s.render(&mut out);
        assert!(!out.contains("hello"), "{out}");
    }
}
