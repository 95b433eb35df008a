//! The block map of an image in bmaptool's XML format, version 2.0 (`IMAGE.bmap`): which 4 KiB
//! blocks hold data, each run with the SHA-256 of its bytes, so `bmaptool copy` and `kiln flash`
//! write only those. Made from the image's contents (a block is mapped when it is not all
//! zeros), not from the file system's extent map, so the same image gives the same bmap on
//! every host and file system.
use std::fs::File;
use std::io::{Seek, SeekFrom};

use anyhow::{ensure, Context, Result};
use sha2::{Digest, Sha256};

use super::stream::read_full;

/// Block size of kiln's bmaps (bmaptool's default).
pub const BLOCK_SIZE: u64 = 4096;

/// One run of mapped blocks, `first..=last`, with the SHA-256 (hex) of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRange {
    pub first: u64,
    pub last: u64,
    pub sha256: String,
}

impl BlockRange {
    /// Byte offset and length of the run in an image of `image_size` bytes.
    pub fn bytes(&self, image_size: u64) -> (u64, u64) {
        let start = self.first * BLOCK_SIZE;
        let end = ((self.last + 1) * BLOCK_SIZE).min(image_size);
        (start, end - start)
    }
}

/// The map of an image: its size and mapped runs in order.
#[derive(Debug, Clone)]
pub struct BlockMap {
    pub image_size: u64,
    pub ranges: Vec<BlockRange>,
}

impl BlockMap {
    /// Scan `image`: only its data extents are read (holes are zeros); blocks that read as all
    /// zeros are left out.
    pub fn of_image(image: &mut File) -> Result<BlockMap> {
        let image_size = image.seek(SeekFrom::End(0)).context("finding the image size")?;
        let mut ranges = Vec::new();
        let mut open: Option<(u64, u64, Sha256)> = None; // first, last, hasher
        let zeros = vec![0u8; BLOCK_SIZE as usize];
        let mut buf = vec![0u8; super::stream::CHUNK];
        let mut at = 0;
        while let Some((data, hole)) = super::next_data(image, at, image_size) {
            // Whole blocks around the extent.
            let (start, end) = (data / BLOCK_SIZE * BLOCK_SIZE, hole.div_ceil(BLOCK_SIZE) * BLOCK_SIZE);
            let end = end.min(image_size.div_ceil(BLOCK_SIZE) * BLOCK_SIZE);
            let start = start.max(at);
            image.seek(SeekFrom::Start(start)).context("seeking in the image")?;
            let mut pos = start;
            while pos < end {
                let want = ((end - pos) as usize).min(buf.len());
                let n = read_full(image, &mut buf[..want]).context("reading the image")?;
                ensure!(n > 0 || pos >= image_size, "the image shrank while its block map was made");
                for (i, block) in buf[..n].chunks(BLOCK_SIZE as usize).enumerate() {
                    let number = (pos / BLOCK_SIZE) + i as u64;
                    if block == &zeros[..block.len()] {
                        if let Some((first, last, h)) = open.take() {
                            ranges.push(BlockRange { first, last, sha256: hex::encode(h.finalize()) });
                        }
                        continue;
                    }
                    match &mut open {
                        Some((_, last, h)) if *last + 1 == number => {
                            *last = number;
                            h.update(block);
                        }
                        _ => {
                            if let Some((first, last, h)) = open.take() {
                                ranges.push(BlockRange { first, last, sha256: hex::encode(h.finalize()) });
                            }
                            let mut h = Sha256::new();
                            h.update(block);
                            open = Some((number, number, h));
                        }
                    }
                }
                if n < want {
                    break;
                }
                pos += n as u64;
            }
            at = end;
        }
        if let Some((first, last, h)) = open.take() {
            ranges.push(BlockRange { first, last, sha256: hex::encode(h.finalize()) });
        }
        Ok(BlockMap { image_size, ranges })
    }

    /// The map of an image given by its bytes in order, as [`super::ImageWriter`] sees them
    /// while it writes and hashes the image: the same map as [`BlockMap::of_image`] of the
    /// finished file, without reading it again.
    pub fn builder() -> MapBuilder {
        MapBuilder::default()
    }

    pub fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(BLOCK_SIZE)
    }

    pub fn mapped_count(&self) -> u64 {
        self.ranges.iter().map(|r| r.last - r.first + 1).sum()
    }

    /// The bmap file (XML, bmaptool format 2.0) with its own checksum filled in.
    pub fn to_xml(&self) -> String {
        let zeros = "0".repeat(64);
        let text = self.render(&zeros);
        let sum = hex::encode(Sha256::digest(text.as_bytes()));
        // bmaptool checks the file with the checksum's digits replaced by zeros.
        text.replacen(&zeros, &sum, 1)
    }

    fn render(&self, checksum: &str) -> String {
        let mut s = String::new();
        s.push_str("<?xml version=\"1.0\" ?>\n");
        s.push_str("<!-- Block map of a kiln image: only the listed blocks hold data; the others are\n");
        s.push_str("     zeros and need not be written. Written by kiln, for kiln flash and bmaptool. -->\n");
        s.push_str("<bmap version=\"2.0\">\n");
        s.push_str(&format!("    <ImageSize> {} </ImageSize>\n", self.image_size));
        s.push_str(&format!("    <BlockSize> {BLOCK_SIZE} </BlockSize>\n"));
        s.push_str(&format!("    <BlocksCount> {} </BlocksCount>\n", self.blocks_count()));
        s.push_str(&format!("    <MappedBlocksCount> {} </MappedBlocksCount>\n", self.mapped_count()));
        s.push_str("    <ChecksumType> sha256 </ChecksumType>\n");
        // The file's own checksum comes first, so no range's checksum can be mistaken for it.
        s.push_str(&format!("    <BmapFileChecksum> {checksum} </BmapFileChecksum>\n"));
        s.push_str("    <BlockMap>\n");
        for r in &self.ranges {
            let blocks = if r.first == r.last { r.first.to_string() } else { format!("{}-{}", r.first, r.last) };
            s.push_str(&format!("        <Range chksum=\"{}\"> {blocks} </Range>\n", r.sha256));
        }
        s.push_str("    </BlockMap>\n</bmap>\n");
        s
    }
}

/// Builds a [`BlockMap`] from an image's bytes in order: data pieces ([`MapBuilder::bytes`]) and
/// runs of zeros ([`MapBuilder::zeros`], holes: never unmapped data). Pieces need not be
/// block-aligned.
#[derive(Default)]
pub struct MapBuilder {
    /// Number of the next whole block.
    next: u64,
    /// The bytes of block `next` seen so far (less than a block).
    partial: Vec<u8>,
    /// The run being mapped: first, last, hasher.
    open: Option<(u64, u64, Sha256)>,
    ranges: Vec<BlockRange>,
}

const BLOCK: usize = BLOCK_SIZE as usize;
static ZERO_BLOCK: [u8; BLOCK] = [0; BLOCK];

impl MapBuilder {
    /// The next `buf.len()` bytes of the image.
    pub fn bytes(&mut self, mut buf: &[u8]) {
        if !self.partial.is_empty() {
            let take = (BLOCK - self.partial.len()).min(buf.len());
            self.partial.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.partial.len() < BLOCK {
                return;
            }
            let block = std::mem::take(&mut self.partial);
            self.block(&block);
        }
        let whole = buf.len() / BLOCK * BLOCK;
        for block in buf[..whole].chunks_exact(BLOCK) {
            self.block(block);
        }
        self.partial.extend_from_slice(&buf[whole..]);
    }

    /// The next `n` bytes of the image are zeros.
    pub fn zeros(&mut self, mut n: u64) {
        if !self.partial.is_empty() {
            let take = ((BLOCK - self.partial.len()) as u64).min(n) as usize;
            self.bytes(&ZERO_BLOCK[..take]);
            n -= take as u64;
        }
        if n >= BLOCK_SIZE {
            self.close();
            self.next += n / BLOCK_SIZE;
        }
        self.partial.extend_from_slice(&ZERO_BLOCK[..(n % BLOCK_SIZE) as usize]);
    }

    /// The map of the `image_size` bytes given.
    pub fn finish(mut self, image_size: u64) -> Result<BlockMap> {
        if !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.block(&last);
        }
        self.close();
        let seen = self.next * BLOCK_SIZE;
        ensure!(
            seen.div_ceil(BLOCK_SIZE) == image_size.div_ceil(BLOCK_SIZE),
            "internal error: the block map saw {seen} bytes of a {image_size}-byte image"
        );
        Ok(BlockMap { image_size, ranges: self.ranges })
    }

    /// Block `next` (short only at the image's end).
    fn block(&mut self, block: &[u8]) {
        let number = self.next;
        self.next += 1;
        if block == &ZERO_BLOCK[..block.len()] {
            return self.close();
        }
        match &mut self.open {
            Some((_, last, h)) if *last + 1 == number => {
                *last = number;
                h.update(block);
            }
            _ => {
                self.close();
                let mut h = Sha256::new();
                h.update(block);
                self.open = Some((number, number, h));
            }
        }
    }

    fn close(&mut self) {
        if let Some((first, last, h)) = self.open.take() {
            self.ranges.push(BlockRange { first, last, sha256: hex::encode(h.finalize()) });
        }
    }
}

/// Read only what `kiln flash` needs from a bmap: the image size and the mapped runs.
/// (A kiln bmap is covered by the signed SHA256SUMS; this parser is not a general XML parser.)
pub fn parse(text: &str) -> Result<BlockMap> {
    let field = |tag: &str| -> Result<u64> {
        let open = format!("<{tag}>");
        let start = text.find(&open).with_context(|| format!("no <{tag}> in the bmap"))? + open.len();
        let end = text[start..].find('<').with_context(|| format!("<{tag}> is not closed"))?;
        text[start..start + end].trim().parse().with_context(|| format!("<{tag}> is not a number"))
    };
    let image_size = field("ImageSize")?;
    ensure!(field("BlockSize")? == BLOCK_SIZE, "bmap block size is not {BLOCK_SIZE}");
    let mut ranges = Vec::new();
    for piece in text.split("<Range").skip(1) {
        let sha =
            piece.split("chksum=\"").nth(1).and_then(|s| s.split('"').next()).context("bmap range without chksum")?;
        let body = piece.split('>').nth(1).and_then(|s| s.split('<').next()).context("bmap range unreadable")?.trim();
        let (first, last) = match body.split_once('-') {
            Some((a, b)) => (a.trim().parse()?, b.trim().parse()?),
            None => {
                let n: u64 = body.parse()?;
                (n, n)
            }
        };
        ensure!(first <= last && last < image_size.div_ceil(BLOCK_SIZE), "bmap range {body} is outside the image");
        ranges.push(BlockRange { first, last, sha256: sha.to_string() });
    }
    Ok(BlockMap { image_size, ranges })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn maps_non_zero_blocks_with_checksums_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.img");
        let f = File::create(&path).unwrap();
        f.set_len(64 * BLOCK_SIZE).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(&[7u8; 8192], 10 * BLOCK_SIZE).unwrap();
        f.write_all_at(&[0u8; 4096], 20 * BLOCK_SIZE).unwrap(); // data extent, but zeros
        f.write_all_at(b"tail", 64 * BLOCK_SIZE - 4).unwrap();
        let map = BlockMap::of_image(&mut File::open(&path).unwrap()).unwrap();
        let spans: Vec<(u64, u64)> = map.ranges.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(spans, vec![(0, 0), (10, 11), (63, 63)]);
        assert_eq!(map.ranges[1].sha256, hex::encode(Sha256::digest([7u8; 8192])));
        let xml = map.to_xml();
        assert!(xml.contains("<Range chksum=") && xml.contains("> 10-11 </Range>"), "{xml}");
        let zeroed = xml.replacen(&xml[xml.find("<BmapFileChecksum> ").unwrap() + 19..][..64], &"0".repeat(64), 1);
        assert!(xml.contains(&hex::encode(Sha256::digest(zeroed.as_bytes()))));
        let back = parse(&xml).unwrap();
        assert_eq!(back.ranges, map.ranges);
        assert_eq!(back.image_size, 64 * BLOCK_SIZE);
    }

    /// The map built from the bytes in order, in pieces that do not follow block boundaries,
    /// equals the map read from the file.
    #[test]
    fn builder_from_unaligned_pieces_equals_the_map_of_the_file() {
        let size = 40 * BLOCK_SIZE + 1000; // a short last block
        let mut bytes = vec![0u8; size as usize];
        bytes[..17408].fill(3); // a GPT head of 34 sectors: not a whole number of blocks
        bytes[5 * 4096 + 100] = 1;
        bytes[6 * 4096..9 * 4096].fill(9);
        bytes[20 * 4096..20 * 4096 + 10].fill(4);
        bytes[size as usize - 1] = 8;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.img");
        std::fs::write(&path, &bytes).unwrap();
        let want = BlockMap::of_image(&mut File::open(&path).unwrap()).unwrap();
        // Pieces of odd sizes; long zero stretches given as zero runs (holes), as the writer does.
        let mut b = BlockMap::builder();
        let mut at = 0usize;
        for len in [17408usize, 5000, 3, 70000, 4096 * 9 + 7].into_iter().cycle() {
            let end = (at + len).min(bytes.len());
            let piece = &bytes[at..end];
            if piece.iter().all(|&x| x == 0) {
                b.zeros(piece.len() as u64);
            } else {
                b.bytes(piece);
            }
            at = end;
            if at == bytes.len() {
                break;
            }
        }
        let got = b.finish(size).unwrap();
        assert_eq!(got.ranges, want.ranges);
        assert_eq!(got.to_xml(), want.to_xml());
        assert!(BlockMap::builder().finish(size).is_err(), "a map of fewer bytes than the image");
    }
}
