//! The content-addressed cache of .deb files, for locked and offline builds:
//!
//! ```text
//! <cache>/debs/sha256/<hex>.deb      the .deb whose sha256 is <hex>
//! <cache>/debs/sha256/<hex>.stanza   its paragraph of the mirror's Packages index
//! <cache>/debs/by-name/NAME_VERSION_ARCH.deb -> ../sha256/<hex>.deb   (index, for people)
//! ```
//!
//! A .deb enters only by rename of a complete file whose sha256 was checked (against the lock,
//! or against apt's verified lists of the root it came from); its stanza is stored first, so an
//! entry is complete exactly when its `.deb` exists. Filled by `kiln fetch` and by every online
//! bootstrap (the .debs mmdebstrap downloaded are moved here, out of the root).
use crate::host::cache::Cache;
use crate::host::files::{partial_file, write_atomically_via};
use crate::lock::LockedPackage;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub struct DebCache {
    dir: PathBuf,
}

impl DebCache {
    /// The .deb cache inside kiln's cache directory.
    pub fn new(cache: &Path) -> DebCache {
        DebCache { dir: Cache::new(cache).debs() }
    }

    /// Where unfinished files wait for their rename (on the cache's file system).
    fn tmp_dir(&self) -> PathBuf {
        crate::host::cache::tmp_in(&self.dir)
    }

    /// Remove the (empty) directory of unfinished files, for a cache that is shipped.
    pub fn tidy(&self) {
        let _ = std::fs::remove_dir(self.tmp_dir());
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn deb(&self, sha256: &str) -> PathBuf {
        self.dir.join("sha256").join(format!("{sha256}.deb"))
    }

    pub fn stanza_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("sha256").join(format!("{sha256}.stanza"))
    }

    pub fn has(&self, sha256: &str) -> bool {
        is_hex64(sha256) && self.deb(sha256).is_file()
    }

    /// The Packages stanza of a cached .deb.
    pub fn stanza(&self, sha256: &str) -> Result<String> {
        let p = self.stanza_path(sha256);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    }

    /// The packages of `pkgs` whose .deb is not in the cache.
    pub fn missing<'a>(&self, pkgs: &'a [LockedPackage]) -> Vec<&'a LockedPackage> {
        pkgs.iter().filter(|p| !self.has(&p.sha256)).collect()
    }

    /// Store `file` (moved when on the same file system, else copied) as the .deb of `pkg`, with
    /// its Packages stanza. Fails, storing nothing, when the file's sha256 is not `pkg.sha256`.
    pub fn put(&self, file: &Path, pkg: &LockedPackage, stanza: &str) -> Result<()> {
        let got = crate::host::files::sha256_file(file)?;
        if got != pkg.sha256 {
            bail!("{} has sha256 {got}, the lock says {}: refusing it", pkg.describe(), pkg.sha256);
        }
        self.put_verified(file, pkg, stanza)
    }

    /// `put` for a file whose sha256 was just computed by the caller.
    fn put_verified(&self, file: &Path, pkg: &LockedPackage, stanza: &str) -> Result<()> {
        if self.has(&pkg.sha256) {
            return remove_if_moved(file);
        }
        let tmp_dir = self.tmp_dir();
        for d in [&tmp_dir, &self.dir.join("sha256"), &self.dir.join("by-name")] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let stanza = if stanza.ends_with('\n') { stanza.to_string() } else { format!("{stanza}\n") };
        write_atomically_via(&tmp_dir, &self.stanza_path(&pkg.sha256), |tmp| {
            std::fs::write(tmp, &stanza).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o644)).context("setting a stanza's mode")
        })
        .context("storing a Packages stanza")?;
        write_atomically_via(&tmp_dir, &self.deb(&pkg.sha256), |tmp| move_or_copy(file, tmp))
            .with_context(|| format!("storing the .deb of {}", pkg.describe()))?;
        // The by-name index: a relative symlink, replaced atomically.
        write_atomically_via(&tmp_dir, &self.dir.join("by-name").join(index_name(pkg)), |tmp| {
            std::fs::remove_file(tmp)?;
            std::os::unix::fs::symlink(Path::new("../sha256").join(format!("{}.deb", pkg.sha256)), tmp)?;
            Ok(())
        })
        .context("indexing a .deb")
    }

    /// Move the .debs mmdebstrap left in a bootstrapped root's /var/cache/apt/archives
    /// ([`downloaded`]) into the cache. Each must be one apt's (signature-checked) lists of that
    /// root name by sha256; anything else is removed. Returns how many .debs were new to the cache.
    /// apt's binary caches go too, as `apt-get clean` would (mmdebstrap's clean-up is skipped
    /// to keep the .debs).
    pub fn absorb(&self, root: &Path) -> Result<usize> {
        for bin in ["pkgcache.bin", "srcpkgcache.bin"] {
            let p = root.join("var/cache/apt").join(bin);
            if p.is_file() {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        let mut debs = Vec::new();
        for path in downloaded(root) {
            debs.push((crate::host::files::sha256_file(&path)?, path));
        }
        if debs.is_empty() {
            return Ok(0);
        }
        let want: HashSet<String> = debs.iter().map(|d| d.0.clone()).collect();
        let stanzas = crate::debian::packages::list_stanzas(root, &want)?;
        let mut added = 0;
        for (sha, path) in debs {
            let Some(stanza) = stanzas.get(&sha) else {
                tracing::warn!("{} is not in the root's apt lists; not caching it", path.display());
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
                continue;
            };
            let get = |f: &str| crate::debian::deb822::field(stanza, f).unwrap_or_default().to_string();
            let pkg = LockedPackage {
                name: get("Package"),
                version: get("Version"),
                architecture: get("Architecture"),
                filename: get("Filename"),
                sha256: sha,
                suite: None,
            };
            if !self.has(&pkg.sha256) {
                added += 1;
            }
            self.put_verified(&path, &pkg, stanza)?;
        }
        tracing::info!("{added} new .debs in the cache {}", self.dir.display());
        Ok(added)
    }

    /// Copy (hard link where possible) the entries of `pkgs` from `from` into this cache.
    pub fn copy_from(&self, from: &DebCache, pkgs: &[LockedPackage]) -> Result<()> {
        for p in pkgs {
            if self.has(&p.sha256) {
                continue;
            }
            let stanza = from.stanza(&p.sha256)?;
            let tmp_dir = self.tmp_dir();
            std::fs::create_dir_all(&tmp_dir).with_context(|| format!("creating {}", tmp_dir.display()))?;
            // `put` moves the file away; a failure leaves it to be removed with `tmp`.
            let tmp = partial_file(&tmp_dir, &format!("{}.deb", p.sha256))?.into_temp_path();
            std::fs::remove_file(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
            if std::fs::hard_link(from.deb(&p.sha256), &tmp).is_err() {
                std::fs::copy(from.deb(&p.sha256), &tmp)
                    .with_context(|| format!("copying the .deb of {}", p.describe()))?;
            }
            self.put(&tmp, p, &stanza)?;
        }
        Ok(())
    }
}

/// `NAME_VERSION_ARCH.deb`, with the epoch's `:` written `%3a` as in Debian's pool.
fn index_name(p: &LockedPackage) -> String {
    format!("{}_{}_{}.deb", p.name, p.version.replace(':', "%3a"), p.architecture).replace('/', "_")
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Rename `from` to `to`, or copy it (then remove `from`) across file systems.
fn move_or_copy(from: &Path, to: &Path) -> Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            remove_if_moved(from)
        }
        Err(e) => Err(e).with_context(|| format!("moving {} to {}", from.display(), to.display())),
    }
}

fn remove_if_moved(file: &Path) -> Result<()> {
    std::fs::remove_file(file).with_context(|| format!("removing {}", file.display()))
}

/// The .debs apt downloaded into `root`'s /var/cache/apt/archives (regular files), sorted; none
/// when there is no such directory.
pub fn downloaded(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root.join("var/cache/apt/archives")) else { return Vec::new() };
    let mut debs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "deb") && e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    debs.sort();
    debs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(data: &[u8]) -> LockedPackage {
        LockedPackage {
            name: "hello".into(),
            version: "1:2.10-3".into(),
            architecture: "amd64".into(),
            sha256: crate::host::files::sha256_hex(data),
            filename: "pool/main/h/hello/hello_2.10-3_amd64.deb".into(),
            suite: None,
        }
    }

    #[test]
    fn put_verifies_and_stores_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DebCache::new(dir.path());
        let p = pkg(b"deb bytes");
        let file = dir.path().join("in.deb");
        std::fs::write(&file, b"other bytes").unwrap();
        let err = cache.put(&file, &p, "Package: hello\n").unwrap_err();
        assert!(format!("{err:#}").contains("hello 1:2.10-3 (amd64) has sha256"), "{err:#}");
        assert!(!cache.has(&p.sha256) && file.exists(), "nothing stored, input kept");

        std::fs::write(&file, b"deb bytes").unwrap();
        cache.put(&file, &p, "Package: hello").unwrap();
        assert!(cache.has(&p.sha256) && !file.exists(), "stored by moving");
        assert_eq!(std::fs::read(cache.deb(&p.sha256)).unwrap(), b"deb bytes");
        assert_eq!(cache.stanza(&p.sha256).unwrap(), "Package: hello\n");
        let link = dir.path().join("debs/by-name/hello_1%3a2.10-3_amd64.deb");
        assert_eq!(std::fs::read(link).unwrap(), b"deb bytes", "index link resolves");
        assert!(cache.missing(std::slice::from_ref(&p)).is_empty());
        assert_eq!(std::fs::read_dir(dir.path().join("debs/tmp")).unwrap().count(), 0, "no temporary files left");
    }

    #[test]
    fn absorb_keeps_only_debs_named_by_the_lists() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let archives = root.join("var/cache/apt/archives");
        std::fs::create_dir_all(&archives).unwrap();
        std::fs::create_dir_all(root.join("var/lib/apt/lists")).unwrap();
        let p = pkg(b"real deb");
        std::fs::write(archives.join("hello_2.10-3_amd64.deb"), b"real deb").unwrap();
        std::fs::write(archives.join("stray_1_amd64.deb"), b"unknown").unwrap();
        let stanza = format!(
            "Package: hello\nVersion: 1:2.10-3\nArchitecture: amd64\nFilename: {}\nSHA256: {}\nDescription: x\n more",
            p.filename, p.sha256
        );
        std::fs::write(
            root.join("var/lib/apt/lists/m_dists_trixie_main_binary-amd64_Packages"),
            format!("Package: other\nSHA256: 00\n\n{stanza}\n\n"),
        )
        .unwrap();
        let cache = DebCache::new(&dir.path().join("cache"));
        assert_eq!(cache.absorb(&root).unwrap(), 1);
        assert!(cache.has(&p.sha256));
        assert_eq!(cache.stanza(&p.sha256).unwrap(), format!("{stanza}\n"));
        assert_eq!(std::fs::read_dir(&archives).unwrap().count(), 0, "the root's archives are emptied");
    }
}
