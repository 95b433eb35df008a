//! Scratch space for a build: removed on success, failure and interruption, never across a mount.
//! A kiln killed with SIGKILL cannot clean up: its work directory carries an owner file that the
//! live owner holds locked, so the next kiln command finds the directory of a dead owner
//! ([`reap_dead`]), kills what still runs in it, detaches its mounts and removes it.
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Prefix of work directory names.
const PREFIX: &str = "kiln-work-";
/// The owner file in a work directory: the owner's pid, `flock`ed while it lives.
const OWNER: &str = ".kiln-owner";

/// A build's scratch directory. Dropping it unmounts anything left below it, then removes it.
pub struct WorkDir {
    path: PathBuf,
    keep: bool,
    _owner: File,
}

impl WorkDir {
    /// Create a fresh directory below `parent` (the system temp dir when None).
    pub fn new(parent: Option<&Path>, keep: bool) -> Result<WorkDir> {
        let parent = parent.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir_in(&parent)
            .with_context(|| format!("creating work directory in {}", parent.display()))?;
        let path = dir.keep();
        // Locked before it gets its name: an owner file that can be locked has a dead owner.
        let owner = (|| -> Result<File> {
            let new = path.join(format!("{OWNER}.new"));
            let mut file = File::create(&new)?;
            flock(&file, libc::LOCK_EX | libc::LOCK_NB)?;
            std::io::Write::write_all(&mut file, format!("{}\n", std::process::id()).as_bytes())?;
            std::fs::rename(&new, path.join(OWNER))?;
            Ok(file)
        })();
        match owner {
            Ok(file) => Ok(WorkDir { path, keep, _owner: file }),
            Err(e) => {
                let _ = remove_tree(&path);
                Err(e).with_context(|| format!("creating work directory in {}", parent.display()))
            }
        }
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

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on a file descriptor we own; the lock ends when the file is closed.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether the work directory `dir` belongs to a dead kiln: its owner file is not locked (or,
/// a minute after the directory was made, missing: its owner died before naming the file). Returns the owner file, locked, so two
/// kilns never reap one directory together.
fn dead_owner(dir: &Path) -> Option<Option<File>> {
    match File::options().read(true).write(true).open(dir.join(OWNER)) {
        Ok(file) => flock(&file, libc::LOCK_EX | libc::LOCK_NB).ok().map(|()| Some(file)),
        Err(_) => {
            let age = std::fs::metadata(dir).and_then(|m| m.modified()).ok()?.elapsed().ok()?;
            (age > Duration::from_secs(60)).then_some(None)
        }
    }
}

/// Processes whose working directory, root, executable or command line lies in `dir`.
fn processes_in(dir: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = dir.to_string_lossy().into_owned();
    let below = format!("{needle}/");
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let proc = PathBuf::from(format!("/proc/{pid}"));
            ["cwd", "root", "exe"].iter().any(|l| std::fs::read_link(proc.join(l)).is_ok_and(|t| t.starts_with(dir)))
                || std::fs::read(proc.join("cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c).split('\0').any(|a| a.contains(&below) || a.ends_with(&needle))
                })
        })
        .collect()
}

/// Kill (SIGKILL) every process working in `dir`, with its process group, until none is left.
fn kill_processes_in(dir: &Path) -> Result<()> {
    // SAFETY: getpgrp has no preconditions.
    let own_group = unsafe { libc::getpgrp() };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pids = processes_in(dir);
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("processes {pids:?} still run in {}", dir.display());
        }
        for pid in pids {
            // SAFETY: getpgid/kill on a pid; a process that is gone meanwhile only gives ESRCH.
            let pgid = unsafe { libc::getpgid(pid) };
            if pgid > 1 && pgid != own_group {
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Clean up after killed kilns in `parent`: every work directory whose owner is dead has its
/// processes killed (with their process groups), its mounts detached, and is removed. Returns
/// the directories removed. Every kiln command that works in `parent` calls this at start.
pub fn reap_dead(parent: &Path) -> Result<Vec<PathBuf>> {
    let mut reaped = Vec::new();
    let Ok(entries) = std::fs::read_dir(parent) else { return Ok(reaped) };
    for e in entries.flatten() {
        let dir = e.path();
        if !e.file_name().to_string_lossy().starts_with(PREFIX) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Some(_owner) = dead_owner(&dir) else { continue };
        eprintln!("kiln: cleaning up {}, left by a kiln that was killed", dir.display());
        kill_processes_in(&dir)?;
        remove_tree(&dir)?;
        reaped.push(dir);
    }
    Ok(reaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_dir_of_a_dead_owner_is_reaped_a_live_one_is_not() {
        let parent = tempfile::tempdir().unwrap();
        let live = WorkDir::new(Some(parent.path()), false).unwrap();
        // A dead kiln's work dir: an owner file nobody holds, and a process still running in it.
        let dead = parent.path().join("kiln-work-dead");
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join(OWNER), "4194999\n").unwrap();
        let null = std::process::Stdio::null;
        let mut child =
            crate::host::cmd::Cmd::new("sleep").arg("600").current_dir(&dead).spawn(null(), null(), null()).unwrap();
        assert_eq!(reap_dead(parent.path()).unwrap(), vec![dead.clone()]);
        assert!(!dead.exists() && live.path().is_dir());
        assert!(child.wait().unwrap().code().is_none(), "the leftover process was killed");
    }
}
