//! aarch64 images built on this host (through qemu-user when it is x86_64) from the same recipe
//! as x86_64, checked by the same outside tools, and boot-tested under qemu-system-aarch64 with
//! AAVMF. Runs with KILN_E2E=1 (scripts/test).
mod common;
use common::*;

#[test]
fn minimal_aarch64_builds_passes_outside_checks_and_boots() {
    if !e2e_enabled() {
        return;
    }
    let dir = e2e_dir().join("aarch64");
    // --no-cache: always bootstrap (the tools tree and .debs still come from the shared cache).
    let out = kiln(&[
        "build",
        "../recipes/minimal.toml",
        "--arch",
        "aarch64",
        "--no-cache",
        "--out",
        dir.join("out").to_str().unwrap(),
        "--cache",
        shared_cache().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "aarch64 build failed:\n{stderr}");
    // On an x86_64 host the bootstrap ran dpkg and arch-neutral tools natively (assist/mod.rs).
    if std::env::consts::ARCH == "x86_64" {
        assert!(stderr.contains("arch-neutral programs ran natively (dash, sed"), "{stderr}");
        // ... the essential packages' maintainer scripts already with a native shell and perl
        // (the dpkg wrapper's split install), and Python's standard library not compiled.
        assert!(stderr.contains(", …) from the essential packages' configuration on"), "{stderr}");
        assert!(stderr.contains("not byte-compiled under emulation: the standard library of python3.13"), "{stderr}");
    } else {
        skip("native help for foreign bootstraps is checked on x86_64 hosts only (this one builds aarch64 natively)");
    }
    let image = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap());
    assert!(image.to_string_lossy().ends_with("minimal-0.1.0-aarch64.img"));

    let img = image.to_str().unwrap();
    assert!(run("sgdisk", &["-v", img]).contains("No problems found"));
    let table: serde_json::Value = serde_json::from_str(&run("sfdisk", &["--json", img])).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts[1]["type"].as_str().unwrap(), "B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "root-arm64 type");

    let plan: serde_json::Value = {
        let out = kiln(&["check", "--print", "../recipes/minimal.toml"]);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let sector = 512;
    let esp_part = serde_json::json!({"offset": parts[0]["start"].as_u64().unwrap() * sector, "size": parts[0]["size"].as_u64().unwrap() * sector});
    let root_part = serde_json::json!({"offset": parts[1]["start"].as_u64().unwrap() * sector, "size": parts[1]["size"].as_u64().unwrap() * sector});
    let esp = cut_partition(&image, &esp_part, &dir.join("esp.img"));
    let listing = run("fsck.vfat", &["-n", "-v", "-l", esp.to_str().unwrap()]);
    assert!(listing.contains("/EFI/BOOT/BOOTAA64.EFI"), "{listing}");
    let root = cut_partition(&image, &root_part, &dir.join("root.img"));
    run("e2fsck", &["-fn", root.to_str().unwrap()]);
    let file = run("debugfs", &["-R", "stat /usr/bin/bash", root.to_str().unwrap()]);
    assert!(!file.is_empty());
    // Nothing of the native help is left: no mount point, no apt setting, and the programs that
    // were replaced by native ones during the bootstrap are the root's own arm64 builds again.
    for gone in ["/.kiln-assist", "/etc/apt/apt.conf.d/00kiln-assist", "/lib64", "/usr/lib/x86_64-linux-gnu"] {
        assert!(!exists_in(&root, gone), "{gone} left in the image");
    }
    for prog in ["/usr/bin/dash", "/usr/bin/sed", "/usr/bin/dpkg"] {
        let copy = dir.join("prog");
        run("debugfs", &["-R", &format!("dump {prog} {}", copy.display()), root.to_str().unwrap()]);
        let elf = std::fs::read(&copy).unwrap();
        assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 0xb7, "{prog} is not an aarch64 program");
    }
    // The initrd was made once, with the aarch64 default driver list.
    let conf = run("debugfs", &["-R", "cat /etc/initramfs-tools/conf.d/kiln", root.to_str().unwrap()]);
    assert!(conf.contains("MODULES=list"), "{conf}");
    assert_eq!(plan["recipe"]["architecture"], "x86_64", "the recipe itself names no architecture but the default");

    let test = kiln(&["test", img, "--timeout", "900"]);
    let stdout = String::from_utf8_lossy(&test.stdout);
    eprintln!("{stdout}");
    assert!(test.status.success(), "kiln test on aarch64 failed:\n{stdout}\n{}", String::from_utf8_lossy(&test.stderr));
    assert!(stdout.contains("result: pass"), "{stdout}");
}
