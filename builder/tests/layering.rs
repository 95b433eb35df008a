//! The floor plan of `builder/src`, kept by a test (in the spirit of rust-analyzer's `tidy.rs`).
//!
//! Stages sit in build order over a ground floor. A module may use its own folder, the ground
//! floor, and the stages below its own; never a stage above it, nor a sibling on the same floor.
//! The floors are listed here and in ARCHITECTURE.md ("Layering").
use std::path::{Path, PathBuf};

/// Floors from the bottom up; folders on one floor may not use each other.
const FLOORS: &[&[&str]] = &[
    &["host", "disk"],
    &["recipe"],
    &["lock"],
    &["plan"],
    &["debian"],
    &["bootstrap"],
    &["customize"],
    &["image"],
    &["release"],
    &["verify", "vm"],
    &["pipeline"],
    &["cli"],
];

fn floor(folder: &str) -> Option<usize> {
    FLOORS.iter().position(|f| f.contains(&folder))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `crate::NAME` a file mentions outside comments, with its line number.
fn crate_refs(text: &str) -> Vec<(usize, String)> {
    let mut refs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if name.is_empty() {
                // `use crate::{a, b}`: every name in the braces.
                if let Some(group) = after.strip_prefix('{') {
                    let group = group.split('}').next().unwrap_or("");
                    for item in group.split(',') {
                        let item = item.trim().split("::").next().unwrap_or("").to_string();
                        if !item.is_empty() {
                            refs.push((n + 1, item));
                        }
                    }
                }
            } else {
                refs.push((n + 1, name));
            }
            rest = after;
        }
    }
    refs
}

#[test]
fn no_module_uses_a_stage_above_it() {
    let root = src();
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap();
        let folder = rel.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_string();
        if folder == "lib" || folder == "main" {
            continue;
        }
        let Some(own) = floor(&folder) else {
            wrong.push(format!("{}: module `{folder}` is on no floor (add it to FLOORS)", rel.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (line, used) in crate_refs(&text) {
            if used == folder {
                continue;
            }
            match floor(&used) {
                Some(f) if f < own => {}
                Some(f) => wrong.push(format!(
                    "{}:{line}: `{folder}` (floor {own}) uses `{used}` (floor {f}): {}",
                    rel.display(),
                    if f == own { "a sibling on the same floor" } else { "a stage above it" }
                )),
                None => wrong.push(format!("{}:{line}: uses `crate::{used}`, which is on no floor", rel.display())),
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the floor plan:\n{}", wrong.join("\n"));
}

#[test]
fn only_the_command_wrapper_starts_programs() {
    let root = src();
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap();
        if rel == Path::new("host/cmd.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.contains("Command::new") && !line.trim_start().starts_with("//") {
                wrong.push(format!("{}:{}", rel.display(), n + 1));
            }
        }
    }
    assert!(wrong.is_empty(), "std::process::Command outside host/cmd.rs (use host::cmd::Cmd):\n{}", wrong.join("\n"));
}

#[test]
fn loading_a_recipe_starts_no_program() {
    // recipe/ may use host helpers, but not the command wrapper itself.
    let root = src().join("recipe");
    let mut files = Vec::new();
    sources(&root, &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("host::cmd") && !text.contains("Cmd::new"), "{} starts a program", file.display());
    }
}

#[test]
fn the_checker_sees_upward_imports() {
    // The test above must be able to fail: a stage using a later one is found, a group too.
    let refs = crate_refs("use crate::pipeline::build; // crate::cli\nuse crate::{image, host::cmd};");
    let names: Vec<_> = refs.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["pipeline", "image", "host"]);
    assert!(floor("pipeline") > floor("image") && floor("verify") == floor("vm"));
}

/// ARCHITECTURE.md: "Arch-specific values live in `recipe/arch.rs` (and `firmware/firmware.toml`),
/// nowhere else". No string literal naming an architecture, its Debian name, its QEMU program,
/// console, firmware or boot file appears in code outside `recipe/arch.rs`, with these exceptions:
/// native help runs only on x86_64 hosts (`bootstrap/assist/`, which says so), the `--arch`
/// values of the CLI, one message, comments and tests.
#[test]
fn architecture_facts_live_in_recipe_arch() {
    #[rustfmt::skip]
    const WORDS: &[&str] = &[
        "x86_64", "aarch64", "amd64", "arm64", "x86-64", "qemu-system-", "ttyS0", "ttyAMA0", "OVMF", "AAVMF", "BOOTX64",
        "BOOTAA64",
    ];
    const ALLOWED: &[(&str, &str)] =
        &[("cli/mod.rs", "#[value(name = "), ("debian/pinning.rs", "the tools tree needs an x86_64 or aarch64 host")];
    let root = src();
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
        if rel == "recipe/arch.rs" || rel.starts_with("bootstrap/assist/") || rel.ends_with("_tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            let code = line.trim_start();
            if code.starts_with("//") || ALLOWED.iter().any(|(f, s)| rel == *f && line.contains(s)) {
                continue;
            }
            let literal = |w: &&&str| line.split('"').skip(1).step_by(2).any(|lit| lit.contains(**w));
            if let Some(w) = WORDS.iter().find(literal) {
                wrong.push(format!("{rel}:{}: `{w}`: {}", n + 1, code));
            }
        }
    }
    assert!(wrong.is_empty(), "architecture facts outside recipe/arch.rs:\n{}", wrong.join("\n"));
}
