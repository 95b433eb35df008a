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

/// A site file checked against tests/recipes/site/recipe.toml (`kiln site check --recipe`).
fn site_check(case: &str) -> anyhow::Result<kiln::pipeline::site::SiteReport> {
    let recipe = Path::new("tests/recipes/site/recipe.toml");
    kiln::pipeline::site::check(
        Path::new(&format!("tests/recipes/site/{case}.toml")),
        kiln::pipeline::site::Against::Recipe(recipe),
    )
}

fn site_good(case: &str) {
    let report = site_check(case).unwrap_or_else(|e| panic!("{case} should be valid: {e:#}"));
    let json = serde_json::to_string_pretty(&report.settings).unwrap() + "\n";
    compare(Path::new(&format!("tests/recipes/site/{case}.json")), &json);
}

fn site_bad(case: &str) {
    let err = site_check(case).expect_err("site file should be rejected");
    let site_err = err
        .chain()
        .find_map(|c| c.downcast_ref::<kiln::recipe::RecipeError>())
        .unwrap_or_else(|| panic!("not a site file error: {err:#}"));
    compare(Path::new(&format!("tests/recipes/site/{case}.err")), &format!("{site_err}\n"));
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
    site_vars => "site-vars",
    files_groups => "files-groups",
    security_mirror => "security-mirror",
    security_off => "security-off",
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
    site_var_conflict => "site-var-conflict",
    site_var_bad_name => "site-var-bad-name",
    site_var_bad_default => "site-var-bad-default",
    site_var_required_default => "site-var-required-default",
    site_var_unknown_type => "site-var-unknown-type",
    site_var_hostname => "site-var-hostname",
    site_var_unknown_key => "site-var-unknown-key",
    site_var_bad_description => "site-var-bad-description",
    site_template_tag => "site-template-tag",
    site_template_undeclared => "site-template-undeclared",
    site_template_other => "site-template-other",
    secret_readable => "secret-readable",
    private_key_readable => "private-key-readable",
    bad_file_mode => "bad-file-mode",
    file_sets_nothing => "file-sets-nothing",
    bad_file_owner => "bad-file-owner",
    bad_file_path => "bad-file-path",
    duplicate_file => "duplicate-file",
    bad_group_name => "bad-group-name",
    duplicate_group => "duplicate-group",
    group_is_user => "group-is-user",
    port_zero => "port-zero",
    port_too_big => "port-too-big",
    port_protocol => "port-protocol",
    duplicate_port => "duplicate-port",
    bad_security_mirror => "bad-security-mirror",
    security_mirror_without_security => "security-mirror-without-security",
    automatic_updates_without_security => "automatic-updates-without-security",
    bad_automatic_updates => "bad-automatic-updates",
);

cases!(site_good:
    every_key => "good",
    minimal => "minimal",
);

cases!(site_bad:
    missing_required_var => "missing-required-var",
    wrong_type => "wrong-type",
    bad_address => "bad-address",
    bad_gateway => "bad-gateway",
    bad_key => "bad-key",
    key_type_mismatch => "key-type-mismatch",
    unknown_key => "unknown-key",
    plaintext_password => "plaintext-password",
    bad_hostname => "bad-hostname",
    missing_hostname => "missing-hostname",
    bad_mac => "bad-mac",
    two_matches => "two-matches",
    duplicate_network => "duplicate-network",
    duplicate_admin => "duplicate-admin",
    root_admin => "root-admin",
    admin_cannot_log_in => "admin-cannot-log-in",
    unknown_var => "unknown-var",
    bad_domain_var => "bad-domain-var",
    bad_email_var => "bad-email-var",
    bad_timezone => "bad-timezone",
    bad_keyboard => "bad-keyboard",
    bad_interface => "bad-interface",
    bad_ntp => "bad-ntp",
    string_with_newline => "string-with-newline",
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
    // minimal is a 1 GiB image (its root grows to the disk at first boot).
    assert_eq!(plan("minimal").layout.disk_size, 1 << 30);
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
    for p in [
        "nginx",
        "php8.4-fpm",
        "postgresql",
        "redis-server",
        "postfix",
        "dovecot-imapd",
        "rspamd",
        "libvirt-daemon-system",
    ] {
        assert!(office.packages.iter().any(|x| x == p), "office-in-a-box lacks {p}");
    }
    let names: Vec<&str> = office.recipe.first_boot.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["cockpit-admin", "nextcloud-install", "mail-aliases"]);
    let site_vars: Vec<&str> = office.recipe.site_vars.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(site_vars, ["admin_email", "domain"], "office-in-a-box's per-site settings are site variables");
    assert!(office.recipe.vars.get("domain").is_none() && office.recipe.vars.get("admin_email").is_none());
    // The sovereign office: Debian main only (no repository, no artifact), every layer's service.
    let sov = plan("sovereign-office");
    assert!(
        sov.recipe.repositories.is_empty() && sov.recipe.artifacts.is_empty(),
        "sovereign-office needs more than Debian"
    );
    assert_eq!(sov.recipe.base.components, ["main"]);
    for p in [
        "slapd",
        "nslcd",
        "postfix",
        "dovecot-imapd",
        "rspamd",
        "sogo",
        "prosody",
        "lua-ldap",
        "libnginx-mod-http-dav-ext",
    ] {
        assert!(sov.packages.iter().any(|x| x == p), "sovereign-office lacks {p}");
    }
    let names: Vec<&str> = sov.recipe.first_boot.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "office-directory",
            "mail-aliases",
            "office-cert",
            "office-web",
            "office-groupware",
            "office-chat",
            "office-sso"
        ]
    );
    // One image for any municipality: the domain, organisation and admin address are the site's.
    let site_vars: Vec<&str> = sov.recipe.site_vars.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(site_vars, ["admin_email", "domain", "organisation"], "sovereign-office's per-site settings");
    assert!(["domain", "organisation", "admin_email"].iter().all(|v| sov.recipe.vars.get(*v).is_none()));
}

/// The example site files check against the recipes they name.
#[test]
fn example_site_files_check() {
    use kiln::pipeline::site::{check, Against};
    for (site, recipe) in [("example", "office-in-a-box"), ("lab", "minimal"), ("lab", "kvm-host")] {
        let (s, r) = (format!("../recipes/sites/{site}.toml"), format!("../recipes/{recipe}.toml"));
        let report = check(Path::new(&s), Against::Recipe(Path::new(&r))).unwrap_or_else(|e| panic!("{s}: {e:#}"));
        assert!(!report.settings.admins.is_empty());
    }
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

/// The image gets the declarations as `/usr/lib/kiln/site/vars` (one tab-separated line per
/// variable) and the `.site` templates unrendered under `/usr/lib/kiln/site/templates/`,
/// keeping their mode; a recipe without site variables gets nothing of it.
#[test]
fn site_vars_and_templates_enter_the_image() {
    use kiln::customize::overlay::{render, Content};
    let plan = kiln::pipeline::check(Path::new("tests/recipes/good/site-vars.toml"), None).unwrap();
    let entries = render(&plan.recipe).unwrap();
    let file = |rel: &str| {
        let e = entries.iter().find(|e| e.rel == Path::new(rel)).unwrap_or_else(|| panic!("no {rel}"));
        let Content::File { data } = &e.content else { panic!("{rel} is not a file") };
        (String::from_utf8(data.clone()).unwrap(), e.mode)
    };
    assert_eq!(
        file("usr/lib/kiln/site/vars"),
        (
            "admin_email\temail\toptional\tadmin@example.org\ndomain\tdomain\trequired\t\nhttp_port\tinteger\toptional\t80\ntls\tbool\toptional\ttrue\n".into(),
            0o644
        )
    );
    let (text, mode) = file("usr/lib/kiln/site/templates/etc/nginx/snippets/example.conf");
    assert_eq!(
        (text.as_str(), mode),
        ("server_name {{ site.domain }} {{site.hostname}};\nlisten {{ site.http_port }};\n", 0o644)
    );
    assert_eq!(file("usr/lib/kiln/site/templates/usr/lib/example/hello").1, 0o755);
    assert!(!entries.iter().any(|e| e.rel.extension().is_some_and(|x| x == "site")), "a .site file left in place");
    // Rendered with the defaults where every placeholder has one (`domain` has none).
    assert!(!entries.iter().any(|e| e.rel == Path::new("etc/nginx/snippets/example.conf")));
    assert_eq!(file("usr/lib/example/default"), ("port 80\nsite-vars\n".to_string(), 0o644));
    let dirs: Vec<_> = entries.iter().filter(|e| matches!(e.content, Content::Dir)).map(|e| e.rel.clone()).collect();
    let pos = |p: &str| dirs.iter().position(|d| d == Path::new(p)).unwrap_or_else(|| panic!("no directory {p}"));
    assert!(pos("usr/lib/kiln/site") < pos("usr/lib/kiln/site/templates/etc/nginx/snippets"));
    let plain = kiln::pipeline::check(Path::new("tests/recipes/good/defaults.toml"), None).unwrap();
    assert!(render(&plain.recipe).unwrap().iter().all(|e| !e.rel.starts_with("usr/lib/kiln/site")));
}

/// `kiln site check` exits 2 on a bad site file with file:line:column and key, and reads the
/// declarations of `--image` from the manifest beside the image.
#[test]
fn cli_site_check() {
    let kiln = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().unwrap();
    let out =
        kiln(&["site", "check", "tests/recipes/site/wrong-type.toml", "--recipe", "tests/recipes/site/recipe.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tests/recipes/site/wrong-type.toml:5:13: key `vars.http_port`: expected an integer"),
        "{stderr}"
    );
    let out = kiln(&["site", "check", "tests/recipes/site/good.toml"]);
    assert_eq!(out.status.code(), Some(2), "--image or --recipe is required");

    // A manifest as `kiln build` writes it beside the image, with the recipe's declarations.
    let dir = tempfile::tempdir().unwrap();
    let plan = kiln::pipeline::check(Path::new("tests/recipes/site/recipe.toml"), None).unwrap();
    let manifest = serde_json::json!({
        "kiln_manifest": 1,
        "recipe": { "name": "site-test", "version": "1", "hash": "00" },
        "lock_hash": null, "kiln_version": "0", "source_date_epoch": 0, "architecture": "x86_64",
        "kernel_version": "6.12",
        "image": { "file": "site-test-1-x86_64.img", "size": 0, "sha256": "00",
                   "disk_guid": "00000000-0000-0000-0000-000000000000" },
        "partitions": [], "signing_key": null,
        "site_vars": plan.recipe.site_vars,
    });
    std::fs::write(dir.path().join("site-test-1-x86_64.manifest.json"), manifest.to_string()).unwrap();
    let image = dir.path().join("site-test-1-x86_64.img");
    let image = image.to_str().unwrap();
    let out = kiln(&["site", "check", "tests/recipes/site/good.toml", "--image", image]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("domain=office.example.org\nhttp_port=8080\n"));
    let out = kiln(&["site", "check", "tests/recipes/site/missing-required-var.toml", "--image", image, "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["result"], "error");
    assert!(doc["error"].as_str().unwrap().contains("key `vars.domain`: missing"), "{doc}");
}
