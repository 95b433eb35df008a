//! Overlays: directory trees laid onto the root in recipe order (later overlays win).
//! Files ending in `.tera` are rendered with Tera against `vars` and `recipe`, and written
//! without the suffix. Rendering happens before any build work, so `kiln check` catches
//! template errors. Files ending in `.site` are checked and installed unrendered under
//! `/usr/lib/kiln/site/templates/` (`site.rs`), for the box to render with the site's values,
//! and, where every placeholder has a default, rendered with the defaults at their own path.
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
    let mut out = Walk { entries: Vec::new(), site: Vec::new(), recipe };
    for (i, ov) in recipe.overlays.iter().enumerate() {
        let key = format!("overlays[{i}]");
        walk(&ov.path, &ov.path, &ctx, &key, &mut out)
            .with_context(|| format!("reading overlay {}", ov.name.display()))?;
    }
    let mut entries = out.entries;
    entries.extend(super::site::entries(recipe, out.site));
    Ok(entries)
}

/// Largest plain file of an overlay.
const MAX_FILE: u64 = 64 << 20;

/// What a walk over the overlays collects: entries in order, `.site` templates apart.
struct Walk<'r> {
    entries: Vec<Entry>,
    site: Vec<Entry>,
    recipe: &'r Recipe,
}

fn walk(top: &Path, dir: &Path, ctx: &tera::Context, key: &str, out: &mut Walk) -> Result<()> {
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
            out.entries.push(Entry { rel, mode, content: Content::Dir });
            walk(top, &path, ctx, key, out)?;
        } else if meta.file_type().is_symlink() {
            out.entries.push(Entry {
                rel,
                mode: 0o777,
                content: Content::Symlink { target: std::fs::read_link(&path)? },
            });
        } else if !meta.is_file() {
            // Named pipes, sockets and devices are refused without being opened.
            return Err(
                RecipeError::file(&path, Some(key.into()), "not a regular file, directory or symbolic link").into()
            );
        } else if path.extension().is_some_and(|x| x == "tera") {
            let data = super::template::render(&path, ctx, key)?;
            out.entries.push(Entry { rel: rel.with_extension(""), mode, content: Content::File { data } });
        } else if path.extension().is_some_and(|x| x == "site") {
            let t = super::site::template(&path, &rel, mode, out.recipe, key)?;
            out.entries.extend(t.default);
            out.site.push(t.template);
        } else {
            if meta.len() > MAX_FILE {
                let msg = format!("{} bytes: overlay files are at most {MAX_FILE} bytes", meta.len());
                return Err(RecipeError::file(&path, Some(key.into()), msg).into());
            }
            let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            out.entries.push(Entry { rel, mode, content: Content::File { data } });
        }
    }
    Ok(())
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
