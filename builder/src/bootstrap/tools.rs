//! The tool that writes image bytes (mke2fs) runs from a pinned tools tree, not from
//! the host, so that an image's bytes do not depend on the host's tool versions (Debian 12's
//! e2fsprogs 1.47.0 is not reproducible; 1.47.2 with SOURCE_DATE_EPOCH is). The tree holds Debian
//! packages of the host's architecture, put there once by mmdebstrap and cached;
//! its programs run through the tree's own dynamic loader and libraries (no chroot, no mounts).
//!
//! The tree's packages and their dependencies are only unpacked (mmdebstrap's extract variant:
//! no maintainer script runs; a third of a minbase tree's time), and kiln writes the dpkg
//! database from the .debs: the status from their control files, each package's file list from
//! its data. For a build of the host's own architecture the tree holds the image tools
//! (`Purpose::Image`); native help for a foreign bootstrap also needs the arch-neutral programs
//! it runs inside the root, which it finds through that database (`Purpose::Assist`).
use crate::bootstrap::mmdebstrap::{CacheKey, Kind, Mmdebstrap, Variant};
use crate::debian::debcache::DebCache;
use crate::debian::source::Source;
use crate::host::cache::Cache;
use crate::host::cmd::Cmd;
use crate::host::work::WorkDir;
use crate::recipe::arch::Arch;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::plan::{TOOLS_PACKAGES, TOOLS_SUITE};

/// Bump when the tools tree's recipe changes.
const TOOLS_FORMAT: u32 = 6;

/// What a build needs of its tools tree, which decides how it is made and cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// The image tools (mke2fs), run from outside the tree.
    Image,
    /// Also the programs of native help for a foreign bootstrap (`assist/`).
    Assist,
}

impl Purpose {
    /// The purpose for a build of `target` on this host. It depends on the host and the target
    /// only (not on `--full-emulation`), so that a lock's tools packages fit every build of it.
    pub fn of(target: Arch) -> Purpose {
        match crate::bootstrap::assist::applies(target) {
            true => Purpose::Assist,
            false => Purpose::Image,
        }
    }

    /// The packages to unpack (with their dependencies).
    fn packages(self) -> Vec<String> {
        let mut pkgs: Vec<&str> = TOOLS_PACKAGES.to_vec();
        if self == Purpose::Assist {
            pkgs.extend(crate::bootstrap::assist::packages().into_iter().filter(|p| !TOOLS_PACKAGES.contains(p)));
        }
        pkgs.into_iter().map(String::from).collect()
    }
}

/// Where image-writing tools come from.
#[derive(Debug, Clone)]
pub enum Tools {
    /// The host's own programs (`--tools host`): faster to start, not host-independent.
    Host,
    /// A pinned tools tree.
    Tree { root: PathBuf, arch: Arch },
}

#[derive(Serialize)]
struct ToolsInputs<'a> {
    suite: &'a str,
    mirror: &'a str,
    arch: &'a str,
    purpose: Purpose,
    /// The archives besides the suite (updates, security).
    archives: Vec<String>,
    /// What the purpose unpacks (native help's programs change with kiln).
    packages: Vec<String>,
    /// Hash of the locked package set, when pinned to a lock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pins: Option<String>,
}

impl Tools {
    /// Where the cache keeps the tools tree of `source` for `purpose`.
    pub fn cache_dir(cache: &Path, source: &Source, purpose: Purpose) -> Result<PathBuf> {
        let inputs = ToolsInputs {
            suite: TOOLS_SUITE,
            mirror: &source.mirror,
            arch: &source.arch,
            purpose,
            archives: source.extra.iter().map(|a| format!("{} {}", a.uri, a.suite)).collect(),
            packages: purpose.packages(),
            pins: source.pins_hash(),
        };
        Ok(CacheKey::new(Kind::Tools, TOOLS_FORMAT, &inputs).dir(cache))
    }

    pub fn is_cached(cache: &Path, source: &Source, purpose: Purpose) -> Result<bool> {
        Ok(Self::cache_dir(cache, source, purpose)?.join("usr/sbin/mke2fs").is_file())
    }

    /// The tools tree for this host from `cache` (made and stored there when missing; with
    /// `reuse` false made afresh in `work` and not stored). Offline, it is made from the .deb
    /// cache, which needs the lock's tools packages.
    pub fn tree(
        cache: &Path,
        source: &Source,
        purpose: Purpose,
        work: &WorkDir,
        debs: &DebCache,
        reuse: bool,
    ) -> Result<Tools> {
        let arch = crate::debian::pinning::host_arch()?;
        let root = Self::cache_dir(cache, source, purpose)?;
        if reuse && root.join("usr/sbin/mke2fs").is_file() {
            return Ok(Tools::Tree { root, arch });
        }
        // One build makes the entry; another one wanting it waits here, then reuses it.
        let _lock = if reuse { Some(Cache::lock_entry(&root)?) } else { None };
        if reuse && root.join("usr/sbin/mke2fs").is_file() {
            return Ok(Tools::Tree { root, arch });
        }
        if source.offline && source.pins.is_none() {
            bail!("the tools tree (mke2fs) is not in the cache {} and cannot be made offline: the lock has no tools packages for {}; run `kiln fetch` on an {} host while online, or build with --host-tools", cache.display(), source.arch, source.arch);
        }
        if reuse {
            // The one line that says this build makes the entry (tests count them).
            eprintln!("kiln: bootstrapping {} (mmdebstrap)", root.display());
        }
        let fresh = work.join("tools");
        let src = source.mmdebstrap_args(debs, work, "tools")?;
        let include = purpose.packages();
        let run = Mmdebstrap {
            variant: Variant::Extract,
            arch: &source.arch,
            include: &include,
            aptopts: &[],
            dpkgopts: &[],
            source: &src,
            hooks: Vec::new(),
            source_date_epoch: None,
            qemu_cpu: None,
            private_path: None,
            suite: TOOLS_SUITE,
            target: &fresh,
            extra_lines: &[],
            verbose: false,
        };
        run.command(work)?
            .run()
            .with_context(|| format!("bootstrapping the tools tree (Debian {TOOLS_SUITE}: {})", include.join(", ")))?;
        dpkg_database(&fresh)?;
        debs.absorb(&fresh).context("moving the tools tree's .debs into the cache")?;
        source.verify(&crate::debian::packages::installed(&fresh)?).context("checking the tools tree")?;
        if !reuse {
            return Ok(Tools::Tree { root: fresh, arch });
        }
        crate::host::cache::store(&fresh, &root).context("storing the tools tree in the cache")?;
        Ok(Tools::Tree { root, arch })
    }

    /// The tree's directory (None for host tools).
    pub fn root(&self) -> Option<&Path> {
        match self {
            Tools::Host => None,
            Tools::Tree { root, .. } => Some(root),
        }
    }

    /// A command running `program` (a path inside the tree, e.g. `usr/sbin/mke2fs`).
    pub fn cmd(&self, program: &str) -> Result<Cmd> {
        match self {
            Tools::Host => {
                let name = Path::new(program).file_name().context("program name")?;
                Ok(Cmd::new(name))
            }
            Tools::Tree { root, arch } => {
                let exe = root.join(program);
                if !exe.is_file() {
                    bail!("{} is missing from the tools tree {}", program, root.display());
                }
                let triplet = arch.multiarch_triplet();
                let libs = [root.join("usr/lib").join(triplet), root.join("lib").join(triplet)];
                let libs = std::env::join_paths(libs.iter()).context("library path")?;
                Ok(Cmd::new(root.join(arch.dynamic_loader()))
                    .arg("--library-path")
                    .arg(libs)
                    .arg(exe)
                    .env("MKE2FS_CONFIG", root.join("etc/mke2fs.conf")))
            }
        }
    }

    /// "tree <path>" or "host", for logs and build records.
    pub fn describe(&self) -> String {
        match self {
            Tools::Host => "host".into(),
            Tools::Tree { root, .. } => format!("tree {}", root.display()),
        }
    }

    /// Version of a Debian package in the tools tree (or on the host), for build records.
    pub fn package_version(&self, package: &str) -> Option<String> {
        let status = match self {
            Tools::Host => Path::new("/").to_path_buf(),
            Tools::Tree { root, .. } => root.clone(),
        };
        let pkgs = crate::debian::packages::installed(&status).ok()?;
        pkgs.into_iter().find(|p| p.name == package).map(|p| p.version)
    }
}

/// For a tree of unpacked packages (`Variant::Extract`): the `/bin`, `/lib`… links of a merged
/// /usr (base-files makes them in an installed system), and the dpkg database of an installed
/// system, made from the .debs apt downloaded: each package's status stanza as dpkg would record
/// it (its control file, `Status: install ok installed`; sorted by name) and its file list
/// (`info/PACKAGE.list`).
fn dpkg_database(tree: &Path) -> Result<()> {
    for dir in ["bin", "sbin", "lib", "lib64"] {
        if tree.join("usr").join(dir).is_dir() && std::fs::symlink_metadata(tree.join(dir)).is_err() {
            std::os::unix::fs::symlink(format!("usr/{dir}"), tree.join(dir))
                .with_context(|| format!("linking /{dir} in {}", tree.display()))?;
        }
    }
    let debs = crate::debian::debcache::downloaded(tree);
    let info = tree.join("var/lib/dpkg/info");
    std::fs::create_dir_all(&info).with_context(|| format!("creating {}", info.display()))?;
    // Listing a package decompresses its data: a thread per core (up to four) shortens the time
    // a foreign root's bootstrap waits for this tree at its extract hook, idle meanwhile.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    let chunk = debs.len().div_ceil(workers).max(1);
    let done: Vec<Result<Vec<(String, String)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = debs
            .chunks(chunk)
            .map(|part| s.spawn(|| part.iter().map(|deb| record_package(deb, &info)).collect::<Result<Vec<_>>>()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a listing thread panicked"))))
            .collect()
    });
    let mut stanzas = std::collections::BTreeMap::new();
    for part in done {
        stanzas.extend(part?);
    }
    anyhow::ensure!(!stanzas.is_empty(), "no .deb was unpacked into {}", tree.display());
    let status = stanzas.into_values().collect::<Vec<_>>().join("\n");
    std::fs::write(tree.join("var/lib/dpkg/status"), status).context("writing the tools tree's dpkg status")
}

/// Write `deb`'s file list into `info`; its name and status stanza.
fn record_package(deb: &Path, info: &Path) -> Result<(String, String)> {
    let control = Cmd::new("dpkg-deb").arg("--field").arg(deb).output()?;
    let mut lines = control.lines();
    let first = lines.next().unwrap_or_default();
    let Some(name) = first.strip_prefix("Package: ") else {
        bail!("{} has no Package field first in its control file", deb.display());
    };
    let rest: Vec<&str> = lines.collect();
    let list = deb_paths(deb)?.join("\n") + "\n";
    std::fs::write(info.join(format!("{name}.list")), list).with_context(|| format!("writing {name}.list"))?;
    Ok((name.to_string(), format!("{first}\nStatus: install ok installed\n{}\n", rest.join("\n"))))
}

/// The paths a .deb installs, as dpkg lists them (`/.`, `/usr`, `/usr/bin/sed`, …).
fn deb_paths(deb: &Path) -> Result<Vec<String>> {
    let mut run =
        Cmd::new("dpkg-deb").arg("--fsys-tarfile").arg(deb).spawn(Stdio::null(), Stdio::piped(), Stdio::inherit())?;
    let out = run.child.stdout.take().context("dpkg-deb's output")?;
    let names = crate::bootstrap::tarfilter::names(std::io::BufReader::new(out));
    let status = run.wait()?;
    anyhow::ensure!(status.success(), "dpkg-deb --fsys-tarfile {} failed ({status})", deb.display());
    Ok(names
        .with_context(|| format!("listing {}", deb.display()))?
        .into_iter()
        .map(|n| match n.strip_prefix('.') {
            Some("" | "/") => "/.".to_string(),
            Some(path) => path.to_string(),
            None => n,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    /// The dpkg database written for unpacked packages: status stanzas and file lists, as
    /// native help reads them (assist/mod.rs: owners, versions).
    #[test]
    fn dpkg_database_of_unpacked_packages() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("pkg");
        std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
        std::fs::create_dir_all(pkg.join("usr/bin")).unwrap();
        std::fs::write(
            pkg.join("DEBIAN/control"),
            "Package: sed\nSource: sed (4.9-2)\nVersion: 4.9-2+b1\nArchitecture: amd64\nMaintainer: m <m@example.org>\nDescription: d\n",
        )
        .unwrap();
        std::fs::write(pkg.join("usr/bin/sed"), "").unwrap();
        let tree = dir.path().join("tree");
        let archives = tree.join("var/cache/apt/archives");
        std::fs::create_dir_all(&archives).unwrap();
        std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
        crate::host::cmd::Cmd::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&pkg)
            .arg(archives.join("sed_4.9-2+b1_amd64.deb"))
            .run()
            .expect("dpkg-deb (Debian's dpkg) builds the test package");

        super::dpkg_database(&tree).unwrap();
        let list = std::fs::read_to_string(tree.join("var/lib/dpkg/info/sed.list")).unwrap();
        assert_eq!(list, "/.\n/usr\n/usr/bin\n/usr/bin/sed\n");
        let status = std::fs::read_to_string(tree.join("var/lib/dpkg/status")).unwrap();
        assert!(status.starts_with("Package: sed\nStatus: install ok installed\n"), "{status}");
        assert!(std::fs::read_link(tree.join("bin")).unwrap().to_str() == Some("usr/bin"));
        let pkgs = crate::debian::packages::installed(&tree).unwrap();
        assert_eq!((pkgs[0].name.as_str(), pkgs[0].version.as_str()), ("sed", "4.9-2+b1"));
        assert_eq!(pkgs[0].source_version, "4.9-2");
    }
}
