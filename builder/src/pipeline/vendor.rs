//! `kiln vendor`: a self-contained bundle from which an air-gapped site builds the image with
//! `kiln build --offline`: the recipe with its layers and overlays (at the same places relative
//! to each other), its lock, a .deb cache holding every locked package of the root and of the
//! tools tree, this kiln binary, and a README with the command. It appears at its destination
//! by rename of a complete directory.
use crate::debian::debcache::DebCache;
use crate::host::cmd::Cmd;
use crate::plan::Plan;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub struct VendorOutcome {
    pub dir: PathBuf,
    /// The recipe inside the bundle (relative to it).
    pub recipe: PathBuf,
    pub debs: usize,
}

pub fn vendor(plan: &Plan, cache: &Path, dest: &Path, work_parent: Option<&Path>) -> Result<VendorOutcome> {
    let l = plan
        .lock
        .as_ref()
        .context("kiln vendor needs a lock file beside the recipe (or --lock FILE): run `kiln lock RECIPE` first")?;
    if dest.exists() && std::fs::read_dir(dest).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} exists and is not an empty directory", dest.display());
    }
    // Every locked .deb in the cache first (downloading what it lacks).
    crate::pipeline::lock::fetch(plan, cache, work_parent)?;
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    // The bundle appears complete (an empty directory at `dest` is replaced) or not at all.
    let (recipe, debs) = crate::host::files::write_dir_atomically(dest, |out| fill(plan, l, cache, out))?;
    Ok(VendorOutcome { dir: dest.to_path_buf(), recipe, debs })
}

/// Put the bundle's files into `out`; returns the recipe's path in it and the number of .debs.
fn fill(plan: &Plan, l: &crate::plan::PlanLock, cache: &Path, out: &Path) -> Result<(PathBuf, usize)> {
    let (root, tools) = crate::debian::pinning::sources(plan, false)?;
    // The recipe's files at their places below the directory they all share.
    let r = &plan.recipe;
    let files: Vec<PathBuf> = r
        .sources
        .iter()
        .chain(r.overlays.iter().map(|o| &o.path))
        .map(|p| p.canonicalize().with_context(|| format!("finding {}", p.display())))
        .collect::<Result<_>>()?;
    let base = common_dir(&files).context("recipe files have no common directory")?;
    for f in &files {
        let to = out.join(f.strip_prefix(&base)?);
        std::fs::create_dir_all(to.parent().context("path")?)?;
        Cmd::new("cp")
            .args(["-a", "--no-target-directory"])
            .arg(f)
            .arg(&to)
            .run()
            .with_context(|| format!("copying {} into the bundle", f.display()))?;
    }
    let recipe = files[0].strip_prefix(&base)?.to_path_buf();
    std::fs::copy(&l.path, out.join(crate::lock::path_for(&recipe))).context("copying the lock into the bundle")?;

    // The .debs, checked against the lock again as they enter the bundle's cache.
    let from = DebCache::new(cache);
    let into = DebCache::new(&out.join("cache"));
    let mut n = 0;
    for pins in [&root.pins, &tools.pins].into_iter().flatten() {
        into.copy_from(&from, pins)?;
        n += pins.len();
    }
    into.tidy();

    let exe = std::env::current_exe().context("finding the kiln binary")?;
    std::fs::create_dir_all(out.join("bin"))?;
    std::fs::copy(&exe, out.join("bin/kiln")).context("copying the kiln binary into the bundle")?;
    std::fs::write(
        out.join("README.md"),
        readme(
            plan,
            &recipe,
            &tools.arch,
            root.pins.as_ref().map_or(0, Vec::len),
            tools.pins.as_ref().map_or(0, Vec::len),
        ),
    )?;
    Ok((recipe, n))
}

/// The deepest directory containing every path (files count by their directory).
fn common_dir(paths: &[PathBuf]) -> Option<PathBuf> {
    let dirs: Vec<&Path> =
        paths.iter().map(|p| if p.is_dir() { p.as_path() } else { p.parent().unwrap_or(p) }).collect();
    let mut base = dirs.first()?.to_path_buf();
    while !dirs.iter().all(|d| d.starts_with(&base)) {
        base = base.parent()?.to_path_buf();
    }
    Some(base)
}

fn readme(plan: &Plan, recipe: &Path, tools_arch: &str, n_root: usize, n_tools: usize) -> String {
    let r = &plan.recipe;
    let recipe = recipe.display();
    let lock = crate::lock::path_for(Path::new(&recipe.to_string())).display().to_string();
    format!(
        "# {name} {version}: offline build bundle\n\n\
Made by `kiln vendor` ({kiln} {kv}). Everything needed to build the image `{image}` without a network:\n\n\
| path | what |\n|---|---|\n\
| `bin/kiln` | the kiln binary that made this bundle |\n\
| `{recipe}` | the recipe, with its layers and overlays beside it |\n\
| `{lock}` | the lock: every package with the sha256 of its .deb |\n\
| `cache/debs/` | the locked .debs: {n_root} for the root ({arch}), {n_tools} for the tools tree ({tools_arch}) |\n\n\
Build, as root, on a Debian 12 or 13 {tools_arch} host with kiln's host tools (mmdebstrap, mount; see kiln's `scripts/setup-host`):\n\n\
```sh\nsudo bin/kiln build --offline --cache cache {recipe} --out out\n```\n\n\
Every .deb is checked against the lock's sha256 before it is used. The image's apt sources name {mirror}.\n",
        name = r.name,
        version = r.version,
        kiln = env!("CARGO_PKG_NAME"),
        kv = env!("CARGO_PKG_VERSION"),
        image = plan.image_name,
        arch = plan.arch().debian(),
        mirror = plan.mirror,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn common_dir_of_files_and_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for p in ["recipes/layers", "overlays/base"] {
            std::fs::create_dir_all(d.join(p)).unwrap();
        }
        let paths = [d.join("recipes/minimal.toml"), d.join("recipes/layers/base.toml"), d.join("overlays/base")];
        assert_eq!(super::common_dir(&paths).unwrap(), d);
        assert_eq!(super::common_dir(&paths[..2]).unwrap(), d.join("recipes"));
    }
}
