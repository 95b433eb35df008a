//! EFI System Partition image: a FAT file system written with the `fatfs` crate.
//!
//! Output is deterministic: the volume id comes from the options and every FAT
//! timestamp is the given one (no wall-clock time), and files are written in
//! sorted path order.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, ensure, Context, Result};
use chrono::{Datelike, Timelike};
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
    let mut map = PROVIDERS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    map.entry(timestamp).or_insert_with(|| Box::leak(Box::new(FixedTime(fat_datetime(timestamp)))))
}

/// Convert unix seconds (UTC) to a FAT date-time, clamped to 1980-01-01..2107-12-31
/// and rounded down to even seconds.
pub(crate) fn fat_datetime(timestamp: i64) -> fatfs::DateTime {
    const FIRST: (i32, u32, u32, u32, u32, u32) = (1980, 1, 1, 0, 0, 0);
    const LAST: (i32, u32, u32, u32, u32, u32) = (2107, 12, 31, 23, 59, 58);
    let (y, mo, d, h, mi, s) = match chrono::DateTime::from_timestamp(timestamp, 0) {
        Some(t) if t.year() < 1980 => FIRST,
        Some(t) if t.year() > 2107 => LAST,
        Some(t) => (t.year(), t.month(), t.day(), t.hour(), t.minute(), t.second() / 2 * 2),
        None if timestamp < 0 => FIRST,
        None => LAST,
    };
    let date = fatfs::Date { year: y as u16, month: mo as u16, day: d as u16 };
    let time = fatfs::Time { hour: h as u16, min: mi as u16, sec: s as u16, millis: 0 };
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
        !path.is_empty() && path.split('/').all(|c| !c.is_empty() && c != "." && c != ".."),
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
    ensure!(opts.size % 512 == 0, "ESP size {} bytes is not a multiple of 512", opts.size);
    ensure!(opts.size / 512 <= u64::from(u32::MAX), "ESP size {} bytes is too large for FAT", opts.size);
    let label = volume_label(&opts.label)?;
    let (sorted, sizes) = sorted_files(files)?;
    let mut file = create_volume(path, opts, label)?;

    let fs_opts = FsOptions::new().update_accessed_date(false).time_provider(time_provider(opts.timestamp));
    let fs = FileSystem::new(&mut file, fs_opts).with_context(|| format!("opening FAT on {}", path.display()))?;
    check_fit(&fs, &sorted, &sizes, opts.size)?;
    tracing::debug!(fat = ?fs.fat_type(), cluster = fs.cluster_size(), files = sorted.len(), "writing ESP {}", path.display());

    let root = fs.root_dir();
    for (f, &len) in sorted.iter().zip(&sizes) {
        let write = || -> Result<()> {
            let (dir, name) = match f.path.rsplit_once('/') {
                Some((parent, name)) => {
                    let mut dir = root.clone();
                    for comp in parent.split('/') {
                        dir = dir.create_dir(comp).with_context(|| format!("creating directory {comp:?}"))?;
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
                    let mut src = File::open(p).with_context(|| format!("opening {}", p.display()))?;
                    let copied = io::copy(&mut src, &mut out).with_context(|| format!("copying {}", p.display()))?;
                    ensure!(copied == len, "{} changed size while copying ({len} -> {copied} bytes)", p.display());
                }
            }
            out.flush().context("flushing file")
        };
        write().with_context(|| {
            format!("writing ESP file {} ({len} bytes) into {} of {} bytes", f.path, path.display(), opts.size)
        })?;
    }
    drop(root);
    let fat_type = fs.fat_type();
    fs.unmount().with_context(|| format!("unmounting FAT on {}", path.display()))?;
    super::fatfix::fix_dot_entries(&file, fat_type)
        .with_context(|| format!("fixing directories of {}", path.display()))?;
    file.flush().with_context(|| format!("flushing {}", path.display()))?;
    Ok(())
}

/// `files` in sorted path order, with their sizes; every path valid and given once.
fn sorted_files(files: &[EspFile]) -> Result<(Vec<&EspFile>, Vec<u64>)> {
    let mut sorted: Vec<&EspFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut seen = HashSet::new();
    let mut sizes = Vec::with_capacity(sorted.len());
    for f in &sorted {
        check_path(&f.path)?;
        // FAT names are case-insensitive: "a" and "A" would be the same file.
        ensure!(seen.insert(f.path.to_ascii_uppercase()), "ESP path {:?} given twice (FAT ignores case)", f.path);
        sizes.push(source_len(f)?);
    }
    Ok((sorted, sizes))
}

/// Create `path` as a sparse file of `opts.size` bytes and format it FAT (FAT32 from
/// [`FAT32_MIN_SIZE`] up, FAT16/FAT12 below).
fn create_volume(path: &Path, opts: &EspOptions, label: [u8; 11]) -> Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.set_len(opts.size).with_context(|| format!("sizing {} to {} bytes", path.display(), opts.size))?;
    let mut format = FormatVolumeOptions::new().volume_id(opts.volume_id).volume_label(label);
    if opts.size >= FAT32_MIN_SIZE {
        format = format.fat_type(FatType::Fat32).bytes_per_cluster(fat32_cluster_size(opts.size));
    }
    fatfs::format_volume(&mut file, format)
        .with_context(|| format!("formatting {} ({} bytes) as FAT", path.display(), opts.size))?;
    Ok(file)
}

/// Fail early, with sizes, when the files cannot fit in the freshly formatted volume.
fn check_fit(fs: &FileSystem<&mut File>, files: &[&EspFile], sizes: &[u64], esp_size: u64) -> Result<()> {
    let stats = fs.stats().context("reading FAT statistics")?;
    let cluster = u64::from(stats.cluster_size());
    let free = u64::from(stats.free_clusters()) * cluster;
    // Every distinct parent directory takes (at least) one cluster.
    let dirs: HashSet<String> =
        files.iter().flat_map(|f| f.path.match_indices('/').map(|(i, _)| f.path[..i].to_ascii_uppercase())).collect();
    let file_bytes: u64 = sizes.iter().sum();
    let needed: u64 = sizes.iter().map(|s| s.div_ceil(cluster) * cluster).sum::<u64>() + dirs.len() as u64 * cluster;
    if needed > free {
        bail!(
            "ESP files do not fit: {} files of {file_bytes} bytes need {needed} bytes in {cluster}-byte clusters, \
             but the {esp_size}-byte ESP has only {free} bytes free",
            files.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fat_datetime;

    fn fields(t: i64) -> (u16, u16, u16, u16, u16, u16) {
        let d = fat_datetime(t);
        (d.date.year, d.date.month, d.date.day, d.time.hour, d.time.min, d.time.sec)
    }

    #[test]
    fn fat_times_are_utc_clamped_and_even() {
        assert_eq!(fields(1_700_000_001), (2023, 11, 14, 22, 13, 20));
        assert_eq!(fields(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(fields(315_532_800), (1980, 1, 1, 0, 0, 0));
        assert_eq!(fields(315_532_799), (1980, 1, 1, 0, 0, 0), "before 1980");
        assert_eq!(fields(0), (1980, 1, 1, 0, 0, 0));
        assert_eq!(fields(i64::MIN), (1980, 1, 1, 0, 0, 0));
        assert_eq!(fields(4_354_819_199), (2107, 12, 31, 23, 59, 58));
        assert_eq!(fields(4_354_819_200), (2107, 12, 31, 23, 59, 58), "after 2107");
        assert_eq!(fields(i64::MAX), (2107, 12, 31, 23, 59, 58));
    }
}
