//! Root filesystem images made from the configured tree by the filesystem's own tools.
use crate::bootstrap::tools::Tools;
use crate::plan::Plan;
use crate::recipe::Filesystem;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Make the root filesystem image for `plan` from `tree`, sized to fill the root partition.
pub fn make_root(plan: &Plan, tools: &Tools, tree: &Path, work: &Path) -> Result<PathBuf> {
    let size = plan.layout.partitions[1].size;
    let out = work.join("root.img");
    let f = std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    f.set_len(size).context("sizing the root filesystem image")?;
    drop(f);
    let epoch = plan.recipe.source_date_epoch.to_string();
    match plan.recipe.disk.filesystem {
        Filesystem::Ext4 => tools
            .cmd("usr/sbin/mke2fs")?
            .args(["-t", "ext4", "-q", "-F", "-L", "root", "-b", "4096", "-T", "default"])
            .arg("-U")
            .arg(plan.root_fs_uuid.to_string())
            .arg("-E")
            .arg(format!("hash_seed={},root_owner=0:0", plan.root_fs_uuid))
            .arg("-d")
            .arg(tree)
            .arg(&out)
            .env("SOURCE_DATE_EPOCH", &epoch)
            .env("E2FSPROGS_FAKE_TIME", &epoch)
            .run()
            .context("making the ext4 root filesystem")?,
    }
    Ok(out)
}
