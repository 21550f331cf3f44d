//! Which functions keep a warm (paused) spare container within a memory budget
//! (`ROOST_SPARE_MEMORY`). Pure: no clock, no I/O; the caller passes `now`.
//!
//! Each function's recent starts are kept (cold starts and scale-ups: the calls that
//! needed a container; starts within [`EPISODE`] of the one before are one call, a burst's
//! scale-ups). Its score is the chance that its next start comes within [`HORIZON`]:
//!
//! - from its own gaps between starts once it has [`MIN_GAPS`] of them, given how long it
//!   has been idle (the hybrid-histogram idea of Shahrad et al., "Serverless in the Wild",
//!   ATC 2020: a function called every 5 minutes is unlikely to be called 10 s after a
//!   call and likely 4.5 minutes after it). Of the gaps longer than the idle time so far,
//!   the share that ends within the horizon;
//! - else (few gaps, or idle longer than any gap seen) from its rate over
//!   [`RATE_WINDOW`]: `1 - exp(-rate * HORIZON)`.
//!
//! Spares go to the highest scores while the budget lasts, each costing what its
//! function's spare was measured to hold (or [`DEFAULT_SPARE_BYTES`] until measured). A
//! function never started scores 0 but still gets a spare while memory is left, in the
//! order the functions were declared: a deployment whose spares all fit keeps one per
//! function, as before the budget.
//!
//! A function whose recent calls came as bursts (several starts in one episode: the
//! scale-ups a burst of requests sized at once) may keep more than one spare: as many as
//! its largest burst within [`RATE_WINDOW`] started, at most [`MAX_SPARES_EACH`]. Those
//! further spares ([`Candidate::rank`] 1 and up) get only what is left once every
//! function's first spare was chosen, and the second spares of all functions come before
//! any third.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Starts kept per function.
pub const HISTORY: usize = 32;
/// Gaps needed before a function's own gaps are trusted over its rate.
pub const MIN_GAPS: usize = 4;
/// The window a score looks ahead.
pub const HORIZON: Duration = Duration::from_secs(60);
/// The window the rate is measured over.
pub const RATE_WINDOW: Duration = Duration::from_secs(600);
/// Starts closer together than this are one call (a burst's scale-ups).
pub const EPISODE: Duration = Duration::from_secs(1);
/// The most spares one function keeps (the first and those for its bursts).
pub const MAX_SPARES_EACH: usize = 16;
/// What a spare is taken to hold until one of its function was measured: a paused
/// container of the Python runtime held 11-20 MB here (`docs/benchmarks.md`).
pub const DEFAULT_SPARE_BYTES: u64 = 24 * 1024 * 1024;

/// One function's recent starts, by call.
#[derive(Debug, Clone, Default)]
pub struct History {
    calls: VecDeque<Call>,
}

/// One call (episode): when its first start was, and how many starts it needed.
#[derive(Debug, Clone, Copy)]
struct Call {
    at: Instant,
    starts: usize,
}

impl History {
    /// A start at `at` (one within [`EPISODE`] of the call's first is the same call).
    pub fn record(&mut self, at: Instant) {
        if let Some(call) = self.calls.back_mut().filter(|c| at.saturating_duration_since(c.at) < EPISODE) {
            call.starts += 1;
            return;
        }
        if self.calls.len() == HISTORY {
            self.calls.pop_front();
        }
        self.calls.push_back(Call { at, starts: 1 });
    }

    /// The most starts one call needed within [`RATE_WINDOW`] of `now` (0: none).
    pub fn burst(&self, now: Instant) -> usize {
        self.calls.iter().filter(|c| now.saturating_duration_since(c.at) <= RATE_WINDOW).map(|c| c.starts).max().unwrap_or(0)
    }

    /// The chance that the next start comes within [`HORIZON`] of `now`, in 0..=1.
    pub fn score(&self, now: Instant) -> f64 {
        let Some(last) = self.calls.back() else { return 0.0 };
        let idle = now.saturating_duration_since(last.at);
        let gaps: Vec<Duration> =
            self.calls.iter().zip(self.calls.iter().skip(1)).map(|(a, b)| b.at.saturating_duration_since(a.at)).collect();
        if gaps.len() >= MIN_GAPS {
            let longer: Vec<&Duration> = gaps.iter().filter(|g| **g > idle).collect();
            if !longer.is_empty() {
                let soon = longer.iter().filter(|g| ***g <= idle + HORIZON).count();
                return soon as f64 / longer.len() as f64;
            }
        }
        let recent = self.calls.iter().filter(|c| now.saturating_duration_since(c.at) <= RATE_WINDOW).count();
        let rate = recent as f64 / RATE_WINDOW.as_secs_f64();
        1.0 - (-rate * HORIZON.as_secs_f64()).exp()
    }
}

/// A function that could keep a spare.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<K> {
    /// What identifies its spare.
    pub key: K,
    /// [`History::score`].
    pub score: f64,
    /// What its spare holds.
    pub bytes: u64,
    /// Which of its function's spares: 0 the first, 1 and up those for its bursts.
    pub rank: usize,
}

/// The spares to keep: by rank (every function's first spare before any second), then by
/// score, highest first (ties in the order given), each while it still fits in `budget`
/// bytes; `None` keeps every candidate.
pub fn choose<K: Clone + Eq + Hash>(candidates: &[Candidate<K>], budget: Option<u64>) -> HashSet<K> {
    let Some(budget) = budget else { return candidates.iter().map(|c| c.key.clone()).collect() };
    let mut order: Vec<&Candidate<K>> = candidates.iter().collect();
    order.sort_by(|a, b| a.rank.cmp(&b.rank).then(b.score.total_cmp(&a.score)));
    let mut left = budget;
    let mut chosen = HashSet::new();
    for c in order {
        if c.bytes <= left {
            left -= c.bytes;
            chosen.insert(c.key.clone());
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn history(t0: Instant, at_s: &[u64]) -> History {
        let mut h = History::default();
        for s in at_s {
            h.record(t0 + *s as u32 * S);
        }
        h
    }

    #[test]
    fn never_started_scores_nothing_and_a_burst_is_one_call() {
        let t0 = Instant::now();
        assert_eq!(History::default().score(t0), 0.0);
        let mut h = History::default();
        for ms in [0, 10, 200, 900] {
            h.record(t0 + Duration::from_millis(ms));
        }
        assert_eq!(h.calls.len(), 1, "scale-ups within a second are the same call");
        assert_eq!(h.burst(t0 + S), 4, "a call that needed four replicas");
    }

    #[test]
    fn the_largest_recent_burst_is_remembered_for_the_rate_window() {
        let t0 = Instant::now();
        let mut h = History::default();
        for ms in [0, 5, 10] {
            h.record(t0 + Duration::from_millis(ms));
        }
        h.record(t0 + 100 * S);
        assert_eq!(h.burst(t0 + 101 * S), 3, "the call of three, not the last one's one");
        assert_eq!(h.burst(t0 + 650 * S), 1, "ten minutes on, only the single start is recent");
        assert_eq!(History::default().burst(t0), 0);
    }

    #[test]
    fn burst_spares_get_what_every_first_spare_left() {
        let c = |key: &'static str, score: f64, rank: usize| Candidate { key, score, bytes: 10, rank };
        let all = [c("hot", 0.9, 0), c("hot+1", 0.9, 1), c("hot+2", 0.9, 2), c("cold", 0.0, 0), c("warm", 0.5, 0), c("warm+1", 0.5, 1)];
        assert_eq!(choose(&all, Some(30)), HashSet::from(["hot", "warm", "cold"]), "first spares first, even the coldest");
        assert_eq!(choose(&all, Some(50)), HashSet::from(["hot", "warm", "cold", "hot+1", "warm+1"]), "every second before any third");
        assert_eq!(choose(&all, None).len(), 6);
    }

    #[test]
    fn few_calls_score_by_rate_and_fade() {
        let t0 = Instant::now();
        let h = history(t0, &[0, 30]);
        let fresh = h.score(t0 + 31 * S);
        // 2 calls in 10 minutes: 1 - exp(-2/600 * 60) = 0.18.
        assert!((fresh - 0.181).abs() < 0.01, "{fresh}");
        assert!(h.score(t0 + 400 * S) == fresh, "still two within the window");
        assert_eq!(h.score(t0 + 700 * S), 0.0, "nothing in the last ten minutes");
        let busy = history(t0, &[0, 2, 4, 6]);
        assert!(busy.score(t0 + 7 * S) > fresh);
    }

    #[test]
    fn a_periodic_function_is_likely_near_its_period_and_not_right_after_a_call() {
        // Called every 5 minutes.
        let t0 = Instant::now();
        let h = history(t0, &[0, 300, 600, 900, 1200, 1500]);
        assert_eq!(h.score(t0 + 1510 * S), 0.0, "10 s after a call, the next is 290 s away");
        assert_eq!(h.score(t0 + 1750 * S), 1.0, "at 250 s of 300 the next call is within a minute");
        // Idle longer than any gap seen: the rate decides (5 calls in the last 10 minutes
        // at 1,810 s: those at 1,200 and 1,500 s).
        let late = h.score(t0 + 1810 * S);
        assert!(late > 0.0 && late < 1.0, "{late}");
    }

    #[test]
    fn the_budget_goes_to_the_likeliest_first_and_skips_what_does_not_fit() {
        let c = |key: &'static str, score: f64, bytes: u64| Candidate { key, score, bytes, rank: 0 };
        let all = [c("cold", 0.0, 10), c("hot", 0.9, 10), c("warm", 0.5, 10), c("big", 0.7, 100)];
        assert_eq!(choose(&all, Some(25)), HashSet::from(["hot", "warm"]));
        assert_eq!(choose(&all, Some(30)), HashSet::from(["hot", "warm", "cold"]), "memory left goes to the rest");
        assert_eq!(choose(&all, Some(0)), HashSet::new());
        assert_eq!(choose(&all, None).len(), 4, "no budget: one spare each");
        // Ties keep the order given (declaration order).
        let ties = [c("a", 0.0, 10), c("b", 0.0, 10), c("c", 0.0, 10)];
        assert_eq!(choose(&ties, Some(20)), HashSet::from(["a", "b"]));
    }
}
