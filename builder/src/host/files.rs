//! Files on the build host: the one atomic write (temporary file + rename), files written into
//! a root with a mode, and sha256 of bytes and files.
use crate::host::cmd;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Write `dest` through a temporary file in the same directory, renamed into place only when
/// `write` succeeded and no signal arrived; otherwise the temporary file is removed.
pub fn write_atomically<T>(dest: &Path, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = dest.file_name().context("output path has no file name")?.to_string_lossy();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let value = write(tmp.path())?;
    cmd::check_interrupted()?;
    tmp.persist(dest).with_context(|| format!("moving the image into place at {}", dest.display()))?;
    Ok(value)
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
