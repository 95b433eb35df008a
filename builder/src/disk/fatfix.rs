//! A repair for directories written by fatfs 0.3: it puts long-name entries in front of "."
//! and "..", and on FAT32 points ".." of first-level directories at the root cluster instead
//! of 0. fsck.vfat (and some firmware) reject both. After fatfs has finished, this walks the
//! directory tree with just enough of a FAT reader and rewrites those entries in place.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{ensure, Context, Result};
use fatfs::FatType;

const DIR_ENTRY: usize = 32;
const ATTR_LFN: u8 = 0x0F;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_DIR: u8 = 0x10;
const DOT: &[u8; 11] = b".          ";
const DOTDOT: &[u8; 11] = b"..         ";

/// `len` bytes at `at`, which must lie inside the file: sizes come from the volume's own
/// boot sector, and a damaged one must give an error, not a huge allocation.
fn read_at(img: &File, at: u64, len: u64) -> Result<Vec<u8>> {
    let size = img.metadata().context("reading the volume's size")?.len();
    ensure!(
        at.checked_add(len).is_some_and(|end| end <= size),
        "{len} bytes at offset {at} lie beyond the end of the volume ({size} bytes)"
    );
    let mut buf = vec![0u8; len as usize];
    img.read_exact_at(&mut buf, at).with_context(|| format!("reading {len} bytes at {at}"))?;
    Ok(buf)
}

/// Just enough of a FAT volume to follow directory cluster chains.
struct Volume {
    fat_type: FatType,
    fat: Vec<u8>,
    data_off: u64,
    cluster_len: u64,
    clusters: u64,
}

impl Volume {
    /// The cluster after `c` in its chain; `None` at the end (or on a broken entry).
    fn next(&self, c: u32) -> Option<u32> {
        let c = c as usize;
        let le = |at: usize, n: usize| -> Option<u32> {
            let b = self.fat.get(at..at + n)?;
            Some(b.iter().rev().fold(0, |v, &x| v << 8 | u32::from(x)))
        };
        let (value, end) = match self.fat_type {
            FatType::Fat12 => {
                let v = le(c * 3 / 2, 2)?;
                (if c % 2 == 1 { v >> 4 } else { v & 0xFFF }, 0xFF8)
            }
            FatType::Fat16 => (le(c * 2, 2)?, 0xFFF8),
            FatType::Fat32 => (le(c * 4, 4)? & 0x0FFF_FFFF, 0x0FFF_FFF8),
        };
        (value < end).then_some(value)
    }

    /// Byte offset of cluster `c`, after checking it exists.
    fn offset(&self, c: u32) -> Result<u64> {
        ensure!(c >= 2 && u64::from(c) < self.clusters + 2, "bad cluster number {c}");
        Ok(self.data_off + u64::from(c - 2) * self.cluster_len)
    }

    /// All bytes of the directory starting at cluster `first`.
    fn read_dir(&self, img: &File, first: u32) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut cur = Some(first);
        while let Some(c) = cur {
            ensure!(out.len() as u64 / self.cluster_len <= self.clusters, "cluster chain loops");
            out.extend(read_at(img, self.offset(c)?, self.cluster_len)?);
            cur = self.next(c);
        }
        Ok(out)
    }
}

/// fatfs 0.3 puts long-name entries in front of the "." and ".." entries of every
/// directory it creates, and points ".." at the FAT32 root cluster instead of 0;
/// FAT checkers (and some firmware) want "." and ".." in the first two slots.
/// Rewrite each subdirectory to start [".", "..", deleted, deleted, ...].
pub fn fix_dot_entries(img: &File, fat_type: FatType) -> Result<()> {
    let b = read_at(img, 0, 512)?;
    let le = |at: usize, n: usize| b[at..at + n].iter().rev().fold(0, |v, &x| v << 8 | u64::from(x));
    let (bps, spc, reserved, fats) = (le(11, 2), le(13, 1), le(14, 2), le(16, 1));
    ensure!(bps >= 512 && spc > 0, "unexpected FAT boot sector");
    let root_len = le(17, 2) * DIR_ENTRY as u64;
    let total_sectors = if le(19, 2) != 0 { le(19, 2) } else { le(32, 4) };
    let fat_len = if le(22, 2) != 0 { le(22, 2) } else { le(36, 4) } * bps;
    let root_off = reserved * bps + fats * fat_len;
    let data_off = root_off + root_len.div_ceil(bps) * bps;
    let vol = Volume {
        fat_type,
        fat: read_at(img, reserved * bps, fat_len)?,
        data_off,
        cluster_len: spc * bps,
        // Never more clusters than the file holds, whatever the boot sector claims.
        clusters: (total_sectors * bps).min(img.metadata()?.len()).saturating_sub(data_off) / (spc * bps),
    };
    let root = match fat_type {
        FatType::Fat32 => vol.read_dir(img, le(44, 4) as u32)?,
        _ => read_at(img, root_off, root_len)?,
    };
    fix_subdirs(img, &vol, &root, 0, 0, &mut HashSet::new())
}

/// Fix the subdirectories listed in `dir` (whose first cluster is `parent`, 0 for the root).
/// `seen` holds the first clusters of the directories visited: each is visited once, so a
/// damaged volume whose entries point at one directory again and again cannot make the walk
/// exponential.
fn fix_subdirs(img: &File, vol: &Volume, dir: &[u8], parent: u32, depth: usize, seen: &mut HashSet<u32>) -> Result<()> {
    ensure!(depth < 64, "directories nested too deeply");
    for e in dir.chunks_exact(DIR_ENTRY) {
        let attr = e[11];
        match e[0] {
            0 => break,
            0xE5 | b'.' => continue,
            _ if attr == ATTR_LFN || attr & ATTR_VOLUME != 0 || attr & ATTR_DIR == 0 => continue,
            _ => {}
        }
        let hi = u32::from(u16::from_le_bytes([e[20], e[21]]));
        let hi = if vol.fat_type == FatType::Fat32 { hi } else { 0 };
        let cluster = hi << 16 | u32::from(u16::from_le_bytes([e[26], e[27]]));
        let at = vol.offset(cluster)?;
        ensure!(seen.insert(cluster), "directory at offset {at} is listed twice (a loop)");
        let head = read_at(img, at, 4 * DIR_ENTRY as u64)?;
        let slot = |i: usize| &head[i * DIR_ENTRY..(i + 1) * DIR_ENTRY];
        let mut fixed = head.clone();
        if slot(0)[11] == ATTR_LFN && &slot(1)[..11] == DOT && slot(2)[11] == ATTR_LFN && &slot(3)[..11] == DOTDOT {
            fixed = [slot(1), slot(3), &[0xE5; 1], &[0; 31], &[0xE5; 1], &[0; 31]].concat();
        } else {
            let ok = &slot(0)[..11] == DOT && &slot(1)[..11] == DOTDOT;
            ensure!(ok, "directory at offset {at} does not start with '.' and '..'");
        }
        fixed[DIR_ENTRY + 20..DIR_ENTRY + 22].copy_from_slice(&((parent >> 16) as u16).to_le_bytes());
        fixed[DIR_ENTRY + 26..DIR_ENTRY + 28].copy_from_slice(&(parent as u16).to_le_bytes());
        if fixed != head {
            img.write_all_at(&fixed, at).with_context(|| format!("rewriting directory at offset {at}"))?;
        }
        fix_subdirs(img, vol, &vol.read_dir(img, cluster)?, cluster, depth + 1, seen)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::esp::{write_esp, EspFile, EspOptions, EspSource};
    use std::fs::OpenOptions;

    fn volume(dir: &std::path::Path) -> (File, FatType) {
        let path = dir.join("v.img");
        let opts = EspOptions { size: 16 << 20, volume_id: 1, label: "T".into(), timestamp: 1_735_689_600 };
        let files = [EspFile { path: "EFI/BOOT/x".into(), contents: EspSource::Bytes(b"x".to_vec()) }];
        write_esp(&path, &opts, &files).unwrap();
        let fat_type = fatfs::FileSystem::new(File::open(&path).unwrap(), fatfs::FsOptions::new()).unwrap().fat_type();
        (OpenOptions::new().read(true).write(true).open(&path).unwrap(), fat_type)
    }

    #[test]
    fn a_boot_sector_claiming_a_huge_fat_is_an_error_not_an_allocation() {
        // Found by the fuzz target `fat`: a FAT size of 2^32 sectors was allocated before reading.
        let dir = tempfile::tempdir().unwrap();
        let f = tempfile::tempfile_in(dir.path()).unwrap();
        let mut boot = vec![0u8; 512];
        boot[11..13].copy_from_slice(&512u16.to_le_bytes());
        boot[13] = 1;
        boot[14] = 1;
        boot[16] = 2;
        boot[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        f.write_all_at(&boot, 0).unwrap();
        let err = fix_dot_entries(&f, FatType::Fat32).unwrap_err().to_string();
        assert!(err.contains("beyond the end of the volume (512 bytes)"), "{err}");
    }

    #[test]
    fn a_directory_listed_twice_is_an_error_not_a_second_walk() {
        let dir = tempfile::tempdir().unwrap();
        let (f, fat_type) = volume(dir.path());
        assert_eq!(fat_type, FatType::Fat16);
        fix_dot_entries(&f, fat_type).unwrap();
        // Copy the root directory's entry of EFI into a free slot, under another name.
        let b = read_at(&f, 0, 512).unwrap();
        let le = |at: usize| u64::from(u16::from_le_bytes([b[at], b[at + 1]]));
        let root_off = le(14) * le(11) + u64::from(b[16]) * le(22) * le(11);
        let root = read_at(&f, root_off, le(17) * DIR_ENTRY as u64).unwrap();
        let entries: Vec<&[u8]> = root.chunks_exact(DIR_ENTRY).collect();
        let efi = entries.iter().find(|e| &e[..11] == b"EFI        ").expect("EFI in the root");
        let free = entries.iter().position(|e| e[0] == 0).unwrap();
        let mut copy = efi.to_vec();
        copy[..11].copy_from_slice(b"EFJ        ");
        f.write_all_at(&copy, root_off + (free * DIR_ENTRY) as u64).unwrap();
        let err = fix_dot_entries(&f, fat_type).unwrap_err().to_string();
        assert!(err.contains("is listed twice"), "{err}");
    }
}
