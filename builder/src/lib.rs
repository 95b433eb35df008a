//! kiln: bakes reproducible, signed appliance disk images from TOML recipes.
//!
//! The pipeline (`pipeline::build`) reads top to bottom: recipe → plan → rootfs (mmdebstrap)
//! → system + overlays → boot pieces → root filesystem → ESP → GPT image. See ARCHITECTURE.md.
// Stages in build order, over the ground floor (`host`, `disk`); see ARCHITECTURE.md.
pub mod bootstrap;
pub mod cli;
pub mod customize;
pub mod debian;
pub mod disk;
pub mod host;
pub mod image;
pub mod lock;
pub mod pipeline;
pub mod plan;
pub mod recipe;
pub mod release;
pub mod verify;
pub mod vm;

use std::process::ExitCode;

/// File mode creation mask for kiln and every tool it runs. An image's file modes must not
/// depend on the caller's umask (077 would make every directory kiln or mmdebstrap creates
/// private), so kiln always works with the usual 022.
pub const UMASK: u32 = 0o022;

/// Make the process's inherited state one fixed value before anything runs, since every tool
/// kiln starts (mmdebstrap, maintainer scripts, mke2fs) inherits it: umask [`UMASK`], the
/// C.UTF-8 locale (messages and sort orders) and UTC. Call once at start, before threads.
pub fn normalize_process() {
    // SAFETY: umask only swaps the process's mask; it cannot fail.
    unsafe {
        libc::umask(UMASK as libc::mode_t);
    }
    for var in ["LANG", "LANGUAGE", "LC_CTYPE", "LC_COLLATE", "LC_MESSAGES", "LC_TIME", "LC_NUMERIC"] {
        std::env::remove_var(var);
    }
    std::env::set_var("LC_ALL", "C.UTF-8");
    std::env::set_var("TZ", "UTC");
}

/// Print an error the way the CLI does and choose the exit status: 2 for a bad recipe,
/// 130 for an interrupted run, 1 for everything else.
pub fn exit_code_for(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<host::cmd::Interrupted>().is_some() || host::cmd::interrupted() {
        eprintln!("kiln: interrupted; cleaned up");
        return ExitCode::from(130);
    }
    if let Some(r) = e.chain().find_map(|c| c.downcast_ref::<recipe::RecipeError>()) {
        eprintln!("kiln: error: {r}");
        return ExitCode::from(2);
    }
    eprintln!("kiln: error: {e:#}");
    ExitCode::FAILURE
}
