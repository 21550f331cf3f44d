//! Whether the public entry sends a ready function's requests straight to its replicas or
//! through the gate: a pure rule with a settling time, and at most one change of it on
//! its way to the control plane at a time (so changes arrive in order).
//!
//! Envoy keeps a request it has queued on the host it chose: replicas that become ready
//! later take only new requests. A burst that reaches a function while one replica is
//! ready would wait behind that replica while nine more start beside it. So while a
//! function scales up, its requests go through the gate, which counts every request
//! against the ready replicas' capacity and holds the rest (reporting them, so the
//! orchestrator starts what they need) until a replica has room, wherever it is. The
//! function goes direct again once it has not needed the gate for [`SETTLE`], or at once
//! when it has every replica it may have: then there is nothing to wait for.

use std::time::Duration;
use tokio::time::Instant;

/// How long a function stays gated after it last needed to be (a replica starting or
/// becoming ready, requests queued or held): long enough for the rest of a burst to
/// arrive through the gate.
pub const SETTLE: Duration = Duration::from_secs(1);

/// How long after a failed change the next is sent.
pub const RETRY: Duration = Duration::from_millis(500);

/// One function's admission, as the orchestrator asked the control plane for it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Admission {
    /// What the control plane has, as far as is known (`Some(true)`: gated); `None`
    /// after a change failed, or before the first one.
    routed: Option<bool>,
    /// A change on its way, with its value.
    sending: Option<bool>,
    /// When the gate was last needed.
    needed_at: Option<Instant>,
    /// No change is sent before then (the last one failed).
    not_before: Option<Instant>,
}

impl Admission {
    /// The function wakes from zero. `gated`: the control plane was told so (its waking
    /// change gates); else what it has is not known.
    pub fn waking(&mut self, gated: bool, now: Instant) {
        self.needed_at = Some(now);
        if self.sending.is_none() {
            self.routed = gated.then_some(true);
        }
    }

    /// The gate is needed now: a replica starts or became ready, or requests wait.
    pub fn need(&mut self, now: Instant) {
        self.needed_at = Some(now);
    }

    /// The control plane lost what it was told (it restarted without its saved model).
    pub fn forget(&mut self) {
        self.routed = None;
    }

    /// The change to send now, if any: gated while the gate was needed within
    /// [`SETTLE`], unless `at_max` (every replica the function may have is ready).
    pub fn next(&mut self, now: Instant, at_max: bool) -> Option<bool> {
        if self.sending.is_some() || self.not_before.is_some_and(|t| now < t) {
            return None;
        }
        let want = !at_max && self.needed_at.is_some_and(|t| now.saturating_duration_since(t) < SETTLE);
        if self.routed == Some(want) {
            return None;
        }
        self.sending = Some(want);
        Some(want)
    }

    /// The change `gated` was applied (`ok`), or failed: then what the control plane has
    /// is not known, and the change wanted is sent again after [`RETRY`].
    pub fn sent(&mut self, gated: bool, ok: bool, now: Instant) {
        self.sending = None;
        self.routed = ok.then_some(gated);
        self.not_before = (!ok).then_some(now + RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_wake_gates_until_the_function_settles_then_goes_direct_once() {
        let t0 = Instant::now();
        let mut a = Admission::default();
        a.waking(true, t0);
        assert_eq!(a.next(t0, false), None, "the waking change gated it already");
        // The first replica is ready 9 ms later: the rest of a burst may still be coming.
        a.need(t0 + 9 * MS);
        assert_eq!(a.next(t0 + 500 * MS, false), None);
        assert_eq!(a.next(t0 + 9 * MS + SETTLE, false), Some(false), "settled: direct");
        assert_eq!(a.next(t0 + 9 * MS + SETTLE, false), None, "one change on its way at a time");
        a.sent(false, true, t0);
        assert_eq!(a.next(t0 + 2 * SETTLE, false), None);
    }

    #[test]
    fn requests_waiting_gate_a_direct_function_again() {
        let t0 = Instant::now();
        let mut a = Admission::default();
        assert_eq!(a.next(t0, false), Some(false), "what the control plane has is not known: said once");
        a.sent(false, true, t0);
        a.need(t0 + SETTLE);
        assert_eq!(a.next(t0 + SETTLE, false), Some(true));
        a.sent(true, true, t0);
        // Needed again and again while the burst lasts: stays gated.
        a.need(t0 + 2 * SETTLE);
        assert_eq!(a.next(t0 + 2 * SETTLE + 999 * MS, false), None);
        assert_eq!(a.next(t0 + 3 * SETTLE, false), Some(false));
    }

    #[test]
    fn a_function_with_every_replica_it_may_have_goes_direct_at_once() {
        let t0 = Instant::now();
        let mut a = Admission::default();
        a.waking(true, t0);
        a.need(t0 + MS);
        assert_eq!(a.next(t0 + MS, true), Some(false), "nothing more can start: nothing to wait for in the gate");
    }

    #[test]
    fn a_failed_change_is_sent_again_later_and_an_unknown_route_is_told() {
        let t0 = Instant::now();
        let mut a = Admission::default();
        a.waking(true, t0);
        assert_eq!(a.next(t0 + SETTLE, false), Some(false));
        a.sent(false, false, t0 + SETTLE);
        assert_eq!(a.next(t0 + SETTLE, false), None, "not at once: the control plane may be away");
        assert_eq!(a.next(t0 + SETTLE + RETRY, false), Some(false), "not known: told again");
        a.sent(false, true, t0);
        // A wake without the waking change (the function was not declared yet): not known.
        a.waking(false, t0 + 2 * SETTLE);
        assert_eq!(a.next(t0 + 2 * SETTLE, false), Some(true));
        // A control plane that lost its model: told again.
        a.sent(true, true, t0);
        a.forget();
        assert_eq!(a.next(t0 + 2 * SETTLE, false), Some(true));
    }
}
