//! The page cache around mke2fs, so a warm build waits for the disk as little as possible.
//!
//! - Read ahead: mke2fs reads every file of the cached root one after the other; when the page
//!   cache has dropped them since (a while later, or on a host that reclaims page cache early),
//!   it waits for the disk file by file. A few threads asking the kernel for every file at once
//!   (`POSIX_FADV_WILLNEED`, which starts the reads and returns) keep the disk busy ahead of it.
//! - Write behind: what mke2fs writes into the image stays dirty in the page cache until the
//!   image is synced (before it is renamed into place). Starting the writeback every few hundred
//!   milliseconds while mke2fs runs leaves that sync little to do.
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Threads walking the tree: directory and inode reads are synchronous, so several overlap them.
const THREADS: usize = 4;

/// A prefetch running in the background; it stops (and its threads end) when dropped.
pub struct ReadAhead {
    stop: Arc<AtomicBool>,
    asked: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Start reading every regular file below `dir` into the page cache. Best effort: what cannot
/// be read is skipped (the program that needs it reports the error).
pub fn read_ahead(dir: &Path) -> ReadAhead {
    let stop = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicUsize::new(0));
    // Directories to walk, and how many threads are walking one (the walk ends when none is
    // left and nobody can add more).
    let queue = Arc::new(Mutex::new((vec![dir.to_path_buf()], 0usize)));
    let threads = (0..THREADS)
        .filter_map(|i| {
            let (stop, queue, asked) = (stop.clone(), queue.clone(), asked.clone());
            std::thread::Builder::new().name(format!("prefetch-{i}")).spawn(move || walk(&queue, &stop, &asked)).ok()
        })
        .collect();
    ReadAhead { stop, asked, threads }
}

type Queue = Mutex<(Vec<PathBuf>, usize)>;

fn walk(queue: &Queue, stop: &AtomicBool, asked: &AtomicUsize) {
    while !stop.load(Ordering::Relaxed) {
        let next = {
            let Ok(mut q) = queue.lock() else { return };
            match q.0.pop() {
                Some(d) => {
                    q.1 += 1;
                    Some(d)
                }
                None if q.1 == 0 => return,
                None => None,
            }
        };
        let Some(dir) = next else {
            std::thread::sleep(std::time::Duration::from_millis(1));
            continue;
        };
        let subdirs = ask_for_files(&dir, stop, asked);
        let Ok(mut q) = queue.lock() else { return };
        q.0.extend(subdirs);
        q.1 -= 1;
    }
}

/// Ask for the regular files in `dir`; its subdirectories.
fn ask_for_files(dir: &Path, stop: &AtomicBool, asked: &AtomicUsize) -> Vec<PathBuf> {
    let mut subdirs = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return subdirs };
    for e in entries.flatten() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match e.file_type() {
            Ok(t) if t.is_dir() => subdirs.push(e.path()),
            Ok(t) if t.is_file() => {
                if let Ok(f) = std::fs::File::open(e.path()) {
                    // SAFETY: posix_fadvise on a descriptor this function owns; no memory is passed.
                    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
                    asked.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
    subdirs
}

impl ReadAhead {
    /// How many files were asked for so far.
    pub fn files(&self) -> usize {
        self.asked.load(Ordering::Relaxed)
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        tracing::debug!(files = self.files(), "read ahead");
    }
}

/// Writeback of a file started periodically in the background; stops when dropped.
pub struct WriteBehind {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Every `PERIOD`, start writing `file`'s dirty pages to the disk (`sync_file_range`, which
/// does not wait). Best effort, like the kernel's own writeback.
pub fn write_behind(file: std::fs::File) -> WriteBehind {
    const PERIOD: std::time::Duration = std::time::Duration::from_millis(200);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("write-behind".into())
        .spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::park_timeout(PERIOD);
                // SAFETY: sync_file_range on a descriptor this thread owns; no memory is passed.
                unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
            }
        })
        .ok();
    WriteBehind { stop, thread }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every file of a tree is visited (read into the page cache) and the threads end by
    /// themselves; dropping a running prefetch returns at once.
    #[test]
    fn prefetch_walks_the_whole_tree_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..50 {
            let d = dir.path().join(format!("d{}/e{}", i % 7, i % 3));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("f{i}")), vec![b'x'; 10_000]).unwrap();
        }
        let p = super::read_ahead(dir.path());
        let t = std::time::Instant::now();
        while p.threads.iter().any(|t| !t.is_finished()) {
            assert!(t.elapsed().as_secs() < 10, "the prefetch threads did not end");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(p.files(), 50);
        drop(p);
        drop(super::read_ahead(std::path::Path::new("/usr")));
    }
}
