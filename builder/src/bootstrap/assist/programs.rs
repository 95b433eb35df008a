//! The arch-neutral programs native help offers, and which of them a tools tree has.
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// How a native program is used.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    /// Only through PATH (programs whose packages are unpacked after the essential phase while
    /// the bootstrap still installs, or which must never replace the root's own file).
    Path,
    /// Also bind-mounted over the root's copy once that is installed.
    Bind,
    /// A dpkg program that takes the architecture from the database it works on, but only with
    /// `--root` (from `arch-native`; with the default root it would be the host's): in PATH
    /// as `assist-rooted.sh`, which runs the native one with `--root=/`.
    Rooted,
}

/// Arch-neutral programs: their output does not depend on the machine they run on. Not here:
/// anything that reports or depends on the architecture (uname, arch, ldconfig, ldd, gcc; the
/// dpkg programs only as `Kind::Rooted`), bash (its $HOSTTYPE), and anything mkinitramfs copies into an initramfs (kmod, busybox,
/// udevadm). perl (debconf, deb-systemd-helper, adduser) runs natively with its x86_64 module
/// directories renamed into the tools tree, where perl-base's XS modules are; the root's
/// pure-perl modules (same source version) are used as they are. A maintainer script that needs
/// an XS module beyond perl-base fails natively; the bootstrap then runs again fully emulated.
/// Each with its Debian package (`packages`).
pub(super) const PROGRAMS: &[(&str, Kind, &str)] = &[
    ("dash", Kind::Bind, "dash"),
    ("sed", Kind::Bind, "sed"),
    ("grep", Kind::Bind, "grep"),
    ("cat", Kind::Bind, "coreutils"),
    ("cp", Kind::Bind, "coreutils"),
    ("mv", Kind::Bind, "coreutils"),
    ("ln", Kind::Bind, "coreutils"),
    ("rm", Kind::Bind, "coreutils"),
    ("mkdir", Kind::Bind, "coreutils"),
    ("rmdir", Kind::Bind, "coreutils"),
    ("chmod", Kind::Bind, "coreutils"),
    ("chown", Kind::Bind, "coreutils"),
    ("chgrp", Kind::Bind, "coreutils"),
    ("touch", Kind::Bind, "coreutils"),
    ("readlink", Kind::Bind, "coreutils"),
    ("realpath", Kind::Bind, "coreutils"),
    ("basename", Kind::Bind, "coreutils"),
    ("dirname", Kind::Bind, "coreutils"),
    ("sort", Kind::Bind, "coreutils"),
    ("uniq", Kind::Bind, "coreutils"),
    ("tsort", Kind::Bind, "coreutils"),
    ("tr", Kind::Bind, "coreutils"),
    ("head", Kind::Bind, "coreutils"),
    ("tail", Kind::Bind, "coreutils"),
    ("cut", Kind::Bind, "coreutils"),
    ("wc", Kind::Bind, "coreutils"),
    ("tee", Kind::Bind, "coreutils"),
    ("test", Kind::Bind, "coreutils"),
    ("sync", Kind::Bind, "coreutils"),
    ("[", Kind::Bind, "coreutils"),
    ("ls", Kind::Bind, "coreutils"),
    ("stat", Kind::Bind, "coreutils"),
    ("mktemp", Kind::Bind, "coreutils"),
    ("install", Kind::Bind, "coreutils"),
    ("comm", Kind::Bind, "coreutils"),
    ("od", Kind::Bind, "coreutils"),
    ("expr", Kind::Bind, "coreutils"),
    ("env", Kind::Bind, "coreutils"),
    ("md5sum", Kind::Bind, "coreutils"),
    ("sha256sum", Kind::Bind, "coreutils"),
    ("find", Kind::Bind, "findutils"),
    ("xargs", Kind::Bind, "findutils"),
    ("cmp", Kind::Bind, "diffutils"),
    ("diff", Kind::Bind, "diffutils"),
    ("mawk", Kind::Bind, "mawk"),
    ("run-parts", Kind::Bind, "debianutils"),
    ("which", Kind::Bind, "debianutils"),
    ("perl", Kind::Bind, "perl-base"),
    ("tar", Kind::Bind, "tar"),
    ("gzip", Kind::Bind, "gzip"),
    ("zstd", Kind::Bind, "zstd"),
    ("cpio", Kind::Bind, "cpio"),
    ("update-alternatives", Kind::Path, "dpkg"),
    ("openssl", Kind::Path, "openssl"),
    ("depmod", Kind::Path, "kmod"),
    ("dpkg-deb", Kind::Path, "dpkg"),
    // dpkg asks it of every .deb it unpacks (is this part of a split package?).
    ("dpkg-split", Kind::Path, "dpkg"),
    ("dpkg", Kind::Path, "dpkg"),
    ("dpkg-query", Kind::Rooted, "dpkg"),
    ("dpkg-divert", Kind::Rooted, "dpkg"),
    ("dpkg-trigger", Kind::Rooted, "dpkg"),
];

/// Programs native help runs itself, from the assist's `libexec/` (never offered to maintainer
/// scripts, so their version need not match the root's), each with its package: the dpkg
/// wrapper's shell, and mount for the binds the wrapper makes between unpacking and configuring
/// the essential packages.
pub(super) const HELPERS: &[(&str, &str)] = &[("dash", "dash"), ("mount", "mount")];

/// The packages of `PROGRAMS` and `HELPERS`, each once: a tools tree for native help has them.
pub fn packages() -> Vec<&'static str> {
    let mut pkgs: Vec<&str> = PROGRAMS.iter().map(|p| p.2).chain(HELPERS.iter().map(|h| h.1)).collect();
    pkgs.sort();
    pkgs.dedup();
    pkgs
}

/// A program of `PROGRAMS` that the tools tree has, with its package's source version.
pub(super) struct Offered {
    pub(super) name: &'static str,
    /// Relative to the tree (`usr/bin/sed`).
    pub(super) path: String,
    pub(super) kind: Kind,
    package: String,
    version: String,
}

impl Offered {
    /// Its line in the assist's `list`, which `assist.sh` reads:
    /// `program path kind package source-version`.
    fn line(&self) -> String {
        let kind = match self.kind {
            Kind::Bind => "bind",
            Kind::Path => "path",
            Kind::Rooted => "rooted",
        };
        format!("{} {} {kind} {} {}\n", self.name, self.path, self.package, self.version)
    }
}

pub(super) struct ProgramList {
    pub(super) programs: Vec<Offered>,
}

impl ProgramList {
    /// The assist's `list` file.
    pub(super) fn text(&self) -> String {
        self.programs.iter().map(Offered::line).collect()
    }
}

/// The programs of `PROGRAMS` the tools tree has, each with its owner and source version.
pub(super) fn program_list(tree: &Path) -> Result<ProgramList> {
    let owners = owners(tree)?;
    let versions: BTreeMap<String, String> =
        crate::debian::packages::installed(tree)?.into_iter().map(|p| (p.name, p.source_version)).collect();
    let mut programs = Vec::new();
    for &(name, kind, _) in PROGRAMS {
        let Some(path) =
            ["usr/bin", "usr/sbin"].iter().map(|d| format!("{d}/{name}")).find(|p| is_program(&tree.join(p)))
        else {
            continue;
        };
        let Some(package) = [format!("/{path}"), format!("/{}", path.trim_start_matches("usr/"))]
            .iter()
            .find_map(|p| owners.get(p))
            .cloned()
        else {
            continue;
        };
        let Some(version) = versions.get(&package).cloned() else { continue };
        programs.push(Offered { name, path, kind, package, version });
    }
    Ok(ProgramList { programs })
}

/// A regular file, or a relative symbolic link (depmod → kmod); an absolute link would leave the
/// tree (alternatives) and resolve to the root's own program.
fn is_program(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => true,
        Ok(m) if m.is_symlink() => std::fs::read_link(path).is_ok_and(|t| t.is_relative()) && path.is_file(),
        _ => false,
    }
}

/// Installed path → package, from the tools tree's dpkg file lists.
fn owners(tree: &Path) -> Result<BTreeMap<String, String>> {
    let info = tree.join("var/lib/dpkg/info");
    let mut map = BTreeMap::new();
    for e in std::fs::read_dir(&info).with_context(|| format!("reading {}", info.display()))? {
        let p = e?.path();
        let Some(stem) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".list")) else { continue };
        let pkg = stem.split(':').next().unwrap_or(stem).to_string();
        for line in std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?.lines() {
            map.insert(line.to_string(), pkg.clone());
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_unique_and_never_architecture_revealing() {
        let mut names: Vec<&str> = PROGRAMS.iter().map(|(n, ..)| *n).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a program is listed twice");
        for banned in ["uname", "arch", "ldconfig", "ldd", "bash", "kmod", "busybox"] {
            assert!(!names.contains(&banned), "{banned} must stay emulated");
        }
        // The dpkg programs that print the architecture do so only with the root's --root.
        for rooted in ["dpkg-query", "dpkg-divert", "dpkg-trigger"] {
            assert!(PROGRAMS.iter().any(|p| p.0 == rooted && p.1 == Kind::Rooted), "{rooted} runs with --root=/");
        }
    }

    #[test]
    fn program_list_names_owner_and_source_version() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        for d in ["usr/bin", "var/lib/dpkg/info"] {
            std::fs::create_dir_all(t.join(d)).unwrap();
        }
        std::fs::write(t.join("usr/bin/sed"), "").unwrap();
        std::fs::write(t.join("usr/bin/uname"), "").unwrap();
        std::fs::write(t.join("var/lib/dpkg/info/sed.list"), "/.\n/bin\n/bin/sed\n").unwrap();
        std::fs::write(t.join("var/lib/dpkg/info/coreutils.list"), "/usr/bin/uname\n").unwrap();
        std::fs::write(
            t.join("var/lib/dpkg/status"),
            "Package: sed\nStatus: install ok installed\nArchitecture: amd64\nSource: sed (4.9-2)\nVersion: 4.9-2+b1\n\n\
             Package: coreutils\nStatus: install ok installed\nArchitecture: amd64\nVersion: 9.7-3\n",
        )
        .unwrap();
        let list = program_list(t).unwrap();
        assert_eq!(list.text(), "sed usr/bin/sed bind sed 4.9-2\n");
        assert_eq!(list.programs.len(), 1);
    }
}
