//! Making Debian trees with mmdebstrap: the image's root (cached, given to a build as an
//! overlay) and the pinned tools tree; emulation and native help for foreign architectures.
pub mod assist;
pub mod emulation;
pub mod hooks;
pub mod mmdebstrap;
pub mod root;
pub mod tarfilter;
pub mod tools;

use crate::plan::Plan;
use anyhow::{bail, Result};

/// Programs every bootstrap needs on the host.
const HOST_TOOLS: &[&str] = &["mmdebstrap", "mount", "chroot", "cp"];

/// Before any work: kiln runs as root and the host has the programs the plan needs.
pub fn preflight(plan: &Plan) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("kiln build must run as root: mmdebstrap bootstraps in root mode and the root's files must keep their owners");
    }
    let mut tools = HOST_TOOLS.to_vec();
    if !plan.recipe.repositories.is_empty() {
        tools.extend(["gpg", "gpgv", "curl"]);
    }
    if !plan.recipe.artifacts.is_empty() {
        tools.push("curl");
    }
    crate::host::cmd::require(&tools)
}
