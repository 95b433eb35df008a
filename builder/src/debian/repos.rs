//! Extra apt repositories. Each is trusted through exactly one OpenPGP key kept in the recipe's
//! tree and pinned by its fingerprint: kiln exports just that key (gpg, in a throwaway home),
//! checks the repository's InRelease signature with it before bootstrapping, hands the
//! repository to mmdebstrap with `signed-by=`, and writes the keyring, a deb822 source and
//! pins into the image.
use crate::debian::source::AptPin;
use crate::host::cmd::Cmd;
use crate::host::files::write_file;
use crate::host::gpg::gpg;
use crate::host::net::Need;
use crate::plan::Plan;
use crate::recipe::Repository;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Where keys for mmdebstrap live in the work directory. Lines of the root's sources that name
/// this directory are build-time only and are replaced by the image's own files.
const KEY_DIR: &str = "kiln-keys";

/// Extra apt sources for mmdebstrap: source lines after the Debian mirror, and pins put in
/// place before anything is installed. See [`sources`].
#[derive(Debug, Default)]
pub struct ExtraSources {
    pub lines: Vec<String>,
    pub pins: Vec<AptPin>,
}

/// Keys and mmdebstrap sources of the recipe's extra repositories: keys checked by fingerprint,
/// hosts reachable, Release files signed by their keys. Used by `kiln build` and `kiln lock`.
pub fn sources(plan: &Plan, work: &Path) -> Result<(Vec<Keyring>, ExtraSources)> {
    let keys = keyrings(plan, work)?;
    let needs: Vec<Need> = plan
        .recipe
        .repositories
        .iter()
        .map(|r| Need { what: format!("repository `{}`", r.name), url: release_url(r) })
        .collect();
    crate::host::net::preflight(&needs)?;
    verify_releases(plan, &keys, work)?;
    let extra = ExtraSources { lines: mmdebstrap_sources(plan, &keys), pins: pins(plan, work)? };
    Ok((keys, extra))
}

/// The keys of one repository, exported from its key file: only the expected key.
pub struct Keyring {
    pub name: String,
    /// ASCII-armored, for apt (`.asc`), in the work directory.
    pub armored: PathBuf,
    /// Binary, for gpgv.
    pub binary: PathBuf,
}

/// Export each repository's expected key into the work directory.
pub fn keyrings(plan: &Plan, work: &Path) -> Result<Vec<Keyring>> {
    let dir = work.join(KEY_DIR);
    let mut out = Vec::new();
    for r in &plan.recipe.repositories {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let home = tempfile::tempdir().context("creating a temporary GnuPG home")?;
        gpg(home.path())
            .args(["--import", "--"])
            .arg(&r.key_path)
            .run()
            .with_context(|| format!("repository `{}`: importing key file {}", r.name, r.key.display()))?;
        let armored = dir.join(format!("{}.asc", r.name));
        let binary = dir.join(format!("{}.gpg", r.name));
        gpg(home.path())
            .args(["--armor", "--output"])
            .arg(&armored)
            .args(["--export", &r.fingerprint])
            .run()
            .with_context(|| format!("repository `{}`: exporting key {}", r.name, r.fingerprint))?;
        gpg(home.path())
            .arg("--output")
            .arg(&binary)
            .args(["--export", &r.fingerprint])
            .run()
            .with_context(|| format!("repository `{}`: exporting key {}", r.name, r.fingerprint))?;
        out.push(Keyring { name: r.name.to_string(), armored, binary });
    }
    Ok(out)
}

/// The URL whose answer shows that the repository's server is there.
pub fn release_url(r: &Repository) -> String {
    format!("{}/dists/{}/InRelease", r.url, r.suite)
}

/// Where `verify_releases` keeps a repository's checked InRelease in the work directory.
pub fn in_release(work: &Path, r: &Repository) -> PathBuf {
    work.join(KEY_DIR).join(format!("{}.InRelease", r.name))
}

/// Fetch each repository's InRelease and check its signature with the repository's key alone.
pub fn verify_releases(plan: &Plan, keys: &[Keyring], work: &Path) -> Result<()> {
    for (r, k) in plan.recipe.repositories.iter().zip(keys) {
        let url = release_url(r);
        let file = in_release(work, r);
        crate::host::net::download(&url, &file).with_context(|| format!("repository `{}`", r.name))?;
        if let Err(e) = Cmd::new("gpgv").arg("--keyring").arg(&k.binary).arg(&file).run() {
            let detail = format!("{e:#}");
            let why = detail.lines().map(str::trim).filter(|l| l.starts_with("gpgv:")).collect::<Vec<_>>().join("; ");
            bail!(
                "repository `{}`: {url} is not signed by its key {} ({}): refusing to use it",
                r.name,
                r.fingerprint,
                if why.is_empty() { detail } else { why }
            );
        }
    }
    Ok(())
}

/// mmdebstrap source lines (after the Debian mirror) for the extra repositories.
pub fn mmdebstrap_sources(plan: &Plan, keys: &[Keyring]) -> Vec<String> {
    plan.recipe
        .repositories
        .iter()
        .zip(keys)
        .map(|(r, k)| {
            format!("deb [signed-by={}] {} {} {}", k.armored.display(), r.url, r.suite, r.components.join(" "))
        })
        .collect()
}

/// The apt pin file of a repository, if it has a pin priority.
pub fn pin_file(r: &Repository) -> Option<String> {
    let pin = r.pin.as_ref()?;
    Some(format!(
        "# kiln: repository `{}`\nPackage: {}\nPin: origin \"{}\"\nPin-Priority: {}\n",
        r.name,
        pin.packages.join(" "),
        host_name(&r.url),
        pin.priority
    ))
}

fn host_name(url: &str) -> &str {
    let host = crate::host::net::host_of(url);
    host.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).map(|(h, _)| h).unwrap_or(host)
}

/// The repositories' pin files, written into the work directory, for the bootstrap to put in
/// place before mmdebstrap installs anything.
pub fn pins(plan: &Plan, work: &Path) -> Result<Vec<AptPin>> {
    let mut pins = Vec::new();
    for r in &plan.recipe.repositories {
        if let Some(text) = pin_file(r) {
            let file = work.join(KEY_DIR).join(format!("{}.pref", r.name));
            std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
            pins.push(AptPin { file, dest: format!("etc/apt/preferences.d/{}.pref", r.name) });
        }
    }
    Ok(pins)
}

/// Write keyrings, deb822 sources and pins into the root, and drop the build-time source lines.
pub fn install(plan: &Plan, keys: &[Keyring], root: &Path) -> Result<()> {
    if plan.recipe.repositories.is_empty() {
        return Ok(());
    }
    drop_build_sources(root)?;
    for (r, k) in plan.recipe.repositories.iter().zip(keys) {
        let key = std::fs::read(&k.armored).with_context(|| format!("reading {}", k.armored.display()))?;
        write_file(root, &format!("etc/apt/keyrings/{}.asc", r.name), &key, 0o644)?;
        let sources = format!(
            "# kiln: repository `{}`, key {}\nTypes: deb\nURIs: {}\nSuites: {}\nComponents: {}\nSigned-By: /etc/apt/keyrings/{}.asc\n",
            r.name,
            r.fingerprint,
            r.url,
            r.suite,
            r.components.join(" "),
            r.name
        );
        write_file(root, &format!("etc/apt/sources.list.d/{}.sources", r.name), sources.as_bytes(), 0o644)?;
        if let Some(pin) = pin_file(r) {
            write_file(root, &format!("etc/apt/preferences.d/{}.pref", r.name), pin.as_bytes(), 0o644)?;
        }
    }
    Ok(())
}

/// mmdebstrap records every source it was given; the extra ones point at work-directory keys.
fn drop_build_sources(root: &Path) -> Result<()> {
    let mut files = vec![root.join("etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir(root.join("etc/apt/sources.list.d")) {
        files.extend(dir.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "list")));
    }
    let marker = format!("/{KEY_DIR}/");
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        if text.contains(&marker) {
            let kept: String = text.lines().filter(|l| !l.contains(&marker)).map(|l| format!("{l}\n")).collect();
            std::fs::write(&f, kept).with_context(|| format!("rewriting {}", f.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    fn repo(pin_packages: &str) -> String {
        format!(
            "[[repositories]]\nname = \"vendor\"\nurl = \"http://apt.example.org:8080/debian\"\nsuite = \"trixie\"\ncomponents = [\"main\"]\nkey = \"{}/tests/recipes/keys/test-repo.asc\"\nfingerprint = \"CCFC5FF3A32B8B6C628838BAD04DD4C859054D90\"\npin_priority = 990\npin_packages = [{pin_packages}]\n",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    /// Pin patterns are one pattern each: a newline cannot add a field to the pin file.
    #[test]
    fn pin_file_has_one_package_line() {
        let plan = crate::plan::plan_of(&repo(r#""vendor-*", "libvendor1""#)).unwrap();
        let pin = super::pin_file(&plan.recipe.repositories[0]).unwrap();
        assert_eq!(
            pin,
            "# kiln: repository `vendor`\nPackage: vendor-* libvendor1\nPin: origin \"apt.example.org\"\nPin-Priority: 990\n"
        );
        for bad in [r#""vendor-*\nPin: release a=evil""#, r#""vendor-* evil""#] {
            let e = crate::plan::plan_of(&repo(bad)).unwrap_err();
            assert!(e.contains("r.toml:11:") && e.contains("key `repositories[0].pin_packages[0]`"), "{e}");
            assert!(e.contains("not an apt package pattern"), "{e}");
        }
    }
}
