//! Recipe entries about things from outside the recipe and the Debian mirror, and what runs on
//! the box later: `[[repositories]]`, `[[artifacts]]`, `[[first_boot]]`. Per-file checks
//! (with positions; key files are checked against their fingerprints here, before anything
//! else happens) and the resolution of the merged lists.
use super::error::RecipeError;
use super::layer::{ArtifactLayer, FirstBootLayer, Layer, Origins, RepositoryLayer};
use super::origins::Unique;
use super::values::PinPattern;
use super::{normalize, relative_to, Artifact, FirstBoot, FirstBootRun, Pin, Repository};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Check the entries of one file; rewrite key paths to be relative to the recipe directory.
pub fn per_file(layer: &mut Layer, file: &Path, text: &str, top_dir: &Path) -> Result<(), RecipeError> {
    let err = |offset: usize, key: String, msg: String| RecipeError::at(file, text, offset, Some(key), msg);
    let dir = file.parent().unwrap_or(Path::new(""));
    for (i, r) in layer.repositories.iter_mut().flatten().enumerate() {
        check_repository(r, i, dir, top_dir, &err)?;
    }
    for (i, a) in layer.artifacts.iter().flatten().enumerate() {
        check_artifact(a, i, &err)?;
    }
    for (i, f) in layer.first_boot.iter().flatten().enumerate() {
        check_first_boot(f, i, &err)?;
    }
    Ok(())
}

/// One `[[repositories]]` entry; its key path becomes relative to the recipe directory.
fn check_repository(
    r: &mut Spanned<RepositoryLayer>,
    i: usize,
    dir: &Path,
    top_dir: &Path,
    err: &impl Fn(usize, String, String) -> RecipeError,
) -> Result<(), RecipeError> {
    let at = r.span().start;
    let repo = r.get_mut();
    let key = |k: &str| format!("repositories[{i}].{k}");
    if repo.components.is_empty() {
        return Err(err(at, key("components"), "a repository needs at least one component".into()));
    }
    let fpr = normalize_fingerprint(repo.fingerprint.get_ref()).ok_or_else(|| {
        err(
            repo.fingerprint.span().start,
            key("fingerprint"),
            format!(
                "`{}` is not a full OpenPGP fingerprint (40 hex digits, e.g. from `gpg --show-keys KEYFILE`)",
                repo.fingerprint.get_ref()
            ),
        )
    })?;
    let path = normalize(&dir.join(repo.key.get_ref()));
    check_key_file(repo, &path, &fpr, &key, err)?;
    if let Some(p) = &repo.pin_packages {
        if repo.pin_priority.is_none() || p.is_empty() {
            return Err(err(
                at,
                key("pin_packages"),
                "pin_packages needs pin_priority (and at least one package pattern)".into(),
            ));
        }
    }
    *repo.key.get_mut() = relative_to(&path, top_dir).to_string_lossy().into_owned();
    *repo.fingerprint.get_mut() = fpr;
    Ok(())
}

/// The key file exists and holds the key with the fingerprint `fpr`.
fn check_key_file(
    repo: &RepositoryLayer,
    path: &Path,
    fpr: &str,
    key: &impl Fn(&str) -> String,
    err: &impl Fn(usize, String, String) -> RecipeError,
) -> Result<(), RecipeError> {
    if std::fs::metadata(path).is_err() {
        return Err(err(
            repo.key.span().start,
            key("key"),
            format!(
                "repository `{}`: key file `{}` not found (looked in {})",
                repo.name,
                repo.key.get_ref(),
                path.display()
            ),
        ));
    }
    crate::host::files::check_regular(path, MAX_KEY).map_err(|e| {
        err(
            repo.key.span().start,
            key("key"),
            format!("repository `{}`: key file `{}`: {e}", repo.name, repo.key.get_ref()),
        )
    })?;
    let found = crate::host::gpg::fingerprints(path).map_err(|e| {
        err(
            repo.key.span().start,
            key("key"),
            format!("repository `{}`: cannot read key file `{}`: {e:#}", repo.name, repo.key.get_ref()),
        )
    })?;
    if !found.iter().any(|f| f == fpr) {
        return Err(err(
            repo.fingerprint.span().start,
            key("fingerprint"),
            format!(
                "repository `{}`: key file `{}` holds {}, not the expected key {fpr}",
                repo.name,
                repo.key.get_ref(),
                if found.is_empty() { "no public key".into() } else { format!("key {}", found.join(", ")) }
            ),
        ));
    }
    Ok(())
}

/// One `[[artifacts]]` entry.
fn check_artifact(
    a: &Spanned<ArtifactLayer>,
    i: usize,
    err: &impl Fn(usize, String, String) -> RecipeError,
) -> Result<(), RecipeError> {
    let a = a.get_ref();
    let key = |k: &str| format!("artifacts[{i}].{k}");
    if !is_sha256(a.sha256.get_ref()) {
        return Err(err(
            a.sha256.span().start,
            key("sha256"),
            format!("`{}` is not a sha256 digest (64 hex digits)", a.sha256.get_ref()),
        ));
    }
    if let Some(mode) = &a.mode {
        parse_mode(mode.get_ref()).map_err(|m| err(mode.span().start, key("mode"), m))?;
        if a.extract.is_some() {
            return Err(err(
                mode.span().start,
                key("mode"),
                "mode applies to a single file; an extracted archive keeps the modes of its members".into(),
            ));
        }
    }
    Ok(())
}

/// One `[[first_boot]]` entry.
fn check_first_boot(
    f: &Spanned<FirstBootLayer>,
    i: usize,
    err: &impl Fn(usize, String, String) -> RecipeError,
) -> Result<(), RecipeError> {
    let at = f.span().start;
    run_of(f.get_ref()).map_err(|m| err(at, format!("first_boot[{i}]"), m))?;
    if let Some(u) =
        f.get_ref().before.iter().find(|u| {
            u.ends_with(".socket") || matches!(u.as_str(), "sysinit.target" | "basic.target" | "sockets.target")
        })
    {
        return Err(err(at, format!("first_boot[{i}].before"), format!("first-boot actions start after basic.target, so they cannot come before `{u}` (an ordering cycle); order them before the service instead")));
    }
    Ok(())
}

fn run_of(f: &FirstBootLayer) -> Result<FirstBootRun, String> {
    match (&f.command, &f.script) {
        (Some(c), None) if !c.trim().is_empty() => Ok(FirstBootRun::Command(c.clone())),
        (None, Some(s)) => Ok(FirstBootRun::Script(s.clone())),
        (Some(_), Some(_)) => Err("a first-boot action takes either `command` or `script`, not both".into()),
        _ => Err(
            "a first-boot action needs `command` (a bash command line) or `script` (an executable's path in the image)"
                .into(),
        ),
    }
}

/// The merged lists of outside inputs: repositories, artifacts, first-boot actions.
pub type Externals = (Vec<Repository>, Vec<Artifact>, Vec<FirstBoot>);

/// Resolve the merged lists: defaults, and names unique across all layers.
pub fn resolve(file: &Path, top_dir: &Path, layer: &mut Layer, origins: &Origins) -> Result<Externals, RecipeError> {
    let mut names = Unique::new("repositories", "repositories", &origins.repositories);
    let mut repos = Vec::new();
    for (i, r) in layer.repositories.take().unwrap_or_default().into_iter().map(Spanned::into_inner).enumerate() {
        let RepositoryLayer { name, url, suite, components, key, fingerprint, pin_priority, pin_packages } = r;
        names.check(i, &name, file)?;
        let key = PathBuf::from(key.into_inner());
        let all = || vec![PinPattern::try_from("*").expect("`*` is a pattern")];
        let pin = pin_priority.map(|priority| Pin { priority, packages: pin_packages.unwrap_or_else(all) });
        let url = url.into_inner();
        let trimmed = url.trim_end_matches('/');
        let url = if trimmed.len() < url.len() { trimmed.to_string().try_into().unwrap_or(url) } else { url };
        repos.push(Repository {
            name,
            url,
            suite,
            components,
            key_path: normalize(&top_dir.join(&key)),
            key,
            fingerprint: fingerprint.into_inner(),
            pin,
        });
    }
    let mut names = Unique::new("artifacts", "artifacts", &origins.artifacts);
    let mut artifacts = Vec::new();
    for (i, a) in layer.artifacts.take().unwrap_or_default().into_iter().map(Spanned::into_inner).enumerate() {
        let ArtifactLayer { name, url, sha256, dest, extract, mode, owner } = a;
        names.check(i, &name, file)?;
        let mode = mode.map(|m| parse_mode(m.get_ref()).unwrap_or(0o644)).unwrap_or(0o644);
        let sha256 = sha256.into_inner().to_ascii_lowercase();
        artifacts.push(Artifact { name, url: url.into_inner(), sha256, dest: dest.into_inner(), extract, mode, owner });
    }
    let mut names = Unique::new("first-boot actions", "first_boot", &origins.first_boot);
    let mut actions = Vec::new();
    for (i, f) in layer.first_boot.take().unwrap_or_default().into_iter().map(Spanned::into_inner).enumerate() {
        names.check(i, &f.name, file)?;
        let run = run_of(&f).map_err(|m| RecipeError::file(file, Some("first_boot".into()), m))?;
        actions.push(FirstBoot { name: f.name, run, before: dedup(f.before), after: dedup(f.after) });
    }
    Ok((repos, artifacts, actions))
}

fn dedup<T: Ord + Clone>(v: Vec<T>) -> Vec<T> {
    let mut seen = BTreeSet::new();
    v.into_iter().filter(|s| seen.insert(s.clone())).collect()
}

/// Largest key file read.
const MAX_KEY: u64 = 64 << 10;

/// Upper-case hex without spaces, when `s` is a full v4 (40) or v5/v6 (64) fingerprint.
pub fn normalize_fingerprint(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_uppercase();
    (matches!(hex.len(), 40 | 64) && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// An octal mode written as a string: "0644", "755".
pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("`{s}` is not an octal file mode such as \"0644\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_normalized() {
        assert_eq!(
            normalize_fingerprint("24B3 0F06 ECC1 836A 4E5E  FECB A7BC D142 0BFE 778e").as_deref(),
            Some("24B30F06ECC1836A4E5EFECBA7BCD1420BFE778E")
        );
        assert_eq!(normalize_fingerprint("A7BCD1420BFE778E"), None, "a long key id is not a fingerprint");
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0640"), Ok(0o640));
        assert!(parse_mode("rw-r--r--").is_err());
    }
}
