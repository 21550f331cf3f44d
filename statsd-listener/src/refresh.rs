//! The two lists the listener keeps fresh in the background, each published on a `watch`
//! channel the UDP loop reads: the declared functions (the Redis set `roost:functions`,
//! read at start and every [`FUNCTIONS_EVERY`]) and the allow-list (host names resolved
//! at start and again every [`RESOLVE_EVERY`]; sooner, at most every [`RESOLVE_AT_MOST`],
//! while a name has no address or when a datagram was refused, since compose's `envoy`
//! may start after the listener and come back on another address).

use crate::allow::{host_names, AllowList, Source};
use crate::metrics::Stats;
use redis::aio::MultiplexedConnection;
use roost_common::keys;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the declared functions are read.
pub const FUNCTIONS_EVERY: Duration = Duration::from_secs(1);
/// How often host names are resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(10);
/// The shortest time between two resolutions (an unresolved name, a refused datagram).
pub const RESOLVE_AT_MOST: Duration = Duration::from_secs(1);
/// Longest wait for Redis when reading the declared functions.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// The declared functions, as last read.
pub type Declared = Arc<HashSet<String>>;

/// Reads `roost:functions` once.
pub async fn read_declared(client: &redis::Client, conn: &mut Option<MultiplexedConnection>) -> redis::RedisResult<HashSet<String>> {
    let read = async {
        if conn.is_none() {
            *conn = Some(client.get_multiplexed_async_connection().await?);
        }
        let c = conn.as_mut().expect("connected above");
        redis::cmd("SMEMBERS").arg(keys::FUNCTIONS).query_async::<HashSet<String>>(c).await
    };
    let r = match tokio::time::timeout(REDIS_TIMEOUT, read).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out reading roost:functions"))),
    };
    if r.is_err() {
        *conn = None;
    }
    r
}

/// The shortest time between two reads of the declared functions asked for by the
/// receive loop.
pub const ASKED_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Reads the declared functions every [`FUNCTIONS_EVERY`], and when `asked` (at most
/// every [`ASKED_EVERY`]), until `shutdown`, publishing each change. While Redis is away
/// the last list read stays in force. `failing`: the read before it failed (and was
/// warned about).
pub async fn declared(
    client: redis::Client,
    mut conn: Option<MultiplexedConnection>,
    mut failing: bool,
    tx: watch::Sender<Declared>,
    stats: Arc<Stats>,
    asked: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(FUNCTIONS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
            _ = asked.notified() => tokio::time::sleep(ASKED_EVERY).await,
        }
        match read_declared(&client, &mut conn).await {
            Ok(set) => {
                if failing {
                    info!(functions = set.len(), "reading the declared functions again");
                    failing = false;
                }
                tx.send_if_modified(|cur| {
                    if **cur == set {
                        return false;
                    }
                    *cur = Arc::new(set);
                    true
                });
            }
            Err(e) => {
                stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    warn!(error = %e, "cannot read the declared functions (roost:functions); keeping the last list");
                    failing = true;
                }
            }
        }
    }
}

/// Resolves every host name; a name that does not resolve maps to no address (and is
/// warned about by the caller).
pub async fn resolve_all(names: &[String]) -> (HashMap<String, Vec<IpAddr>>, Vec<(String, std::io::Error)>) {
    let mut resolved = HashMap::new();
    let mut failed = Vec::new();
    for name in names {
        match tokio::net::lookup_host((name.as_str(), 0)).await {
            Ok(addrs) => {
                let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                ips.sort();
                ips.dedup();
                resolved.insert(name.clone(), ips);
            }
            Err(e) => failed.push((name.clone(), e)),
        }
    }
    (resolved, failed)
}

/// Keeps the allow-list's host names resolved until `shutdown`: every
/// [`RESOLVE_EVERY`], or after [`RESOLVE_AT_MOST`] when `refused` is notified or a name
/// did not resolve. Does nothing when the list names no host.
pub async fn resolver(sources: Vec<Source>, tx: watch::Sender<Arc<AllowList>>, refused: Arc<Notify>, shutdown: CancellationToken) {
    let names = host_names(&sources);
    if names.is_empty() {
        return;
    }
    let mut warned: HashSet<String> = HashSet::new();
    let mut last: HashMap<String, Vec<IpAddr>> = HashMap::new();
    loop {
        let (resolved, failed) = resolve_all(&names).await;
        for (name, e) in &failed {
            if warned.insert(name.clone()) {
                warn!(host = %name, error = %e, "an allowed statsd source does not resolve (yet); its datagrams are refused until it does");
            }
        }
        for (name, ips) in &resolved {
            warned.remove(name);
            if last.get(name) != Some(ips) {
                info!(host = %name, addresses = ?ips, "allowed statsd source resolved");
            }
        }
        // A name that fails now keeps its last addresses: a DNS hiccup must not cut Envoy off.
        for (name, ips) in resolved {
            last.insert(name, ips);
        }
        tx.send_replace(Arc::new(AllowList::build(&sources, &last)));
        let wait = if failed.is_empty() { RESOLVE_EVERY } else { RESOLVE_AT_MOST };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = refused.notified() => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RESOLVE_AT_MOST) => {}
                }
            }
        }
    }
}
