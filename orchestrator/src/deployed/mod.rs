//! Functions deployed over the management API rather than written into the definitions
//! file: what a deploy may carry (a bundle, one source file, or a definition of an image
//! already on the engine), how it becomes a checked revision in the data directory
//! ([`store`]), and the bundle's own checks ([`bundle`]). Nothing is stored until the
//! whole deploy is valid.

pub mod bundle;
pub mod store;

use roost_common::hash::fnv1a;
use roost_common::naming::{validate_function_name, InvalidName};
use roost_common::spec::{self, FunctionSpec, SpecErrors};
use serde_yaml::{Mapping, Value};
use std::path::{Path, PathBuf};
use store::{Store, REV_DEFINITION};

/// What a deploy carries.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A gzip'd tar of the function's folder, with [`bundle::DEFINITION_FILE`] at its top.
    Bundle(Vec<u8>),
    /// One source file: `*.py` is a Python handler, anything else a command (a script
    /// with its `#!` line) run once per request.
    Source {
        /// The file's name.
        file: String,
        /// Its content.
        code: Vec<u8>,
    },
    /// A definition alone (YAML or JSON): a function from an image already on the engine.
    Definition(String),
}

impl Payload {
    /// `bundle`, `source` or `image`, for messages and the describe answer.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Bundle(_) => "bundle",
            Payload::Source { .. } => "source",
            Payload::Definition(_) => "definition",
        }
    }
}

/// Why a deploy was refused. Every variant but `Io` is the caller's (a 4xx).
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The name cannot be a function's.
    #[error(transparent)]
    Name(#[from] InvalidName),
    /// The bundle is unsafe or unreadable.
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    /// The deploy's definition is not usable as given.
    #[error("{0}")]
    Definition(String),
    /// The definition is invalid: every problem.
    #[error("the definition is invalid: {0}")]
    Invalid(SpecErrors),
    /// The platform could not write it.
    #[error("cannot store the function: {0}")]
    Io(#[from] std::io::Error),
}

impl DeployError {
    /// Whether the deploy is at fault (4xx), not the platform (5xx).
    pub fn is_callers(&self) -> bool {
        match self {
            DeployError::Bundle(b) => b.is_callers(),
            DeployError::Io(_) => false,
            _ => true,
        }
    }
}

/// A deploy written to a staging folder and checked, ready for [`Store::commit`].
#[derive(Debug)]
pub struct Staged {
    /// The staging folder (a whole revision).
    pub dir: PathBuf,
    /// The function as it will run.
    pub spec: FunctionSpec,
}

fn key(s: &str) -> Value {
    Value::String(s.to_string())
}

/// The fields of one function from YAML or JSON text: a mapping.
fn fields_of(text: &str, whence: &str) -> Result<Mapping, DeployError> {
    match serde_yaml::from_str::<Value>(text) {
        Ok(Value::Mapping(m)) => Ok(m),
        Ok(_) => Err(DeployError::Definition(format!(
            "{whence} is not a mapping of a function's fields; write e.g. `version: 1` and `runtime: python` on their own lines"
        ))),
        Err(e) => Err(DeployError::Definition(format!("{whence} is not YAML or JSON: {e}"))),
    }
}

/// The runtime kind the fields name (`python` when they name none).
fn kind_of(fields: &Mapping) -> String {
    match fields.get(key("runtime")) {
        Some(Value::String(k)) => k.clone(),
        Some(Value::Mapping(m)) => m.get(key("kind")).and_then(Value::as_str).unwrap_or("").to_string(),
        _ => match fields.get(key("configuration")).and_then(|c| c.get("programing_language")).and_then(Value::as_str) {
            Some(lang) if lang != "python" => "command".to_string(),
            _ => "python".to_string(),
        },
    }
}

/// Writes the deploy of `name` into a fresh staging folder of `store` and checks it. On
/// an error the staging folder is removed and nothing else is touched.
pub fn stage(store: &Store, name: &str, payload: Payload, limits: bundle::Limits) -> Result<Staged, DeployError> {
    validate_function_name(name)?;
    let dir = store.stage(name)?;
    match stage_into(&dir, name, payload, limits) {
        Ok(spec) => Ok(Staged { dir, spec }),
        Err(e) => {
            if let Err(rm) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %rm, "cannot remove a refused deploy's staging folder");
            }
            Err(e)
        }
    }
}

fn stage_into(dir: &Path, name: &str, payload: Payload, limits: bundle::Limits) -> Result<FunctionSpec, DeployError> {
    let code = dir.join("code");
    let mut fields = match payload {
        Payload::Bundle(gz) => {
            bundle::unpack(&gz, &code, limits)?;
            let def = code.join(bundle::DEFINITION_FILE);
            let text = std::fs::read_to_string(&def).map_err(|_| {
                DeployError::Definition(format!(
                    "the bundle has no readable {} at its top; put the function's fields there (version, runtime, configuration, scaling...), as under usable-functions in the definitions file",
                    bundle::DEFINITION_FILE
                ))
            })?;
            fields_of(&text, &format!("the bundle's {}", bundle::DEFINITION_FILE))?
        }
        Payload::Source { file, code: text } => source_fields(&code, &file, &text)?,
        Payload::Definition(text) => {
            let fields = fields_of(&text, "the definition")?;
            if kind_of(&fields) != "image" {
                return Err(DeployError::Definition(format!(
                    "a definition alone declares a function from an image (runtime: {{kind: image, image: ...}}); runtime {} needs its code: deploy a bundle of its folder or its source file",
                    kind_of(&fields)
                )));
            }
            fields
        }
    };
    match fields.get(key("name")).and_then(Value::as_str) {
        Some(given) if given != name => {
            return Err(DeployError::Definition(format!(
                "the definition names the function {given:?} but it is deployed as {name:?}; remove `name` or make them equal"
            )))
        }
        _ => {
            fields.remove(key("name"));
        }
    }
    let kind = kind_of(&fields);
    let kind_dir = match kind.as_str() {
        "python" => Some(spec::PYTHON_FUNCTIONS_DIR),
        "command" => Some(spec::COMMAND_FUNCTIONS_DIR),
        _ => None,
    };
    match (kind_dir, code.exists()) {
        (Some(kind_dir), true) => {
            let conf = fields.entry(key("configuration")).or_insert_with(|| Value::Mapping(Mapping::new()));
            let Value::Mapping(conf) = conf else {
                return Err(DeployError::Definition("configuration is not a mapping; write its fields on their own lines".into()));
            };
            if conf.contains_key(key("function_folder")) {
                return Err(DeployError::Definition(
                    "configuration.function_folder is not used in a deploy (the bundle is the function's folder); remove it".into(),
                ));
            }
            conf.insert(key("function_folder"), key(name));
            let into = dir.join(kind_dir).join(name);
            std::fs::create_dir_all(into.parent().expect("a joined path has a parent"))?;
            std::fs::rename(&code, &into)?;
        }
        (None, true) => {
            return Err(DeployError::Definition(format!(
                "runtime {kind} takes no code; deploy its definition alone (runtime: {{kind: image, image: ...}})"
            )))
        }
        (_, false) => {}
    }
    let mut top = Mapping::new();
    top.insert(key(name), Value::Mapping(fields));
    let mut file = Mapping::new();
    file.insert(key(spec::TOP_LEVEL_KEY), Value::Mapping(top));
    let yaml = serde_yaml::to_string(&Value::Mapping(file)).map_err(|e| DeployError::Definition(e.to_string()))?;
    std::fs::write(dir.join(REV_DEFINITION), &yaml)?;
    let mut defs = spec::load(&yaml, dir).map_err(DeployError::Invalid)?;
    defs.remove(name).ok_or_else(|| DeployError::Definition(format!("the definition does not declare {name:?}")))
}

/// One source file as a function: its fields, the file written into `code`.
fn source_fields(code: &Path, file: &str, text: &[u8]) -> Result<Mapping, DeployError> {
    use std::os::unix::fs::OpenOptionsExt;
    let safe = !file.is_empty()
        && file.len() <= 255
        && !file.starts_with('.')
        && file.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !safe {
        return Err(DeployError::Definition(format!(
            "the source file name {file:?} is not a plain file name; use letters, digits, '.', '_' and '-' (e.g. handler.py)"
        )));
    }
    std::fs::create_dir_all(code)?;
    let python = file.ends_with(".py");
    let mode = if python { 0o644 } else { 0o755 };
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(code.join(file))?;
    std::io::Write::write_all(&mut f, text)?;
    let mut conf = Mapping::new();
    conf.insert(key("base_function_file_name"), key(file));
    let mut fields = Mapping::new();
    fields.insert(key("version"), key(&format!("src-{:08x}", fnv1a(text) as u32)));
    fields.insert(key("runtime"), key(if python { "python" } else { "command" }));
    fields.insert(key("configuration"), Value::Mapping(conf));
    Ok(fields)
}

/// Sets `scaling.min_replicas` and `scaling.max_replicas` (those given) in a stored
/// definitions file of `name`, checked; the new text.
pub fn rescale(yaml: &str, base: &Path, name: &str, min: Option<u32>, max: Option<u32>) -> Result<String, DeployError> {
    let mut file: Value =
        serde_yaml::from_str(yaml).map_err(|e| DeployError::Definition(format!("the stored definition is unreadable: {e}")))?;
    let fields = file
        .get_mut(spec::TOP_LEVEL_KEY)
        .and_then(|t| t.get_mut(name))
        .and_then(Value::as_mapping_mut)
        .ok_or_else(|| DeployError::Definition(format!("the stored definition does not declare {name:?}; deploy it again")))?;
    let scaling = fields.entry(key("scaling")).or_insert_with(|| Value::Mapping(Mapping::new()));
    if !scaling.is_mapping() {
        *scaling = Value::Mapping(Mapping::new());
    }
    let scaling = scaling.as_mapping_mut().expect("made a mapping above");
    if let Some(min) = min {
        scaling.insert(key("min_replicas"), Value::from(min));
    }
    if let Some(max) = max {
        scaling.insert(key("max_replicas"), Value::from(max));
    }
    let text = serde_yaml::to_string(&file).map_err(|e| DeployError::Definition(e.to_string()))?;
    spec::load(&text, base).map_err(DeployError::Invalid)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::bundle::tests::tgz;
    use super::*;
    use roost_common::spec::FunctionKind;

    fn store(name: &str) -> (PathBuf, Store) {
        let d = std::env::temp_dir().join(format!("roost-deploy-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let s = Store::open(&d).unwrap();
        (d, s)
    }

    fn deploy(store: &Store, name: &str, p: Payload) -> Result<FunctionSpec, DeployError> {
        let staged = stage(store, name, p, bundle::Limits::default())?;
        store.commit(name, &staged.dir)?;
        Ok(store.load().valid.remove(name).expect("stored"))
    }

    const HELLO: &[u8] = b"async def handle(request):\n    return {'hello': 'world'}\n";

    #[test]
    fn a_bundle_becomes_a_python_function_with_its_folder() {
        let (d, s) = store("bundle");
        let def =
            b"version: 2\nconfiguration:\n  base_function_file_name: main.py\n  extra_dependencies: six\nscaling: {max_replicas: 3}\n";
        let spec = deploy(&s, "greet", Payload::Bundle(tgz(&[("function.yml", def), ("main.py", HELLO), ("lib/x.py", b"")]))).unwrap();
        assert_eq!((spec.name.as_str(), spec.version.as_str(), spec.scaling.max_replicas), ("greet", "2", 3));
        let FunctionKind::Python { folder, file, extra_dependencies } = &spec.runtime else { panic!("{spec:?}") };
        assert_eq!((file.as_str(), extra_dependencies.as_slice()), ("main.py", &["six".to_string()][..]));
        assert!(folder.join("lib/x.py").exists() && folder.ends_with("python/functions/greet"), "{folder:?}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_source_file_becomes_a_python_or_a_command_function() {
        let (d, s) = store("source");
        let spec = deploy(&s, "hi", Payload::Source { file: "hi.py".into(), code: HELLO.to_vec() }).unwrap();
        assert!(matches!(&spec.runtime, FunctionKind::Python { file, .. } if file == "hi.py"), "{spec:?}");
        assert!(spec.version.starts_with("src-"));
        let spec = deploy(&s, "wc", Payload::Source { file: "wc.sh".into(), code: b"#!/bin/sh\nwc -c\n".to_vec() }).unwrap();
        let FunctionKind::Command { folder, command, .. } = &spec.runtime else { panic!("{spec:?}") };
        assert_eq!(command, &["./wc.sh".to_string()]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(folder.join("wc.sh")).unwrap().permissions().mode() & 0o111, 0o111, "executable");
        let err = stage(&s, "x", Payload::Source { file: "../x.py".into(), code: HELLO.to_vec() }, bundle::Limits::default()).unwrap_err();
        assert!(err.is_callers() && err.to_string().contains("plain file name"), "{err}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_definition_alone_declares_an_image_function_and_nothing_else() {
        let (d, s) = store("image");
        let spec =
            deploy(&s, "img", Payload::Definition(r#"{"version": "1", "runtime": {"kind": "image", "image": "nginx:1"}}"#.into())).unwrap();
        assert!(matches!(&spec.runtime, FunctionKind::Image { image } if image == "nginx:1"));
        let err = stage(&s, "py", Payload::Definition("version: 1\nruntime: python\n".into()), bundle::Limits::default()).unwrap_err();
        assert!(err.to_string().contains("needs its code"), "{err}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn bad_deploys_name_their_problem_and_leave_nothing() {
        let (d, s) = store("bad");
        let limits = bundle::Limits::default();
        let cases: Vec<(&str, Payload, &str)> = vec![
            ("Bad.Name", Payload::Definition("version: 1".into()), "invalid function name"),
            ("system", Payload::Definition("version: 1".into()), "reserved"),
            ("f", Payload::Bundle(tgz(&[("main.py", HELLO)])), "no readable function.yml"),
            ("f", Payload::Bundle(tgz(&[("function.yml", b"- a list\n")])), "not a mapping"),
            ("f", Payload::Bundle(tgz(&[("function.yml", b"version: 1\nconfiguration: {base_function_file_name: main.py}\n")])), "main.py"),
            (
                "f",
                Payload::Bundle(tgz(&[
                    ("function.yml", b"version: 1\nbogus: 2\nconfiguration: {base_function_file_name: m.py}\n"),
                    ("m.py", HELLO),
                ])),
                "bogus",
            ),
            ("f", Payload::Bundle(tgz(&[("function.yml", b"name: g\nversion: 1\n")])), "deployed as \"f\""),
            (
                "f",
                Payload::Bundle(tgz(&[
                    ("function.yml", b"version: 1\nconfiguration: {function_folder: x, base_function_file_name: m.py}\n"),
                    ("m.py", HELLO),
                ])),
                "function_folder",
            ),
            ("f", Payload::Bundle(tgz(&[("function.yml", b"version: 1\n"), ("../evil", b"x")])), "climbs out"),
            ("f", Payload::Bundle(b"not gzip".to_vec()), "not a gzip'd tar"),
        ];
        for (name, payload, says) in cases {
            let err = stage(&s, name, payload, limits).unwrap_err();
            assert!(err.is_callers(), "{name}: {err}");
            assert!(err.to_string().contains(says), "{name}: expected {says:?} in: {err}");
        }
        let left: Vec<_> = std::fs::read_dir(d.join(store::FUNCTIONS_DIR)).unwrap().collect();
        assert!(left.is_empty(), "nothing stored or staged: {left:?}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn rescaling_keeps_the_rest_and_refuses_an_invalid_result() {
        let (d, s) = store("scale");
        deploy(&s, "img", Payload::Definition("version: 1\nruntime: {kind: image, image: x}\nenv: {A: b}\n".into())).unwrap();
        let text = s.definition("img").unwrap();
        let new = rescale(&text, &d, "img", Some(1), Some(4)).unwrap();
        s.rewrite_definition("img", &new).unwrap();
        let spec = s.load().valid.remove("img").unwrap();
        assert_eq!((spec.scaling.min_replicas, spec.scaling.max_replicas, spec.env["A"].as_str()), (1, 4, "b"));
        let err = rescale(&new, &d, "img", Some(5), Some(2)).unwrap_err();
        assert!(err.to_string().contains("min_replicas"), "{err}");
        let _ = std::fs::remove_dir_all(d);
    }
}
