//! The Debian root: bootstrapped by mmdebstrap, cached by the hash of its inputs, and given to
//! each build as a writable overlay over the cached tree.
use crate::bootstrap::assist::{Action, Assist, Help};
use crate::bootstrap::hooks::{self, Hook, Phase};
use crate::bootstrap::mmdebstrap::{pin_hook, CacheKey, Kind, Mmdebstrap, Variant};
use crate::debian::debcache::DebCache;
use crate::debian::source::Source;
use crate::host::cache::{self, Cache};
use crate::host::cmd::Cmd;
use crate::host::work::WorkDir;
use crate::plan::Plan;
use crate::recipe::{InitramfsModules, ModulePolicy};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Bump when the way kiln drives mmdebstrap changes, so old cached roots are not reused.
const BOOTSTRAP_FORMAT: u32 = 8;

/// Everything that decides the bytes of the bootstrapped root; its hash names the cache entry.
#[derive(Serialize)]
struct BootstrapInputs<'a> {
    arch: &'a str,
    suite: &'a str,
    mirror: &'a str,
    /// The archives besides the suite (updates, security).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    archives: Vec<crate::plan::Archive>,
    components: &'a [crate::recipe::ArchiveComponent],
    packages: &'a [String],
    initramfs_modules: &'a InitramfsModules,
    docs: bool,
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
    components: &'a [crate::recipe::ArchiveComponent],
    fingerprint: &'a str,
    pin: Option<String>,
}

fn inputs<'a>(plan: &'a Plan, source: &Source) -> BootstrapInputs<'a> {
    let r = &plan.recipe;
    BootstrapInputs {
        arch: plan.arch().debian(),
        suite: &r.base.suite,
        mirror: &plan.mirror,
        archives: source.extra.clone(),
        components: &r.base.components,
        packages: &plan.packages,
        initramfs_modules: &plan.initramfs_modules,
        locale: &r.system.locale,
        docs: r.base.docs,
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

/// dpkg's path excludes of a root without documentation (`base.docs = false`, the default):
/// documentation, manual and info pages are not unpacked, but every package's copyright file is
/// (licences ship with the image). They stay in the image's dpkg configuration, so packages
/// installed on the box later leave them out too.
const NO_DOCS: &[&str] = &[
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
];

/// Cache key of the plan's bootstrapped root (online and offline bootstraps of one lock share it).
pub fn cache_key(plan: &Plan, source: &Source) -> CacheKey {
    CacheKey::new(Kind::Roots, BOOTSTRAP_FORMAT, &inputs(plan, source))
}

/// Where the cache keeps the root `prepare` bootstraps for `plan` from `source`.
pub fn cache_dir(plan: &Plan, source: &Source, cache: &Path) -> PathBuf {
    cache_key(plan, source).dir(cache)
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
/// .debs mmdebstrap downloads move into `debs`, out of the root. With `native` (the tools tree,
/// or an assist waiting for it), a foreign-architecture bootstrap runs arch-neutral programs
/// natively from it (same root; see `assist/`); None emulates everything.
pub fn prepare(
    plan: &Plan,
    work: &WorkDir,
    cache: Option<&Path>,
    source: &Source,
    debs: &DebCache,
    extra: &crate::debian::repos::ExtraSources,
    native: Option<Help<'_>>,
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
            // The one line that says this build makes the entry (tests count them).
            eprintln!("kiln: bootstrapping {} (mmdebstrap)", cached.display());
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
    native: Option<Help<'_>>,
) -> Result<()> {
    let made;
    let assist = match native {
        Some(Help::Tools(tools)) => {
            made = Assist::new(plan.arch(), tools, work)?;
            made.as_ref()
        }
        Some(Help::Pending(a)) => Some(a),
        None => None,
    };
    match mmdebstrap(plan, work, out, source, debs, extra, assist) {
        // Native help must never be why a build fails: a package whose maintainer script needs
        // more than the help offers gets the plain emulated bootstrap (not when the tools tree
        // it waited for failed: that error is the build's).
        Err(e) if assist.is_some_and(|a| !a.failed()) && !crate::host::cmd::interrupted() => {
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
    let foreign = Some(plan.arch()) != crate::recipe::arch::Arch::host();
    let run = Mmdebstrap {
        variant: Variant::Minbase,
        arch: plan.arch().debian(),
        include: &plan.packages,
        aptopts: &["Acquire::Retries \"3\""],
        dpkgopts: if r.base.docs { &[] } else { NO_DOCS },
        source: &src,
        hooks: root_hooks(plan, extra, assist),
        source_date_epoch: Some(r.source_date_epoch),
        qemu_cpu: foreign.then(|| plan.arch().qemu_user_cpu()),
        // The assist's mounts live in a private mount namespace: gone with mmdebstrap, however it ends.
        private_path: assist.map(|_| crate::bootstrap::assist::PATH_DIR),
        suite: &r.base.suite,
        target: out,
        extra_lines: &extra.lines,
        verbose: true,
    };
    let from = if source.offline {
        "the .deb cache".to_string()
    } else {
        source.archives().iter().map(|a| format!("{} {}", a.uri, a.suite)).collect::<Vec<_>>().join(", ")
    };
    let extra_names =
        r.repositories.iter().map(|x| format!(" and repository `{}` ({})", x.name, x.url)).collect::<String>();
    BootstrapProgress::reset();
    run.command(work)?.on_stderr_line(BootstrapProgress::line).run().with_context(|| {
        format!("bootstrapping Debian {} ({}) from {from}{extra_names}", r.base.suite, plan.arch().debian())
    })?;
    match assist.map(|a| a.summary()) {
        Some(Some(s)) => eprintln!("kiln: foreign-architecture bootstrap: {s}"),
        Some(None) => eprintln!("kiln: foreign-architecture bootstrap: everything ran under emulation (the root was not as expected; see -vv)"),
        None => {}
    }
    Ok(())
}

/// Progress of the root's bootstrap from mmdebstrap's `--verbose` stderr: its phases (`I: …`)
/// and the packages apt downloaded (`Get:`) and dpkg unpacked and configured (`Unpacking `,
/// `Setting up `), shown in the stage's line on a terminal (phases as plain lines otherwise).
struct BootstrapProgress;

static PHASE: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
static COUNTS: [std::sync::atomic::AtomicUsize; 3] = [const { std::sync::atomic::AtomicUsize::new(0) }; 3];

impl BootstrapProgress {
    fn reset() {
        PHASE.lock().unwrap_or_else(|p| p.into_inner()).clear();
        for c in &COUNTS {
            c.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn line(line: &str) {
        if let Some((text, plain)) = Self::update(line) {
            crate::host::progress::note(&text, plain);
        }
    }

    /// Take in one line of stderr; the progress text to show, if it changed, and whether it is
    /// a phase (worth a plain line of its own).
    fn update(line: &str) -> Option<(String, bool)> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut phase = PHASE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = line.strip_prefix("I: ") {
            // Hooks (kiln's own) and skipped steps are not phases worth showing.
            if p.starts_with("running --") || p.starts_with("skipping ") {
                return None;
            }
            *phase = p.trim_end_matches("...").to_string();
            return Some((format!("mmdebstrap: {phase}"), true));
        }
        let i = ["Get:", "Unpacking ", "Setting up "].iter().position(|p| line.starts_with(p))?;
        COUNTS[i].fetch_add(1, Relaxed);
        let [got, unpacked, configured] = [0, 1, 2].map(|i| COUNTS[i].load(Relaxed));
        Some((format!("mmdebstrap: {phase} ({got} downloaded, {unpacked} unpacked, {configured} configured)"), false))
    }
}

/// The root's hooks (after the source's), in the order they run within each phase:
/// setup: the initramfs driver policy, the extra repositories' pins; extract: native help;
/// essential: initramfs deferred, no SSH host keys, native help bound; customize: native help
/// bound again, the locale, the initrd built once, native help torn down.
fn root_hooks(plan: &Plan, extra: &crate::debian::repos::ExtraSources, assist: Option<&Assist>) -> Vec<Hook> {
    let mut all: Vec<Hook> = initramfs_hook(&plan.initramfs_modules).into_iter().collect();
    all.extend(extra.pins.iter().map(pin_hook));
    let none: [&str; 0] = [];
    let essential = [
        Hook::new(Phase::Essential, hooks::DEFER_INITRAMFS, none),
        Hook::new(Phase::Essential, hooks::NO_HOST_KEYS, none),
    ];
    match assist {
        Some(a) => {
            all.push(a.hook(Phase::Extract, Action::Setup));
            all.extend(essential);
            all.push(a.hook(Phase::Essential, Action::Bind));
            all.push(a.hook(Phase::Customize, Action::Bind));
        }
        None => all.extend(essential),
    }
    all.extend(locale_hook(&plan.recipe.system.locale));
    all.push(Hook::new(Phase::Customize, hooks::BUILD_INITRAMFS, none));
    all.extend(assist.map(|a| a.hook(Phase::Customize, Action::Teardown)));
    all
}

/// The initramfs driver policy, set before any package is installed (none for Debian's `most`).
fn initramfs_hook(modules: &InitramfsModules) -> Option<Hook> {
    let args: Vec<String> = match modules {
        InitramfsModules::Policy(ModulePolicy::Most) => return None,
        InitramfsModules::Policy(p) => vec![p.name().to_string()],
        InitramfsModules::List(list) => std::iter::once("list".to_string()).chain(list.iter().cloned()).collect(),
    };
    Some(Hook::new(Phase::Setup, hooks::INITRAMFS_MODULES, args))
}

/// Generate a non-C locale inside the root (needs the `locales` package).
fn locale_hook(locale: &str) -> Option<Hook> {
    if matches!(locale, "C" | "C.UTF-8" | "POSIX") {
        return None;
    }
    let charset = locale.split('.').nth(1).unwrap_or("UTF-8");
    Some(Hook::new(Phase::Customize, hooks::LOCALE, [format!("{locale} {charset}")]))
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

#[cfg(test)]
mod tests {
    use super::BootstrapProgress as B;

    /// mmdebstrap's `--verbose` lines become a phase and package counts; other lines are ignored.
    #[test]
    fn bootstrap_progress_counts_packages_per_phase() {
        B::reset();
        assert_eq!(
            B::update("I: downloading packages with apt..."),
            Some(("mmdebstrap: downloading packages with apt".into(), true))
        );
        B::update("Get:1 http://deb.debian.org/debian trixie/main amd64 libc6 amd64 2.41-12 [2851 kB]");
        B::update("Get:2 http://deb.debian.org/debian trixie/main amd64 bash amd64 5.2.37-2 [1500 kB]");
        assert_eq!(B::update("Reading package lists..."), None);
        assert_eq!(B::update("I: running --essential-hook in shell: sh -c 'x'"), None);
        B::update("I: installing remaining packages inside the chroot...");
        B::update("Unpacking dbus (1.16.2-2) ...");
        let (text, plain) = B::update("Setting up dbus (1.16.2-2) ...").unwrap();
        assert_eq!(
            text,
            "mmdebstrap: installing remaining packages inside the chroot (2 downloaded, 1 unpacked, 1 configured)"
        );
        assert!(!plain, "counters are not printed as lines of their own");
    }
}
