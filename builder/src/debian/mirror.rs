//! The Debian mirror, spoken to with curl: a suite's Packages index (to check that locked
//! versions are still there before anything is bootstrapped, and for the stanzas of fetched
//! .debs) and single .debs by their pool path (`kiln fetch`).
use crate::debian::debcache::DebCache;
use crate::host::cmd::Cmd;
use crate::host::net::download;
use crate::lock::LockedPackage;
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// Which index: suite, components and Debian architecture on a mirror.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IndexId {
    pub mirror: String,
    pub suite: String,
    pub components: Vec<String>,
    pub arch: String,
}

/// What the mirror's index says about the packages asked for.
#[derive(Debug, Default)]
pub struct Index {
    /// (name, version, architecture) → (sha256, stanza).
    entries: BTreeMap<(String, String, String), (String, String)>,
}

impl Index {
    /// Download the index of `id` (`Packages.xz` of each component, once) and keep the entries
    /// of `want`. `scratch` holds the downloads.
    pub fn download(id: &IndexId, want: &[&LockedPackage], scratch: &Path) -> Result<Index> {
        let keys: HashSet<(&str, &str, &str)> =
            want.iter().map(|p| (p.name.as_str(), p.version.as_str(), p.architecture.as_str())).collect();
        let mut index = Index::default();
        for comp in &id.components {
            let url =
                format!("{}/dists/{}/{comp}/binary-{}/Packages.xz", id.mirror.trim_end_matches('/'), id.suite, id.arch);
            let file = scratch.join(format!("Packages-{}-{comp}-{}.xz", id.suite, id.arch));
            download(&url, &file).with_context(|| {
                format!("downloading the package index of Debian {} {comp} ({})", id.suite, id.arch)
            })?;
            let text = Cmd::new("xz").arg("-dc").arg(&file).output().context("unpacking the package index")?;
            let _ = std::fs::remove_file(&file);
            index.add(&text, &keys);
        }
        Ok(index)
    }

    fn add(&mut self, text: &str, keys: &HashSet<(&str, &str, &str)>) {
        use crate::debian::deb822::{field, raw_paragraphs};
        for p in raw_paragraphs(text) {
            let (Some(n), Some(v), Some(a)) = (field(p, "Package"), field(p, "Version"), field(p, "Architecture"))
            else {
                continue;
            };
            if keys.contains(&(n, v, a)) {
                let sha = field(p, "SHA256").unwrap_or_default().to_string();
                self.entries.entry((n.into(), v.into(), a.into())).or_insert((sha, format!("{p}\n")));
            }
        }
    }

    /// The stanza of a locked package, when the mirror has exactly that .deb.
    pub fn stanza(&self, p: &LockedPackage) -> Option<&str> {
        self.entries
            .get(&(p.name.clone(), p.version.clone(), p.architecture.clone()))
            .filter(|e| e.0 == p.sha256)
            .map(|e| e.1.as_str())
    }

    /// Packages of `want` the mirror does not have (a different sha256 at the same version counts
    /// as not having it), each with why.
    pub fn unavailable(&self, want: &[&LockedPackage]) -> Vec<String> {
        want.iter()
            .filter_map(|p| match self.entries.get(&(p.name.clone(), p.version.clone(), p.architecture.clone())) {
                None => Some(format!("{} is not on the mirror", p.describe())),
                Some((sha, _)) if sha != &p.sha256 => Some(format!(
                    "{} is on the mirror with another sha256 ({sha}, the lock has {})",
                    p.describe(),
                    p.sha256
                )),
                Some(_) => None,
            })
            .collect()
    }
}

/// What to tell the user when locked packages are unavailable.
pub struct Help<'a> {
    pub recipe: &'a Path,
    pub lock_path: &'a Path,
    pub archive_date: Option<&'a str>,
    /// The build also takes packages from a security archive (its snapshot is named too).
    pub security: bool,
}

/// The error for locked packages the mirror no longer has: which, and the ways forward.
pub fn unavailable_error(id: &IndexId, problems: &[String], help: &Help) -> anyhow::Error {
    let lock_arg = if help.lock_path == crate::lock::path_for(help.recipe) {
        String::new()
    } else {
        format!(" --lock {}", help.lock_path.display())
    };
    let recipe = format!("{}{lock_arg}", help.recipe.display());
    let stamp = help.archive_date.and_then(snapshot_stamp).unwrap_or_else(|| "YYYYMMDDTHHMMSSZ".into());
    // The security archive has its own snapshots; one time stamp names both.
    let snapshot = format!("https://snapshot.debian.org/archive/debian/{stamp}");
    let snapshot = if id.suite.ends_with("-security") || help.security {
        format!("{snapshot} KILN_SECURITY_MIRROR=https://snapshot.debian.org/archive/debian-security/{stamp}")
    } else {
        snapshot
    };
    anyhow::anyhow!(
        "the mirror {} does not have {} package(s) of the lock {} (Debian {} {}):\n  {}\nTo proceed, either:\n  - refresh the lock to the mirror's current versions (the image changes): kiln lock --update {}\n  - build offline from a .deb cache filled while they were available: kiln build --offline {recipe} (the cache of an earlier `kiln fetch`, or a `kiln vendor` bundle's)\n  - build from a snapshot of the archive taken after the lock was made{}: KILN_MIRROR={snapshot} kiln build {recipe}",
        id.mirror,
        problems.len(),
        help.lock_path.display(),
        id.suite,
        id.arch,
        problems.join("\n  "),
        help.recipe.display(),
        help.archive_date.map(|d| format!(" (its Release was dated {d})")).unwrap_or_default(),
    )
}

/// Check that the mirror still has every package of `want`, downloading the index once.
pub fn check(id: &IndexId, want: &[&LockedPackage], scratch: &Path, help: &Help) -> Result<Index> {
    let index = Index::download(id, want, scratch)?;
    let problems = index.unavailable(want);
    if !problems.is_empty() {
        return Err(unavailable_error(id, &problems, help));
    }
    Ok(index)
}

/// Download the .debs of `want` that are not in `debs` from the mirror into it, each checked
/// against the lock's sha256. Returns how many were downloaded.
pub fn fetch(id: &IndexId, want: &[LockedPackage], debs: &DebCache, scratch: &Path, help: &Help) -> Result<usize> {
    let missing = debs.missing(want);
    if missing.is_empty() {
        return Ok(0);
    }
    let index = check(id, &missing, scratch, help)?;
    for (i, p) in missing.iter().enumerate() {
        let stanza = index.stanza(p).context("package vanished from the index")?;
        let file = scratch.join(format!("fetch-{}.deb", p.sha256));
        tracing::info!("fetching {} ({}/{})", p.describe(), i + 1, missing.len());
        download(&format!("{}/{}", id.mirror.trim_end_matches('/'), p.filename), &file)
            .with_context(|| format!("downloading {}", p.describe()))?;
        debs.put(&file, p, stanza)?;
    }
    Ok(missing.len())
}

/// `Sat, 10 May 2025 20:13:40 UTC` → `20250511T021340Z`, a snapshot.debian.org time stamp.
/// The snapshot taken just after the Release date has the archive as it was; snapshots are
/// taken every six hours, so the stamp names the Release date plus six hours.
pub fn snapshot_stamp(date: &str) -> Option<String> {
    let release = release_date(date)?;
    let snapshot = release.checked_add_signed(chrono::TimeDelta::hours(6))?;
    Some(snapshot.format("%Y%m%dT%H%M%SZ").to_string())
}

/// A Release file's `Date:` (`Sat, 10 May 2025 20:13:40 UTC`), read as UTC.
pub fn release_date(date: &str) -> Option<chrono::NaiveDateTime> {
    // The weekday and the zone (always UTC in a Release file) are not needed.
    let w: Vec<&str> = date.split_whitespace().collect();
    let [_, day, month, year, time, ..] = w.as_slice() else { return None };
    chrono::NaiveDateTime::parse_from_str(&format!("{day} {month} {year} {time}"), "%d %b %Y %H:%M:%S").ok()
}

/// Fail unless curl and xz are installed (before any slow work).
pub fn require_tools() -> Result<()> {
    crate::host::cmd::require(&["curl", "xz"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_stamps() {
        assert_eq!(snapshot_stamp("Sat, 10 May 2025 20:13:40 UTC").as_deref(), Some("20250511T021340Z"));
        assert_eq!(snapshot_stamp("Wed, 31 Dec 2025 19:00:00 UTC").as_deref(), Some("20260101T010000Z"));
        assert_eq!(snapshot_stamp("Thu, 29 Feb 2024 01:02:03 UTC").as_deref(), Some("20240229T070203Z"));
        assert_eq!(snapshot_stamp("garbage"), None);
    }

    #[test]
    fn index_finds_versions_and_sha_mismatches() {
        let p = |n: &str, v: &str, sha: &str| LockedPackage {
            name: n.into(),
            version: v.into(),
            architecture: "amd64".into(),
            sha256: sha.into(),
            filename: format!("pool/{n}.deb"),
            suite: None,
        };
        let (a, b, c) = (p("a", "1", "aa"), p("b", "2", "bb"), p("c", "0.0-kiln-missing", "cc"));
        let want = [&a, &b, &c];
        let keys: HashSet<(&str, &str, &str)> =
            want.iter().map(|p| (p.name.as_str(), p.version.as_str(), p.architecture.as_str())).collect();
        let mut index = Index::default();
        index.add("Package: a\nVersion: 1\nArchitecture: amd64\nSHA256: aa\n\nPackage: b\nVersion: 2\nArchitecture: amd64\nSHA256: xx\n\nPackage: c\nVersion: 3\nArchitecture: amd64\nSHA256: cc\n", &keys);
        assert_eq!(index.stanza(&a), Some("Package: a\nVersion: 1\nArchitecture: amd64\nSHA256: aa\n"));
        let problems = index.unavailable(&want);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("b 2 (amd64) is on the mirror with another sha256"), "{problems:?}");
        assert_eq!(problems[1], "c 0.0-kiln-missing (amd64) is not on the mirror");
    }
}
