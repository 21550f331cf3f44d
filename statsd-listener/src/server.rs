//! The receive loop: statsd datagrams (refused when their source is not allowed) and
//! Envoy's metrics messages ([`crate::envoy`]); parse, aggregate (gauges per source: the
//! datagram's source address, the metrics stream's peer); flush to the sink on a timer
//! and at once when a function queues. A bad line or a refused datagram is counted
//! and skipped; nothing stalls the loop.

use crate::aggregate::{Aggregator, Observed, Source};
use crate::allow::AllowList;
use crate::envoy::{readings, FromEnvoy, Reading};
use crate::metrics::Stats;
use crate::parser::parse_datagram;
use crate::parser::Metric;
use crate::refresh::Declared;
use crate::series::Series;
use crate::sink::Sink;
use envoy_types::pb::io::prometheus::client::MetricFamily;
use roost_common::clock::now_ms;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Shortest time between two warnings about refused datagrams.
const WARN_REFUSED_EVERY: Duration = Duration::from_secs(10);

/// What the UDP loop reads besides its socket.
#[derive(Debug)]
pub struct Inputs {
    /// The allow-list in force.
    pub allow: watch::Receiver<Arc<AllowList>>,
    /// The declared functions.
    pub declared: watch::Receiver<Declared>,
    /// Notified when a datagram is refused (the resolver may look again).
    pub refused: Arc<Notify>,
    /// Notified when metrics name a function not in the list of declared ones (the
    /// list may be worth reading again at once: a function called right after its
    /// deploy).
    pub unknown: Arc<Notify>,
    /// How often loads are flushed to the sink.
    pub flush_every: Duration,
    /// How long a gauge counts without a fresh reading, in milliseconds.
    pub gauge_ttl_ms: u64,
    /// Envoy's metrics messages (their metric families, by stream) and streams' ends.
    pub envoy: mpsc::Receiver<FromEnvoy>,
}

/// Largest datagram read (the UDP maximum).
pub const MAX_DATAGRAM: usize = 65_536;

/// Asks the kernel for a large receive buffer, so bursts are not dropped while the loop
/// is busy. Best effort: the kernel may cap it.
pub fn grow_receive_buffer(socket: &UdpSocket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let size = bytes as libc::c_int;
    // SAFETY: setsockopt with a valid fd and a pointer to an int of the given length.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Handles one datagram from `source`; adds the functions that have requests queued to
/// `queued`.
pub fn handle_datagram(agg: &mut Aggregator, stats: &Stats, datagram: &[u8], source: Source, now: u64, queued: &mut HashSet<String>) {
    stats.packets.fetch_add(1, Ordering::Relaxed);
    let (mut lines, mut errors) = (0u64, 0u64);
    let unknown_before = agg.unknown;
    let mut series = stats.series.lock().unwrap_or_else(|e| e.into_inner());
    for line in parse_datagram(datagram) {
        lines += 1;
        match line {
            Ok(m) => take(agg, &mut series, &m, source, now, queued),
            Err(_) => errors += 1,
        }
    }
    stats.lines.fetch_add(lines, Ordering::Relaxed);
    stats.parse_errors.fetch_add(errors, Ordering::Relaxed);
    stats.unknown_functions.fetch_add(agg.unknown - unknown_before, Ordering::Relaxed);
}

/// Handles one of Envoy's metrics messages from the stream with peer `source`, as
/// [`handle_datagram`] a datagram (each metric counts as a line).
pub fn handle_envoy(
    agg: &mut Aggregator,
    stats: &Stats,
    families: &[MetricFamily],
    source: Source,
    now: u64,
    queued: &mut HashSet<String>,
) {
    stats.packets.fetch_add(1, Ordering::Relaxed);
    let mut lines = 0u64;
    let unknown_before = agg.unknown;
    let mut series = stats.series.lock().unwrap_or_else(|e| e.into_inner());
    for reading in readings(families) {
        lines += 1;
        match reading {
            Reading::Line(m) => take(agg, &mut series, &m, source, now, queued),
            Reading::Histogram { name, buckets, count, sum } => {
                series.observe_histogram(name, &buckets, count, sum, |f| agg.is_declared(f), now);
            }
        }
    }
    stats.lines.fetch_add(lines, Ordering::Relaxed);
    stats.unknown_functions.fetch_add(agg.unknown - unknown_before, Ordering::Relaxed);
}

/// One metric into the series or the load.
fn take(agg: &mut Aggregator, series: &mut Series, m: &Metric<'_>, source: Source, now: u64, queued: &mut HashSet<String>) {
    if series.observe(m, |f| agg.is_declared(f), now) {
        return;
    }
    if agg.observe(m, source, now) == Observed::Queued {
        if let Some((f, _)) = crate::aggregate::classify(m.name) {
            queued.insert(f.to_string());
        }
    }
}

/// Asks for the declared functions again when the series keep one apart.
fn ask_if_unknown(stats: &Stats, unknown: &Notify) {
    if stats.series.lock().unwrap_or_else(|e| e.into_inner()).unconfirmed() {
        unknown.notify_one();
    }
}

/// Pushes the load of every function that has just queued, at once.
fn push_queued(agg: &Aggregator, sink: &Sink, queued: &mut HashSet<String>) {
    for f in queued.drain() {
        if let Some(load) = agg.load(&f) {
            sink.push(&f, load, true);
        }
    }
}

/// Receives until `shutdown`.
pub async fn run(socket: UdpSocket, sink: Arc<Sink>, stats: Arc<Stats>, inputs: Inputs, shutdown: CancellationToken) {
    let Inputs { mut allow, mut declared, refused, unknown, flush_every, gauge_ttl_ms, mut envoy } = inputs;
    let mut agg = Aggregator::new(gauge_ttl_ms);
    agg.set_declared((**declared.borrow_and_update()).clone());
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut ticker = tokio::time::interval(flush_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_flush = Instant::now();
    let mut last_warned: Option<Instant> = None;
    let mut refused_since_warned = 0u64;
    let mut queued = HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                if !allow.borrow_and_update().allows(from.ip()) {
                    stats.denied_datagrams.fetch_add(1, Ordering::Relaxed);
                    refused.notify_one();
                    refused_since_warned += 1;
                    if last_warned.is_none_or(|t| t.elapsed() >= WARN_REFUSED_EVERY) {
                        warn!(source = %from.ip(), refused = refused_since_warned, "refused statsd datagrams from a source not allowed; add it to ROOST_STATSD_ALLOWED_SOURCES if it is Envoy");
                        last_warned = Some(Instant::now());
                        refused_since_warned = 0;
                    }
                    continue;
                }
                handle_datagram(&mut agg, &stats, &buf[..n], from, now_ms(), &mut queued);
                push_queued(&agg, &sink, &mut queued);
                ask_if_unknown(&stats, &unknown);
            }
            Some(message) = envoy.recv() => match message {
                FromEnvoy::Metrics(peer, families) => {
                    handle_envoy(&mut agg, &stats, &families, peer, now_ms(), &mut queued);
                    push_queued(&agg, &sink, &mut queued);
                    ask_if_unknown(&stats, &unknown);
                }
                // Flushed with the next tick.
                FromEnvoy::Ended(peer) => agg.forget_source(peer),
            },
            Ok(()) = declared.changed() => {
                let gone = agg.set_declared((**declared.borrow_and_update()).clone());
                if !gone.is_empty() {
                    let mut loads = stats.loads.lock().unwrap_or_else(|e| e.into_inner());
                    let mut series = stats.series.lock().unwrap_or_else(|e| e.into_inner());
                    for f in &gone {
                        loads.remove(f);
                        series.forget(f);
                    }
                    tracing::info!(functions = ?gone, "no longer declared: their load and series are dropped");
                }
                stats.series.lock().unwrap_or_else(|e| e.into_inner()).confirm(|f| agg.is_declared(f), now_ms());
            }
            _ = ticker.tick() => {
                let elapsed = last_flush.elapsed().as_millis() as u64;
                last_flush = Instant::now();
                let expired_before = agg.expired;
                let changed = agg.flush(elapsed, now_ms());
                stats.series.lock().unwrap_or_else(|e| e.into_inner()).confirm(|f| agg.is_declared(f), now_ms());
                stats.expired_gauges.fetch_add(agg.expired - expired_before, Ordering::Relaxed);
                if changed.is_empty() {
                    continue;
                }
                {
                    let mut loads = stats.loads.lock().unwrap_or_else(|e| e.into_inner());
                    for (f, l) in &changed {
                        loads.insert(f.clone(), *l);
                    }
                }
                stats.dropped_functions.store(agg.dropped, Ordering::Relaxed);
                for (f, l) in changed {
                    sink.push(&f, l, false);
                }
                sink.kick();
            }
        }
    }
}
