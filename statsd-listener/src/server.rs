//! The UDP loop: receive, parse, aggregate; flush to the sink on a timer and at once
//! when a function queues. A bad line is counted and skipped; nothing stalls the loop.

use crate::aggregate::{Aggregator, Observed};
use crate::metrics::Stats;
use crate::parser::parse_datagram;
use crate::sink::Sink;
use roost_common::clock::now_ms;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

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

/// Handles one datagram; adds the functions that have requests queued to `queued`.
pub fn handle_datagram(agg: &mut Aggregator, stats: &Stats, datagram: &[u8], now: u64, queued: &mut HashSet<String>) {
    stats.packets.fetch_add(1, Ordering::Relaxed);
    let (mut lines, mut errors) = (0u64, 0u64);
    for line in parse_datagram(datagram) {
        lines += 1;
        match line {
            Ok(m) => {
                if agg.observe(&m, now) == Observed::Queued {
                    if let Some((f, _)) = crate::aggregate::classify(m.name) {
                        queued.insert(f.to_string());
                    }
                }
            }
            Err(_) => errors += 1,
        }
    }
    stats.lines.fetch_add(lines, Ordering::Relaxed);
    stats.parse_errors.fetch_add(errors, Ordering::Relaxed);
}

/// Receives until `shutdown`.
pub async fn run(socket: UdpSocket, sink: Arc<Sink>, stats: Arc<Stats>, flush_every: Duration, shutdown: CancellationToken) {
    let mut agg = Aggregator::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut ticker = tokio::time::interval(flush_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_flush = Instant::now();
    let mut queued = HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => {
                let Ok((n, _)) = r else { continue };
                handle_datagram(&mut agg, &stats, &buf[..n], now_ms(), &mut queued);
                for f in queued.drain() {
                    if let Some(load) = agg.load(&f) {
                        sink.push(&f, load, true);
                    }
                }
            }
            _ = ticker.tick() => {
                let elapsed = last_flush.elapsed().as_millis() as u64;
                last_flush = Instant::now();
                let changed = agg.flush(elapsed);
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
