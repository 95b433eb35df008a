//! Artifacts: files fetched by URL, pinned by sha256, laid into the image (as a file, or
//! unpacked from a tar archive).
//!
//! They are kept in a content-addressed store, `<cache>/artifacts/sha256/<hex>`: a download
//! goes to a temporary name in the store, is verified, and only then renamed to its digest, so
//! nothing half-downloaded or unverified is ever used. `--artifacts DIR` supplies them offline:
//! files in DIR named by their sha256 or by their URL's file name.
use crate::host::cache::Cache;
use crate::host::cmd::Cmd;
use crate::host::net::{self, Need};
use crate::recipe::{Artifact, Extract};
use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where artifacts are looked for and kept.
pub struct Store {
    dir: PathBuf,
    offline: Option<PathBuf>,
}

impl Store {
    /// `cache`: kiln's cache (None: a store inside the work directory, gone after the build).
    pub fn new(cache: Option<&Path>, work: &Path, offline: Option<&Path>) -> Store {
        let base = Cache::new(cache.unwrap_or(work));
        Store { dir: base.artifacts().join("sha256"), offline: offline.map(Path::to_path_buf) }
    }

    /// The verified local file of `a`, if the store or the offline directory has it.
    /// A file that is there but has the wrong digest is an error (offline) or discarded (store).
    pub fn local(&self, a: &Artifact) -> Result<Option<PathBuf>> {
        let stored = self.dir.join(&a.sha256);
        if stored.is_file() {
            if crate::host::files::sha256_file(&stored)? == a.sha256 {
                return Ok(Some(stored));
            }
            tracing::warn!("removing corrupt store entry {}", stored.display());
            std::fs::remove_file(&stored).with_context(|| format!("removing {}", stored.display()))?;
        }
        if let Some(dir) = &self.offline {
            for name in [a.sha256.as_str(), file_name(&a.url)] {
                let candidate = dir.join(name);
                if !name.is_empty() && candidate.is_file() {
                    let actual = crate::host::files::sha256_file(&candidate)?;
                    if actual != a.sha256 {
                        bail!(
                            "artifact `{}` ({}): {} has sha256 {actual}, expected {}",
                            a.name,
                            a.url,
                            candidate.display(),
                            a.sha256
                        );
                    }
                    return Ok(Some(candidate));
                }
            }
        }
        Ok(None)
    }

    /// Download `a` into the store: temporary name, verify, rename.
    pub fn fetch(&self, a: &Artifact) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating artifact store {}", self.dir.display()))?;
        let dest = self.dir.join(&a.sha256);
        net::download_checked(&a.url, &dest, |tmp| {
            let actual = crate::host::files::sha256_file(tmp)?;
            if actual != a.sha256 {
                bail!("{} has sha256 {actual}, expected {}; the download was discarded", a.url, a.sha256);
            }
            Ok(())
        })
        .with_context(|| format!("artifact `{}`", a.name))?;
        Ok(dest)
    }
}

/// The last path segment of a URL (without query).
fn file_name(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url).rsplit('/').next().unwrap_or("")
}

/// Artifacts paired with the verified local file that holds each.
pub type Located<'a> = Vec<(&'a Artifact, PathBuf)>;

/// What must come from the network: artifacts that are neither stored nor supplied offline.
/// Checks supplied files on the way (a wrong digest fails here, before anything else).
pub fn missing<'a>(artifacts: &'a [Artifact], store: &Store) -> Result<(Located<'a>, Vec<&'a Artifact>)> {
    let (mut have, mut missing) = (Vec::new(), Vec::new());
    for a in artifacts {
        match store.local(a)? {
            Some(p) => have.push((a, p)),
            None => missing.push(a),
        }
    }
    Ok((have, missing))
}

pub fn needs(missing: &[&Artifact]) -> Vec<Need> {
    missing.iter().map(|a| Need { what: format!("artifact `{}`", a.name), url: a.url.to_string() }).collect()
}

/// Lay each artifact into the root: a file with its mode and owner, or an unpacked archive
/// whose members get the owner.
pub fn install(artifacts: &[(&Artifact, PathBuf)], root: &Path) -> Result<()> {
    for (a, file) in artifacts {
        let ids = a
            .owner
            .as_deref()
            .map(|o| owner_ids(root, o))
            .transpose()
            .with_context(|| format!("artifact `{}`", a.name))?;
        let dest = root.join(a.dest.trim_start_matches('/'));
        match a.extract {
            None => {
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating the parent of {} in the image", a.dest))?;
                }
                if dest.is_symlink() {
                    std::fs::remove_file(&dest).with_context(|| format!("replacing {}", a.dest))?;
                }
                std::fs::copy(file, &dest).with_context(|| format!("copying artifact `{}` to {}", a.name, a.dest))?;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(a.mode))
                    .with_context(|| format!("setting the mode of {}", a.dest))?;
                std::os::unix::fs::lchown(&dest, Some(0), Some(0)).with_context(|| format!("chown {}", a.dest))?;
                if let Some((uid, gid)) = ids {
                    std::os::unix::fs::lchown(&dest, Some(uid), Some(gid))
                        .with_context(|| format!("chown {}", a.dest))?;
                }
            }
            Some(Extract::Tar) => unpack(a, file, &dest, ids)?,
        }
    }
    Ok(())
}

/// Unpack into a staging directory inside `dest`, give the members their owner, move them in.
/// The staging directory is on the root's own file system (the build's root is an overlay
/// mount, so a rename from the work directory would cross devices).
fn unpack(a: &Artifact, file: &Path, dest: &Path, ids: Option<(u32, u32)>) -> Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("creating {} in the image", a.dest))?;
    let staging = tempfile::Builder::new()
        .prefix(".kiln-artifact-")
        .tempdir_in(dest)
        .with_context(|| format!("creating a staging directory in {} of the image", a.dest))?;
    let staged = staging.path();
    Cmd::new("tar")
        .args(["--no-same-owner", "--numeric-owner", "-xf"])
        .arg(file)
        .arg("-C")
        .arg(staged)
        .run()
        .with_context(|| format!("artifact `{}`: unpacking {}", a.name, a.url))?;
    if let Some((uid, gid)) = ids {
        Cmd::new("chown")
            .args(["-R", "--no-dereference", &format!("{uid}:{gid}"), "--"])
            .arg(staged)
            .run()
            .with_context(|| format!("artifact `{}`: setting owner", a.name))?;
    }
    let mut entries: Vec<_> = std::fs::read_dir(staged)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let target = dest.join(e.file_name());
        if target.symlink_metadata().is_ok() {
            bail!("artifact `{}`: {}/{} already exists in the image", a.name, a.dest, e.file_name().to_string_lossy());
        }
        std::fs::rename(e.path(), &target)
            .with_context(|| format!("moving {} into {} of the image", e.file_name().to_string_lossy(), a.dest))?;
    }
    staging.close().with_context(|| format!("removing the staging directory in {} of the image", a.dest))
}

/// uid and gid of `user[:group]` in the image's /etc/passwd and /etc/group.
fn owner_ids(root: &Path, owner: &str) -> Result<(u32, u32)> {
    let (user, group) = owner.split_once(':').map(|(u, g)| (u, Some(g))).unwrap_or((owner, None));
    let field = |file: &str, name: &str, idx: usize| -> Result<u32> {
        let text = std::fs::read_to_string(root.join(file)).with_context(|| format!("reading /{file} of the image"))?;
        text.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .and_then(|f| f.get(idx)?.parse().ok())
            .with_context(|| format!("`{name}` not found in the image's /{file}"))
    };
    let uid = field("etc/passwd", user, 2)?;
    let gid = match group {
        Some(g) => field("etc/group", g, 2)?,
        None => field("etc/passwd", user, 3)?,
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(sha: &str) -> Artifact {
        Artifact {
            name: "x".try_into().unwrap(),
            url: "http://127.0.0.1:9/dl/x.tar.gz?y=1".try_into().unwrap(),
            sha256: sha.into(),
            dest: "/opt/x".try_into().unwrap(),
            extract: None,
            mode: 0o644,
            owner: None,
        }
    }

    #[test]
    fn tar_members_move_into_dest_and_never_over_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let (src, root) = (dir.path().join("src"), dir.path().join("root"));
        std::fs::create_dir_all(src.join("app")).unwrap();
        std::fs::write(src.join("app/run.sh"), "echo app\n").unwrap();
        let tarball = dir.path().join("app.tar");
        Cmd::new("tar").arg("-cf").arg(&tarball).arg("-C").arg(&src).arg("app").run().unwrap();
        let a = Artifact { dest: "/opt".try_into().unwrap(), extract: Some(Extract::Tar), ..artifact(&"0".repeat(64)) };
        install(&[(&a, tarball.clone())], &root).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("opt/app/run.sh")).unwrap(), "echo app\n");
        let names: Vec<_> = std::fs::read_dir(root.join("opt")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["app"], "nothing but the members is left in /opt");
        let err = format!("{:#}", install(&[(&a, tarball)], &root).unwrap_err());
        assert!(err.contains("/opt/app already exists in the image"), "{err}");
    }

    #[test]
    fn offline_files_by_url_name_are_verified() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.tar.gz"), b"hello").unwrap();
        let store = Store::new(None, dir.path(), Some(dir.path()));
        let good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        assert_eq!(store.local(&artifact(good)).unwrap(), Some(dir.path().join("x.tar.gz")));
        let bad = "0".repeat(64);
        let err = store.local(&artifact(&bad)).unwrap_err().to_string();
        assert!(
            err.contains(&format!("has sha256 {good}, expected {bad}"))
                && err.contains("http://127.0.0.1:9/dl/x.tar.gz"),
            "{err}"
        );
    }
}
