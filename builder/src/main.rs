//! The `kiln` binary: parse the command line, set up logging and signals, dispatch.
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // kiln as mmdebstrap's `./tarfilter` (bootstrap/tarfilter.rs).
    if kiln::bootstrap::tarfilter::called_as() {
        return kiln::bootstrap::tarfilter::main();
    }
    // kiln itself, started by kiln to render one template (customize/template_child.rs).
    if std::env::args_os().nth(1).is_some_and(|a| a == kiln::customize::template::CHILD_ARG) {
        return kiln::customize::template::child_main();
    }
    // /proc/self/exe: this very binary, even when a newer kiln was installed over it since.
    // (Without /proc, templates render on a thread of this process: template.rs.)
    let exe = std::path::Path::new("/proc/self/exe");
    if exe.exists() {
        kiln::customize::template::render_in_child_processes(exe.into());
    }
    let cli = kiln::cli::Cli::parse();
    kiln::normalize_process();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    if let Err(e) = kiln::host::cmd::install_signal_handler() {
        eprintln!("kiln: error: {e:#}");
        return ExitCode::FAILURE;
    }
    match kiln::cli::run(cli) {
        Ok(code) => code,
        Err(e) => kiln::exit_code_for(&e),
    }
}
