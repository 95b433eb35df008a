//! Where a bootstrap's packages come from, and how a lock pins them.
//!
//! Online, mmdebstrap downloads from the mirror; offline, from a local repository made in the
//! work directory out of the .deb cache (the locked .debs, hard-linked, with the mirror's own
//! Packages stanzas, so apt resolves exactly as it did online). With a lock, a setup hook pins
//! every locked version (apt preferences, priority 1001) and the result is checked against the
//! lock. Either way a customize hook removes the bootstrap's sources and the pins (the image's
//! deb822 sources, naming the real archives, are written by `customize::system`), so online
//! and offline builds give the same root.
//!
//! A source is one suite on a mirror plus its `extra` archives (`<suite>-updates` on the same
//! mirror, `<suite>-security` on the security mirror): mmdebstrap gets them all, and a locked
//! package is looked up in the index of the suite it was resolved from.
use crate::debian::debcache::DebCache;
use crate::debian::mirror::{self, Help, IndexId};
use crate::debian::packages::Package;
use crate::host::work::WorkDir;
use crate::lock::LockedPackage;
use crate::plan::Archive;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the lock's apt preferences are in a root while it is bootstrapped.
pub const PIN_FILE: &str = "etc/apt/preferences.d/kiln-lock";

#[derive(Debug, Clone)]
pub struct Source {
    /// The mirror named in the image's sources.list, and downloaded from when online.
    pub mirror: String,
    pub suite: String,
    pub components: Vec<String>,
    /// Debian architecture of the packages.
    pub arch: String,
    /// Locked packages: pinned, and (when `exact`) exactly the set that must be installed.
    pub pins: Option<Vec<LockedPackage>>,
    /// The installed set must equal `pins` (a build); otherwise pinned packages only keep their
    /// versions (`kiln lock` re-resolving after the recipe changed).
    pub exact: bool,
    /// Use only the .deb cache (no network).
    pub offline: bool,
    /// Archives besides `suite` on `mirror` (updates, security), in apt's order.
    pub extra: Vec<Archive>,
}

/// An apt preferences file to put into a root before anything is installed.
#[derive(Debug, Clone)]
pub struct AptPin {
    /// The file on the host (in the work directory).
    pub file: PathBuf,
    /// Its path relative to the root.
    pub dest: String,
}

/// What mmdebstrap needs for a source (the bootstrap turns it into options and hooks).
pub struct Args {
    /// The lock's pins, put in place before anything is installed.
    pub pins: Option<AptPin>,
    /// The pin file to remove when everything is installed.
    pub pin_file: &'static str,
    /// `--components` (online; the local repository has only `main`).
    pub components: Option<Vec<String>>,
    /// mmdebstrap's mirror arguments: the mirror (or the local repository's line), then a
    /// `deb URI SUITE COMPONENTS` line per extra archive (online).
    pub mirrors: Vec<String>,
}

impl Source {
    /// The suite and its extra archives.
    pub fn archives(&self) -> Vec<Archive> {
        let mut all = vec![Archive { uri: self.mirror.clone(), suite: self.suite.clone() }];
        all.extend(self.extra.iter().cloned());
        all
    }

    fn index_of(&self, a: &Archive) -> IndexId {
        IndexId {
            mirror: a.uri.clone(),
            suite: a.suite.clone(),
            components: self.components.clone(),
            arch: self.arch.clone(),
        }
    }

    /// The index of the suite's own archive.
    pub fn index_id(&self) -> IndexId {
        self.index_of(&self.archives()[0])
    }

    /// `pins` grouped by the index each was resolved from (its `suite`; the suite's own index
    /// for packages of older locks, or of suites this source does not have).
    pub fn by_index<'a>(&self, pins: &'a [LockedPackage]) -> BTreeMap<IndexId, Vec<&'a LockedPackage>> {
        let archives = self.archives();
        let mut out: BTreeMap<IndexId, Vec<&LockedPackage>> = BTreeMap::new();
        for p in pins {
            let a = p.suite.as_ref().and_then(|s| archives.iter().find(|a| &a.suite == s)).unwrap_or(&archives[0]);
            out.entry(self.index_of(a)).or_default().push(p);
        }
        out
    }

    /// The pinned set's hash, for cache keys (None without pins).
    pub fn pins_hash(&self) -> Option<String> {
        let pins = self.pins.as_ref()?;
        let text: String =
            pins.iter().map(|p| format!("{} {} {} {}\n", p.name, p.version, p.architecture, p.sha256)).collect();
        Some(crate::host::files::sha256_hex(text.as_bytes()))
    }

    /// What mmdebstrap needs for this source. Offline, this makes the local repository below
    /// `work` (failing, naming the package, when a locked .deb is not cached).
    pub fn mmdebstrap_args(&self, debs: &DebCache, work: &WorkDir, label: &str) -> Result<Args> {
        let pins = match &self.pins {
            Some(pins) => {
                let file = work.join(format!("{label}-pins"));
                std::fs::write(&file, preferences(pins)).with_context(|| format!("writing {}", file.display()))?;
                Some(AptPin { file, dest: PIN_FILE.to_string() })
            }
            None => None,
        };
        let (mirrors, components) = if self.offline {
            // Every locked .deb, of whichever archive, is in the one local repository.
            let pins = self.pins.as_deref().context("offline bootstraps need a lock")?;
            let dir = work.join(format!("{label}-repo"));
            local_repo(&dir, &self.suite, &self.arch, pins, debs)?;
            (vec![format!("deb [trusted=yes] copy://{} {} main", dir.display(), self.suite)], None)
        } else {
            let mut mirrors = vec![self.mirror.clone()];
            let comps = self.components.join(" ");
            mirrors.extend(self.extra.iter().map(|a| format!("deb {} {} {comps}", a.uri, a.suite)));
            (mirrors, Some(self.components.clone()))
        };
        Ok(Args { pins, pin_file: PIN_FILE, components, mirrors })
    }

    /// Check a freshly bootstrapped root's packages against the pins.
    pub fn verify(&self, installed: &[Package]) -> Result<()> {
        let Some(pins) = &self.pins else { return Ok(()) };
        let pinned: BTreeMap<(&str, &str), &LockedPackage> =
            pins.iter().map(|p| ((p.name.as_str(), p.architecture.as_str()), p)).collect();
        let mut problems = Vec::new();
        for p in installed {
            match pinned.get(&(p.name.as_str(), p.architecture.as_str())) {
                Some(l) if l.version != p.version => problems.push(format!(
                    "{} {} ({}) installed, the lock has {}",
                    p.name, p.version, p.architecture, l.version
                )),
                Some(l) if p.sha256.as_ref().is_some_and(|s| s != &l.sha256) => problems
                    .push(format!("{} {} ({}) has another sha256 than the lock", p.name, p.version, p.architecture)),
                None if self.exact => problems
                    .push(format!("{} {} ({}) installed, but not in the lock", p.name, p.version, p.architecture)),
                _ => {}
            }
        }
        if self.exact {
            for l in pins {
                if !installed.iter().any(|p| p.name == l.name && p.architecture == l.architecture) {
                    problems.push(format!("{} is in the lock but was not installed", l.describe()));
                }
            }
        }
        if !problems.is_empty() {
            bail!("the bootstrapped packages differ from the lock:\n  {}\n(is the lock out of date? `kiln lock --update` re-resolves it)", problems.join("\n  "));
        }
        Ok(())
    }
}

/// apt preferences pinning every locked version.
pub fn preferences(pins: &[LockedPackage]) -> String {
    let mut seen = std::collections::BTreeSet::new();
    pins.iter()
        .filter(|p| seen.insert((&p.name, &p.version)))
        .map(|p| format!("Package: {}\nPin: version {}\nPin-Priority: 1001\n", p.name, p.version))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Make a repository of exactly `pins` at `dir` from the cache: `pool/...` hard links (copies
/// across file systems) to the cached .debs, the mirror's stanzas as one `main` component, and
/// a Release file with their checksum. It is served as `[trusted=yes]`: every .deb in it was
/// checked against the lock's sha256 when it entered the cache.
pub fn local_repo(dir: &Path, suite: &str, arch: &str, pins: &[LockedPackage], debs: &DebCache) -> Result<()> {
    let missing = debs.missing(pins);
    if !missing.is_empty() {
        bail!("{}", missing_error(&missing, debs));
    }
    if dir.to_string_lossy().contains(|c: char| c.is_whitespace() || c == ']') {
        bail!("the work directory {} must not contain white space (it becomes an apt URI)", dir.display());
    }
    let mut packages = String::new();
    for p in pins {
        // One .deb can be in two archives (a security update later taken into a point release:
        // `pool/updates/main/...` and `pool/main/...`); the cache keeps one stanza per .deb, so
        // the file goes where that stanza's `Filename` says, which is where apt will look.
        let stanza = debs.stanza(&p.sha256)?;
        let pool = crate::debian::deb822::field(&stanza, "Filename").unwrap_or(&p.filename).to_string();
        if pool.contains("..") || pool.starts_with('/') {
            bail!("locked filename {pool} of {} is not a pool path", p.describe());
        }
        let dest = dir.join(&pool);
        std::fs::create_dir_all(dest.parent().context("pool path")?)
            .with_context(|| format!("creating {}", dest.display()))?;
        if std::fs::hard_link(debs.deb(&p.sha256), &dest).is_err() {
            std::fs::copy(debs.deb(&p.sha256), &dest)
                .with_context(|| format!("copying the .deb of {}", p.describe()))?;
        }
        packages.push_str(stanza.trim_end_matches('\n'));
        packages.push_str("\n\n");
    }
    let rel = format!("main/binary-{arch}/Packages");
    let index = dir.join("dists").join(suite).join(&rel);
    std::fs::create_dir_all(index.parent().context("index path")?)
        .with_context(|| format!("creating {}", index.display()))?;
    std::fs::write(&index, &packages).with_context(|| format!("writing {}", index.display()))?;
    let release = format!(
        "Origin: kiln\nLabel: kiln offline cache\nSuite: {suite}\nCodename: {suite}\nArchitectures: {arch}\nComponents: main\nDescription: locked packages from kiln's .deb cache\nSHA256:\n {} {} {rel}\n",
        crate::host::files::sha256_hex(packages.as_bytes()),
        packages.len()
    );
    std::fs::write(dir.join("dists").join(suite).join("Release"), release)
        .context("writing the local repository's Release file")
}

/// The error for locked .debs missing from the cache of an offline build.
pub fn missing_error(missing: &[&LockedPackage], debs: &DebCache) -> String {
    format!(
        "the .deb cache {} lacks {} locked package(s), so this offline build cannot proceed:\n  {}\nFill the cache while the mirror has them with `kiln fetch RECIPE` (same --cache), or use the cache of a `kiln vendor` bundle",
        debs.dir().display(),
        missing.len(),
        missing.iter().map(|p| p.describe()).collect::<Vec<_>>().join("\n  ")
    )
}

/// Before any bootstrap: every locked package the `needed` sources pin must be available, in
/// the cache (offline) or on the mirror (online; one index download per suite and architecture).
pub fn check_available(needed: &[&Source], debs: &DebCache, scratch: &Path, help: &Help) -> Result<()> {
    let mut online: BTreeMap<IndexId, Vec<&LockedPackage>> = BTreeMap::new();
    let mut missing = Vec::new();
    for s in needed {
        let Some(pins) = &s.pins else { continue };
        if s.offline {
            missing.extend(debs.missing(pins));
        } else {
            for (id, group) in s.by_index(pins) {
                online.entry(id).or_default().extend(group);
            }
        }
    }
    if !missing.is_empty() {
        bail!("{}", missing_error(&missing, debs));
    }
    for (id, want) in online {
        mirror::check(&id, &want, scratch, help)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locked(name: &str, data: &[u8]) -> LockedPackage {
        LockedPackage {
            name: name.into(),
            version: "1.0-1".into(),
            architecture: "amd64".into(),
            sha256: crate::host::files::sha256_hex(data),
            filename: format!("pool/main/{name}/{name}_1.0-1_amd64.deb"),
            suite: None,
        }
    }

    #[test]
    fn preferences_pin_each_version_once() {
        let (a, b) = (locked("a", b"a"), locked("b", b"b"));
        let prefs = preferences(&[a.clone(), a, b]);
        assert_eq!(prefs, "Package: a\nPin: version 1.0-1\nPin-Priority: 1001\n\nPackage: b\nPin: version 1.0-1\nPin-Priority: 1001\n");
    }

    #[test]
    fn local_repo_has_pool_index_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let debs = DebCache::new(&dir.path().join("cache"));
        let (a, b) = (locked("a", b"deb a"), locked("b", b"deb b"));
        // b's .deb was cached with the stanza of another archive (`pool/updates/...` locked,
        // `pool/main/...` in the stanza): it goes where the stanza says.
        let b_pool = "pool/other/b/b_1.0-1_amd64.deb";
        for (p, data, pool) in [(&a, b"deb a", None), (&b, b"deb b", Some(b_pool))] {
            let f = dir.path().join("in.deb");
            std::fs::write(&f, data).unwrap();
            let filename = pool.map(|f| format!("Filename: {f}\n")).unwrap_or_default();
            debs.put(&f, p, &format!("Package: {}\n{filename}SHA256: {}\n", p.name, p.sha256)).unwrap();
        }
        let repo = dir.path().join("repo");
        local_repo(&repo, "trixie", "amd64", &[a.clone(), b.clone()], &debs).unwrap();
        assert_eq!(std::fs::read(repo.join(&a.filename)).unwrap(), b"deb a");
        assert_eq!(std::fs::read(repo.join(b_pool)).unwrap(), b"deb b");
        let packages = std::fs::read_to_string(repo.join("dists/trixie/main/binary-amd64/Packages")).unwrap();
        assert_eq!(
            packages,
            format!("Package: a\nSHA256: {}\n\nPackage: b\nFilename: {b_pool}\nSHA256: {}\n\n", a.sha256, b.sha256)
        );
        let release = std::fs::read_to_string(repo.join("dists/trixie/Release")).unwrap();
        assert!(
            release.contains(&format!(
                " {} {} main/binary-amd64/Packages\n",
                crate::host::files::sha256_hex(packages.as_bytes()),
                packages.len()
            )),
            "{release}"
        );

        let c = locked("c", b"never cached");
        let err = local_repo(&dir.path().join("repo2"), "trixie", "amd64", &[a, c], &debs).unwrap_err().to_string();
        assert!(
            err.contains("lacks 1 locked package") && err.contains("c 1.0-1 (amd64)") && err.contains("kiln fetch"),
            "{err}"
        );
    }

    #[test]
    fn verify_exact_and_partial() {
        let pin = locked("a", b"a");
        let inst = |name: &str, version: &str| Package {
            name: name.into(),
            version: version.into(),
            architecture: "amd64".into(),
            source: name.into(),
            source_version: version.into(),
            sha256: None,
            filename: None,
            suite: None,
        };
        let mut s = Source {
            mirror: "m".into(),
            suite: "trixie".into(),
            components: vec!["main".into()],
            arch: "amd64".into(),
            pins: Some(vec![pin]),
            exact: true,
            offline: false,
            extra: Vec::new(),
        };
        s.verify(&[inst("a", "1.0-1")]).unwrap();
        let err = s.verify(&[inst("a", "1.0-1"), inst("extra", "2")]).unwrap_err().to_string();
        assert!(err.contains("extra 2 (amd64) installed, but not in the lock"), "{err}");
        let err = s.verify(&[inst("a", "9")]).unwrap_err().to_string();
        assert!(err.contains("a 9 (amd64) installed, the lock has 1.0-1"), "{err}");
        s.exact = false;
        s.verify(&[inst("a", "1.0-1"), inst("extra", "2")]).unwrap();
    }
}
