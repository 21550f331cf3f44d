//! Where the platform answers, resolved once for every command: a flag or its
//! environment variable, else the `endpoints.env` that `roost up` writes into its work
//! folder (`.roost` in the current folder, or `ROOST_WORK_DIR`), else the built-in
//! default.

use roost_common::auth::{ApiToken, ControlToken};
use roost_common::env;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The file `roost up` writes into its work folder, and removes when it stops.
pub const FILE: &str = "endpoints.env";

/// `roost up`'s default work folder, relative to the current folder.
pub const DEFAULT_WORK_DIR: &str = ".roost";

/// The built-in gate URL.
pub const DEFAULT_GATE: &str = "http://127.0.0.1:8080";
/// The built-in orchestrator URL.
pub const DEFAULT_ORCHESTRATOR: &str = "http://127.0.0.1:18002";
/// The built-in Redis URL.
pub const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379/";

/// Where the platform answers ([`resolve`]); what it does is in [`crate::client`].
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The gate, e.g. `http://127.0.0.1:8080`.
    pub gate: String,
    /// The orchestrator's API, e.g. `http://127.0.0.1:18002`.
    pub orchestrator: String,
    /// Redis URL, for the load figures.
    pub redis: String,
    /// The control token the orchestrator's API requires (sent only to it, never to the
    /// gate: functions must not see it).
    pub control_token: Option<roost_common::auth::ControlToken>,
    /// The management API's token (sent only to `/system/...`).
    pub api_token: Option<roost_common::auth::ApiToken>,
    /// Where each came from.
    pub origin: Origins,
}

/// Where each endpoint's value came from.
#[derive(Debug, Clone)]
pub struct Origins {
    /// The gate's.
    pub gate: Origin,
    /// The orchestrator's.
    pub orchestrator: Origin,
    /// Redis's.
    pub redis: Origin,
}

/// Where an endpoint's value came from, for the error that says it cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A flag or its environment variable (clap does not tell which).
    Given {
        /// The flag.
        flag: &'static str,
        /// The variable.
        var: &'static str,
    },
    /// `roost up`'s endpoints file.
    File(PathBuf),
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Given { flag, var } => write!(f, "given by {flag} or {var}"),
            Origin::File(path) => write!(f, "read from {}, written by `roost up`", path.display()),
            Origin::Default => f.write_str("the default: no flag, no variable, no endpoints file of `roost up`"),
        }
    }
}

/// The endpoints given on the command line or in the environment (`None`: not given).
#[derive(Debug, Clone, Default)]
pub struct Given {
    /// `--gate` / `ROOST_GATE_URL`.
    pub gate: Option<String>,
    /// `--orchestrator` / `ROOST_ORCHESTRATOR_URL`.
    pub orchestrator: Option<String>,
    /// `--redis` / `ROOST_REDIS_URL`.
    pub redis: Option<String>,
    /// `--control-token` / `ROOST_CONTROL_TOKEN`, or the file `--control-token-file` /
    /// `ROOST_CONTROL_TOKEN_FILE` names.
    pub control_token: Option<ControlToken>,
    /// `--api-token` / `ROOST_API_TOKEN`: the management API's token.
    pub api_token: Option<ApiToken>,
}

/// Reads an endpoints file's `NAME=value` lines (blank lines and `#` comments skipped).
pub fn parse(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The endpoints file to read: in `work_dir` (`ROOST_WORK_DIR`) when it is set, else in
/// `.roost` under `cwd`.
pub fn file_in(work_dir: Option<&Path>, cwd: &Path) -> PathBuf {
    match work_dir {
        Some(dir) => cwd.join(dir).join(FILE),
        None => cwd.join(DEFAULT_WORK_DIR).join(FILE),
    }
}

/// Resolves every endpoint: `given` first, then `file` (its path and lines, when it
/// exists), then the defaults. URLs lose a trailing slash. The control token: given, else
/// the file's `ROOST_CONTROL_TOKEN` (a bad one there counts as absent), else none.
pub fn resolve(given: Given, file: Option<(&Path, &HashMap<String, String>)>) -> Endpoints {
    let pick = |given: Option<String>, flag: &'static str, var: &'static str, default: &str| -> (String, Origin) {
        if let Some(v) = given.filter(|v| !v.is_empty()) {
            return (v, Origin::Given { flag, var });
        }
        if let Some((path, values)) = file {
            if let Some(v) = values.get(var).filter(|v| !v.is_empty()) {
                return (v.clone(), Origin::File(path.to_path_buf()));
            }
        }
        (default.to_string(), Origin::Default)
    };
    let (gate, gate_from) = pick(given.gate, "--gate", env::GATE_URL, DEFAULT_GATE);
    let (orchestrator, orchestrator_from) = pick(given.orchestrator, "--orchestrator", env::ORCHESTRATOR_URL, DEFAULT_ORCHESTRATOR);
    let (redis, redis_from) = pick(given.redis, "--redis", env::REDIS_URL, DEFAULT_REDIS);
    let control_token = given.control_token.or_else(|| {
        let (_, values) = file?;
        ControlToken::new(values.get(env::CONTROL_TOKEN)?).ok()
    });
    let api_token = given.api_token.or_else(|| {
        let (_, values) = file?;
        ApiToken::new(values.get(env::API_TOKEN)?).ok()
    });
    Endpoints {
        gate: gate.trim_end_matches('/').to_string(),
        orchestrator: orchestrator.trim_end_matches('/').to_string(),
        redis,
        control_token,
        api_token,
        origin: Origins { gate: gate_from, orchestrator: orchestrator_from, redis: redis_from },
    }
}

/// [`resolve`] with the endpoints file found from the environment (`ROOST_WORK_DIR`) and
/// the current folder; a file that cannot be read counts as absent.
pub fn from_environment(given: Given) -> Endpoints {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let work_dir = std::env::var_os(env::WORK_DIR).filter(|v| !v.is_empty()).map(PathBuf::from);
    let path = file_in(work_dir.as_deref(), &cwd);
    let values = std::fs::read_to_string(&path).ok().map(|t| parse(&t));
    resolve(given, values.as_ref().map(|v| (path.as_path(), v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRITTEN: &str = "ROOST_GATE_URL=http://127.0.0.1:9000\nROOST_ORCHESTRATOR_URL=http://127.0.0.1:4242\n# a comment\n\nROOST_REDIS_URL=redis://127.0.0.1:7000/\nROOST_CONTROL_TOKEN=0123456789abcdef0123\nROOST_API_TOKEN=api0123456789abcdef\n";

    #[test]
    fn the_flag_or_variable_then_the_file_then_the_default() {
        let values = parse(WRITTEN);
        let path = Path::new("/p/.roost/endpoints.env");
        // Nothing given: the file.
        let e = resolve(Given::default(), Some((path, &values)));
        assert_eq!(
            (e.gate.as_str(), e.orchestrator.as_str(), e.redis.as_str()),
            ("http://127.0.0.1:9000", "http://127.0.0.1:4242", "redis://127.0.0.1:7000/")
        );
        assert_eq!(e.origin.orchestrator, Origin::File(path.into()));
        assert_eq!(e.control_token.as_ref().map(ControlToken::expose), Some("0123456789abcdef0123"));
        assert_eq!(e.api_token.as_ref().map(ApiToken::expose), Some("api0123456789abcdef"));
        // A given token wins over the file's.
        let given = Given { control_token: Some(ControlToken::new("given0123456789abcdef").unwrap()), ..Given::default() };
        assert_eq!(resolve(given, Some((path, &values))).control_token.unwrap().expose(), "given0123456789abcdef");
        // Given (flag or variable): it wins over the file, per endpoint.
        let given = Given { orchestrator: Some("http://10.0.0.1:1/".into()), ..Given::default() };
        let e = resolve(given, Some((path, &values)));
        assert_eq!(e.orchestrator, "http://10.0.0.1:1");
        assert_eq!(e.origin.orchestrator, Origin::Given { flag: "--orchestrator", var: "ROOST_ORCHESTRATOR_URL" });
        assert_eq!(e.gate, "http://127.0.0.1:9000");
        // No file: the defaults.
        let e = resolve(Given::default(), None);
        assert_eq!((e.gate.as_str(), e.orchestrator.as_str(), e.redis.as_str()), (DEFAULT_GATE, DEFAULT_ORCHESTRATOR, DEFAULT_REDIS));
        assert_eq!(e.origin.gate, Origin::Default);
        assert_eq!(e.control_token, None);
        // A file without a name: the default for that one.
        let partial = parse("ROOST_GATE_URL=http://127.0.0.1:9000\n");
        let e = resolve(Given::default(), Some((path, &partial)));
        assert_eq!((e.gate.as_str(), e.orchestrator.as_str()), ("http://127.0.0.1:9000", DEFAULT_ORCHESTRATOR));
    }

    #[test]
    fn the_file_is_found_in_the_work_folder_or_in_dot_roost() {
        let dir = std::env::temp_dir().join(format!("roost-endpoints-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(".roost")).unwrap();
        std::fs::write(dir.join(".roost").join(FILE), WRITTEN).unwrap();
        let path = file_in(None, &dir);
        assert_eq!(path, dir.join(".roost/endpoints.env"));
        let values = parse(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(resolve(Given::default(), Some((&path, &values))).orchestrator, "http://127.0.0.1:4242");
        // ROOST_WORK_DIR, relative to the current folder or absolute.
        assert_eq!(file_in(Some(Path::new("elsewhere")), &dir), dir.join("elsewhere/endpoints.env"));
        assert_eq!(file_in(Some(Path::new("/abs/wd")), &dir), PathBuf::from("/abs/wd/endpoints.env"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn origins_say_where_a_value_came_from() {
        let given = Origin::Given { flag: "--orchestrator", var: "ROOST_ORCHESTRATOR_URL" };
        assert_eq!(given.to_string(), "given by --orchestrator or ROOST_ORCHESTRATOR_URL");
        assert!(Origin::File(".roost/endpoints.env".into()).to_string().contains(".roost/endpoints.env"));
    }
}
