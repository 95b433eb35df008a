//! Where a recipe file wrote the values that are checked after merging (names, list entries,
//! package and unit names), so that a late error still names file, line, column and key.
use super::error::{Origin, RecipeError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use toml::Spanned;

/// Origins of values checked after merging, in the order of the merged lists.
#[derive(Debug, Default, Clone)]
pub struct Origins {
    pub name: Option<Origin>,
    pub users: Vec<Origin>,
    pub checks: Vec<Origin>,
    pub repositories: Vec<Origin>,
    pub artifacts: Vec<Origin>,
    pub first_boot: Vec<Origin>,
    pub groups: Vec<Origin>,
    pub files: Vec<Origin>,
    /// Where each package name (`base.packages`, `base.kernel`, `base.arch_packages`) and each
    /// unit of `system.enable` and `system.disable` was first written.
    pub packages: BTreeMap<String, Origin>,
    pub enable: BTreeMap<String, Origin>,
    pub disable: BTreeMap<String, Origin>,
    pub ports: Vec<Origin>,
    pub security_mirror: Option<Origin>,
    pub automatic_updates: Option<Origin>,
}

impl Origins {
    pub(super) fn merge(self, upper: Origins) -> Origins {
        let cat = |mut l: Vec<Origin>, u: Vec<Origin>| {
            l.extend(u);
            l
        };
        Origins {
            name: upper.name.or(self.name),
            users: cat(self.users, upper.users),
            checks: cat(self.checks, upper.checks),
            repositories: cat(self.repositories, upper.repositories),
            artifacts: cat(self.artifacts, upper.artifacts),
            first_boot: cat(self.first_boot, upper.first_boot),
            groups: cat(self.groups, upper.groups),
            files: cat(self.files, upper.files),
            packages: first_of(self.packages, upper.packages),
            enable: first_of(self.enable, upper.enable),
            disable: first_of(self.disable, upper.disable),
            ports: cat(self.ports, upper.ports),
            security_mirror: upper.security_mirror.or(self.security_mirror),
            automatic_updates: upper.automatic_updates.or(self.automatic_updates),
        }
    }
}

/// Two name → origin maps, the lower layer's origin kept for a name both have.
fn first_of(mut lower: BTreeMap<String, Origin>, upper: BTreeMap<String, Origin>) -> BTreeMap<String, Origin> {
    for (k, v) in upper {
        lower.entry(k).or_insert(v);
    }
    lower
}

/// Origins of the entries of one list of one file.
pub(super) fn origins_of<T>(list: &Option<Vec<Spanned<T>>>, file: &Path, text: &str, key: &str) -> Vec<Origin> {
    let list = list.iter().flatten().enumerate();
    list.map(|(i, e)| Origin::new(file, text, e.span().start, format!("{key}[{i}]"))).collect()
}

/// Positions of package and unit names in one file (a second, lenient reading of its text).
#[derive(Deserialize)]
pub(super) struct Spots {
    base: Option<BaseSpots>,
    system: Option<SystemSpots>,
}

#[derive(Deserialize)]
struct BaseSpots {
    packages: Option<Vec<Spanned<String>>>,
    kernel: Option<Spanned<String>>,
    arch_packages: Option<BTreeMap<String, Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
struct SystemSpots {
    enable: Option<Vec<Spanned<String>>>,
    disable: Option<Vec<Spanned<String>>>,
}

impl Spots {
    pub(super) fn record(self, file: &Path, text: &str, origins: &mut Origins) {
        let add = |map: &mut BTreeMap<String, Origin>, s: &Spanned<String>, key: String| {
            map.entry(s.get_ref().clone()).or_insert_with(|| Origin::new(file, text, s.span().start, key));
        };
        if let Some(b) = &self.base {
            for (i, p) in b.packages.iter().flatten().enumerate() {
                add(&mut origins.packages, p, format!("base.packages[{i}]"));
            }
            if let Some(k) = &b.kernel {
                add(&mut origins.packages, k, "base.kernel".into());
            }
            for (arch, list) in b.arch_packages.iter().flatten() {
                for (i, p) in list.iter().enumerate() {
                    add(&mut origins.packages, p, format!("base.arch_packages.{arch}[{i}]"));
                }
            }
        }
        for (i, u) in self.system.iter().flat_map(|s| s.enable.iter().flatten()).enumerate() {
            add(&mut origins.enable, u, format!("system.enable[{i}]"));
        }
        for (i, u) in self.system.iter().flat_map(|s| s.disable.iter().flatten()).enumerate() {
            add(&mut origins.disable, u, format!("system.disable[{i}]"));
        }
    }
}

/// Names that must be unique across a merged list; errors point at both definitions.
pub struct Unique<'a> {
    what: &'static str,
    list: &'static str,
    hint: &'static str,
    origins: &'a [Origin],
    seen: BTreeMap<String, usize>,
}

impl<'a> Unique<'a> {
    /// `origins`: where each entry of the merged list was written, in list order.
    pub fn new(what: &'static str, list: &'static str, origins: &'a [Origin]) -> Unique<'a> {
        Unique { what, list, hint: "", origins, seen: BTreeMap::new() }
    }

    /// Words added to the error (`; give one a name`).
    pub fn hint(self, hint: &'static str) -> Unique<'a> {
        Unique { hint, ..self }
    }

    /// Entry `i` is named `name`: an error if an earlier entry has that name too.
    pub fn check(&mut self, i: usize, name: &str, file: &Path) -> Result<(), RecipeError> {
        let Some(&first) = self.seen.get(name) else {
            self.seen.insert(name.to_string(), i);
            return Ok(());
        };
        let (what, list, hint) = (self.what, self.list, self.hint);
        Err(match (self.origins.get(first), self.origins.get(i)) {
            (Some(a), Some(b)) => {
                b.error(None, format!("two {what} are named `{name}`: this one and the one at {a}{hint}"))
            }
            _ => RecipeError::file(
                file,
                Some(list.into()),
                format!("two {what} are named `{name}` (in the recipe or its layers){hint}"),
            ),
        })
    }
}
