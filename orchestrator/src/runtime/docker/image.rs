//! The image of a python or command function: its tag, its Dockerfile, its build context
//! (the runtime package, the function's folder and, for `extra_dependencies`, the CA
//! bundle pip trusts) and the build through the API.
//!
//! # `extra_dependencies`
//!
//! Installed by the base image's pip (Debian's `python3-pip`) with `--target
//! /opt/roost/deps`, the words of the definition as they are after `pip install`
//! ([`crate::runtime::build::pip_install_args`]). `--target` installs every requirement
//! there, even one Debian's `dist-packages` has, so a pinned version is what the function
//! imports: the replica's path (it runs `python3 -S`, no `site`) is `/opt/roost`, then
//! `/opt/roost/deps`, then Debian's `/usr/lib/python3/dist-packages` (for example a
//! `starlette==0.40` pin wins over Debian's `python3-starlette`).
//!
//! Behind a TLS-inspecting proxy pip must trust the proxy's CA: the host's bundle
//! ([`crate::runtime::build::ca_bundle`]) goes into the context and `PIP_CERT` names it
//! for the pip step only; the orchestrator's `HTTP(S)_PROXY` and `NO_PROXY` are passed as
//! build arguments (Docker's predefined ones: not in the image's history, not in the
//! cache key).

use super::logs::LineSplitter;
use super::{ImageError, MANAGED, MAX_BUILDS};
use crate::logs::Logs;
use crate::runtime::build::{ca_bundle, pip_install_args, proxy_env, Builds, Tail};
use crate::runtime::{PrepareFailure, RuntimeError};
use bollard::query_parameters::BuildImageOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;
use roost_common::spec::{FunctionKind as Kind, FunctionSpec};
use roost_common::wire::logs::BUILD_SOURCE;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::info;

/// A Docker-safe tag fragment of a version.
fn tag_part(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// Where the function's folder is inside its image (`ROOST_FUNCTION_DIR`, the working
/// folder).
pub(super) const FUNCTION_DIR: &str = "/opt/roost/function";

/// Where the CA bundle pip trusts is in the build context and the image (removed after
/// the pip step).
pub(super) const CA_FILE: &str = "/opt/roost/build-ca.crt";

/// Where `extra_dependencies` are installed in the image.
pub(super) const DEPS_DIR: &str = "/opt/roost/deps";

/// `PYTHONPATH` of a function image: the runtime, the dependencies, then Debian's
/// packages (replicas run `python3 -S`, so `site` adds nothing).
pub(super) const IMAGE_PYTHONPATH: &str = "/opt/roost:/opt/roost/deps:/usr/lib/python3/dist-packages";

/// The image tag of a function: its version and a hash of its build context (the
/// Dockerfile with the pip words, the runtime package, the function's folder and the CA
/// bundle when there are dependencies), so any change to what goes into the image gives a
/// new tag.
pub(super) fn image_tag(spec: &FunctionSpec, context: &[u8]) -> String {
    match &spec.runtime {
        Kind::Image { image } => image.clone(),
        _ => format!("roost-fn-{}:{}-{:016x}", spec.name, tag_part(&spec.version), roost_common::hash::fnv1a(context)),
    }
}

/// The Dockerfile of a python or command function image. As few steps as it can be: the
/// classic builder runs a container for every step, seconds each on a slow storage
/// driver (fuse-overlayfs), and a function's first cold start may wait for its build.
/// The context holds `opt/roost/roost_runtime` and `opt/roost/function` (one COPY).
/// With `with_ca`, the context holds [`CA_FILE`] and pip trusts it.
pub(super) fn dockerfile(spec: &FunctionSpec, base: &str, with_ca: bool) -> String {
    let quoted = |v: &str| serde_json::to_string(v).expect("strings serialize");
    let mut d = format!("FROM {base}\nCOPY opt /opt\n");
    let kind = match &spec.runtime {
        Kind::Python { .. } => "python",
        _ => "command",
    };
    // Compiled once at build time: the root file system is read-only at run time. One
    // step with pip's: each step is a container.
    let compile = "python3 -m compileall -q /opt/roost";
    match pip_words(spec) {
        [] => d.push_str(&format!("RUN {compile}\n")),
        words => {
            let args: Vec<String> = pip_install_args(Some(DEPS_DIR), words).into_iter().map(sh_quote).collect();
            let pip = format!("python3 -m pip {}", args.join(" "));
            match with_ca {
                true => d.push_str(&format!("RUN PIP_CERT={CA_FILE} {pip} && rm -f {CA_FILE} && {compile}\n")),
                false => d.push_str(&format!("RUN {pip} && {compile}\n")),
            }
        }
    }
    // Debian's dist-packages last (Starlette from python3-starlette): with -S only
    // PYTHONPATH names them, and a function's own dependencies come first.
    // What the runtime serves is in the image too (the container's environment repeats
    // it): the image runs as its function anywhere, `runtime: {kind: image}` included.
    let what = match &spec.runtime {
        Kind::Python { file, .. } => format!("ROOST_FUNCTION_FILE={}", quoted(file)),
        Kind::Command { command, .. } => format!("ROOST_COMMAND={}", quoted(&serde_json::to_string(command).expect("strings serialize"))),
        Kind::Image { .. } => String::new(),
    };
    d.push_str(&format!("ENV PYTHONPATH={IMAGE_PYTHONPATH} PYTHONDONTWRITEBYTECODE=1 ROOST_FUNCTION_DIR={FUNCTION_DIR} {what}\n"));
    // -S: no site module (its folders are on PYTHONPATH): a faster start.
    d.push_str(&format!("WORKDIR {FUNCTION_DIR}\nCMD [\"python3\", \"-S\", \"-m\", \"roost_runtime\", \"{kind}\"]\n"));
    // One LABEL step (the build API's labels option adds one step per label). The name
    // and version are in the tag already, so the labels never change the context's hash.
    d.push_str(&format!("LABEL {MANAGED}=\"true\" roost.function={} roost.version={}\n", quoted(&spec.name), quoted(&spec.version)));
    d
}

/// The pip words of a function: its `extra_dependencies` (none for other kinds).
fn pip_words(spec: &FunctionSpec) -> &[String] {
    match &spec.runtime {
        Kind::Python { extra_dependencies, .. } => extra_dependencies,
        _ => &[],
    }
}

/// `word` for `sh`: as it is when it has nothing the shell reads, else in single quotes.
fn sh_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.,:/=@+%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn add_file(tar: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, name, data)
}

/// The function images of one engine: built (or, for an `image` function, found) once
/// per definition, at most [`MAX_BUILDS`] at a time, failures remembered (see
/// [`Builds`]). The Docker and the Swarm runtimes both prepare their functions here.
pub(crate) struct Images {
    docker: Docker,
    /// Base image of function images (Python 3 in it).
    base_image: String,
    /// Folder of the definitions file (function folders are relative to it).
    definitions_dir: PathBuf,
    /// Folder holding the `roost_runtime` package.
    runtime_dir: PathBuf,
    /// One build at a time per image tag (concurrent prepares of a function wait for it),
    /// and the failed ones, remembered by tag and definition hash.
    builds: Builds,
    /// At most [`MAX_BUILDS`] image builds at once, whatever the number of functions.
    slots: tokio::sync::Semaphore,
    /// The image prepared (built, or found) for each definition hash.
    prepared: Mutex<HashMap<String, String>>,
    /// For each definition hash, the [`context_stamp`] of what its prepared image was
    /// made from: unchanged, a `prepare` (which every start makes) is a walk of the
    /// folders' metadata, not a packing of the context and a question to the engine.
    stamps: Mutex<HashMap<String, u64>>,
    /// Where each build's output goes.
    logs: Logs,
}

impl Images {
    /// The images of `docker`'s engine, built from `base_image`, the function folders
    /// under `definitions_dir` and the runtime package in `runtime_dir`.
    pub(crate) fn new(docker: Docker, base_image: String, definitions_dir: PathBuf, runtime_dir: PathBuf, logs: Logs) -> Images {
        Images {
            docker,
            base_image,
            definitions_dir,
            runtime_dir,
            builds: Builds::default(),
            slots: tokio::sync::Semaphore::new(MAX_BUILDS),
            prepared: Mutex::default(),
            stamps: Mutex::default(),
            logs,
        }
    }

    /// The image prepared for the definition `spec_hash`, if it was.
    pub(crate) fn prepared(&self, spec_hash: &str) -> Option<String> {
        self.prepared.lock().unwrap().get(spec_hash).cloned()
    }

    /// How long the image of `spec_hash` has been building, if it is.
    pub(crate) fn building(&self, spec_hash: &str) -> Option<Duration> {
        self.builds.building(spec_hash)
    }

    /// Builds (or finds) the function's image and returns its tag: the contract of
    /// [`crate::runtime::ReplicaRuntime::prepare`].
    pub(crate) async fn prepare(&self, spec: &FunctionSpec, spec_hash: &str) -> Result<String, RuntimeError> {
        let fail = |source: Arc<PrepareFailure>| RuntimeError::Prepare { function: spec.name.clone(), source };
        let failed = |e: ImageError| fail(Arc::new(e.into()));
        let mut stamp = None;
        let body = match &spec.runtime {
            Kind::Image { .. } => Vec::new(),
            Kind::Python { folder, .. } | Kind::Command { folder, .. } => {
                let folder = self.definitions_dir.join(folder);
                // Nothing it is built from changed since it was prepared: the same image.
                stamp = context_stamp(spec, &folder, &self.runtime_dir).ok();
                if let Some(tag) = stamp.and_then(|now| self.unchanged(spec_hash, now)) {
                    return Ok(tag);
                }
                self.context(spec, &folder).map_err(|source| failed(ImageError::Pack { folder, source }))?
            }
        };
        let tag = image_tag(spec, &body);
        // Failed before, for this definition and this context: the same failure, at once.
        if let Some(f) = self.builds.failure(&tag, spec_hash) {
            return Err(fail(f));
        }
        if self.docker.inspect_image(&tag).await.is_err() {
            if let Kind::Image { image } = &spec.runtime {
                // Not a build: looked for again on every call (`docker load` needs no
                // change to the definition).
                return Err(failed(ImageError::Missing { image: image.clone() }));
            }
            let ensure = || async {
                if self.docker.inspect_image(&tag).await.is_ok() {
                    return Ok(()); // built while this call waited
                }
                let _slot = self.slots.acquire().await.expect("the build semaphore is never closed");
                if self.docker.inspect_image(&tag).await.is_ok() {
                    return Ok(()); // built while this call waited for a slot
                }
                build(&self.docker, &self.logs, spec, &tag, body).await.map_err(PrepareFailure::from)
            };
            self.builds.run(&tag, spec_hash, ensure).await.map_err(fail)?;
        }
        self.prepared.lock().unwrap().insert(spec_hash.to_string(), tag.clone());
        let mut stamps = self.stamps.lock().unwrap();
        match stamp {
            Some(stamp) => stamps.insert(spec_hash.to_string(), stamp),
            None => stamps.remove(spec_hash),
        };
        Ok(tag)
    }

    /// The image prepared for `spec_hash`, when it was made from what has `stamp`.
    fn unchanged(&self, spec_hash: &str, stamp: u64) -> Option<String> {
        let made_from = self.stamps.lock().unwrap().get(spec_hash).copied();
        made_from.filter(|s| *s == stamp).and_then(|_| self.prepared(spec_hash))
    }

    /// The next `prepare` of `spec_hash` packs its context and asks the engine for the
    /// image again (a start found it missing: removed behind the runtime's back).
    pub(crate) fn recheck(&self, spec_hash: &str) {
        self.stamps.lock().unwrap().remove(spec_hash);
    }

    /// The build context of a python or command function in `folder`: built in memory on
    /// every `prepare` (its hash is the image tag), which for a small folder costs about a
    /// millisecond; a large folder costs its size in reading and memory each time.
    fn context(&self, spec: &FunctionSpec, folder: &Path) -> std::io::Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        // No dependencies: no pip, no CA bundle (a new host bundle changes no tag).
        let ca = if pip_words(spec).is_empty() { None } else { ca_bundle() };
        let ca = match ca {
            Some(path) => Some(std::fs::read(&path).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?),
            None => None,
        };
        add_file(&mut tar, "Dockerfile", dockerfile(spec, &self.base_image, ca.is_some()).as_bytes())?;
        if let Some(ca) = &ca {
            add_file(&mut tar, CA_FILE.trim_start_matches('/'), ca)?;
        }
        tar.append_dir_all("opt/roost/roost_runtime", self.runtime_dir.join("roost_runtime"))?;
        tar.append_dir_all("opt/roost/function", folder)?;
        tar.into_inner()
    }
}

/// A fingerprint of what the context of a python or command function in `folder` is made
/// of, from metadata alone: every file's path, size and modification time in the folder
/// and in the runtime package under `runtime_dir`, and the CA bundle's when pip runs. An
/// edit changes it; the definition itself is in the hash the stamp is kept under.
fn context_stamp(spec: &FunctionSpec, folder: &Path, runtime_dir: &Path) -> std::io::Result<u64> {
    let mut entries = Vec::new();
    stat_tree(folder, &mut entries)?;
    stat_tree(&runtime_dir.join("roost_runtime"), &mut entries)?;
    if !pip_words(spec).is_empty() {
        if let Some(ca) = ca_bundle() {
            stat_file(&ca, &std::fs::metadata(&ca)?, &mut entries);
        }
    }
    Ok(roost_common::hash::fnv1a(&entries))
}

/// Appends the path, size and modification time of every file under `dir` (in a stable
/// order, following links as the context's packing does) to `out`.
fn stat_tree(dir: &Path, out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    children.sort();
    for path in children {
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            stat_tree(&path, out)?;
        } else {
            stat_file(&path, &meta, out);
        }
    }
    Ok(())
}

fn stat_file(path: &Path, meta: &std::fs::Metadata, out: &mut Vec<u8>) {
    let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
    out.extend_from_slice(path.as_os_str().as_encoded_bytes());
    out.push(0);
    out.extend_from_slice(&meta.len().to_le_bytes());
    out.extend_from_slice(&modified.as_nanos().to_le_bytes());
}

/// A line of the build's output worth keeping: without trailing blanks, not empty (the
/// output comes in chunks that may hold several lines or part of one: [`LineSplitter`]).
fn build_line(line: String) -> Option<String> {
    Some(line.trim_end().to_string()).filter(|l| !l.is_empty())
}

/// Builds `tag` from the build context `body` (the Dockerfile in it), each line of its
/// output into `logs` (source `build`); the error holds the last lines of it.
pub(super) async fn build(docker: &Docker, logs: &Logs, spec: &FunctionSpec, tag: &str, body: Vec<u8>) -> Result<(), ImageError> {
    let proxies: HashMap<String, String> = if pip_words(spec).is_empty() { HashMap::new() } else { proxy_env().into_iter().collect() };
    let options = BuildImageOptionsBuilder::default().dockerfile("Dockerfile").t(tag).rm(true).forcerm(true).buildargs(&proxies).build();
    info!(function = %spec.name, image = %tag, "building the function image");
    logs.push(&spec.name, BUILD_SOURCE, &format!("building image {tag}"));
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(body.into())));
    let mut tail = Tail::default();
    let mut lines = LineSplitter::default();
    let keep = |line: &str, tail: &mut Tail| {
        logs.push(&spec.name, BUILD_SOURCE, line);
        tail.push(line);
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                for line in lines.feed(info.stream.as_deref().unwrap_or_default().as_bytes()).into_iter().filter_map(build_line) {
                    keep(&line, &mut tail);
                }
                if let Some(err) = info.error_detail.and_then(|d| d.message) {
                    if let Some(line) = lines.finish().and_then(build_line) {
                        keep(&line, &mut tail);
                    }
                    keep(&err, &mut tail);
                    return Err(ImageError::Step { message: err, last_output: tail.text() });
                }
            }
            Err(source) => {
                if let Some(line) = lines.finish().and_then(build_line) {
                    keep(&line, &mut tail);
                }
                keep(&format!("the build failed: {source}"), &mut tail);
                return Err(ImageError::Engine { source, last_output: tail.text() });
            }
        }
    }
    if let Some(line) = lines.finish().and_then(build_line) {
        keep(&line, &mut tail);
    }
    logs.push(&spec.name, BUILD_SOURCE, &format!("built image {tag}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> FunctionSpec {
        roost_common::spec::parse(yaml).unwrap().into_values().next().unwrap()
    }

    fn with_words(mut s: FunctionSpec, words: &[&str]) -> FunctionSpec {
        if let Kind::Python { extra_dependencies, .. } = &mut s.runtime {
            *extra_dependencies = words.iter().map(|w| w.to_string()).collect();
        }
        s
    }

    #[test]
    fn tags_and_dockerfiles() {
        let s = spec("usable-functions:\n  hello:\n    version: 0.1\n    configuration: {programing_language: python, base_function_file_name: hello.py, function_folder: hello, extra_dependencies: \"requests\"}\n");
        assert_eq!(image_tag(&s, b"ctx"), format!("roost-fn-hello:0.1-{:016x}", roost_common::hash::fnv1a(b"ctx")));
        assert_ne!(image_tag(&s, b"ctx"), image_tag(&s, b"ctx2"));
        let d = dockerfile(&s, "roost/base:bookworm", true);
        assert!(d.starts_with("FROM roost/base:bookworm\n"));
        assert!(
            d.contains("\nRUN PIP_CERT=/opt/roost/build-ca.crt python3 -m pip install --no-cache-dir --disable-pip-version-check --no-input --progress-bar off --no-color --target /opt/roost/deps requests && rm -f /opt/roost/build-ca.crt && python3 -m compileall -q /opt/roost\n"),
            "{d}"
        );
        assert!(d.contains("ENV PYTHONPATH=/opt/roost:/opt/roost/deps:/usr/lib/python3/dist-packages "), "{d}");
        assert!(d.contains(r#"CMD ["python3", "-S", "-m", "roost_runtime", "python"]"#));
        assert!(d.contains(r#" ROOST_FUNCTION_FILE="hello.py""#), "the image knows its handler: {d}");
        let cmd = spec("usable-functions:\n  wc:\n    version: 1\n    runtime: {kind: command, command: [sh, \"w c.sh\"]}\n    configuration: {base_function_file_name: wc.sh, function_folder: wc}\n");
        assert!(dockerfile(&cmd, "b", false).contains(r#" ROOST_COMMAND="[\"sh\",\"w c.sh\"]""#), "{}", dockerfile(&cmd, "b", false));
        assert!(d.ends_with("LABEL roost.managed=\"true\" roost.function=\"hello\" roost.version=\"0.1\"\n"), "{d}");
        // FROM, one COPY, pip and compileall, ENV, WORKDIR, CMD, one LABEL.
        assert_eq!(d.lines().count(), 7, "{d}");
        // No CA bundle found: pip's own.
        assert!(dockerfile(&s, "b", false).contains("\nRUN python3 -m pip install --no-cache-dir"));
        // No dependencies: no pip.
        let plain = dockerfile(&with_words(s.clone(), &[]), "b", true);
        assert!(!plain.contains("pip") && plain.contains("\nRUN python3 -m compileall -q /opt/roost\n"), "{plain}");
        // The words change the Dockerfile, so the context, so the tag.
        assert_ne!(dockerfile(&with_words(s.clone(), &["requests==2.31"]), "b", true), d);
        let img = spec("usable-functions:\n  x:\n    version: 1\n    runtime: {kind: image, image: \"my:1\"}\n");
        assert_eq!(image_tag(&img, b""), "my:1");
    }

    #[test]
    fn pip_words_and_options_reach_the_shell_as_they_are() {
        let s = with_words(
            spec("usable-functions:\n  hello:\n    version: 1\n    configuration: {base_function_file_name: hello.py, function_folder: hello}\n"),
            &["--extra-index-url", "https://x.example/simple", "numpy>=1.26,<2", "--pre", "it's"],
        );
        let d = dockerfile(&s, "b", false);
        assert!(
            d.contains("--target /opt/roost/deps --extra-index-url https://x.example/simple 'numpy>=1.26,<2' --pre 'it'\\''s' && python3"),
            "{d}"
        );
        // As the definitions file gives them.
        let parsed = spec("usable-functions:\n  hello:\n    version: 1\n    configuration: {base_function_file_name: hello.py, function_folder: hello, extra_dependencies: \"torch --extra-index-url=https://x.example/whl/cpu --pre\"}\n");
        let d = dockerfile(&parsed, "b", false);
        assert!(d.contains("--target /opt/roost/deps torch --extra-index-url=https://x.example/whl/cpu --pre && python3"), "{d}");
        assert_eq!(sh_quote("six==1.16.0"), "six==1.16.0");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("a b"), "'a b'");
    }

    #[test]
    fn the_context_stamp_changes_with_any_file_it_is_made_of() {
        let root = std::env::temp_dir().join(format!("roost-stamp-{}", std::process::id()));
        let (folder, runtime) = (root.join("fn"), root.join("rt"));
        std::fs::create_dir_all(folder.join("lib")).unwrap();
        std::fs::create_dir_all(runtime.join("roost_runtime")).unwrap();
        std::fs::write(folder.join("hello.py"), "def handle(req): return 'hi'\n").unwrap();
        std::fs::write(runtime.join("roost_runtime/__init__.py"), "").unwrap();
        let s = spec(
            "usable-functions:\n  hello:\n    version: 0.1\n    configuration: {base_function_file_name: hello.py, function_folder: fn}\n",
        );
        let stamp = || context_stamp(&s, &folder, &runtime).unwrap();
        let first = stamp();
        assert_eq!(stamp(), first, "nothing changed");
        std::fs::write(folder.join("lib/util.py"), "X = 1\n").unwrap();
        let with_file = stamp();
        assert_ne!(with_file, first, "a new file in a subfolder");
        std::fs::write(folder.join("lib/util.py"), "X = 22\n").unwrap();
        assert_ne!(stamp(), with_file, "an edit");
        let edited = stamp();
        std::fs::write(runtime.join("roost_runtime/__init__.py"), "# new\n").unwrap();
        assert_ne!(stamp(), edited, "the runtime package");
        std::fs::remove_dir_all(&folder).unwrap();
        assert!(context_stamp(&s, &folder, &runtime).is_err(), "a missing folder: packed (and refused) as before");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn build_output_is_split_into_lines() {
        let mut l = LineSplitter::default();
        let mut feed = |chunk: &str| l.feed(chunk.as_bytes()).into_iter().filter_map(build_line).collect::<Vec<_>>();
        assert_eq!(feed("Step 1/7 : FROM b\n ---> abc\n"), ["Step 1/7 : FROM b", " ---> abc"]);
        assert!(feed("Collecting si").is_empty());
        assert_eq!(feed("x\n\nERROR: no\r\npartial"), ["Collecting six", "ERROR: no"]);
        assert_eq!(l.finish().and_then(build_line).as_deref(), Some("partial"));
        assert_eq!(l.finish().and_then(build_line), None);
    }
}
