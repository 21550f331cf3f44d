//! Per-function load from Envoy's cluster stats, and the scale-up decision: pure code,
//! fed parsed metrics with their source, the declared functions and the time, tested
//! without sockets.
//!
//! Only declared functions (the Redis set `roost:functions`, handed in with
//! [`Aggregator::set_declared`]) are tracked: a metric for any other name is counted in
//! [`Aggregator::unknown`] and dropped.
//!
//! Several Envoys (a Swarm service with replicas) each report their own gauges for the
//! same function, so a gauge (`pending`, `in_flight`) is kept per [`Source`] (a
//! datagram's source address, an Envoy metrics stream's peer) and a function's value is
//! the sum over its sources. Each source's reading expires on its own: one not refreshed
//! within the gauge TTL is forgotten at the next flush, so neither a stale reading, a
//! spoofed one nor an Envoy that went away (a restart comes back from a new address) can
//! hold replicas up. Envoy repeats every gauge each stats flush (250 ms-1 s), so a live
//! reading is never older than one flush. An Envoy metrics stream that ends takes its
//! readings with it at once ([`Aggregator::forget_source`]). Counters are deltas: they
//! add up whatever their source.

use crate::parser::{Kind, Metric};
use roost_common::naming::function_of_cluster;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

/// Most functions tracked; metrics of further functions are counted and dropped, so a
/// flood of odd cluster names cannot grow memory without bound.
pub const MAX_FUNCTIONS: usize = 10_000;

/// Most sources one function's gauge is kept for at once (a few Envoys, and a restarted
/// one until its old address expires); readings from further sources are counted in
/// [`Aggregator::dropped`] and dropped, so a sender changing ports cannot grow memory.
pub const MAX_SOURCES: usize = 64;

/// Where a reading came from: the source address of a statsd datagram, or the peer of
/// an Envoy metrics stream.
pub type Source = SocketAddr;

/// The load of one function.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    /// Requests in flight (`upstream_rq_active`), summed over the sources.
    pub in_flight: f64,
    /// Requests queued in Envoy (`upstream_rq_pending_active`), summed over the sources.
    pub pending: f64,
    /// Requests started per second over the last flush interval.
    pub rps: f64,
    /// Requests started, in total, since the listener started.
    pub requests_total: f64,
    /// No-healthy-host events, in total (`upstream_cx_none_healthy`).
    pub none_healthy_total: f64,
    /// Unix milliseconds of the last flush that saw a request start (0: none yet).
    pub last_request_ms: u64,
}

/// One source's reading of a gauge.
#[derive(Debug, Clone, Copy)]
struct Reading {
    value: f64,
    /// When it was set (Unix ms).
    at: u64,
}

/// One gauge of one function: the latest reading of each source.
#[derive(Debug, Default)]
struct Gauge {
    readings: HashMap<Source, Reading>,
}

impl Gauge {
    /// Takes a reading from `source` (a delta adds to that source's own value); `false`
    /// when the source is new and [`MAX_SOURCES`] are already kept.
    fn set(&mut self, source: Source, kind: Kind, value: f64, now_ms: u64) -> bool {
        if !self.readings.contains_key(&source) && self.readings.len() >= MAX_SOURCES {
            return false;
        }
        let r = self.readings.entry(source).or_insert(Reading { value: 0.0, at: now_ms });
        r.value = match kind {
            Kind::Gauge { delta: true } => (r.value + value).max(0.0),
            _ => value.max(0.0),
        };
        r.at = now_ms;
        true
    }

    /// The function's value: the sum over its sources.
    fn sum(&self) -> f64 {
        self.readings.values().map(|r| r.value).sum()
    }

    /// Forgets the readings set more than `ttl_ms` before `now_ms`; returns how many of
    /// them were not zero.
    fn expire(&mut self, now_ms: u64, ttl_ms: u64) -> u64 {
        let mut expired = 0;
        self.readings.retain(|_, r| {
            let keep = now_ms.saturating_sub(r.at) <= ttl_ms;
            if !keep && r.value != 0.0 {
                expired += 1;
            }
            keep
        });
        expired
    }

    /// Forgets one source's reading; whether it was not zero.
    fn forget(&mut self, source: Source) -> bool {
        self.readings.remove(&source).is_some_and(|r| r.value != 0.0)
    }
}

#[derive(Debug, Default)]
struct State {
    load: Load,
    started_since_flush: f64,
    dirty: bool,
    in_flight: Gauge,
    pending: Gauge,
}

impl State {
    /// Sets the load's gauges to the sums of their sources.
    fn sum_gauges(&mut self) {
        self.load.in_flight = self.in_flight.sum();
        self.load.pending = self.pending.sum();
    }
}

/// Which Envoy stat a metric is, for a Roost function cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    /// `upstream_rq_active`
    Active,
    /// `upstream_rq_pending_active`
    Pending,
    /// `upstream_rq_total`
    Total,
    /// `upstream_cx_none_healthy`
    NoneHealthy,
}

/// Splits `[prefix.]cluster.fn-<f>.<stat>` into the function and the stat.
pub fn classify(name: &str) -> Option<(&str, Stat)> {
    let rest = name.strip_prefix("envoy.").unwrap_or(name);
    let rest = rest.strip_prefix("cluster.")?;
    let (cluster, stat) = rest.rsplit_once('.')?;
    let function = function_of_cluster(cluster)?;
    let stat = match stat {
        "upstream_rq_active" => Stat::Active,
        "upstream_rq_pending_active" => Stat::Pending,
        "upstream_rq_total" => Stat::Total,
        "upstream_cx_none_healthy" => Stat::NoneHealthy,
        _ => return None,
    };
    Some((function, stat))
}

/// The aggregator.
#[derive(Debug)]
pub struct Aggregator {
    functions: HashMap<String, State>,
    declared: HashSet<String>,
    gauge_ttl_ms: u64,
    /// Metrics dropped because [`MAX_FUNCTIONS`] were already tracked, or
    /// [`MAX_SOURCES`] for the function's gauge.
    pub dropped: u64,
    /// Metrics dropped because their function is not declared.
    pub unknown: u64,
    /// Sources' gauge readings that expired while not zero (for want of a fresh reading).
    pub expired: u64,
}

/// The gauge TTL when none is configured, in milliseconds.
pub const DEFAULT_GAUGE_TTL_MS: u64 = 3_000;

impl Default for Aggregator {
    fn default() -> Self {
        Aggregator::new(DEFAULT_GAUGE_TTL_MS)
    }
}

/// What one metric did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Not a stat Roost reads.
    Ignored,
    /// Recorded.
    Recorded,
    /// Recorded, and the function now has requests queued: signal at once.
    Queued,
}

impl Aggregator {
    /// An aggregator that knows no declared function yet, whose gauges expire after
    /// `gauge_ttl_ms` without a fresh reading.
    pub fn new(gauge_ttl_ms: u64) -> Aggregator {
        Aggregator { functions: HashMap::new(), declared: HashSet::new(), gauge_ttl_ms, dropped: 0, unknown: 0, expired: 0 }
    }

    /// Replaces the declared functions; returns the functions it stops tracking (no
    /// longer declared), whose state is forgotten.
    pub fn set_declared(&mut self, declared: HashSet<String>) -> Vec<String> {
        let gone: Vec<String> = self.functions.keys().filter(|f| !declared.contains(*f)).cloned().collect();
        for f in &gone {
            self.functions.remove(f);
        }
        self.declared = declared;
        gone
    }

    /// Whether the function is declared.
    pub fn is_declared(&self, function: &str) -> bool {
        self.declared.contains(function)
    }

    /// Records one metric from `source` at `now_ms`.
    pub fn observe(&mut self, m: &Metric<'_>, source: Source, now_ms: u64) -> Observed {
        let Some((function, stat)) = classify(m.name) else { return Observed::Ignored };
        if !self.declared.contains(function) {
            self.unknown += 1;
            return Observed::Ignored;
        }
        if !self.functions.contains_key(function) && self.functions.len() >= MAX_FUNCTIONS {
            self.dropped += 1;
            return Observed::Ignored;
        }
        let s = self.functions.entry(function.to_string()).or_default();
        let scaled = m.value / m.sample_rate;
        let gauge = match stat {
            Stat::Active => Some(&mut s.in_flight),
            Stat::Pending => Some(&mut s.pending),
            Stat::Total | Stat::NoneHealthy => None,
        };
        if let Some(gauge) = gauge {
            if !gauge.set(source, m.kind, m.value, now_ms) {
                self.dropped += 1;
                return Observed::Ignored;
            }
            s.sum_gauges();
        }
        s.dirty = true;
        match stat {
            Stat::Pending if s.load.pending > 0.0 => return Observed::Queued,
            Stat::Active | Stat::Pending => {}
            Stat::Total => {
                if scaled > 0.0 {
                    s.started_since_flush += scaled;
                    s.load.requests_total += scaled;
                    s.load.last_request_ms = now_ms;
                }
            }
            Stat::NoneHealthy => s.load.none_healthy_total += scaled,
        }
        Observed::Recorded
    }

    /// Forgets every gauge reading of `source` (an Envoy metrics stream that ended: that
    /// Envoy stopped or reconnects from a new address).
    pub fn forget_source(&mut self, source: Source) {
        for s in self.functions.values_mut() {
            let in_flight = s.in_flight.forget(source);
            let pending = s.pending.forget(source);
            if in_flight || pending {
                s.sum_gauges();
                s.dirty = true;
            }
        }
    }

    /// The functions that changed since the last flush, with their load; `elapsed_ms`
    /// is the time since the last flush (for requests per second). A source's gauge
    /// reading set more than the gauge TTL before `now_ms` is forgotten here (a change
    /// when it was not zero, so flushed).
    pub fn flush(&mut self, elapsed_ms: u64, now_ms: u64) -> Vec<(String, Load)> {
        let secs = (elapsed_ms.max(1) as f64) / 1000.0;
        let ttl = self.gauge_ttl_ms;
        let mut out = Vec::new();
        for (name, s) in &mut self.functions {
            let expired = s.in_flight.expire(now_ms, ttl) + s.pending.expire(now_ms, ttl);
            if expired > 0 {
                s.sum_gauges();
                s.dirty = true;
                self.expired += expired;
            }
            if !s.dirty {
                continue;
            }
            s.load.rps = s.started_since_flush / secs;
            s.started_since_flush = 0.0;
            s.dirty = false;
            out.push((name.clone(), s.load));
        }
        out
    }

    /// The current load of one function.
    pub fn load(&self, function: &str) -> Option<Load> {
        self.functions.get(function).map(|s| s.load)
    }

    /// Every function's current load.
    pub fn all(&self) -> Vec<(String, Load)> {
        self.functions.iter().map(|(n, s)| (n.clone(), s.load)).collect()
    }
}

/// Whether a function should get another replica now: [`roost_common::scaling`]'s rule
/// (the orchestrator sizes by the same one). `ready_replicas` is the orchestrator's count,
/// read from its replicas hash in Redis; it lags a start by up to one publish, which the
/// rate limit ([`roost_common::scaling::SCALE_SIGNAL_INTERVAL`]) and the orchestrator's
/// own count of replicas starting absorb.
pub fn needs_scale_up(load: &Load, ready_replicas: u32, target_concurrency: u32) -> bool {
    let count = |v: f64| v.max(0.0).ceil() as u64;
    roost_common::scaling::needs_scale_up(count(load.in_flight), count(load.pending), ready_replicas, target_concurrency)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse_line;

    /// The source of [`feed`]: one Envoy.
    const ENVOY: &str = "10.0.0.1:9000";

    fn feed(a: &mut Aggregator, line: &str, now: u64) -> Observed {
        feed_from(a, ENVOY, line, now)
    }

    fn feed_from(a: &mut Aggregator, source: &str, line: &str, now: u64) -> Observed {
        a.observe(&parse_line(line.as_bytes()).unwrap(), source.parse().unwrap(), now)
    }

    /// An aggregator (gauge TTL 3 s) that knows the given functions.
    fn with(functions: &[&str]) -> Aggregator {
        let mut a = Aggregator::new(3_000);
        a.set_declared(functions.iter().map(|f| f.to_string()).collect());
        a
    }

    #[test]
    fn classifies_only_function_clusters() {
        assert_eq!(classify("envoy.cluster.fn-hello.upstream_rq_active"), Some(("hello", Stat::Active)));
        assert_eq!(classify("cluster.fn-a_b.upstream_rq_total"), Some(("a_b", Stat::Total)));
        assert_eq!(classify("envoy.cluster.roost_xds.upstream_rq_active"), None);
        assert_eq!(classify("envoy.cluster.fn-hello.upstream_cx_total"), None);
        assert_eq!(classify("roost.orchestrator.cold_starts"), None);
    }

    #[test]
    fn gauges_counters_and_rates() {
        let mut a = with(&["h"]);
        feed(&mut a, "envoy.cluster.fn-h.upstream_rq_active:3|g", 1000);
        feed(&mut a, "envoy.cluster.fn-h.upstream_rq_active:-1|g", 1000);
        feed(&mut a, "envoy.cluster.fn-h.upstream_rq_total:5|c", 1000);
        feed(&mut a, "envoy.cluster.fn-h.upstream_rq_total:1|c|@0.5", 1100);
        let out = a.flush(500, 1100);
        assert_eq!(out.len(), 1);
        let l = out[0].1;
        assert_eq!((l.in_flight, l.requests_total, l.rps, l.last_request_ms), (2.0, 7.0, 14.0, 1100));
        assert!(a.flush(250, 1350).is_empty(), "nothing changed, nothing flushed");
    }

    #[test]
    fn idleness_counts_started_requests_not_finished_ones() {
        let mut a = with(&["h"]);
        feed(&mut a, "envoy.cluster.fn-h.upstream_rq_total:1|c", 1000);
        // A long request still in flight: the gauge repeats, nothing new starts.
        feed(&mut a, "envoy.cluster.fn-h.upstream_rq_active:1|g", 5000);
        feed(&mut a, "envoy.cluster.fn-h.upstream_rq_total:0|c", 5000);
        assert_eq!(a.load("h").unwrap().last_request_ms, 1000);
        assert_eq!(a.load("h").unwrap().in_flight, 1.0);
    }

    #[test]
    fn queueing_is_signalled_at_once() {
        let mut a = with(&["h"]);
        assert_eq!(feed(&mut a, "envoy.cluster.fn-h.upstream_rq_pending_active:0|g", 1), Observed::Recorded);
        assert_eq!(feed(&mut a, "envoy.cluster.fn-h.upstream_rq_pending_active:9|g", 2), Observed::Queued);
        assert_eq!(feed(&mut a, "other.metric:1|c", 3), Observed::Ignored);
    }

    #[test]
    fn scale_up_decision() {
        let l = |in_flight, pending| Load { in_flight, pending, ..Default::default() };
        assert!(needs_scale_up(&l(1.0, 1.0), 1, 1));
        assert!(!needs_scale_up(&l(1.0, 0.0), 1, 1));
        assert!(needs_scale_up(&l(3.0, 0.0), 1, 2));
        assert!(!needs_scale_up(&l(4.0, 0.0), 2, 2));
        assert!(!needs_scale_up(&l(0.0, 0.0), 0, 1));
    }

    #[test]
    fn tracked_functions_are_bounded() {
        let mut a = Aggregator::default();
        a.set_declared((0..MAX_FUNCTIONS + 5).map(|i| format!("f{i}")).collect());
        for i in 0..MAX_FUNCTIONS + 5 {
            feed(&mut a, &format!("envoy.cluster.fn-f{i}.upstream_rq_active:1|g"), 1);
        }
        assert_eq!(a.all().len(), MAX_FUNCTIONS);
        assert_eq!(a.dropped, 5);
    }

    #[test]
    fn undeclared_functions_are_counted_and_dropped() {
        let mut a = with(&["hello"]);
        assert_eq!(feed(&mut a, "envoy.cluster.fn-ghost.upstream_rq_pending_active:1e15|g", 1), Observed::Ignored);
        assert_eq!(feed(&mut a, "envoy.cluster.fn-ghost.upstream_rq_total:3|c", 1), Observed::Ignored);
        assert_eq!(feed(&mut a, "roost.orchestrator.cold_starts:1|c", 1), Observed::Ignored, "not a function stat: not unknown");
        assert_eq!(feed(&mut a, "envoy.cluster.fn-hello.upstream_rq_active:1|g", 1), Observed::Recorded);
        assert_eq!(a.unknown, 2);
        assert!(a.load("ghost").is_none());
        assert_eq!(a.flush(250, 2).iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(), ["hello"]);
    }

    #[test]
    fn an_undeclared_function_is_forgotten_and_a_declared_one_tracked() {
        let mut a = with(&["hello"]);
        feed(&mut a, "envoy.cluster.fn-hello.upstream_rq_active:2|g", 1);
        feed(&mut a, "envoy.cluster.fn-new.upstream_rq_active:2|g", 1);
        let gone = a.set_declared(["new".to_string()].into());
        assert_eq!(gone, ["hello"]);
        assert!(a.load("hello").is_none());
        assert!(a.is_declared("new") && !a.is_declared("hello"));
        assert_eq!(feed(&mut a, "envoy.cluster.fn-new.upstream_rq_active:2|g", 2), Observed::Recorded);
        assert_eq!(feed(&mut a, "envoy.cluster.fn-hello.upstream_rq_active:2|g", 2), Observed::Ignored);
        assert_eq!(a.flush(250, 2).iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(), ["new"]);
    }

    #[test]
    fn gauges_not_refreshed_within_the_ttl_count_as_zero() {
        // Virtual time: milliseconds handed in, a 3 s TTL, a flush every 250 ms.
        let mut a = with(&["h"]);
        feed(&mut a, "envoy.cluster.fn-h.upstream_rq_pending_active:1e15|g", 10_000);
        feed(&mut a, "envoy.cluster.fn-h.upstream_rq_active:10|g", 10_000);
        feed(&mut a, "envoy.cluster.fn-h.upstream_rq_total:1|c", 10_000);
        let first = a.flush(250, 10_000);
        assert_eq!((first[0].1.pending, first[0].1.in_flight), (1e15, 10.0));
        // The in-flight gauge keeps coming, the pending one stops.
        let mut t = 10_000;
        while t < 13_000 {
            t += 250;
            feed(&mut a, "envoy.cluster.fn-h.upstream_rq_active:10|g", t);
            let out = a.flush(250, t);
            assert_eq!(out[0].1.pending, 1e15, "still within the TTL at {t}");
        }
        t += 250;
        feed(&mut a, "envoy.cluster.fn-h.upstream_rq_active:10|g", t);
        let out = a.flush(250, t);
        assert_eq!((out[0].1.pending, out[0].1.in_flight), (0.0, 10.0), "pending expired at {t}, in-flight refreshed");
        assert_eq!(a.expired, 1);
        // Nothing comes any more: in-flight expires too, written once as zero, then quiet.
        let out = a.flush(250, t + 3_001);
        assert_eq!((out[0].1.pending, out[0].1.in_flight), (0.0, 0.0));
        assert_eq!(out[0].1.last_request_ms, 10_000, "the last request start is kept");
        assert!(a.flush(250, t + 10_000).is_empty());
        assert_eq!(a.expired, 2);
        // A fresh reading counts again.
        assert_eq!(feed(&mut a, "envoy.cluster.fn-h.upstream_rq_pending_active:2|g", t + 10_001), Observed::Queued);
        assert_eq!(a.flush(250, t + 10_001)[0].1.pending, 2.0);
    }

    /// Two Envoys: the other one's address.
    const OTHER: &str = "10.0.0.2:9000";

    #[test]
    fn two_sources_gauges_add_up_and_counters_keep_adding() {
        let mut a = with(&["h"]);
        feed_from(&mut a, ENVOY, "envoy.cluster.fn-h.upstream_rq_active:3|g", 1000);
        feed_from(&mut a, OTHER, "envoy.cluster.fn-h.upstream_rq_active:4|g", 1000);
        feed_from(&mut a, ENVOY, "envoy.cluster.fn-h.upstream_rq_total:5|c", 1000);
        feed_from(&mut a, OTHER, "envoy.cluster.fn-h.upstream_rq_total:2|c", 1000);
        let l = a.flush(1000, 1000)[0].1;
        assert_eq!((l.in_flight, l.requests_total, l.rps), (7.0, 7.0, 7.0), "the sum, not the last packet");
        // Each source replaces only its own reading; a delta moves only its own.
        feed_from(&mut a, ENVOY, "envoy.cluster.fn-h.upstream_rq_active:1|g", 1250);
        feed_from(&mut a, OTHER, "envoy.cluster.fn-h.upstream_rq_active:-1|g", 1250);
        assert_eq!(a.load("h").unwrap().in_flight, 4.0);
        // One source queues: signalled; the other one's zero does not hide it.
        assert_eq!(feed_from(&mut a, ENVOY, "envoy.cluster.fn-h.upstream_rq_pending_active:2|g", 1300), Observed::Queued);
        assert_eq!(feed_from(&mut a, OTHER, "envoy.cluster.fn-h.upstream_rq_pending_active:0|g", 1300), Observed::Queued);
        assert_eq!(a.flush(250, 1300)[0].1.pending, 2.0);
    }

    #[test]
    fn a_source_gone_silent_expires_alone() {
        let mut a = with(&["h"]);
        let mut t = 10_000;
        feed_from(&mut a, ENVOY, "envoy.cluster.fn-h.upstream_rq_active:5|g", t);
        feed_from(&mut a, OTHER, "envoy.cluster.fn-h.upstream_rq_active:2|g", t);
        assert_eq!(a.flush(250, t)[0].1.in_flight, 7.0);
        // Only OTHER keeps reporting.
        while t < 13_000 {
            t += 250;
            feed_from(&mut a, OTHER, "envoy.cluster.fn-h.upstream_rq_active:2|g", t);
            assert_eq!(a.flush(250, t)[0].1.in_flight, 7.0, "ENVOY still within the TTL at {t}");
        }
        t += 250;
        feed_from(&mut a, OTHER, "envoy.cluster.fn-h.upstream_rq_active:2|g", t);
        assert_eq!(a.flush(250, t)[0].1.in_flight, 2.0, "ENVOY's 5 expired at {t}, OTHER's 2 kept");
        assert_eq!(a.expired, 1);
        t += 250;
        feed_from(&mut a, OTHER, "envoy.cluster.fn-h.upstream_rq_active:2|g", t);
        assert_eq!(a.flush(250, t)[0].1.in_flight, 2.0);
        assert_eq!(a.expired, 1, "the silent source is forgotten once");
    }

    #[test]
    fn a_restarted_envoy_on_a_new_address_does_not_double_count_past_the_ttl() {
        let mut a = with(&["h"]);
        let old = "10.0.0.1:40001";
        let new = "10.0.0.1:40002";
        feed_from(&mut a, old, "envoy.cluster.fn-h.upstream_rq_active:3|g", 1_000);
        feed_from(&mut a, old, "envoy.cluster.fn-h.upstream_rq_pending_active:4|g", 1_000);
        // It restarts and reports the same requests from a new port.
        feed_from(&mut a, new, "envoy.cluster.fn-h.upstream_rq_active:3|g", 1_500);
        feed_from(&mut a, new, "envoy.cluster.fn-h.upstream_rq_pending_active:4|g", 1_500);
        let l = a.flush(500, 1_500)[0].1;
        assert_eq!((l.in_flight, l.pending), (6.0, 8.0), "within the TTL the old address still counts");
        let mut t = 1_500;
        while t <= 4_000 + 250 {
            t += 250;
            feed_from(&mut a, new, "envoy.cluster.fn-h.upstream_rq_active:3|g", t);
            feed_from(&mut a, new, "envoy.cluster.fn-h.upstream_rq_pending_active:4|g", t);
            a.flush(250, t);
        }
        let l = a.load("h").unwrap();
        assert_eq!((l.in_flight, l.pending), (3.0, 4.0), "past the TTL only the new address counts");
        assert_eq!(a.expired, 2);
    }

    #[test]
    fn an_ended_stream_takes_its_readings_at_once() {
        let mut a = with(&["h", "g"]);
        feed_from(&mut a, ENVOY, "envoy.cluster.fn-h.upstream_rq_active:3|g", 1_000);
        feed_from(&mut a, OTHER, "envoy.cluster.fn-h.upstream_rq_active:1|g", 1_000);
        feed_from(&mut a, OTHER, "envoy.cluster.fn-g.upstream_rq_active:1|g", 1_000);
        a.flush(250, 1_000);
        a.forget_source(ENVOY.parse().unwrap());
        let out = a.flush(250, 1_001);
        assert_eq!(out.len(), 1, "only h changed: {out:?}");
        assert_eq!((out[0].0.as_str(), out[0].1.in_flight), ("h", 1.0));
        a.forget_source(ENVOY.parse().unwrap());
        assert!(a.flush(250, 1_002).is_empty(), "nothing left of it");
    }

    #[test]
    fn sources_per_function_are_bounded() {
        let mut a = with(&["h"]);
        for port in 0..MAX_SOURCES + 3 {
            feed_from(&mut a, &format!("10.0.0.9:{}", 1000 + port), "envoy.cluster.fn-h.upstream_rq_active:1|g", 1);
        }
        assert_eq!(a.load("h").unwrap().in_flight, MAX_SOURCES as f64);
        assert_eq!(a.dropped, 3);
        // A known source still counts.
        feed_from(&mut a, "10.0.0.9:1000", "envoy.cluster.fn-h.upstream_rq_active:2|g", 2);
        assert_eq!(a.load("h").unwrap().in_flight, MAX_SOURCES as f64 + 1.0);
    }
}
