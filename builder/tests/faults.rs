//! Faults a build must survive without losing or leaving anything: concurrent builds on one
//! empty cache, SIGKILL at every stage (no clean-up possible: the next kiln command cleans up),
//! full file systems, a download cut off mid-file, a read-only output directory, and guests
//! that can never report (`kiln test` must fail fast, naming what the console showed). Builds
//! share the run's cache and the minimal fixture; one test makes a cache of its own (the one
//! extra cold bootstrap). Needs root, the host tools and the Debian mirror: KILN_E2E=1.
mod common;
use common::serve::HalfServer;
use common::{e2e_dir, minimal, run};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running kiln whose stderr is followed line by line (and echoed for the test log).
struct Kiln {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stdout: std::thread::JoinHandle<String>,
    name: String,
}

impl Kiln {
    fn spawn(name: &str, args: &[&str]) -> Kiln {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting kiln");
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let tag = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                let _ = tx.send(line);
            }
        });
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        Kiln { child, lines, seen: Vec::new(), stdout, name: name.to_string() }
    }

    fn build(name: &str, recipe: &str, out: &Path, cache: &Path, extra: &[&str]) -> Kiln {
        let mut args = vec!["build", recipe, "--out", out.to_str().unwrap(), "--cache", cache.to_str().unwrap()];
        args.extend(extra);
        Kiln::spawn(name, &args)
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Wait for a stderr line that `want` accepts; None when kiln's stderr closed first.
    fn wait_for(&mut self, timeout: Duration, want: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{}: no awaited line within {}s", self.name, timeout.as_secs());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return Some(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Wait for the end: exit status, all of stderr, stdout.
    fn finish(mut self) -> (ExitStatus, String, String) {
        while let Ok(line) = self.lines.recv() {
            self.seen.push(line);
        }
        let status = self.child.wait().unwrap();
        (status, self.seen.join("\n"), self.stdout.join().unwrap())
    }

    /// SIGKILL kiln itself (its children keep running in their own process groups), recording
    /// its work directory and its children's process groups first.
    fn kill(self, work_parent: &Path) -> Killed {
        self.try_kill(work_parent)
            .unwrap_or_else(|k| panic!("no work directory of kiln {} in {}", k.pid(), work_parent.display()))
    }

    /// `kill`, unless kiln has no work directory (any more): then it is returned, finishing.
    fn try_kill(mut self, work_parent: &Path) -> Result<Killed, Kiln> {
        let Some(work) = work_dir_of(work_parent, self.pid()) else { return Err(self) };
        let groups = descendant_groups(self.pid());
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
        eprintln!("killed {} (work dir {}, child process groups {groups:?})", self.name, work.display());
        Ok(Killed { work, groups })
    }
}

/// What a killed kiln may have left.
struct Killed {
    work: PathBuf,
    groups: Vec<i32>,
}

impl Killed {
    /// Nothing of the killed build remains: its work directory, mounts below it (as the whole
    /// system sees them: /proc/1/mountinfo), processes of its children's groups or in its work
    /// directory, unfinished files in `dirs`.
    fn assert_cleaned(&self, dirs: &[&Path]) {
        assert!(!mounted_below(&self.work), "mounts left below {}", self.work.display());
        assert!(!self.work.exists(), "the killed build's work directory {} is still there", self.work.display());
        let left = processes_in_groups(&self.groups);
        assert!(left.is_empty(), "processes of the killed build left: {left:?}");
        let left = common::processes_mentioning(self.work.to_str().unwrap());
        assert!(left.is_empty(), "processes in the killed build's work directory left: {left:?}");
        let partial = partials(dirs);
        assert!(partial.is_empty(), "unfinished files left: {partial:?}");
    }
}

/// The work directory below `parent` that kiln `pid` owns (its `.kiln-owner` file).
fn work_dir_of(parent: &Path, pid: i32) -> Option<PathBuf> {
    std::fs::read_dir(parent)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|d| std::fs::read_to_string(d.join(".kiln-owner")).is_ok_and(|s| s.trim() == pid.to_string()))
}

/// (pid, parent pid, process group, state) of every process.
fn process_table() -> Vec<(i32, i32, i32, char)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            Some((pid, f[1].parse().ok()?, f[2].parse().ok()?, f[0].chars().next()?))
        })
        .collect()
}

/// Process groups of every descendant of `pid`, but `pid`'s own (ours: a child between fork and
/// its own process group is still in it).
fn descendant_groups(pid: i32) -> Vec<i32> {
    let table = process_table();
    let own = table.iter().find(|p| p.0 == pid).map(|p| p.2).unwrap_or(pid);
    let mut family = vec![pid];
    let mut i = 0;
    while i < family.len() {
        let parent = family[i];
        family.extend(table.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    let mut groups: Vec<i32> =
        table.iter().filter(|p| family[1..].contains(&p.0) && p.2 != own && p.2 > 1).map(|p| p.2).collect();
    groups.sort();
    groups.dedup();
    groups
}

fn has_descendants(pid: i32) -> bool {
    process_table().iter().any(|p| p.1 == pid)
}

fn processes_in_groups(groups: &[i32]) -> Vec<String> {
    process_table()
        .iter()
        .filter(|p| groups.contains(&p.2) && p.3 != 'Z')
        .map(|p| {
            let cmd = std::fs::read(format!("/proc/{}/cmdline", p.0)).unwrap_or_default();
            format!("{} (group {}): {}", p.0, p.2, String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect()
}

fn mounted_below(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/1/mountinfo").unwrap();
    info.lines().filter_map(|l| l.split(' ').nth(4)).any(|m| Path::new(m).starts_with(dir))
}

/// `*.partial` files and trees in `dirs` (three levels deep: the cache's areas and their tmp/).
fn partials(dirs: &[&Path]) -> Vec<String> {
    dirs.iter()
        .filter(|d| d.exists())
        .flat_map(|d| {
            run("find", &[d.to_str().unwrap(), "-maxdepth", "3", "-name", "*.partial"])
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn sha256(path: &Path) -> String {
    run("sha256sum", &[path.to_str().unwrap()]).split_whitespace().next().unwrap().to_string()
}

/// The image path a successful build printed last.
fn image_of(stdout: &str) -> PathBuf {
    PathBuf::from(stdout.lines().last().expect("kiln build printed no path"))
}

/// A fresh empty directory below the run's scratch space.
fn fresh(rel: &str) -> PathBuf {
    let dir = e2e_dir().join(rel);
    if dir.exists() {
        run("rm", &["-rf", "--one-file-system", dir.to_str().unwrap()]);
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tmpfs mounted for the test (size and options as `mount -o` takes them); unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        run("mount", &["-t", "tmpfs", "-o", options, "tmpfs", dir.to_str().unwrap()]);
        Tmpfs(dir.to_path_buf())
    }

    fn is_empty(&self) -> bool {
        std::fs::read_dir(&self.0).unwrap().next().is_none()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("--lazy").arg(&self.0).status();
    }
}

const MINIMAL: &str = "../recipes/minimal.toml";

/// One empty cache: a cold bootstrap killed with SIGKILL mid-way, then three builds at once
/// (minimal twice, failing-check, which has minimal's root). They clean up after the killed
/// one, mmdebstrap runs once for the tools tree and once per root (the others wait, then
/// reuse), and minimal's images equal the sequential build's.
#[test]
fn concurrent_builds_on_an_empty_cache_after_a_killed_bootstrap() {
    let Some(fx) = minimal() else { return };
    let base = fresh("concurrent");
    let cache = base.join("cache");
    let tmp = cache.join("tmp");

    // SIGKILL during the cold bootstraps, while the tools tree's mmdebstrap runs (it takes a
    // few seconds: its packages are only unpacked), the root's beside it.
    let mut first = Kiln::build("cold", MINIMAL, &base.join("out-cold"), &cache, &[]);
    first
        .wait_for(Duration::from_secs(300), |l| l.starts_with("kiln: bootstrapping ") && l.contains("/tools/"))
        .expect("no bootstrap of the tools tree");
    let since = Instant::now();
    while !common::processes_mentioning("--variant=extract").iter().any(|p| p.contains("mmdebstrap"))
        && since.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = first.kill(&tmp);

    let start = Instant::now();
    let builds =
        [("a", MINIMAL, "out-a"), ("b", MINIMAL, "out-b"), ("c", "tests/recipes/e2e/failing-check.toml", "out-c")]
            .map(|(name, recipe, out)| Kiln::build(name, recipe, &base.join(out), &cache, &[]));
    let results: Vec<_> = builds.into_iter().map(Kiln::finish).collect();
    eprintln!("three concurrent builds on an empty cache took {:.0}s", start.elapsed().as_secs_f64());
    for (status, stderr, _) in &results {
        assert!(status.success(), "a concurrent build failed:\n{stderr}");
    }
    killed.assert_cleaned(&[&cache, &base.join("out-a"), &base.join("out-b"), &base.join("out-c")]);

    // Each entry bootstrapped by exactly one build; every other one waited for it.
    let mut entries: Vec<String> = results
        .iter()
        .flat_map(|(_, e, _)| e.lines().filter_map(|l| l.strip_prefix("kiln: bootstrapping ")).map(String::from))
        .collect();
    let bootstraps = entries.len();
    entries.sort();
    entries.dedup();
    assert_eq!(bootstraps, entries.len(), "an entry was bootstrapped twice: {entries:?}");
    let kinds: Vec<_> = entries.iter().map(|e| e.contains("/tools/")).collect();
    assert_eq!(kinds, [false, true], "one root and one tools tree bootstrapped: {entries:?}");
    for entry in &entries {
        let entry = entry.trim_end_matches(" (mmdebstrap)");
        for (_, stderr, _) in &results {
            let made = stderr.contains(&format!("kiln: bootstrapping {entry}"));
            let waited = stderr.contains(&format!("kiln: waiting for another kiln build to finish {entry}"));
            assert!(made ^ waited, "a build neither made nor waited for {entry}:\n{stderr}");
        }
    }
    let want = sha256(&fx.image);
    for (_, _, stdout) in &results[..2] {
        assert_eq!(sha256(&image_of(stdout)), want, "a concurrent build's image differs from the sequential one");
    }
}

/// SIGKILL at the start of each stage (once its children run), a build after another on the
/// shared cache: the next build cleans up what the killed one left (work directory, mounts,
/// processes, unfinished files) before its first stage, and the last one, never killed, gives
/// the sequential image.
#[test]
fn sigkill_at_each_stage_the_next_build_cleans_up_and_succeeds() {
    let Some(fx) = minimal() else { return };
    let out = fresh("sigkill/out");
    let tmp = fx.cache.join("tmp");
    let mut previous: Option<Killed> = None;
    let mut stage = 1;
    loop {
        let mut kiln = Kiln::build(&format!("stage-{stage}"), MINIMAL, &out, &fx.cache, &[]);
        if let Some(killed) = previous.take() {
            // Its clean-up is done before its first stage.
            let first = kiln.wait_for(Duration::from_secs(300), |l| l.starts_with("kiln: [1/"));
            assert!(first.is_some(), "the build after a kill did not start");
            killed.assert_cleaned(&[&out, &fx.cache]);
        }
        let prefix = format!("kiln: [{stage}/");
        let reached = kiln.wait_for(Duration::from_secs(600), |l| l.starts_with(&prefix) && l.ends_with(" ..."));
        let mut finishing = None;
        if reached.is_some() {
            // A moment for the stage to start its programs, if it has any.
            let since = Instant::now();
            while !has_descendants(kiln.pid()) && since.elapsed() < Duration::from_millis(200) {
                std::thread::sleep(Duration::from_millis(20));
            }
            // The last stage can be over before the kill (its work directory gone): then the
            // build ends as if no stage were left.
            match kiln.try_kill(&tmp) {
                Ok(killed) => previous = Some(killed),
                Err(kiln) => finishing = Some(kiln),
            }
        } else {
            finishing = Some(kiln);
        }
        if let Some(kiln) = finishing {
            // No stage left to kill in: this build ran to its end.
            let (status, stderr, stdout) = kiln.finish();
            assert!(status.success(), "the build after the kills failed:\n{stderr}");
            assert_eq!(sha256(&image_of(&stdout)), sha256(&fx.image), "the image differs from the sequential one");
            assert!(partials(&[&out, &fx.cache]).is_empty());
            stage += usize::from(reached.is_some());
            break;
        }
        stage += 1;
    }
    assert!(stage > 10, "only {} stages were seen", stage - 1);
}

/// A full output directory, work directory and cache (64 MiB tmpfs each): the error names the
/// directory and ENOSPC, and nothing unfinished stays behind.
#[test]
fn a_full_disk_is_named_and_leaves_nothing() {
    let Some(fx) = minimal() else { return };
    let base = fresh("full");
    let check = |kiln: Kiln, dir: &Path| {
        let start = Instant::now();
        let (status, stderr, _) = kiln.finish();
        eprintln!("failed after {:.0}s", start.elapsed().as_secs_f64());
        assert!(!status.success(), "the build succeeded on a full {}", dir.display());
        let named = stderr
            .lines()
            .any(|l| l.contains("no space left on device (ENOSPC) in ") && l.contains(dir.to_str().unwrap()));
        assert!(named, "the error does not name ENOSPC in {}:\n{stderr}", dir.display());
    };

    let out = Tmpfs::mount(&base.join("out"), "size=64m");
    check(Kiln::build("full-out", MINIMAL, &out.0, &fx.cache, &[]), &out.0);
    assert!(out.is_empty(), "files left in the full output directory");

    // A warm build hardly uses its work directory any more (the root filesystem is made in the
    // image, the ESP comes from the cache): without the cache the bootstrap itself goes there.
    let work = Tmpfs::mount(&base.join("work"), "size=64m");
    let out_dir = base.join("out-2");
    let args = ["--work-dir", work.0.to_str().unwrap(), "--no-cache"];
    check(Kiln::build("full-work", MINIMAL, &out_dir, &fx.cache, &args), &work.0);
    assert!(work.is_empty(), "files left in the full work directory");
    assert!(std::fs::read_dir(&out_dir).unwrap().next().is_none(), "files left in the output directory");

    // An empty cache on a small file system fills up while the tools tree is bootstrapped.
    let cache = Tmpfs::mount(&base.join("cache"), "size=64m");
    check(Kiln::build("full-cache", MINIMAL, &base.join("out-3"), &cache.0, &[]), &cache.0);
    assert!(partials(&[&cache.0]).is_empty(), "unfinished files left in the cache");
    let tmp = cache.0.join("tmp");
    assert!(
        std::fs::read_dir(&tmp).map(|mut d| d.next().is_none()).unwrap_or(true),
        "work files left in {}",
        tmp.display()
    );
    assert!(partials(&[&fx.cache]).is_empty());
}

/// An artifact whose download is cut off mid-file (twice) is fetched again and lands whole
/// in the cache; nothing unfinished stays. The build is stopped once its artifacts are in.
#[test]
fn a_download_cut_off_midway_is_retried_and_leaves_no_partial() {
    let Some(fx) = minimal() else { return };
    let base = fresh("half-download");
    let body: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let sha = {
        let f = base.join("body");
        std::fs::write(&f, &body).unwrap();
        sha256(&f)
    };
    let server = HalfServer::start(body.clone(), 2);
    let recipe = base.join("half.toml");
    let include = std::fs::canonicalize(MINIMAL).unwrap();
    std::fs::write(
        &recipe,
        format!(
            "include = [\"{}\"]\nname = \"half\"\n\n[[artifacts]]\nname = \"blob\"\nurl = \"{}\"\nsha256 = \"{sha}\"\ndest = \"/usr/share/kiln-test/blob\"\n",
            include.display(),
            server.url("blob.bin")
        ),
    )
    .unwrap();
    // The run's cache (its tools tree and root spare the build any bootstrap), without the artifact.
    let cache = fx.cache.clone();
    let stored = cache.join("artifacts/sha256").join(&sha);
    let _ = std::fs::remove_file(&stored);
    let mut kiln = Kiln::build("half", recipe.to_str().unwrap(), &base.join("out"), &cache, &[]);
    let done = kiln.wait_for(Duration::from_secs(300), |l| l.starts_with("kiln: [1/") && !l.ends_with(" ..."));
    if done.as_deref().is_some_and(|l| l.contains(" done in ")) {
        // SAFETY: signalling our own child; the build stops and unwinds.
        unsafe { libc::kill(kiln.pid(), libc::SIGINT) };
    }
    let (_, stderr, _) = kiln.finish();
    let done = done.unwrap_or_default();
    assert!(done.contains(" done in "), "fetching the artifact failed:\n{stderr}");
    assert!(server.full_requests() >= 3, "two cut-off downloads and a whole one: {}", server.full_requests());
    assert_eq!(std::fs::read(&stored).unwrap(), body, "the cached artifact is not the whole file");
    assert!(partials(&[&cache]).is_empty(), "unfinished files left in the cache");
}

/// A read-only output directory is reported within seconds, before any bootstrap work.
#[test]
fn a_read_only_output_dir_fails_before_the_bootstrap() {
    let Some(fx) = minimal() else { return };
    let base = fresh("read-only");
    let out = Tmpfs::mount(&base.join("out"), "size=1m,ro");
    let start = Instant::now();
    let (status, stderr, _) = Kiln::build("ro", MINIMAL, &out.0, &fx.cache, &[]).finish();
    let took = start.elapsed();
    assert!(!status.success(), "built into a read-only directory");
    assert!(took < Duration::from_secs(30), "took {}s to fail", took.as_secs());
    assert!(
        stderr.contains(&format!("the output directory {} is not writable", out.0.display())),
        "the error does not name the directory:\n{stderr}"
    );
    assert!(!stderr.contains("kiln: [1/"), "a stage started:\n{stderr}");
}

/// `kiln test` of an image whose root file system is wiped, and of one whose ESP is wiped,
/// fails within seconds of the console showing why (not at the deadline), naming it.
#[test]
fn kiln_test_fails_fast_when_the_guest_cannot_boot() {
    let Some(fx) = minimal() else { return };
    let base = fresh("cannot-boot");
    let timeout = 900u64;
    let wipe = |name: &str, part: usize| -> PathBuf {
        let image = base.join(name);
        run("cp", &["--sparse=always", fx.image.to_str().unwrap(), image.to_str().unwrap()]);
        let offset = fx.plan["layout"]["partitions"][part]["offset"].as_u64().unwrap();
        run(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={}", image.display()),
                "bs=1M",
                "count=1",
                &format!("seek={}", offset >> 20),
                "conv=notrunc",
                "status=none",
            ],
        );
        image
    };
    let test = |image: &Path| -> (Duration, String) {
        let log = image.with_extension("serial.log");
        let start = Instant::now();
        let (status, stderr, _) = Kiln::spawn(
            "test",
            &[
                "test",
                image.to_str().unwrap(),
                "--timeout",
                &timeout.to_string(),
                "--serial-log",
                log.to_str().unwrap(),
            ],
        )
        .finish();
        assert!(!status.success(), "kiln test passed an image that cannot boot");
        (start.elapsed(), stderr)
    };

    let (took, stderr) = test(&wipe("no-root.img", 1));
    eprintln!("wiped root: failed after {:.0}s", took.as_secs_f64());
    assert!(took < Duration::from_secs(timeout / 2), "waited {}s, about the whole timeout", took.as_secs());
    assert!(
        stderr.contains("the initramfs") || stderr.contains("emergency shell") || stderr.contains("kernel panicked"),
        "the error does not say what the console showed:\n{stderr}"
    );
    assert!(stderr.contains("the serial console shows `"), "{stderr}");

    let (took, stderr) = test(&wipe("no-esp.img", 0));
    eprintln!("wiped ESP: failed after {:.0}s", took.as_secs_f64());
    assert!(took < Duration::from_secs(timeout / 2), "waited {}s, about the whole timeout", took.as_secs());
    assert!(stderr.contains("the firmware"), "the error does not name the firmware's message:\n{stderr}");
    assert!(stderr.contains("BdsDxe") || stderr.contains("Shell"), "{stderr}");
}
