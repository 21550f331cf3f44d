//! The environment of a replica, one recipe for both runtimes: the function's variables
//! and Roost's settings for it ([`function_env`]), then the runtime's own variables
//! ([`runtime_env`]), which win.
//!
//! The runtimes differ in one place, where `PYTHONPATH` and `PYTHONDONTWRITEBYTECODE`
//! come from ([`PythonPath`]); a function's own values for them are dropped on both (see
//! [`RUNTIME_VARS`]).

use roost_common::spec::{FunctionKind as Kind, FunctionSpec};
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::Path;

/// Variables the runtime sets itself for every replica: a function's values for them are
/// dropped. `PORT` and `ROOST_*` are refused by the definitions' validation already;
/// `PYTHONPATH` must name the runtime package, or the replica cannot start.
pub(crate) const RUNTIME_VARS: [&str; 4] = ["PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PORT", "ROOST_BIND"];

/// Where a replica's `PYTHONPATH` (and `PYTHONDONTWRITEBYTECODE`) come from: the one
/// difference between the two runtimes' environments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PythonPath {
    /// Process runtime: set when the process is spawned. The runtime runs `python3 -S`,
    /// which skips the `site` module (its `.pth` hooks cost most of a start), so the
    /// path holds the runtime's folder and then the folders `site` would have added
    /// (site-packages and what `.pth` files name), for the same packages to import.
    /// Only the runtime's folder when those could not be read (then `-S` is not used).
    Spawn(OsString),
    /// Docker runtime: set by the function image's `ENV` at build time
    /// (`/opt/roost:/opt/roost/deps:/usr/lib/python3/dist-packages`, see
    /// `docker::image::dockerfile`): the runtime, the function's `extra_dependencies`,
    /// then Debian's packages, so nothing is added at run time. A container variable
    /// would replace the image's value, hence dropping the function's own.
    Image,
}

/// What a replica of `spec`, run in `dir`, gets besides the runtime's own variables: the
/// function's variables (without [`RUNTIME_VARS`]), then Roost's settings for it.
pub fn function_env(spec: &FunctionSpec, dir: &Path) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> =
        spec.env.iter().filter(|(k, _)| !RUNTIME_VARS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
    env.push(("ROOST_FUNCTION_NAME".into(), spec.name.clone()));
    env.push(("ROOST_FUNCTION_DIR".into(), dir.display().to_string()));
    env.push(("ROOST_TIMEOUT_S".into(), spec.limits.timeout.as_secs_f64().to_string()));
    match &spec.runtime {
        Kind::Python { file, .. } => env.push(("ROOST_FUNCTION_FILE".into(), file.clone())),
        Kind::Command { command, .. } => env.push(("ROOST_COMMAND".into(), serde_json::to_string(command).expect("strings serialize"))),
        Kind::Image { .. } => {}
    }
    env
}

/// The runtime's own variables for a replica listening on `bind`:`port`; set after
/// [`function_env`]'s, so they win.
pub(crate) fn runtime_env(python_path: &PythonPath, port: u16, bind: IpAddr) -> Vec<(&'static str, OsString)> {
    let mut env = Vec::with_capacity(RUNTIME_VARS.len());
    if let PythonPath::Spawn(path) = python_path {
        env.push(("PYTHONPATH", path.clone()));
        env.push(("PYTHONDONTWRITEBYTECODE", "1".into()));
    }
    env.push(("PORT", port.to_string().into()));
    env.push(("ROOST_BIND", bind.to_string().into()));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> FunctionSpec {
        let yaml = format!("usable-functions:\n  hello:\n    version: 1\n    configuration: {{base_function_file_name: hello.py, function_folder: hello}}\n    limits: {{timeout: 1500ms}}\n{extra}");
        roost_common::spec::parse(&yaml).unwrap().remove("hello").unwrap()
    }

    fn names<K: AsRef<str>, V>(env: &[(K, V)]) -> Vec<&str> {
        env.iter().map(|(k, _)| k.as_ref()).collect()
    }

    #[test]
    fn the_function_env_is_its_variables_then_roost_settings() {
        let env =
            function_env(&spec("    env: {GREETING: hi, PYTHONPATH: /mine, PYTHONDONTWRITEBYTECODE: \"0\"}\n"), Path::new("/fn/hello"));
        assert_eq!(
            env,
            [
                ("GREETING", "hi"),
                ("ROOST_FUNCTION_NAME", "hello"),
                ("ROOST_FUNCTION_DIR", "/fn/hello"),
                ("ROOST_TIMEOUT_S", "1.5"),
                ("ROOST_FUNCTION_FILE", "hello.py")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn a_command_function_gets_its_command_as_json() {
        let s = spec("    runtime: {kind: command, command: [sh, wc.sh]}\n");
        let env = function_env(&s, Path::new("/fn/wc"));
        assert_eq!(env.last().unwrap(), &("ROOST_COMMAND".to_string(), r#"["sh","wc.sh"]"#.to_string()));
        assert!(!names(&env).contains(&"ROOST_FUNCTION_FILE"));
    }

    #[test]
    fn the_process_runtime_sets_the_python_path_at_spawn_and_docker_leaves_it_to_the_image() {
        let ip: IpAddr = [127, 0, 0, 1].into();
        let spawn = runtime_env(&PythonPath::Spawn("/rt:/site".into()), 8080, ip);
        assert_eq!(names(&spawn), ["PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PORT", "ROOST_BIND"]);
        assert_eq!(spawn[0].1, "/rt:/site");
        assert_eq!(spawn[3].1, "127.0.0.1");
        let image = runtime_env(&PythonPath::Image, 8080, [0, 0, 0, 0].into());
        assert_eq!(image, [("PORT", "8080".into()), ("ROOST_BIND", "0.0.0.0".into())]);
        // Every variable the runtimes set is one a function cannot.
        assert!(names(&spawn).iter().all(|n| RUNTIME_VARS.contains(n)));
    }
}
