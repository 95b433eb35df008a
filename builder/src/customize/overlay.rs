//! Overlays: directory trees laid onto the root in recipe order (later overlays win).
//! Files ending in `.tera` are rendered with Tera against `vars` and `recipe`, and written
//! without the suffix. Rendering happens before any build work, so `kiln check` catches
//! template errors. Files ending in `.site` are checked and installed unrendered under
//! `/usr/lib/kiln/site/templates/` (`site.rs`), for the box to render with the site's values,
//! and, where every placeholder has a default, rendered with the defaults at their own path.
//!
//! Modes: a file or directory keeps its permission bits from the overlay tree, except the group
//! and other write bits (they follow the checkout's umask, so they would make the image depend
//! on the host) and the special bits: a file with setuid or setgid is refused (declare such a
//! mode under `[[files]]`), a directory's are dropped. Every entry is owned by root; `[[files]]`
//! sets other owners. A file whose name or content looks secret (`secret_reason`) must not be
//! readable by group or others unless `[[files]]` declares its mode.
use crate::recipe::{Recipe, RecipeError};
use anyhow::{Context, Result};
use std::collections::BTreeSet;
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
    let mut out = Walk { entries: Vec::new(), site: Vec::new() };
    let declared: BTreeSet<&str> =
        recipe.files.iter().filter(|f| f.mode.is_some()).map(|f| f.path.trim_start_matches('/')).collect();
    for (i, ov) in recipe.overlays.iter().enumerate() {
        let key = format!("overlays[{i}]");
        let walker = Walker { top: &ov.path, ctx: &ctx, key: &key, declared: &declared, recipe };
        walker.walk(&ov.path, &mut out).with_context(|| format!("reading overlay {}", ov.name.display()))?;
    }
    let mut entries = out.entries;
    entries.extend(super::site::entries(recipe, out.site));
    Ok(entries)
}

/// What a walk over the overlays collects: entries in order, `.site` templates apart.
struct Walk {
    entries: Vec<Entry>,
    site: Vec<Entry>,
}

/// Largest plain file of an overlay.
const MAX_FILE: u64 = 64 << 20;

/// Permission bits an overlay entry keeps (see the module comment).
const KEPT_BITS: u32 = 0o755;

/// One overlay tree being read.
struct Walker<'a> {
    top: &'a Path,
    ctx: &'a tera::Context,
    key: &'a str,
    /// Paths (relative to `/`) whose mode `[[files]]` declares.
    declared: &'a BTreeSet<&'a str>,
    recipe: &'a Recipe,
}

impl Walker<'_> {
    fn walk(&self, dir: &Path, out: &mut Walk) -> Result<()> {
        let mut names = std::fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .collect::<Result<Vec<_>, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let path = e.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let rel = path.strip_prefix(self.top)?.to_path_buf();
            let mode = meta.mode() & KEPT_BITS;
            if meta.is_dir() {
                out.entries.push(Entry { rel, mode, content: Content::Dir });
                self.walk(&path, out)?;
            } else if meta.file_type().is_symlink() {
                out.entries.push(Entry {
                    rel,
                    mode: 0o777,
                    content: Content::Symlink { target: std::fs::read_link(&path)? },
                });
            } else if !meta.is_file() {
                // Named pipes, sockets and devices are refused without being opened.
                return Err(self.error(&path, "not a regular file, directory or symbolic link".into()));
            } else {
                if meta.mode() & 0o6000 != 0 {
                    let msg = format!("mode {:04o}: overlay files never carry setuid or setgid bits; declare such a mode under [[files]]", meta.mode() & 0o7777);
                    return Err(self.error(&path, msg));
                }
                if path.extension().is_some_and(|x| x == "site") {
                    let t = super::site::template(&path, &rel, mode, self.recipe, self.key)?;
                    if let Some(Entry { rel, content: Content::File { data }, .. }) = &t.default {
                        self.check_secret(&path, rel, mode, data)?;
                    }
                    out.entries.extend(t.default);
                    out.site.push(t.template);
                    continue;
                }
                let (rel, data) = if path.extension().is_some_and(|x| x == "tera") {
                    let rendered = super::template::render(&path, self.ctx, self.key);
                    // Ctrl-C stops the renderer too: that is an interruption, not a template error.
                    crate::host::cmd::check_interrupted()?;
                    (rel.with_extension(""), rendered?)
                } else {
                    (rel, self.read(&path, meta.len())?)
                };
                self.check_secret(&path, &rel, mode, &data)?;
                out.entries.push(Entry { rel, mode, content: Content::File { data } });
            }
        }
        Ok(())
    }

    fn read(&self, path: &Path, len: u64) -> Result<Vec<u8>> {
        if len > MAX_FILE {
            return Err(self.error(path, format!("{len} bytes: overlay files are at most {MAX_FILE} bytes")));
        }
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    }

    /// A file that looks secret is readable by its owner only, unless `[[files]]` declares its mode.
    fn check_secret(&self, path: &Path, rel: &Path, mode: u32, data: &[u8]) -> Result<()> {
        if mode & 0o044 == 0 || self.declared.contains(rel.to_string_lossy().as_ref()) {
            return Ok(());
        }
        let Some(why) = secret_reason(rel, mode, data) else { return Ok(()) };
        let msg = format!(
            "/{} looks like a secret ({why}) but its mode {mode:04o} lets group or others read it: make the overlay file 0600 (chmod go-rwx), or declare the mode (and an owner or group) under [[files]]",
            rel.display()
        );
        Err(self.error(path, msg))
    }

    fn error(&self, path: &Path, msg: String) -> anyhow::Error {
        RecipeError::file(path, Some(self.key.into()), msg).into()
    }
}

/// Why a file looks secret, if it does: its content (a PEM or OpenSSH private key) or, unless it
/// is executable, its name (`*.key`, `*_key`, `*.p12`, `*.pfx`, `id_*`
/// except `*.pub`, or a name containing `secret` or `password`).
pub fn secret_reason(rel: &Path, mode: u32, data: &[u8]) -> Option<&'static str> {
    let marker = b"PRIVATE KEY-----";
    if data.windows(marker.len()).any(|w| w == marker) {
        return Some("it holds a private key");
    }
    if mode & 0o111 != 0 {
        // A program (`root-password` sets one) is not judged by its name.
        return None;
    }
    let name = rel.file_name()?.to_string_lossy().to_ascii_lowercase();
    let public = name.ends_with(".pub");
    if !public && [".key", "_key", ".p12", ".pfx"].iter().any(|x| name.ends_with(x)) {
        return Some("a key file's name");
    }
    if !public && name.starts_with("id_") {
        return Some("an SSH identity's name");
    }
    if ["secret", "password"].iter().any(|w| name.contains(w)) {
        return Some("its name");
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe_with_overlay(dir: &Path, extra: &str) -> Result<Vec<Entry>> {
        let file = dir.join("r.toml");
        let body = format!("name = \"x\"\nversion = \"1\"\noverlays = [\"ov\"]\n[base]\nmirror = \"http://deb.example/debian\"\n{extra}");
        std::fs::write(&file, body).unwrap();
        render(&crate::recipe::load(&file)?)
    }

    fn put(dir: &Path, rel: &str, mode: u32) {
        let p = dir.join("ov").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "x\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// 0600 stays 0600, 0750 stays 0750; group and other write bits (the checkout's umask) go.
    #[test]
    fn modes_survive_except_write_bits_of_group_and_others() {
        let dir = tempfile::tempdir().unwrap();
        for (rel, mode) in [("etc/a", 0o600), ("etc/b", 0o750), ("etc/c", 0o664), ("etc/d", 0o777), ("etc/e", 0o640)] {
            put(dir.path(), rel, mode);
        }
        let entries = recipe_with_overlay(dir.path(), "").unwrap();
        let modes: Vec<(String, u32)> = entries
            .iter()
            .filter(|e| matches!(e.content, Content::File { .. }))
            .map(|e| (e.rel.display().to_string(), e.mode))
            .collect();
        let want = [("etc/a", 0o600), ("etc/b", 0o750), ("etc/c", 0o644), ("etc/d", 0o755), ("etc/e", 0o640)];
        assert_eq!(modes, want.map(|(r, m)| (r.to_string(), m)));
    }

    #[test]
    fn setuid_in_an_overlay_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "usr/bin/su-like", 0o4755);
        let e = format!("{:#}", recipe_with_overlay(dir.path(), "").unwrap_err());
        assert!(
            e.contains(
                "ov/usr/bin/su-like:1:1: key `overlays[0]`: mode 4755: overlay files never carry setuid or setgid bits"
            ),
            "{e}"
        );
    }

    /// A secret readable by others is refused; 0600, or a declared mode, passes.
    #[test]
    fn secrets_are_private_or_declared() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "etc/app/api.key", 0o644);
        let e = format!("{:#}", recipe_with_overlay(dir.path(), "").unwrap_err());
        assert!(e.contains("/etc/app/api.key looks like a secret (a key file's name) but its mode 0644"), "{e}");
        let declared = "[[files]]\npath = \"/etc/app/api.key\"\nmode = \"0640\"\n";
        recipe_with_overlay(dir.path(), declared).unwrap();
        put(dir.path(), "etc/app/api.key", 0o600);
        recipe_with_overlay(dir.path(), "").unwrap();
    }

    #[test]
    fn secret_names_and_contents() {
        let s = |name: &str, mode: u32, data: &[u8]| secret_reason(Path::new(name), mode, data);
        for name in [
            "etc/x.key",
            "etc/ssh/ssh_host_ed25519_key",
            "root/.ssh/id_rsa",
            "etc/db-Password",
            "a/client.p12",
            "etc/app-secret.conf",
        ] {
            assert!(s(name, 0o644, b"").is_some(), "{name}");
        }
        for name in ["root/.ssh/id_rsa.pub", "etc/passwd", "etc/ssl/certs/ca.pem", "usr/lib/x/root-password"] {
            let mode = if name.ends_with("root-password") { 0o755 } else { 0o644 };
            assert!(s(name, mode, b"-----BEGIN CERTIFICATE-----").is_none(), "{name}");
        }
        assert!(s("etc/ssl/x.pem", 0o644, b"-----BEGIN EC PRIVATE KEY-----\n").is_some());
        assert!(s("usr/bin/tool", 0o755, b"-----BEGIN OPENSSH PRIVATE KEY-----\n").is_some());
    }
}
