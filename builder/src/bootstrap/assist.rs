//! Native help for foreign-architecture bootstraps.
//!
//! Bootstrapping an arm64 root on an x86_64 host runs the root's own dpkg and maintainer scripts
//! under qemu-user, and nearly all of that time goes to starting emulated programs: sed, cp and
//! basename hundreds of times per certificate bundle, dpkg itself for every package, the
//! decompression of every .deb. Those programs do not depend on the architecture they run on:
//! the x86_64 build of the same Debian source version gives the same output. The tools tree
//! (trixie, this host's architecture) has them, so during the bootstrap:
//!
//! - dpkg runs natively on the root from outside it (`--root`, with the root's
//!   `arch-native`), so unpacking and the package database are native; maintainer scripts are
//!   still chrooted into the root and run under emulation;
//! - a directory first in dpkg's PATH holds native builds of arch-neutral programs (coreutils,
//!   sed, grep, find, openssl, depmod, dpkg-deb, …);
//! - once the essential packages are installed, the same programs are bind-mounted over the
//!   root's copies, so `#!/bin/sh` scripts run a native dash and mkinitramfs (which sets its own
//!   PATH) finds native tools.
//!
//! A program is used only when apt's candidate for its package has the same source version as
//! the tools tree's; otherwise it stays emulated. The last customize hook removes every trace
//! (mounts, loader links, the apt setting); `scripts/repro-check --arch aarch64
//! --full-emulation-b` (in CI) checks that the image is byte-identical to one whose bootstrap
//! ran fully emulated. The hooks run in a private mount namespace, so an interrupted bootstrap
//! leaves nothing mounted.
use crate::bootstrap::hooks::{self, Hook, Phase};
use crate::bootstrap::tools::Tools;
use crate::host::work::WorkDir;
use crate::recipe::arch::Arch;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// dpkg's wrapper in the assist's `bin/`: dpkg on the root from outside it, or the root's own.
const DPKG_WRAPPER: &str = include_str!("assist-dpkg.sh");

/// py3compile in the assist's `bin/`, first in dpkg's PATH: maintainer scripts compile nothing.
const PY3COMPILE: &str = include_str!("assist-py3compile.sh");

/// Where the native programs appear inside the root while it is bootstrapped.
pub const PATH_DIR: &str = "/.kiln-assist/bin";

/// What a hook running `assist.sh` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Extract hook: choose the programs, mount the assist, put it first in dpkg's PATH.
    Setup,
    /// Essential hook and first customize hook: bind native programs over the root's copies.
    Bind,
    /// Last customize hook: undo everything.
    Teardown,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Setup => "setup",
            Action::Bind => "bind",
            Action::Teardown => "teardown",
        }
    }
}

/// How a native program is used.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Only through PATH (programs whose packages are unpacked after the essential phase while
    /// the bootstrap still installs, or which must never replace the root's own file).
    Path,
    /// Also bind-mounted over the root's copy once that is installed.
    Bind,
}

/// Arch-neutral programs: their output does not depend on the machine they run on. Not here:
/// anything that reports or depends on the architecture (uname, arch, ldconfig, ldd, gcc),
/// dpkg-query/dpkg-divert/dpkg-trigger (they name packages relative to the native architecture),
/// bash (its $HOSTTYPE), and anything mkinitramfs copies into an initramfs (kmod, busybox,
/// udevadm). perl (debconf, deb-systemd-helper, adduser) runs natively with its x86_64 module
/// directories renamed into the tools tree, where perl-base's XS modules are; the root's
/// pure-perl modules (same source version) are used as they are. A maintainer script that needs
/// an XS module beyond perl-base fails natively; the bootstrap then runs again fully emulated.
/// Each with its Debian package (`packages`).
const PROGRAMS: &[(&str, Kind, &str)] = &[
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
    ("dpkg", Kind::Path, "dpkg"),
];

/// The packages of `PROGRAMS`, each once: a tools tree for native help has them.
pub fn packages() -> Vec<&'static str> {
    let mut pkgs: Vec<&str> = PROGRAMS.iter().map(|p| p.2).collect();
    pkgs.sort();
    pkgs.dedup();
    pkgs
}

/// The x86_64 ELF interpreter the tools tree's programs name, and the path their copies name
/// instead (inside the mount, so the root needs no /lib64 or x86_64 library directory, which
/// mkinitramfs would copy into the initramfs).
const HOST_INTERP: &[u8] = b"/lib64/ld-linux-x86-64.so.2";
const ASSIST_INTERP: &[u8] = b"/.kiln-assist/ld.so";
/// The copy of the tools tree's loader looks for libraries in the mounted tools tree instead of
/// the root's x86_64 directories (and skips the root's arm64 ld.so.cache). Each path is replaced
/// by one of the same length (glibc keeps their lengths in a table); the assist directory has
/// the two library paths as links to the tree's library directory.
const LOADER_PATHS: &[(&[u8], &[u8])] = &[
    (b"/usr/lib/x86_64-linux-gnu/", b"/.kiln-assist/lib-x86-64g/"),
    (b"/lib/x86_64-linux-gnu/", b"/.kiln-assist/libx86g/"),
    (b"/etc/ld.so.cache", b"/.kiln-assist/nc"),
];

/// A prepared assist: its directory in the work directory (see `assist.sh` for the layout).
#[derive(Debug)]
pub struct Assist {
    dir: PathBuf,
    tree: PathBuf,
    arch: &'static str,
}

/// Native help for a bootstrap: a tools tree that is ready, or an assist whose tools tree
/// another thread is still making (`Assist::pending`; its extract hook waits for it).
#[derive(Clone, Copy)]
pub enum Help<'a> {
    Tools(&'a Tools),
    Pending(&'a Assist),
}

impl Assist {
    /// The assist for bootstrapping `target` with `tools`, or None when it does not apply: a
    /// native build, host tools instead of a tools tree, or a host other than x86_64.
    pub fn new(target: Arch, tools: &Tools, work: &WorkDir) -> Result<Option<Assist>> {
        let Some(tree) = tools.root() else { return Ok(None) };
        let Some(assist) = Assist::pending(target, tree, work)? else { return Ok(None) };
        assist.fill(tools)?;
        Ok(Some(assist))
    }

    /// The assist for bootstrapping `target` with the tools tree that will be at `tree`, before
    /// that tree exists: the bootstrap can start (mirror, download, extraction) while another
    /// thread makes the tree and then calls `fill` (or `fail`); until then `assist.sh setup`
    /// (the extract hook) waits. None when native help does not apply (see `new`).
    pub fn pending(target: Arch, tree: &Path, work: &WorkDir) -> Result<Option<Assist>> {
        if !applies(target) {
            return Ok(None);
        }
        let dir = work.join("assist");
        for d in ["bin", "libexec", "tree", "root"] {
            std::fs::create_dir_all(dir.join(d)).with_context(|| format!("creating {}", dir.join(d).display()))?;
        }
        Ok(Some(Assist { dir, tree: tree.to_path_buf(), arch: target.debian() }))
    }

    /// Copy the native programs out of the tools tree (which must be the one `pending` named)
    /// and tell the waiting extract hook to go on.
    pub fn fill(&self, tools: &Tools) -> Result<()> {
        let tree = tools.root().context("native help needs a tools tree")?;
        anyhow::ensure!(tree == self.tree, "the tools tree is {}, not {}", tree.display(), self.tree.display());
        let dir = &self.dir;
        let loader = tree.join("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
        let mut ld = std::fs::read(&loader).with_context(|| format!("reading {}", loader.display()))?;
        for (old, new) in LOADER_PATHS {
            replace_all(&mut ld, old, new)
                .with_context(|| format!("preparing {} to run inside the root", loader.display()))?;
        }
        write_executable(&dir.join("ld.so"), &ld)?;
        for link in ["lib-x86-64g", "libx86g"] {
            std::os::unix::fs::symlink("tree/usr/lib/x86_64-linux-gnu", dir.join(link))
                .with_context(|| format!("linking {}", dir.join(link).display()))?;
        }
        let list = program_list(tree)?;
        tracing::debug!("{} arch-neutral programs offered natively", list.count);
        for line in list.text.lines() {
            let mut f = line.split(' ');
            let (Some(name), Some(path)) = (f.next(), f.next()) else { continue };
            let to = if name == "dpkg" { dir.join("libexec/dpkg") } else { dir.join("bin").join(name) };
            native_copy(&tree.join(path), &to)?;
            if name == "perl" {
                // @INC's x86_64 directories (perl-base's XS modules) → the mounted tools tree.
                let mut perl = std::fs::read(&to).with_context(|| format!("reading {}", to.display()))?;
                replace_all(&mut perl, LOADER_PATHS[0].0, LOADER_PATHS[0].1)
                    .context("renaming perl's module directories")?;
                write_executable(&to, &perl)?;
            }
        }
        native_copy(&tree.join("usr/bin/dash"), &dir.join("libexec/dash"))?;
        write_executable(&dir.join("bin/dpkg"), DPKG_WRAPPER.as_bytes())?;
        write_executable(&dir.join("bin/py3compile"), PY3COMPILE.as_bytes())?;
        std::fs::write(dir.join("list"), &list.text).context("writing the assist's program list")?;
        std::fs::write(dir.join("ready"), b"").context("marking the assist ready")
    }

    /// Tell the waiting extract hook that the tools tree will not come (the bootstrap then fails
    /// at once instead of waiting).
    pub fn fail(&self) {
        let _ = std::fs::write(self.dir.join("failed"), b"");
    }

    /// Whether `fail` was called: a bootstrap that failed then is not retried without help.
    pub fn failed(&self) -> bool {
        self.dir.join("failed").exists()
    }

    /// The mmdebstrap hook running `assist.sh ACTION` at `phase` (setup: extract hook; bind:
    /// essential hook and first customize hook; teardown: last customize hook).
    pub fn hook(&self, phase: Phase, action: Action) -> Hook {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        Hook::new(
            phase,
            hooks::ASSIST,
            [action.name().to_string(), path(&self.dir), path(&self.tree), self.arch.to_string()],
        )
    }

    /// What the bootstrap ran natively, once it is done: "N programs native (…)" and what stayed
    /// emulated because apt installed another version than the tools tree has.
    pub fn summary(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join("summary")).ok()?;
        let list = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let (native, emulated) = (list("native:"), list("emulated:"));
        let offered = std::fs::read_to_string(self.dir.join("list")).map(|l| l.lines().count()).unwrap_or(0);
        let mut s = format!(
            "{} of {} arch-neutral programs ran natively ({}{})",
            native.len(),
            offered,
            native.iter().take(6).cloned().collect::<Vec<_>>().join(", "),
            if native.len() > 6 { ", …" } else { "" }
        );
        if !emulated.is_empty() {
            s.push_str(&format!(
                "; emulated, as apt installed another version than the tools tree has: {}",
                emulated.join(", ")
            ));
        }
        Some(s)
    }
}

/// Whether a bootstrap of `target` on this host gets native help: a foreign one on x86_64.
pub fn applies(target: Arch) -> bool {
    Arch::host() == Some(Arch::X86_64) && target != Arch::X86_64
}

/// Copy the x86_64 program `from` to `to` with its ELF interpreter renamed to `ASSIST_INTERP`.
fn native_copy(from: &Path, to: &Path) -> Result<()> {
    let mut elf = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    set_interpreter(&mut elf, HOST_INTERP, ASSIST_INTERP)
        .with_context(|| format!("preparing {} to run inside the root", from.display()))?;
    write_executable(to, &elf)
}

fn write_executable(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

/// Replace every `old` in `bytes` by `new` of the same length; there must be at least one.
fn replace_all(bytes: &mut [u8], old: &[u8], new: &[u8]) -> Result<()> {
    anyhow::ensure!(old.len() == new.len(), "replacement of another length");
    let mut found = 0;
    let mut i = 0;
    while i + old.len() <= bytes.len() {
        if &bytes[i..i + old.len()] == old {
            bytes[i..i + old.len()].copy_from_slice(new);
            found += 1;
            i += old.len();
        } else {
            i += 1;
        }
    }
    anyhow::ensure!(found > 0, "{} not found", String::from_utf8_lossy(old));
    Ok(())
}

/// Replace the path in a 64-bit little-endian ELF file's PT_INTERP segment, in place: `new`
/// must not be longer than `old`; the rest is padded with NULs.
fn set_interpreter(elf: &mut [u8], old: &[u8], new: &[u8]) -> Result<()> {
    anyhow::ensure!(new.len() <= old.len(), "interpreter path too long");
    anyhow::ensure!(
        elf.len() > 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2 && elf[5] == 1,
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(elf, 0x20), u16_at(elf, 0x36), u16_at(elf, 0x38));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        anyhow::ensure!(ph + 56 <= elf.len(), "program header outside the file");
        if u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) != 3 {
            continue;
        }
        let (off, size) = (u64_at(elf, ph + 8), u64_at(elf, ph + 32));
        anyhow::ensure!(off + size <= elf.len(), "interpreter outside the file");
        let interp = &mut elf[off..off + size];
        anyhow::ensure!(
            interp.starts_with(old) && interp[old.len()..].iter().all(|&b| b == 0),
            "unexpected interpreter {}",
            String::from_utf8_lossy(interp)
        );
        interp.fill(0);
        interp[..new.len()].copy_from_slice(new);
        return Ok(());
    }
    anyhow::bail!("no ELF interpreter (static program)")
}

struct ProgramList {
    text: String,
    count: usize,
}

/// `program path kind package source-version` lines for the programs the tools tree has.
fn program_list(tree: &Path) -> Result<ProgramList> {
    let owners = owners(tree)?;
    let versions: BTreeMap<String, String> =
        crate::debian::packages::installed(tree)?.into_iter().map(|p| (p.name, p.source_version)).collect();
    let mut text = String::new();
    let mut count = 0;
    for (name, kind, _) in PROGRAMS {
        let Some(path) =
            ["usr/bin", "usr/sbin"].iter().map(|d| format!("{d}/{name}")).find(|p| is_program(&tree.join(p)))
        else {
            continue;
        };
        let Some(pkg) = [format!("/{path}"), format!("/{}", path.trim_start_matches("usr/"))]
            .iter()
            .find_map(|p| owners.get(p))
            .cloned()
        else {
            continue;
        };
        let Some(version) = versions.get(&pkg) else { continue };
        let kind = if *kind == Kind::Bind { "bind" } else { "path" };
        text.push_str(&format!("{name} {path} {kind} {pkg} {version}\n"));
        count += 1;
    }
    Ok(ProgramList { text, count })
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
        for banned in
            ["uname", "arch", "ldconfig", "ldd", "bash", "kmod", "busybox", "dpkg-query", "dpkg-divert", "dpkg-trigger"]
        {
            assert!(!names.contains(&banned), "{banned} must stay emulated");
        }
    }

    #[test]
    fn interpreter_is_renamed_in_place() {
        // A real dynamic program of the host, renamed and checked by readelf.
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("true");
        native_copy(Path::new("/usr/bin/true"), &to).unwrap();
        let text = crate::host::cmd::Cmd::new("readelf").arg("-l").arg(&to).output().unwrap();
        assert!(text.contains("[Requesting program interpreter: /.kiln-assist/ld.so]"), "{text}");
        assert_eq!(std::fs::metadata(&to).unwrap().len(), std::fs::metadata("/usr/bin/true").unwrap().len());
        let mut not_elf = b"#!/bin/sh\n".to_vec();
        assert!(set_interpreter(&mut not_elf, HOST_INTERP, ASSIST_INTERP).is_err());
    }

    /// A pending assist whose tools tree failed: its extract hook stops the bootstrap at once
    /// (no mounts, nothing in the root), and the bootstrap is not retried without help.
    #[test]
    fn pending_assist_stops_the_bootstrap_when_the_tools_tree_fails() {
        let work = WorkDir::new(None, false).unwrap();
        let tree = work.join("tools");
        let Some(a) = Assist::pending(Arch::Aarch64, &tree, &work).unwrap() else {
            assert_ne!(Arch::host(), Some(Arch::X86_64), "native help applies on x86_64 hosts");
            return;
        };
        assert!(!a.failed());
        let err = a.fill(&Tools::Tree { root: work.join("other"), arch: Arch::X86_64 }).unwrap_err();
        assert!(err.to_string().contains("not "), "{err}");
        a.fail();
        assert!(a.failed());
        let root = work.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let hooks = work.join("hooks");
        let hook = a.hook(Phase::Extract, Action::Setup);
        let opt = crate::bootstrap::hooks::options(&[hook], &hooks).unwrap().remove(0);
        let out =
            crate::host::cmd::Cmd::new("sh").args(["-c", opt.split_once('=').unwrap().1, "exec"]).arg(&root).run();
        let err = format!("{:#}", out.unwrap_err());
        assert!(err.contains("the tools tree was not made"), "{err}");
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "the root is untouched");
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
        assert_eq!(list.text, "sed usr/bin/sed bind sed 4.9-2\n");
        assert_eq!(list.count, 1);
    }
}
