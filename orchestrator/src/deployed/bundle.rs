//! A deployment's bundle: a gzip'd tar of one function's folder, unpacked only as plain
//! files and folders inside the folder it is given, within a size and entry limit. Nothing
//! in it may escape (`..`, absolute paths, links) or stand for a device.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// The function's definition inside a bundle (its fields, as under `usable-functions`).
pub const DEFINITION_FILE: &str = "function.yml";

/// How much a bundle may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of all files together, unpacked.
    pub max_unpacked: u64,
    /// Files and folders.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_unpacked: 256 * 1024 * 1024, max_entries: 10_000 }
    }
}

/// Why a bundle was refused (nothing of it is kept).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not gzip, or not tar inside.
    #[error(
        "the bundle is not a gzip'd tar archive ({0}); make one with `tar czf fn.tgz -C FOLDER .`, or let `roost deploy FOLDER` do it"
    )]
    NotArchive(String),
    /// An entry would land outside the function's folder.
    #[error("the bundle's entry {path:?} {why}; every entry must be a relative path inside the function's folder")]
    Escapes {
        /// The entry as written in the archive.
        path: String,
        /// How it escapes.
        why: &'static str,
    },
    /// A link, device or other special entry.
    #[error(
        "the bundle's entry {path:?} is a {kind}; a bundle may hold only regular files and folders (copy what a link points to instead)"
    )]
    Special {
        /// The entry.
        path: String,
        /// What it is.
        kind: String,
    },
    /// Unpacks to more bytes than allowed.
    #[error("the bundle unpacks to more than {limit} bytes; leave out what the function does not need (virtual environments, data), or install dependencies through `extra_dependencies`")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// More entries than allowed.
    #[error("the bundle holds more than {limit} files and folders; leave out what the function does not need")]
    TooManyEntries {
        /// The limit.
        limit: usize,
    },
    /// Writing the files failed (the platform's disk, not the bundle).
    #[error("cannot write the bundle's files: {0}")]
    Io(#[from] std::io::Error),
}

impl BundleError {
    /// Whether the bundle is at fault (a 4xx), not the platform.
    pub fn is_callers(&self) -> bool {
        !matches!(self, BundleError::Io(_))
    }
}

/// The entry's path inside the folder, or why it may not be written.
fn inside(raw: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("climbs out with `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    Ok(out)
}

/// Unpacks the gzip'd tar `gz` into the folder `into` (made if missing), checking every
/// entry before it is written. On an error some files may be written: `into` must be a
/// staging folder the caller removes.
pub fn unpack(gz: &[u8], into: &Path, limits: Limits) -> Result<(), BundleError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(into)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    let not_archive = |e: std::io::Error| BundleError::NotArchive(e.to_string());
    let mut entries = 0usize;
    let mut left = limits.max_unpacked;
    for entry in archive.entries().map_err(not_archive)? {
        let mut entry = entry.map_err(not_archive)?;
        let raw = entry.path().map_err(not_archive)?.into_owned();
        let shown = raw.display().to_string();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        entries += 1;
        if entries > limits.max_entries {
            return Err(BundleError::TooManyEntries { limit: limits.max_entries });
        }
        let rel = inside(&raw).map_err(|why| BundleError::Escapes { path: shown.clone(), why })?;
        let target = into.join(&rel);
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
            continue;
        }
        if !kind.is_file() {
            let kind = if kind.is_symlink() {
                "symbolic link".to_string()
            } else if kind.is_hard_link() {
                "hard link".to_string()
            } else {
                format!("special entry (tar type {:?})", kind.as_byte() as char)
            };
            return Err(BundleError::Special { path: shown, kind });
        }
        if rel.as_os_str().is_empty() {
            return Err(BundleError::Escapes { path: shown, why: "names the folder itself as a file" });
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // The owner's execute bit is kept (a command function's script); nothing else.
        let mode = if entry.header().mode().is_ok_and(|m| m & 0o100 != 0) { 0o755 } else { 0o644 };
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&target)?;
        // Counted as written, not as the header says: a header may lie.
        let copied = std::io::copy(&mut (&mut entry).take(left + 1), &mut file).map_err(not_archive)?;
        if copied > left {
            return Err(BundleError::TooLarge { limit: limits.max_unpacked });
        }
        left -= copied;
    }
    if entries == 0 {
        return Err(BundleError::NotArchive("it holds no entry".into()));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tar.gz of `(path, content)` entries; a path ending in `/` is a folder.
    pub(crate) fn tgz(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            if path.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
            } else {
                h.set_size(data.len() as u64);
                h.set_mode(if path.ends_with(".sh") { 0o755 } else { 0o644 });
            }
            // Written raw: the builder's own path setter refuses `..`, which these tests need.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn special(kind: tar::EntryType, path: &str, link: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_path(path).unwrap();
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        b.into_inner().unwrap().finish().unwrap()
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("roost-bundle-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_folder_unpacks_with_its_files_modes_and_subfolders() {
        let d = dir("ok");
        let gz = tgz(&[("./", b""), ("./hello.py", b"x = 1\n"), ("lib/", b""), ("lib/util.py", b"y = 2\n"), ("run.sh", b"#!/bin/sh\n")]);
        unpack(&gz, &d, Limits::default()).unwrap();
        assert_eq!(std::fs::read(d.join("hello.py")).unwrap(), b"x = 1\n");
        assert_eq!(std::fs::read(d.join("lib/util.py")).unwrap(), b"y = 2\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(d.join("run.sh")).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(std::fs::metadata(d.join("hello.py")).unwrap().permissions().mode() & 0o777, 0o644);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn entries_that_escape_are_refused_and_nothing_lands_outside() {
        let d = dir("escape");
        let outside = d.parent().unwrap().join(format!("roost-bundle-{}-escaped", std::process::id()));
        for path in ["../roost-escaped", "a/../../x", "/etc/roost-x"] {
            let err = unpack(&tgz(&[(path, b"bad")]), &d, Limits::default()).unwrap_err();
            assert!(matches!(err, BundleError::Escapes { .. }), "{path}: {err}");
            assert!(err.to_string().contains(path), "the message names the entry: {err}");
        }
        assert!(!outside.exists());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn links_and_devices_are_refused() {
        let d = dir("links");
        let err = unpack(&special(tar::EntryType::Symlink, "evil", "/etc/passwd"), &d, Limits::default()).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let err = unpack(&special(tar::EntryType::Link, "hard", "/etc/passwd"), &d, Limits::default()).unwrap_err();
        assert!(err.to_string().contains("hard link"), "{err}");
        let err = unpack(&special(tar::EntryType::Char, "tty", ""), &d, Limits::default()).unwrap_err();
        assert!(matches!(err, BundleError::Special { .. }), "{err}");
        assert!(!d.join("evil").exists() && !d.join("hard").exists());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn too_large_or_too_many_or_no_archive_at_all_is_refused() {
        let d = dir("limits");
        let big = vec![b'a'; 2000];
        let err = unpack(&tgz(&[("a", &big)]), &d, Limits { max_unpacked: 1000, max_entries: 10 }).unwrap_err();
        assert!(matches!(err, BundleError::TooLarge { limit: 1000 }), "{err}");
        let err = unpack(&tgz(&[("a", b"1"), ("b", b"2"), ("c", b"3")]), &d, Limits { max_unpacked: 1000, max_entries: 2 }).unwrap_err();
        assert!(matches!(err, BundleError::TooManyEntries { limit: 2 }), "{err}");
        let err = unpack(b"print('hello')", &d, Limits::default()).unwrap_err();
        assert!(matches!(err, BundleError::NotArchive(_)) && err.is_callers(), "{err}");
        let _ = std::fs::remove_dir_all(d);
    }
}
