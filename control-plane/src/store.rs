//! The single writer of the model: applies changes, builds each new snapshot and
//! publishes it to every ADS stream through a `watch` channel (which always holds the
//! newest snapshot, so a slow stream skips straight to it and never misses a change).
//!
//! A model is *confirmed* once it is known to describe what runs: loaded from the saved
//! state, or handed over whole by the orchestrator ([`Store::confirm`]). Until then ADS
//! streams are held (Envoy keeps the configuration it has) and nothing is saved.

use crate::model::{Change, Function, Model, ModelError};
use crate::resources::public::PublicRoute;
use crate::resources::{self, BuildSettings, Kind, Snapshot};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The model, its generation and the published snapshot.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    settings: BuildSettings,
    snapshots: watch::Sender<Arc<Snapshot>>,
    /// The generation of every model change (the persister then reads the model).
    changes: watch::Sender<u64>,
    confirmed: watch::Sender<bool>,
}

#[derive(Debug)]
struct Inner {
    model: Model,
    generation: u64,
}

impl Store {
    /// A store holding `model` at generation 1, confirmed or not (see the module's doc).
    pub fn new(model: Model, settings: BuildSettings, confirmed: bool) -> Store {
        let snapshot = resources::build(&model, &settings, 1);
        Store {
            snapshots: watch::channel(Arc::new(snapshot)).0,
            changes: watch::channel(1).0,
            confirmed: watch::channel(confirmed).0,
            inner: Mutex::new(Inner { model, generation: 1 }),
            settings,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `changes` all together (or none, on error) and publishes the result.
    /// Returns the new generation. Only the functions touched are looked at and only
    /// their resources rebuilt (the route tables only when they change), so a change
    /// costs the same with ten functions or ten thousand.
    pub fn apply(&self, changes: &[Change]) -> Result<u64, ModelError> {
        let mut inner = self.lock();
        // Each function touched: (in Envoy, serving) and its call token before the
        // changes, and whether its settings were put.
        type Before = ((bool, PublicRoute), Option<String>, bool);
        let mut before: BTreeMap<&str, Before> = BTreeMap::new();
        for c in changes {
            let entry = before.entry(c.function()).or_insert_with(|| {
                let f = inner.model.functions.get(c.function());
                (Self::routing(f), f.and_then(|f| f.auth.clone()), false)
            });
            entry.2 |= matches!(c, Change::PutFunction { .. });
        }
        inner.model.apply_all(changes)?;
        inner.generation += 1;
        let generation = inner.generation;
        let mut snapshot = self.snapshots.borrow().with_generation(generation);
        // The route tables change when a function in Envoy changes its settings, or a
        // function gains its first replica or loses its last (the public one also when its
        // public route changes, or its call token: an `auth: token` function has its
        // refusals there, awake or not).
        let mut routes_changed = false;
        let mut public_changed = false;
        for (function, ((was_in_envoy, was_public), was_auth, settings_put)) in before {
            let f = inner.model.functions.get(function);
            let (in_envoy, public) = Self::routing(f);
            // A call token is in both tables whether the function is in Envoy or not.
            let auth_changed = was_auth.as_ref() != f.and_then(|f| f.auth.as_ref());
            routes_changed |= was_in_envoy != in_envoy || (settings_put && in_envoy) || auth_changed;
            public_changed |= was_public != public;
            resources::put_function(&mut snapshot, &inner.model, function, &self.settings);
        }
        if routes_changed {
            let routes = resources::route_table(&inner.model, &self.settings);
            snapshot.insert(Kind::Route, resources::ROUTE_CONFIG_NAME, envoy_types::util::pack_any(routes));
        }
        if self.settings.public.is_some() && (routes_changed || public_changed) {
            resources::public::put_routes(&mut snapshot, &inner.model, &self.settings);
        }
        self.snapshots.send_replace(Arc::new(snapshot));
        self.changes.send_replace(generation);
        Ok(generation)
    }

    /// Whether a function is in Envoy at all, and where the public entry sends it.
    fn routing(f: Option<&Function>) -> (bool, PublicRoute) {
        (f.is_some_and(resources::in_envoy), f.map_or(PublicRoute::Gate, resources::public::public_route))
    }

    /// Applies `changes` (each of them idempotent: function settings and endpoints that
    /// run) and marks the model confirmed: the orchestrator's hand-over of everything it
    /// runs to a control plane that started without a saved model. Held ADS streams are
    /// then served the result. On error nothing changes and the model stays unconfirmed.
    pub fn confirm(&self, changes: &[Change]) -> Result<u64, ModelError> {
        let generation = self.apply(changes)?;
        self.confirmed.send_replace(true);
        Ok(generation)
    }

    /// Whether the model is confirmed.
    pub fn is_confirmed(&self) -> bool {
        *self.confirmed.borrow()
    }

    /// Receives the confirmation (false until then; never goes back to false).
    pub fn confirmed(&self) -> watch::Receiver<bool> {
        self.confirmed.subscribe()
    }

    /// Publishes a snapshot edited by `edit`, bypassing the model: for tests and tools
    /// that need a resource the model cannot express, such as a deliberately invalid
    /// one. The next [`Store::apply`] rebuilds only what it touches, so an edited
    /// resource stays until its function changes.
    pub fn publish_edited(&self, edit: impl FnOnce(&mut Snapshot)) -> u64 {
        let mut inner = self.lock();
        inner.generation += 1;
        let mut snapshot = self.snapshots.borrow().with_generation(inner.generation);
        edit(&mut snapshot);
        self.snapshots.send_replace(Arc::new(snapshot));
        inner.generation
    }

    /// A copy of the model and its generation.
    pub fn model(&self) -> (Model, u64) {
        let inner = self.lock();
        (inner.model.clone(), inner.generation)
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Receives every new snapshot.
    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.subscribe()
    }

    /// Receives the generation of every model change (for persistence, which reads the
    /// model with [`Store::model`] only as often as it saves it).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incremental_snapshot_equals_full_rebuild_with(settings: BuildSettings) {
        let store = Store::new(Model::default(), settings.clone(), true);
        let put = |f: &str| Change::PutFunction { function: f.into(), concurrency: Some(2), timeout_ms: None, auth: None };
        let add = |f: &str, a: &str| Change::AddEndpoint { function: f.into(), address: a.into() };
        let drain = |f: &str, a: &str| Change::DrainEndpoint { function: f.into(), address: a.into() };
        let waking = |f: &str| Change::Waking { function: f.into() };
        let steps = [
            vec![put("a"), put("b"), put("c"), waking("c"), add("a", "127.0.0.1:1")],
            vec![add("c", "127.0.0.1:4")],
            vec![Change::RemoveEndpoint { function: "c".into(), address: "127.0.0.1:4".into() }],
            vec![add("b", "127.0.0.1:2")],
            vec![add("b", "127.0.0.1:3")],
            vec![drain("b", "127.0.0.1:3")],
            // Scaling up: to the gate and back, with a serving replica.
            vec![Change::Gated { function: "b".into(), gated: true }],
            vec![Change::Gated { function: "b".into(), gated: false }],
            vec![Change::RemoveFunction { function: "a".into() }],
            vec![drain("b", "127.0.0.1:2")],
            // A sleeping function gains a call token, then loses it, then goes.
            vec![Change::PutFunction {
                function: "d".into(),
                concurrency: None,
                timeout_ms: None,
                auth: Some("d-token-0123456789".into()),
            }],
            vec![Change::PutFunction { function: "d".into(), concurrency: None, timeout_ms: None, auth: None }],
            vec![Change::PutFunction {
                function: "d".into(),
                concurrency: None,
                timeout_ms: None,
                auth: Some("d-token-0123456789".into()),
            }],
            vec![Change::RemoveFunction { function: "d".into() }],
        ];
        for (i, changes) in steps.iter().enumerate() {
            let g = store.apply(changes).unwrap();
            assert_eq!(g, i as u64 + 2);
            let (model, _) = store.model();
            let full = resources::build(&model, &settings, g);
            let published = store.snapshots().borrow().clone();
            for kind in Kind::ALL {
                assert_eq!(published.of(kind), full.of(kind), "{kind:?} after step {i}");
            }
        }
    }

    #[test]
    fn incremental_snapshot_equals_full_rebuild() {
        incremental_snapshot_equals_full_rebuild_with(BuildSettings::default());
        let public = resources::PublicEntry {
            bind: "0.0.0.0:8080".parse().unwrap(),
            gate_host: "gate".into(),
            gate_port: 8081,
            max_body: 1,
            system: None,
            async_worker: None,
        };
        incremental_snapshot_equals_full_rebuild_with(BuildSettings { public: Some(public.clone()), ..BuildSettings::default() });
        // With the platform's own services: the async paths' refusals follow the call token.
        let services = resources::PublicEntry {
            system: Some(("orchestrator".into(), 18002)),
            async_worker: Some(("async-worker".into(), 8083)),
            ..public
        };
        incremental_snapshot_equals_full_rebuild_with(BuildSettings { public: Some(services), ..BuildSettings::default() });
    }

    #[test]
    fn confirm_applies_its_changes_then_confirms_and_stays_confirmed() {
        let store = Store::new(Model::default(), BuildSettings::default(), false);
        let confirmed = store.confirmed();
        let put = Change::PutFunction { function: "f".into(), concurrency: Some(1), timeout_ms: None, auth: None };
        let add = Change::AddEndpoint { function: "f".into(), address: "127.0.0.1:1".into() };
        // Changes before the hand-over are kept (a function task re-declaring itself).
        store.apply(std::slice::from_ref(&put)).unwrap();
        assert!(!store.is_confirmed());
        // A refused hand-over confirms nothing.
        assert!(store.confirm(&[Change::RemoveFunction { function: "ghost".into() }]).is_err());
        assert!(!*confirmed.borrow());
        // The same changes again are fine: the hand-over is idempotent.
        let g = store.confirm(&[put.clone(), add.clone()]).unwrap();
        assert!(*confirmed.borrow());
        assert_eq!(store.snapshots().borrow().generation, g);
        store.confirm(&[put, add]).unwrap();
        assert!(store.is_confirmed());
        assert_eq!(store.model().0.functions["f"].endpoints.len(), 1);
    }

    #[test]
    fn refused_change_publishes_nothing() {
        let store = Store::new(Model::default(), BuildSettings::default(), true);
        let rx = store.snapshots();
        let err = store.apply(&[Change::RemoveFunction { function: "ghost".into() }]);
        assert!(err.is_err());
        assert_eq!(store.generation(), 1);
        assert!(!rx.has_changed().unwrap());
    }
}
