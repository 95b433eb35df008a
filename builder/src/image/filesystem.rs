//! Root filesystem images made from the configured tree by the filesystem's own tools.
use crate::bootstrap::tools::Tools;
use crate::disk::PlacedPartition;
use crate::plan::Plan;
use crate::recipe::Filesystem;
use anyhow::{ensure, Context, Result};
use std::path::Path;

/// ext4 block size (bytes).
const BLOCK: u64 = 4096;

/// Make the root filesystem for `plan` from `tree` straight into the image file `image`, at the
/// offset of the root partition `part` and filling it (nothing outside it is written). The
/// partition must read as zeros (`disk::ImageWriter::create` makes the file anew): mke2fs then
/// skips zeroing its inode tables and journal (`assume_storage_prezeroed`, e2fsprogs 1.47.0+),
/// which gives the same bytes in half the time and leaves those blocks unallocated in the file.
pub fn make_root(plan: &Plan, tools: &Tools, tree: &Path, image: &Path, part: &PlacedPartition) -> Result<()> {
    ensure!(part.size % BLOCK == 0 && part.offset % BLOCK == 0, "the root partition is not {BLOCK}-byte aligned");
    let epoch = plan.recipe.source_date_epoch.to_string();
    match plan.recipe.disk.filesystem {
        Filesystem::Ext4 => tools
            .cmd("usr/sbin/mke2fs")?
            .args(["-t", "ext4", "-q", "-F", "-L", "root", "-b", "4096", "-T", "default"])
            .arg("-U")
            .arg(plan.root_fs_uuid.to_string())
            .arg("-E")
            .arg(format!(
                "offset={},hash_seed={},root_owner=0:0,assume_storage_prezeroed=1",
                part.offset, plan.root_fs_uuid
            ))
            .arg("-d")
            .arg(tree)
            .arg("--")
            .arg(image)
            // The size in blocks: mke2fs would take the whole file from the offset on.
            .arg((part.size / BLOCK).to_string())
            .env("SOURCE_DATE_EPOCH", &epoch)
            .env("E2FSPROGS_FAKE_TIME", &epoch)
            .run()
            .context("making the ext4 root filesystem")?,
    }
    Ok(())
}
