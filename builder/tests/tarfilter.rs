//! kiln's `tarfilter` against the filter it stands in for: a package built by dpkg-deb, read
//! back by `dpkg-deb --fsys-tarfile` (what mmdebstrap pipes through the filter), filtered with
//! kiln's no-docs rules by Debian's `mmtarfilter` and by kiln; GNU tar lists and extracts both
//! outputs the same way, and the rules did leave members out.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const RULES: &[&str] = &[
    "--path-exclude=/usr/share/doc/*",
    "--path-include=/usr/share/doc/*/copyright",
    "--path-exclude=/usr/share/man/*",
    "--path-exclude=/usr/share/info/*",
];

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn write(root: &Path, rel: &str, body: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

/// A package tree with documentation, manuals, long names, links and a hard link.
fn package(dir: &Path) -> PathBuf {
    let root = dir.join("pkg");
    write(&root, "DEBIAN/control", "Package: kiln-tarfilter-test\nVersion: 1\nArchitecture: all\nMaintainer: kiln <kiln@example.org>\nDescription: test\n");
    write(&root, "usr/bin/tool", "#!/bin/sh\n");
    write(&root, "usr/share/doc/kiln-tarfilter-test/copyright", "c\n");
    write(&root, "usr/share/doc/kiln-tarfilter-test/changelog.Debian.gz", "x\n");
    write(&root, "usr/share/doc/kiln-tarfilter-test/examples/deep/copyright", "kept: the include matches\n");
    write(&root, "usr/share/man/man1/tool.1.gz", "m\n");
    write(&root, "usr/share/info/tool.info.gz", "i\n");
    let long = format!("usr/share/doc/kiln-tarfilter-test/{}/notes", "n".repeat(120));
    write(&root, &long, "long, excluded\n");
    let long_kept = format!("usr/lib/kiln-tarfilter-test/{}/data", "d".repeat(150));
    write(&root, &long_kept, "long, kept\n");
    std::os::unix::fs::symlink("../../bin/tool", root.join("usr/share/man/man1/link.1.gz")).unwrap();
    std::os::unix::fs::symlink("tool", root.join("usr/bin/tool-link")).unwrap();
    std::fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-hard")).unwrap();
    let deb = dir.join("test.deb");
    run(Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&root).arg(&deb));
    deb
}

/// `program RULES` with the .deb's file system tree on stdin; its output.
fn filtered(program: &Path, deb: &Path) -> Vec<u8> {
    let tar = run(Command::new("dpkg-deb").arg("--fsys-tarfile").arg(deb));
    let mut child = Command::new(program)
        .args(RULES)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &tar));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{} failed", program.display());
    out.stdout
}

/// GNU tar's verbose listing, and the extracted tree's `find` listing.
fn listing(tar: &[u8], dir: &Path) -> (String, String) {
    let file = dir.with_extension("tar");
    std::fs::write(&file, tar).unwrap();
    let list = run(Command::new("tar").args(["--numeric-owner", "-tvf"]).arg(&file));
    std::fs::create_dir_all(dir).unwrap();
    run(Command::new("tar").arg("-C").arg(dir).args(["--numeric-owner", "-xf"]).arg(&file));
    let tree = run(Command::new("find").arg(".").args(["-printf", "%p %y %m %n %s %l\n"]).current_dir(dir));
    let mut tree: Vec<_> = String::from_utf8(tree).unwrap().lines().map(String::from).collect();
    tree.sort();
    (String::from_utf8(list).unwrap(), tree.join("\n"))
}

#[test]
fn kiln_tarfilter_extracts_like_mmtarfilter() {
    let mmtarfilter = Path::new("/usr/bin/mmtarfilter");
    assert!(mmtarfilter.is_file(), "mmtarfilter (package mmdebstrap) is needed: scripts/setup-host installs it");
    let dir = tempfile::tempdir().unwrap();
    let deb = package(dir.path());
    let link = dir.path().join("tarfilter");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kiln"), &link).unwrap();

    let theirs = listing(&filtered(mmtarfilter, &deb), &dir.path().join("theirs"));
    let ours = listing(&filtered(&link, &deb), &dir.path().join("ours"));
    assert_eq!(ours.1, theirs.1, "the extracted trees differ");
    let names =
        |l: &str| l.lines().map(|l| l.split_whitespace().skip(5).collect::<Vec<_>>().join(" ")).collect::<Vec<_>>();
    assert_eq!(names(&ours.0), names(&theirs.0), "the listings differ");

    let tree = &ours.1;
    for kept in
        ["./usr/share/doc/kiln-tarfilter-test/copyright", "./usr/bin/tool-hard", "./usr/lib/kiln-tarfilter-test/"]
    {
        assert!(tree.contains(kept), "{kept} is missing:\n{tree}");
    }
    for gone in ["changelog.Debian.gz", "tool.1.gz", "tool.info.gz", "link.1.gz", "/notes"] {
        assert!(!tree.contains(gone), "{gone} was not left out:\n{tree}");
    }
    assert!(tree.contains("examples/deep/copyright"), "the include matches below a subdirectory too:\n{tree}");
}
