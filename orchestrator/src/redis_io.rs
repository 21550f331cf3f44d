//! The orchestrator's side of Redis: marks functions ready or not, reads the load the
//! statsd-listener writes, publishes replica counts, and listens for wake and scale
//! signals (reconnecting with backoff when Redis goes away). What it writes and reads
//! is typed in [`roost_common::wire::redis`].

use futures::StreamExt;
use redis::AsyncCommands;
use roost_common::backoff::Backoff;
use roost_common::keys;
use roost_common::wire::calls::AsyncSettings;
use roost_common::wire::redis::{function_of_signal, held_total, redis_time_ms, LoadHash, ReadyNotice, Refusal, ReplicasHash};
use std::collections::HashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// A signal from Redis for one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The gate found the function asleep.
    Wake(String),
    /// The statsd-listener saw queueing or saturation, or a gate holds more requests (a
    /// `HeldSignal`): the function's task reads its load again, whose held count is the
    /// sum of every gate's share ([`RedisIo::load`]), not the one gate's that signalled.
    Scale(String),
}

/// The load of one function, as the statsd-listener last wrote it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Requests in flight.
    pub in_flight: u64,
    /// Requests queued in Envoy.
    pub pending: u64,
    /// Unix milliseconds of the last request start, if any was seen.
    pub last_request_ms: Option<u64>,
    /// Requests the gates hold (`roost:fn:<f>:held`, summed over the gates' unexpired
    /// shares): not in Envoy yet.
    pub held: u64,
    /// Asynchronous calls waiting at the async worker (`roost:fn:<f>:backlog`).
    pub backlog: u64,
}

/// How old a load hash may be (its `updated_ms`) before its in-flight and pending counts
/// are taken as zero. A live statsd-listener rewrites the hash every flush while Envoy
/// reports the function (Envoy repeats its gauges every 250 ms-1 s) and zeroes a gauge
/// itself after its gauge TTL (3 s by default); a hash older than this bound was left by
/// a listener that stopped, and must not hold replicas up.
pub const LOAD_STALE_AFTER_MS: u64 = 10_000;

impl Load {
    /// Reads the fields of the load hash at `now_ms`; absent or unreadable fields count
    /// as zero, and so do the in-flight and pending counts of a hash not updated within
    /// [`LOAD_STALE_AFTER_MS`] (or never stamped). The last request start is kept
    /// whatever the age: idleness is measured from it.
    pub fn from_hash(h: &HashMap<String, String>, now_ms: u64) -> Load {
        let l = LoadHash::from_fields(h);
        let last_request_ms = Some(l.last_request_ms).filter(|v| *v > 0);
        let fresh = l.updated_ms > 0 && now_ms.saturating_sub(l.updated_ms) <= LOAD_STALE_AFTER_MS;
        if !fresh {
            return Load { in_flight: 0, pending: 0, last_request_ms, ..Load::default() };
        }
        Load { in_flight: l.in_flight as u64, pending: l.pending as u64, last_request_ms, ..Load::default() }
    }
}

/// A count stored as a whole number (the async worker's backlog); absent or unreadable
/// counts as none.
pub fn stored_count(value: Option<&str>) -> u64 {
    value.and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// How long one command may wait for Redis's answer. The client's default (500 ms) is
/// too short for the burst of a start with thousands of functions, each of which checks
/// in with Redis at once over the one connection.
pub const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How many functions one pipeline of [`RedisIo::quiet_readings`] reads: Redis serves
/// nobody else while it answers a pipeline, so one is kept to a few milliseconds.
pub const QUIET_BATCH: usize = 500;

/// What Redis holds of a quiet function (no replica, none starting) that its own task
/// must see: requests waiting for it, or a ready flag to take away. Envoy's gauges are
/// not read: with no replica nothing is in flight or queued in Envoy, and a last gauge
/// from before the function went to sleep must not wake it again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuietReading {
    /// Requests the gates hold (their unexpired shares summed).
    pub held: u64,
    /// Asynchronous calls waiting at the async worker.
    pub backlog: u64,
    /// Redis marks it ready (a Redis restored from an older snapshot may).
    pub ready_flag: bool,
}

impl QuietReading {
    /// Requests wait for it, or Redis marks it ready: its own task must read and decide.
    pub fn needs_attention(&self) -> bool {
        self.held > 0 || self.backlog > 0 || self.ready_flag
    }
}

/// Commands to Redis.
#[derive(Clone)]
pub struct RedisIo {
    conn: redis::aio::ConnectionManager,
}

impl std::fmt::Debug for RedisIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisIo")
    }
}

impl RedisIo {
    /// Connects, retrying with backoff until `shutdown`.
    pub async fn connect(client: &redis::Client, shutdown: &CancellationToken) -> Option<RedisIo> {
        roost_common::reconnect::connect(client, RESPONSE_TIMEOUT, shutdown).await.map(|conn| RedisIo { conn })
    }

    /// Marks the function ready and tells the gate, with the requests its ready replicas
    /// serve at once (the gate releases at most that many held requests at a time).
    pub async fn set_ready(&self, function: &str, capacity: u32) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let msg = ReadyNotice { function: function.to_string(), ready: true, refusal: None, capacity: Some(capacity) }.to_payload();
        redis::pipe()
            .set(keys::ready(function), 1)
            .ignore()
            .del(keys::wake_lock(function))
            .ignore()
            .publish(keys::READY_CHANNEL, msg)
            .ignore()
            .query_async(&mut c)
            .await
    }

    /// Marks the function not ready (the gate holds new requests and wakes it again).
    pub async fn clear_ready(&self, function: &str) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let msg = ReadyNotice { function: function.to_string(), ready: false, refusal: None, capacity: None }.to_payload();
        redis::pipe().del(keys::ready(function)).ignore().publish(keys::READY_CHANNEL, msg).ignore().query_async(&mut c).await
    }

    /// Refuses the function's callers: the gate answers them at once with `refusal`
    /// (for `retry_after_s`, when set; until [`RedisIo::lift_refusal`] otherwise) and
    /// releases the requests it holds with it.
    pub async fn refuse(&self, function: &str, refusal: &Refusal) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let key = keys::refusal(function);
        let msg = ReadyNotice { function: function.to_string(), ready: false, refusal: Some(refusal.clone()), capacity: None }.to_payload();
        let mut p = redis::pipe();
        match refusal.retry_after_s {
            Some(s) => p.pset_ex(&key, refusal.to_payload(), s.max(1) * 1000),
            None => p.set(&key, refusal.to_payload()),
        };
        p.ignore().del(keys::ready(function)).ignore().del(keys::wake_lock(function)).ignore();
        p.publish(keys::READY_CHANNEL, msg).ignore().query_async(&mut c).await
    }

    /// Ends a refusal: the function is woken by its next request again. The gates are
    /// told only when there was one (every function lifts at the orchestrator's start:
    /// ten thousand notices for nothing would flood every gate).
    pub async fn lift_refusal(&self, function: &str) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let removed: u64 = c.del(keys::refusal(function)).await?;
        if removed == 0 {
            return Ok(());
        }
        let msg = ReadyNotice { function: function.to_string(), ready: false, refusal: None, capacity: None }.to_payload();
        c.publish(keys::READY_CHANNEL, msg).await
    }

    /// How long the gate holds a request for the function while it wakes.
    pub async fn set_hold(&self, function: &str, hold: std::time::Duration) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        c.set(keys::hold_ms(function), hold.as_millis() as u64).await
    }

    /// The function's load: what the statsd-listener wrote (zero when it wrote none),
    /// the requests the gates hold (their unexpired shares summed, judged by Redis's own
    /// clock, which stamped them) and the asynchronous calls waiting (zero when none).
    pub async fn load(&self, function: &str) -> redis::RedisResult<Load> {
        let mut c = self.conn.clone();
        // The load hash, the gates' shares of the held count, the backlog, Redis's clock.
        type Reply = (HashMap<String, String>, HashMap<String, String>, Option<String>, (u64, u64));
        let (h, shares, backlog, time): Reply = redis::pipe()
            .hgetall(keys::load(function))
            .hgetall(keys::held(function))
            .get(keys::backlog(function))
            .cmd("TIME")
            .query_async(&mut c)
            .await?;
        let load = Load::from_hash(&h, roost_common::clock::now_ms());
        Ok(Load { held: held_total(&shares, redis_time_ms(time)), backlog: stored_count(backlog.as_deref()), ..load })
    }

    /// What Redis holds of each of these quiet functions, in their order: one pipeline
    /// per [`QUIET_BATCH`] functions instead of a round trip each.
    pub async fn quiet_readings(&self, functions: &[String]) -> redis::RedisResult<Vec<QuietReading>> {
        let mut c = self.conn.clone();
        let mut readings = Vec::with_capacity(functions.len());
        for batch in functions.chunks(QUIET_BATCH) {
            let mut p = redis::pipe();
            p.cmd("TIME");
            for f in batch {
                p.hgetall(keys::held(f)).get(keys::backlog(f)).exists(keys::ready(f));
            }
            let mut replies = p.query_async::<Vec<redis::Value>>(&mut c).await?.into_iter();
            let mut next = || replies.next().ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Parse, "a pipeline answered short")));
            let redis_ms = redis_time_ms(redis::from_redis_value(next()?)?);
            for _ in batch {
                let shares: HashMap<String, String> = redis::from_redis_value(next()?)?;
                let backlog: Option<String> = redis::from_redis_value(next()?)?;
                readings.push(QuietReading {
                    held: held_total(&shares, redis_ms),
                    backlog: stored_count(backlog.as_deref()),
                    ready_flag: redis::from_redis_value(next()?)?,
                });
            }
        }
        Ok(readings)
    }

    /// Publishes how the async worker delivers the function's asynchronous calls.
    pub async fn set_async(&self, function: &str, settings: &AsyncSettings) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        c.set(keys::async_settings(function), serde_json::to_string(settings).expect("numbers always serialize")).await
    }

    /// Publishes the replica count and target concurrency (read by the statsd-listener).
    pub async fn set_replicas(&self, function: &str, ready: u32, target: u32) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let items = ReplicasHash { ready, target_concurrency: target }.to_fields();
        c.hset_multiple(keys::replicas(function), &items).await
    }

    /// Re-asserts what Redis must hold of a function (declared; ready or not), without
    /// publishing: after a Redis restart everything is back within one tick, and a ready
    /// flag a Redis that kept its data holds for replicas that are gone is taken away.
    pub async fn refresh(&self, function: &str, ready: bool) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let mut p = redis::pipe();
        p.sadd(keys::FUNCTIONS, function).ignore();
        if ready {
            p.set(keys::ready(function), 1).ignore();
        } else {
            p.del(keys::ready(function)).ignore();
        }
        p.query_async(&mut c).await
    }

    /// Lists every function in `functions` among the declared ones at once (one SADD per
    /// thousand names), and takes `gone` off the list: what Redis lost comes back within a
    /// tick, however many sleep.
    pub async fn declare_all(&self, functions: &[String], gone: &[String]) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let mut p = redis::pipe();
        for chunk in functions.chunks(1000) {
            p.sadd(keys::FUNCTIONS, chunk).ignore();
        }
        if !gone.is_empty() {
            p.srem(keys::FUNCTIONS, gone).ignore();
        }
        p.query_async(&mut c).await
    }

    /// How many functions Redis lists.
    pub async fn count_functions(&self) -> redis::RedisResult<usize> {
        let mut c = self.conn.clone();
        c.scard(keys::FUNCTIONS).await
    }

    /// Lists the function among the declared ones (the gate answers 404 for others).
    pub async fn declare(&self, function: &str) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        c.sadd(keys::FUNCTIONS, function).await
    }

    /// Checks that Redis answers (for `/healthz`).
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("PING").query_async(&mut c).await
    }

    /// Removes what Redis holds of a function that no longer exists.
    pub async fn forget(&self, function: &str) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        redis::pipe()
            .srem(keys::FUNCTIONS, function)
            .ignore()
            .del(&[
                keys::ready(function),
                keys::replicas(function),
                keys::wake_lock(function),
                keys::refusal(function),
                keys::hold_ms(function),
                keys::held(function),
                keys::async_settings(function),
                keys::backlog(function),
            ])
            .ignore()
            .query_async(&mut c)
            .await
    }
}

/// Forwards wake and scale signals until `shutdown`, resubscribing after Redis restarts.
pub async fn listen(client: redis::Client, tx: mpsc::Sender<Signal>, shutdown: CancellationToken) {
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        let result = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&[keys::WAKE_CHANNEL, keys::SCALE_CHANNEL]).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        match result {
            Ok(mut pubsub) => {
                info!("listening for wake and scale signals");
                backoff.reset();
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        m = messages.next() => {
                            let Some(m) = m else { break };
                            let payload: String = match m.get_payload() {
                                Ok(p) => p,
                                Err(e) => {
                                    debug!(error = %e, "ignoring a signal whose payload is not text");
                                    continue;
                                }
                            };
                            let Some(function) = function_of_signal(&payload) else {
                                debug!(payload, "ignoring a signal without a valid function name");
                                continue;
                            };
                            let signal = if m.get_channel_name() == keys::WAKE_CHANNEL {
                                Signal::Wake(function)
                            } else {
                                Signal::Scale(function)
                            };
                            if tx.send(signal).await.is_err() { return }
                        }
                    }
                }
                warn!("Redis subscription lost; resubscribing");
            }
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in = ?delay, "cannot subscribe to Redis");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        }
        // The subscription was lost: wait the first delay before subscribing again.
        let delay = backoff.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_a_function() {
        assert_eq!(function_of_signal("hello"), Some("hello".into()));
        assert_eq!(function_of_signal(r#"{"function":"add","pending":3}"#), Some("add".into()));
        assert_eq!(function_of_signal("../etc"), None);
        assert_eq!(function_of_signal(r#"{"nope":1}"#), None);
    }

    #[test]
    fn load_reads_numbers_and_defaults_missing_fields() {
        let now = 1_700_000_005_000;
        let mut h = HashMap::new();
        h.insert("in_flight".to_string(), "3".to_string());
        h.insert("pending".to_string(), "2.0".to_string());
        h.insert("last_request_ms".to_string(), "1700000000000".to_string());
        h.insert("updated_ms".to_string(), "1700000004750".to_string());
        assert_eq!(
            Load::from_hash(&h, now),
            Load { in_flight: 3, pending: 2, last_request_ms: Some(1_700_000_000_000), held: 0, backlog: 0 }
        );
        assert_eq!(Load::from_hash(&HashMap::new(), now), Load::default());
    }

    #[test]
    fn a_stored_count_reads_whole_numbers_and_defaults_to_none() {
        assert_eq!(stored_count(Some("200")), 200);
        assert_eq!(stored_count(Some(" 3\n")), 3);
        assert_eq!(stored_count(None), 0);
        assert_eq!(stored_count(Some("-1")), 0);
        assert_eq!(stored_count(Some("lots")), 0);
    }

    #[test]
    fn a_stale_load_counts_no_requests_but_keeps_the_last_request_time() {
        let updated = 1_700_000_000_000u64;
        let mut h = HashMap::new();
        h.insert("in_flight".to_string(), "10".to_string());
        h.insert("pending".to_string(), "1000000000000000".to_string());
        h.insert("last_request_ms".to_string(), "1699999990000".to_string());
        h.insert("updated_ms".to_string(), updated.to_string());
        let busy = Load { in_flight: 10, pending: 1_000_000_000_000_000, last_request_ms: Some(1_699_999_990_000), held: 0, backlog: 0 };
        let idle = Load { in_flight: 0, pending: 0, last_request_ms: Some(1_699_999_990_000), held: 0, backlog: 0 };
        assert_eq!(Load::from_hash(&h, updated), busy);
        assert_eq!(Load::from_hash(&h, updated + LOAD_STALE_AFTER_MS), busy, "at the bound: still fresh");
        assert_eq!(Load::from_hash(&h, updated + LOAD_STALE_AFTER_MS + 1), idle, "a listener that stopped holds nothing up");
        assert_eq!(Load::from_hash(&h, updated - 500), busy, "a clock a little behind the writer's is no reason to drop it");
        h.remove("updated_ms");
        assert_eq!(Load::from_hash(&h, updated), idle, "a hash never stamped counts as stale");
    }

    /// Against a real redis-server: the gates' shares are summed on Redis's clock, an
    /// expired one (a gate that died) left out.
    #[tokio::test]
    #[ignore = "needs redis-server: full tier (scripts/test.sh)"]
    async fn the_load_sums_the_gates_unexpired_shares() {
        use roost_common::wire::redis::HeldShare;
        let server = roost_testkit::redis::Redis::start().await;
        let client = redis::Client::open(server.url()).unwrap();
        let io = RedisIo::connect(&client, &CancellationToken::new()).await.unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        assert_eq!(io.load("f").await.unwrap().held, 0, "no gate holds any");
        let time: (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
        let now = redis_time_ms(time);
        let share = |count, expires_ms| HeldShare { count, expires_ms }.to_value();
        let _: () = c
            .hset_multiple(
                keys::held("f"),
                &[("gate-a", share(3, now + 5_000)), ("gate-b", share(5, now + 5_000)), ("dead", share(100, now - 1))],
            )
            .await
            .unwrap();
        let _: () = c.set(keys::backlog("f"), 2).await.unwrap();
        let load = io.load("f").await.unwrap();
        assert_eq!((load.held, load.backlog), (8, 2));
    }

    /// Against a real redis-server: the batched read answers every function in order,
    /// across pipelines, with what `load` reads one at a time.
    #[tokio::test]
    #[ignore = "needs redis-server: full tier (scripts/test.sh)"]
    async fn the_batched_read_answers_every_function_in_order() {
        use roost_common::wire::redis::HeldShare;
        let server = roost_testkit::redis::Redis::start().await;
        let client = redis::Client::open(server.url()).unwrap();
        let io = RedisIo::connect(&client, &CancellationToken::new()).await.unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let names: Vec<String> = (0..QUIET_BATCH * 2 + 3).map(|i| format!("f{i}")).collect();
        let (held, ready, backlog) = (&names[QUIET_BATCH + 1], &names[7], names.last().unwrap());
        let time: (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
        let share = HeldShare { count: 4, expires_ms: redis_time_ms(time) + 5_000 }.to_value();
        let _: () = c.hset(keys::held(held), "gate-a", share).await.unwrap();
        let _: () = c.set(keys::ready(ready), 1).await.unwrap();
        let _: () = c.set(keys::backlog(backlog), 3).await.unwrap();
        let readings = io.quiet_readings(&names).await.unwrap();
        assert_eq!(readings.len(), names.len());
        for (name, r) in names.iter().zip(&readings) {
            let load = io.load(name).await.unwrap();
            assert_eq!((r.held, r.backlog), (load.held, load.backlog), "{name}");
            assert_eq!(r.ready_flag, name == ready, "{name}");
            assert_eq!(r.needs_attention(), [held, ready, backlog].contains(&name), "{name}");
        }
        assert_eq!(readings[QUIET_BATCH + 1].held, 4);
        assert_eq!(readings.last().unwrap().backlog, 3);
    }
}
