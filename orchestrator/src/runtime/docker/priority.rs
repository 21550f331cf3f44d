//! Cold starts come first: spare containers are prepared one at a time, and only while no
//! replica is starting (or after [`MAX_DEFER`] of waiting): one that finds nothing under
//! way begins at once (and a start that follows takes its spare); the others wait their
//! turn. So a spare's create, start, probe and pause never queue in the engine in front of
//! a caller's cold start. Measured with 1,000 functions: spare preparations running beside
//! cold starts made the engine queue and cold starts took up to 10 s where they take 0.5 s
//! alone (`docs/benchmarks.md`, issue 14).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// The longest a spare preparation waits for the starts in flight to end (under steady
/// cold starts spares must still come, later).
pub const MAX_DEFER: Duration = Duration::from_secs(2);

/// Starts in flight and spare preparations waiting for their turn.
#[derive(Debug)]
pub(super) struct Priority {
    starting: Mutex<usize>,
    quiet: tokio::sync::Notify,
    turn: std::sync::Arc<tokio::sync::Semaphore>,
    /// Definition hashes with a preparation waiting for its turn (one each).
    queued: Mutex<HashSet<String>>,
}

impl Default for Priority {
    fn default() -> Self {
        Priority {
            starting: Mutex::new(0),
            quiet: tokio::sync::Notify::new(),
            turn: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
            queued: Mutex::default(),
        }
    }
}

/// A start in flight, until dropped.
pub(super) struct Starting<'a>(&'a Priority);

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        let mut n = self.0.starting.lock().unwrap();
        *n -= 1;
        if *n == 0 {
            self.0.quiet.notify_waiters();
        }
    }
}

impl Priority {
    /// Counts a start as in flight until the guard is dropped.
    pub(super) fn start(&self) -> Starting<'_> {
        *self.starting.lock().unwrap() += 1;
        Starting(self)
    }

    /// Whether a preparation for `key` may be queued (false: one is queued already).
    pub(super) fn enqueue(&self, key: &str) -> bool {
        self.queued.lock().unwrap().insert(key.to_string())
    }

    /// The turn at once, if no preparation runs and no start is in flight (then a start
    /// that comes next finds the preparation under way and takes its spare).
    pub(super) fn turn_now(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = self.turn.clone().try_acquire_owned().ok()?;
        (*self.starting.lock().unwrap() == 0).then_some(permit)
    }

    /// Waits for the turn of `key`'s queued preparation: the only one running, with no
    /// start in flight (or [`MAX_DEFER`] after it began to wait for that). Holds the turn
    /// until the permit is dropped.
    pub(super) async fn turn(&self, key: &str) -> tokio::sync::OwnedSemaphorePermit {
        let permit = self.turn.clone().acquire_owned().await.expect("the turn semaphore is never closed");
        self.queued.lock().unwrap().remove(key);
        let deadline = tokio::time::Instant::now() + MAX_DEFER;
        loop {
            // Made before the check, so a notify between the two is not missed.
            let quiet = self.quiet.notified();
            if *self.starting.lock().unwrap() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, quiet).await.is_err() {
                break;
            }
        }
        permit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_preparation_waits_for_the_starts_in_flight_and_runs_alone() {
        let p = Arc::new(Priority::default());
        assert!(p.enqueue("a") && !p.enqueue("a"), "one queued preparation per hash");
        let start = p.start();
        let waiting = tokio::spawn({
            let p = p.clone();
            async move {
                let t = tokio::time::Instant::now();
                let _turn = p.turn("a").await;
                t.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "not while a start is in flight");
        drop(start);
        let waited = waiting.await.unwrap();
        assert!(waited >= Duration::from_millis(300) && waited < MAX_DEFER, "{waited:?}");
        assert!(p.enqueue("a"), "its turn came: it may be queued again");

        // At once when nothing runs and nothing starts; not while a start is in flight.
        let now = p.turn_now().expect("free");
        assert!(p.turn_now().is_none(), "one at a time");
        drop(now);
        let start = p.start();
        assert!(p.turn_now().is_none(), "not beside a start");
        drop(start);

        // One at a time.
        let first = p.turn("b").await;
        let second = tokio::spawn({
            let p = p.clone();
            async move {
                let _t = p.turn("c").await;
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!second.is_finished());
        drop(first);
        second.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn steady_starts_defer_a_preparation_by_at_most_max_defer() {
        let p = Priority::default();
        let _start = p.start();
        let t = tokio::time::Instant::now();
        let _turn = p.turn("a").await;
        assert_eq!(t.elapsed(), MAX_DEFER);
    }
}
