//! Shared helpers of the end-to-end tests.
#![allow(dead_code)]
pub mod guest;
pub mod serve;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn e2e_enabled() -> bool {
    let on = std::env::var_os("KILN_E2E").is_some_and(|v| v == "1");
    if !on {
        eprintln!("end-to-end test not run: it needs root, the host tools and the Debian mirror; `scripts/test` runs it (KILN_E2E=1)");
    }
    on
}

/// A test that cannot do its job here says so loudly, and under `KILN_E2E=1` (scripts/test,
/// CI) fails instead: no end-to-end test may pass without having checked anything. Callers
/// return right after (when KILN_E2E is not 1).
pub fn skip(reason: &str) {
    eprintln!("E2E TEST SKIPPED: {reason}");
    if std::env::var_os("KILN_E2E").is_some_and(|v| v == "1") {
        panic!("E2E TEST SKIPPED: {reason} (not allowed with KILN_E2E=1: the check would not have run)");
    }
}

/// Scratch space of this test run. `scripts/test` sets KILN_E2E_DIR to one fresh directory for
/// all test binaries, so they share one cache (the tools tree and each root are bootstrapped
/// once per run, the first time cold); otherwise each test binary gets its own.
pub fn e2e_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("KILN_E2E_DIR").map(PathBuf::from).unwrap_or_else(|| {
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e").join(format!("run-{}", std::process::id()))
        });
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
    .clone()
}

/// The cache shared by the tests of this run.
pub fn shared_cache() -> PathBuf {
    e2e_dir().join("cache")
}

pub fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).stdin(Stdio::null()).output().expect("running kiln")
}

/// `kiln` with extra environment variables.
pub fn kiln_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args).stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running kiln")
}

/// Run an outside tool; panic with its output unless it exits 0. Returns stdout.
pub fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| panic!("{tool}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{tool} {args:?} failed ({}):\n{text}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `path` exists in the ext4 file system image `fs` (debugfs `stat`, no mount). Panics
/// when debugfs shows neither the inode nor "File not found", so a broken read never passes for
/// an absent file.
pub fn exists_in(fs: &Path, path: &str) -> bool {
    let out = Command::new("debugfs").args(["-R", &format!("stat {path}")]).arg(fs).output().expect("running debugfs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "debugfs stat {path} failed ({}):\n{stdout}{stderr}", out.status);
    if stdout.contains("Inode:") {
        return true;
    }
    assert!(
        stderr.contains(&format!("{path}: File not found")),
        "debugfs stat {path}: neither its inode nor `File not found`:\n{stdout}{stderr}"
    );
    false
}

/// `kiln build` to completion; returns the image path (the last line of stdout).
pub fn build(recipe: &str, out_dir: &Path, cache: &Path) -> PathBuf {
    let start = Instant::now();
    let out = kiln(&["build", recipe, "--out", out_dir.to_str().unwrap(), "--cache", cache.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "kiln build {recipe} failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let image = PathBuf::from(stdout.lines().last().expect("kiln build printed no path"));
    assert!(image.is_file(), "{} is not a file", image.display());
    eprintln!("built {} in {:.1}s", image.display(), start.elapsed().as_secs_f64());
    image
}

pub fn spawn_build(recipe: &str, out_dir: &Path, extra: &[&str]) -> Child {
    std::fs::create_dir_all(out_dir).unwrap();
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", recipe, "--out", out_dir.to_str().unwrap()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

pub struct Minimal {
    pub dir: PathBuf,
    pub cache: PathBuf,
    pub image: PathBuf,
    pub plan: serde_json::Value,
}

/// recipes/minimal.toml, built once per test run (cold: empty cache). None when e2e is off.
pub fn minimal() -> Option<&'static Minimal> {
    static FX: OnceLock<Minimal> = OnceLock::new();
    if !e2e_enabled() {
        return None;
    }
    Some(FX.get_or_init(|| {
        let dir = e2e_dir();
        let cache = shared_cache();
        let image = build("../recipes/minimal.toml", &dir.join("minimal"), &cache);
        let out = kiln(&["check", "--print", "../recipes/minimal.toml"]);
        assert!(out.status.success());
        Minimal { plan: serde_json::from_slice(&out.stdout).unwrap(), dir, cache, image }
    }))
}

/// Copy one partition (as described in the plan's layout) out of an image.
pub fn cut_partition(image: &Path, part: &serde_json::Value, dest: &Path) -> PathBuf {
    let (offset, size) = (part["offset"].as_u64().unwrap(), part["size"].as_u64().unwrap());
    run(
        "dd",
        &[
            &format!("if={}", image.display()),
            &format!("of={}", dest.display()),
            "bs=1M",
            &format!("skip={}", offset >> 20),
            &format!("count={}", size >> 20),
            "conv=sparse",
            "status=none",
        ],
    );
    dest.to_path_buf()
}

pub fn has_mounts_below(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else { return false };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().filter_map(|l| l.split(' ').nth(4)).any(|m| Path::new(m).starts_with(&dir))
}

/// Processes (other than us) whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()) && e.file_name().to_string_lossy() != me
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok().map(|c| (e.file_name(), c)))
        .map(|(pid, c)| (pid, String::from_utf8_lossy(&c).replace('\0', " ")))
        .filter(|(_, c)| c.contains(needle))
        .map(|(pid, c)| format!("{}: {c}", pid.to_string_lossy()))
        .collect()
}

/// SIGINT the build; it must exit 130 leaving no output file, no work files, no mounts, no processes.
pub fn interrupt_and_check(mut child: Child, out_dir: &Path, work: &Path) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "kiln did not stop within 180s of SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(130), "exit status after SIGINT");
    let leftovers: Vec<_> = std::fs::read_dir(out_dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.is_empty(), "files left in the output directory: {leftovers:?}");
    let work_left: Vec<_> =
        std::fs::read_dir(work).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(work_left.is_empty(), "work files left: {work_left:?}");
    assert!(!has_mounts_below(work), "mounts left below {}", work.display());
    let procs = processes_mentioning(work.to_str().unwrap());
    assert!(procs.is_empty(), "processes left running: {procs:?}");
}

/// Every entry below `dir` (not following symlinks) as "path type size mtime mode", sorted:
/// two equal states mean no file was added, removed, resized, rewritten or re-moded.
pub fn tree_state(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    fn walk(top: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let kind = if m.is_dir() {
                'd'
            } else if m.file_type().is_symlink() {
                'l'
            } else {
                'f'
            };
            out.push(format!(
                "{} {kind} {} {}.{:09} {:o}",
                e.path().strip_prefix(top).unwrap().display(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.mode()
            ));
            if m.is_dir() {
                walk(top, &e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// sha256 of a file, by coreutils' sha256sum.
pub fn sha256sum(path: &Path) -> String {
    run("sha256sum", &[path.to_str().unwrap()]).split_whitespace().next().unwrap().to_string()
}

/// `kiln build` that must fail early: returns stderr; asserts exit status, speed, empty output,
/// and that no bootstrap work began: no stage after the first ("check hosts, repositories,
/// artifacts") started, no new root appeared in the cache's roots/, and mmdebstrap never ran
/// (a stand-in first on PATH records any start before handing over to the real one).
pub fn build_fails(recipe: &Path, out_dir: &Path, cache: &Path, extra: &[&str], status: i32) -> String {
    let roots = || -> Vec<String> {
        std::fs::read_dir(cache.join("roots"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    let roots_before = roots();
    let spy = tempfile::tempdir().unwrap();
    let marker = spy.path().join("mmdebstrap-ran");
    let real = run("sh", &["-c", "command -v mmdebstrap"]).trim().to_string();
    let shim = spy.path().join("mmdebstrap");
    std::fs::write(&shim, format!("#!/bin/sh\necho \"$@\" >> '{}'\nexec '{real}' \"$@\"\n", marker.display())).unwrap();
    run("chmod", &["755", shim.to_str().unwrap()]);
    let path = format!("{}:{}", spy.path().display(), std::env::var("PATH").unwrap_or_default());
    let start = Instant::now();
    let mut args =
        vec!["build", recipe.to_str().unwrap(), "--out", out_dir.to_str().unwrap(), "--cache", cache.to_str().unwrap()];
    args.extend(extra);
    let out = kiln_env(&args, &[("PATH", &path)]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(status), "{err}");
    assert!(start.elapsed().as_secs() < 90, "failed only after {:?}: not early\n{err}", start.elapsed());
    let later: Vec<&str> = err.lines().filter(|l| l.starts_with("kiln: [") && !l.starts_with("kiln: [1/")).collect();
    assert!(later.is_empty(), "stages after the outside-input check started:\n{err}");
    assert!(!marker.exists(), "mmdebstrap ran: {}\n{err}", std::fs::read_to_string(&marker).unwrap_or_default());
    assert_eq!(roots(), roots_before, "a root appeared in {}/roots", cache.display());
    let left: Vec<_> =
        std::fs::read_dir(out_dir).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "files left in the output directory: {left:?}");
    err
}
