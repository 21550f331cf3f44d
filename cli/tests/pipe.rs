//! `roost` without a platform: writing into a pipe whose reader has gone
//! (`roost ... | head`) ends it quietly, by SIGPIPE, as Unix tools do, never with a
//! panic; `validate --json` lists every problem.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

#[test]
fn a_closed_pipe_ends_roost_quietly() {
    let defs = std::env::temp_dir().join(format!("roost-pipe-{}.yml", std::process::id()));
    // Enough functions that `validate` writes more than a pipe's buffer.
    let mut yaml = String::from("usable-functions:\n");
    for i in 0..3000 {
        yaml.push_str(&format!("  f{i}: {{version: 1, runtime: {{kind: image, image: x}}}}\n"));
    }
    std::fs::write(&defs, yaml).unwrap();
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_roost")).arg("validate").arg(&defs).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // The reader goes away before reading anything.
    drop(child.stdout.take());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    // Cleanup of a temporary file: a leftover does not change the outcome.
    let _ = std::fs::remove_file(&defs);
    assert!(!stderr.contains("panicked"), "roost panicked on a closed pipe: {stderr}");
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "ended by SIGPIPE: {status:?}, stderr: {stderr}");
}

#[test]
fn validate_json_lists_every_problem_and_fails() {
    let defs = std::env::temp_dir().join(format!("roost-validate-json-{}.yml", std::process::id()));
    std::fs::write(&defs, "usable-functions:\n  Bad_Name: {version: 1, runtime: {kind: image, image: x}}\n  ok: {version: 1}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_roost")).arg("validate").arg(&defs).arg("--json").output().unwrap();
    let _ = std::fs::remove_file(&defs);
    assert!(!out.status.success(), "an invalid file fails");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(answer["ok"], false);
    let problems = answer["problems"].as_array().unwrap();
    assert!(problems.len() >= 2, "both functions' problems: {answer}");
    assert!(problems.iter().any(|p| p.as_str().unwrap().contains("Bad_Name")), "{answer}");
}
