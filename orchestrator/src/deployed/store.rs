//! The deployed functions on disk, under `<data dir>/functions/`: each function a folder
//! whose `current` link names its newest revision (`revs/<rev>/`: `definition.yml` and
//! its code). A revision is written whole into a staging folder and then renamed into
//! place, and `current` is swapped by a rename: a crash leaves the old revision or the new
//! one, never half of one. Superseded revisions and removed functions stay on disk for
//! [`KEEP_REPLACED`] (their replicas drain from them), and are swept after.

use roost_common::spec::{self, FunctionKind};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The store's folder under the data directory.
pub const FUNCTIONS_DIR: &str = "functions";
/// The definitions file of a revision (a definitions file with the one function).
pub const REV_DEFINITION: &str = "definition.yml";
/// How long a superseded revision or a removed function is kept: replicas of the process
/// runtime run from it until their drain ends.
pub const KEEP_REPLACED: Duration = Duration::from_secs(15 * 60);

const CURRENT: &str = "current";
const REVS: &str = "revs";
const STAGING: &str = ".staging-";
const REMOVED: &str = ".removed-";

/// What the store holds, read as the definitions file is: valid functions and, by name,
/// the problems of the ones that cannot be read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    /// Valid definitions, their folders made absolute (inside their revision).
    pub valid: spec::Definitions,
    /// Functions whose stored revision cannot be read: why.
    pub invalid: BTreeMap<String, String>,
}

/// The deployed functions' folder.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

fn unique() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{:013}-{:09}", t.as_millis(), t.subsec_nanos())
}

fn older_than(path: &Path, age: Duration) -> bool {
    std::fs::symlink_metadata(path).and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|e| e >= age))
}

impl Store {
    /// Opens (and makes) `<data_dir>/functions`, removing what an interrupted deploy left.
    pub fn open(data_dir: &Path) -> std::io::Result<Store> {
        let root = data_dir.join(FUNCTIONS_DIR);
        std::fs::create_dir_all(&root)?;
        let store = Store { root };
        for entry in std::fs::read_dir(&store.root)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with(STAGING) {
                std::fs::remove_dir_all(store.root.join(&name))?;
            }
        }
        store.sweep();
        Ok(store)
    }

    /// A fresh, empty staging folder for a deploy of `function`.
    pub fn stage(&self, function: &str) -> std::io::Result<PathBuf> {
        let dir = self.root.join(format!("{STAGING}{function}-{}", unique()));
        std::fs::create_dir(&dir)?;
        Ok(dir)
    }

    /// Whether `function` is deployed.
    pub fn has(&self, function: &str) -> bool {
        self.root.join(function).join(CURRENT).exists()
    }

    /// Makes the staged folder `staged` the current revision of `function`.
    pub fn commit(&self, function: &str, staged: &Path) -> std::io::Result<PathBuf> {
        let dir = self.root.join(function);
        std::fs::create_dir_all(dir.join(REVS))?;
        let rev = unique();
        let rev_dir = dir.join(REVS).join(&rev);
        std::fs::rename(staged, &rev_dir)?;
        let link = dir.join(format!(".{CURRENT}-{rev}"));
        std::os::unix::fs::symlink(Path::new(REVS).join(&rev), &link)?;
        std::fs::rename(&link, dir.join(CURRENT))?;
        std::fs::File::open(&dir)?.sync_all()?;
        self.prune(&dir, &rev);
        Ok(rev_dir)
    }

    /// Removes `function` (false if it was not deployed). Its files stay for
    /// [`KEEP_REPLACED`] under a hidden name, then are swept.
    pub fn remove(&self, function: &str) -> std::io::Result<bool> {
        let dir = self.root.join(function);
        if !dir.exists() {
            return Ok(false);
        }
        let gone = self.root.join(format!("{REMOVED}{function}-{}", unique()));
        std::fs::rename(&dir, &gone)?;
        // Its modification time is when it was removed, for the sweep.
        let _ = std::fs::File::open(&gone).and_then(|f| f.set_modified(SystemTime::now()));
        std::fs::File::open(&self.root)?.sync_all()?;
        self.sweep();
        Ok(true)
    }

    /// The current revision's folder of `function`.
    pub fn current_dir(&self, function: &str) -> std::io::Result<PathBuf> {
        std::fs::canonicalize(self.root.join(function).join(CURRENT))
    }

    /// The current revision's definitions file of `function`, as deployed.
    pub fn definition(&self, function: &str) -> std::io::Result<String> {
        std::fs::read_to_string(self.root.join(function).join(CURRENT).join(REV_DEFINITION))
    }

    /// Replaces the current revision's definitions file of `function` in place (a scale:
    /// the code stays), atomically.
    pub fn rewrite_definition(&self, function: &str, text: &str) -> std::io::Result<()> {
        let rev = std::fs::canonicalize(self.root.join(function).join(CURRENT))?;
        let tmp = rev.join(format!(".{REV_DEFINITION}-{}", unique()));
        std::fs::write(&tmp, text)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, rev.join(REV_DEFINITION))
    }

    /// Every deployed function, read and validated.
    pub fn load(&self) -> Stored {
        let mut out = Stored::default();
        let Ok(entries) = std::fs::read_dir(&self.root) else { return out };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            match self.read(&name) {
                Ok(spec) => {
                    out.valid.insert(name, spec);
                }
                Err(why) => {
                    out.invalid.insert(name, why);
                }
            }
        }
        out
    }

    fn read(&self, function: &str) -> Result<spec::FunctionSpec, String> {
        let rev = std::fs::canonicalize(self.root.join(function).join(CURRENT))
            .map_err(|e| format!("its stored revision cannot be found ({e}); deploy it again"))?;
        let text = std::fs::read_to_string(rev.join(REV_DEFINITION))
            .map_err(|e| format!("its stored definition cannot be read ({e}); deploy it again"))?;
        let mut defs = spec::load(&text, &rev).map_err(|e| format!("its stored definition is invalid: {e}; deploy it again"))?;
        let mut spec =
            defs.remove(function).ok_or_else(|| format!("its stored definition does not declare {function:?}; deploy it again"))?;
        if let FunctionKind::Python { folder, .. } | FunctionKind::Command { folder, .. } = &mut spec.runtime {
            *folder = rev.join(&*folder);
        }
        Ok(spec)
    }

    /// Removes the revisions of the function folder `dir` other than `current` and the one
    /// before it, once older than [`KEEP_REPLACED`].
    fn prune(&self, dir: &Path, current: &str) {
        let Ok(entries) = std::fs::read_dir(dir.join(REVS)) else { return };
        let mut revs: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        revs.sort();
        revs.retain(|r| r != current);
        revs.pop(); // the one before the current: its replicas may still drain
        for rev in revs {
            let path = dir.join(REVS).join(&rev);
            if older_than(&path, KEEP_REPLACED) {
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a superseded revision");
                }
            }
        }
    }

    /// Removes the removed functions' folders older than [`KEEP_REPLACED`].
    pub fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = self.root.join(&name);
            if name.starts_with(REMOVED) && older_than(&path, KEEP_REPLACED) {
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a removed function's files");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("roost-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn stage_image(store: &Store, name: &str, image: &str) -> PathBuf {
        let s = store.stage(name).unwrap();
        std::fs::write(
            s.join(REV_DEFINITION),
            format!("usable-functions:\n  {name}: {{version: 1, runtime: {{kind: image, image: {image}}}}}\n"),
        )
        .unwrap();
        s
    }

    #[test]
    fn a_commit_is_read_back_and_an_update_replaces_it() {
        let d = data_dir("commit");
        let store = Store::open(&d).unwrap();
        assert!(store.load().valid.is_empty());
        let s = stage_image(&store, "f", "a:1");
        store.commit("f", &s).unwrap();
        assert!(!s.exists(), "the staging folder became the revision");
        assert!(store.has("f"));
        let got = store.load();
        assert!(matches!(&got.valid["f"].runtime, FunctionKind::Image { image } if image == "a:1"), "{got:?}");
        store.commit("f", &stage_image(&store, "f", "a:2")).unwrap();
        assert!(matches!(&store.load().valid["f"].runtime, FunctionKind::Image { image } if image == "a:2"));
        // Reopened (a restart): the same.
        assert_eq!(Store::open(&d).unwrap().load(), store.load());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn code_folders_point_into_their_revision() {
        let d = data_dir("code");
        let store = Store::open(&d).unwrap();
        let s = store.stage("g").unwrap();
        std::fs::create_dir_all(s.join("python/functions/g")).unwrap();
        std::fs::write(s.join("python/functions/g/main.py"), "async def handle(request):\n    return 'hi'\n").unwrap();
        std::fs::write(
            s.join(REV_DEFINITION),
            "usable-functions:\n  g: {version: 1, configuration: {base_function_file_name: main.py, function_folder: g}}\n",
        )
        .unwrap();
        let rev = store.commit("g", &s).unwrap();
        let got = store.load();
        let (folder, file) = got.valid["g"].runtime.source().unwrap();
        assert!(folder.is_absolute() && folder.starts_with(std::fs::canonicalize(&rev).unwrap()), "{folder:?}");
        assert_eq!(file, "main.py");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_removed_function_is_gone_and_an_interrupted_deploy_is_cleaned_up() {
        let d = data_dir("remove");
        let store = Store::open(&d).unwrap();
        store.commit("f", &stage_image(&store, "f", "a:1")).unwrap();
        assert!(store.remove("f").unwrap());
        assert!(!store.remove("f").unwrap(), "twice: nothing to remove");
        assert!(store.load().valid.is_empty() && !store.has("f"));
        let left = stage_image(&store, "h", "a:1");
        let store = Store::open(&d).unwrap();
        assert!(!left.exists(), "a staging folder left by a crash is removed at start");
        assert!(store.load().valid.is_empty());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_broken_revision_is_reported_by_name() {
        let d = data_dir("broken");
        let store = Store::open(&d).unwrap();
        store.commit("f", &stage_image(&store, "f", "a:1")).unwrap();
        store.rewrite_definition("f", "usable-functions:\n  f: {version: 1, runtime: {kind: nope}}\n").unwrap();
        let got = store.load();
        assert!(got.valid.is_empty());
        assert!(got.invalid["f"].contains("deploy it again"), "{got:?}");
        let _ = std::fs::remove_dir_all(d);
    }
}
