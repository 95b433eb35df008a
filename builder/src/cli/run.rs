//! Dispatch: one function per subcommand, which calls the library and hands the result to
//! `report`. No logic of its own.
use super::{default_cache, ArchArg, BuildArgs, CacheArgs, Cli, Command, LockArgs, SiteCheckArgs, SiteCommand, VmArgs};
use super::{docs, report};
use crate::host::cache::Cache;
use crate::pipeline::lock::{self as locking, LockOptions};
use crate::pipeline::{self, BuildOptions};
use crate::release::sign::{self, KeyPaths, Signer};
use crate::verify;
use crate::vm;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

pub fn run(cli: Cli) -> Result<ExitCode> {
    let json = cli.command.json();
    let result = dispatch(cli.command);
    // With --json, stdout holds one JSON document also when there is no result.
    if let (Some(command), Err(e)) = (json, &result) {
        report::json_error(command, e);
    }
    result
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Check { recipe, print, online, lock } => check(&recipe, print, online, &lock),
        Command::Build(args) => build(args),
        Command::Lock { recipe, update, arch, cache } => lock(&recipe, update, arch, &cache),
        Command::Fetch { recipe, lock, cache } => fetch(&recipe, &lock, &cache),
        Command::Vendor { recipe, dir, lock, cache } => vendor(&recipe, &dir, &lock, &cache),
        Command::Boot { image, persist, vm } => boot(&image, persist, &vm),
        Command::Test { image, timeout, serial_log, persist, analyze, vm, json } => {
            test(&image, timeout, serial_log, persist, analyze, &vm, json)
        }
        Command::Keygen { out, prefix, unencrypted, force } => keygen(&out, prefix.as_deref(), unencrypted, force),
        Command::Verify { image, from_image, key, json } => verify(&image, from_image.as_deref(), key.as_deref(), json),
        Command::Site { command: SiteCommand::Check(args) } => site_check(&args),
        Command::Flash { image, device, site, key, yes, force_file } => {
            flash(&image, &device, site.as_deref(), key.as_deref(), yes, force_file)
        }
        Command::Completions { shell } => {
            report::completions(&docs::completions(shell));
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpages { dir } => {
            report::manpages(&docs::manpages(&dir)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

impl Command {
    /// The subcommand's name when it was asked for `--json`.
    fn json(&self) -> Option<&'static str> {
        match self {
            Command::Build(args) if args.json => Some("build"),
            Command::Test { json: true, .. } => Some("test"),
            Command::Verify { json: true, .. } => Some("verify"),
            Command::Site { command: SiteCommand::Check(SiteCheckArgs { json: true, .. }) } => Some("site check"),
            _ => None,
        }
    }
}

fn check(recipe: &Path, print: bool, online: bool, lock: &LockArgs) -> Result<ExitCode> {
    let plan = pipeline::plan(recipe, None, &lock.choice())?;
    if online {
        pipeline::check_online(&plan)?;
    }
    report::check(recipe, &plan, print)?;
    Ok(ExitCode::SUCCESS)
}

fn build(args: BuildArgs) -> Result<ExitCode> {
    let plan = pipeline::plan(&args.recipe, args.arch.map(ArchArg::arch), &args.lock.choice())?;
    let cache = args.cache.or_else(default_cache).context("no cache directory: set --cache, KILN_CACHE or HOME")?;
    // Decrypt the key first: a wrong passphrase fails before any slow work.
    let signer = args.sign.as_deref().map(Signer::load).transpose()?;
    let opts = BuildOptions {
        out_dir: args.out,
        reuse_root: !args.no_cache,
        host_tools: args.host_tools,
        full_emulation: args.full_emulation,
        // Work next to the cache, so a fresh bootstrap moves into it by rename.
        work_parent: args.work_dir.or_else(|| Some(Cache::new(&cache).tmp())),
        cache,
        keep_work: args.keep_work,
        offline: args.offline,
        formats: (!args.formats.is_empty()).then(|| args.formats.iter().map(|&f| f.into()).collect()),
        signer,
        artifacts: args.artifacts,
    };
    let report = pipeline::build(plan, &opts)?;
    if args.json {
        report::build_json(&report)?;
    } else {
        report::build(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn lock(recipe: &Path, update: bool, arch: Option<ArchArg>, cache: &CacheArgs) -> Result<ExitCode> {
    let cache = cache.dir()?;
    Cache::new(&cache).clean_leftovers()?;
    let opts = LockOptions { work_parent: Some(Cache::new(&cache).tmp()), cache, update, keep_work: false };
    let plan = pipeline::check(recipe, arch.map(ArchArg::arch))?;
    let out = locking::lock(recipe, plan, &opts)?;
    report::lock(&out);
    Ok(ExitCode::SUCCESS)
}

fn fetch(recipe: &Path, lock: &LockArgs, cache: &CacheArgs) -> Result<ExitCode> {
    let plan = pipeline::plan(recipe, None, &lock.choice())?;
    let cache = cache.dir()?;
    Cache::new(&cache).clean_leftovers()?;
    let out = locking::fetch(&plan, &cache, Some(&Cache::new(&cache).tmp()))?;
    report::fetch(&out, &cache);
    Ok(ExitCode::SUCCESS)
}

fn vendor(recipe: &Path, dir: &Path, lock: &LockArgs, cache: &CacheArgs) -> Result<ExitCode> {
    let plan = pipeline::plan(recipe, None, &lock.choice())?;
    let cache = cache.dir()?;
    Cache::new(&cache).clean_leftovers()?;
    let out = crate::pipeline::vendor::vendor(&plan, &cache, dir, Some(&Cache::new(&cache).tmp()))?;
    report::vendor(&out);
    Ok(ExitCode::SUCCESS)
}

fn boot(image: &Path, persist: bool, vm: &VmArgs) -> Result<ExitCode> {
    check_site(image, vm)?;
    vm::boot(image, &vm.options(), persist)?;
    Ok(ExitCode::SUCCESS)
}

fn test(
    image: &Path,
    timeout: u64,
    serial_log: Option<PathBuf>,
    persist: bool,
    analyze: bool,
    vm: &VmArgs,
    json: bool,
) -> Result<ExitCode> {
    check_site(image, vm)?;
    let log = serial_log.unwrap_or_else(|| vm::default_log(image));
    let run = vm::TestRun { timeout: Duration::from_secs(timeout), log: &log, persist, analyze };
    let report = vm::test(image, &vm.options(), &run).with_context(|| format!("testing {}", image.display()))?;
    if json {
        report::test_json(&report, image, &log)
    } else {
        Ok(report::test(&report, &log))
    }
}

/// `--site` is validated in full before a machine starts (the vm floor checks only its shape).
fn check_site(image: &Path, vm: &VmArgs) -> Result<()> {
    match &vm.site {
        Some(site) => pipeline::site::check_for_boot(site, image),
        None => Ok(()),
    }
}

fn keygen(out: &Path, prefix: Option<&Path>, unencrypted: bool, force: bool) -> Result<ExitCode> {
    let paths = prefix.map(KeyPaths::with_prefix).unwrap_or_else(|| KeyPaths::in_dir(out));
    let passphrase = if unencrypted { None } else { Some(sign::passphrase("the new secret key", true)?) };
    let id = sign::keygen(&paths, passphrase, force)?;
    report::keygen(&paths, unencrypted, &id);
    Ok(ExitCode::SUCCESS)
}

fn verify(image: &Path, from_image: Option<&Path>, key: Option<&Path>, json: bool) -> Result<ExitCode> {
    let block = std::fs::metadata(image).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    let report = match (block, from_image) {
        (true, Some(release)) => verify::device::verify_device(image, release, key)?,
        (true, None) => anyhow::bail!(
            "{} is a block device: name the image it was flashed from with --image IMAGE",
            image.display()
        ),
        (false, Some(_)) => anyhow::bail!("--image is for block devices; {} is not one", image.display()),
        (false, None) => verify::verify(image, key)?,
    };
    if json {
        report::verify_json(&report, image)
    } else {
        Ok(report::verify(&report))
    }
}

fn site_check(args: &SiteCheckArgs) -> Result<ExitCode> {
    let against = match (&args.image, &args.recipe) {
        (Some(image), _) => pipeline::site::Against::Image(image),
        (None, Some(recipe)) => pipeline::site::Against::Recipe(recipe),
        (None, None) => anyhow::bail!("--image or --recipe is required"),
    };
    let report = pipeline::site::check(&args.site, against)?;
    if args.json {
        report::site_check_json(&report)?;
    } else {
        report::site_check(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn flash(
    image: &Path,
    device: &Path,
    site: Option<&Path>,
    key: Option<&Path>,
    yes: bool,
    force_file: bool,
) -> Result<ExitCode> {
    // The site file is checked in full against the image's declarations before anything is
    // written (what `kiln site check --image` does); the bytes written are the ones checked.
    let site = site
        .map(|p| -> Result<Vec<u8>> {
            let text = crate::host::files::read_regular(p, 256 * 1024)
                .map_err(|e| anyhow::anyhow!("site file {}: {e}", p.display()))?;
            pipeline::site::check(p, pipeline::site::Against::Image(image))?;
            Ok(text.into_bytes())
        })
        .transpose()?;
    let mut confirm = |what: &str| report::confirm_flash(what, yes);
    let opts = pipeline::flash::FlashOptions { image, device, key, site, force_file, confirm: &mut confirm };
    let done = pipeline::flash::flash(opts)?;
    report::flash(&done);
    Ok(ExitCode::SUCCESS)
}
