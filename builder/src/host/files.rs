//! Files on the build host: the one way a file (or a directory tree) reaches its path — written
//! under a temporary name beside it, `.NAME.PID-XXXXXX.partial`, and renamed into place only when
//! complete and uninterrupted — files written into a root with a mode, and sha256 of bytes and
//! files.
use crate::host::cmd;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tempfile::{NamedTempFile, TempPath};

/// The directory `dest` is in ("." for a bare file name).
fn dir_of(dest: &Path) -> &Path {
    dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

fn name_of(dest: &Path) -> Result<String> {
    Ok(dest.file_name().with_context(|| format!("{} has no file name", dest.display()))?.to_string_lossy().into())
}

/// The prefix of a temporary name for `name`: `.NAME.PID-`, so that the leftovers of a killed
/// kiln are told from the files of a live one ([`remove_dead_partials`]).
fn partial_prefix(name: &str) -> String {
    format!(".{name}.{}-", std::process::id())
}

/// A new empty temporary file for `name` in `dir`, named `.NAME.PID-XXXXXX.partial` (the one
/// temporary naming scheme); removed when dropped unless persisted.
pub fn partial_file(dir: &Path, name: &str) -> Result<NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&partial_prefix(name))
        .suffix(".partial")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))
}

/// A new empty directory for `name` in `dir`, named like [`partial_file`]. The caller removes
/// it (with `work::remove_tree`) or renames it into place.
pub fn partial_dir(dir: &Path, name: &str) -> Result<PathBuf> {
    let tmp = tempfile::Builder::new()
        .prefix(&partial_prefix(name))
        .suffix(".partial")
        .tempdir_in(dir)
        .with_context(|| format!("creating a temporary directory in {}", dir.display()))?;
    Ok(tmp.keep())
}

/// Write `dest` through a temporary file in the same directory, renamed into place only when
/// `write` succeeded and no signal arrived; otherwise the temporary file is removed.
pub fn write_atomically<T>(dest: &Path, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    write_atomically_via(dir_of(dest), dest, write)
}

/// [`write_atomically`] with the temporary file in `tmp_dir` (on the same file system as
/// `dest`), for stores that keep their unfinished files apart from their entries.
pub fn write_atomically_via<T>(tmp_dir: &Path, dest: &Path, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let tmp = partial_file(tmp_dir, &name_of(dest)?)?.into_temp_path();
    let value = write(&tmp)?;
    cmd::check_interrupted()?;
    tmp.persist(dest).with_context(|| format!("moving {} into place", dest.display()))?;
    Ok(value)
}

/// [`write_atomically`] of a new file: fails, keeping what is there, when `dest` exists.
pub fn write_new_atomically<T>(dest: &Path, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let tmp = partial_file(dir_of(dest), &name_of(dest)?)?.into_temp_path();
    let value = write(&tmp)?;
    cmd::check_interrupted()?;
    tmp.persist_noclobber(dest).with_context(|| format!("moving {} into place", dest.display()))?;
    Ok(value)
}

/// Make the directory tree `dest` by letting `fill` populate a temporary directory beside it,
/// renamed into place when complete (an empty directory at `dest` is replaced); on failure or
/// interruption the temporary tree is removed.
pub fn write_dir_atomically<T>(dest: &Path, fill: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let tmp = partial_dir(dir_of(dest), &name_of(dest)?)?;
    let value = fill(&tmp).and_then(|v| cmd::check_interrupted().map(|()| v));
    let value = match value {
        Ok(v) => v,
        Err(e) => {
            let _ = crate::host::work::remove_tree(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&tmp, dest) {
        let _ = crate::host::work::remove_tree(&tmp);
        return Err(e).with_context(|| format!("moving {} into place", dest.display()));
    }
    Ok(value)
}

/// Several files that appear together: each written to a temporary file in `dir` (named as by
/// [`partial_file`]), all renamed into place by [`FileSet::commit`]. Dropped uncommitted
/// (failure, interruption), every temporary file is removed.
pub struct FileSet {
    dir: PathBuf,
    files: Vec<(TempPath, String)>,
}

impl FileSet {
    pub fn new(dir: &Path) -> FileSet {
        FileSet { dir: dir.to_path_buf(), files: Vec::new() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Produce file `name` by letting `write` fill a temporary path.
    pub fn write<T>(&mut self, name: &str, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
        let tmp = partial_file(&self.dir, name)?.into_temp_path();
        let value = write(&tmp).with_context(|| format!("writing {name} in {}", self.dir.display()))?;
        cmd::check_interrupted()?;
        self.files.push((tmp, name.to_string()));
        Ok(value)
    }

    /// Where file `name` is until the commit.
    pub fn staged(&self, name: &str) -> Option<&Path> {
        self.files.iter().find(|(_, n)| n == name).map(|(p, _)| p.as_ref())
    }

    /// Rename every file to its name (in the order written), with `mode`. Returns the paths.
    pub fn commit(self, mode: u32) -> Result<Vec<PathBuf>> {
        cmd::check_interrupted()?;
        let mut done = Vec::new();
        for (tmp, name) in self.files {
            let dest = self.dir.join(&name);
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting the mode of {name}"))?;
            tmp.persist(&dest).with_context(|| format!("moving {} into place", dest.display()))?;
            done.push(dest);
        }
        Ok(done)
    }
}

/// The process that made the temporary file or tree `file_name` (`.NAME.PID-XXXXXX.partial`).
fn partial_owner(file_name: &str) -> Option<i32> {
    let stem = file_name.strip_prefix('.')?.strip_suffix(".partial")?;
    let (_, tail) = stem.rsplit_once('.')?;
    tail.split_once('-')?.0.parse().ok()
}

fn process_alive(pid: i32) -> bool {
    pid > 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// Remove the temporary files and trees (`*.partial`) that killed kiln processes left in
/// `dirs` (not recursively); those of live processes stay. Returns what was removed.
pub fn remove_dead_partials(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = partial_owner(&name) else { continue };
            if process_alive(pid) {
                continue;
            }
            let path = e.path();
            let gone = if e.file_type().is_ok_and(|t| t.is_dir()) {
                crate::host::work::remove_tree(&path)
            } else {
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
            };
            match gone {
                Ok(()) => removed.push(path),
                Err(e) => eprintln!("kiln: could not remove the leftover {}: {e:#}", path.display()),
            }
        }
    }
    Ok(removed)
}

/// Fail, naming `dir` as `what`, unless a file can be made in it (before any slow work: a
/// read-only or missing directory is reported at once, not after the bootstrap).
pub fn probe_writable(dir: &Path, what: &str) -> Result<()> {
    tempfile::Builder::new()
        .prefix(&partial_prefix("kiln-probe"))
        .suffix(".partial")
        .tempfile_in(dir)
        .map(drop)
        .with_context(|| format!("the {what} {} is not writable", dir.display()))
}

/// Write a file below `root` (creating parent directories), with a mode.
pub fn write_file(root: &Path, rel: &str, data: &[u8], mode: u32) -> Result<()> {
    let path = root.join(rel.trim_start_matches('/'));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating /{}", rel_parent(rel)))?;
    }
    if path.is_symlink() {
        std::fs::remove_file(&path).with_context(|| format!("replacing /{rel}"))?;
    }
    std::fs::write(&path, data).with_context(|| format!("writing /{rel}"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode of /{rel}"))
}

fn rel_parent(rel: &str) -> &str {
    rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

/// Hex sha256 of some bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Hex sha256 of a file's contents, read in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// `path` (symbolic links followed) is a regular file of at most `limit` bytes. Looks at the
/// file type before anything opens it: a named pipe or a device is refused unopened.
pub fn check_regular(path: &Path, limit: u64) -> std::result::Result<std::fs::Metadata, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(format!("not a regular file (a {})", kind_of(&meta.file_type())));
    }
    if meta.len() > limit {
        return Err(format!("{} bytes, more than the limit of {limit}", meta.len()));
    }
    Ok(meta)
}

/// Read a regular file of at most `limit` bytes as text (see `check_regular`); the open file is
/// checked again, so a file swapped after the first look is not read past the limit either.
pub fn read_regular(path: &Path, limit: u64) -> std::result::Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    check_regular(path, limit)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(format!("not a regular file (a {})", kind_of(&meta.file_type())));
    }
    let mut text = String::new();
    file.take(limit + 1).read_to_string(&mut text).map_err(|e| e.to_string())?;
    if text.len() as u64 > limit {
        return Err(format!("more than the limit of {limit} bytes"));
    }
    Ok(text)
}

fn kind_of(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "named pipe"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<_> =
            std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        n.sort();
        n
    }

    #[test]
    fn writes_land_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.txt");
        let err = write_atomically(&dest, |tmp| -> Result<()> {
            let name = tmp.file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.starts_with(".a.txt.") && name.ends_with(".partial"), "{name}");
            assert_eq!(partial_owner(&name), Some(std::process::id() as i32), "{name}");
            std::fs::write(tmp, "half")?;
            anyhow::bail!("boom")
        });
        assert!(err.is_err());
        assert!(names(dir.path()).is_empty(), "nothing left after a failed write");
        write_atomically(&dest, |tmp| Ok(std::fs::write(tmp, "1")?)).unwrap();
        write_atomically(&dest, |tmp| Ok(std::fs::write(tmp, "2")?)).unwrap();
        assert!(write_new_atomically(&dest, |tmp| Ok(std::fs::write(tmp, "3")?)).is_err());
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "2");
        assert_eq!(names(dir.path()), ["a.txt"]);
    }

    #[test]
    fn leftovers_of_dead_processes_are_removed_those_of_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let live = partial_file(dir.path(), "img").unwrap();
        // pid_max is at most 2^22: this pid belongs to nobody.
        let dead = dir.path().join(".disk.img.4194999-AbC123.partial");
        std::fs::write(&dead, "half").unwrap();
        let dead_tree = dir.path().join(".k.4194999-xyz.partial");
        std::fs::create_dir_all(dead_tree.join("etc")).unwrap();
        std::fs::write(dir.path().join("other.partial"), "not ours").unwrap();
        let removed = remove_dead_partials(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(live.path().exists() && !dead.exists() && !dead_tree.exists());
        assert!(dir.path().join("other.partial").exists());
    }

    #[test]
    fn trees_and_file_sets_appear_together() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        assert!(write_dir_atomically(&tree, |d| -> Result<()> {
            std::fs::write(d.join("x"), "x")?;
            anyhow::bail!("boom")
        })
        .is_err());
        assert!(names(dir.path()).is_empty());
        write_dir_atomically(&tree, |d| Ok(std::fs::write(d.join("x"), "x")?)).unwrap();
        assert_eq!(names(&tree), ["x"]);

        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let mut set = FileSet::new(&out);
        set.write("b", |p| Ok(std::fs::write(p, "b")?)).unwrap();
        set.write("c", |p| Ok(std::fs::write(p, "c")?)).unwrap();
        assert!(names(&out).iter().all(|n| n.ends_with(".partial")));
        assert_eq!(set.commit(0o644).unwrap(), [out.join("b"), out.join("c")]);
        assert_eq!(names(&out), ["b", "c"]);
    }
}

#[cfg(test)]
mod regular_tests {
    use super::*;

    #[test]
    fn pipes_and_devices_are_refused_unopened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Opening a pipe for reading would block: the check must not open it.
        assert!(read_regular(&fifo, 100).unwrap_err().contains("named pipe"));
        assert!(read_regular(Path::new("/dev/zero"), 100).unwrap_err().contains("device"));
        assert!(read_regular(dir.path(), 100).unwrap_err().contains("directory"));
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 101]).unwrap();
        assert!(read_regular(&big, 100).unwrap_err().contains("limit"));
        std::fs::write(&big, b"ok").unwrap();
        assert_eq!(read_regular(&big, 100).unwrap(), "ok");
    }
}
