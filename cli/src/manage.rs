//! `roost deploy`, `rm`, `describe` and `scale`: the management API on the platform's
//! public port (`/system/...`), with the API token; and `roost new`, a function's folder
//! from a template.

use crate::client::{self, causes, Endpoints};
use roost_common::naming::validate_function_name;
use roost_common::wire::status::ApiError;
use roost_common::wire::system::{Describe, Removed, Scale, Source, PREFIX};
use std::path::{Path, PathBuf};

/// What to deploy.
#[derive(Debug, Clone)]
pub enum What {
    /// A folder (bundled with its `function.yml`) or one source file.
    Path(PathBuf),
    /// An image already on the engine.
    Image(String),
}

fn url(e: &Endpoints, path: &str) -> String {
    format!("{}{PREFIX}{path}", e.gate)
}

/// A request to the management API at `PREFIX` + `path`, with the API token.
pub(crate) fn request(
    e: &Endpoints,
    client: &reqwest::Client,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<reqwest::RequestBuilder> {
    let Some(token) = &e.api_token else {
        anyhow::bail!(
            "no API token: give it with --api-token or {} (`roost up` prints it and writes it into its endpoints file; with compose: `docker compose exec orchestrator cat /var/lib/roost/api-token`)",
            roost_common::env::API_TOKEN
        );
    };
    Ok(client.request(method, url(e, path)).bearer_auth(token.expose()))
}

/// Sends `r`, and reads a JSON answer `T` from a success, or the API's error.
pub(crate) async fn send<T: serde::de::DeserializeOwned>(
    e: &Endpoints,
    r: reqwest::RequestBuilder,
) -> anyhow::Result<(reqwest::StatusCode, T)> {
    let answer = r.send().await.map_err(|err| {
        anyhow::anyhow!(
            "cannot reach the platform at {} ({}): {}; is Roost running? Point at another with --gate URL or {}",
            e.gate,
            e.origin.gate,
            causes(&err),
            roost_common::env::GATE_URL
        )
    })?;
    let status = answer.status();
    let body = answer.bytes().await?;
    if !status.is_success() {
        let said =
            serde_json::from_slice::<ApiError>(&body).map(|a| a.error).unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        anyhow::bail!("{status}: {said}");
    }
    let value = serde_json::from_slice(&body).map_err(|err| {
        anyhow::anyhow!("the platform's answer is not what this roost reads ({err}); are the CLI and the platform the same version?")
    })?;
    Ok((status, value))
}

/// A gzip'd tar of `dir`'s contents (its files at the archive's top), links refused: the
/// platform refuses them too, and a local error names the file.
pub fn bundle(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(dir.join(&rel))?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            if name == "__pycache__" || name == ".git" {
                continue;
            }
            let rel = rel.join(&name);
            let kind = entry.file_type()?;
            if kind.is_symlink() {
                anyhow::bail!(
                    "{} is a symbolic link; a bundle holds only files and folders: copy what it points to",
                    dir.join(&rel).display()
                );
            } else if kind.is_dir() {
                tar.append_dir(&rel, dir.join(&rel))?;
                stack.push(rel);
            } else {
                tar.append_path_with_name(dir.join(&rel), &rel)?;
            }
        }
    }
    Ok(tar.into_inner()?.finish()?)
}

/// The name a folder or file deploys as: `name`, else the folder's `function.yml` `name`,
/// else the folder's name or the file's stem.
fn name_for(path: &Path, name: Option<&str>) -> anyhow::Result<String> {
    let guess = match name {
        Some(n) => n.to_string(),
        None => {
            let from_yml = std::fs::read_to_string(path.join("function.yml"))
                .ok()
                .and_then(|t| serde_yaml::from_str::<serde_yaml::Value>(&t).ok())
                .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string));
            let full = path.canonicalize()?;
            let from_path = if path.is_dir() { full.file_name() } else { full.file_stem() }.map(|s| s.to_string_lossy().into_owned());
            from_yml.or(from_path).unwrap_or_default()
        }
    };
    validate_function_name(&guess).map_err(|err| anyhow::anyhow!("{err}; give another with --name"))?;
    Ok(guess)
}

/// `roost deploy`: deploys or updates a function; prints where to call it.
pub async fn deploy(e: &Endpoints, what: &What, name: Option<&str>, json: bool) -> anyhow::Result<()> {
    let client = client::http();
    let put = |n: &str| request(e, &client, reqwest::Method::PUT, &format!("/functions/{n}"));
    let (name, req) = match what {
        What::Image(image) => {
            let name = name.ok_or_else(|| anyhow::anyhow!("--image needs --name: the function's name"))?.to_string();
            validate_function_name(&name)?;
            let def = serde_json::json!({ "version": "1", "runtime": { "kind": "image", "image": image } });
            let req = put(&name)?.header("content-type", "application/json").body(def.to_string());
            (name, req)
        }
        What::Path(path) if path.is_dir() => {
            if !path.join("function.yml").is_file() {
                anyhow::bail!(
                    "{} has no function.yml: write the function's fields there (version, configuration, scaling...), or make a folder with `roost new NAME`",
                    path.display()
                );
            }
            let name = name_for(path, name)?;
            let body = bundle(path)?;
            (name.clone(), put(&name)?.header("content-type", "application/gzip").body(body))
        }
        What::Path(path) => {
            let code = std::fs::read(path).map_err(|err| anyhow::anyhow!("cannot read {}: {err}", path.display()))?;
            let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            let name = name_for(path, name)?;
            let req = put(&name)?.query(&[("file", file.as_str())]).header("content-type", "application/octet-stream").body(code);
            (name, req)
        }
    };
    let (status, d): (_, Describe) = send(e, req).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    let did = if status == reqwest::StatusCode::CREATED { "deployed" } else { "updated" };
    let version = d.definition.as_ref().and_then(|v| v["version"].as_str()).unwrap_or("?");
    println!("{did} {name} (version {version}); call it at {}/{name}", e.gate);
    Ok(())
}

/// `roost rm`: removes a deployed function (its replicas drain first).
pub async fn rm(e: &Endpoints, name: &str, json: bool) -> anyhow::Result<()> {
    let client = client::http();
    let (_, r): (_, Removed) = send(e, request(e, &client, reqwest::Method::DELETE, &format!("/functions/{name}"))?).await?;
    match json {
        true => println!("{}", serde_json::to_string_pretty(&r)?),
        false => println!("removed {}; its replicas drain, then stop", r.removed),
    }
    Ok(())
}

/// `roost describe`: a function's definition, state, replicas and cold starts.
pub async fn describe(e: &Endpoints, name: &str, json: bool) -> anyhow::Result<()> {
    let client = client::http();
    let (_, d): (_, Describe) = send(e, request(e, &client, reqwest::Method::GET, &format!("/functions/{name}"))?).await?;
    match json {
        true => println!("{}", serde_json::to_string_pretty(&d)?),
        false => print!("{}", show(e, &d)),
    }
    Ok(())
}

/// A describe as text.
fn show(e: &Endpoints, d: &Describe) -> String {
    let f = &d.info.status;
    let source = match d.info.source {
        Source::File => "the definitions file",
        Source::Deployed => "deployed",
    };
    let mut out = format!("name:        {}\nurl:         {}{}\nsource:      {source}\nstate:       {}\n", f.name, e.gate, d.path, f.state);
    out += &format!("replicas:    {} ready, {} starting\ncold starts: {}\n", f.ready_replicas(), f.starting, f.cold_starts);
    if let Some(p) = &f.last_cold_start {
        out += &format!("last cold start: {:.1} ms\n", p.total_ms);
    }
    for r in &f.replicas {
        out += &format!("  replica {} at {} ({:?})\n", r.id, r.address, r.phase);
    }
    if let Some(err) = &f.last_error {
        out += &format!("last error:  {err}\n");
    }
    if let Some(reason) = &f.reason {
        out += &format!("reason:\n{reason}\n");
    }
    if let Some(def) = &d.definition {
        out += &format!("definition:\n{}", serde_yaml::to_string(def).unwrap_or_default());
    }
    out
}

/// `roost scale`: sets a deployed function's min and max replicas (no replica restarts).
pub async fn scale(e: &Endpoints, name: &str, want: Scale, json: bool) -> anyhow::Result<()> {
    if want == Scale::default() {
        anyhow::bail!("nothing to scale: give --min, --max or both");
    }
    let client = client::http();
    let req = request(e, &client, reqwest::Method::POST, &format!("/functions/{name}/scale"))?.json(&want);
    let (_, d): (_, Describe) = send(e, req).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    let scaling = d.definition.as_ref().map(|v| v["scaling"].clone()).unwrap_or_default();
    println!("scaled {name}: min_replicas {}, max_replicas {}", scaling["min_replicas"], scaling["max_replicas"]);
    Ok(())
}

/// The language of `roost new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Python handler (`async def handle(request)`), Starlette's request.
    Python,
    /// A command run once per request: the body on stdin, the answer on stdout.
    Command,
}

const PYTHON_HANDLER: &str = r#"# A Roost function: `handle` gets a Starlette Request and returns a dict (sent as JSON),
# a str, bytes, or a Starlette Response.


async def handle(request):
    name = request.query_params.get("name", "world")
    return {"hello": name}
"#;

const COMMAND_HANDLER: &str = r#"#!/bin/sh
# A Roost command function: the request's body comes on stdin, the answer goes to stdout.
# REQUEST_METHOD, REQUEST_PATH and QUERY_STRING say what was called.
echo "{\"method\": \"$REQUEST_METHOD\", \"bytes\": $(wc -c)}"
"#;

/// `roost new`: a folder `dir/name` with a `function.yml` and a handler, ready for
/// `roost deploy`. Refuses to write into an existing folder.
pub fn new(name: &str, lang: Lang, dir: &Path) -> anyhow::Result<PathBuf> {
    validate_function_name(name)?;
    let folder = dir.join(name);
    if folder.exists() {
        anyhow::bail!("{} exists already; pick another name or folder (--dir)", folder.display());
    }
    std::fs::create_dir_all(&folder)?;
    let (def, file, body, mode) = match lang {
        Lang::Python => (
            "# The function's fields, as under usable-functions in the definitions file.\nversion: \"1\"\nruntime: python\nconfiguration:\n  base_function_file_name: handler.py\n  extra_dependencies: []   # pip packages\nscaling:\n  max_replicas: 5\n  idle_timeout: 30s\n",
            "handler.py",
            PYTHON_HANDLER,
            0o644,
        ),
        Lang::Command => (
            "# The function's fields, as under usable-functions in the definitions file.\nversion: \"1\"\nruntime: command\nconfiguration:\n  base_function_file_name: handler.sh\nscaling:\n  max_replicas: 5\n  idle_timeout: 30s\n",
            "handler.sh",
            COMMAND_HANDLER,
            0o755,
        ),
    };
    std::fs::write(folder.join("function.yml"), def)?;
    std::fs::write(folder.join(file), body)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(folder.join(file), std::fs::Permissions::from_mode(mode))?;
    Ok(folder)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("roost-manage-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_new_folder_bundles_with_its_files_at_the_top() {
        let d = tmp("new");
        let folder = new("greet", Lang::Python, &d).unwrap();
        assert!(new("greet", Lang::Python, &d).unwrap_err().to_string().contains("exists already"));
        assert!(new("Bad", Lang::Python, &d).is_err());
        let gz = bundle(&folder).unwrap();
        let mut names: Vec<String> = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]))
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["function.yml", "handler.py"]);
        assert_eq!(name_for(&folder, None).unwrap(), "greet");
        assert_eq!(name_for(&folder, Some("other")).unwrap(), "other");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_link_in_the_folder_is_refused_before_anything_is_sent() {
        let d = tmp("link");
        let folder = new("f", Lang::Command, &d).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", folder.join("passwd")).unwrap();
        let err = bundle(&folder).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let _ = std::fs::remove_dir_all(d);
    }
}
