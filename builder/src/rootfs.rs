//! The Debian root: bootstrapped by mmdebstrap into a tarball, cached by the hash of its inputs,
//! then unpacked into the work directory for configuration.
use crate::cmd::Cmd;
use crate::plan::Plan;
use crate::recipe::InitramfsModules;
use crate::work::WorkDir;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Bump when the way kiln drives mmdebstrap changes, so old cached roots are not reused.
const BOOTSTRAP_FORMAT: u32 = 2;

/// Everything that decides the bytes of the bootstrapped root; its hash names the cache entry.
#[derive(Serialize)]
struct BootstrapInputs<'a> {
    format: u32,
    arch: &'a str,
    suite: &'a str,
    mirror: &'a str,
    components: &'a [String],
    packages: &'a [String],
    initramfs_modules: &'a InitramfsModules,
    locale: &'a str,
    source_date_epoch: i64,
    /// Extra apt repositories (left out when there are none, so older keys stay valid).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    repositories: Vec<RepoInputs<'a>>,
}

#[derive(Serialize)]
struct RepoInputs<'a> {
    name: &'a str,
    url: &'a str,
    suite: &'a str,
    components: &'a [String],
    fingerprint: &'a str,
    pin: Option<String>,
}

/// Extra apt sources for mmdebstrap: source lines after the Debian mirror, and setup hooks
/// (pins) run before anything is installed. See `repos.rs`.
#[derive(Debug, Default)]
pub struct ExtraSources {
    pub lines: Vec<String>,
    pub setup_hooks: Vec<String>,
}

fn inputs(plan: &Plan) -> BootstrapInputs<'_> {
    let r = &plan.recipe;
    BootstrapInputs {
        format: BOOTSTRAP_FORMAT,
        arch: plan.arch().debian(),
        suite: &r.base.suite,
        mirror: &plan.mirror,
        components: &r.base.components,
        packages: &plan.packages,
        initramfs_modules: &plan.initramfs_modules,
        locale: &r.system.locale,
        source_date_epoch: r.source_date_epoch,
        repositories: r
            .repositories
            .iter()
            .map(|x| RepoInputs { name: &x.name, url: &x.url, suite: &x.suite, components: &x.components, fingerprint: &x.fingerprint, pin: crate::repos::pin_file(x) })
            .collect(),
    }
}

/// Cache key of the plan's bootstrapped root.
pub fn cache_key(plan: &Plan) -> String {
    crate::ids::sha256_hex(serde_json::to_string(&inputs(plan)).unwrap_or_default().as_bytes())
}

/// Return a tarball of the bootstrapped root: from `cache` when present, else made by mmdebstrap
/// (and stored in `cache` when given).
pub fn bootstrap(plan: &Plan, work: &WorkDir, cache: Option<&Path>, extra: &ExtraSources) -> Result<(PathBuf, bool)> {
    let key = cache_key(plan);
    if let Some(cache) = cache {
        let cached = cache.join("roots").join(format!("{key}.tar"));
        if cached.is_file() {
            tracing::info!("reusing cached root {}", cached.display());
            return Ok((cached, true));
        }
    }
    let tar = work.join("root.tar");
    mmdebstrap(plan, work, &tar, extra)?;
    if let Some(cache) = cache {
        let dir = cache.join("roots");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating cache directory {}", dir.display()))?;
        let tmp = dir.join(format!(".{key}.tar.partial"));
        let dest = dir.join(format!("{key}.tar"));
        // Same file system as the work dir is not guaranteed: copy, then rename into place.
        std::fs::copy(&tar, &tmp).with_context(|| format!("storing root in cache {}", dir.display()))?;
        std::fs::rename(&tmp, &dest).context("renaming cached root into place")?;
        return Ok((dest, false));
    }
    Ok((tar, false))
}

fn mmdebstrap(plan: &Plan, work: &WorkDir, out: &Path, extra: &ExtraSources) -> Result<()> {
    let r = &plan.recipe;
    let mut cmd = Cmd::new("mmdebstrap")
        .arg("--mode=root")
        .arg("--variant=minbase")
        .arg(format!("--architectures={}", plan.arch().debian()))
        .arg(format!("--components={}", r.base.components.join(",")))
        .arg(format!("--include={}", plan.packages.join(",")))
        .arg("--aptopt=Acquire::Retries \"3\"")
        .env("SOURCE_DATE_EPOCH", r.source_date_epoch.to_string())
        .env("TMPDIR", work.path());
    for hook in setup_hooks(&plan.initramfs_modules).iter().chain(&extra.setup_hooks) {
        cmd = cmd.arg(format!("--setup-hook={hook}"));
    }
    cmd = cmd.arg(format!("--essential-hook={DEFER_INITRAMFS}"));
    if let Some(hook) = locale_hook(&r.system.locale) {
        cmd = cmd.arg(format!("--customize-hook={hook}"));
    }
    cmd = cmd.arg(format!("--customize-hook={BUILD_INITRAMFS}"));
    let extra_names = r.repositories.iter().map(|x| format!(" and repository `{}` ({})", x.name, x.url)).collect::<String>();
    cmd.arg(&r.base.suite)
        .arg(out)
        .arg(&plan.mirror)
        .args(&extra.lines)
        .run()
        .with_context(|| format!("bootstrapping Debian {} ({}) from {}{extra_names}", r.base.suite, plan.arch().debian(), plan.mirror))
}

/// mkinitramfs would run once when the kernel is installed and again for every trigger; under
/// emulation each run costs minutes. Divert update-initramfs to a no-op while packages install
/// (the kernel hook then skips, triggers do nothing) ...
const DEFER_INITRAMFS: &str = "chroot \"$1\" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs && ln -s /bin/true \"$1/usr/sbin/update-initramfs\"";
/// ... and build the initrd exactly once, when everything is installed.
const BUILD_INITRAMFS: &str = "rm \"$1/usr/sbin/update-initramfs\" && chroot \"$1\" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs && chroot \"$1\" update-initramfs -c -k all";

/// Hooks run before any package is installed: the initramfs driver policy.
fn setup_hooks(modules: &InitramfsModules) -> Vec<String> {
    let conf = "mkdir -p \"$1/etc/initramfs-tools/conf.d\" \"$1/usr/share/initramfs-tools/modules.d\"";
    match modules {
        InitramfsModules::Policy(p) if p == "most" => vec![],
        InitramfsModules::Policy(p) => vec![format!("{conf} && echo MODULES={p} > \"$1/etc/initramfs-tools/conf.d/kiln\"")],
        InitramfsModules::List(list) => vec![format!(
            "{conf} && echo MODULES=list > \"$1/etc/initramfs-tools/conf.d/kiln\" && printf '%s\\n' {} > \"$1/usr/share/initramfs-tools/modules.d/kiln\"",
            list.iter().map(|m| crate::cmd::shell_quote(m)).collect::<Vec<_>>().join(" ")
        )],
    }
}

/// Generate a non-C locale inside the root (needs the `locales` package).
fn locale_hook(locale: &str) -> Option<String> {
    if matches!(locale, "C" | "C.UTF-8" | "POSIX") {
        return None;
    }
    let charset = locale.split('.').nth(1).unwrap_or("UTF-8");
    let q = crate::cmd::shell_quote(&format!("{locale} {charset}"));
    Some(format!("echo {q} > \"$1/etc/locale.gen\" && chroot \"$1\" locale-gen"))
}

/// Unpack the root tarball into `dir`, keeping owners, modes and extended attributes.
pub fn unpack(tar: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Cmd::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(tar)
        .arg("-C")
        .arg(dir)
        .run()
        .context("unpacking the root")
}

#[cfg(test)]
mod tests {
    use crate::plan::Plan;
    use std::path::Path;

    #[test]
    fn extra_repositories_change_the_cache_key() {
        let plan = Plan::new(crate::recipe::load(Path::new("tests/recipes/good/extras.toml")).unwrap()).unwrap();
        let mut without = plan.clone();
        without.recipe.repositories.clear();
        let mut other_key = plan.clone();
        other_key.recipe.repositories[0].fingerprint = "0".repeat(40);
        let keys = [super::cache_key(&plan), super::cache_key(&without), super::cache_key(&other_key)];
        assert!(keys[0] != keys[1] && keys[0] != keys[2] && keys[1] != keys[2], "{keys:?}");
    }
}
