//! EFI System Partition image: a FAT file system written with the `fatfs` crate.
//!
//! Output is deterministic: the volume id comes from the options and every FAT
//! timestamp is the given one (no wall-clock time), and files are written in
//! sorted path order.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, ensure, Context, Result};
use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions, TimeProvider};

/// ESPs of at least this size are formatted FAT32 (what the UEFI specification asks of an ESP
/// on a fixed disk; some firmware accepts nothing else), smaller ones FAT16 (FAT12 when tiny).
pub const FAT32_MIN_SIZE: u64 = 64 * 1024 * 1024;

/// FAT32 needs at least 65525 clusters: the largest cluster size (512 to 4096 bytes) that
/// leaves a safe margin above that for a volume of `size` bytes.
fn fat32_cluster_size(size: u64) -> u32 {
    [4096u32, 2048, 1024, 512].into_iter().find(|c| size / u64::from(*c) >= 70_000).unwrap_or(512)
}

/// One file to put in the ESP.
pub struct EspFile {
    /// '/'-separated path inside the ESP, e.g. "EFI/BOOT/BOOTX64.EFI"; directories are created as needed.
    pub path: String,
    /// Where the contents come from.
    pub contents: EspSource,
}

/// Contents of an [`EspFile`].
pub enum EspSource {
    /// These bytes.
    Bytes(Vec<u8>),
    /// A copy of this host file.
    File(PathBuf),
}

/// How to format the ESP.
pub struct EspOptions {
    /// Image size in bytes (a multiple of 512).
    pub size: u64,
    /// FAT volume serial number.
    pub volume_id: u32,
    /// Volume label, at most 11 ASCII characters; upper-cased and space padded.
    pub label: String,
    /// Unix seconds (SOURCE_DATE_EPOCH) used for every FAT timestamp, clamped to 1980..=2107
    /// and rounded down to even seconds (the resolution of FAT modification times).
    pub timestamp: i64,
}

/// A [`TimeProvider`] that always answers the same instant.
#[derive(Debug)]
struct FixedTime(fatfs::DateTime);

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

/// fatfs wants a `&'static` provider: keep one per distinct timestamp for the life of the process.
fn time_provider(timestamp: i64) -> &'static FixedTime {
    static PROVIDERS: Mutex<BTreeMap<i64, &'static FixedTime>> = Mutex::new(BTreeMap::new());
    let mut map = PROVIDERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    map.entry(timestamp)
        .or_insert_with(|| Box::leak(Box::new(FixedTime(fat_datetime(timestamp)))))
}

/// Convert unix seconds (UTC) to a FAT date-time, clamped to 1980-01-01..2107-12-31
/// and rounded down to even seconds.
pub(crate) fn fat_datetime(timestamp: i64) -> fatfs::DateTime {
    let days = timestamp.div_euclid(86_400);
    let secs = timestamp.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (y, mo, d, h, mi, s) = if year < 1980 {
        (1980, 1, 1, 0, 0, 0)
    } else if year > 2107 {
        (2107, 12, 31, 23, 59, 58)
    } else {
        (
            year,
            month,
            day,
            secs / 3600,
            secs / 60 % 60,
            secs % 60 / 2 * 2,
        )
    };
    let date = fatfs::Date {
        year: y as u16,
        month: mo as u16,
        day: d as u16,
    };
    let time = fatfs::Time {
        hour: h as u16,
        min: mi as u16,
        sec: s as u16,
        millis: 0,
    };
    fatfs::DateTime { date, time }
}

fn volume_label(label: &str) -> Result<[u8; 11]> {
    let upper = label.to_ascii_uppercase();
    ensure!(
        upper.len() <= 11 && upper.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
        "ESP label {label:?} must be at most 11 printable ASCII characters"
    );
    ensure!(
        !upper.bytes().any(|b| b"*?.,;:/\\|+=<>[]\"".contains(&b)),
        "ESP label {label:?} contains a character FAT does not allow in labels"
    );
    let mut out = [b' '; 11];
    out[..upper.len()].copy_from_slice(upper.as_bytes());
    Ok(out)
}

fn check_path(path: &str) -> Result<()> {
    ensure!(
        !path.is_empty()
            && path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."),
        "ESP path {path:?} must be relative, '/'-separated, without empty, '.' or '..' components"
    );
    Ok(())
}

/// Bytes of `file` and the host path it comes from (for messages).
fn source_len(file: &EspFile) -> Result<u64> {
    match &file.contents {
        EspSource::Bytes(b) => Ok(b.len() as u64),
        EspSource::File(p) => Ok(std::fs::metadata(p)
            .with_context(|| format!("reading size of {} for ESP file {}", p.display(), file.path))?
            .len()),
    }
}

/// Create `path` as a sparse file of `opts.size` bytes, format it FAT
/// (FAT32 from [`FAT32_MIN_SIZE`] up, FAT16/FAT12 below), and write `files` in sorted path order.
///
/// Deterministic: volume id from `opts`, every timestamp is `opts.timestamp`; two
/// calls with the same inputs produce byte-identical output. Errors name the ESP
/// path of the file that failed, and say (with sizes) when the files do not fit.
pub fn write_esp(path: &Path, opts: &EspOptions, files: &[EspFile]) -> Result<()> {
    ensure!(
        opts.size % 512 == 0,
        "ESP size {} bytes is not a multiple of 512",
        opts.size
    );
    ensure!(
        opts.size / 512 <= u64::from(u32::MAX),
        "ESP size {} bytes is too large for FAT",
        opts.size
    );
    let label = volume_label(&opts.label)?;
    let mut sorted: Vec<&EspFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut seen = HashSet::new();
    let mut sizes = Vec::with_capacity(sorted.len());
    for f in &sorted {
        check_path(&f.path)?;
        // FAT names are case-insensitive: "a" and "A" would be the same file.
        ensure!(
            seen.insert(f.path.to_ascii_uppercase()),
            "ESP path {:?} given twice (FAT ignores case)",
            f.path
        );
        sizes.push(source_len(f)?);
    }

    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.set_len(opts.size)
        .with_context(|| format!("sizing {} to {} bytes", path.display(), opts.size))?;
    let mut format = FormatVolumeOptions::new()
        .volume_id(opts.volume_id)
        .volume_label(label);
    if opts.size >= FAT32_MIN_SIZE {
        format = format.fat_type(FatType::Fat32).bytes_per_cluster(fat32_cluster_size(opts.size));
    }
    fatfs::format_volume(&mut file, format)
        .with_context(|| format!("formatting {} ({} bytes) as FAT", path.display(), opts.size))?;

    let fs_opts = FsOptions::new()
        .update_accessed_date(false)
        .time_provider(time_provider(opts.timestamp));
    let fs = FileSystem::new(&mut file, fs_opts)
        .with_context(|| format!("opening FAT on {}", path.display()))?;
    check_fit(&fs, &sorted, &sizes, opts.size)?;
    tracing::debug!(fat = ?fs.fat_type(), cluster = fs.cluster_size(), files = sorted.len(), "writing ESP {}", path.display());

    let root = fs.root_dir();
    for (f, &len) in sorted.iter().zip(&sizes) {
        let write = || -> Result<()> {
            let (dir, name) = match f.path.rsplit_once('/') {
                Some((parent, name)) => {
                    let mut dir = root.clone();
                    for comp in parent.split('/') {
                        dir = dir
                            .create_dir(comp)
                            .with_context(|| format!("creating directory {comp:?}"))?;
                    }
                    (dir, name)
                }
                None => (root.clone(), f.path.as_str()),
            };
            let mut out = dir.create_file(name).context("creating file")?;
            out.truncate().context("truncating file")?;
            match &f.contents {
                EspSource::Bytes(b) => out.write_all(b).context("writing contents")?,
                EspSource::File(p) => {
                    let mut src =
                        File::open(p).with_context(|| format!("opening {}", p.display()))?;
                    let copied = io::copy(&mut src, &mut out)
                        .with_context(|| format!("copying {}", p.display()))?;
                    ensure!(
                        copied == len,
                        "{} changed size while copying ({len} -> {copied} bytes)",
                        p.display()
                    );
                }
            }
            out.flush().context("flushing file")
        };
        write().with_context(|| {
            format!(
                "writing ESP file {} ({len} bytes) into {} of {} bytes",
                f.path,
                path.display(),
                opts.size
            )
        })?;
    }
    drop(root);
    let fat_type = fs.fat_type();
    fs.unmount()
        .with_context(|| format!("unmounting FAT on {}", path.display()))?;
    fix_dot_entries(&file, fat_type)
        .with_context(|| format!("fixing directories of {}", path.display()))?;
    file.flush()
        .with_context(|| format!("flushing {}", path.display()))?;
    Ok(())
}

const DIR_ENTRY: usize = 32;
const ATTR_LFN: u8 = 0x0F;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_DIR: u8 = 0x10;
const DOT: &[u8; 11] = b".          ";
const DOTDOT: &[u8; 11] = b"..         ";

fn read_at(img: &File, at: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    img.read_exact_at(&mut buf, at)
        .with_context(|| format!("reading {len} bytes at {at}"))?;
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
        ensure!(
            c >= 2 && u64::from(c) < self.clusters + 2,
            "bad cluster number {c}"
        );
        Ok(self.data_off + u64::from(c - 2) * self.cluster_len)
    }

    /// All bytes of the directory starting at cluster `first`.
    fn read_dir(&self, img: &File, first: u32) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut cur = Some(first);
        while let Some(c) = cur {
            ensure!(
                out.len() as u64 / self.cluster_len <= self.clusters,
                "cluster chain loops"
            );
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
fn fix_dot_entries(img: &File, fat_type: FatType) -> Result<()> {
    let b = read_at(img, 0, 512)?;
    let le = |at: usize, n: usize| {
        b[at..at + n]
            .iter()
            .rev()
            .fold(0, |v, &x| v << 8 | u64::from(x))
    };
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
        clusters: (total_sectors * bps).saturating_sub(data_off) / (spc * bps),
    };
    let root = match fat_type {
        FatType::Fat32 => vol.read_dir(img, le(44, 4) as u32)?,
        _ => read_at(img, root_off, root_len)?,
    };
    fix_subdirs(img, &vol, &root, 0, 0)
}

/// Fix the subdirectories listed in `dir` (whose first cluster is `parent`, 0 for the root).
fn fix_subdirs(img: &File, vol: &Volume, dir: &[u8], parent: u32, depth: usize) -> Result<()> {
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
        let hi = if vol.fat_type == FatType::Fat32 {
            hi
        } else {
            0
        };
        let cluster = hi << 16 | u32::from(u16::from_le_bytes([e[26], e[27]]));
        let at = vol.offset(cluster)?;
        let head = read_at(img, at, 4 * DIR_ENTRY as u64)?;
        let slot = |i: usize| &head[i * DIR_ENTRY..(i + 1) * DIR_ENTRY];
        let mut fixed = head.clone();
        if slot(0)[11] == ATTR_LFN
            && &slot(1)[..11] == DOT
            && slot(2)[11] == ATTR_LFN
            && &slot(3)[..11] == DOTDOT
        {
            fixed = [slot(1), slot(3), &[0xE5; 1], &[0; 31], &[0xE5; 1], &[0; 31]].concat();
        } else {
            let ok = &slot(0)[..11] == DOT && &slot(1)[..11] == DOTDOT;
            ensure!(
                ok,
                "directory at offset {at} does not start with '.' and '..'"
            );
        }
        fixed[DIR_ENTRY + 20..DIR_ENTRY + 22]
            .copy_from_slice(&((parent >> 16) as u16).to_le_bytes());
        fixed[DIR_ENTRY + 26..DIR_ENTRY + 28].copy_from_slice(&(parent as u16).to_le_bytes());
        if fixed != head {
            img.write_all_at(&fixed, at)
                .with_context(|| format!("rewriting directory at offset {at}"))?;
        }
        fix_subdirs(img, vol, &vol.read_dir(img, cluster)?, cluster, depth + 1)?;
    }
    Ok(())
}

/// Fail early, with sizes, when the files cannot fit in the freshly formatted volume.
fn check_fit(
    fs: &FileSystem<&mut File>,
    files: &[&EspFile],
    sizes: &[u64],
    esp_size: u64,
) -> Result<()> {
    let stats = fs.stats().context("reading FAT statistics")?;
    let cluster = u64::from(stats.cluster_size());
    let free = u64::from(stats.free_clusters()) * cluster;
    // Every distinct parent directory takes (at least) one cluster.
    let dirs: HashSet<String> = files
        .iter()
        .flat_map(|f| {
            f.path
                .match_indices('/')
                .map(|(i, _)| f.path[..i].to_ascii_uppercase())
        })
        .collect();
    let file_bytes: u64 = sizes.iter().sum();
    let needed: u64 = sizes
        .iter()
        .map(|s| s.div_ceil(cluster) * cluster)
        .sum::<u64>()
        + dirs.len() as u64 * cluster;
    if needed > free {
        bail!(
            "ESP files do not fit: {} files of {file_bytes} bytes need {needed} bytes in {cluster}-byte clusters, \
             but the {esp_size}-byte ESP has only {free} bytes free",
            files.len()
        );
    }
    Ok(())
}
