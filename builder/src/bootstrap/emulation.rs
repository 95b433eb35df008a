//! Building for a foreign architecture: the target's programs (dpkg maintainer scripts,
//! mkinitramfs) run under qemu-user through the kernel's binfmt_misc. kiln checks that the
//! emulator is registered and registers it when it can (as root), or says exactly what to run.
use crate::host::cmd::Cmd;
use crate::recipe::arch::Arch;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// binfmt_misc mount point (`KILN_BINFMT_MISC` overrides, for tests).
fn binfmt_misc() -> PathBuf {
    std::env::var_os("KILN_BINFMT_MISC").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/proc/sys/fs/binfmt_misc"))
}

/// Directories holding the registration files shipped by qemu-user-static / qemu-user-binfmt
/// (`KILN_BINFMT_CONF_DIRS`, colon-separated, overrides).
fn conf_dirs() -> Vec<PathBuf> {
    match std::env::var_os("KILN_BINFMT_CONF_DIRS") {
        Some(v) => std::env::split_paths(&v).collect(),
        None => ["/usr/lib/binfmt.d", "/etc/binfmt.d", "/usr/share/binfmts"].iter().map(PathBuf::from).collect(),
    }
}

fn binfmt_name(arch: Arch) -> String {
    format!("qemu-{}", arch.name())
}

/// Whether programs of `arch` can run on this host: natively, or through a registered and
/// enabled qemu-user binfmt handler.
pub fn can_run(arch: Arch) -> bool {
    Arch::host() == Some(arch)
        || std::fs::read_to_string(binfmt_misc().join(binfmt_name(arch)))
            .is_ok_and(|s| s.lines().next() == Some("enabled"))
}

/// Make sure programs of `arch` can run here; register qemu-user if needed and possible.
pub fn ensure(arch: Arch) -> Result<()> {
    if can_run(arch) {
        return Ok(());
    }
    let name = binfmt_name(arch);
    let conf = conf_dirs().into_iter().map(|d| d.join(format!("{name}.conf"))).find(|p| p.is_file());
    let how = format!(
        "building {arch} images on this {} host needs qemu-user emulation registered with binfmt_misc.\n  \
         Install it and register it as root:\n    apt-get install qemu-user-static binfmt-support   # or: scripts/setup-host\n    \
         mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc   # if not mounted\n    \
         cat /usr/lib/binfmt.d/{name}.conf > /proc/sys/fs/binfmt_misc/register",
        Arch::host().map(|a| a.name()).unwrap_or("unknown")
    );
    let Some(conf) = conf else {
        bail!(
            "{how}\n  (no {name}.conf found in {})",
            conf_dirs().iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{how}\n  (kiln registers it itself when run as root)");
    }
    let misc = binfmt_misc();
    if !misc.join("register").exists() {
        Cmd::new("mount")
            .args(["-t", "binfmt_misc", "binfmt_misc"])
            .arg(&misc)
            .run()
            .with_context(|| format!("mounting binfmt_misc on {}\n  {how}", misc.display()))?;
    }
    let line = std::fs::read_to_string(&conf).with_context(|| format!("reading {}", conf.display()))?;
    let line = line
        .lines()
        .find(|l| l.starts_with(':'))
        .with_context(|| format!("{} holds no registration line", conf.display()))?;
    std::fs::write(misc.join("register"), line)
        .with_context(|| format!("registering {name} from {}\n  {how}", conf.display()))?;
    if !can_run(arch) {
        bail!("registered {name} from {}, but binfmt_misc does not show it enabled\n  {how}", conf.display());
    }
    tracing::info!("registered {name} with binfmt_misc from {}", conf.display());
    Ok(())
}
