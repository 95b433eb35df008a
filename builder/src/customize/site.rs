//! The image's side of site settings (docs/site.md): the list of declared site variables
//! (`/usr/lib/kiln/site/vars`) and the overlays' `.site` templates, checked here and installed
//! unrendered under `/usr/lib/kiln/site/templates/`, for the box to render at every boot.
use super::overlay::{Content, Entry};
use crate::recipe::sitevars;
use crate::recipe::{Recipe, RecipeError};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where the declarations go, relative to `/`.
pub const VARS: &str = "usr/lib/kiln/site/vars";
/// Where `.site` templates go, relative to `/`: `TEMPLATES/<path without .site>`.
pub const TEMPLATES: &str = "usr/lib/kiln/site/templates";

/// A `.site` template's entries: the template under `TEMPLATES`, and the file at its own path
/// rendered with the image's defaults (the host name, the variables' defaults) when every
/// placeholder has one, so that the image works, and stays reproducible, without a site file.
pub struct Template {
    pub template: Entry,
    pub default: Option<Entry>,
}

/// Check the `.site` template `path` (at `rel` in its overlay) and make its entries.
pub fn template(path: &Path, rel: &Path, mode: u32, recipe: &Recipe, key: &str) -> Result<Template, RecipeError> {
    let vars = &recipe.site_vars;
    let limit = super::template::MAX_SOURCE;
    let text = crate::host::files::read_regular(path, limit).map_err(|e| {
        RecipeError::file(
            path,
            Some(key.into()),
            format!("cannot read .site template: {e} (UTF-8 text of at most 1MiB)"),
        )
    })?;
    sitevars::check_template(&text, vars).map_err(|(offset, msg)| {
        RecipeError::at(path, &text, offset, Some(key.into()), format!("template error: {msg}"))
    })?;
    let default_of = |name: &str| {
        if name == "hostname" {
            return Some(recipe.system.hostname.to_string());
        }
        vars.iter().find(|v| v.name == name)?.default.as_ref().map(ToString::to_string)
    };
    let default = sitevars::render(&text, default_of).map(|data| Entry {
        rel: rel.with_extension(""),
        mode,
        content: Content::File { data: data.into_bytes() },
    });
    let target = Path::new(TEMPLATES).join(rel.with_extension(""));
    Ok(Template { template: Entry { rel: target, mode, content: Content::File { data: text.into_bytes() } }, default })
}

/// The entries of `/usr/lib/kiln/site`: its directories, the vars file and the templates.
/// None at all for a recipe that declares no variables and has no templates, so such an
/// image is unchanged.
pub fn entries(recipe: &Recipe, templates: Vec<Entry>) -> Vec<Entry> {
    if recipe.site_vars.is_empty() && templates.is_empty() {
        return Vec::new();
    }
    let vars = Entry {
        rel: PathBuf::from(VARS),
        mode: 0o644,
        content: Content::File { data: sitevars::vars_file(&recipe.site_vars).into_bytes() },
    };
    let files: Vec<Entry> = std::iter::once(vars).chain(templates).collect();
    // Parents sort before their children.
    let dirs: BTreeSet<PathBuf> = files
        .iter()
        .flat_map(|f| f.rel.ancestors().skip(1).filter(|a| a.starts_with("usr/lib/kiln")).map(Path::to_path_buf))
        .collect();
    let dirs = dirs.into_iter().map(|rel| Entry { rel, mode: 0o755, content: Content::Dir });
    dirs.chain(files).collect()
}
