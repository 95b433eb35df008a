//! What the subcommands print: progress summaries on stderr, results on stdout (the last line of
//! stdout is what scripts take: the image, the lock file, the bundle).
use crate::pipeline::lock::{FetchOutcome, LockOutcome};
use crate::pipeline::vendor::VendorOutcome;
use crate::pipeline::BuildReport;
use crate::plan::Plan;
use crate::release::sign::KeyPaths;
use crate::verify::{self, Status};
use crate::vm::TestReport;
use anyhow::Result;
use std::io::Write;
use std::path::Path;
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
    println!("{}", report.image.display());
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
