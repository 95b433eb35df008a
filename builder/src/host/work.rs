//! Scratch space for a build: removed on success, failure and interruption, never across a mount.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// A build's scratch directory. Dropping it unmounts anything left below it, then removes it.
pub struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    /// Create a fresh directory below `parent` (the system temp dir when None).
    pub fn new(parent: Option<&Path>, keep: bool) -> Result<WorkDir> {
        let parent = parent.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("kiln-work-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating work directory in {}", parent.display()))?;
        Ok(WorkDir { path: dir.keep(), keep })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kiln: work directory kept at {}", self.path.display());
            return;
        }
        if let Err(e) = remove_tree(&self.path) {
            eprintln!("kiln: could not remove work directory {}: {e:#}", self.path.display());
        }
    }
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|m| m.starts_with(&dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// Remove a directory tree after detaching every mount below it; refuses if one stays.
pub fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for m in mounts_below(dir)? {
        let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()).context("mount path")?;
        // SAFETY: umount2 with a valid NUL-terminated path.
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        tracing::warn!("detached leftover mount {} (rc {rc})", m.display());
    }
    if !mounts_below(dir)?.is_empty() {
        bail!("{} still has mounts below it; not removing it", dir.display());
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}
