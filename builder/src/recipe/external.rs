//! Recipe entries about things from outside the recipe and the Debian mirror, and what runs on
//! the box later: `[[repositories]]`, `[[artifacts]]`, `[[first_boot]]`. Per-file checks
//! (with positions; key files are checked against their fingerprints here, before anything
//! else happens) and the resolution of the merged lists.
use super::error::RecipeError;
use super::layer::{ArtifactLayer, FirstBootLayer, Layer, RepositoryLayer};
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
    if !is_name(&repo.name) {
        return Err(err(
            at,
            key("name"),
            format!("`{}` is not a valid repository name: use lower-case letters, digits and `-`", repo.name),
        ));
    }
    check_url(repo.url.get_ref()).map_err(|m| err(repo.url.span().start, key("url"), m))?;
    if repo.suite.is_empty()
        || repo.suite.contains(char::is_whitespace)
        || repo.components.is_empty()
        || repo.components.iter().any(|c| c.is_empty() || c.contains(char::is_whitespace))
    {
        return Err(err(
            at,
            key("suite"),
            "a repository needs a suite and at least one component, without spaces".into(),
        ));
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
    if !path.is_file() {
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
    let at = a.span().start;
    let a = a.get_ref();
    let key = |k: &str| format!("artifacts[{i}].{k}");
    if !is_name(&a.name) {
        return Err(err(
            at,
            key("name"),
            format!("`{}` is not a valid artifact name: use lower-case letters, digits and `-`", a.name),
        ));
    }
    check_url(a.url.get_ref()).map_err(|m| err(a.url.span().start, key("url"), m))?;
    if !is_sha256(a.sha256.get_ref()) {
        return Err(err(
            a.sha256.span().start,
            key("sha256"),
            format!("`{}` is not a sha256 digest (64 hex digits)", a.sha256.get_ref()),
        ));
    }
    check_image_path(a.dest.get_ref()).map_err(|m| err(a.dest.span().start, key("dest"), m))?;
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
    if let Some(owner) = &a.owner {
        if owner.split(':').count() > 2 || owner.split(':').any(|p| p.is_empty()) {
            return Err(err(at, key("owner"), format!("`{owner}` is not `user` or `user:group`")));
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
    if !is_name(&f.get_ref().name) {
        return Err(err(
            at,
            format!("first_boot[{i}].name"),
            format!("`{}` is not a valid action name: use lower-case letters, digits and `-`", f.get_ref().name),
        ));
    }
    if let Some(u) = f.get_ref().before.iter().chain(&f.get_ref().after).find(|u| !is_unit_name(u)) {
        return Err(err(
            at,
            format!("first_boot[{i}]"),
            format!("`{u}` is not a systemd unit name (e.g. `nginx.service`)"),
        ));
    }
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
        (None, Some(s)) => {
            check_image_path(s)?;
            Ok(FirstBootRun::Script(s.clone()))
        }
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
pub fn resolve(file: &Path, top_dir: &Path, layer: &mut Layer) -> Result<Externals, RecipeError> {
    let dup = |what: &str, list: &str, name: &str| {
        RecipeError::file(
            file,
            Some(list.into()),
            format!("two {what} are named `{name}` (in the recipe or its layers)"),
        )
    };
    let mut repos = Vec::new();
    for r in layer.repositories.take().unwrap_or_default().into_iter().map(Spanned::into_inner) {
        let RepositoryLayer { name, url, suite, components, key, fingerprint, pin_priority, pin_packages } = r;
        if repos.iter().any(|x: &Repository| x.name == name) {
            return Err(dup("repositories", "repositories", &name));
        }
        let key = PathBuf::from(key.into_inner());
        let pin =
            pin_priority.map(|priority| Pin { priority, packages: pin_packages.unwrap_or_else(|| vec!["*".into()]) });
        repos.push(Repository {
            name,
            url: url.into_inner().trim_end_matches('/').into(),
            suite,
            components,
            key_path: normalize(&top_dir.join(&key)),
            key,
            fingerprint: fingerprint.into_inner(),
            pin,
        });
    }
    let mut artifacts = Vec::new();
    for a in layer.artifacts.take().unwrap_or_default().into_iter().map(Spanned::into_inner) {
        let ArtifactLayer { name, url, sha256, dest, extract, mode, owner } = a;
        if artifacts.iter().any(|x: &Artifact| x.name == name) {
            return Err(dup("artifacts", "artifacts", &name));
        }
        let mode = mode.map(|m| parse_mode(m.get_ref()).unwrap_or(0o644)).unwrap_or(0o644);
        artifacts.push(Artifact {
            name,
            url: url.into_inner(),
            sha256: sha256.into_inner().to_ascii_lowercase(),
            dest: dest.into_inner(),
            extract,
            mode,
            owner,
        });
    }
    let mut actions = Vec::new();
    for f in layer.first_boot.take().unwrap_or_default().into_iter().map(Spanned::into_inner) {
        if actions.iter().any(|x: &FirstBoot| x.name == f.name) {
            return Err(dup("first-boot actions", "first_boot", &f.name));
        }
        let run = run_of(&f).map_err(|m| RecipeError::file(file, Some("first_boot".into()), m))?;
        actions.push(FirstBoot { name: f.name, run, before: dedup(f.before), after: dedup(f.after) });
    }
    Ok((repos, artifacts, actions))
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    v.into_iter().filter(|s| seen.insert(s.clone())).collect()
}

/// Upper-case hex without spaces, when `s` is a full v4 (40) or v5/v6 (64) fingerprint.
pub fn normalize_fingerprint(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_uppercase();
    (matches!(hex.len(), 40 | 64) && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_unit_name(s: &str) -> bool {
    let ok_chars = s.chars().all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c));
    ok_chars
        && [".service", ".socket", ".target", ".mount", ".path", ".timer", ".device"]
            .iter()
            .any(|x| s.ends_with(x) && s.len() > x.len())
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("`{url}` is not an http:// or https:// URL"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || url.contains(char::is_whitespace) {
        return Err(format!("`{url}` is not a valid URL"));
    }
    Ok(())
}

/// An absolute path in the image without `..` and not the root itself.
fn check_image_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') || p == "/" || p.split('/').any(|c| c == "..") || p.contains(['\n', '\t']) {
        return Err(format!("`{p}` is not an absolute path in the image (no `..`)"));
    }
    Ok(())
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
    fn unit_names_and_modes() {
        assert!(
            is_unit_name("nginx.service")
                && is_unit_name("network-online.target")
                && !is_unit_name("nginx")
                && !is_unit_name("a b.service")
        );
        assert_eq!(parse_mode("0640"), Ok(0o640));
        assert!(parse_mode("rw-r--r--").is_err());
    }
}
