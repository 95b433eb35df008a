//! System settings applied to the unpacked root: host name, time zone, locale, users, systemd
//! units and kiln's test agent (the clean-up of build leftovers is `cleanup.rs`). Files are
//! written by kiln itself; users and units are made by the image's own `useradd` and `systemctl`,
//! run chrooted into the root (`in_root`; under qemu-user for a foreign architecture), so their
//! results are the image's, not the host's.
use crate::host::cmd::Cmd;
use crate::host::files::write_file;
use crate::plan::Plan;
use crate::recipe::{Check, CheckKind, Positions, User};
use anyhow::{bail, Context, Result};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

/// kiln's own machinery laid onto every image: the test agent (it only runs on a `kiln.test`
/// boot) and the site settings applier (`kiln-site.service`, every boot; docs/site.md).
const AGENT: &[(&str, &str, u32)] = &[
    ("usr/lib/kiln/kiln-check", include_str!("../../../overlays/kiln-guest/usr/lib/kiln/kiln-check"), 0o755),
    (
        "usr/lib/systemd/system/kiln-check.service",
        include_str!("../../../overlays/kiln-guest/usr/lib/systemd/system/kiln-check.service"),
        0o644,
    ),
    ("usr/lib/kiln/kiln-site", include_str!("../../../overlays/kiln-guest/usr/lib/kiln/kiln-site"), 0o755),
    (
        "usr/lib/kiln/kiln-site-apply.pl",
        include_str!("../../../overlays/kiln-guest/usr/lib/kiln/kiln-site-apply.pl"),
        0o644,
    ),
    (
        "usr/lib/systemd/system/kiln-site.service",
        include_str!("../../../overlays/kiln-guest/usr/lib/systemd/system/kiln-site.service"),
        0o644,
    ),
];

pub fn configure(plan: &Plan, root: &Path) -> Result<()> {
    let sys = &plan.recipe.system;
    write_file(root, "etc/hostname", format!("{}\n", sys.hostname).as_bytes(), 0o644)?;
    let short = sys.hostname.split('.').next().unwrap_or(&sys.hostname);
    let alias = if short != sys.hostname.as_str() { format!("{} {short}", sys.hostname) } else { short.to_string() };
    let hosts = format!("127.0.0.1\tlocalhost\n127.0.1.1\t{alias}\n\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n");
    write_file(root, "etc/hosts", hosts.as_bytes(), 0o644)?;
    timezone(root, &sys.timezone)?;
    let locale = locale_file(&sys.locale);
    write_file(root, "etc/default/locale", locale.as_bytes(), 0o644)?;
    write_file(root, "etc/locale.conf", locale.as_bytes(), 0o644)?;
    crate::customize::apt::configure(plan, root)?;
    write_file(root, "etc/fstab", fstab(plan).as_bytes(), 0o644)?;
    std::fs::create_dir_all(root.join("efi")).context("creating /efi")?;
    super::owners::groups(plan, root)?;
    for user in &plan.recipe.users {
        add_user(root, user, plan.recipe.source_date_epoch).with_context(|| format!("adding user `{}`", user.name))?;
    }
    for (rel, text, mode) in AGENT {
        write_file(root, rel, text.as_bytes(), *mode)?;
    }
    write_file(root, "usr/lib/kiln/checks.tsv", checks_tsv(&plan.recipe.checks).as_bytes(), 0o644)
}

/// Enable and disable units; runs after the overlays, which may ship units of their own.
/// A unit of the recipe the image lacks is named with its recipe position first.
pub fn units(plan: &Plan, root: &Path) -> Result<()> {
    let sys = &plan.recipe.system;
    for (list, origins, key) in
        [(&sys.enable, &plan.recipe.origins.enable, "enable"), (&sys.disable, &plan.recipe.origins.disable, "disable")]
    {
        if let Some(u) = list.iter().find(|u| !unit_exists(root, u)) {
            let msg = format!(
                "unit `{u}` is not in the image: no package or overlay ships it (looked in /etc/systemd/system, /usr/local/lib/systemd/system and /usr/lib/systemd/system of the root)"
            );
            return Err(Positions::error(origins.get(u.as_str()), &plan.recipe, &format!("system.{key}"), msg).into());
        }
    }
    let mut enable = vec!["kiln-check.service".to_string(), "kiln-site.service".to_string()];
    enable.extend(plan.recipe.first_boot.iter().map(crate::customize::firstboot::unit_name));
    enable.extend(sys.enable.iter().map(|u| u.to_string()));
    systemctl(root, "enable", &enable)?;
    systemctl(root, "disable", &crate::recipe::values::strings(&sys.disable))
}

/// Where systemd looks for system units at build time (`/lib` is `/usr/lib` on merged-/usr
/// systems, or a directory of its own on older ones).
const UNIT_DIRS: [&str; 4] =
    ["etc/systemd/system", "usr/local/lib/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"];

/// The root has a unit file (or a link, a masked one too) for `name`, or the template of an instance.
fn unit_exists(root: &Path, name: &str) -> bool {
    let template = name.split_once('@').and_then(|(pre, rest)| {
        let suffix = rest.rsplit_once('.')?.1;
        (!rest.starts_with('.')).then(|| format!("{pre}@.{suffix}"))
    });
    let names = std::iter::once(name.to_string()).chain(template);
    names.flat_map(|n| UNIT_DIRS.map(|d| root.join(d).join(&n))).any(|p| p.symlink_metadata().is_ok())
}

/// `/etc/localtime` and `/etc/timezone`. The zone is looked up in the image only: `tz` is a
/// `TimeZone` (never a path), and links in the image's zoneinfo are followed inside the root.
fn timezone(root: &Path, tz: &str) -> Result<()> {
    let link = root.join("etc/localtime");
    if tz.contains("..") || tz.starts_with('/') {
        bail!("time zone `{tz}` is not a zoneinfo name");
    }
    if !zone_in_image(root, &format!("usr/share/zoneinfo/{tz}")) {
        if matches!(tz, "UTC" | "Etc/UTC") {
            // Without tzdata the system runs in UTC anyway.
            let _ = std::fs::remove_file(&link);
            return write_file(root, "etc/timezone", b"Etc/UTC\n", 0o644);
        }
        bail!("time zone `{tz}` not found in the image: add `tzdata` to base.packages");
    }
    let _ = std::fs::remove_file(&link);
    symlink(Path::new("../usr/share/zoneinfo").join(tz), &link).context("linking /etc/localtime")?;
    write_file(root, "etc/timezone", format!("{tz}\n").as_bytes(), 0o644)
}

/// The image's useradd for `user`; the name comes after `--`.
fn useradd(root: &Path, user: &User, epoch: i64) -> Cmd {
    // SOURCE_DATE_EPOCH: the "last password change" day in /etc/shadow, not today.
    let mut cmd = in_root(root, "useradd")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args(["--create-home", "--user-group", "--shell"])
        .arg(&user.shell);
    if !user.groups.is_empty() {
        cmd = cmd.arg("--groups").arg(user.groups.join(","));
    }
    cmd.arg("--").arg(&user.name)
}

/// `rel` names a regular file inside `root`, symbolic links followed as the image would see them
/// (an absolute target starts again at `root`; `..` stops at it): the host's files are never looked at.
fn zone_in_image(root: &Path, rel: &str) -> bool {
    use std::path::Component;
    let mut pending: Vec<std::ffi::OsString> = Path::new(rel).iter().rev().map(|c| c.to_owned()).collect();
    let mut at = std::path::PathBuf::new();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match Path::new(&c).components().next() {
            Some(Component::Normal(name)) => at.push(name),
            Some(Component::ParentDir) => {
                at.pop();
                continue;
            }
            _ => continue,
        }
        let Ok(meta) = std::fs::symlink_metadata(root.join(&at)) else { return false };
        if meta.file_type().is_symlink() {
            hops += 1;
            let Ok(target) = std::fs::read_link(root.join(&at)) else { return false };
            if hops > 40 {
                return false;
            }
            at.pop();
            if target.is_absolute() {
                at.clear();
            }
            pending.extend(target.iter().rev().filter(|c| *c != "/").map(|c| c.to_owned()));
        }
    }
    std::fs::symlink_metadata(root.join(&at)).is_ok_and(|m| m.is_file())
}

/// `/etc/default/locale` and `/etc/locale.conf`.
fn locale_file(locale: &str) -> String {
    format!("LANG={locale}\n")
}

fn add_user(root: &Path, user: &User, epoch: i64) -> Result<()> {
    if user.name != "root" {
        useradd(root, user, epoch).run()?;
    }
    if user.ssh_authorized_keys.is_empty() {
        return Ok(());
    }
    let (uid, gid, home) = passwd_entry(root, &user.name)?;
    let ssh = root.join(home.trim_start_matches('/')).join(".ssh");
    std::fs::create_dir_all(&ssh).with_context(|| format!("creating {home}/.ssh"))?;
    let keys = user.ssh_authorized_keys.join("\n") + "\n";
    let file = ssh.join("authorized_keys");
    std::fs::write(&file, keys).context("writing authorized_keys")?;
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    for p in [&ssh, &file] {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).with_context(|| format!("chown {}", p.display()))?;
    }
    Ok(())
}

/// uid, gid and home of a user from the image's /etc/passwd.
pub(super) fn passwd_entry(root: &Path, name: &str) -> Result<(u32, u32, String)> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).context("reading /etc/passwd of the image")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 6 && f[0] == name {
            return Ok((f[2].parse()?, f[3].parse()?, f[5].to_string()));
        }
    }
    bail!("user `{name}` not found in the image's /etc/passwd")
}

fn systemctl(root: &Path, verb: &str, units: &[String]) -> Result<()> {
    if units.is_empty() {
        return Ok(());
    }
    systemctl_cmd(root, verb, units).run().with_context(|| format!("systemctl {verb} {}", units.join(" ")))
}

/// The image's systemctl; unit names come after `--` (`-.mount` is a unit, not an option).
fn systemctl_cmd(root: &Path, verb: &str, units: &[String]) -> Cmd {
    in_root(root, "systemctl").arg(verb).arg("--").args(units)
}

/// A program of the image itself, run chrooted into it: its systemctl and useradd write what
/// that Debian release writes (Debian 12's systemctl links units to /lib, Debian 13's to
/// /usr/lib), whatever release the host runs. Offline operations only: nothing is mounted.
pub fn in_root(root: &Path, program: &str) -> Cmd {
    Cmd::new("chroot").arg(root).arg(program)
}

/// The checks as the guest agent reads them: one per line, `kind<TAB>timeout<TAB>name<TAB>argument`.
pub fn checks_tsv(checks: &[Check]) -> String {
    checks
        .iter()
        .map(|c| {
            let (kind, arg) = match &c.kind {
                CheckKind::Command(s) => ("command", s.clone()),
                CheckKind::Unit(u) => ("unit", u.clone()),
                CheckKind::Port(p) => ("port", p.to_string()),
            };
            format!("{kind}\t{}\t{}\t{arg}\n", c.timeout, c.name)
        })
        .collect()
}

/// The image's fstab: the root (mounted by the initrd from root=PARTUUID=) with
/// `x-systemd.growfs`, so systemd-growfs-root grows its file system to the partition once
/// systemd-repart has grown the partition to the disk (docs/flash.md). The ESP is mounted on
/// /efi by systemd-gpt-auto-generator.
fn fstab(plan: &Plan) -> String {
    let root = plan.layout.partitions.iter().find(|p| p.flags & crate::disk::gpt::GROWFS != 0);
    let mut text = String::from("# The ESP is mounted on /efi by systemd-gpt-auto-generator.\n");
    if let Some(p) = root {
        text.push_str(&format!("PARTUUID={} / ext4 rw,x-systemd.growfs 0 0\n", p.part_guid));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan_of;

    #[test]
    fn locale_file_is_one_line() {
        let plan =
            plan_of("[system]\nlocale = \"de_DE.UTF-8\"\n[base]\nmirror = \"http://deb.example/debian\"\n").unwrap();
        assert_eq!(locale_file(&plan.recipe.system.locale), "LANG=de_DE.UTF-8\n");
        let e = plan_of("[system]\nlocale = \"de_DE.UTF-8\\nLC_ALL=C\"\n").unwrap_err();
        assert!(e.contains("r.toml:4:") && e.contains("key `system.locale`") && e.contains("not a locale"), "{e}");
    }

    /// User names and groups are single names, after `--` where they are positional.
    #[test]
    fn useradd_arguments() {
        let body = "[base]\nmirror = \"http://deb.example/debian\"\n[[users]]\nname = \"admin\"\ngroups = [\"sudo\", \"adm\"]\n";
        let plan = plan_of(body).unwrap();
        let argv = useradd(Path::new("/r"), &plan.recipe.users[0], 0).argv();
        let tail = ["--shell", "/bin/bash", "--groups", "sudo,adm", "--", "admin"];
        assert_eq!(argv[..5], ["chroot", "/r", "useradd", "--create-home", "--user-group"]);
        assert_eq!(argv[5..], tail);
        let e = plan_of("[[users]]\nname = \"admin\"\ngroups = [\"sudo,root\"]\n").unwrap_err();
        assert!(e.contains("key `users[0].groups[0]`") && e.contains("one name"), "{e}");
        let e = plan_of("[[users]]\nname = \"-oroot\"\n").unwrap_err();
        assert!(e.contains("key `users[0].name`"), "{e}");
    }

    /// Units are found in systemd's directories of the root, instances by their template.
    #[test]
    fn units_are_looked_up_in_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/lib/systemd/system")).unwrap();
        std::fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
        std::fs::write(r.join("usr/lib/systemd/system/ssh.service"), "").unwrap();
        std::fs::write(r.join("usr/lib/systemd/system/getty@.service"), "").unwrap();
        std::os::unix::fs::symlink("/dev/null", r.join("etc/systemd/system/masked.service")).unwrap();
        for u in ["ssh.service", "getty@tty1.service", "masked.service"] {
            assert!(unit_exists(r, u), "{u}");
        }
        for u in ["shh.service", "ssh.socket", "getty@.socket", "other@x.service"] {
            assert!(!unit_exists(r, u), "{u}");
        }
    }

    #[test]
    fn systemctl_units_follow_the_end_of_options() {
        let argv = systemctl_cmd(Path::new("/r"), "enable", &["-.mount".into(), "a.service".into()]).argv();
        assert_eq!(argv, ["chroot", "/r", "systemctl", "enable", "--", "-.mount", "a.service"]);
    }

    /// The zone is looked up in the image: links out of it lead nowhere, never to the host.
    #[test]
    fn zones_resolve_inside_the_image() {
        let root = tempfile::tempdir().unwrap();
        let zi = root.path().join("usr/share/zoneinfo");
        std::fs::create_dir_all(zi.join("Europe")).unwrap();
        std::fs::create_dir_all(zi.join("Etc")).unwrap();
        std::fs::write(zi.join("Europe/Berlin"), b"TZif").unwrap();
        std::os::unix::fs::symlink("../Europe/Berlin", zi.join("Etc/Here")).unwrap();
        std::os::unix::fs::symlink("/usr/share/zoneinfo/Europe/Berlin", zi.join("Etc/Abs")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", zi.join("Etc/Host")).unwrap();
        std::os::unix::fs::symlink("../../../../../../../../etc/hostname", zi.join("Etc/Up")).unwrap();
        let z = |tz: &str| zone_in_image(root.path(), &format!("usr/share/zoneinfo/{tz}"));
        assert!(z("Europe/Berlin") && z("Etc/Here") && z("Etc/Abs"));
        assert!(Path::new("/etc/hostname").is_file(), "the host has the file the links point at");
        assert!(!z("Etc/Host") && !z("Etc/Up") && !z("Europe/Paris"));
    }
}
