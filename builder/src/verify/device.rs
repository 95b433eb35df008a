//! `kiln verify DEVICE --image IMAGE`: a disk that `kiln flash` wrote, against the signed
//! release beside IMAGE (signature, checksums, manifest). Checks the disk's GPT entries and the
//! contents of the image's partitions; the site partition (disk::site::PARTITION_TYPE), the
//! free space and the GPT's position at the disk's end are not the image's and are ignored.
//! Meant for a freshly flashed disk: after the first boot the root has grown (docs/flash.md).
use super::{check_gpt, check_release, Report, Status};
use crate::disk::{self, site, Layout};
use anyhow::{bail, Context, Result};
use std::path::Path;

pub fn verify_device(device: &Path, image: &Path, key: Option<&Path>) -> Result<Report> {
    let name = image.file_name().and_then(|n| n.to_str()).context("the image has no usable file name")?.to_string();
    if !name.ends_with(".img") && !name.ends_with(".img.zst") {
        bail!("--image names the release's image (.img or .img.zst), not {name}");
    }
    let dir = image.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut r = Report::default();
    let Some((_, manifest)) = check_release(&mut r, dir, &name, key)? else { return Ok(r) };
    let Some(m) = manifest else {
        r.push(Status::Fail, device.display().to_string(), "not checked: no trusted manifest");
        return Ok(r);
    };
    let dev_name = device.display().to_string();
    let layout = disk::read_layout(device).or_else(|e| {
        // Written by dd or bmaptool: the backup GPT is at the image's end, not the disk's.
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(device)?;
        let (mut head, mut tail) = (vec![0u8; disk::gpt::HEAD_LEN as usize], vec![0u8; disk::gpt::TAIL_LEN as usize]);
        file.read_exact_at(&mut head, 0)?;
        file.read_exact_at(&mut tail, m.image.size.saturating_sub(disk::gpt::TAIL_LEN))?;
        let l = super::scan::gpt_from_ends(&head, &tail, m.image.size).map_err(|_| e)?;
        r.push(
            Status::Note,
            device.display().to_string(),
            "backup GPT at the image's end, not the disk's (not written by kiln flash)",
        );
        Ok::<_, anyhow::Error>(l)
    });
    let layout = layout.map_err(|e| format!("{e:#}"));
    // The image's partitions only: a site partition kiln flash added is not part of the image.
    let image_part: std::result::Result<Layout, String> = layout.as_ref().map_err(|e| e.clone()).map(|l| Layout {
        disk_size: l.disk_size,
        disk_guid: l.disk_guid,
        partitions: l.partitions.iter().filter(|p| p.type_guid != site::PARTITION_TYPE).cloned().collect(),
    });
    let fails = r.fail_count();
    check_gpt(&mut r, &dev_name, &image_part, &m);
    if let Ok(l) = &layout {
        if l.partitions.iter().any(|p| p.type_guid == site::PARTITION_TYPE) {
            r.push(Status::Note, &dev_name, "site partition (KILN-SITE) present: not part of the image, not checked");
        }
    }
    let file = std::fs::File::open(device).with_context(|| format!("opening {}", device.display()))?;
    for p in &m.partitions {
        let subject = format!("{dev_name}: partition {} ({})", p.placed.number, p.placed.label);
        match disk::flash::hash_range(&file, p.placed.offset, p.placed.size, &mut |_| {
            crate::host::cmd::check_interrupted()
        }) {
            Err(e) => r.push(Status::Fail, subject, format!("{e:#}")),
            Ok(sha) if sha != p.sha256 => r.push(
                Status::Fail,
                subject,
                format!("contents differ from the signed manifest (sha256 {sha}, expected {})", p.sha256),
            ),
            Ok(_) => r.push(Status::Ok, subject, "sha256 matches the signed manifest"),
        }
    }
    if r.fail_count() == fails {
        r.push(
            Status::Ok,
            &dev_name,
            format!("holds the image's {} partitions and their GPT entries", m.partitions.len()),
        );
    }
    Ok(r)
}
