//! Data-driven golden tests: good recipes → expected plan JSON, bad recipes → expected error
//! text (file:line:column, key, message). One test per case. Regenerate the expected files with
//! `UPDATE_GOLDEN=1 cargo test --test golden` and review the diff.
use std::path::Path;

fn compare(expected_path: &Path, actual: &str) {
    // Only `UPDATE_GOLDEN=1` rewrites; `0`, empty or anything else compares (and CI never sets it).
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        assert!(std::env::var_os("CI").is_none(), "UPDATE_GOLDEN=1 must not be set in CI");
        std::fs::write(expected_path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(expected_path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", expected_path.display()));
    assert_eq!(actual, expected, "output differs from {}", expected_path.display());
}

fn good(case: &str) {
    let recipe = format!("tests/recipes/good/{case}.toml");
    let plan =
        kiln::pipeline::check(Path::new(&recipe), None).unwrap_or_else(|e| panic!("{recipe} should be valid: {e:#}"));
    let json = serde_json::to_string_pretty(&plan).unwrap() + "\n";
    compare(Path::new(&format!("tests/recipes/good/{case}.plan.json")), &json);
}

fn bad(case: &str) {
    let recipe = format!("tests/recipes/bad/{case}.toml");
    let err = kiln::pipeline::check(Path::new(&recipe), None).expect_err("recipe should be rejected");
    let recipe_err = err
        .chain()
        .find_map(|c| c.downcast_ref::<kiln::recipe::RecipeError>())
        .unwrap_or_else(|| panic!("not a recipe error: {err:#}"));
    compare(Path::new(&format!("tests/recipes/bad/{case}.err")), &format!("{recipe_err}\n"));
}

macro_rules! cases {
    ($kind:ident: $($name:ident => $file:literal),* $(,)?) => {
        mod $kind {
            $( #[test] fn $name() { super::$kind($file) } )*
        }
    };
}

cases!(good:
    layered => "layered",
    defaults => "defaults",
    aarch64 => "aarch64",
    outputs => "outputs",
    extras => "extras",
);

cases!(bad:
    unknown_key => "unknown-key",
    wrong_type => "wrong-type",
    missing_include => "missing-include",
    include_cycle => "include-cycle",
    bad_template => "bad-template",
    undefined_variable => "undefined-variable",
    unknown_architecture => "unknown-architecture",
    bad_size => "bad-size",
    check_two_kinds => "check-two-kinds",
    missing_name => "missing-name",
    missing_overlay => "missing-overlay",
    bad_hostname => "bad-hostname",
    disk_too_small => "disk-too-small",
    syntax_error => "syntax-error",
    bad_ssh_key => "bad-ssh-key",
    bad_output_format => "bad-output-format",
    wrong_fingerprint => "wrong-fingerprint",
    missing_key => "missing-key",
    bad_sha256 => "bad-sha256",
    first_boot_two_kinds => "first-boot-two-kinds",
    duplicate_repository => "duplicate-repository",
    artifact_relative_dest => "artifact-relative-dest",
    first_boot_before_socket => "first-boot-before-socket",
    bad_suite => "bad-suite",
    bad_package => "bad-package",
    bad_component => "bad-component",
    bad_mirror => "bad-mirror",
    bad_url => "bad-url",
    bad_version => "bad-version",
    long_hostname => "long-hostname",
    bad_user => "bad-user",
    bad_group => "bad-group",
    bad_owner => "bad-owner",
    bad_timezone => "bad-timezone",
    bad_locale => "bad-locale",
    bad_kernel_cmdline => "bad-kernel-cmdline",
    bad_unit => "bad-unit",
    artifact_root_dest => "artifact-root-dest",
    bad_pin => "bad-pin",
    bad_artifact_name => "bad-artifact-name",
    huge_disk => "huge-disk",
    bad_modules => "bad-modules",
    template_get_env => "template-get-env",
    include_directory => "include-directory",
    duplicate_user => "duplicate-user",
    default_hostname => "default-hostname",
    duplicate_check => "duplicate-check",
);

/// The shipped appliance recipes are valid, and plan what their layers promise.
#[test]
fn appliance_recipes_check() {
    let plan = |r: &str| {
        kiln::pipeline::check(Path::new(&format!("../recipes/{r}.toml")), None).unwrap_or_else(|e| panic!("{r}: {e:#}"))
    };
    for r in ["minimal", "kvm-host"] {
        plan(r);
    }
    let kvm = plan("kvm-host");
    for p in ["libvirt-daemon-system", "cockpit-machines", "qemu-system-x86", "ovmf"] {
        assert!(kvm.packages.iter().any(|x| x == p), "kvm-host lacks {p}: {:?}", kvm.packages);
    }
    let pve = plan("proxmox-ve");
    assert!(pve.packages.iter().any(|p| p == "proxmox-default-kernel"), "{:?}", pve.packages);
    assert!(
        !pve.packages.iter().any(|p| p == "linux-image-amd64" || p == "os-prober"),
        "no Debian kernel, no os-prober: {:?}",
        pve.packages
    );
    let repo = &pve.recipe.repositories[0];
    assert_eq!(
        (repo.name.as_str(), repo.suite.as_str(), repo.fingerprint.as_str()),
        ("pve", "trixie", "24B30F06ECC1836A4E5EFECBA7BCD1420BFE778E")
    );
    assert_eq!(repo.components, ["pve-no-subscription"]);
    let office = plan("office-in-a-box");
    let nc = office.recipe.artifacts.iter().find(|a| a.name == "nextcloud").expect("nextcloud artifact");
    assert!(nc.url.starts_with("https://download.nextcloud.com/server/releases/nextcloud-") && nc.sha256.len() == 64);
    for p in ["nginx", "php8.4-fpm", "postgresql", "redis-server", "postfix", "dovecot-imapd", "libvirt-daemon-system"]
    {
        assert!(office.packages.iter().any(|x| x == p), "office-in-a-box lacks {p}");
    }
    let names: Vec<&str> = office.recipe.first_boot.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["cockpit-admin", "nextcloud-install", "mail-aliases"]);
    // The sovereign office: Debian main only (no repository, no artifact), every layer's service.
    let sov = plan("sovereign-office");
    assert!(
        sov.recipe.repositories.is_empty() && sov.recipe.artifacts.is_empty(),
        "sovereign-office needs more than Debian"
    );
    assert_eq!(sov.recipe.base.components, ["main"]);
    for p in ["slapd", "nslcd", "postfix", "dovecot-imapd", "sogo", "prosody", "lua-ldap", "libnginx-mod-http-dav-ext"]
    {
        assert!(sov.packages.iter().any(|x| x == p), "sovereign-office lacks {p}");
    }
    let names: Vec<&str> = sov.recipe.first_boot.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["office-directory", "mail-aliases", "office-groupware", "office-chat-cert"]);
}

/// The binary reports a bad recipe with file:line:column and the key, exits 2, prints nothing on stdout.
#[test]
fn cli_check_reports_position_and_exits_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["check", "tests/recipes/bad/unknown-key.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tests/recipes/bad/unknown-key.toml:6:1: key `disk.colour`: unknown field `colour`"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

/// A bad recipe given to `kiln build` fails before any work and leaves the output directory empty.
#[test]
fn cli_build_of_bad_recipe_leaves_no_output() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", "tests/recipes/bad/bad-template.toml", "--out"])
        .arg(out_dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0);
}

/// Output formats change which files are written, not the image: they stay out of the recipe
/// hash that seeds every GUID.
#[test]
fn output_formats_do_not_change_the_recipe_hash() {
    // The recipe's path is part of the hash: same name, same relative directory.
    let base = "name = \"x\"\nversion = \"1\"\n[base]\nmirror = \"http://deb.example/debian\"\n";
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("r.toml");
    std::fs::write(&recipe, base).unwrap();
    let a = kiln::pipeline::check(&recipe, None).unwrap();
    std::fs::write(&recipe, format!("{base}[output]\nformats = [\"zst\", \"qcow2\"]\n")).unwrap();
    let b = kiln::pipeline::check(&recipe, None).unwrap();
    assert_eq!(a.recipe_hash, b.recipe_hash);
    assert_eq!(serde_json::to_value(&b.formats).unwrap(), serde_json::json!(["img", "zst", "qcow2"]));
}
