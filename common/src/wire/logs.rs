//! The orchestrator's log API (`GET /functions/{name}/logs`), as the orchestrator serves it
//! and `roost logs` reads it: one JSON [`LogLine`] per line (NDJSON), oldest first; with
//! `follow=true` the answer stays open and each new line follows as it is written.

use serde::{Deserialize, Serialize};

/// Where a line came from when it is not a replica: the function's build (a Docker image
/// build or the process runtime's virtual environment), so `roost logs` can show why a
/// build failed.
pub const BUILD_SOURCE: &str = "build";

/// Where a line came from when the orchestrator itself wrote it into a followed answer:
/// a notice such as "lines were skipped" (a follower that fell behind), never a
/// function's output.
pub const NOTICE_SOURCE: &str = "roost";

/// One line of a function's output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogLine {
    /// Unix time in milliseconds when the orchestrator read the line.
    pub time_ms: u64,
    /// The replica id that wrote it, or [`BUILD_SOURCE`].
    pub replica: String,
    /// The line, without its end of line.
    pub line: String,
}

/// The query of `GET /functions/{name}/logs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogQuery {
    /// Only lines read at or after this Unix time in milliseconds.
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// At most this many of the newest lines kept (before following).
    #[serde(default)]
    pub tail: Option<usize>,
    /// Keep the answer open and send new lines as they come.
    #[serde(default)]
    pub follow: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object() {
        let l = LogLine { time_ms: 5, replica: "hello-1".into(), line: "ModuleNotFoundError: No module named 'x'".into() };
        let json = serde_json::to_string(&l).unwrap();
        assert!(!json.contains('\n'));
        assert_eq!(serde_json::from_str::<LogLine>(&json).unwrap(), l);
    }
}
