//! `kiln build`: the whole flow from recipe to image, top to bottom.
pub mod flash;
mod guard;
pub mod lock;
pub mod site;
pub mod vendor;
use crate::bootstrap::assist::{Assist, Help};
use crate::bootstrap::root;
use crate::bootstrap::tools::{Purpose, Tools};
use crate::customize::artifacts;
use crate::customize::cleanup;
use crate::customize::firstboot;
use crate::customize::overlay;
use crate::customize::owners;
use crate::customize::system;
use crate::debian::debcache::DebCache;
use crate::debian::repos::{self, Keyring};
use crate::debian::source::Source;
use crate::disk::{self, esp::EspOptions, ImageDigest};
use crate::host::cmd;
use crate::host::net;
use crate::host::pagecache;
use crate::host::progress::Progress;
use crate::host::work::WorkDir;
use crate::image::boot::{self, BootInfo};
use crate::image::espcache;
use crate::image::filesystem;
use crate::lock::{Lock, LockChoice};
use crate::plan::{Plan, PlanLock};
use crate::release;
use crate::release::export::{OutputFormat, Staging};
use crate::release::sbom;
use crate::release::sign::Signer;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Directory the image is written to.
    pub out_dir: PathBuf,
    /// kiln's cache: bootstrapped roots, the tools tree.
    pub cache: PathBuf,
    /// Reuse (and store) the bootstrapped root in the cache; false bootstraps afresh.
    pub reuse_root: bool,
    /// Run image-writing tools from the host instead of the pinned tools tree.
    pub host_tools: bool,
    /// Run every program of a foreign-architecture bootstrap under emulation (no `assist`).
    pub full_emulation: bool,
    /// Where the work directory is made (system temp dir when None).
    pub work_parent: Option<PathBuf>,
    pub keep_work: bool,
    /// Use only the .deb cache: no network (needs a lock whose .debs are all cached).
    pub offline: bool,
    /// Output formats instead of the recipe's (`img` is always written).
    pub formats: Option<Vec<OutputFormat>>,
    /// Sign `SHA256SUMS` with this key (already decrypted, held only in memory).
    pub signer: Option<Signer>,
    /// Directory with artifacts supplied offline (named by sha256 or by their URL's file name).
    pub artifacts: Option<PathBuf>,
}

/// What a build produced: the image and the record written beside it.
#[derive(Debug, Serialize)]
pub struct BuildReport {
    pub image: PathBuf,
    pub plan: Plan,
    pub boot: BootInfo,
    pub digest: ImageDigest,
    pub root_from_cache: bool,
    /// Where mke2fs and friends came from, and the e2fsprogs version.
    pub tools: String,
    /// Every file written to the output directory, the image first.
    pub outputs: Vec<PathBuf>,
    /// Seconds per stage.
    pub stages: Vec<(String, f64)>,
}

/// `kiln check`: load the recipe and its layers, plan it, and render its templates.
pub fn check(recipe: &Path, arch: Option<crate::recipe::arch::Arch>) -> Result<Plan> {
    let plan = Plan::with_arch(crate::recipe::load(recipe)?, arch)?;
    overlay::render(&plan.recipe)?;
    Ok(plan)
}

/// `kiln check --online`: after `check`, what needs the network: the extra repositories (hosts,
/// signed Release files) and every package name against the indexes.
pub fn check_online(plan: &Plan) -> Result<()> {
    let work = tempfile::tempdir().context("creating a scratch directory")?;
    repos::sources(plan, work.path())?;
    crate::debian::names::check(plan, work.path())
}

/// `check`, then the lock `choice` names for the recipe (if any) joined to the plan.
pub fn plan(recipe: &Path, arch: Option<crate::recipe::arch::Arch>, choice: &LockChoice) -> Result<Plan> {
    let plan = check(recipe, arch)?;
    let Some(path) = choice.path(recipe)? else { return Ok(plan) };
    let lock = PlanLock { lock: Lock::read(&path)?, path };
    Plan::with_lock(plan.recipe, arch, Some(lock))
}

/// Build `plan` into an image in `opts.out_dir`. Nothing is left at the output path on failure.
/// A full file system is named in the error.
pub fn build(plan: Plan, opts: &BuildOptions) -> Result<BuildReport> {
    build_in(plan, opts).map_err(|e| guard::name_full_disk(e, opts))
}

fn build_in(plan: Plan, opts: &BuildOptions) -> Result<BuildReport> {
    crate::bootstrap::preflight(&plan)?;
    guard::clean_leftovers(opts)?;
    guard::probe_writable(opts)?;
    // A foreign architecture's maintainer scripts run under qemu-user.
    crate::bootstrap::emulation::ensure(plan.arch())?;
    // Render templates first: a bad template fails the build before any slow work.
    let overlays = overlay::render(&plan.recipe)?;
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating output directory {}", opts.out_dir.display()))?;
    let work = WorkDir::new(opts.work_parent.as_deref(), opts.keep_work)?;
    let debs = DebCache::new(&opts.cache);
    let (root_src, tools_src) = crate::debian::pinning::sources(&plan, opts.offline)?;
    // Before any bootstrap: the locked versions must be on the mirror (or, offline, in the cache).
    check_locked_available(&plan, opts, &root_src, &tools_src, &debs, &work)?;
    // A bootstrap for the host's own architecture needs nothing of the tools tree (only a
    // foreign one runs programs from it): then both are made at the same time.
    let side_by_side = opts.full_emulation || crate::recipe::arch::Arch::host() == Some(plan.arch());
    // A foreign one needs the tools tree only from its extract hook on: it starts at once (the
    // mirror, the download, the extraction of the essential packages) and waits there for the
    // tools tree, which a thread makes meanwhile.
    // (Not for a cached root: then nothing waits, and the help would be prepared for nothing.)
    let root_cached = opts.reuse_root && root::is_cached(&plan, &root_src, &opts.cache);
    let pending = match side_by_side || opts.host_tools || root_cached {
        true => None,
        false => {
            Assist::pending(plan.arch(), &Tools::cache_dir(&opts.cache, &tools_src, Purpose::of(plan.arch()))?, &work)?
        }
    };
    let mut p = Progress::new(if side_by_side || pending.is_some() { 10 } else { 11 });

    // Everything from outside the Debian mirror is checked and fetched before any bootstrap work.
    // Package names too, when the root is to be bootstrapped (a cached root had them all).
    let check_names = !opts.offline && !root_cached;
    let (keys, extra, fetched) = p.stage("check hosts, repositories, artifacts", || {
        let inputs = outside_inputs(&plan, work.path(), opts)?;
        if check_names {
            crate::debian::names::check(&plan, work.path())?;
        }
        Ok(inputs)
    })?;
    let make_tools = || {
        if opts.host_tools {
            Ok(Tools::Host)
        } else {
            Tools::tree(&opts.cache, &tools_src, Purpose::of(plan.arch()), &work, &debs, true)
        }
    };
    let cache = opts.reuse_root.then_some(opts.cache.as_path());
    let (tools, root) = if side_by_side {
        p.stage("tools tree (mke2fs) and Debian root (mmdebstrap, or cached), side by side", || {
            std::thread::scope(|s| {
                let tools = s.spawn(make_tools);
                let root = root::prepare(&plan, &work, cache, &root_src, &debs, &extra, None);
                let tools = tools.join().map_err(|_| anyhow::anyhow!("the tools tree thread panicked"))?;
                Ok((tools?, root?))
            })
        })?
    } else if let Some(pending) = &pending {
        p.stage("tools tree (mke2fs) and Debian root (mmdebstrap, or cached), overlapped", || {
            std::thread::scope(|s| {
                let tools = s.spawn(|| {
                    let tools = make_tools().and_then(|t| pending.fill(&t).map(|()| t));
                    if tools.is_err() {
                        pending.fail(); // the waiting extract hook stops the bootstrap
                    }
                    tools
                });
                let help = Some(Help::Pending(pending));
                let root = root::prepare(&plan, &work, cache, &root_src, &debs, &extra, help);
                let tools = tools.join().map_err(|_| anyhow::anyhow!("the tools tree thread panicked"))?;
                // The tools tree's error first: a bootstrap waiting for it failed because of it.
                Ok((tools?, root?))
            })
        })?
    } else {
        let tools = p.stage("tools tree (mke2fs)", make_tools)?;
        let root = p.stage("bootstrap Debian root (mmdebstrap, or cached)", || {
            root::prepare(&plan, &work, cache, &root_src, &debs, &extra, Some(Help::Tools(&tools)))
        })?;
        (tools, root)
    };
    let tree = root.dir.clone();
    // A cached root's files are read ahead for mke2fs while the stages before it run (host::pagecache).
    let read_ahead = root.from_cache.then(|| pagecache::read_ahead(&tree));
    p.stage("configure system (host name, users, agent)", || system::configure(&plan, &tree))?;
    p.stage("apply overlays, repositories, artifacts, first-boot actions, units", || {
        overlay::apply(&overlays, &tree)?;
        repos::install(&plan, &keys, &tree)?;
        artifacts::install(&fetched, &tree)?;
        firstboot::install(&plan, &tree)?;
        owners::files(&plan, &tree)?;
        system::units(&plan, &tree)
    })?;
    // Before `cleanup::clean`, which removes apt's lists (the .debs' checksums).
    let inventory = p.stage("list installed packages (SBOM)", || sbom::inventory(&tree))?;
    let (esp_files, boot) = p.stage("collect boot pieces", || boot::esp_files(&plan, &tree))?;
    let esp_cache = opts.reuse_root.then(|| crate::host::cache::Cache::new(&opts.cache));
    let esp_img = p.stage("write ESP (fatfs, or cached)", || {
        espcache::esp_image(esp_cache.as_ref(), &work.join("esp.img"), &esp_options(&plan), &esp_files)
    })?;
    cmd::check_interrupted()?;
    // Every output appears at once at the end, or not at all. The image is filled in place:
    // the ESP copied in while mke2fs makes the root filesystem at its offset, then the root is
    // hashed and the GPT written.
    let mut staging = Staging::new(&opts.out_dir);
    let digest = staging.write(&plan.image_name, |tmp| {
        let mut image = disk::ImageWriter::create(tmp, &plan.layout)?;
        let part = plan.layout.partitions.get(1).context("the layout has no root partition")?;
        p.stage("make root filesystem (in the image), copy the ESP in", || {
            cleanup::clean(&tree)?;
            cleanup::mark_updated(&tree, plan.recipe.source_date_epoch)?;
            std::thread::scope(|s| {
                let _written = image.file().map(pagecache::write_behind)?;
                let mkfs = s.spawn(|| filesystem::make_root(&plan, &tools, &tree, tmp, part));
                let esp = image.copy(&esp_img).context("copying the ESP into the image");
                mkfs.join().map_err(|_| anyhow::anyhow!("the mke2fs thread panicked"))??;
                esp
            })?;
            drop(read_ahead);
            root::release(&root)
        })?;
        cmd::check_interrupted()?;
        p.stage("assemble GPT disk image", || {
            image.in_place()?;
            let digest = image.finish()?;
            // A signal during the hashing stops the build here, within the stage.
            cmd::check_interrupted()?;
            Ok(digest)
        })
    })?;
    let formats = crate::release::export::with_img(opts.formats.as_deref().unwrap_or(&plan.formats));
    let inputs = release::Inputs {
        plan: &plan,
        boot: &boot,
        digest: &digest,
        inventory: &inventory,
        formats: &formats,
        signer: opts.signer.as_ref(),
    };
    p.stage("write formats, manifest, SBOM, checksums, signature", || release::write_outputs(&mut staging, &inputs))?;
    let outputs = staging.commit()?;
    let image = opts.out_dir.join(&plan.image_name);
    let tools = describe_tools(&tools);
    Ok(BuildReport {
        image,
        plan,
        boot,
        digest,
        root_from_cache: root.from_cache,
        tools,
        outputs,
        stages: p.timings().to_vec(),
    })
}

/// Before any bootstrap: the locked versions of the trees to bootstrap must be on the mirror
/// (or, offline, in the cache).
fn check_locked_available(
    plan: &Plan,
    opts: &BuildOptions,
    root_src: &Source,
    tools_src: &Source,
    debs: &DebCache,
    work: &WorkDir,
) -> Result<()> {
    let mut needed = Vec::new();
    if !opts.host_tools && !Tools::is_cached(&opts.cache, tools_src, Purpose::of(plan.arch()))? {
        needed.push(tools_src);
    }
    if !opts.reuse_root || !root::is_cached(plan, root_src, &opts.cache) {
        needed.push(root_src);
    }
    crate::debian::pinning::check_available(&needed, debs, work, plan)?;
    Ok(())
}

/// The ESP's size, volume id, label and timestamp.
fn esp_options(plan: &Plan) -> EspOptions {
    EspOptions {
        size: plan.layout.partitions[0].size,
        volume_id: plan.esp_volume_id,
        label: "ESP".into(),
        timestamp: plan.recipe.source_date_epoch,
    }
}

/// The tools tree for the build report: where it came from and its e2fsprogs version.
fn describe_tools(tools: &Tools) -> String {
    format!("{} (e2fsprogs {})", tools.describe(), tools.package_version("e2fsprogs").unwrap_or_else(|| "?".into()))
}

/// Keys and sources of the extra repositories, and every artifact as a verified local file.
/// Fails early: unreachable hosts (all named at once), a repository not signed by its key, a
/// wrong digest.
fn outside_inputs<'p>(
    plan: &'p Plan,
    work: &Path,
    opts: &BuildOptions,
) -> Result<(Vec<Keyring>, repos::ExtraSources, artifacts::Located<'p>)> {
    let store = artifacts::Store::new(Some(opts.cache.as_path()), work, opts.artifacts.as_deref());
    let (mut local, missing) = artifacts::missing(&plan.recipe.artifacts, &store)?;
    net::preflight(&artifacts::needs(&missing))?;
    let (keys, extra) = repos::sources(plan, work)?;
    for a in missing {
        tracing::info!("downloading artifact `{}` from {}", a.name, a.url);
        local.push((a, store.fetch(a)?));
    }
    Ok((keys, extra, local))
}
