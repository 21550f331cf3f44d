//! The lifecycle state machine, event by event, in virtual time: no runtime, no Redis,
//! no control plane, no Envoy. Each test drives [`Function::handle`] and checks the
//! effects it asks for, in order.

use super::*;
use crate::runtime::RuntimeError;
use roost_common::spec;
use std::collections::VecDeque;

const S: Duration = Duration::from_secs(1);

fn spec_yaml(version: &str, min: u32, max: u32) -> Arc<FunctionSpec> {
    let yaml = format!(
        "usable-functions:\n  f:\n    version: \"{version}\"\n    runtime: {{kind: image, image: x}}\n    scaling: {{min_replicas: {min}, max_replicas: {max}, target_concurrency: 1, idle_timeout: 10s}}\n    limits: {{timeout: 5s}}\n"
    );
    let defs = spec::parse(&yaml).unwrap_or_else(|e| panic!("test spec: {e}"));
    Arc::new(defs["f"].clone())
}

fn hash_of(spec: &FunctionSpec) -> String {
    format!("h{}", spec.version)
}

/// A function under test, its virtual clock and every effect it asked for.
struct Harness {
    f: Function,
    now: Instant,
    log: Vec<Effect>,
}

impl Harness {
    fn new(min: u32, max: u32) -> Harness {
        let spec = spec_yaml("1", min, max);
        let now = Instant::now();
        let (f, fx) = Function::new(spec.clone(), hash_of(&spec), "f-7".into(), now);
        assert!(matches!(fx[..], [Effect::Declare(_), Effect::Prepare(..), Effect::Lift]), "{fx:?}");
        let mut h = Harness { f, now, log: fx };
        h.send(Event::Declared(Ok(())));
        h.send(Event::Prepared(hash_of(&spec), Ok(())));
        h
    }

    fn status(&self) -> FunctionStatus {
        self.f.status(self.now)
    }

    /// Lets the back-off run out.
    fn wait_out_backoff(&mut self) -> Vec<Effect> {
        self.advance(BACKOFF_MAX);
        self.send(Event::Tick)
    }

    /// Handles `event`; returns its effects but the gate changes ([`Effect::Gate`]),
    /// which a control plane takes at once (each answered with [`Event::Gated`]) and only
    /// the log keeps.
    fn send(&mut self, event: Event) -> Vec<Effect> {
        let mut out = Vec::new();
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            for effect in self.f.handle(event, self.now) {
                self.log.push(effect.clone());
                match effect {
                    Effect::Gate(gated) => events.push_back(Event::Gated(gated, Ok(()))),
                    other => out.push(other),
                }
            }
        }
        out
    }

    /// The gate changes asked for since the log was last read this way.
    fn gate_changes(&mut self) -> Vec<bool> {
        let changes = self.log.iter().filter_map(|e| if let Effect::Gate(g) = e { Some(*g) } else { None }).collect();
        self.log.retain(|e| !matches!(e, Effect::Gate(_)));
        changes
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Brings a started replica `id` through probe, ACK and the ready notice.
    fn bring_up(&mut self, id: &str) -> Vec<Effect> {
        let hash = self.f.slots[id].hash.clone();
        let mut fx = self.send(Event::Started(id.into(), Ok(replica(id, &hash))));
        self.advance(Duration::from_millis(2));
        fx.extend(self.send(Event::Probed(id.into(), Ok(()))));
        self.advance(Duration::from_millis(3));
        fx.extend(self.send(Event::Registered(id.into(), Ok(()))));
        fx.extend(self.send(Event::Noticed(id.into())));
        fx
    }

    /// Takes a draining replica through the end of its drain and its stop.
    fn finish_drain(&mut self, id: &str) -> Vec<Effect> {
        let mut fx = self.send(Event::DrainFinished(id.into()));
        assert!(fx.iter().any(|e| matches!(e, Effect::Stop { replica, registered: true } if replica.id == id)), "{fx:?}");
        fx.extend(self.send(Event::Stopped(id.into())));
        fx
    }

    fn idle(&mut self) -> Vec<Effect> {
        self.send(Event::Load(Load { in_flight: 0, pending: 0, held: 0, backlog: 0, since_last_request: Some(60 * S) }))
    }

    fn load(&mut self, in_flight: u64, pending: u64) -> Vec<Effect> {
        self.send(Event::Load(Load { in_flight, pending, held: 0, backlog: 0, since_last_request: Some(Duration::ZERO) }))
    }

    fn ready_ids(&self) -> Vec<String> {
        self.status().replicas.iter().filter(|r| r.phase == ReplicaPhase::Ready).map(|r| r.id.clone()).collect()
    }
}

fn replica(id: &str, hash: &str) -> Replica {
    let n: u16 = id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    Replica {
        id: id.into(),
        function: "f".into(),
        version: hash.trim_start_matches('h').into(),
        spec_hash: hash.into(),
        address: SocketAddr::from(([127, 0, 0, 1], 9000 + n)),
        handle: format!("pid-{n}"),
    }
}

fn started_ids(fx: &[Effect]) -> Vec<String> {
    fx.iter().filter_map(|e| if let Effect::Start { id, .. } = e { Some(id.clone()) } else { None }).collect()
}

fn drained_ids(fx: &[Effect]) -> Vec<String> {
    fx.iter().filter_map(|e| if let Effect::Drain(r, _) = e { Some(r.id.clone()) } else { None }).collect()
}

fn answers(fx: &[Effect]) -> Vec<(Vec<WaiterId>, Result<WakeReport, String>)> {
    fx.iter()
        .filter_map(|e| if let Effect::Answer(w, r) = e { Some((w.clone(), r.clone().map_err(|e| e.to_string()))) } else { None })
        .collect()
}

fn failure(text: &str) -> Cause {
    Arc::new(RuntimeError::Other(text.into()))
}

#[test]
fn n_wakes_start_one_replica_and_all_are_answered_once_it_is_ready() {
    let mut h = Harness::new(0, 10);
    let mut fx = Vec::new();
    for w in 1..=5 {
        fx.extend(h.send(Event::Wake(Some(w))));
    }
    fx.extend(h.send(Event::Wake(None)));
    assert_eq!(started_ids(&fx), ["f-7-1"], "singleflight: one start for six wakes");
    assert_eq!(h.status().state, FunctionState::Waking);
    assert!(answers(&fx).is_empty(), "nobody is answered before the replica is ready");

    let fx = h.bring_up("f-7-1");
    let a = answers(&fx);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].0, [1, 2, 3, 4, 5]);
    let report = a[0].1.clone().expect("a ready replica");
    assert!(!report.already_ready);
    let phases = report.phases.expect("a cold start's phases");
    assert!((phases.readiness_ms - 2.0).abs() < 0.01 && (phases.ack_ms - 3.0).abs() < 0.01, "{phases:?}");
    // The gate is told only after Envoy's ACK, and the waiters after the gate.
    let order: Vec<&str> = h
        .log
        .iter()
        .filter_map(|e| match e {
            Effect::Register(_) => Some("register"),
            Effect::SetReady { .. } => Some("ready"),
            Effect::Answer(..) => Some("answer"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["register", "ready", "answer"]);

    let fx = h.send(Event::Wake(Some(6)));
    assert_eq!(answers(&fx), [(vec![6], Ok(WakeReport { already_ready: true, phases: None }))]);
    assert!(started_ids(&fx).is_empty());
    assert_eq!(h.status().cold_starts, 1);
}

#[test]
fn a_start_that_fails_while_waiters_hold_answers_them_with_the_reason() {
    let mut h = Harness::new(0, 10);
    h.send(Event::Wake(Some(1)));
    h.send(Event::Wake(Some(2)));
    let fx = h.send(Event::Started("f-7-1".into(), Err(failure("image missing"))));
    let a = answers(&fx);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].0, [1, 2]);
    assert!(a[0].1.as_ref().is_err_and(|e| e.contains("image missing")), "{a:?}");
    assert_eq!(h.status().state, FunctionState::Failing);
    assert!(h.status().last_error.is_some_and(|e| e.contains("image missing")));

    // After the back-off the next wake tries again; a replica that never answers its
    // probe is stopped and its waiter told why, with its last output.
    assert!(matches!(h.wait_out_backoff()[..], [Effect::Lift, Effect::ReadLoad]));
    assert_eq!(h.status().state, FunctionState::Sleeping);
    let fx = h.send(Event::Wake(Some(3)));
    assert_eq!(started_ids(&fx), ["f-7-2"]);
    h.send(Event::Started("f-7-2".into(), Ok(replica("f-7-2", "h1"))));
    let fx = h.send(Event::Probed("f-7-2".into(), Err(Some("loading the model...".into()))));
    assert!(fx.iter().any(|e| matches!(e, Effect::Stop { replica, registered: false } if replica.id == "f-7-2")));
    let a = answers(&fx);
    assert!(a[0].1.as_ref().is_err_and(|e| e.contains("did not answer /healthz") && e.contains("loading the model")), "{a:?}");
    h.send(Event::Stopped("f-7-2".into()));
    assert_eq!(h.status().state, FunctionState::Failing);
}

#[test]
fn a_failed_start_beside_another_start_leaves_the_waiters_to_it() {
    let mut h = Harness::new(0, 10);
    h.send(Event::Wake(Some(1)));
    h.send(Event::Load(Load { in_flight: 0, pending: 2, held: 0, backlog: 0, since_last_request: Some(Duration::ZERO) }));
    assert_eq!(h.status().starting, 2);
    let fx = h.send(Event::Started("f-7-1".into(), Err(failure("boom"))));
    assert!(answers(&fx).is_empty(), "the other start may still answer");
    let fx = h.bring_up("f-7-2");
    assert_eq!(answers(&fx).len(), 1);
    assert!(answers(&fx)[0].1.is_ok());
}

#[test]
fn a_replica_that_exits_before_it_is_ready_fails_its_waiters_at_once() {
    let mut h = Harness::new(0, 10);
    h.send(Event::Wake(Some(1)));
    h.send(Event::Started("f-7-1".into(), Ok(replica("f-7-1", "h1"))));
    let fx = h.send(Event::Exited("f-7-1".into(), "exit status 1".into()));
    let a = answers(&fx);
    assert!(a[0].1.as_ref().is_err_and(|e| e.contains("exited before it was ready: exit status 1")), "{a:?}");
    // What is left of it is stopped (the runtime counts it running until then).
    assert!(fx.iter().any(|e| matches!(e, Effect::Stop { replica, registered: false } if replica.id == "f-7-1")), "{fx:?}");
    // The probe that was still trying reports later and is ignored.
    assert!(h.send(Event::Probed("f-7-1".into(), Err(None))).is_empty());
    assert_eq!(h.status().state, FunctionState::Failing);

    // Exiting while Envoy takes the endpoint: the endpoint is taken back once ACKed.
    h.wait_out_backoff();
    h.send(Event::Wake(Some(2)));
    h.send(Event::Started("f-7-2".into(), Ok(replica("f-7-2", "h1"))));
    h.send(Event::Probed("f-7-2".into(), Ok(())));
    let fx = h.send(Event::Exited("f-7-2".into(), "killed".into()));
    assert!(answers(&fx)[0].1.is_err());
    let fx = h.send(Event::Registered("f-7-2".into(), Ok(())));
    assert!(matches!(fx[..], [Effect::RemoveEndpoint(a)] if a.port() == 9002), "{fx:?}");
    assert_eq!(h.status().state, FunctionState::Failing);
}

#[test]
fn a_crash_of_the_last_replica_marks_it_not_ready_and_the_next_wake_starts_another() {
    let mut h = Harness::new(0, 10);
    h.send(Event::Wake(None));
    h.bring_up("f-7-1");
    assert_eq!(h.status().state, FunctionState::Ready);
    let fx = h.send(Event::Exited("f-7-1".into(), "signal 9".into()));
    assert!(
        matches!(&fx[..], [Effect::Metric(Metric::Crash), Effect::ClearReady, Effect::Stop { replica, registered: true }, Effect::ReadLoad] if replica.id == "f-7-1"),
        "{fx:?}"
    );
    assert_eq!(h.status().state, FunctionState::Sleeping);
    assert!(h.status().last_error.is_some_and(|e| e.contains("signal 9")));
    let fx = h.idle();
    assert!(started_ids(&fx).is_empty(), "an idle function stays asleep");
    let fx = h.send(Event::Wake(Some(1)));
    assert_eq!(started_ids(&fx), ["f-7-2"]);
}

#[test]
fn a_crash_of_one_of_two_keeps_the_function_ready() {
    let mut h = Harness::new(2, 10);
    let fx = h.idle();
    assert_eq!(started_ids(&fx), ["f-7-1", "f-7-2"]);
    h.bring_up("f-7-1");
    h.bring_up("f-7-2");
    let fx = h.send(Event::Exited("f-7-1".into(), "signal 9".into()));
    assert!(!fx.iter().any(|e| matches!(e, Effect::ClearReady)), "{fx:?}");
    // min_replicas: the load reading replaces it.
    let fx = h.idle();
    assert_eq!(started_ids(&fx), ["f-7-3"]);
}

#[test]
fn drain_waits_for_requests_in_flight_before_the_stop() {
    let mut h = Harness::new(0, 10);
    h.send(Event::Wake(None));
    h.bring_up("f-7-1");
    // A request started long ago is still in flight: no scale to zero under it.
    h.advance(60 * S);
    let fx = h.send(Event::Load(Load { in_flight: 1, pending: 0, held: 0, backlog: 0, since_last_request: Some(60 * S) }));
    assert!(drained_ids(&fx).is_empty(), "{fx:?}");
    // Idle: not ready first (it is the last), then the drain.
    let fx = h.idle();
    let kinds: Vec<&str> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::ClearReady => Some("not ready"),
            Effect::Drain(..) => Some("drain"),
            Effect::Stop { .. } => Some("stop"),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["not ready", "drain"]);
    assert_eq!(h.status().state, FunctionState::Draining);
    // Nothing stops it until the drain says the requests in flight are done.
    for _ in 0..3 {
        h.advance(S);
        let fx = h.idle();
        assert!(!fx.iter().any(|e| matches!(e, Effect::Stop { .. } | Effect::Drain(..))), "{fx:?}");
    }
    h.finish_drain("f-7-1");
    assert_eq!(h.status().state, FunctionState::Sleeping);
    assert!(h.status().replicas.is_empty());
}

#[test]
fn a_wake_mid_drain_and_mid_scale_to_zero_starts_a_new_replica() {
    let mut h = Harness::new(0, 10);
    h.send(Event::Wake(None));
    h.bring_up("f-7-1");
    h.advance(60 * S);
    assert_eq!(drained_ids(&h.idle()), ["f-7-1"]);
    // Mid-drain: the draining replica takes no new request, so a wake starts another.
    let fx = h.send(Event::Wake(Some(1)));
    assert_eq!(started_ids(&fx), ["f-7-2"]);
    assert_eq!(h.status().state, FunctionState::Waking);
    // The old one finishes its drain while the new one starts (mid scale to zero).
    let fx = h.send(Event::DrainFinished("f-7-1".into()));
    assert!(answers(&fx).is_empty());
    let fx = h.bring_up("f-7-2");
    assert!(answers(&fx)[0].1.is_ok(), "{fx:?}");
    h.send(Event::Stopped("f-7-1".into()));
    assert_eq!(h.ready_ids(), ["f-7-2"]);
    assert_eq!(h.status().state, FunctionState::Ready);
}

#[test]
fn rollover_acks_the_new_replica_before_an_old_one_drains() {
    let mut h = Harness::new(0, 10);
    h.send(Event::Wake(None));
    h.bring_up("f-7-1");
    let v2 = spec_yaml("2", 0, 10);
    let fx = h.send(Event::Changed(v2.clone(), hash_of(&v2)));
    assert!(matches!(fx[..], [Effect::Declare(_), Effect::Prepare(..), Effect::ReadLoad]), "{fx:?}");
    assert!(h.status().replicas[0].outdated);
    h.send(Event::Declared(Ok(())));
    assert!(started_ids(&h.load(0, 0)).is_empty(), "nothing starts before the new definition is built");
    h.send(Event::Prepared(hash_of(&v2), Ok(())));
    let fx = h.load(0, 0);
    assert_eq!(started_ids(&fx), ["f-7-2"], "the rollover starts a replica of the new definition");
    assert!(drained_ids(&fx).is_empty(), "the old one serves until the new one is ready");
    h.send(Event::Started("f-7-2".into(), Ok(replica("f-7-2", "h2"))));
    h.send(Event::Probed("f-7-2".into(), Ok(())));
    let fx = h.send(Event::Registered("f-7-2".into(), Ok(())));
    assert!(drained_ids(&fx).is_empty(), "not before the ready notice");
    let fx = h.send(Event::Noticed("f-7-2".into()));
    assert_eq!(drained_ids(&fx), ["f-7-1"]);
    assert!(!fx.iter().any(|e| matches!(e, Effect::ClearReady)), "a replica stays ready throughout");
    h.finish_drain("f-7-1");
    assert_eq!(h.ready_ids(), ["f-7-2"]);
    assert!(started_ids(&h.load(0, 0)).is_empty(), "rolled over: nothing more to start");
}

#[test]
fn a_scaling_change_rolls_nothing_over_and_a_lowered_maximum_drains_the_excess() {
    let mut h = Harness::new(0, 10);
    let mut fx = h.send(Event::Wake(None));
    fx.extend(h.load(3, 0));
    for id in started_ids(&fx) {
        h.bring_up(&id);
    }
    assert_eq!(h.ready_ids().len(), 3);
    // The same definition with another maximum: the same replica hash (scaling is not in it).
    let max1 = spec_yaml("1", 0, 1);
    let fx = h.send(Event::Changed(max1.clone(), hash_of(&max1)));
    assert!(
        matches!(&fx[..], [Effect::Declare(_), Effect::Prepare(s, _), Effect::ReadLoad] if s.scaling.max_replicas == 1),
        "re-declared, and the runtime told the new scaling: {fx:?}"
    );
    assert!(h.send(Event::Prepared(hash_of(&max1), Ok(()))).is_empty(), "a built definition's prepare changes nothing");
    assert!(h.status().replicas.iter().all(|r| !r.outdated), "no replica is outdated");
    h.send(Event::Declared(Ok(())));
    let fx = h.load(3, 0);
    assert_eq!(drained_ids(&fx).len(), 2, "down to the new maximum at once, under load: {fx:?}");
    assert!(started_ids(&fx).is_empty());
    // The same definition again: nothing at all.
    assert!(h.send(Event::Changed(max1.clone(), hash_of(&max1))).is_empty());
}

#[test]
fn a_definition_changed_twice_mid_rollover_ends_on_the_newest_with_a_replica_always_ready() {
    let mut h = Harness::new(0, 10);
    h.send(Event::Wake(None));
    h.bring_up("f-7-1");
    let (v2, v3) = (spec_yaml("2", 0, 10), spec_yaml("3", 0, 10));
    h.send(Event::Changed(v2.clone(), hash_of(&v2)));
    h.send(Event::Prepared(hash_of(&v2), Ok(())));
    assert_eq!(started_ids(&h.load(0, 0)), ["f-7-2"]);
    h.send(Event::Changed(v3.clone(), hash_of(&v3)));
    h.send(Event::Prepared(hash_of(&v3), Ok(())));
    assert!(started_ids(&h.load(0, 0)).is_empty(), "one rollover start at a time");
    // The v2 replica arrives already outdated; it still replaces the v1 one.
    let fx = h.bring_up("f-7-2");
    assert_eq!(drained_ids(&fx), ["f-7-1"]);
    h.finish_drain("f-7-1");
    let mut rounds = 0;
    while h.status().replicas.iter().any(|r| r.outdated) {
        rounds += 1;
        assert!(rounds < 5, "the rollover converges");
        let fx = h.load(0, 0);
        let id = started_ids(&fx).pop().expect("a rollover start");
        assert_eq!(h.f.slots[&id].hash, "h3");
        let fx = h.bring_up(&id);
        for old in drained_ids(&fx) {
            h.finish_drain(&old);
        }
    }
    assert!(!h.log.iter().any(|e| matches!(e, Effect::ClearReady)), "never unready during the rollover");
    let st = h.status();
    assert_eq!(st.replicas.len(), 1);
    assert_eq!(st.replicas[0].version, "3");
}

#[test]
fn min_replicas_are_started_and_kept_when_idle() {
    let mut h = Harness::new(2, 5);
    assert!(matches!(h.send(Event::Tick)[..], [Effect::ReadLoad]));
    let fx = h.idle();
    assert_eq!(started_ids(&fx), ["f-7-1", "f-7-2"]);
    assert!(started_ids(&h.idle()).is_empty(), "two are already starting");
    h.bring_up("f-7-1");
    h.bring_up("f-7-2");
    h.advance(120 * S);
    let fx = h.idle();
    assert!(drained_ids(&fx).is_empty() && started_ids(&fx).is_empty(), "{fx:?}");
    assert_eq!(h.ready_ids().len(), 2);
}

#[test]
fn queueing_scales_up_and_the_surplus_drains_one_at_a_time_after_the_idle_timeout() {
    let mut h = Harness::new(0, 3);
    h.send(Event::Wake(None));
    h.bring_up("f-7-1");
    let fx = h.load(1, 5);
    assert_eq!(started_ids(&fx), ["f-7-2", "f-7-3"], "capped at max_replicas");
    h.bring_up("f-7-2");
    h.bring_up("f-7-3");
    // One request in flight now: two replicas are surplus, but only after idle_timeout.
    let fx = h.load(1, 0);
    assert!(drained_ids(&fx).is_empty());
    h.advance(11 * S);
    assert_eq!(drained_ids(&h.load(1, 0)).len(), 1, "one at a time");
    assert!(drained_ids(&h.load(1, 0)).is_empty(), "the surplus clock restarts");
}

#[test]
fn a_function_removed_mid_start_answers_its_waiters_stops_the_replica_and_forgets_itself() {
    let mut h = Harness::new(0, 10);
    h.send(Event::Wake(Some(1)));
    let fx = h.send(Event::Removed);
    assert!(answers(&fx)[0].1.as_ref().is_err_and(|e| e.contains("was removed")), "{fx:?}");
    assert_eq!(h.status().state, FunctionState::Removing);
    let fx = h.send(Event::Wake(Some(2)));
    assert!(answers(&fx)[0].1.is_err(), "no wake while being removed");
    let fx = h.send(Event::Started("f-7-1".into(), Ok(replica("f-7-1", "h1"))));
    assert!(matches!(&fx[..], [Effect::Stop { registered: false, .. }]), "{fx:?}");
    assert!(!h.f.ended());
    let fx = h.send(Event::Stopped("f-7-1".into()));
    assert!(matches!(fx[..], [Effect::Forget, Effect::Exit]), "{fx:?}");
    assert!(h.f.ended());
    assert!(h.send(Event::Wake(Some(3))).is_empty(), "an ended function does nothing");
}

#[test]
fn a_function_removed_while_envoy_takes_its_replica_drains_it() {
    let mut h = Harness::new(0, 10);
    h.send(Event::Wake(None));
    h.send(Event::Started("f-7-1".into(), Ok(replica("f-7-1", "h1"))));
    h.send(Event::Probed("f-7-1".into(), Ok(())));
    h.send(Event::Removed);
    let fx = h.send(Event::Registered("f-7-1".into(), Ok(())));
    assert_eq!(drained_ids(&fx), ["f-7-1"]);
    let fx = h.finish_drain("f-7-1");
    assert!(matches!(fx[fx.len() - 2..], [Effect::Forget, Effect::Exit]), "{fx:?}");
}

#[test]
fn re_added_while_being_removed_keeps_serving() {
    let mut h = Harness::new(0, 10);
    h.send(Event::Wake(None));
    h.bring_up("f-7-1");
    h.send(Event::Removed);
    let v1 = spec_yaml("1", 0, 10);
    h.send(Event::Changed(v1.clone(), hash_of(&v1)));
    let fx = h.finish_drain("f-7-1");
    assert!(!fx.iter().any(|e| matches!(e, Effect::Forget | Effect::Exit)), "{fx:?}");
    assert_eq!(started_ids(&h.send(Event::Wake(Some(1)))), ["f-7-2"]);
}

#[test]
fn shutdown_drains_everything_and_keeps_the_function_declared() {
    let mut h = Harness::new(0, 10);
    h.send(Event::Wake(None));
    h.bring_up("f-7-1");
    let fx = h.send(Event::Shutdown);
    assert_eq!(drained_ids(&fx), ["f-7-1"]);
    let fx = h.finish_drain("f-7-1");
    assert!(matches!(fx[fx.len() - 1..], [Effect::Exit]) && !fx.iter().any(|e| matches!(e, Effect::Forget)), "{fx:?}");
}

#[test]
fn an_undeclared_function_is_declared_again_on_the_tick_and_before_a_start() {
    let spec = spec_yaml("1", 0, 10);
    let now = Instant::now();
    let (mut f, _) = Function::new(spec.clone(), hash_of(&spec), "f-7".into(), now);
    f.handle(Event::Prepared(hash_of(&spec), Ok(())), now);
    f.handle(Event::Declared(Err(failure("control plane unreachable"))), now);
    assert!(f.status(now).last_error.is_some_and(|e| e.contains("unreachable")));
    assert!(matches!(f.handle(Event::Tick, now)[..], [Effect::Declare(_), Effect::ReadLoad]));
    assert!(matches!(f.handle(Event::Signal, now)[..], [Effect::ReadLoad]), "one declaration at a time");
    let fx = f.handle(Event::Wake(None), now);
    assert!(matches!(fx[..], [Effect::Start { declare: true, .. }]), "{fx:?}");
}

#[test]
fn a_quiet_function_ignores_ticks_but_reads_at_once_on_a_signal() {
    let spec = spec_yaml("1", 0, 10);
    let t0 = Instant::now();
    let (mut f, _) = Function::new(spec.clone(), hash_of(&spec), "f-7".into(), t0);
    let reads = |fx: Vec<Effect>| fx.iter().filter(|e| matches!(e, Effect::ReadLoad)).count();
    assert!(!f.quiet(), "not declared nor built yet");
    f.handle(Event::Prepared(hash_of(&spec), Ok(())), t0);
    assert!(!f.quiet(), "not declared yet");
    assert_eq!(reads(f.handle(Event::Tick, t0)), 1, "ticked while not quiet");
    f.handle(Event::Declared(Ok(())), t0);
    assert!(f.quiet(), "declared, built, asleep, nothing wanted");
    let tick = Duration::from_millis(250);
    let ticks: Vec<Effect> = (1..20).flat_map(|i| f.handle(Event::Tick, t0 + tick * i)).collect();
    assert!(ticks.is_empty(), "a quiet function does nothing on a tick: {ticks:?}");
    assert_eq!(reads(f.handle(Event::Signal, t0 + tick * 20)), 1, "a signal reads at once");
    // A load with nothing in it leaves it quiet; a wake does not.
    f.handle(Event::Load(Load::default()), t0 + tick * 20);
    assert!(f.quiet());
    f.handle(Event::Wake(None), t0 + tick * 21);
    assert!(!f.quiet(), "woken");
    let busy: usize = (22..26).map(|i| reads(f.handle(Event::Tick, t0 + tick * i))).sum();
    assert_eq!(busy, 4, "every tick reads while a replica starts (a burst is sized from what it sees)");
}

#[test]
fn a_function_with_a_minimum_a_failed_build_or_a_back_off_is_never_quiet() {
    let t0 = Instant::now();
    let declared_and_built = |spec: Arc<FunctionSpec>, build: Result<(), String>| {
        let (mut f, _) = Function::new(spec.clone(), hash_of(&spec), "f-7".into(), t0);
        f.handle(Event::Declared(Ok(())), t0);
        f.handle(Event::Prepared(hash_of(&spec), build), t0);
        f
    };
    assert!(!declared_and_built(spec_yaml("1", 1, 10), Ok(())).quiet(), "min_replicas 1 keeps ticking");
    let failed = declared_and_built(spec_yaml("1", 0, 10), Err("pip failed".into()));
    assert!(!failed.quiet(), "a failed build is asked again on ticks");
    let mut h = Harness::new(0, 10);
    assert!(h.f.quiet());
    assert_eq!(started_ids(&h.send(Event::Wake(None))), ["f-7-1"]);
    h.send(Event::Started("f-7-1".into(), Err(failure("no such file"))));
    assert!(!h.f.quiet(), "backing off: its tick lifts the refusal when the back-off ends");
    h.wait_out_backoff();
    assert!(h.f.quiet(), "the refusal lifted, asleep again");
}

#[test]
fn an_adopted_replica_serves_without_a_cold_start() {
    let mut h = Harness::new(0, 10);
    let fx = h.send(Event::Adopted(replica("f-7-9", "h1")));
    assert!(matches!(&fx[..], [Effect::SetReady { id, capacity: 1 }] if id == "f-7-9"));
    let fx = h.send(Event::Noticed("f-7-9".into()));
    assert!(matches!(fx[..], [Effect::Publish { ready: 1, declared: true }]), "{fx:?}");
    assert_eq!(h.status().cold_starts, 0);
    assert_eq!(answers(&h.send(Event::Wake(Some(1))))[0].1.as_ref().map(|r| r.already_ready), Ok(true));
}

fn refusals(fx: &[Effect]) -> Vec<Refusal> {
    fx.iter().filter_map(|e| if let Effect::Refuse(r) = e { Some(r.clone()) } else { None }).collect()
}

#[test]
fn a_wake_while_the_function_builds_is_held_until_the_build_is_done() {
    let spec = spec_yaml("1", 0, 10);
    let t0 = Instant::now();
    let (mut f, _) = Function::new(spec.clone(), hash_of(&spec), "f-7".into(), t0);
    f.handle(Event::Declared(Ok(())), t0);
    assert!(started_ids(&f.handle(Event::Wake(Some(1)), t0)).is_empty(), "no start before the build");
    assert!(started_ids(&f.handle(Event::Wake(None), t0)).is_empty());
    let st = f.status(t0 + 3 * S);
    assert_eq!((st.state, st.state_for_ms), (FunctionState::Building, Some(3000)));
    // A build of an older definition reporting late changes nothing.
    assert!(f.handle(Event::Prepared("h0".into(), Ok(())), t0).is_empty());
    let fx = f.handle(Event::Prepared(hash_of(&spec), Ok(())), t0 + 3 * S);
    assert_eq!(started_ids(&fx), ["f-7-1"], "the held wake starts one replica once built");
    assert!(answers(&fx).is_empty(), "the waiter waits for the replica");
}

#[test]
fn a_failed_build_answers_callers_at_once_and_is_tried_again_only_when_something_changed() {
    let spec = spec_yaml("1", 0, 10);
    let t0 = Instant::now();
    let (mut f, _) = Function::new(spec.clone(), hash_of(&spec), "f-7".into(), t0);
    f.handle(Event::Declared(Ok(())), t0);
    f.handle(Event::Wake(Some(1)), t0);
    let pip = "ERROR: No matching distribution found for nosuchpackage".to_string();
    let fx = f.handle(Event::Prepared(hash_of(&spec), Err(pip.clone())), t0);
    let a = answers(&fx);
    assert!(a[0].1.as_ref().is_err_and(|e| e.contains("build failed") && e.contains("nosuchpackage")), "{a:?}");
    let r = refusals(&fx);
    assert_eq!((r[0].status, r[0].state.as_str(), r[0].retry_after_s), (503, "failing", None));
    assert_eq!(r[0].reason, pip);
    let st = f.status(t0);
    assert_eq!((st.state, st.reason.as_deref()), (FunctionState::Failing, Some(pip.as_str())));
    // Callers are answered at once; nothing starts.
    let fx = f.handle(Event::Wake(Some(2)), t0);
    assert!(started_ids(&fx).is_empty() && answers(&fx)[0].1.is_err(), "{fx:?}");
    // The build is asked again every few seconds; the same answer changes nothing.
    let fx = f.handle(Event::Tick, t0 + REBUILD_CHECK);
    assert!(fx.iter().any(|e| matches!(e, Effect::Prepare(..))), "{fx:?}");
    assert!(f.handle(Event::Prepared(hash_of(&spec), Err(pip)), t0 + REBUILD_CHECK).is_empty());
    // The folder was fixed: the build succeeds, the refusal is lifted, the next request wakes it.
    let fx = f.handle(Event::Prepared(hash_of(&spec), Ok(())), t0 + 2 * REBUILD_CHECK);
    assert!(fx.iter().any(|e| matches!(e, Effect::Lift)), "{fx:?}");
    assert_eq!(f.status(t0).state, FunctionState::Sleeping);
    assert_eq!(started_ids(&f.handle(Event::Wake(None), t0 + 2 * REBUILD_CHECK)), ["f-7-1"]);
}

#[test]
fn failed_starts_back_off_doubling_to_a_minute_and_a_new_definition_resets_it() {
    let mut h = Harness::new(0, 10);
    let mut delays = Vec::new();
    for n in 1..=8u32 {
        let fx = h.send(Event::Wake(Some(u64::from(n))));
        let id = started_ids(&fx).pop().unwrap_or_else(|| panic!("start {n}: {fx:?}"));
        h.send(Event::Started(id.clone(), Ok(replica(&id, "h1"))));
        let fx = h.send(Event::Exited(id.clone(), "exit status 1; last output:\nModuleNotFoundError: No module named 'nope'".into()));
        let a = answers(&fx);
        assert!(a[0].1.as_ref().is_err_and(|e| e.contains("ModuleNotFoundError")), "{a:?}");
        let r = refusals(&fx).pop().expect("refused");
        assert_eq!((r.status, r.state.as_str()), (502, "failing"));
        assert!(r.reason.contains("No module named 'nope'"), "{r:?}");
        delays.push(r.retry_after_s.unwrap());
        // During the back-off callers are answered at once and no replica starts.
        h.advance(Duration::from_millis(500));
        let fx = h.send(Event::Wake(Some(100)));
        assert!(started_ids(&fx).is_empty(), "{fx:?}");
        assert!(answers(&fx)[0].1.as_ref().is_err_and(|e| e.contains("no replica starts for")), "{fx:?}");
        assert!(started_ids(&h.load(0, 3)).is_empty(), "queued load starts nothing during a back-off either");
        let st = h.status();
        assert_eq!(st.state, FunctionState::Failing);
        assert!(st.retry_in_ms.is_some_and(|ms| ms <= delays[n as usize - 1] * 1000 - 500), "{st:?}");
        h.send(Event::Stopped(id));
        let fx = h.wait_out_backoff();
        assert!(fx.iter().any(|e| matches!(e, Effect::Lift)), "{fx:?}");
    }
    assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
    // A new definition starts afresh: no back-off, the first failure waits 1 s again.
    let fx = h.send(Event::Wake(Some(200)));
    let id = started_ids(&fx).pop().unwrap();
    h.send(Event::Started(id.clone(), Ok(replica(&id, "h1"))));
    h.send(Event::Exited(id, "exit status 1".into()));
    let v2 = spec_yaml("2", 0, 10);
    let fx = h.send(Event::Changed(v2.clone(), hash_of(&v2)));
    assert!(fx.iter().any(|e| matches!(e, Effect::Lift)), "{fx:?}");
    h.send(Event::Prepared(hash_of(&v2), Ok(())));
    let fx = h.send(Event::Wake(None));
    let id = started_ids(&fx).pop().expect("starts at once after the change");
    h.send(Event::Started(id.clone(), Ok(replica(&id, "h2"))));
    let fx = h.send(Event::Exited(id, "exit status 1".into()));
    assert_eq!(refusals(&fx)[0].retry_after_s, Some(1));
}

#[test]
fn a_replica_that_becomes_ready_ends_the_crash_loop() {
    let mut h = Harness::new(0, 10);
    h.send(Event::Wake(None));
    h.send(Event::Started("f-7-1".into(), Ok(replica("f-7-1", "h1"))));
    h.send(Event::Exited("f-7-1".into(), "exit status 1".into()));
    h.wait_out_backoff();
    h.send(Event::Wake(None));
    h.bring_up("f-7-2");
    assert_eq!(h.status().state, FunctionState::Ready);
    assert_eq!(h.f.failures, 0);
    // A crash of a ready replica is not a failed start: no refusal.
    let fx = h.send(Event::Exited("f-7-2".into(), "signal 9".into()));
    assert!(refusals(&fx).is_empty(), "{fx:?}");
    assert_eq!(started_ids(&h.send(Event::Wake(None))), ["f-7-3"]);
}

#[test]
fn a_control_plane_that_lost_the_function_gets_it_and_its_endpoints_back() {
    let mut h = Harness::new(0, 10);
    h.send(Event::Wake(None));
    h.bring_up("f-7-1");
    let address = replica("f-7-1", "h1").address;
    // What it routes is what runs: nothing to do.
    assert!(h.send(Event::Routed(Some(vec![address]))).is_empty());
    // It restarted without its saved model: the function is declared again and the ready
    // replica's endpoint added back, once, until that is done.
    let fx = h.send(Event::Routed(None));
    assert!(matches!(&fx[..], [Effect::Restore(_, rs)] if rs.len() == 1 && rs[0].id == "f-7-1"), "{fx:?}");
    assert!(h.send(Event::Routed(None)).is_empty(), "one restore at a time");
    h.send(Event::Declared(Ok(())));
    // It knows the function but lost an endpoint: only that is added back.
    let fx = h.send(Event::Routed(Some(vec![])));
    assert!(matches!(&fx[..], [Effect::Restore(_, rs)] if rs.len() == 1), "{fx:?}");
    h.send(Event::Declared(Ok(())));
    // A draining replica is not added back.
    h.idle();
    h.advance(60 * S);
    let fx = h.idle();
    assert_eq!(drained_ids(&fx), ["f-7-1"]);
    assert!(matches!(&h.send(Event::Routed(None))[..], [Effect::Restore(_, rs)] if rs.is_empty()));
}

#[test]
fn a_burst_held_at_the_gate_starts_every_replica_it_needs_at_once() {
    // 200 requests held while the function sleeps; one request per replica, at most 10.
    let mut h = Harness::new(0, 10);
    let fx = h.send(Event::Wake(None));
    assert_eq!(started_ids(&fx).len(), 1, "the wake starts one");
    let fx = h.send(Event::Load(Load { in_flight: 0, pending: 0, held: 200, backlog: 0, since_last_request: None }));
    assert_eq!(started_ids(&fx).len(), 9, "the held count starts the other nine in the same step");
    assert_eq!(h.status().starting, 10);
    let fx = h.send(Event::Load(Load { in_flight: 0, pending: 0, held: 200, backlog: 0, since_last_request: None }));
    assert!(started_ids(&fx).is_empty(), "never above max_replicas");
    // Each replica that becomes ready tells the gate the capacity of all ready ones.
    let capacities: Vec<u32> = ["f-7-1", "f-7-2", "f-7-3"]
        .iter()
        .flat_map(|id| h.bring_up(id))
        .filter_map(|e| match e {
            Effect::SetReady { capacity, .. } => Some(capacity),
            _ => None,
        })
        .collect();
    assert_eq!(capacities, [1, 2, 3]);
    // Held requests count against idleness: nothing drains while any are held.
    h.advance(60 * S);
    let fx = h.send(Event::Load(Load { in_flight: 0, pending: 0, held: 1, backlog: 0, since_last_request: Some(60 * S) }));
    assert!(!fx.iter().any(|e| matches!(e, Effect::Drain(..))), "{fx:?}");
}

#[test]
fn a_new_replica_never_takes_the_id_of_an_adopted_one() {
    let mut h = Harness::new(0, 10);
    // Adopted from an orchestrator before this one, whose ids happen to be this one's.
    h.send(Event::Adopted(replica("f-7-1", "h1")));
    h.send(Event::Adopted(replica("f-7-2", "h1")));
    let fx = h.send(Event::Load(Load { in_flight: 0, pending: 3, held: 0, backlog: 0, since_last_request: Some(Duration::ZERO) }));
    assert_eq!(started_ids(&fx), ["f-7-3"], "{fx:?}");
    assert_eq!((h.status().replicas.len(), h.status().starting), (2, 1), "both adopted kept, one starting");
}

#[test]
fn only_the_first_replica_from_zero_tells_the_control_plane_the_function_is_waking() {
    let waking = |fx: &[Effect]| {
        fx.iter().filter_map(|e| if let Effect::Start { waking, .. } = e { Some(*waking) } else { None }).collect::<Vec<_>>()
    };
    let mut h = Harness::new(0, 20);
    assert_eq!(waking(&h.send(Event::Wake(None))), [true], "from zero: not in Envoy yet");
    // More replicas while the first still starts: the first already told it.
    let more = waking(&h.load(5, 5));
    assert!(!more.is_empty() && more.iter().all(|w| !w), "{more:?}");
    for id in started_ids(&h.log.clone()) {
        h.bring_up(&id);
    }
    h.advance(S);
    let later = waking(&h.load(20, 20));
    assert!(!later.is_empty() && later.iter().all(|w| !w), "a registered replica keeps the function in Envoy: {later:?}");
}

#[test]
fn a_burst_from_zero_stays_in_the_gate_until_the_function_settles() {
    let mut h = Harness::new(0, 10);
    let fx = h.send(Event::Wake(None));
    assert!(matches!(&fx[..], [Effect::Start { waking: true, .. }]), "the waking change gates it: {fx:?}");
    // The first replica is ready before most of the burst has arrived.
    h.bring_up("f-7-1");
    assert_eq!(h.gate_changes(), Vec::<bool>::new(), "gated since the wake: nothing to send");
    // The rest of it arrives in the gate, which holds what the replica has no room for.
    h.advance(Duration::from_millis(50));
    let fx = h.send(Event::Load(Load { in_flight: 1, pending: 0, held: 150, backlog: 0, since_last_request: Some(Duration::ZERO) }));
    let mut ids = started_ids(&fx);
    assert_eq!(ids.len(), 9);
    let last = ids.pop().unwrap();
    for id in ids {
        h.advance(Duration::from_millis(400));
        h.bring_up(&id);
        h.send(Event::Tick);
    }
    assert_eq!(h.gate_changes(), Vec::<bool>::new(), "still gated while replicas start and become ready");
    // Every replica it may have is ready: nothing left to wait for in the gate.
    h.bring_up(&last);
    assert_eq!(h.gate_changes(), [false]);
}

#[test]
fn a_function_below_its_maximum_goes_direct_once_settled_and_back_to_the_gate_when_requests_wait() {
    let mut h = Harness::new(0, 3);
    h.send(Event::Wake(None));
    h.bring_up("f-7-1");
    h.advance(admission::SETTLE / 2);
    h.load(1, 0);
    assert_eq!(h.gate_changes(), Vec::<bool>::new(), "not settled yet");
    h.advance(admission::SETTLE / 2);
    h.send(Event::Tick);
    assert_eq!(h.gate_changes(), [false], "settled: straight to its replica");
    h.load(1, 0);
    assert_eq!(h.gate_changes(), Vec::<bool>::new(), "busy, nothing waiting: stays direct");
    // Requests queue in Envoy (a burst on a warm function): later ones wait in the gate
    // for the replica that starts.
    let fx = h.load(1, 4);
    assert_eq!(started_ids(&fx), ["f-7-2", "f-7-3"]);
    assert_eq!(h.gate_changes(), [true]);
    h.bring_up("f-7-2");
    h.advance(admission::SETTLE);
    h.send(Event::Tick);
    assert_eq!(h.gate_changes(), Vec::<bool>::new(), "one still starting");
    h.bring_up("f-7-3");
    assert_eq!(h.gate_changes(), [false], "every replica it may have is ready");
}

#[test]
fn the_gate_learns_the_capacity_that_is_left_when_a_replica_goes() {
    let mut h = Harness::new(0, 3);
    let mut fx = h.send(Event::Wake(None));
    fx.extend(h.load(0, 3));
    for id in started_ids(&fx) {
        h.bring_up(&id);
    }
    let quiet = Load { in_flight: 1, since_last_request: Some(Duration::ZERO), ..Load::default() };
    h.send(Event::Load(quiet));
    h.advance(60 * S);
    let fx = h.send(Event::Load(quiet));
    let capacities: Vec<u32> =
        fx.iter().filter_map(|e| if let Effect::SetReady { capacity, .. } = e { Some(*capacity) } else { None }).collect();
    assert_eq!((drained_ids(&fx).len(), capacities), (1, vec![2]), "a surplus replica drains: {fx:?}");
    let fx = h.send(Event::Exited("f-7-2".into(), "signal 9".into()));
    assert!(fx.iter().any(|e| matches!(e, Effect::SetReady { capacity: 1, .. })), "a crash: {fx:?}");
}
