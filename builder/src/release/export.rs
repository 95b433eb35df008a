//! Output files of a build: the staging area that makes the whole set appear at once, and the
//! image formats besides the raw `.img` (multi-threaded zstd, qcow2 by `qemu-img`).
use crate::disk::stream::{read_full, CHUNK};
use crate::host::cmd::{self, Cmd};
use crate::host::files::FileSet;
pub use crate::recipe::OutputFormat;
use crate::release::checksums::HashingWriter;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// zstd level of `.img.zst`: zstd's default, a good speed/size balance for disk images.
const ZSTD_LEVEL: i32 = 3;

/// File name of `image_name` (`NAME-VERSION-ARCH.img`) in `format`.
pub fn file_name(image_name: &str, format: OutputFormat) -> String {
    let stem = stem(image_name);
    match format {
        OutputFormat::Img => format!("{stem}.img"),
        OutputFormat::Zst => format!("{stem}.img.zst"),
        OutputFormat::Qcow2 => format!("{stem}.qcow2"),
    }
}

/// The manifest beside the image of `stem` (see [`stem`]).
pub fn manifest_name(stem: &str) -> String {
    format!("{stem}.manifest.json")
}

/// The block map (bmaptool's format) beside the image of `stem`.
pub fn bmap_name(stem: &str) -> String {
    format!("{stem}.bmap")
}

/// The SPDX SBOM beside the image of `stem`.
pub fn sbom_name(stem: &str) -> String {
    format!("{stem}.spdx.json")
}

/// `img` first, then `formats` in order, without duplicates.
pub fn with_img(formats: &[OutputFormat]) -> Vec<OutputFormat> {
    let mut out = vec![OutputFormat::Img];
    for f in formats {
        if !out.contains(f) {
            out.push(*f);
        }
    }
    out
}

/// `NAME-VERSION-ARCH` of `NAME-VERSION-ARCH.img` or `.img.zst`: the prefix of every output.
pub fn stem(file: &str) -> &str {
    file.strip_suffix(".img.zst")
        .or_else(|| file.strip_suffix(".img"))
        .or_else(|| file.strip_suffix(".qcow2"))
        .unwrap_or(file)
}

/// The output files of one build, written as hidden temporary files in the output directory
/// and renamed into place together by [`Staging::commit`] (a [`FileSet`]). Dropped uncommitted
/// (failure, interruption), every temporary file is removed: nothing half-written is left behind.
pub struct Staging {
    files: FileSet,
    stale: Vec<String>,
}

impl Staging {
    pub fn new(dir: &Path) -> Staging {
        Staging { files: FileSet::new(dir), stale: Vec::new() }
    }

    /// Produce output `name` by letting `write` fill a temporary path.
    pub fn write<T>(&mut self, name: &str, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
        self.files.write(name, write)
    }

    /// Produce output `name` with these contents.
    pub fn write_bytes(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.write(name, |p| std::fs::write(p, data).with_context(|| format!("writing {}", p.display())))
    }

    /// Where staged output `name` is until the commit (to read it back, e.g. to compress it).
    pub fn staged(&self, name: &str) -> Option<&Path> {
        self.files.staged(name)
    }

    /// Remove `name` from the output directory at the commit, if it is there (a file an
    /// earlier build left that would contradict this one's).
    pub fn remove_on_commit(&mut self, name: &str) {
        self.stale.push(name.to_string());
    }

    /// Rename every staged file to its final name (in the order staged), readable by all.
    /// Returns the final paths.
    pub fn commit(self) -> Result<Vec<PathBuf>> {
        let dir = self.files.dir().to_path_buf();
        let done = self.files.commit(0o644)?;
        for name in &self.stale {
            let path = dir.join(name);
            if path.is_file() {
                tracing::warn!("removing {} left by an earlier build", path.display());
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
        }
        Ok(done)
    }
}

/// Compress `src` to `dst` with multi-threaded zstd (content size and checksum in the frame).
/// Returns the SHA-256 and size of the compressed file, computed while writing it.
/// The output does not depend on the number of threads.
pub fn compress_zst(src: &Path, dst: &Path) -> Result<(String, u64)> {
    let threads = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    compress_zst_threads(src, dst, threads)
}

/// [`compress_zst`] with `threads` worker threads (at least one: zstd's multi-threaded format
/// is the same for any number of workers, but differs from single-threaded mode).
pub fn compress_zst_threads(src: &Path, dst: &Path, threads: u32) -> Result<(String, u64)> {
    let mut input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let len = input.metadata().context("reading image size")?.len();
    let out = File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
    let mut enc = zstd::stream::Encoder::new(HashingWriter::new(BufWriter::with_capacity(1 << 20, out)), ZSTD_LEVEL)
        .context("starting zstd")?;
    enc.multithread(threads.max(1)).context("enabling zstd threads")?;
    enc.include_checksum(true).context("zstd checksum")?;
    enc.set_pledged_src_size(Some(len)).context("zstd content size")?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_full(&mut input, &mut buf).with_context(|| format!("reading {}", src.display()))?;
        if n == 0 {
            break;
        }
        enc.write_all(&buf[..n]).context("compressing")?;
        cmd::check_interrupted()?;
    }
    let (out, sha256, size) = enc.finish().context("finishing the zstd stream")?.finish();
    let file = out.into_inner().map_err(|e| e.into_error()).context("flushing the compressed image")?;
    file.sync_all().context("syncing the compressed image")?;
    Ok((sha256, size))
}

/// Convert the raw image `src` to qcow2 at `dst` with `qemu-img` (holes stay unallocated).
pub fn convert_qcow2(src: &Path, dst: &Path) -> Result<()> {
    Cmd::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(src)
        .arg(dst)
        .run()
        .context("converting the image to qcow2")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(file_name("a-1-x86_64.img", OutputFormat::Zst), "a-1-x86_64.img.zst");
        assert_eq!(file_name("a-1-x86_64.img", OutputFormat::Qcow2), "a-1-x86_64.qcow2");
        assert_eq!(stem("a-1-x86_64.img.zst"), "a-1-x86_64");
    }

    #[test]
    fn zst_round_trips_with_the_zstd_tool_and_hash_is_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a.img");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let dst = dir.path().join("a.img.zst");
        let (sha, size) = compress_zst(&src, &dst).unwrap();
        assert_eq!((sha, size), crate::release::checksums::hash_file(&dst).unwrap());
        let back = dir.path().join("back.img");
        crate::host::cmd::Cmd::new("zstd").args(["-q", "-d", "-o"]).arg(&back).arg("--").arg(&dst).run().unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), data);
    }

    #[test]
    fn zst_output_does_not_depend_on_the_thread_count() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a.img");
        // 24 MiB of poorly compressible bytes: several zstd jobs.
        let mut x = 1u64;
        let data: Vec<u8> = (0..24 << 20)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 59) as u8
            })
            .collect();
        std::fs::write(&src, &data).unwrap();
        let one = compress_zst_threads(&src, &dir.path().join("1.zst"), 1).unwrap();
        let three = compress_zst_threads(&src, &dir.path().join("3.zst"), 3).unwrap();
        assert_eq!(one, three);
    }

    #[test]
    fn uncommitted_staging_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Staging::new(dir.path());
            s.write_bytes("x", b"1").unwrap();
            assert!(s.write("y", |_| -> Result<()> { anyhow::bail!("boom") }).is_err());
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut s = Staging::new(dir.path());
        s.write_bytes("x", b"1").unwrap();
        assert_eq!(s.commit().unwrap(), vec![dir.path().join("x")]);
        assert_eq!(std::fs::read(dir.path().join("x")).unwrap(), b"1");
    }
}
