//! Disk image: GPT and ESP (owned by kiln, no external tools).
//!
//! [`ImageWriter`] fills the image file in disk order — partitions copied from content files or
//! written in place at their offsets by another program (mke2fs), the gaps between them, both
//! GPTs — and hashes it once on the way (SHA-256 of the whole image and of each partition, and
//! the block map with its range checksums), skipping all-zero blocks and holes so the output
//! stays sparse and zeros are never read.
//! [`assemble`] is the same from one content file per partition.

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
    /// The image's block map, made in the same pass.
    #[serde(skip)]
    pub bmap: bmap::BlockMap,
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
        self.write_sparse(&buf, self.pos)?;
        self.hash(buf, part)
    }

    /// Account for `buf` at the current position without writing it: it is in the file already
    /// (written by another program), or is written later ([`ImageWriter::finish`]).
    fn hash(&mut self, buf: Vec<u8>, part: Option<&mut Sha256>) -> Result<()> {
        if let Some(h) = part {
            h.update(&buf);
        }
        self.pos += buf.len() as u64;
        self.image.bytes(buf)
    }

    /// Write `buf` at `at`, leaving the all-zero blocks as holes.
    fn write_sparse(&self, buf: &[u8], at: u64) -> Result<()> {
        let mut run: Option<usize> = None; // start of the current non-zero run
        for (i, block) in buf.chunks(BLOCK).enumerate() {
            let start = i * BLOCK;
            let zero = block == &self.zeros[..block.len()]; // memcmp, fast even unoptimized
            match (zero, run) {
                (false, None) => run = Some(start),
                (true, Some(s)) => {
                    self.write_run(&buf[s..start], at + s as u64)?;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run {
            self.write_run(&buf[s..], at + s as u64)?;
        }
        Ok(())
    }

    /// Turn the all-zero blocks of `buf`, which is in the file at `at`, into holes (the bytes
    /// stay the same), as [`SparseWriter::write_sparse`] would have left them.
    fn punch_zeros(&self, buf: &[u8], at: u64) -> Result<()> {
        let mut run: Option<usize> = None; // start of the current zero run
        let blocks = buf.len().div_ceil(BLOCK);
        for i in 0..=blocks {
            let start = i * BLOCK;
            let zero = i < blocks && {
                let block = &buf[start..buf.len().min(start + BLOCK)];
                block.len() == BLOCK && block == &self.zeros[..BLOCK]
            };
            match (zero, run) {
                (true, None) => run = Some(start),
                (false, Some(s)) => {
                    self.punch(at + s as u64, (start - s) as u64)?;
                    run = None;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Free the blocks of `len` bytes at `at`, which read as zeros: zero blocks written by another
    /// program, or blocks it allocated without writing (which SEEK_DATA reports as holes).
    fn punch(&self, at: u64, len: u64) -> Result<()> {
        use std::os::fd::AsRawFd;
        if len == 0 {
            return Ok(());
        }
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on a file descriptor we own; the range reads as zeros before and after.
        if unsafe { libc::fallocate(self.file.as_raw_fd(), mode, at as libc::off_t, len as libc::off_t) } != 0 {
            let e = std::io::Error::last_os_error();
            // A file system without hole punching keeps the zeros allocated.
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(e).with_context(|| format!("freeing zero blocks at offset {at}"));
            }
        }
        Ok(())
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

    /// Account for the bytes of the file from the current position to `to`, which are not
    /// written here: holes are hashed as zeros without reading them, data extents are read and
    /// hashed. With `zero_only` (a gap between partitions) the data found must be zeros.
    fn in_file(&mut self, to: u64, mut part: Option<&mut Sha256>, zero_only: bool) -> Result<()> {
        ensure!(to >= self.pos, "internal error: {to} is behind the write position {}", self.pos);
        while let Some((data, hole)) = next_data(&self.file, self.pos, to) {
            self.punch(self.pos, data - self.pos)?;
            self.skip_zeros(data - self.pos, part.as_deref_mut())?;
            while self.pos < hole {
                let want = (hole - self.pos).min(CHUNK as u64) as usize;
                let mut buf = self.image.buffer();
                buf.truncate(want);
                self.file
                    .read_exact_at(&mut buf, self.pos)
                    .with_context(|| format!("reading back offset {}", self.pos))?;
                ensure!(
                    !zero_only || buf.iter().all(|&b| b == 0),
                    "the image has data near offset {}, outside every partition",
                    self.pos
                );
                self.punch_zeros(&buf, self.pos)?;
                self.hash(buf, part.as_deref_mut())?;
            }
        }
        self.punch(self.pos, to - self.pos)?;
        self.skip_zeros(to - self.pos, part)
    }
}

enum Piece {
    Bytes(Vec<u8>),
    Zeros(u64),
}

/// SHA-256 and block map ([`bmap::MapBuilder`]) of a byte stream, computed on their own thread.
/// Buffers handed over come back through [`StreamHasher::buffer`], so a copy allocates only the
/// few that are in flight.
struct StreamHasher {
    pieces: Option<SyncSender<Piece>>,
    spare: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<(Sha256, bmap::MapBuilder)>>,
}

impl StreamHasher {
    fn start() -> Result<StreamHasher> {
        let (pieces, rx) = sync_channel::<Piece>(2);
        let (give_back, spare) = channel();
        let thread = std::thread::Builder::new()
            .name("image-sha256".into())
            .spawn(move || {
                let mut h = Sha256::new();
                let mut map = bmap::BlockMap::builder();
                let zeros = vec![0u8; CHUNK];
                for piece in rx {
                    match piece {
                        Piece::Bytes(b) => {
                            h.update(&b);
                            map.bytes(&b);
                            let _ = give_back.send(b);
                        }
                        Piece::Zeros(mut n) => {
                            map.zeros(n);
                            while n > 0 {
                                let k = n.min(CHUNK as u64) as usize;
                                h.update(&zeros[..k]);
                                n -= k as u64;
                            }
                        }
                    }
                }
                (h, map)
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

    /// The SHA-256 (hex) and the block map of the `size` bytes given.
    fn finish(&mut self, size: u64) -> Result<(String, bmap::BlockMap)> {
        drop(self.pieces.take());
        let h = self.thread.take().context("image hashing thread already joined")?;
        let (h, map) = h.join().map_err(|_| anyhow::anyhow!("the image hashing thread panicked"))?;
        Ok((hex::encode(h.finalize()), map.finish(size)?))
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

/// A disk image assembled in place at its output path. Partitions are filled in layout order,
/// each either copied from a content file ([`ImageWriter::copy`]) or written into the file at
/// its offset by another program ([`ImageWriter::in_place`], e.g. `mke2fs -E offset=`); the
/// GPT is written last ([`ImageWriter::finish`]). Everything is hashed once, in disk order, as it
/// is written or read back; holes are hashed as zeros without being read.
pub struct ImageWriter<'l> {
    out: PathBuf,
    layout: &'l Layout,
    gpt: gpt::GptImage,
    w: SparseWriter,
    digests: Vec<PartitionDigest>,
}

impl<'l> ImageWriter<'l> {
    /// Create (or truncate) `out` as a sparse file of `layout.disk_size` bytes.
    pub fn create(out: &Path, layout: &'l Layout) -> Result<ImageWriter<'l>> {
        let gpt = gpt::render_gpt(layout)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(out)
            .with_context(|| format!("creating {}", out.display()))?;
        file.set_len(layout.disk_size)
            .with_context(|| format!("sizing {} to {} bytes", out.display(), layout.disk_size))?;
        let mut w = SparseWriter { file, pos: 0, image: StreamHasher::start()?, zeros: vec![0u8; CHUNK] };
        // Hashed now, written by `finish`: no partition table on disk before the partitions.
        w.hash(gpt.head.clone(), None)?;
        Ok(ImageWriter { out: out.to_path_buf(), layout, gpt, w, digests: Vec::new() })
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.out
    }

    /// The partition to fill next, if any is left.
    pub fn next_partition(&self) -> Option<&'l PlacedPartition> {
        self.layout.partitions.get(self.digests.len())
    }

    /// Start the next partition: the gap before it is accounted for.
    fn begin(&mut self) -> Result<&'l PlacedPartition> {
        let p = self.next_partition().context("every partition is filled already")?;
        self.w.in_file(p.offset, None, true).context("checking the gap before a partition")?;
        Ok(p)
    }

    fn done(&mut self, p: &PlacedPartition, part: Sha256) {
        self.digests.push(PartitionDigest {
            number: p.number,
            label: p.label.clone(),
            sha256: hex::encode(part.finalize()),
        });
    }

    /// Copy `content` (at most the partition's size) into the next partition, leaving holes for
    /// its holes and all-zero blocks.
    pub fn copy(&mut self, content: &Path) -> Result<()> {
        let mut src = File::open(content).with_context(|| format!("opening {}", content.display()))?;
        let size_of = |f: &File| f.metadata().with_context(|| format!("reading size of {}", content.display()));
        let len = size_of(&src)?.len();
        let p = self.begin()?;
        ensure!(
            len <= p.size,
            "{} is {len} bytes, larger than partition {} ({:?}) of {} bytes",
            content.display(),
            p.number,
            p.label,
            p.size
        );
        let mut ph = Sha256::new();
        let w = &mut self.w;
        // Holes in the content file are zeros: hashed, neither read nor written.
        let mut at = 0u64;
        while let Some((data, hole)) = next_data(&src, at, len) {
            w.skip_zeros(data - at, Some(&mut ph))?;
            src.seek(SeekFrom::Start(data)).with_context(|| format!("reading {}", content.display()))?;
            at = data;
            while at < hole {
                let want = (hole - at).min(CHUNK as u64) as usize;
                let mut buf = w.image.buffer();
                buf.truncate(want);
                let n = read_full(&mut src, &mut buf).with_context(|| format!("reading {}", content.display()))?;
                ensure!(n == want, "{} shrank while copying", content.display());
                w.put(buf, Some(&mut ph)).with_context(|| {
                    format!("writing partition {} ({:?}) to {}", p.number, p.label, self.out.display())
                })?;
                at += n as u64;
            }
        }
        ensure!(size_of(&src)?.len() == len, "{} changed size while copying", content.display());
        // The content's trailing hole and the partition's tail.
        w.skip_zeros(p.size - at, Some(&mut ph))?;
        tracing::debug!(number = p.number, label = %p.label, len, size = p.size, "copied partition");
        self.done(p, ph);
        Ok(())
    }

    /// The image file, opened again (for writeback while another program writes into it).
    pub fn file(&self) -> Result<File> {
        self.w.file.try_clone().with_context(|| format!("opening {} again", self.out.display()))
    }

    /// The next partition was written into the image file at its offset: hash it from there.
    /// Meanwhile what is written so far goes to the disk (on a thread of its own), so the sync
    /// in [`ImageWriter::finish`] has little left to do.
    pub fn in_place(&mut self) -> Result<()> {
        let p = self.begin()?;
        let mut ph = Sha256::new();
        let file = self.w.file.try_clone().with_context(|| format!("opening {} again", self.out.display()))?;
        let w = &mut self.w;
        std::thread::scope(|s| {
            let sync = std::thread::Builder::new()
                .name("image-sync".into())
                .spawn_scoped(s, move || file.sync_data())
                .context("starting the image sync thread")?;
            let hashed = w.in_file(p.offset + p.size, Some(&mut ph), false);
            let synced = sync.join().map_err(|_| anyhow::anyhow!("the image sync thread panicked"))?;
            hashed?;
            synced.context("syncing the image")
        })
        .with_context(|| format!("hashing partition {} ({:?}) of {}", p.number, p.label, self.out.display()))?;
        tracing::debug!(number = p.number, label = %p.label, size = p.size, "hashed partition in place");
        self.done(p, ph);
        Ok(())
    }

    /// Write both GPTs, fsync the file (it is not renamed) and return the digests.
    pub fn finish(mut self) -> Result<ImageDigest> {
        ensure!(
            self.digests.len() == self.layout.partitions.len(),
            "{} of {} partitions filled",
            self.digests.len(),
            self.layout.partitions.len()
        );
        let w = &mut self.w;
        w.in_file(self.gpt.tail_offset, None, true).context("checking the gap before the backup gpt")?;
        w.put(self.gpt.tail.clone(), None).context("writing backup gpt")?;
        w.write_sparse(&self.gpt.head, 0).context("writing primary gpt")?;
        let size = self.layout.disk_size;
        ensure!(w.pos == size, "internal error: wrote {} of {size} bytes", w.pos);
        w.file.sync_all().with_context(|| format!("syncing {}", self.out.display()))?;
        let (sha256, bmap) = w.image.finish(size)?;
        tracing::debug!(%sha256, size, "assembled image {}", self.out.display());
        Ok(ImageDigest { sha256, size, partitions: self.digests, bmap })
    }
}

/// Assemble the disk image at `out` (created or truncated, sparse, `layout.disk_size` long)
/// from one content file per partition, whose length must not exceed the partition's size
/// (checked before anything is written). See [`ImageWriter`].
pub fn assemble(out: &Path, layout: &Layout, contents: &[PathBuf]) -> Result<ImageDigest> {
    ensure!(
        contents.len() == layout.partitions.len(),
        "{} content files given for {} partitions",
        contents.len(),
        layout.partitions.len()
    );
    for (p, path) in layout.partitions.iter().zip(contents) {
        let len = std::fs::metadata(path).with_context(|| format!("reading size of {}", path.display()))?.len();
        ensure!(
            len <= p.size,
            "{} is {len} bytes, larger than partition {} ({:?}) of {} bytes",
            path.display(),
            p.number,
            p.label,
            p.size
        );
    }
    let mut image = ImageWriter::create(out, layout)?;
    for path in contents {
        image.copy(path)?;
    }
    image.finish()
}

/// Read the partition table of an existing image and return the layout found.
/// Both the primary and the backup GPT must be valid.
pub fn read_layout(image: &Path) -> Result<Layout> {
    gpt::read_gpt(image)
}
