//! Everything that differs between target architectures lives here, and only here.
use crate::recipe::{InitramfsModules, ModulePolicy};
use serde::{Deserialize, Serialize};
use uuid::{uuid, Uuid};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    #[serde(rename = "x86_64")]
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Debian's name for the architecture (dpkg --print-architecture).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// Root partition type from the Discoverable Partitions Specification.
    pub fn root_partition_type(self) -> Uuid {
        match self {
            Arch::X86_64 => uuid!("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
            Arch::Aarch64 => uuid!("b921b045-1df0-41c3-af44-4c6f280d3fae"),
        }
    }

    /// Path of the removable-media boot loader inside the ESP.
    pub fn efi_boot_path(self) -> &'static str {
        match self {
            Arch::X86_64 => "EFI/BOOT/BOOTX64.EFI",
            Arch::Aarch64 => "EFI/BOOT/BOOTAA64.EFI",
        }
    }

    /// systemd-boot binary inside the root (package systemd-boot-efi).
    pub fn systemd_boot_efi(self) -> &'static str {
        match self {
            Arch::X86_64 => "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
            Arch::Aarch64 => "usr/lib/systemd/boot/efi/systemd-bootaa64.efi",
        }
    }

    /// Debian kernel meta package.
    pub fn kernel_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "linux-image-amd64",
            Arch::Aarch64 => "linux-image-arm64",
        }
    }

    /// Serial console the kernel and the check runner write to.
    pub fn serial_console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }

    pub fn qemu_system(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// Machine and CPU arguments for qemu-system under TCG.
    pub fn qemu_machine(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &["-machine", "q35", "-cpu", "max"],
            // pauth-impdef: a cheap pointer-authentication algorithm instead of QARMA under TCG.
            Arch::Aarch64 => &["-machine", "virt", "-cpu", "max,pauth-impdef=on"],
        }
    }

    /// CPU model qemu-user emulates (`QEMU_CPU`) when this architecture's maintainer scripts
    /// run on another one. qemu's default, `max`, has pointer authentication and SVE, and
    /// Debian's arm64 binaries sign every return address: a Neoverse N1 (Armv8.2, neither
    /// feature) runs the same programs about a quarter faster, with the same results.
    pub fn qemu_user_cpu(self) -> &'static str {
        match self {
            Arch::X86_64 => "max",
            Arch::Aarch64 => "neoverse-n1",
        }
    }

    /// Drivers in the initrd unless the recipe chooses: on x86_64 Debian's `most`; on aarch64,
    /// where mkinitramfs runs under emulation, the storage drivers that boot QEMU `virt` and
    /// common arm64 boards and servers (virtio, NVMe, AHCI, USB storage, SD/MMC).
    pub fn default_initramfs_modules(self) -> InitramfsModules {
        match self {
            Arch::X86_64 => InitramfsModules::Policy(ModulePolicy::Most),
            Arch::Aarch64 => InitramfsModules::List(AARCH64_INITRAMFS_MODULES.iter().map(|m| m.to_string()).collect()),
        }
    }

    /// Debian's multiarch triplet (library directory name).
    pub fn multiarch_triplet(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu",
            Arch::Aarch64 => "aarch64-linux-gnu",
        }
    }

    /// The dynamic loader inside a (merged-/usr) Debian root.
    pub fn dynamic_loader(self) -> &'static str {
        match self {
            Arch::X86_64 => "usr/lib64/ld-linux-x86-64.so.2",
            Arch::Aarch64 => "usr/lib/ld-linux-aarch64.so.1",
        }
    }

    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }
}

const AARCH64_INITRAMFS_MODULES: &[&str] = &[
    // QEMU virt and clouds
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_scsi",
    "virtio_console",
    // NVMe, SATA/AHCI, SCSI disks
    "nvme",
    "ahci",
    "ahci_platform",
    "libahci_platform",
    "sd_mod",
    "sr_mod",
    // USB storage on common host controllers
    "usb_storage",
    "uas",
    "xhci_pci",
    "xhci_plat_hcd",
    "ehci_pci",
    "ehci_platform",
    "ohci_platform",
    "dwc3",
    "dwc2",
    // SD/MMC (eMMC, SD cards on boards)
    "mmc_block",
    "sdhci",
    "sdhci_pltfm",
    "sdhci_of_arasan",
    "sdhci_iproc",
    "sdhci_of_dwcmshc",
    "dw_mmc",
    "dw_mmc_rockchip",
    "meson_gx_mmc",
    // root file system
    "ext4",
    "crc32c_generic",
];

/// The EFI System Partition type GUID.
pub const ESP_TYPE: Uuid = uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
