//! The process runtime's virtual environments: one per set of `extra_dependencies` and
//! interpreter, under `<state_dir>/venvs/<key>/`, built once by `prepare` and reused by
//! every replica and by later orchestrators ([`Venvs::ensure`]).
//!
//! # How one is built
//!
//! 1. `python3 -m venv --system-site-packages <dir>`: the interpreter's own packages (for
//!    Debian's `/usr/bin/python3`, `python3-starlette` in `/usr/lib/python3/dist-packages`)
//!    stay visible, so pip installs only what is missing or pinned otherwise. When that
//!    fails (Debian without `python3-venv`: no `ensurepip`), `--without-pip` and then the
//!    interpreter's own pip with `--python <dir>/bin/python`.
//! 2. `pip install <flags> <words>`: the words of the definition as they are (packages,
//!    and pip options with their values); `PIP_CERT` is the host's CA bundle
//!    ([`super::build::ca_bundle`]) unless already set; proxies come from the
//!    orchestrator's environment, which pip inherits.
//! 3. The venv's site folders are read from its interpreter and written, last, to a marker
//!    file (`roost-venv.json`). A folder without it is a build that did not finish (an
//!    orchestrator crashed): it is removed and built again.
//!
//! Replicas run the base interpreter with `-S` (no `site`), so the venv is not activated:
//! its site folders go on `PYTHONPATH` after the runtime's folder and before the
//! interpreter's own, so a pinned version wins over the one the system has. `.pth` files
//! in the venv are not read (as for every folder on `PYTHONPATH`).
//!
//! Every line pip and venv write goes to the log store (source `build`); a failure keeps
//! the last lines and is remembered ([`super::build::Builds`]) until the definition or the
//! words change.

use super::build::{ca_bundle, pip_install_args, Builds, Tail};
use super::PrepareFailure;
use crate::logs::Logs;
use roost_common::wire::logs::BUILD_SOURCE;
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tracing::{info, warn};

/// The marker file a finished virtual environment holds.
pub const MARKER: &str = "roost-venv.json";

/// Longest one step of a build (venv, pip) may take before it is killed.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Why a virtual environment could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VenvError {
    /// Its folder cannot be removed, created or written.
    #[error("cannot prepare the virtual environment's folder {}: {source}; check the state folder's permissions and free space", path.display())]
    Folder {
        /// The folder or file.
        path: PathBuf,
        /// The file system's error.
        #[source]
        source: std::io::Error,
    },
    /// A program cannot be run at all.
    #[error("cannot run {}: {source}", program.display())]
    Run {
        /// The program.
        program: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A step exited with an error.
    #[error("{step} failed ({status}); fix extra_dependencies in the definition (or, if pip could not reach its index, the proxy or CA settings: see the README) and it is built again; `roost logs` of the function shows the whole build; its last lines:\n{last_output}")]
    Step {
        /// What was run.
        step: String,
        /// Its exit status.
        status: String,
        /// The last lines of its output (at most 20), one per line.
        last_output: String,
    },
    /// A step took too long and was killed.
    #[error("{step} took longer than {limit:?} and was killed; its last lines:\n{last_output}")]
    Timeout {
        /// What was run.
        step: String,
        /// The limit.
        limit: Duration,
        /// The last lines of its output, one per line.
        last_output: String,
    },
    /// The venv's interpreter did not say where its packages are.
    #[error("cannot read the site folders of {}: {detail}", python.display())]
    Site {
        /// The venv's interpreter.
        python: PathBuf,
        /// What it answered.
        detail: String,
    },
}

/// The key of a virtual environment: a hash of the interpreter's path and the pip words.
pub fn key(python: &Path, words: &[String]) -> String {
    let json = serde_json::to_vec(&(python, words)).expect("paths and strings serialize");
    format!("{:016x}", roost_common::hash::fnv1a(&json))
}

/// What the marker file holds.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Marker {
    python: PathBuf,
    words: Vec<String>,
    /// The venv's site folders, for `PYTHONPATH`.
    site: Vec<PathBuf>,
}

/// `base` (a `PYTHONPATH`: the runtime's folder first) with `deps` after its first entry.
pub fn python_path_with(base: &std::ffi::OsStr, deps: &[PathBuf]) -> OsString {
    let mut parts: Vec<PathBuf> = std::env::split_paths(base).collect();
    let at = parts.len().min(1);
    parts.splice(at..at, deps.iter().cloned());
    // A folder with `:` in its name cannot be on PYTHONPATH at all: keep the base.
    std::env::join_paths(parts).unwrap_or_else(|_| base.to_os_string())
}

/// The virtual environments of one process runtime.
#[derive(Debug)]
pub struct Venvs {
    root: PathBuf,
    python: PathBuf,
    logs: Logs,
    builds: Builds,
    /// Site folders of the finished ones, by key.
    ready: Mutex<HashMap<String, Arc<Vec<PathBuf>>>>,
}

impl Venvs {
    /// The environments under `root`, made with the interpreter `python` (its real path),
    /// their output into `logs`.
    pub fn new(root: PathBuf, python: PathBuf, logs: Logs) -> Venvs {
        Venvs { root, python, logs, builds: Builds::default(), ready: Mutex::default() }
    }

    /// The folder of the environment with `key`.
    pub fn dir(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// How long a build for the definition `spec_hash` has been under way.
    pub fn building(&self, spec_hash: &str) -> Option<Duration> {
        self.builds.building(spec_hash)
    }

    /// The site folders of the environment of `words` for `function` (definition
    /// `spec_hash`), built first if it is not: a finished one (in memory, or on disk from
    /// an earlier orchestrator) at once; a build under way waited for; a failure
    /// remembered for this definition returned at once. `None` for no words.
    pub async fn ensure(
        &self,
        function: &str,
        spec_hash: &str,
        words: &[String],
    ) -> Result<Option<Arc<Vec<PathBuf>>>, Arc<PrepareFailure>> {
        if words.is_empty() {
            return Ok(None);
        }
        let key = key(&self.python, words);
        if let Some(site) = self.ready.lock().unwrap().get(&key) {
            return Ok(Some(site.clone()));
        }
        let ensure = || async {
            if self.ready.lock().unwrap().contains_key(&key) {
                return Ok(()); // built while this call waited
            }
            let site = match self.finished(&key, words) {
                Some(site) => site,
                None => self.build(function, &key, words).await?,
            };
            self.ready.lock().unwrap().insert(key.clone(), Arc::new(site));
            Ok(())
        };
        self.builds.run(&key, spec_hash, ensure).await?;
        Ok(self.ready.lock().unwrap().get(&key).cloned())
    }

    /// The site folders of a finished environment on disk (its marker matches).
    fn finished(&self, key: &str, words: &[String]) -> Option<Vec<PathBuf>> {
        let text = std::fs::read(self.dir(key).join(MARKER)).ok()?;
        let marker: Marker = serde_json::from_slice(&text).ok()?;
        (marker.python == self.python && marker.words == words).then_some(marker.site)
    }

    async fn build(&self, function: &str, key: &str, words: &[String]) -> Result<Vec<PathBuf>, VenvError> {
        let dir = self.dir(key);
        let folder = |path: &Path| {
            let path = path.to_path_buf();
            move |source| VenvError::Folder { path, source }
        };
        if dir.exists() {
            warn!(function, venv = %dir.display(), "removing a virtual environment whose build did not finish");
            std::fs::remove_dir_all(&dir).map_err(folder(&dir))?;
        }
        std::fs::create_dir_all(&self.root).map_err(folder(&self.root))?;
        info!(function, venv = %dir.display(), "building the virtual environment of extra_dependencies");
        self.log(function, &format!("building the virtual environment {} for: {}", dir.display(), words.join(" ")));
        let started = std::time::Instant::now();
        let venv_python = dir.join("bin").join("python");
        let python = self.python.as_os_str();
        let venv = [python, "-m".as_ref(), "venv".as_ref(), "--system-site-packages".as_ref(), dir.as_os_str()];
        let mut pip: Vec<OsString> = match self.step(function, "python3 -m venv", &venv).await {
            Ok(()) => vec![venv_python.clone().into(), "-m".into(), "pip".into()],
            Err(e) => {
                // No ensurepip (Debian without python3-venv): a venv without pip, filled
                // by the interpreter's own pip.
                self.log(function, &format!("{e}"));
                self.log(function, "trying again without pip in the venv, with the interpreter's pip (python3 -m pip --python)");
                std::fs::remove_dir_all(&dir).or_else(not_found).map_err(folder(&dir))?;
                let bare = [venv.as_slice(), &["--without-pip".as_ref()]].concat();
                self.step(function, "python3 -m venv --without-pip", &bare).await?;
                vec![python.into(), "-m".into(), "pip".into(), "--python".into(), venv_python.clone().into()]
            }
        };
        pip.extend(pip_install_args(None, words).into_iter().map(OsString::from));
        let pip: Vec<&std::ffi::OsStr> = pip.iter().map(OsString::as_os_str).collect();
        self.step(function, "pip install", &pip).await?;
        let site = site_dirs(&venv_python).await?;
        let marker = Marker { python: self.python.clone(), words: words.to_vec(), site: site.clone() };
        let tmp = dir.join(format!("{MARKER}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(&marker).expect("the marker serializes")).map_err(folder(&tmp))?;
        std::fs::rename(&tmp, dir.join(MARKER)).map_err(folder(&dir))?;
        self.log(function, &format!("built the virtual environment in {:.1}s", started.elapsed().as_secs_f64()));
        Ok(site)
    }

    fn log(&self, function: &str, line: &str) {
        self.logs.push(function, BUILD_SOURCE, line);
    }

    /// Runs `argv` (the program first), each line of its output into the log store.
    async fn step(&self, function: &str, step: &str, argv: &[&std::ffi::OsStr]) -> Result<(), VenvError> {
        let program = PathBuf::from(argv[0]);
        let mut cmd = Command::new(&program);
        cmd.args(&argv[1..])
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if std::env::var_os("PIP_CERT").is_none() {
            if let Some(ca) = ca_bundle() {
                cmd.env("PIP_CERT", ca);
            }
        }
        let mut child = cmd.spawn().map_err(|source| VenvError::Run { program: program.clone(), source })?;
        let mut out = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let mut err = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        let mut tail = Tail::default();
        let run = async {
            let (mut out_done, mut err_done) = (false, false);
            while !(out_done && err_done) {
                let line = tokio::select! {
                    l = out.next_line(), if !out_done => l.unwrap_or(None).or_else(|| { out_done = true; None }),
                    l = err.next_line(), if !err_done => l.unwrap_or(None).or_else(|| { err_done = true; None }),
                };
                if let Some(line) = line.filter(|l| !l.trim().is_empty()) {
                    self.log(function, &line);
                    tail.push(line.trim_end());
                }
            }
            child.wait().await
        };
        match tokio::time::timeout(STEP_TIMEOUT, run).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(VenvError::Step { step: step.into(), status: status.to_string(), last_output: tail.text() }),
            Ok(Err(source)) => Err(VenvError::Run { program, source }),
            // Dropping the child kills it.
            Err(_) => Err(VenvError::Timeout { step: step.into(), limit: STEP_TIMEOUT, last_output: tail.text() }),
        }
    }
}

fn not_found(e: std::io::Error) -> std::io::Result<()> {
    match e.kind() {
        std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(e),
    }
}

/// The venv's site folders (`purelib`, then `platlib` if another), from its interpreter.
async fn site_dirs(venv_python: &Path) -> Result<Vec<PathBuf>, VenvError> {
    let script = "import json, sysconfig; print(json.dumps([sysconfig.get_path('purelib'), sysconfig.get_path('platlib')]))";
    let out = Command::new(venv_python)
        .args(["-c", script])
        .env_remove("PYTHONPATH")
        .output()
        .await
        .map_err(|source| VenvError::Run { program: venv_python.to_path_buf(), source })?;
    let site_error = |detail: String| VenvError::Site { python: venv_python.to_path_buf(), detail };
    if !out.status.success() {
        return Err(site_error(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    let dirs: Vec<PathBuf> = serde_json::from_slice(&out.stdout).map_err(|e| site_error(e.to_string()))?;
    let mut site = Vec::new();
    for d in dirs {
        if !site.contains(&d) {
            site.push(d);
        }
    }
    Ok(site)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_key_is_the_interpreter_and_the_words_in_order() {
        let py = Path::new("/usr/bin/python3.11");
        let k = key(py, &words(&["six==1.16.0"]));
        assert_eq!(k.len(), 16);
        assert_eq!(k, key(py, &words(&["six==1.16.0"])), "stable");
        assert_ne!(k, key(Path::new("/opt/py/bin/python3.11"), &words(&["six==1.16.0"])), "another interpreter");
        assert_ne!(k, key(py, &words(&["six==1.17.0"])));
        assert_ne!(key(py, &words(&["a", "b"])), key(py, &words(&["b", "a"])), "pip options are in order");
        assert_ne!(key(py, &words(&["a b"])), key(py, &words(&["a", "b"])));
    }

    #[test]
    fn the_deps_go_after_the_runtime_and_before_the_interpreters_folders() {
        let base = OsString::from("/rt:/usr/lib/python3/dist-packages");
        let deps = [PathBuf::from("/state/venvs/k/lib/python3.11/site-packages")];
        assert_eq!(python_path_with(&base, &deps), "/rt:/state/venvs/k/lib/python3.11/site-packages:/usr/lib/python3/dist-packages");
        assert_eq!(python_path_with("/rt".as_ref(), &deps), "/rt:/state/venvs/k/lib/python3.11/site-packages");
    }

    #[tokio::test]
    async fn a_finished_venv_on_disk_is_reused_and_a_half_built_one_is_not() {
        let root = std::env::temp_dir().join(format!("roost-venvs-{}", std::process::id()));
        let venvs = Venvs::new(root.clone(), "/usr/bin/python3".into(), Logs::default());
        let w = words(&["six==1.16.0"]);
        let k = key(Path::new("/usr/bin/python3"), &w);
        std::fs::create_dir_all(venvs.dir(&k)).unwrap();
        assert_eq!(venvs.finished(&k, &w), None, "no marker: not finished");
        let marker = Marker { python: "/usr/bin/python3".into(), words: w.clone(), site: vec!["/x/site-packages".into()] };
        std::fs::write(venvs.dir(&k).join(MARKER), serde_json::to_vec(&marker).unwrap()).unwrap();
        assert_eq!(venvs.finished(&k, &w), Some(vec![PathBuf::from("/x/site-packages")]));
        assert_eq!(venvs.finished(&k, &words(&["other"])), None, "another set of words");
        // Reused without running anything (the interpreter named does not matter).
        let site = venvs.ensure("f", "h", &w).await.unwrap().unwrap();
        assert_eq!(*site, [PathBuf::from("/x/site-packages")]);
        assert_eq!(venvs.ensure("f", "h", &[]).await.unwrap(), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn a_venv_that_cannot_be_made_fails_with_the_tail_and_is_remembered() {
        let root = std::env::temp_dir().join(format!("roost-venvs-bad-{}", std::process::id()));
        let logs = Logs::default();
        let venvs = Venvs::new(root.clone(), "/nonexistent/python3".into(), logs.clone());
        let w = words(&["six"]);
        let e = venvs.ensure("f", "h", &w).await.unwrap_err();
        assert!(e.to_string().contains("cannot run /nonexistent/python3"), "{e}");
        assert!(logs.tail_of("f", BUILD_SOURCE, 5).unwrap().contains("building the virtual environment"));
        let lines = logs.lines("f", None, None).len();
        let again = venvs.ensure("f", "h", &w).await.unwrap_err();
        assert!(Arc::ptr_eq(&e, &again));
        assert_eq!(logs.lines("f", None, None).len(), lines, "no build, no log, the second time");
        std::fs::remove_dir_all(&root).ok();
    }
}
