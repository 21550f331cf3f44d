//! What the suite ran on: CPU, memory, kernel, OS, Docker and Envoy versions, and the
//! commit, read from the machine itself.

use serde::Serialize;
use std::path::Path;
use std::process::Command;

/// The machine and the code measured.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Total memory in GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// OS name.
    pub os: String,
    /// Docker engine version, if an engine answered.
    pub docker: Option<String>,
    /// Envoy's version line.
    pub envoy: String,
    /// Python used by the process runtime.
    pub python: String,
    /// `git describe`-like commit, with `-dirty` when the tree has changes.
    pub commit: String,
}

fn output(cmd: &str, args: &[&str], dir: &Path) -> Option<String> {
    let out = Command::new(cmd).args(args).current_dir(dir).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The value of `key` in `/proc/cpuinfo`-style text (`key : value` lines).
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().filter_map(|l| l.split_once(':')).find(|(k, _)| k.trim() == key).map(|(_, v)| v.trim())
}

/// Reads the machine; `home` is the repository, `envoy` Envoy's binary.
pub fn read(home: &Path, envoy: &Path, python: &str) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let kb: f64 = field(&meminfo, "MemTotal").and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0.0);
    let commit = output("git", &["rev-parse", "--short", "HEAD"], home).unwrap_or_else(|| "unknown".into());
    let dirty = output("git", &["status", "--porcelain", "--untracked-files=no"], home).is_some_and(|s| !s.is_empty());
    let envoy_version = output(&envoy.display().to_string(), &["--version"], home).unwrap_or_default();
    Machine {
        cpu: field(&cpuinfo, "model name").unwrap_or("unknown").to_string(),
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        memory_gib: kb / 1024.0 / 1024.0,
        kernel: output("uname", &["-r"], home).unwrap_or_default(),
        os: os_release.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).unwrap_or("unknown").trim_matches('"').to_string(),
        docker: output("docker", &["version", "--format", "{{.Server.Version}}"], home),
        envoy: envoy_version.split("version:").nth(1).and_then(|v| v.split('/').nth(1)).unwrap_or("unknown").to_string(),
        python: output(python, &["-c", "import sys; print(sys.version.split()[0])"], home).unwrap_or_default(),
        commit: if dirty { format!("{commit}-dirty") } else { commit },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_colon_fields() {
        let t = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags : a b\n";
        assert_eq!(super::field(t, "model name"), Some("Intel(R) Xeon(R)"));
        assert_eq!(super::field(t, "missing"), None);
    }
}
