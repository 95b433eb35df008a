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
}
