//! ESP images kept in the cache by their inputs: a rebuild whose kernel, initrd, boot loader,
//! loader entry and ESP options are unchanged copies the ESP it wrote before instead of
//! formatting and filling a FAT file system again. The key covers every input of
//! [`write_esp`] (file paths and contents, size, volume id, label, timestamp) and kiln's
//! version, so a cached ESP is byte for byte the one `write_esp` would write.
use crate::disk::esp::{write_esp, EspFile, EspOptions, EspSource};
use crate::host::cache::Cache;
use crate::host::files;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Bump when `write_esp`'s output changes for the same inputs.
const FORMAT: &str = "kiln-esp-1";

/// The ESP image for `files` and `opts`: the cached one when `cache` has it, else written
/// (into the cache when there is one, else to `fresh`).
pub fn esp_image(cache: Option<&Cache>, fresh: &Path, opts: &EspOptions, files: &[EspFile]) -> Result<PathBuf> {
    let Some(cache) = cache else {
        write_esp(fresh, opts, files).context("writing ESP")?;
        return Ok(fresh.to_path_buf());
    };
    let path = cache.esp(&key(opts, files)?);
    if path.is_file() {
        tracing::info!("reusing cached ESP {}", path.display());
        return Ok(path);
    }
    std::fs::create_dir_all(cache.esps()).with_context(|| format!("creating {}", cache.esps().display()))?;
    // Two builds making the same entry write the same bytes; the later rename wins.
    files::write_atomically(&path, |tmp| write_esp(tmp, opts, files)).context("writing ESP")?;
    Ok(path)
}

/// The cache key: SHA-256 over every input of `write_esp`, each field length-prefixed.
fn key(opts: &EspOptions, files: &[EspFile]) -> Result<String> {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(FORMAT.as_bytes());
    field(env!("CARGO_PKG_VERSION").as_bytes());
    field(&opts.size.to_le_bytes());
    field(&opts.volume_id.to_le_bytes());
    field(opts.label.as_bytes());
    field(&opts.timestamp.to_le_bytes());
    for f in files {
        field(f.path.as_bytes());
        let digest = match &f.contents {
            EspSource::Bytes(b) => files::sha256_hex(b),
            EspSource::File(p) => files::sha256_file(p)?,
        };
        field(digest.as_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> EspOptions {
        EspOptions { size: 8 << 20, volume_id: 7, label: "ESP".into(), timestamp: 1_700_000_000 }
    }

    fn file(path: &str, data: &[u8]) -> EspFile {
        EspFile { path: path.into(), contents: EspSource::Bytes(data.to_vec()) }
    }

    #[test]
    fn key_changes_with_every_input() {
        let base = key(&opts(), &[file("a", b"x")]).unwrap();
        assert_eq!(base, key(&opts(), &[file("a", b"x")]).unwrap(), "same inputs, same key");
        let others = [
            key(&opts(), &[file("a", b"y")]),
            key(&opts(), &[file("b", b"x")]),
            key(&opts(), &[file("a", b"x"), file("c", b"")]),
            key(&EspOptions { size: 16 << 20, ..opts() }, &[file("a", b"x")]),
            key(&EspOptions { volume_id: 8, ..opts() }, &[file("a", b"x")]),
            key(&EspOptions { label: "EFI".into(), ..opts() }, &[file("a", b"x")]),
            key(&EspOptions { timestamp: 1_700_000_002, ..opts() }, &[file("a", b"x")]),
        ];
        for (i, k) in others.into_iter().enumerate() {
            assert_ne!(k.unwrap(), base, "input {i} is not in the key");
        }
    }

    #[test]
    fn cached_esp_is_the_written_one() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(&dir.path().join("cache"));
        let fresh = dir.path().join("esp.img");
        let files = [file("EFI/BOOT/BOOTX64.EFI", b"loader"), file("loader/loader.conf", b"timeout 0\n")];
        write_esp(&fresh, &opts(), &files).unwrap();
        let first = esp_image(Some(&cache), &dir.path().join("unused"), &opts(), &files).unwrap();
        assert!(first.starts_with(cache.esps()));
        let before = std::fs::metadata(&first).unwrap().modified().unwrap();
        let second = esp_image(Some(&cache), &dir.path().join("unused"), &opts(), &files).unwrap();
        assert_eq!(first, second);
        assert_eq!(std::fs::metadata(&second).unwrap().modified().unwrap(), before, "reused, not rewritten");
        assert_eq!(files::sha256_file(&second).unwrap(), files::sha256_file(&fresh).unwrap());
        assert!(!dir.path().join("unused").exists());
        let names: Vec<_> = std::fs::read_dir(cache.esps()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary files left: {names:?}");
    }
}
