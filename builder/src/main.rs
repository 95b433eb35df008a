//! The `kiln` binary: parse the command line, set up logging and signals, dispatch.
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
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
