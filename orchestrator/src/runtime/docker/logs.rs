//! A container's output split into lines ([`LineSplitter`], also for image builds); a
//! replica container's output followed into the log store from the moment the
//! container is handed out, and its last lines for the reason of its exit.
//!
//! The follower reads the container's whole output, not only what follows the hand-out:
//! a container belongs to one function from its creation, so what a warm spare printed
//! while it imported the function (before it was paused and handed out) is that
//! function's output too. A function whose import fails never becomes a warm spare (its
//! warm-up is not ready and a created spare replaces it), so its traceback is written
//! after the hand-out and is followed either way.

use super::DockerRuntime;
use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

/// Splits a stream's bytes into lines; the end of a line the container is still writing
/// waits for the next chunk.
#[derive(Debug, Default)]
pub(super) struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// The lines `chunk` completes, without their ends of line (invalid UTF-8 replaced).
    pub(super) fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(chunk);
        let Some(last) = self.pending.iter().rposition(|&b| b == b'\n') else { return Vec::new() };
        let rest = self.pending.split_off(last + 1);
        let whole = std::mem::replace(&mut self.pending, rest);
        whole[..last].split(|&b| b == b'\n').map(text).collect()
    }

    /// A last line without its end of line, once the stream has ended.
    pub(super) fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.pending);
        (!rest.is_empty()).then(|| text(&rest))
    }
}

fn text(line: &[u8]) -> String {
    String::from_utf8_lossy(line).trim_end_matches('\r').to_string()
}

/// The stdout and stderr lines of a container, each split on its own (Docker sends
/// them as separate frames, which may cut a line anywhere).
#[derive(Debug, Default)]
pub(crate) struct Streams {
    out: LineSplitter,
    err: LineSplitter,
}

impl Streams {
    /// The whole lines a frame completes.
    pub(crate) fn feed(&mut self, frame: &LogOutput) -> Vec<String> {
        match frame {
            LogOutput::StdErr { message } => self.err.feed(message),
            LogOutput::StdOut { message } | LogOutput::Console { message } => self.out.feed(message),
            LogOutput::StdIn { .. } => Vec::new(),
        }
    }

    /// The unended last lines, once the stream has ended.
    pub(crate) fn finish(&mut self) -> Vec<String> {
        self.out.finish().into_iter().chain(self.err.finish()).collect()
    }
}

/// How long an exit's report waits for the container's last lines.
pub(crate) const TAIL_WAIT: Duration = Duration::from_secs(2);

/// The containers whose output is being followed (one follower each), with the replica
/// each one's lines go to; and the end of a follower, for whoever removes a container
/// once its whole output is in the log store.
#[derive(Debug, Clone, Default)]
pub(super) struct Followers {
    replicas: Arc<Mutex<HashMap<String, String>>>,
    ended: Arc<Notify>,
}

impl Followers {
    /// Notes that `container`'s lines go to `replica_id` from now on; the replica its
    /// lines went to before, when it was followed already.
    fn follow(&self, container: &str, replica_id: &str) -> Option<String> {
        self.replicas.lock().unwrap().insert(container.to_string(), replica_id.to_string())
    }

    /// The replica `container`'s lines go to.
    fn replica(&self, container: &str) -> Option<String> {
        self.replicas.lock().unwrap().get(container).cloned()
    }

    /// `container`'s follower has ended.
    fn end(&self, container: &str) {
        self.replicas.lock().unwrap().remove(container);
        self.ended.notify_waiters();
    }

    /// Waits until `container` has no follower (its output is all in the log store), at
    /// most `bound`; false when one is still following it then.
    pub(super) async fn ended(&self, container: &str, bound: Duration) -> bool {
        let wait = async {
            loop {
                // Made before the check: an end between the two still wakes it.
                let next = self.ended.notified();
                if !self.replicas.lock().unwrap().contains_key(container) {
                    return;
                }
                next.await;
            }
        };
        tokio::time::timeout(bound, wait).await.is_ok()
    }
}

/// The last `n` lines a (dead) container wrote, stdout and stderr, oldest first, joined
/// by newlines; `None` when it wrote nothing or the engine does not answer in time.
pub(super) async fn last_lines(docker: &Docker, container: &str, n: usize) -> Option<String> {
    let tail = n.to_string();
    let options = LogsOptionsBuilder::default().stdout(true).stderr(true).tail(&tail).build();
    last_lines_of(docker.logs(container, Some(options)), container, n).await
}

/// The last `n` lines of a container's (or a Swarm task's) output `frames`, asked for
/// with `tail` = `n`; `None` when there are none or the engine does not answer in time.
pub(crate) async fn last_lines_of(
    frames: impl futures::Stream<Item = Result<LogOutput, bollard::errors::Error>>,
    what: &str,
    n: usize,
) -> Option<String> {
    let read = async {
        let mut streams = Streams::default();
        let mut lines = Vec::new();
        let mut frames = std::pin::pin!(frames);
        while let Some(frame) = frames.next().await {
            match frame {
                Ok(frame) => lines.extend(streams.feed(&frame)),
                Err(e) => {
                    debug!(what, error = %e, "cannot read the last lines");
                    break;
                }
            }
        }
        lines.extend(streams.finish());
        lines
    };
    let lines = tokio::time::timeout(TAIL_WAIT, read).await.ok()?;
    let skip = lines.len().saturating_sub(n);
    (!lines.is_empty()).then(|| lines[skip..].join("\n"))
}

/// Feeds the output `frames` of a container (or a Swarm task) to `emit`, line by line,
/// until the stream ends or `closing` is cancelled (the last unended lines included);
/// the stream's error when it failed.
pub(crate) async fn pump(
    frames: impl futures::Stream<Item = Result<LogOutput, bollard::errors::Error>>,
    closing: &tokio_util::sync::CancellationToken,
    mut emit: impl FnMut(&str),
) -> Option<bollard::errors::Error> {
    let mut frames = std::pin::pin!(frames);
    let mut streams = Streams::default();
    let mut failed = None;
    loop {
        let frame = tokio::select! {
            biased;
            _ = closing.cancelled() => break,
            frame = frames.next() => frame,
        };
        match frame {
            Some(Ok(frame)) => streams.feed(&frame).iter().for_each(|l| emit(l)),
            Some(Err(e)) => {
                failed = Some(e);
                break;
            }
            None => break,
        }
    }
    streams.finish().iter().for_each(|l| emit(l));
    failed
}

impl DockerRuntime {
    /// Follows a replica container's output into the log store, from `since` (Unix
    /// seconds; 0: its whole output), as an owned task that ends when the container
    /// exits (Docker ends the stream) or the runtime closes. A container already
    /// followed (a recycled spare taken by a new replica) is left to its follower, whose
    /// lines go to `replica_id` from now on.
    pub(super) fn follow_logs(&self, container: &str, function: &str, replica_id: &str, since: i32) {
        if let Some(id) = self.following.follow(container, replica_id) {
            if id != replica_id {
                info!(function, replica = replica_id, before = %id, "a recycled container serves a new replica");
            }
            return;
        }
        let (docker, logs, following, closing) = (self.docker.clone(), self.logs.clone(), self.following.clone(), self.closing.clone());
        let (container, function, first_id) = (container.to_string(), function.to_string(), replica_id.to_string());
        self.tasks.spawn(async move {
            let options = LogsOptionsBuilder::default().follow(true).stdout(true).stderr(true).since(since).build();
            let emit = |line: &str| {
                let id = following.replica(&container).unwrap_or_else(|| first_id.clone());
                info!(function = %function, replica = %id, "{line}");
                logs.push(&function, &id, line);
            };
            if let Some(e) = pump(docker.logs(&container, Some(options)), &closing, emit).await {
                warn!(function = %function, container = %container, error = %e, "stopped following the replica's output");
            }
            following.end(&container);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;

    #[test]
    fn lines_are_split_across_frames_per_stream() {
        let mut s = Streams::default();
        let out = |t: &'static str| LogOutput::StdOut { message: Bytes::from_static(t.as_bytes()) };
        let err = |t: &'static str| LogOutput::StdErr { message: Bytes::from_static(t.as_bytes()) };
        assert!(s.feed(&out("printer: imp")).is_empty());
        assert_eq!(s.feed(&err("Traceback (most recent call last):\r\n  File")), ["Traceback (most recent call last):"]);
        assert_eq!(s.feed(&out("orted\n\nnext\n")), ["printer: imported", "", "next"]);
        assert_eq!(s.feed(&err(" \"x.py\"\n")), ["  File \"x.py\""]);
        assert!(s.feed(&err("ModuleNotFoundError")).is_empty());
        assert_eq!(s.finish(), ["ModuleNotFoundError"]);
        assert!(s.finish().is_empty());
    }

    #[tokio::test]
    async fn a_followers_end_is_waited_for_within_its_bound() {
        let f = Followers::default();
        assert!(f.ended("c1", Duration::ZERO).await, "never followed: ended at once");
        assert_eq!(f.follow("c1", "r1"), None);
        assert!(!f.ended("c1", Duration::from_millis(20)).await, "still followed after the bound");
        let waiting = tokio::spawn({
            let f = f.clone();
            async move { f.ended("c1", Duration::from_secs(60)).await }
        });
        // Another container's end does not end this wait.
        f.follow("c2", "r2");
        f.end("c2");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished());
        f.end("c1");
        let ended = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("woken by the end");
        assert!(ended.unwrap());
        assert_eq!(f.replica("c1"), None);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_dropped() {
        let mut l = LineSplitter::default();
        assert_eq!(l.feed(b"caf\xe9\n"), ["caf\u{fffd}"]);
    }
}
