//! GnuPG on the build host, always in a throwaway home: key fingerprints and key exports.
use crate::host::cmd::Cmd;
use anyhow::{Context, Result};
use std::path::Path;

/// Primary-key fingerprints in a key file (armored or binary), via `gpg --show-keys`.
pub fn fingerprints(key_file: &Path) -> Result<Vec<String>> {
    let home = tempfile::tempdir().context("creating a temporary GnuPG home")?;
    let out = gpg(home.path()).args(["--show-keys", "--with-colons", "--"]).arg(key_file).output()?;
    let mut fprs = Vec::new();
    let mut last = "";
    for line in out.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        match fields[0] {
            "fpr" if last == "pub" => fprs.push(fields.get(9).unwrap_or(&"").to_string()),
            "pub" | "sub" => last = fields[0],
            _ => {}
        }
    }
    Ok(fprs)
}

/// gpg with its home at `home`, non-interactive.
pub fn gpg(home: &Path) -> Cmd {
    Cmd::new("gpg").arg("--homedir").arg(home).args(["--batch", "--no-tty", "--quiet", "--no-autostart"])
}
