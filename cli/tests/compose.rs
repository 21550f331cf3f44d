//! `docker compose up` on a machine with a Docker engine and no registry: every image is
//! built offline (scripts/build-offline-images.sh), the platform comes up, `/hello`
//! answers through the gate, a burst scales `sleep` up, idle reaps it, and
//! `docker compose down` leaves no function container behind.

use roost_common::wire::status::{FunctionState, Status};
use roost_testkit::http;
use roost_testkit::process::free_port;
use roost_testkit::{wait_until, workspace_root};
use serde_json::Value;
use std::process::{Command, Output};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

/// `docker compose` (the plugin) when present, else the older `docker-compose`.
fn compose() -> Vec<String> {
    let plugin = Command::new("docker").args(["compose", "version"]).output().map(|o| o.status.success()).unwrap_or(false);
    if plugin {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

fn run(args: &[&str], env: &[(String, String)]) -> Output {
    let c = compose();
    let out = Command::new(&c[0])
        .args(&c[1..])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(workspace_root())
        .output()
        .expect("the Compose tool runs (install docker-compose or the compose plugin)");
    assert!(out.status.success(), "{c:?} {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn managed_containers() -> String {
    let out = Command::new("docker").args(["ps", "-a", "--filter", "label=roost.managed=true", "--format", "{{.Names}}"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Down(Vec<(String, String)>, String);
impl Drop for Down {
    fn drop(&mut self) {
        let c = compose();
        if std::thread::panicking() {
            // The platform's own account of the failure, before it is taken down.
            if let Ok(out) = Command::new(&c[0])
                .args(&c[1..])
                .args(["-p", &self.1, "logs", "--no-color", "--tail", "200"])
                .envs(self.0.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .current_dir(workspace_root())
                .output()
            {
                eprintln!(
                    "--- docker compose logs (last 200 lines per service) ---\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let _ = Command::new(&c[0])
            .args(&c[1..])
            .args(["-p", &self.1, "down", "-v", "-t", "40"])
            .envs(self.0.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(workspace_root())
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine with Compose: full tier (scripts/test.sh)"]
async fn compose_up_with_offline_images_serves_scales_reaps_and_cleans_up() {
    let built = Command::new("bash").arg(workspace_root().join("scripts/build-offline-images.sh")).output().unwrap();
    assert!(built.status.success(), "offline images: {}", String::from_utf8_lossy(&built.stderr));
    let mut env: Vec<(String, String)> = String::from_utf8_lossy(&built.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    assert_eq!(env.len(), 6, "six image overrides: {env:?}");
    let (gate, orch) = (free_port(), free_port());
    env.push(("ROOST_GATE_PORT".into(), gate.to_string()));
    env.push(("ROOST_ORCHESTRATOR_PORT".into(), orch.to_string()));
    let project = format!("roost-e2e-{}", std::process::id());
    let _ = Command::new("docker").args(["network", "rm", "roost-functions"]).output();
    let _down = Down(env.clone(), project.clone());
    run(&["-p", &project, "up", "-d"], &env);

    wait_until(WAIT, "/hello through the gate", || async {
        let r = http::get(gate, "/hello").await.ok()?;
        (r.status == 200).then_some(r)
    })
    .await;
    let r = http::get(gate, "/hello").await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap(), serde_json::json!({"Hello": "World"}));

    // Redis keeps its data across a restart (append-only file on a named volume): the
    // control plane's saved model is still there, and /hello still answers.
    // Its answer, or "" while it cannot answer (restarting).
    let redis_cli = |args: &[&str]| {
        let c = compose();
        let out = Command::new(&c[0])
            .args(&c[1..])
            .args(["-p", project.as_str(), "exec", "-T", "redis", "redis-cli"])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(workspace_root())
            .output()
            .expect("the Compose tool runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(redis_cli(&["config", "get", "appendonly"]), "appendonly\nyes");
    run(&["-p", &project, "restart", "redis"], &env);
    wait_until(WAIT, "Redis back", || async { (redis_cli(&["ping"]) == "PONG").then_some(()) }).await;
    assert_eq!(redis_cli(&["exists", "roost:cp:state"]), "1", "the control plane's saved model survived the restart");
    wait_until(WAIT, "/hello after the Redis restart", || async {
        let r = http::get(gate, "/hello").await.ok()?;
        (r.status == 200).then_some(())
    })
    .await;

    let status = |name: &'static str| async move {
        let r = http::get(orch, "/status").await.ok()?;
        let s: Status = serde_json::from_str(&r.body).ok()?;
        s.function(name).cloned()
    };
    // `sleep`'s image is built when compose starts (with the others, in parallel; a minute
    // on a slow storage driver), and a call held longer than the gate's 30 s gets a
    // 504: call it until its image is built and it answers.
    wait_until(WAIT, "/sleep answering once its image is built", || async {
        let r = http::get(gate, "/sleep?ms=1").await.ok()?;
        (r.status == 200).then_some(())
    })
    .await;
    // A burst on `sleep` (target concurrency 1) brings a second container.
    let burst: Vec<_> = (0..6).map(|_| tokio::spawn(async move { http::get(gate, "/sleep?ms=1500").await })).collect();
    wait_until(WAIT, "a second sleep container", || async {
        let f = status("sleep").await?;
        (f.replicas.len() >= 2).then_some(())
    })
    .await;
    for b in burst {
        let r = b.await.unwrap().expect("answered");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // Idle (sleep's idle timeout is 5 s) reaps it.
    wait_until(WAIT, "sleep reaped", || async { (status("sleep").await?.state == FunctionState::Sleeping).then_some(()) }).await;

    run(&["-p", &project, "down", "-v", "-t", "40"], &env);
    assert_eq!(managed_containers(), "", "docker compose down left function containers behind");
}
