//! Mistakes that show only against the mirror or the root name their place in the recipe, and
//! file modes and owners reach the image. Package names are checked against the mirror's index
//! before anything is bootstrapped (and by `kiln check --online`); units and first-boot scripts
//! against the root before anything is enabled (quick: the recipes reuse minimal's cached root).
//! Modes and owners are read from the built image's root partition with debugfs (no mount).
//! Needs root, the host tools and the Debian mirror: KILN_E2E=1 (scripts/test).
mod common;
use common::*;
use std::path::{Path, PathBuf};

const MINIMAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../recipes/minimal.toml");

/// A recipe in its own directory that includes minimal.toml and adds `body`.
fn recipe(name: &str, body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recipe.toml");
    std::fs::write(&path, format!("include = [\"{MINIMAL}\"]\nname = \"{name}\"\n{body}")).unwrap();
    (dir, path)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A misspelt package fails before mmdebstrap runs, at its position, with the nearest name.
#[test]
fn misspelt_package_fails_before_the_bootstrap() {
    if !e2e_enabled() {
        return;
    }
    let (dir, path) = recipe("misspelt", "\n[base]\npackages = [\"curl\", \"ngnix\"]\n");
    let err = build_fails(&path, &dir.path().join("out"), &shared_cache(), &[], 2);
    let want =
        format!("{}:5:21: key `base.packages[1]`: package `ngnix` is not in Debian trixie (main) on ", path.display());
    assert!(err.contains(&want), "{err}");
    assert!(err.contains("; did you mean `nginx`?"), "{err}");
    assert!(!err.contains("Unable to locate package"), "mmdebstrap's words reached the user: {err}");
}

/// `kiln check --online` checks names without building; plain `kiln check` cannot know them.
#[test]
fn check_online_knows_the_mirror() {
    if !e2e_enabled() {
        return;
    }
    let good = kiln(&["check", "--online", MINIMAL]);
    assert!(good.status.success(), "{}", stderr(&good));
    let (_dir, path) = recipe("misspelt", "\n[base]\npackages = [\"openssh-servr\"]\n");
    let p = path.to_str().unwrap();
    let offline = kiln(&["check", p]);
    assert!(offline.status.success(), "{}", stderr(&offline));
    let bad = kiln(&["check", "--online", p]);
    let err = stderr(&bad);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    let want = format!("{p}:5:13: key `base.packages[0]`: package `openssh-servr` is not in Debian trixie (main)");
    assert!(err.contains(&want) && err.contains("did you mean `openssh-server`?"), "{err}");
    assert!(bad.stdout.is_empty());
}

/// A `kiln build` that must fail with exit status 2 and `want` in its error; nothing is left at
/// the output path and systemctl's own words never reach the user.
fn build_fails_with(path: &Path, out: &Path, want: &str) {
    let result = kiln(&[
        "build",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--cache",
        shared_cache().to_str().unwrap(),
    ]);
    let err = stderr(&result);
    assert_eq!(result.status.code(), Some(2), "{err}");
    assert!(err.contains(want), "expected `{want}` in:\n{err}");
    assert!(!err.contains("/proc"), "a misleading /proc line: {err}");
    let left: Vec<_> = std::fs::read_dir(out).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "files left in the output directory: {left:?}");
}

/// A unit no package or overlay ships, and a first-boot script that is not in the image, are
/// named at their recipe position before systemctl runs.
#[test]
fn missing_units_and_scripts_name_their_position() {
    if !e2e_enabled() {
        return;
    }
    let (dir, path) = recipe("misspelt-unit", "\n[system]\nenable = [\"ssh.service\", \"sshh.service\"]\n");
    let want = format!("{}:5:26: key `system.enable[1]`: unit `sshh.service` is not in the image", path.display());
    build_fails_with(&path, &dir.path().join("out"), &want);
    let body = "\n[[first_boot]]\nname = \"setup\"\nscript = \"/usr/lib/kiln/no-such-script\"\n";
    let (dir, path) = recipe("missing-script", body);
    let want = format!(
        "{}:4:1: key `first_boot[0]`: first-boot action `setup`: script /usr/lib/kiln/no-such-script is not an executable file in the image",
        path.display()
    );
    build_fails_with(&path, &dir.path().join("out"), &want);
}

/// debugfs `stat` of `path` in the file system image `fs`: (mode bits, uid, gid).
fn stat(fs: &Path, path: &str) -> (u32, u32, u32) {
    let out = run("debugfs", &["-R", &format!("stat {path}"), fs.to_str().unwrap()]);
    let field = |name: &str| -> &str {
        let at = out.find(name).unwrap_or_else(|| panic!("no {name} in debugfs stat {path}:\n{out}"));
        out[at + name.len()..].split_whitespace().next().unwrap()
    };
    let mode = u32::from_str_radix(field("Mode:"), 8).unwrap();
    (mode & 0o7777, field("User:").parse().unwrap(), field("Group:").parse().unwrap())
}

/// The id of `name` in a passwd or group file's text.
fn id_of(text: &str, name: &str) -> u32 {
    let line = text.lines().find(|l| l.split(':').next() == Some(name)).unwrap_or_else(|| panic!("no {name}:\n{text}"));
    line.split(':').nth(2).unwrap().parse().unwrap()
}

/// A 0600 overlay file stays 0600 in the image, a 0644 one 0644; `[[files]]` gives a file a
/// declared user, group and mode, with the group made by `[[groups]]`.
#[test]
fn overlay_modes_and_declared_owners_reach_the_image() {
    if !e2e_enabled() {
        return;
    }
    let body = "overlays = [\"ov\"]\n\n[[groups]]\nname = \"kiln-app\"\nsystem = true\n\n[[users]]\nname = \"svc\"\n\n[[files]]\npath = \"/etc/kiln-test/app.conf\"\nowner = \"svc\"\ngroup = \"kiln-app\"\nmode = \"0640\"\n";
    let (dir, path) = recipe("modes", body);
    let etc = dir.path().join("ov/etc/kiln-test");
    std::fs::create_dir_all(&etc).unwrap();
    for (name, mode) in [("api.key", 0o600), ("app.conf", 0o644), ("plain.txt", 0o644)] {
        std::fs::write(etc.join(name), format!("{name}\n")).unwrap();
        run("chmod", &[&format!("{mode:o}"), etc.join(name).to_str().unwrap()]);
    }
    let image = build(path.to_str().unwrap(), &dir.path().join("out"), &shared_cache());
    let plan: serde_json::Value =
        serde_json::from_slice(&kiln(&["check", "--print", path.to_str().unwrap()]).stdout).unwrap();
    assert_eq!(plan["recipe"]["files"][0]["mode"], "0640", "kiln check --print shows the declaration");
    let root = cut_partition(&image, &plan["layout"]["partitions"][1], &dir.path().join("root.img"));
    let passwd = run("debugfs", &["-R", "cat /etc/passwd", root.to_str().unwrap()]);
    let group = run("debugfs", &["-R", "cat /etc/group", root.to_str().unwrap()]);
    let (svc, app) = (id_of(&passwd, "svc"), id_of(&group, "kiln-app"));
    assert!(app < 1000, "kiln-app is a system group: gid {app}");
    assert_eq!(stat(&root, "/etc/kiln-test/api.key"), (0o600, 0, 0));
    assert_eq!(stat(&root, "/etc/kiln-test/plain.txt"), (0o644, 0, 0));
    assert_eq!(stat(&root, "/etc/kiln-test/app.conf"), (0o640, svc, app));
}

/// A template that loops without reaching any of the sandbox's limits (nested loops over a list
/// of the recipe's vars, no output) fails within the time limit: kiln renders it in a child
/// process and kills it at the deadline. kiln runs in a session of its own; nothing of that
/// session is left when it has exited. No root or network needed.
#[test]
fn looping_template_is_stopped_within_the_limit() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let ov = dir.path().join("ov/etc");
    std::fs::create_dir_all(&ov).unwrap();
    let nested = "{% for a in vars.l %}".repeat(8) + &"{% endfor %}".repeat(8);
    std::fs::write(ov.join("loop.conf.tera"), nested).unwrap();
    let list: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    let body = format!(
        "name = \"loop\"\nversion = \"1\"\noverlays = [\"ov\"]\n[base]\nmirror = \"http://deb.example/debian\"\n[vars]\nl = [{}]\n",
        list.join(", ")
    );
    let recipe = dir.path().join("recipe.toml");
    std::fs::write(&recipe, body).unwrap();
    let start = std::time::Instant::now();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(["check", recipe.to_str().unwrap()]).stdin(std::process::Stdio::null());
    // SAFETY: setsid(2) in the forked child before exec; async-signal-safe, touches no memory.
    unsafe {
        cmd.pre_exec(|| if libc::setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
    }
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let sid = child.id() as i32;
    let out = child.wait_with_output().unwrap();
    let took = start.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let want = format!(
        "{}:1:1: key `overlays[0]`: template error: rendering took longer than 10s; the renderer was stopped",
        ov.join("loop.conf.tera").display()
    );
    assert!(err.contains(&want), "{err}");
    assert!(took.as_secs_f64() < 15.0, "kiln took {took:?}");
    let left = session_members(sid);
    assert!(left.is_empty(), "processes of kiln's session left: {left:?}");
}

/// Processes whose session id is `sid`, from every /proc/PID/stat ("PID (COMM) STATE PPID PGRP
/// SESSION ...").
fn session_members(sid: i32) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let Some(close) = stat.rfind(')') else { continue };
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if rest.get(3).and_then(|s| s.parse::<i32>().ok()) == Some(sid) && rest.first() != Some(&"Z") {
            found.push(stat[..close + 1].to_string());
        }
    }
    found
}
