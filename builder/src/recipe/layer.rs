//! One recipe file as written (every key optional), and the rules that merge layers.
//!
//! Merge rules, applied from the first include to the including file:
//! lists append (duplicates dropped where order does not matter), tables merge key by key,
//! and scalars set by the including file win over the layers it includes.
use super::error::{key_of, Origin, RecipeError};
pub use super::origins::Origins;
use super::origins::{origins_of, Spots};
use super::sitevars::{SiteLayer, SiteVar};
use super::size::Size;
use super::values::{
    ArchiveComponent, DebName, FileName, Hostname, ImagePath, KernelWord, Locale, Owner, PinPattern, RecipeName,
    TimeZone, UnitName, Url, UserName, Version,
};
use crate::recipe::arch::Arch;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub include: Option<Vec<Spanned<String>>>,
    pub name: Option<Spanned<RecipeName>>,
    pub version: Option<Version>,
    pub description: Option<String>,
    pub architecture: Option<Arch>,
    pub source_date_epoch: Option<Spanned<i64>>,
    pub base: Option<BaseLayer>,
    pub system: Option<SystemLayer>,
    pub users: Option<Vec<Spanned<UserLayer>>>,
    pub overlays: Option<Vec<Spanned<String>>>,
    pub vars: Option<toml::Table>,
    pub disk: Option<DiskLayer>,
    pub boot: Option<BootLayer>,
    pub checks: Option<Vec<Spanned<CheckLayer>>>,
    pub output: Option<OutputLayer>,
    pub repositories: Option<Vec<Spanned<RepositoryLayer>>>,
    pub artifacts: Option<Vec<Spanned<ArtifactLayer>>>,
    pub first_boot: Option<Vec<Spanned<FirstBootLayer>>>,
    /// `[site.vars.NAME]`: read into `site_vars` by `validate::per_file`.
    pub site: Option<SiteLayer>,
    /// Declared site variables with where each was written (kept by `merge`, checked after).
    #[serde(skip)]
    pub site_vars: Vec<(SiteVar, Origin)>,
    pub groups: Option<Vec<Spanned<GroupLayer>>>,
    pub files: Option<Vec<Spanned<FileLayer>>>,
    pub ports: Option<Vec<Spanned<super::ports::PortLayer>>>,
    /// Where the name and list entries were written (filled by `Layer::locate`, kept by `merge`).
    #[serde(skip)]
    pub origins: Origins,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseLayer {
    pub suite: Option<DebName>,
    pub mirror: Option<Url>,
    /// The security archive's mirror (`<suite>-security`); default: the host's, else Debian's.
    pub security_mirror: Option<Spanned<Url>>,
    /// Take packages from `<suite>-security` (default true).
    pub security: Option<bool>,
    /// Take packages from `<suite>-updates` on the main mirror (default true).
    pub updates: Option<bool>,
    /// Keep documentation, manual and info pages (default false: dpkg leaves them out).
    pub docs: Option<bool>,
    pub components: Option<Vec<ArchiveComponent>>,
    pub packages: Option<Vec<DebName>>,
    pub initramfs_modules: Option<Spanned<ModulesSetting>>,
    /// Kernel package instead of the architecture's Debian kernel (e.g. Proxmox's).
    pub kernel: Option<DebName>,
    /// Packages only installed on one architecture (`x86_64 = ["ovmf"]`).
    pub arch_packages: Option<BTreeMap<Arch, Vec<DebName>>>,
}

/// `base.initramfs_modules` as written: a policy name or a list of modules.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ModulesSetting {
    Policy(String),
    List(Vec<String>),
}

impl ModulesSetting {
    /// The typed setting; None for a policy mkinitramfs does not know.
    pub fn typed(&self) -> Option<InitramfsModules> {
        match self {
            ModulesSetting::Policy(p) => ModulePolicy::from_name(p).map(InitramfsModules::Policy),
            ModulesSetting::List(list) => Some(InitramfsModules::List(list.clone())),
        }
    }
}

/// Which drivers mkinitramfs puts into the initrd.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum InitramfsModules {
    /// A policy of initramfs-tools (its MODULES setting).
    Policy(ModulePolicy),
    /// MODULES=list with exactly these modules.
    List(Vec<String>),
}

/// initramfs-tools' module policies (MODULES=...) a recipe may name.
#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModulePolicy {
    /// Debian's default: most drivers.
    Most,
    /// Only what the build host needs; never right for images.
    Dep,
    /// What network boot needs.
    Netboot,
}

impl ModulePolicy {
    pub fn from_name(name: &str) -> Option<ModulePolicy> {
        match name {
            "most" => Some(ModulePolicy::Most),
            "dep" => Some(ModulePolicy::Dep),
            "netboot" => Some(ModulePolicy::Netboot),
            _ => None,
        }
    }

    /// The name in recipes and in initramfs-tools' MODULES setting.
    pub fn name(self) -> &'static str {
        match self {
            ModulePolicy::Most => "most",
            ModulePolicy::Dep => "dep",
            ModulePolicy::Netboot => "netboot",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemLayer {
    pub hostname: Option<Spanned<Hostname>>,
    pub timezone: Option<TimeZone>,
    pub locale: Option<Locale>,
    pub enable: Option<Vec<UnitName>>,
    pub disable: Option<Vec<UnitName>>,
    pub automatic_updates: Option<Spanned<AutomaticUpdates>>,
}

/// What the box installs by itself (`system.automatic_updates`): unattended-upgrades with
/// the security archive only, or nothing.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AutomaticUpdates {
    Security,
    Off,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserLayer {
    pub name: UserName,
    /// One group per entry.
    #[serde(default)]
    pub groups: Vec<UserName>,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    pub shell: Option<ImagePath>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskLayer {
    pub size: Option<Spanned<Size>>,
    pub esp_size: Option<Spanned<Size>>,
    pub filesystem: Option<Filesystem>,
}

#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    Ext4,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootLayer {
    pub kernel_cmdline: Option<Vec<KernelWord>>,
    pub menu_timeout: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputLayer {
    pub formats: Option<Vec<OutputFormat>>,
}

/// A file format of the built image (`.img` is always written).
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// The raw GPT disk image.
    Img,
    /// The raw image compressed with zstd (`.img.zst`).
    Zst,
    /// A qcow2 image made with `qemu-img` (`.qcow2`).
    Qcow2,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckLayer {
    pub name: Option<String>,
    pub command: Option<String>,
    pub unit: Option<UnitName>,
    pub port: Option<u16>,
    /// Seconds the guest keeps retrying this check before it counts as failed.
    pub timeout: Option<u32>,
}

/// An extra apt repository, trusted through one OpenPGP key kept beside the recipe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryLayer {
    pub name: FileName,
    pub url: Spanned<Url>,
    pub suite: DebName,
    pub components: Vec<ArchiveComponent>,
    /// Path of the public key file, relative to the file that names it.
    pub key: Spanned<String>,
    /// The key's full fingerprint (40 hex digits; spaces allowed).
    pub fingerprint: Spanned<String>,
    pub pin_priority: Option<i32>,
    pub pin_packages: Option<Vec<PinPattern>>,
}

/// A file fetched by URL, checked by sha256 and laid into the image.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactLayer {
    pub name: FileName,
    pub url: Spanned<Url>,
    pub sha256: Spanned<String>,
    pub dest: Spanned<ImagePath>,
    pub extract: Option<Extract>,
    pub mode: Option<Spanned<String>>,
    pub owner: Option<Owner>,
}

#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Extract {
    /// A tar archive (any compression GNU tar recognises), unpacked into `dest`.
    Tar,
}

/// A command run once, on the box's first boot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstBootLayer {
    pub name: FileName,
    pub command: Option<String>,
    pub script: Option<ImagePath>,
    #[serde(default)]
    pub before: Vec<UnitName>,
    #[serde(default)]
    pub after: Vec<UnitName>,
}

/// A group made in the image (before the users, who may be members).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupLayer {
    pub name: UserName,
    /// A system group (a gid below 1000), as for a service.
    #[serde(default)]
    pub system: bool,
}

/// Owner, group and mode of a path in the image, applied after overlays and artifacts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLayer {
    pub path: ImagePath,
    pub owner: Option<UserName>,
    pub group: Option<UserName>,
    pub mode: Option<Spanned<String>>,
}

/// Parse one file into a layer; errors carry file, line, column and key.
pub fn parse(file: &Path, text: &str) -> Result<Layer, RecipeError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().to_string();
        let key = key_of(&path, &message);
        let offset = inner.span().map(|s| s.start).unwrap_or(0);
        RecipeError::at(file, text, offset, key, message)
    })
}

fn last<T>(lower: Option<T>, upper: Option<T>) -> Option<T> {
    upper.or(lower)
}

fn append<T>(lower: Option<Vec<T>>, upper: Option<Vec<T>>) -> Option<Vec<T>> {
    match (lower, upper) {
        (Some(mut l), Some(u)) => {
            l.extend(u);
            Some(l)
        }
        (l, u) => u.or(l),
    }
}

fn merge_with<T: Default>(lower: Option<T>, upper: Option<T>, f: fn(T, T) -> T) -> Option<T> {
    match (lower, upper) {
        (Some(l), Some(u)) => Some(f(l, u)),
        (l, u) => u.or(l),
    }
}

/// Deep-merge two TOML tables; values of `upper` win, nested tables merge.
pub fn merge_tables(mut lower: toml::Table, upper: toml::Table) -> toml::Table {
    for (k, v) in upper {
        match (lower.remove(&k), v) {
            (Some(toml::Value::Table(l)), toml::Value::Table(u)) => {
                lower.insert(k, toml::Value::Table(merge_tables(l, u)));
            }
            (_, v) => {
                lower.insert(k, v);
            }
        }
    }
    lower
}

impl Layer {
    /// Record where this file's name and list entries are written (`text` is the file's contents).
    pub fn locate(&mut self, file: &Path, text: &str) {
        self.origins = Origins {
            name: self.name.as_ref().map(|n| Origin::new(file, text, n.span().start, "name".into())),
            users: origins_of(&self.users, file, text, "users"),
            checks: origins_of(&self.checks, file, text, "checks"),
            repositories: origins_of(&self.repositories, file, text, "repositories"),
            artifacts: origins_of(&self.artifacts, file, text, "artifacts"),
            first_boot: origins_of(&self.first_boot, file, text, "first_boot"),
            groups: origins_of(&self.groups, file, text, "groups"),
            files: origins_of(&self.files, file, text, "files"),
            packages: BTreeMap::new(),
            enable: BTreeMap::new(),
            disable: BTreeMap::new(),
            ports: origins_of(&self.ports, file, text, "ports"),
            security_mirror: self
                .base
                .as_ref()
                .and_then(|b| b.security_mirror.as_ref())
                .map(|m| Origin::new(file, text, m.span().start, "base.security_mirror".into())),
            automatic_updates: self
                .system
                .as_ref()
                .and_then(|s| s.automatic_updates.as_ref())
                .map(|a| Origin::new(file, text, a.span().start, "system.automatic_updates".into())),
        };
        if let Ok(spots) = toml::from_str::<Spots>(text) {
            spots.record(file, text, &mut self.origins);
        }
    }

    /// `self` is the lower layer (an include), `upper` the file that includes it.
    pub fn merge(self, upper: Layer) -> Layer {
        Layer {
            include: None,
            name: last(self.name, upper.name),
            version: last(self.version, upper.version),
            description: last(self.description, upper.description),
            architecture: last(self.architecture, upper.architecture),
            source_date_epoch: last(self.source_date_epoch, upper.source_date_epoch),
            base: merge_with(self.base, upper.base, |l, u| BaseLayer {
                suite: last(l.suite, u.suite),
                mirror: last(l.mirror, u.mirror),
                security_mirror: last(l.security_mirror, u.security_mirror),
                security: last(l.security, u.security),
                updates: last(l.updates, u.updates),
                docs: last(l.docs, u.docs),
                components: append(l.components, u.components),
                packages: append(l.packages, u.packages),
                initramfs_modules: last(l.initramfs_modules, u.initramfs_modules),
                kernel: last(l.kernel, u.kernel),
                arch_packages: merge_with(l.arch_packages, u.arch_packages, |mut l, u| {
                    for (arch, pkgs) in u {
                        l.entry(arch).or_default().extend(pkgs);
                    }
                    l
                }),
            }),
            system: merge_with(self.system, upper.system, |l, u| SystemLayer {
                hostname: last(l.hostname, u.hostname),
                timezone: last(l.timezone, u.timezone),
                locale: last(l.locale, u.locale),
                enable: append(l.enable, u.enable),
                disable: append(l.disable, u.disable),
                automatic_updates: last(l.automatic_updates, u.automatic_updates),
            }),
            users: append(self.users, upper.users),
            overlays: append(self.overlays, upper.overlays),
            vars: merge_with(self.vars, upper.vars, merge_tables),
            disk: merge_with(self.disk, upper.disk, |l, u| DiskLayer {
                size: last(l.size, u.size),
                esp_size: last(l.esp_size, u.esp_size),
                filesystem: last(l.filesystem, u.filesystem),
            }),
            boot: merge_with(self.boot, upper.boot, |l, u| BootLayer {
                kernel_cmdline: append(l.kernel_cmdline, u.kernel_cmdline),
                menu_timeout: last(l.menu_timeout, u.menu_timeout),
            }),
            checks: append(self.checks, upper.checks),
            output: merge_with(self.output, upper.output, |l, u| OutputLayer { formats: append(l.formats, u.formats) }),
            repositories: append(self.repositories, upper.repositories),
            artifacts: append(self.artifacts, upper.artifacts),
            first_boot: append(self.first_boot, upper.first_boot),
            site: None,
            site_vars: self.site_vars.into_iter().chain(upper.site_vars).collect(),
            groups: append(self.groups, upper.groups),
            files: append(self.files, upper.files),
            ports: append(self.ports, upper.ports),
            origins: self.origins.merge(upper.origins),
        }
    }
}
