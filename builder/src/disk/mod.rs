//! Disk image: GPT and ESP (owned by kiln, no external tools).
//!
//! [`assemble`] streams the whole image in disk order — GPT head, partitions
//! and the gaps between them, backup GPT — to the output file and to SHA-256
//! hashers at the same time, skipping all-zero blocks so the output stays sparse.

pub mod bmap;
pub mod esp;
pub mod fatfix;
pub mod flash;
pub mod gpt;
pub mod site;
pub mod stream;

pub use gpt::{Layout, PartitionSpec, PlacedPartition};
use stream::{read_full, CHUNK};

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

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

/// Writes the image sequentially, keeping holes for zeros. The main thread hashes the current
/// partition and writes; the whole image is hashed on a second thread ([`StreamHasher`]).
struct SparseWriter {
    file: File,
    pos: u64,
    image: StreamHasher,
    zeros: Vec<u8>,
}

impl SparseWriter {
    /// Append `buf` at the current position (and to `part`, the partition hasher, if any).
    /// The buffer goes to the image hasher; take the next one from [`StreamHasher::buffer`].
    fn put(&mut self, buf: Vec<u8>, part: Option<&mut Sha256>) -> Result<()> {
        if let Some(h) = part {
            h.update(&buf);
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
        self.image.bytes(buf)
    }

    fn write_run(&self, data: &[u8], at: u64) -> Result<()> {
        self.file.write_all_at(data, at).with_context(|| format!("writing {} bytes at offset {at}", data.len()))
    }

    /// Append `len` zero bytes (hashed, not written: the file is already zero there).
    fn skip_zeros(&mut self, len: u64, mut part: Option<&mut Sha256>) -> Result<()> {
        let mut left = len;
        while left > 0 {
            let n = left.min(self.zeros.len() as u64) as usize;
            if let Some(h) = part.as_deref_mut() {
                h.update(&self.zeros[..n]);
            }
            left -= n as u64;
        }
        self.pos += len;
        self.image.zeros(len)
    }
}

enum Piece {
    Bytes(Vec<u8>),
    Zeros(u64),
}

/// SHA-256 of a byte stream computed on its own thread. Buffers handed over come back through
/// [`StreamHasher::buffer`], so a copy allocates only the few that are in flight.
struct StreamHasher {
    pieces: Option<SyncSender<Piece>>,
    spare: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<Sha256>>,
}

impl StreamHasher {
    fn start() -> Result<StreamHasher> {
        let (pieces, rx) = sync_channel::<Piece>(2);
        let (give_back, spare) = channel();
        let thread = std::thread::Builder::new()
            .name("image-sha256".into())
            .spawn(move || {
                let mut h = Sha256::new();
                let zeros = vec![0u8; CHUNK];
                for piece in rx {
                    match piece {
                        Piece::Bytes(b) => {
                            h.update(&b);
                            let _ = give_back.send(b);
                        }
                        Piece::Zeros(mut n) => {
                            while n > 0 {
                                let k = n.min(CHUNK as u64) as usize;
                                h.update(&zeros[..k]);
                                n -= k as u64;
                            }
                        }
                    }
                }
                h
            })
            .context("starting the image hashing thread")?;
        Ok(StreamHasher { pieces: Some(pieces), spare, thread: Some(thread) })
    }

    /// A CHUNK-sized buffer: one the hasher is done with, or a new one.
    fn buffer(&self) -> Vec<u8> {
        let mut b = self.spare.try_recv().unwrap_or_default();
        b.resize(CHUNK, 0);
        b
    }

    fn send(&self, piece: Piece) -> Result<()> {
        let lost = || anyhow::anyhow!("the image hashing thread stopped");
        self.pieces.as_ref().ok_or_else(lost)?.send(piece).map_err(|_| lost())
    }

    fn bytes(&self, b: Vec<u8>) -> Result<()> {
        self.send(Piece::Bytes(b))
    }

    fn zeros(&self, n: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.send(Piece::Zeros(n))
    }

    fn finish(mut self) -> Result<String> {
        drop(self.pieces.take());
        let h = self.thread.take().context("image hashing thread already joined")?;
        let h = h.join().map_err(|_| anyhow::anyhow!("the image hashing thread panicked"))?;
        Ok(hex::encode(h.finalize()))
    }
}

impl Drop for StreamHasher {
    fn drop(&mut self) {
        drop(self.pieces.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where `src` has data from `from` on: `(data_start, data_end)` of the next data extent
/// before `end`, or `None` when only a hole is left. Files without SEEK_DATA support read as
/// one data extent.
fn next_data(src: &File, from: u64, end: u64) -> Option<(u64, u64)> {
    use std::os::fd::AsRawFd;
    if from >= end {
        return None;
    }
    let fd = src.as_raw_fd();
    // SAFETY: lseek on a file descriptor we own; it only moves the file offset.
    let data = unsafe { libc::lseek(fd, from as libc::off_t, libc::SEEK_DATA) };
    if data < 0 {
        let e = std::io::Error::last_os_error();
        // ENXIO: no data after `from`. Anything else (EINVAL: not supported): read it all.
        return if e.raw_os_error() == Some(libc::ENXIO) { None } else { Some((from, end)) };
    }
    let data = data as u64;
    if data >= end {
        return None;
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
    let hole = if hole < 0 { end } else { (hole as u64).min(end) };
    Some((data, hole))
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
        let len = src.metadata().with_context(|| format!("reading size of {}", path.display()))?.len();
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
    let mut w = SparseWriter { file, pos: 0, image: StreamHasher::start()?, zeros: vec![0u8; CHUNK] };
    let mut digests = Vec::with_capacity(sources.len());

    w.put(image.head.clone(), None).context("writing primary gpt")?;
    for ((p, path), mut src) in layout.partitions.iter().zip(contents).zip(sources) {
        w.skip_zeros(p.offset - w.pos, None)?;
        let mut ph = Sha256::new();
        let len = src.metadata().with_context(|| format!("reading size of {}", path.display()))?.len();
        // Holes in the content file are zeros: hashed, neither read nor written.
        let mut at = 0u64;
        while let Some((data, hole)) = next_data(&src, at, len) {
            w.skip_zeros(data - at, Some(&mut ph))?;
            src.seek(SeekFrom::Start(data)).with_context(|| format!("reading {}", path.display()))?;
            at = data;
            while at < hole {
                let want = (hole - at).min(CHUNK as u64) as usize;
                let mut buf = w.image.buffer();
                buf.truncate(want);
                let n = read_full(&mut src, &mut buf).with_context(|| format!("reading {}", path.display()))?;
                ensure!(n == want, "{} shrank while copying", path.display());
                w.put(buf, Some(&mut ph))
                    .with_context(|| format!("writing partition {} ({:?}) to {}", p.number, p.label, out.display()))?;
                at += n as u64;
            }
        }
        let now = src.metadata().with_context(|| format!("reading size of {}", path.display()))?.len();
        ensure!(now == len, "{} changed size while copying", path.display());
        // The content's trailing hole and the partition's tail.
        w.skip_zeros(p.size - at, Some(&mut ph))?;
        tracing::debug!(number = p.number, label = %p.label, len, size = p.size, "copied partition");
        digests.push(PartitionDigest { number: p.number, label: p.label.clone(), sha256: hex::encode(ph.finalize()) });
    }
    w.skip_zeros(image.tail_offset - w.pos, None)?;
    w.put(image.tail.clone(), None).context("writing backup gpt")?;
    ensure!(w.pos == layout.disk_size, "internal error: wrote {} of {} bytes", w.pos, layout.disk_size);

    w.file.sync_all().with_context(|| format!("syncing {}", out.display()))?;
    let sha256 = w.image.finish()?;
    tracing::debug!(%sha256, size = layout.disk_size, "assembled image {}", out.display());
    Ok(ImageDigest { sha256, size: layout.disk_size, partitions: digests })
}

/// Read the partition table of an existing image and return the layout found.
/// Both the primary and the backup GPT must be valid.
pub fn read_layout(image: &Path) -> Result<Layout> {
    gpt::read_gpt(image)
}
