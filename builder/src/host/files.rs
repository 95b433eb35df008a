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
