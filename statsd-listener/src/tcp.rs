//! statsd over TCP: accepts stream connections from allowed sources (Envoy's statsd sink
//! sends over TCP, one connection per worker thread) and hands the receive loop whole
//! lines, in chunks, as if each were a datagram.
//!
//! Why TCP for Envoy: its UDP sink sends every histogram sample as its own datagram, a
//! system call on the request's path; its TCP sink writes them into the connection's
//! buffer, which the event loop sends in batches. That is what makes the call-duration
//! histogram affordable (docs/benchmarks.md, "Issue 15").
//!
//! Bounded: a line longer than [`MAX_LINE`] closes its connection (nothing Envoy sends
//! comes near it); the chunks go through a bounded channel, so a receive loop that falls
//! behind slows the senders (TCP's flow control) instead of growing memory.

use crate::allow::AllowList;
use crate::metrics::Stats;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Longest line kept waiting for its newline.
pub const MAX_LINE: usize = 64 * 1024;

/// Chunks of whole lines waiting for the receive loop.
pub const CHANNEL_CHUNKS: usize = 256;

/// Accepts until `shutdown`; every connection's task is owned here and ends with it.
pub async fn serve(
    listener: TcpListener,
    allow: watch::Receiver<Arc<AllowList>>,
    stats: Arc<Stats>,
    chunks: mpsc::Sender<Vec<u8>>,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, from) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, most likely: pause instead of spinning.
                        warn!(error = %e, "cannot accept a statsd TCP connection");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if !allow.borrow().allows(from.ip()) {
                    stats.denied_datagrams.fetch_add(1, Ordering::Relaxed);
                    warn!(source = %from.ip(), "refused a statsd TCP connection from a source not allowed; add it to ROOST_STATSD_ALLOWED_SOURCES if it is Envoy");
                    continue;
                }
                connections.spawn(read_lines(stream, chunks.clone()));
            }
        }
    }
    connections.shutdown().await;
}

/// Reads one connection, sending every run of whole lines as one chunk.
async fn read_lines(mut stream: TcpStream, chunks: mpsc::Sender<Vec<u8>>) {
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        if buf.len() >= MAX_LINE {
            warn!(bytes = buf.len(), "a statsd TCP line longer than the limit: closing its connection");
            return;
        }
        buf.reserve(16 * 1024);
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else { continue };
        let rest = buf.split_off(end + 1);
        let lines = std::mem::replace(&mut buf, rest);
        if chunks.send(lines).await.is_err() {
            debug!("the receive loop has stopped: closing a statsd TCP connection");
            return;
        }
    }
}
