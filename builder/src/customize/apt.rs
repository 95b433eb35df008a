//! The image's apt configuration: its Debian sources (the suite, `<suite>-updates` and
//! `<suite>-security` as the recipe's `[base]` has them, deb822 with `Signed-By`) and, with
//! `system.automatic_updates = "security"`, unattended-upgrades limited to the security
//! archive. Every file is written by kiln from the plan: the same recipe gives the same bytes.
use crate::debian::deb822::{debian_sources, DEBIAN_SOURCES};
use crate::host::files::write_file;
use crate::plan::Plan;
use crate::recipe::AutomaticUpdates;
use anyhow::{Context, Result};
use std::path::Path;

/// apt's periodic settings: refresh the lists and run unattended-upgrades daily
/// (`apt-daily.timer`, `apt-daily-upgrade.timer`).
pub const AUTO_UPGRADES: &str = "etc/apt/apt.conf.d/20auto-upgrades";
/// What unattended-upgrades installs: the security archive's packages only.
pub const UNATTENDED_UPGRADES: &str = "etc/apt/apt.conf.d/50unattended-upgrades";

const AUTO_UPGRADES_TEXT: &str = "// Written by kiln (recipe: system.automatic_updates = \"security\").\n\
APT::Periodic::Update-Package-Lists \"1\";\n\
APT::Periodic::Unattended-Upgrade \"1\";\n";

const UNATTENDED_UPGRADES_TEXT: &str = "// Written by kiln (recipe: system.automatic_updates = \"security\"):\n\
// install updates from Debian's security archive only, never reboot by itself.\n\
Unattended-Upgrade::Origins-Pattern {\n\
\t\"origin=Debian,codename=${distro_codename}-security,label=Debian-Security\";\n\
};\n\
Unattended-Upgrade::Package-Blacklist {\n\
};\n\
Unattended-Upgrade::Automatic-Reboot \"false\";\n";

/// Write the image's Debian sources and its automatic-update policy into `root`.
pub fn configure(plan: &Plan, root: &Path) -> Result<()> {
    let components = crate::recipe::values::strings(&plan.recipe.base.components);
    let sources = debian_sources(&plan.archives(), &components)?;
    let old = root.join("etc/apt/sources.list");
    if old.is_file() || old.is_symlink() {
        std::fs::remove_file(&old).context("removing /etc/apt/sources.list")?;
    }
    write_file(root, DEBIAN_SOURCES, sources.as_bytes(), 0o644)?;
    match plan.recipe.system.automatic_updates {
        AutomaticUpdates::Security => {
            write_file(root, AUTO_UPGRADES, AUTO_UPGRADES_TEXT.as_bytes(), 0o644)?;
            write_file(root, UNATTENDED_UPGRADES, UNATTENDED_UPGRADES_TEXT.as_bytes(), 0o644)
        }
        AutomaticUpdates::Off => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn configured(body: &str) -> tempfile::TempDir {
        let plan = crate::plan::plan_of(&format!("[base]\nmirror = \"http://m.example/debian\"\n{body}")).unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/apt")).unwrap();
        std::fs::write(root.path().join("etc/apt/sources.list"), "deb copy:///work/repo trixie main\n").unwrap();
        super::configure(&plan, root.path()).unwrap();
        root
    }

    fn read(root: &Path, rel: &str) -> Option<String> {
        std::fs::read_to_string(root.join(rel)).ok()
    }

    #[test]
    fn default_sources_have_three_suites_and_security_updates() {
        let root = configured("security_mirror = \"https://sec.example/debian-security\"\n");
        let r = root.path();
        assert!(!r.join("etc/apt/sources.list").exists());
        let sources = read(r, super::DEBIAN_SOURCES).unwrap();
        assert!(sources.contains("URIs: http://m.example/debian\nSuites: trixie trixie-updates\n"), "{sources}");
        assert!(sources.contains("URIs: https://sec.example/debian-security\nSuites: trixie-security\n"), "{sources}");
        let auto = read(r, super::AUTO_UPGRADES).unwrap();
        assert!(auto.contains("APT::Periodic::Unattended-Upgrade \"1\";"), "{auto}");
        let uu = read(r, super::UNATTENDED_UPGRADES).unwrap();
        assert!(uu.contains("label=Debian-Security") && !uu.contains("codename=${distro_codename},"), "{uu}");
    }

    #[test]
    fn switched_off_updates_and_security() {
        let root = configured("updates = false\nsecurity = false\n");
        let r = root.path();
        let sources = read(r, super::DEBIAN_SOURCES).unwrap();
        assert!(
            sources.contains("Suites: trixie\n") && !sources.contains("-updates") && !sources.contains("-security")
        );
        assert_eq!(read(r, super::AUTO_UPGRADES), None);
        assert_eq!(read(r, super::UNATTENDED_UPGRADES), None);
    }
}
