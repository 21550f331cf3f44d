//! Watches the definitions file and hands every edit to the supervisor within a fraction
//! of a second. One invalid function does not hold the others back: the valid ones are
//! loaded and each invalid one is reported by name (the supervisor keeps serving its last
//! good definition, or refuses its callers with the problem). A file that is no
//! definitions file at all (not YAML, empty) is reported and the last good definitions keep
//! serving.

use crate::deployed::store::Stored;
use roost_common::hash::fnv1a;
use roost_common::spec::{self, Definitions, FunctionSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A new reading of the file.
#[derive(Debug, Clone)]
pub enum Reading {
    /// The file is readable as definitions (some functions may be invalid).
    Loaded(Loaded),
    /// The file is unreadable or no definitions file: every problem, one per line.
    Invalid(String),
}

/// The functions of a readable file.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The valid functions.
    pub valid: Definitions,
    /// Invalid functions with a usable name: their problems, one per line.
    pub invalid: BTreeMap<String, String>,
    /// Every problem in the file, one per line (`None`: the file is valid).
    pub problems: Option<String>,
}

/// A fingerprint of what a function's replicas are started from: its definition without
/// `scaling` and `async` (how many replicas run and how calls are queued change no
/// replica). Replicas started from another one
/// are rolled over.
pub fn spec_hash(spec: &FunctionSpec) -> String {
    let mut json = serde_json::to_value(spec).expect("definitions serialize");
    if let Some(fields) = json.as_object_mut() {
        fields.remove("scaling");
        fields.remove("async");
    }
    format!("{:016x}", fnv1a(json.to_string().as_bytes()))
}

/// What changed between two sets of definitions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// New functions.
    pub added: BTreeSet<String>,
    /// Functions gone.
    pub removed: BTreeSet<String>,
    /// Functions whose definition changed.
    pub changed: BTreeSet<String>,
}

/// Compares two sets of definitions.
pub fn diff(old: &Definitions, new: &Definitions) -> Diff {
    let mut d = Diff::default();
    for (name, spec) in new {
        match old.get(name) {
            None => {
                d.added.insert(name.clone());
            }
            Some(o) if o != spec => {
                d.changed.insert(name.clone());
            }
            Some(_) => {}
        }
    }
    d.removed = old.keys().filter(|n| !new.contains_key(*n)).cloned().collect();
    d
}

/// The definitions file and the deployed functions as one set of definitions. The file
/// wins a name both declare: a deploy cannot take a function from the file (the API
/// refuses it with 409), and a function the file declares later hides the deployed one,
/// which is reported. An unreadable file keeps its last good functions serving, as it
/// always has, while deploys go on.
#[derive(Debug, Default)]
pub struct Sources {
    /// The file's last readable reading.
    file: Loaded,
    /// Why the file's newest reading was refused, if it was.
    file_error: Option<String>,
    /// What the store holds.
    deployed: Stored,
}

impl Sources {
    /// The two sources as first read.
    pub fn new(file: Reading, deployed: Stored) -> Sources {
        let mut s = Sources { deployed, ..Sources::default() };
        s.file(file);
        s
    }

    /// A new reading of the file.
    pub fn file(&mut self, reading: Reading) {
        match reading {
            Reading::Loaded(l) => {
                self.file = l;
                self.file_error = None;
            }
            Reading::Invalid(e) => self.file_error = Some(e),
        }
    }

    /// The store as it is now.
    pub fn deployed(&mut self, stored: Stored) {
        self.deployed = stored;
    }

    /// Whether the file declares `name` (valid or not).
    pub fn in_file(&self, name: &str) -> bool {
        self.file.valid.contains_key(name) || self.file.invalid.contains_key(name)
    }

    /// Whether `name` is served from the store.
    pub fn is_deployed(&self, name: &str) -> bool {
        !self.in_file(name) && (self.deployed.valid.contains_key(name) || self.deployed.invalid.contains_key(name))
    }

    /// Both sources merged, every problem of either in `problems`.
    pub fn merged(&self) -> Loaded {
        let mut out = self.file.clone();
        let mut problems: Vec<String> = self.file_error.iter().chain(&self.file.problems).cloned().collect();
        for (name, spec) in &self.deployed.valid {
            if self.in_file(name) {
                problems.push(format!(
                    "the deployed function {name:?} is hidden by the definitions file's {name:?}; remove one of them (`roost rm {name}` removes the deployed one)"
                ));
            } else {
                out.valid.insert(name.clone(), spec.clone());
            }
        }
        for (name, why) in &self.deployed.invalid {
            if !self.in_file(name) {
                problems.push(format!("the deployed function {name:?}: {why}"));
                out.invalid.insert(name.clone(), why.clone());
            }
        }
        out.problems = (!problems.is_empty()).then(|| problems.join("\n"));
        out
    }
}

/// What the watcher compares against: the file's bytes as last read (`None`: unreadable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen(Option<Vec<u8>>);

/// Reads the file once: its reading, and what [`watch`] must compare later reads with (so
/// an edit made between this read and the watcher's start is not missed).
pub fn read_seen(path: &Path) -> (Reading, Seen) {
    let bytes = std::fs::read(path);
    let seen = Seen(bytes.as_ref().ok().cloned());
    (reading(path, bytes), seen)
}

fn reading(path: &Path, bytes: std::io::Result<Vec<u8>>) -> Reading {
    match bytes {
        Err(e) => Reading::Invalid(format!("cannot read {}: {e}", path.display())),
        Ok(bytes) => parse(path, &String::from_utf8_lossy(&bytes)),
    }
}

fn parse(path: &Path, text: &str) -> Reading {
    let dir = path.parent().unwrap_or(Path::new("."));
    match spec::load_partial(text, dir) {
        Ok(p) => Reading::Loaded(Loaded {
            invalid: p.invalid.iter().map(|(name, errors)| (name.clone(), errors.to_string())).collect(),
            problems: p.problems().map(|e| e.to_string()),
            valid: p.valid,
        }),
        Err(errors) => Reading::Invalid(errors.to_string()),
    }
}

/// Polls `path` every `interval` and sends a [`Reading`] whenever its content differs
/// from what was last seen (`seen`: the read the caller started from).
pub async fn watch(path: PathBuf, seen: Seen, interval: Duration, tx: mpsc::Sender<Reading>, shutdown: CancellationToken) {
    let Seen(mut last) = seen;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = std::fs::read(&path);
        if now.as_ref().ok() == last.as_ref() {
            continue;
        }
        last = now.as_ref().ok().cloned();
        let reading = reading(&path, now);
        match &reading {
            Reading::Loaded(Loaded { valid, problems: None, .. }) => info!(functions = valid.len(), "definitions reloaded"),
            Reading::Loaded(Loaded { valid, problems: Some(p), .. }) => {
                warn!(functions = valid.len(), problems = %p, "definitions reloaded; the invalid functions are refused or keep their last good definition")
            }
            Reading::Invalid(e) => warn!(errors = %e, "definitions file invalid; keeping the last good definitions"),
        }
        if tx.send(reading).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs(yaml: &str) -> Definitions {
        spec::parse(yaml).unwrap()
    }

    #[test]
    fn scaling_is_a_change_but_not_a_new_replica_hash() {
        let a = defs("usable-functions:\n  a: {version: 1, runtime: {kind: image, image: x}, scaling: {max_replicas: 2}}\n");
        let b = defs("usable-functions:\n  a: {version: 1, runtime: {kind: image, image: x}, scaling: {max_replicas: 5}}\n");
        let c = defs("usable-functions:\n  a: {version: 1, runtime: {kind: image, image: y}, scaling: {max_replicas: 5}}\n");
        assert_eq!(diff(&a, &b).changed, ["a".to_string()].into());
        assert_eq!(spec_hash(&a["a"]), spec_hash(&b["a"]), "replicas keep running through a scaling change");
        assert_ne!(spec_hash(&b["a"]), spec_hash(&c["a"]));
    }

    #[test]
    fn diff_finds_added_removed_and_changed() {
        let a = defs(
            "usable-functions:\n  a: {version: 1, runtime: {kind: image, image: x}}\n  b: {version: 1, runtime: {kind: image, image: x}}\n",
        );
        let b = defs(
            "usable-functions:\n  b: {version: 2, runtime: {kind: image, image: x}}\n  c: {version: 1, runtime: {kind: image, image: x}}\n",
        );
        let d = diff(&a, &b);
        assert_eq!(d.added, ["c".to_string()].into());
        assert_eq!(d.removed, ["a".to_string()].into());
        assert_eq!(d.changed, ["b".to_string()].into());
        assert_eq!(diff(&b, &b), Diff::default());
    }

    fn stored(yaml: &str) -> Stored {
        Stored { valid: defs(yaml), invalid: BTreeMap::new() }
    }

    #[test]
    fn the_file_and_the_deployed_functions_merge_and_the_file_wins_a_name() {
        let file = Reading::Loaded(Loaded {
            valid: defs("usable-functions:\n  a: {version: 1, runtime: {kind: image, image: file}}\n"),
            ..Loaded::default()
        });
        let deployed = stored(
            "usable-functions:\n  a: {version: 1, runtime: {kind: image, image: deployed}}\n  b: {version: 1, runtime: {kind: image, image: deployed}}\n",
        );
        let mut s = Sources::new(file, deployed);
        let m = s.merged();
        assert_eq!(m.valid.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(matches!(&m.valid["a"].runtime, roost_common::spec::FunctionKind::Image { image } if image == "file"));
        assert!(m.problems.as_deref().is_some_and(|p| p.contains("\"a\" is hidden")), "{m:?}");
        assert!(s.in_file("a") && !s.is_deployed("a") && s.is_deployed("b"));
        // An unreadable file: its last good functions and the deployed ones go on.
        s.file(Reading::Invalid("line 1: bad".into()));
        let m = s.merged();
        assert_eq!(m.valid.len(), 2);
        assert!(m.problems.as_deref().is_some_and(|p| p.contains("line 1: bad")), "{m:?}");
        // The file drops `a`: the deployed `a` serves.
        s.file(Reading::Loaded(Loaded::default()));
        let m = s.merged();
        assert!(matches!(&m.valid["a"].runtime, roost_common::spec::FunctionKind::Image { image } if image == "deployed"));
        assert_eq!(m.problems, None);
        s.deployed(Stored::default());
        assert!(s.merged().valid.is_empty());
    }

    #[tokio::test]
    async fn an_edit_is_seen_and_a_broken_edit_is_reported() {
        let dir = std::env::temp_dir().join(format!("roost-defs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("defs.yml");
        std::fs::write(&path, "usable-functions:\n  a: {version: 1, runtime: {kind: image, image: x}}\n").unwrap();
        let (first, seen) = read_seen(&path);
        assert!(matches!(&first, Reading::Loaded(l) if l.valid.len() == 1 && l.problems.is_none()), "{first:?}");
        // An edit before the watcher starts is seen: it compares with the first read.
        std::fs::write(&path, "usable-functions:\n  a: {version: 1, bogus: 2, runtime: {kind: image, image: x}}\n").unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let stop = CancellationToken::new();
        tokio::spawn(watch(path.clone(), seen, Duration::from_millis(10), tx, stop.clone()));
        let r = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert!(matches!(&r, Reading::Loaded(l) if l.valid.is_empty() && l.invalid["a"].contains("bogus")), "{r:?}");
        std::fs::write(&path, "usable-functions: [\n").unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert!(matches!(&r, Reading::Invalid(_)), "{r:?}");
        std::fs::write(&path, "usable-functions:\n  a: {version: 2, runtime: {kind: image, image: x}}\n").unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert!(matches!(&r, Reading::Loaded(l) if l.valid["a"].version == "2"), "{r:?}");
        stop.cancel();
        // Cleanup of a temporary folder: a leftover does not change the test's outcome.
        let _ = std::fs::remove_dir_all(dir);
    }
}
