//! The files Rust cannot import (compose.yaml, docker/, envoy/, gateway-lua/, scripts/)
//! spell only `ROOST_` names that `roost_common::env` lists, current or renamed, so a typo
//! fails here instead of being silently ignored by a service.

use roost_common::env::{ALL, RENAMED};
use std::path::{Path, PathBuf};

/// The benchmark suite's own knobs (`ROOST_BENCH_*`) are its business, not a shared name.
const OWN_PREFIXES: &[&str] = &["ROOST_BENCH_"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("common/ is in the workspace").to_path_buf()
}

/// Every `ROOST_[A-Z0-9_]+` word in `text` (a bare `ROOST_` or `ROOST_*` is prose).
fn roost_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("ROOST_") {
        let word: String = rest[at..].chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
        let preceded_by_word = rest[..at].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !preceded_by_word && !word.ends_with('_') {
            names.push(word.clone());
        }
        rest = &rest[at + word.len().max(1)..];
    }
    names
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_none_or(|e| e != "md") {
            out.push(path);
        }
    }
}

fn unknown_names_in(paths: &[PathBuf]) -> Vec<String> {
    let mut unknown = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        for name in roost_names(&text) {
            let known =
                ALL.contains(&name.as_str()) || RENAMED.iter().any(|r| r.old == name) || OWN_PREFIXES.iter().any(|p| name.starts_with(p));
            if !known {
                unknown.push(format!("{}: {name}", path.display()));
            }
        }
    }
    unknown
}

#[test]
fn the_scanner_finds_names_and_skips_prose() {
    assert_eq!(roost_names("ROOST_A: 1\n${ROOST_B_C:-x} ROOST_* ROOST_\nXROOST_D"), ["ROOST_A", "ROOST_B_C"]);
}

#[test]
fn compose_sets_only_known_names() {
    let compose = workspace().join("compose.yaml");
    let names = roost_names(&std::fs::read_to_string(&compose).unwrap());
    assert!(names.iter().any(|n| n == "ROOST_LISTENER_BIND"), "the scan sees compose's names: {names:?}");
    let unknown = unknown_names_in(&[compose]);
    assert!(unknown.is_empty(), "not in roost_common::env (a typo, or a name to add there):\n{}", unknown.join("\n"));
}

#[test]
fn compose_sets_no_deprecated_name() {
    let text = std::fs::read_to_string(workspace().join("compose.yaml")).unwrap();
    let old: Vec<_> = roost_names(&text).into_iter().filter(|n| RENAMED.iter().any(|r| r.old == *n)).collect();
    assert!(old.is_empty(), "compose.yaml uses old names: {old:?}");
}

#[test]
fn docker_envoy_gate_and_scripts_spell_only_known_names() {
    let root = workspace();
    let mut paths = Vec::new();
    for dir in ["docker", "envoy", "gateway-lua", "scripts"] {
        files(&root.join(dir), &mut paths);
    }
    assert!(paths.iter().any(|p| p.ends_with("gateway-lua/run.sh")), "{paths:?}");
    let unknown = unknown_names_in(&paths);
    assert!(unknown.is_empty(), "not in roost_common::env (a typo, or a name to add there):\n{}", unknown.join("\n"));
}
