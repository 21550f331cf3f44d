//! The worker's decisions, without sockets: what an attempt's outcome means for its call
//! (done, another try after a back-off, or failed), and which calls may be delivered now
//! (the [`Board`]: per function, its calls in delivery, its retries waiting, and whether
//! its queue may hold new calls).

use roost_common::spec::MAX_ASYNC_BACKOFF;
use roost_common::wire::calls::AsyncSettings;
use std::collections::{BTreeMap, BTreeSet};

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The platform answered with this status (the function's, or the gate's or Envoy's
    /// own: a refusal, the cap, the deadline).
    Answered(u16),
    /// No answer within the call's timeout.
    TimedOut,
    /// The platform's entry could not be reached, or the connection broke.
    Unreachable(String),
}

/// What becomes of the call after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The function answered 2xx or 3xx.
    Done,
    /// Try again at this time (Unix milliseconds); `error` says why.
    Retry {
        /// When.
        at_ms: u64,
        /// Why the attempt failed.
        error: String,
    },
    /// No more tries: a final answer, or retries ran out.
    Fail {
        /// Why.
        error: String,
    },
}

/// Whether an attempt's failure may pass if tried again: a 5xx, 408 (timeout) and 429
/// (too many requests), no answer at all. Other 4xx are the caller's to fix.
fn retryable(attempt: &Attempt) -> bool {
    match attempt {
        Attempt::Answered(status) => *status >= 500 || *status == 408 || *status == 429,
        Attempt::TimedOut | Attempt::Unreachable(_) => true,
    }
}

fn describe(attempt: &Attempt, timeout_ms: u64) -> String {
    match attempt {
        Attempt::Answered(status) => format!("the function answered {status}"),
        Attempt::TimedOut => format!("no answer within {timeout_ms} ms"),
        Attempt::Unreachable(why) => format!("the platform could not be reached: {why}"),
    }
}

/// The wait before retry number `retry` (1 for the first): `backoff_ms` doubled each
/// time, at most [`MAX_ASYNC_BACKOFF`].
pub fn backoff_ms(backoff_ms: u64, retry: u32) -> u64 {
    let max = MAX_ASYNC_BACKOFF.as_millis() as u64;
    let doublings = retry.saturating_sub(1).min(32);
    backoff_ms.saturating_mul(1u64 << doublings).min(max)
}

/// What follows attempt number `attempts` (1 for the first) that ended as `attempt`.
pub fn next(attempt: &Attempt, attempts: u32, settings: &AsyncSettings, now_ms: u64) -> Next {
    if let Attempt::Answered(status) = attempt {
        if (200..400).contains(status) {
            return Next::Done;
        }
    }
    let error = describe(attempt, settings.timeout_ms);
    if !retryable(attempt) {
        return Next::Fail { error: format!("{error}; a 4xx is final, not retried") };
    }
    if attempts > settings.retries {
        return Next::Fail { error: format!("{error}; gave up after {attempts} attempt(s) (async.retries: {})", settings.retries) };
    }
    Next::Retry { at_ms: now_ms.saturating_add(backoff_ms(settings.backoff_ms, attempts)), error }
}

/// A stream entry of a function's queue: its id in the stream and the call's id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    /// The stream entry's id (`<ms>-<seq>`).
    pub entry: String,
    /// The call's id.
    pub call: String,
}

#[derive(Debug, Default)]
struct Lane {
    settings: Option<AsyncSettings>,
    /// Calls being delivered (by stream entry).
    running: BTreeSet<String>,
    /// Calls waiting for a retry, by when, and the same by entry (to skip one found again).
    retries: BTreeSet<(u64, Entry)>,
    waiting: BTreeSet<String>,
    /// The queue may hold entries no one has read yet.
    fresh: bool,
}

impl Lane {
    fn concurrency(&self) -> usize {
        self.settings.unwrap_or_else(AsyncSettings::fallback).concurrency.max(1) as usize
    }

    fn free(&self) -> usize {
        self.concurrency().saturating_sub(self.running.len())
    }

    fn knows(&self, entry: &str) -> bool {
        self.running.contains(entry) || self.waiting.contains(entry)
    }
}

/// Every function's calls in the worker: at most `async.concurrency` of a function's
/// calls are in delivery at once; due retries go first, then new entries.
#[derive(Debug, Default)]
pub struct Board {
    lanes: BTreeMap<String, Lane>,
}

impl Board {
    /// Sets a function's settings (a function not seen before is added).
    pub fn settle(&mut self, function: &str, settings: AsyncSettings) {
        self.lanes.entry(function.to_string()).or_default().settings = Some(settings);
    }

    /// The settings a delivery of the function uses.
    pub fn settings(&self, function: &str) -> AsyncSettings {
        self.lanes.get(function).and_then(|l| l.settings).unwrap_or_else(AsyncSettings::fallback)
    }

    /// The function's queue may have new entries (a submit, a periodic look).
    pub fn poke(&mut self, function: &str) {
        self.lanes.entry(function.to_string()).or_default().fresh = true;
    }

    /// Every function's queue may have new entries.
    pub fn poke_all(&mut self) {
        self.lanes.values_mut().for_each(|l| l.fresh = true);
    }

    /// Functions whose queues to read new entries from now, and how many from each: those
    /// that may have some and a free slot left after their due retries.
    pub fn reads(&self, now_ms: u64) -> Vec<(String, usize)> {
        self.lanes
            .iter()
            .filter(|(_, l)| l.fresh)
            .filter_map(|(name, l)| {
                let due = l.retries.iter().take_while(|(at, _)| *at <= now_ms).count();
                let free = l.free().saturating_sub(due);
                (free > 0).then(|| (name.clone(), free))
            })
            .collect()
    }

    /// A read of the function's queue found `found` entries, asked for `asked`: fewer
    /// means it holds no more for now.
    pub fn read(&mut self, function: &str, asked: usize, found: usize) {
        if let Some(l) = self.lanes.get_mut(function) {
            if found < asked {
                l.fresh = false;
            }
        }
    }

    /// Whether the entry is already the worker's (in delivery or waiting for a retry):
    /// one found again (a claim of pending entries) is left alone.
    pub fn knows(&self, function: &str, entry: &str) -> bool {
        self.lanes.get(function).is_some_and(|l| l.knows(entry))
    }

    /// The entry's delivery starts.
    pub fn start(&mut self, function: &str, entry: &Entry) {
        let l = self.lanes.entry(function.to_string()).or_default();
        l.running.insert(entry.entry.clone());
    }

    /// Retries due by `now_ms` that have a free slot, each started (in delivery from now).
    pub fn due(&mut self, now_ms: u64) -> Vec<(String, Entry)> {
        let mut out = Vec::new();
        for (name, l) in &mut self.lanes {
            while l.free() > 0 {
                let Some(first) = l.retries.first().cloned() else { break };
                if first.0 > now_ms {
                    break;
                }
                l.retries.remove(&first);
                l.waiting.remove(&first.1.entry);
                l.running.insert(first.1.entry.clone());
                out.push((name.clone(), first.1));
            }
        }
        out
    }

    /// Schedules the entry for delivery at `at_ms` (a retry after a back-off, or a
    /// pending entry found at start).
    pub fn later(&mut self, function: &str, entry: Entry, at_ms: u64) {
        let l = self.lanes.entry(function.to_string()).or_default();
        l.running.remove(&entry.entry);
        if l.waiting.insert(entry.entry.clone()) {
            l.retries.insert((at_ms, entry));
        }
    }

    /// The entry's delivery ended and the call is done with (done or failed): its slot is
    /// free, and the queue may hold more.
    pub fn finish(&mut self, function: &str, entry: &str) {
        if let Some(l) = self.lanes.get_mut(function) {
            l.running.remove(entry);
            l.fresh = true;
        }
    }

    /// Calls of the function in delivery.
    pub fn running(&self, function: &str) -> usize {
        self.lanes.get(function).map_or(0, |l| l.running.len())
    }

    /// When the next retry is due, if any waits.
    #[cfg(test)]
    fn next_due(&self) -> Option<u64> {
        self.lanes.values().filter_map(|l| l.retries.first().map(|(at, _)| *at)).min()
    }

    /// Forgets a function that has no queue any more and nothing in the worker.
    pub fn drop_idle(&mut self, function: &str) {
        if self.lanes.get(function).is_some_and(|l| l.running.is_empty() && l.waiting.is_empty()) {
            self.lanes.remove(function);
        }
    }

    /// Functions the worker knows.
    #[cfg(test)]
    fn functions(&self) -> impl Iterator<Item = &String> {
        self.lanes.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(concurrency: u32, retries: u32) -> AsyncSettings {
        AsyncSettings { concurrency, retries, backoff_ms: 1000, queue: 100, timeout_ms: 5000 }
    }

    fn entry(n: u32) -> Entry {
        Entry { entry: format!("{n}-0"), call: format!("c{n}") }
    }

    #[test]
    fn a_success_is_done_and_a_4xx_is_final() {
        let s = settings(1, 3);
        assert_eq!(next(&Attempt::Answered(200), 1, &s, 0), Next::Done);
        assert_eq!(next(&Attempt::Answered(302), 1, &s, 0), Next::Done);
        let Next::Fail { error } = next(&Attempt::Answered(404), 1, &s, 0) else { panic!("a 404 is final") };
        assert!(error.contains("answered 404") && error.contains("final"), "{error}");
    }

    #[test]
    fn failures_worth_another_try_back_off_doubling_until_retries_run_out() {
        let s = settings(1, 3);
        for attempt in [Attempt::Answered(500), Attempt::Answered(503), Attempt::Answered(429), Attempt::Answered(408), Attempt::TimedOut] {
            assert!(matches!(next(&attempt, 1, &s, 0), Next::Retry { at_ms: 1000, .. }), "{attempt:?}");
        }
        let refused = Attempt::Unreachable("connection refused".into());
        assert!(matches!(next(&refused, 2, &s, 10), Next::Retry { at_ms: 2010, .. }));
        assert!(matches!(next(&refused, 3, &s, 10), Next::Retry { at_ms: 4010, .. }));
        let Next::Fail { error } = next(&refused, 4, &s, 10) else { panic!("three retries, then failed") };
        assert!(error.contains("connection refused") && error.contains("after 4 attempt(s)"), "{error}");
        assert!(matches!(next(&Attempt::Answered(500), 1, &settings(1, 0), 0), Next::Fail { .. }), "retries: 0 fails at once");
    }

    #[test]
    fn the_back_off_stops_growing_at_five_minutes() {
        assert_eq!(backoff_ms(1000, 1), 1000);
        assert_eq!(backoff_ms(1000, 4), 8000);
        assert_eq!(backoff_ms(1000, 9), 256_000);
        assert_eq!(backoff_ms(1000, 10), 300_000);
        assert_eq!(backoff_ms(1000, 100), 300_000);
    }

    #[test]
    fn at_most_concurrency_calls_of_a_function_run_and_a_finished_one_frees_a_slot() {
        let mut b = Board::default();
        b.settle("f", settings(2, 3));
        b.poke("f");
        assert_eq!(b.reads(0), [("f".to_string(), 2)]);
        b.start("f", &entry(1));
        b.start("f", &entry(2));
        b.read("f", 2, 2);
        assert_eq!(b.reads(0), [], "both slots taken");
        b.finish("f", "1-0");
        assert_eq!(b.reads(0), [("f".to_string(), 1)], "a finished call frees its slot and the queue is read again");
        b.read("f", 1, 0);
        assert_eq!(b.reads(0), [], "an empty read: nothing more until a poke");
        b.poke("f");
        assert_eq!(b.reads(0), [("f".to_string(), 1)]);
    }

    #[test]
    fn due_retries_go_before_new_calls_and_take_their_slots() {
        let mut b = Board::default();
        b.settle("f", settings(1, 3));
        b.start("f", &entry(1));
        b.later("f", entry(1), 500);
        b.poke("f");
        assert_eq!(b.reads(100), [("f".to_string(), 1)], "the retry is not due yet: its slot is free");
        assert_eq!(b.due(100), []);
        assert_eq!(b.reads(500), [], "due: the one slot is the retry's");
        assert_eq!(b.due(500), [("f".to_string(), entry(1))]);
        assert_eq!(b.running("f"), 1);
        assert_eq!(b.next_due(), None);
    }

    #[test]
    fn an_entry_found_again_is_known_and_scheduled_once() {
        let mut b = Board::default();
        b.later("f", entry(1), 0);
        b.later("f", entry(1), 0);
        assert!(b.knows("f", "1-0"));
        assert_eq!(b.due(0).len(), 1);
        assert!(b.knows("f", "1-0"), "in delivery now");
        b.finish("f", "1-0");
        assert!(!b.knows("f", "1-0"));
        b.drop_idle("f");
        assert_eq!(b.functions().count(), 0);
    }

    #[test]
    fn functions_share_nothing() {
        let mut b = Board::default();
        b.settle("a", settings(1, 0));
        b.settle("b", settings(3, 0));
        b.poke_all();
        b.start("a", &entry(1));
        assert_eq!(b.reads(0), [("b".to_string(), 3)]);
    }
}
