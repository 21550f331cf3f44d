//! What the worker keeps in Redis (keys in [`roost_common::keys`], values in
//! [`roost_common::wire::calls`]): a submit stored in one atomic script, each function's
//! queue read and claimed through the consumer group, a finished call's record written
//! and its entry acknowledged in one transaction, callbacks due, the backlog.

use redis::streams::{StreamAutoClaimOptions, StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use roost_common::keys;
use roost_common::wire::calls::{
    AsyncSettings, CallRecord, DeadLetter, QueuedCall, BACKLOG_TTL_MS, DEAD_LETTERS_KEPT, GROUP, IDEMPOTENCY_TTL_S, RECENT_KEPT,
};
use roost_common::wire::redis::Refusal;
use std::collections::HashMap;

use crate::plan::Entry;

/// A submit, stored atomically: refused when the function is not declared, refused for
/// good (invalid, its build failed: a refusal without expiry) or its queue is full; the
/// first call's id for an idempotency key seen before; else the entry added (the group
/// made with the stream), the record written, the key remembered, the call listed.
const SUBMIT: &str = r#"
-- KEYS: declared set, refusal, queue, idempotency key or '', record, queues set, recent
-- ARGV: function, cap, id, record JSON, idempotency TTL, now ms, recent kept, group, then the entry's fields
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return {'undeclared', ''} end
if redis.call('PTTL', KEYS[2]) == -1 then return {'refused', redis.call('GET', KEYS[2])} end
if KEYS[4] ~= '' then
  local first = redis.call('GET', KEYS[4])
  if first then return {'duplicate', first} end
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[3], ARGV[8], '0', 'MKSTREAM')
end
if redis.call('XLEN', KEYS[3]) >= tonumber(ARGV[2]) then return {'full', ''} end
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 9))
redis.call('SET', KEYS[5], ARGV[4])
if KEYS[4] ~= '' then redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[5]) end
redis.call('SADD', KEYS[6], ARGV[1])
redis.call('ZADD', KEYS[7], ARGV[6], ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[7], 0, -1 - tonumber(ARGV[7]))
return {'accepted', ARGV[3]}
"#;

/// Forgets a queue that is empty and whose function is no longer declared.
const FORGET_QUEUE: &str = r#"
-- KEYS: declared set, queues set, queue; ARGV: function
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 and redis.call('XLEN', KEYS[3]) > 0 then return 0 end
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"#;

/// What became of a submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Stored under this id.
    Accepted(String),
    /// An earlier submit with the same idempotency key made this call.
    Duplicate(String),
    /// No such function is declared.
    Undeclared,
    /// The function's queue holds `async.queue` calls.
    Full,
    /// The function is refused for good (invalid, its build failed).
    Refused(Refusal),
}

/// The worker's Redis.
#[derive(Clone)]
pub struct Store {
    conn: redis::aio::ConnectionManager,
    submit: std::sync::Arc<redis::Script>,
    forget_queue: std::sync::Arc<redis::Script>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// A stream entry's fields as bytes.
fn fields(id: StreamId) -> HashMap<String, Vec<u8>> {
    id.map.into_iter().filter_map(|(k, v)| redis::from_redis_value::<Vec<u8>>(v).ok().map(|v| (k, v))).collect()
}

/// A stream entry as a queued call; a malformed one (written by hand) is `None`.
fn queued(id: StreamId) -> (String, Option<QueuedCall>) {
    let entry = id.id.clone();
    (entry, QueuedCall::from_fields(fields(id)))
}

/// Whether an error is Redis's "no such key or group" (a queue read before it exists).
fn no_group(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

impl Store {
    /// Over `conn`.
    pub fn new(conn: redis::aio::ConnectionManager) -> Store {
        Store {
            conn,
            submit: std::sync::Arc::new(redis::Script::new(SUBMIT)),
            forget_queue: std::sync::Arc::new(redis::Script::new(FORGET_QUEUE)),
        }
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        redis::cmd("PING").query_async(&mut self.conn.clone()).await
    }

    /// Stores a submit (see [`SUBMIT`]).
    pub async fn submit(
        &self,
        function: &str,
        call: &QueuedCall,
        record: &CallRecord,
        idempotency_key: Option<&str>,
        cap: u32,
    ) -> redis::RedisResult<Submitted> {
        let idempotency = idempotency_key.map(|k| keys::async_idempotency(function, k)).unwrap_or_default();
        let mut invocation = self.submit.prepare_invoke();
        invocation
            .key(keys::FUNCTIONS)
            .key(keys::refusal(function))
            .key(keys::async_queue(function))
            .key(idempotency)
            .key(keys::async_call(&call.id))
            .key(keys::ASYNC_FUNCTIONS)
            .key(keys::ASYNC_RECENT)
            .arg(function)
            .arg(cap)
            .arg(&call.id)
            .arg(record.to_json())
            .arg(IDEMPOTENCY_TTL_S)
            .arg(record.created_ms)
            .arg(RECENT_KEPT)
            .arg(GROUP);
        for (name, value) in call.to_fields() {
            invocation.arg(name).arg(value);
        }
        let (outcome, value): (String, Option<String>) = invocation.invoke_async(&mut self.conn.clone()).await?;
        let value = value.unwrap_or_default();
        Ok(match outcome.as_str() {
            "accepted" => Submitted::Accepted(value),
            "duplicate" => Submitted::Duplicate(value),
            "full" => Submitted::Full,
            "refused" => match serde_json::from_str(&value) {
                Ok(refusal) => Submitted::Refused(refusal),
                // An unreadable refusal (written by hand) refuses nothing.
                Err(_) => Submitted::Undeclared,
            },
            _ => Submitted::Undeclared,
        })
    }

    /// The settings of `functions` the orchestrator published (`None`: none published).
    pub async fn settings(&self, functions: &[String]) -> redis::RedisResult<Vec<Option<AsyncSettings>>> {
        if functions.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = functions.iter().map(|f| keys::async_settings(f)).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut self.conn.clone()).await?;
        Ok(values.into_iter().map(|v| v.and_then(|v| serde_json::from_str(&v).ok())).collect())
    }

    /// Every function with a queue.
    pub async fn queues(&self) -> redis::RedisResult<Vec<String>> {
        self.conn.clone().smembers(keys::ASYNC_FUNCTIONS).await
    }

    /// Up to `count` entries of the function's queue no one has read yet, now the
    /// consumer's (pending until acknowledged).
    pub async fn read_new(&self, function: &str, consumer: &str, count: usize) -> redis::RedisResult<Vec<(String, Option<QueuedCall>)>> {
        let options = StreamReadOptions::default().group(GROUP, consumer).count(count);
        let read: redis::RedisResult<Option<StreamReadReply>> =
            self.conn.clone().xread_options(&[keys::async_queue(function)], &[">"], &options).await;
        match read {
            Ok(reply) => Ok(reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).map(queued).collect()),
            Err(e) if no_group(&e) => {
                // A queue whose group is gone (deleted by hand): made again, from its start.
                let made: redis::RedisResult<()> = self.conn.clone().xgroup_create(keys::async_queue(function), GROUP, "0").await;
                if let Err(e) = made {
                    tracing::debug!(function, error = %e, "cannot make the queue's consumer group");
                }
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Takes over every entry of the function's queue that was read but not acknowledged
    /// (by this consumer before a restart, or by another), as the consumer's own.
    pub async fn claim_pending(&self, function: &str, consumer: &str) -> redis::RedisResult<Vec<(String, Option<QueuedCall>)>> {
        let mut out = Vec::new();
        let mut start = "0-0".to_string();
        loop {
            let reply: redis::RedisResult<redis::streams::StreamAutoClaimReply> = self
                .conn
                .clone()
                .xautoclaim_options(keys::async_queue(function), GROUP, consumer, 0, &start, StreamAutoClaimOptions::default().count(500))
                .await;
            let reply = match reply {
                Ok(reply) => reply,
                Err(e) if no_group(&e) => return Ok(out),
                Err(e) => return Err(e),
            };
            out.extend(reply.claimed.into_iter().map(queued));
            if reply.next_stream_id == "0-0" {
                return Ok(out);
            }
            start = reply.next_stream_id;
        }
    }

    /// One entry of the function's queue (a retry due), if it is still there.
    pub async fn entry(&self, function: &str, entry: &str) -> redis::RedisResult<Option<QueuedCall>> {
        let reply: StreamRangeReply = self.conn.clone().xrange(keys::async_queue(function), entry, entry).await?;
        Ok(reply.ids.into_iter().next().and_then(|id| queued(id).1))
    }

    /// A call's record.
    pub async fn record(&self, id: &str) -> redis::RedisResult<Option<CallRecord>> {
        let value: Option<String> = self.conn.clone().get(keys::async_call(id)).await?;
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Writes a record of a call still under way (kept until it finishes).
    pub async fn put(&self, record: &CallRecord) -> redis::RedisResult<()> {
        self.conn.clone().set(keys::async_call(&record.id), record.to_json()).await
    }

    /// A call is done or failed: its record kept for `keep_s`, its entry acknowledged and
    /// deleted, a failure added to the dead letters, a callback scheduled: all at once.
    pub async fn finish(
        &self,
        function: &str,
        entry: &Entry,
        record: &CallRecord,
        keep_s: u64,
        dead: Option<&DeadLetter>,
    ) -> redis::RedisResult<()> {
        let queue = keys::async_queue(function);
        let mut p = redis::pipe();
        p.atomic();
        p.set_ex(keys::async_call(&record.id), record.to_json(), keep_s).ignore();
        p.xack(&queue, GROUP, &[&entry.entry]).ignore();
        p.xdel(&queue, &[&entry.entry]).ignore();
        if let Some(dead) = dead {
            let letter = serde_json::to_string(dead).expect("a dead letter always serializes");
            p.lpush(keys::async_dead(function), letter).ignore();
            p.ltrim(keys::async_dead(function), 0, DEAD_LETTERS_KEPT - 1).ignore();
        }
        if record.callback.is_some() {
            p.zadd(keys::ASYNC_CALLBACKS, &record.id, record.updated_ms).ignore();
        }
        p.query_async(&mut self.conn.clone()).await
    }

    /// An entry whose call record is gone (or the entry is malformed): acknowledged and
    /// deleted, so it is not read again.
    pub async fn drop_entry(&self, function: &str, entry: &str) -> redis::RedisResult<()> {
        let queue = keys::async_queue(function);
        redis::pipe()
            .atomic()
            .xack(&queue, GROUP, &[entry])
            .ignore()
            .xdel(&queue, &[entry])
            .ignore()
            .query_async(&mut self.conn.clone())
            .await
    }

    /// Each function's queue: its length and the age of its oldest entry in milliseconds.
    pub async fn queue_depths(&self, functions: &[String], now_ms: u64) -> redis::RedisResult<Vec<(u64, u64)>> {
        let mut p = redis::pipe();
        for f in functions {
            p.xlen(keys::async_queue(f));
            p.xrange_count(keys::async_queue(f), "-", "+", 1);
        }
        let values: Vec<redis::Value> = p.query_async(&mut self.conn.clone()).await?;
        let mut out = Vec::new();
        for pair in values.chunks(2) {
            let len: u64 = redis::from_redis_value_ref(&pair[0]).unwrap_or(0);
            let oldest: Option<StreamRangeReply> = pair.get(1).and_then(|v| redis::from_redis_value_ref(v).ok());
            let first_ms = oldest.and_then(|r| r.ids.into_iter().next()).and_then(|id| id.id.split('-').next()?.parse::<u64>().ok());
            out.push((len, first_ms.map_or(0, |ms| now_ms.saturating_sub(ms))));
        }
        Ok(out)
    }

    /// Writes each function's backlog (calls waiting for delivery) for the orchestrator:
    /// with an expiry it renews, deleted at zero.
    pub async fn publish_backlog(&self, backlog: &[(String, u64)]) -> redis::RedisResult<()> {
        let mut p = redis::pipe();
        for (f, n) in backlog {
            if *n > 0 {
                p.pset_ex(keys::backlog(f), n, BACKLOG_TTL_MS).ignore();
            } else {
                p.del(keys::backlog(f)).ignore();
            }
        }
        p.query_async(&mut self.conn.clone()).await
    }

    /// Forgets the function's queue if it is empty and the function is gone.
    pub async fn forget_queue(&self, function: &str) -> redis::RedisResult<bool> {
        let mut invocation = self.forget_queue.prepare_invoke();
        invocation.key(keys::FUNCTIONS).key(keys::ASYNC_FUNCTIONS).key(keys::async_queue(function)).arg(function);
        let forgot: u32 = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(forgot == 1)
    }

    /// Ids of calls whose callback is due by `now_ms`, at most `count`.
    pub async fn callbacks_due(&self, now_ms: u64, count: isize) -> redis::RedisResult<Vec<String>> {
        self.conn.clone().zrangebyscore_limit(keys::ASYNC_CALLBACKS, "-inf", now_ms, 0, count).await
    }

    /// A callback's attempt recorded: the call's record written, and the callback
    /// scheduled again at `again_ms`, or off the schedule (it went, or never will).
    pub async fn callback_tried(&self, record: &CallRecord, keep_s: u64, again_ms: Option<u64>) -> redis::RedisResult<()> {
        let mut p = redis::pipe();
        p.atomic().set_ex(keys::async_call(&record.id), record.to_json(), keep_s).ignore();
        match again_ms {
            Some(at) => p.zadd(keys::ASYNC_CALLBACKS, &record.id, at).ignore(),
            None => p.zrem(keys::ASYNC_CALLBACKS, &record.id).ignore(),
        };
        p.query_async(&mut self.conn.clone()).await
    }

    /// Takes a callback off the schedule (its record is gone).
    pub async fn callback_gone(&self, id: &str) -> redis::RedisResult<()> {
        self.conn.clone().zrem(keys::ASYNC_CALLBACKS, id).await
    }
}
