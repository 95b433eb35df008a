//! End to end: real builds (mmdebstrap from the Debian mirror) and real boots (QEMU + OVMF, TCG),
//! checked by outside tools. Needs root, the host tools (scripts/setup-host) and the mirror, so
//! these run when KILN_E2E=1, as `scripts/test` (the README's test command and CI) sets it.
mod common;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn minimal_image_passes_outside_checks() {
    let Some(fx) = minimal() else { return };
    let img = &fx.image;
    let v = run("sgdisk", &["-v", img.to_str().unwrap()]);
    assert!(v.contains("No problems found"), "sgdisk -v: {v}");

    // Partition types, GUIDs and placement are exactly the plan's.
    let table: serde_json::Value = serde_json::from_str(&run("sfdisk", &["--json", img.to_str().unwrap()])).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let plan = &fx.plan["layout"];
    assert_eq!(table["partitiontable"]["id"].as_str().unwrap().to_lowercase(), plan["disk_guid"].as_str().unwrap());
    assert_eq!(parts.len(), 2);
    for (got, want) in parts.iter().zip(plan["partitions"].as_array().unwrap()) {
        assert_eq!(got["type"].as_str().unwrap().to_lowercase(), want["type_guid"].as_str().unwrap());
        assert_eq!(got["uuid"].as_str().unwrap().to_lowercase(), want["part_guid"].as_str().unwrap());
        assert_eq!(got["start"].as_u64().unwrap() * 512, want["offset"].as_u64().unwrap());
    }
    assert_eq!(parts[0]["type"].as_str().unwrap(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "ESP type");
    assert_eq!(parts[1]["type"].as_str().unwrap(), "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "root-x86-64 type");

    let dir = tempfile::tempdir().unwrap();
    let esp = cut_partition(img, &plan["partitions"][0], &dir.path().join("esp.img"));
    let fsck = run("fsck.vfat", &["-n", "-v", "-l", esp.to_str().unwrap()]);
    for f in ["EFI/BOOT/BOOTX64.EFI", "loader/loader.conf", "loader/entries/minimal.conf", "/linux", "/initrd"] {
        assert!(fsck.to_lowercase().contains(&f.to_lowercase()), "{f} missing from ESP listing:\n{fsck}");
    }
    let root = cut_partition(img, &plan["partitions"][1], &dir.path().join("root.img"));
    run("e2fsck", &["-fn", root.to_str().unwrap()]);

    // Contents, read with debugfs (no mount): settings applied, per-box secrets absent.
    let debugfs = |req: &str| run("debugfs", &["-R", req, root.to_str().unwrap()]);
    assert_eq!(debugfs("cat /etc/hostname").trim(), "kiln-minimal");
    assert_eq!(debugfs("cat /etc/machine-id"), "", "machine-id must be empty in the image");
    let ssh = debugfs("ls -l /etc/ssh");
    assert!(ssh.contains("sshd_config") && !ssh.contains("ssh_host_"), "host keys must not be in the image:\n{ssh}");
    assert!(debugfs("cat /usr/lib/kiln/checks.tsv").contains("unit\t60\tnetworkd running\tsystemd-networkd.service"));
}

#[test]
fn minimal_image_boots_and_passes_its_checks() {
    let Some(fx) = minimal() else { return };
    let out = kiln(&["test", fx.image.to_str().unwrap(), "--timeout", "600"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(out.status.success(), "kiln test failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok   ssh answers (port 22 open)"), "{stdout}");
    assert!(stdout.contains("boot-to-ready:") && stdout.contains("result: pass (5 checks)"), "{stdout}");

    let out = kiln(&["test", "--json", fx.image.to_str().unwrap(), "--timeout", "600"]);
    assert!(out.status.success(), "kiln test --json failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!((doc["command"].as_str(), doc["result"].as_str()), (Some("test"), Some("pass")), "{doc}");
    assert!(["kvm", "tcg"].contains(&doc["accel"].as_str().unwrap()), "{doc}");
    assert!(doc["boot_to_ready_seconds"].as_f64().unwrap() > 0.0, "{doc}");
    let checks = doc["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 5, "{doc}");
    assert!(checks.iter().all(|c| c["ok"] == true && c["name"].is_string() && c["detail"].is_string()), "{doc}");
    assert!(checks.iter().any(|c| c["name"] == "ssh answers"), "{doc}");
    assert_eq!(doc["failed"], serde_json::json!([]));
}

#[test]
fn build_json_describes_the_image() {
    let Some(fx) = minimal() else { return };
    // A warm build (the root comes from the cache) of the same recipe: the same image.
    let out_dir = fx.dir.join("json");
    let out = kiln(&[
        "build",
        "../recipes/minimal.toml",
        "--json",
        "--out",
        out_dir.to_str().unwrap(),
        "--cache",
        fx.cache.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "kiln build --json failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    eprintln!("{doc:#}");
    assert_eq!((doc["command"].as_str(), doc["result"].as_str()), (Some("build"), Some("ok")));
    let image = Path::new(doc["image"].as_str().unwrap());
    assert_eq!(image, out_dir.join("minimal-0.1.0-x86_64.img"));
    assert_eq!(doc["arch"], "x86_64");
    assert_eq!(doc["size"].as_u64(), Some(std::fs::metadata(image).unwrap().len()));
    let first = run("sha256sum", &[fx.image.to_str().unwrap()]);
    assert_eq!(doc["sha256"].as_str(), first.split_whitespace().next(), "a warm build gives the cold build's image");
    assert_eq!(doc["root_from_cache"], true);
    assert!(doc["tools"].as_str().unwrap().contains("e2fsprogs"), "{doc}");
    assert_eq!(doc["partitions"].as_array().unwrap().len(), 2);
    let outputs: Vec<&str> = doc["outputs"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
    assert_eq!(outputs[0], image.to_str().unwrap());
    assert!(outputs.iter().any(|o| o.ends_with("SHA256SUMS")) && outputs.iter().all(|o| Path::new(o).is_file()));
    let stages = doc["stages"].as_array().unwrap();
    assert!(
        stages.len() >= 10 && stages.iter().all(|s| s["name"].is_string() && s["seconds"].as_f64().unwrap() >= 0.0)
    );
    assert!(doc["seconds"].as_f64().unwrap() > 0.0);
}

#[test]
fn failing_check_makes_kiln_test_fail_and_names_it() {
    let Some(fx) = minimal() else { return };
    let out_dir = fx.dir.join("failing");
    let image = build("tests/recipes/e2e/failing-check.toml", &out_dir, &fx.cache);
    let out = kiln(&["test", image.to_str().unwrap(), "--timeout", "600"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("FAIL unit: kiln-no-such.service (inactive)"), "{stdout}");
    assert!(stdout.contains("ok   ssh answers"), "the other checks still run: {stdout}");
    assert!(stdout.contains("result: FAIL (1 of 6 checks failed: unit: kiln-no-such.service)"), "{stdout}");
}

#[test]
fn sigint_during_bootstrap_leaves_nothing_behind() {
    if !e2e_enabled() {
        return;
    }
    let base = e2e_dir().join("sigint-bootstrap");
    let (out_dir, work) = (base.join("out"), base.join("work"));
    // --no-cache: mmdebstrap really runs (and mounts /proc, /dev ... in its chroot).
    let mut child =
        spawn_build("../recipes/minimal.toml", &out_dir, &["--no-cache", "--work-dir", work.to_str().unwrap()]);
    // Interrupt once dpkg is unpacking inside the chroot, the moment mmdebstrap has mounts.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !has_mounts_below(&work) {
        assert!(Instant::now() < deadline, "mmdebstrap never mounted anything below {}", work.display());
        assert!(child.try_wait().unwrap().is_none(), "build ended before it could be interrupted");
        std::thread::sleep(Duration::from_millis(100));
    }
    interrupt_and_check(child, &out_dir, &work);
}

#[test]
fn sigint_during_image_assembly_leaves_no_partial_image() {
    let Some(fx) = minimal() else { return };
    let base = fx.dir.join("sigint-assemble");
    let (out_dir, work) = (base.join("out"), base.join("work"));
    let cache = fx.cache.to_str().unwrap().to_string();
    let mut child =
        spawn_build("../recipes/minimal.toml", &out_dir, &["--cache", &cache, "--work-dir", work.to_str().unwrap()]);
    // The partial image appears in the output directory when assembly starts.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !dir_has_partial(&out_dir) {
        assert!(Instant::now() < deadline, "assembly never started");
        assert!(child.try_wait().unwrap().is_none(), "build ended before assembly could be interrupted");
        std::thread::sleep(Duration::from_millis(20));
    }
    interrupt_and_check(child, &out_dir, &work);
}

fn dir_has_partial(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".partial")))
        .unwrap_or(false)
}
