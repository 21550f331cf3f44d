//! The scaling decision as a pure function of what is observed: how many replicas to
//! start and how many to drain. No clock, no I/O: the caller passes the durations. The
//! demand rule (in flight plus queued over the target concurrency) is
//! [`roost_common::scaling`]'s, the same the statsd-listener signals on; requests the gate
//! holds count as queued, so a burst that arrives while a function sleeps is sized in one
//! step.

use roost_common::spec::Scaling;
use std::time::Duration;

/// What the orchestrator sees of one function at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// Replicas serving (endpoint ACKed by Envoy, not draining).
    pub ready: u32,
    /// Replicas being started.
    pub starting: u32,
    /// Requests in flight in Envoy for the function.
    pub in_flight: u64,
    /// Requests queued in Envoy for the function.
    pub pending: u64,
    /// Requests the gate holds for the function (not in Envoy yet).
    pub held: u64,
    /// Asynchronous calls waiting for delivery at the async worker.
    pub backlog: u64,
    /// Time since the last request started; `None` if none was ever seen.
    pub idle_for: Option<Duration>,
    /// How long there have been more ready replicas than the load needs; `None` if
    /// there are not more now.
    pub surplus_for: Option<Duration>,
}

/// What to do now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decision {
    /// Replicas to start.
    pub start: u32,
    /// Ready replicas to drain and stop.
    pub drain: u32,
}

/// Replicas the current load needs: in-flight, queued and held requests and waiting
/// asynchronous calls over the target concurrency per replica, rounded up.
pub fn needed(scaling: &Scaling, o: &Observed) -> u32 {
    let waiting = o.pending.saturating_add(o.held).saturating_add(o.backlog);
    roost_common::scaling::replicas_needed(o.in_flight, waiting, scaling.target_concurrency)
}

/// Decides. Rules, in order:
/// 1. Scale up when the load needs more than ready + starting (queueing in Envoy,
///    requests held at the gate and asynchronous calls waiting count), all at once, never above `max_replicas`; keep at
///    least `min_replicas`.
/// 2. Scale to `min_replicas` once no request has started for `idle_timeout`.
/// 3. Otherwise drain one surplus replica once the surplus has lasted `idle_timeout`.
/// 4. Never drain while requests are queued or held or calls wait, except replicas above
///    `max_replicas` (a lowered maximum), drained at once.
pub fn decide(scaling: &Scaling, o: &Observed) -> Decision {
    let active = o.ready + o.starting;
    let want = needed(scaling, o).max(scaling.min_replicas).min(scaling.max_replicas);
    if want > active {
        return Decision { start: want - active, drain: 0 };
    }
    if active > scaling.max_replicas && o.ready > 0 {
        return Decision { start: 0, drain: (active - scaling.max_replicas).min(o.ready) };
    }
    if o.pending > 0 || o.held > 0 || o.backlog > 0 || o.starting > 0 {
        return Decision::default();
    }
    let idle = o.idle_for.is_some_and(|d| d >= scaling.idle_timeout);
    if idle && o.in_flight == 0 && o.ready > scaling.min_replicas {
        return Decision { start: 0, drain: o.ready - scaling.min_replicas };
    }
    let floor = want.max(1).max(scaling.min_replicas);
    if o.ready > floor && o.surplus_for.is_some_and(|d| d >= scaling.idle_timeout) {
        return Decision { start: 0, drain: 1 };
    }
    Decision::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaling(min: u32, max: u32, target: u32) -> Scaling {
        Scaling { min_replicas: min, max_replicas: max, target_concurrency: target, idle_timeout: Duration::from_secs(10) }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn queueing_scales_up_to_what_the_load_needs_capped_at_max() {
        let s = scaling(0, 3, 1);
        let o = Observed { ready: 1, in_flight: 1, pending: 4, ..Default::default() };
        assert_eq!(decide(&s, &o), Decision { start: 2, drain: 0 });
        let o = Observed { ready: 1, starting: 1, in_flight: 1, pending: 1, ..Default::default() };
        assert_eq!(decide(&s, &o), Decision::default(), "one already starting covers the queue");
    }

    #[test]
    fn target_concurrency_divides_the_load() {
        let s = scaling(0, 10, 4);
        let o = Observed { ready: 1, in_flight: 4, pending: 5, ..Default::default() };
        assert_eq!(decide(&s, &o).start, 2); // 9 requests / 4 per replica = 3 replicas
    }

    #[test]
    fn min_replicas_are_kept_running() {
        let s = scaling(2, 5, 1);
        assert_eq!(decide(&s, &Observed::default()).start, 2);
        let o = Observed { ready: 2, idle_for: Some(60 * S), ..Default::default() };
        assert_eq!(decide(&s, &o), Decision::default());
    }

    #[test]
    fn idle_past_the_timeout_scales_to_zero() {
        let s = scaling(0, 5, 1);
        let o = Observed { ready: 3, idle_for: Some(10 * S), ..Default::default() };
        assert_eq!(decide(&s, &o), Decision { start: 0, drain: 3 });
        let o = Observed { ready: 3, idle_for: Some(9 * S), ..Default::default() };
        assert_eq!(decide(&s, &o), Decision::default());
    }

    #[test]
    fn a_request_in_flight_blocks_scale_to_zero() {
        // Idleness counts started requests: a slow request that started long ago is
        // still in flight, and the function must not be reaped under it.
        let s = scaling(0, 5, 1);
        let o = Observed { ready: 1, in_flight: 1, idle_for: Some(60 * S), ..Default::default() };
        assert_eq!(decide(&s, &o), Decision::default());
    }

    #[test]
    fn a_lowered_maximum_drains_the_excess_at_once_even_under_load() {
        let s = scaling(0, 2, 1);
        let o = Observed { ready: 5, in_flight: 5, pending: 3, ..Default::default() };
        assert_eq!(decide(&s, &o), Decision { start: 0, drain: 3 });
        let o = Observed { ready: 1, starting: 3, ..Default::default() };
        assert_eq!(decide(&s, &o), Decision { start: 0, drain: 1 }, "only ready replicas drain; the starting ones follow when ready");
    }

    #[test]
    fn surplus_drains_one_at_a_time_after_the_timeout() {
        let s = scaling(0, 5, 1);
        let o = Observed { ready: 3, in_flight: 1, idle_for: Some(S), surplus_for: Some(10 * S), ..Default::default() };
        assert_eq!(decide(&s, &o), Decision { start: 0, drain: 1 });
        let o = Observed { surplus_for: Some(5 * S), ..o };
        assert_eq!(decide(&s, &o), Decision::default());
    }

    #[test]
    fn a_burst_held_at_the_gate_is_sized_in_one_step() {
        // 200 requests held while the function sleeps, one replica per request, at most 10:
        // the one the wake started and 9 more, at once.
        let s = scaling(0, 10, 1);
        let o = Observed { starting: 1, held: 200, ..Default::default() };
        assert_eq!(decide(&s, &o), Decision { start: 9, drain: 0 });
        let s = scaling(0, 10, 8);
        let o = Observed { ready: 1, in_flight: 8, held: 20, ..Default::default() };
        assert_eq!(decide(&s, &o).start, 3, "28 requests at 8 each need 4 replicas");
    }

    #[test]
    fn a_backlog_of_asynchronous_calls_scales_to_the_maximum_and_holds_replicas_up() {
        // 1,000 calls queued for a sleeping function: all ten replicas at once.
        let o = Observed { backlog: 1000, ..Default::default() };
        assert_eq!(decide(&scaling(0, 10, 1), &o), Decision { start: 10, drain: 0 });
        // Idle for a minute, but calls still wait: nothing drains.
        let o = Observed { ready: 3, backlog: 1, idle_for: Some(60 * S), surplus_for: Some(60 * S), ..Default::default() };
        assert_eq!(decide(&scaling(0, 10, 1), &o), Decision::default());
    }

    #[test]
    fn never_drains_while_held() {
        let s = scaling(0, 3, 1);
        let o = Observed { ready: 3, held: 1, idle_for: Some(60 * S), surplus_for: Some(60 * S), ..Default::default() };
        assert_eq!(decide(&s, &o), Decision::default());
    }

    #[test]
    fn never_drains_while_queued() {
        let s = scaling(0, 1, 1);
        let o = Observed { ready: 1, in_flight: 1, pending: 3, idle_for: Some(60 * S), surplus_for: Some(60 * S), ..Default::default() };
        assert_eq!(decide(&s, &o), Decision::default());
    }
}
