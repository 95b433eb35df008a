//! `[[groups]]` and `[[files]]` applied to the root with the image's own `groupadd`, `chown` and
//! `chmod`, run chrooted (names resolve in the image's /etc/group and /etc/passwd), every recipe
//! value after `--` or in a form the program cannot read as an option.
use super::system::in_root;
use crate::host::cmd::Cmd;
use crate::plan::Plan;
use crate::recipe::{FileAttrs, Group, Positions};
use anyhow::{Context, Result};
use std::path::Path;

/// Make the recipe's groups; before the users, who may be members.
pub fn groups(plan: &Plan, root: &Path) -> Result<()> {
    for g in &plan.recipe.groups {
        groupadd(root, g).run().with_context(|| format!("adding group `{}`", g.name))?;
    }
    Ok(())
}

fn groupadd(root: &Path, g: &Group) -> Cmd {
    let cmd = in_root(root, "groupadd");
    let cmd = if g.system { cmd.arg("--system") } else { cmd };
    cmd.arg("--").arg(&g.name)
}

/// Give each `[[files]]` path its owner, group and mode: after overlays, artifacts and units
/// files exist. A path, user or group the image lacks is named with its recipe position.
pub fn files(plan: &Plan, root: &Path) -> Result<()> {
    let recipe = &plan.recipe;
    for (i, f) in recipe.files.iter().enumerate() {
        let origin = recipe.origins.files.get(i);
        let fail = |msg: String| Positions::error(origin, recipe, &format!("files[{i}]"), msg);
        let meta = std::fs::symlink_metadata(root.join(f.path.trim_start_matches('/')))
            .map_err(|_| fail(format!("`{}` is not in the image: no package, overlay or artifact makes it", f.path)))?;
        if meta.file_type().is_symlink() {
            return Err(
                fail(format!("`{}` is a symbolic link in the image: name the file it points at", f.path)).into()
            );
        }
        for (name, file, what) in [(&f.owner, "etc/passwd", "user"), (&f.group, "etc/group", "group")] {
            if let Some(n) = name {
                if !has_entry(root, file, n)? {
                    return Err(fail(format!(
                        "{what} `{n}` of `{}` is not in the image's /{file}: add it under [[users]] or [[groups]], or install the package that makes it",
                        f.path
                    ))
                    .into());
                }
            }
        }
        for cmd in commands(root, f) {
            cmd.run().with_context(|| format!("setting owner and mode of {}", f.path))?;
        }
    }
    Ok(())
}

/// chown first (it clears setuid and setgid bits), then chmod.
fn commands(root: &Path, f: &FileAttrs) -> Vec<Cmd> {
    let mut cmds = Vec::new();
    let spec = match (&f.owner, &f.group) {
        (Some(o), Some(g)) => Some(format!("{o}:{g}")),
        (Some(o), None) => Some(o.to_string()),
        (None, Some(g)) => Some(format!(":{g}")),
        (None, None) => None,
    };
    if let Some(spec) = spec {
        cmds.push(in_root(root, "chown").args(["--no-dereference", &spec, "--"]).arg(&f.path));
    }
    if let Some(mode) = f.mode {
        cmds.push(in_root(root, "chmod").arg(format!("{mode:04o}")).arg("--").arg(&f.path));
    }
    cmds
}

fn has_entry(root: &Path, file: &str, name: &str) -> Result<bool> {
    let text = std::fs::read_to_string(root.join(file)).with_context(|| format!("reading /{file} of the image"))?;
    Ok(text.lines().any(|l| l.split(':').next() == Some(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan_of;

    /// Names and paths come after `--`; chown before chmod.
    #[test]
    fn argument_vectors() {
        let body = "[[groups]]\nname = \"app\"\nsystem = true\n[[files]]\npath = \"/etc/app.conf\"\nowner = \"root\"\ngroup = \"app\"\nmode = \"0640\"\n";
        let plan = plan_of(body).unwrap();
        let r = Path::new("/r");
        assert_eq!(groupadd(r, &plan.recipe.groups[0]).argv(), ["chroot", "/r", "groupadd", "--system", "--", "app"]);
        let argv: Vec<Vec<String>> = commands(r, &plan.recipe.files[0]).iter().map(Cmd::argv).collect();
        assert_eq!(
            argv,
            [
                vec!["chroot", "/r", "chown", "--no-dereference", "root:app", "--", "/etc/app.conf"],
                vec!["chroot", "/r", "chmod", "0640", "--", "/etc/app.conf"],
            ]
        );
    }
}
