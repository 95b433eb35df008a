//! `kiln flash IMAGE DEVICE`: check the image (signature, every checksum) before a byte is
//! written, check the target (a whole disk, not mounted or held, not the running system, big
//! enough; a regular file only when asked), confirm, write the image's mapped blocks, read every
//! partition back against the signed manifest, then write the site partition and the GPT for
//! the disk's real size. docs/flash.md.
use crate::disk::bmap::{self, BlockMap};
use crate::disk::gpt::{self, Layout, PlacedPartition, ALIGN};
use crate::disk::{flash as dflash, site};
use crate::host::blockdev::{self, Target};
use crate::host::progress::Transfer;
use crate::release::checksums;
use crate::release::export;
use crate::release::manifest::Manifest;
use crate::verify;
use anyhow::{bail, ensure, Context, Result};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// Test hook (documented in docs/flash.md): `KILN_TEST_CORRUPT_AFTER_WRITE=N` changes one
/// block of partition N on the target between the write and the read-back, so a test can see
/// the read-back name the partition. Honoured only together with `KILN_TEST_HOOKS=1`.
const CORRUPT_HOOK: &str = "KILN_TEST_CORRUPT_AFTER_WRITE";

pub struct FlashOptions<'a> {
    pub image: &'a Path,
    pub device: &'a Path,
    pub key: Option<&'a Path>,
    /// The site file to put on the site partition (already read; checked by the caller).
    pub site: Option<Vec<u8>>,
    pub force_file: bool,
    /// Asked with a description of the target; false stops before writing.
    pub confirm: &'a mut dyn FnMut(&str) -> Result<bool>,
}

/// What a flash did, for the report.
#[derive(Debug)]
pub struct Flashed {
    pub device: PathBuf,
    pub device_size: u64,
    pub written: u64,
    pub write_secs: f64,
    pub read_back: u64,
    pub read_secs: f64,
    pub partitions: Vec<String>,
    pub site: bool,
}

pub fn flash(o: FlashOptions) -> Result<Flashed> {
    let (manifest, map) = check_image(o.image, o.key)?;
    let target = blockdev::inspect(o.device, o.force_file)?;
    let layout = manifest_layout(&manifest);
    let site_size = if o.site.is_some() { site::VOLUME_SIZE + ALIGN } else { 0 };
    let need = manifest.image.size + site_size;
    ensure!(
        target.size >= need,
        "{} is too small: {} bytes, the image needs {} bytes{}",
        o.device.display(),
        target.size,
        need,
        if site_size > 0 { " with the site partition" } else { "" }
    );
    if !(o.confirm)(&describe(&target))? {
        bail!("not confirmed: nothing was written to {}", o.device.display());
    }
    let image = File::open(o.image).with_context(|| format!("opening {}", o.image.display()))?;
    let mut dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(o.device)
        .with_context(|| format!("opening {} for writing", o.device.display()))?;
    let dev_size = if target.block { dflash::size_of(&mut dev)? } else { target.size };

    let mapped: u64 = map.ranges.iter().map(|r| r.bytes(map.image_size).1).sum();
    let mut bar = Transfer::start(&format!("writing {}", o.device.display()), mapped);
    dflash::write_image(&image, &dev, &map, &layout, target.block, &mut |n| {
        bar.update(n);
        crate::host::cmd::check_interrupted()
    })
    .with_context(|| format!("writing the image to {}", o.device.display()))?;
    let write_secs = bar.finish();

    corrupt_hook(&dev, &layout)?;
    let (read_back, read_secs, partitions) = read_back(&dev, target.block, &manifest, o.device)?;

    let extra = match &o.site {
        Some(toml) => vec![write_site(&dev, &layout, dev_size, toml, manifest.source_date_epoch)?],
        None => Vec::new(),
    };
    // The image's backup GPT lies inside the disk now: clear it, then write the GPT for the
    // disk's real size (with the site partition, if any).
    let old_tail = layout.disk_size - gpt::TAIL_LEN;
    if dev_size > layout.disk_size {
        std::os::unix::fs::FileExt::write_all_at(&dev, &vec![0u8; gpt::TAIL_LEN as usize], old_tail)
            .context("clearing the image's backup GPT")?;
    }
    let disk = gpt::for_disk(&layout, dev_size, &extra)?;
    gpt::write_gpt_to(&dev, &disk).with_context(|| format!("writing the GPT to {}", o.device.display()))?;
    dev.sync_all().context("flushing the disk")?;
    drop(dev);
    reread_partitions(&target);
    Ok(Flashed {
        device: o.device.to_path_buf(),
        device_size: dev_size,
        written: mapped,
        write_secs,
        read_back,
        read_secs,
        partitions,
        site: !extra.is_empty(),
    })
}

/// `kiln verify` on the image and the files beside it (signature with `key`, every checksum,
/// partitions against the manifest); the trusted manifest and the block map.
fn check_image(image: &Path, key: Option<&Path>) -> Result<(Manifest, BlockMap)> {
    let report = verify::verify(image, key)?;
    if !report.passed() {
        let failed: Vec<String> = report
            .findings
            .iter()
            .filter(|f| f.status == verify::Status::Fail)
            .map(|f| format!("  {}: {}", f.subject, f.detail))
            .collect();
        bail!(
            "refusing to flash {}: it does not verify (nothing was written):\n{}",
            image.display(),
            failed.join("\n")
        );
    }
    let dir = image.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = image.file_name().and_then(|n| n.to_str()).context("image file name")?;
    ensure!(name.ends_with(".img"), "kiln flash writes raw images (.img), not {name}");
    let stem = export::stem(name);
    let manifest = Manifest::read(&dir.join(export::manifest_name(stem)))?;
    // A bmap is used only when the (signed) SHA256SUMS lists it, so verify checked it above;
    // otherwise (images built before kiln wrote one) the image is mapped from its contents.
    let bmap_name = export::bmap_name(stem);
    let bmap_path = dir.join(&bmap_name);
    let sums = std::fs::read_to_string(dir.join(checksums::SUMS_FILE)).context("reading SHA256SUMS")?;
    let listed = checksums::parse(&sums)?.iter().any(|e| e.file == bmap_name);
    let map = if listed && bmap_path.is_file() {
        let text = std::fs::read_to_string(&bmap_path).with_context(|| format!("reading {}", bmap_path.display()))?;
        bmap::parse(&text).with_context(|| format!("reading {}", bmap_path.display()))?
    } else {
        BlockMap::of_image(&mut File::open(image)?)?
    };
    ensure!(
        map.image_size == manifest.image.size,
        "the block map is for an image of {} bytes, the manifest says {}",
        map.image_size,
        manifest.image.size
    );
    Ok((manifest, map))
}

fn manifest_layout(m: &Manifest) -> Layout {
    Layout {
        disk_size: m.image.size,
        disk_guid: m.image.disk_guid,
        partitions: m.partitions.iter().map(|p| p.placed.clone()).collect(),
    }
}

/// What the user confirms: the device, its model, size and current partitions.
fn describe(t: &Target) -> String {
    let mut s = format!("{}: {}, {:.1} GB ({} bytes)\n", t.path.display(), t.model, t.size as f64 / 1e9, t.size);
    match crate::disk::read_layout(&t.path) {
        Ok(l) if l.partitions.is_empty() => s.push_str("  GPT without partitions\n"),
        Ok(l) => {
            for p in &l.partitions {
                s.push_str(&format!(
                    "  partition {} {:?}: {} MiB at {} MiB\n",
                    p.number,
                    p.label,
                    p.size >> 20,
                    p.offset >> 20
                ));
            }
        }
        Err(_) => s.push_str("  no readable GPT (empty, or another partition table)\n"),
    }
    s.push_str("Everything on it will be overwritten.");
    s
}

/// Read every partition back from the disk and compare it with the signed manifest.
fn read_back(dev: &File, block: bool, m: &Manifest, device: &Path) -> Result<(u64, f64, Vec<String>)> {
    dflash::drop_cache(dev, block)?;
    let total: u64 = m.partitions.iter().map(|p| p.placed.size).sum();
    let mut bar = Transfer::start(&format!("reading back {}", device.display()), total);
    let mut base = 0;
    let mut bad = Vec::new();
    let mut names = Vec::new();
    for p in &m.partitions {
        let sha = dflash::hash_range(dev, p.placed.offset, p.placed.size, &mut |n| {
            bar.update(base + n);
            crate::host::cmd::check_interrupted()
        })
        .with_context(|| format!("reading back partition {} ({})", p.placed.number, p.placed.label))?;
        base += p.placed.size;
        let name = format!("partition {} ({})", p.placed.number, p.placed.label);
        if sha != p.sha256 {
            bad.push(format!("  {name}: read back sha256 {sha}, the signed manifest says {}", p.sha256));
        }
        names.push(name);
    }
    let secs = bar.finish();
    if !bad.is_empty() {
        bail!("{} does not hold the image: read-back differs\n{}", device.display(), bad.join("\n"));
    }
    Ok((total, secs, names))
}

/// The site partition at the disk's end: a site volume (disk::site) of `toml`.
fn write_site(dev: &File, layout: &Layout, dev_size: u64, toml: &[u8], epoch: i64) -> Result<PlacedPartition> {
    let offset =
        gpt::last_offset(dev_size, site::VOLUME_SIZE).context("the disk has no room for the site partition")?;
    let tmp = tempfile::NamedTempFile::new().context("creating a temporary site volume")?;
    site::write_volume(tmp.path(), toml, epoch)?;
    let volume = std::fs::read(tmp.path()).context("reading the site volume")?;
    std::os::unix::fs::FileExt::write_all_at(dev, &volume, offset).context("writing the site partition")?;
    let guid = site_guid(layout);
    Ok(PlacedPartition {
        number: layout.partitions.len() as u32 + 1,
        label: site::LABEL.to_string(),
        type_guid: site::PARTITION_TYPE,
        part_guid: guid,
        offset,
        size: site::VOLUME_SIZE,
        flags: 0,
    })
}

/// The site partition's GUID, derived from the disk's (the same image gives the same GUID).
fn site_guid(layout: &Layout) -> uuid::Uuid {
    let h = crate::host::files::sha256_hex(format!("{} kiln-site", layout.disk_guid).as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&hex::decode(&h[..32]).unwrap_or_else(|_| vec![0; 16]));
    uuid::Builder::from_random_bytes(b).into_uuid()
}

/// Corrupt one block of partition N when the test hook asks for it.
fn corrupt_hook(dev: &File, layout: &Layout) -> Result<()> {
    let Some(n) = std::env::var(CORRUPT_HOOK).ok().filter(|_| std::env::var("KILN_TEST_HOOKS").as_deref() == Ok("1"))
    else {
        return Ok(());
    };
    let p = layout
        .partitions
        .iter()
        .find(|p| p.number.to_string() == n)
        .context("KILN_TEST_CORRUPT_AFTER_WRITE names no partition")?;
    tracing::warn!("test hook: corrupting partition {} after the write", p.number);
    let at = p.offset + p.size / 2;
    std::os::unix::fs::FileExt::write_all_at(dev, &[0xa5u8; 4096], at).context("test hook")?;
    dev.sync_all().context("test hook")
}

/// Ask the kernel to read the new partition table; a failure is only a warning.
fn reread_partitions(t: &Target) {
    if !t.block {
        return;
    }
    // BLKRRPART, then partx's BLKPG per partition (works where a rescan is not done, e.g. a
    // loop device without partition scanning).
    let reread = crate::host::cmd::Cmd::new("blockdev").arg("--rereadpt").arg(&t.path).run();
    let update = crate::host::cmd::Cmd::new("partx").arg("--update").arg(&t.path).run();
    if let (Err(e), Err(_)) = (reread, update) {
        tracing::warn!("the kernel did not re-read the partition table of {}: {e:#}", t.path.display());
    }
}
