//! Man pages and shell completions, made from the clap types in `mod.rs` (clap_mangen,
//! clap_complete), so they always say what `--help` says.
use super::{Cli, ShellArg};
use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use std::path::{Path, PathBuf};

/// The completion script for `shell`.
pub fn completions(shell: ShellArg) -> Vec<u8> {
    let shell = match shell {
        ShellArg::Bash => Shell::Bash,
        ShellArg::Zsh => Shell::Zsh,
        ShellArg::Fish => Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "kiln", &mut script);
    script
}

/// Write `kiln.1` and one `kiln-SUBCOMMAND.1` per subcommand to `dir` (created if missing);
/// returns the files written, kiln.1 first.
pub fn manpages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Built, so global flags (-v) appear on every subcommand's page; `kiln help` needs no page.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let source = format!("kiln {}", env!("CARGO_PKG_VERSION"));
    let pages = std::iter::once(cmd.clone()).chain(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    let mut written = Vec::new();
    for page in pages {
        let man = clap_mangen::Man::new(page).source(source.clone()).manual("kiln manual");
        let path = dir.join(man.get_filename());
        let mut roff = Vec::new();
        man.render(&mut roff).with_context(|| format!("rendering {}", path.display()))?;
        let text = ascii_roff(&String::from_utf8_lossy(&roff));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Non-ASCII characters (the help texts' `…`, `→`) as groff's `\[uXXXX]` escapes: troff reads
/// its input as Latin-1 unless preconv runs first, and man pages must render either way.
fn ascii_roff(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\[u{:04X}]", c as u32));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn roff_is_ascii() {
        assert_eq!(super::ascii_roff("sed, \u{2026}"), "sed, \\[u2026]");
    }
}
