//! Native programs made to run inside a foreign root: their ELF interpreter renamed to the
//! assist's copy of the loader, and byte replacements of the same length.
use anyhow::{Context, Result};
use std::path::Path;

/// The x86_64 ELF interpreter the tools tree's programs name, and the path their copies name
/// instead (inside the mount, so the root needs no /lib64 or x86_64 library directory, which
/// mkinitramfs would copy into the initramfs).
pub(super) const HOST_INTERP: &[u8] = b"/lib64/ld-linux-x86-64.so.2";
pub(super) const ASSIST_INTERP: &[u8] = b"/.kiln-assist/ld.so";

/// Copy the x86_64 program `from` to `to` with its ELF interpreter renamed to `ASSIST_INTERP`.
pub(super) fn native_copy(from: &Path, to: &Path) -> Result<()> {
    let mut elf = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    set_interpreter(&mut elf, HOST_INTERP, ASSIST_INTERP)
        .with_context(|| format!("preparing {} to run inside the root", from.display()))?;
    write_executable(to, &elf)
}

pub(super) fn write_executable(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

/// Replace every `old` in `bytes` by `new` of the same length; there must be at least one.
pub(super) fn replace_all(bytes: &mut [u8], old: &[u8], new: &[u8]) -> Result<()> {
    anyhow::ensure!(old.len() == new.len(), "replacement of another length");
    let mut found = 0;
    let mut i = 0;
    while i + old.len() <= bytes.len() {
        if &bytes[i..i + old.len()] == old {
            bytes[i..i + old.len()].copy_from_slice(new);
            found += 1;
            i += old.len();
        } else {
            i += 1;
        }
    }
    anyhow::ensure!(found > 0, "{} not found", String::from_utf8_lossy(old));
    Ok(())
}

/// Replace the path in a 64-bit little-endian ELF file's PT_INTERP segment, in place: `new`
/// must not be longer than `old`; the rest is padded with NULs.
pub(super) fn set_interpreter(elf: &mut [u8], old: &[u8], new: &[u8]) -> Result<()> {
    anyhow::ensure!(new.len() <= old.len(), "interpreter path too long");
    anyhow::ensure!(
        elf.len() > 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2 && elf[5] == 1,
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(elf, 0x20), u16_at(elf, 0x36), u16_at(elf, 0x38));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        anyhow::ensure!(ph + 56 <= elf.len(), "program header outside the file");
        if u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) != 3 {
            continue;
        }
        let (off, size) = (u64_at(elf, ph + 8), u64_at(elf, ph + 32));
        anyhow::ensure!(off + size <= elf.len(), "interpreter outside the file");
        let interp = &mut elf[off..off + size];
        anyhow::ensure!(
            interp.starts_with(old) && interp[old.len()..].iter().all(|&b| b == 0),
            "unexpected interpreter {}",
            String::from_utf8_lossy(interp)
        );
        interp.fill(0);
        interp[..new.len()].copy_from_slice(new);
        return Ok(());
    }
    anyhow::bail!("no ELF interpreter (static program)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreter_is_renamed_in_place() {
        // A real dynamic program of the host, renamed and checked by readelf.
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("true");
        native_copy(Path::new("/usr/bin/true"), &to).unwrap();
        let text = crate::host::cmd::Cmd::new("readelf").arg("-l").arg(&to).output().unwrap();
        assert!(text.contains("[Requesting program interpreter: /.kiln-assist/ld.so]"), "{text}");
        assert_eq!(std::fs::metadata(&to).unwrap().len(), std::fs::metadata("/usr/bin/true").unwrap().len());
        let mut not_elf = b"#!/bin/sh\n".to_vec();
        assert!(set_interpreter(&mut not_elf, HOST_INTERP, ASSIST_INTERP).is_err());
    }
}
