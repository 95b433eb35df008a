//! The Debian root: bootstrapped by mmdebstrap, cached by the hash of its inputs, and given to
//! each build as a writable overlay over the cached tree.
use crate::bootstrap::assist::Assist;
use crate::bootstrap::tools::Tools;
use crate::debian::debcache::DebCache;
use crate::debian::source::Source;
use crate::host::cache::{self, Cache};
use crate::host::cmd::Cmd;
use crate::host::work::WorkDir;
use crate::plan::Plan;
use crate::recipe::InitramfsModules;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Bump when the way kiln drives mmdebstrap changes, so old cached roots are not reused.
const BOOTSTRAP_FORMAT: u32 = 6;

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
    /// Hash of the locked package set, when the bootstrap pins one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pins: Option<String>,
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

fn inputs<'a>(plan: &'a Plan, source: &Source) -> BootstrapInputs<'a> {
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
        pins: source.pins_hash(),
        repositories: r
            .repositories
            .iter()
            .map(|x| RepoInputs {
                name: &x.name,
                url: &x.url,
                suite: &x.suite,
                components: &x.components,
                fingerprint: &x.fingerprint,
                pin: crate::debian::repos::pin_file(x),
            })
            .collect(),
    }
}

/// Cache key of the plan's bootstrapped root (online and offline bootstraps of one lock share it).
pub fn cache_key(plan: &Plan, source: &Source) -> String {
    crate::host::files::sha256_hex(serde_json::to_string(&inputs(plan, source)).unwrap_or_default().as_bytes())
}

/// Where the cache keeps the root `prepare` bootstraps for `plan` from `source`.
pub fn cache_dir(plan: &Plan, source: &Source, cache: &Path) -> PathBuf {
    Cache::new(cache).roots().join(cache_key(plan, source))
}

/// Whether the cache holds the root `prepare` would bootstrap.
pub fn is_cached(plan: &Plan, source: &Source, cache: &Path) -> bool {
    cache_dir(plan, source, cache).join("etc/os-release").exists()
}

/// The writable root of a build, at `dir`.
pub struct Root {
    pub dir: PathBuf,
    /// The bootstrap came from the cache (no mmdebstrap run).
    pub from_cache: bool,
}

/// Make the build's writable root at `work/root`. With a cache, the bootstrapped tree is kept
/// there (made once per set of inputs) and the build works on an overlay over it, so the cached
/// tree is never changed and a warm build copies nothing. Without a cache, mmdebstrap writes
/// `work/root` directly.
///
/// The packages come from `source` (mirror or local repository, pinned to a lock or not); the
/// .debs mmdebstrap downloads move into `debs`, out of the root. With `native` (the tools tree),
/// a foreign-architecture bootstrap runs arch-neutral programs natively from it (same root; see
/// `assist.rs`); None emulates everything.
pub fn prepare(
    plan: &Plan,
    work: &WorkDir,
    cache: Option<&Path>,
    source: &Source,
    debs: &DebCache,
    extra: &crate::debian::repos::ExtraSources,
    native: Option<&Tools>,
) -> Result<Root> {
    let dir = work.join("root");
    let Some(cache) = cache else {
        bootstrap(plan, work, &dir, source, debs, extra, native)?;
        return Ok(Root { dir, from_cache: false });
    };
    let cached = cache_dir(plan, source, cache);
    let mut from_cache = cached.join("etc/os-release").exists();
    if !from_cache {
        // One build makes the entry; another one wanting it waits here, then reuses it.
        let _lock = Cache::lock_entry(&cached)?;
        from_cache = cached.join("etc/os-release").exists();
        if !from_cache {
            let fresh = work.join("bootstrap");
            bootstrap(plan, work, &fresh, source, debs, extra, native)?;
            cache::store(&fresh, &cached).context("storing the bootstrapped root in the cache")?;
        }
    }
    if from_cache {
        tracing::info!("reusing cached root {}", cached.display());
    }
    mount_overlay(&cached, work, &dir)?;
    Ok(Root { dir, from_cache })
}

fn mount_overlay(lower: &Path, work: &WorkDir, dir: &Path) -> Result<()> {
    let (upper, scratch) = (work.join("upper"), work.join("overlay-work"));
    for d in [&upper, &scratch, &dir.to_path_buf()] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let opts = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), scratch.display());
    if [lower, upper.as_path(), scratch.as_path()].iter().any(|p| p.to_string_lossy().contains([',', ':'])) {
        bail!("cache and work paths must not contain `,` or `:` (overlay mount options): {opts}");
    }
    Cmd::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(&opts)
        .arg(dir)
        .run()
        .context("mounting the build's overlay over the cached root")
}

/// Unmount the overlay of a cached root (no-op for a plain directory).
pub fn release(root: &Root) -> Result<()> {
    if crate::host::work::mounts_below(&root.dir)?
        .iter()
        .any(|m| m == &root.dir.canonicalize().unwrap_or_else(|_| root.dir.clone()))
    {
        Cmd::new("umount").arg(&root.dir).run().context("unmounting the build's overlay")?;
    }
    Ok(())
}

/// mmdebstrap into `out`, then the downloaded .debs into the cache and, with a lock, the
/// installed packages checked against it.
fn bootstrap(
    plan: &Plan,
    work: &WorkDir,
    out: &Path,
    source: &Source,
    debs: &DebCache,
    extra: &crate::debian::repos::ExtraSources,
    native: Option<&Tools>,
) -> Result<()> {
    let assist = match native {
        Some(tools) => Assist::new(plan.arch(), tools, work)?,
        None => None,
    };
    let assist = assist.as_ref();
    match mmdebstrap(plan, work, out, source, debs, extra, assist) {
        // Native help must never be why a build fails: a package whose maintainer script needs
        // more than the help offers gets the plain emulated bootstrap.
        Err(e) if assist.is_some() && !crate::host::cmd::interrupted() => {
            eprintln!(
                "kiln: the bootstrap with native help failed; bootstrapping again with everything emulated\n  ({:#})",
                e.chain()
                    .last()
                    .map(|c| c.to_string())
                    .unwrap_or_default()
                    .lines()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" / ")
            );
            tracing::debug!("bootstrap with native help: {e:#}");
            crate::host::work::remove_tree(out)?;
            mmdebstrap(plan, work, out, source, debs, extra, None)?;
        }
        r => r?,
    }
    debs.absorb(out).context("moving the downloaded .debs into the cache")?;
    if source.pins.is_some() {
        source.verify(&crate::debian::packages::installed(out)?)?;
    }
    Ok(())
}

/// mmdebstrap's options that keep what kiln reads after a bootstrap: apt's package lists (the
/// sha256 of every installed .deb, for the SBOM and lock files) and the downloaded .debs (for
/// the .deb cache). system::clean removes what is left of them before the image is made.
pub const KEEP: &str = "--skip=cleanup/apt/lists,cleanup/apt/cache,essential/unlink";

fn mmdebstrap(
    plan: &Plan,
    work: &WorkDir,
    out: &Path,
    source: &Source,
    debs: &DebCache,
    extra: &crate::debian::repos::ExtraSources,
    assist: Option<&Assist>,
) -> Result<()> {
    let r = &plan.recipe;
    let src = source.mmdebstrap_args(debs, work, "root")?;
    // The assist's mounts live in a private mount namespace: gone with mmdebstrap, however it ends.
    let mut cmd = match assist {
        Some(_) => Cmd::new("unshare").args(["--mount", "--propagation", "private", "mmdebstrap"]),
        None => Cmd::new("mmdebstrap"),
    };
    if let Some(a) = assist {
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        cmd = cmd
            .env("PATH", format!("{}:{path}", crate::bootstrap::assist::PATH_DIR))
            .arg(format!("--extract-hook={}", a.hook("setup")));
    }
    cmd = cmd
        .arg("--mode=root")
        .arg("--variant=minbase")
        .arg(format!("--architectures={}", plan.arch().debian()))
        .arg(format!("--include={}", plan.packages.join(",")))
        .arg("--aptopt=Acquire::Retries \"3\"")
        .arg(KEEP)
        .args(&src.options)
        .env("SOURCE_DATE_EPOCH", r.source_date_epoch.to_string())
        .env("TMPDIR", work.path());
    for hook in setup_hooks(&plan.initramfs_modules).iter().chain(&extra.setup_hooks) {
        cmd = cmd.arg(format!("--setup-hook={hook}"));
    }
    if Some(plan.arch()) != crate::recipe::arch::Arch::host() {
        cmd = cmd.env("QEMU_CPU", plan.arch().qemu_user_cpu());
    }
    cmd = cmd.arg(format!("--essential-hook={DEFER_INITRAMFS}")).arg(format!("--essential-hook={NO_HOST_KEYS}"));
    if let Some(a) = assist {
        cmd =
            cmd.arg(format!("--essential-hook={}", a.hook("bind"))).arg(format!("--customize-hook={}", a.hook("bind")));
    }
    if let Some(hook) = locale_hook(&r.system.locale) {
        cmd = cmd.arg(format!("--customize-hook={hook}"));
    }
    cmd = cmd.arg(format!("--customize-hook={BUILD_INITRAMFS}"));
    if let Some(a) = assist {
        cmd = cmd.arg(format!("--customize-hook={}", a.hook("teardown")));
    }
    let from = if source.offline { "the .deb cache".to_string() } else { plan.mirror.clone() };
    let extra_names =
        r.repositories.iter().map(|x| format!(" and repository `{}` ({})", x.name, x.url)).collect::<String>();
    cmd.arg(&r.base.suite).arg(out).arg(&src.mirror).args(&extra.lines).run().with_context(|| {
        format!("bootstrapping Debian {} ({}) from {from}{extra_names}", r.base.suite, plan.arch().debian())
    })?;
    match assist.map(|a| a.summary()) {
        Some(Some(s)) => eprintln!("kiln: foreign-architecture bootstrap: {s}"),
        Some(None) => eprintln!("kiln: foreign-architecture bootstrap: everything ran under emulation (the root was not as expected; see -vv)"),
        None => {}
    }
    Ok(())
}

/// mkinitramfs would run once when the kernel is installed and again for every trigger; under
/// emulation each run costs minutes. Divert update-initramfs to a no-op while packages install
/// (the kernel hook then skips, triggers do nothing) ...
const DEFER_INITRAMFS: &str = "chroot \"$1\" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs && ln -s /bin/true \"$1/usr/sbin/update-initramfs\"";
/// ... and build the initrd exactly once, when everything is installed.
const BUILD_INITRAMFS: &str = "rm \"$1/usr/sbin/update-initramfs\" && chroot \"$1\" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs && chroot \"$1\" update-initramfs -c -k all";

/// openssh-server's postinst makes host keys (RSA: seconds of prime search, far more under
/// emulation) unless files are there; `system::clean` removes every `ssh_host_*` file anyway and
/// each box makes its own at first boot. Empty placeholders skip the work.
const NO_HOST_KEYS: &str =
    "mkdir -p \"$1/etc/ssh\" && for t in rsa ecdsa ed25519; do : > \"$1/etc/ssh/ssh_host_${t}_key\"; done";

/// Hooks run before any package is installed: the initramfs driver policy.
fn setup_hooks(modules: &InitramfsModules) -> Vec<String> {
    let conf = "mkdir -p \"$1/etc/initramfs-tools/conf.d\" \"$1/usr/share/initramfs-tools/modules.d\"";
    match modules {
        InitramfsModules::Policy(p) if p == "most" => vec![],
        InitramfsModules::Policy(p) => vec![format!("{conf} && echo MODULES={p} > \"$1/etc/initramfs-tools/conf.d/kiln\"")],
        InitramfsModules::List(list) => vec![format!(
            "{conf} && echo MODULES=list > \"$1/etc/initramfs-tools/conf.d/kiln\" && printf '%s\\n' {} > \"$1/usr/share/initramfs-tools/modules.d/kiln\"",
            list.iter().map(|m| crate::host::cmd::shell_quote(m)).collect::<Vec<_>>().join(" ")
        )],
    }
}

/// Generate a non-C locale inside the root (needs the `locales` package).
fn locale_hook(locale: &str) -> Option<String> {
    if matches!(locale, "C" | "C.UTF-8" | "POSIX") {
        return None;
    }
    let charset = locale.split('.').nth(1).unwrap_or("UTF-8");
    let q = crate::host::cmd::shell_quote(&format!("{locale} {charset}"));
    Some(format!("echo {q} > \"$1/etc/locale.gen\" && chroot \"$1\" locale-gen"))
}

#[cfg(test)]
mod extra_tests {
    use crate::plan::Plan;
    use std::path::Path;

    #[test]
    fn extra_repositories_change_the_cache_key() {
        let plan = Plan::new(crate::recipe::load(Path::new("tests/recipes/good/extras.toml")).unwrap()).unwrap();
        let key = |p: &Plan| super::cache_key(p, &crate::debian::pinning::sources(p, false).unwrap().0);
        let mut without = plan.clone();
        without.recipe.repositories.clear();
        let mut other_key = plan.clone();
        other_key.recipe.repositories[0].fingerprint = "0".repeat(40);
        let keys = [key(&plan), key(&without), key(&other_key)];
        assert!(keys[0] != keys[1] && keys[0] != keys[2] && keys[1] != keys[2], "{keys:?}");
    }
}
