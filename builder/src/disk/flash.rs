//! The disk side of `kiln flash`: write an image's mapped blocks onto a disk, zero the rest of
//! the image's span (so what is on the disk afterwards is exactly the image), flush, drop the
//! disk's cached pages and read partitions back for hashing. The checks around it (signature,
//! target, confirmation) are `pipeline::flash`'s.
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::bmap::BlockMap;
use super::stream::CHUNK;
use super::Layout;

/// Where a write or read went wrong, named for the user: a partition of `layout`, or the GPT.
pub fn region_at(layout: &Layout, offset: u64) -> String {
    layout
        .partitions
        .iter()
        .find(|p| offset >= p.offset && offset < p.offset + p.size)
        .map(|p| format!("partition {} ({})", p.number, p.label))
        .unwrap_or_else(|| "the partition table (GPT) or the gaps between partitions".into())
}

/// Copy the mapped runs of `map` from `image` to `dev` at the same offsets, then zero what the
/// map leaves out inside the image's span (`block`: with BLKZEROOUT, else by punching holes
/// into a regular file). `progress` gets the bytes written so far (an error from it, e.g. an interrupt, stops the copy). Errors name the partition.
pub fn write_image(
    image: &File,
    dev: &File,
    map: &BlockMap,
    layout: &Layout,
    block: bool,
    progress: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let mut gaps = Vec::new();
    let mut end_of_last = 0u64;
    let mut region = String::new();
    for r in &map.ranges {
        let (start, len) = r.bytes(map.image_size);
        // Flush at each change of partition, so an error the disk reports late (at writeback)
        // still names the partition it belongs to.
        let here = region_at(layout, start);
        if here != region {
            if !region.is_empty() {
                dev.sync_data().with_context(|| format!("writing {region} (flushing it to the disk)"))?;
            }
            region = here;
        }
        if start > end_of_last {
            gaps.push((end_of_last, start - end_of_last));
        }
        end_of_last = start + len;
        let mut at = start;
        while at < start + len {
            let n = ((start + len - at) as usize).min(buf.len());
            image.read_exact_at(&mut buf[..n], at).with_context(|| format!("reading the image at offset {at}"))?;
            dev.write_all_at(&buf[..n], at)
                .with_context(|| format!("writing {} at offset {at}", region_at(layout, at)))?;
            at += n as u64;
            done += n as u64;
            progress(done)?;
        }
    }
    if map.image_size > end_of_last {
        gaps.push((end_of_last, map.image_size - end_of_last));
    }
    for (at, len) in gaps {
        zero(dev, at, len, block).with_context(|| format!("zeroing {len} bytes of {}", region_at(layout, at)))?;
    }
    dev.sync_all().with_context(|| format!("writing {region} (flushing it to the disk)"))?;
    Ok(())
}

/// Make `len` bytes at `at` read as zeros.
fn zero(dev: &File, at: u64, len: u64, block: bool) -> Result<()> {
    let fd = dev.as_raw_fd();
    if block {
        // BLKZEROOUT = _IO(0x12, 127): the kernel writes zeros (or uses the disk's write-zeroes).
        const BLKZEROOUT: libc::c_ulong = 0x127f;
        let range = [at, len];
        // SAFETY: the ioctl reads two u64 from `range`, which lives across the call.
        let rc = unsafe { libc::ioctl(fd, BLKZEROOUT as _, range.as_ptr()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("BLKZEROOUT");
        }
        return Ok(());
    }
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on a descriptor we own.
    let rc = unsafe { libc::fallocate(fd, mode, at as libc::off_t, len as libc::off_t) };
    if rc != 0 {
        // File systems without hole punching: write the zeros.
        let zeros = vec![0u8; CHUNK];
        let mut pos = at;
        while pos < at + len {
            let n = ((at + len - pos) as usize).min(zeros.len());
            dev.write_all_at(&zeros[..n], pos)?;
            pos += n as u64;
        }
    }
    Ok(())
}

/// Drop the disk's cached pages, so what is read next comes from the disk, not from memory.
pub fn drop_cache(dev: &File, block: bool) -> Result<()> {
    dev.sync_all().context("flushing the disk")?;
    let fd = dev.as_raw_fd();
    if block {
        // BLKFLSBUF = _IO(0x12, 97): write back and invalidate the block device's page cache.
        const BLKFLSBUF: libc::c_ulong = 0x1261;
        // SAFETY: no argument is read.
        let rc = unsafe { libc::ioctl(fd, BLKFLSBUF as _, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("BLKFLSBUF (dropping the disk's cache)");
        }
    } else {
        // SAFETY: advice on a descriptor we own.
        unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    Ok(())
}

/// SHA-256 of `size` bytes at `offset` of `dev`; `progress` gets the bytes read so far.
pub fn hash_range(dev: &File, offset: u64, size: u64, progress: &mut dyn FnMut(u64) -> Result<()>) -> Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut at = offset;
    while at < offset + size {
        let n = ((offset + size - at) as usize).min(buf.len());
        dev.read_exact_at(&mut buf[..n], at).with_context(|| format!("reading back at offset {at}"))?;
        h.update(&buf[..n]);
        at += n as u64;
        progress(at - offset)?;
    }
    Ok(hex::encode(h.finalize()))
}

/// Size of a disk or file in bytes.
pub fn size_of(dev: &mut File) -> Result<u64> {
    dev.seek(SeekFrom::End(0)).context("finding the disk size")
}
