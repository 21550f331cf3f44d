//! `/metrics` in Prometheus text format: the listener's own counters, each function's
//! load, and the platform's series ([`crate::series`]). Label values are function names, which are validated and bounded in number.

use crate::aggregate::Load;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The listener's own counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Datagrams received, and Envoy's metrics messages.
    pub packets: AtomicU64,
    /// Lines read.
    pub lines: AtomicU64,
    /// Lines rejected by the parser.
    pub parse_errors: AtomicU64,
    /// Redis failures (connect or write).
    pub redis_errors: AtomicU64,
    /// Scale-up signals published.
    pub scale_signals: AtomicU64,
    /// Metrics dropped because too many functions were tracked.
    pub dropped_functions: AtomicU64,
    /// Metrics dropped because their function is not declared (`roost:functions`).
    pub unknown_functions: AtomicU64,
    /// Datagrams and metrics-service connections dropped because their source is not allowed.
    pub denied_datagrams: AtomicU64,
    /// Gauges zeroed because no fresh reading came within the gauge TTL.
    pub expired_gauges: AtomicU64,
    /// The newest load of every function, for `/metrics`.
    pub loads: Mutex<BTreeMap<String, Load>>,
    /// Calls by code, durations, cold starts and replicas of every function.
    pub series: Mutex<crate::series::Series>,
}

/// Renders the Prometheus text exposition.
pub fn render(stats: &Stats) -> String {
    let mut out = String::new();
    let counters = [
        ("roost_statsd_packets_total", "Datagrams received (and Envoy's metrics messages).", &stats.packets),
        ("roost_statsd_lines_total", "statsd lines read.", &stats.lines),
        ("roost_statsd_parse_errors_total", "Lines rejected as malformed (counted and skipped).", &stats.parse_errors),
        ("roost_statsd_redis_errors_total", "Failed Redis connects or writes.", &stats.redis_errors),
        ("roost_statsd_scale_signals_total", "Scale-up signals published.", &stats.scale_signals),
        ("roost_statsd_dropped_functions_total", "Metrics dropped because too many functions were tracked.", &stats.dropped_functions),
        ("roost_statsd_unknown_functions_total", "Metrics dropped because their function is not declared.", &stats.unknown_functions),
        (
            "roost_statsd_denied_datagrams_total",
            "Datagrams and metrics-service connections dropped because their source is not allowed.",
            &stats.denied_datagrams,
        ),
        ("roost_statsd_expired_gauges_total", "In-flight or pending gauges zeroed for want of a fresh reading.", &stats.expired_gauges),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Ordering::Relaxed));
    }
    let loads = stats.loads.lock().unwrap_or_else(|e| e.into_inner());
    type Series = (&'static str, &'static str, &'static str, fn(&Load) -> f64);
    let series: [Series; 6] = [
        ("roost_function_in_flight", "gauge", "Requests in flight in Envoy.", |l| l.in_flight),
        ("roost_function_pending", "gauge", "Requests queued in Envoy.", |l| l.pending),
        ("roost_function_requests_per_second", "gauge", "Requests started per second over the last flush.", |l| l.rps),
        ("roost_function_requests_total", "counter", "Requests started.", |l| l.requests_total),
        ("roost_function_none_healthy_total", "counter", "Requests that found no healthy replica.", |l| l.none_healthy_total),
        ("roost_function_last_request_timestamp_seconds", "gauge", "When the last request started.", |l| l.last_request_ms as f64 / 1000.0),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (function, load) in loads.iter() {
            let _ = writeln!(out, "{name}{{function=\"{function}\"}} {}", get(load));
        }
    }
    drop(loads);
    stats.series.lock().unwrap_or_else(|e| e.into_inner()).render(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_per_function_series() {
        let s = Stats::default();
        s.packets.store(3, Ordering::Relaxed);
        s.loads.lock().unwrap().insert("hello".into(), Load { in_flight: 2.0, pending: 1.0, ..Default::default() });
        let text = render(&s);
        assert!(text.contains("roost_statsd_packets_total 3\n"));
        assert!(text.contains("roost_function_in_flight{function=\"hello\"} 2\n"));
        assert!(text.contains("# TYPE roost_function_pending gauge"));
    }
}
