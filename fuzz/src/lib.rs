//! Helpers shared by the fuzz targets (see docs/testing.md, "Fuzzing").

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A scratch directory for targets whose entry point reads files (recipes, templates, FAT
/// images), made once per process below `$TMPDIR`. A static is never dropped, so the
/// directory outlives the process: `scripts/fuzz` points `TMPDIR` at a directory of its own
/// (in /dev/shm, so runs do not wear the disk) and removes it afterwards.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new().prefix("kiln-fuzz-").tempdir().expect("creating the scratch directory").keep()
    })
}

/// Split `data` at its first NUL byte: (before, after). Targets that take two inputs
/// (a recipe and a template, a key and a signature) read them this way.
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
