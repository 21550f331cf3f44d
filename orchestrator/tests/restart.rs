//! A crashed orchestrator (SIGKILL) comes back and adopts the replicas it left running:
//! no new cold start, the same process keeps serving, and strays are removed.

mod support;

use roost_testkit::process::{free_port, Guard};
use roost_testkit::wait_until;
use std::process::{Command, Stdio};
use support::*;

const DEFS: &str = r#"
usable-functions:
  hello:
    version: 0.1
    configuration:
      programing_language: python
      base_function_file_name: hello.py
      function_folder: hello
    scaling: {idle_timeout: 1m}
"#;

fn spawn(b: &Backend, defs: &Defs, state: &std::path::Path, api: u16) -> Guard {
    Guard::spawn(
        "orchestrator",
        Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .env("ROOST_DEFINITIONS", defs.path())
            .env("ROOST_REDIS_URL", b.redis.url())
            .env("ROOST_CONTROL_PLANE_URL", format!("http://{}", b.cp.admin_addr))
            .env("ROOST_ENVOY_ADMIN_URL", format!("http://127.0.0.1:{}", b.envoy.admin_port))
            .env("ROOST_RUNTIME_DIR", roost_testkit::workspace_root().join("faas-runtime"))
            .env("ROOST_STATE_DIR", state)
            .env("ROOST_ORCHESTRATOR_BIND", format!("127.0.0.1:{api}"))
            .env("ROOST_CONTROL_TOKEN", support::TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy and redis-server: full tier (scripts/test.sh)"]
async fn a_restarted_orchestrator_adopts_running_replicas() {
    let b = Backend::start().await;
    let defs = Defs::new(DEFS);
    let state = std::env::temp_dir().join(format!("roost-state-{}-restart", std::process::id()));
    let api = free_port();
    let mut first = spawn(&b, &defs, &state, api);
    wait_until(WAIT, "orchestrator API", || async { roost_testkit::http::get(api, "/healthz").await.ok() }).await;
    assert_eq!(wake(api, "hello").await.0, 200);
    let before = function_status(api, "hello").await;
    let replica = before["replicas"][0]["id"].as_str().unwrap().to_string();

    // A stray: an endpoint the control plane has that no replica backs.
    let cp = b.cp.admin_addr.port();
    let r =
        roost_testkit::http::request(cp, "POST", "/functions/hello/endpoints?wait=true", &[support::AUTH], br#"{"address":"127.0.0.1:9"}"#)
            .await
            .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    first.kill(); // SIGKILL: no cleanup, replicas keep running
    assert_eq!(b.call("/hello").await.status, 200, "the replica serves while the orchestrator is down");

    let _second = spawn(&b, &defs, &state, api);
    wait_until(WAIT, "the replica adopted", || async {
        let f = function_status(api, "hello").await;
        (f["replicas"][0]["id"] == replica.as_str()).then_some(())
    })
    .await;
    let after = function_status(api, "hello").await;
    assert_eq!(after["cold_starts"], 0, "adoption is not a cold start: {after}");
    assert_eq!(after["replicas"].as_array().unwrap().len(), 1);
    wait_until(WAIT, "the stray endpoint removed", || async {
        let r = support::get_authorized(cp, "/functions/hello").await.ok()?;
        (!r.body.contains("127.0.0.1:9\"")).then_some(())
    })
    .await;
    for _ in 0..20 {
        assert_eq!(b.call("/hello").await.status, 200);
    }
}
