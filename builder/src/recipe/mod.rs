//! The recipe model: TOML files (a recipe and the layers it includes) resolved into one `Recipe`.
pub mod arch;
mod error;
mod external;
mod files;
pub mod layer;
mod origins;
mod ports;
pub mod site;
pub mod sitevars;
mod size;
mod validate;
pub mod values;

pub use error::{Origin, RecipeError};
pub use layer::{AutomaticUpdates, Extract, Filesystem, InitramfsModules, ModulePolicy, OutputFormat};
pub use ports::Port;
pub use size::Size;
pub use values::{
    ArchiveComponent, DebName, FileName, Hostname, ImagePath, KernelWord, Locale, Owner, PinPattern, RecipeName,
    TimeZone, UnitName, Url, UserName, Version,
};

use crate::recipe::arch::Arch;
use layer::Layer;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// A fully resolved recipe: every include merged, defaults filled in, values checked.
#[derive(Debug, Clone, Serialize)]
pub struct Recipe {
    pub name: RecipeName,
    pub version: Version,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub architecture: Arch,
    pub source_date_epoch: i64,
    pub base: Base,
    pub system: System,
    pub users: Vec<User>,
    pub overlays: Vec<Overlay>,
    pub vars: serde_json::Map<String, serde_json::Value>,
    pub disk: Disk,
    pub boot: Boot,
    pub checks: Vec<Check>,
    /// Output formats. Not serialised, so not part of the recipe hash: they do not change
    /// the image (the plan shows them).
    #[serde(skip)]
    pub output: Output,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<Repository>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub first_boot: Vec<FirstBoot>,
    /// Site variables the recipe's layers declare, sorted by name (see docs/site.md).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub site_vars: Vec<sitevars::SiteVar>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Group>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileAttrs>,
    /// Where values checked late (against the mirror, against the root) were written.
    #[serde(skip)]
    pub origins: Positions,
    /// Service ports `kiln boot`/`kiln test` forward. Not serialised, so not part of the
    /// recipe hash: they do not change the image (the plan and the manifest show them).
    #[serde(skip)]
    pub ports: Vec<Port>,
    /// Every file read, the recipe first, as shown to the user.
    pub sources: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Base {
    pub suite: DebName,
    /// None: the host's configured Debian mirror.
    pub mirror: Option<Url>,
    /// Packages from `<suite>-security` (the image's apt sources list it too).
    pub security: bool,
    /// None: the host's configured security mirror, else `http://deb.debian.org/debian-security`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_mirror: Option<Url>,
    /// Packages from `<suite>-updates` on the main mirror.
    pub updates: bool,
    /// Documentation, manual and info pages kept (false: dpkg's path excludes leave them out,
    /// except each package's copyright file).
    pub docs: bool,
    pub components: Vec<ArchiveComponent>,
    pub packages: Vec<DebName>,
    /// None: the architecture's default (see `Arch::default_initramfs_modules`).
    pub initramfs_modules: Option<InitramfsModules>,
    /// None: the architecture's Debian kernel package.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<DebName>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub arch_packages: BTreeMap<Arch, Vec<DebName>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct System {
    pub hostname: Hostname,
    pub timezone: TimeZone,
    pub locale: Locale,
    pub enable: Vec<UnitName>,
    pub disable: Vec<UnitName>,
    /// unattended-upgrades from the security archive, or nothing (default: security when the
    /// security archive is on).
    pub automatic_updates: AutomaticUpdates,
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub name: UserName,
    pub groups: Vec<UserName>,
    pub ssh_authorized_keys: Vec<String>,
    pub shell: ImagePath,
}

#[derive(Debug, Clone, Serialize)]
pub struct Overlay {
    /// As written, relative to the recipe directory (shown in plans and errors).
    pub name: PathBuf,
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub size: u64,
    pub esp_size: u64,
    pub filesystem: Filesystem,
}

#[derive(Debug, Clone, Serialize)]
pub struct Boot {
    pub kernel_cmdline: Vec<KernelWord>,
    pub menu_timeout: u32,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Output {
    /// Formats to write, `img` first (always there), without duplicates.
    pub formats: Vec<OutputFormat>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    #[serde(flatten)]
    pub kind: CheckKind,
    pub timeout: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A shell command that must exit 0.
    Command(String),
    /// A systemd unit that must be active.
    Unit(String),
    /// A TCP port on the guest's loopback that must accept a connection.
    Port(u16),
}

/// An extra apt repository (see `repos.rs`).
#[derive(Debug, Clone, Serialize)]
pub struct Repository {
    pub name: FileName,
    pub url: Url,
    pub suite: DebName,
    pub components: Vec<ArchiveComponent>,
    /// The key file as written, relative to the recipe directory.
    pub key: PathBuf,
    #[serde(skip)]
    pub key_path: PathBuf,
    /// Full fingerprint, upper-case hex without spaces.
    pub fingerprint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<Pin>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pin {
    pub priority: i32,
    pub packages: Vec<PinPattern>,
}

/// A file fetched by URL and checked by sha256 (see `artifacts.rs`).
#[derive(Debug, Clone, Serialize)]
pub struct Artifact {
    pub name: FileName,
    pub url: Url,
    /// Lower-case hex.
    pub sha256: String,
    /// Absolute path in the image: the file, or the directory a tar archive is unpacked into.
    pub dest: ImagePath,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extract: Option<Extract>,
    #[serde(serialize_with = "octal")]
    pub mode: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

fn octal<S: serde::Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{mode:04o}"))
}

/// A first-boot action (see `firstboot.rs`).
#[derive(Debug, Clone, Serialize)]
pub struct FirstBoot {
    pub name: FileName,
    #[serde(flatten)]
    pub run: FirstBootRun,
    pub before: Vec<UnitName>,
    pub after: Vec<UnitName>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FirstBootRun {
    /// A bash command line.
    Command(String),
    /// An executable in the image (shipped by an overlay).
    Script(ImagePath),
}

/// A group made in the image before the users (`[[groups]]`).
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub name: UserName,
    pub system: bool,
}

/// Owner, group and mode of a path in the image (`[[files]]`); None keeps what is there.
#[derive(Debug, Clone, Serialize)]
pub struct FileAttrs {
    pub path: ImagePath,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<UserName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<UserName>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "octal_opt")]
    pub mode: Option<u32>,
}

fn octal_opt<S: serde::Serializer>(mode: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
    match mode {
        Some(m) => octal(m, s),
        None => s.serialize_none(),
    }
}

/// Where the values that are checked after loading were written: package names and enabled
/// units (by name), first-boot actions and `[[files]]` entries (in list order).
#[derive(Debug, Clone, Default)]
pub struct Positions {
    pub packages: BTreeMap<String, Origin>,
    pub enable: BTreeMap<String, Origin>,
    pub disable: BTreeMap<String, Origin>,
    pub first_boot: Vec<Origin>,
    pub files: Vec<Origin>,
}

impl Positions {
    /// Where `what` was written, or the recipe file itself.
    pub fn error(origin: Option<&Origin>, recipe: &Recipe, key: &str, message: String) -> RecipeError {
        match origin {
            Some(o) => o.error(None, message),
            None => RecipeError::file(
                recipe.sources.first().map(PathBuf::as_path).unwrap_or(Path::new("recipe")),
                Some(key.into()),
                message,
            ),
        }
    }
}

/// Defaults used when no layer sets a value.
pub mod defaults {
    pub const SUITE: &str = "trixie";
    pub const TIMEZONE: &str = "Etc/UTC";
    pub const LOCALE: &str = "C.UTF-8";
    pub const DISK_SIZE: u64 = 2 << 30;
    pub const ESP_SIZE: u64 = 256 << 20;
    pub const CHECK_TIMEOUT: u32 = 60;
    /// 2025-01-01T00:00:00Z: every timestamp kiln writes, unless the recipe names another.
    pub const SOURCE_DATE_EPOCH: i64 = 1_735_689_600;
}

/// Largest recipe or layer file.
pub const MAX_RECIPE: u64 = 1 << 20;

/// Read a recipe file, resolve its includes and return the resolved recipe.
pub fn load(path: &Path) -> Result<Recipe, RecipeError> {
    let mut sources = Vec::new();
    let mut stack = Vec::new();
    let top_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let layer = load_layer(path, &top_dir, &mut stack, &mut sources)?;
    validate::resolve(layer, path, sources)
}

fn load_layer(
    path: &Path,
    top_dir: &Path,
    stack: &mut Vec<PathBuf>,
    sources: &mut Vec<PathBuf>,
) -> Result<Layer, RecipeError> {
    let text = crate::host::files::read_regular(path, MAX_RECIPE).map_err(|e| {
        RecipeError::file(
            path,
            None,
            format!("cannot read recipe: {e} (recipes and layers are regular files of at most 1MiB)"),
        )
    })?;
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    stack.push(canonical);
    sources.push(path.to_path_buf());
    let mut layer = layer::parse(path, &text)?;
    validate::per_file(&mut layer, path, &text, top_dir)?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let mut merged = Layer::default();
    for inc in layer.include.take().unwrap_or_default() {
        let inc_path = normalize(&dir.join(inc.get_ref()));
        let key = Some("include".to_string());
        let canonical = inc_path.canonicalize().map_err(|e| {
            RecipeError::at(
                path,
                &text,
                inc.span().start,
                key.clone(),
                format!("cannot read included file `{}` ({}): {e}", inc.get_ref(), inc_path.display()),
            )
        })?;
        if let Err(e) = crate::host::files::check_regular(&canonical, MAX_RECIPE) {
            let msg = format!(
                "cannot read included file `{}`: {e} (layers are regular files of at most 1MiB)",
                inc.get_ref()
            );
            return Err(RecipeError::at(path, &text, inc.span().start, key, msg));
        }
        if let Some(pos) = stack.iter().position(|p| *p == canonical) {
            let mut cycle: Vec<String> =
                stack[pos..].iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
            cycle.push(canonical.file_name().unwrap_or_default().to_string_lossy().into_owned());
            return Err(RecipeError::at(
                path,
                &text,
                inc.span().start,
                key,
                format!("include cycle: {}", cycle.join(" -> ")),
            ));
        }
        let included = load_layer(&inc_path, top_dir, stack, sources)?;
        merged = merged.merge(included);
    }
    stack.pop();
    Ok(merged.merge(layer))
}

/// Lexically clean a path (drop `.`, fold `dir/..`) without touching the filesystem.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Express `path` relative to `base` when it lies below it, lexically (for host-independent plans).
pub fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let (p, b) = (normalize(path), normalize(base));
    let pc: Vec<_> = p.components().collect();
    let bc: Vec<_> = b.components().collect();
    let common = pc.iter().zip(&bc).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..bc.len() {
        out.push("..");
    }
    for c in &pc[common..] {
        out.push(c.as_os_str());
    }
    out
}
