//! What `kiln flash` must know about a target before it writes: is it a whole disk or a
//! partition, is it (or any of its partitions) mounted or held, does it hold the running system,
//! its size and model. Read from sysfs and /proc/self/mountinfo; nothing is written here.
use anyhow::{bail, Context, Result};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A target that passed every check.
#[derive(Debug, Clone)]
pub struct Target {
    pub path: PathBuf,
    /// A block device (else a regular file, with --force-file).
    pub block: bool,
    pub size: u64,
    /// Model (and vendor) from sysfs, where the device has one.
    pub model: String,
    /// Kernel name (`sda`, `loop3`), for block devices.
    pub name: String,
}

fn dev_numbers(rdev: u64) -> (u32, u32) {
    (libc::major(rdev), libc::minor(rdev))
}

/// `major:minor` of every mounted file system, with its mount point.
fn mounts() -> Result<Vec<((u32, u32), String)>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 5 {
            continue;
        }
        if let Some((a, b)) = f[2].split_once(':') {
            if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                out.push(((a, b), f[4].replace("\\040", " ")));
            }
        }
    }
    Ok(out)
}

/// `(name, major:minor)` of the disk `name` and of each of its partitions.
fn disk_and_partitions(sys: &Path, name: &str) -> Vec<(String, (u32, u32))> {
    let read_dev = |p: &Path| -> Option<(u32, u32)> {
        let t = std::fs::read_to_string(p.join("dev")).ok()?;
        let (a, b) = t.trim().split_once(':')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let mut out = Vec::new();
    if let Some(d) = read_dev(sys) {
        out.push((name.to_string(), d));
    }
    if let Ok(entries) = std::fs::read_dir(sys) {
        for e in entries.flatten() {
            let p = e.path();
            if p.join("partition").exists() {
                if let Some(d) = read_dev(&p) {
                    out.push((e.file_name().to_string_lossy().into_owned(), d));
                }
            }
        }
    }
    out.sort();
    out
}

/// The whole disks (kernel names) under a device, following device-mapper and md slaves, so
/// a root on LVM or RAID still names its disks.
fn disks_under(dev: (u32, u32), depth: u32) -> Vec<String> {
    let link = PathBuf::from(format!("/sys/dev/block/{}:{}", dev.0, dev.1));
    let Ok(real) = std::fs::canonicalize(&link) else { return Vec::new() };
    let slaves = real.join("slaves");
    let mut out = Vec::new();
    if depth < 8 {
        for e in std::fs::read_dir(&slaves).into_iter().flatten().flatten() {
            let p = e.path().join("dev");
            if let Ok(t) = std::fs::read_to_string(p) {
                if let Some((a, b)) = t.trim().split_once(':') {
                    if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                        out.extend(disks_under((a, b), depth + 1));
                    }
                }
            }
        }
    }
    if out.is_empty() {
        // A partition's sysfs directory sits inside its disk's.
        let disk = if real.join("partition").exists() { real.parent().map(Path::to_path_buf) } else { Some(real) };
        if let Some(name) = disk.and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned())) {
            out.push(name);
        }
    }
    out
}

/// Check `path` as a flash target: a whole, unmounted, unheld disk that does not hold the
/// running system; or, with `force_file`, a regular file. Errors say which rule refused it.
pub fn inspect(path: &Path, force_file: bool) -> Result<Target> {
    let meta = std::fs::metadata(path).with_context(|| format!("{} cannot be opened", path.display()))?;
    let ft = meta.file_type();
    if ft.is_file() {
        if !force_file {
            bail!(
                "{} is a regular file, not a block device: add --force-file to write the image into a file",
                path.display()
            );
        }
        return Ok(Target {
            path: path.to_path_buf(),
            block: false,
            size: meta.len(),
            model: "regular file".into(),
            name: String::new(),
        });
    }
    if !ft.is_block_device() {
        bail!("{} is neither a block device nor a regular file", path.display());
    }
    let dev = dev_numbers(meta.rdev());
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{}:{}", dev.0, dev.1))
        .with_context(|| format!("{} ({}:{}) is not in /sys/dev/block", path.display(), dev.0, dev.1))?;
    let name = sys.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if sys.join("partition").exists() {
        let disk = sys.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
        bail!(
            "{} is a partition ({name}), not a whole disk: kiln flash writes a whole disk (/dev/{})",
            path.display(),
            disk.unwrap_or_else(|| "the disk it belongs to".into())
        );
    }
    let parts = disk_and_partitions(&sys, &name);
    let all_mounts = mounts()?;
    for mp in ["/", "/boot", "/boot/efi", "/efi", "/usr"] {
        for (d, point) in all_mounts.iter().filter(|(_, p)| p == mp) {
            if disks_under(*d, 0).contains(&name) {
                bail!("{} holds the running system ({point} is on it): refusing to overwrite it", path.display());
            }
        }
    }
    for (part, d) in &parts {
        if let Some((_, point)) = all_mounts.iter().find(|(m, _)| m == d) {
            bail!("{} is in use: /dev/{part} is mounted on {point}; unmount it first", path.display());
        }
        let holders = if part == &name { sys.join("holders") } else { sys.join(part).join("holders") };
        let held: Vec<String> = std::fs::read_dir(&holders)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !held.is_empty() {
            bail!(
                "{} is in use: /dev/{part} is held by {} (device-mapper, RAID or LVM)",
                path.display(),
                held.join(", ")
            );
        }
    }
    let sectors: u64 = std::fs::read_to_string(sys.join("size")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let read =
        |f: &str| std::fs::read_to_string(sys.join("device").join(f)).map(|s| s.trim().to_string()).unwrap_or_default();
    let mut model = [read("vendor"), read("model")].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ");
    if model.is_empty() {
        let backing = std::fs::read_to_string(sys.join("loop/backing_file")).map(|s| s.trim().to_string());
        model = match backing {
            Ok(b) => format!("loop device on {b}"),
            Err(_) => "unknown model".into(),
        };
    }
    Ok(Target { path: path.to_path_buf(), block: true, size: sectors * 512, model, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_need_force_file_and_other_kinds_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("disk.img");
        std::fs::write(&f, vec![0u8; 4096]).unwrap();
        let e = inspect(&f, false).unwrap_err().to_string();
        assert!(e.contains("--force-file"), "{e}");
        assert_eq!(inspect(&f, true).unwrap().size, 4096);
        let e = inspect(dir.path(), true).unwrap_err().to_string();
        assert!(e.contains("neither a block device"), "{e}");
    }
}
