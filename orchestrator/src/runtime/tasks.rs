//! The tasks a runtime starts in the background (exit watchers, log followers, the Docker
//! event stream, spare preparations), owned in one set and ended by the runtime's `close`.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio::task::JoinSet;

/// A runtime's background tasks.
#[derive(Debug, Default)]
pub(crate) struct Tasks {
    set: Mutex<JoinSet<()>>,
}

impl Tasks {
    /// Starts `task` in the set (finished tasks are reaped as new ones start).
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut set = self.set.lock().unwrap();
        while let Some(done) = set.try_join_next() {
            if let Err(e) = done {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
        set.spawn(task);
    }

    /// Waits up to `grace` for the tasks to end by themselves, then cancels the rest. A
    /// panic in one of them panics here.
    pub(crate) async fn close(&self, grace: Duration) {
        let mut set = std::mem::take(&mut *self.set.lock().unwrap());
        let drained = tokio::time::timeout(grace, async {
            while let Some(done) = set.join_next().await {
                if let Err(e) = done {
                    if e.is_panic() {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::debug!(left = set.len(), "runtime tasks still running at close; cancelled");
            set.shutdown().await;
        }
    }
}
