//! End to end: real builds (mmdebstrap from the Debian mirror) and real boots (QEMU + OVMF, TCG),
//! checked by outside tools. Needs root, the host tools (scripts/setup-host) and the mirror, so
//! these run when KILN_E2E=1, as `scripts/test` (the README's test command and CI) sets it.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
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
    // `debugfs cat` of a missing file prints nothing too: the file must be there, and empty.
    assert!(
        exists_in(&root, "/etc/machine-id"),
        "/etc/machine-id missing (systemd needs it, empty, to make one per box)"
    );
    assert_eq!(debugfs("cat /etc/machine-id"), "", "machine-id must be empty in the image");
    // The rest of the machine-specific state: random seeds, logs, apt's lists and caches.
    for gone in ["/var/lib/systemd/random-seed", "/var/lib/dbus/machine-id"] {
        assert!(!exists_in(&root, gone), "{gone} must not be in the image");
    }
    for dir in ["/var/log", "/var/lib/apt/lists", "/var/cache/apt", "/tmp", "/var/tmp"] {
        let files = files_below(&root, dir);
        assert!(files.is_empty(), "files left below {dir}: {files:?}");
    }
    let ssh = debugfs("ls -l /etc/ssh");
    assert!(ssh.contains("sshd_config") && !ssh.contains("ssh_host_"), "host keys must not be in the image:\n{ssh}");
    assert!(debugfs("cat /usr/lib/kiln/checks.tsv").contains("unit\t60\tnetworkd running\tsystemd-networkd.service"));
    // The test agent runs only on a boot whose kernel command line has `kiln.test` (which only
    // `kiln test` adds, through SMBIOS): the image's own command line does not have it.
    let agent = debugfs("cat /usr/lib/systemd/system/kiln-check.service");
    assert!(agent.lines().any(|l| l == "ConditionKernelCommandLine=kiln.test"), "{agent}");
    let entry = fx.plan["kernel_cmdline"].to_string();
    assert!(!entry.contains("kiln.test"), "the image's command line turns the agent on: {entry}");
}

/// The image takes security updates: its deb822 sources name the suite, its updates and its
/// security archive (read from outside with debugfs), kiln's unattended-upgrades configuration
/// is there, the manifest records the policy and the SBOM the packages.
#[test]
fn minimal_image_lists_three_suites_and_installs_security_updates() {
    let Some(fx) = minimal() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = cut_partition(&fx.image, &fx.plan["layout"]["partitions"][1], &dir.path().join("root.img"));
    let debugfs = |req: &str| run("debugfs", &["-R", req, root.to_str().unwrap()]);
    let sources = debugfs("cat /etc/apt/sources.list.d/debian.sources");
    let stanzas: Vec<_> = kiln::debian::deb822::paragraphs(&sources).collect();
    let suites: Vec<&str> = stanzas.iter().flat_map(|p| p.get("Suites").unwrap().split(' ')).collect();
    assert_eq!(suites, ["trixie", "trixie-updates", "trixie-security"], "{sources}");
    assert_eq!(stanzas[1].get("URIs"), Some("http://deb.debian.org/debian-security"), "{sources}");
    for p in &stanzas {
        assert_eq!(p.get("Signed-By"), Some("/usr/share/keyrings/debian-archive-keyring.gpg"), "{sources}");
        assert_eq!(p.get("Types"), Some("deb"), "{sources}");
    }
    assert!(exists_in(&root, "/usr/share/keyrings/debian-archive-keyring.gpg"), "Signed-By names a missing keyring");
    assert!(!exists_in(&root, "/etc/apt/sources.list"), "a one-line sources.list beside the deb822 sources");
    let auto = debugfs("cat /etc/apt/apt.conf.d/20auto-upgrades");
    assert!(auto.contains("APT::Periodic::Unattended-Upgrade \"1\";"), "{auto}");
    let origins = debugfs("cat /etc/apt/apt.conf.d/50unattended-upgrades");
    assert!(
        origins.contains("label=Debian-Security") && !origins.contains("codename=${distro_codename},"),
        "{origins}"
    );
    assert!(exists_in(&root, "/etc/systemd/system/timers.target.wants/apt-daily-upgrade.timer"));
    // Python's byte code (compiled by maintainer scripts, not reproducible) is not in the image.
    assert!(exists_in(&root, "/usr/lib/python3.13/email"), "python3 is in the image");
    assert!(!exists_in(&root, "/usr/lib/python3.13/email/__pycache__"), "byte code left in the image");

    let stem = fx.image.file_stem().unwrap().to_string_lossy().into_owned();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.image.with_file_name(format!("{stem}.manifest.json"))).unwrap())
            .unwrap();
    assert_eq!(manifest["updates"]["automatic_updates"], "security", "{manifest}");
    let archives: Vec<&str> =
        manifest["updates"]["archives"].as_array().unwrap().iter().map(|a| a["suite"].as_str().unwrap()).collect();
    assert_eq!(archives, ["trixie", "trixie-updates", "trixie-security"], "{manifest}");
    let sbom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.image.with_file_name(format!("{stem}.spdx.json"))).unwrap()).unwrap();
    let names: Vec<&str> = sbom["packages"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for want in ["unattended-upgrades", "python3-apt", "debian-archive-keyring"] {
        assert!(names.contains(&want), "{want} missing from the SBOM");
    }
}

/// `base.docs = false` (the default): no documentation, manual or info pages in the image, but
/// every package's copyright file; the path excludes stay for packages installed on the box.
#[test]
fn minimal_image_has_copyright_files_but_no_docs_or_manual_pages() {
    let Some(fx) = minimal() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = cut_partition(&fx.image, &fx.plan["layout"]["partitions"][1], &dir.path().join("root.img"));
    assert!(exists_in(&root, "/usr/share/doc/systemd/copyright"), "a copyright file is missing");
    assert!(!exists_in(&root, "/usr/share/doc/systemd/changelog.Debian.gz"), "documentation in the image");
    assert!(!exists_in(&root, "/usr/share/man/man1/ls.1.gz"), "a manual page in the image");
    let cfg = run("debugfs", &["-R", "cat /etc/dpkg/dpkg.cfg.d/99mmdebstrap", root.to_str().unwrap()]);
    assert!(cfg.contains("path-exclude=/usr/share/man/*"), "{cfg}");
    assert_eq!(fx.plan["recipe"]["base"]["docs"], false, "the plan shows the default");
}

/// Every non-directory below `dir` in the ext4 image `fs` (debugfs `ls -p`, recursively).
fn files_below(fs: &Path, dir: &str) -> Vec<String> {
    assert!(exists_in(fs, dir), "{dir} is not in the image");
    let mut files = Vec::new();
    for line in run("debugfs", &["-R", &format!("ls -p {dir}"), fs.to_str().unwrap()]).lines() {
        // /INODE/MODE/UID/GID/NAME/SIZE/
        let f: Vec<&str> = line.split('/').collect();
        if f.len() < 7 || f[5] == "." || f[5] == ".." {
            continue;
        }
        let path = format!("{}/{}", dir.trim_end_matches('/'), f[5]);
        if u32::from_str_radix(f[2], 8).unwrap() & 0o170000 == 0o040000 {
            files.extend(files_below(fs, &path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn minimal_image_boots_and_passes_its_checks() {
    let Some(fx) = minimal() else { return };
    // The tested image is the shipped image: a boot (without --persist) changes no byte of it.
    let before = sha256sum(&fx.image);
    let out = kiln(&["test", fx.image.to_str().unwrap(), "--timeout", "600"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(out.status.success(), "kiln test failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok   ssh answers (port 22 open)"), "{stdout}");
    assert!(stdout.contains("ok   sshd speaks SSH (socket-activated at this connection)"), "{stdout}");
    assert!(stdout.contains("boot-to-ready:") && stdout.contains("result: pass (7 checks)"), "{stdout}");
    assert!(stdout.contains("ok   security updates: timer active, security archive configured"), "{stdout}");
    assert_eq!(sha256sum(&fx.image), before, "kiln test changed the image");
    assert!(!stdout.contains("analyze:"), "the boot is analyzed only with --analyze:\n{stdout}");

    // --analyze: the guest's own account of its boot (systemd-analyze), after the checks.
    let out = kiln(&["test", "--json", "--analyze", fx.image.to_str().unwrap(), "--timeout", "600"]);
    assert!(out.status.success(), "kiln test --json failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!((doc["command"].as_str(), doc["result"].as_str()), (Some("test"), Some("pass")), "{doc}");
    assert!(["kvm", "tcg"].contains(&doc["accel"].as_str().unwrap()), "{doc}");
    assert!(doc["boot_to_ready_seconds"].as_f64().unwrap() > 0.0, "{doc}");
    let checks = doc["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 7, "{doc}");
    assert!(checks.iter().all(|c| c["ok"] == true && c["name"].is_string() && c["detail"].is_string()), "{doc}");
    assert!(checks.iter().any(|c| c["name"] == "ssh answers"), "{doc}");
    assert_eq!(doc["failed"], serde_json::json!([]));
    let analysis: Vec<&str> = doc["analysis"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    let text = analysis.join("\n");
    assert!(analysis[0].starts_with("Startup finished in "), "systemd-analyze time first:\n{text}");
    let units =
        analysis.iter().filter(|l| l.trim_end().ends_with(".service") || l.trim_end().ends_with(".mount")).count();
    assert!(units >= 5, "blame lists the slowest units with their times:\n{text}");
    assert!(text.contains("multi-user.target @"), "the critical chain of multi-user.target:\n{text}");
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
    // README: "Log in over SSH with a key you add to the recipe".
    assert!(stdout.contains("ok   ssh login with the recipe's key"), "{stdout}");
    assert!(stdout.contains("result: FAIL (1 of 9 checks failed: unit: kiln-no-such.service)"), "{stdout}");
}

/// README: "on a timeout it shows the tail of the serial log". A timeout far shorter than any
/// boot: kiln test fails, says what it waited for, and shows the console's last lines.
#[test]
fn a_timeout_shows_the_tail_of_the_serial_log() {
    let Some(fx) = minimal() else { return };
    let log = fx.dir.join("timeout.serial.log");
    let out = kiln(&["test", fx.image.to_str().unwrap(), "--timeout", "8", "--serial-log", log.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the guest did not report ready within 8s"), "{stderr}");
    assert!(stderr.contains(&format!("serial log: {}", log.display())), "{stderr}");
    let tail = stderr.split("last serial lines:").nth(1).unwrap_or_default();
    let logged = std::fs::read_to_string(&log).unwrap();
    let shown: Vec<&str> = tail.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert!(!shown.is_empty(), "no serial lines shown:\n{stderr}");
    assert!(shown.iter().all(|l| logged.contains(l)), "shown lines are not the log's:\n{stderr}");
}

/// README: `kiln boot` gives an interactive serial console that Ctrl-a x quits. Reaches the
/// login prompt (the console works both ways: QEMU reads the keys sent), then quits.
#[test]
fn kiln_boot_reaches_the_login_prompt_and_ctrl_a_x_quits() {
    use std::io::{Read, Write};
    let Some(fx) = minimal() else { return };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["boot", fx.image.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("login:") {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no login prompt within 600s:\n{}", String::from_utf8_lossy(&seen));
        if let Ok(chunk) = rx.recv_timeout(left.min(Duration::from_secs(1))) {
            seen.extend(chunk);
        }
    }
    child.stdin.as_mut().unwrap().write_all(b"\x01x").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "kiln boot did not quit on Ctrl-a x");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "kiln boot after Ctrl-a x: {status}");
}

#[test]
fn sigint_during_bootstrap_leaves_nothing_behind() {
    if !e2e_enabled() {
        return;
    }
    let base = e2e_dir().join("sigint-bootstrap");
    let (out_dir, work) = (base.join("out"), base.join("work"));
    // --no-cache: mmdebstrap really runs (and mounts /proc, /dev ... in its chroot). The tools
    // tree comes from the run's cache (never the caller's ~/.cache/kiln).
    let cache = shared_cache();
    let mut child = spawn_build(
        "../recipes/minimal.toml",
        &out_dir,
        &["--no-cache", "--cache", cache.to_str().unwrap(), "--work-dir", work.to_str().unwrap()],
    );
    // Interrupt once dpkg is unpacking inside the chroot, the moment mmdebstrap has mounts.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !has_mounts_below(&work) {
        assert!(Instant::now() < deadline, "mmdebstrap never mounted anything below {}", work.display());
        assert!(child.try_wait().unwrap().is_none(), "build ended before it could be interrupted");
        std::thread::sleep(Duration::from_millis(100));
    }
    interrupt_and_check(child, &out_dir, &work);
}

const PASSPHRASE: &str = "e2e pass phrase";

/// recipes/minimal.toml built a second time (warm: the root from the run's cache) into its own
/// directory, signed with a key from `kiln keygen`, in every format; with the state of the
/// cache's roots/ and tools/ before and after.
struct Signed {
    out: PathBuf,
    image: PathBuf,
    public_key: PathBuf,
    stderr: String,
    cache_before: Vec<String>,
    cache_after: Vec<String>,
}

fn signed() -> Option<&'static Signed> {
    static FX: OnceLock<Signed> = OnceLock::new();
    let fx = minimal()?;
    Some(FX.get_or_init(|| {
        let base = fx.dir.join("signed");
        if base.exists() {
            run("rm", &["-rf", "--one-file-system", base.to_str().unwrap()]);
        }
        let keys = base.join("keys");
        let gen = kiln_env(&["keygen", "--out", keys.to_str().unwrap()], &[("KILN_PASSPHRASE", PASSPHRASE)]);
        assert!(gen.status.success(), "kiln keygen: {}", String::from_utf8_lossy(&gen.stderr));
        let cache_state = || [tree_state(&fx.cache.join("roots")), tree_state(&fx.cache.join("tools"))].concat();
        let cache_before = cache_state();
        assert!(cache_before.len() > 1000, "the cache holds no root and tools tree: {} entries", cache_before.len());
        let out_dir = base.join("out");
        let out = kiln_env(
            &[
                "build",
                "../recipes/minimal.toml",
                "--out",
                out_dir.to_str().unwrap(),
                "--cache",
                fx.cache.to_str().unwrap(),
                "--sign",
                keys.join("kiln.key").to_str().unwrap(),
                "--format",
                "zst",
                "--format",
                "qcow2",
            ],
            &[("KILN_PASSPHRASE", PASSPHRASE)],
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{stderr}");
        assert!(out.status.success(), "signed build failed:\n{stderr}");
        let image = PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap());
        Signed {
            out: out_dir,
            image,
            public_key: keys.join("kiln.pub"),
            stderr,
            cache_before,
            cache_after: cache_state(),
        }
    }))
}

/// "The cache is read-only to builds": a warm build adds, removes, resizes and rewrites nothing
/// in the cache's roots/ and tools/ trees (the build sees the root through an overlay).
#[test]
fn warm_build_leaves_the_cached_root_and_tools_tree_unchanged() {
    let Some(s) = signed() else { return };
    // The root stage ran (alone, or side by side with the tools tree) and found its root cached.
    let root_stage = s.stderr.lines().any(|l| l.contains("Debian root (mmdebstrap, or cached)") && l.contains(" done"));
    assert!(root_stage, "{}", s.stderr);
    let (before, after) = (&s.cache_before, &s.cache_after);
    let gone: Vec<_> = before.iter().filter(|e| !after.contains(e)).take(20).collect();
    let new: Vec<_> = after.iter().filter(|e| !before.contains(e)).take(20).collect();
    assert!(gone.is_empty() && new.is_empty(), "the build changed the cache:\nbefore: {gone:#?}\nafter: {new:#?}");
}

/// Every output of a signed build in every format, checked by the tools a user would use:
/// Debian's minisign, sha256sum, pyspdxtools, qemu-img, zstd, systemd-dissect, mtools, blkid.
#[test]
fn signed_outputs_in_every_format_pass_outside_tools() {
    let Some(s) = signed() else { return };
    let fx = minimal().unwrap();
    let stem = "minimal-0.1.0-x86_64";
    let mut names: Vec<String> =
        std::fs::read_dir(&s.out).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let want = ["SHA256SUMS", "SHA256SUMS.minisig"]
        .iter()
        .map(|n| n.to_string())
        .chain(["bmap", "img", "img.zst", "manifest.json", "qcow2", "spdx.json"].iter().map(|x| format!("{stem}.{x}")))
        .collect::<Vec<_>>();
    assert_eq!(names, want, "outputs of a signed build in every format");
    let in_out = |tool: &str, args: &[&str]| {
        let o = Command::new(tool).args(args).current_dir(&s.out).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{tool} {args:?} failed ({}):\n{text}", o.status);
        text
    };
    // Debian's minisign accepts kiln's signature; sha256sum agrees with every listed file.
    let v = in_out("minisign", &["-Vm", "SHA256SUMS", "-p", s.public_key.to_str().unwrap()]);
    assert!(v.contains("Signature and comment signature verified"), "{v}");
    let c = in_out("sha256sum", &["-c", "--strict", "SHA256SUMS"]);
    for n in want.iter().filter(|n| !n.starts_with("SHA256SUMS")) {
        assert!(c.contains(&format!("{n}: OK")), "{n} not checked by sha256sum -c:\n{c}");
    }
    let sbom = format!("{stem}.spdx.json");
    in_out("pyspdxtools", &["-i", &sbom]);
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(s.out.join(&sbom)).unwrap()).unwrap();
    let pkgs = doc["packages"].as_array().unwrap();
    for p in ["systemd", "openssh-server", "linux-image-amd64"] {
        assert!(pkgs.iter().any(|x| x["name"] == p), "{p} missing from the SBOM");
    }
    // qcow2 and zst: intact, and holding the image.
    let qcow = format!("{stem}.qcow2");
    let check = in_out("qemu-img", &["check", &qcow]);
    assert!(check.contains("No errors were found"), "{check}");
    let info: serde_json::Value = serde_json::from_str(&in_out("qemu-img", &["info", "--output=json", &qcow])).unwrap();
    let size = std::fs::metadata(&s.image).unwrap().len();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"].as_u64(), Some(size), "{info}");
    in_out("zstd", &["-t", &format!("{stem}.img.zst")]);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.out.join(format!("{stem}.manifest.json"))).unwrap()).unwrap();
    assert_eq!(m["image"]["size"].as_u64(), Some(size));
    assert_eq!(m["image"]["sha256"].as_str().unwrap(), sha256sum(&s.image));
    assert_eq!(
        m["signing_key"]["public_key"].as_str().unwrap(),
        std::fs::read_to_string(&s.public_key).unwrap().lines().nth(1).unwrap()
    );

    // systemd's own image dissection finds the partitions by their GPT types and reads the OS.
    let dissect: serde_json::Value =
        serde_json::from_str(&run("systemd-dissect", &["--json=short", s.image.to_str().unwrap()])).unwrap();
    eprintln!("{dissect:#}");
    let part = |designator: &str| {
        dissect["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["designator"] == designator)
            .unwrap_or_else(|| panic!("systemd-dissect found no {designator} partition:\n{dissect:#}"))
            .clone()
    };
    let (root_part, esp_part) = (part("root"), part("esp"));
    assert_eq!(root_part["fstype"], "ext4", "{dissect:#}");
    assert_eq!(esp_part["fstype"], "vfat", "{dissect:#}");
    assert_eq!(root_part["partition_uuid"].as_str(), m["partitions"][1]["part_guid"].as_str());
    assert_eq!(esp_part["partition_uuid"].as_str(), m["partitions"][0]["part_guid"].as_str());
    assert_eq!(dissect["hostname"], "kiln-minimal");
    assert_eq!(dissect["useBootableUefi"], true, "{dissect:#}");

    // mtools reads the ESP in place (no mount): the loader entry names the kernel and command line.
    let esp_at = format!("{}@@{}", s.image.display(), m["partitions"][0]["offset"].as_u64().unwrap());
    let dir = run("mdir", &["-i", &esp_at, "-b", "::/loader/entries"]);
    assert!(dir.contains("minimal.conf"), "{dir}");
    let entry = run("mtype", &["-i", &esp_at, "::/loader/entries/minimal.conf"]);
    let kver = m["kernel_version"].as_str().unwrap();
    assert!(entry.contains(&format!("linux /minimal/{kver}/linux")), "{entry}");
    assert!(entry.contains(&format!("options {}", fx.plan["kernel_cmdline"].as_str().unwrap())), "{entry}");
    let kdir = run("mdir", &["-i", &esp_at, "-b", &format!("::/minimal/{kver}")]);
    assert!(kdir.contains("/linux") && kdir.contains("/initrd"), "kernel and initrd the entry names:\n{kdir}");

    // The file system identifiers are the deterministic ones of the plan, the partitions the manifest's.
    let tmp = tempfile::tempdir_in(s.out.parent().unwrap()).unwrap();
    let esp = cut_partition(&s.image, &m["partitions"][0], &tmp.path().join("esp"));
    let root = cut_partition(&s.image, &m["partitions"][1], &tmp.path().join("root"));
    let blkid =
        |p: &Path, tag: &str| run("blkid", &["-p", "-o", "value", "-s", tag, p.to_str().unwrap()]).trim().to_string();
    assert_eq!(blkid(&root, "TYPE"), "ext4");
    assert_eq!(blkid(&root, "UUID"), fx.plan["root_fs_uuid"].as_str().unwrap());
    let serial = fx.plan["esp_volume_id"].as_u64().unwrap();
    assert_eq!(blkid(&esp, "TYPE"), "vfat");
    assert_eq!(blkid(&esp, "UUID"), format!("{:04X}-{:04X}", serial >> 16, serial & 0xffff));
    let table: serde_json::Value =
        serde_json::from_str(&run("sfdisk", &["--json", s.image.to_str().unwrap()])).unwrap();
    for (got, want) in
        table["partitiontable"]["partitions"].as_array().unwrap().iter().zip(m["partitions"].as_array().unwrap())
    {
        assert_eq!(got["uuid"].as_str().unwrap().to_lowercase(), want["part_guid"].as_str().unwrap());
    }
}

/// `kiln verify` on a real signed image: passes untouched; a flipped byte in the root file
/// system is named by partition; a missing manifest or signature fails and is named, a missing
/// other format is named and skipped (docs/signing.md).
#[test]
fn verify_checks_a_real_image_and_names_what_is_wrong() {
    let Some(s) = signed() else { return };
    let verify = |image: &Path| {
        let out = kiln(&["verify", image.to_str().unwrap(), "--key", s.public_key.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "kiln verify crashed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, out) = verify(&s.image);
    assert!(ok && out.contains("result: ok (signature, checksums and manifest)"), "{out}");
    let m = kiln::release::manifest::Manifest::read(&s.image.with_extension("manifest.json")).unwrap();
    let copy = tempfile::tempdir_in(s.out.parent().unwrap()).unwrap();
    run("cp", &["--sparse=always", "-r", &format!("{}/.", s.out.display()), copy.path().to_str().unwrap()]);
    let name = s.image.file_name().unwrap().to_str().unwrap();
    let image = copy.path().join(name);
    let stem = kiln::release::export::stem(name).to_string();
    // A listed file that is not there (only some formats downloaded) is named, and skipped.
    let qcow2 = format!("{stem}.qcow2");
    std::fs::remove_file(copy.path().join(&qcow2)).unwrap();
    let (ok, out) = verify(&image);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("note {qcow2}: listed but not present: skipped")), "{qcow2} not named:\n{out}");
    // The manifest and, with --key, the signature cannot be missing: the check fails, naming them.
    for required in [format!("{stem}.manifest.json"), "SHA256SUMS.minisig".to_string()] {
        let kept = copy.path().join(format!("{required}.kept"));
        std::fs::rename(copy.path().join(&required), &kept).unwrap();
        let (ok, out) = verify(&image);
        assert!(!ok, "a missing {required} went unnoticed:\n{out}");
        assert!(out.lines().any(|l| l.starts_with("FAIL") && l.contains(&required)), "{required} not named:\n{out}");
        std::fs::rename(&kept, copy.path().join(&required)).unwrap();
    }
    let root = &m.partitions[1].placed;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&image).unwrap();
        let at = root.offset + 1024 + 0x30;
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 1], at).unwrap();
    }
    let (ok, out) = verify(&image);
    assert!(!ok);
    assert!(
        out.contains(&format!("FAIL {name}: partition {} ({}): contents differ", root.number, root.label)),
        "{out}"
    );
}

/// "changing an overlay ... reuses it": a copy of the recipe tree with one overlay file changed
/// builds warm from the cached root (no bootstrap), and the change reaches the image.
#[test]
fn changed_overlay_file_reuses_the_cached_root() {
    let Some(fx) = minimal() else { return };
    let base = fx.dir.join("overlay-changed");
    if base.exists() {
        run("rm", &["-rf", "--one-file-system", base.to_str().unwrap()]);
    }
    let src = base.join("src");
    std::fs::create_dir_all(&src).unwrap();
    run("cp", &["-r", "../recipes", "../overlays", src.to_str().unwrap()]);
    let file = src.join("overlays/debian-base/etc/systemd/network/80-kiln-dhcp.network");
    let changed = std::fs::read_to_string(&file).unwrap() + "# changed by the overlay test\n";
    std::fs::write(&file, &changed).unwrap();
    let roots_before = tree_state(&fx.cache.join("roots")).into_iter().filter(|l| !l.contains('/')).collect::<Vec<_>>();
    let out = kiln(&[
        "build",
        src.join("recipes/minimal.toml").to_str().unwrap(),
        "-v",
        "--out",
        base.join("out").to_str().unwrap(),
        "--cache",
        fx.cache.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("reusing cached root"), "the root did not come from the cache:\n{stderr}");
    let roots_after = tree_state(&fx.cache.join("roots")).into_iter().filter(|l| !l.contains('/')).collect::<Vec<_>>();
    assert_eq!(roots_before, roots_after, "a root was added to the cache");
    let image = PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap());
    assert_ne!(sha256sum(&image), sha256sum(&fx.image), "the changed overlay did not change the image");
    let root = cut_partition(&image, &fx.plan["layout"]["partitions"][1], &base.join("root.img"));
    let got = run("debugfs", &["-R", "cat /etc/systemd/network/80-kiln-dhcp.network", root.to_str().unwrap()]);
    assert_eq!(got, changed, "the changed overlay file is not in the image");
}

/// A recipe with site variables and `.site` templates: the built image holds
/// `/usr/lib/kiln/site/vars` and the templates unrendered (read back with debugfs), the
/// manifest lists `site_vars`, and `kiln site check --image` checks a site file against it.
#[test]
fn site_vars_and_templates_reach_the_image_and_its_manifest() {
    if !e2e_enabled() {
        return;
    }
    let recipe = "tests/recipes/e2e/site-vars.toml";
    let base = e2e_dir().join("site-vars");
    let image = build(recipe, &base.join("out"), &shared_cache());
    let out = kiln(&["check", "--print", recipe]);
    assert!(out.status.success());
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let root = cut_partition(&image, &plan["layout"]["partitions"][1], &base.join("root.img"));
    let root = root.to_str().unwrap();
    let cat = |path: &str| run("debugfs", &["-R", &format!("cat {path}"), root]);
    assert_eq!(
        cat("/usr/lib/kiln/site/vars"),
        "domain\tdomain\trequired\t\nhttp_port\tinteger\toptional\t80\ntls\tbool\toptional\ttrue\n"
    );
    let template = "/usr/lib/kiln/site/templates/etc/nginx/snippets/example.conf";
    assert_eq!(cat(template), "server_name {{ site.domain }} {{site.hostname}};\nlisten {{ site.http_port }};\n");
    let stat = run("debugfs", &["-R", "stat /usr/lib/kiln/site/templates/usr/lib/example/hello", root]);
    assert!(stat.contains("Mode:  0755"), "{stat}");
    assert_eq!(cat("/usr/lib/example/default"), "port 80\nkiln-site\n", "rendered with the defaults");
    assert!(!exists_in(Path::new(root), "/etc/nginx/snippets/example.conf"), "`domain` has no default");
    assert!(!exists_in(Path::new(root), "/etc/nginx/snippets/example.conf.site"));

    let manifest = image.with_file_name("site-vars-0.1.0-x86_64.manifest.json");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    let names: Vec<&str> = m["site_vars"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["domain", "http_port", "tls"]);
    let image = image.to_str().unwrap();
    let out = kiln(&["site", "check", "tests/recipes/site/minimal.toml", "--image", image]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "domain=box1.example.org\nhttp_port=80\ntls=true\n");
    let out = kiln(&["site", "check", "tests/recipes/site/missing-required-var.toml", "--image", image]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
