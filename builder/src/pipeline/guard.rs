//! The guards around a build, apart from its stage list: what killed kilns left is cleaned up
//! first, every directory the build writes to must take a file, and a full file system is named.
use super::BuildOptions;
use anyhow::{Context, Result};

/// Clean up what killed kilns left (work directories, unfinished files) in the cache, the work
/// directory's parent and the output directory.
pub(super) fn clean_leftovers(opts: &BuildOptions) -> Result<()> {
    let cache = crate::host::cache::Cache::new(&opts.cache);
    cache.clean_leftovers()?;
    if let Some(parent) = opts.work_parent.as_deref().filter(|p| *p != cache.tmp()) {
        crate::host::work::reap_dead(parent)?;
    }
    for p in crate::host::files::remove_dead_partials(std::slice::from_ref(&opts.out_dir))? {
        eprintln!("kiln: removed {}, left unfinished by a kiln that was killed", p.display());
    }
    Ok(())
}

/// Every directory a build writes to must take a file, before any slow work.
pub(super) fn probe_writable(opts: &BuildOptions) -> Result<()> {
    let work = opts.work_parent.clone().unwrap_or_else(std::env::temp_dir);
    for (dir, what) in [(&opts.out_dir, "output directory"), (&work, "work directory"), (&opts.cache, "cache")] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating the {what} {}", dir.display()))?;
        crate::host::files::probe_writable(dir, what)?;
    }
    Ok(())
}

/// An error caused by a full file system (ENOSPC), with the directory that filled up named: the
/// one of the output directory, the work directory and the cache whose path the error shows
/// (the longest match), else all of them.
pub(super) fn name_full_disk(e: anyhow::Error, opts: &BuildOptions) -> anyhow::Error {
    let text = format!("{e:#}");
    let enospc =
        e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC)))
            || text.contains("No space left on device");
    if !enospc {
        return e;
    }
    let work = opts.work_parent.clone().unwrap_or_else(std::env::temp_dir);
    let dirs = [(&opts.out_dir, "output directory"), (&work, "work directory"), (&opts.cache, "cache")];
    let named = dirs
        .iter()
        .filter(|(d, _)| text.contains(d.to_string_lossy().as_ref()))
        .max_by_key(|(d, _)| d.as_os_str().len());
    let which = match named {
        Some((d, what)) => format!("the {what} {}", d.display()),
        None => dirs.iter().map(|(d, what)| format!("the {what} {}", d.display())).collect::<Vec<_>>().join(" or "),
    };
    e.context(format!("no space left on device (ENOSPC) in {which}; nothing was written to the output directory"))
}
