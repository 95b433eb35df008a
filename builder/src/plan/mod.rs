//! The build plan: everything derived from a recipe before any work starts (package set,
//! partition layout, identifiers, kernel command line). `kiln check --print` shows it.
pub mod ids;
use crate::disk::gpt::{plan_layout, Layout, PartitionSpec};
use crate::lock::Lock;
use crate::recipe::arch::{Arch, ESP_TYPE};
use crate::recipe::{AutomaticUpdates, InitramfsModules, Recipe, RecipeError};
use anyhow::Result;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Packages every image gets, whatever the recipe says: the pieces kiln's boot path relies on.
pub const BASE_PACKAGES: &[&str] = &["systemd", "systemd-sysv", "udev", "systemd-boot-efi", "initramfs-tools", "zstd"];

/// The package kiln adds for `system.automatic_updates = "security"`.
pub const UNATTENDED_UPGRADES: &str = "unattended-upgrades";

/// Where the security archive is when neither the recipe nor `KILN_SECURITY_MIRROR` names one.
pub const DEFAULT_SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";

/// One apt archive of an image: a URI and a suite (the components are the recipe's).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Archive {
    pub uri: String,
    pub suite: String,
}

/// The Debian suite of the pinned tools tree (`bootstrap::tools`).
pub const TOOLS_SUITE: &str = "trixie";
/// The tools tree's packages: e2fsprogs writes images; openssl, kmod, zstd and
/// cpio are native programs of a foreign-architecture bootstrap (`bootstrap::assist`, whose
/// tools tree also has the packages of its other programs: `assist::packages`).
pub const TOOLS_PACKAGES: &[&str] = &["e2fsprogs", "openssl", "kmod", "zstd", "cpio"];

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub recipe: Recipe,
    /// sha256 of the resolved recipe: the seed of every identifier in the image.
    pub recipe_hash: String,
    pub mirror: String,
    /// The security archive's mirror (None: `base.security = false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_mirror: Option<String>,
    /// The image's Debian archives, in apt's order: the suite on the mirror, `<suite>-updates`
    /// on the mirror, `<suite>-security` on the security mirror (each when the recipe has it).
    pub archives: Vec<Archive>,
    /// The packages passed to mmdebstrap: kiln's base set, the kernel, then the recipe's (and its
    /// packages for this architecture).
    pub packages: Vec<String>,
    /// Drivers in the initrd: the recipe's choice or the architecture's default.
    pub initramfs_modules: InitramfsModules,
    pub layout: Layout,
    pub root_fs_uuid: uuid::Uuid,
    pub esp_volume_id: u32,
    /// Kernel command line of the boot entry.
    pub kernel_cmdline: String,
    /// File name of the image in the output directory.
    pub image_name: String,
    /// Files written beside it: `img` always, then the recipe's `[output] formats`.
    pub formats: Vec<crate::recipe::OutputFormat>,
    /// Guest service ports `kiln boot` and `kiln test` forward (the recipe's `[[ports]]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::recipe::Port>,
    /// sha256 of the lock the build installs from (joined into `recipe_hash`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_hash: Option<String>,
    #[serde(skip)]
    pub lock: Option<PlanLock>,
}

/// The lock a plan builds from, and where it was read.
#[derive(Debug, Clone)]
pub struct PlanLock {
    pub lock: Lock,
    pub path: PathBuf,
}

impl Plan {
    pub fn new(recipe: Recipe) -> Result<Plan> {
        Self::with_arch(recipe, None)
    }

    /// Plan for `arch` instead of the recipe's own architecture (`kiln build --arch`).
    pub fn with_arch(recipe: Recipe, arch: Option<Arch>) -> Result<Plan> {
        Self::with_lock(recipe, arch, None)
    }

    /// Plan building from a lock: its hash joins the seed of every identifier, so the image's
    /// identity follows the lock. Fails when the lock was made for other inputs.
    pub fn with_lock(mut recipe: Recipe, arch: Option<Arch>, lock: Option<PlanLock>) -> Result<Plan> {
        if let Some(a) = arch {
            recipe.architecture = a;
        }
        let arch = recipe.architecture;
        let mut recipe_hash = identity(&recipe)?;
        let lock_hash = lock.as_ref().map(|l| l.lock.hash());
        if let Some(h) = &lock_hash {
            recipe_hash = crate::host::files::sha256_hex(format!("{recipe_hash}\nlock {h}").as_bytes());
        }
        let mirror = recipe.base.mirror.as_ref().map(|m| m.to_string()).unwrap_or_else(host_mirror);
        let security_mirror = recipe.base.security.then(|| {
            recipe.base.security_mirror.as_ref().map(|m| m.to_string()).unwrap_or_else(default_security_mirror)
        });
        let mut packages: Vec<String> = BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
        packages.push(recipe.base.kernel.as_ref().map_or(arch.kernel_package(), |k| k.as_str()).to_string());
        if !matches!(recipe.system.locale.as_str(), "C" | "C.UTF-8" | "POSIX") {
            packages.push("locales".into());
        }
        let b = &recipe.base;
        let mut archives = vec![Archive { uri: mirror.clone(), suite: b.suite.to_string() }];
        if b.updates {
            archives.push(Archive { uri: mirror.clone(), suite: format!("{}-updates", b.suite) });
        }
        if let Some(m) = &security_mirror {
            archives.push(Archive { uri: m.clone(), suite: format!("{}-security", b.suite) });
        }
        if recipe.system.automatic_updates == AutomaticUpdates::Security {
            packages.push(UNATTENDED_UPGRADES.into());
        }
        let for_arch = recipe.base.arch_packages.get(&arch).into_iter().flatten();
        let mut seen: std::collections::BTreeSet<String> = packages.iter().cloned().collect();
        for p in recipe.base.packages.iter().chain(for_arch) {
            if seen.insert(p.to_string()) {
                packages.push(p.to_string());
            }
        }
        let specs = [
            PartitionSpec {
                label: "esp".into(),
                type_guid: ESP_TYPE,
                part_guid: ids::uuid(&recipe_hash, "partition:esp"),
                size: Some(recipe.disk.esp_size),
                flags: 0,
            },
            PartitionSpec {
                label: "root".into(),
                type_guid: arch.root_partition_type(),
                part_guid: ids::uuid(&recipe_hash, "partition:root"),
                size: None,
                // The root grows to the disk at first boot (systemd-repart, systemd-growfs).
                flags: crate::disk::gpt::GROWFS,
            },
        ];
        let layout = plan_layout(recipe.disk.size, ids::uuid(&recipe_hash, "disk"), &specs).map_err(|e| {
            let file = recipe.sources.first().map(|p| p.as_path()).unwrap_or(Path::new("recipe"));
            RecipeError::file(file, Some("disk.size".into()), format!("{e:#}"))
        })?;
        let root_guid = layout.partitions[1].part_guid;
        let console = arch.serial_console();
        let mut cmdline = vec![
            format!("root=PARTUUID={root_guid}"),
            "rw".into(),
            "console=tty0".into(),
            format!("console={console},115200"),
        ];
        cmdline.extend(recipe.boot.kernel_cmdline.iter().map(|w| w.to_string()));
        let plan = Plan {
            image_name: format!("{}-{}-{}.img", recipe.name, recipe.version, arch),
            formats: recipe.output.formats.clone(),
            ports: recipe.ports.clone(),
            root_fs_uuid: ids::uuid(&recipe_hash, "filesystem:root"),
            esp_volume_id: ids::u32(&recipe_hash, "filesystem:esp"),
            kernel_cmdline: cmdline.join(" "),
            initramfs_modules: recipe
                .base
                .initramfs_modules
                .clone()
                .unwrap_or_else(|| arch.default_initramfs_modules()),
            recipe_hash,
            mirror,
            security_mirror,
            archives,
            packages,
            layout,
            recipe,
            lock_hash,
            lock,
        };
        if let Some(l) = &plan.lock {
            l.lock.check_matches(&plan.lock_subject(), &l.path)?;
        }
        Ok(plan)
    }

    /// The image's Debian archives (see [`Plan::archives`]).
    pub fn archives(&self) -> Vec<Archive> {
        self.archives.clone()
    }

    pub fn arch(&self) -> Arch {
        self.recipe.architecture
    }

    /// The values of this plan a lock file records, to check a lock against.
    pub fn lock_subject(&self) -> crate::lock::Subject<'_> {
        let r = &self.recipe;
        crate::lock::Subject {
            recipe: r.sources.first().map(|p| p.display().to_string()).unwrap_or_default(),
            requested: &self.packages,
            architecture: self.arch().debian(),
            suite: &r.base.suite,
            components: crate::recipe::values::strings(&r.base.components),
            source_date_epoch: r.source_date_epoch,
            mirror: &self.mirror,
            archives: self.archives().into_iter().skip(1).map(|a| a.suite).collect(),
            tools_packages: TOOLS_PACKAGES,
        }
    }
}

/// sha256 of a recipe's resolved content, without where its files were read from (`sources`,
/// paths as given on the command line): the same recipe built from another directory (another
/// checkout, a `kiln vendor` bundle) gets the same identifiers.
fn identity(recipe: &Recipe) -> Result<String> {
    let mut v = serde_json::to_value(recipe)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("sources");
    }
    Ok(crate::host::files::sha256_hex(serde_json::to_string(&v)?.as_bytes()))
}

/// The Debian mirror this host's apt uses (`KILN_MIRROR` overrides), else deb.debian.org.
pub fn host_mirror() -> String {
    if let Ok(m) = std::env::var("KILN_MIRROR") {
        if !m.is_empty() {
            return m;
        }
    }

    let mut texts = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<_> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "sources" || e == "list"))
            .collect();
        files.sort();
        texts.extend(files.iter().filter_map(|p| std::fs::read_to_string(p).ok()));
    }
    texts.extend(std::fs::read_to_string("/etc/apt/sources.list").ok());
    texts.iter().find_map(|t| mirror_in(t)).unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// The security mirror of recipes that name none: `KILN_SECURITY_MIRROR` (e.g. a snapshot),
/// else [`DEFAULT_SECURITY_MIRROR`]. Not the host's apt sources: a plan's security mirror does
/// not depend on the build host.
pub fn default_security_mirror() -> String {
    std::env::var("KILN_SECURITY_MIRROR")
        .ok()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| DEFAULT_SECURITY_MIRROR.into())
}

/// First Debian archive URI (ending in `/debian`) in a sources.list or deb822 text.
fn mirror_in(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| {
            let words: Vec<&str> = if let Some(rest) = l.strip_prefix("URIs:") {
                rest.split_whitespace().collect()
            } else if l.starts_with("deb ") {
                l.split_whitespace().filter(|w| w.contains("://")).collect()
            } else {
                vec![]
            };
            words.into_iter().map(|w| w.trim_end_matches('/').to_string())
        })
        .find(|u| u.ends_with("/debian"))
}

/// The plan of a recipe `name = "x"`, `version = "1"` plus `body` (written to a temporary
/// file), or the recipe error as text: for tests of what kiln makes of recipe values.
#[cfg(test)]
pub fn plan_of(body: &str) -> Result<Plan, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.toml");
    std::fs::write(&file, format!("name = \"x\"\nversion = \"1\"\n{body}")).unwrap();
    let recipe = crate::recipe::load(&file).map_err(|e| e.to_string())?;
    Ok(Plan::new(recipe).unwrap())
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_mirror_in_deb822_and_one_line_formats() {
        let deb822 = "Types: deb\nURIs: http://ftp.example.org/debian-security\n\nTypes: deb\nURIs: http://ftp.example.org/debian/\nSuites: bookworm\n";
        assert_eq!(super::mirror_in(deb822).as_deref(), Some("http://ftp.example.org/debian"));
        let list = "# deb http://old/debian x main\ndeb [arch=amd64] http://m.example/debian bookworm main\n";
        assert_eq!(super::mirror_in(list).as_deref(), Some("http://m.example/debian"));
        assert_eq!(super::mirror_in("deb https://packages.cloud.google.com/apt x main"), None);
    }
}
