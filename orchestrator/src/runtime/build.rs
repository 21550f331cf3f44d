//! What both runtimes share when they build something before a function's first start (a
//! Docker image, a virtual environment): one build at a time per fingerprint
//! ([`Builds::run`], a singleflight), failures remembered so they are not retried until
//! something changes, how long a build has been under way ([`Builds::building`]), pip's
//! command line ([`pip_install_args`]), the CA bundle and proxies a build uses, and the
//! last lines of its output ([`Tail`]).
//!
//! # Failures are remembered
//!
//! A failed build is remembered per fingerprint (the image's context hash, the virtual
//! environment's key) together with the definitions (`spec_hash`) that saw it: `prepare`
//! for one of those returns the same failure at once, without building again and without
//! writing to the log, until the definition (a new `spec_hash`) or what is built (a new
//! fingerprint) changes. Calls that waited for a build get its result, failure included.

use super::PrepareFailure;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The options every `pip install` of `extra_dependencies` gets, before the user's words.
pub(crate) const PIP_FLAGS: [&str; 6] =
    ["--no-cache-dir", "--disable-pip-version-check", "--no-input", "--progress-bar", "off", "--no-color"];

/// Lines of a failed build's output kept in its error.
pub(crate) const TAIL_LINES: usize = 20;

/// Where the CA bundle is looked for when `ROOST_CA_BUNDLE` is not set: Debian and
/// Ubuntu, then Fedora and RHEL, then Alpine and openSUSE.
const CA_BUNDLES: [&str; 3] = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/ca-bundle.pem"];

/// The proxy variables passed from the orchestrator's environment to a build.
pub(crate) const PROXY_VARS: [&str; 6] = ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"];

/// `install <flags> [--target <target>] <words>`: pip's arguments after `python3 -m
/// pip` (the words of `extra_dependencies` as they are: packages, and pip options with
/// their values).
pub(crate) fn pip_install_args<'a>(target: Option<&'a str>, words: &'a [String]) -> Vec<&'a str> {
    let target = target.map(|t| ["--target", t]).into_iter().flatten();
    std::iter::once("install").chain(PIP_FLAGS).chain(target).chain(words.iter().map(String::as_str)).collect()
}

/// The CA bundle builds trust (pip's `PIP_CERT`): `ROOST_CA_BUNDLE` if set, else the
/// first of the usual places that exists; `None`: pip's own (certifi). Behind a
/// TLS-inspecting proxy, the host's bundle holds the proxy's CA.
pub(crate) fn ca_bundle() -> Option<PathBuf> {
    ca_bundle_from(std::env::var_os("ROOST_CA_BUNDLE").map(PathBuf::from), &CA_BUNDLES)
}

fn ca_bundle_from(configured: Option<PathBuf>, usual: &[&str]) -> Option<PathBuf> {
    match configured.filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => Some(p),
        None => usual.iter().map(PathBuf::from).find(|p| p.is_file()),
    }
}

/// The proxy variables set (and not empty) in the orchestrator's environment.
pub(crate) fn proxy_env() -> Vec<(String, String)> {
    PROXY_VARS.iter().filter_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()).map(|v| (k.to_string(), v))).collect()
}

/// The last lines of a build's output.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    lines: std::collections::VecDeque<String>,
}

impl Tail {
    /// Keeps `line` (the oldest goes once [`TAIL_LINES`] are kept).
    pub(crate) fn push(&mut self, line: &str) {
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line.to_string());
    }

    /// The kept lines, oldest first, one per line; `(no output)` when there are none.
    pub(crate) fn text(&self) -> String {
        if self.lines.is_empty() {
            return "(no output)".into();
        }
        self.lines.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}

/// One fingerprint's builds: at most one at a time.
#[derive(Debug, Default)]
struct Slot {
    lock: tokio::sync::Mutex<()>,
    /// Builds finished: a caller that waited sees it change and takes the result.
    finished: AtomicU64,
}

/// A remembered failure and the definitions it is remembered for.
#[derive(Debug)]
struct Failed {
    failure: Arc<PrepareFailure>,
    spec_hashes: HashSet<String>,
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<String, Arc<Slot>>,
    failed: HashMap<String, Failed>,
    /// Definitions whose `prepare` builds or waits for a build: since when, and how many
    /// calls.
    building: HashMap<String, (Instant, usize)>,
}

/// The builds of one runtime, by fingerprint.
#[derive(Debug, Default)]
pub(crate) struct Builds {
    state: Mutex<State>,
}

/// Takes a definition off the building list when its `prepare` ends, however it ends.
struct Building<'a> {
    builds: &'a Builds,
    spec_hash: &'a str,
}

impl Drop for Building<'_> {
    fn drop(&mut self) {
        let mut st = self.builds.lock();
        if let Some((_, calls)) = st.building.get_mut(self.spec_hash) {
            *calls -= 1;
            if *calls == 0 {
                st.building.remove(self.spec_hash);
            }
        }
    }
}

impl Builds {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("the builds' lock is never poisoned")
    }

    /// Since when a `prepare` of the definition `spec_hash` has been building (or waiting
    /// for the same build); `None` when none is.
    pub(crate) fn building(&self, spec_hash: &str) -> Option<Duration> {
        self.lock().building.get(spec_hash).map(|(since, _)| since.elapsed())
    }

    /// The failure remembered for `key` and `spec_hash`, if any.
    pub(crate) fn failure(&self, key: &str, spec_hash: &str) -> Option<Arc<PrepareFailure>> {
        let st = self.lock();
        st.failed.get(key).filter(|f| f.spec_hashes.contains(spec_hash)).map(|f| f.failure.clone())
    }

    /// Makes sure what `key` names is built, for the definition `spec_hash`: returns a
    /// failure remembered for both at once; else runs `ensure` (which checks whether it
    /// is built already, and builds it if not) with no other `ensure` of `key` running.
    /// A call that waited for another's `ensure` takes its failure instead of trying
    /// again.
    pub(crate) async fn run<F, Fut>(&self, key: &str, spec_hash: &str, ensure: F) -> Result<(), Arc<PrepareFailure>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), PrepareFailure>>,
    {
        if let Some(f) = self.failure(key, spec_hash) {
            return Err(f);
        }
        let slot = self.lock().slots.entry(key.to_string()).or_default().clone();
        let seen = slot.finished.load(Ordering::SeqCst);
        let (_held, waited) = match slot.lock.try_lock() {
            Ok(held) => (held, None),
            Err(_) => {
                let waiting = self.start_building(spec_hash);
                (slot.lock.lock().await, Some(waiting))
            }
        };
        if slot.finished.load(Ordering::SeqCst) != seen {
            // Another call built meanwhile: its failure is this one's too.
            let mut st = self.lock();
            if let Some(f) = st.failed.get_mut(key) {
                f.spec_hashes.insert(spec_hash.to_string());
                return Err(f.failure.clone());
            }
        }
        let _building = waited.unwrap_or_else(|| self.start_building(spec_hash));
        let result = ensure().await;
        slot.finished.fetch_add(1, Ordering::SeqCst);
        let mut st = self.lock();
        match result {
            Ok(()) => {
                st.failed.remove(key);
                Ok(())
            }
            Err(e) => {
                let failure = Arc::new(e);
                let f =
                    st.failed.entry(key.to_string()).or_insert_with(|| Failed { failure: failure.clone(), spec_hashes: HashSet::new() });
                f.failure = failure.clone();
                f.spec_hashes.insert(spec_hash.to_string());
                Err(failure)
            }
        }
    }

    fn start_building<'a>(&'a self, spec_hash: &'a str) -> Building<'a> {
        self.lock().building.entry(spec_hash.to_string()).or_insert_with(|| (Instant::now(), 0)).1 += 1;
        Building { builds: self, spec_hash }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn failure(text: &str) -> PrepareFailure {
        PrepareFailure::Image(crate::runtime::docker::ImageError::Step { message: text.into(), last_output: "(no output)".into() })
    }

    #[test]
    fn pip_gets_its_flags_then_the_words_as_they_are() {
        let words = ["--extra-index-url", "https://x/simple", "numpy==1.26"].map(String::from);
        assert_eq!(
            pip_install_args(None, &words),
            [
                "install",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--no-input",
                "--progress-bar",
                "off",
                "--no-color",
                "--extra-index-url",
                "https://x/simple",
                "numpy==1.26"
            ]
        );
        assert_eq!(
            pip_install_args(Some("/deps"), &words)[7..],
            ["--target", "/deps", "--extra-index-url", "https://x/simple", "numpy==1.26"]
        );
    }

    #[test]
    fn the_ca_bundle_is_the_configured_one_else_the_first_usual_one_that_exists() {
        let dir = std::env::temp_dir().join(format!("roost-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, "x").unwrap();
        let usual = ["/nonexistent/ca.crt", ca.to_str().unwrap()];
        assert_eq!(ca_bundle_from(Some("/mine.crt".into()), &usual), Some(PathBuf::from("/mine.crt")));
        assert_eq!(ca_bundle_from(Some("".into()), &usual), Some(ca.clone()));
        assert_eq!(ca_bundle_from(None, &usual), Some(ca));
        assert_eq!(ca_bundle_from(None, &["/nonexistent/ca.crt"]), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let mut t = Tail::default();
        assert_eq!(t.text(), "(no output)");
        for i in 0..25 {
            t.push(&format!("line {i}"));
        }
        let text = t.text();
        assert_eq!(text.lines().count(), TAIL_LINES);
        assert!(text.starts_with("line 5\n") && text.ends_with("line 24"), "{text}");
    }

    #[tokio::test]
    async fn a_failure_is_remembered_per_definition_and_not_built_again() {
        let builds = Builds::default();
        let runs = AtomicUsize::new(0);
        let fail = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Err(failure("pip failed"))
        };
        let first = builds.run("k", "h1", fail).await.unwrap_err();
        let again = builds.run("k", "h1", fail).await.unwrap_err();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(runs.load(Ordering::SeqCst), 1, "remembered, not built again");
        assert!(builds.building("h1").is_none());
        // A changed definition tries again; so does another fingerprint.
        builds.run("k", "h2", fail).await.unwrap_err();
        builds.run("k2", "h1", fail).await.unwrap_err();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        // A success forgets the failure.
        builds.run("k", "h3", || async { Ok(()) }).await.unwrap();
        assert!(builds.failure("k", "h1").is_none());
    }

    #[tokio::test]
    async fn callers_that_wait_for_a_build_share_its_failure_and_are_building_meanwhile() {
        let builds = Arc::new(Builds::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let (builds, runs) = (builds.clone(), runs.clone());
            tokio::spawn(async move {
                builds
                    .run("k", "h1", || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        wait.await.unwrap();
                        Err(failure("no such package"))
                    })
                    .await
            })
        };
        while builds.building("h1").is_none() {
            tokio::task::yield_now().await;
        }
        let second = {
            let (builds, runs) = (builds.clone(), runs.clone());
            tokio::spawn(async move {
                builds
                    .run("k", "h2", || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    })
                    .await
            })
        };
        while builds.building("h2").is_none() {
            tokio::task::yield_now().await;
        }
        go.send(()).unwrap();
        let (a, b) = (first.await.unwrap().unwrap_err(), second.await.unwrap().unwrap_err());
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the waiter did not build again");
        assert!(builds.building("h1").is_none() && builds.building("h2").is_none());
        assert!(builds.failure("k", "h2").is_some());
    }
}
