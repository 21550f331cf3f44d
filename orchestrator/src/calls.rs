//! The asynchronous calls the async worker records in Redis, read for the management API's
//! `GET /system/async/calls` (`roost calls`).
//!
//! The worker keeps each call's record ([`keys::async_call`]), the ids of the newest calls
//! by submission time ([`keys::ASYNC_RECENT`]) and, per function, its failed calls
//! ([`keys::async_dead`], newest first; the functions in [`keys::ASYNC_FUNCTIONS`]). The
//! list reads the recent ids a page at a time (ZREVRANGE, then one MGET of their records),
//! or, for `failed=true`, the dead-letter lists and then the records they name. A record
//! whose key is gone (kept only `ROOST_ASYNC_KEEP` after the call ends) is left out.
//!
//! The management API reads Redis over a connection of its own ([`Reader`], from the
//! orchestrator's Redis client, connected at the first list), so a large listing never
//! waits behind (or delays) the function tasks' commands.

use roost_common::keys;
use roost_common::naming::validate_function_name;
use roost_common::wire::calls::{CallList, CallRecord, DeadLetter, RECENT_KEPT};
use std::sync::OnceLock;
use std::time::Duration;

/// Calls listed when the query gives no `limit`.
pub(crate) const DEFAULT_LIMIT: usize = 50;
/// The largest `limit`.
pub(crate) const MAX_LIMIT: usize = 1000;
/// Dead-letter lists read per pipeline (`failed=true` without a function).
const DEAD_LISTS_PER_ROUND: usize = 500;

/// What `GET /system/async/calls` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListQuery {
    /// `function=<name>`: only this function's calls.
    pub(crate) function: Option<String>,
    /// `failed=true`: only failed calls (the dead letters).
    pub(crate) failed: bool,
    /// `limit=<n>`: at most this many calls (1 to [`MAX_LIMIT`]).
    pub(crate) limit: usize,
}

impl Default for ListQuery {
    fn default() -> ListQuery {
        ListQuery { function: None, failed: false, limit: DEFAULT_LIMIT }
    }
}

impl ListQuery {
    /// Reads the query's pairs; the error names the bad parameter and what it takes.
    pub(crate) fn parse(pairs: &[(String, String)]) -> Result<ListQuery, String> {
        let mut q = ListQuery::default();
        let mut seen: Vec<&str> = Vec::new();
        for (name, value) in pairs {
            let name = name.as_str();
            if seen.contains(&name) {
                return Err(format!("the query gives {name} more than once"));
            }
            match name {
                "function" => {
                    validate_function_name(value).map_err(|e| format!("function: {e}"))?;
                    q.function = Some(value.clone());
                }
                "failed" => {
                    q.failed = match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(format!("failed={value:?} is neither true nor false")),
                    }
                }
                "limit" => {
                    q.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| format!("limit={value:?} is not a whole number from 1 to {MAX_LIMIT}"))?;
                }
                other => return Err(format!("unknown query parameter {other:?}; the list takes function=NAME, failed=true and limit=N")),
            }
            seen.push(name);
        }
        Ok(q)
    }

    /// Ids read from [`keys::ASYNC_RECENT`] at a time (and records per MGET): the limit,
    /// or more when a function filters them (most ids may be other functions').
    pub(crate) fn page(&self) -> usize {
        match self.function {
            Some(_) => (self.limit * 4).clamp(100, MAX_LIMIT),
            None => self.limit,
        }
    }
}

/// The ZREVRANGE ranges (start, stop, both inclusive) of `page` ids each, covering at most
/// the newest `kept` ids.
pub(crate) fn ranges(page: usize, kept: usize) -> impl Iterator<Item = (isize, isize)> {
    let page = page.max(1);
    (0..kept).step_by(page).map(move |start| (start as isize, (start + page).min(kept) as isize - 1))
}

/// The records of MGET's `values` (in its order) that are still there, are records, and
/// are `function`'s when one is given.
pub(crate) fn records(values: Vec<Option<String>>, function: Option<&str>) -> Vec<CallRecord> {
    values
        .into_iter()
        .flatten()
        .filter_map(|json| match serde_json::from_str::<CallRecord>(&json) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "an asynchronous call's record is not JSON this orchestrator reads; left out");
                None
            }
        })
        .filter(|r| function.is_none_or(|f| r.function == f))
        .collect()
}

/// The dead-letter lists to read: `function`'s, or those of every function with a queue
/// (`members`, [`keys::ASYNC_FUNCTIONS`]), in name order.
pub(crate) fn dead_keys(function: Option<&str>, members: &[String]) -> Vec<String> {
    match function {
        Some(f) => vec![keys::async_dead(f)],
        None => {
            let mut names: Vec<&String> = members.iter().collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|f| keys::async_dead(f)).collect()
        }
    }
}

/// The newest `limit` of `letters` (the JSON of dead-letter lists), by when they failed,
/// each call once.
pub(crate) fn newest_dead(letters: impl IntoIterator<Item = DeadLetter>, limit: usize) -> Vec<DeadLetter> {
    let mut all: Vec<DeadLetter> = letters.into_iter().collect();
    all.sort_by_key(|l| std::cmp::Reverse(l.failed_ms));
    let mut seen = std::collections::HashSet::new();
    all.retain(|l| seen.insert(l.id.clone()));
    all.truncate(limit);
    all
}

/// Dead letters from their JSON; one that does not read is left out.
fn dead_letters(json: Vec<String>) -> impl Iterator<Item = DeadLetter> {
    json.into_iter().filter_map(|j| serde_json::from_str(&j).ok())
}

/// The call keys of `ids`.
fn call_keys<S: AsRef<str>>(ids: &[S]) -> Vec<String> {
    ids.iter().map(|id| keys::async_call(id.as_ref())).collect()
}

/// MGET of `keys` (always an array, even for one key).
async fn mget<C: redis::aio::ConnectionLike>(conn: &mut C, keys: &[String]) -> redis::RedisResult<Vec<Option<String>>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    redis::cmd("MGET").arg(keys).query_async(conn).await
}

/// The calls `q` asks for, newest first.
pub(crate) async fn list<C: redis::aio::ConnectionLike>(conn: &mut C, q: &ListQuery) -> redis::RedisResult<CallList> {
    let calls = if q.failed { failed(conn, q).await? } else { recent(conn, q).await? };
    Ok(CallList { calls })
}

/// The newest calls (of `q.function`), from [`keys::ASYNC_RECENT`], a page at a time.
async fn recent<C: redis::aio::ConnectionLike>(conn: &mut C, q: &ListQuery) -> redis::RedisResult<Vec<CallRecord>> {
    let page = q.page();
    let mut out = Vec::with_capacity(q.limit);
    for (start, stop) in ranges(page, RECENT_KEPT as usize) {
        let ids: Vec<String> = redis::cmd("ZREVRANGE").arg(keys::ASYNC_RECENT).arg(start).arg(stop).query_async(conn).await?;
        let values = mget(conn, &call_keys(&ids)).await?;
        out.extend(records(values, q.function.as_deref()).into_iter().take(q.limit - out.len()));
        if out.len() >= q.limit || ids.len() < page {
            break;
        }
    }
    Ok(out)
}

/// The newest failed calls (of `q.function`), from the dead-letter lists.
async fn failed<C: redis::aio::ConnectionLike>(conn: &mut C, q: &ListQuery) -> redis::RedisResult<Vec<CallRecord>> {
    let members: Vec<String> = match q.function {
        Some(_) => Vec::new(),
        None => redis::cmd("SMEMBERS").arg(keys::ASYNC_FUNCTIONS).query_async(conn).await?,
    };
    let lists = dead_keys(q.function.as_deref(), &members);
    let mut newest = Vec::new();
    for round in lists.chunks(DEAD_LISTS_PER_ROUND) {
        let mut pipe = redis::pipe();
        for key in round {
            pipe.cmd("LRANGE").arg(key).arg(0).arg(q.limit as isize - 1);
        }
        let read: Vec<Vec<String>> = pipe.query_async(conn).await?;
        newest = newest_dead(newest.into_iter().chain(read.into_iter().flat_map(dead_letters)), q.limit);
    }
    let values = mget(conn, &call_keys(&newest.iter().map(|l| l.id.as_str()).collect::<Vec<_>>())).await?;
    Ok(records(values, None))
}

/// The management API's own Redis connection, made lazily once the orchestrator hands
/// over its Redis client ([`Reader::use_redis`]).
#[derive(Default)]
pub(crate) struct Reader {
    conn: OnceLock<redis::aio::ConnectionManager>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("redis", &self.conn.get().is_some()).finish()
    }
}

impl Reader {
    /// Reads through `client` from now on (it connects at the first list, and again after
    /// Redis comes back). A second call changes nothing.
    pub(crate) fn use_redis(&self, client: &redis::Client) {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(crate::redis_io::RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        match redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), config) {
            Ok(conn) => {
                if self.conn.set(conn).is_err() {
                    tracing::debug!("the management API had its Redis connection already");
                }
            }
            Err(e) => tracing::warn!(error = %e, "the management API cannot read the asynchronous calls from Redis"),
        }
    }

    /// The calls `q` asks for, or why Redis cannot say (for a 503).
    pub(crate) async fn list(&self, q: &ListQuery) -> Result<CallList, String> {
        let mut conn = self.conn.get().cloned().ok_or_else(|| {
            "this orchestrator does not read the asynchronous calls (no Redis connection for the management API); retry once it has started"
                .to_string()
        })?;
        list(&mut conn, q).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot read the asynchronous calls from Redis");
            format!("cannot read the asynchronous calls from Redis: {e}; retry")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::Query;
    use roost_common::wire::calls::CallState;

    fn parse(uri: &str) -> Result<ListQuery, String> {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&uri.parse().unwrap()).unwrap();
        ListQuery::parse(&pairs)
    }

    fn record(id: &str, function: &str) -> CallRecord {
        CallRecord::queued(id, function, 1_700_000_000_000, None)
    }

    fn dead(id: &str, function: &str, failed_ms: u64) -> DeadLetter {
        DeadLetter { id: id.into(), function: function.into(), attempts: 3, error: "500".into(), failed_ms }
    }

    #[test]
    fn a_query_reads_its_function_failed_and_limit() {
        assert_eq!(parse("/system/async/calls"), Ok(ListQuery::default()));
        assert_eq!(ListQuery::default().limit, 50);
        assert_eq!(
            parse("/system/async/calls?function=hello&failed=true&limit=1000"),
            Ok(ListQuery { function: Some("hello".into()), failed: true, limit: 1000 })
        );
        assert_eq!(parse("/x?failed=false&limit=1"), Ok(ListQuery { limit: 1, ..ListQuery::default() }));
    }

    #[test]
    fn a_bad_query_value_is_named() {
        let err = |uri| parse(uri).unwrap_err();
        assert!(err("/x?limit=0").contains("limit=\"0\" is not a whole number from 1 to 1000"), "{}", err("/x?limit=0"));
        assert!(err("/x?limit=1001").contains("limit"));
        assert!(err("/x?limit=ten").contains("limit"));
        assert!(err("/x?limit=-1").contains("limit"));
        assert!(err("/x?failed=yes").contains("failed=\"yes\" is neither true nor false"));
        assert!(err("/x?function=Bad%20Name").contains("function: invalid function name"), "{}", err("/x?function=Bad%20Name"));
        assert!(err("/x?function=").contains("function"));
        assert!(err("/x?fn=hello").contains("unknown query parameter \"fn\""));
        assert!(err("/x?limit=5&limit=6").contains("limit more than once"));
    }

    #[test]
    fn pages_cover_the_kept_ids_and_grow_with_a_filter() {
        assert_eq!(ranges(50, 120).collect::<Vec<_>>(), [(0, 49), (50, 99), (100, 119)]);
        assert_eq!(ranges(1000, 10_000).count(), 10);
        assert_eq!(ranges(1000, 10_000).last(), Some((9000, 9999)));
        assert_eq!(ranges(0, 2).collect::<Vec<_>>(), [(0, 0), (1, 1)], "never a page of nothing");
        let q = |function: Option<&str>, limit| ListQuery { function: function.map(str::to_string), failed: false, limit };
        assert_eq!(q(None, 50).page(), 50);
        assert_eq!(q(Some("f"), 10).page(), 100);
        assert_eq!(q(Some("f"), 50).page(), 200);
        assert_eq!(q(Some("f"), 1000).page(), 1000);
    }

    #[test]
    fn gone_and_unreadable_records_are_left_out_and_a_function_filters() {
        let values = vec![
            Some(record("c3", "a").to_json()),
            None,
            Some("not json".into()),
            Some(record("c1", "b").to_json()),
            Some(record("c0", "a").to_json()),
        ];
        let ids = |rs: Vec<CallRecord>| rs.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(records(values.clone(), None)), ["c3", "c1", "c0"]);
        assert_eq!(ids(records(values, Some("a"))), ["c3", "c0"]);
    }

    #[test]
    fn failed_calls_come_from_the_dead_letter_lists_newest_first() {
        assert_eq!(dead_keys(Some("hello"), &["x".into()]), ["roost:fn:hello:async:dead"]);
        assert_eq!(dead_keys(None, &["b".into(), "a".into(), "b".into()]), ["roost:fn:a:async:dead", "roost:fn:b:async:dead"]);
        assert!(dead_keys(None, &[]).is_empty());
        let letters = vec![dead("a1", "a", 10), dead("a0", "a", 5), dead("b1", "b", 12), dead("b0", "b", 1), dead("a1", "a", 10)];
        let newest: Vec<String> = newest_dead(letters.clone(), 3).into_iter().map(|l| l.id).collect();
        assert_eq!(newest, ["b1", "a1", "a0"]);
        assert_eq!(newest_dead(letters, 10).len(), 4, "each call once");
        let json = vec![serde_json::to_string(&dead("x", "f", 1)).unwrap(), "{".into()];
        assert_eq!(dead_letters(json).count(), 1);
    }

    /// Against a real redis-server: what the worker writes, read back as the API lists it.
    #[tokio::test]
    #[ignore = "needs redis-server: full tier (scripts/test.sh)"]
    async fn lists_read_what_the_worker_writes() {
        let server = roost_testkit::redis::Redis::start().await;
        let reader = Reader::default();
        let q = ListQuery::default();
        assert!(reader.list(&q).await.unwrap_err().contains("no Redis connection"), "no client yet");
        reader.use_redis(&redis::Client::open(server.url()).unwrap());
        let mut c = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        assert_eq!(reader.list(&q).await.unwrap(), CallList { calls: vec![] }, "nothing written yet");
        // 300 calls, alternately of a and b; c7's record has expired.
        let mut pipe = redis::pipe();
        for i in 0..300u64 {
            let id = format!("c{i}");
            let function = if i % 2 == 0 { "a" } else { "b" };
            pipe.zadd(keys::ASYNC_RECENT, &id, 1_000 + i).ignore();
            if i != 7 {
                pipe.set(keys::async_call(&id), record(&id, function).to_json()).ignore();
            }
        }
        let mut failed = record("c5", "b");
        failed.state = CallState::Failed;
        pipe.set(keys::async_call("c5"), failed.to_json()).ignore();
        pipe.sadd(keys::ASYNC_FUNCTIONS, &["a", "b"]).ignore();
        for (key, letter) in [("b", dead("c7", "b", 30)), ("b", dead("c5", "b", 20)), ("a", dead("c4", "a", 25))] {
            pipe.rpush(keys::async_dead(key), serde_json::to_string(&letter).unwrap()).ignore();
        }
        let () = pipe.query_async(&mut c).await.unwrap();
        let ids = |l: CallList| l.calls.into_iter().map(|r| r.id).collect::<Vec<_>>();
        let list = |q: ListQuery| {
            let reader = &reader;
            async move { ids(reader.list(&q).await.unwrap()) }
        };
        assert_eq!(list(ListQuery { limit: 3, ..q.clone() }).await, ["c299", "c298", "c297"]);
        let all = list(ListQuery { limit: 1000, ..q.clone() }).await;
        assert_eq!(all.len(), 299, "c7's record is gone");
        assert_eq!(all.first().map(String::as_str), Some("c299"));
        let a = list(ListQuery { function: Some("a".into()), limit: 200, ..q.clone() }).await;
        assert_eq!(a.len(), 150, "every one of a's");
        assert!(a.iter().all(|id| id[1..].parse::<u64>().unwrap() % 2 == 0));
        let b = list(ListQuery { function: Some("b".into()), limit: 5, ..q.clone() }).await;
        assert_eq!(b, ["c299", "c297", "c295", "c293", "c291"]);
        // Failed: newest first by failure, the gone record left out.
        assert_eq!(list(ListQuery { failed: true, ..q.clone() }).await, ["c4", "c5"]);
        assert_eq!(list(ListQuery { failed: true, function: Some("b".into()), ..q.clone() }).await, ["c5"]);
        // Records expire in the order their calls ended: a newest failure whose record is gone
        // leaves nothing older to show in its place.
        assert_eq!(list(ListQuery { failed: true, limit: 1, ..q.clone() }).await, Vec::<String>::new(), "the newest, c7, is gone");
    }
}
