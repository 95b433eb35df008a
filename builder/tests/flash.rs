//! `kiln flash` onto loop devices (sparse files 3× the image), checked with outside tools:
//! sgdisk, sfdisk, blkid, fsck.vfat, cmp, bmaptool, and a boot of the flashed disk.
//! Needs root and `KILN_E2E=1`; builds tests/recipes/e2e/site.toml (debian-base with sudo: an
//! appliance whose admins come from the site file) signed (KILN_CACHE, or the run's cache).
mod common;
use common::guest::Guest;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

struct Release {
    dir: PathBuf,
    image: PathBuf,
    bmap: PathBuf,
    public: PathBuf,
    manifest: serde_json::Value,
}

/// The site-test image, built signed once for this file's tests.
fn release() -> Option<&'static Release> {
    static FX: OnceLock<Release> = OnceLock::new();
    if !e2e_enabled() {
        return None;
    }
    Some(FX.get_or_init(|| {
        let dir = e2e_dir().join("flash");
        std::fs::create_dir_all(&dir).unwrap();
        let prefix = dir.join("key");
        if !prefix.with_extension("key").exists() {
            let gen = kiln(&["keygen", "--prefix", prefix.to_str().unwrap(), "--unencrypted"]);
            assert!(gen.status.success(), "kiln keygen: {}", String::from_utf8_lossy(&gen.stderr));
        }
        let cache = std::env::var_os("KILN_CACHE").map(PathBuf::from).unwrap_or_else(shared_cache);
        let out = dir.join("out");
        let o = kiln(&[
            "build",
            "tests/recipes/e2e/site.toml",
            "--out",
            out.to_str().unwrap(),
            "--cache",
            cache.to_str().unwrap(),
            "--sign",
            prefix.with_extension("key").to_str().unwrap(),
        ]);
        assert!(o.status.success(), "kiln build: {}", String::from_utf8_lossy(&o.stderr));
        let image = out.join("site-test-0.1.0-x86_64.img");
        let manifest =
            serde_json::from_slice(&std::fs::read(out.join("site-test-0.1.0-x86_64.manifest.json")).unwrap()).unwrap();
        Release {
            bmap: out.join("site-test-0.1.0-x86_64.bmap"),
            dir: out,
            image,
            public: prefix.with_extension("pub"),
            manifest,
        }
    }))
}

/// A loop device over a new sparse file; detached (and the file removed) on drop.
struct Loop {
    dev: String,
    file: PathBuf,
}

impl Loop {
    fn new(name: &str, size: u64) -> Loop {
        let file = e2e_dir().join("flash").join(format!("{name}.disk"));
        let _ = std::fs::remove_file(&file);
        std::fs::File::create(&file).unwrap().set_len(size).unwrap();
        let dev = run("losetup", &["--find", "--show", "--partscan", file.to_str().unwrap()]).trim().to_string();
        Loop { dev, file }
    }

    fn part(&self, n: u32) -> String {
        format!("{}p{n}", self.dev)
    }

    /// Blocks allocated in the sparse backing file: 0 until something is written to the disk.
    fn allocated(&self) -> u64 {
        run("stat", &["-c", "%b", self.file.to_str().unwrap()]).trim().parse().unwrap()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.part(2)).output();
        let _ = Command::new("losetup").args(["-d", &self.dev]).output();
        let _ = std::fs::remove_file(&self.file);
    }
}

fn image_size(r: &Release) -> u64 {
    r.manifest["image"]["size"].as_u64().unwrap()
}

fn flash(r: &Release, dev: &str, extra: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut args = vec!["flash", r.image.to_str().unwrap(), dev, "--key", r.public.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = kiln_env(&args, env);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    eprintln!("kiln {args:?}:\n{text}");
    (o.status.success(), text)
}

fn verify_device(r: &Release, dev: &str) -> (bool, String) {
    let o = kiln(&["verify", dev, "--image", r.image.to_str().unwrap(), "--key", r.public.to_str().unwrap()]);
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Each of the image's partitions on `dev` is byte-identical to the image's (cmp over the range).
fn assert_partitions_identical(r: &Release, dev: &str) {
    for p in r.manifest["partitions"].as_array().unwrap() {
        let (off, size) = (p["offset"].as_u64().unwrap(), p["size"].as_u64().unwrap());
        let skip = format!("{off}:{off}");
        let n = size.to_string();
        let o = Command::new("cmp").args(["-n", &n, "-i", &skip]).arg(&r.image).arg(dev).output().unwrap();
        assert!(o.status.success(), "partition at {off} differs on {dev}: {}", String::from_utf8_lossy(&o.stdout));
    }
}

fn table(dev: &str) -> serde_json::Value {
    serde_json::from_str(&run("sfdisk", &["--json", dev])).unwrap()
}

/// Checks from outside on a freshly flashed disk: verify, byte-identical partitions, a clean GPT,
/// the site partition (kiln's type, named KILN-SITE, at the disk's end, FAT labelled KILN-SITE).
fn check_flashed(r: &Release, disk: &Loop) {
    let (ok, out) = verify_device(r, &disk.dev);
    assert!(ok && out.contains("site partition (KILN-SITE) present"), "kiln verify DEVICE:\n{out}");
    assert_partitions_identical(r, &disk.dev);
    let v = run("sgdisk", &["-v", &disk.dev]);
    assert!(v.contains("No problems found"), "sgdisk -v: {v}");
    let t = table(&disk.dev);
    let parts = t["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{t}");
    assert_eq!(parts[2]["type"].as_str().unwrap().to_lowercase(), "6ee72326-f931-4cde-90bc-cf3aa833a038");
    assert_eq!(parts[2]["name"], "KILN-SITE");
    let last_lba = t["partitiontable"]["lastlba"].as_u64().unwrap();
    let site_end = parts[2]["start"].as_u64().unwrap() + parts[2]["size"].as_u64().unwrap();
    assert!(last_lba - site_end < 2048 + 34, "site partition not at the disk's end: {t}");
    run("partx", &["--update", &disk.dev]);
    let blkid = run("blkid", &["-o", "export", &disk.part(3)]);
    assert!(blkid.contains("TYPE=vfat") && blkid.contains("LABEL=KILN-SITE"), "{blkid}");
    run("fsck.vfat", &["-n", &disk.part(3)]);
}

/// Boot a flashed disk with `kiln test DISK --persist`, log in as `admin` with `key` over the
/// forwarded SSH port, and return what the guest said (host name, IPv4 addresses, root size).
/// The login leaves the mark the recipe's check waits for, so the test ends after it.
fn boot_and_log_in(disk: &Loop, log: &Path, key: &Path, admin: &str) -> String {
    let mut guest = Guest::start(Path::new(&disk.dev), log, &["--persist"]);
    guest.wait_ready(log);
    let script = "hostname; ip -4 -o addr show scope global; findmnt -n -b -o SIZE /; sudo -n touch /run/kiln-e2e-done";
    let ssh = guest.ssh(key, admin, script);
    let said = String::from_utf8_lossy(&ssh.stdout).into_owned();
    eprintln!("guest said:\n{said}{}", String::from_utf8_lossy(&ssh.stderr));
    let port = guest.port;
    guest.finish();
    assert!(ssh.status.success(), "ssh -p {port} {admin}@127.0.0.1 failed");
    said
}

/// One signed image for every site (issue #13): flashed with `kiln flash` onto two disks (3× the
/// image) with two site files, each boots with its site's host name, network (a static address on
/// one, DHCP on the other) and admin key (the test logs in over the forwarded SSH port), and a
/// root grown up to the site partition; a second boot changes nothing.
#[test]
fn one_image_two_sites_two_disks() {
    let Some(r) = release() else { return };
    let keys = tempfile::tempdir().unwrap();
    let static_net = "[[network]]\nmatch_name = \"en*\"\naddresses = [\"10.0.2.15/24\"]\ngateway = \"10.0.2.2\"\ndns = [\"10.0.2.3\"]\n";
    let dhcp_net = "[[network]]\nmatch_name = \"en*\"\ndhcp = true\n";
    let mut disks = Vec::new();
    for (name, host, network) in [("a", "office-a.example.org", static_net), ("b", "office-b.example.org", dhcp_net)] {
        let key = keys.path().join(name);
        let comment = format!("admin@{host}");
        run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", &comment, "-f", key.to_str().unwrap()]);
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let site = r.dir.parent().unwrap().join(format!("site-{name}.toml"));
        let text = format!(
            "hostname = \"{host}\"\n\n[[admins]]\nname = \"admin{name}\"\nssh_authorized_keys = [\"{}\"]\n\n{network}",
            public.trim()
        );
        std::fs::write(&site, text).unwrap();
        let disk = Loop::new(&format!("site-{name}"), 3 * image_size(r));
        let (ok, text) = flash(r, &disk.dev, &["--yes", "--site", site.to_str().unwrap()], &[]);
        assert!(ok, "kiln flash failed:\n{text}");
        assert!(text.contains("partition 2 (root)") && text.contains("match the signed manifest"), "{text}");
        assert!(text.contains("MB/s"), "no rate in the progress:\n{text}");
        check_flashed(r, &disk);
        disks.push((name, host, key, disk));
    }

    for (name, host, key, disk) in &disks {
        let log = r.dir.parent().unwrap().join(format!("site-{name}.serial.log"));
        let said = boot_and_log_in(disk, &log, key, &format!("admin{name}"));
        assert_eq!(said.lines().next(), Some(*host), "{said}");
        let addr = said.lines().find(|l| l.contains(" inet ")).unwrap_or_else(|| panic!("no IPv4 address: {said}"));
        if *name == "a" {
            // QEMU's DHCP would hand out the same address: static means no lease on it.
            assert!(addr.contains("10.0.2.15/24") && !addr.contains("dynamic"), "static address: {addr}");
        } else {
            assert!(addr.contains("dynamic"), "a DHCP lease: {addr}");
        }
        // The root grew up to the site partition (systemd-repart), and ext4 with it (growfs).
        let after = table(&disk.dev);
        let ps = after["partitiontable"]["partitions"].as_array().unwrap();
        let root_end = ps[1]["start"].as_u64().unwrap() + ps[1]["size"].as_u64().unwrap();
        assert_eq!(root_end, ps[2]["start"].as_u64().unwrap(), "root did not grow up to the site partition: {after}");
        let root_size: u64 = said.lines().filter_map(|l| l.trim().parse().ok()).next_back().unwrap();
        assert!(root_size > 2 * image_size(r), "the mounted root is {root_size} bytes: not grown");
        assert!(std::fs::read_to_string(&log).unwrap().contains("resized filesystem to"), "no ext4 growth");
    }

    // verify is for a freshly flashed disk: the grown root is named.
    let (_, _, key, disk) = &disks[0];
    let (ok, out) = verify_device(r, &disk.dev);
    assert!(!ok && out.contains("partition 2 (root)"), "kiln verify after growth:\n{out}");
    // Second boot: the same settings, and nothing on the disk's layout changes.
    let before = table(&disk.dev);
    let log = r.dir.parent().unwrap().join("site-a.second.serial.log");
    let said = boot_and_log_in(disk, &log, key, "admina");
    assert_eq!(said.lines().next(), Some("office-a.example.org"), "{said}");
    assert_eq!(table(&disk.dev), before, "the second boot changed the partition table");
}

/// Refusals happen before a byte is written, with messages that say why.
#[test]
fn flash_refuses_bad_images_and_targets() {
    let Some(r) = release() else { return };
    let disk = Loop::new("refuse", 3 * image_size(r));
    assert_eq!(disk.allocated(), 0);

    // A flipped byte in the image: refused by the checksum checks, disk untouched.
    let tampered = r.dir.parent().unwrap().join("tampered");
    let _ = std::fs::remove_dir_all(&tampered);
    std::fs::create_dir_all(&tampered).unwrap();
    for e in std::fs::read_dir(&r.dir).unwrap().flatten() {
        run("cp", &["--sparse=always", e.path().to_str().unwrap(), tampered.to_str().unwrap()]);
    }
    let timg = tampered.join("site-test-0.1.0-x86_64.img");
    let root_off = r.manifest["partitions"][1]["offset"].as_u64().unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&timg).unwrap();
    let mut b = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, root_off + 1024).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[b[0] ^ 0xff], root_off + 1024).unwrap();
    drop(f);
    let o = kiln(&["flash", timg.to_str().unwrap(), &disk.dev, "--key", r.public.to_str().unwrap(), "--yes"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("does not verify"), "{err}");
    assert!(err.contains("partition 2 (root)") && err.contains("checksum mismatch"), "{err}");
    assert_eq!(disk.allocated(), 0, "a refused flash wrote to the disk");

    let refused = |dev: &str, extra: &[&str], want: &str| {
        let (ok, text) = flash(r, dev, extra, &[]);
        assert!(!ok && text.contains(want), "flash onto {dev}: expected {want:?}:\n{text}");
    };
    // Too small for the image.
    let small = Loop::new("small", image_size(r) / 2);
    refused(&small.dev, &["--yes"], "is too small");
    // A regular file without --force-file.
    refused(disk.file.to_str().unwrap(), &["--yes"], "add --force-file");
    // No terminal, no --yes.
    refused(&disk.dev, &[], "pass --yes");
    assert_eq!(disk.allocated(), 0, "a refused flash wrote to the disk");
    // The disk of the running system (without --yes, so a wrong check could not write).
    let root = run("findmnt", &["-n", "-o", "SOURCE", "/"]).trim().to_string();
    if root.starts_with("/dev/") && !root.starts_with("/dev/mapper") {
        let disk_of_root = run("lsblk", &["-n", "-d", "-o", "PKNAME", &root]).trim().to_string();
        let target = if disk_of_root.is_empty() { root.clone() } else { format!("/dev/{disk_of_root}") };
        refused(&target, &[], "holds the running system");
    } else {
        skip(&format!("/ is on {root}, not a plain disk: the running-system refusal is not exercised"));
    }
    // A partition, and a disk with a mounted partition: flash a copy first, then try.
    let (ok, text) = flash(r, &disk.dev, &["--yes"], &[]);
    assert!(ok, "{text}");
    run("partx", &["--update", &disk.dev]);
    refused(&disk.part(1), &["--yes"], "is a partition");
    let mnt = tempfile::tempdir().unwrap();
    run("mount", &["-o", "ro", &disk.part(2), mnt.path().to_str().unwrap()]);
    let (ok, text) = flash(r, &disk.dev, &["--yes"], &[]);
    run("umount", &[mnt.path().to_str().unwrap()]);
    assert!(!ok && text.contains("is mounted on"), "{text}");
}

/// A block changed between the write and the read-back (test hook) is named; exit non-zero.
#[test]
fn read_back_names_the_partition_that_differs() {
    let Some(r) = release() else { return };
    let disk = Loop::new("corrupt", 3 * image_size(r));
    let env = [("KILN_TEST_HOOKS", "1"), ("KILN_TEST_CORRUPT_AFTER_WRITE", "2")];
    let (ok, text) = flash(r, &disk.dev, &["--yes"], &env);
    assert!(!ok, "a corrupted read-back passed:\n{text}");
    assert!(text.contains("read-back differs") && text.contains("partition 2 (root): read back sha256"), "{text}");
    assert!(!text.contains("partition 1 (esp): read back"), "{text}");
    // Without the explicit switch the hook is not honoured.
    let (ok, text) = flash(r, &disk.dev, &["--yes"], &env[1..]);
    assert!(ok, "{text}");
}

/// Debian's bmaptool accepts kiln's bmap and writes a disk whose partitions verify.
#[test]
fn bmaptool_copy_accepts_kilns_bmap() {
    let Some(r) = release() else { return };
    let disk = Loop::new("bmaptool", 3 * image_size(r));
    run("bmaptool", &["copy", "--bmap", r.bmap.to_str().unwrap(), r.image.to_str().unwrap(), &disk.dev]);
    let (ok, out) = verify_device(r, &disk.dev);
    assert!(ok, "kiln verify after bmaptool copy:\n{out}");
    assert_partitions_identical(r, &disk.dev);
    // A changed bmap is refused by bmaptool (its own checksum).
    let bad = r.dir.parent().unwrap().join("bad.bmap");
    let text = std::fs::read_to_string(&r.bmap).unwrap().replacen("<Range chksum=\"", "<Range chksum=\"0", 1);
    std::fs::write(&bad, text).unwrap();
    let o = Command::new("bmaptool")
        .args(["copy", "--bmap", bad.to_str().unwrap(), r.image.to_str().unwrap(), &disk.dev])
        .output()
        .unwrap();
    assert!(!o.status.success(), "bmaptool accepted a changed bmap");
}

/// A disk that fails while written (a loop device over a file on a 150 MiB tmpfs, which fills
/// up inside the root partition): kiln exits non-zero naming the partition.
#[test]
fn write_error_names_the_partition() {
    let Some(r) = release() else { return };
    let mnt = e2e_dir().join("flash").join("tiny");
    std::fs::create_dir_all(&mnt).unwrap();
    run("mount", &["-t", "tmpfs", "-o", "size=150M", "kiln-flash-test", mnt.to_str().unwrap()]);
    let file = mnt.join("disk");
    std::fs::File::create(&file).unwrap().set_len(3 * image_size(r)).unwrap();
    let dev = run("losetup", &["--find", "--show", file.to_str().unwrap()]).trim().to_string();
    let (ok, text) = flash(r, &dev, &["--yes"], &[]);
    let _ = Command::new("losetup").args(["-d", &dev]).output();
    let _ = Command::new("umount").arg(&mnt).output();
    assert!(!ok, "a failing disk was flashed:\n{text}");
    assert!(text.contains("writing partition 2 (root)"), "{text}");
}
