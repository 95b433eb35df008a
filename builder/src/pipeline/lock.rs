//! `kiln lock` (resolve a recipe into its lock file) and `kiln fetch` (fill the .deb cache with
//! a lock's packages).
use crate::bootstrap::root;
use crate::bootstrap::tools::{Purpose, Tools};
use crate::debian::debcache::DebCache;
use crate::debian::mirror;
use crate::debian::packages::{self, Package};
use crate::debian::pinning;
use crate::debian::source::Source;
use crate::host::cache;
use crate::host::work::WorkDir;
use crate::lock::{self, Lock, ToolsLock, LOCK_FORMAT};
use crate::plan::TOOLS_SUITE;
use crate::plan::{Plan, PlanLock};
use crate::recipe::arch::Arch;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub struct LockOptions {
    pub cache: PathBuf,
    /// Resolve afresh: ignore the existing lock and the cached roots.
    pub update: bool,
    pub work_parent: Option<PathBuf>,
    pub keep_work: bool,
}

pub struct LockOutcome {
    pub path: PathBuf,
    pub lock: Lock,
    /// The file's content changed (or it was created).
    pub changed: bool,
}

/// `kiln lock`: bootstrap the recipe's root and the tools tree (cached ones are reused) and
/// record what they hold in `NAME.lock` beside the recipe. Versions of an existing lock are kept
/// (the bootstrap pins them) unless `update`; packages new to the recipe resolve to the mirror's
/// current versions. `plan` is the recipe's, checked (`pipeline::check`), without a lock.
pub fn lock(recipe: &Path, plan: Plan, opts: &LockOptions) -> Result<LockOutcome> {
    crate::bootstrap::preflight(&plan)?;
    crate::bootstrap::emulation::ensure(plan.arch())?;
    let path = lock::path_for(recipe);
    // With --update the existing lock is not read at all (it may be of an older format).
    let previous = if opts.update { None } else { path.is_file().then(|| Lock::read(&path)).transpose()? };
    let old = previous.as_ref();
    let work = WorkDir::new(opts.work_parent.as_deref(), opts.keep_work)?;
    let debs = DebCache::new(&opts.cache);
    let host = crate::debian::pinning::host_arch()?;
    let (root_src, tools_src) = sources(&plan, old, host)?;
    if let Some(old) = old {
        // The kept versions must still be on the mirror, or the bootstrap would fail late.
        let l = PlanLock { lock: old.clone(), path: path.clone() };
        let needed = uncached(&plan, &root_src, &tools_src, &opts.cache)?;
        mirror::require_tools()?;
        crate::debian::source::check_available(&needed, &debs, work.path(), &pinning::help(&l, &plan))?;
    }
    let reuse = !opts.update;
    let mut p = crate::host::progress::Progress::new(2);
    let cached = if reuse { "or cached" } else { "afresh: --update" };
    let tools = p.stage(&format!("tools tree (mmdebstrap, {cached})"), || {
        Tools::tree(&opts.cache, &tools_src, Purpose::of(plan.arch()), &work, &debs, reuse)
    })?;
    let (_keys, extra) = crate::debian::repos::sources(&plan, work.path())?;
    let root = p.stage(&format!("bootstrap Debian root (mmdebstrap, {cached})"), || {
        let help = Some(crate::bootstrap::assist::Help::Tools(&tools));
        root::prepare(&plan, &work, reuse.then_some(opts.cache.as_path()), &root_src, &debs, &extra, help)
    })?;
    let installed = packages::installed(&root.dir);
    let archive_date = packages::archive_date(&root.dir);
    root::release(&root)?;
    let new = resolved_lock(&plan, host, &tools, installed, archive_date, old)?;
    // A build from the new lock finds the trees it was resolved from in the cache.
    cache_resolved(&plan, opts, &root_src, &tools_src, &new, &root.dir, &tools)?;
    let changed = std::fs::read_to_string(&path).ok() != Some(new.to_toml()?);
    if changed {
        new.write(&path)?;
    }
    Ok(LockOutcome { path, lock: new, changed })
}

/// The sources of the root and of the tools tree: the mirror, with the versions of `old` if given.
fn sources(plan: &Plan, old: Option<&Lock>, host: Arch) -> Result<(Source, Source)> {
    let root_src = pinning::root_source(plan, old.map(|l| l.packages.clone()), false, false);
    let mut tools_src =
        pinning::tools_source(plan, old.and_then(|l| l.tools_for(host.debian())).map(|t| t.packages.clone()), false)?;
    tools_src.exact = false;
    Ok((root_src, tools_src))
}

/// The sources whose trees are not in the cache (they will be bootstrapped).
fn uncached<'a>(plan: &Plan, root_src: &'a Source, tools_src: &'a Source, cache: &Path) -> Result<Vec<&'a Source>> {
    let mut needed = Vec::new();
    if !Tools::is_cached(cache, tools_src, Purpose::of(plan.arch()))? {
        needed.push(tools_src);
    }
    if !root::is_cached(plan, root_src, cache) {
        needed.push(root_src);
    }
    Ok(needed)
}

/// The lock of what the bootstrapped root (`installed`, `archive_date`) and the tools tree hold.
fn resolved_lock(
    plan: &Plan,
    host: Arch,
    tools: &Tools,
    installed: Result<Vec<Package>>,
    archive_date: Result<Option<String>>,
    old: Option<&Lock>,
) -> Result<Lock> {
    let r = &plan.recipe;
    let tool_pkgs = packages::locked_set(&packages::installed(tools.root().context("tools tree")?)?)?;
    let e2fsprogs = tool_pkgs
        .iter()
        .find(|p| p.name == "e2fsprogs")
        .map(|p| p.version.clone())
        .context("e2fsprogs is not in the tools tree")?;
    let mut requested = plan.packages.clone();
    requested.sort();
    let mut new = Lock {
        format: LOCK_FORMAT,
        recipe: r.name.to_string(),
        architecture: plan.arch().debian().into(),
        suite: r.base.suite.to_string(),
        components: crate::recipe::values::strings(&r.base.components),
        mirror: plan.mirror.clone(),
        archives: plan.archives().into_iter().skip(1).map(|a| a.suite).collect(),
        security_mirror: plan.security_mirror.clone(),
        source_date_epoch: r.source_date_epoch,
        archive_date: archive_date?,
        requested,
        packages: packages::locked_set(&installed?)?,
        tools: Some(ToolsLock {
            suite: TOOLS_SUITE.into(),
            architecture: host.debian().into(),
            e2fsprogs,
            packages: tool_pkgs,
        }),
    };
    new.normalize();
    if let Some(old) = old.filter(|o| o.packages == new.packages) {
        // Same packages: keep the date they were first resolved at.
        new.archive_date = old.archive_date.clone();
    }
    Ok(new)
}

/// Put the root and the tools tree in the cache under the new lock's pins.
fn cache_resolved(
    plan: &Plan,
    opts: &LockOptions,
    root_src: &Source,
    tools_src: &Source,
    new: &Lock,
    root_dir: &Path,
    tools: &Tools,
) -> Result<()> {
    let reuse = !opts.update;
    let pinned = |s: &Source, pins: &[crate::lock::LockedPackage]| Source {
        pins: Some(pins.to_vec()),
        exact: true,
        ..s.clone()
    };
    let (pinned_root, pinned_tools) =
        (pinned(root_src, &new.packages), pinned(tools_src, &new.tools.as_ref().context("tools")?.packages));
    let (root_to, tools_to) = (
        root::cache_dir(plan, &pinned_root, &opts.cache),
        Tools::cache_dir(&opts.cache, &pinned_tools, Purpose::of(plan.arch()))?,
    );
    let tools_dir = tools.root().context("tools tree")?;
    if reuse {
        cache::alias(&root::cache_dir(plan, root_src, &opts.cache), &root_to)?;
        cache::alias(tools_dir, &tools_to)?;
    } else {
        if !root_to.exists() {
            cache::store(root_dir, &root_to).context("storing the resolved root in the cache")?;
        }
        if !tools_to.exists() {
            cache::store(tools_dir, &tools_to).context("storing the resolved tools tree in the cache")?;
        }
    }
    Ok(())
}

/// What `kiln fetch` did.
pub struct FetchOutcome {
    pub downloaded: usize,
    pub locked: usize,
}

/// `kiln fetch`: download every locked .deb (root and this host's tools tree) that the cache
/// lacks, from the mirror, each checked against the lock's sha256.
pub fn fetch(plan: &Plan, cache: &Path, work_parent: Option<&Path>) -> Result<FetchOutcome> {
    let l = plan
        .lock
        .as_ref()
        .context("kiln fetch needs a lock file beside the recipe (or --lock FILE): run `kiln lock RECIPE` first")?;
    mirror::require_tools()?;
    let work = WorkDir::new(work_parent, false)?;
    let debs = DebCache::new(cache);
    let (root, tools) = pinning::sources(plan, false)?;
    let mut out = FetchOutcome { downloaded: 0, locked: 0 };
    for s in [&root, &tools] {
        let Some(pins) = &s.pins else { continue };
        out.locked += pins.len();
        for (id, group) in s.by_index(pins) {
            let group: Vec<_> = group.into_iter().cloned().collect();
            out.downloaded += mirror::fetch(&id, &group, &debs, work.path(), &pinning::help(l, plan))?;
        }
    }
    Ok(out)
}
