//! Lock files: the exact inputs of a recipe's image, resolved once by `kiln lock` and committed
//! beside the recipe as `NAME.lock`. A lock names every Debian package of the root (version,
//! architecture, sha256 of the .deb, its path on the mirror) and of the tools tree that writes
//! the image's bytes. Builds with a lock install exactly those packages, and the lock's hash
//! joins the seed of the image's identifiers. See docs/reproducibility.md.
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
    /// The suites besides `suite` the packages were resolved from (`trixie-updates`,
    /// `trixie-security`); empty in locks of images with only the suite.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub archives: Vec<String>,
    /// The security mirror the packages of `<suite>-security` were resolved from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_mirror: Option<String>,
    pub source_date_epoch: i64,
    /// The latest `Date:` of the archives' Release files when resolved: where to look on
    /// snapshot.debian.org.
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
    // Not yet here: the recipe's `[[artifacts]]` (URL and sha256), so that their hash joins
    // `Lock::hash`; `pipeline::lock::lock` would record them and `pipeline::lock::fetch` store
    // them in the cache for offline builds. Today artifacts are pinned by the recipe's sha256.
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
    /// The suite whose index had the .deb (`trixie-security`: on the security mirror); None in
    /// older locks: the lock's suite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
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
}

/// What a lock is checked against: the values of today's plan that a lock records.
pub struct Subject<'a> {
    /// The recipe's path, for the hint to re-lock.
    pub recipe: String,
    pub requested: &'a [String],
    pub architecture: &'a str,
    pub suite: &'a str,
    pub components: Vec<String>,
    pub source_date_epoch: i64,
    pub mirror: &'a str,
    /// The suites besides `suite` (updates, security).
    pub archives: Vec<String>,
    /// The packages of this kiln's tools tree.
    pub tools_packages: &'a [&'a str],
}

/// A list for a message: comma-separated, or `none`.
fn or_none(list: &[String]) -> String {
    if list.is_empty() {
        "none".into()
    } else {
        list.join(",")
    }
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
            bail!(
                "lock file {} has format {}, this kiln reads format {LOCK_FORMAT}: run `kiln lock --update`",
                path.display(),
                lock.format
            );
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
        crate::host::files::write_atomically(path, |tmp| {
            std::fs::write(tmp, &text).with_context(|| format!("writing {}", tmp.display()))
        })
    }

    /// sha256 of the lock's content (independent of comments and formatting): joins the image's
    /// identifiers and the bootstrap cache key.
    pub fn hash(&self) -> String {
        crate::host::files::sha256_hex(self.to_toml().unwrap_or_default().as_bytes())
    }

    /// Fail when the lock was made for other inputs than `now` (a package added, another suite
    /// or architecture...), saying how to refresh it.
    pub fn check_matches(&self, now: &Subject, path: &Path) -> Result<()> {
        let mut requested = now.requested.to_vec();
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
            ("architecture", self.architecture.as_str(), now.architecture),
            ("suite", self.suite.as_str(), now.suite),
            ("components", &self.components.join(","), &now.components.join(",")),
            ("source_date_epoch", &self.source_date_epoch.to_string(), &now.source_date_epoch.to_string()),
            ("archives besides the suite", &or_none(&self.archives), &or_none(&now.archives)),
        ] {
            if locked != now {
                diffs.push(format!("{what} is {now}, the lock has {locked}"));
            }
        }
        if let Some(tools) = &self.tools {
            let missing: Vec<&str> =
                now.tools_packages.iter().copied().filter(|t| !tools.packages.iter().any(|p| p.name == *t)).collect();
            if !missing.is_empty() {
                diffs
                    .push(format!("this kiln's tools tree also has {}, which the lock's does not", missing.join(", ")));
            }
        }
        if !diffs.is_empty() {
            bail!(
                "lock file {} is out of date with the recipe ({}): run `kiln lock {}` (or build with --no-lock)",
                path.display(),
                diffs.join("; "),
                now.recipe
            );
        }
        if self.mirror != now.mirror {
            tracing::info!(
                "the lock was resolved from {}; packages come from {} (checked by sha256)",
                self.mirror,
                now.mirror
            );
        }
        Ok(())
    }

    /// The tools tree's packages, when the lock has them for this architecture.
    pub fn tools_for(&self, arch: &str) -> Option<&ToolsLock> {
        self.tools.as_ref().filter(|t| t.architecture == arch)
    }
}
