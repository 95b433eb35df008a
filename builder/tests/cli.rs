//! The command line around the commands: shell completions and man pages made from the clap
//! types, checked by bash and groff; `--json` where it needs no image (tests/e2e.rs has the rest).
mod common;
use common::kiln;
use std::path::Path;
use std::process::Command;

/// The subcommands `kiln --help` lists (without `help`).
fn subcommands() -> Vec<String> {
    let out = kiln(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let list = help.split("Commands:\n").nth(1).expect("a Commands: section").split("\n\n").next().unwrap();
    let names: Vec<String> = list
        .lines()
        .filter_map(|l| l.strip_prefix("  ").filter(|l| !l.starts_with(' ')))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(String::from)
        .collect();
    assert!(names.len() >= 9 && names.iter().any(|n| n == "build"), "subcommands from --help: {names:?}");
    names
}

fn stdout_of(args: &[&str]) -> String {
    let out = kiln(args);
    assert!(out.status.success(), "kiln {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bash_completion_parses_and_completes_every_subcommand() {
    let script = stdout_of(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kiln.bash");
    std::fs::write(&file, &script).unwrap();
    let out = Command::new("bash").arg("-n").arg(&file).output().expect("running bash");
    assert!(out.status.success(), "bash -n rejects the completion script:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(script.contains("complete -F _kiln"), "the script registers no completion:\n{script}");
    for sub in subcommands() {
        assert!(script.contains(&format!("kiln,{sub})")), "bash completion lacks `{sub}`");
    }
    assert!(script.contains("--json"), "bash completion lacks --json");
}

#[test]
fn zsh_and_fish_completions_name_every_subcommand() {
    let zsh = stdout_of(&["completions", "zsh"]);
    let fish = stdout_of(&["completions", "fish"]);
    assert!(zsh.starts_with("#compdef kiln"), "{zsh}");
    for sub in subcommands() {
        assert!(zsh.contains(&format!("'{sub}:")), "zsh completion lacks `{sub}`");
        assert!(fish.contains(&format!("-a \"{sub}\"")), "fish completion lacks `{sub}`");
    }
    let out = kiln(&["completions", "powershell"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
}

/// Render a man page with groff, warnings on; returns its words (no overstrike). Fails on any warning.
fn groff(page: &Path) -> String {
    let out =
        Command::new("groff").args(["-man", "-Tutf8", "-ww", "-P-cbou"]).arg(page).output().expect("running groff");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "groff warns about {}:\n{stderr}", page.display());
    // Justified text: words joined by single spaces.
    String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn manpages_render_one_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man1");
    let out = kiln(&["manpages", man.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut pages: Vec<String> =
        std::fs::read_dir(&man).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    pages.sort();
    let subs = subcommands();
    let mut want: Vec<String> = subs.iter().map(|s| format!("kiln-{s}.1")).chain(["kiln.1".to_string()]).collect();
    want.sort();
    assert_eq!(pages, want);

    let main = groff(&man.join("kiln.1"));
    for sub in &subs {
        assert!(main.contains(&format!("kiln-{sub}(1)")), "kiln.1 does not refer to kiln-{sub}(1):\n{main}");
        let page = groff(&man.join(format!("kiln-{sub}.1")));
        assert!(page.contains("SYNOPSIS") && page.contains(&format!("kiln {sub}")), "kiln-{sub}.1:\n{page}");
    }
    assert!(groff(&man.join("kiln-build.1")).contains("--json"));
    // man-db as a user meets it (preconv, tbl, its own warnings).
    let out = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(man.join("kiln-build.1"))
        .env("MANWIDTH", "80")
        .output()
        .expect("running man (man-db)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "man -l kiln-build.1 warns:\n{stderr}");
}

#[test]
fn verify_json_on_a_missing_image_is_an_error_document() {
    let out = kiln(&["verify", "--json", "/nonexistent/kiln-missing-1.0-x86_64.img"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(doc["command"], "verify");
    assert_eq!(doc["result"], "error");
    assert!(doc["error"].as_str().unwrap().contains("not found"), "{doc}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("kiln: error:"), "the error is on stderr too");
}

#[test]
fn verify_json_lists_findings() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("lone-1.0-x86_64.img");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    let out = kiln(&["verify", "--json", image.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(doc["result"], "fail");
    assert_eq!(doc["signature_checked"], false);
    assert_eq!(doc["image"], image.to_str().unwrap());
    let finding = &doc["findings"][0];
    assert_eq!(finding["status"], "fail");
    assert_eq!(finding["subject"], "SHA256SUMS");
    assert!(finding["detail"].as_str().unwrap().contains("cannot be read"), "{doc}");
    assert_eq!(doc["failed"], serde_json::json!(["SHA256SUMS"]));
    // Without --json: the lines as before.
    let out = kiln(&["verify", image.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("FAIL SHA256SUMS: cannot be read") && text.contains("result: FAIL: SHA256SUMS"), "{text}");
}

#[test]
fn build_json_on_a_bad_recipe_is_an_error_document_with_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = "tests/recipes/bad/artifact-relative-dest.toml";
    let out = kiln(&["build", "--json", recipe, "--out", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "a recipe error keeps its exit status");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!((doc["command"].as_str(), doc["result"].as_str()), (Some("build"), Some("error")));
    let error = doc["error"].as_str().unwrap();
    assert!(error.starts_with(&format!("{recipe}:8:8: key `artifacts[0].dest`")), "{error}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "nothing written");
}

/// `--site` gets the full site check (the same as `kiln site check`) before any machine starts:
/// a bad value is named at its position, exit 2, and nothing boots (no QEMU, no firmware needed).
#[test]
fn boot_and_test_refuse_a_bad_site_file_before_starting_a_machine() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("x.img");
    std::fs::write(&image, b"not an image").unwrap();
    let site = dir.path().join("site.toml");
    std::fs::write(&site, "hostname = \"bad_host\"\n").unwrap();
    for cmd in ["boot", "test"] {
        let out = kiln(&[cmd, image.to_str().unwrap(), "--site", site.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "kiln {cmd}: {err}");
        assert!(err.contains("site.toml:1:12: key `hostname`"), "kiln {cmd}: {err}");
    }
}
