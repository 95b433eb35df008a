//! The Debian packages installed in a root: what dpkg says is installed, joined with the sha256
//! and pool path of each .deb from apt's package lists (kept through the bootstrap for this).
//! Used by the SBOM and by lock files.
use crate::debian::deb822;
use crate::lock::LockedPackage;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// Source package name (the binary's name when dpkg records none).
    pub source: String,
    /// Source package version (the binary's version when dpkg records none).
    pub source_version: String,
    /// sha256 of the .deb, when apt's lists know it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Path of the .deb below the mirror (`pool/main/...`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// The suite of the apt list that had the .deb (`trixie-security`), when known. Not
    /// serialised: offline builds see every .deb in one local suite.
    #[serde(skip)]
    pub suite: Option<String>,
}

/// Installed packages of the root at `root`, sorted by name and architecture.
pub fn installed(root: &Path) -> Result<Vec<Package>> {
    let status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).context("reading the root's dpkg status")?;
    let installed: Vec<_> = deb822::paragraphs(&status)
        .filter(|p| p.get("Status").is_some_and(|s| s.split_whitespace().nth(2) == Some("installed")))
        .collect();
    let names: HashSet<&str> = installed.iter().filter_map(|p| p.get("Package")).collect();
    let known = list_index(root, &names)?;
    let mut pkgs: Vec<Package> = installed
        .into_iter()
        .map(|p| {
            let get = |k: &str| p.get(k).unwrap_or_default().to_string();
            let (name, version, architecture) = (get("Package"), get("Version"), get("Architecture"));
            let (source, source_version) = match p.get("Source").map(|s| s.split_once(' ').unwrap_or((s, ""))) {
                Some((n, v)) if !v.is_empty() => {
                    (n.to_string(), v.trim().trim_start_matches('(').trim_end_matches(')').to_string())
                }
                Some((n, _)) => (n.to_string(), version.clone()),
                None => (name.clone(), version.clone()),
            };
            let hit = known.get(&(name.clone(), version.clone(), architecture.clone()));
            Package {
                sha256: hit.map(|h| h.0.clone()),
                filename: hit.map(|h| h.1.clone()),
                suite: hit.and_then(|h| h.2.clone()),
                name,
                version,
                architecture,
                source,
                source_version,
            }
        })
        .collect();
    pkgs.sort();
    Ok(pkgs)
}

/// (name, version, arch) → (sha256, filename, suite of the list).
type ListIndex = BTreeMap<(String, String, String), (String, String, Option<String>)>;

/// The suite of an apt list file's name (`deb.debian.org_debian-security_dists_trixie-security_main_binary-amd64_Packages`):
/// the part after `_dists_` (suite names have no `_`).
pub fn list_suite(file_name: &str) -> Option<String> {
    let (_, rest) = file_name.rsplit_once("_dists_")?;
    rest.split('_').next().filter(|s| !s.is_empty()).map(str::to_string)
}

/// The [`ListIndex`] of every `*_Packages` list in the root, for the packages named in `names`
/// (a list has tens of thousands of stanzas: the others are passed over by their first line).
fn list_index(root: &Path, names: &HashSet<&str>) -> Result<ListIndex> {
    let mut index = BTreeMap::new();
    for f in list_files(root, "_Packages")? {
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let suite = f.file_name().and_then(|n| list_suite(&n.to_string_lossy()));
        let wanted = deb822::raw_paragraphs(&text).filter(|raw| {
            // apt's lists begin each stanza with `Package:`; anything else is parsed in full.
            raw.lines().next().and_then(|l| l.strip_prefix("Package:")).is_none_or(|n| names.contains(n.trim()))
        });
        for p in wanted.filter_map(|raw| deb822::paragraphs(raw).next()) {
            if let (Some(n), Some(v), Some(a), Some(sha), Some(file)) =
                (p.get("Package"), p.get("Version"), p.get("Architecture"), p.get("SHA256"), p.get("Filename"))
            {
                index
                    .entry((n.to_string(), v.to_string(), a.to_string()))
                    .or_insert_with(|| (sha.to_ascii_lowercase(), file.to_string(), suite.clone()));
            }
        }
    }
    Ok(index)
}

/// The Packages stanzas of the root's apt lists whose .deb has one of the sha256s in `want`,
/// by sha256: what a local repository needs to offer exactly those .debs as the mirror did.
pub fn list_stanzas(root: &Path, want: &std::collections::HashSet<String>) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for f in list_files(root, "_Packages")? {
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        for p in deb822::raw_paragraphs(&text) {
            if let Some(sha) = deb822::field(p, "SHA256").filter(|s| want.contains(*s)) {
                out.entry(sha.to_string()).or_insert_with(|| format!("{p}\n"));
            }
        }
    }
    Ok(out)
}

/// The latest `Date:` of the Release files in the root's apt lists: a snapshot of the archives
/// taken after it has every package they offered (the security archive's is the newest).
pub fn archive_date(root: &Path) -> Result<Option<String>> {
    let mut latest: Option<(chrono::NaiveDateTime, String)> = None;
    for f in list_files(root, "Release")? {
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        if let Some(d) = text.lines().find_map(|l| l.strip_prefix("Date:")).map(str::trim) {
            let when = crate::debian::mirror::release_date(d).unwrap_or_default();
            if latest.as_ref().is_none_or(|l| when > l.0) {
                latest = Some((when, d.to_string()));
            }
        }
    }
    Ok(latest.map(|l| l.1))
}

/// Files of the root's apt lists whose names end in `suffix`, sorted.
fn list_files(root: &Path, suffix: &str) -> Result<Vec<std::path::PathBuf>> {
    let dir = root.join("var/lib/apt/lists");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(Vec::new()) };
    let mut files: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(suffix)))
        .collect();
    files.sort();
    Ok(files)
}

impl Package {
    /// The lock's record of an installed package; fails when apt's lists did not know its .deb.
    pub fn locked(&self) -> Result<LockedPackage> {
        let p = self;
        let (Some(sha256), Some(filename)) = (&p.sha256, &p.filename) else {
            bail!(
                "no .deb checksum known for the installed package {} {} ({}): it is not in the root's apt lists",
                p.name,
                p.version,
                p.architecture
            );
        };
        Ok(LockedPackage {
            name: p.name.clone(),
            version: p.version.clone(),
            architecture: p.architecture.clone(),
            sha256: sha256.clone(),
            filename: filename.clone(),
            suite: p.suite.clone(),
        })
    }
}

/// Turn installed packages into locked ones, sorted.
pub fn locked_set(installed: &[Package]) -> Result<Vec<LockedPackage>> {
    let mut out = installed.iter().map(Package::locked).collect::<Result<Vec<_>>>()?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_status_with_lists() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("var/lib/dpkg")).unwrap();
        std::fs::create_dir_all(r.join("var/lib/apt/lists")).unwrap();
        std::fs::write(
            r.join("var/lib/dpkg/status"),
            "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nSource: zlib (1:1.3)\nVersion: 1:1.3-1\nDescription: x\n continued\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\nArchitecture: amd64\n\nPackage: bash\nStatus: install ok installed\nVersion: 5.2-1\nArchitecture: amd64\n",
        )
        .unwrap();
        std::fs::write(
            r.join("var/lib/apt/lists/m_debian_dists_trixie_main_binary-amd64_Packages"),
            "Package: bash\nVersion: 5.2-1\nArchitecture: amd64\nFilename: pool/main/b/bash/bash_5.2-1_amd64.deb\nSHA256: abc\n\nPackage: bash\nVersion: 5.1-1\nArchitecture: amd64\nFilename: old\nSHA256: old\n",
        )
        .unwrap();
        let pkgs = installed(r).unwrap();
        assert_eq!(pkgs.len(), 2);
        assert_eq!(
            (pkgs[0].name.as_str(), pkgs[0].sha256.as_deref(), pkgs[0].filename.as_deref(), pkgs[0].suite.as_deref()),
            ("bash", Some("abc"), Some("pool/main/b/bash/bash_5.2-1_amd64.deb"), Some("trixie"))
        );
        assert_eq!(
            (
                pkgs[1].name.as_str(),
                pkgs[1].source.as_str(),
                pkgs[1].source_version.as_str(),
                pkgs[1].sha256.as_deref()
            ),
            ("zlib1g", "zlib", "1:1.3", None)
        );
    }

    #[test]
    fn suites_of_list_files_and_the_latest_release_date() {
        let name = "deb.debian.org_debian-security_dists_trixie-security_main_binary-amd64_Packages";
        assert_eq!(list_suite(name).as_deref(), Some("trixie-security"));
        assert_eq!(list_suite("m_debian_dists_trixie-updates_InRelease").as_deref(), Some("trixie-updates"));
        assert_eq!(list_suite("lock"), None);
        let root = tempfile::tempdir().unwrap();
        let lists = root.path().join("var/lib/apt/lists");
        std::fs::create_dir_all(&lists).unwrap();
        for (suite, date) in [
            ("trixie", "Sat, 10 May 2025 20:13:40 UTC"),
            ("trixie-security", "Mon, 01 Dec 2025 08:00:00 UTC"),
            ("trixie-updates", "Sun, 30 Nov 2025 20:00:00 UTC"),
        ] {
            std::fs::write(
                lists.join(format!("m_debian_dists_{suite}_InRelease")),
                format!("Origin: Debian\nDate: {date}\n"),
            )
            .unwrap();
        }
        assert_eq!(archive_date(root.path()).unwrap().as_deref(), Some("Mon, 01 Dec 2025 08:00:00 UTC"));
    }
}
