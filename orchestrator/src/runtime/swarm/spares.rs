//! The swarm runtime's hot spares (pure: no engine in it): which definitions keep a
//! replica service started and probed ready, but not registered with Envoy, so that a
//! cold start only registers it.
//!
//! The Docker runtime pauses its spares; a Swarm manager cannot pause a task (pausing is
//! local to the node's engine), so a hot spare runs: its runtime waits for requests,
//! using its memory and next to no CPU. At most one per definition, while the memory
//! budget (`ROOST_SPARE_MEMORY`, each spare counted at [`SPARE_BYTES`]) lasts, in the
//! order the definitions were prepared. A definition whose spare could not start (its
//! function fails at import) gets none until it changes: the cold start then creates a
//! service of its own and fails with the reason, as without spares.

use std::collections::HashMap;
use std::net::SocketAddr;

/// What a hot spare is counted to hold against the budget: the Python runtime with a
/// small function, running (a paused one held 11-20 MB, docs/benchmarks.md).
pub const SPARE_BYTES: u64 = 32 * 1024 * 1024;

/// A started, ready, unregistered replica service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotSpare {
    /// Its service's id.
    pub service: String,
    /// Its task's id.
    pub task: String,
    /// Where it listens on the overlay.
    pub address: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    Preparing,
    Ready(HotSpare),
    Failed,
}

/// A prepare's answer: spares to remove (of the function's earlier definitions), and
/// whether to start one for this definition.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Want {
    /// Spares of definitions no longer current.
    pub stale: Vec<HotSpare>,
    /// Start a spare for this definition now.
    pub prepare: bool,
}

/// The spares, by definition hash.
#[derive(Debug, Default)]
pub struct SpareBook {
    slots: HashMap<String, (String, Slot)>,
    /// Bytes all spares may hold; `None`: no limit.
    budget: Option<u64>,
    closed: bool,
}

impl SpareBook {
    /// A book within `budget` bytes (`None`: one spare per definition).
    pub fn new(budget: Option<u64>) -> SpareBook {
        SpareBook { budget, ..SpareBook::default() }
    }

    /// `function`'s definition `hash` is prepared (and is its current one).
    pub fn want(&mut self, function: &str, hash: &str) -> Want {
        let stale_keys: Vec<String> =
            self.slots.iter().filter(|(h, (f, _))| f == function && h.as_str() != hash).map(|(h, _)| h.clone()).collect();
        let mut stale = Vec::new();
        for h in stale_keys {
            if let Some((_, Slot::Ready(s))) = self.slots.remove(&h) {
                stale.push(s);
            }
        }
        if self.closed || self.slots.contains_key(hash) {
            return Want { stale, prepare: false };
        }
        let kept = self.slots.values().filter(|(_, s)| !matches!(s, Slot::Failed)).count() as u64;
        let fits = self.budget.is_none_or(|b| (kept + 1) * SPARE_BYTES <= b);
        if fits {
            self.slots.insert(hash.to_string(), (function.to_string(), Slot::Preparing));
        }
        Want { stale, prepare: fits }
    }

    /// The preparation for `hash` ended: with its spare, or none (it failed). Returns a
    /// spare nobody keeps (the book closed, or the definition replaced meanwhile): the
    /// caller removes it.
    pub fn prepared(&mut self, hash: &str, spare: Option<HotSpare>) -> Option<HotSpare> {
        match self.slots.get_mut(hash) {
            Some((_, slot @ Slot::Preparing)) if !self.closed => {
                *slot = match &spare {
                    Some(s) => Slot::Ready(s.clone()),
                    None => Slot::Failed,
                };
                None
            }
            _ => spare,
        }
    }

    /// Takes `hash`'s ready spare, if it has one (the slot is freed: the next prepare
    /// starts another).
    pub fn take(&mut self, hash: &str) -> Option<HotSpare> {
        match self.slots.get(hash) {
            Some((_, Slot::Ready(_))) => match self.slots.remove(hash) {
                Some((_, Slot::Ready(s))) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    /// `function` is no longer declared: its slots go (a preparation that ends later is
    /// not kept), and its ready spares are returned, to remove.
    pub fn forget(&mut self, function: &str) -> Vec<HotSpare> {
        self.take_slots(|f, _| f == function)
    }

    /// Whether `service` is a spare this book keeps.
    pub fn keeps(&self, service: &str) -> bool {
        self.slots.values().any(|(_, s)| matches!(s, Slot::Ready(h) if h.service == service))
    }

    /// Closes the book: no spare is prepared any more; the ready ones, to remove.
    pub fn close(&mut self) -> Vec<HotSpare> {
        self.closed = true;
        self.take_slots(|_, s| matches!(s, Slot::Ready(_)))
    }

    /// Removes the slots `pick` chooses (by function and slot); returns their ready spares.
    fn take_slots(&mut self, pick: impl Fn(&str, &Slot) -> bool) -> Vec<HotSpare> {
        self.slots
            .extract_if(|_, (f, s)| pick(f, s))
            .filter_map(|(_, (_, s))| match s {
                Slot::Ready(spare) => Some(spare),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spare(n: u8) -> HotSpare {
        HotSpare { service: format!("s{n}"), task: format!("t{n}"), address: SocketAddr::from(([10, 0, 1, n], 8080)) }
    }

    #[test]
    fn one_spare_per_definition_taken_once_then_prepared_again() {
        let mut b = SpareBook::new(None);
        assert_eq!(b.want("f", "h1"), Want { stale: vec![], prepare: true });
        assert_eq!(b.want("f", "h1"), Want::default(), "one preparation at a time");
        assert_eq!(b.take("h1"), None, "not ready yet");
        assert_eq!(b.prepared("h1", Some(spare(1))), None);
        assert!(b.keeps("s1"));
        assert_eq!(b.want("f", "h1"), Want::default(), "it has one");
        assert_eq!(b.take("h1"), Some(spare(1)));
        assert_eq!(b.take("h1"), None, "taken once");
        assert!(!b.keeps("s1"));
        assert_eq!(b.want("f", "h1"), Want { stale: vec![], prepare: true }, "the next one");
    }

    #[test]
    fn a_failed_spare_is_not_tried_again_for_that_definition() {
        let mut b = SpareBook::new(None);
        assert!(b.want("f", "h1").prepare);
        assert_eq!(b.prepared("h1", None), None);
        assert_eq!(b.want("f", "h1"), Want::default());
        assert_eq!(b.take("h1"), None);
        // A new definition tries again.
        assert!(b.want("f", "h2").prepare);
    }

    #[test]
    fn a_new_definition_removes_the_old_ones_spare() {
        let mut b = SpareBook::new(None);
        b.want("f", "h1");
        b.prepared("h1", Some(spare(1)));
        b.want("g", "g1");
        b.prepared("g1", Some(spare(2)));
        assert_eq!(b.want("f", "h2"), Want { stale: vec![spare(1)], prepare: true });
        assert!(b.keeps("s2"), "another function's is kept");
        // A preparation of the old definition that ends now is not kept.
        let mut b = SpareBook::new(None);
        b.want("f", "h1");
        b.want("f", "h2");
        assert_eq!(b.prepared("h1", Some(spare(3))), Some(spare(3)));
    }

    #[test]
    fn the_budget_limits_how_many() {
        let mut b = SpareBook::new(Some(2 * SPARE_BYTES));
        assert!(b.want("a", "a1").prepare);
        assert!(b.want("b", "b1").prepare);
        assert!(!b.want("c", "c1").prepare, "past the budget");
        b.prepared("a1", None); // a failed one holds nothing
        assert!(b.want("c", "c1").prepare);
        assert!(!SpareBook::new(Some(0)).want("a", "a1").prepare, "0: no spares");
    }

    #[test]
    fn a_forgotten_function_gives_back_its_spare_and_its_share_of_the_budget() {
        let mut b = SpareBook::new(Some(2 * SPARE_BYTES));
        b.want("f", "f1");
        b.prepared("f1", Some(spare(1)));
        b.want("g", "g1");
        assert!(!b.want("h", "h1").prepare, "the budget is spent");
        assert_eq!(b.forget("f"), vec![spare(1)]);
        assert!(!b.keeps("s1"));
        assert!(b.want("h", "h1").prepare, "f's share went to h");
        assert_eq!(b.forget("g"), vec![], "g's spare was still being made");
        assert_eq!(b.prepared("g1", Some(spare(2))), Some(spare(2)), "made after it was forgotten: removed");
        assert!(b.want("g", "g1").prepare, "declared again, it starts afresh");
    }

    #[test]
    fn a_closed_book_keeps_nothing() {
        let mut b = SpareBook::new(None);
        b.want("f", "h1");
        b.prepared("h1", Some(spare(1)));
        b.want("g", "g1");
        assert_eq!(b.close(), vec![spare(1)]);
        assert_eq!(b.prepared("g1", Some(spare(2))), Some(spare(2)), "finished after the close: removed");
        assert!(!b.want("f", "h1").prepare);
        assert_eq!(b.take("h1"), None);
    }
}
