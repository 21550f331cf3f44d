//! Talking to the test Redis: commands, the Roost keys the orchestrator writes, and how
//! many times a command was called (to prove the gate does not poll).

use redis::aio::MultiplexedConnection;
use roost_common::keys;
use roost_common::wire::redis::{held_total, redis_time_ms, ReadyNotice, Refusal};
use std::collections::HashMap;

/// A connection to the Redis on 127.0.0.1:`port`.
pub async fn connect(port: u16) -> MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("a Redis URL");
    client.get_multiplexed_async_connection().await.unwrap_or_else(|e| panic!("connect to Redis on port {port}: {e}"))
}

/// Runs one command, panicking with it on an error.
pub async fn cmd(c: &mut MultiplexedConnection, args: &[&str]) -> redis::Value {
    let mut command = redis::cmd(args[0]);
    for a in &args[1..] {
        command.arg(*a);
    }
    command.query_async(c).await.unwrap_or_else(|e| panic!("Redis {args:?}: {e}"))
}

/// Lists `function` in `roost:functions`, as the orchestrator does for a declared one.
pub async fn declare(c: &mut MultiplexedConnection, function: &str) {
    cmd(c, &["SADD", "roost:functions", function]).await;
}

/// Marks `function` ready and says so on `roost:ready`, as the orchestrator does.
pub async fn mark_ready(c: &mut MultiplexedConnection, function: &str) {
    cmd(c, &["SET", &keys::ready(function), "1"]).await;
    cmd(c, &["DEL", &keys::wake_lock(function)]).await;
    let msg = ReadyNotice { function: function.into(), ready: true, refusal: None, capacity: None }.to_payload();
    cmd(c, &["PUBLISH", keys::READY_CHANNEL, &msg]).await;
}

/// Marks `function` ready with `capacity` (ready replicas times their concurrency), as the
/// orchestrator does each time a replica becomes ready.
pub async fn mark_ready_with(c: &mut MultiplexedConnection, function: &str, capacity: u32) {
    cmd(c, &["SET", &keys::ready(function), "1"]).await;
    cmd(c, &["DEL", &keys::wake_lock(function)]).await;
    let msg = ReadyNotice { function: function.into(), ready: true, refusal: None, capacity: Some(capacity) }.to_payload();
    cmd(c, &["PUBLISH", keys::READY_CHANNEL, &msg]).await;
}

/// Marks `function` not ready and says so, as the orchestrator does before a drain.
pub async fn mark_asleep(c: &mut MultiplexedConnection, function: &str) {
    cmd(c, &["DEL", &keys::ready(function)]).await;
    let msg = ReadyNotice { function: function.into(), ready: false, refusal: None, capacity: None }.to_payload();
    cmd(c, &["PUBLISH", keys::READY_CHANNEL, &msg]).await;
}

/// Refuses `function`'s callers as the orchestrator does (`RedisIo::refuse`): the key (with
/// its expiry when it backs off) and the notice.
pub async fn refuse(c: &mut MultiplexedConnection, function: &str, refusal: &Refusal) {
    let key = keys::refusal(function);
    match refusal.retry_after_s {
        Some(s) => cmd(c, &["SET", &key, &refusal.to_payload(), "PX", &(s * 1000).to_string()]).await,
        None => cmd(c, &["SET", &key, &refusal.to_payload()]).await,
    };
    cmd(c, &["DEL", &keys::ready(function)]).await;
    let msg = ReadyNotice { function: function.into(), ready: false, refusal: Some(refusal.clone()), capacity: None }.to_payload();
    cmd(c, &["PUBLISH", keys::READY_CHANNEL, &msg]).await;
}

/// Lifts a refusal as the orchestrator does.
pub async fn lift(c: &mut MultiplexedConnection, function: &str) {
    cmd(c, &["DEL", &keys::refusal(function)]).await;
    let msg = ReadyNotice { function: function.into(), ready: false, refusal: None, capacity: None }.to_payload();
    cmd(c, &["PUBLISH", keys::READY_CHANNEL, &msg]).await;
}

/// How many times Redis ran `command` (lowercase) since the start or `CONFIG RESETSTAT`.
pub async fn calls(c: &mut MultiplexedConnection, command: &str) -> u64 {
    let info = match cmd(c, &["INFO", "commandstats"]).await {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("INFO commandstats answered {other:?}"),
    };
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.split(',').next()?.parse().ok()).unwrap_or(0)
}

/// The subscribers of `channel`.
pub async fn subscribers(c: &mut MultiplexedConnection, channel: &str) -> i64 {
    match cmd(c, &["PUBSUB", "NUMSUB", channel]).await {
        redis::Value::Array(v) => match v.get(1) {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("PUBSUB NUMSUB answered {other:?}"),
        },
        other => panic!("PUBSUB NUMSUB answered {other:?}"),
    }
}

/// The gates' shares of `function`'s held count (`roost:fn:<f>:held`): gate id -> value.
pub async fn held_shares(c: &mut MultiplexedConnection, function: &str) -> HashMap<String, String> {
    redis::cmd("HGETALL").arg(keys::held(function)).query_async(c).await.unwrap_or_else(|e| panic!("HGETALL the held count: {e}"))
}

/// The held count of `function` as the orchestrator reads it (the gates' unexpired shares
/// summed, on Redis's clock); `None` when the key is absent.
pub async fn held_in_redis(c: &mut MultiplexedConnection, function: &str) -> Option<u64> {
    let shares = held_shares(c, function).await;
    let time: (u64, u64) = redis::cmd("TIME").query_async(c).await.unwrap_or_else(|e| panic!("TIME: {e}"));
    (!shares.is_empty()).then(|| held_total(&shares, redis_time_ms(time)))
}
