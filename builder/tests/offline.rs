//! Lock files, the .deb cache and offline builds.
//!
//! The first tests run everywhere (synthetic locks). The others need root, the host tools and
//! the Debian mirror (`KILN_E2E=1`, as `scripts/test` sets): they share one `kiln lock` +
//! `kiln fetch` of a copy of recipes/minimal.toml (in the run's shared cache, so after e2e.rs
//! neither bootstraps nor downloads), then check that a lock naming a version the
//! mirror lacks fails before any bootstrap, that a `kiln vendor` bundle builds with
//! `--offline` inside a network namespace without interfaces (`unshare -n`) into the very image
//! an online build from the same lock makes, and that a .deb missing from the cache is named.
mod common;
use common::*;
use kiln::lock::{Lock, LockedPackage, ToolsLock, LOCK_FORMAT};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

fn pkg(name: &str, version: &str, arch: &str) -> LockedPackage {
    let sha256 = kiln::host::files::sha256_hex(format!("{name} {version} {arch}").as_bytes());
    LockedPackage {
        name: name.into(),
        version: version.into(),
        architecture: arch.into(),
        sha256,
        filename: format!("pool/main/{name}_{version}_{arch}.deb"),
        suite: None,
    }
}

fn sample() -> Lock {
    Lock {
        format: LOCK_FORMAT,
        recipe: "demo".into(),
        architecture: "amd64".into(),
        suite: "trixie".into(),
        components: vec!["main".into()],
        mirror: "http://deb.example/debian".into(),
        archives: vec!["trixie-updates".into(), "trixie-security".into()],
        security_mirror: Some("http://deb.debian.org/debian-security".into()),
        source_date_epoch: 1_735_689_600,
        archive_date: Some("Sat, 10 May 2025 09:00:00 UTC".into()),
        requested: vec!["zstd".into(), "systemd".into()],
        packages: vec![
            pkg("zstd", "1.5", "amd64"),
            pkg("adduser", "3.1", "all"),
            pkg("libc6", "2.41-1", "i386"),
            pkg("libc6", "2.41-1", "amd64"),
        ],
        tools: Some(ToolsLock {
            suite: "trixie".into(),
            architecture: "amd64".into(),
            e2fsprogs: "1.47.2-3".into(),
            packages: [
                ("e2fsprogs", "1.47.2-3"),
                ("base-files", "13"),
                ("erofs-utils", "1.8"),
                ("openssl", "3.5"),
                ("kmod", "34"),
                ("zstd", "1.5"),
                ("cpio", "2.15"),
            ]
            .iter()
            .map(|(n, v)| pkg(n, v, "amd64"))
            .collect(),
        }),
    }
}

#[test]
fn lock_round_trip_is_lossless_and_sorted() {
    let lock = sample();
    let text = lock.to_toml().unwrap();
    let back = Lock::from_toml(&text, Path::new("demo.lock")).unwrap();
    let mut sorted = lock.clone();
    sorted.normalize();
    assert_eq!(back, sorted);
    assert_eq!(back.to_toml().unwrap(), text, "writing what was read gives the same bytes");
    let order: Vec<(&str, &str)> = back.packages.iter().map(|p| (p.name.as_str(), p.architecture.as_str())).collect();
    assert_eq!(order, [("adduser", "all"), ("libc6", "amd64"), ("libc6", "i386"), ("zstd", "amd64")]);
    assert_eq!(back.requested, ["systemd", "zstd"]);
    assert_eq!(back.tools.as_ref().unwrap().packages[0].name, "base-files");
    assert!(text.starts_with("# kiln lock file"), "{text}");
    let adduser = format!("[[packages]]\nname = \"adduser\"\nversion = \"3.1\"\narchitecture = \"all\"\nsha256 = \"{}\"\nfilename = \"pool/main/adduser_3.1_all.deb\"\n", lock.packages[1].sha256);
    assert!(text.contains(&adduser), "{text}");
}

#[test]
fn lock_order_and_formatting_do_not_change_file_or_hash() {
    let a = sample();
    let mut b = sample();
    b.packages.reverse();
    b.requested.reverse();
    b.tools.as_mut().unwrap().packages.reverse();
    assert_eq!(a.to_toml().unwrap(), b.to_toml().unwrap());
    assert_eq!(a.hash(), b.hash());
    let edited = a.to_toml().unwrap().replace("format = 1", "# edited by hand\nformat    =   1");
    assert_eq!(
        Lock::from_toml(&edited, Path::new("x.lock")).unwrap().hash(),
        a.hash(),
        "comments and spacing do not count"
    );
    b.packages[0].version = "0.0-other".into();
    assert_ne!(a.hash(), b.hash(), "a changed version changes the hash");
}

#[test]
fn lock_rejects_unknown_keys_and_formats_and_writes_atomically() {
    let text = sample().to_toml().unwrap();
    let err =
        Lock::from_toml(&text.replace("format = 1", "format = 1\nsurprise = 2"), Path::new("x.lock")).unwrap_err();
    assert!(format!("{err:#}").contains("surprise"), "{err:#}");
    let err = Lock::from_toml(&text.replace("format = 1", "format = 9"), Path::new("x.lock")).unwrap_err();
    assert!(format!("{err:#}").contains("kiln lock --update"), "{err:#}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.lock");
    sample().write(&path).unwrap();
    assert_eq!(Lock::read(&path).unwrap().hash(), sample().hash());
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, ["demo.lock"], "no temporary files left");
}

/// A lock beside a recipe changes its identifiers; a lock made for other packages is refused.
#[test]
fn lock_beside_recipe_joins_the_plan_and_stale_locks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("defaults.toml");
    std::fs::copy("tests/recipes/good/defaults.toml", &recipe).unwrap();
    let plan = |extra: &[&str]| -> serde_json::Value {
        let out = kiln(&[&["check", "--print", recipe.to_str().unwrap()], extra].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let unlocked = plan(&[]);
    let mut lock = sample();
    lock.recipe = "defaults".into();
    lock.requested = unlocked["packages"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
    lock.write(&kiln::lock::path_for(&recipe)).unwrap();
    let locked = plan(&[]);
    assert_eq!(locked["lock_hash"].as_str(), Some(lock.hash().as_str()));
    assert_ne!(locked["recipe_hash"], unlocked["recipe_hash"]);
    assert_ne!(locked["layout"]["disk_guid"], unlocked["layout"]["disk_guid"], "the image's identity follows the lock");
    assert_eq!(plan(&["--no-lock"])["recipe_hash"], unlocked["recipe_hash"]);

    lock.requested.retain(|p| p != "zstd");
    lock.write(&kiln::lock::path_for(&recipe)).unwrap();
    let out = kiln(&["check", recipe.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("is out of date with the recipe (packages added to the recipe: zstd)")
            && err.contains("kiln lock"),
        "{err}"
    );

    // A lock made before images had the updates and security archives.
    lock.requested = unlocked["packages"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
    let archives = std::mem::take(&mut lock.archives);
    lock.write(&kiln::lock::path_for(&recipe)).unwrap();
    let out = kiln(&["check", recipe.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("archives besides the suite is trixie-updates,trixie-security, the lock has none"),
        "{err}"
    );
    lock.archives = archives;

    // A lock made before the tools tree gained packages (the native help's openssl, kmod, ...).
    lock.tools.as_mut().unwrap().packages.retain(|p| p.name != "openssl" && p.name != "cpio");
    lock.write(&kiln::lock::path_for(&recipe)).unwrap();
    let out = kiln(&["check", recipe.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("tools tree also has openssl, cpio, which the lock's does not")
            && err.contains("kiln lock"),
        "{err}"
    );
}

/// A vendored bundle builds the recipe from another directory: the identity must not change.
#[test]
fn plan_identity_does_not_depend_on_where_the_recipe_is() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("defaults.toml");
    std::fs::copy("tests/recipes/good/defaults.toml", &copy).unwrap();
    let here = kiln::pipeline::check(Path::new("tests/recipes/good/defaults.toml"), None).unwrap();
    let there = kiln::pipeline::check(&copy, None).unwrap();
    assert_ne!(here.recipe.sources, there.recipe.sources);
    assert_eq!(here.recipe_hash, there.recipe_hash);
    assert_eq!(here.layout.disk_guid, there.layout.disk_guid);
}

#[test]
fn offline_without_a_lock_is_refused() {
    let plan =
        kiln::pipeline::plan(Path::new("tests/recipes/good/defaults.toml"), None, &kiln::lock::LockChoice::Ignore)
            .unwrap();
    let err = kiln::debian::pinning::sources(&plan, true).unwrap_err().to_string();
    assert!(err.contains("--offline needs a lock file") && err.contains("kiln fetch"), "{err}");
}

// ---- with the mirror (KILN_E2E=1) ----

struct Locked {
    dir: PathBuf,
    recipe: PathBuf,
    cache: PathBuf,
    lock: Lock,
    lock_text: String,
}

fn kiln_in(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().expect("running kiln");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A copy of recipes/ and overlays/ with minimal.toml locked and its .debs fetched, once per run.
fn locked() -> Option<&'static Locked> {
    static FX: OnceLock<Locked> = OnceLock::new();
    if !e2e_enabled() {
        return None;
    }
    Some(FX.get_or_init(|| {
        let dir = e2e_dir().join("offline");
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        run("cp", &["-r", "../recipes", "../overlays", src.to_str().unwrap()]);
        // The run's shared cache: after e2e.rs, the root and tools tree are cached already.
        let (recipe, cache) = (src.join("recipes/minimal.toml"), shared_cache());
        let start = Instant::now();
        let out = kiln(&["lock", recipe.to_str().unwrap(), "--cache", cache.to_str().unwrap()]);
        assert!(out.status.success(), "kiln lock failed:\n{}", String::from_utf8_lossy(&out.stderr));
        eprintln!("kiln lock took {:.1}s", start.elapsed().as_secs_f64());
        let path = kiln::lock::path_for(&recipe);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), path.to_str().unwrap());
        let out = kiln(&["fetch", recipe.to_str().unwrap(), "--cache", cache.to_str().unwrap()]);
        assert!(out.status.success(), "kiln fetch failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let lock_text = std::fs::read_to_string(&path).unwrap();
        Locked { lock: Lock::read(&path).unwrap(), lock_text, dir, recipe, cache }
    }))
}

#[test]
fn lock_names_every_package_and_relocking_changes_nothing() {
    let Some(fx) = locked() else { return };
    let lock = &fx.lock;
    let names: Vec<&str> = lock.packages.iter().map(|p| p.name.as_str()).collect();
    for want in ["systemd", "linux-image-amd64", "dbus", "openssh-server", "libc6", "base-files"] {
        assert!(names.contains(&want), "{want} missing from the lock: {names:?}");
    }
    assert!(names.windows(2).all(|w| w[0] <= w[1]), "sorted by name");
    let debs = kiln::debian::debcache::DebCache::new(&fx.cache);
    let tools = lock.tools.as_ref().expect("tools tree locked");
    assert!(tools.e2fsprogs.starts_with("1.47."), "{}", tools.e2fsprogs);
    // The root's packages come from three suites, each package's recorded (fetch and the
    // availability check use its suite's index and mirror); the tools tree's from trixie alone.
    assert_eq!(lock.archives, ["trixie-updates", "trixie-security"]);
    assert_eq!(lock.security_mirror.as_deref(), Some("http://deb.debian.org/debian-security"));
    for p in &lock.packages {
        let pool = match p.suite.as_deref() {
            Some("trixie" | "trixie-updates") => "pool/main/",
            Some("trixie-security") => "pool/updates/main/",
            other => panic!("{} has suite {other:?}", p.describe()),
        };
        assert!(p.filename.starts_with(pool), "{p:?}");
    }
    for p in lock.packages.iter().chain(&tools.packages) {
        assert!(p.sha256.len() == 64 && p.filename.starts_with("pool/"), "{p:?}");
        assert!(debs.has(&p.sha256), "{} not in the .deb cache after kiln fetch", p.describe());
        assert_eq!(kiln::host::files::sha256_file(&debs.deb(&p.sha256)).unwrap(), p.sha256);
    }
    let plan: serde_json::Value =
        serde_json::from_slice(&kiln(&["check", "--print", "--no-lock", fx.recipe.to_str().unwrap()]).stdout).unwrap();
    let mut requested: Vec<String> =
        plan["packages"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().into()).collect();
    requested.sort();
    assert_eq!(lock.requested, requested);
    assert_eq!(
        (lock.mirror.as_str(), lock.suite.as_str(), lock.source_date_epoch),
        (plan["mirror"].as_str().unwrap(), "trixie", 1_735_689_600)
    );

    // Again: the trees it was resolved from are cached under the lock's keys; nothing changes.
    let start = Instant::now();
    let out = kiln(&["lock", fx.recipe.to_str().unwrap(), "--cache", fx.cache.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("is up to date"), "{err}");
    assert_eq!(std::fs::read_to_string(kiln::lock::path_for(&fx.recipe)).unwrap(), fx.lock_text);
    assert!(start.elapsed().as_secs() < 60, "re-locking bootstrapped again ({:.0}s)", start.elapsed().as_secs_f64());
}

#[test]
fn missing_locked_version_fails_before_any_bootstrap() {
    let Some(fx) = locked() else { return };
    let version = &fx.lock.packages.iter().find(|p| p.name == "dbus").unwrap().version;
    let edited = fx.lock_text.replace(
        &format!("name = \"dbus\"\nversion = \"{version}\""),
        "name = \"dbus\"\nversion = \"0.0-kiln-missing\"",
    );
    assert_ne!(edited, fx.lock_text);
    let lock = fx.dir.join("missing.lock");
    std::fs::write(&lock, edited).unwrap();
    let roots = || std::fs::read_dir(fx.cache.join("roots")).unwrap().count();
    let before = roots();
    let out = kiln(&[
        "build",
        fx.recipe.to_str().unwrap(),
        "--lock",
        lock.to_str().unwrap(),
        "--cache",
        fx.cache.to_str().unwrap(),
        "--out",
        fx.dir.join("out-missing").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("dbus 0.0-kiln-missing (amd64) is not on the mirror"), "{err}");
    assert!(
        err.contains("kiln lock --update")
            && err.contains("kiln build --offline")
            && err.contains("snapshot.debian.org"),
        "{err}"
    );
    assert!(!err.contains("kiln: [1/"), "a stage started before the check:\n{err}");
    assert_eq!(roots(), before, "nothing was bootstrapped");
}

fn unshared_build(kiln_bin: &Path, recipe: &Path, cache: &Path, out_dir: &Path, extra: &[&str]) -> Output {
    kiln_in(
        Command::new("unshare")
            .arg("-n")
            .arg(kiln_bin)
            .arg("build")
            .arg(recipe)
            .args(["--offline", "--cache"])
            .arg(cache)
            .arg("--out")
            .arg(out_dir)
            .args(extra),
    )
}

#[test]
fn vendored_bundle_builds_offline_without_network_into_the_online_image() {
    let Some(fx) = locked() else { return };
    let bundle = fx.dir.join("bundle");
    let out =
        kiln(&["vendor", fx.recipe.to_str().unwrap(), bundle.to_str().unwrap(), "--cache", fx.cache.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let readme = std::fs::read_to_string(bundle.join("README.md")).unwrap();
    assert!(readme.contains("sudo bin/kiln build --offline --cache cache recipes/minimal.toml"), "{readme}");
    for f in [
        "bin/kiln",
        "recipes/minimal.toml",
        "recipes/minimal.lock",
        "recipes/layers/debian-base.toml",
        "overlays/debian-base",
    ] {
        assert!(bundle.join(f).exists(), "{f} missing from the bundle");
    }

    // Offline and cold (the bundle's cache has no tools tree and no root), with no network at all.
    let start = Instant::now();
    let out = unshared_build(
        &bundle.join("bin/kiln"),
        &bundle.join("recipes/minimal.toml"),
        &bundle.join("cache"),
        &fx.dir.join("out-offline"),
        &[],
    );
    assert!(out.status.success(), "offline build failed:\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("offline cold build: {:.1}s", start.elapsed().as_secs_f64());
    let offline = PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap());

    // Online from the same lock (its root is the one `kiln lock` resolved): the same bytes.
    let online = build(fx.recipe.to_str().unwrap(), &fx.dir.join("out-online"), &fx.cache);
    let sha = |p: &Path| kiln::host::files::sha256_file(p).unwrap();
    assert_eq!(sha(&offline), sha(&online), "offline and online builds from one lock differ");

    // The image names the real mirror and carries exactly the locked packages.
    let plan: serde_json::Value =
        serde_json::from_slice(&kiln(&["check", "--print", fx.recipe.to_str().unwrap()]).stdout).unwrap();
    let root = cut_partition(&offline, &plan["layout"]["partitions"][1], &fx.dir.join("offline-root.img"));
    let debugfs = |req: &str| run("debugfs", &["-R", req, root.to_str().unwrap()]);
    // The real archives (not the offline build's local repository), deb822 with Signed-By.
    let sources = debugfs("cat /etc/apt/sources.list.d/debian.sources");
    assert!(
        sources.contains(&format!("URIs: {}\nSuites: trixie trixie-updates\nComponents: main\n", fx.lock.mirror))
            && sources.contains("URIs: http://deb.debian.org/debian-security\nSuites: trixie-security\n")
            && sources.matches("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n").count() == 2
            && !sources.contains("copy://"),
        "{sources}"
    );
    assert!(!debugfs("ls -p /etc/apt").contains("/sources.list/"), "a sources.list beside the deb822 sources");
    assert!(!debugfs("ls /etc/apt/preferences.d").contains("kiln-lock"), "pins left in the image");
    let status = debugfs("cat /var/lib/dpkg/status");
    let installed: Vec<(String, String)> = kiln::debian::deb822::paragraphs(&status)
        .map(|p| (p.get("Package").unwrap().to_string(), p.get("Version").unwrap().to_string()))
        .collect();
    let locked: Vec<(String, String)> = fx.lock.packages.iter().map(|p| (p.name.clone(), p.version.clone())).collect();
    let mut installed_sorted = installed.clone();
    installed_sorted.sort();
    assert_eq!(installed_sorted, locked);
    let _ = std::fs::remove_file(root);
}

#[test]
fn offline_build_names_a_deb_missing_from_the_cache() {
    let Some(fx) = locked() else { return };
    let cache = fx.dir.join("cache-missing");
    std::fs::create_dir_all(&cache).unwrap();
    run("cp", &["-al", fx.cache.join("debs").to_str().unwrap(), cache.to_str().unwrap()]);
    let dbus = fx.lock.packages.iter().find(|p| p.name == "dbus").unwrap();
    std::fs::remove_file(kiln::debian::debcache::DebCache::new(&cache).deb(&dbus.sha256)).unwrap();
    let out = unshared_build(
        Path::new(env!("CARGO_BIN_EXE_kiln")),
        &fx.recipe,
        &cache,
        &fx.dir.join("out-missing-deb"),
        &["--no-cache"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("lacks 1 locked package") && err.contains(&dbus.describe()) && err.contains("kiln fetch"),
        "{err}"
    );
    assert!(!err.contains("kiln: [1/"), "a stage started before the check:\n{err}");
}

/// Versions of an existing lock are kept (a version the mirror no longer has stops `kiln lock`,
/// which points at `--update`, and leaves the file alone); `kiln lock --update` ignores the lock
/// and the cached roots, bootstraps afresh and writes the mirror's current versions.
#[test]
fn lock_update_replaces_a_stale_lock_with_the_mirrors_versions() {
    let Some(fx) = locked() else { return };
    let src = fx.dir.join("update");
    if src.exists() {
        run("rm", &["-rf", "--one-file-system", src.to_str().unwrap()]);
    }
    std::fs::create_dir_all(&src).unwrap();
    run("cp", &["-r", "../recipes", "../overlays", src.to_str().unwrap()]);
    let recipe = src.join("recipes/minimal.toml");
    let path = kiln::lock::path_for(&recipe);
    let dbus = &fx.lock.packages.iter().find(|p| p.name == "dbus").unwrap().version;
    let stale = fx
        .lock_text
        .replace(&format!("name = \"dbus\"\nversion = \"{dbus}\""), "name = \"dbus\"\nversion = \"0.0-kiln-stale\"");
    assert_ne!(stale, fx.lock_text);
    std::fs::write(&path, &stale).unwrap();
    let cache = fx.cache.to_str().unwrap();

    let out = kiln(&["lock", recipe.to_str().unwrap(), "--cache", cache]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "kiln lock kept a version the mirror lacks:\n{err}");
    assert!(err.contains("dbus 0.0-kiln-stale") && err.contains("kiln lock --update"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), stale, "kiln lock changed the lock it refused");

    let start = Instant::now();
    let out = kiln(&["lock", "--update", recipe.to_str().unwrap(), "--cache", cache]);
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}\nkiln lock --update took {:.1}s", start.elapsed().as_secs_f64());
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("bootstrap Debian root (mmdebstrap, afresh: --update) done"),
        "--update did not bootstrap afresh:\n{err}"
    );
    assert!(err.contains(&format!("{} written", path.display())), "{err}");
    let updated = Lock::read(&path).unwrap();
    let got = &updated.packages.iter().find(|p| p.name == "dbus").unwrap().version;
    assert_ne!(got, "0.0-kiln-stale", "the stale version survived --update");
    assert_eq!(got, dbus, "dbus is not the mirror's version (the one `kiln lock` resolved)");
    let names = |l: &Lock| l.packages.iter().map(|p| (p.name.clone(), p.architecture.clone())).collect::<Vec<_>>();
    assert_eq!(names(&updated), names(&fx.lock), "--update resolved another package set");
}
