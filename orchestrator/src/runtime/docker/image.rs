//! The image of a python or command function: its tag, its Dockerfile, its build context
//! (the runtime package and the function's folder) and the build through the API.

use super::{DockerRuntime, ImageError, MANAGED};
use bollard::query_parameters::BuildImageOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;
use roost_common::spec::{FunctionKind as Kind, FunctionSpec};
use std::path::Path;
use tracing::info;

/// A Docker-safe tag fragment of a version.
fn tag_part(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// Where the function's folder is inside its image (`ROOST_FUNCTION_DIR`, the working
/// folder).
pub(super) const FUNCTION_DIR: &str = "/opt/roost/function";

/// The image tag of a function: its version and a hash of its build context (the
/// Dockerfile, the runtime package and the function's folder), so any change to what goes
/// into the image gives a new tag.
pub(super) fn image_tag(spec: &FunctionSpec, context: &[u8]) -> String {
    match &spec.runtime {
        Kind::Image { image } => image.clone(),
        _ => format!("roost-fn-{}:{}-{:016x}", spec.name, tag_part(&spec.version), roost_common::hash::fnv1a(context)),
    }
}

/// The Dockerfile of a python or command function image. As few steps as it can be: the
/// classic builder runs a container for every step, seconds each on a slow storage
/// driver (fuse-overlayfs), and a function's first cold start may wait for its build.
/// The context holds `opt/roost/roost_runtime` and `opt/roost/function` (one COPY).
pub(super) fn dockerfile(spec: &FunctionSpec, base: &str) -> String {
    let quoted = |v: &str| serde_json::to_string(v).expect("strings serialize");
    let mut d = format!("FROM {base}\nCOPY opt /opt\n");
    let (kind, extra) = match &spec.runtime {
        Kind::Python { extra_dependencies, .. } => ("python", extra_dependencies.clone()),
        _ => ("command", Vec::new()),
    };
    if !extra.is_empty() {
        d.push_str(&format!("RUN python3 -m pip install --no-cache-dir --target /opt/roost/deps {}\n", extra.join(" ")));
    }
    // Compiled once at build time: the root file system is read-only at run time.
    d.push_str("RUN python3 -m compileall -q /opt/roost\n");
    // Debian's dist-packages last (Starlette from python3-starlette): with -S only
    // PYTHONPATH names them, and a function's own dependencies come first.
    d.push_str(&format!(
        "ENV PYTHONPATH=/opt/roost:/opt/roost/deps:/usr/lib/python3/dist-packages PYTHONDONTWRITEBYTECODE=1 ROOST_FUNCTION_DIR={FUNCTION_DIR}\n"
    ));
    // -S: no site module (its folders are on PYTHONPATH): a faster start.
    d.push_str(&format!("WORKDIR {FUNCTION_DIR}\nCMD [\"python3\", \"-S\", \"-m\", \"roost_runtime\", \"{kind}\"]\n"));
    // One LABEL step (the build API's labels option adds one step per label). The name
    // and version are in the tag already, so the labels never change the context's hash.
    d.push_str(&format!("LABEL {MANAGED}=\"true\" roost.function={} roost.version={}\n", quoted(&spec.name), quoted(&spec.version)));
    d
}

fn add_dir(tar: &mut tar::Builder<Vec<u8>>, src: &Path, name: &str) -> std::io::Result<()> {
    tar.append_dir_all(name, src)
}

impl DockerRuntime {
    pub(super) fn context(&self, spec: &FunctionSpec, folder: &Path) -> std::io::Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        let docker_file = dockerfile(spec, &self.config.base_image);
        let mut header = tar::Header::new_gnu();
        header.set_size(docker_file.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "Dockerfile", docker_file.as_bytes())?;
        add_dir(&mut tar, &self.config.runtime_dir.join("roost_runtime"), "opt/roost/roost_runtime")?;
        add_dir(&mut tar, folder, "opt/roost/function")?;
        tar.into_inner()
    }
}

/// Builds `tag` from the build context `body` (the Dockerfile in it), logging the build's
/// output; the error holds the last lines of it.
pub(super) async fn build(docker: &Docker, spec: &FunctionSpec, tag: &str, body: Vec<u8>) -> Result<(), ImageError> {
    let options = BuildImageOptionsBuilder::default().dockerfile("Dockerfile").t(tag).rm(true).forcerm(true).build();
    info!(function = %spec.name, image = %tag, "building the function image");
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(body.into())));
    let mut tail: Vec<String> = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(line) = info.stream.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
                    info!(function = %spec.name, "build: {line}");
                    tail.push(line.to_string());
                    if tail.len() > 10 {
                        tail.remove(0);
                    }
                }
                if let Some(err) = info.error_detail.and_then(|d| d.message) {
                    return Err(ImageError::Step { message: err, last_output: tail.join(" | ") });
                }
            }
            Err(source) => return Err(ImageError::Engine { source, last_output: tail.join(" | ") }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> FunctionSpec {
        roost_common::spec::parse(yaml).unwrap().into_values().next().unwrap()
    }

    #[test]
    fn tags_and_dockerfiles() {
        let s = spec("usable-functions:\n  hello:\n    version: 0.1\n    configuration: {programing_language: python, base_function_file_name: hello.py, function_folder: hello, extra_dependencies: \"requests\"}\n");
        assert_eq!(image_tag(&s, b"ctx"), format!("roost-fn-hello:0.1-{:016x}", roost_common::hash::fnv1a(b"ctx")));
        assert_ne!(image_tag(&s, b"ctx"), image_tag(&s, b"ctx2"));
        let d = dockerfile(&s, "roost/base:bookworm");
        assert!(d.starts_with("FROM roost/base:bookworm\n"));
        assert!(d.contains("pip install --no-cache-dir --target /opt/roost/deps requests"));
        assert!(d.contains(r#"CMD ["python3", "-S", "-m", "roost_runtime", "python"]"#));
        assert!(d.contains("ENV PYTHONPATH=/opt/roost:/opt/roost/deps:/usr/lib/python3/dist-packages "), "{d}");
        assert!(d.ends_with("LABEL roost.managed=\"true\" roost.function=\"hello\" roost.version=\"0.1\"\n"), "{d}");
        // FROM, one COPY, pip, compileall, ENV, WORKDIR, CMD, one LABEL.
        assert_eq!(d.lines().count(), 8, "{d}");
        let img = spec("usable-functions:\n  x:\n    version: 1\n    runtime: {kind: image, image: \"my:1\"}\n");
        assert_eq!(image_tag(&img, b""), "my:1");
    }
}
