//! The process runtime's spares: runtimes started ahead of time for any function
//! (`python3 -S -m roost_runtime spare`), how many to keep ([`Demand`], pure), the line that
//! hands one its function, and the pool that keeps them at their number.

use super::Launcher;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::warn;

/// How many spares the pool keeps (`ROOST_PROCESS_SPARES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpareCount {
    /// As many as the largest burst one declared function can take at once (its
    /// `max_replicas`), among the functions a spare can serve, while each spare's
    /// [`SPARE_BYTES`] fit in the spare memory budget (`ROOST_SPARE_MEMORY`), and at
    /// most [`MAX_SPARES`].
    Auto,
    /// This many, whatever is declared (0: none).
    Fixed(usize),
}

impl std::str::FromStr for SpareCount {
    type Err = String;

    /// `auto`, or a whole number from 0 to [`MAX_SPARES`].
    fn from_str(s: &str) -> Result<SpareCount, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(SpareCount::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if n <= MAX_SPARES => Ok(SpareCount::Fixed(n)),
            _ => Err(format!(
                "{s:?} is not a number of spares: write `auto` (as many as the largest max_replicas, within ROOST_SPARE_MEMORY) or a whole number from 0 to {MAX_SPARES}"
            )),
        }
    }
}

/// What a spare is counted to hold against the budget: a spare here had 21 MB resident,
/// 14.6 MB of it its own (PSS; the interpreter's files are shared), docs/benchmarks.md.
pub const SPARE_BYTES: u64 = 16 * 1024 * 1024;
/// The most spares the pool keeps.
pub const MAX_SPARES: usize = 64;

/// What the declared functions ask of the pool (pure): for each function, the spares a
/// burst of it can take at once (its `max_replicas`; 0 for a function a spare cannot
/// serve, see [`takes_a_spare`]), and how many functions ask each number (so the
/// largest is found without a pass over thousands of functions).
#[derive(Debug, Default)]
struct Demand {
    by_function: HashMap<String, usize>,
    asking: BTreeMap<usize, usize>,
}

impl Demand {
    fn note(&mut self, function: &str, spares: usize) {
        self.forget(function);
        self.by_function.insert(function.to_string(), spares);
        *self.asking.entry(spares).or_default() += 1;
    }

    fn forget(&mut self, function: &str) {
        let Some(was) = self.by_function.remove(function) else { return };
        if let std::collections::btree_map::Entry::Occupied(mut e) = self.asking.entry(was) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// How many spares to keep now, spending at most `budget` bytes on `Auto` (`None`:
    /// no limit).
    fn target(&self, count: SpareCount, budget: Option<u64>) -> usize {
        match count {
            SpareCount::Fixed(n) => n,
            SpareCount::Auto => {
                let burst = self.asking.keys().next_back().copied().unwrap_or(0);
                let affordable = budget.map_or(MAX_SPARES, |b| usize::try_from(b / SPARE_BYTES).unwrap_or(MAX_SPARES));
                burst.min(affordable).min(MAX_SPARES)
            }
        }
    }
}

/// Whether a variable is read only when a process starts (by the interpreter or the C
/// library), so that a spare, started before its function was known, would miss it.
fn read_at_start(name: &str) -> bool {
    ["PYTHON", "LD_", "LC_", "MALLOC_"].iter().any(|p| name.starts_with(p)) || ["LANG", "LANGUAGE", "TZ"].contains(&name)
}

/// Whether a spare can serve a function: not one with dependencies (their folders must
/// be on the path at start) nor one whose environment sets what is read only at start.
pub(super) fn takes_a_spare(has_deps: bool, env: &[(String, String)]) -> bool {
    !has_deps && !env.iter().any(|(k, _)| read_at_start(k))
}

/// What a spare is told on its stdin when a cold start takes it: the function's kind
/// (`python` or `command`) and its environment ([`super::function_env`]).
#[derive(Debug, serde::Serialize)]
struct SpareAssignment<'a> {
    kind: &'a str,
    env: BTreeMap<&'a str, &'a str>,
}

/// The line that hands a spare ([`Launcher::command`] in mode `spare`) its function:
/// [`SpareAssignment`] as one line of JSON. A variable named twice keeps its last value.
pub fn spare_assignment(kind: &str, env: &[(String, String)]) -> Vec<u8> {
    let env = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut line = serde_json::to_vec(&SpareAssignment { kind, env }).expect("strings serialize");
    line.push(b'\n');
    line
}

/// A runtime started ahead of time, waiting on stdin for the function it is to serve.
#[derive(Debug)]
pub(super) struct Spare {
    pub(super) child: tokio::process::Child,
    pub(super) stdin: tokio::process::ChildStdin,
    pub(super) port: u16,
    pub(super) log: PathBuf,
}

/// The spares, kept at their number by [`Pool::top_up`].
#[derive(Debug)]
pub(super) struct Pool {
    pub(super) launcher: Arc<Launcher>,
    state: Mutex<PoolState>,
    seq: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct PoolState {
    spares: Vec<Spare>,
    /// What the declared functions ask of the pool.
    demand: Demand,
    /// Spares being spawned (outside the lock, so a cold start's `take` never waits on
    /// a fork).
    starting: usize,
    /// Set by `close`: no spare is started after it.
    closed: bool,
}

impl Pool {
    /// An empty pool of spares started by `launcher`; [`Pool::demand`] fills it.
    pub(super) fn new(launcher: Arc<Launcher>) -> Arc<Pool> {
        Arc::new(Pool { launcher, state: Mutex::default(), seq: Default::default() })
    }

    /// Starts spares until there are as many as the demand asks, or ends the newest
    /// ones past it. Spawning blocks (fork and exec), so call it off the async workers,
    /// as [`Pool::top_up_later`] does.
    fn top_up(&self) {
        loop {
            {
                let mut st = self.state.lock().unwrap();
                let target = st.demand.target(self.launcher.config.spares, self.launcher.config.spare_memory);
                if st.spares.len() > target {
                    for mut s in st.spares.split_off(target) {
                        // Fails only if it has exited already.
                        let _ = s.child.start_kill();
                        remove_file(&s.log);
                    }
                }
                if st.closed || st.spares.len() + st.starting >= target {
                    return;
                }
                st.starting += 1;
            }
            let spare = self.launcher.spare(self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let mut st = self.state.lock().unwrap();
            st.starting -= 1;
            match spare {
                Ok(s) if !st.closed => st.spares.push(s),
                Ok(mut s) => {
                    // Closed while it was spawned: it goes at once, with its log.
                    // Fails only if it has exited already.
                    let _ = s.child.start_kill();
                    remove_file(&s.log);
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "cannot start a spare runtime; cold starts start one each");
                    return;
                }
            }
        }
    }

    /// Notes what `function` asks of the pool (see [`Demand`]; `None`: it is no longer
    /// declared) and starts or ends spares to match, in the background.
    pub(super) fn demand(self: &Arc<Self>, function: &str, spares: Option<usize>) {
        {
            let demand = &mut self.state.lock().unwrap().demand;
            match spares {
                Some(n) => demand.note(function, n),
                None => demand.forget(function),
            }
        }
        self.top_up_later();
    }

    /// [`Pool::top_up`] on a blocking thread.
    pub(super) fn top_up_later(self: &Arc<Self>) {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || pool.top_up());
    }

    /// A live spare, if any (the oldest: the likeliest to have finished importing).
    pub(super) fn take(&self) -> Option<Spare> {
        let spares = &mut self.state.lock().unwrap().spares;
        while !spares.is_empty() {
            let mut s = spares.remove(0);
            match s.child.try_wait() {
                Ok(None) => return Some(s),
                _ => {
                    warn!(log = %s.log.display(), "a spare runtime had exited; its log is kept");
                }
            }
        }
        None
    }

    /// Ends every spare: stdin closed (a spare then exits by itself), killed if it has
    /// not after a second. Returns once no spare is being spawned either.
    pub(super) async fn close(&self) {
        let spares: Vec<Spare> = {
            let mut st = self.state.lock().unwrap();
            st.closed = true;
            st.spares.drain(..).collect()
        };
        for _ in 0..500 {
            if self.state.lock().unwrap().starting == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for Spare { mut child, stdin, log, .. } in spares {
            drop(stdin);
            if tokio::time::timeout(Duration::from_secs(1), child.wait()).await.is_err() {
                // Fails only if it has exited already.
                let _ = child.kill().await;
            }
            remove_file(&log);
        }
    }
}

/// Removes a file of a replica or spare (state, log); one already gone is fine, any
/// other failure is logged (the file stays behind).
pub(super) fn remove_file(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(path = %path.display(), error = %e, "cannot remove a runtime file; it stays behind");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_sized_for_the_largest_burst_within_the_budget() {
        let auto = |d: &Demand| d.target(SpareCount::Auto, None);
        let mut d = Demand::default();
        assert_eq!(auto(&d), 0, "nothing declared, no spare");
        d.note("a", 3);
        d.note("b", 10);
        d.note("deps", 0);
        assert_eq!(auto(&d), 10, "b can take ten at once");
        assert_eq!(d.target(SpareCount::Auto, Some(4 * SPARE_BYTES + 1)), 4, "four fit in the budget");
        assert_eq!(d.target(SpareCount::Auto, Some(0)), 0);
        assert_eq!(d.target(SpareCount::Fixed(2), Some(0)), 2, "a number is kept whatever is declared");
        d.note("b", 2);
        assert_eq!(auto(&d), 3, "b's new definition asks for two");
        d.forget("a");
        assert_eq!(auto(&d), 2, "a is no longer declared");
        d.note("huge", 1000);
        assert_eq!(auto(&d), MAX_SPARES);
        d.forget("huge");
        d.note("c", 2);
        d.forget("b");
        assert_eq!(auto(&d), 2, "c still asks for two when b, asking as many, is gone");
        d.forget("never declared");
        d.forget("c");
        assert_eq!(auto(&d), 0, "only deps is left, and a spare cannot serve it");
    }

    #[test]
    fn the_setting_is_auto_or_a_number_up_to_the_most() {
        assert_eq!("auto".parse(), Ok(SpareCount::Auto));
        assert_eq!(" AUTO ".parse(), Ok(SpareCount::Auto));
        assert_eq!("0".parse(), Ok(SpareCount::Fixed(0)));
        assert_eq!("64".parse(), Ok(SpareCount::Fixed(64)));
        for bad in ["65", "-1", "two", ""] {
            let e = bad.parse::<SpareCount>().unwrap_err();
            assert!(e.contains("is not a number of spares") && e.contains("`auto`"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_spare_serves_no_function_with_dependencies_or_variables_read_at_start() {
        let var = |k: &str| vec![(k.to_string(), "x".to_string())];
        assert!(takes_a_spare(false, &var("GREETING")));
        assert!(!takes_a_spare(true, &var("GREETING")));
        assert!(!takes_a_spare(false, &var("PYTHONHASHSEED")));
        assert!(!takes_a_spare(false, &var("TZ")));
    }

    #[test]
    fn a_spare_is_told_its_kind_and_environment_in_one_json_line() {
        let env = [("B", "2"), ("A", "1"), ("B", "3")].map(|(k, v)| (k.to_string(), v.to_string()));
        let line = spare_assignment("python", &env);
        assert_eq!(String::from_utf8(line).unwrap(), "{\"kind\":\"python\",\"env\":{\"A\":\"1\",\"B\":\"3\"}}\n");
    }
}
