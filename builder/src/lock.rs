//! Lock files: the exact inputs of a recipe's image, resolved once by `kiln lock` and committed
//! beside the recipe as `NAME.lock`. A lock names every Debian package of the root (version,
//! architecture, sha256 of the .deb, its path on the mirror) and of the tools tree that writes
//! the image's bytes. Builds with a lock install exactly those packages, and the lock's hash
//! joins the seed of the image's identifiers. See docs/reproducibility.md.
use crate::packages::Package;
use crate::plan::Plan;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Bump when the lock file's format changes incompatibly.
pub const LOCK_FORMAT: u32 = 1;

const HEADER: &str = "# kiln lock file: the exact packages this recipe's image is built from.\n\
# Written by `kiln lock`; commit it beside the recipe. `kiln lock --update` refreshes it.\n";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub format: u32,
    /// The recipe's name (for people reading the file).
    pub recipe: String,
    /// Debian architecture of the image.
    pub architecture: String,
    pub suite: String,
    pub components: Vec<String>,
    /// The mirror the packages were resolved from.
    pub mirror: String,
    pub source_date_epoch: i64,
    /// `Date:` of the suite's Release file when resolved: where to look on snapshot.debian.org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_date: Option<String>,
    /// What the recipe asks for (kiln's base set, the kernel, the recipe's packages), sorted.
    /// The lock is out of date when these change.
    pub requested: Vec<String>,
    /// Every package installed in the root, sorted by name, architecture and version.
    pub packages: Vec<LockedPackage>,
    /// The tools tree that writes the image's bytes (mke2fs), for the locking host's architecture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<ToolsLock>,
    // TODO(#4, artifacts): `[[artifacts]]` (added by the artifacts work) are to be locked here
    // too, with their resolved URL and sha256, so that their hash joins `Lock::hash`. Hook:
    // `pipeline::lock` resolves them; `fetch::fetch` stores them in the cache for offline use.
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// sha256 of the .deb.
    pub sha256: String,
    /// Path of the .deb below the mirror (`pool/main/...`).
    pub filename: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsLock {
    pub suite: String,
    /// Debian architecture of the host the tools tree runs on.
    pub architecture: String,
    /// The e2fsprogs version (mke2fs writes the root filesystem).
    pub e2fsprogs: String,
    pub packages: Vec<LockedPackage>,
}

impl LockedPackage {
    /// `name version (arch)`, as errors show a package.
    pub fn describe(&self) -> String {
        format!("{} {} ({})", self.name, self.version, self.architecture)
    }

    /// A locked package from an installed one; fails when apt's lists did not know its .deb.
    pub fn from_installed(p: &Package) -> Result<LockedPackage> {
        let (Some(sha256), Some(filename)) = (&p.sha256, &p.filename) else {
            bail!("no .deb checksum known for the installed package {} {} ({}): it is not in the root's apt lists", p.name, p.version, p.architecture);
        };
        Ok(LockedPackage { name: p.name.clone(), version: p.version.clone(), architecture: p.architecture.clone(), sha256: sha256.clone(), filename: filename.clone() })
    }
}

/// Turn installed packages into locked ones, sorted.
pub fn locked_set(installed: &[Package]) -> Result<Vec<LockedPackage>> {
    let mut out = installed.iter().map(LockedPackage::from_installed).collect::<Result<Vec<_>>>()?;
    out.sort();
    Ok(out)
}

/// Where a recipe's lock file lives: beside it, `NAME.lock` for `NAME.toml`.
pub fn path_for(recipe: &Path) -> PathBuf {
    recipe.with_extension("lock")
}

/// Which lock a build uses.
#[derive(Debug, Clone, Default)]
pub enum LockChoice {
    /// The lock beside the recipe, if there is one.
    #[default]
    Auto,
    /// This lock file (it must exist).
    File(PathBuf),
    /// No lock, even if one is beside the recipe.
    Ignore,
}

impl LockChoice {
    /// The lock file to use for `recipe`, if any.
    pub fn path(&self, recipe: &Path) -> Result<Option<PathBuf>> {
        match self {
            LockChoice::Auto => Ok(Some(path_for(recipe)).filter(|p| p.is_file())),
            LockChoice::File(p) if p.is_file() => Ok(Some(p.clone())),
            LockChoice::File(p) => bail!("lock file {} not found", p.display()),
            LockChoice::Ignore => Ok(None),
        }
    }
}

impl Lock {
    /// Put every list into its stable order.
    pub fn normalize(&mut self) {
        self.requested.sort();
        self.requested.dedup();
        self.packages.sort();
        if let Some(t) = &mut self.tools {
            t.packages.sort();
        }
    }

    /// The lock as written to disk: a header comment, then TOML in a stable order.
    pub fn to_toml(&self) -> Result<String> {
        let mut lock = self.clone();
        lock.normalize();
        Ok(format!("{HEADER}\n{}", toml::to_string(&lock).context("serializing the lock")?))
    }

    pub fn from_toml(text: &str, path: &Path) -> Result<Lock> {
        let mut lock: Lock = toml::from_str(text).with_context(|| format!("reading lock file {}", path.display()))?;
        if lock.format != LOCK_FORMAT {
            bail!("lock file {} has format {}, this kiln reads format {LOCK_FORMAT}: run `kiln lock --update`", path.display(), lock.format);
        }
        lock.normalize();
        Ok(lock)
    }

    pub fn read(path: &Path) -> Result<Lock> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading lock file {}", path.display()))?;
        Lock::from_toml(&text, path)
    }

    /// Write the lock atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = self.to_toml()?;
        crate::pipeline::write_atomically(path, |tmp| std::fs::write(tmp, &text).with_context(|| format!("writing {}", tmp.display())))
    }

    /// sha256 of the lock's content (independent of comments and formatting): joins the image's
    /// identifiers and the bootstrap cache key.
    pub fn hash(&self) -> String {
        crate::ids::sha256_hex(self.to_toml().unwrap_or_default().as_bytes())
    }

    /// Fail when the lock was made for other inputs than `plan`'s (a package added, another suite
    /// or architecture...), saying how to refresh it.
    pub fn check_matches(&self, plan: &Plan, path: &Path) -> Result<()> {
        let r = &plan.recipe;
        let mut requested = plan.packages.clone();
        requested.sort();
        requested.dedup();
        let mut diffs = Vec::new();
        let added: Vec<&str> = requested.iter().filter(|p| !self.requested.contains(p)).map(String::as_str).collect();
        let removed: Vec<&str> = self.requested.iter().filter(|p| !requested.contains(p)).map(String::as_str).collect();
        if !added.is_empty() {
            diffs.push(format!("packages added to the recipe: {}", added.join(", ")));
        }
        if !removed.is_empty() {
            diffs.push(format!("packages removed from the recipe: {}", removed.join(", ")));
        }
        for (what, locked, now) in [
            ("architecture", self.architecture.as_str(), plan.arch().debian()),
            ("suite", self.suite.as_str(), r.base.suite.as_str()),
            ("components", &self.components.join(","), &r.base.components.join(",")),
            ("source_date_epoch", &self.source_date_epoch.to_string(), &r.source_date_epoch.to_string()),
        ] {
            if locked != now {
                diffs.push(format!("{what} is {now}, the lock has {locked}"));
            }
        }
        if !diffs.is_empty() {
            bail!("lock file {} is out of date with the recipe ({}): run `kiln lock {}` (or build with --no-lock)", path.display(), diffs.join("; "), r.sources.first().map(|p| p.display().to_string()).unwrap_or_default());
        }
        if self.mirror != plan.mirror {
            tracing::info!("the lock was resolved from {}; packages come from {} (checked by sha256)", self.mirror, plan.mirror);
        }
        Ok(())
    }

    /// The tools tree's packages, when the lock has them for this architecture.
    pub fn tools_for(&self, arch: &str) -> Option<&ToolsLock> {
        self.tools.as_ref().filter(|t| t.architecture == arch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str, arch: &str) -> LockedPackage {
        LockedPackage { name: name.into(), version: version.into(), architecture: arch.into(), sha256: format!("{:0>64}", name.len()), filename: format!("pool/main/{name}_{version}_{arch}.deb") }
    }

    pub(crate) fn sample() -> Lock {
        Lock {
            format: LOCK_FORMAT,
            recipe: "demo".into(),
            architecture: "amd64".into(),
            suite: "trixie".into(),
            components: vec!["main".into()],
            mirror: "http://deb.example/debian".into(),
            source_date_epoch: 1_735_689_600,
            archive_date: Some("Sat, 10 May 2025 09:00:00 UTC".into()),
            requested: vec!["zstd".into(), "systemd".into()],
            packages: vec![pkg("zstd", "1.5", "amd64"), pkg("adduser", "3.1", "all"), pkg("libc6", "2.41-1", "amd64"), pkg("libc6", "2.41-1", "i386")],
            tools: Some(ToolsLock { suite: "trixie".into(), architecture: "amd64".into(), e2fsprogs: "1.47.2-3".into(), packages: vec![pkg("e2fsprogs", "1.47.2-3", "amd64"), pkg("base-files", "13", "amd64")] }),
        }
    }

    #[test]
    fn round_trip_is_lossless_and_sorted() {
        let lock = sample();
        let text = lock.to_toml().unwrap();
        let back = Lock::from_toml(&text, Path::new("demo.lock")).unwrap();
        let mut sorted = lock.clone();
        sorted.normalize();
        assert_eq!(back, sorted);
        assert_eq!(back.to_toml().unwrap(), text, "writing what was read gives the same bytes");
        let names: Vec<&str> = back.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["adduser", "libc6", "libc6", "zstd"]);
        assert_eq!(back.requested, ["systemd", "zstd"]);
        assert_eq!(back.tools.as_ref().unwrap().packages[0].name, "base-files");
        assert!(text.starts_with("# kiln lock file"), "{text}");
        assert!(text.contains("[[packages]]\nname = \"adduser\"\nversion = \"3.1\"\narchitecture = \"all\"\n"), "{text}");
    }

    #[test]
    fn order_of_input_does_not_change_the_file_or_hash() {
        let a = sample();
        let mut b = sample();
        b.packages.reverse();
        b.requested.reverse();
        b.tools.as_mut().unwrap().packages.reverse();
        assert_eq!(a.to_toml().unwrap(), b.to_toml().unwrap());
        assert_eq!(a.hash(), b.hash());
        b.packages[0].version = "0.0-other".into();
        assert_ne!(a.hash(), b.hash(), "a changed version changes the hash");
    }

    #[test]
    fn comments_and_formatting_do_not_change_the_hash() {
        let a = sample();
        let text = a.to_toml().unwrap().replace("format = 1", "# edited by hand\nformat    =   1");
        assert_eq!(Lock::from_toml(&text, Path::new("x.lock")).unwrap().hash(), a.hash());
    }

    #[test]
    fn unknown_keys_and_other_formats_are_rejected() {
        let text = sample().to_toml().unwrap();
        let err = Lock::from_toml(&text.replace("format = 1", "format = 1\nsurprise = 2"), Path::new("x.lock")).unwrap_err();
        assert!(format!("{err:#}").contains("surprise"), "{err:#}");
        let err = Lock::from_toml(&text.replace("format = 1", "format = 9"), Path::new("x.lock")).unwrap_err();
        assert!(format!("{err:#}").contains("kiln lock --update"), "{err:#}");
    }

    #[test]
    fn write_is_atomic_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.lock");
        sample().write(&path).unwrap();
        assert_eq!(Lock::read(&path).unwrap().hash(), sample().hash());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["demo.lock"], "no temporary files left");
    }
}
