//! mmdebstrap hooks: shell scripts (the `.sh` files of this folder) that mmdebstrap runs on the
//! host at one phase of a bootstrap. A script gets the root as `$1` and its values as further
//! positional arguments, never spliced into its text.
use crate::host::cmd::shell_quote;
use anyhow::{Context, Result};
use std::path::Path;

/// When mmdebstrap runs a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before anything is unpacked.
    Setup,
    /// After the essential packages are unpacked, before they are installed.
    Extract,
    /// After the essential packages are installed.
    Essential,
    /// After everything is installed.
    Customize,
}

impl Phase {
    fn option(self) -> &'static str {
        match self {
            Phase::Setup => "--setup-hook",
            Phase::Extract => "--extract-hook",
            Phase::Essential => "--essential-hook",
            Phase::Customize => "--customize-hook",
        }
    }
}

/// A shell script: its file name and text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Script {
    pub name: &'static str,
    pub text: &'static str,
}

macro_rules! script {
    ($name:literal) => {
        Script { name: $name, text: include_str!($name) }
    };
}

/// Divert update-initramfs to a no-op while packages install (essential phase) ...
pub const DEFER_INITRAMFS: Script = script!("defer-initramfs.sh");
/// ... and build the initrd exactly once, when everything is installed (customize phase).
pub const BUILD_INITRAMFS: Script = script!("build-initramfs.sh");
/// Empty SSH host key placeholders, so openssh-server's postinst makes no keys.
pub const NO_HOST_KEYS: Script = script!("no-host-keys.sh");
/// The initramfs driver policy (`POLICY [MODULE...]`).
pub const INITRAMFS_MODULES: Script = script!("initramfs-modules.sh");
/// A generated locale (`'LOCALE CHARSET'`).
pub const LOCALE: Script = script!("locale.sh");
/// An apt preferences file copied into the root (`FILE DEST`).
pub const APT_PIN: Script = script!("apt-pin.sh");
/// The bootstrap's apt sources and pin file removed (`PIN_FILE`).
pub const APT_SOURCES: Script = script!("apt-sources.sh");
/// Native help for foreign bootstraps (`ACTION DIR TREE ARCH`, see `assist/`).
pub const ASSIST: Script = script!("assist.sh");

/// One hook: a script run at a phase with arguments after the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub phase: Phase,
    pub script: Script,
    pub args: Vec<String>,
}

impl Hook {
    pub fn new<S: Into<String>>(phase: Phase, script: Script, args: impl IntoIterator<Item = S>) -> Hook {
        Hook { phase, script, args: args.into_iter().map(Into::into).collect() }
    }

    /// mmdebstrap's option for this hook, its script being in `dir`. mmdebstrap runs the hook
    /// string with `sh -c "$hook" exec "$TARGET"`, so `$1` is the root.
    fn option(&self, dir: &Path) -> String {
        let mut line = format!(
            r#"{}=sh {} "$1""#,
            self.phase.option(),
            shell_quote(&dir.join(self.script.name).to_string_lossy())
        );
        for a in &self.args {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        line
    }
}

/// mmdebstrap's options for `hooks`, in their order (within a phase, hooks run in the order
/// given), after writing the scripts they run into `dir`.
pub fn options(hooks: &[Hook], dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for h in hooks {
        let path = dir.join(h.script.name);
        std::fs::write(&path, h.script.text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(hooks.iter().map(|h| h.option(dir)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_quote_arguments_and_keep_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let hooks = [
            Hook::new(Phase::Customize, LOCALE, ["de_DE.UTF-8 UTF-8"]),
            Hook::new(Phase::Setup, INITRAMFS_MODULES, ["list", "virtio_blk", "it's"]),
        ];
        let opts = options(&hooks, dir.path()).unwrap();
        let d = dir.path().display();
        assert_eq!(
            opts,
            [
                format!(r#"--customize-hook=sh {d}/locale.sh "$1" 'de_DE.UTF-8 UTF-8'"#),
                format!(r#"--setup-hook=sh {d}/initramfs-modules.sh "$1" list virtio_blk 'it'\''s'"#),
            ]
        );
        assert_eq!(std::fs::read_to_string(dir.path().join("locale.sh")).unwrap(), LOCALE.text);
    }

    /// Run each hook's option the way mmdebstrap does: `sh -c "$hook" exec ROOT`.
    fn run(hooks: &[Hook], root: &Path) {
        let dir = root.parent().unwrap().join("hooks");
        for opt in options(hooks, &dir).unwrap() {
            let hook = opt.split_once('=').unwrap().1;
            crate::host::cmd::Cmd::new("sh").args(["-c", hook, "exec"]).arg(root).run().unwrap();
        }
    }

    #[test]
    fn scripts_write_what_the_bootstrap_expects() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let pins = tmp.path().join("pins");
        std::fs::write(&pins, "Package: a\n").unwrap();
        run(
            &[
                Hook::new(Phase::Setup, APT_PIN, [pins.to_str().unwrap(), "etc/apt/preferences.d/kiln-lock"]),
                Hook::new(Phase::Setup, INITRAMFS_MODULES, ["list", "virtio_blk", "nvme"]),
            ],
            &root,
        );
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(read("etc/apt/preferences.d/kiln-lock"), "Package: a\n");
        assert_eq!(read("etc/initramfs-tools/conf.d/kiln"), "MODULES=list\n");
        assert_eq!(read("usr/share/initramfs-tools/modules.d/kiln"), "virtio_blk\nnvme\n");
        std::fs::create_dir_all(root.join("etc/apt/sources.list.d")).unwrap();
        std::fs::write(root.join("etc/apt/sources.list"), "deb copy:///work/repo trixie main\n").unwrap();
        std::fs::write(root.join("etc/apt/sources.list.d/debian.sources"), "Types: deb\n").unwrap();
        std::fs::write(root.join("etc/apt/sources.list.d/vendor.list"), "deb http://vendor trixie main\n").unwrap();
        run(
            &[
                Hook::new(Phase::Setup, INITRAMFS_MODULES, ["dep"]),
                Hook::new(Phase::Customize, APT_SOURCES, ["etc/apt/preferences.d/kiln-lock"]),
            ],
            &root,
        );
        assert_eq!(read("etc/initramfs-tools/conf.d/kiln"), "MODULES=dep\n");
        for gone in ["etc/apt/preferences.d/kiln-lock", "etc/apt/sources.list", "etc/apt/sources.list.d/debian.sources"]
        {
            assert!(!root.join(gone).exists(), "{gone}");
        }
        assert_eq!(read("etc/apt/sources.list.d/vendor.list"), "deb http://vendor trixie main\n");
    }
}
