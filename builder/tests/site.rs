//! Site settings end to end (KILN_E2E=1): one build of a minimal image with sudo, booted twice
//! by `kiln test --site`. With a valid site file the test logs in over the forwarded SSH port
//! with a key it made and sees the site's host name, static address and passwordless sudo; with
//! an invalid one (refused by kiln on the host, so written onto a flashed disk's site partition by
//! hand) the box keeps the image's defaults and the console names the error.
mod common;
use common::guest::Guest;
use common::{build, e2e_dir, e2e_enabled, run, shared_cache};
use std::path::Path;

fn write_site(path: &Path, key: &str, gateway: &str) {
    let site = format!(
        "hostname = \"site-box.example.org\"\ntimezone = \"Europe/Berlin\"\n\n[[admins]]\nname = \"alice\"\nssh_authorized_keys = [\"{key}\"]\n\n[[network]]\nmatch_name = \"en*\"\naddresses = [\"10.0.2.15/24\"]\ngateway = \"{gateway}\"\ndns = [\"10.0.2.3\"]\n"
    );
    std::fs::write(path, site).unwrap();
}

fn check_detail(json: &serde_json::Value, name: &str) -> String {
    let checks = json["checks"].as_array().unwrap();
    let c = checks.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no check {name}: {json:#}"));
    c["detail"].as_str().unwrap_or_default().to_string()
}

#[test]
fn site_settings_apply_on_the_box_and_an_invalid_file_changes_nothing() {
    if !e2e_enabled() {
        return;
    }
    let dir = e2e_dir().join("site");
    let image = build("tests/recipes/e2e/site.toml", &dir.join("out"), &shared_cache());
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id");
    run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", "alice@test", "-f", key.to_str().unwrap()]);
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();

    // Boot 1: a valid site file.
    let (site, log) = (dir.join("good.toml"), dir.join("good.serial.log"));
    write_site(&site, public.trim(), "10.0.2.2");
    let mut guest = Guest::start(&image, &log, &["--site", site.to_str().unwrap()]);
    guest.wait_ready(&log);
    let port = guest.port;
    let script = "hostname; ip -4 -o addr show scope global; sudo -n true && echo SUDO-OK; \
                  cat /run/systemd/network/10-kiln-site-0.network; \
                  sudo -n touch /run/kiln-e2e-done";
    let ssh = guest.ssh(&key, "alice", script);
    let said = String::from_utf8_lossy(&ssh.stdout).into_owned();
    eprintln!("guest said:\n{said}{}", String::from_utf8_lossy(&ssh.stderr));
    let json = guest.finish();
    assert!(ssh.status.success(), "ssh -p {port} alice@127.0.0.1 failed");
    assert_eq!(said.lines().next(), Some("site-box.example.org"), "{said}");
    // QEMU's DHCP would hand out the same address: static means no lease (`dynamic`) on it.
    let addr =
        said.lines().find(|l| l.contains("inet 10.0.2.15/24")).unwrap_or_else(|| panic!("no 10.0.2.15/24: {said}"));
    assert!(!addr.contains("dynamic"), "the site's static address, not a DHCP lease: {addr}");
    assert!(said.contains("Address=10.0.2.15/24\nGateway=10.0.2.2\n"), "networkd file from the site: {said}");
    assert!(said.contains("SUDO-OK"), "key-only admin has passwordless sudo: {said}");
    let ports = json["ports"].as_array().unwrap();
    assert!(ports.iter().any(|p| p["name"] == "ssh" && p["guest"] == 22 && p["host"] == port), "{json:#}");
    assert!(ports.iter().any(|p| p["name"] == "web" && p["guest"] == 8080), "recipe's [[ports]]: {json:#}");
    let console = std::fs::read_to_string(&log).unwrap();
    assert!(console.contains("kiln-site: applied site.toml"), "console:\n{console}");
    eprintln!("kiln-site with a valid site file: {}", check_detail(&json, "kiln-site time"));

    // Boot 2: an invalid site file (a bad gateway) applies nothing and says where. kiln refuses
    // one on the host (`--site`, `kiln flash --site`), so the test puts it on a flashed disk's
    // site partition itself, as someone editing the partition or a USB stick would.
    let (bad, log) = (dir.join("bad.toml"), dir.join("bad.serial.log"));
    write_site(&bad, public.trim(), "10.0.2.256");
    let refused = common::kiln(&["test", image.to_str().unwrap(), "--site", bad.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2), "kiln test --site takes an invalid site file");
    let disk = LoopDisk::new(&dir.join("bad.disk"), 3 * std::fs::metadata(&image).unwrap().len());
    let flashed =
        common::kiln(&["flash", image.to_str().unwrap(), &disk.dev, "--yes", "--site", site.to_str().unwrap()]);
    assert!(flashed.status.success(), "kiln flash: {}", String::from_utf8_lossy(&flashed.stderr));
    // The host may lack vfat: a new volume (kiln's own FAT writer) goes over the partition.
    run("partx", &["--update", &disk.dev]);
    let volume = dir.join("bad.volume");
    kiln::disk::site::write_volume(&volume, &std::fs::read(&bad).unwrap(), 0).unwrap();
    std::fs::write(format!("{}p3", disk.dev), std::fs::read(&volume).unwrap()).unwrap();
    let blkid = run("blkid", &["-p", "-o", "export", &format!("{}p3", disk.dev)]);
    assert!(blkid.contains("LABEL=KILN-SITE"), "{blkid}");
    let json = Guest::start(Path::new(&disk.dev), &log, &["--persist"]).finish();
    assert_eq!(json["result"], "pass", "default host name, no failed units: {json:#}");
    eprintln!("kiln-site with an invalid site file: {}", check_detail(&json, "kiln-site time"));
    let console = std::fs::read_to_string(&log).unwrap();
    assert!(
        console.contains("kiln-site: site.toml:11: network[0].gateway: `10.0.2.256` is not an IPv4 address"),
        "the console names the error:\n{console}"
    );
}

/// A loop device over a new sparse file, detached (and the file removed) on drop.
struct LoopDisk {
    dev: String,
    file: std::path::PathBuf,
}

impl LoopDisk {
    fn new(file: &Path, size: u64) -> LoopDisk {
        let _ = std::fs::remove_file(file);
        std::fs::File::create(file).unwrap().set_len(size).unwrap();
        let dev = run("losetup", &["--find", "--show", "--partscan", file.to_str().unwrap()]).trim().to_string();
        LoopDisk { dev, file: file.to_path_buf() }
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").args(["-d", &self.dev]).output();
        let _ = std::fs::remove_file(&self.file);
    }
}
