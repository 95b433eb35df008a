//! Command-line interface: the clap types (flags, defaults, environment variables and the
//! `--help` texts). Dispatch is in `run.rs`, the printing of results in `report.rs`, man pages
//! and shell completions (made from these same types) in `docs.rs`.
mod docs;
mod report;
mod run;

use crate::lock::LockChoice;
use crate::recipe::arch::Arch;
use crate::release::export::OutputFormat;
use crate::vm::{Accel, VmOptions};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

pub use run::run;

/// kiln bakes turnkey appliance disk images: a TOML recipe becomes a bootable GPT image
/// (systemd-boot, Debian root) for x86_64 or aarch64, which kiln can then boot and test under QEMU.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, max_term_width = 100)]
pub struct Cli {
    /// More log output (-v: info, -vv: debug incl. external tools' output). KILN_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a recipe and the layers it includes, without building anything.
    ///
    /// Errors name the file, line, column and key. Templates in the recipe's overlays are
    /// rendered too, so template mistakes show here.
    Check {
        /// The recipe file (TOML).
        recipe: PathBuf,
        /// Print the resolved build plan as JSON (merged recipe, packages, partition layout, ids).
        #[arg(long)]
        print: bool,
        /// Also check what needs the network: every package name against the mirror's (and the
        /// extra repositories') package indexes, and the repositories' signed Release files.
        #[arg(long)]
        online: bool,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Build the image of a recipe. Must run as root.
    ///
    /// Progress goes to stderr; the last line of stdout is the path of the image. On failure
    /// or interruption nothing is left at the output path and no work files remain.
    Build(BuildArgs),
    /// Resolve a recipe's packages into a lock file beside it (NAME.lock). Must run as root.
    ///
    /// Bootstraps the root and the tools tree (reusing cached ones) and records every package
    /// (version, architecture, sha256 of the .deb, pool path), the suite, mirror and
    /// SOURCE_DATE_EPOCH. Versions of an existing lock are kept unless --update. Builds then
    /// install exactly these versions; commit the lock beside the recipe.
    Lock {
        recipe: PathBuf,
        /// Resolve afresh to the mirror's current versions (ignore the existing lock and cached roots).
        #[arg(long)]
        update: bool,
        /// Lock for this architecture instead of the recipe's.
        #[arg(long)]
        arch: Option<ArchArg>,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Download every .deb a recipe's lock names into kiln's cache (for `kiln build --offline`).
    ///
    /// Each .deb is checked against the lock's sha256 before it is stored.
    Fetch {
        recipe: PathBuf,
        #[command(flatten)]
        lock: LockArgs,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Write a self-contained bundle to DIR from which an air-gapped site builds the image offline.
    ///
    /// The bundle holds the recipe, its layers and overlays, the lock, every locked .deb (root
    /// and tools tree), this kiln binary and a README with the command to build.
    Vendor {
        recipe: PathBuf,
        /// Directory to create (it must not exist, or be empty).
        dir: PathBuf,
        #[command(flatten)]
        lock: LockArgs,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Boot an image interactively on this terminal's serial console (QEMU + UEFI firmware).
    ///
    /// The image is opened copy-on-write (changes are discarded) unless --persist. Quit with Ctrl-a x.
    Boot {
        image: PathBuf,
        /// Write the guest's changes to the image.
        #[arg(long)]
        persist: bool,
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Boot an image headless, run its checks inside the guest and report them.
    ///
    /// Prints one line per check and the boot-to-ready time. Exit status 0 only when every check
    /// passed; 1 when one failed or the guest never reported (the error shows the serial log's tail).
    Test {
        image: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Where to write the guest's serial console [default: $TMPDIR/kiln-test-IMAGE.PID.serial.log].
        #[arg(long)]
        serial_log: Option<PathBuf>,
        /// Write the guest's changes to the image (e.g. to test what a second boot does).
        #[arg(long)]
        persist: bool,
        /// Also print where the guest's boot time went: `systemd-analyze` time, the top of
        /// blame and the critical chain, run in the guest after its checks.
        #[arg(long)]
        analyze: bool,
        #[command(flatten)]
        vm: VmArgs,
        /// Print the result as one JSON document on stdout instead of lines (see docs/cli.md).
        #[arg(long)]
        json: bool,
    },
    /// Make a signing key pair in minisign's format: kiln.key (secret) and kiln.pub (public).
    ///
    /// The secret key is encrypted with a passphrase, asked on the terminal or taken from
    /// KILN_PASSPHRASE; --unencrypted writes it in the clear (for CI secrets stores).
    Keygen {
        /// Directory for kiln.key and kiln.pub.
        #[arg(long, default_value = ".", conflicts_with = "prefix")]
        out: PathBuf,
        /// Write PREFIX.key and PREFIX.pub instead.
        #[arg(short = 'o', long = "prefix", value_name = "PREFIX")]
        prefix: Option<PathBuf>,
        /// Do not encrypt the secret key.
        #[arg(long)]
        unencrypted: bool,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Check an image (.img or .img.zst) and the files beside it.
    ///
    /// Checks the signature of SHA256SUMS (with --key), the checksum of every file it lists,
    /// and the image's partition table and partitions against the manifest. Exit status 0 only
    /// when everything matched; otherwise the failures name the file and partition.
    ///
    /// A block device (a disk `kiln flash` wrote) is checked against the release of --image:
    /// its GPT entries and the image's partitions; the site partition and free space are
    /// ignored. Meant for a freshly flashed disk: the root grows at first boot.
    Verify {
        /// NAME-VERSION-ARCH.img or .img.zst, with SHA256SUMS and the manifest beside it; or a
        /// block device, with --image.
        image: PathBuf,
        /// For a block device: the image it was flashed from (SHA256SUMS and manifest beside it).
        #[arg(long = "image", value_name = "IMAGE")]
        from_image: Option<PathBuf>,
        /// Public key (kiln.pub) to check the signature with; without it only checksums and
        /// manifest are checked.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Print the result as one JSON document on stdout instead of lines (see docs/cli.md).
        #[arg(long)]
        json: bool,
    },
    /// Site settings (site.toml: host name, admins, network, site variables; see docs/site.md).
    Site {
        #[command(subcommand)]
        command: SiteCommand,
    },
    /// Write an image onto a disk: checked before, read back after. Must run as root.
    ///
    /// Before a byte is written: the signature of SHA256SUMS (with --key), every checksum and
    /// the image's partitions against the manifest; the disk must be a whole disk, not mounted
    /// or held, not the running system's, and big enough. Shows the disk's model, size and
    /// partitions and asks for confirmation unless --yes. Writes only the image's mapped blocks
    /// (IMAGE.bmap), reads every partition back against the signed manifest, then writes the
    /// site partition (--site) and the GPT for the disk's size. See docs/flash.md.
    Flash {
        /// The image (NAME-VERSION-ARCH.img), with SHA256SUMS, manifest and .bmap beside it.
        image: PathBuf,
        /// The whole disk to write (/dev/sdX, /dev/nvmeXnY, /dev/loopN).
        device: PathBuf,
        /// Site file (site.toml) to write to a KILN-SITE partition at the end of the disk.
        #[arg(long)]
        site: Option<PathBuf>,
        /// Public key (kiln.pub) to check the signature with; without it only checksums.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Do not ask for confirmation (needed when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
        /// Allow DEVICE to be a regular file (for tests and for writing disk files).
        #[arg(long)]
        force_file: bool,
    },
    /// Print a shell completion script for kiln to stdout.
    ///
    /// For example: kiln completions bash > /etc/bash_completion.d/kiln
    // Hidden from `kiln --help`, like `manpages`: they install kiln, they are not kiln's work.
    #[command(hide = true)]
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: ShellArg,
    },
    /// Write kiln's manual pages (kiln.1 and kiln-SUBCOMMAND.1) to DIR.
    ///
    /// For example: kiln manpages /usr/local/share/man/man1
    #[command(hide = true)]
    Manpages {
        /// Directory for the pages (created if missing).
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Check a site file against exactly the site variables an image (or a recipe) declares.
    ///
    /// Checks every key and value of the site file (host name, admins' SSH keys and password
    /// hashes, addresses, MACs, ...) and its [vars]: each one declared by the image, of its
    /// type, every required one set. Errors name file:line:column and key; exit status 2 for a
    /// bad site file. Prints the variables' values (the site's or the defaults).
    Check(SiteCheckArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("against").required(true).args(["image", "recipe"])))]
pub struct SiteCheckArgs {
    /// The site file (site.toml).
    pub site: PathBuf,
    /// The built image (.img, .img.zst, .qcow2) whose manifest (beside it) lists its site
    /// variables; or the manifest itself.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// The recipe whose layers declare the site variables.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Print the result as one JSON document on stdout instead of lines (see docs/cli.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ShellArg {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The recipe file (TOML).
    pub recipe: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Build for this architecture instead of the recipe's.
    #[arg(long)]
    pub arch: Option<ArchArg>,
    /// kiln's cache: bootstrapped roots (reused while their inputs are unchanged), the tools
    /// tree and the .deb cache [default: $XDG_CACHE_HOME/kiln or ~/.cache/kiln].
    #[arg(long, env = "KILN_CACHE")]
    pub cache: Option<PathBuf>,
    #[command(flatten)]
    pub lock: LockArgs,
    /// Use only kiln's cache, no network: the lock's .debs must be in it (`kiln fetch`).
    #[arg(long)]
    pub offline: bool,
    /// Bootstrap the root afresh and do not store it (the tools tree is still cached).
    #[arg(long)]
    pub no_cache: bool,
    /// Run mke2fs from the host instead of kiln's pinned tools tree (faster first build;
    /// the image then depends on the host's e2fsprogs version).
    #[arg(long)]
    pub host_tools: bool,
    /// For a foreign architecture (aarch64 on x86_64): run every program of the Debian bootstrap
    /// under qemu-user. By default dpkg and arch-neutral tools (coreutils, sed, openssl, …) of
    /// the same Debian version run natively from the tools tree, which is several times faster
    /// and gives the same image; this switch is for checking that claim and for debugging.
    #[arg(long)]
    pub full_emulation: bool,
    /// Where to create the work directory [default: CACHE/tmp, so a fresh root moves into the
    /// cache by rename].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the work directory (for debugging).
    #[arg(long)]
    pub keep_work: bool,
    /// Sign SHA256SUMS with this minisign secret key (passphrase from KILN_PASSPHRASE or a prompt).
    #[arg(long, env = "KILN_SIGN_KEY", value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// Write this format besides the .img, instead of the recipe's [output] formats (repeatable).
    #[arg(long = "format", value_enum, value_name = "FORMAT")]
    pub formats: Vec<FormatArg>,
    /// Directory of artifacts supplied offline, named by their sha256 or their URL's file name;
    /// those are never downloaded.
    #[arg(long, env = "KILN_ARTIFACTS")]
    pub artifacts: Option<PathBuf>,
    /// Print the result as one JSON document on stdout instead of the image path (see docs/cli.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    Img,
    Zst,
    Qcow2,
}

impl From<FormatArg> for OutputFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Img => OutputFormat::Img,
            FormatArg::Zst => OutputFormat::Zst,
            FormatArg::Qcow2 => OutputFormat::Qcow2,
        }
    }
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// Build from this lock file [default: NAME.lock beside the recipe, if there is one].
    #[arg(long, conflicts_with = "no_lock")]
    pub lock: Option<PathBuf>,
    /// Ignore the lock file beside the recipe.
    #[arg(long)]
    pub no_lock: bool,
}

impl LockArgs {
    fn choice(&self) -> LockChoice {
        match (&self.lock, self.no_lock) {
            (Some(p), _) => LockChoice::File(p.clone()),
            (None, true) => LockChoice::Ignore,
            (None, false) => LockChoice::Auto,
        }
    }
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    /// kiln's cache [default: $XDG_CACHE_HOME/kiln or ~/.cache/kiln].
    #[arg(long, env = "KILN_CACHE")]
    pub cache: Option<PathBuf>,
}

impl CacheArgs {
    fn dir(&self) -> Result<PathBuf> {
        self.cache.clone().or_else(default_cache).context("no cache directory: set --cache, KILN_CACHE or HOME")
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ArchArg {
    #[value(name = "x86_64")]
    X86_64,
    Aarch64,
}

#[derive(Debug, Args)]
pub struct VmArgs {
    /// Accelerator: auto uses KVM only where it works for this image's architecture.
    #[arg(long, value_enum, default_value_t = Accel::Auto, env = "KILN_ACCEL")]
    pub accel: Accel,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1536)]
    pub memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Site file (site.toml, docs/site.md) handed to the guest on an extra read-only disk.
    #[arg(long, value_name = "SITE")]
    pub site: Option<PathBuf>,
}

impl VmArgs {
    fn options(&self) -> VmOptions {
        VmOptions { accel: self.accel, memory_mib: self.memory, cpus: self.cpus, site: self.site.clone() }
    }
}

impl ArchArg {
    fn arch(self) -> Arch {
        match self {
            ArchArg::X86_64 => Arch::X86_64,
            ArchArg::Aarch64 => Arch::Aarch64,
        }
    }
}

fn default_cache() -> Option<PathBuf> {
    default_cache_from(|name| std::env::var_os(name))
}

/// `$XDG_CACHE_HOME/kiln`, else `$HOME/.cache/kiln` (for root: `/root/.cache/kiln`).
fn default_cache_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let base =
        var("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("kiln"))
}

#[cfg(test)]
mod tests {
    use super::default_cache_from;
    use std::path::PathBuf;

    #[test]
    fn the_default_cache_is_kiln_in_the_users_cache_directory() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.into())
        };
        assert_eq!(default_cache_from(env(&[("HOME", "/root")])), Some(PathBuf::from("/root/.cache/kiln")));
        let both = env(&[("HOME", "/root"), ("XDG_CACHE_HOME", "/var/cache/me")]);
        assert_eq!(default_cache_from(both), Some(PathBuf::from("/var/cache/me/kiln")));
        assert_eq!(default_cache_from(env(&[])), None);
    }
}
