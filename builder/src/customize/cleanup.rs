//! The clean-up that keeps images free of build leftovers and per-machine state (machine ids,
//! host keys, certificates, caches, logs, byte code), and the stamp that tells systemd the
//! image's /etc and /var are as new as its /usr.
use super::system::passwd_entry;
use crate::host::files::write_file;
use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Mark the image's /etc and /var as up to date with its /usr, so the first boot does not redo
/// what the packages' maintainer scripts already did at build time (ldconfig, hwdb, journal
/// catalog: `ConditionNeedsUpdate=`). /usr gets the recipe's timestamp, and .updated says so.
pub fn mark_updated(root: &Path, epoch: i64) -> Result<()> {
    let stamp = format!(
        "# written by kiln: /usr is as new as this image\nTIMESTAMP_NSEC={}\n",
        i128::from(epoch) * 1_000_000_000
    );
    write_file(root, "etc/.updated", stamp.as_bytes(), 0o644)?;
    write_file(root, "var/.updated", stamp.as_bytes(), 0o644)?;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(epoch).unwrap_or(0));
    let usr = std::fs::File::open(root.join("usr")).context("opening /usr")?;
    usr.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t)).context("setting the time of /usr")
}

/// Remove what a build leaves behind and what must be unique per machine.
pub fn clean(root: &Path) -> Result<()> {
    // An empty machine-id makes systemd treat the first boot as such and generate one.
    write_file(root, "etc/machine-id", b"", 0o444)?;
    remove_bytecode(root)?;
    // ssl-cert's snakeoil certificate is made per box (debian-base's kiln-ssl-snakeoil.service).
    for rel in ["etc/ssl/private/ssl-cert-snakeoil.key", "etc/ssl/certs/ssl-cert-snakeoil.pem"] {
        let p = root.join(rel);
        if p.is_file() || p.is_symlink() {
            std::fs::remove_file(&p).with_context(|| format!("removing /{rel}"))?;
        }
    }
    // make-ssl-cert also linked the (random) snakeoil certificate by its hash: a dangling link
    // with a per-build name once the certificate is gone.
    if let Ok(entries) = std::fs::read_dir(root.join("etc/ssl/certs")) {
        for e in entries.flatten() {
            if std::fs::read_link(e.path()).is_ok_and(|t| t.file_name().is_some_and(|n| n == "ssl-cert-snakeoil.pem")) {
                std::fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
    }
    // newaliases' Berkeley DB holds the build's time and a random file id; layers with a mail
    // server rebuild it at first boot (`[[first_boot]]` `newaliases`, before postfix.service).
    for rel in [
        "var/lib/dbus/machine-id",
        "etc/aliases.db",
        "var/lib/systemd/random-seed",
        "var/cache/ldconfig/aux-cache",
        "etc/passwd-",
        "etc/group-",
        "etc/shadow-",
        "etc/gshadow-",
        "etc/subuid-",
        "etc/subgid-",
    ] {
        let p = root.join(rel);
        if p.is_file() || p.is_symlink() {
            std::fs::remove_file(&p).with_context(|| format!("removing /{rel}"))?;
        }
    }
    // Host keys are per-box secrets: made at first boot (debian-base's kiln-ssh-host-keys.service).
    if let Ok(entries) = std::fs::read_dir(root.join("etc/ssh")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                std::fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
    }
    postgresql_clusters(root)?;
    // slapd's installer makes a directory with a random administrator password (its hash in
    // cn=config) and random entry ids: a directory is made on the box (office-directory layer).
    for rel in ["etc/ldap/slapd.d", "var/lib/ldap"] {
        let p = root.join(rel);
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing /{rel}"))?;
            std::fs::create_dir(&p).with_context(|| format!("creating /{rel}"))?;
        }
    }
    for rel in ["var/log", "var/cache/apt", "var/lib/apt/lists", "var/cache/debconf", "tmp", "var/tmp"] {
        empty_dir(root, rel)?;
    }
    // apt leaves its download directories to `_apt` only when its sandbox user could reach the
    // build directory: set what an installed system has, whatever the build path's modes.
    if let Ok((uid, _, _)) = passwd_entry(root, "_apt") {
        for rel in APT_PARTIAL {
            let p = root.join(rel);
            if p.is_dir() {
                std::os::unix::fs::lchown(&p, Some(uid), Some(0))
                    .with_context(|| format!("setting the owner of /{rel}"))?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("setting mode of /{rel}"))?;
            }
        }
    }
    Ok(())
}

/// Made anew on the box, before each cluster's first start (`postgresql@.service` drop-in).
const PG_CLUSTER: [(&str, &str, u32); 2] = [
    (
        "usr/lib/kiln/postgresql-cluster",
        include_str!("../../../overlays/kiln-guest/usr/lib/kiln/postgresql-cluster"),
        0o755,
    ),
    (
        "usr/lib/systemd/system/postgresql@.service.d/kiln-cluster.conf",
        include_str!("../../../overlays/kiln-guest/usr/lib/systemd/system/postgresql@.service.d/kiln-cluster.conf"),
        0o644,
    ),
];

/// postgresql-common's installer makes a cluster (`/var/lib/postgresql/VERSION/NAME`) whose data
/// holds a random system identifier and the build's time: its data directory is removed (its
/// configuration in /etc/postgresql stays, so systemd's generator still starts it) and the
/// image gets `PG_CLUSTER`, which makes it on the box. Images without PostgreSQL get nothing.
fn postgresql_clusters(root: &Path) -> Result<()> {
    let Ok(versions) = std::fs::read_dir(root.join("var/lib/postgresql")) else { return Ok(()) };
    let mut removed = false;
    for v in versions.flatten().filter(|v| v.file_type().is_ok_and(|t| t.is_dir())) {
        for c in std::fs::read_dir(v.path())?.flatten() {
            if c.file_type().is_ok_and(|t| t.is_dir()) && c.path().join("PG_VERSION").is_file() {
                std::fs::remove_dir_all(c.path()).with_context(|| format!("removing {}", c.path().display()))?;
                removed = true;
            }
        }
    }
    if removed {
        for (rel, text, mode) in PG_CLUSTER {
            write_file(root, rel, text.as_bytes(), mode)?;
        }
    }
    Ok(())
}

/// Python byte code compiled by maintainer scripts (py3compile; unattended-upgrades pulls in
/// python3): not shipped by any package, not reproducible byte for byte (marshal's references
/// depend on the interpreter's state), about a third of Python's size. Python compiles again
/// on the box, as needed. Below /usr/lib/python3* and /usr/share/python3 (debpython, which
/// py3compile compiles for itself): all of it, so that a foreign bootstrap whose py3compile did
/// nothing (assist/mod.rs) gives the same root as one that compiled.
fn remove_bytecode(root: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(root.join("usr/lib")) else { return Ok(()) };
    let mut dirs: Vec<_> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3") && e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    if root.join("usr/share/python3").is_dir() {
        dirs.push(root.join("usr/share/python3"));
    }
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name() == "__pycache__" {
                std::fs::remove_dir_all(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
            } else {
                dirs.push(e.path());
            }
        }
    }
    Ok(())
}

/// apt's download directories: emptied like the rest, then given a fixed owner and mode.
const APT_PARTIAL: [&str; 2] = ["var/lib/apt/lists/partial", "var/cache/apt/archives/partial"];

/// Remove the files below `root/rel`, keeping directories (their ownership matters to services).
fn empty_dir(root: &Path, rel: &str) -> Result<()> {
    let dir = root.join(rel);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
    for e in entries {
        let e = e?;
        let path = e.path();
        let ty = e.file_type()?;
        if ty.is_dir() {
            let sub = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
            empty_dir(root, &sub)?;
        } else if rel != "var/cache/debconf" || e.file_name().to_string_lossy().ends_with("-old") {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn python_byte_code_is_removed() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for d in [
            "usr/lib/python3.13/email/__pycache__",
            "usr/lib/python3/dist-packages/apt/__pycache__",
            "usr/share/python3/debpython/__pycache__",
            "usr/lib/other/__pycache__",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
            std::fs::write(r.join(d).join("m.cpython-313.pyc"), b"pyc").unwrap();
        }
        std::fs::write(r.join("usr/lib/python3.13/email/m.py"), b"py").unwrap();
        super::remove_bytecode(r).unwrap();
        assert!(!r.join("usr/lib/python3.13/email/__pycache__").exists());
        assert!(!r.join("usr/lib/python3/dist-packages/apt/__pycache__").exists());
        assert!(!r.join("usr/share/python3/debpython/__pycache__").exists());
        assert!(r.join("usr/lib/python3.13/email/m.py").exists());
        assert!(r.join("usr/lib/other/__pycache__/m.cpython-313.pyc").exists(), "only Python's own directories");
    }

    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// Whatever apt left (here: root-owned, 0755, with a stale download), `clean` leaves the
    /// partial directories empty, `_apt:root` and 0700, as on an installed system.
    #[test]
    fn clean_gives_apt_partial_directories_one_owner_and_mode() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            panic!("this test changes file owners: run it as root (scripts/test does)");
        }
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(
            r.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n",
        )
        .unwrap();
        for rel in super::APT_PARTIAL {
            let d = r.join(rel);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::write(d.join("stale.deb"), "x").unwrap();
        }
        super::clean(r).unwrap();
        for rel in super::APT_PARTIAL {
            let m = std::fs::metadata(r.join(rel)).unwrap();
            assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (42, 0, 0o700), "/{rel}");
            assert_eq!(std::fs::read_dir(r.join(rel)).unwrap().count(), 0, "/{rel} not emptied");
        }
    }

    /// A cluster's data directory goes, its configuration stays, and only then does the image
    /// get the drop-in that makes the cluster on the box.
    #[test]
    fn postgresql_clusters_are_made_on_the_box() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        super::postgresql_clusters(r).unwrap();
        assert!(!r.join(super::PG_CLUSTER[1].0).exists(), "no PostgreSQL, no drop-in");
        std::fs::create_dir_all(r.join("var/lib/postgresql/17/main/global")).unwrap();
        std::fs::write(r.join("var/lib/postgresql/17/main/PG_VERSION"), "17\n").unwrap();
        std::fs::create_dir_all(r.join("etc/postgresql/17/main")).unwrap();
        std::fs::write(r.join("etc/postgresql/17/main/postgresql.conf"), "port = 5432\n").unwrap();
        super::postgresql_clusters(r).unwrap();
        assert!(!r.join("var/lib/postgresql/17/main").exists(), "the build's data directory is removed");
        assert!(r.join("var/lib/postgresql/17").is_dir(), "the version directory stays");
        assert!(r.join("etc/postgresql/17/main/postgresql.conf").is_file(), "the configuration stays");
        for (rel, text, mode) in super::PG_CLUSTER {
            assert_eq!(std::fs::read_to_string(r.join(rel)).unwrap(), text, "/{rel}");
            assert_eq!(std::fs::metadata(r.join(rel)).unwrap().permissions().mode() & 0o7777, mode, "/{rel}");
        }
    }
}
