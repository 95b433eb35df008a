//! `kiln test`: boot headless with `kiln.test` on the kernel command line; the guest agent runs
//! the image's checks and prints machine-readable lines on the serial console, which are read
//! here. Nothing sleeps and hopes: every wait ends on a marker, the guest powering off, or the deadline.
use super::{machine, VmOptions};
use crate::host::cmd;
use crate::host::progress::Milestones;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SERIAL_TAIL: usize = 40;

/// Milestones of a boot after the firmware's start, and the serial console text that marks each
/// (UEFI boot manager, EFI stub kernel, initramfs, systemd as PID 1); `ready` is the agent's line.
const BOOT_MILESTONES: &[(&str, &str)] = &[
    ("BdsDxe: starting ", "boot loader"),
    ("Linux version ", "kernel"),
    ("Run /init as init process", "initrd"),
    ("systemd[1]: systemd ", "systemd"),
];

/// One check the guest ran (`"ok"` in JSON, as `kiln test --json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: String,
    #[serde(rename = "ok")]
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    pub accel: String,
    /// Seconds from starting QEMU to the agent's KILN-READY line.
    pub ready_after: f64,
    /// systemd's verdict when the boot finished (running, degraded, ...).
    pub system_state: String,
    pub checks: Vec<CheckResult>,
    pub passed: bool,
    /// Guest ports that were reachable on the host's 127.0.0.1 while the guest ran.
    pub forwards: Vec<super::Forward>,
    /// With `analyze`: the guest's `systemd-analyze` time, top of blame and critical chain.
    pub analysis: Vec<String>,
}

enum Event {
    Line(String),
    Closed,
}

/// How one `kiln test` boot runs.
pub struct TestRun<'a> {
    /// Give up when no verdict has arrived after this long.
    pub timeout: Duration,
    /// Where the whole serial console is written.
    pub log: &'a Path,
    /// The guest's writes reach the image.
    pub persist: bool,
    /// The agent also reports where the boot's time went (`systemd-analyze`), after its checks.
    pub analyze: bool,
}

/// Boot `image`, wait for the agent's verdict, and return the report (also on failed checks).
/// Errors only when no verdict arrives: QEMU fails, the guest stops early, or the timeout passes.
pub fn test(image: &Path, opts: &VmOptions, run: &TestRun) -> Result<TestReport> {
    // A forwarded port is free when kiln picks it, but another program may take it before QEMU
    // binds it: QEMU then stops at once, and new ports are picked.
    for _ in 1..HOSTFWD_TRIES {
        match test_once(image, opts, run) {
            Err(e) if format!("{e:#}").contains(HOSTFWD_TAKEN) => {
                eprintln!("kiln: a forwarded port was taken before QEMU could bind it; picking new ports")
            }
            other => return other,
        }
    }
    test_once(image, opts, run)
}

/// How often `kiln test` picks new ports when QEMU cannot bind one.
const HOSTFWD_TRIES: usize = 3;
/// QEMU's words when a `hostfwd` port is taken.
const HOSTFWD_TAKEN: &str = "Could not set up host forwarding rule";

fn test_once(image: &Path, opts: &VmOptions, run: &TestRun) -> Result<TestReport> {
    let TestRun { timeout, log, persist, analyze } = *run;
    let m = machine(image, opts, persist, Some(if analyze { "kiln.test kiln.analyze" } else { "kiln.test" }))?;
    let mut log_file = std::fs::File::create(log).with_context(|| format!("creating serial log {}", log.display()))?;
    eprintln!(
        "kiln: booting {} with {}",
        image.display(),
        if m.accel == "tcg" { "TCG (software emulation: slow, a boot can take minutes)" } else { "KVM" }
    );
    for f in &m.forwards {
        eprintln!("kiln: {} (guest port {}): {}", f.name, f.guest, f.reach);
    }
    let start = Instant::now();
    let mut child = m.cmd.spawn(Stdio::null(), Stdio::piped(), Stdio::piped())?;
    let (rx, err_thread) = read_output(&mut child)?;
    let (tail, ready, checks, verdict, analysis) = read_serial(&rx, &mut log_file, start, timeout, m.accel, log)?;
    // The agent powers the guest off after its verdict; give it a moment, then stop QEMU.
    let off_deadline = Instant::now() + Duration::from_secs(60);
    while verdict.is_some() && child.try_wait()?.is_none() && Instant::now() < off_deadline {
        cmd::check_interrupted()?;
        while let Ok(Event::Line(line)) = rx.recv_timeout(Duration::from_millis(200)) {
            let _ = writeln!(log_file, "{line}");
        }
    }
    child.stop(Duration::from_secs(5));
    let qemu_err = err_thread.join().unwrap_or_default();
    let Some(passed) = verdict else {
        let qemu_err = qemu_err.trim();
        bail!(
            "the guest stopped before reporting a result{}; serial log: {}\n  last serial lines:\n    {}",
            if qemu_err.is_empty() { String::new() } else { format!(" (qemu: {qemu_err})") },
            log.display(),
            tail.join("\n    ")
        );
    };
    let (ready_after, system_state) = ready.unwrap_or((start.elapsed().as_secs_f64(), "unknown".into()));
    Ok(TestReport {
        accel: m.accel.into(),
        ready_after,
        system_state,
        passed: passed && checks.iter().all(|c| c.passed),
        checks,
        forwards: m.forwards.clone(),
        analysis,
    })
}

/// Threads that read QEMU's output: stdout (the serial console) line by line into a channel,
/// stderr whole (for the error message).
fn read_output(child: &mut cmd::Running) -> Result<(mpsc::Receiver<Event>, JoinHandle<String>)> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.child.stdout.take().context("qemu stdout")?;
    let stderr = child.child.stderr.take().context("qemu stderr")?;
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let _ = tx.send(Event::Line(clean_line(&buf)));
            buf.clear();
        }
        let _ = tx.send(Event::Closed);
    });
    let err_thread = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    Ok((rx, err_thread))
}

/// Lines seen until the agent's verdict, the console closing, or the deadline (an error then):
/// the last lines, the ready time and state, the checks, the verdict, the `KILN-ANALYZE` lines.
type Serial = (Vec<String>, Option<(f64, String)>, Vec<CheckResult>, Option<bool>, Vec<String>);

/// Follow the serial console until the agent's verdict (see [`Serial`]); every line goes to `log_file`.
fn read_serial(
    rx: &mpsc::Receiver<Event>,
    log_file: &mut std::fs::File,
    start: Instant,
    timeout: Duration,
    accel: &str,
    log: &Path,
) -> Result<Serial> {
    let mut tail: Vec<String> = Vec::new();
    let mut ready: Option<(f64, String)> = None;
    let mut checks = Vec::new();
    let mut verdict: Option<bool> = None;
    let mut analysis = Vec::new();
    let deadline = start + timeout;
    let mut milestones = Milestones::start("boot", "firmware", start);
    let mut next = 0;
    loop {
        cmd::check_interrupted()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let what =
                if ready.is_none() { "the guest did not report ready" } else { "the guest did not finish its checks" };
            bail!(
                "{what} within {}s ({}); serial log: {}\n  last serial lines:\n    {}",
                timeout.as_secs(),
                accel,
                log.display(),
                tail.join("\n    ")
            );
        }
        match rx.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(Event::Line(line)) => {
                let _ = writeln!(log_file, "{line}");
                if let Some(i) = BOOT_MILESTONES[next..].iter().position(|(tag, _)| line.contains(tag)) {
                    next += i + 1;
                    milestones.reached(BOOT_MILESTONES[next - 1].1);
                }
                if let Some(rest) = marker(&line, "KILN-READY ") {
                    milestones.reached("ready");
                    let state =
                        rest.split_whitespace().find_map(|w| w.strip_prefix("state=")).unwrap_or("unknown").to_string();
                    ready = Some((start.elapsed().as_secs_f64(), state));
                } else if let Some(rest) = marker(&line, "KILN-CHECK ") {
                    checks.push(parse_check(rest));
                } else if let Some(rest) = marker(&line, "KILN-ANALYZE ") {
                    analysis.push(rest.trim_end().to_string());
                } else if let Some(rest) = marker(&line, "KILN-RESULT ") {
                    milestones.reached("checks done");
                    verdict = Some(rest.trim() == "pass");
                    break;
                }
                let seen = fatal(&line);
                if tail.len() == SERIAL_TAIL {
                    tail.remove(0);
                }
                tail.push(line.clone());
                if let Some(what) = seen {
                    // The lines right after (a panic's reason, the firmware's next words) belong
                    // to the message, then stop instead of waiting for the deadline.
                    let more = Instant::now() + Duration::from_secs(2);
                    while let Ok(Event::Line(next)) = rx.recv_timeout(more.saturating_duration_since(Instant::now())) {
                        let _ = writeln!(log_file, "{next}");
                        if tail.len() == SERIAL_TAIL {
                            tail.remove(0);
                        }
                        tail.push(next);
                    }
                    bail!(
                        "{what} after {:.0}s: the serial console shows `{}`; serial log: {}\n  last serial lines:\n    {}",
                        start.elapsed().as_secs_f64(),
                        line.trim(),
                        log.display(),
                        tail.join("\n    ")
                    );
                }
            }
            Ok(Event::Closed) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    Ok((tail, ready, checks, verdict, analysis))
}

/// Console lines after which no verdict can come, and what they mean.
const FATAL: &[(&str, &str)] = &[
    ("Kernel panic - not syncing", "the guest's kernel panicked"),
    ("You are in emergency mode", "the guest dropped to systemd's emergency shell"),
    ("Give root password for maintenance", "the guest dropped to an emergency shell"),
    ("Cannot open access to console, the root account is locked", "the guest dropped to an emergency shell"),
    ("Dropping to a shell!", "the initramfs found no root file system and dropped to a shell"),
    ("as root file system", "the initramfs could not mount the root file system"),
    ("Gave up waiting for root", "the initramfs found no root file system"),
    ("BdsDxe: failed to load Boot", "the firmware could not boot the disk"),
    ("BdsDxe: No bootable option", "the firmware found nothing to boot"),
    ("No bootable option or device was found", "the firmware found nothing to boot"),
    ("UEFI Interactive Shell", "the firmware found nothing to boot and started its shell"),
];

/// What a console line says went wrong for good, if it does.
fn fatal(line: &str) -> Option<&'static str> {
    FATAL.iter().find(|(pattern, _)| line.contains(pattern)).map(|(_, what)| *what)
}

/// The text after `tag` when the line carries it (kernel messages may precede it on the line).
fn marker<'a>(line: &'a str, tag: &str) -> Option<&'a str> {
    line.find(tag).map(|i| &line[i + tag.len()..])
}

fn parse_check(rest: &str) -> CheckResult {
    let (status, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let (name, detail) = rest.split_once('\t').unwrap_or((rest, ""));
    CheckResult { name: name.trim().to_string(), passed: status == "pass", detail: detail.trim().to_string() }
}

/// Serial output as text: lossy UTF-8, without CR and terminal escape sequences.
fn clean_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ params final-byte; other escapes: drop ESC and the next char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' | '\n' => {}
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// Default place for the serial log of a test of `image`, with kiln's process id: two
/// `kiln test` runs of one image at once write a log each.
pub fn default_log(image: &Path) -> PathBuf {
    let name = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    std::env::temp_dir().join(format!("kiln-test-{name}.{}.serial.log", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_agent_lines() {
        let c = parse_check("fail unit: nope.service\tinactive");
        assert_eq!((c.name.as_str(), c.passed, c.detail.as_str()), ("unit: nope.service", false, "inactive"));
        assert_eq!(marker("[  OK  ] x KILN-RESULT pass", "KILN-RESULT "), Some("pass"));
        assert_eq!(clean_line(b"\x1b[0;32m  OK  \x1b[0m] Started\r\n"), "  OK  ] Started");
    }

    #[test]
    fn sees_what_ends_a_boot_for_good() {
        assert_eq!(
            fatal("[    2.1] Kernel panic - not syncing: VFS: Unable to mount root fs"),
            Some("the guest's kernel panicked")
        );
        assert_eq!(
            fatal("BdsDxe: failed to load Boot0001 \"UEFI Misc Device\" from PciRoot(0x0): Not Found"),
            Some("the firmware could not boot the disk")
        );
        assert!(fatal("You are in emergency mode. After logging in, type \"journalctl -xb\"").is_some());
        assert_eq!(
            fatal("[  OK  ] Reached target Emergency Mode."),
            None,
            "systemd names the target on every boot log"
        );
        assert_eq!(fatal("BdsDxe: loading Boot0001 \"UEFI Misc Device\""), None);
    }
}
