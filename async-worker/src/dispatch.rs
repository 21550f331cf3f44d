//! The delivery loop: reads each function's queue within its `async.concurrency`, delivers
//! every call through the platform, records what became of it (done, a retry after a
//! back-off, failed into the dead letters), takes over the calls an earlier worker left in
//! delivery, and publishes each function's backlog and queue metrics. The decisions are
//! [`crate::plan`]'s; this module only carries them out.

use crate::deliver::deliver;
use crate::metrics::Metrics;
use crate::plan::{self, Board, Entry, Next};
use crate::settings::SettingsCache;
use crate::store::Store;
use roost_common::clock::now_ms;
use roost_common::wire::calls::{CallRecord, CallState, DeadLetter, QueuedCall};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How often the loop looks at due retries when nothing else wakes it.
const TICK: Duration = Duration::from_millis(100);
/// How often the queues are listed, their settings and depths read, the backlog published.
const REFRESH: Duration = Duration::from_secs(1);
/// What a delivery waits beyond the function's own timeout and the gate's hold.
const MARGIN: Duration = Duration::from_secs(5);
/// How long deliveries under way may finish after a shutdown begins; the rest stay in
/// their queues, unacknowledged, and are delivered again by the next worker.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Wait before trying again when Redis did not answer around a delivery.
const REDIS_RETRY_MS: u64 = 1_000;

/// The delivery loop's parts.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    /// Redis.
    pub store: Store,
    /// The HTTP client deliveries use.
    pub http: reqwest::Client,
    /// The platform's public entry.
    pub public: reqwest::Url,
    /// This worker's name in the consumer group.
    pub consumer: String,
    /// How long finished records are kept, in seconds.
    pub keep_s: u64,
    /// Largest answer body kept.
    pub max_body: u64,
    /// Settings, shared with the intake.
    pub settings: Arc<SettingsCache>,
    /// Metrics.
    pub metrics: Metrics,
    /// Woken when a finished call has a callback.
    pub callbacks: Arc<Notify>,
}

/// Where a delivery's request comes from.
#[derive(Debug)]
enum Source {
    /// Just read from the queue (`None`: the entry is malformed).
    Read(Option<QueuedCall>),
    /// A retry or a call taken over: read again from the queue.
    Fetch,
}

/// What a delivery task reports to the loop.
#[derive(Debug)]
struct Finished {
    function: String,
    entry: Entry,
    /// When to try again; `None`: the call is done with.
    retry_at: Option<u64>,
}

impl Dispatcher {
    /// Delivers until `shutdown`; `submitted` names functions whose queue just got a call.
    pub async fn run(self, mut submitted: mpsc::Receiver<String>, shutdown: CancellationToken) {
        let mut board = Board::default();
        let mut deliveries: JoinSet<Finished> = JoinSet::new();
        let mut recovered: HashSet<String> = HashSet::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_refresh: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(function) = submitted.recv() => {
                    // The intake read the function's settings for the submit: its lane
                    // keeps to them from its first call.
                    if let Some(s) = self.settings.peek(&function) {
                        board.settle(&function, s);
                    }
                    board.poke(&function);
                }
                Some(done) = deliveries.join_next(), if !deliveries.is_empty() => match done {
                    Ok(f) => match f.retry_at {
                        Some(at) => board.later(&f.function, f.entry, at),
                        None => board.finish(&f.function, &f.entry.entry),
                    },
                    Err(e) => warn!(error = %e, "a delivery task failed; its call stays in its queue and is delivered again after a restart"),
                },
                _ = tick.tick() => {}
            }
            if last_refresh.is_none_or(|t| t.elapsed() >= REFRESH) {
                last_refresh = Some(tokio::time::Instant::now());
                self.refresh(&mut board, &mut recovered).await;
            }
            let now = now_ms();
            for (function, entry) in board.due(now) {
                self.spawn(&mut deliveries, &board, function, entry, Source::Fetch, &shutdown);
            }
            self.read_new(&mut board, &mut deliveries, &shutdown).await;
        }
        info!(under_way = deliveries.len(), "stopping: deliveries under way get {SHUTDOWN_GRACE:?} to finish");
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async { while deliveries.join_next().await.is_some() {} }).await;
        deliveries.shutdown().await;
    }

    /// Reads new entries from every queue that may have some and has free slots.
    async fn read_new(&self, board: &mut Board, deliveries: &mut JoinSet<Finished>, shutdown: &CancellationToken) {
        let reads = board.reads(now_ms());
        if reads.is_empty() {
            return;
        }
        let found = futures::future::join_all(reads.iter().map(|(f, n)| self.store.read_new(f, &self.consumer, *n))).await;
        for ((function, asked), found) in reads.into_iter().zip(found) {
            let entries = match found {
                Ok(entries) => entries,
                Err(e) => {
                    warn!(function, error = %e, "cannot read the function's queue from Redis; trying again");
                    continue;
                }
            };
            board.read(&function, asked, entries.len());
            for (entry_id, call) in entries {
                let call_id = call.as_ref().map(|c| c.id.clone()).unwrap_or_default();
                let entry = Entry { entry: entry_id, call: call_id };
                board.start(&function, &entry);
                self.spawn(deliveries, board, function.clone(), entry, Source::Read(call), shutdown);
            }
        }
    }

    fn spawn(
        &self,
        deliveries: &mut JoinSet<Finished>,
        board: &Board,
        function: String,
        entry: Entry,
        source: Source,
        shutdown: &CancellationToken,
    ) {
        let settings = board.settings(&function);
        let (this, shutdown) = (self.clone(), shutdown.clone());
        deliveries.spawn(async move {
            let retry_at = this.attempt(&function, &entry, source, settings, &shutdown).await;
            Finished { function, entry, retry_at }
        });
    }

    /// Lists the queues, reads their settings and depths, takes over what an earlier
    /// worker left in delivery, publishes the backlog, and forgets empty queues of
    /// removed functions.
    async fn refresh(&self, board: &mut Board, recovered: &mut HashSet<String>) {
        let queues = match self.store.queues().await {
            Ok(queues) => queues,
            Err(e) => {
                warn!(error = %e, "cannot list the queues in Redis; trying again");
                return;
            }
        };
        if let Ok(settings) = self.store.settings(&queues).await {
            for (function, s) in queues.iter().zip(settings) {
                let s = s.unwrap_or_else(roost_common::wire::calls::AsyncSettings::fallback);
                board.settle(function, s);
                self.settings.put(function, s);
            }
        }
        let unrecovered: Vec<&String> = queues.iter().filter(|f| !recovered.contains(*f)).collect();
        for function in unrecovered {
            match self.store.claim_pending(function, &self.consumer).await {
                Ok(pending) => {
                    recovered.insert(function.clone());
                    self.take_over(board, function, pending).await;
                }
                Err(e) => warn!(function, error = %e, "cannot take over the queue's calls in delivery; trying again"),
            }
        }
        let now = now_ms();
        let depths = match self.store.queue_depths(&queues, now).await {
            Ok(depths) => depths,
            Err(e) => {
                warn!(error = %e, "cannot read the queues' depths; trying again");
                return;
            }
        };
        let mut backlog = Vec::new();
        for (function, (len, oldest_ms)) in queues.iter().zip(depths) {
            self.metrics.queue(function, len, oldest_ms);
            backlog.push((function.clone(), len.saturating_sub(board.running(function) as u64)));
            if len == 0 && board.running(function) == 0 && matches!(self.store.forget_queue(function).await, Ok(true)) {
                debug!(function, "forgot the empty queue of a removed function");
                board.drop_idle(function);
                recovered.remove(function);
            }
        }
        if let Err(e) = self.store.publish_backlog(&backlog).await {
            debug!(error = %e, "cannot publish the backlog");
        }
        board.poke_all();
    }

    /// Schedules calls taken over from an earlier worker: a call waiting for a retry at
    /// its time, any other at once.
    async fn take_over(&self, board: &mut Board, function: &str, pending: Vec<(String, Option<QueuedCall>)>) {
        if !pending.is_empty() {
            info!(function, calls = pending.len(), "taking over calls left in delivery");
        }
        let now = now_ms();
        for (entry_id, call) in pending {
            if board.knows(function, &entry_id) {
                continue;
            }
            let Some(call) = call else {
                let _ = self.store.drop_entry(function, &entry_id).await;
                continue;
            };
            let at = match self.store.record(&call.id).await {
                Ok(Some(record)) => record.next_attempt_ms.unwrap_or(now),
                _ => now,
            };
            board.later(function, Entry { entry: entry_id, call: call.id }, at);
        }
    }

    /// One attempt of one call: its record marked running, the request delivered, the
    /// outcome recorded. Returns when to try again, if the call is not done with.
    async fn attempt(
        &self,
        function: &str,
        entry: &Entry,
        source: Source,
        settings: roost_common::wire::calls::AsyncSettings,
        shutdown: &CancellationToken,
    ) -> Option<u64> {
        let soon = || Some(now_ms() + REDIS_RETRY_MS);
        let call = match source {
            Source::Read(call) => call,
            Source::Fetch => match self.store.entry(function, &entry.entry).await {
                Ok(call) => call,
                Err(e) => {
                    debug!(function, error = %e, "cannot read a call's entry; trying again");
                    return soon();
                }
            },
        };
        let Some(call) = call else {
            warn!(function, entry = %entry.entry, "a queue entry is gone or malformed; dropped");
            let _ = self.store.drop_entry(function, &entry.entry).await;
            return None;
        };
        let mut record = match self.store.record(&call.id).await {
            Ok(Some(record)) => record,
            Ok(None) => CallRecord::queued(&call.id, function, now_ms(), None),
            Err(e) => {
                debug!(function, error = %e, "cannot read a call's record; trying again");
                return soon();
            }
        };
        if record.state.finished() {
            // Finished, yet its entry is still queued: only a hand-made state gets here.
            let _ = self.store.drop_entry(function, &entry.entry).await;
            return None;
        }
        record.attempts += 1;
        record.state = CallState::Running;
        record.next_attempt_ms = None;
        record.updated_ms = now_ms();
        if let Err(e) = self.store.put(&record).await {
            debug!(function, error = %e, "cannot mark a call running; trying again");
            record.attempts -= 1;
            return soon();
        }
        let timeout = Duration::from_millis(settings.timeout_ms) + MARGIN;
        let delivered = deliver(&self.http, &self.public, function, &call, timeout, self.max_body).await;
        let now = now_ms();
        let next = plan::next(&delivered.attempt, record.attempts, &settings, now);
        record.updated_ms = now;
        record.result = delivered.result;
        let (retry_at, dead) = match next {
            Next::Done => {
                record.state = CallState::Done;
                record.last_error = delivered.note;
                (None, None)
            }
            Next::Fail { error } => {
                record.state = CallState::Failed;
                record.last_error = Some(error.clone());
                let dead =
                    DeadLetter { id: record.id.clone(), function: function.to_string(), attempts: record.attempts, error, failed_ms: now };
                (None, Some(dead))
            }
            Next::Retry { at_ms, error } => {
                record.state = CallState::Queued;
                record.next_attempt_ms = Some(at_ms);
                record.last_error = Some(error);
                (Some(at_ms), None)
            }
        };
        self.record_outcome(function, entry, &record, dead.as_ref(), retry_at.is_some(), shutdown).await;
        retry_at
    }

    /// Writes the outcome, trying again while Redis does not answer (until shutdown: the
    /// entry then stays in the queue and the call is delivered again).
    async fn record_outcome(
        &self,
        function: &str,
        entry: &Entry,
        record: &CallRecord,
        dead: Option<&DeadLetter>,
        retry: bool,
        shutdown: &CancellationToken,
    ) {
        let mut backoff = roost_common::backoff::Backoff::default();
        loop {
            let written =
                if retry { self.store.put(record).await } else { self.store.finish(function, entry, record, self.keep_s, dead).await };
            match written {
                Ok(()) => break,
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(function, call = %record.id, error = %e, retry_in = ?delay, "cannot record a call's outcome in Redis");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        match record.state {
            CallState::Done | CallState::Failed => {
                let state = if record.state == CallState::Done { "done" } else { "failed" };
                self.metrics.finished(function, state);
                if record.callback.is_some() {
                    self.callbacks.notify_one();
                }
                if let Some(dead) = dead {
                    info!(function, call = %record.id, attempts = record.attempts, error = %dead.error, "call failed; kept in the dead letters");
                }
            }
            _ => self.metrics.retry(function),
        }
    }
}
