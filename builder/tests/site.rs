//! Site settings end to end (KILN_E2E=1): one build of a minimal image with sudo, booted twice
//! by `kiln test --site`. With a valid site file the test logs in over the forwarded SSH port
//! with a key it made and sees the site's host name, static address and passwordless sudo; with
//! an invalid one the box keeps the image's defaults and the console names the error.
mod common;
use common::{build, e2e_dir, e2e_enabled, run, shared_cache};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn write_site(path: &Path, key: &str, gateway: &str) {
    let site = format!(
        "hostname = \"site-box.example.org\"\ntimezone = \"Europe/Berlin\"\n\n[[admins]]\nname = \"alice\"\nssh_authorized_keys = [\"{key}\"]\n\n[[network]]\nmatch_name = \"en*\"\naddresses = [\"10.0.2.15/24\"]\ngateway = \"{gateway}\"\ndns = [\"10.0.2.3\"]\n"
    );
    std::fs::write(path, site).unwrap();
}

/// `kiln test IMAGE --site SITE --json`, started; returns the child, the forwarded SSH port
/// (from kiln's stderr) and a thread collecting the rest of stderr.
fn start_test(image: &Path, site: &Path, log: &Path) -> (std::process::Child, u16, std::thread::JoinHandle<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["test", image.to_str().unwrap(), "--json", "--timeout", "1200", "--site"])
        .arg(site)
        .arg("--serial-log")
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let port = loop {
        let line = lines.next().unwrap_or_else(|| panic!("kiln test printed no SSH port:\n{seen}")).unwrap();
        seen += &format!("{line}\n");
        if let Some(rest) = line.split("ssh -p ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse::<u16>().unwrap();
        }
    };
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    (child, port, rest)
}

/// Wait for the guest agent's KILN-READY on the serial console (the boot has finished).
fn wait_ready(child: &mut std::process::Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        if std::fs::read_to_string(log).unwrap_or_default().contains("KILN-READY") {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let tail: Vec<String> =
                std::fs::read_to_string(log).unwrap_or_default().lines().rev().take(15).map(String::from).collect();
            panic!(
                "kiln test ended ({status}) before the guest was ready; serial log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        assert!(Instant::now() < deadline, "guest not ready within 1200s");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn finish(child: std::process::Child, rest: std::thread::JoinHandle<String>) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    let stderr = rest.join().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kiln test --json: {e}\n{}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    assert!(out.status.success(), "kiln test failed: {json:#}\n{stderr}");
    json
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
    let (mut child, port, rest) = start_test(&image, &site, &log);
    wait_ready(&mut child, &log);
    let script = "hostname; ip -4 -o addr show scope global; sudo -n true && echo SUDO-OK; \
                  cat /run/systemd/network/10-kiln-site-0.network; \
                  sudo -n touch /run/kiln-e2e-done";
    let ssh = Command::new("ssh")
        .args(["-p", &port.to_string(), "-i", key.to_str().unwrap(), "-o", "BatchMode=yes"])
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=30"])
        .args(["alice@127.0.0.1", script])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&ssh.stdout).into_owned();
    eprintln!("guest said:\n{said}{}", String::from_utf8_lossy(&ssh.stderr));
    let json = finish(child, rest);
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

    // Boot 2: an invalid site file (a bad gateway) applies nothing and says where.
    let (site, log) = (dir.join("bad.toml"), dir.join("bad.serial.log"));
    write_site(&site, public.trim(), "10.0.2.256");
    let (child, _, rest) = start_test(&image, &site, &log);
    let json = finish(child, rest);
    assert_eq!(json["result"], "pass", "default host name, no failed units: {json:#}");
    eprintln!("kiln-site with an invalid site file: {}", check_detail(&json, "kiln-site time"));
    let console = std::fs::read_to_string(&log).unwrap();
    assert!(
        console.contains("kiln-site: site.toml:11: network[0].gateway: `10.0.2.256` is not an IPv4 address"),
        "the console names the error:\n{console}"
    );
}
