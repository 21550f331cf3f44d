//! The output of every function's replicas and builds, kept in memory: the last lines per
//! function (a bounded ring), the last lines of one replica (the reason a failed start
//! gives its callers), and a broadcast of new lines for `roost logs --follow`. The runtimes
//! write into it ([`Logs::push`]); the API and the executor read it.

use roost_common::clock::now_ms;
use roost_common::wire::logs::LogLine;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Lines kept per function unless told otherwise.
pub const DEFAULT_CAPACITY: usize = 2000;

/// Longest line kept, in bytes; the rest is cut (a replica printing a megabyte on one
/// line must not fill the orchestrator's memory).
pub const MAX_LINE: usize = 4096;

/// The shared log store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Logs {
    inner: Arc<Mutex<HashMap<String, VecDeque<LogLine>>>>,
    capacity: usize,
    tx: broadcast::Sender<(String, LogLine)>,
}

impl Default for Logs {
    fn default() -> Self {
        Logs::new(DEFAULT_CAPACITY)
    }
}

impl Logs {
    /// A store keeping the last `capacity` lines of each function.
    pub fn new(capacity: usize) -> Logs {
        let (tx, _) = broadcast::channel(1024);
        Logs { inner: Arc::default(), capacity: capacity.max(1), tx }
    }

    /// Adds one line of `function`'s output from `source` (a replica id or
    /// [`roost_common::wire::logs::BUILD_SOURCE`]), stamped now.
    pub fn push(&self, function: &str, source: &str, text: &str) {
        let mut line = text.trim_end_matches(['\n', '\r']).to_string();
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(" [cut]");
        }
        let line = LogLine { time_ms: now_ms(), replica: source.to_string(), line };
        {
            let mut map = self.inner.lock().expect("the log store's lock is never poisoned");
            let ring = map.entry(function.to_string()).or_default();
            if ring.len() == self.capacity {
                ring.pop_front();
            }
            ring.push_back(line.clone());
        }
        // Nobody following is fine.
        let _ = self.tx.send((function.to_string(), line));
    }

    /// The kept lines of `function` read at or after `since_ms`, oldest first, at most the
    /// newest `tail` of them.
    pub fn lines(&self, function: &str, since_ms: Option<u64>, tail: Option<usize>) -> Vec<LogLine> {
        let map = self.inner.lock().expect("the log store's lock is never poisoned");
        let Some(ring) = map.get(function) else { return Vec::new() };
        let since = since_ms.unwrap_or(0);
        let lines: Vec<LogLine> = ring.iter().filter(|l| l.time_ms >= since).cloned().collect();
        let skip = tail.map_or(0, |t| lines.len().saturating_sub(t));
        lines.into_iter().skip(skip).collect()
    }

    /// The last `n` lines `source` wrote for `function`, oldest first, joined by
    /// newlines: what a failed start tells its callers. `None` when it wrote nothing.
    pub fn tail_of(&self, function: &str, source: &str, n: usize) -> Option<String> {
        let map = self.inner.lock().expect("the log store's lock is never poisoned");
        let ring = map.get(function)?;
        let mut last: Vec<&str> = ring.iter().rev().filter(|l| l.replica == source).take(n).map(|l| l.line.as_str()).collect();
        if last.is_empty() {
            return None;
        }
        last.reverse();
        Some(last.join("\n"))
    }

    /// New lines of every function from now on (a follower that lags more than the
    /// channel holds loses the oldest and is told so by `RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<(String, LogLine)> {
        self.tx.subscribe()
    }

    /// How many followers are subscribed (tests: a follower that went away is gone).
    #[cfg(test)]
    pub(crate) fn followers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Forgets a function's lines (it left the definitions).
    pub fn forget(&self, function: &str) {
        self.inner.lock().expect("the log store's lock is never poisoned").remove(function);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_lines_per_function() {
        let logs = Logs::new(3);
        for i in 0..5 {
            logs.push("f", "f-1", &format!("line {i}\n"));
        }
        logs.push("g", "g-1", "other");
        let lines: Vec<String> = logs.lines("f", None, None).into_iter().map(|l| l.line).collect();
        assert_eq!(lines, ["line 2", "line 3", "line 4"]);
        assert_eq!(logs.lines("f", None, Some(1))[0].line, "line 4");
        assert!(logs.lines("f", Some(u64::MAX), None).is_empty());
        assert_eq!(logs.lines("g", None, None).len(), 1);
        logs.forget("f");
        assert!(logs.lines("f", None, None).is_empty());
    }

    #[test]
    fn the_tail_of_one_replica() {
        let logs = Logs::default();
        logs.push("f", "f-1", "Traceback (most recent call last):");
        logs.push("f", "f-2", "another replica");
        logs.push("f", "f-1", "ModuleNotFoundError: No module named 'nope'");
        assert_eq!(logs.tail_of("f", "f-1", 5).unwrap(), "Traceback (most recent call last):\nModuleNotFoundError: No module named 'nope'");
        assert_eq!(logs.tail_of("f", "f-1", 1).unwrap(), "ModuleNotFoundError: No module named 'nope'");
        assert_eq!(logs.tail_of("f", "f-3", 5), None);
    }

    #[test]
    fn long_lines_are_cut_and_followers_see_new_lines() {
        let logs = Logs::default();
        let mut rx = logs.subscribe();
        logs.push("f", "f-1", &"é".repeat(MAX_LINE));
        let (function, line) = rx.try_recv().unwrap();
        assert_eq!(function, "f");
        assert!(line.line.len() <= MAX_LINE + 6 && line.line.ends_with(" [cut]"));
    }
}
