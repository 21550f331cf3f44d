//! Redis key and channel names: the contract between the gate, the orchestrator, the
//! statsd-listener and the control plane.
//!
//! All keys start with [`PREFIX`]. What goes in them and on the channels (payloads, hash
//! fields) is typed in [`crate::wire::redis`]. The Lua gate spells the same names out by
//! hand (`gateway-lua/`); keep both in step and keep `docs/architecture.md` true.

/// Prefix of every Roost key and channel.
pub const PREFIX: &str = "roost";

/// Control plane: the JSON model (functions and endpoints) it restores after a restart.
pub const CONTROL_PLANE_STATE: &str = "roost:cp:state";

/// Set: the names of every declared function (the orchestrator adds a function once the
/// control plane routes it, and removes it when it leaves the definitions). The gate
/// answers 404 for a name not in it.
pub const FUNCTIONS: &str = "roost:functions";

/// Channel the gate publishes a function name on when a request finds it asleep (see
/// [`crate::wire::redis::function_of_signal`]).
pub const WAKE_CHANNEL: &str = "roost:wake";

/// Channel the orchestrator publishes on when a function becomes ready (its endpoint
/// ACKed by every Envoy) or stops being ready: a [`crate::wire::redis::ReadyNotice`].
pub const READY_CHANNEL: &str = "roost:ready";

/// Channel the statsd-listener publishes a scale-up signal on: a
/// [`crate::wire::redis::ScaleSignal`].
pub const SCALE_CHANNEL: &str = "roost:scale";

/// String key: present (value `1`) while the function has at least one replica that
/// Envoy routes to. The gate proxies straight to Envoy when it is set.
pub fn ready(function: &str) -> String {
    format!("roost:fn:{function}:ready")
}

/// String key, `SET NX PX`: the singleflight lock of one wake-up of a function.
pub fn wake_lock(function: &str) -> String {
    format!("roost:fn:{function}:waking")
}

/// Hash key: the load the statsd-listener sees for one function (in flight, queued,
/// started per second, no-healthy-host events, last request start): a
/// [`crate::wire::redis::LoadHash`].
pub fn load(function: &str) -> String {
    format!("roost:fn:{function}:load")
}

/// Hash key: the orchestrator's view of one function's replicas: a
/// [`crate::wire::redis::ReplicasHash`].
pub fn replicas(function: &str) -> String {
    format!("roost:fn:{function}:replicas")
}

/// String key: why the gate must answer a function's callers at once instead of waking it,
/// a [`crate::wire::redis::Refusal`] in JSON. Set by the orchestrator while the function
/// is invalid, its build failed, or it is backing off after failed starts (then with an
/// expiry: the back-off left, which the gate sends as `Retry-After`); deleted when the
/// function may be woken again.
pub fn refusal(function: &str) -> String {
    format!("roost:fn:{function}:refusal")
}

/// String key: how long, in milliseconds, the gate holds a request for the function while
/// it wakes (its `readiness.timeout` and what comes after the probe); absent, the gate's
/// own default (`ROOST_GATE_WAKE_TIMEOUT_MS`).
pub fn hold_ms(function: &str) -> String {
    format!("roost:fn:{function}:hold_ms")
}

/// Hash key: how many requests the gates hold for the function right now (waiting for it
/// to wake, or for a ready replica's capacity), one field per gate (its `ROOST_GATE_ID`),
/// each a [`crate::wire::redis::HeldShare`] (`<count>:<expires_ms>`). A gate writes its
/// own field as requests arrive and leave (coalesced), stamped to expire
/// [`crate::wire::redis::HELD_TTL_MS`] later (Redis's clock) and renewed while it holds
/// any, renews the key's expiry with it and removes its field at zero; so several gates
/// add up, one at zero never erases another's, and a gate that died stops counting. The
/// orchestrator adds [`crate::wire::redis::held_total`] (the unexpired fields' sum) to
/// the function's demand, so a burst held at the gates is sized at once.
pub fn held(function: &str) -> String {
    format!("roost:fn:{function}:held")
}

/// String key: the function's asynchronous-call settings, an
/// [`crate::wire::calls::AsyncSettings`] in JSON, written by the orchestrator when it
/// declares the function; read by the async worker.
pub fn async_settings(function: &str) -> String {
    format!("roost:fn:{function}:async")
}

/// String key: how many of the function's asynchronous calls wait for delivery (queued,
/// or waiting for a retry), as a whole number. The async worker writes it with an expiry
/// of [`crate::wire::calls::BACKLOG_TTL_MS`] that it renews, and deletes it at zero; the
/// orchestrator adds it to the function's demand, as it does the gate's held count.
pub fn backlog(function: &str) -> String {
    format!("roost:fn:{function}:backlog")
}

/// Stream: the function's asynchronous calls waiting or being delivered (consumer group
/// [`crate::wire::calls::GROUP`]); an entry is a [`crate::wire::calls::QueuedCall`],
/// deleted once its call is done or failed.
pub fn async_queue(function: &str) -> String {
    format!("roost:fn:{function}:async:queue")
}

/// List: the function's failed asynchronous calls, newest first, each a
/// [`crate::wire::calls::DeadLetter`] in JSON; at most
/// [`crate::wire::calls::DEAD_LETTERS_KEPT`].
pub fn async_dead(function: &str) -> String {
    format!("roost:fn:{function}:async:dead")
}

/// String key: the id of the call a function's caller submitted with an
/// `X-Idempotency-Key`, for [`crate::wire::calls::IDEMPOTENCY_TTL_S`].
pub fn async_idempotency(function: &str, key: &str) -> String {
    format!("roost:fn:{function}:async:key:{key}")
}

/// String key: one asynchronous call's record, a [`crate::wire::calls::CallRecord`] in
/// JSON; kept for the worker's `ROOST_ASYNC_KEEP` once the call is done or failed.
pub fn async_call(id: &str) -> String {
    format!("roost:async:call:{id}")
}

/// Set: every function that has an asynchronous-call queue (the worker reads each).
pub const ASYNC_FUNCTIONS: &str = "roost:async:functions";

/// Sorted set: the ids of asynchronous calls by submission time in milliseconds, the
/// newest [`crate::wire::calls::RECENT_KEPT`] (what `roost calls` lists).
pub const ASYNC_RECENT: &str = "roost:async:recent";

/// Sorted set: ids of finished asynchronous calls whose `X-Callback-Url` is still to be
/// called, by when (milliseconds).
pub const ASYNC_CALLBACKS: &str = "roost:async:callbacks";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced_per_function() {
        assert_eq!(ready("hello"), "roost:fn:hello:ready");
        assert_eq!(wake_lock("hello"), "roost:fn:hello:waking");
        assert_eq!(load("hello"), "roost:fn:hello:load");
        assert_eq!(replicas("hello"), "roost:fn:hello:replicas");
        assert_eq!(refusal("hello"), "roost:fn:hello:refusal");
        assert_eq!(hold_ms("hello"), "roost:fn:hello:hold_ms");
        assert_eq!(held("hello"), "roost:fn:hello:held");
        assert_eq!(async_queue("hello"), "roost:fn:hello:async:queue");
        assert_eq!(async_call("0a1b"), "roost:async:call:0a1b");
        for key in
            [ASYNC_FUNCTIONS, ASYNC_RECENT, ASYNC_CALLBACKS, FUNCTIONS, CONTROL_PLANE_STATE, WAKE_CHANNEL, READY_CHANNEL, SCALE_CHANNEL]
        {
            assert!(key.starts_with(PREFIX), "{key} must start with {PREFIX}");
        }
    }
}
