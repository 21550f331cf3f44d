//! Function definitions: the typed, validated form of `faas-runtime/global-function-definition.yml`.
//!
//! # The file
//!
//! The seed's schema loads unchanged; everything Roost adds is optional and has a default.
//! A field written with no value (`scaling:`) counts as absent.
//!
//! ```yaml
//! usable-functions:
//!   hello:                          # key: only used in messages
//!     name: "hello"                 # URL path /hello, Envoy cluster fn-hello; default: the key
//!     version: 0.1                  # required; a number or a string, becomes the image tag
//!     configuration:                # the seed's block; for the python and command runtimes
//!       programing_language: "python"        # (sic) optional; "python" or, with
//!                                            # runtime: command, any text
//!       base_function_file_name: "hello.py"  # the handler file, inside the folder
//!       function_folder: "hello"             # faas-runtime/python/functions/hello/
//!       extra_dependencies: ""               # pip packages, space separated or a list
//!     runtime: python               # python (default) | command | image, or a mapping:
//!                                   #   {kind: command, command: [sh, wc.sh]}
//!                                   #   {kind: image, image: "my-image:1"}
//!     scaling:
//!       min_replicas: 0             # kept running even when idle
//!       max_replicas: 10            # 1..=1000
//!       target_concurrency: 1       # requests one replica serves at once (Envoy's
//!                                   # per-host max_connections); more wait in a queue
//!                                   # that makes the function scale up
//!       idle_timeout: 10s           # no request started for this long: scale down
//!     limits:
//!       memory: 256m                # bytes, or with b, k, m, g (binary, as Docker)
//!       cpu: 1.0                    # cores
//!       pids: 128                   # processes and threads
//!       timeout: 30s                # longest request
//!     env:                          # extra environment; PORT and ROOST_* are Roost's
//!       GREETING: "hi"
//!     readiness:
//!       path: /healthz              # probed until it answers 2xx; or `readiness: /healthz`
//!       timeout: 30s                # a replica not ready by then failed to start
//!     auth: none                    # none (public) | token: calls need the platform's
//!                                   # API token (Authorization: Bearer), which Envoy
//!                                   # checks and removes before the function sees it
//!     async:                        # calls sent to /async/<name> (answered 202 at once)
//!       concurrency: 10             # delivered at once; default max_replicas x
//!                                   # target_concurrency (the function's full capacity)
//!       retries: 5                  # after the first attempt, for a 5xx, 408, 429, a
//!                                   # timeout or a connection failure; then dead letter
//!       backoff: 1s                 # wait before the first retry, doubled each time
//!                                   # (at most 5m)
//!       queue: 10000                # calls waiting at most; more are answered 429
//! ```
//!
//! Durations are a whole number with a unit, `500ms`, `10s`, `2m` or `1h`, or a bare
//! number of seconds. Runtimes:
//!
//! - `python`: an image built from `python/functions/<function_folder>/` (relative to the
//!   definitions file), `base_function_file_name` holding `async def handle(request)`.
//! - `command`: any language. `command` (a list, or a string split at spaces; default
//!   `./<base_function_file_name>`) runs in `command/functions/<function_folder>/` once per
//!   request: the body on stdin, the response from stdout, stderr to the log.
//! - `image`: an existing image that serves HTTP on `$PORT`; no `configuration`.
//!
//! # Validation
//!
//! [`parse`] checks the schema, [`load`] also checks that each function's folder and file
//! exist, [`load_file`] reads the file first. All of them report every problem at once
//! ([`SpecErrors`]), each naming the function, the field and what is allowed.
//!
//! # Layout
//!
//! - this module: the types of a valid definition, the defaults, and the entry points;
//! - `validate`: the checks from YAML to [`Definitions`], every problem reported;
//! - `units`: durations and sizes as written in the file ([`parse_duration`],
//!   [`format_duration`], [`parse_size`]).

mod units;
mod validate;

#[cfg(test)]
mod test_support;

pub use units::{format_duration, parse_duration, parse_size};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use units::MIB;

/// The one top-level key of the file.
pub const TOP_LEVEL_KEY: &str = "usable-functions";
/// Folder of the python functions, relative to the definitions file.
pub const PYTHON_FUNCTIONS_DIR: &str = "python/functions";
/// Folder of the command functions, relative to the definitions file.
pub const COMMAND_FUNCTIONS_DIR: &str = "command/functions";

/// Default `scaling.min_replicas`: scale to zero when idle.
pub const DEFAULT_MIN_REPLICAS: u32 = 0;
/// Default `scaling.max_replicas`.
pub const DEFAULT_MAX_REPLICAS: u32 = 10;
/// Highest `scaling.max_replicas` accepted.
pub const MAX_REPLICAS: u32 = 1000;
/// Default `scaling.target_concurrency`: one request per replica at a time, as AWS Lambda
/// does. Raise it for handlers that wait on I/O.
pub const DEFAULT_TARGET_CONCURRENCY: u32 = 1;
/// Highest `scaling.target_concurrency` accepted.
pub const MAX_TARGET_CONCURRENCY: u32 = 10_000;
/// Default `scaling.idle_timeout`, as in the seed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default `limits.memory`, in bytes.
pub const DEFAULT_MEMORY: u64 = 256 * MIB;
/// Lowest `limits.memory` accepted, in bytes (Docker refuses less).
pub const MIN_MEMORY: u64 = 6 * MIB;
/// Default `limits.cpu`, in cores.
pub const DEFAULT_CPU: f64 = 1.0;
/// Default `limits.pids`.
pub const DEFAULT_PIDS: u32 = 128;
/// Default `limits.timeout`: the longest a request may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `readiness.path`.
pub const DEFAULT_READINESS_PATH: &str = "/healthz";
/// Default `readiness.timeout`.
pub const DEFAULT_READINESS_TIMEOUT: Duration = Duration::from_secs(30);

/// What the gate holds a caller beyond a waking function's readiness timeout: time for
/// the start before the probe and the registration after it.
pub const HOLD_BEYOND_READINESS: Duration = Duration::from_secs(10);

/// How long the gate holds a caller while a function with this readiness timeout wakes.
pub fn hold(readiness_timeout: Duration) -> Duration {
    readiness_timeout + HOLD_BEYOND_READINESS
}

/// Default `async.retries`.
pub const DEFAULT_ASYNC_RETRIES: u32 = 5;
/// Highest `async.retries` accepted.
pub const MAX_ASYNC_RETRIES: u32 = 100;
/// Default `async.backoff`: the wait before the first retry.
pub const DEFAULT_ASYNC_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between two attempts of an asynchronous call, however often it doubled.
pub const MAX_ASYNC_BACKOFF: Duration = Duration::from_secs(300);
/// Default `async.queue`: calls of one function waiting at most.
pub const DEFAULT_ASYNC_QUEUE: u32 = 10_000;
/// Highest `async.queue` accepted.
pub const MAX_ASYNC_QUEUE: u32 = 1_000_000;
/// Highest `async.concurrency` accepted (and the most its default may be).
pub const MAX_ASYNC_CONCURRENCY: u32 = 10_000;

/// Valid function definitions, by function name.
pub type Definitions = BTreeMap<String, FunctionSpec>;

/// One validated function.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionSpec {
    /// Its key under `usable-functions`.
    pub key: String,
    /// Its name: URL path segment, cluster name, image name.
    pub name: String,
    /// Its version, the image tag.
    pub version: String,
    /// How it runs.
    pub runtime: FunctionKind,
    /// How many replicas, and when to scale.
    pub scaling: Scaling,
    /// Resources of each replica.
    pub limits: Limits,
    /// Extra environment variables of each replica.
    pub env: BTreeMap<String, String>,
    /// HTTP path probed until a new replica is ready.
    pub readiness_path: String,
    /// How long a new replica may take to answer its readiness path (a model loading for
    /// 20 s is a slow start, not a failure); the gate holds callers this long and more.
    #[serde(serialize_with = "units::serialize_duration")]
    pub readiness_timeout: Duration,
    /// Who may call it.
    pub auth: Auth,
    /// How its asynchronous calls are delivered.
    #[serde(rename = "async")]
    pub async_calls: AsyncCalls,
}

/// How a function's asynchronous calls (`/async/<name>`) are delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AsyncCalls {
    /// Calls delivered at once.
    pub concurrency: u32,
    /// Attempts after the first, for failures worth another try.
    pub retries: u32,
    /// Wait before the first retry, doubled for each next one up to [`MAX_ASYNC_BACKOFF`].
    #[serde(serialize_with = "units::serialize_duration")]
    pub backoff: Duration,
    /// Calls waiting at most; a call past it is answered 429.
    pub queue: u32,
}

impl AsyncCalls {
    /// The defaults for a function that scales as `scaling` says: as many calls at once as
    /// its replicas serve at most.
    pub fn defaults(scaling: &Scaling) -> AsyncCalls {
        AsyncCalls {
            concurrency: scaling.max_replicas.saturating_mul(scaling.target_concurrency).min(MAX_ASYNC_CONCURRENCY),
            retries: DEFAULT_ASYNC_RETRIES,
            backoff: DEFAULT_ASYNC_BACKOFF,
            queue: DEFAULT_ASYNC_QUEUE,
        }
    }
}

/// Who may call a function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    /// Anyone who reaches the platform's port.
    #[default]
    None,
    /// Callers with the platform's API token (`Authorization: Bearer`).
    Token,
}

/// How a function runs: its kind (`runtime:` in the file, `python`, `command` or
/// `image`) and what that kind needs. Not to be confused with where its replicas run (the
/// orchestrator's replica runtime, processes or Docker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FunctionKind {
    /// A Python handler, built into an image from its folder.
    Python {
        /// Folder, relative to the definitions file (`python/functions/<function_folder>`).
        folder: PathBuf,
        /// Handler file inside the folder.
        file: String,
        /// pip packages installed into the image.
        extra_dependencies: Vec<String>,
    },
    /// A command run once per request: body on stdin, response from stdout.
    Command {
        /// Folder, relative to the definitions file (`command/functions/<function_folder>`);
        /// the command runs in it.
        folder: PathBuf,
        /// The function's file inside the folder.
        file: String,
        /// Program and arguments.
        command: Vec<String>,
        /// `programing_language`, for information only.
        language: Option<String>,
    },
    /// An existing image serving HTTP on `$PORT`.
    Image {
        /// Image reference.
        image: String,
    },
}

impl FunctionKind {
    /// `python`, `command` or `image`.
    pub fn kind(&self) -> &'static str {
        match self {
            FunctionKind::Python { .. } => "python",
            FunctionKind::Command { .. } => "command",
            FunctionKind::Image { .. } => "image",
        }
    }

    /// The function's folder (relative to the definitions file) and file in it, if it has
    /// source code.
    pub fn source(&self) -> Option<(&Path, &str)> {
        match self {
            FunctionKind::Python { folder, file, .. } | FunctionKind::Command { folder, file, .. } => Some((folder, file)),
            FunctionKind::Image { .. } => None,
        }
    }
}

/// When and how far a function scales.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scaling {
    /// Replicas kept even when idle.
    pub min_replicas: u32,
    /// Most replicas at once.
    pub max_replicas: u32,
    /// Requests one replica serves at once (Envoy's per-host `max_connections`).
    pub target_concurrency: u32,
    /// How long without a started request before scaling down.
    #[serde(serialize_with = "units::serialize_duration")]
    pub idle_timeout: Duration,
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling {
            min_replicas: DEFAULT_MIN_REPLICAS,
            max_replicas: DEFAULT_MAX_REPLICAS,
            target_concurrency: DEFAULT_TARGET_CONCURRENCY,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Resources of one replica.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    /// Memory in bytes.
    pub memory: u64,
    /// CPU in cores.
    pub cpu: f64,
    /// Processes and threads.
    pub pids: u32,
    /// Longest a request may take.
    #[serde(serialize_with = "units::serialize_duration")]
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory: DEFAULT_MEMORY, cpu: DEFAULT_CPU, pids: DEFAULT_PIDS, timeout: DEFAULT_TIMEOUT }
    }
}

/// One problem with the function definitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read {}: {message}; check the path and its permissions", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The text is not YAML (or repeats a key).
    #[error("{message}; fix the YAML")]
    Syntax {
        /// What the YAML parser said, with the line.
        message: String,
    },
    /// A field is missing, unknown or has a value that is not allowed.
    #[error("{}{field}: {problem}; {allowed}", function_label(.function))]
    Field {
        /// The function's key under `usable-functions`, if the problem is in a function.
        function: Option<String>,
        /// Path of the field inside the function (or the file), such as `scaling.max_replicas`.
        field: String,
        /// What is wrong.
        problem: String,
        /// What is allowed, or what to do.
        allowed: String,
    },
}

fn function_label(function: &Option<String>) -> String {
    match function {
        Some(key) => format!("function {key:?}: "),
        None => String::new(),
    }
}

/// Every problem found in the function definitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(transparent)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problem(s) in the function definitions:", self.0.len())?;
        for error in &self.0 {
            write!(f, "\n  - {error}")?;
        }
        Ok(())
    }
}

/// Reads the definitions file at `path` and validates it, function folders and files
/// included (relative to the file's folder).
pub fn load_file(path: &Path) -> Result<Definitions, SpecErrors> {
    let yaml = std::fs::read_to_string(path)
        .map_err(|e| SpecErrors(vec![SpecError::Read { path: path.to_path_buf(), message: e.to_string() }]))?;
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    load(&yaml, base_dir)
}

/// Validates the definitions in `yaml`, checking that function folders and files exist
/// under `base_dir` (the folder of the definitions file).
pub fn load(yaml: &str, base_dir: &Path) -> Result<Definitions, SpecErrors> {
    validate::parse_inner(yaml, Some(base_dir))
}

/// The definitions as far as they are valid: one invalid function does not keep the others
/// from serving.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Partial {
    /// The valid functions.
    pub valid: Definitions,
    /// Invalid functions that have a usable name, by that name: their problems. Callers of
    /// such a function are told what is wrong with it.
    pub invalid: BTreeMap<String, SpecErrors>,
    /// Problems that belong to no function with a usable name (an invalid name, a second
    /// function of the same name, a key that is not a string).
    pub unattributed: Vec<SpecError>,
}

impl Partial {
    /// Every problem, as one report (`None` when the file is valid).
    pub fn problems(&self) -> Option<SpecErrors> {
        let all: Vec<SpecError> =
            self.invalid.values().flat_map(|e| e.0.iter().cloned()).chain(self.unattributed.iter().cloned()).collect();
        (!all.is_empty()).then_some(SpecErrors(all))
    }
}

/// Like [`load`], but keeps the valid functions when others are invalid. `Err` only for a
/// file that is no definitions file at all: not YAML, empty, or without
/// `usable-functions` as a mapping.
pub fn load_partial(yaml: &str, base_dir: &Path) -> Result<Partial, SpecErrors> {
    let parsed = validate::parse_all(yaml, Some(base_dir))?;
    let (file_level, per_function): (Vec<SpecError>, Vec<SpecError>) =
        parsed.errors.into_iter().partition(|e| !matches!(e, SpecError::Field { function: Some(_), .. }));
    if !file_level.is_empty() && parsed.definitions.is_empty() && parsed.names.is_empty() {
        return Err(SpecErrors(file_level.into_iter().chain(per_function).collect()));
    }
    let mut partial = Partial { valid: parsed.definitions, unattributed: file_level, ..Partial::default() };
    for error in per_function {
        let SpecError::Field { function: Some(key), .. } = &error else { unreachable!("partitioned above") };
        match parsed.names.get(key) {
            Some(name) => partial.invalid.entry(name.clone()).or_insert_with(|| SpecErrors(Vec::new())).0.push(error),
            None => partial.unattributed.push(error),
        }
    }
    Ok(partial)
}

/// Validates the definitions in `yaml` without looking at the file system.
pub fn parse(yaml: &str) -> Result<Definitions, SpecErrors> {
    validate::parse_inner(yaml, None)
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn seed_file_loads_unchanged() {
        let dir = TempDir::new();
        let path = dir.file("global-function-definition.yml", SEED);
        dir.file("python/functions/example/example.py", "async def handle(request): ...");

        let defs = load_file(&path).unwrap();
        let spec = &defs["example-faas-name"];
        assert_eq!(spec.key, "example-faas");
        assert_eq!(spec.version, "0.1");
        assert_eq!(
            spec.runtime,
            FunctionKind::Python {
                folder: PathBuf::from("python/functions/example"),
                file: "example.py".into(),
                extra_dependencies: vec![],
            }
        );
        assert_eq!(spec.scaling, Scaling::default());
        assert_eq!(spec.limits, Limits::default());
        assert!(spec.env.is_empty());
        assert_eq!(spec.readiness_path, "/healthz");
        assert_eq!(spec.readiness_timeout, Duration::from_secs(30));
    }

    #[test]
    fn defaults() {
        let scaling = Scaling::default();
        assert_eq!(scaling.min_replicas, 0);
        assert_eq!(scaling.max_replicas, 10);
        assert_eq!(scaling.target_concurrency, 1);
        assert_eq!(scaling.idle_timeout, Duration::from_secs(10));
        let limits = Limits::default();
        assert_eq!(limits.memory, 256 * 1024 * 1024);
        assert_eq!(limits.cpu, 1.0);
        assert_eq!(limits.pids, 128);
        assert_eq!(limits.timeout, Duration::from_secs(30));
    }

    #[test]
    fn repository_file_parses() {
        let yaml = include_str!("../../../faas-runtime/global-function-definition.yml");
        let defs = parse(yaml).unwrap_or_else(|e| panic!("{e}"));
        for name in ["hello", "add", "echo", "sleep"] {
            assert_eq!(defs[name].runtime.kind(), "python", "{name}");
        }
        assert!(defs.values().any(|f| f.runtime.kind() == "command"));
    }

    #[test]
    fn one_invalid_function_keeps_the_others() {
        let yaml = format!(
            "{}  broken:\n    version: 1\n    configuration:\n      base_function_file_name: b.py\n      \
             function_folder: nope\n    scaling:\n      max_replicas: 0\n  Bad Name:\n    version: 1\n",
            SEED
        );
        let dir = TempDir::new();
        dir.file("python/functions/example/example.py", "async def handle(request): ...");
        let partial = load_partial(&yaml, &dir.0).unwrap();
        assert_eq!(partial.valid.keys().collect::<Vec<_>>(), ["example-faas-name"]);
        let broken = &partial.invalid["broken"];
        assert_eq!(broken.0.len(), 2, "{broken}");
        assert!(broken.to_string().contains("scaling.max_replicas"), "{broken}");
        assert_eq!(partial.unattributed.len(), 2, "{:?}", partial.unattributed);
        assert_eq!(partial.problems().unwrap().0.len(), 4);
        // The strict reading refuses the whole file, as before.
        assert!(load(&yaml, &dir.0).is_err());
        // Nothing usable at all: the file is refused.
        assert!(load_partial("usable-functions: 3\n", &dir.0).is_err());
        assert!(load_partial("nope: [", &dir.0).is_err());
    }

    #[test]
    fn read_error() {
        let errors = load_file(Path::new("/nonexistent/roost.yml")).unwrap_err().0;
        assert!(matches!(errors[..], [SpecError::Read { .. }]));
        assert!(errors[0].to_string().starts_with("cannot read /nonexistent/roost.yml"));
    }

    #[test]
    fn serializes_durations_as_text() {
        // Through serde_yaml, as serde_json is not a dependency of this crate.
        let text = serde_yaml::to_string(&parse(SEED).unwrap()).unwrap();
        assert!(text.contains("idle_timeout: 10s"), "{text}");
        assert!(text.contains("kind: python"), "{text}");
    }
}
