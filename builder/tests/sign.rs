//! Signed outputs, checked with outside tools: Debian's `minisign` verifies kiln's signature,
//! `pyspdxtools` (PyPI `spdx-tools`) validates the SBOM, `dpkg-query` lists the same packages,
//! and `kiln verify` names whatever byte was flipped.
//!
//! Everything runs on a small synthetic root and a 16 MiB image made with `kiln::disk`, through
//! the same functions `kiln build` uses after the root filesystem is made. A real signed build
//! in every format is checked the same way by tests/e2e.rs (`signed_outputs_*`, `verify_*`).
use kiln::disk::{self, gpt::plan_layout, PartitionSpec};
use kiln::image::boot::BootInfo;
use kiln::plan::Plan;
use kiln::release::export::{OutputFormat, Staging};
use kiln::release::sign::{self, KeyPaths, Signer};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const IMAGE: &str = "defaults-1-x86_64.img";
const HELLO_SHA: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const FOO_SHA: &str = "3333333333333333333333333333333333333333333333333333333333333333";

const STATUS: &str = "\
Package: hello
Status: install ok installed
Maintainer: Someone <s@example.org>
Architecture: amd64
Version: 2.10-3
Description: example
 with a long description
 .
 over lines

Package: libfoo++1
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Source: foo (1:1.2+dfsg-1)
Version: 1:1.2+dfsg-1+b1
Description: foo

Package: libbar1
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 0.5-1
Description: bar

Package: libbar1
Status: install ok installed
Architecture: i386
Multi-Arch: same
Version: 0.5-1
Description: bar

Package: oldpkg
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1
Conffiles:
 /etc/oldpkg.conf 0123456789abcdef0123456789abcdef obsolete
Description: removed, configuration kept
";

fn packages_list() -> String {
    format!(
        "Package: hello\nVersion: 2.10-2\nArchitecture: amd64\nSHA256: {}\n\n\
         Package: hello\nVersion: 2.10-3\nArchitecture: amd64\nFilename: pool/main/h/hello/hello_2.10-3_amd64.deb\nSHA256: {HELLO_SHA}\nDescription: example\n\n\
         Package: libfoo++1\nSource: foo (1:1.2+dfsg-1)\nVersion: 1:1.2+dfsg-1+b1\nArchitecture: amd64\nFilename: pool/main/f/foo/libfoo++1_1.2+dfsg-1+b1_amd64.deb\nSHA256: {FOO_SHA}\n\n\
         Package: libbar1\nVersion: 0.4-1\nArchitecture: amd64\nSHA256: {}\n",
        "2".repeat(64),
        "4".repeat(64)
    )
}

const FORMAT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n";

/// A root with a dpkg database, copyright files (one through an absolute symlink, one
/// free-form) and an apt Packages list.
fn synthetic_root(root: &Path) {
    let w = |rel: &str, text: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w("var/lib/dpkg/status", STATUS);
    w("var/lib/apt/lists/deb.debian.org_debian_dists_trixie_main_binary-amd64_Packages", &packages_list());
    w("usr/share/doc/hello/copyright", &format!("{FORMAT}Upstream-Name: hello\n\nFiles: *\nCopyright: FSF\nLicense: GPL-3+\n\nFiles: doc/*\nCopyright: FSF\nLicense: GFDL-NIV-1.3+\n\nLicense: GPL-3+\n On Debian systems, see /usr/share/common-licenses/GPL-3.\n"));
    w("usr/share/doc/foo-common/copyright", &format!("{FORMAT}\nFiles: *\nCopyright: Foo\nLicense: Expat or Apache-2.0\n\nFiles: tables/*\nCopyright: nobody\nLicense: public-domain\n\nLicense: public-domain\n Do what you want.\n"));
    std::os::unix::fs::symlink("/usr/share/doc/foo-common", root.join("usr/share/doc/libfoo++1")).unwrap();
    w("usr/share/doc/libbar1/copyright", "This package was debianized by someone.\nIt is under the GPL.\n");
}

/// A plan for a 16 MiB two-partition image (the recipe's own layout is large).
fn small_plan() -> Plan {
    let mut plan = Plan::new(kiln::recipe::load(Path::new("tests/recipes/good/defaults.toml")).unwrap()).unwrap();
    let specs = [
        PartitionSpec {
            label: "esp".into(),
            type_guid: plan.layout.partitions[0].type_guid,
            part_guid: plan.layout.partitions[0].part_guid,
            size: Some(4 << 20),
            flags: 0,
        },
        PartitionSpec {
            label: "root".into(),
            type_guid: plan.layout.partitions[1].type_guid,
            part_guid: plan.layout.partitions[1].part_guid,
            size: None,
            flags: 0,
        },
    ];
    plan.layout = plan_layout(16 << 20, plan.layout.disk_guid, &specs).unwrap();
    plan
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    out: PathBuf,
    keys: KeyPaths,
}

impl Fixture {
    fn image(&self) -> PathBuf {
        self.out.join(IMAGE)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }
}

/// Keys (encrypted, via the kiln binary), a synthetic root, and every output of a signed build.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let keys = KeyPaths::in_dir(&tmp.path().join("keys"));
    let gen =
        kiln(&["keygen", "--out", tmp.path().join("keys").to_str().unwrap()], &[("KILN_PASSPHRASE", "s3cret pass")]);
    assert!(gen.status.success(), "keygen: {}", String::from_utf8_lossy(&gen.stderr));
    let signer = Signer::load_with(&keys.secret, || Ok("s3cret pass".into())).unwrap();
    let root = tmp.path().join("root");
    synthetic_root(&root);
    let out = tmp.path().join("out");
    write_outputs(&root, &out, Some(&signer));
    Fixture { root, out, keys, _tmp: tmp }
}

/// What `kiln build` does once the root filesystem exists: assemble, then every other output.
fn write_outputs(root: &Path, out: &Path, signer: Option<&Signer>) -> Vec<PathBuf> {
    std::fs::create_dir_all(out).unwrap();
    let plan = small_plan();
    let parts = out.parent().unwrap().join("parts");
    std::fs::create_dir_all(&parts).unwrap();
    let (esp, rootfs) = (parts.join("esp"), parts.join("root"));
    std::fs::write(&esp, (0..1_000_000u32).map(|i| (i * 7 % 256) as u8).collect::<Vec<_>>()).unwrap();
    std::fs::write(&rootfs, (0..3_000_000u32).map(|i| (i * 13 % 251) as u8).collect::<Vec<_>>()).unwrap();
    let inventory = kiln::release::sbom::inventory(root).unwrap();
    let boot = BootInfo { kernel_version: "6.12.0-test-amd64".into(), entry: String::new() };
    let mut staging = Staging::new(out);
    let digest = staging.write(&plan.image_name, |tmp| disk::assemble(tmp, &plan.layout, &[esp, rootfs])).unwrap();
    let formats = [OutputFormat::Img, OutputFormat::Zst, OutputFormat::Qcow2];
    let inputs = kiln::release::Inputs {
        plan: &plan,
        boot: &boot,
        digest: &digest,
        inventory: &inventory,
        formats: &formats,
        signer,
    };
    kiln::release::write_outputs(&mut staging, &inputs).unwrap();
    staging.commit().unwrap()
}

fn kiln(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args).env_remove("KILN_PASSPHRASE").env_remove("KILN_SIGN_KEY").stdin(std::process::Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn tool(program: &str, hint: &str) -> Command {
    assert!(kiln::host::cmd::have(program), "`{program}` is needed for this test: {hint}");
    Command::new(program)
}

fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], offset).unwrap();
}

fn verify(image: &Path, key: Option<&Path>) -> (bool, String) {
    let mut args = vec!["verify", image.to_str().unwrap()];
    if let Some(k) = key {
        args.extend(["--key", k.to_str().unwrap()]);
    }
    let out = kiln(&args, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "kiln verify crashed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), stdout)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn debian_minisign_accepts_the_signature_and_rejects_tampering() {
    let f = fixture();
    let minisign = || tool("minisign", "apt-get install minisign (scripts/setup-host)");
    let ok = minisign().args(["-Vm", "SHA256SUMS", "-p"]).arg(&f.keys.public).current_dir(&f.out).output().unwrap();
    assert!(
        ok.status.success(),
        "minisign rejected kiln's signature: {}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("timestamp:1735689600\tfile:SHA256SUMS"),
        "deterministic trusted comment"
    );
    let sums = std::fs::read_to_string(f.file("SHA256SUMS")).unwrap();
    let check = tool("sha256sum", "coreutils").args(["-c", "SHA256SUMS"]).current_dir(&f.out).output().unwrap();
    assert!(check.status.success(), "sha256sum -c: {}", String::from_utf8_lossy(&check.stdout));
    for name in [
        IMAGE,
        "defaults-1-x86_64.img.zst",
        "defaults-1-x86_64.qcow2",
        "defaults-1-x86_64.manifest.json",
        "defaults-1-x86_64.spdx.json",
        "defaults-1-x86_64.bmap",
    ] {
        assert!(sums.contains(&format!("  {name}\n")), "{name} missing from SHA256SUMS:\n{sums}");
    }
    flip(&f.file("SHA256SUMS"), 10);
    let bad = minisign().args(["-Vm", "SHA256SUMS", "-p"]).arg(&f.keys.public).current_dir(&f.out).output().unwrap();
    assert!(!bad.status.success(), "minisign accepted a tampered SHA256SUMS");
}

#[test]
fn sbom_is_valid_spdx_and_lists_what_dpkg_lists() {
    let f = fixture();
    let sbom = f.file("defaults-1-x86_64.spdx.json");
    let v = tool("pyspdxtools", "pip install spdx-tools").arg("-i").arg(&sbom).output().unwrap();
    assert!(
        v.status.success(),
        "pyspdxtools: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );

    let q = tool("dpkg-query", "dpkg")
        .arg(format!("--admindir={}", f.root.join("var/lib/dpkg").display()))
        .args(["-W", "-f", "${db:Status-Status} ${Package} ${Version} ${Architecture}\\n"])
        .output()
        .unwrap();
    assert!(q.status.success(), "dpkg-query: {}", String::from_utf8_lossy(&q.stderr));
    let mut want: Vec<String> = String::from_utf8_lossy(&q.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("installed "))
        .map(String::from)
        .collect();
    want.sort();
    assert_eq!(want.len(), 4, "{want:?}");

    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&sbom).unwrap()).unwrap();
    let pkgs = doc["packages"].as_array().unwrap();
    let deb = |name: &str, arch: &str| {
        pkgs.iter()
            .find(|p| p["name"] == name && p["SPDXID"].as_str().unwrap().ends_with(arch))
            .unwrap_or_else(|| panic!("{name}:{arch} not in the SBOM"))
    };
    let mut got: Vec<String> = pkgs
        .iter()
        .filter(|p| p["SPDXID"] != "SPDXRef-Image")
        .map(|p| {
            let purl = p["externalRefs"][0]["referenceLocator"].as_str().unwrap();
            format!(
                "{} {} {}",
                p["name"].as_str().unwrap(),
                p["versionInfo"].as_str().unwrap(),
                purl.rsplit("arch=").next().unwrap()
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, want, "the SBOM's packages differ from dpkg-query's");

    assert_eq!(doc["creationInfo"]["created"], "2025-01-01T00:00:00Z");
    assert!(doc["documentNamespace"].as_str().unwrap().contains(&small_plan().recipe_hash));
    let hello = deb("hello", "amd64");
    assert_eq!(
        hello["checksums"][0]["checksumValue"], HELLO_SHA,
        "the .deb SHA256 of the installed version, not the older one"
    );
    assert_eq!(hello["licenseDeclared"], "GPL-3.0-or-later AND GFDL-1.3-no-invariants-or-later");
    assert_eq!(hello["packageFileName"], "hello_2.10-3_amd64.deb");
    let foo = deb("libfoo++1", "amd64");
    assert_eq!(
        foo["externalRefs"][0]["referenceLocator"],
        "pkg:deb/debian/libfoo%2B%2B1@1%3A1.2%2Bdfsg-1%2Bb1?arch=amd64"
    );
    assert_eq!(
        foo["licenseDeclared"], "(MIT OR Apache-2.0) AND LicenseRef-public-domain",
        "copyright read through an absolute symlink inside the root"
    );
    assert_eq!(foo["checksums"][0]["checksumValue"], FOO_SHA);
    assert!(foo["sourceInfo"].as_str().unwrap().contains("foo 1:1.2+dfsg-1"));
    let bar = deb("libbar1", "i386");
    assert_eq!(bar["licenseDeclared"], "NOASSERTION", "free-form copyright file");
    assert!(bar.get("checksums").is_none(), "no list entry for this version: no checksum");
    assert!(doc["hasExtractedLicensingInfos"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["licenseId"] == "LicenseRef-public-domain"));
}

#[test]
fn verify_passes_untouched_outputs_and_says_when_unsigned() {
    let f = fixture();
    let (ok, out) = verify(&f.image(), Some(&f.keys.public));
    assert!(ok, "{out}");
    assert!(out.contains("ok   defaults-1-x86_64.img: partition 2 (root): sha256 matches"), "{out}");
    let (ok, out) = verify(&f.file("defaults-1-x86_64.img.zst"), Some(&f.keys.public));
    assert!(ok, "{out}");
    assert!(out.contains("ok   defaults-1-x86_64.img.zst: image (16777216 bytes) matches the manifest"), "{out}");
    let (ok, out) = verify(&f.image(), None);
    assert!(ok, "{out}");
    assert!(out.contains("signature NOT checked"), "{out}");
}

#[test]
fn verify_names_every_flipped_byte() {
    let f = fixture();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.file("defaults-1-x86_64.manifest.json")).unwrap()).unwrap();
    let part = |n: usize| m["partitions"][n]["offset"].as_u64().unwrap();
    let zst = "defaults-1-x86_64.img.zst";
    let zst_len = std::fs::metadata(f.file(zst)).unwrap().len();
    // (file to flip, offset, image to verify, text a FAIL line must contain)
    let cases: Vec<(&str, u64, &str, &str)> = vec![
        (IMAGE, part(1) + 100_000, IMAGE, "FAIL defaults-1-x86_64.img: partition 2 (root): contents differ"),
        (IMAGE, part(0) + 512, IMAGE, "FAIL defaults-1-x86_64.img: partition 1 (esp): contents differ"),
        (IMAGE, 512 + 24, IMAGE, "FAIL defaults-1-x86_64.img: partition table (GPT) unreadable"),
        (IMAGE, 600_000, IMAGE, "FAIL defaults-1-x86_64.img: image differs from the manifest outside the partitions"),
        (IMAGE, part(1) + 5, zst, "FAIL defaults-1-x86_64.img: checksum mismatch"),
        (zst, zst_len / 2, zst, "FAIL defaults-1-x86_64.img.zst:"),
        (zst, zst_len / 2, IMAGE, "FAIL defaults-1-x86_64.img.zst: checksum mismatch"),
        ("defaults-1-x86_64.manifest.json", 40, IMAGE, "FAIL defaults-1-x86_64.manifest.json: checksum mismatch"),
        ("defaults-1-x86_64.spdx.json", 200, IMAGE, "FAIL defaults-1-x86_64.spdx.json: checksum mismatch"),
        ("defaults-1-x86_64.qcow2", 1000, IMAGE, "FAIL defaults-1-x86_64.qcow2: checksum mismatch"),
        ("SHA256SUMS", 10, IMAGE, "signature of SHA256SUMS does not match"),
        ("SHA256SUMS.minisig", 90, IMAGE, "FAIL SHA256SUMS.minisig:"),
    ];
    for (target, offset, image, expect) in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&f.out, dir.path());
        flip(&dir.path().join(target), offset);
        let (ok, out) = verify(&dir.path().join(image), Some(&f.keys.public));
        assert!(!ok, "flipping byte {offset} of {target} went unnoticed:\n{out}");
        assert!(
            out.lines().any(|l| l.starts_with("FAIL") && l.contains(expect)) || out.contains(expect),
            "flipping byte {offset} of {target}: expected `{expect}` in:\n{out}"
        );
        assert!(out.lines().last().unwrap().starts_with("result: FAIL"), "{out}");
    }
}

#[test]
fn wrong_key_and_wrong_passphrase_are_clear_errors() {
    let f = fixture();
    let other = KeyPaths::with_prefix(&f.out.parent().unwrap().join("other"));
    sign::keygen(&other, None, false).unwrap();
    let (ok, out) = verify(&f.image(), Some(&other.public));
    assert!(!ok);
    assert!(out.contains("FAIL SHA256SUMS.minisig: signature of SHA256SUMS was made by key id"), "{out}");

    // The key is decrypted before any build work (and before the root check).
    let empty = f.out.parent().unwrap().join("empty-out");
    let b = kiln(
        &[
            "build",
            "tests/recipes/good/defaults.toml",
            "--out",
            empty.to_str().unwrap(),
            "--sign",
            f.keys.secret.to_str().unwrap(),
        ],
        &[("KILN_PASSPHRASE", "not it")],
    );
    let stderr = String::from_utf8_lossy(&b.stderr);
    assert_eq!(b.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("wrong passphrase for the secret key"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!empty.exists());
    let b = kiln(
        &["build", "tests/recipes/good/defaults.toml", "--out", empty.to_str().unwrap()],
        &[("KILN_SIGN_KEY", f.keys.secret.to_str().unwrap())],
    );
    assert!(
        String::from_utf8_lossy(&b.stderr).contains("KILN_PASSPHRASE"),
        "no tty, no env: say how to give the passphrase"
    );
}

#[test]
fn outputs_are_deterministic_and_hold_no_secret() {
    let f = fixture();
    let again = f.out.parent().unwrap().join("again");
    let signer = Signer::load_with(&f.keys.secret, || Ok("s3cret pass".into())).unwrap();
    write_outputs(&f.root, &again, Some(&signer));
    for name in [
        IMAGE,
        "defaults-1-x86_64.img.zst",
        "defaults-1-x86_64.qcow2",
        "defaults-1-x86_64.manifest.json",
        "defaults-1-x86_64.spdx.json",
        "defaults-1-x86_64.bmap",
        "SHA256SUMS",
    ] {
        assert_eq!(
            std::fs::read(f.file(name)).unwrap(),
            std::fs::read(again.join(name)).unwrap(),
            "{name} differs between two runs"
        );
    }
    let secret_line = std::fs::read_to_string(&f.keys.secret).unwrap().lines().nth(1).unwrap().to_string();
    for e in std::fs::read_dir(&f.out).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        assert!(!data.windows(secret_line.len()).any(|w| w == secret_line.as_bytes()));
    }
    // An unsigned build over a signed one removes the signature that no longer matches.
    write_outputs(&f.root, &f.out, None);
    assert!(!f.file("SHA256SUMS.minisig").exists());
    let m = std::fs::read_to_string(f.file("defaults-1-x86_64.manifest.json")).unwrap();
    assert!(m.contains("\"signing_key\": null"), "{m}");
}

/// Keys work both ways between kiln and Debian's minisign: a key pair made by `minisign -G -W`
/// (no password) signs through kiln (`Signer::load`, what `kiln build --sign KEY` calls; no
/// passphrase is asked for), and minisign and `kiln verify` accept the signature; a key from
/// `kiln keygen --unencrypted` signs what minisign accepts too (the encrypted one:
/// `debian_minisign_accepts_the_signature_and_rejects_tampering`).
#[test]
fn minisign_made_key_signs_through_kiln_and_kiln_keys_verify_with_minisign() {
    let tmp = tempfile::tempdir().unwrap();
    let (pk, sk) = (tmp.path().join("minisign.pub"), tmp.path().join("minisign.key"));
    let g = tool("minisign", "apt-get install minisign (scripts/setup-host)")
        .args(["-G", "-W", "-p"])
        .arg(&pk)
        .arg("-s")
        .arg(&sk)
        .output()
        .unwrap();
    assert!(g.status.success(), "minisign -G -W: {}", String::from_utf8_lossy(&g.stderr));
    std::env::remove_var("KILN_PASSPHRASE");
    let signer = Signer::load(&sk).unwrap_or_else(|e| panic!("kiln cannot load minisign's key: {e:#}"));
    let root = tmp.path().join("root");
    synthetic_root(&root);
    let kiln_key = KeyPaths::with_prefix(&tmp.path().join("kiln-plain"));
    let gen = kiln(&["keygen", "--unencrypted", "-o", tmp.path().join("kiln-plain").to_str().unwrap()], &[]);
    assert!(gen.status.success(), "keygen: {}", String::from_utf8_lossy(&gen.stderr));
    let kiln_signer = Signer::load(&kiln_key.secret).unwrap();
    for (name, signer, public) in [("by-minisign-key", &signer, &pk), ("by-kiln-key", &kiln_signer, &kiln_key.public)] {
        let out = tmp.path().join(name);
        write_outputs(&root, &out, Some(signer));
        let v = tool("minisign", "").args(["-Vm", "SHA256SUMS", "-p"]).arg(public).current_dir(&out).output().unwrap();
        assert!(
            v.status.success(),
            "{name}: minisign -V rejected the signature: {}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
        let (ok, text) = verify(&out.join(IMAGE), Some(public));
        assert!(ok && text.contains("result: ok (signature, checksums and manifest)"), "{name}: {text}");
    }
}
