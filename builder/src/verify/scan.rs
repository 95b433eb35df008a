//! One streaming pass over a disk image (raw, or decompressed on the fly from `.img.zst`):
//! the SHA-256 of the whole image and of given byte ranges (the partitions), and the GPT read
//! from the bytes at its two ends. Nothing is written to disk and the image is read once.
//!
//! Three threads share the work: one reads (and decompresses), one hashes the whole image,
//! and the caller's thread hashes the partitions and keeps the GPT regions.
use crate::disk::gpt::{HEAD_LEN, SECTOR, TAIL_LEN};
use crate::disk::stream::{read_full, CHUNK};
use crate::disk::Layout;
use anyhow::{ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

/// A byte range to hash.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub offset: u64,
    pub size: u64,
}

/// What one pass found.
#[derive(Debug)]
pub struct Scan {
    /// SHA-256 (hex) of everything read.
    pub sha256: String,
    pub size: u64,
    /// SHA-256 of each requested range; None where the image ended before the range did.
    pub ranges: Vec<Option<String>>,
    /// The partition table, or why it could not be read.
    pub layout: std::result::Result<Layout, String>,
}

/// Read `source` to its end. An error from `source` (I/O, corrupt compressed data) fails the scan.
pub fn scan<R: Read + Send>(mut source: R, ranges: &[Range]) -> Result<Scan> {
    let (to_whole, whole_rx) = sync_channel::<Arc<Vec<u8>>>(4);
    let (to_parts, parts_rx) = sync_channel::<Arc<Vec<u8>>>(4);
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> Result<()> {
            loop {
                crate::host::cmd::check_interrupted()?;
                let mut buf = vec![0u8; CHUNK];
                let n = read_full(&mut source, &mut buf).context("reading the image")?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                let chunk = Arc::new(buf);
                // A receiver only goes away when its thread failed; the reader then stops too.
                if to_whole.send(chunk.clone()).is_err() || to_parts.send(chunk).is_err() {
                    return Ok(());
                }
            }
        });
        let whole = s.spawn(move || {
            let mut h = Sha256::new();
            let mut len = 0u64;
            for c in whole_rx {
                h.update(&c[..]);
                len += c.len() as u64;
            }
            (hex::encode(h.finalize()), len)
        });
        let mut parts = Parts::new(ranges);
        for c in parts_rx {
            parts.feed(&c);
        }
        reader.join().map_err(|_| anyhow::anyhow!("image reader thread panicked"))??;
        let (sha256, size) = whole.join().map_err(|_| anyhow::anyhow!("hashing thread panicked"))?;
        let layout = gpt_from_ends(&parts.head, &parts.tail, size).map_err(|e| format!("{e:#}"));
        Ok(Scan { sha256, size, ranges: parts.finish(), layout })
    })
}

/// Range hashers and the GPT regions, fed the image in order.
struct Parts {
    ranges: Vec<(Range, Sha256, u64)>,
    pos: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Parts {
    fn new(ranges: &[Range]) -> Self {
        Parts {
            ranges: ranges.iter().map(|r| (*r, Sha256::new(), 0)).collect(),
            pos: 0,
            head: Vec::new(),
            tail: Vec::new(),
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        let (start, end) = (self.pos, self.pos + chunk.len() as u64);
        for (r, h, done) in &mut self.ranges {
            let (from, to) = (start.max(r.offset), end.min(r.offset + r.size));
            if from < to {
                h.update(&chunk[(from - start) as usize..(to - start) as usize]);
                *done += to - from;
            }
        }
        if (self.head.len() as u64) < HEAD_LEN {
            let take = (HEAD_LEN as usize - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        if chunk.len() as u64 >= TAIL_LEN {
            self.tail.clear();
            self.tail.extend_from_slice(&chunk[chunk.len() - TAIL_LEN as usize..]);
        } else {
            self.tail.extend_from_slice(chunk);
            let excess = self.tail.len().saturating_sub(TAIL_LEN as usize);
            self.tail.drain(..excess);
        }
        self.pos = end;
    }

    fn finish(self) -> Vec<Option<String>> {
        self.ranges.into_iter().map(|(r, h, done)| (done == r.size).then(|| hex::encode(h.finalize()))).collect()
    }
}

/// Parse the GPT from the first and last bytes of a disk of `size` bytes: both headers and
/// their CRCs must be valid (as `disk::read_layout` requires of a file).
pub fn gpt_from_ends(head: &[u8], tail: &[u8], size: u64) -> Result<Layout> {
    ensure!(
        size >= HEAD_LEN + TAIL_LEN && size % SECTOR == 0,
        "{size} bytes is too small or not whole sectors for a GPT disk"
    );
    let dev = crate::disk::gpt::GptDevice::from_ends(size, head.to_vec(), tail.to_vec())
        .context("reading the GPT regions")?;
    crate::disk::gpt::layout_of(dev, size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{gpt::plan_layout, PartitionSpec};
    use uuid::Uuid;

    #[test]
    fn hashes_ranges_and_reads_the_gpt_like_read_layout() {
        let dir = tempfile::tempdir().unwrap();
        let specs = [
            PartitionSpec {
                label: "a".into(),
                type_guid: Uuid::from_u128(2),
                part_guid: Uuid::from_u128(3),
                size: Some(1 << 20),
                flags: 0,
            },
            PartitionSpec {
                label: "b".into(),
                type_guid: Uuid::from_u128(4),
                part_guid: Uuid::from_u128(5),
                size: None,
                flags: 0,
            },
        ];
        let layout = plan_layout(12 << 20, Uuid::from_u128(1), &specs).unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, vec![7u8; 5000]).unwrap();
        std::fs::write(&b, vec![9u8; 3 << 20]).unwrap();
        let img = dir.path().join("x.img");
        let digest = crate::disk::assemble(&img, &layout, &[a, b]).unwrap();
        let ranges: Vec<Range> = layout.partitions.iter().map(|p| Range { offset: p.offset, size: p.size }).collect();
        let s = scan(std::fs::File::open(&img).unwrap(), &ranges).unwrap();
        assert_eq!(s.sha256, digest.sha256);
        assert_eq!(s.size, 12 << 20);
        for (got, want) in s.ranges.iter().zip(&digest.partitions) {
            assert_eq!(got.as_deref(), Some(want.sha256.as_str()));
        }
        let from_file = crate::disk::read_layout(&img).unwrap();
        let from_ends = s.layout.unwrap();
        assert_eq!(serde_json::to_value(&from_ends).unwrap(), serde_json::to_value(&from_file).unwrap());
        let beyond = scan(std::fs::File::open(&img).unwrap(), &[Range { offset: 11 << 20, size: 2 << 20 }]).unwrap();
        assert_eq!(beyond.ranges, vec![None]);
    }

    #[test]
    fn damaged_gpt_is_an_error_not_a_panic() {
        let head = vec![0u8; HEAD_LEN as usize];
        let tail = vec![0u8; TAIL_LEN as usize];
        assert!(gpt_from_ends(&head, &tail, 4 << 20).is_err());
        assert!(gpt_from_ends(&head, &tail, 100).is_err());
    }
}
