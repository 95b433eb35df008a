//! Package names against the archives' indexes, before anything is bootstrapped: a misspelt
//! package fails in seconds, naming the recipe file, line, column and key where it was written
//! (and the nearest name the index has), instead of deep in mmdebstrap's output.
//!
//! The names are those of every package of the Debian mirror's `Packages.xz` (suite,
//! components, architecture of the plan) and of the extra repositories' indexes (found in their
//! InRelease, which `repos::verify_releases` has fetched and checked), plus the virtual names
//! they provide.
use crate::host::cmd::Cmd;
use crate::host::net::download;
use crate::plan::Plan;
use crate::recipe::{Positions, Repository};
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::path::Path;

/// Fail with a recipe error unless every package of the plan is in one of the indexes.
/// `work`: scratch space, holding the repositories' checked InRelease files.
pub fn check(plan: &Plan, work: &Path) -> Result<()> {
    let names = known(plan, work)?;
    let missing: Vec<&String> = plan.packages.iter().filter(|p| !names.contains(p.as_str())).collect();
    let Some(first) = missing.first() else { return Ok(()) };
    let r = &plan.recipe;
    let mut where_ = format!("Debian {} ({})", r.base.suite, r.base.components.join(", "));
    for repo in &r.repositories {
        where_.push_str(&format!(", repository `{}`", repo.name));
    }
    let mut msg = format!(
        "package `{first}` is not in {where_} on {} for {}{}",
        plan.mirror,
        plan.arch().debian(),
        hint(first, &names)
    );
    for other in &missing[1..] {
        let at = r.origins.packages.get(other.as_str()).map(|o| format!(" ({o})")).unwrap_or_default();
        msg.push_str(&format!("; nor is `{other}`{at}{}", hint(other, &names)));
    }
    Err(Positions::error(r.origins.packages.get(first.as_str()), r, "base.packages", msg).into())
}

/// `; did you mean `x`?` for the nearest known name, if one is near.
fn hint(name: &str, names: &BTreeSet<String>) -> String {
    let limit = (name.chars().count() / 4).clamp(1, 3);
    names
        .iter()
        .map(|n| (distance(name, n), n))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, n)| format!("; did you mean `{n}`?"))
        .unwrap_or_default()
}

/// Edit distance in characters, a swap of two neighbours counting as one edit (optimal string
/// alignment).
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Every package and provided name of the plan's indexes.
fn known(plan: &Plan, work: &Path) -> Result<BTreeSet<String>> {
    crate::debian::mirror::require_tools()?;
    let r = &plan.recipe;
    let arch = plan.arch().debian();
    let mut names = BTreeSet::new();
    for comp in &r.base.components {
        let url =
            format!("{}/dists/{}/{comp}/binary-{arch}/Packages.xz", plan.mirror.trim_end_matches('/'), r.base.suite);
        let what = format!("the package index of Debian {} {comp} ({arch})", r.base.suite);
        add(&mut names, &fetch(&url, work, &what)?);
    }
    for repo in &r.repositories {
        for url in repository_indexes(repo, &crate::debian::repos::in_release(work, repo), arch)? {
            add(&mut names, &fetch(&url, work, &format!("the package index of repository `{}`", repo.name))?);
        }
    }
    Ok(names)
}

/// The index URLs of a repository for `arch`, one per component: the best compression its
/// checked InRelease lists.
fn repository_indexes(repo: &Repository, in_release: &Path, arch: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(in_release)
        .with_context(|| format!("repository `{}`: reading its checked InRelease", repo.name))?;
    let listed: BTreeSet<&str> = text.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    let mut urls = Vec::new();
    for comp in &repo.components {
        let base = format!("{comp}/binary-{arch}/Packages");
        let file = ["xz", "gz", ""]
            .iter()
            .map(|x| if x.is_empty() { base.clone() } else { format!("{base}.{x}") })
            .find(|f| listed.contains(f.as_str()))
            .with_context(|| format!("repository `{}`: its InRelease lists no {base} index", repo.name))?;
        urls.push(format!("{}/dists/{}/{file}", repo.url, repo.suite));
    }
    Ok(urls)
}

/// Download an index and return it unpacked.
fn fetch(url: &str, work: &Path, what: &str) -> Result<String> {
    let file = work.join("names-index");
    download(url, &file).with_context(|| format!("downloading {what}"))?;
    let text = if url.ends_with(".xz") {
        Cmd::new("xz").arg("-dc").arg(&file).output()
    } else if url.ends_with(".gz") {
        Cmd::new("gzip").arg("-dc").arg(&file).output()
    } else {
        std::fs::read_to_string(&file).map_err(Into::into)
    };
    let _ = std::fs::remove_file(&file);
    text.with_context(|| format!("unpacking {what}"))
}

/// Names of an index's packages and of what they provide (`Provides: a (= 1), b`).
fn add(names: &mut BTreeSet<String>, index: &str) {
    for p in crate::debian::deb822::paragraphs(index) {
        if let Some(n) = p.get("Package") {
            names.insert(n.to_string());
        }
        for v in p.get("Provides").unwrap_or("").split(',') {
            let v = v.split_whitespace().next().unwrap_or("");
            if !v.is_empty() {
                names.insert(v.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_provides() {
        let mut names = BTreeSet::new();
        add(
            &mut names,
            "Package: nginx\nVersion: 1\n\nPackage: postfix\nProvides: mail-transport-agent, default-mta (= 1)\n",
        );
        let want: BTreeSet<String> =
            ["default-mta", "mail-transport-agent", "nginx", "postfix"].iter().map(|s| s.to_string()).collect();
        assert_eq!(names, want);
        assert_eq!(hint("ngnix", &names), "; did you mean `nginx`?");
        assert_eq!(hint("openssh", &names), "");
    }

    #[test]
    fn edit_distance() {
        assert_eq!(distance("nginx", "nginx"), 0);
        assert_eq!(distance("ngnix", "nginx"), 1);
        assert_eq!(distance("curll", "curl"), 1);
        assert_eq!(distance("", "abc"), 3);
    }
}
