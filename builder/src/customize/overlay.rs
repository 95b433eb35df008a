//! Overlays: directory trees laid onto the root in recipe order (later overlays win).
//! Files ending in `.tera` are rendered with Tera against `vars` and `recipe`, and written
//! without the suffix. Rendering happens before any build work, so `kiln check` catches
//! template errors.
use crate::recipe::{Recipe, RecipeError};
use anyhow::{Context, Result};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum Content {
    Dir,
    File { data: Vec<u8> },
    Symlink { target: PathBuf },
}

/// One entry to create below the root: path relative to `/`, mode bits, content.
#[derive(Debug)]
pub struct Entry {
    pub rel: PathBuf,
    pub mode: u32,
    pub content: Content,
}

/// Read (and render) every overlay of the recipe, in order. Template errors name file and line.
pub fn render(recipe: &Recipe) -> Result<Vec<Entry>> {
    let mut ctx = tera::Context::new();
    ctx.insert("vars", &recipe.vars);
    ctx.insert("recipe", recipe);
    let mut entries = Vec::new();
    for ov in &recipe.overlays {
        walk(&ov.path, &ov.path, &ctx, &mut entries)
            .with_context(|| format!("reading overlay {}", ov.name.display()))?;
    }
    Ok(entries)
}

fn walk(top: &Path, dir: &Path, ctx: &tera::Context, out: &mut Vec<Entry>) -> Result<()> {
    let mut names: Vec<_> =
        std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?.collect::<Result<_, _>>()?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let rel = path.strip_prefix(top)?.to_path_buf();
        // git keeps only the executable bit; anything else would depend on the host's umask.
        let mode = if meta.is_dir() || meta.mode() & 0o111 != 0 { 0o755 } else { 0o644 };
        if meta.is_dir() {
            out.push(Entry { rel, mode, content: Content::Dir });
            walk(top, &path, ctx, out)?;
        } else if meta.file_type().is_symlink() {
            out.push(Entry { rel, mode: 0o777, content: Content::Symlink { target: std::fs::read_link(&path)? } });
        } else if path.extension().is_some_and(|x| x == "tera") {
            let data = render_template(&path, ctx)?;
            out.push(Entry { rel: rel.with_extension(""), mode, content: Content::File { data } });
        } else {
            let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            out.push(Entry { rel, mode, content: Content::File { data } });
        }
    }
    Ok(())
}

fn render_template(path: &Path, ctx: &tera::Context) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading template {}", path.display()))?;
    let mut tera = tera::Tera::default();
    tera.autoescape_on(vec![]);
    let name = path.display().to_string();
    let fail = |e: tera::Error| -> anyhow::Error {
        let detail = error_chain(&e);
        let (line, col) = position(&detail, &text);
        let key = undefined_variable(&detail);
        // The first line only repeats the file name ("Failed to parse '…'").
        let msg = detail.lines().skip(1).filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("\n    ");
        RecipeError { file: path.to_path_buf(), line, column: col, key, message: format!("template error: {msg}") }
            .into()
    };
    tera.add_raw_template(&name, &text).map_err(fail)?;
    tera.render(&name, ctx).map(String::into_bytes).map_err(fail)
}

fn error_chain(e: &tera::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    parts.join("\n")
}

/// Line and column of a template error: Tera's parser says ` --> L:C`; for a missing variable,
/// the first line that names it.
fn position(detail: &str, text: &str) -> (usize, usize) {
    if let Some(at) = detail.find("--> ") {
        let rest = &detail[at + 4..];
        let mut nums = rest.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
        if let (Some(l), Some(c)) = (nums.next(), nums.next()) {
            return (l.parse().unwrap_or(1), c.parse().unwrap_or(1));
        }
    }
    if let Some(var) = undefined_variable(detail) {
        for (i, line) in text.lines().enumerate() {
            if let Some(c) = line.find(&var) {
                return (i + 1, line[..c].chars().count() + 1);
            }
        }
    }
    (1, 1)
}

fn undefined_variable(detail: &str) -> Option<String> {
    let rest = detail.split("Variable `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

/// Lay the rendered entries onto `root`. Files and links replace what is there.
pub fn apply(entries: &[Entry], root: &Path) -> Result<()> {
    for e in entries {
        let dest = root.join(&e.rel);
        let shown = Path::new("/").join(&e.rel);
        match &e.content {
            Content::Dir => {
                // Directories the root already has keep their mode and owner.
                if !dest.is_dir() {
                    std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", shown.display()))?;
                    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(e.mode))?;
                }
            }
            Content::File { data } => {
                if dest.is_symlink() || dest.is_file() {
                    std::fs::remove_file(&dest).with_context(|| format!("replacing {}", shown.display()))?;
                }
                std::fs::write(&dest, data).with_context(|| format!("writing {}", shown.display()))?;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(e.mode))?;
                std::os::unix::fs::lchown(&dest, Some(0), Some(0))?;
            }
            Content::Symlink { target } => {
                if dest.is_symlink() || dest.is_file() {
                    std::fs::remove_file(&dest)?;
                }
                std::os::unix::fs::symlink(target, &dest).with_context(|| format!("linking {}", shown.display()))?;
                std::os::unix::fs::lchown(&dest, Some(0), Some(0))?;
            }
        }
    }
    Ok(())
}
