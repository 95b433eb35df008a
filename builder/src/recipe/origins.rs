//! Where a recipe file wrote the values that are checked after merging (names, list entries,
//! package and unit names), so that a late error still names file, line, column and key.
use super::error::Origin;
use super::layer::Layer;
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
    /// Where `layer`'s name and list entries are written in `file` (its contents `text`).
    pub fn of(layer: &Layer, file: &Path, text: &str) -> Origins {
        let mut origins = Origins {
            name: layer.name.as_ref().map(|n| Origin::new(file, text, n.span().start, "name".into())),
            users: origins_of(&layer.users, file, text, "users"),
            checks: origins_of(&layer.checks, file, text, "checks"),
            repositories: origins_of(&layer.repositories, file, text, "repositories"),
            artifacts: origins_of(&layer.artifacts, file, text, "artifacts"),
            first_boot: origins_of(&layer.first_boot, file, text, "first_boot"),
            groups: origins_of(&layer.groups, file, text, "groups"),
            files: origins_of(&layer.files, file, text, "files"),
            packages: BTreeMap::new(),
            enable: BTreeMap::new(),
            disable: BTreeMap::new(),
            ports: origins_of(&layer.ports, file, text, "ports"),
            security_mirror: layer
                .base
                .as_ref()
                .and_then(|b| b.security_mirror.as_ref())
                .map(|m| Origin::new(file, text, m.span().start, "base.security_mirror".into())),
            automatic_updates: layer
                .system
                .as_ref()
                .and_then(|s| s.automatic_updates.as_ref())
                .map(|a| Origin::new(file, text, a.span().start, "system.automatic_updates".into())),
        };
        if let Ok(spots) = toml::from_str::<Spots>(text) {
            spots.record(file, text, &mut origins);
        }
        origins
    }

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
fn origins_of<T>(list: &Option<Vec<Spanned<T>>>, file: &Path, text: &str, key: &str) -> Vec<Origin> {
    let list = list.iter().flatten().enumerate();
    list.map(|(i, e)| Origin::new(file, text, e.span().start, format!("{key}[{i}]"))).collect()
}

/// Positions of package and unit names in one file (a second, lenient reading of its text).
#[derive(Deserialize)]
struct Spots {
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
    fn record(self, file: &Path, text: &str, origins: &mut Origins) {
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
