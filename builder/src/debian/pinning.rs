//! A build's package sources: the mirror or the .deb cache, for the root and for the tools tree,
//! pinned to the plan's lock if it has one; and the check, before anything is bootstrapped, that
//! every locked version can still be had.
use crate::debian::debcache::DebCache;
use crate::debian::mirror::{self, Help};
use crate::debian::source::{self, Source};
use crate::host::work::WorkDir;
use crate::lock::LockedPackage;
use crate::plan::{Archive, Plan, PlanLock, TOOLS_SUITE};
use crate::recipe::arch::Arch;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Debian architecture of the tools tree on this host.
pub fn host_arch() -> Result<Arch> {
    Arch::host().context("the tools tree needs an x86_64 or aarch64 host")
}

/// The source of a tools tree: this host's architecture, the image's mirror and its updates and
/// security archives (for the tools' suite), pinned to the lock's tools packages when given.
/// With the same archives as the root, the tools tree has the root's versions of the programs
/// that native help runs (it uses a program only at the root's version: assist/mod.rs), and image
/// tools with their security fixes.
pub fn tools_source(plan: &Plan, pins: Option<Vec<LockedPackage>>, offline: bool) -> Result<Source> {
    let arch = host_arch()?;
    let suite = plan.recipe.base.suite.as_str();
    let extra = plan
        .archives()
        .into_iter()
        .skip(1)
        .map(|a| Archive { suite: a.suite.replacen(suite, TOOLS_SUITE, 1), uri: a.uri })
        .collect();
    Ok(Source {
        mirror: plan.mirror.clone(),
        suite: TOOLS_SUITE.into(),
        components: vec!["main".into()],
        arch: arch.debian().into(),
        pins,
        exact: true,
        offline,
        extra,
    })
}

/// The source of the plan's root: its archives, components and architecture, pinned to
/// `pins`; `exact`: the installed set must equal the pins (a build), not just keep their versions
/// (`kiln lock` re-resolving).
pub fn root_source(plan: &Plan, pins: Option<Vec<LockedPackage>>, exact: bool, offline: bool) -> Source {
    let r = &plan.recipe;
    Source {
        mirror: plan.mirror.clone(),
        suite: r.base.suite.to_string(),
        components: crate::recipe::values::strings(&r.base.components),
        arch: plan.arch().debian().into(),
        pins,
        exact,
        offline,
        extra: plan.archives().split_off(1),
    }
}

/// The package sources of a build: (root, tools tree), pinned to the plan's lock if it has one.
pub fn sources(plan: &Plan, offline: bool) -> Result<(Source, Source)> {
    let lock = plan.lock.as_ref().map(|l| &l.lock);
    if offline && lock.is_none() {
        bail!("--offline needs a lock file beside the recipe (or --lock FILE): run `kiln lock RECIPE` and `kiln fetch RECIPE` while online");
    }
    let root = root_source(plan, lock.map(|l| l.packages.clone()), true, offline);
    let host = host_arch()?.debian();
    let tool_pins = lock.and_then(|l| l.tools_for(host)).map(|t| t.packages.clone());
    if lock.is_some() && tool_pins.is_none() {
        tracing::warn!(
            "the lock has no tools packages for this host's architecture ({host}): the tools tree is not pinned"
        );
    }
    Ok((root, tools_source(plan, tool_pins, offline)?))
}

pub fn help<'a>(l: &'a PlanLock, plan: &'a Plan) -> Help<'a> {
    Help {
        recipe: plan.recipe.sources.first().map(PathBuf::as_path).unwrap_or(Path::new("RECIPE")),
        lock_path: &l.path,
        archive_date: l.lock.archive_date.as_deref(),
        security: plan.security_mirror.is_some(),
    }
}

/// Fail, naming package and version, unless every package the `needed` sources pin is on the
/// mirror (online) or in the .deb cache (offline).
pub fn check_available(needed: &[&Source], debs: &DebCache, work: &WorkDir, plan: &Plan) -> Result<()> {
    let Some(l) = &plan.lock else { return Ok(()) };
    if needed.iter().any(|s| !s.offline && s.pins.is_some()) {
        mirror::require_tools()?;
    }
    source::check_available(needed, debs, work.path(), &help(l, plan))
}
