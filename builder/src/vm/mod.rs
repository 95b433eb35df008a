//! Booting images under QEMU with UEFI firmware: `kiln boot` (interactive) and `kiln test`
//! (headless; the guest agent runs the image's checks and reports on the serial console).
mod forward;
mod test;
use crate::disk;
use crate::host::cmd::{self, Cmd};
use crate::recipe::arch::Arch;
use anyhow::{bail, Context, Result};
pub use forward::Forward;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
pub use test::{default_log, test, CheckResult, TestReport, TestRun};

const FIRMWARE_TOML: &str = include_str!("../../../firmware/firmware.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when the host's /dev/kvm is a working hardware hypervisor for this architecture, else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone)]
pub struct VmOptions {
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    /// A site file (docs/site.md) to hand the guest on an extra disk.
    pub site: Option<PathBuf>,
}

#[derive(Deserialize)]
struct FirmwareEntry {
    package: String,
    pairs: Vec<FirmwarePair>,
}

#[derive(Deserialize)]
struct FirmwarePair {
    code: PathBuf,
    vars: PathBuf,
}

/// UEFI firmware for `arch`: (code, vars template; None when the firmware is one file).
pub fn firmware(arch: Arch) -> Result<(PathBuf, Option<PathBuf>)> {
    if let (Some(code), Some(vars)) = (std::env::var_os("KILN_FIRMWARE_CODE"), std::env::var_os("KILN_FIRMWARE_VARS")) {
        return Ok((code.into(), Some(vars.into())));
    }
    let table: BTreeMap<String, FirmwareEntry> =
        toml::from_str(FIRMWARE_TOML).context("parsing firmware/firmware.toml")?;
    let entry = table.get(arch.name()).with_context(|| format!("firmware/firmware.toml has no entry for {arch}"))?;
    for pair in &entry.pairs {
        let vars = (!pair.vars.as_os_str().is_empty()).then(|| pair.vars.clone());
        if pair.code.is_file() && vars.as_ref().is_none_or(|v| v.is_file()) {
            return Ok((pair.code.clone(), vars));
        }
    }
    bail!(
        "no UEFI firmware for {arch} found (looked for {}); install the Debian package `{}` (scripts/setup-host does)",
        entry.pairs.iter().map(|p| p.code.display().to_string()).collect::<Vec<_>>().join(", "),
        entry.package
    )
}

/// The architecture of an image, read from its root partition's type GUID.
pub fn image_arch(image: &Path) -> Result<Arch> {
    let layout =
        disk::read_layout(image).with_context(|| format!("reading the partition table of {}", image.display()))?;
    for p in &layout.partitions {
        if let Some(a) = Arch::ALL.into_iter().find(|a| a.root_partition_type() == p.type_guid) {
            return Ok(a);
        }
    }
    bail!("{} has no root partition of a known architecture (Discoverable Partitions type GUID)", image.display())
}

/// Whether KVM can run `arch` guests here: same architecture, /dev/kvm usable, and a hardware
/// KVM module loaded (a software kvm such as kvm-pvm crashes OVMF, so it does not count).
pub fn kvm_usable(arch: Arch) -> bool {
    if Arch::host() != Some(arch) || std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return false;
    }
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    match arch {
        Arch::X86_64 => (module("kvm_intel") || module("kvm_amd")) && !module("kvm_pvm"),
        Arch::Aarch64 => true,
    }
}

/// A prepared QEMU command line plus the throwaway firmware variables and site volume it uses.
pub struct Machine {
    pub cmd: Cmd,
    pub accel: &'static str,
    /// Guest ports reachable on the host's 127.0.0.1.
    pub forwards: Vec<Forward>,
    _vars: Option<tempfile::NamedTempFile>,
    _site: Option<tempfile::TempDir>,
}

/// QEMU for `image`: firmware, disk (copy-on-write unless `persist`), serial on stdio.
pub fn machine(image: &Path, opts: &VmOptions, persist: bool, extra_cmdline: Option<&str>) -> Result<Machine> {
    // A block device boots too (`kiln test DEVICE --persist`: what `kiln flash` wrote).
    let device =
        std::fs::metadata(image).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    if !image.is_file() && !device {
        bail!("image {} not found", image.display());
    }
    let arch = image_arch(image)?;
    // The site file is checked before anything else starts.
    let site = opts.site.as_deref().map(forward::check_site).transpose()?;
    let user = site.as_ref().and_then(|(_, admin)| admin.clone()).unwrap_or_else(|| "admin".into());
    let forwards = forward::allocate(&forward::guest_ports(image), &user)?;
    let (code, vars_template) = firmware(arch)?;
    let accel = match opts.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
        Accel::Auto if kvm_usable(arch) => "kvm",
        Accel::Auto => "tcg",
    };
    let mut cmd = Cmd::new(arch.qemu_system()).args(arch.qemu_machine()).arg("-accel").arg(accel);
    cmd = cmd.args(["-smp", &opts.cpus.to_string(), "-m", &opts.memory_mib.to_string()]).args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "mon:stdio",
        "-no-reboot",
    ]);
    let mut vars_copy = None;
    match vars_template {
        Some(vars) => {
            let tmp = tempfile::Builder::new()
                .prefix("kiln-efivars-")
                .suffix(".fd")
                .tempfile()
                .context("creating firmware variables copy")?;
            std::fs::copy(&vars, tmp.path()).with_context(|| format!("copying {}", vars.display()))?;
            cmd = cmd
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={}", code.display()))
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,unit=1,file={}", tmp.path().display()));
            vars_copy = Some(tmp);
        }
        None => cmd = cmd.arg("-bios").arg(&code),
    }
    let snapshot = if persist { "" } else { ",snapshot=on" };
    // A real disk gets the guest's flushes (cache=unsafe drops them).
    let cache = if device && persist { "writeback" } else { "unsafe" };
    cmd = cmd
        .arg("-drive")
        .arg(format!("file={},format=raw,if=none,id=disk0,cache={cache}{snapshot}", image.display()))
        .args(["-device", "virtio-blk-pci,drive=disk0,bootindex=1"])
        .args(["-device", "virtio-rng-pci"])
        .arg("-netdev")
        .arg(format!("user,id=net0,restrict=on{}", forward::hostfwd(&forwards)))
        .args(["-device", "virtio-net-pci,netdev=net0"]);
    let mut site_dir = None;
    if let Some((text, _)) = &site {
        let dir =
            tempfile::Builder::new().prefix("kiln-site-").tempdir().context("creating the site volume's directory")?;
        let volume = forward::site_volume(text, dir.path())?;
        cmd = cmd
            .arg("-drive")
            .arg(format!("file={},format=raw,if=none,id=site,readonly=on", volume.display()))
            .args(["-device", "virtio-blk-pci,drive=site"]);
        site_dir = Some(dir);
    }
    if let Some(extra) = extra_cmdline {
        cmd = cmd.arg("-smbios").arg(format!("type=11,value=io.systemd.boot.kernel-cmdline-extra={extra}"));
    }
    Ok(Machine { cmd, accel, forwards, _vars: vars_copy, _site: site_dir })
}

/// `kiln boot`: run the image interactively on this terminal's serial console.
pub fn boot(image: &Path, opts: &VmOptions, persist: bool) -> Result<()> {
    let m = machine(image, opts, persist, None)?;
    eprintln!(
        "kiln: booting {} ({}); quit with Ctrl-a x{}",
        image.display(),
        m.accel,
        if persist { "" } else { " (changes are discarded)" }
    );
    for f in &m.forwards {
        eprintln!("kiln: {} (guest port {}): {}", f.name, f.guest, f.reach);
    }
    let mut child = m.cmd.clone().foreground().spawn(Stdio::inherit(), Stdio::inherit(), Stdio::inherit())?;
    let status = child.wait()?;
    cmd::check_interrupted()?;
    if !status.success() {
        bail!("{} exited with {status}", m.cmd.display());
    }
    Ok(())
}
