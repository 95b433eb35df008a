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
use std::path::{Path, PathBuf};

mod elf;
mod programs;

use elf::{native_copy, replace_all, write_executable};
pub use programs::packages;
use programs::{program_list, Kind};

/// dpkg's wrapper in the assist's `bin/`: dpkg on the root from outside it, or the root's own.
const DPKG_WRAPPER: &str = include_str!("assist-dpkg.sh");

/// A dpkg program in the assist's `bin/` that runs the native one with `--root=/` (Kind::Rooted).
const ROOTED: &str = include_str!("assist-rooted.sh");

/// py3compile in the assist's `bin/`, first in dpkg's PATH: maintainer scripts compile nothing.
const PY3COMPILE: &str = include_str!("assist-py3compile.sh");

/// Mounted over python3.X while packages are configured (`assist.sh stub`): the standard
/// library is not byte-compiled.
const PYTHON_STUB: &str = include_str!("assist-python.sh");

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
        tracing::debug!("{} arch-neutral programs offered natively", list.programs.len());
        for p in &list.programs {
            let rooted = p.kind == Kind::Rooted;
            let to = if p.name == "dpkg" || rooted { dir.join("libexec") } else { dir.join("bin") }.join(p.name);
            native_copy(&tree.join(&p.path), &to)?;
            if rooted {
                write_executable(&dir.join("bin").join(p.name), ROOTED.as_bytes())?;
            }
            if p.name == "perl" {
                // @INC's x86_64 directories (perl-base's XS modules) → the mounted tools tree.
                let mut perl = std::fs::read(&to).with_context(|| format!("reading {}", to.display()))?;
                replace_all(&mut perl, LOADER_PATHS[0].0, LOADER_PATHS[0].1)
                    .context("renaming perl's module directories")?;
                write_executable(&to, &perl)?;
            }
        }
        for (name, _) in programs::HELPERS {
            native_copy(&tree.join("usr/bin").join(name), &dir.join("libexec").join(name))?;
        }
        std::fs::write(dir.join("assist.sh"), hooks::ASSIST.text).context("copying assist.sh into the assist")?;
        write_executable(&dir.join("bin/dpkg"), DPKG_WRAPPER.as_bytes())?;
        write_executable(&dir.join("bin/py3compile"), PY3COMPILE.as_bytes())?;
        write_executable(&dir.join("python"), PYTHON_STUB.as_bytes())?;
        std::fs::write(dir.join("list"), list.text()).context("writing the assist's program list")?;
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
        if self.dir.join("essential-native").exists() {
            s.push_str(" from the essential packages' configuration on");
        }
        let stubbed = std::fs::read_to_string(self.dir.join("stubbed")).unwrap_or_default();
        if !stubbed.trim().is_empty() {
            s.push_str(&format!(
                "; not byte-compiled under emulation: the standard library of {}",
                stubbed.split_whitespace().collect::<Vec<_>>().join(", ")
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
