//! The one mmdebstrap command line (the image's root and the tools tree are both made by it)
//! and the one cache key of a bootstrapped tree.
use crate::bootstrap::hooks::{self, Hook, Phase};
use crate::debian::source::{AptPin, Args};
use crate::host::cache::Cache;
use crate::host::cmd::Cmd;
use crate::host::work::WorkDir;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// mmdebstrap's options that keep what kiln reads after a bootstrap: apt's package lists (the
/// sha256 of every installed .deb, for the SBOM and lock files) and the downloaded .debs (for
/// the .deb cache). cleanup::clean removes what is left of them before the image is made.
const KEEP: &str = "--skip=cleanup/apt/lists,cleanup/apt/cache,essential/unlink";

/// How much mmdebstrap installs (its `--variant`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The essential and required packages, apt, and `include` with their dependencies,
    /// installed by dpkg with their maintainer scripts (an image's root).
    Minbase,
    /// Only `include` and their dependencies, unpacked: no maintainer script and no dpkg
    /// database (the tools tree, which writes its own: tools.rs).
    Extract,
}

/// One mmdebstrap run in root mode.
pub struct Mmdebstrap<'a> {
    pub variant: Variant,
    /// Debian architecture.
    pub arch: &'a str,
    /// Packages beyond the essential ones.
    pub include: &'a [String],
    /// `--aptopt` values.
    pub aptopts: &'a [&'a str],
    /// `--dpkgopt` values (mmdebstrap also writes them to the root's /etc/dpkg/dpkg.cfg.d/).
    pub dpkgopts: &'a [&'a str],
    /// Where the packages come from (the source's hooks run before `hooks` of their phase).
    pub source: &'a Args,
    /// Further hooks; within a phase they run in this order.
    pub hooks: Vec<Hook>,
    pub source_date_epoch: Option<i64>,
    /// qemu-user's CPU model (foreign architectures).
    pub qemu_cpu: Option<&'a str>,
    /// Run in a private mount namespace with this directory first in PATH (native help).
    pub private_path: Option<&'a str>,
    pub suite: &'a str,
    pub target: &'a Path,
    /// Source lines after the mirror (extra repositories).
    pub extra_lines: &'a [String],
    /// `--verbose`: apt's and dpkg's output lines on stderr (for progress; no effect on the tree).
    pub verbose: bool,
}

/// The setup hook putting an apt pin file into the root.
pub fn pin_hook(pin: &AptPin) -> Hook {
    Hook::new(Phase::Setup, hooks::APT_PIN, [pin.file.to_string_lossy().into_owned(), pin.dest.clone()])
}

impl Mmdebstrap<'_> {
    /// The command (hook scripts are written into `work/hooks`).
    pub fn command(&self, work: &WorkDir) -> anyhow::Result<Cmd> {
        let src = self.source;
        let mut all: Vec<Hook> = src.pins.iter().map(pin_hook).collect();
        all.push(Hook::new(Phase::Customize, hooks::APT_SOURCES, [src.pin_file]));
        all.extend(self.hooks.iter().cloned());
        let mut cmd = match self.private_path {
            Some(dir) => {
                let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
                Cmd::new("unshare")
                    .args(["--mount", "--propagation", "private", "mmdebstrap"])
                    .env("PATH", format!("{dir}:{path}"))
            }
            None => Cmd::new("mmdebstrap"),
        };
        cmd = cmd
            .arg("--mode=root")
            .arg(match self.variant {
                Variant::Minbase => "--variant=minbase",
                Variant::Extract => "--variant=extract",
            })
            .arg(format!("--architectures={}", self.arch))
            .arg(format!("--include={}", self.include.join(",")))
            .args(self.aptopts.iter().map(|o| format!("--aptopt={o}")))
            .args(self.dpkgopts.iter().map(|o| format!("--dpkgopt={o}")))
            .arg(KEEP);
        if self.verbose {
            cmd = cmd.arg("--verbose");
        }
        if let Some(components) = &src.components {
            cmd = cmd.arg(format!("--components={}", components.join(",")));
        }
        cmd = cmd.args(hooks::options(&all, &work.join("hooks"))?).env("TMPDIR", work.path());
        if self.dpkgopts.iter().any(|o| o.starts_with("path-")) {
            // With path excludes mmdebstrap filters the essential packages through
            // `./tarfilter` when its working directory has one (kiln's, tarfilter.rs).
            cmd = cmd.current_dir(crate::bootstrap::tarfilter::dir(&work.join("tarfilter"))?);
        }
        if let Some(epoch) = self.source_date_epoch {
            cmd = cmd.env("SOURCE_DATE_EPOCH", epoch.to_string());
        }
        if let Some(cpu) = self.qemu_cpu {
            cmd = cmd.env("QEMU_CPU", cpu);
        }
        // `--` ends mmdebstrap's options (Getopt::Long): suite, target and mirrors are never read
        // as options, whatever they hold (the recipe's types already refuse a leading `-`).
        Ok(cmd.arg("--").arg(self.suite).arg(self.target).args(&src.mirrors).args(self.extra_lines))
    }
}

/// What a cached tree is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An image's bootstrapped root.
    Roots,
    /// The tools tree.
    Tools,
}

/// The name of a bootstrapped tree in the cache: the hash of everything that decides its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheKey {
    kind: Kind,
    hash: String,
}

impl CacheKey {
    /// The key of `inputs` of a tree of `kind`; bump `format` when the way kiln drives
    /// mmdebstrap for that kind changes, so old cached trees are not reused.
    pub fn new<T: Serialize>(kind: Kind, format: u32, inputs: &T) -> CacheKey {
        #[derive(Serialize)]
        struct Keyed<'a, T> {
            kind: Kind,
            format: u32,
            inputs: &'a T,
        }
        let json = serde_json::to_string(&Keyed { kind, format, inputs }).unwrap_or_default();
        CacheKey { kind, hash: crate::host::files::sha256_hex(json.as_bytes()) }
    }

    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The tree's directory in `cache` (`roots/<hash>` or `tools/<hash>`).
    pub fn dir(&self, cache: &Path) -> PathBuf {
        let cache = Cache::new(cache);
        let kind = match self.kind {
            Kind::Roots => cache.roots(),
            Kind::Tools => cache.tools(),
        };
        kind.join(&self.hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debian::source::Args;

    fn plan(base: &str) -> Result<crate::plan::Plan, String> {
        crate::plan::plan_of(&format!("[base]\n{base}"))
    }

    /// Suite, target and mirrors come after `--`, last, in this order.
    #[test]
    fn positional_arguments_follow_the_end_of_options() {
        let plan = plan("suite = \"trixie\"\nmirror = \"http://deb.example/debian\"\n").unwrap();
        let work = WorkDir::new(None, false).unwrap();
        let src = Args {
            pins: None,
            pin_file: "etc/apt/preferences.d/kiln",
            components: Some(vec!["main".into()]),
            mirrors: vec![plan.mirror.clone(), "deb http://sec.example/debian-security trixie-security main".into()],
        };
        let run = Mmdebstrap {
            variant: Variant::Minbase,
            arch: plan.arch().debian(),
            include: &plan.packages,
            aptopts: &[],
            dpkgopts: &[],
            source: &src,
            hooks: Vec::new(),
            source_date_epoch: Some(plan.recipe.source_date_epoch),
            qemu_cpu: None,
            private_path: None,
            suite: &plan.recipe.base.suite,
            target: Path::new("/tmp/kiln-target"),
            extra_lines: &[],
            verbose: false,
        };
        let argv = run.command(&work).unwrap().argv();
        let dashes = argv.iter().position(|a| a == "--").expect("an end of options");
        assert_eq!(
            argv[dashes..],
            [
                "--",
                "trixie",
                "/tmp/kiln-target",
                "http://deb.example/debian",
                "deb http://sec.example/debian-security trixie-security main"
            ]
        );
        assert!(argv[1..dashes].iter().all(|a| a.starts_with("--")), "only options before `--`: {argv:?}");
    }

    /// Values that would read as options never reach the command line: the recipe is refused.
    #[test]
    fn option_like_suite_and_mirror_are_refused() {
        let e = plan("suite = \"--aptopt=APT::Get::AllowUnauthenticated=1\"\n").unwrap_err();
        assert!(e.contains("key `base.suite`") && e.contains("not a Debian package or suite name"), "{e}");
        let e = plan("mirror = \"--hook-dir=/tmp/evil\"\n").unwrap_err();
        assert!(e.contains("key `base.mirror`") && e.contains("http:// or https://"), "{e}");
        let e = plan("mirror = \"http://deb.example/debian\\ninjected\"\n").unwrap_err();
        assert!(e.contains("key `base.mirror`"), "{e}");
    }
}
