//! The network, through curl: reachability probes before a build starts, and downloads.
//!
//! curl (run through `Cmd`, so it dies with kiln) rather than an HTTP client crate: it is on
//! every build host already (mmdebstrap's apt does the heavy fetching anyway), and it brings
//! proxies, TLS with the system's CA store, redirects and retries without adding a TLS stack
//! to kiln's dependencies.
use crate::host::cmd::Cmd;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Something kiln needs from a server, and the URL that proves the server answers.
#[derive(Debug, Clone)]
pub struct Need {
    /// What needs it, for messages: "repository `pve`", "artifact `nextcloud`".
    pub what: String,
    pub url: String,
}

/// The host (and port) part of a URL.
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let host = rest.split('/').next().unwrap_or(rest);
    host.rsplit_once('@').map(|(_, h)| h).unwrap_or(host)
}

/// Ask for the first byte of `url` with short timeouts. Err carries curl's reason.
pub fn probe(url: &str) -> Result<(), String> {
    Cmd::new("curl")
        .args([
            "--fail",
            "--silent",
            "--show-error",
            "--location",
            "--range",
            "0-0",
            "--output",
            "/dev/null",
            "--connect-timeout",
            "5",
            "--max-time",
            "20",
            "--",
        ])
        .arg(url)
        .run()
        .map_err(|e| curl_reason(&e))
}

/// Check every need before any slow work; one error names every unreachable host and says how
/// to build without them.
pub fn preflight(needs: &[Need]) -> Result<()> {
    let mut failures = Vec::new();
    for n in needs {
        crate::host::cmd::check_interrupted()?;
        tracing::info!("checking {} at {}", n.what, n.url);
        if let Err(reason) = probe(&n.url) {
            failures.push(format!("{} ({}) for {}: {reason}", host_of(&n.url), n.url, n.what));
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    bail!(
        "cannot reach {}, needed before the build can start:\n  {}\nNothing was built. To build without reaching these hosts:\n  - artifacts: download the files on a machine with network access, put them in a directory \
         (named by their sha256 or by their URL's file name) and pass `--artifacts DIR` (or set KILN_ARTIFACTS=DIR);\n  \
         - repositories: build on a machine that reaches them, or mirror the repository (same suite, components and signing key) on a host you can reach and point the repository's `url` at the mirror.",
        failures.iter().map(|f| f.split(' ').next().unwrap_or("")).collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>().join(", "),
        failures.join("\n  ")
    )
}

/// The one download: `url` to `dest` (replaced), with one retry policy. curl writes a temporary
/// file beside `dest` that is renamed into place only when complete, so a half download never
/// lands. Fails on HTTP errors.
pub fn download(url: &str, dest: &Path) -> Result<()> {
    download_checked(url, dest, |_| Ok(()))
}

/// [`download`], with `check` run on the complete temporary file before the rename: an Err from
/// it discards the download.
pub fn download_checked<T>(url: &str, dest: &Path, check: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    crate::host::files::write_atomically(dest, |tmp| {
        Cmd::new("curl")
            .args(["--fail", "--silent", "--show-error", "--location", "--connect-timeout", "10"])
            // Every failure is retried, a connection closed mid-file too (curl's own retry
            // covers only timeouts and 5xx); curl starts the file over on each try.
            .args(["--retry", "3", "--retry-all-errors", "--retry-delay", "1", "--output"])
            .arg(tmp)
            .arg("--")
            .arg(url)
            .run()
            .with_context(|| format!("downloading {url}"))?;
        // Readable like any file curl makes (the temporary file was private).
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("setting the mode of {}", tmp.display()))?;
        check(tmp)
    })
}

/// curl's own words from a failed run ("curl: (7) Failed to connect ...").
fn curl_reason(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    if crate::host::cmd::interrupted() {
        return "interrupted".into();
    }
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("curl: ("))
        .map(String::from)
        .unwrap_or_else(|| text.lines().next().unwrap_or("failed").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_urls() {
        assert_eq!(host_of("http://download.proxmox.com/debian/pve"), "download.proxmox.com");
        assert_eq!(host_of("https://u:p@127.0.0.1:8080/x"), "127.0.0.1:8080");
    }

    #[test]
    fn unreachable_host_is_named_with_the_offline_way() {
        // Port 9 on loopback: nothing listens there, the connection is refused at once.
        let err = preflight(&[Need { what: "artifact `x`".into(), url: "http://127.0.0.1:9/x.tar".into() }])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot reach 127.0.0.1:9,"), "{err}");
        assert!(err.contains("artifact `x`") && err.contains("curl: (7)") && err.contains("--artifacts DIR"), "{err}");
    }
}
