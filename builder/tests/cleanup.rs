//! "On failure or Ctrl-C nothing is left at the output path, nothing stays mounted, no child
//! keeps running", proved from outside kiln: each case runs kiln in a session of its own
//! (setsid), stops it with SIGINT or SIGTERM at a chosen stage (or lets a stage fail), and then
//! checks, after kiln has exited:
//!
//! - no process of kiln's session is left (every /proc/PID/stat, so double forks, other process
//!   groups and reparented orphans are found too),
//! - nothing is mounted below the build's work directory anywhere in the system (the init
//!   process's mount table, /proc/1/mountinfo, not only this test's view),
//! - the work directory holds nothing, and the output directory has no file.
//!
//! Cases: SIGINT and SIGTERM during customize (the root already cached), during image assembly,
//! during release (signature and every format); a stage that fails (a unit to enable that the
//! image lacks); `kiln test` stopped while QEMU boots. Every build uses the run's shared cache
//! (never ~/.cache/kiln) with minimal's root cached by the fixture: no case bootstraps.
//! KILN_E2E=1 only (scripts/test).
mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// kiln running in its own session; its stderr lines arrive on `lines` (and are echoed).
struct Session {
    child: Child,
    sid: i32,
    lines: Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

fn start(args: &[&str], env: &[(&str, &str)]) -> Session {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: setsid(2) in the forked child before exec; async-signal-safe, touches no memory.
    unsafe {
        cmd.pre_exec(|| if libc::setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
    }
    let mut child = cmd.spawn().expect("starting kiln");
    let sid = child.id() as i32;
    let (tx, lines) = std::sync::mpsc::channel();
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (pipe, all) = (child.stderr.take().unwrap(), stderr.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("  | {line}");
            all.lock().unwrap().push_str(&format!("{line}\n"));
            let _ = tx.send(line);
        }
    });
    Session { child, sid, lines, stderr }
}

impl Session {
    /// Wait for a stderr line containing `needle`; panic if kiln exits first or it takes too long.
    fn wait_for(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(l) if l.contains(needle) => return,
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().unwrap();
                    panic!("kiln ended ({status}) before `{needle}`:\n{}", self.stderr());
                }
            }
            assert!(Instant::now() < deadline, "no `{needle}` within {limit:?}:\n{}", self.stderr());
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0, "kill failed");
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "kiln did not exit within {limit:?}:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

/// Processes whose session id is `sid`, as "PID (COMM) STATE", from every /proc/PID/stat.
fn session_members(sid: i32) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // "PID (COMM) STATE PPID PGRP SESSION ...": COMM may hold spaces and parentheses.
        let Some(close) = stat.rfind(')') else { continue };
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if rest.get(3).and_then(|s| s.parse::<i32>().ok()) == Some(sid) {
            found.push(format!("{} {}", &stat[..close + 1], rest[0]));
        }
    }
    found
}

/// Mount points below `dir` in `mountinfo` (field 5, octal escapes undone).
fn mounts_below(mountinfo: &str, dir: &Path) -> Vec<String> {
    let unescape =
        |s: &str| s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\");
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|m| Path::new(m).starts_with(dir))
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// After kiln exited: nothing of its session runs, nothing is mounted below `work`, `work`
/// is empty and `out` holds no file.
fn assert_nothing_left(s: &Session, work: &Path, out: Option<&Path>) {
    // Processes that were already killed may need a moment to be reaped by init.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut left = session_members(s.sid);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = session_members(s.sid);
    }
    assert!(left.is_empty(), "processes of kiln's session (sid {}) still running: {left:#?}\n{}", s.sid, s.stderr());
    let work = work.canonicalize().unwrap_or_else(|_| work.to_path_buf());
    for table in ["/proc/1/mountinfo", "/proc/self/mountinfo"] {
        let m = mounts_below(&std::fs::read_to_string(table).unwrap(), &work);
        assert!(m.is_empty(), "mounted below {} ({table}): {m:#?}", work.display());
    }
    assert!(entries(&work).is_empty(), "work directory not removed: {:?} in {}", entries(&work), work.display());
    if let Some(out) = out {
        assert!(entries(out).is_empty(), "files left in the output directory: {:?}", entries(out));
    }
}

struct Case {
    base: PathBuf,
    out: PathBuf,
    work: PathBuf,
}

fn case(name: &str) -> Case {
    let base = e2e_dir().join("cleanup").join(name);
    if base.exists() {
        run("rm", &["-rf", "--one-file-system", base.to_str().unwrap()]);
    }
    let (out, work) = (base.join("out"), base.join("work"));
    std::fs::create_dir_all(&work).unwrap();
    Case { base, out, work }
}

/// A warm build of recipes/minimal.toml (signed, every format) stopped by `sig` once the stage
/// `stage` has started and, with `staged`, once a temporary output whose name starts with it
/// is in the output directory: exit 130, one of the stages `stopped_in` reported as failed (the
/// signal did not only take effect after the stage), and nothing left.
fn interrupt_build_at(stage: &str, staged: Option<&str>, stopped_in: &[&str], sig: i32, name: &str) {
    let Some(fx) = minimal() else { return };
    let c = case(name);
    let keys = c.base.join("keys");
    let gen = kiln(&["keygen", "--unencrypted", "--out", keys.to_str().unwrap()]);
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    let mut s = start(
        &[
            "build",
            "../recipes/minimal.toml",
            "--out",
            c.out.to_str().unwrap(),
            "--cache",
            fx.cache.to_str().unwrap(),
            "--work-dir",
            c.work.to_str().unwrap(),
            "--sign",
            keys.join("kiln.key").to_str().unwrap(),
            "--format",
            "zst",
            "--format",
            "qcow2",
        ],
        &[],
    );
    s.wait_for(stage, Duration::from_secs(600));
    if let Some(prefix) = staged {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !entries(&c.out).iter().any(|f| f.starts_with(prefix)) {
            assert!(s.child.try_wait().unwrap().is_none(), "kiln ended before writing {prefix}*:\n{}", s.stderr());
            assert!(Instant::now() < deadline, "no {prefix}* in {}", c.out.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    s.signal(sig);
    let status = s.wait(Duration::from_secs(180));
    let err = s.stderr();
    assert_eq!(status.code(), Some(130), "exit status after signal {sig} during `{stage}`:\n{err}");
    assert!(err.contains("kiln: interrupted; cleaned up"), "{err}");
    assert!(!err.contains("kiln: built "), "the build finished anyway:\n{err}");
    assert!(
        stopped_in.iter().any(|s| err.contains(s)),
        "kiln did not stop in {stopped_in:?} (signal {sig} sent at `{stage}`):\n{err}"
    );
    assert_nothing_left(&s, &c.work, Some(&c.out));
}

// Stage names as kiln prints them (`kiln: [N/M] NAME ...` at the start, `... failed after` when
// the stage is stopped); the numbers are left out so that a new stage elsewhere does not matter.
const CUSTOMIZE: &str = "] configure system (host name, users, agent) ...";
const CUSTOMIZE_STAGES: &[&str] = &[
    "] configure system (host name, users, agent) failed after",
    "] apply overlays, repositories, artifacts, first-boot actions, units failed after",
];
const ASSEMBLE: &str = "] assemble GPT disk image ...";
const RELEASE: &str = "] write formats, manifest, SBOM, checksums, signature ...";
/// The image while it is assembled; the qcow2 while qemu-img writes it (after the .img.zst).
const IMG_PARTIAL: Option<&str> = Some(".minimal-0.1.0-x86_64.img.");
const QCOW2_PARTIAL: Option<&str> = Some(".minimal-0.1.0-x86_64.qcow2.");

#[test]
fn sigint_during_customize() {
    interrupt_build_at(CUSTOMIZE, None, CUSTOMIZE_STAGES, libc::SIGINT, "int-customize");
}

#[test]
fn sigterm_during_customize() {
    interrupt_build_at(CUSTOMIZE, None, CUSTOMIZE_STAGES, libc::SIGTERM, "term-customize");
}

#[test]
fn sigint_during_assembly() {
    interrupt_build_at(
        ASSEMBLE,
        IMG_PARTIAL,
        &["] assemble GPT disk image failed after"],
        libc::SIGINT,
        "int-assemble",
    );
}

#[test]
fn sigterm_during_assembly() {
    interrupt_build_at(
        ASSEMBLE,
        IMG_PARTIAL,
        &["] assemble GPT disk image failed after"],
        libc::SIGTERM,
        "term-assemble",
    );
}

#[test]
fn sigint_during_release() {
    interrupt_build_at(
        RELEASE,
        QCOW2_PARTIAL,
        &["] write formats, manifest, SBOM, checksums, signature failed after"],
        libc::SIGINT,
        "int-release",
    );
}

#[test]
fn sigterm_during_release() {
    interrupt_build_at(
        RELEASE,
        QCOW2_PARTIAL,
        &["] write formats, manifest, SBOM, checksums, signature failed after"],
        libc::SIGTERM,
        "term-release",
    );
}

/// A stage that fails after the overlay is mounted (a unit to enable that the image does not
/// have): the failing stage named, the culprit named at its recipe position (bad input: exit 2,
/// as for every error that points at the recipe), nothing left.
#[test]
fn failing_stage_leaves_nothing_behind() {
    let Some(fx) = minimal() else { return };
    let c = case("failing-stage");
    let mut s = start(
        &[
            "build",
            "tests/recipes/e2e/bad-enable.toml",
            "--out",
            c.out.to_str().unwrap(),
            "--cache",
            fx.cache.to_str().unwrap(),
            "--work-dir",
            c.work.to_str().unwrap(),
        ],
        &[],
    );
    let status = s.wait(Duration::from_secs(600));
    let err = s.stderr();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("] apply overlays, repositories, artifacts, first-boot actions, units failed after"), "{err}");
    assert!(err.contains("bad-enable.toml:8:11: key `system.enable[0]`"), "the recipe position is not named:\n{err}");
    assert!(err.contains("kiln-no-such-unit.service"), "the culprit is not named:\n{err}");
    assert_nothing_left(&s, &c.work, Some(&c.out));
}

/// `kiln test` stopped while the guest boots: no QEMU (nor anything else of kiln's session) is
/// left, no temporary file (firmware variables) stays behind, and the image is unchanged.
#[test]
fn kiln_test_interrupted_during_boot_leaves_no_qemu() {
    let Some(fx) = minimal() else { return };
    let before = sha256sum(&fx.image);
    let listing = entries(fx.image.parent().unwrap());
    for (sig, name) in [(libc::SIGINT, "int-test"), (libc::SIGTERM, "term-test")] {
        let c = case(name);
        let log = c.base.join("serial.log");
        let tmp = c.work.to_str().unwrap().to_string();
        let mut s = start(
            &["test", fx.image.to_str().unwrap(), "--timeout", "600", "--serial-log", log.to_str().unwrap()],
            &[("TMPDIR", &tmp)],
        );
        // The guest is booting once QEMU runs and its firmware has written to the serial console.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let qemu = session_members(s.sid).iter().any(|p| p.contains("(qemu-system-"));
            if qemu && std::fs::metadata(&log).map(|m| m.len() > 0).unwrap_or(false) {
                break;
            }
            assert!(s.child.try_wait().unwrap().is_none(), "kiln test ended before the boot:\n{}", s.stderr());
            assert!(Instant::now() < deadline, "QEMU never started writing {}", log.display());
            std::thread::sleep(Duration::from_millis(200));
        }
        s.signal(sig);
        let status = s.wait(Duration::from_secs(120));
        assert_eq!(status.code(), Some(130), "exit status of kiln test after signal {sig}:\n{}", s.stderr());
        assert_nothing_left(&s, &c.work, None);
    }
    assert_eq!(entries(fx.image.parent().unwrap()), listing, "files appeared beside the image");
    assert_eq!(sha256sum(&fx.image), before, "the interrupted test changed the image");
}
