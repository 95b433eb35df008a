//! `[[groups]]` and `[[files]]`: groups made in the image, and the owner, group and mode of
//! paths in it. Names are allow-listed user and group names; a mode is octal. A mode with the
//! setuid or setgid bit is accepted here only because it is written out: overlays never
//! carry those bits (`customize::overlay`).
use super::error::{Origin, RecipeError};
use super::external::parse_mode;
use super::layer::{FileLayer, GroupLayer, Layer, Origins};
use super::origins::Unique;
use super::{FileAttrs, Group, User};
use std::path::Path;
use toml::Spanned;

/// Per-file checks: modes are octal, each entry changes something.
pub fn per_file(layer: &Layer, err: &impl Fn(usize, &str, String) -> RecipeError) -> Result<(), RecipeError> {
    for (i, f) in layer.files.iter().flatten().enumerate() {
        let entry = f.get_ref();
        if let Some(mode) = &entry.mode {
            parse_mode(mode.get_ref()).map_err(|m| err(mode.span().start, &format!("files[{i}].mode"), m))?;
        }
        if entry.owner.is_none() && entry.group.is_none() && entry.mode.is_none() {
            let msg = format!("`{}`: a [[files]] entry sets at least one of `owner`, `group` or `mode`", entry.path);
            return Err(err(f.span().start, &format!("files[{i}]"), msg));
        }
    }
    Ok(())
}

/// The merged lists: group names and paths each once; a group is not also a user's own group.
pub fn resolve(
    groups_in: Vec<Spanned<GroupLayer>>,
    files_in: Vec<Spanned<FileLayer>>,
    origins: &Origins,
    users: &[User],
    file: &Path,
) -> Result<(Vec<Group>, Vec<FileAttrs>), RecipeError> {
    let mut names = Unique::new("groups", "groups", &origins.groups);
    let mut groups = Vec::new();
    for (i, g) in groups_in.into_iter().map(Spanned::into_inner).enumerate() {
        let GroupLayer { name, system } = g;
        names.check(i, &name, file)?;
        if users.iter().any(|u| u.name == name) {
            let msg = format!("user `{name}` already gets a group of its own name; leave this [[groups]] entry out");
            return Err(at(origins.groups.get(i), file, "groups", msg));
        }
        groups.push(Group { name, system });
    }
    let mut paths = Unique::new("[[files]] entries", "files", &origins.files);
    let mut files = Vec::new();
    for (i, f) in files_in.into_iter().map(Spanned::into_inner).enumerate() {
        let FileLayer { path, owner, group, mode } = f;
        paths.check(i, &path, file)?;
        let mode = mode.and_then(|m| parse_mode(m.get_ref()).ok());
        files.push(FileAttrs { path, owner, group, mode });
    }
    Ok((groups, files))
}

fn at(origin: Option<&Origin>, file: &Path, key: &str, msg: String) -> RecipeError {
    match origin {
        Some(o) => o.error(None, msg),
        None => RecipeError::file(file, Some(key.into()), msg),
    }
}
