//! What the subcommands print: progress summaries on stderr, results on stdout (the last line of
//! stdout is what scripts take: the image, the lock file, the bundle). With `--json`, `build`,
//! `test` and `verify` print one JSON document on stdout instead (shapes in docs/cli.md).
use crate::disk::PartitionDigest;
use crate::pipeline::lock::{FetchOutcome, LockOutcome};
use crate::pipeline::site::SiteReport;
use crate::pipeline::vendor::VendorOutcome;
use crate::pipeline::BuildReport;
use crate::plan::Plan;
use crate::recipe::arch::Arch;
use crate::release::sign::KeyPaths;
use crate::verify::{self, Finding, Status};
use crate::vm::{CheckResult, TestReport};
use anyhow::Result;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `kiln check`: the plan as JSON (`--print`) or one line saying the recipe is valid.
pub fn check(recipe: &Path, plan: &Plan, print: bool) -> Result<()> {
    if print {
        println!("{}", serde_json::to_string_pretty(plan)?);
    } else {
        eprintln!(
            "kiln: {} is valid ({} {} for {}, {} files)",
            recipe.display(),
            plan.recipe.name,
            plan.recipe.version,
            plan.arch(),
            plan.recipe.sources.len()
        );
    }
    Ok(())
}

/// `kiln build`: the files written and the image with its size, digest and build time.
pub fn build(report: &BuildReport) {
    build_summary(report);
    println!("{}", report.image.display());
}

/// On stderr, with or without `--json`: the files written, the image, its digest, the time.
fn build_summary(report: &BuildReport) {
    let total: f64 = report.stages.iter().map(|s| s.1).sum();
    for f in &report.outputs {
        eprintln!("kiln: wrote {}", f.display());
    }
    eprintln!(
        "kiln: built {} ({} MiB, sha256 {}) in {total:.1}s",
        report.image.display(),
        report.digest.size >> 20,
        report.digest.sha256
    );
}

/// `kiln build --json`: the image, its digests, every file written, the stages' timings.
#[derive(Serialize)]
struct BuildJson<'a> {
    command: &'static str,
    result: &'static str,
    image: &'a Path,
    name: &'a str,
    version: &'a str,
    arch: Arch,
    size: u64,
    sha256: &'a str,
    partitions: &'a [PartitionDigest],
    kernel: &'a str,
    outputs: &'a [PathBuf],
    stages: Vec<StageJson<'a>>,
    seconds: f64,
    root_from_cache: bool,
    tools: &'a str,
}

#[derive(Serialize)]
struct StageJson<'a> {
    name: &'a str,
    seconds: f64,
}

/// `kiln build --json`: the summary lines on stderr as without `--json`, the result as JSON on stdout.
pub fn build_json(report: &BuildReport) -> Result<()> {
    build_summary(report);
    let stages: Vec<StageJson> =
        report.stages.iter().map(|(name, secs)| StageJson { name, seconds: millis(*secs) }).collect();
    print_json(&BuildJson {
        command: "build",
        result: "ok",
        image: &report.image,
        name: &report.plan.recipe.name,
        version: &report.plan.recipe.version,
        arch: report.plan.arch(),
        size: report.digest.size,
        sha256: &report.digest.sha256,
        partitions: &report.digest.partitions,
        kernel: &report.boot.kernel_version,
        outputs: &report.outputs,
        seconds: millis(stages.iter().map(|s| s.seconds).sum()),
        stages,
        root_from_cache: report.root_from_cache,
        tools: &report.tools,
    })
}

/// `kiln lock`: whether the lock file changed and what it holds.
pub fn lock(out: &LockOutcome) {
    let tools = out
        .lock
        .tools
        .as_ref()
        .map(|t| format!(", tools tree: {} packages, e2fsprogs {}", t.packages.len(), t.e2fsprogs))
        .unwrap_or_default();
    eprintln!(
        "kiln: {} {} ({} packages{tools})",
        out.path.display(),
        if out.changed { "written" } else { "is up to date" },
        out.lock.packages.len()
    );
    println!("{}", out.path.display());
}

/// `kiln fetch`: how many locked .debs the cache holds and how many were downloaded.
pub fn fetch(out: &FetchOutcome, cache: &Path) {
    eprintln!(
        "kiln: {} locked .debs in {} ({} downloaded)",
        out.locked,
        crate::debian::debcache::DebCache::new(cache).dir().display(),
        out.downloaded
    );
}

/// `kiln vendor`: where the bundle is and how to build from it.
pub fn vendor(out: &VendorOutcome) {
    eprintln!(
        "kiln: bundle with {} .debs written to {}; build it with: sudo bin/kiln build --offline --cache cache {}",
        out.debs,
        out.dir.display(),
        out.recipe.display()
    );
    println!("{}", out.dir.display());
}

/// `kiln test`: one line per check, the boot time and the result; exit status 1 when a check failed.
pub fn test(report: &TestReport, log: &Path) -> ExitCode {
    for c in &report.checks {
        let detail = if c.detail.is_empty() { String::new() } else { format!(" ({})", c.detail) };
        println!("{} {}{detail}", if c.passed { "ok  " } else { "FAIL" }, c.name);
    }
    println!("boot-to-ready: {:.1}s ({}, system {})", report.ready_after, report.accel, report.system_state);
    for line in &report.analysis {
        println!("analyze: {line}");
    }
    if report.passed {
        println!("result: pass ({} checks)", report.checks.len());
        ExitCode::SUCCESS
    } else {
        let failed: Vec<&str> = report.checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
        println!(
            "result: FAIL ({} of {} checks failed: {}); serial log: {}",
            failed.len(),
            report.checks.len(),
            failed.join(", "),
            log.display()
        );
        ExitCode::from(1)
    }
}

/// `kiln test --json`: the accelerator, boot-to-ready time, every check and the result.
#[derive(Serialize)]
struct TestJson<'a> {
    command: &'static str,
    result: &'static str,
    image: &'a Path,
    accel: &'a str,
    boot_to_ready_seconds: f64,
    system_state: &'a str,
    checks: &'a [CheckResult],
    failed: Vec<&'a str>,
    serial_log: &'a Path,
    /// Guest ports forwarded to the host's 127.0.0.1 while the guest ran.
    ports: &'a [crate::vm::Forward],
    /// `--analyze`: the guest's systemd-analyze lines (time, top of blame, critical chain).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    analysis: &'a [String],
}

/// `kiln test --json`: the report as JSON; exit status 1 when a check failed, as without `--json`.
pub fn test_json(report: &TestReport, image: &Path, log: &Path) -> Result<ExitCode> {
    print_json(&TestJson {
        command: "test",
        result: if report.passed { "pass" } else { "fail" },
        image,
        accel: &report.accel,
        boot_to_ready_seconds: millis(report.ready_after),
        system_state: &report.system_state,
        checks: &report.checks,
        failed: report.checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect(),
        serial_log: log,
        ports: &report.forwards,
        analysis: &report.analysis,
    })?;
    Ok(if report.passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `kiln keygen`: the key files written and the key id.
pub fn keygen(paths: &KeyPaths, unencrypted: bool, id: &str) {
    eprintln!(
        "kiln: wrote secret key {} ({}) and public key {}",
        paths.secret.display(),
        if unencrypted { "unencrypted" } else { "encrypted" },
        paths.public.display()
    );
    println!("key id {id}");
}

/// `kiln verify`: one line per finding and the result; exit status 1 when something failed.
pub fn verify(report: &verify::Report) -> ExitCode {
    let mut lines: Vec<String> = report
        .findings
        .iter()
        .map(|f| {
            let tag = match f.status {
                Status::Ok => "ok  ",
                Status::Fail => "FAIL",
                Status::Note => "note",
            };
            format!("{tag} {}: {}", f.subject, f.detail)
        })
        .collect();
    let how = if report.signature_checked {
        "signature, checksums and manifest"
    } else {
        "checksums and manifest; signature NOT checked"
    };
    lines.push(if report.passed() {
        format!("result: ok ({how})")
    } else {
        format!("result: FAIL: {}", report.failed().join("; "))
    });
    // A closed pipe (`| head`) is not an error of the verification.
    let mut out = std::io::stdout().lock();
    let _ = lines.iter().try_for_each(|l| writeln!(out, "{l}"));
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `kiln verify --json`: every finding (signature, files, partitions) and the result.
#[derive(Serialize)]
struct VerifyJson<'a> {
    command: &'static str,
    result: &'static str,
    image: &'a Path,
    signature_checked: bool,
    findings: &'a [Finding],
    failed: Vec<&'a str>,
}

/// `kiln verify --json`: the report as JSON; exit status 1 when something failed, as without `--json`.
pub fn verify_json(report: &verify::Report, image: &Path) -> Result<ExitCode> {
    print_json(&VerifyJson {
        command: "verify",
        result: if report.passed() { "ok" } else { "fail" },
        image,
        signature_checked: report.signature_checked,
        findings: &report.findings,
        failed: report.failed(),
    })?;
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `kiln site check`: the site file is valid for the image; every variable's value on stdout.
pub fn site_check(report: &SiteReport) {
    let s = &report.settings;
    eprintln!(
        "kiln: {} is valid for {} ({}): host {}, {} admins, {} network entries",
        report.site.display(),
        report.image,
        report.against.display(),
        s.hostname,
        s.admins.len(),
        s.network.len()
    );
    for d in &report.declared {
        match s.vars.get(d.name.as_str()) {
            Some(v) => println!("{}={v}", d.name),
            None => println!("{} (optional, unset)", d.name),
        }
    }
}

/// `kiln site check --json`: the image, the declarations and the site's settings resolved.
#[derive(Serialize)]
struct SiteJson<'a> {
    command: &'static str,
    result: &'static str,
    #[serde(flatten)]
    report: &'a SiteReport,
}

pub fn site_check_json(report: &SiteReport) -> Result<()> {
    print_json(&SiteJson { command: "site check", result: "ok", report })
}

/// `--json` when the command failed before it had a result: the error as JSON on stdout (it is
/// also printed on stderr, and the exit status is the same as without `--json`).
#[derive(Serialize)]
struct ErrorJson<'a> {
    command: &'a str,
    result: &'static str,
    error: String,
}

pub fn json_error(command: &str, e: &anyhow::Error) {
    let _ = print_json(&ErrorJson { command, result: "error", error: format!("{e:#}") });
}

/// One JSON document on stdout. A closed pipe (`| head`) is not an error of the command.
fn print_json(doc: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(doc)?;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
    Ok(())
}

/// Seconds rounded to milliseconds: timings in JSON without float noise.
fn millis(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// `kiln completions`: the script on stdout (a closed pipe is not an error).
pub fn completions(script: &[u8]) {
    let _ = std::io::stdout().lock().write_all(script);
}

/// `kiln manpages`: the pages written.
pub fn manpages(pages: &[PathBuf]) {
    for p in pages {
        eprintln!("kiln: wrote {}", p.display());
    }
}

/// Show the target and ask on the terminal (skipped with --yes; refused without a terminal).
pub fn confirm_flash(what: &str, yes: bool) -> Result<bool> {
    use std::io::{BufRead, IsTerminal};
    eprintln!("{what}");
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "not confirmed: stdin is not a terminal; pass --yes to write without asking (nothing was written)"
        );
    }
    eprint!("Type yes to write the image: ");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

pub fn flash(f: &crate::pipeline::flash::Flashed) {
    let mb = |b: u64, s: f64| b as f64 / s.max(1e-3) / 1e6;
    println!(
        "wrote {} MiB to {} in {:.1}s ({:.0} MB/s); read back {} MiB in {:.1}s ({:.0} MB/s): {} match the signed manifest",
        f.written >> 20,
        f.device.display(),
        f.write_secs,
        mb(f.written, f.write_secs),
        f.read_back >> 20,
        f.read_secs,
        mb(f.read_back, f.read_secs),
        f.partitions.join(", ")
    );
    if f.site {
        println!(
            "site partition {} written at the end of the disk ({} bytes)",
            crate::disk::site::LABEL,
            f.device_size
        );
    }
}
