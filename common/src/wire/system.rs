//! The management API on the platform's public port (`/system/...`, behind the API
//! token): what `roost deploy`, `rm`, `describe`, `scale` and `ls` send and get. Errors
//! are [`super::status::ApiError`], naming the problem.

use super::status::FunctionStatus;
use serde::{Deserialize, Serialize};

/// The management API's path prefix on the public port.
pub const PREFIX: &str = "/system";

/// Where a function is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The definitions file (changed by editing it; the API cannot replace or remove it).
    File,
    /// Deployed over this API (kept in the platform's data directory).
    Deployed,
}

/// One function in a list or a describe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionInfo {
    /// Its state, replicas and cold starts.
    #[serde(flatten)]
    pub status: FunctionStatus,
    /// Where it is declared.
    pub source: Source,
}

/// `GET /system/functions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionList {
    /// Every function, by name.
    pub functions: Vec<FunctionInfo>,
    /// The definitions' problems (the file's, a hidden or unreadable deployed function).
    pub definitions_error: Option<String>,
}

/// `GET /system/functions/{name}`, and the answer of a deploy (201 new, 200 updated) or a
/// scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Describe {
    /// State, replicas, cold starts, last error, where it is declared.
    #[serde(flatten)]
    pub info: FunctionInfo,
    /// Its definition as it serves, every default filled in (absent for an invalid one).
    pub definition: Option<serde_json::Value>,
    /// Where it is called, relative to the platform's public URL (`/<name>`).
    pub path: String,
}

/// `POST /system/functions/{name}/scale`: the bounds to set (absent: unchanged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// `scaling.min_replicas`.
    pub min_replicas: Option<u32>,
    /// `scaling.max_replicas`.
    pub max_replicas: Option<u32>,
}

/// `DELETE /system/functions/{name}`: accepted; its replicas drain, then stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// The function.
    pub removed: String,
}

/// The query of `PUT /system/functions/{name}` with one source file as its body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployQuery {
    /// The source file's name (`handler.py`, `wc.sh`): the body is that file.
    pub file: Option<String>,
}
