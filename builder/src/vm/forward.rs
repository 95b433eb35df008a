//! What a virtual machine gets from the host besides its disk: the guest's SSH and service ports
//! forwarded to free ports on 127.0.0.1 (QEMU user networking `hostfwd`), and the site volume of
//! `--site` (docs/site.md) attached as an extra read-only disk.
use crate::disk::site;
use crate::recipe::Port;
use crate::release::{export, manifest::Manifest};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

/// The largest site file `--site` takes (the box reads at most as much).
const MAX_SITE_SIZE: u64 = 1024 * 1024;

/// A guest port forwarded to a port on the host's 127.0.0.1.
#[derive(Debug, Clone, Serialize)]
pub struct Forward {
    pub name: String,
    pub guest: u16,
    pub host: u16,
    /// How to reach it from the host: `ssh -p N admin@localhost`, `https://localhost:N`, ...
    pub reach: String,
}

/// The guest's SSH plus the recipe's service ports, read from the manifest beside `image`
/// (an image without one gets SSH only).
pub fn guest_ports(image: &Path) -> Vec<Port> {
    let mut ports = vec![Port { name: "ssh".into(), guest: 22, protocol: "tcp".into(), scheme: None }];
    let name = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let manifest = image.with_file_name(export::manifest_name(export::stem(&name)));
    if let Ok(m) = Manifest::read(&manifest) {
        ports.extend(m.ports.into_iter().filter(|p| p.guest != 22));
    }
    ports
}

/// A free port on 127.0.0.1 for each of `ports` (the kernel picks them: bind port 0), and how to
/// reach each; `user` is the SSH user shown.
pub fn allocate(ports: &[Port], user: &str) -> Result<Vec<Forward>> {
    // Hold every listener until all are picked, so no two forwards get the same port.
    let listeners: Vec<TcpListener> = ports
        .iter()
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port on 127.0.0.1"))
        .collect::<Result<_>>()?;
    let mut out = Vec::new();
    for (p, l) in ports.iter().zip(&listeners) {
        let host = l.local_addr()?.port();
        let reach = match (p.guest, p.scheme.as_deref()) {
            (22, _) => format!("ssh -p {host} {user}@localhost"),
            (_, Some(scheme)) => format!("{scheme}://localhost:{host}"),
            _ => format!("localhost:{host}"),
        };
        out.push(Forward { name: p.name.clone(), guest: p.guest, host, reach });
    }
    Ok(out)
}

/// QEMU `-netdev user` options forwarding `fwds`, bound to 127.0.0.1 only.
pub fn hostfwd(fwds: &[Forward]) -> String {
    fwds.iter().map(|f| format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest)).collect()
}

/// The site file of `--site`: a regular file under the size limit that parses as TOML (the CLI
/// has already run the full check, `pipeline::site::check_for_boot`, before the machine starts).
/// Returns the text and the first admin's name.
pub fn check_site(path: &Path) -> Result<(String, Option<String>)> {
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("site file {}", path.display()))?;
    if !meta.is_file() {
        bail!("site file {} is not a regular file", path.display());
    }
    if meta.len() > MAX_SITE_SIZE {
        bail!("site file {} is larger than {MAX_SITE_SIZE} bytes", path.display());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading site file {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("site file {}", path.display()))?;
    let admin = table
        .get("admins")
        .and_then(|a| a.as_array())
        .and_then(|a| a.first())
        .and_then(|a| a.get("name"))
        .and_then(|n| n.as_str())
        .filter(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
        .map(str::to_string);
    Ok((text, admin))
}

/// Write the site volume for `site` into `dir`; returns its path.
pub fn site_volume(text: &str, dir: &Path) -> Result<PathBuf> {
    let path = dir.join("site.img");
    // Every FAT timestamp at 1980-01-01: the same site file gives the same volume.
    site::write_volume(&path, text.as_bytes(), 315_532_800).context("writing the site volume")?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_get_distinct_free_local_ports() {
        let ports = [
            Port { name: "ssh".into(), guest: 22, protocol: "tcp".into(), scheme: None },
            Port { name: "web".into(), guest: 443, protocol: "tcp".into(), scheme: Some("https".into()) },
        ];
        let f = allocate(&ports, "alice").unwrap();
        assert_ne!(f[0].host, f[1].host);
        assert_eq!(f[0].reach, format!("ssh -p {} alice@localhost", f[0].host));
        assert_eq!(f[1].reach, format!("https://localhost:{}", f[1].host));
        let opts = hostfwd(&f);
        assert_eq!(opts, format!(",hostfwd=tcp:127.0.0.1:{}-:22,hostfwd=tcp:127.0.0.1:{}-:443", f[0].host, f[1].host));
        // The ports were free: they can be bound again.
        TcpListener::bind((Ipv4Addr::LOCALHOST, f[1].host)).unwrap();
    }

    #[test]
    fn site_files_are_checked_before_boot() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("site.toml");
        std::fs::write(&good, "hostname = \"box\"\n[[admins]]\nname = \"alice\"\n").unwrap();
        assert_eq!(check_site(&good).unwrap().1.as_deref(), Some("alice"));
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "hostname = \n").unwrap();
        assert!(format!("{:#}", check_site(&bad).unwrap_err()).contains("bad.toml"));
        assert!(check_site(dir.path()).unwrap_err().to_string().contains("not a regular file"));
        std::fs::write(&bad, vec![b'#'; MAX_SITE_SIZE as usize + 1]).unwrap();
        assert!(check_site(&bad).unwrap_err().to_string().contains("larger than"));
    }
}
