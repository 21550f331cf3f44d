//! Validation of the definitions file: YAML in, [`Definitions`] out, every problem
//! reported at once as a [`SpecError`] naming the function, the field and what is allowed.

use std::collections::BTreeMap;
use std::path::{Component, Path};
use std::time::Duration;

use serde_yaml::{Mapping, Value};

use super::units::{parse_duration, parse_size};
use super::{
    AsyncCalls, Auth, Definitions, FunctionKind, FunctionSpec, Limits, Scaling, SpecError, SpecErrors, COMMAND_FUNCTIONS_DIR,
    DEFAULT_READINESS_PATH, DEFAULT_READINESS_TIMEOUT, MAX_ASYNC_BACKOFF, MAX_ASYNC_CONCURRENCY, MAX_ASYNC_QUEUE, MAX_ASYNC_RETRIES,
    MAX_REPLICAS, MAX_TARGET_CONCURRENCY, MIN_MEMORY, PYTHON_FUNCTIONS_DIR, TOP_LEVEL_KEY,
};
use crate::naming::{validate_function_name, MAX_FUNCTION_NAME_LEN};

const FUNCTION_FIELDS: &[&str] = &["name", "version", "configuration", "runtime", "scaling", "limits", "env", "readiness", "auth", "async"];
const CONFIGURATION_FIELDS: &[&str] = &["programing_language", "base_function_file_name", "function_folder", "extra_dependencies"];
const RUNTIME_FIELDS: &[&str] = &["kind", "command", "image"];
const SCALING_FIELDS: &[&str] = &["min_replicas", "max_replicas", "target_concurrency", "idle_timeout"];
const LIMITS_FIELDS: &[&str] = &["memory", "cpu", "pids", "timeout"];
const READINESS_FIELDS: &[&str] = &["path", "timeout"];
const ASYNC_FIELDS: &[&str] = &["concurrency", "retries", "backoff", "queue"];

const DURATION_HELP: &str = "use a whole number with a unit: 500ms, 10s, 2m, 1h (a bare number means seconds)";
const SIZE_HELP: &str = "use bytes, or a whole number with a unit: 512k, 128m, 1g";

/// What a reading of the file gives: the valid functions, every problem, and for each
/// function key with a problem the name it would be called by (when that name is valid and
/// no other function has it), so the function can be answered for.
pub(super) struct Parsed {
    pub(super) definitions: Definitions,
    pub(super) errors: Vec<SpecError>,
    pub(super) names: BTreeMap<String, String>,
}

/// Parses the file; `Err` only when it is not YAML.
pub(super) fn parse_all(yaml: &str, base_dir: Option<&Path>) -> Result<Parsed, SpecErrors> {
    let syntax = |message: String| SpecErrors(vec![SpecError::Syntax { message }]);
    let mut root: Value = serde_yaml::from_str(yaml).map_err(|e| syntax(e.to_string()))?;
    root.apply_merge().map_err(|e| syntax(e.to_string()))?;

    let mut errors = Vec::new();
    let mut definitions = Definitions::new();
    let mut names = BTreeMap::new();
    let mut top = Check { function: None, errors: &mut errors };
    let functions = function_mapping(&root, &mut top);

    if let Some(functions) = functions {
        // Name -> key of the function that has it, to report duplicates.
        let mut keys_by_name: BTreeMap<String, String> = BTreeMap::new();
        for (key, value) in functions {
            let Some(key) = key.as_str() else {
                errors.push(SpecError::Field {
                    function: None,
                    field: TOP_LEVEL_KEY.to_string(),
                    problem: format!("the key {} is not a string", show(key)),
                    allowed: "use the function's name as its key".to_string(),
                });
                continue;
            };
            let name = value.get("name").map_or(Some(key), Value::as_str).filter(|n| validate_function_name(n).is_ok());
            let Some(spec) = parse_function(key, value, base_dir, &mut errors) else {
                if let Some(name) = name.filter(|n| !keys_by_name.contains_key(*n)) {
                    keys_by_name.insert(name.to_string(), key.to_string());
                    names.insert(key.to_string(), name.to_string());
                }
                continue;
            };
            if let Some(first) = keys_by_name.get(&spec.name) {
                errors.push(field_error(
                    key,
                    "name",
                    format!("{:?} is already the name of function {first:?}", spec.name),
                    "give every function its own name",
                ));
                continue;
            }
            keys_by_name.insert(spec.name.clone(), key.to_string());
            definitions.insert(spec.name.clone(), spec);
        }
    }
    // A valid function named like an invalid one that came first is not its own.
    names.retain(|_, name| !definitions.contains_key(name));
    Ok(Parsed { definitions, errors, names })
}

pub(super) fn parse_inner(yaml: &str, base_dir: Option<&Path>) -> Result<Definitions, SpecErrors> {
    let parsed = parse_all(yaml, base_dir)?;
    if parsed.errors.is_empty() {
        Ok(parsed.definitions)
    } else {
        Err(SpecErrors(parsed.errors))
    }
}

/// The functions under `usable-functions`, after reporting what is wrong around them.
fn function_mapping<'v>(root: &'v Value, top: &mut Check) -> Option<&'v Mapping> {
    let how = format!("write `{TOP_LEVEL_KEY}:` with the functions under it");
    let fields = match root {
        // An empty file is more likely a half-written edit than "no functions".
        Value::Null => {
            top.fail(TOP_LEVEL_KEY, "the file is empty", how);
            return None;
        }
        Value::Mapping(_) => top.map("", root, &[TOP_LEVEL_KEY])?,
        other => {
            let problem = format!("the file holds {}, not a mapping", show(other));
            top.fail(TOP_LEVEL_KEY, problem, how);
            return None;
        }
    };
    match fields.values.get(TOP_LEVEL_KEY) {
        None => {
            top.fail(TOP_LEVEL_KEY, "missing", how);
            None
        }
        Some(Value::Mapping(functions)) => Some(functions),
        Some(Value::Null) => None, // no functions
        Some(other) => {
            let problem = format!("expected a mapping of functions, found {}", show(other));
            top.fail(TOP_LEVEL_KEY, problem, how);
            None
        }
    }
}

fn field_error(key: &str, field: &str, problem: String, allowed: &str) -> SpecError {
    SpecError::Field { function: Some(key.to_string()), field: field.to_string(), problem, allowed: allowed.to_string() }
}

/// Parses one function; `None` after reporting its errors.
fn parse_function(key: &str, value: &Value, base_dir: Option<&Path>, errors: &mut Vec<SpecError>) -> Option<FunctionSpec> {
    let errors_before = errors.len();
    let mut c = Check { function: Some(key), errors };
    if !value.is_mapping() {
        c.fail(
            &join(TOP_LEVEL_KEY, key),
            format!("expected the function's fields, found {}", show(value)),
            format!("write {} under it", FUNCTION_FIELDS.join(", ")),
        );
        return None;
    }
    let fields = c.map("", value, FUNCTION_FIELDS)?;

    let name = match fields.get("name") {
        Some((path, v)) => c.string(&path, v),
        None => Some(key.to_string()),
    };
    if let Some(name) = &name {
        if let Err(e) = validate_function_name(name) {
            let problem = if fields.get("name").is_some() {
                format!("{name:?} is not a safe URL path segment: {}", e.reason)
            } else {
                format!("no name is given and the key {name:?} is not a valid name: {}", e.reason)
            };
            c.fail(
                "name",
                problem,
                format!(
                    "use 1-{MAX_FUNCTION_NAME_LEN} characters of a-z, 0-9, '-' and '_', \
                     starting with a letter or digit"
                ),
            );
        }
    }

    let version = match fields.get("version") {
        Some((path, v)) => c.version(&path, v),
        None => {
            c.fail("version", "missing", "add `version: 0.1` (a number or a string)");
            None
        }
    };
    let runtime = c.runtime(fields.get("configuration").map(|(_, v)| v), fields.get("runtime").map(|(_, v)| v));
    if let (Some(runtime), Some(base_dir)) = (&runtime, base_dir) {
        c.source_exists(base_dir, runtime);
    }
    let scaling = fields.get("scaling").map(|(path, v)| c.scaling(&path, v)).unwrap_or_default();
    let limits = fields.get("limits").map(|(path, v)| c.limits(&path, v)).unwrap_or_default();
    let env = fields.get("env").map(|(path, v)| c.env(&path, v)).unwrap_or_default();
    let async_calls = match fields.get("async") {
        Some((path, v)) => c.async_calls(&path, v, &scaling),
        None => AsyncCalls::defaults(&scaling),
    };
    let (readiness_path, readiness_timeout) = match fields.get("readiness") {
        Some((path, v)) => c.readiness(&path, v),
        None => (Some(DEFAULT_READINESS_PATH.to_string()), DEFAULT_READINESS_TIMEOUT),
    };
    let auth = match fields.get("auth").map(|(path, v)| (path, v.as_str())) {
        None | Some((_, Some("none"))) => Some(Auth::None),
        Some((_, Some("token"))) => Some(Auth::Token),
        Some((path, _)) => {
            c.fail(
                &path,
                "is neither none nor token",
                "write `auth: token` (calls need the API token) or `auth: none` (public, the default)",
            );
            None
        }
    };

    if c.errors.len() > errors_before {
        return None;
    }
    Some(FunctionSpec {
        key: key.to_string(),
        name: name?,
        version: version?,
        runtime: runtime?,
        scaling,
        limits,
        env,
        readiness_path: readiness_path?,
        readiness_timeout,
        auth: auth?,
        async_calls,
    })
}

/// The fields of one YAML mapping, with the path of the mapping.
struct Fields<'v> {
    path: String,
    values: BTreeMap<&'v str, &'v Value>,
}

impl<'v> Fields<'v> {
    /// The path and value of a field, if it is present and not empty.
    fn get(&self, name: &str) -> Option<(String, &'v Value)> {
        let value = self.values.get(name).copied().filter(|v| !v.is_null())?;
        Some((join(&self.path, name), value))
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// Short description of a YAML value for messages.
fn show(value: &Value) -> String {
    match value {
        Value::Null => "nothing".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// Collects the errors of one function (or of the top level when `function` is `None`).
struct Check<'a> {
    function: Option<&'a str>,
    errors: &'a mut Vec<SpecError>,
}

impl Check<'_> {
    fn fail(&mut self, field: &str, problem: impl Into<String>, allowed: impl Into<String>) {
        self.errors.push(SpecError::Field {
            function: self.function.map(str::to_string),
            field: field.to_string(),
            problem: problem.into(),
            allowed: allowed.into(),
        });
    }

    /// A mapping whose keys are among `allowed` (any key if `allowed` is empty); reports
    /// every unknown key.
    fn map<'v>(&mut self, path: &str, value: &'v Value, fields: &[&str]) -> Option<Fields<'v>> {
        let allowed =
            if fields.is_empty() { "write `NAME: value` lines".to_string() } else { format!("allowed fields here: {}", fields.join(", ")) };
        let Value::Mapping(mapping) = value else {
            self.fail(path, format!("expected a mapping, found {}", show(value)), &allowed);
            return None;
        };
        let mut values = BTreeMap::new();
        for (key, value) in mapping {
            match key.as_str() {
                Some(key) if fields.is_empty() || fields.contains(&key) => {
                    values.insert(key, value);
                }
                Some(key) => self.fail(&join(path, key), "unknown field", &allowed),
                None => self.fail(path, format!("the key {} is not a string", show(key)), &allowed),
            }
        }
        Some(Fields { path: path.to_string(), values })
    }

    fn string(&mut self, path: &str, value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            other => {
                self.fail(path, format!("expected a string, found {}", show(other)), "quote it");
                None
            }
        }
    }

    fn uint(&mut self, path: &str, value: &Value, min: u32, max: u32) -> Option<u32> {
        let n = value.as_u64().filter(|n| (u64::from(min)..=u64::from(max)).contains(n));
        if n.is_none() {
            self.fail(path, format!("{} is not allowed", show(value)), format!("use a whole number from {min} to {max}"));
        }
        n.map(|n| n as u32)
    }

    fn duration(&mut self, path: &str, value: &Value) -> Option<Duration> {
        let d = match value {
            Value::Number(n) => n.as_u64().map(Duration::from_secs),
            Value::String(s) => parse_duration(s),
            _ => None,
        }
        .filter(|d| !d.is_zero());
        if d.is_none() {
            self.fail(path, format!("{} is not a duration above zero", show(value)), DURATION_HELP);
        }
        d
    }

    fn version(&mut self, path: &str, value: &Value) -> Option<String> {
        let version = match value {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            other => {
                self.fail(
                    path,
                    format!("expected a number or a string, found {}", show(other)),
                    "write a version such as 0.1 or \"1.2.0\"",
                );
                return None;
            }
        };
        if !is_image_tag(&version) {
            self.fail(
                path,
                format!("{version:?} cannot be an image tag"),
                "use up to 128 characters of A-Z, a-z, 0-9, '_', '.' and '-', \
                 not starting with '.' or '-'",
            );
            return None;
        }
        Some(version)
    }

    fn runtime(&mut self, configuration: Option<&Value>, runtime: Option<&Value>) -> Option<FunctionKind> {
        // `runtime: <kind>`, or a mapping with the kind and its settings.
        let mut settings = None;
        let (kind_path, kind) = match runtime {
            None => ("runtime".to_string(), None),
            Some(Value::String(kind)) => ("runtime".to_string(), Some(kind.clone())),
            Some(value) => {
                let fields = self.map("runtime", value, RUNTIME_FIELDS)?;
                let Some((path, v)) = fields.get("kind") else {
                    self.fail("runtime.kind", "missing", "add kind: python, command or image");
                    return None;
                };
                let kind = self.string(&path, v)?;
                settings = Some(fields);
                (path, Some(kind))
            }
        };
        let configuration = match configuration {
            Some(value) => Some(self.map("configuration", value, CONFIGURATION_FIELDS)?),
            None => None,
        };
        let language = configuration.as_ref().and_then(|c| c.get("programing_language")).and_then(|(path, v)| self.string(&path, v));

        let kind = match kind {
            Some(kind) => kind,
            None => match language.as_deref() {
                None | Some("python") => "python".to_string(),
                Some(other) => {
                    self.fail(
                        "configuration.programing_language",
                        format!("{other:?} has no built-in runtime"),
                        "use \"python\"; for another language add `runtime: command` \
                         (stdin in, stdout out) or `runtime: {kind: image, image: ...}`",
                    );
                    return None;
                }
            },
        };
        let (configuration, settings) = (configuration.as_ref(), settings.as_ref());
        match kind.as_str() {
            "python" => self.python(configuration, settings, language),
            "command" => self.command_runtime(configuration, settings, language),
            "image" => self.image(configuration, settings),
            other => {
                self.fail(&kind_path, format!("unknown runtime kind {other:?}"), "use python, command or image");
                None
            }
        }
    }

    fn python(&mut self, configuration: Option<&Fields>, settings: Option<&Fields>, language: Option<String>) -> Option<FunctionKind> {
        self.not_for_kind("python", settings, "command");
        self.not_for_kind("python", settings, "image");
        if let Some(language) = language.filter(|l| l != "python") {
            self.fail(
                "configuration.programing_language",
                format!("{language:?} does not match runtime python"),
                "write \"python\", or use runtime command or image",
            );
        }
        let (folder, file) = self.source(configuration, "python")?;
        if !file.ends_with(".py") {
            self.fail("configuration.base_function_file_name", format!("{file:?} is not a Python file"), "name the handler file *.py");
        }
        let extra_dependencies =
            configuration.and_then(|c| c.get("extra_dependencies")).map(|(path, v)| self.pip_packages(&path, v)).unwrap_or_default();
        Some(FunctionKind::Python { folder: Path::new(PYTHON_FUNCTIONS_DIR).join(folder), file, extra_dependencies })
    }

    fn command_runtime(
        &mut self,
        configuration: Option<&Fields>,
        settings: Option<&Fields>,
        language: Option<String>,
    ) -> Option<FunctionKind> {
        self.not_for_kind("command", settings, "image");
        if let Some((path, v)) = configuration.and_then(|c| c.get("extra_dependencies")).filter(|(_, v)| v.as_str() != Some("")) {
            self.fail(&path, format!("{} is not used by runtime command", show(v)), "remove it; ship what the command needs in its folder");
        }
        let (folder, file) = self.source(configuration, "command")?;
        let command = match settings.and_then(|s| s.get("command")) {
            Some((path, v)) => self.command(&path, v)?,
            None => vec![format!("./{file}")],
        };
        Some(FunctionKind::Command { folder: Path::new(COMMAND_FUNCTIONS_DIR).join(folder), file, command, language })
    }

    fn image(&mut self, configuration: Option<&Fields>, settings: Option<&Fields>) -> Option<FunctionKind> {
        self.not_for_kind("image", settings, "command");
        if configuration.is_some() {
            self.fail("configuration", "is not used by runtime image", "remove it; the image already holds the function");
        }
        let Some((path, v)) = settings.and_then(|s| s.get("image")) else {
            self.fail("runtime.image", "missing", "write `runtime: {kind: image, image: <image reference>}`");
            return None;
        };
        let image = self.string(&path, v)?;
        if image.is_empty() || image.len() > 255 || image.contains(char::is_whitespace) {
            self.fail(&path, format!("{image:?} is not an image reference"), "write a reference such as my-function:1, without spaces");
            return None;
        }
        Some(FunctionKind::Image { image })
    }

    /// Reports `runtime.<field>` if it is set for a runtime `kind` that does not use it.
    fn not_for_kind(&mut self, kind: &str, settings: Option<&Fields>, field: &str) {
        if let Some((path, _)) = settings.and_then(|s| s.get(field)) {
            self.fail(&path, format!("is not used by runtime {kind}"), "remove it, or change runtime.kind");
        }
    }

    /// `configuration.function_folder` and `configuration.base_function_file_name`.
    fn source(&mut self, configuration: Option<&Fields>, kind: &str) -> Option<(String, String)> {
        let Some(configuration) = configuration else {
            self.fail(
                "configuration",
                "missing",
                format!(
                    "runtime {kind} needs configuration.function_folder and \
                     configuration.base_function_file_name"
                ),
            );
            return None;
        };
        let mut required = |name: &str| match configuration.get(name) {
            Some((path, v)) => self.string(&path, v).map(|s| (path, s)),
            None => {
                self.fail(&join("configuration", name), "missing", format!("runtime {kind} needs it"));
                None
            }
        };
        let folder = required("function_folder");
        let file = required("base_function_file_name");
        let (folder_path, folder) = folder?;
        let (file_path, file) = file?;
        let folder_ok = !folder.is_empty()
            && Path::new(&folder).components().count() == 1
            && matches!(Path::new(&folder).components().next(), Some(Component::Normal(_)));
        if !folder_ok {
            self.fail(&folder_path, format!("{folder:?} is not a folder name"), "write one folder name, without '/' or '..'");
        }
        let file_ok = !file.is_empty() && Path::new(&file).components().all(|c| matches!(c, Component::Normal(_)));
        if !file_ok {
            self.fail(&file_path, format!("{file:?} is not a file inside the function folder"), "write a relative path without '..'");
        }
        (folder_ok && file_ok).then_some((folder, file))
    }

    fn source_exists(&mut self, base_dir: &Path, runtime: &FunctionKind) {
        let Some((folder, file)) = runtime.source() else {
            return;
        };
        let dir = base_dir.join(folder);
        if !dir.is_dir() {
            self.fail(
                "configuration.function_folder",
                format!("the folder {} does not exist", dir.display()),
                "create it, or fix function_folder",
            );
        } else if !dir.join(file).is_file() {
            self.fail(
                "configuration.base_function_file_name",
                format!("the file {} does not exist", dir.join(file).display()),
                "create it, or fix base_function_file_name",
            );
        }
    }

    /// A list of strings, or one string split at whitespace.
    fn words(&mut self, path: &str, value: &Value, what: &str) -> Option<Vec<String>> {
        match value {
            Value::String(s) => Some(s.split_whitespace().map(str::to_string).collect()),
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| self.string(&format!("{path}[{i}]"), item))
                .collect::<Vec<_>>()
                .into_iter()
                .collect(),
            other => {
                self.fail(
                    path,
                    format!("expected a list or a string, found {}", show(other)),
                    format!("write the {what} as a list, or as one string separated by spaces"),
                );
                None
            }
        }
    }

    /// `extra_dependencies`: pip's arguments, in order. Requirements (`numpy`,
    /// `requests==2.32.3`), and the options that say where packages come from: those
    /// taking a value (`--index-url URL`, `-i URL`, `--extra-index-url URL`,
    /// `--find-links URL`, `-f URL`, `--trusted-host HOST`, also as `--opt=value`) and
    /// `--pre`. The words are kept as written, split at spaces, for pip to read.
    fn pip_packages(&mut self, path: &str, value: &Value) -> Vec<String> {
        const WITH_VALUE: &[&str] = &["--index-url", "-i", "--extra-index-url", "--find-links", "-f", "--trusted-host"];
        const FLAGS: &[&str] = &["--pre"];
        let allowed = "list requirements (like requests==2.32.3) and, where packages come from,                        --index-url URL, --extra-index-url URL, --find-links URL (-i, -f), --trusted-host HOST or --pre";
        let words: Vec<String> = self
            .words(path, value, "pip packages")
            .unwrap_or_default()
            .iter()
            .flat_map(|w| w.split_whitespace())
            .map(str::to_string)
            .collect();
        let mut i = 0;
        while i < words.len() {
            let word = &words[i];
            i += 1;
            if !word.starts_with('-') {
                continue;
            }
            let (option, inline) = match word.split_once('=') {
                Some((o, v)) if o.starts_with("--") => (o, Some(v)),
                _ => (word.as_str(), None),
            };
            if FLAGS.contains(&option) && inline.is_none() {
                continue;
            }
            if !WITH_VALUE.contains(&option) {
                self.fail(path, format!("{word:?} is not a pip option Roost passes on"), allowed);
                continue;
            }
            let value = match inline {
                Some(v) => Some(v),
                None => {
                    i += 1;
                    words.get(i - 1).map(String::as_str)
                }
            };
            if value.is_none_or(|v| v.is_empty() || v.starts_with('-')) {
                self.fail(
                    path,
                    format!("{option} has no value"),
                    format!("write it as `{option} VALUE`, like --extra-index-url https://download.pytorch.org/whl/cpu"),
                );
            }
        }
        words
    }

    fn command(&mut self, path: &str, value: &Value) -> Option<Vec<String>> {
        let command = self.words(path, value, "program and its arguments")?;
        if command.first().is_none_or(|program| program.is_empty()) {
            self.fail(path, "is empty", "write the program and its arguments, like [sh, wc.sh]");
            return None;
        }
        Some(command)
    }

    fn scaling(&mut self, path: &str, value: &Value) -> Scaling {
        let mut scaling = Scaling::default();
        let Some(fields) = self.map(path, value, SCALING_FIELDS) else {
            return scaling;
        };
        if let Some((p, v)) = fields.get("min_replicas") {
            scaling.min_replicas = self.uint(&p, v, 0, MAX_REPLICAS).unwrap_or(scaling.min_replicas);
        }
        let mut max_ok = true;
        if let Some((p, v)) = fields.get("max_replicas") {
            match self.uint(&p, v, 1, MAX_REPLICAS) {
                Some(max) => scaling.max_replicas = max,
                None => max_ok = false,
            }
        }
        if let Some((p, v)) = fields.get("target_concurrency") {
            scaling.target_concurrency = self.uint(&p, v, 1, MAX_TARGET_CONCURRENCY).unwrap_or(scaling.target_concurrency);
        }
        if let Some((p, v)) = fields.get("idle_timeout") {
            scaling.idle_timeout = self.duration(&p, v).unwrap_or(scaling.idle_timeout);
        }
        if max_ok && scaling.min_replicas > scaling.max_replicas {
            self.fail(
                &join(path, "min_replicas"),
                format!("{} is above max_replicas ({})", scaling.min_replicas, scaling.max_replicas),
                "make min_replicas at most max_replicas",
            );
        }
        scaling
    }

    fn async_calls(&mut self, path: &str, value: &Value, scaling: &Scaling) -> AsyncCalls {
        let mut calls = AsyncCalls::defaults(scaling);
        let Some(fields) = self.map(path, value, ASYNC_FIELDS) else {
            return calls;
        };
        if let Some((p, v)) = fields.get("concurrency") {
            calls.concurrency = self.uint(&p, v, 1, MAX_ASYNC_CONCURRENCY).unwrap_or(calls.concurrency);
        }
        if let Some((p, v)) = fields.get("retries") {
            calls.retries = self.uint(&p, v, 0, MAX_ASYNC_RETRIES).unwrap_or(calls.retries);
        }
        if let Some((p, v)) = fields.get("queue") {
            calls.queue = self.uint(&p, v, 1, MAX_ASYNC_QUEUE).unwrap_or(calls.queue);
        }
        if let Some((p, v)) = fields.get("backoff") {
            match self.duration(&p, v) {
                Some(backoff) if !backoff.is_zero() && backoff <= MAX_ASYNC_BACKOFF => calls.backoff = backoff,
                Some(_) => self.fail(&p, format!("{} is not between 1ms and 5m", show(v)), DURATION_HELP),
                None => {}
            }
        }
        calls
    }

    fn limits(&mut self, path: &str, value: &Value) -> Limits {
        let mut limits = Limits::default();
        let Some(fields) = self.map(path, value, LIMITS_FIELDS) else {
            return limits;
        };
        if let Some((p, v)) = fields.get("memory") {
            let memory = match v {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => parse_size(s),
                _ => None,
            }
            .filter(|&bytes| bytes >= MIN_MEMORY);
            match memory {
                Some(memory) => limits.memory = memory,
                None => self.fail(&p, format!("{} is not a memory size of at least 6m", show(v)), SIZE_HELP),
            }
        }
        if let Some((p, v)) = fields.get("cpu") {
            match v.as_f64().filter(|cpu| cpu.is_finite() && *cpu > 0.0) {
                Some(cpu) => limits.cpu = cpu,
                None => self.fail(&p, format!("{} is not a number of cores above zero", show(v)), "write cores as a number, like 0.5 or 2"),
            }
        }
        if let Some((p, v)) = fields.get("pids") {
            limits.pids = self.uint(&p, v, 1, u32::MAX).unwrap_or(limits.pids);
        }
        if let Some((p, v)) = fields.get("timeout") {
            limits.timeout = self.duration(&p, v).unwrap_or(limits.timeout);
        }
        limits
    }

    fn env(&mut self, path: &str, value: &Value) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let Some(fields) = self.map(path, value, &[]) else {
            return env;
        };
        for (&name, &value) in &fields.values {
            let field = join(path, name);
            let is_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !is_name {
                self.fail(
                    &field,
                    format!("{name:?} is not an environment variable name"),
                    "use A-Z, a-z, 0-9 and '_', not starting with a digit",
                );
            } else if name == "PORT" || name.starts_with("ROOST_") {
                self.fail(&field, format!("{name} is set by Roost"), "choose another name (PORT and ROOST_* are reserved)");
            }
            let value = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                other => {
                    self.fail(&field, format!("expected a string, found {}", show(other)), "write a string, a number or true/false");
                    continue;
                }
            };
            env.insert(name.to_string(), value);
        }
        env
    }

    /// `readiness: /path` or `readiness: {path: /path, timeout: 30s}`.
    fn readiness(&mut self, path: &str, value: &Value) -> (Option<String>, Duration) {
        let (path, value, timeout) = match value {
            Value::Mapping(_) => {
                let Some(fields) = self.map(path, value, READINESS_FIELDS) else {
                    return (None, DEFAULT_READINESS_TIMEOUT);
                };
                let timeout = match fields.get("timeout") {
                    Some((p, v)) => match self.duration(&p, v) {
                        Some(t) if t > MAX_READINESS_TIMEOUT => {
                            self.fail(&p, format!("{} is over the limit of 1h", show(v)), "a start may take at most 1h");
                            DEFAULT_READINESS_TIMEOUT
                        }
                        Some(t) => t,
                        None => DEFAULT_READINESS_TIMEOUT,
                    },
                    None => DEFAULT_READINESS_TIMEOUT,
                };
                match fields.get("path") {
                    Some((p, v)) => (p, v, timeout),
                    None => return (Some(DEFAULT_READINESS_PATH.to_string()), timeout),
                }
            }
            other => (path.to_string(), other, DEFAULT_READINESS_TIMEOUT),
        };
        let Some(readiness) = self.string(&path, value) else { return (None, timeout) };
        let ok = readiness.starts_with('/') && readiness.len() <= 1024 && readiness.chars().all(|c| c.is_ascii_graphic());
        if !ok {
            self.fail(&path, format!("{readiness:?} is not an HTTP path"), "write a path starting with '/', without spaces, like /healthz");
            return (None, timeout);
        }
        (Some(readiness), timeout)
    }
}

/// The longest `readiness.timeout`.
const MAX_READINESS_TIMEOUT: Duration = Duration::from_secs(3600);

fn is_image_tag(tag: &str) -> bool {
    tag.len() <= 128
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::*;

    #[test]
    fn name_defaults_to_the_key_and_version_may_be_a_string() {
        let defs = parse(&with_functions(&[python_fn("hello", "")])).unwrap();
        assert_eq!(defs["hello"].name, "hello");
        assert_eq!(defs["hello"].version, "1");
        let yaml = SEED.replace("version: 0.1", "version: \"2.0.1-beta\"");
        assert_eq!(parse(&yaml).unwrap()["example-faas-name"].version, "2.0.1-beta");
    }

    #[test]
    fn extensions_are_read() {
        let yaml = with_functions(&[python_fn(
            "hello",
            "    scaling:\n      min_replicas: 1\n      max_replicas: 3\n      \
             target_concurrency: 4\n      idle_timeout: 2m\n    \
             limits:\n      memory: 1g\n      cpu: 0.5\n      pids: 32\n      timeout: 500ms\n    \
             env:\n      GREETING: hi\n      COUNT: 3\n      DEBUG: true\n    \
             readiness:\n      path: /ready\n",
        )]);
        let spec = &parse(&yaml).unwrap()["hello"];
        assert_eq!(
            spec.scaling,
            Scaling { min_replicas: 1, max_replicas: 3, target_concurrency: 4, idle_timeout: Duration::from_secs(120) }
        );
        assert_eq!(spec.limits, Limits { memory: 1024 * 1024 * 1024, cpu: 0.5, pids: 32, timeout: Duration::from_millis(500) });
        assert_eq!(spec.env["GREETING"], "hi");
        assert_eq!(spec.env["COUNT"], "3");
        assert_eq!(spec.env["DEBUG"], "true");
        assert_eq!(spec.readiness_path, "/ready");
    }

    #[test]
    fn empty_sections_mean_defaults() {
        let yaml = with_functions(&[python_fn("hello", "    scaling:\n    limits:\n    env:\n")]);
        let spec = &parse(&yaml).unwrap()["hello"];
        assert_eq!(spec.scaling, Scaling::default());
        assert_eq!(spec.limits, Limits::default());
    }

    #[test]
    fn readiness_timeout() {
        let yaml = with_functions(&[python_fn("slow", "    readiness:\n      timeout: 2m\n")]);
        let spec = &parse(&yaml).unwrap()["slow"];
        assert_eq!((spec.readiness_path.as_str(), spec.readiness_timeout), ("/healthz", Duration::from_secs(120)));
        let yaml = with_functions(&[python_fn("slow", "    readiness:\n      timeout: 2h\n")]);
        assert_eq!(one_error(&yaml).1, "readiness.timeout");
        let yaml = with_functions(&[python_fn("slow", "    readiness:\n      timeout: 0s\n")]);
        assert_eq!(one_error(&yaml).1, "readiness.timeout");
    }

    #[test]
    fn readiness_shorthand() {
        let yaml = with_functions(&[python_fn("hello", "    readiness: /up\n")]);
        assert_eq!(parse(&yaml).unwrap()["hello"].readiness_path, "/up");
    }

    #[test]
    fn extra_dependencies_as_string_or_list() {
        let yaml = SEED.replace(r#"extra_dependencies: """#, "extra_dependencies: \"numpy requests==2.32.3\"");
        let FunctionKind::Python { extra_dependencies, .. } = &parse(&yaml).unwrap()["example-faas-name"].runtime else {
            panic!("not python");
        };
        assert_eq!(extra_dependencies, &["numpy", "requests==2.32.3"]);
        let yaml = SEED.replace(r#"extra_dependencies: """#, "extra_dependencies: [numpy]");
        assert!(parse(&yaml).is_ok());
    }

    #[test]
    fn pip_options_where_packages_come_from_are_passed_on() {
        let extra = |deps: &str| {
            let yaml = SEED.replace(r#"extra_dependencies: """#, &format!("extra_dependencies: {deps}"));
            let FunctionKind::Python { extra_dependencies, .. } = parse(&yaml).unwrap()["example-faas-name"].runtime.clone() else {
                panic!("python")
            };
            extra_dependencies
        };
        // As the seed writes them.
        assert_eq!(
            extra(r#""torch --extra-index-url https://download.pytorch.org/whl/cpu""#),
            ["torch", "--extra-index-url", "https://download.pytorch.org/whl/cpu"]
        );
        assert_eq!(
            extra(r#""-f https://x/links --pre --index-url=https://y/simple a""#),
            ["-f", "https://x/links", "--pre", "--index-url=https://y/simple", "a"]
        );
        assert_eq!(extra(r#"["numpy", "-i https://z/simple"]"#), ["numpy", "-i", "https://z/simple"]);
    }

    #[test]
    fn other_pip_options_are_rejected() {
        for deps in [r#""--target /etc x""#, r#""-r requirements.txt""#, r#""x --extra-index-url""#, r#""--pre=1""#] {
            let yaml = SEED.replace(r#"extra_dependencies: """#, &format!("extra_dependencies: {deps}"));
            let (_, field, message) = one_error(&yaml);
            assert_eq!(field, "configuration.extra_dependencies", "{deps}");
            assert!(message.contains("--extra-index-url"), "{deps}: {message}");
        }
    }

    #[test]
    fn command_runtime() {
        let yaml = "usable-functions:\n  wc:\n    version: 1\n    runtime:\n      kind: command\n      \
                    command: [sh, wc.sh]\n    configuration:\n      programing_language: shell\n      \
                    base_function_file_name: wc.sh\n      function_folder: wc\n";
        assert_eq!(
            parse(yaml).unwrap()["wc"].runtime,
            FunctionKind::Command {
                folder: PathBuf::from("command/functions/wc"),
                file: "wc.sh".into(),
                command: vec!["sh".into(), "wc.sh".into()],
                language: Some("shell".into()),
            }
        );
    }

    #[test]
    fn command_defaults_to_running_the_file() {
        let yaml = with_functions(&[python_fn("wc", "    runtime: command\n")]);
        let FunctionKind::Command { command, .. } = &parse(&yaml).unwrap()["wc"].runtime else {
            panic!("not command");
        };
        assert_eq!(command, &["./main.py"]);
    }

    #[test]
    fn image_runtime() {
        let yaml = "usable-functions:\n  web:\n    version: 1\n    runtime:\n      kind: image\n      \
                    image: my-web:1\n";
        assert_eq!(parse(yaml).unwrap()["web"].runtime, FunctionKind::Image { image: "my-web:1".into() });
    }

    #[test]
    fn image_runtime_needs_an_image_and_no_configuration() {
        let yaml = with_functions(&[python_fn("web", "    runtime: image\n")]);
        let errors = errors(&yaml);
        assert_eq!(fields(&errors), [("web".into(), "configuration".into()), ("web".into(), "runtime.image".into())]);
    }

    #[test]
    fn unknown_fields_everywhere_are_all_reported() {
        let yaml = format!(
            "extra: 1\n{}",
            with_functions(&[python_fn("hello", "    colour: red\n    scaling:\n      max: 3\n    limits:\n      disk: 1g\n",)])
        );
        let yaml = yaml.replace("function_folder: hello", "function_folder: hello\n      lang: x");
        let errors = errors(&yaml);
        assert_eq!(
            fields(&errors),
            [
                ("".into(), "extra".into()),
                ("hello".into(), "colour".into()),
                ("hello".into(), "configuration.lang".into()),
                ("hello".into(), "scaling.max".into()),
                ("hello".into(), "limits.disk".into()),
            ]
        );
        let message = errors[3].to_string();
        assert!(message.contains("unknown field"), "{message}");
        assert!(message.contains("max_replicas"), "{message}");
    }

    #[test]
    fn duplicate_name() {
        let yaml = with_functions(&[python_fn("a", "    name: same\n"), python_fn("b", "    name: same\n")]);
        let (function, field, message) = one_error(&yaml);
        assert_eq!((function.as_str(), field.as_str()), ("b", "name"));
        assert!(message.contains("already the name of function \"a\""), "{message}");
    }

    #[test]
    fn unsafe_names() {
        for name in ["Hello", "a/b", "a.b", "\"\""] {
            let yaml = with_functions(&[python_fn("k", &format!("    name: {name}\n"))]);
            let (function, field, message) = one_error(&yaml);
            assert_eq!((function.as_str(), field.as_str()), ("k", "name"), "{name}");
            assert!(message.contains("a-z, 0-9"), "{message}");
        }
        let yaml = with_functions(&[python_fn("Bad_Key", "")]);
        let (_, field, message) = one_error(&yaml);
        assert_eq!(field, "name");
        assert!(message.contains("no name is given"), "{message}");
    }

    #[test]
    fn version_errors() {
        let yaml = SEED.replace("    version: 0.1\n", "");
        assert_eq!(one_error(&yaml).1, "version");
        let yaml = SEED.replace("version: 0.1", "version: \"1 0\"");
        assert!(one_error(&yaml).2.contains("image tag"));
        let yaml = SEED.replace("version: 0.1", "version: [1]");
        assert_eq!(one_error(&yaml).1, "version");
    }

    #[test]
    fn replica_errors() {
        let cases = [
            ("min_replicas: 3\n      max_replicas: 2", "scaling.min_replicas"),
            ("max_replicas: 0", "scaling.max_replicas"),
            ("max_replicas: 1001", "scaling.max_replicas"),
            ("min_replicas: -1", "scaling.min_replicas"),
            ("min_replicas: 11", "scaling.min_replicas"),
            ("target_concurrency: 0", "scaling.target_concurrency"),
            ("target_concurrency: many", "scaling.target_concurrency"),
            ("idle_timeout: 0s", "scaling.idle_timeout"),
            ("idle_timeout: 1.5s", "scaling.idle_timeout"),
            ("idle_timeout: 10 days", "scaling.idle_timeout"),
        ];
        for (scaling, expected) in cases {
            let yaml = with_functions(&[python_fn("f", &format!("    scaling:\n      {scaling}\n"))]);
            let (_, field, message) = one_error(&yaml);
            assert_eq!(field, expected, "{scaling}");
            assert!(message.starts_with("function \"f\": "), "{message}");
        }
    }

    #[test]
    fn limit_errors() {
        let cases = [
            ("memory: 1m", "limits.memory"),
            ("memory: 12x", "limits.memory"),
            ("memory: -5", "limits.memory"),
            ("cpu: 0", "limits.cpu"),
            ("cpu: lots", "limits.cpu"),
            ("pids: 0", "limits.pids"),
            ("timeout: forever", "limits.timeout"),
        ];
        for (limits, expected) in cases {
            let yaml = with_functions(&[python_fn("f", &format!("    limits:\n      {limits}\n"))]);
            assert_eq!(one_error(&yaml).1, expected, "{limits}");
        }
    }

    #[test]
    fn auth_is_none_by_default_token_when_asked_and_nothing_else() {
        let yaml = with_functions(&[python_fn("a", ""), python_fn("b", "    auth: token\n"), python_fn("c", "    auth: none\n")]);
        let defs = parse(&yaml).unwrap();
        assert_eq!((defs["a"].auth, defs["b"].auth, defs["c"].auth), (Auth::None, Auth::Token, Auth::None));
        let errors = errors(&with_functions(&[python_fn("d", "    auth: password\n")]));
        assert_eq!(fields(&errors), [("d".to_string(), "auth".to_string())]);
        assert!(errors[0].to_string().contains("auth: token"), "{}", errors[0]);
    }

    #[test]
    fn async_calls_default_to_the_function_s_capacity_and_are_read() {
        let yaml = with_functions(&[
            python_fn("a", "    scaling:\n      max_replicas: 4\n      target_concurrency: 3\n"),
            python_fn("b", "    async:\n      concurrency: 2\n      retries: 0\n      backoff: 250ms\n      queue: 50\n"),
        ]);
        let defs = parse(&yaml).unwrap();
        assert_eq!(defs["a"].async_calls, AsyncCalls { concurrency: 12, retries: 5, backoff: Duration::from_secs(1), queue: 10_000 });
        assert_eq!(defs["b"].async_calls, AsyncCalls { concurrency: 2, retries: 0, backoff: Duration::from_millis(250), queue: 50 });
    }

    #[test]
    fn async_errors() {
        let cases = [
            ("concurrency: 0", "async.concurrency"),
            ("retries: 101", "async.retries"),
            ("queue: 0", "async.queue"),
            ("backoff: 0s", "async.backoff"),
            ("backoff: 1h", "async.backoff"),
            ("deadline: 1s", "async.deadline"),
        ];
        for (field, expected) in cases {
            let yaml = with_functions(&[python_fn("f", &format!("    async:\n      {field}\n"))]);
            assert_eq!(one_error(&yaml).1, expected, "{field}");
        }
    }

    #[test]
    fn env_errors() {
        let yaml = with_functions(&[python_fn("f", "    env:\n      PORT: 1\n      ROOST_X: 1\n      1BAD: 1\n      LIST: [1]\n")]);
        let errors = errors(&yaml);
        let mut got: Vec<_> = fields(&errors).into_iter().map(|(_, f)| f).collect();
        got.sort();
        assert_eq!(got, ["env.1BAD", "env.LIST", "env.PORT", "env.ROOST_X"]);
    }

    #[test]
    fn readiness_errors() {
        let yaml = with_functions(&[python_fn("f", "    readiness:\n      path: healthz\n")]);
        assert_eq!(one_error(&yaml).1, "readiness.path");
        let yaml = with_functions(&[python_fn("f", "    readiness: /a b\n")]);
        assert_eq!(one_error(&yaml).1, "readiness");
    }

    #[test]
    fn runtime_errors() {
        let yaml = SEED.replace("\"python\"", "\"go\"");
        let (_, field, message) = one_error(&yaml);
        assert_eq!(field, "configuration.programing_language");
        assert!(message.contains("runtime: command"), "{message}");

        let yaml = with_functions(&[python_fn("f", "    runtime: java\n")]);
        let (_, field, message) = one_error(&yaml);
        assert_eq!(field, "runtime");
        assert!(message.contains("python, command or image"), "{message}");

        let yaml = with_functions(&[python_fn("f", "    runtime:\n      kind: lambda\n")]);
        assert_eq!(one_error(&yaml).1, "runtime.kind");

        let yaml = with_functions(&[python_fn("f", "    runtime:\n      image: x\n")]);
        assert_eq!(one_error(&yaml).1, "runtime.kind");

        let yaml = with_functions(&[python_fn("f", "    runtime:\n      kind: python\n      image: x\n")]);
        assert_eq!(one_error(&yaml).1, "runtime.image");

        let yaml = with_functions(&[python_fn("f", "    runtime:\n      kind: command\n      command: []\n")]);
        assert_eq!(one_error(&yaml).1, "runtime.command");
    }

    #[test]
    fn python_needs_a_python_file_and_a_plain_folder() {
        let yaml = SEED.replace("example.py", "example.rb");
        assert_eq!(one_error(&yaml).1, "configuration.base_function_file_name");
        let yaml = SEED.replace("function_folder: \"example\"", "function_folder: \"../etc\"");
        assert_eq!(one_error(&yaml).1, "configuration.function_folder");
        let yaml = SEED.replace("example.py", "/etc/passwd.py");
        assert_eq!(one_error(&yaml).1, "configuration.base_function_file_name");
        let yaml = SEED.replace("      function_folder: \"example\"\n", "");
        assert_eq!(one_error(&yaml).1, "configuration.function_folder");
        let yaml = "usable-functions:\n  f:\n    version: 1\n";
        assert_eq!(one_error(yaml).1, "configuration");
    }

    #[test]
    fn missing_folder_and_file() {
        let dir = TempDir::new();
        dir.file("python/functions/has-folder/other.py", "");
        let yaml = with_functions(&[python_fn("no-folder", ""), python_fn("has-folder", "")]);
        let errors = load(&yaml, &dir.0).unwrap_err().0;
        assert_eq!(
            fields(&errors),
            [
                ("no-folder".into(), "configuration.function_folder".into()),
                ("has-folder".into(), "configuration.base_function_file_name".into()),
            ]
        );
        assert!(errors[0].to_string().contains("does not exist"), "{}", errors[0]);

        dir.file("python/functions/has-folder/main.py", "");
        dir.file("python/functions/no-folder/main.py", "");
        assert_eq!(load(&yaml, &dir.0).unwrap().len(), 2);
    }

    #[test]
    fn all_errors_are_reported_at_once() {
        let yaml = with_functions(&[
            python_fn("a", "    scaling:\n      max_replicas: 0\n      target_concurrency: 0\n"),
            python_fn("b", "    limits:\n      memory: lots\n    unknown: 1\n"),
            python_fn("c", ""),
        ]);
        let errors = parse(&yaml).unwrap_err();
        assert_eq!(
            fields(&errors.0),
            [
                ("a".into(), "scaling.max_replicas".into()),
                ("a".into(), "scaling.target_concurrency".into()),
                ("b".into(), "unknown".into()),
                ("b".into(), "limits.memory".into()),
            ]
        );
        assert!(errors.to_string().starts_with("4 problem(s)"), "{errors}");
    }

    #[test]
    fn messages_say_what_to_do() {
        let yaml = with_functions(&[python_fn("f", "    colour: red\n    scaling:\n      min_replicas: 4\n      max_replicas: 2\n")]);
        assert_eq!(
            parse(&yaml).unwrap_err().to_string(),
            "2 problem(s) in the function definitions:\n  \
             - function \"f\": colour: unknown field; allowed fields here: name, version, \
             configuration, runtime, scaling, limits, env, readiness, auth, async\n  \
             - function \"f\": scaling.min_replicas: 4 is above max_replicas (2); \
             make min_replicas at most max_replicas"
        );
    }

    #[test]
    fn file_level_errors() {
        assert_eq!(one_error("").1, "usable-functions");
        assert!(one_error("").2.contains("empty"));
        assert_eq!(fields(&errors("other: 1\n")), [("".into(), "other".into()), ("".into(), "usable-functions".into())]);
        assert_eq!(one_error("[1, 2]\n").1, "usable-functions");
        assert_eq!(one_error("usable-functions: 3\n").1, "usable-functions");
        assert_eq!(one_error("usable-functions:\n  f:\n").1, "usable-functions.f");
        assert!(parse("usable-functions:\n").unwrap().is_empty());
        assert!(parse("usable-functions: {}\n").unwrap().is_empty());
    }

    #[test]
    fn yaml_errors() {
        let errors = errors("usable-functions:\n  a: [\n");
        assert!(matches!(errors[..], [SpecError::Syntax { .. }]), "{errors:?}");
        let yaml = with_functions(&[python_fn("a", ""), python_fn("a", "")]);
        let errors = self::errors(&yaml);
        assert!(matches!(errors[..], [SpecError::Syntax { .. }]), "{errors:?}");
        assert!(errors[0].to_string().contains("duplicate"), "{}", errors[0]);
    }

    #[test]
    fn merge_keys_share_settings() {
        let yaml = "usable-functions:\n  a:\n    version: 1\n    runtime: {kind: image, image: a}\n    \
                    scaling: &s {max_replicas: 2}\n  b:\n    version: 1\n    \
                    runtime: {kind: image, image: b}\n    scaling: *s\n";
        assert_eq!(parse(yaml).unwrap()["b"].scaling.max_replicas, 2);
    }

    #[test]
    fn bare_number_durations_are_seconds() {
        let ms = Duration::from_millis;
        let integer = with_functions(&[python_fn("f", "    scaling:\n      idle_timeout: 5\n")]);
        assert_eq!(parse(&integer).unwrap()["f"].scaling.idle_timeout, ms(5_000));
    }
}
