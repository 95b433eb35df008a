//! kiln's cache directory: the one owner of its layout, the way trees enter it, and the locks
//! that let concurrent builds share it.
//!
//! ```text
//! <cache>/roots/<key>/        bootstrapped roots, by the hash of their inputs (+ <key>.lock)
//! <cache>/tools/<key>/        pinned tools trees (+ <key>.lock)
//! <cache>/debs/               the content-addressed .deb cache (debian::debcache)
//! <cache>/artifacts/sha256/   sha256-pinned downloads (customize::artifacts)
//! <cache>/esp/<key>.img       ESP images, by the hash of their files and options (image::espcache)
//! <cache>/tmp/                work directories, beside the entries so a fresh tree moves in by rename
//! ```
//!
//! Entries are complete trees that appear by rename and are never changed afterwards. A build
//! that makes an entry holds its [`EntryLock`]; a second build wanting the same entry waits,
//! then finds it made.
use crate::host::cmd::Cmd;
use anyhow::{Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Temporary files of a cache area (`<cache>/tmp`, `<cache>/debs/tmp`).
const TMP: &str = "tmp";

/// kiln's cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: &Path) -> Cache {
        Cache { dir: dir.to_path_buf() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bootstrapped roots, one directory per cache key.
    pub fn roots(&self) -> PathBuf {
        self.dir.join("roots")
    }

    /// Pinned tools trees, one directory per cache key.
    pub fn tools(&self) -> PathBuf {
        self.dir.join("tools")
    }

    /// The .deb cache.
    pub fn debs(&self) -> PathBuf {
        self.dir.join("debs")
    }

    /// The artifact store.
    pub fn artifacts(&self) -> PathBuf {
        self.dir.join("artifacts")
    }

    /// ESP images, one file per cache key.
    pub fn esps(&self) -> PathBuf {
        self.dir.join("esp")
    }

    /// The cached ESP image with key `key` (a hex digest).
    pub fn esp(&self, key: &str) -> PathBuf {
        self.esps().join(format!("{key}.img"))
    }

    /// Where builds make their work directories.
    pub fn tmp(&self) -> PathBuf {
        tmp_in(&self.dir)
    }

    /// Clean up after kilns that were killed while using this cache: their work directories in
    /// `tmp/` ([`crate::host::work::reap_dead`]) and their unfinished files and trees
    /// (`*.partial`) in the cache's areas. Every kiln command using the cache calls this first.
    pub fn clean_leftovers(&self) -> Result<()> {
        crate::host::work::reap_dead(&self.tmp())?;
        let areas = [
            self.dir.clone(),
            self.roots(),
            self.tools(),
            tmp_in(&self.debs()),
            self.artifacts().join("sha256"),
            self.esps(),
        ];
        for p in crate::host::files::remove_dead_partials(&areas)? {
            eprintln!("kiln: removed {}, left unfinished by a kiln that was killed", p.display());
        }
        Ok(())
    }

    /// Take the lock of the cache entry `entry` (a `.lock` file beside it), waiting while
    /// another build holds it.
    pub fn lock_entry(entry: &Path) -> Result<EntryLock> {
        EntryLock::acquire(entry)
    }
}

/// The directory for unfinished files of the cache area `area`.
pub fn tmp_in(area: &Path) -> PathBuf {
    area.join(TMP)
}

/// An exclusive `flock(2)` on `<entry>.lock`, released when dropped. The kernel releases it
/// when its holder dies, so a lock file left behind never blocks anyone; the file stays (removing
/// a lock file another process may be waiting on would let two holders in).
#[derive(Debug)]
pub struct EntryLock {
    _file: File,
    path: PathBuf,
}

impl EntryLock {
    fn lock_path(entry: &Path) -> Result<PathBuf> {
        let name = entry.file_name().with_context(|| format!("cache entry {} has no name", entry.display()))?;
        Ok(entry.with_file_name(format!("{}.lock", name.to_string_lossy())))
    }

    fn open(entry: &Path) -> Result<(File, PathBuf)> {
        let path = Self::lock_path(entry)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        Ok((file, path))
    }

    /// The lock if nobody holds it, else None (without waiting).
    pub fn try_acquire(entry: &Path) -> Result<Option<EntryLock>> {
        let (file, path) = Self::open(entry)?;
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(Some(EntryLock { _file: file, path })),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }

    /// The lock, waiting (with a message) while another build holds it. The wait polls, so a
    /// SIGINT/SIGTERM (handled on another thread) ends it.
    pub fn acquire(entry: &Path) -> Result<EntryLock> {
        if let Some(lock) = Self::try_acquire(entry)? {
            return Ok(lock);
        }
        eprintln!("kiln: waiting for another kiln build to finish {}", entry.display());
        loop {
            std::thread::sleep(std::time::Duration::from_millis(250));
            crate::host::cmd::check_interrupted()?;
            if let Some(lock) = Self::try_acquire(entry)? {
                return Ok(lock);
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on a file descriptor we own; the lock ends when the file is closed.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Move a finished tree into the cache at `dest` (rename when on the same file system, else
/// copy), through a temporary name so a half-stored tree is never taken for a cached one.
/// When `dest` appeared meanwhile (another build stored the same inputs), theirs is kept.
pub fn store(tree: &Path, dest: &Path) -> Result<()> {
    let parent = dest.parent().context("cache path")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    if dest.exists() {
        return Ok(());
    }
    crate::host::files::write_dir_atomically(dest, |tmp| match std::fs::rename(tree, tmp) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            Cmd::new("cp").args(["-a", "--no-target-directory"]).arg(tree).arg(tmp).run()
        }
        Err(e) => Err(e).with_context(|| format!("moving {} into the cache", tree.display())),
    })
    .or_else(|e| if dest.exists() { Ok(()) } else { Err(e) })
}

/// Give the cached tree `from` a second name `to` in the cache (a tree of hard links, complete
/// before it is renamed into place). For `kiln lock`: the tree it resolved a lock from is what a
/// bootstrap pinned to that lock makes, so a build from the new lock need not bootstrap again.
pub fn alias(from: &Path, to: &Path) -> Result<()> {
    if to.exists() || !from.is_dir() || from == to {
        return Ok(());
    }
    crate::host::files::write_dir_atomically(to, |tmp| {
        Cmd::new("cp").args(["-al", "--no-target-directory"]).arg(from).arg(tmp).run()
    })
    .or_else(|e| if to.exists() { Ok(()) } else { Err(e) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{mpsc, Arc, Mutex};
    use std::time::Duration;

    #[test]
    fn layout() {
        let c = Cache::new(Path::new("/c"));
        assert_eq!(
            [c.roots(), c.tools(), c.debs(), c.artifacts(), c.tmp(), c.esp("ab")],
            ["/c/roots", "/c/tools", "/c/debs", "/c/artifacts", "/c/tmp", "/c/esp/ab.img"].map(PathBuf::from)
        );
    }

    #[test]
    fn two_holders_of_an_entry_lock_take_turns() {
        let dir = tempfile::tempdir().unwrap();
        let entry = dir.path().join("roots/abc");
        let events = Arc::new(Mutex::new(Vec::new()));
        let (held_tx, held_rx) = mpsc::channel();
        let first = {
            let (entry, events) = (entry.clone(), events.clone());
            std::thread::spawn(move || {
                let lock = Cache::lock_entry(&entry).unwrap();
                events.lock().unwrap().push("first in");
                held_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(300));
                events.lock().unwrap().push("first out");
                drop(lock);
            })
        };
        held_rx.recv().unwrap();
        assert!(EntryLock::try_acquire(&entry).unwrap().is_none(), "held by the first thread");
        let second = Cache::lock_entry(&entry).unwrap();
        events.lock().unwrap().push("second in");
        first.join().unwrap();
        assert_eq!(*events.lock().unwrap(), ["first in", "first out", "second in"]);
        assert_eq!(second.path(), dir.path().join("roots/abc.lock"));
    }

    #[test]
    fn a_lock_left_by_a_dead_holder_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let entry = dir.path().join("tools/abc");
        std::fs::create_dir_all(dir.path().join("tools")).unwrap();
        let file = dir.path().join("tools/abc.lock");
        // A process takes the lock and is killed while holding it; its lock file stays behind.
        let script =
            format!("exec 9>{}; flock -x 9; kill -9 $$", crate::host::cmd::shell_quote(&file.to_string_lossy()));
        assert!(Cmd::new("sh").args(["-c", &script]).run().is_err(), "the holder was killed");
        assert!(file.exists());
        let lock = EntryLock::try_acquire(&entry).unwrap();
        assert!(lock.is_some(), "the kernel released the dead holder's lock");
    }

    #[test]
    fn store_and_alias_make_complete_trees_and_keep_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let (tree, dest, alias_to) = (dir.path().join("fresh"), dir.path().join("roots/k"), dir.path().join("roots/l"));
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/os-release"), "ID=debian\n").unwrap();
        store(&tree, &dest).unwrap();
        assert!(!tree.exists() && dest.join("etc/os-release").is_file());
        alias(&dest, &alias_to).unwrap();
        assert_eq!(std::fs::read_to_string(alias_to.join("etc/os-release")).unwrap(), "ID=debian\n");
        std::fs::create_dir_all(tree.join("other")).unwrap();
        store(&tree, &dest).unwrap();
        assert!(!dest.join("other").exists(), "an existing entry is kept");
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("roots")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 2, "no temporary trees left: {names:?}");
    }
}
