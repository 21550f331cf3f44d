//! `extra_dependencies` on the process runtime, against the real PyPI (through the host's
//! proxy and CA bundle, if any): a virtual environment built once by `prepare`, reused
//! by a restarted runtime, imported by a started replica with the pinned version winning
//! over the system's; and a bad package failing with pip's last lines, remembered without
//! running pip again.

use roost_common::spec::{FunctionKind, FunctionSpec};
use roost_common::wire::logs::BUILD_SOURCE;
use roost_orchestrator::runtime::process::{ProcessConfig, ProcessRuntime};
use roost_orchestrator::runtime::{venv, ReplicaRuntime, RuntimeError};
use roost_testkit::{wait_until, workspace_root};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HANDLER: &str = r#"import humanize, importlib.metadata

async def handle(request):
    return {"file": humanize.__file__, "version": importlib.metadata.version("humanize"), "words": humanize.intword(12345678)}
"#;

/// A definitions folder with the function `deps` (its handler imports humanize).
fn defs(tag: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("roost-deps-{}-{tag}", std::process::id()));
    let folder = root.join("python/functions/deps");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("deps.py"), HANDLER).unwrap();
    root
}

/// The function `deps` with `words` as its pip words (built by hand: the words may hold
/// pip options).
fn spec(words: &[&str]) -> FunctionSpec {
    let yaml = "usable-functions:\n  deps:\n    version: 1\n    configuration: {base_function_file_name: deps.py, function_folder: deps}\n";
    let mut s = roost_common::spec::parse(yaml).unwrap().remove("deps").unwrap();
    if let FunctionKind::Python { extra_dependencies, .. } = &mut s.runtime {
        *extra_dependencies = words.iter().map(|w| w.to_string()).collect();
    }
    s
}

fn runtime(root: &Path) -> Arc<ProcessRuntime> {
    ProcessRuntime::new(ProcessConfig {
        definitions_dir: root.to_path_buf(),
        runtime_dir: workspace_root().join("faas-runtime"),
        python: "python3".into(),
        state_dir: root.join("state"),
        bind_ip: [127, 0, 0, 1].into(),
        spares: roost_orchestrator::runtime::process::SpareCount::Fixed(1),
        spare_memory: None,
    })
    .unwrap()
}

async fn get(addr: std::net::SocketAddr) -> Option<String> {
    let r = reqwest::get(format!("http://{addr}/")).await.ok()?;
    r.status().is_success().then_some(())?;
    r.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PyPI (network): full tier (scripts/test.sh)"]
async fn a_venv_is_built_once_reused_after_a_restart_and_imported_by_a_replica() {
    let root = defs("ok");
    let words = ["humanize==4.9.0"];
    let s = spec(&words);
    let rt = runtime(&root);
    // A build an earlier orchestrator did not finish: removed and made again.
    let dir = root.join("state/venvs").join(venv::key(rt.python(), &s_words(&s)));
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    std::fs::write(dir.join("lib/half-written"), "x").unwrap();

    let logs = rt.logs();
    rt.prepare(&s, "hash-1").await.expect("the venv builds");
    assert!(rt.building("hash-1").is_none());
    assert!(dir.join(venv::MARKER).is_file() && !dir.join("lib/half-written").exists());
    let build = logs.lines("deps", None, None);
    assert!(build.iter().all(|l| l.replica == BUILD_SOURCE));
    assert!(build.iter().any(|l| l.line.contains("Successfully installed humanize-4.9.0")), "{build:?}");

    // Again, and from a restarted runtime: nothing built, nothing logged.
    rt.prepare(&s, "hash-1").await.unwrap();
    let again = runtime(&root);
    let t = Instant::now();
    again.prepare(&s, "hash-2").await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "reused, not rebuilt: {:?}", t.elapsed());
    assert!(again.logs().lines("deps", None, None).is_empty());

    // A replica imports the pinned version from the venv (before the system's).
    let r = rt.start(&s, "hash-1", "deps-test-1").await.expect("the replica starts");
    let body = wait_until(Duration::from_secs(20), "the replica answers", || get(r.address)).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["version"], "4.9.0", "{v}");
    assert_eq!(v["words"], "12.3 million", "{v}");
    assert!(v["file"].as_str().unwrap().starts_with(dir.to_str().unwrap()), "humanize from the venv: {v}");
    rt.stop(&r, Duration::from_secs(5)).await.unwrap();
    rt.close().await;
    again.close().await;
    std::fs::remove_dir_all(&root).ok();
}

fn s_words(s: &FunctionSpec) -> Vec<String> {
    match &s.runtime {
        FunctionKind::Python { extra_dependencies, .. } => extra_dependencies.clone(),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PyPI (network): full tier (scripts/test.sh)"]
async fn a_bad_package_fails_with_pips_last_lines_and_is_not_retried() {
    let root = defs("bad");
    let s = spec(&["--no-deps", "roost-no-such-package-7f3a9c"]);
    let rt = runtime(&root);
    let logs = rt.logs();
    let e = rt.prepare(&s, "hash-1").await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, RuntimeError::Prepare { .. }), "{e:?}");
    assert!(text.contains("pip install failed"), "{text}");
    assert!(text.contains("No matching distribution found for roost-no-such-package-7f3a9c"), "{text}");
    assert!(text.lines().count() > 1, "the tail is on lines of its own: {text}");
    let logged = logs.lines("deps", None, None).len();

    // Remembered: the same failure at once, no pip, no log; from start too.
    let t = Instant::now();
    let again = rt.prepare(&s, "hash-1").await.unwrap_err();
    assert_eq!(again.to_string(), text);
    let started = rt.start(&s, "hash-1", "deps-test-2").await.unwrap_err();
    assert_eq!(started.to_string(), text);
    assert!(t.elapsed() < Duration::from_millis(100), "{:?}", t.elapsed());
    assert_eq!(logs.lines("deps", None, None).len(), logged, "nothing built again");
    assert!(rt.building("hash-1").is_none());
    // Nothing finished is left to be taken for a venv.
    let dir = root.join("state/venvs").join(venv::key(rt.python(), &s_words(&s)));
    assert!(!dir.join(venv::MARKER).exists());
    rt.close().await;
    std::fs::remove_dir_all(&root).ok();
}
