//! Disk image: GPT and ESP (owned by kiln, no external tools).
//!
//! [`assemble`] streams the whole image in disk order — GPT head, partitions
//! and the gaps between them, backup GPT — to the output file and to SHA-256
//! hashers at the same time, skipping all-zero blocks so the output stays sparse.

pub mod esp;
mod fatfix;
pub mod gpt;

pub use gpt::{Layout, PartitionSpec, PlacedPartition};

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Copy granularity.
const CHUNK: usize = 4 * 1024 * 1024;
/// Sparseness granularity: all-zero blocks of this size are not written.
const BLOCK: usize = 4096;

/// SHA-256 (hex) and size of the whole image, plus one digest per partition.
#[derive(Debug, Clone, Serialize)]
pub struct ImageDigest {
    /// SHA-256 of the whole image, lower-case hex.
    pub sha256: String,
    /// Image size in bytes.
    pub size: u64,
    /// Partition digests in layout order.
    pub partitions: Vec<PartitionDigest>,
}

/// SHA-256 of one partition over its full size (zero padding included).
#[derive(Debug, Clone, Serialize)]
pub struct PartitionDigest {
    /// Partition number.
    pub number: u32,
    /// Partition label.
    pub label: String,
    /// SHA-256 of the partition bytes, lower-case hex.
    pub sha256: String,
}

/// Writes the image sequentially, hashing everything and keeping holes for zeros.
struct SparseWriter {
    file: File,
    pos: u64,
    hasher: Sha256,
    zeros: Vec<u8>,
}

impl SparseWriter {
    /// Append `buf` at the current position (and to `part`, the partition hasher, if any).
    fn put(&mut self, buf: &[u8], part: Option<&mut Sha256>) -> Result<()> {
        self.hasher.update(buf);
        if let Some(h) = part {
            h.update(buf);
        }
        let mut run: Option<usize> = None; // start of the current non-zero run
        for (i, block) in buf.chunks(BLOCK).enumerate() {
            let start = i * BLOCK;
            let zero = block == &self.zeros[..block.len()]; // memcmp, fast even unoptimized
            match (zero, run) {
                (false, None) => run = Some(start),
                (true, Some(s)) => {
                    self.write_run(&buf[s..start], self.pos + s as u64)?;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run {
            self.write_run(&buf[s..], self.pos + s as u64)?;
        }
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn write_run(&self, data: &[u8], at: u64) -> Result<()> {
        self.file
            .write_all_at(data, at)
            .with_context(|| format!("writing {} bytes at offset {at}", data.len()))
    }

    /// Append `len` zero bytes (hashed, not written: the file is already zero there).
    fn skip_zeros(&mut self, len: u64, mut part: Option<&mut Sha256>) {
        let mut left = len;
        while left > 0 {
            let n = left.min(self.zeros.len() as u64) as usize;
            self.hasher.update(&self.zeros[..n]);
            if let Some(h) = part.as_deref_mut() {
                h.update(&self.zeros[..n]);
            }
            left -= n as u64;
        }
        self.pos += len;
    }
}

/// Fill `buf` from `src` as far as possible; returns the bytes read (short only at EOF).
fn read_full(src: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Assemble the disk image at `out` (created or truncated, sparse, `layout.disk_size` long).
///
/// Writes the GPT, then copies `contents[i]` (whose length must not exceed the
/// partition's size) into partition `i` at its offset, in 4 MiB chunks, leaving
/// holes for all-zero blocks. SHA-256 digests of each full partition and of the
/// whole image are computed while writing; nothing is read back from `out`.
/// `out` is fsynced at the end; it is not renamed.
pub fn assemble(out: &Path, layout: &Layout, contents: &[PathBuf]) -> Result<ImageDigest> {
    ensure!(
        contents.len() == layout.partitions.len(),
        "{} content files given for {} partitions",
        contents.len(),
        layout.partitions.len()
    );
    let image = gpt::render_gpt(layout)?;

    let mut sources = Vec::with_capacity(contents.len());
    for (p, path) in layout.partitions.iter().zip(contents) {
        let src = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = src
            .metadata()
            .with_context(|| format!("reading size of {}", path.display()))?
            .len();
        ensure!(
            len <= p.size,
            "{} is {len} bytes, larger than partition {} ({:?}) of {} bytes",
            path.display(),
            p.number,
            p.label,
            p.size
        );
        sources.push(src);
    }

    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    file.set_len(layout.disk_size)
        .with_context(|| format!("sizing {} to {} bytes", out.display(), layout.disk_size))?;
    let mut w = SparseWriter {
        file,
        pos: 0,
        hasher: Sha256::new(),
        zeros: vec![0u8; CHUNK],
    };
    let mut buf = vec![0u8; CHUNK];
    let mut digests = Vec::with_capacity(sources.len());

    w.put(&image.head, None).context("writing primary gpt")?;
    for ((p, path), mut src) in layout.partitions.iter().zip(contents).zip(sources) {
        w.skip_zeros(p.offset - w.pos, None);
        let mut ph = Sha256::new();
        let mut copied = 0u64;
        while copied < p.size {
            let want = (p.size - copied).min(CHUNK as u64) as usize;
            let n = read_full(&mut src, &mut buf[..want])
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            w.put(&buf[..n], Some(&mut ph)).with_context(|| {
                format!(
                    "writing partition {} ({:?}) to {}",
                    p.number,
                    p.label,
                    out.display()
                )
            })?;
            copied += n as u64;
        }
        if copied == p.size
            && read_full(&mut src, &mut buf[..1])
                .with_context(|| format!("reading {}", path.display()))?
                > 0
        {
            bail!(
                "{} grew past the {} bytes of partition {} while copying",
                path.display(),
                p.size,
                p.number
            );
        }
        w.skip_zeros(p.size - copied, Some(&mut ph));
        tracing::debug!(number = p.number, label = %p.label, copied, size = p.size, "copied partition");
        digests.push(PartitionDigest {
            number: p.number,
            label: p.label.clone(),
            sha256: hex::encode(ph.finalize()),
        });
    }
    w.skip_zeros(image.tail_offset - w.pos, None);
    w.put(&image.tail, None).context("writing backup gpt")?;
    ensure!(
        w.pos == layout.disk_size,
        "internal error: wrote {} of {} bytes",
        w.pos,
        layout.disk_size
    );

    w.file
        .sync_all()
        .with_context(|| format!("syncing {}", out.display()))?;
    let sha256 = hex::encode(w.hasher.finalize());
    tracing::debug!(%sha256, size = layout.disk_size, "assembled image {}", out.display());
    Ok(ImageDigest {
        sha256,
        size: layout.disk_size,
        partitions: digests,
    })
}

/// Read the partition table of an existing image and return the layout found.
/// Both the primary and the backup GPT must be valid.
pub fn read_layout(image: &Path) -> Result<Layout> {
    gpt::read_gpt(image)
}
