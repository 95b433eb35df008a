//! The one way kiln runs external programs.
//!
//! Every child runs in its own process group and is registered while it runs, so that on
//! SIGINT/SIGTERM kiln can stop the whole group and then unwind normally (temp files removed,
//! nothing left mounted). A failed command's error carries the command line and the tail of
//! its stderr.
use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());
const STDERR_TAIL: usize = 25;

/// The build was interrupted by a signal; callers unwind and exit 130.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Install SIGINT/SIGTERM/SIGHUP handling: stop running children, let the main thread unwind.
pub fn install_signal_handler() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handler")?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            INTERRUPTED.store(true, Ordering::SeqCst);
            tracing::warn!("signal {sig} received: stopping");
            terminate_children();
        }
    });
    Ok(())
}

fn terminate_children() {
    let groups = CHILDREN.lock().map(|c| c.clone()).unwrap_or_default();
    for pgid in groups {
        // SAFETY: kill(2) on a process group we created; no memory is touched.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
    }
}

/// Fail with `Interrupted` once a signal has arrived. Long stages call this between steps.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(Interrupted.into());
    }
    Ok(())
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// A command line to run. Built like `std::process::Command`, run with `run`, `output` or `spawn`.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    own_group: bool,
    /// Called with every line the program writes to stderr (`run`, `output`).
    stderr_lines: Option<fn(&str)>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            cwd: None,
            own_group: true,
            stderr_lines: None,
        }
    }

    /// Keep the child in kiln's process group so it can own the terminal (interactive use);
    /// Ctrl-C then reaches it directly.
    pub fn foreground(mut self) -> Self {
        self.own_group = false;
        self
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs.push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// The program and its arguments, as they will be passed (for tests of command lines).
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(&self.program).chain(&self.args).map(|a| a.to_string_lossy().into_owned()).collect()
    }

    /// The command line as a shell would show it (for errors and logs).
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args).envs(self.envs.iter().map(|(k, v)| (k, v))).stdin(Stdio::null());
        if self.own_group {
            c.process_group(0);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        c
    }

    /// Also hand every line of stderr to `f` as it comes (progress from a long-running tool).
    pub fn on_stderr_line(mut self, f: fn(&str)) -> Self {
        self.stderr_lines = Some(f);
        self
    }

    /// Run to completion; stdout and stderr go to the debug log. Fails on a non-zero exit.
    pub fn run(&self) -> Result<()> {
        self.run_captured(false).map(|_| ())
    }

    /// Run to completion and return stdout. Fails on a non-zero exit.
    pub fn output(&self) -> Result<String> {
        self.run_captured(true)
    }

    fn run_captured(&self, keep_stdout: bool) -> Result<String> {
        check_interrupted()?;
        tracing::debug!("running {}", self.display());
        let mut cmd = self.command();
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = Running::spawn(cmd, &self.program, true)?;
        let stdout = child.child.stdout.take().context("stdout pipe")?;
        let stderr = child.child.stderr.take().context("stderr pipe")?;
        let name = self.program.to_string_lossy().into_owned();
        let observe = self.stderr_lines;
        let err_thread = std::thread::spawn(move || {
            let mut tail = VecDeque::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                tracing::debug!(target: "kiln::cmd", "{name}: {line}");
                if let Some(f) = observe {
                    f(&line);
                }
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            tail
        });
        let mut out = String::new();
        if keep_stdout {
            BufReader::new(stdout)
                .read_to_string(&mut out)
                .with_context(|| format!("reading output of {}", self.display()))?;
        } else {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                tracing::debug!(target: "kiln::cmd", "{line}");
            }
        }
        let status = child.wait()?;
        let tail: Vec<String> = err_thread.join().unwrap_or_default().into();
        check_interrupted()?;
        if !status.success() {
            bail!(
                "{} failed ({})\n  command: {}\n  stderr (last lines):\n    {}",
                self.program.to_string_lossy(),
                describe(status),
                self.display(),
                if tail.is_empty() { "(empty)".into() } else { tail.join("\n    ") }
            );
        }
        Ok(out)
    }

    /// Start the command with the given stdio and return a handle that is stopped if dropped.
    pub fn spawn(&self, stdin: Stdio, stdout: Stdio, stderr: Stdio) -> Result<Running> {
        check_interrupted()?;
        tracing::debug!("starting {}", self.display());
        let mut cmd = self.command();
        cmd.stdin(stdin).stdout(stdout).stderr(stderr);
        Running::spawn(cmd, &self.program, self.own_group)
    }
}

/// A running child registered for signal handling; killed (whole group) when dropped unwaited.
pub struct Running {
    pub child: Child,
    /// Process group to signal; None when the child shares kiln's group (foreground).
    pgid: Option<i32>,
    done: bool,
}

impl Running {
    fn spawn(mut cmd: Command, program: &OsStr, own_group: bool) -> Result<Running> {
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!("{}", missing_tools(&[&program.to_string_lossy()]))
            } else {
                anyhow::anyhow!("starting `{}`: {e}", program.to_string_lossy())
            }
        })?;
        let pgid = own_group.then_some(child.id() as i32);
        if let (Some(pgid), Ok(mut c)) = (pgid, CHILDREN.lock()) {
            c.push(pgid);
        }
        if interrupted() {
            terminate_children();
        }
        Ok(Running { child, pgid, done: false })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn wait(&mut self) -> Result<ExitStatus> {
        let status = self.child.wait().context("waiting for child process")?;
        self.finish();
        Ok(status)
    }

    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let status = self.child.try_wait().context("polling child process")?;
        if status.is_some() {
            self.finish();
        }
        Ok(status)
    }

    /// Stop the whole process group (SIGTERM, then SIGKILL after `grace`) and reap the child.
    pub fn stop(&mut self, grace: std::time::Duration) {
        if self.done {
            return;
        }
        let target = self.pgid.map(|g| -g).unwrap_or(self.child.id() as i32);
        // SAFETY: signalling our own child (or its process group).
        unsafe { libc::kill(target, libc::SIGTERM) };
        let start = std::time::Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.finish();
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(target, libc::SIGKILL) };
        let _ = self.child.wait();
        self.finish();
    }

    fn finish(&mut self) {
        self.done = true;
        if let (Some(pgid), Ok(mut c)) = (self.pgid, CHILDREN.lock()) {
            c.retain(|p| *p != pgid);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop(std::time::Duration::from_secs(10));
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

/// Quote an argument for display, the way a POSIX shell would need it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Whether a program is on PATH.
/// Fail, naming every missing one, unless all `programs` are on PATH (before any slow work).
pub fn require(programs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !have(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    bail!("{}", missing_tools(&missing))
}

/// The one message for host programs that are not installed.
fn missing_tools(names: &[&str]) -> String {
    format!("missing host tools: {}; install them with `scripts/setup-host` (as root)", names.join(", "))
}

pub fn have(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_command_and_stderr() {
        let err = Cmd::new("sh")
            .args(["-c", "echo to-stdout; echo 'boom on stderr' >&2; exit 3"])
            .run()
            .unwrap_err()
            .to_string();
        assert!(err.contains("exit code 3"), "{err}");
        assert!(err.contains("sh -c 'echo to-stdout;"), "{err}");
        assert!(err.contains("boom on stderr"), "{err}");
        assert!(!err.contains("to-stdout\n"), "{err}");
    }

    #[test]
    fn output_returns_stdout() {
        assert_eq!(Cmd::new("printf").arg("a b").output().unwrap(), "a b");
    }

    #[test]
    fn missing_program_says_how_to_install() {
        let err = Cmd::new("kiln-no-such-tool").run().unwrap_err().to_string();
        assert!(err.contains("scripts/setup-host"), "{err}");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("--x=1"), "--x=1");
    }
}
