//! Root-free tests of kiln's disk module on sparse temp files, checked with
//! outside tools (sgdisk, sfdisk, fsck.vfat) and by reading the bytes back.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::disk::esp::{write_esp, EspFile, EspOptions, EspSource};
use kiln::disk::gpt::{plan_layout, write_gpt, ALIGN, SECTOR};
use kiln::disk::{assemble, read_layout, ImageWriter, Layout, PartitionSpec};
use kiln::recipe::arch::{Arch, ESP_TYPE};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const MIB: u64 = 1024 * 1024;
const TIMESTAMP: i64 = 1_700_000_000; // 2023-11-14 22:13:20 UTC
const DISK_GUID: Uuid = uuid::uuid!("11111111-2222-4333-8444-555555555555");
const ESP_GUID: Uuid = uuid::uuid!("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee");
const ROOT_GUID: Uuid = uuid::uuid!("01234567-89ab-4cde-8f01-23456789abcd");

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Run a tool; returns (success, stdout + stderr).
fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// sha256 of a whole file, by the independent (and, unlike unoptimized sha2, fast) `sha256sum`.
fn sha256_file(path: &Path) -> String {
    let (ok, out) = run("sha256sum", &[path.to_str().unwrap()]);
    assert!(ok, "sha256sum: {out}");
    out.split_whitespace().next().unwrap().to_string()
}

fn sha256_range(path: &Path, offset: u64, len: u64) -> String {
    let mut f = File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut h = Sha256::new();
    assert_eq!(std::io::copy(&mut f.take(len), &mut h).unwrap(), len);
    hex::encode(h.finalize())
}

fn specs(esp_size: u64) -> Vec<PartitionSpec> {
    vec![
        PartitionSpec { label: "esp".into(), type_guid: ESP_TYPE, part_guid: ESP_GUID, size: Some(esp_size), flags: 0 },
        PartitionSpec {
            label: "root-x86-64".into(),
            type_guid: Arch::X86_64.root_partition_type(),
            part_guid: ROOT_GUID,
            size: None,
            flags: 0,
        },
    ]
}

fn esp_opts(size: u64) -> EspOptions {
    EspOptions { size, volume_id: 0x1234_abcd, label: "kiln esp".into(), timestamp: TIMESTAMP }
}

/// The test ESP tree: (path, bytes).
fn esp_tree() -> Vec<(String, Vec<u8>)> {
    vec![
        ("loader/loader.conf".into(), b"timeout 0\ndefault kiln.conf\n".to_vec()),
        ("EFI/BOOT/BOOTX64.EFI".into(), noise(300 * 1024 + 17, 1)),
        ("loader/entries/a.conf".into(), b"title kiln\nlinux /vmlinuz\n".to_vec()),
        ("big/initrd.img".into(), noise(30 * MIB as usize + 5, 2)),
    ]
}

fn esp_files(tree: &[(String, Vec<u8>)], dir: &Path) -> Vec<EspFile> {
    // Mix both sources: the big one comes from a host file.
    tree.iter()
        .map(|(p, b)| {
            let contents = if b.len() > MIB as usize {
                let host = dir.join("host-big");
                fs::write(&host, b).unwrap();
                EspSource::File(host)
            } else {
                EspSource::Bytes(b.clone())
            };
            EspFile { path: p.clone(), contents }
        })
        .collect()
}

fn sparse_file(path: &Path, len: u64) -> File {
    let f = fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).unwrap();
    f.set_len(len).unwrap();
    f
}

#[test]
fn plan_layout_aligns_and_fills_rest() {
    let layout = plan_layout(64 * MIB, DISK_GUID, &specs(10 * MIB + 1)).unwrap();
    let p = &layout.partitions;
    assert_eq!(p.len(), 2);
    assert_eq!((p[0].number, p[0].offset, p[0].size), (1, MIB, 11 * MIB), "size rounded up to 1 MiB");
    // Rest: 64 MiB - 33 sectors of backup GPT, from 12 MiB, rounded down to whole MiB.
    assert_eq!((p[1].number, p[1].offset, p[1].size), (2, 12 * MIB, 51 * MIB));
    for part in p {
        assert_eq!(part.offset % ALIGN, 0);
        assert_eq!(part.size % SECTOR, 0);
        assert!(part.offset + part.size <= 64 * MIB - 33 * SECTOR);
    }
    // Filling the usable space up to the last whole MiB is fine; one more MiB is not.
    assert!(plan_layout(64 * MIB, DISK_GUID, &specs(62 * MIB)[..1]).is_ok());
    assert!(plan_layout(64 * MIB, DISK_GUID, &specs(63 * MIB)[..1]).is_err());
}

#[test]
fn plan_layout_errors_are_clear() {
    let err = plan_layout(64 * MIB, DISK_GUID, &specs(100 * MIB)).unwrap_err().to_string();
    assert!(err.contains("does not fit") && err.contains(&(100 * MIB).to_string()), "{err}");
    assert!(err.contains(&(64 * MIB - 33 * SECTOR).to_string()), "usable end in message: {err}");

    let err = plan_layout(64 * MIB, DISK_GUID, &specs(62 * MIB)).unwrap_err().to_string();
    assert!(err.contains("no space left") && err.contains(&(63 * MIB).to_string()), "{err}");

    let mut s = specs(MIB);
    s.swap(0, 1);
    let err = plan_layout(64 * MIB, DISK_GUID, &s).unwrap_err().to_string();
    assert!(err.contains("only the last"), "{err}");

    let err = plan_layout(64 * MIB + 100, DISK_GUID, &specs(MIB)).unwrap_err().to_string();
    assert!(err.contains("not a multiple") && err.contains(&(64 * MIB + 100).to_string()), "{err}");

    let mut s = specs(MIB);
    s[0].label = "x".repeat(37);
    assert!(plan_layout(64 * MIB, DISK_GUID, &s).is_err(), "37-character label");
}

/// Check the image's table with sgdisk and sfdisk against `layout`.
fn check_with_tools(image: &Path, layout: &Layout) {
    let img = image.to_str().unwrap();
    let (ok, out) = run("sgdisk", &["-v", img]);
    assert!(ok && out.contains("No problems found"), "sgdisk -v:\n{out}");

    let (ok, out) = run("sfdisk", &["--json", img]);
    assert!(ok, "sfdisk --json:\n{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let table = &json["partitiontable"];
    assert_eq!(table["label"], "gpt");
    assert_eq!(table["id"].as_str().unwrap().to_lowercase(), layout.disk_guid.to_string());
    assert_eq!(table["sectorsize"], 512);
    let parts = table["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), layout.partitions.len());
    for (j, p) in parts.iter().zip(&layout.partitions) {
        assert_eq!(j["start"].as_u64().unwrap(), p.offset / SECTOR, "{j}");
        assert_eq!(j["size"].as_u64().unwrap(), p.size / SECTOR, "{j}");
        assert_eq!(j["type"].as_str().unwrap().to_lowercase(), p.type_guid.to_string());
        assert_eq!(j["uuid"].as_str().unwrap().to_lowercase(), p.part_guid.to_string());
        assert_eq!(j["name"].as_str().unwrap(), p.label);
    }

    let back = read_layout(image).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(layout).unwrap());
}

#[test]
fn write_gpt_is_valid_deterministic_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let layout = plan_layout(64 * MIB, DISK_GUID, &specs(32 * MIB)).unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    write_gpt(&mut sparse_file(&a, 64 * MIB), &layout).unwrap();
    write_gpt(&mut sparse_file(&b, 64 * MIB), &layout).unwrap();
    assert_eq!(sha256_file(&a), sha256_file(&b), "same layout, same bytes");
    check_with_tools(&a, &layout);

    let err = write_gpt(&mut sparse_file(&a, 32 * MIB), &layout).unwrap_err().to_string();
    assert!(err.contains(&(32 * MIB).to_string()), "{err}");
}

#[test]
fn assemble_is_deterministic_and_digests_match() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let layout = plan_layout(64 * MIB, DISK_GUID, &specs(40 * MIB)).unwrap();
    let esp = d.join("esp.img");
    let tree = esp_tree();
    write_esp(&esp, &esp_opts(layout.partitions[0].size), &esp_files(&tree, d)).unwrap();
    // Root content: noise, a long zero run, noise, shorter than the partition.
    let mut root = noise(5 * MIB as usize, 3);
    root.extend(vec![0u8; 9 * MIB as usize]);
    root.extend(noise(MIB as usize + 123, 4));
    fs::write(d.join("root.img"), &root).unwrap();
    let contents = [esp.clone(), d.join("root.img")];

    let (a, b) = (d.join("a.img"), d.join("b.img"));
    let da = assemble(&a, &layout, &contents).unwrap();
    let db = assemble(&b, &layout, &contents).unwrap();
    assert_eq!(da.sha256, db.sha256);
    assert_eq!(sha256_file(&a), sha256_file(&b), "byte-identical images");
    assert_eq!(da.size, 64 * MIB);
    assert_eq!(fs::metadata(&a).unwrap().len(), 64 * MIB);

    assert_eq!(sha256_file(&a), da.sha256, "image digest = sha256sum");
    assert_eq!(da.partitions.len(), 2);
    for (pd, p) in da.partitions.iter().zip(&layout.partitions) {
        assert_eq!((pd.number, &pd.label), (p.number, &p.label));
        assert_eq!(pd.sha256, sha256_range(&a, p.offset, p.size), "partition {}", p.number);
    }
    // The root partition holds the content followed by zeros.
    let mut cut = vec![0u8; layout.partitions[1].size as usize];
    let mut f = File::open(&a).unwrap();
    f.seek(SeekFrom::Start(layout.partitions[1].offset)).unwrap();
    f.read_exact(&mut cut).unwrap();
    assert_eq!(&cut[..root.len()], &root[..]);
    assert!(cut[root.len()..].iter().all(|&b| b == 0));

    check_with_tools(&a, &layout);

    // The same content as a sparse file (holes where the zero run is and after the end, as
    // mke2fs leaves them): holes are not read, yet the image and digests are the same.
    let sparse = d.join("root-sparse.img");
    {
        use std::os::unix::fs::FileExt;
        let f = File::create(&sparse).unwrap();
        f.set_len(layout.partitions[1].size - 3 * MIB).unwrap();
        f.write_all_at(&root[..5 * MIB as usize], 0).unwrap();
        f.write_all_at(&root[14 * MIB as usize..], 14 * MIB).unwrap();
    }
    assert!(fs::metadata(&sparse).unwrap().blocks() * 512 < 7 * MIB, "test file is not sparse");
    let c = d.join("c.img");
    let dc = assemble(&c, &layout, &[esp.clone(), sparse]).unwrap();
    assert_eq!(dc.sha256, da.sha256, "sparse content, same image digest");
    assert_eq!(sha256_file(&c), da.sha256);
    let parts = |x: &kiln::disk::ImageDigest| x.partitions.iter().map(|p| p.sha256.clone()).collect::<Vec<_>>();
    assert_eq!(parts(&dc), parts(&da), "sparse content, same partition digests");

    // The ESP cut out of the image is a clean FAT file system.
    let esp_cut = d.join("esp-cut.img");
    let p = &layout.partitions[0];
    let (ok, out) = run(
        "dd",
        &[
            &format!("if={}", a.display()),
            &format!("of={}", esp_cut.display()),
            "bs=1M",
            &format!("skip={}", p.offset / MIB),
            &format!("count={}", p.size / MIB),
            "status=none",
        ],
    );
    assert!(ok, "dd: {out}");
    assert_eq!(sha256_file(&esp_cut), sha256_file(&esp));
    let (ok, out) = run("fsck.vfat", &["-n", esp_cut.to_str().unwrap()]);
    assert!(ok, "fsck.vfat -n on ESP from image:\n{out}");
}

#[test]
fn assemble_rejects_oversized_content() {
    let dir = tempfile::tempdir().unwrap();
    let layout = plan_layout(16 * MIB, DISK_GUID, &specs(2 * MIB)).unwrap();
    let big = dir.path().join("big");
    sparse_file(&big, 3 * MIB);
    let small = dir.path().join("small");
    fs::write(&small, b"x").unwrap();
    let out = dir.path().join("out.img");
    let err = assemble(&out, &layout, &[big, small.clone()]).unwrap_err().to_string();
    assert!(err.contains(&(3 * MIB).to_string()) && err.contains(&(2 * MIB).to_string()), "{err}");
    assert!(!out.exists(), "nothing written on a size error");
    let err = assemble(&out, &layout, &[small]).unwrap_err().to_string();
    assert!(err.contains("1 content files given for 2 partitions"), "{err}");
}

#[test]
fn assembled_image_is_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let layout = plan_layout(1024 * MIB, DISK_GUID, &specs(64 * MIB)).unwrap();
    let esp = d.join("esp.img");
    write_esp(
        &esp,
        &esp_opts(64 * MIB),
        &[EspFile { path: "a.txt".into(), contents: EspSource::Bytes(b"hi".to_vec()) }],
    )
    .unwrap();
    let root = d.join("root.img");
    let f = sparse_file(&root, 512 * MIB);
    std::os::unix::fs::FileExt::write_all_at(&f, &noise(MIB as usize, 5), 100 * MIB).unwrap();
    let out = d.join("big.img");
    let digest = assemble(&out, &layout, &[esp, root]).unwrap();
    let meta = fs::metadata(&out).unwrap();
    assert_eq!(meta.len(), 1024 * MIB);
    assert_eq!(digest.size, 1024 * MIB);
    let used = meta.blocks() * 512;
    assert!(used < 8 * MIB, "1 GiB image uses {used} bytes on disk");
    check_with_tools(&out, &layout);
}

/// mke2fs with kiln's determinism settings, from `tree`, into `img` (at `offset`, `blocks` long).
fn mke2fs(tree: &Path, img: &Path, offset: u64, blocks: u64) {
    let uuid = "6c4bd1e4-3f5e-4b8e-9d2a-1f0e2d3c4b5a";
    let ext = format!("offset={offset},hash_seed={uuid},root_owner=0:0");
    let out = Command::new("mke2fs")
        .args(["-t", "ext4", "-q", "-F", "-L", "root", "-b", "4096", "-T", "default", "-U", uuid, "-E", &ext, "-d"])
        .arg(tree)
        .arg("--")
        .arg(img)
        .arg(blocks.to_string())
        .env("E2FSPROGS_FAKE_TIME", TIMESTAMP.to_string())
        .output()
        .expect("running mke2fs");
    assert!(out.status.success(), "mke2fs: {}", String::from_utf8_lossy(&out.stderr));
}

/// The host's mke2fs (1.47.0 on Debian 12 clamps no time to SOURCE_DATE_EPOCH) copies each
/// file's access time, and the first mke2fs reading a new file moves it (relatime: an access
/// time not after the modification time is updated): give every file a recent access time
/// after its modification time, which reading leaves alone, so two runs copy the same times.
fn settle_times(tree: &Path) {
    let now = std::time::SystemTime::now();
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(TIMESTAMP as u64);
    let times = fs::FileTimes::new().set_accessed(now).set_modified(old);
    for dir in ["", "etc"] {
        for e in fs::read_dir(tree.join(dir)).unwrap().flatten() {
            if e.file_type().unwrap().is_file() {
                fs::File::options().write(true).open(e.path()).unwrap().set_times(times).unwrap();
            }
        }
        fs::File::open(tree.join(dir)).unwrap().set_times(times).unwrap();
    }
}

/// A root file system made by mke2fs straight into the image at its offset (what `kiln build`
/// does) gives the same bytes, digests and allocated size as one made in a file of its own and
/// copied in; data found between partitions is refused.
#[test]
fn partition_written_in_place_matches_a_copied_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let layout = plan_layout(160 * MIB, DISK_GUID, &specs(40 * MIB)).unwrap();
    let root = &layout.partitions[1];
    let blocks = root.size / 4096;
    let esp = d.join("esp.img");
    write_esp(&esp, &esp_opts(40 * MIB), &esp_files(&esp_tree(), d)).unwrap();
    let tree = d.join("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/hostname"), "kiln\n").unwrap();
    fs::write(tree.join("etc/noise"), noise(3 * MIB as usize, 9)).unwrap();
    settle_times(&tree);

    // Reference: mke2fs into a file of its own, copied in by `assemble`.
    let rootfs = d.join("root.img");
    sparse_file(&rootfs, root.size);
    mke2fs(&tree, &rootfs, 0, blocks);
    let copied = d.join("copied.img");
    let want = assemble(&copied, &layout, &[esp.clone(), rootfs]).unwrap();

    let placed = d.join("placed.img");
    let mut image = ImageWriter::create(&placed, &layout).unwrap();
    image.copy(&esp).unwrap();
    assert_eq!(image.next_partition().unwrap().number, root.number);
    mke2fs(&tree, &placed, root.offset, blocks);
    image.in_place().unwrap();
    let got = image.finish().unwrap();
    assert_eq!(got.sha256, want.sha256);
    assert_eq!(sha256_file(&placed), want.sha256, "image digest = sha256sum");
    let parts = |x: &kiln::disk::ImageDigest| x.partitions.iter().map(|p| p.sha256.clone()).collect::<Vec<_>>();
    assert_eq!(parts(&got), parts(&want));
    // The block map made while writing is the map of the finished file, read back.
    let read_back = |p: &Path| kiln::disk::bmap::BlockMap::of_image(&mut File::open(p).unwrap()).unwrap().to_xml();
    assert_eq!(got.bmap.to_xml(), read_back(&placed), "block map of the in-place image");
    assert_eq!(want.bmap.to_xml(), read_back(&copied), "block map of the copied image");
    assert!(got.bmap.ranges.len() > 2, "the map has the GPTs, the ESP and the root: {:?}", got.bmap.ranges);
    let used = |p: &Path| fs::metadata(p).unwrap().blocks() * 512;
    // Zero blocks mke2fs wrote or allocated are freed again; a few blocks of the host's own
    // extent tree may differ with the file's fragmentation.
    let slack = 256 * 1024;
    assert!(
        used(&placed) <= used(&copied) + slack,
        "in place {} bytes allocated, copied {}",
        used(&placed),
        used(&copied)
    );
    check_with_tools(&placed, &layout);
    let cut = d.join("root-cut.img");
    let (ok, out) = run(
        "dd",
        &[
            &format!("if={}", placed.display()),
            &format!("of={}", cut.display()),
            "bs=1M",
            &format!("skip={}", root.offset / MIB),
            &format!("count={}", root.size / MIB),
            "status=none",
        ],
    );
    assert!(ok, "dd: {out}");
    let (ok, out) = run("e2fsck", &["-fn", cut.to_str().unwrap()]);
    assert!(ok, "e2fsck -fn on the root from the image:\n{out}");

    // A program that wrote outside its partition is caught, not hashed into the image.
    let stray = d.join("stray.img");
    let mut image = ImageWriter::create(&stray, &layout).unwrap();
    image.copy(&esp).unwrap();
    mke2fs(&tree, &stray, root.offset, blocks);
    let after_root = root.offset + root.size;
    assert!(after_root + 64 * 512 < layout.disk_size, "a gap before the backup gpt");
    std::os::unix::fs::FileExt::write_all_at(&File::options().write(true).open(&stray).unwrap(), b"x", after_root)
        .unwrap();
    image.in_place().unwrap();
    let err = format!("{:#}", image.finish().unwrap_err());
    assert!(err.contains("outside every partition"), "{err}");
}

/// Walk a FAT directory: (path, is_dir, entry) for everything below it, "." and ".." included.
fn walk<'a>(dir: &fatfs::Dir<'a, File>, prefix: &str, out: &mut Vec<(String, bool, fatfs::DirEntry<'a, File>)>) {
    for e in dir.iter() {
        let e = e.unwrap();
        let name = e.file_name();
        let path = format!("{prefix}{name}");
        let is_dir = e.is_dir();
        if is_dir && name != "." && name != ".." {
            walk(&e.to_dir(), &format!("{path}/"), out);
        }
        out.push((path, is_dir, e));
    }
}

fn check_esp(size: u64, fat32: bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tree = esp_tree();
    let (a, b) = (d.join("a.img"), d.join("b.img"));
    write_esp(&a, &esp_opts(size), &esp_files(&tree, d)).unwrap();
    write_esp(&b, &esp_opts(size), &esp_files(&tree, d)).unwrap();
    assert_eq!(fs::metadata(&a).unwrap().len(), size);
    assert_eq!(sha256_file(&a), sha256_file(&b), "byte-identical ESPs");

    let img = a.to_str().unwrap();
    let (ok, out) = run("fsck.vfat", &["-n", img]);
    assert!(ok, "fsck.vfat -n:\n{out}");
    let (ok, listing) = run("fsck.vfat", &["-n", "-l", img]);
    assert!(ok, "fsck.vfat -n -l:\n{listing}");
    for (path, _) in &tree {
        assert!(listing.contains(&format!("/{path}")), "{path} not listed:\n{listing}");
    }

    let fs = fatfs::FileSystem::new(File::open(&a).unwrap(), fatfs::FsOptions::new()).unwrap();
    assert_eq!(fs.fat_type() == fatfs::FatType::Fat32, fat32, "{:?} for {size} bytes", fs.fat_type());
    assert_eq!(fs.volume_id(), 0x1234_abcd);
    assert_eq!(fs.volume_label(), "KILN ESP");
    let root = fs.root_dir();
    for (path, bytes) in &tree {
        let mut back = Vec::new();
        root.open_file(path).unwrap().read_to_end(&mut back).unwrap();
        assert!(back == *bytes, "{path} differs after reading back");
    }
    let mut entries = Vec::new();
    walk(&root, "", &mut entries);
    let files = entries.iter().filter(|e| !e.1).count();
    assert_eq!(files, tree.len());
    let want = fatfs::DateTime {
        date: fatfs::Date { year: 2023, month: 11, day: 14 },
        time: fatfs::Time { hour: 22, min: 13, sec: 20, millis: 0 },
    };
    for (path, _, e) in &entries {
        assert_eq!(e.created(), want, "created of {path}");
        assert_eq!(e.modified(), want, "modified of {path}");
        assert_eq!(e.accessed(), want.date, "accessed of {path}");
    }
}

#[test]
fn esp_fat16_48mib() {
    check_esp(48 * MIB, false);
}

/// The smallest ESP a recipe may have is FAT32 (UEFI wants FAT32 on fixed disks).
#[test]
fn esp_fat32_64mib() {
    check_esp(64 * MIB, true);
}

/// kiln's default ESP size: 4 KiB clusters would fall below FAT32's minimum cluster count.
#[test]
fn esp_fat32_256mib_default_size() {
    check_esp(256 * MIB, true);
}

#[test]
fn esp_fat32_300mib() {
    check_esp(300 * MIB, true);
}

#[test]
fn esp_reports_files_that_do_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("esp.img");
    let files = [EspFile { path: "EFI/BIG.BIN".into(), contents: EspSource::Bytes(noise(12 * MIB as usize, 6)) }];
    let err = format!("{:#}", write_esp(&path, &esp_opts(8 * MIB), &files).unwrap_err());
    assert!(err.contains("do not fit") && err.contains(&(12 * MIB).to_string()), "{err}");
    assert!(err.contains(&(8 * MIB).to_string()), "{err}");

    let missing =
        [EspFile { path: "EFI/BOOT/X.EFI".into(), contents: EspSource::File(PathBuf::from("/nonexistent/x")) }];
    let err = format!("{:#}", write_esp(&path, &esp_opts(8 * MIB), &missing).unwrap_err());
    assert!(err.contains("EFI/BOOT/X.EFI"), "{err}");

    let dup = [
        EspFile { path: "efi/a".into(), contents: EspSource::Bytes(vec![1]) },
        EspFile { path: "EFI/A".into(), contents: EspSource::Bytes(vec![2]) },
    ];
    assert!(write_esp(&path, &esp_opts(8 * MIB), &dup).is_err(), "case-insensitive duplicate");
}

/// Date-time of the single file in a fresh ESP written with `timestamp`.
fn esp_file_time(dir: &Path, timestamp: i64) -> fatfs::DateTime {
    let path = dir.join(format!("t{timestamp}.img"));
    let opts = EspOptions { timestamp, ..esp_opts(8 * MIB) };
    let files = [EspFile { path: "x.txt".into(), contents: EspSource::Bytes(b"x".to_vec()) }];
    write_esp(&path, &opts, &files).unwrap();
    let fs = fatfs::FileSystem::new(File::open(&path).unwrap(), fatfs::FsOptions::new()).unwrap();
    let e = fs.root_dir().iter().map(|e| e.unwrap()).find(|e| e.file_name() == "x.txt").unwrap();
    assert_eq!(e.created(), e.modified());
    e.modified()
}

#[test]
fn esp_timestamps_are_converted_and_clamped() {
    let dir = tempfile::tempdir().unwrap();
    let ymdhms = |t: fatfs::DateTime| {
        let (d, t) = (t.date, t.time);
        (d.year, d.month, d.day, t.hour, t.min, t.sec)
    };
    let d = dir.path();
    assert_eq!(ymdhms(esp_file_time(d, 951_825_601)), (2000, 2, 29, 12, 0, 0), "odd second rounds down");
    assert_eq!(ymdhms(esp_file_time(d, 0)), (1980, 1, 1, 0, 0, 0));
    assert_eq!(ymdhms(esp_file_time(d, -5)), (1980, 1, 1, 0, 0, 0));
    assert_eq!(ymdhms(esp_file_time(d, 4_354_819_199)), (2107, 12, 31, 23, 59, 58));
    assert_eq!(ymdhms(esp_file_time(d, i64::MAX / 2)), (2107, 12, 31, 23, 59, 58));
}

#[test]
fn esp_labels_are_upper_cased_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("esp.img");
    for bad in ["much-too-long", "a.b"] {
        let opts = EspOptions { label: bad.into(), ..esp_opts(8 * MIB) };
        let err = write_esp(&path, &opts, &[]).unwrap_err().to_string();
        assert!(err.contains(bad), "{err}");
    }
    let opts = EspOptions { label: "efi".into(), ..esp_opts(8 * MIB) };
    write_esp(&path, &opts, &[]).unwrap();
    let fs = fatfs::FileSystem::new(File::open(&path).unwrap(), fatfs::FsOptions::new()).unwrap();
    assert_eq!(fs.volume_label(), "EFI");
    assert_eq!(fs.fat_type(), fatfs::FatType::Fat16);
    let boot = fs::read(&path).unwrap();
    assert_eq!(&boot[43..54], b"EFI        ", "FAT16 boot sector label, space padded");
    let (ok, out) = run("fsck.vfat", &["-n", path.to_str().unwrap()]);
    assert!(ok, "empty ESP: {out}");
}

#[test]
fn esp_with_large_and_deep_directories_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    // 150 long-named files make EFI/Linux span several clusters; a/b/c/d nests deeply.
    let mut files: Vec<EspFile> = (0..150)
        .map(|i| EspFile {
            path: format!("EFI/Linux/kiln-unified-kernel-image-{i:03}.efi"),
            contents: EspSource::Bytes(noise(100 + i, i as u64)),
        })
        .collect();
    files.push(EspFile { path: "a/b/c/d/deep.txt".into(), contents: EspSource::Bytes(b"deep".to_vec()) });
    for size in [8 * MIB, 260 * MIB] {
        let path = dir.path().join(format!("esp-{size}.img"));
        write_esp(&path, &esp_opts(size), &files).unwrap();
        let (ok, out) = run("fsck.vfat", &["-n", "-l", path.to_str().unwrap()]);
        assert!(ok, "fsck.vfat on {size}-byte ESP:\n{out}");
        assert!(out.contains("/EFI/Linux/kiln-unified-kernel-image-149.efi"), "{out}");
        assert!(out.contains("/a/b/c/d/deep.txt"), "{out}");
        let fs = fatfs::FileSystem::new(File::open(&path).unwrap(), fatfs::FsOptions::new()).unwrap();
        let mut back = String::new();
        fs.root_dir().open_file("a/b/c/d/deep.txt").unwrap().read_to_string(&mut back).unwrap();
        assert_eq!(back, "deep");
        assert_eq!(fs.root_dir().open_dir("EFI/Linux").unwrap().iter().count(), 152, "150 files + . + ..");
    }
}
