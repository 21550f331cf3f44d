//! Deploying functions over the management API (`/system/...` on the public port) and
//! through the `roost` CLI, against the whole platform as `roost up` starts it: the token,
//! every operation, a rollover without a failed request, the definitions file's functions
//! kept out of reach, every bad input refused with nothing changed, and deployed functions
//! kept across a restart of the whole platform. Once with processes, once with Docker.

mod support;

use roost_common::wire::system::{Describe, FunctionList, Source};
use roost_testkit::http::{self, Response};
use roost_testkit::{wait_until, workspace_root};
use std::path::Path;
use std::time::Duration;
use support::{work_dir, Platform};

const WAIT: Duration = Duration::from_secs(90);

/// The file declares `hello`: a deploy may not take it.
const DEFS: &str = r#"
usable-functions:
  hello:
    version: 0.1
    configuration: {programing_language: python, base_function_file_name: hello.py, function_folder: hello}
    scaling: {idle_timeout: 2s}
"#;

const GREET_V1: &str = "async def handle(request):\n    return {'greet': 'v1'}\n";
const GREET_V2: &str = "async def handle(request):\n    return {'greet': 'v2'}\n";

/// A tar.gz of `(path, content)` entries, written raw (so `..` and links can be made).
fn tgz(entries: &[(&str, &[u8], tar::EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (path, data, kind, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn file<'a>(path: &'a str, data: &'a [u8]) -> (&'a str, &'a [u8], tar::EntryType, &'a str) {
    (path, data, tar::EntryType::Regular, "")
}

struct Api<'a> {
    p: &'a Platform,
}

impl Api<'_> {
    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let auth = format!("Bearer {}", self.p.api_token);
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        http::request(self.p.port, method, path, &all, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    async fn list(&self) -> FunctionList {
        let r = self.call("GET", "/system/functions", &[], b"").await;
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str(&r.body).unwrap()
    }

    async fn describe(&self, name: &str) -> Describe {
        let r = self.call("GET", &format!("/system/functions/{name}"), &[], b"").await;
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str(&r.body).unwrap()
    }
}

/// Waits until GET `/name` answers 200 with `body`.
async fn answers(p: &Platform, name: &str, body: &str) {
    let path = format!("/{name}");
    wait_until(WAIT, &format!("{path} to answer {body}"), || async {
        let r = http::get(p.port, &path).await.ok()?;
        (r.status == 200 && r.body.contains(body)).then_some(())
    })
    .await;
}

/// The page at `url` as Debian's Chromium renders it headless (its scripts run), in a
/// fresh profile each time.
fn chromium_dom(url: &str) -> String {
    let out = std::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--dump-dom", url])
        .output()
        .unwrap_or_else(|e| panic!("cannot run chromium ({e}); scripts/install-deps.sh installs Debian's"));
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn roost_ok(p: &Platform, args: &[&str]) -> String {
    let out = p.roost(args);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "roost {args:?} failed: {stdout}{stderr}");
    stdout.into_owned()
}

fn roost_fails(p: &Platform, args: &[&str]) -> String {
    let out = p.roost(args);
    assert!(!out.status.success(), "roost {args:?} should fail: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn deploy_scale_update_remove_and_restart(runtime: &str) {
    let dir = work_dir(&format!("deploy-{runtime}"), DEFS, &workspace_root().join("faas-runtime"));
    // A small body limit, to see a deploy past it refused.
    let mut p = Platform::up_with(dir, runtime, &[("ROOST_DEPLOY_MAX_BODY", "256k")]).await;
    let api = Api { p: &p };

    // No token, a wrong one, another scheme: 401, and the answer says where the token is.
    for auth in [None, Some("Bearer wrong-token-0123456789"), Some("Basic abc")] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let r = http::request(p.port, "GET", "/system/functions", &headers, b"").await.unwrap();
        assert_eq!(r.status, 401, "{auth:?}: {}", r.body);
        assert!(r.body.contains("API token"), "{}", r.body);
        let r = http::request(p.port, "PUT", "/system/functions/x?file=x.py", &headers, GREET_V1.as_bytes()).await.unwrap();
        assert_eq!(r.status, 401, "a deploy without the token: {}", r.body);
    }
    assert!(!api.list().await.functions.iter().any(|f| f.status.name == "x"), "nothing deployed without the token");

    // A folder from the template, deployed by the CLI (the token from roost up's file).
    let src = p.dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let made = roost_ok(&p, &["new", "greet", "--dir", "src"]);
    assert!(made.contains("src/greet"), "{made}");
    std::fs::write(src.join("greet/handler.py"), GREET_V1).unwrap();
    let out = roost_ok(&p, &["deploy", "src/greet"]);
    assert!(out.starts_with("deployed greet (version 1)"), "{out}");
    answers(&p, "greet", "v1").await;
    let d = api.describe("greet").await;
    assert_eq!(d.info.source, Source::Deployed);
    assert_eq!(d.definition.as_ref().unwrap()["scaling"]["max_replicas"], 5, "the template's scaling: {d:?}");
    let json: Describe = serde_json::from_str(&roost_ok(&p, &["describe", "greet", "--json"])).unwrap();
    assert_eq!(json.info.status.name, "greet");
    assert!(roost_ok(&p, &["describe", "greet"]).contains("source:      deployed"));

    // `auth: token`: 401 without the API token, asleep or awake; with it, the call goes on
    // and the function never sees the token.
    roost_ok(&p, &["new", "locked", "--dir", "src"]);
    std::fs::write(
        src.join("locked/handler.py"),
        "async def handle(request):\n    return {'seen': request.headers.get('authorization')}\n",
    )
    .unwrap();
    let def = std::fs::read_to_string(src.join("locked/function.yml")).unwrap();
    std::fs::write(src.join("locked/function.yml"), format!("{def}auth: token\n")).unwrap();
    roost_ok(&p, &["deploy", "src/locked"]);
    let bearer = format!("Bearer {}", p.api_token);
    for auth in [None, Some("Bearer not-the-token-0123456789")] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let r = http::request(p.port, "GET", "/locked", &headers, b"").await.unwrap();
        assert_eq!(r.status, 401, "{auth:?}: {}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("a JSON 401 ({e}): {}", r.body));
        assert!(v["error"].as_str().unwrap().contains("API token"), "{v}");
    }
    wait_until(WAIT, "/locked to answer with the token", || async {
        let r = http::request(p.port, "GET", "/locked", &[("authorization", bearer.as_str())], b"").await.ok()?;
        (r.status == 200).then_some(r.body)
    })
    .await;
    let r = http::request(p.port, "GET", "/locked", &[("authorization", bearer.as_str())], b"").await.unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap(),
        serde_json::json!({"seen": null}),
        "the token never reaches the function"
    );
    assert_eq!(http::get(p.port, "/locked").await.unwrap().status, 401, "awake: still refused without it");
    let out = roost_ok(&p, &["invoke", "locked", "--auth"]);
    assert!(out.contains("\"seen\": null"), "roost invoke --auth sends the token: {out}");
    roost_ok(&p, &["rm", "locked"]);

    // One source file over HTTP (Flock of Birds' raw code), and a command through the CLI.
    let r = api.call("PUT", "/system/functions/raw?file=raw.py", &[], b"async def handle(request):\n    return 'raw ok'\n").await;
    assert_eq!(r.status, 201, "{}", r.body);
    answers(&p, "raw", "raw ok").await;
    std::fs::write(p.dir.join("count.sh"), "#!/bin/sh\nprintf '{\"bytes\": %d}' \"$(wc -c)\"\n").unwrap();
    assert!(roost_ok(&p, &["deploy", "count.sh"]).starts_with("deployed count"));
    wait_until(WAIT, "count to count a body", || async {
        let r = http::request(p.port, "POST", "/count", &[], b"12345").await.ok()?;
        (r.status == 200 && r.body.contains("\"bytes\": 5")).then_some(())
    })
    .await;

    // With Docker, an image already on the engine (AMP's `fn create NAME IMAGE`): the
    // image the platform built for greet serves HTTP on $PORT.
    if runtime == "docker" {
        // The image of greet's running replica (v1; an earlier run's v2 image may be there
        // too). greet sleeps after 2 s idle: a call first wakes it (or keeps it awake).
        answers(&p, "greet", "v1").await;
        let out = std::process::Command::new("docker")
            .args(["ps", "--filter", "label=roost.function=greet", "--filter", "status=running", "--format", "{{.Image}}"])
            .output()
            .unwrap();
        let image = String::from_utf8_lossy(&out.stdout).lines().next().expect("greet's replica runs").to_string();
        let out = roost_ok(&p, &["deploy", "--image", &image, "--name", "greet-image"]);
        assert!(out.starts_with("deployed greet-image"), "{out}");
        answers(&p, "greet-image", "v1").await;
        let r = api
            .call(
                "PUT",
                "/system/functions/ghost",
                &[("content-type", "application/yaml")],
                b"version: 1\nruntime: {kind: image, image: roost-no-such-image:1}\n",
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let r = http::get(p.port, "/ghost").await.unwrap();
        assert!(
            r.status >= 500 && r.body.contains("roost-no-such-image"),
            "a missing image is named to the caller: {} {}",
            r.status,
            r.body
        );
        roost_ok(&p, &["rm", "ghost"]);
        roost_ok(&p, &["rm", "greet-image"]);
    }

    // An update rolls over with no failed request while calls keep coming.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = p.port;
    let caller = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed, mut v2) = (0u32, Vec::new(), 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match http::get(port, "/greet").await {
                    Ok(r) if r.status == 200 => {
                        ok += 1;
                        v2 += u32::from(r.body.contains("v2"));
                    }
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed, v2)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(src.join("greet/handler.py"), GREET_V2).unwrap();
    assert!(roost_ok(&p, &["deploy", "src/greet"]).starts_with("updated greet"));
    answers(&p, "greet", "v2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, v2) = caller.await.unwrap();
    assert!(failed.is_empty(), "{} of {} calls failed during the rollover: {failed:?}", failed.len(), ok as usize + failed.len());
    assert!(ok > 5 && v2 > 0, "calls went on through the update: {ok} ok, {v2} on v2");

    // Scale: min 1 keeps a replica past the idle timeout; the replica is not replaced.
    let out = roost_ok(&p, &["scale", "greet", "--min", "1", "--max", "2"]);
    assert!(out.contains("min_replicas 1, max_replicas 2"), "{out}");
    // The rollover under a steady caller may have started a second replica (a call held
    // at the gate while the replicas changed counts as demand): within the new bounds,
    // it stays until its idle timeout (the template's 30 s).
    let before: Vec<String> = api.describe("greet").await.info.status.replicas.iter().map(|r| r.id.clone()).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = api.describe("greet").await;
    assert!((1..=2).contains(&after.info.status.ready_replicas()), "{after:?}");
    for id in &before {
        assert!(after.info.status.replicas.iter().any(|r| &r.id == id), "a scale restarts no replica: {id} gone in {after:?}");
    }
    let out = roost_fails(&p, &["scale", "greet", "--min", "3", "--max", "2"]);
    assert!(out.contains("min_replicas"), "{out}");

    // The platform's Prometheus metrics on the public port, behind the API token: greet's
    // calls by code and their durations (Envoy's), its cold starts and replicas (the
    // orchestrator's), under OpenFaaS's names and Roost's.
    assert_eq!(http::get(p.port, "/system/metrics").await.unwrap().status, 401);
    let wanted = [
        "gateway_function_invocation_total{function_name=\"greet\",code=\"200\"}",
        "gateway_functions_seconds_count{function_name=\"greet\"}",
        "roost_cold_starts_total{function=\"greet\"}",
        "roost_cold_start_seconds_count{function=\"greet\",phase=\"total\"}",
        // As many as are ready (one, or two while the rollover's second one lasts).
        &format!("gateway_service_count{{function_name=\"greet\"}} {}\n", after.info.status.ready_replicas()),
    ];
    // Every call answered 200 during the rollover is counted (Envoy sends its counts each
    // stats flush; greet's earlier calls are counted too, so at least as many).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = api.call("GET", "/system/metrics", &[], b"").await;
        let missing: Vec<&str> = wanted.iter().copied().filter(|w| !r.body.contains(w)).collect();
        let calls: f64 = r
            .body
            .lines()
            .find_map(|l| l.strip_prefix("roost_function_calls_total{function=\"greet\",code=\"200\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if r.status == 200 && missing.is_empty() && calls >= f64::from(ok) {
            break;
        }
        let greet: Vec<&str> =
            r.body.lines().filter(|l| (l.contains("greet") || l.starts_with("roost_statsd")) && !l.contains("_bucket")).collect();
        if std::time::Instant::now() >= deadline {
            let envoy = http::get(p.envoy_admin(), "/stats?filter=greet").await.map(|r| r.body).unwrap_or_default();
            let listener = std::fs::read_to_string(p.dir.join(".roost/logs/statsd-listener.log")).unwrap_or_default();
            panic!(
                "greet's metrics never showed {missing:?} and {ok} calls: {} {greet:#?}\nEnvoy:\n{envoy}\nstatsd-listener:\n{listener}",
                r.status
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The web console, in a real headless Chromium (Debian's): logged in through its link,
    // it lists greet, and greet's calls go up on the page after more calls.
    if runtime == "process" {
        let url = format!("http://127.0.0.1:{}/system/login?token={}", p.port, p.api_token);
        let ok_calls = |dom: &str| -> f64 {
            let row = dom.split("<tr data-function=\"greet\">").nth(1).unwrap_or_else(|| panic!("no greet row in the console: {dom}"));
            let cell = row.split("class=\"calls-ok\">").nth(1).and_then(|c| c.split('<').next()).expect("a calls cell");
            cell.parse().unwrap_or_else(|_| panic!("{cell:?} is no count"))
        };
        let dom = chromium_dom(&url);
        assert!(dom.contains("<h1>Roost</h1>") && dom.contains("data-function=\"hello\""), "{dom}");
        let before = ok_calls(&dom);
        for _ in 0..5 {
            assert_eq!(http::get(p.port, "/greet").await.unwrap().status, 200);
        }
        wait_until(WAIT, "the console to count greet's new calls", || async {
            (ok_calls(&chromium_dom(&url)) >= before + 5.0).then_some(())
        })
        .await;
        let r = http::get(p.port, "/system/login?token=wrong-token-0123456789").await.unwrap();
        assert_eq!(r.status, 401, "a wrong token at the login: {}", r.body);
        let r = http::get(p.port, &format!("/system/login?token={}", p.api_token)).await.unwrap();
        assert_eq!(r.status, 303);
        let cookie = r.header("set-cookie").expect("the login sets a cookie").to_string();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/system"), "{cookie}");
        let pair = cookie.split(';').next().unwrap();
        assert_eq!(http::request(p.port, "GET", "/system/console/live", &[("cookie", pair)], b"").await.unwrap().status, 200);
        let wrong = http::request(p.port, "GET", "/system/console/live", &[("cookie", "roost_api=wrong-token-0123456789")], b"").await;
        assert_eq!(wrong.unwrap().status, 401, "a wrong cookie");
        let refused = chromium_dom(&format!("http://127.0.0.1:{}/system/console", p.port));
        assert!(refused.contains("API token") && !refused.contains("data-function"), "no console without the token: {refused}");
    }

    // The file's function: no deploy, scale or removal takes it (409 naming the file).
    let r = api.call("PUT", "/system/functions/hello?file=hello.py", &[], GREET_V1.as_bytes()).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("global-function-definition.yml"), "{}", r.body);
    assert_eq!(api.call("DELETE", "/system/functions/hello", &[], b"").await.status, 409);
    assert!(roost_fails(&p, &["rm", "hello"]).contains("definitions file"));
    answers(&p, "hello", "Hello").await;

    // Bad input: a 4xx naming the problem, and nothing changes.
    let before = api.list().await;
    let big = vec![b'#'; 300 * 1024];
    let def: &[u8] = b"version: 1\nconfiguration: {base_function_file_name: h.py}\n";
    let escape = tgz(&[file("function.yml", def), file("../evil.py", b"x")]);
    let link = tgz(&[file("function.yml", def), ("h.py", b"", tar::EntryType::Symlink, "/etc/passwd")]);
    let invalid = tgz(&[
        file("function.yml", b"version: 1\nscaling: {max_replicas: 0}\nconfiguration: {base_function_file_name: h.py}\n"),
        file("h.py", GREET_V1.as_bytes()),
    ]);
    let gz = [("content-type", "application/gzip")];
    // (path, headers, body, status, what the answer says)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("/system/functions/Bad_Name?file=a.py", &[], GREET_V1.into(), 400, "invalid function name"),
        ("/system/functions/system?file=a.py", &[], GREET_V1.into(), 400, "reserved"),
        ("/system/functions/evil", &gz, escape, 400, "climbs out"),
        ("/system/functions/evil", &gz, link, 400, "symbolic link"),
        ("/system/functions/evil", &gz, invalid, 400, "max_replicas"),
        ("/system/functions/evil", &gz, b"not a tarball".to_vec(), 400, "not a gzip'd tar"),
        ("/system/functions/evil", &[("content-type", "text/html")], b"<p>".to_vec(), 415, "application/gzip"),
        ("/system/functions/evil?file=../x.py", &[], GREET_V1.into(), 400, "plain file name"),
        (
            "/system/functions/evil",
            &[("content-type", "application/json")],
            br#"{"version": 1, "runtime": "python"}"#.to_vec(),
            400,
            "needs its code",
        ),
        ("/system/functions/evil?file=big.py", &[], big, 413, ""),
    ];
    for (path, headers, body, status, says) in cases {
        let r = api.call("PUT", path, headers, &body).await;
        assert_eq!(r.status, status, "PUT {path}: {}", r.body);
        assert!(r.body.contains(says), "PUT {path}: expected {says:?} in {}", r.body);
    }
    let names = |l: &FunctionList| l.functions.iter().map(|f| f.status.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&api.list().await), names(&before), "no bad deploy changed anything");
    let r = api.call("POST", "/system/functions/greet/scale", &[], b"{\"max\": 3}").await;
    assert_eq!(r.status, 400, "an unknown scale field: {}", r.body);
    assert_eq!(api.call("GET", "/system/functions/nope", &[], b"").await.status, 404);
    assert_eq!(api.call("DELETE", "/system/functions/nope", &[], b"").await.status, 404);

    // Logs over the management API.
    let r = api.call("GET", "/system/functions/greet/logs", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Remove: drains, then the name is gone (the gate's 404).
    roost_ok(&p, &["scale", "raw", "--min", "0"]);
    let out = roost_ok(&p, &["rm", "raw"]);
    assert!(out.contains("removed raw"), "{out}");
    wait_until(WAIT, "/raw to be gone", || async { (http::get(p.port, "/raw").await.ok()?.status == 404).then_some(()) }).await;

    // The whole platform restarts: the deployed functions are still there and answer.
    p.restart().await;
    let api = Api { p: &p };
    let listed = api.list().await;
    let deployed: Vec<_> = listed.functions.iter().filter(|f| f.source == Source::Deployed).map(|f| f.status.name.as_str()).collect();
    assert_eq!(deployed, ["count", "greet"], "{listed:?}");
    answers(&p, "greet", "v2").await;
    let d = api.describe("greet").await;
    assert_eq!(d.definition.as_ref().unwrap()["scaling"]["min_replicas"], 1, "the scale is kept too");
    roost_ok(&p, &["rm", "greet"]);
    roost_ok(&p, &["rm", "count"]);
    assert!(!Path::new(&p.dir.join(".roost/data/functions/greet")).exists(), "a removed function's folder is set aside");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy, redis-server and nginx with Lua: full tier (scripts/test.sh)"]
async fn deploy_scale_update_remove_and_restart_with_processes() {
    deploy_scale_update_remove_and_restart("process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy, redis-server, nginx with Lua and a Docker engine: full tier (scripts/test.sh)"]
async fn deploy_scale_update_remove_and_restart_with_docker() {
    deploy_scale_update_remove_and_restart("docker").await;
}
