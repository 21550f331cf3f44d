//! Containers prepared ahead of time, so a cold start skips the create (and, with warm
//! spares, the start and the Python start).
//!
//! Cold starts: each function has one spare container prepared ahead of time. With warm
//! spares (the default) the spare is started, probed ready and then paused, so a cold
//! start is an `unpause` (about 15 ms) instead of a `start` and a Python start (about
//! 0.5 s on a 2-vCPU VM). A paused container uses no CPU; it keeps its memory (about
//! 20 MB for the Python runtime). Without warm spares the spare is only created.
//!
//! A cold start takes the spare and a new one is prepared in the background; there is
//! at most one preparation per function at a time.
//!
//! Which functions keep a spare is the budget's choice (`ROOST_SPARE_MEMORY`, `budget`):
//! on every prepare and every start the spares are chosen again
//! from each function's recent starts and what its spare was measured to hold; a chosen
//! function without one gets one prepared, and a ready spare no longer chosen (or of a
//! definition no longer current) is removed.
//!
//! A replica's container is recycled: when it stops and its function keeps a spare
//! but has none, it is paused and becomes that spare, so a function that goes to zero
//! and back costs no new container (and its next cold start finds a spare at once
//! instead of waiting for one being prepared). A spare is prepared only for a function
//! with no replica running; one that runs gets its replica back as the spare. A cold start that comes while the
//! spare is still being prepared waits for it (bounded) and takes it, rather than
//! starting a second container beside the preparation; only when no spare comes (the
//! preparation failed, or another cold start waits for it) does it create and start a
//! container of its own.
//!
//! Bursts: a function whose recent calls needed several replicas at once keeps, within
//! the budget, a spare slot for each (`budget`: as many as its largest recent burst
//! started). Only the first is prepared ahead of time; the others are filled by the
//! burst's own replicas, paused as they stop, so the next burst unpauses them all
//! instead of creating and starting containers while it waits. A start takes the first
//! spare if ready, else any other ready one, else waits for the first's preparation.

use super::budget::{self, Candidate, History, DEFAULT_SPARE_BYTES, MAX_SPARES_EACH};
use super::container::{create, remove, warm_up, WARM_UP_DEADLINE};
use super::{ContainerError, DockerRuntime};
use bollard::Docker;
use futures::StreamExt;
use roost_common::spec::FunctionSpec;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// A container prepared ahead of time.
#[derive(Debug, Clone)]
pub(super) struct Spare {
    pub(super) container: String,
    pub(super) label_id: String,
    /// Started, probed ready and paused, at this address; `None`: only created.
    pub(super) warm: Option<SocketAddr>,
    /// Its warm-up saw the container exit (the function fails as it starts): how, with its
    /// last lines. The cold start that claims it fails at once with this instead of
    /// starting another container to watch it fail (the next start tries again).
    pub(super) died: Option<String>,
}

/// The slot of a definition's `rank`-th spare: its hash for the first (the one prepared
/// ahead of time), `<hash>+<rank>` for those a burst's recycled replicas fill.
pub(super) fn slot_key(hash: &str, rank: usize) -> String {
    if rank == 0 {
        hash.to_string()
    } else {
        format!("{hash}+{rank}")
    }
}

/// How long a cold start waits for the spare being prepared: its warm-up deadline and a
/// margin for the engine's create, start and pause calls.
pub(super) const SPARE_WAIT: Duration = Duration::from_secs(WARM_UP_DEADLINE.as_secs() + 10);

/// How long a stopping replica may take to answer its readiness path to be kept as the
/// spare.
const RECYCLE_PROBE: Duration = Duration::from_millis(300);

/// What the spare budget decides on, and what it decided.
#[derive(Debug, Default)]
pub(super) struct SpareBook {
    /// Each function's newest prepared definition, in the order functions were first
    /// prepared (ties of the budget go by it).
    current: Vec<Current>,
    /// Each function's recent starts.
    histories: HashMap<String, History>,
    /// What each function's paused spare was measured to hold, in bytes.
    sizes: HashMap<String, u64>,
    /// The definition hashes chosen to keep a spare.
    wanted: HashSet<String>,
    /// Replicas running per definition hash (started and not stopped by this runtime).
    running: HashMap<String, usize>,
}

impl SpareBook {
    /// Whether `hash` has a replica running that, with recycling, becomes its spare when
    /// it stops (so no other is prepared meanwhile).
    fn runs_its_spare(&self, hash: &str, recycle: bool) -> bool {
        recycle && self.running.get(hash).copied().unwrap_or(0) > 0
    }
}

#[derive(Debug, Clone)]
struct Current {
    spec: FunctionSpec,
    hash: String,
    image: String,
}

impl DockerRuntime {
    /// Remembers a function's newest prepared definition (the one its spare is for). The
    /// same definition with a new image (its folder was edited) removes the spares of the
    /// old one: the next start runs the new code.
    pub(super) fn note_prepared(&self, spec: &FunctionSpec, spec_hash: &str, image: &str) {
        let entry = Current { spec: spec.clone(), hash: spec_hash.to_string(), image: image.to_string() };
        let rebuilt = {
            let mut book = self.book.lock().unwrap();
            match book.current.iter_mut().find(|c| c.spec.name == spec.name) {
                Some(c) => {
                    let rebuilt = c.hash == spec_hash && c.image != image;
                    *c = entry;
                    rebuilt
                }
                None => {
                    book.current.push(entry);
                    false
                }
            }
        };
        if rebuilt {
            while let Some(spare) = self.take_any_ready(spec_hash) {
                info!(function = %spec.name, image, "the function's image was rebuilt: its spare of the old one goes");
                self.discard(spare);
            }
        }
    }

    /// Removes a ready spare taken from its slot, in the background.
    fn discard(&self, spare: Spare) {
        self.own_spares.lock().unwrap().remove(&spare.label_id);
        let docker = self.docker.clone();
        self.tasks.spawn(async move { remove(&docker, &spare.container).await });
    }

    /// Counts a start of `function` (a call that needed a container).
    pub(super) fn note_start(&self, function: &str) {
        self.book.lock().unwrap().histories.entry(function.to_string()).or_default().record(std::time::Instant::now());
    }

    /// Counts a replica of `spec_hash` running (`+1`) or stopped (`-1`).
    pub(super) fn note_running(&self, spec_hash: &str, delta: isize) {
        let mut book = self.book.lock().unwrap();
        let n = book.running.entry(spec_hash.to_string()).or_default();
        *n = n.saturating_add_signed(delta);
    }

    /// Keeps a stopping replica's container as its function's spare, paused, when the
    /// budget keeps a spare for it and it has none. True when it did (or removed the
    /// container because the slot was filled meanwhile): nothing left to stop.
    pub(super) async fn recycle(&self, replica: &super::Replica) -> bool {
        let current = {
            let book = self.book.lock().unwrap();
            let current = book.current.iter().find(|c| c.hash == replica.spec_hash && book.wanted.contains(&c.hash));
            current.map(|c| (c.spec.readiness_path.clone(), c.image.clone()))
        };
        let Some((readiness, image)) = current.filter(|_| self.config.warm_spares && self.config.recycle) else { return false };
        // The definition's wanted slots (a burst's replicas fill the slots its history
        // keeps, one each, as they stop); none free: nothing to keep it for.
        let slots: Vec<String> = {
            let book = self.book.lock().unwrap();
            (0..MAX_SPARES_EACH).map(|rank| slot_key(&replica.spec_hash, rank)).take_while(|k| book.wanted.contains(k)).collect()
        };
        let held = self.spares.keys();
        if slots.iter().all(|k| held.contains(k)) {
            return false;
        }
        // Only a replica that answers its readiness path now (not one that failed its
        // probe, crashed or hangs) becomes the next cold start's spare.
        if crate::probe::until_ready(replica.address, &readiness, Duration::from_millis(10), RECYCLE_PROBE).await.is_none() {
            return false;
        }
        // Nor one someone runs a command in (`docker exec`): pausing would freeze their
        // session, stopping ends it. Nor one of an older image (its folder was edited
        // since it started).
        match self.docker.inspect_container(&replica.handle, None::<bollard::query_parameters::InspectContainerOptions>).await {
            Ok(c)
                if c.exec_ids.as_ref().is_none_or(|ids| ids.is_empty())
                    && c.config.as_ref().and_then(|c| c.image.as_deref()) == Some(image.as_str()) => {}
            _ => return false,
        }
        // The label it was created with: a spare's own id (mapped to the replica's), or
        // the replica's id. Kept from `list` while paused; its exit no longer names the
        // replica.
        let label_id = {
            let mut aliases = self.aliases.lock().unwrap();
            let label = aliases.iter().find(|(_, id)| **id == replica.id).map(|(label, _)| label.clone());
            if let Some(l) = &label {
                aliases.remove(l);
            }
            label.unwrap_or_else(|| replica.id.clone())
        };
        self.own_spares.lock().unwrap().insert(label_id.clone());
        if let Err(e) = self.docker.pause_container(&replica.handle).await {
            debug!(replica = %replica.id, error = %e, "cannot pause the replica to keep it as the spare; stopping it");
            self.own_spares.lock().unwrap().remove(&label_id);
            return false;
        }
        let spare = Spare { container: replica.handle.clone(), label_id, warm: Some(replica.address), died: None };
        match self.spares.offer(&slots, spare) {
            Ok(()) => {
                let (docker, book, container, name) =
                    (self.docker.clone(), self.book.clone(), replica.handle.clone(), replica.function.clone());
                self.tasks.spawn(async move {
                    if let Some(bytes) = held_memory(&docker, &container).await {
                        book.lock().unwrap().sizes.insert(name, bytes);
                    }
                });
                true
            }
            Err(spare) => {
                self.own_spares.lock().unwrap().remove(&spare.label_id);
                remove(&self.docker, &spare.container).await;
                true
            }
        }
    }

    /// A ready spare of `spec_hash` for a start: the first one's if ready, else one a
    /// burst left; `None` when neither is (the caller then claims the first, waiting for
    /// its preparation).
    pub(super) fn take_any_ready(&self, spec_hash: &str) -> Option<Spare> {
        (0..MAX_SPARES_EACH).find_map(|rank| self.spares.take_ready(&slot_key(spec_hash, rank)))
    }

    /// Lets go of a function no longer declared: its definition leaves the budget, its
    /// history and measured size go, and the rebalance removes its spare (one still being
    /// prepared is removed when it is ready) and gives its share to the next functions.
    pub(super) fn forget_function(&self, function: &str) {
        {
            let mut book = self.book.lock().unwrap();
            book.current.retain(|c| c.spec.name != function);
            book.histories.remove(function);
            book.sizes.remove(function);
        }
        self.rebalance();
    }

    /// Chooses the spares again: prepares the chosen ones that have none, removes ready
    /// spares no longer chosen.
    pub(super) fn rebalance(&self) {
        let now = std::time::Instant::now();
        let (wanted, missing) = {
            let mut book = self.book.lock().unwrap();
            let book = &mut *book;
            // Spares beyond the first are only ever recycled replicas (a burst's, as it
            // scales down): none without recycling.
            let bursts = self.config.recycle && self.config.warm_spares;
            let candidates: Vec<Candidate<String>> = book
                .current
                .iter()
                .flat_map(|c| {
                    let history = book.histories.get(&c.spec.name);
                    let score = history.map_or(0.0, |h| h.score(now));
                    let bytes = book.sizes.get(&c.spec.name).copied().unwrap_or(DEFAULT_SPARE_BYTES);
                    let burst = if bursts { history.map_or(0, |h| h.burst(now)) } else { 0 };
                    let each = burst.min(c.spec.scaling.max_replicas as usize).clamp(1, MAX_SPARES_EACH);
                    (0..each).map(move |rank| Candidate { key: slot_key(&c.hash, rank), score, bytes, rank })
                })
                .collect();
            let wanted = budget::choose(&candidates, self.config.spare_memory);
            if wanted != book.wanted {
                debug!(spares = wanted.len(), functions = candidates.len(), "spares chosen again");
            }
            book.wanted = wanted.clone();
            // With recycling, a function with a replica running gets that replica back as
            // its spare; without, its next spare is prepared at once.
            let recycle = self.config.recycle;
            let idle = |c: &&Current| !book.runs_its_spare(&c.hash, recycle);
            let missing: Vec<Current> = book.current.iter().filter(|c| wanted.contains(&c.hash)).filter(idle).cloned().collect();
            (wanted, missing)
        };
        for c in missing {
            self.spawn_spare(&c.spec, &c.hash, &c.image); // nothing when one is ready or being prepared
        }
        for key in self.spares.keys().into_iter().filter(|k| !wanted.contains(k)) {
            if let Some(spare) = self.spares.take_ready(&key) {
                self.discard(spare);
            }
        }
    }

    /// Prepares a spare container for `spec_hash` in the background, unless one is ready
    /// or being prepared, or the budget does not keep one for it: created, then (with
    /// warm spares) started, probed ready and paused, and what it holds measured. A spare
    /// that cannot be warmed is replaced by a created one.
    pub(super) fn spawn_spare(&self, spec: &FunctionSpec, spec_hash: &str, image: &str) {
        if !self.book.lock().unwrap().wanted.contains(spec_hash) || self.spares.holds(spec_hash) {
            return;
        }
        // Begun now when nothing else runs or starts (a start that follows takes it);
        // else queued for its turn (priority.rs).
        let begun = match self.priority.turn_now() {
            Some(turn) => match self.spares.begin(spec_hash) {
                Some(preparation) => Some((turn, preparation)),
                None => return,
            },
            None if self.priority.enqueue(spec_hash) => None,
            None => return,
        };
        let (docker, config, own, book) = (self.docker.clone(), self.config.clone(), self.own_spares.clone(), self.book.clone());
        let (spares, priority) = (self.spares.clone(), self.priority.clone());
        let (spec, hash, image) = (spec.clone(), spec_hash.to_string(), image.to_string());
        self.tasks.spawn(async move {
            let (_turn, preparation) = match begun {
                Some(begun) => begun,
                None => {
                    // Its turn: alone, and after the starts in flight.
                    let turn = priority.turn(&hash).await;
                    {
                        let book = book.lock().unwrap();
                        // Chosen away while it waited, or its function started a replica
                        // meanwhile (with recycling, that replica becomes the spare when it stops).
                        if !book.wanted.contains(&hash) || book.runs_its_spare(&hash, config.recycle) {
                            return;
                        }
                    }
                    let Some(preparation) = spares.begin(&hash) else { return };
                    (turn, preparation)
                }
            };
            let label_id = format!(
                "{}-spare-{:x}",
                spec.name,
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
            );
            own.lock().unwrap().insert(label_id.clone());
            let mut created = create(&docker, &config, &spec, &hash, &image, &label_id).await;
            let mut warm = None;
            let mut died = None;
            if let (Ok(container), true) = (&created, config.warm_spares) {
                match warm_up(&docker, &config, &spec, container).await {
                    Ok(address) => {
                        warm = Some(address);
                        if let Some(bytes) = held_memory(&docker, container).await {
                            book.lock().unwrap().sizes.insert(spec.name.clone(), bytes);
                        }
                    }
                    Err(ContainerError::ExitedWarmingUp(how)) => {
                        warn!(function = %spec.name, how, "the spare exited as it started: the function fails at start");
                        died = Some(how);
                    }
                    Err(e) => {
                        warn!(function = %spec.name, error = %e, "cannot keep a warm (paused) spare; keeping a created one");
                        remove(&docker, container).await;
                        created = create(&docker, &config, &spec, &hash, &image, &label_id).await;
                    }
                }
            }
            match created {
                Ok(container) => {
                    // Handed back after `close`: removed, never left behind.
                    let left = preparation.finish(Some(Spare { container, label_id, warm, died })).or_else(|| {
                        // Chosen away, or its function removed or rebuilt, while it was prepared.
                        let book = book.lock().unwrap();
                        let unwanted = !book.wanted.contains(&hash) || !book.current.iter().any(|c| c.hash == hash && c.image == image);
                        unwanted.then(|| spares.take_ready(&hash)).flatten()
                    });
                    if let Some(left) = left {
                        own.lock().unwrap().remove(&left.label_id);
                        remove(&docker, &left.container).await;
                    }
                }
                Err(e) => {
                    warn!(function = %spec.name, error = %e, "cannot create a spare container");
                    own.lock().unwrap().remove(&label_id);
                    // A failed preparation hands nothing back: there is nothing to remove.
                    let _ = preparation.finish(None);
                }
            }
        });
    }
}

/// The memory a (paused) container holds, as `docker stats` counts it: its cgroup's usage
/// less the page cache it could give back (`inactive_file`); `None` if the engine does
/// not say.
pub async fn held_memory(docker: &Docker, container: &str) -> Option<u64> {
    let options = bollard::query_parameters::StatsOptionsBuilder::default().stream(false).one_shot(true).build();
    let stats = docker.stats(container, Some(options)).next().await?.ok()?;
    let memory = stats.memory_stats?;
    let usage = memory.usage?;
    let inactive = memory.stats.as_ref().and_then(|s| s.get("inactive_file").or_else(|| s.get("total_inactive_file")).copied());
    Some(usage.saturating_sub(inactive.unwrap_or(0)))
}

/// Each definition hash's spare: ready, or being prepared. Pure bookkeeping (no Docker),
/// so that `start`, `spawn_spare` and `close` agree on it without races:
/// - at most one preparation per hash: [`SpareSlots::begin`] refuses while a spare is
///   ready or being prepared;
/// - a claim during a preparation waits for it (once, bounded) and takes what it made;
///   only one claim waits on a preparation (it reserves the spare), the others fall
///   back at once instead of waiting for a spare they would not get;
/// - after [`SpareSlots::close`] nothing is kept: a preparation that ends is handed its
///   spare back to remove, and a claim waiting on it wakes and falls back.
pub(super) struct SpareSlots<T> {
    inner: Mutex<SlotsInner<T>>,
}

struct SlotsInner<T> {
    slots: HashMap<String, Slot<T>>,
    closed: bool,
    /// Identifies preparations, so a late end or release never touches a newer slot.
    next_id: u64,
}

enum Slot<T> {
    /// Prepared and not taken. `reserved`: the claim that waited on its preparation is
    /// about to take it; other claims leave it.
    Ready { spare: T, id: u64, reserved: bool },
    /// Being prepared. `done` is never sent on: it is dropped when the slot leaves this
    /// state (prepared, failed, or closed), which wakes every receiver, even one that
    /// subscribed just before (a watch receiver sees a closed channel at once: no lost
    /// wake-up). `reserved`: a claim waits on it.
    Preparing { id: u64, done: watch::Sender<()>, reserved: bool },
}

/// What a claim got.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Claim<T> {
    /// A spare that was ready.
    Ready(T),
    /// The spare of the preparation the claim waited for.
    Prepared(T),
    /// None: none ready, the preparation failed, timed out or was closed, or another
    /// claim has the spare.
    Missing,
}

impl<T> SpareSlots<T> {
    pub(super) fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(SpareSlots { inner: Mutex::new(SlotsInner { slots: HashMap::new(), closed: false, next_id: 0 }) })
    }

    /// Whether `key` has a spare ready or being prepared.
    pub(super) fn holds(&self, key: &str) -> bool {
        self.inner.lock().unwrap().slots.contains_key(key)
    }

    /// Starts preparing `key`'s spare, unless one is ready or being prepared, or the
    /// slots are closed. The preparation ends with [`Preparation::finish`]; dropped
    /// unfinished (a panic), it counts as failed.
    fn begin(self: &std::sync::Arc<Self>, key: &str) -> Option<Preparation<T>> {
        let mut inner = self.inner.lock().unwrap();
        if inner.closed || inner.slots.contains_key(key) {
            return None;
        }
        inner.next_id += 1;
        let id = inner.next_id;
        inner.slots.insert(key.to_string(), Slot::Preparing { id, done: watch::channel(()).0, reserved: false });
        Some(Preparation { slots: self.clone(), key: key.to_string(), id, finished: false })
    }

    /// Takes `key`'s spare: a ready one at once; one being prepared (that no other claim
    /// waits for) once its preparation ends, waiting at most `wait` and only once.
    pub(super) async fn claim(&self, key: &str, wait: Duration) -> Claim<T> {
        let (id, mut done) = {
            let mut inner = self.inner.lock().unwrap();
            match inner.slots.get_mut(key) {
                Some(Slot::Ready { reserved: false, .. }) => match inner.slots.remove(key) {
                    Some(Slot::Ready { spare, .. }) => return Claim::Ready(spare),
                    _ => unreachable!("matched just above, under the lock"),
                },
                Some(Slot::Preparing { id, done, reserved }) if !*reserved => {
                    *reserved = true;
                    (*id, done.subscribe())
                }
                _ => return Claim::Missing,
            }
        };
        // Releases the reservation however this ends (also if the claim is dropped).
        let reservation = Reservation { slots: self, key, id };
        // Nothing to read from how the wait ended: `changed` only ends with an error, when
        // the preparation ends (see `Slot`), or the wait times out; either way the slot,
        // read next, says what there is to take.
        let _ = tokio::time::timeout(wait, done.changed()).await;
        reservation.take()
    }

    /// Takes `key`'s spare if it is ready and no claim is about to take it (to remove a
    /// spare the budget no longer keeps).
    pub(super) fn take_ready(&self, key: &str) -> Option<T> {
        let mut inner = self.inner.lock().unwrap();
        if !matches!(inner.slots.get(key), Some(Slot::Ready { reserved: false, .. })) {
            return None;
        }
        match inner.slots.remove(key) {
            Some(Slot::Ready { spare, .. }) => Some(spare),
            _ => unreachable!("matched just above, under the lock"),
        }
    }

    /// Makes `spare` the ready spare of the first of `keys` that has none ready or being
    /// prepared (a replica's container recycled as a spare; several replicas stopping at
    /// once each find their own slot); hands it back when every one has.
    pub(super) fn offer(&self, keys: &[String], spare: T) -> Result<(), T> {
        let mut inner = self.inner.lock().unwrap();
        let free = keys.iter().find(|k| !inner.slots.contains_key(k.as_str()));
        let Some(key) = free.filter(|_| !inner.closed).cloned() else { return Err(spare) };
        inner.next_id += 1;
        let id = inner.next_id;
        inner.slots.insert(key, Slot::Ready { spare, id, reserved: false });
        Ok(())
    }

    /// The keys with a spare ready or being prepared.
    pub(super) fn keys(&self) -> Vec<String> {
        self.inner.lock().unwrap().slots.keys().cloned().collect()
    }

    /// A claim waits on `key`'s preparation (for tests: the signal that a claim in another
    /// task has started waiting).
    #[cfg(test)]
    fn is_reserved(&self, key: &str) -> bool {
        matches!(self.inner.lock().unwrap().slots.get(key), Some(Slot::Preparing { reserved: true, .. }))
    }

    /// Closes: no preparation begins any more, the ready spares are returned (to remove),
    /// and preparations in flight are forgotten (a claim waiting on one wakes and gets
    /// `Missing`; the spare it makes is handed back to its preparer to remove).
    pub(super) fn close(&self) -> Vec<T> {
        let mut inner = self.inner.lock().unwrap();
        inner.closed = true;
        inner
            .slots
            .drain()
            .filter_map(|(_, slot)| match slot {
                Slot::Ready { spare, .. } => Some(spare),
                Slot::Preparing { .. } => None,
            })
            .collect()
    }
}

/// One spare being prepared; see [`SpareSlots::begin`].
struct Preparation<T> {
    slots: std::sync::Arc<SpareSlots<T>>,
    key: String,
    id: u64,
    finished: bool,
}

impl<T> Preparation<T> {
    /// Ends the preparation: `Some(spare)` becomes the ready spare (for the claim that
    /// waits, if one does), `None` frees the slot for another preparation. Returns a
    /// spare that cannot be kept (the slots were closed): the caller removes it.
    #[must_use = "a spare handed back must be removed"]
    fn finish(mut self, spare: Option<T>) -> Option<T> {
        self.end(spare)
    }

    fn end(&mut self, spare: Option<T>) -> Option<T> {
        self.finished = true;
        let mut inner = self.slots.inner.lock().unwrap();
        let reserved = match inner.slots.get(&self.key) {
            Some(Slot::Preparing { id, reserved, .. }) if *id == self.id && !inner.closed => *reserved,
            _ => return spare,
        };
        // Replacing (or removing) the slot drops `done`: a waiting claim wakes, and finds
        // the spare already in place once it gets the lock.
        match spare {
            Some(spare) => {
                inner.slots.insert(self.key.clone(), Slot::Ready { spare, id: self.id, reserved });
            }
            None => {
                inner.slots.remove(&self.key);
            }
        }
        None
    }
}

impl<T> Drop for Preparation<T> {
    fn drop(&mut self) {
        if !self.finished {
            // Given no spare, `end` hands none back: there is nothing to remove.
            let _ = self.end(None);
        }
    }
}

/// A claim's hold on a spare being prepared; see [`SpareSlots::claim`].
struct Reservation<'a, T> {
    slots: &'a SpareSlots<T>,
    key: &'a str,
    id: u64,
}

impl<T> Reservation<'_, T> {
    /// The spare the preparation made, if it is there now.
    fn take(&self) -> Claim<T> {
        let mut inner = self.slots.inner.lock().unwrap();
        if matches!(inner.slots.get(self.key), Some(Slot::Ready { id, .. }) if *id == self.id) {
            if let Some(Slot::Ready { spare, .. }) = inner.slots.remove(self.key) {
                return Claim::Prepared(spare);
            }
        }
        Claim::Missing
    }
}

impl<T> Drop for Reservation<'_, T> {
    fn drop(&mut self) {
        // Not taken (timed out, failed, dropped): the spare, or the preparation, is free
        // for any claim again.
        let mut inner = self.slots.inner.lock().unwrap();
        match inner.slots.get_mut(self.key) {
            Some(Slot::Ready { id, reserved, .. } | Slot::Preparing { id, reserved, .. }) if *id == self.id => *reserved = false,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_ready_spare_is_claimed_once_and_a_new_preparation_can_begin() {
        let slots = SpareSlots::new();
        assert_eq!(slots.claim("h", WAIT).await, Claim::Missing, "nothing prepared");
        let p = slots.begin("h").expect("the first preparation begins");
        assert!(slots.begin("h").is_none(), "one preparation per hash while one is in flight");
        assert!(slots.begin("other").is_some_and(|p| p.finish(None).is_none()), "other hashes are independent");
        assert_eq!(p.finish(Some("spare-1")), None);
        assert!(slots.begin("h").is_none(), "none while a spare is ready");
        assert_eq!(slots.claim("h", WAIT).await, Claim::Ready("spare-1"));
        assert_eq!(slots.claim("h", WAIT).await, Claim::Missing, "taken once");
        let p = slots.begin("h").expect("the next one begins once the spare is taken");
        assert_eq!(p.finish(Some("spare-2")), None);
        assert_eq!(slots.claim("h", WAIT).await, Claim::Ready("spare-2"));
    }

    #[tokio::test]
    async fn only_a_ready_unreserved_spare_is_taken_back() {
        let slots = SpareSlots::<&'static str>::new();
        assert_eq!(slots.take_ready("f"), None);
        let p = slots.begin("f").unwrap();
        assert_eq!(slots.take_ready("f"), None, "still being prepared");
        assert_eq!(slots.keys(), ["f"]);
        assert!(p.finish(Some("spare")).is_none());
        assert_eq!(slots.take_ready("f"), Some("spare"));
        assert!(slots.keys().is_empty());
        assert!(slots.begin("f").is_some(), "the slot is free again");
    }

    #[tokio::test]
    async fn a_recycled_spare_is_taken_only_into_an_empty_slot() {
        let slots = SpareSlots::<&'static str>::new();
        let f = ["f".to_string()];
        let p = slots.begin("f").unwrap();
        assert_eq!(slots.offer(&f, "recycled"), Err("recycled"), "a preparation is under way");
        assert!(p.finish(Some("prepared")).is_none());
        assert_eq!(slots.offer(&f, "recycled"), Err("recycled"), "one is ready");
        assert_eq!(slots.claim("f", Duration::ZERO).await, Claim::Ready("prepared"));
        assert_eq!(slots.offer(&f, "recycled"), Ok(()));
        assert_eq!(slots.claim("f", Duration::ZERO).await, Claim::Ready("recycled"));
        assert_eq!(slots.offer(&[], "nowhere"), Err("nowhere"), "no slot wanted");
        slots.close();
        assert_eq!(slots.offer(&f, "late"), Err("late"), "closed");
    }

    #[test]
    fn replicas_stopping_at_once_fill_a_bursts_slots_one_each() {
        let slots = SpareSlots::<&'static str>::new();
        let keys: Vec<String> = (0..3).map(|rank| slot_key("h", rank)).collect();
        assert_eq!(keys, ["h", "h+1", "h+2"]);
        assert_eq!(slots.offer(&keys, "a"), Ok(()));
        assert_eq!(slots.offer(&keys, "b"), Ok(()));
        assert_eq!(slots.offer(&keys, "c"), Ok(()));
        assert_eq!(slots.offer(&keys, "d"), Err("d"), "every slot is filled");
        assert_eq!((slots.take_ready("h"), slots.take_ready("h+1"), slots.take_ready("h+2")), (Some("a"), Some("b"), Some("c")));
    }

    #[tokio::test]
    async fn a_claim_during_a_preparation_waits_for_it_and_takes_its_spare() {
        let slots = SpareSlots::new();
        let p = slots.begin("h").unwrap();
        let claim = claim_soon(&slots).await;
        assert!(!claim.is_finished(), "the claim waits for the preparation");
        assert_eq!(p.finish(Some("spare")), None);
        assert_eq!(claim.await.unwrap(), Claim::Prepared("spare"));
        assert_eq!(slots.claim("h", WAIT).await, Claim::Missing);
    }

    #[tokio::test]
    async fn a_waiting_claim_wakes_as_soon_as_the_preparation_ends() {
        // The claim subscribes and sleeps first, then the preparation ends: the claim
        // wakes at once instead of sleeping out its (here an hour long) bound.
        let slots = SpareSlots::new();
        let p = slots.begin("h").unwrap();
        let claim = slots.claim("h", Duration::from_secs(3600));
        let finish = async {
            assert_eq!(p.finish(Some("spare")), None);
        };
        let (got, ()) = tokio::time::timeout(WAIT, async { futures::join!(claim, finish) }).await.expect("no lost wake-up");
        assert_eq!(got, Claim::Prepared("spare"));
    }

    /// Returns once a claim waits on "h"'s preparation.
    async fn until_reserved<T>(slots: &SpareSlots<T>) {
        tokio::time::timeout(WAIT, async {
            while !slots.is_reserved("h") {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("a claim starts waiting");
    }

    /// A claim of "h" in a task of its own, returned once it waits.
    async fn claim_soon(slots: &std::sync::Arc<SpareSlots<&'static str>>) -> tokio::task::JoinHandle<Claim<&'static str>> {
        let claim = tokio::spawn({
            let slots = slots.clone();
            async move { slots.claim("h", WAIT).await }
        });
        until_reserved(slots).await;
        claim
    }

    #[tokio::test]
    async fn a_failed_preparation_gives_the_fallback_and_frees_the_slot() {
        let slots = SpareSlots::<&str>::new();
        let p = slots.begin("h").unwrap();
        let claim = claim_soon(&slots).await;
        assert_eq!(p.finish(None), None);
        assert_eq!(claim.await.unwrap(), Claim::Missing);
        assert!(slots.begin("h").is_some(), "a new preparation may begin");

        // A preparation dropped unfinished (its task panicked) counts as failed.
        let slots = SpareSlots::<&str>::new();
        let p = slots.begin("h").unwrap();
        let claim = claim_soon(&slots).await;
        drop(p);
        assert_eq!(claim.await.unwrap(), Claim::Missing);
        assert!(slots.begin("h").is_some());
    }

    #[tokio::test]
    async fn two_concurrent_claims_get_one_spare_and_one_fallback() {
        let slots = SpareSlots::new();
        let p = slots.begin("h").unwrap();
        let claims: Vec<_> = (0..2)
            .map(|_| {
                let slots = slots.clone();
                tokio::spawn(async move { slots.claim("h", WAIT).await })
            })
            .collect();
        until_reserved(&slots).await;
        assert_eq!(p.finish(Some("spare")), None);
        let mut got = Vec::new();
        for c in claims {
            got.push(c.await.unwrap());
        }
        got.sort_by_key(|c| matches!(c, Claim::Missing));
        assert_eq!(got, vec![Claim::Prepared("spare"), Claim::Missing]);
        // Racing on a ready spare too: one gets it.
        let p = slots.begin("h").unwrap();
        assert_eq!(p.finish(Some("spare-2")), None);
        let (a, b) = futures::join!(slots.claim("h", WAIT), slots.claim("h", WAIT));
        assert_eq!([a, b].into_iter().filter(|c| *c == Claim::Ready("spare-2")).count(), 1);
    }

    #[tokio::test]
    async fn a_claim_waits_at_most_its_bound_and_then_releases_the_spare() {
        let slots = SpareSlots::new();
        let p = slots.begin("h").unwrap();
        assert_eq!(slots.claim("h", Duration::from_millis(20)).await, Claim::Missing, "timed out");
        assert!(slots.begin("h").is_none(), "the preparation still runs");
        assert_eq!(p.finish(Some("spare")), None);
        assert_eq!(slots.claim("h", WAIT).await, Claim::Ready("spare"), "not kept for the claim that gave up");

        // A claim dropped while it waits releases its reservation too.
        let p = slots.begin("h").unwrap();
        let waiting = claim_soon(&slots).await;
        waiting.abort();
        // The task was aborted: its result is the cancellation, nothing to check.
        let _ = waiting.await;
        let claim = claim_soon(&slots).await;
        assert_eq!(p.finish(Some("spare-2")), None);
        assert_eq!(claim.await.unwrap(), Claim::Prepared("spare-2"));
    }

    #[tokio::test]
    async fn close_during_a_preparation_wakes_the_claim_and_hands_the_spare_back() {
        let slots = SpareSlots::new();
        let ready = slots.begin("ready").unwrap();
        assert_eq!(ready.finish(Some("ready-spare")), None);
        let p = slots.begin("h").unwrap();
        let claim = tokio::spawn({
            let slots = slots.clone();
            async move { slots.claim("h", Duration::from_secs(3600)).await }
        });
        until_reserved(&slots).await;
        assert_eq!(slots.close(), vec!["ready-spare"], "ready spares are returned to remove");
        let got = tokio::time::timeout(WAIT, claim).await.expect("a waiting claim does not hang after close");
        assert_eq!(got.unwrap(), Claim::Missing);
        assert_eq!(p.finish(Some("late")), Some("late"), "a spare finished after close is handed back");
        assert!(slots.begin("h").is_none(), "no preparation after close");
        assert_eq!(slots.claim("h", WAIT).await, Claim::Missing);
        assert!(slots.close().is_empty());
    }
}
