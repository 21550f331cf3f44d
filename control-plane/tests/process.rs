//! The `control-plane` binary as an operator runs it: `--help`, bad configuration, and
//! a clean exit on SIGTERM with an Envoy still connected.

use roost_testkit::envoy::{Envoy, EnvoyOptions, XdsMode};
use roost_testkit::http;
use roost_testkit::process::{free_port, Guard};
use roost_testkit::wait_until;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_control-plane");

#[test]
fn help_documents_every_option_with_its_env_var() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "ROOST_XDS_BIND",
        "ROOST_ADMIN_BIND",
        "ROOST_LISTENER_ADDRESS",
        "ROOST_LISTENER_PORT",
        "ROOST_CONNECT_TIMEOUT_MS",
        "ROOST_RETRIES",
        "ROOST_REDIS_URL",
        "ROOST_REDIS_STARTUP_TIMEOUT_S",
        "ROOST_MIN_ENVOYS",
        "ROOST_SYNC_TIMEOUT_MS",
        "ROOST_LOG_FORMAT",
    ] {
        assert!(help.contains(var), "--help lacks {var}:\n{help}");
    }
}

#[test]
fn bad_configuration_exits_with_a_clear_error() {
    let out = Command::new(BIN).env("ROOST_CONNECT_TIMEOUT_MS", "9000").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("9000") && err.contains("connect-timeout-ms"), "{err}");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = port.local_addr().unwrap();
    let out = Command::new(BIN).env("ROOST_XDS_BIND", taken.to_string()).env("ROOST_ADMIN_BIND", "127.0.0.1:0").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on") && err.contains("ROOST_XDS_BIND"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy: full tier (scripts/test.sh)"]
async fn sigterm_stops_cleanly_with_envoy_connected() {
    let (xds, admin) = (free_port(), free_port());
    let mut cp = Guard::spawn(
        "control-plane",
        Command::new(BIN)
            .env("ROOST_XDS_BIND", format!("127.0.0.1:{xds}"))
            .env("ROOST_ADMIN_BIND", format!("127.0.0.1:{admin}"))
            .env("ROOST_LISTENER_PORT", free_port().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let envoy = Envoy::start(&EnvoyOptions::new(xds, XdsMode::Delta)).await;
    wait_until(Duration::from_secs(20), "Envoy connected", || async {
        let r = http::get(admin, "/envoys").await.ok()?;
        r.body.contains("test-envoy").then_some(())
    })
    .await;
    let status = tokio::time::timeout(Duration::from_secs(10), tokio::task::spawn_blocking(move || cp.terminate()))
        .await
        .expect("the control plane exits within 10 s of SIGTERM")
        .unwrap()
        .expect("exit status");
    assert!(status.success(), "exit status {status}");
    drop(envoy);
}
