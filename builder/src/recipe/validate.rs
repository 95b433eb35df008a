//! Checks on recipe values: per file (where positions are known) and on the merged result.
use super::error::{Origin, RecipeError};
use super::layer::{
    AutomaticUpdates, BaseLayer, CheckLayer, DiskLayer, InitramfsModules, Layer, ModulesSetting, Origins, SystemLayer,
    UserLayer,
};
use super::origins::Unique;
use super::values::{Hostname, ImagePath, Locale, RecipeName, TimeZone};
use super::{
    defaults, normalize, relative_to, Base, Boot, Check, CheckKind, Disk, Filesystem, Output, OutputFormat, Overlay,
    Recipe, System, User,
};
use crate::recipe::arch::Arch;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Checks that need the file's text for positions; resolves overlay paths against the file's directory.
pub fn per_file(layer: &mut Layer, file: &Path, text: &str, top_dir: &Path) -> Result<(), RecipeError> {
    let err = |offset: usize, key: &str, msg: String| RecipeError::at(file, text, offset, Some(key.to_string()), msg);
    let dir = file.parent().unwrap_or(Path::new(""));
    layer.locate(file, text);
    for (i, ov) in layer.overlays.iter_mut().flatten().enumerate() {
        let path = normalize(&dir.join(ov.get_ref()));
        if !path.is_dir() {
            return Err(err(
                ov.span().start,
                &format!("overlays[{i}]"),
                format!("overlay directory `{}` not found (looked in {})", ov.get_ref(), path.display()),
            ));
        }
        *ov.get_mut() = relative_to(&path, top_dir).to_string_lossy().into_owned();
    }
    if let Some(site) = layer.site.take() {
        layer.site_vars = super::sitevars::declarations(site, file, text)?;
    }
    check_users(layer, &err)?;
    for (i, c) in layer.checks.iter().flatten().enumerate() {
        check_kind(c.get_ref()).map_err(|m| err(c.span().start, &format!("checks[{i}]"), m))?;
    }
    if let Some(epoch) = &layer.source_date_epoch {
        if !(315_532_800..=4_102_444_800).contains(epoch.get_ref()) {
            return Err(err(
                epoch.span().start,
                "source_date_epoch",
                "must lie between 1980-01-01 and 2100-01-01 (FAT and ext4 cannot store every time)".into(),
            ));
        }
    }
    check_disk(layer, &err)?;
    super::files::per_file(layer, &err)?;
    super::ports::per_file(&layer.ports, &err)?;
    super::external::per_file(layer, file, text, top_dir)?;
    if let Some(m) = layer.base.as_ref().and_then(|b| b.initramfs_modules.as_ref()) {
        initramfs_modules(m.get_ref()).map_err(|msg| err(m.span().start, "base.initramfs_modules", msg))?;
    }
    Ok(())
}

/// Users' names and SSH keys.
fn check_users(layer: &Layer, err: &impl Fn(usize, &str, String) -> RecipeError) -> Result<(), RecipeError> {
    for (i, u) in layer.users.iter().flatten().enumerate() {
        let key = format!("users[{i}]");
        let user = u.get_ref();
        if let Some(bad) = user.ssh_authorized_keys.iter().find(|k| !is_ssh_key(k)) {
            return Err(err(
                u.span().start,
                &format!("{key}.ssh_authorized_keys"),
                format!("`{}` does not look like an OpenSSH public key (`ssh-ed25519 AAAA…`)", truncate(bad, 40)),
            ));
        }
    }
    Ok(())
}

/// Disk and ESP sizes.
fn check_disk(layer: &Layer, err: &impl Fn(usize, &str, String) -> RecipeError) -> Result<(), RecipeError> {
    if let Some(disk) = &layer.disk {
        if let Some(size) = &disk.size {
            let esp = disk.esp_size.as_ref().map(|e| e.get_ref().0).unwrap_or(defaults::ESP_SIZE);
            if let Some(msg) = too_small(size.get_ref().0, esp) {
                return Err(err(size.span().start, "disk.size", msg));
            }
        }
        if let Some(esp) = &disk.esp_size {
            if esp.get_ref().0 < 64 << 20 {
                return Err(err(
                    esp.span().start,
                    "disk.esp_size",
                    format!("{} is too small: the ESP needs at least 64MiB for a kernel and initrd", esp.get_ref()),
                ));
            }
        }
    }
    Ok(())
}

/// The typed setting, or what is wrong with it.
fn initramfs_modules(m: &ModulesSetting) -> Result<InitramfsModules, String> {
    if let ModulesSetting::List(list) = m {
        if let Some(bad) = list.iter().find(|x| !is_module_name(x)) {
            return Err(format!(
                "`{}` is not a kernel module name: letters, digits, `_` and `-`, at most 64 characters",
                truncate(bad, 40).escape_debug()
            ));
        }
    }
    m.typed().ok_or_else(|| {
        let p = match m {
            ModulesSetting::Policy(p) => p.as_str(),
            ModulesSetting::List(_) => "",
        };
        format!("`{p}` is not an initramfs module policy: use \"most\", \"netboot\", \"dep\" or a list of module names")
    })
}

fn check_kind(c: &CheckLayer) -> Result<CheckKind, String> {
    let unit = c.unit.clone().map(|u| CheckKind::Unit(u.into()));
    let kinds = [c.command.clone().map(CheckKind::Command), unit, c.port.map(CheckKind::Port)];
    let mut set = kinds.into_iter().flatten();
    match (set.next(), set.next()) {
        (Some(kind), None) => {
            let text = match &kind {
                CheckKind::Command(s) | CheckKind::Unit(s) => s.as_str(),
                CheckKind::Port(_) => "",
            };
            if text.contains(['\t', '\n']) || c.name.as_deref().is_some_and(|n| n.contains(['\t', '\n'])) {
                return Err("check names and values must be one line without tabs".into());
            }
            if c.port == Some(0) {
                return Err("port 0 cannot be checked".into());
            }
            Ok(kind)
        }
        (None, _) => Err("a check needs one of `command`, `unit` or `port`".into()),
        (Some(_), Some(_)) => Err("a check takes only one of `command`, `unit` or `port`; write two checks".into()),
    }
}

/// Fill defaults into the merged layer and check what spans files.
pub fn resolve(mut layer: Layer, file: &Path, sources: Vec<PathBuf>) -> Result<Recipe, RecipeError> {
    let origins = std::mem::take(&mut layer.origins);
    let (repositories, artifacts, first_boot) =
        super::external::resolve(file, file.parent().unwrap_or(Path::new("")), &mut layer, &origins)?;
    let missing = |key: &str| {
        RecipeError::file(file, Some(key.into()), "missing: set it in the recipe or a layer it includes".to_string())
    };
    let name = layer.name.ok_or_else(|| missing("name"))?.into_inner();
    let version = layer.version.ok_or_else(|| missing("version"))?;
    let top_dir = file.parent().unwrap_or(Path::new(""));

    let base = resolve_base(layer.base.unwrap_or_default(), &origins, file)?;
    let system = resolve_system(layer.system.unwrap_or_default(), &name, &origins, &base, file)?;
    let users = resolve_users(layer.users.unwrap_or_default(), &origins.users, file)?;

    let overlays = dedup(layer.overlays.unwrap_or_default().into_iter().map(|o| o.into_inner()).collect())
        .into_iter()
        .map(|name| Overlay { path: normalize(&top_dir.join(&name)), name: PathBuf::from(name) })
        .collect();

    let disk = resolve_disk(layer.disk.unwrap_or_default(), file)?;
    let boot = layer.boot.unwrap_or_default();
    let boot =
        Boot { kernel_cmdline: boot.kernel_cmdline.unwrap_or_default(), menu_timeout: boot.menu_timeout.unwrap_or(0) };

    let site_vars = super::sitevars::merge(std::mem::take(&mut layer.site_vars))?;
    let checks = resolve_checks(layer.checks.unwrap_or_default(), &origins.checks, file)?;
    let (groups, files) = super::files::resolve(
        layer.groups.unwrap_or_default(),
        layer.files.unwrap_or_default(),
        &origins,
        &users,
        file,
    )?;
    let ports = super::ports::resolve(layer.ports.take().unwrap_or_default(), &origins.ports, file)?;

    let mut formats = vec![OutputFormat::Img];
    formats.extend(layer.output.and_then(|o| o.formats).unwrap_or_default());
    let output = Output { formats: dedup(formats) };

    let vars = serde_json::to_value(layer.vars.unwrap_or_default())
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();

    Ok(Recipe {
        name,
        version,
        description: layer.description,
        architecture: layer.architecture.unwrap_or(Arch::X86_64),
        source_date_epoch: layer.source_date_epoch.map(|e| e.into_inner()).unwrap_or(defaults::SOURCE_DATE_EPOCH),
        base,
        system,
        users,
        overlays,
        vars,
        disk,
        boot,
        checks,
        output,
        repositories,
        artifacts,
        first_boot,
        site_vars,
        groups,
        files,
        origins: super::Positions {
            packages: origins.packages,
            enable: origins.enable,
            disable: origins.disable,
            first_boot: origins.first_boot,
            files: origins.files,
        },
        ports,
        sources,
    })
}

fn resolve_base(base: BaseLayer, origins: &Origins, file: &Path) -> Result<Base, RecipeError> {
    let main = || vec!["main".to_string().try_into().expect("`main` is a component")];
    let components = dedup(base.components.unwrap_or_else(main));
    let security = base.security.unwrap_or(true);
    if let (false, Some(o)) = (security, &origins.security_mirror) {
        return Err(o.error(
            None,
            "a security mirror is set but `base.security = false` turns the security archive off; drop one of them",
        ));
    }
    Ok(Base {
        suite: base.suite.unwrap_or_else(|| defaults::SUITE.to_string().try_into().expect("the default suite")),
        mirror: base.mirror,
        security,
        security_mirror: base.security_mirror.map(Spanned::into_inner),
        updates: base.updates.unwrap_or(true),
        docs: base.docs.unwrap_or(false),
        components,
        packages: dedup(base.packages.unwrap_or_default()),
        initramfs_modules: base
            .initramfs_modules
            .as_ref()
            .map(|m| initramfs_modules(m.get_ref()))
            .transpose()
            .map_err(|msg| RecipeError::file(file, Some("base.initramfs_modules".into()), msg))?,
        kernel: base.kernel,
        arch_packages: base.arch_packages.unwrap_or_default().into_iter().map(|(a, p)| (a, dedup(p))).collect(),
    })
}

/// The system settings; the host name defaults to the recipe name, which must then be a valid one.
fn resolve_system(
    sys: SystemLayer,
    name: &RecipeName,
    origins: &Origins,
    base: &Base,
    file: &Path,
) -> Result<System, RecipeError> {
    let name_origin = origins.name.as_ref();
    let automatic_updates = match &sys.automatic_updates {
        Some(a) if *a.get_ref() == AutomaticUpdates::Security && !base.security => {
            let o = origins.automatic_updates.as_ref().expect("located with the value");
            return Err(o.error(
                None,
                "`security` installs updates from the security archive, which `base.security = false` turns off; set `automatic_updates = \"off\"` or drop `base.security = false`",
            ));
        }
        Some(a) => *a.get_ref(),
        None if base.security => AutomaticUpdates::Security,
        None => AutomaticUpdates::Off,
    };
    let hostname = match sys.hostname {
        Some(h) => h.into_inner(),
        None => Hostname::try_from(name.to_string()).map_err(|_| {
            let msg = format!("the default host name (the recipe name `{name}`) is not valid; set system.hostname");
            match name_origin {
                Some(o) => o.error(Some("name".into()), msg),
                None => RecipeError::file(file, Some("system.hostname".into()), msg),
            }
        })?,
    };
    Ok(System {
        hostname,
        timezone: sys.timezone.unwrap_or_else(|| TimeZone::try_from(defaults::TIMEZONE).expect("the default zone")),
        locale: sys.locale.unwrap_or_else(|| Locale::try_from(defaults::LOCALE).expect("the default locale")),
        enable: dedup(sys.enable.unwrap_or_default()),
        disable: dedup(sys.disable.unwrap_or_default()),
        automatic_updates,
    })
}

/// Users, each defined once across the recipe and its layers.
fn resolve_users(users_in: Vec<Spanned<UserLayer>>, origins: &[Origin], file: &Path) -> Result<Vec<User>, RecipeError> {
    let mut users = Vec::new();
    let mut names = Unique::new("users", "users", origins);
    for (i, u) in users_in.into_iter().enumerate() {
        let u = u.into_inner();
        names.check(i, &u.name, file)?;
        users.push(User {
            name: u.name,
            groups: dedup(u.groups),
            ssh_authorized_keys: u.ssh_authorized_keys,
            shell: u.shell.unwrap_or_else(|| ImagePath::try_from("/bin/bash").expect("an image path")),
        });
    }
    Ok(users)
}

fn resolve_disk(disk: DiskLayer, file: &Path) -> Result<Disk, RecipeError> {
    let disk = Disk {
        size: disk.size.map(|s| s.into_inner().0).unwrap_or(defaults::DISK_SIZE),
        esp_size: disk.esp_size.map(|s| s.into_inner().0).unwrap_or(defaults::ESP_SIZE),
        filesystem: disk.filesystem.unwrap_or(Filesystem::Ext4),
    };
    if let Some(msg) = too_small(disk.size, disk.esp_size) {
        return Err(RecipeError::file(file, Some("disk.size".into()), msg));
    }
    Ok(disk)
}

/// Checks with their default names, each name used once.
fn resolve_checks(
    checks_in: Vec<Spanned<CheckLayer>>,
    origins: &[Origin],
    file: &Path,
) -> Result<Vec<Check>, RecipeError> {
    let mut checks: Vec<Check> = Vec::new();
    let mut names = Unique::new("checks", "checks", origins).hint("; give one a `name`");
    for (i, c) in checks_in.into_iter().enumerate() {
        let c = c.into_inner();
        let kind = check_kind(&c).map_err(|m| RecipeError::file(file, Some("checks".into()), m))?;
        let name = c.name.clone().unwrap_or_else(|| match &kind {
            CheckKind::Command(cmd) => format!("command: {}", truncate(cmd, 48)),
            CheckKind::Unit(u) => format!("unit: {u}"),
            CheckKind::Port(p) => format!("port: {p}"),
        });
        names.check(i, &name, file)?;
        checks.push(Check { name, kind, timeout: c.timeout.unwrap_or(defaults::CHECK_TIMEOUT) });
    }
    Ok(checks)
}

/// Why a disk of `size` is too small for an ESP of `esp` plus a root of at least 512MiB, if it is.
fn too_small(size: u64, esp: u64) -> Option<String> {
    let min_root = 512 << 20;
    (size < esp + min_root + (2 << 20)).then(|| {
        format!(
            "{} leaves no room for a root filesystem of at least 512MiB beside a {} ESP",
            super::Size(size),
            super::Size(esp)
        )
    })
}

fn dedup<T: Ord + Clone>(v: Vec<T>) -> Vec<T> {
    let mut seen = BTreeSet::new();
    v.into_iter().filter(|s| seen.insert(s.clone())).collect()
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

fn is_module_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

fn is_ssh_key(s: &str) -> bool {
    let mut parts = s.split_whitespace();
    let kind = parts.next().unwrap_or("");
    let blob = parts.next().unwrap_or("");
    (kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
        && blob.starts_with("AAAA")
        && !s.chars().any(|c| c.is_control())
}
