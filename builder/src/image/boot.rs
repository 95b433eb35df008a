//! Boot pieces: systemd-boot, the kernel and initrd of the root, and a Boot Loader
//! Specification (Type #1) entry, as the list of files that go onto the ESP.
use crate::disk::esp::{EspFile, EspSource};
use crate::plan::Plan;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// What the boot stage found in the root.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootInfo {
    pub kernel_version: String,
    pub entry: String,
}

/// The ESP's files for `plan`, taken from the configured root at `root`.
pub fn esp_files(plan: &Plan, root: &Path) -> Result<(Vec<EspFile>, BootInfo)> {
    let arch = plan.arch();
    let kver = kernel_version(root)?;
    let kernel = root.join(format!("boot/vmlinuz-{kver}"));
    let initrd = root.join(format!("boot/initrd.img-{kver}"));
    if !initrd.is_file() {
        bail!("no initrd /boot/initrd.img-{kver} in the root: is initramfs-tools installed?");
    }
    let sdboot = root.join(arch.systemd_boot_efi());
    if !sdboot.is_file() {
        bail!(
            "systemd-boot not found at /{} in the root: the package systemd-boot-efi is missing",
            arch.systemd_boot_efi()
        );
    }
    let r = &plan.recipe;
    let entry_name = format!("{}.conf", r.name);
    let entry = loader_entry(plan, &kver);
    let loader = format!("timeout {}\ndefault {entry_name}\neditor no\nconsole-mode keep\n", r.boot.menu_timeout);
    let files = vec![
        EspFile { path: arch.efi_boot_path().into(), contents: EspSource::File(sdboot) },
        EspFile { path: "loader/loader.conf".into(), contents: EspSource::Bytes(loader.into_bytes()) },
        EspFile {
            path: format!("loader/entries/{entry_name}"),
            contents: EspSource::Bytes(entry.clone().into_bytes()),
        },
        EspFile { path: format!("{}/{kver}/linux", r.name), contents: EspSource::File(kernel) },
        EspFile { path: format!("{}/{kver}/initrd", r.name), contents: EspSource::File(initrd) },
    ];
    Ok((files, BootInfo { kernel_version: kver, entry }))
}

/// The version of the one kernel in /boot (the newest, if there are several).
/// The Boot Loader Specification entry of the image's kernel `kver`.
pub fn loader_entry(plan: &Plan, kver: &str) -> String {
    format!(
        "title {name} {version}\nversion {kver}\nsort-key {name}\nlinux /{name}/{kver}/linux\ninitrd /{name}/{kver}/initrd\noptions {cmdline}\n",
        name = plan.recipe.name,
        version = plan.recipe.version,
        cmdline = plan.kernel_cmdline,
    )
}

pub fn kernel_version(root: &Path) -> Result<String> {
    let boot = root.join("boot");
    let mut versions: Vec<String> = std::fs::read_dir(&boot)
        .with_context(|| format!("listing {}", boot.display()))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("vmlinuz-").map(String::from))
        .collect();
    versions.sort_by(|a, b| version_cmp(a, b));
    match versions.len() {
        0 => bail!("no kernel (/boot/vmlinuz-*) in the root: the kernel package did not install"),
        1 => {}
        n => tracing::warn!("{n} kernels in /boot; booting the newest, {}", versions[n - 1]),
    }
    Ok(versions.pop().unwrap_or_default())
}

/// Compare version strings by their numeric and text runs ("6.12.9" < "6.12.10").
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn runs(s: &str) -> Vec<(bool, String)> {
        let mut out: Vec<(bool, String)> = Vec::new();
        for c in s.chars() {
            let d = c.is_ascii_digit();
            match out.last_mut() {
                Some((kind, run)) if *kind == d => run.push(c),
                _ => out.push((d, c.to_string())),
            }
        }
        out
    }
    let (ra, rb) = (runs(a), runs(b));
    for (x, y) in ra.iter().zip(&rb) {
        let ord = match (x.0, y.0) {
            (true, true) => x.1.parse::<u64>().unwrap_or(0).cmp(&y.1.parse::<u64>().unwrap_or(0)),
            _ => x.1.cmp(&y.1),
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ra.len().cmp(&rb.len())
}

#[cfg(test)]
mod tests {
    /// Kernel command-line values are words: a newline cannot add a line to the loader entry.
    #[test]
    fn loader_entry_has_one_options_line() {
        let body =
            "[base]\nmirror = \"http://deb.example/debian\"\n[boot]\nkernel_cmdline = [\"quiet\", \"loglevel=3\"]\n";
        let entry = super::loader_entry(&crate::plan::plan_of(body).unwrap(), "6.12.9-amd64");
        let lines: Vec<&str> = entry.lines().collect();
        assert_eq!(lines.len(), 6, "{entry}");
        assert!(lines[5].starts_with("options root=PARTUUID=") && lines[5].ends_with(" quiet loglevel=3"), "{entry}");
        for bad in [r#"quiet\ninitrd /evil"#, "quiet init=/bin/sh", r#"quiet\r"#] {
            let e = crate::plan::plan_of(&format!("[boot]\nkernel_cmdline = [\"{bad}\"]\n")).unwrap_err();
            assert!(e.contains("r.toml:4:") && e.contains("key `boot.kernel_cmdline[0]`"), "{e}");
            assert!(e.contains("not one kernel command-line word"), "{e}");
        }
    }

    #[test]
    fn kernel_versions_sort_numerically() {
        let mut v = vec!["6.12.10-amd64", "6.12.9-amd64", "6.1.0-amd64"];
        v.sort_by(|a, b| super::version_cmp(a, b));
        assert_eq!(v, ["6.1.0-amd64", "6.12.9-amd64", "6.12.10-amd64"]);
    }
}
