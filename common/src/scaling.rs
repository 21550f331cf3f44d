//! The scale-up rule, stated once: the statsd-listener signals by it and the orchestrator
//! sizes by it, so the two cannot disagree on when a function needs another replica.

use std::time::Duration;

/// Shortest time between two scale-up signals of one function from the statsd-listener
/// (the orchestrator also re-evaluates every function on its own tick).
pub const SCALE_SIGNAL_INTERVAL: Duration = Duration::from_millis(200);

/// Replicas a load needs: requests in flight plus queued, over the requests one replica
/// serves at once (`target_concurrency`, at least 1), rounded up.
pub fn replicas_needed(in_flight: u64, pending: u64, target_concurrency: u32) -> u32 {
    let target = u64::from(target_concurrency.max(1));
    in_flight.saturating_add(pending).div_ceil(target).min(u64::from(u32::MAX)) as u32
}

/// Whether a function should get another replica now: requests queue in Envoy, or the
/// load needs more replicas than are ready (`ready_replicas` counts as at least one,
/// since a sleeping function is woken by the gate, not by this signal).
pub fn needs_scale_up(in_flight: u64, pending: u64, ready_replicas: u32, target_concurrency: u32) -> bool {
    pending > 0 || replicas_needed(in_flight, 0, target_concurrency) > ready_replicas.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demand_over_target_rounded_up() {
        assert_eq!(replicas_needed(0, 0, 1), 0);
        assert_eq!(replicas_needed(4, 5, 4), 3);
        assert_eq!(replicas_needed(1, 0, 0), 1, "a target of 0 counts as 1");
        assert_eq!(replicas_needed(u64::MAX, u64::MAX, 1), u32::MAX);
    }

    #[test]
    fn scale_up_on_queueing_or_saturation() {
        assert!(needs_scale_up(1, 1, 1, 1));
        assert!(!needs_scale_up(1, 0, 1, 1));
        assert!(needs_scale_up(3, 0, 1, 2));
        assert!(!needs_scale_up(4, 0, 2, 2));
        assert!(!needs_scale_up(0, 0, 0, 1));
    }
}
