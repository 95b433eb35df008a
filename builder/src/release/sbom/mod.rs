//! The software bill of materials: every Debian package installed in the image, read from
//! the configured root during the build, written as an SPDX 2.3 JSON document.
//!
//! [`inventory`] must run before `cleanup::clean`, which removes apt's package lists (the
//! only place the .debs' SHA256 are recorded). [`spdx::document`] turns the inventory into
//! the SBOM once the image and its digest exist.
pub mod license;
pub mod spdx;

use anyhow::Result;
use serde::Serialize;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// One installed Debian package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DebPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub source: String,
    pub source_version: String,
    /// SPDX expression from the machine-readable copyright file; None when there is none.
    pub licence: Option<license::Licences>,
    /// SHA256 of the .deb, from apt's package lists, when they were present.
    pub deb_sha256: Option<String>,
    /// The .deb's file name in the archive (`pool/main/b/bash/bash_5.2.37-2_amd64.deb` → last part).
    pub deb_file: Option<String>,
}

/// The packages of a root, sorted by name, architecture and version.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Inventory {
    pub packages: Vec<DebPackage>,
}

impl Serialize for license::Licences {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.expression)
    }
}

/// Read the installed packages of the root at `root` (`packages::installed`: dpkg's status
/// joined with the .deb checksums from apt's lists) and the licence of each from its
/// machine-readable copyright file.
pub fn inventory(root: &Path) -> Result<Inventory> {
    let mut packages: Vec<DebPackage> = crate::debian::packages::installed(root)?
        .into_iter()
        .map(|p| DebPackage {
            licence: read_in_root(root, &format!("usr/share/doc/{}/copyright", p.name))
                .and_then(|t| license::from_copyright(&t)),
            deb_file: p.filename.as_deref().and_then(|f| f.rsplit('/').next()).map(String::from),
            deb_sha256: p.sha256,
            name: p.name,
            version: p.version,
            architecture: p.architecture,
            source: p.source,
            source_version: p.source_version,
        })
        .collect();
    packages.sort_by(|a, b| (&a.name, &a.architecture, &a.version).cmp(&(&b.name, &b.architecture, &b.version)));
    let with_sha = packages.iter().filter(|p| p.deb_sha256.is_some()).count();
    if with_sha == 0 {
        tracing::warn!("no apt package lists in the root: the SBOM has no .deb checksums");
    }
    tracing::info!(
        "{} installed packages, {with_sha} with .deb checksums, {} with machine-readable licences",
        packages.len(),
        packages.iter().filter(|p| p.licence.is_some()).count()
    );
    Ok(Inventory { packages })
}

/// Read a file at `rel` inside `root`, following symbolic links as the image would: absolute
/// targets resolve against `root`, never against the host. None if absent or unreadable.
pub fn read_in_root(root: &Path, rel: &str) -> Option<String> {
    std::fs::read_to_string(resolve_in_root(root, Path::new(rel))?).ok()
}

fn resolve_in_root(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut pending: VecDeque<OsString> = rel.components().filter_map(|c| component_name(&c)).collect();
    let mut cur = PathBuf::new();
    let mut hops = 0;
    while let Some(c) = pending.pop_front() {
        match c.to_str() {
            Some("/") => cur.clear(),
            Some(".") => {}
            Some("..") => {
                cur.pop();
            }
            _ => {
                cur.push(&c);
                if let Ok(target) = std::fs::read_link(root.join(&cur)) {
                    hops += 1;
                    if hops > 40 {
                        return None;
                    }
                    cur.pop();
                    for t in target.components().rev().filter_map(|c| component_name(&c)) {
                        pending.push_front(t);
                    }
                }
            }
        }
    }
    Some(root.join(cur))
}

fn component_name(c: &Component) -> Option<OsString> {
    match c {
        Component::RootDir => Some("/".into()),
        Component::CurDir => Some(".".into()),
        Component::ParentDir => Some("..".into()),
        Component::Normal(n) => Some(n.to_os_string()),
        Component::Prefix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let doc = root.path().join("usr/share/doc");
        std::fs::create_dir_all(doc.join("real")).unwrap();
        std::fs::write(doc.join("real/copyright"), "inside").unwrap();
        std::os::unix::fs::symlink("real", doc.join("rel")).unwrap();
        std::os::unix::fs::symlink("/usr/share/doc/real", doc.join("abs")).unwrap();
        std::os::unix::fs::symlink("/etc", doc.join("host")).unwrap();
        std::os::unix::fs::symlink("loop", doc.join("loop")).unwrap();
        assert_eq!(read_in_root(root.path(), "usr/share/doc/rel/copyright").as_deref(), Some("inside"));
        assert_eq!(read_in_root(root.path(), "usr/share/doc/abs/copyright").as_deref(), Some("inside"));
        assert_eq!(read_in_root(root.path(), "usr/share/doc/host/hostname"), None, "must not read the host's /etc");
        assert_eq!(read_in_root(root.path(), "usr/share/doc/../../../../../etc/hostname"), None);
        assert_eq!(read_in_root(root.path(), "usr/share/doc/loop/x"), None);
    }
}
