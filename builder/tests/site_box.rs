//! The box side of site settings (`kiln-site`, the Perl applier laid onto every image) run on the
//! build host by perl in its `check` mode: good site files → expected settings (JSON), bad ones →
//! the console line naming file:line and key (golden files under `tests/recipes/site-box/`,
//! checked against the site variables in `tests/recipes/site-box/vars`). `UPDATE_GOLDEN=1`
//! rewrites the expected files. The time zones come from a small zoneinfo tree the test makes,
//! so the host's tzdata does not matter.
use std::path::Path;
use std::process::Command;

const SCRIPT: &str = "../overlays/kiln-guest/usr/lib/kiln/kiln-site";
const DIR: &str = "tests/recipes/site-box";

fn check(file: &str) -> (bool, String, String) {
    let zones = tempfile::tempdir().unwrap();
    for z in ["Europe/Berlin", "Etc/UTC"] {
        let p = zones.path().join(z);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"TZif").unwrap();
    }
    let out = Command::new("perl")
        .args([SCRIPT, "check", file, "--vars", &format!("{DIR}/vars"), "--zoneinfo"])
        .arg(zones.path())
        .output()
        .expect("running perl (perl-base: in every Debian system)");
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn compare(expected: &Path, actual: &str) {
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        assert!(std::env::var_os("CI").is_none(), "UPDATE_GOLDEN=1 must not be set in CI");
        std::fs::write(expected, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(expected)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", expected.display()));
    assert_eq!(actual, want, "output differs from {}", expected.display());
}

fn good(case: &str) {
    let (ok, out, err) = check(&format!("{DIR}/good/{case}.toml"));
    assert!(ok && err.is_empty(), "{case} should be valid: {err}");
    compare(Path::new(&format!("{DIR}/good/{case}.json")), &out);
}

fn bad(case: &str) {
    let (ok, out, err) = check(&format!("{DIR}/bad/{case}.toml"));
    assert!(!ok && out.is_empty(), "{case} should be rejected, printed {out}");
    assert!(err.starts_with("kiln-site: site.toml:"), "{err}");
    compare(Path::new(&format!("{DIR}/bad/{case}.err")), &err);
}

/// Every case file has its test, so none is forgotten.
#[test]
fn every_case_is_listed() {
    let listed = GOOD.len() + BAD.len();
    let files = ["good", "bad"]
        .iter()
        .flat_map(|k| std::fs::read_dir(format!("{DIR}/{k}")).unwrap())
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "toml"))
        .count();
    assert_eq!(files, listed, "a case file under {DIR} is not listed in site_box.rs");
}

macro_rules! cases {
    ($kind:ident, $list:ident: $($name:ident => $file:literal),* $(,)?) => {
        const $list: &[&str] = &[$($file),*];
        mod $kind {
            $( #[test] fn $name() { super::$kind($file) } )*
        }
    };
}

cases!(good, GOOD:
    full => "full",
    minimal => "minimal",
);

cases!(bad, BAD:
    bad_address => "bad-address",
    bad_email => "bad-email",
    bad_gateway => "bad-gateway",
    bad_hostname => "bad-hostname",
    bad_interface => "bad-interface",
    bad_ipv6 => "bad-ipv6",
    bad_key => "bad-key",
    bad_mac => "bad-mac",
    bad_user => "bad-user",
    control_in_value => "control-in-value",
    dotted_key => "dotted-key",
    duplicate_key => "duplicate-key",
    float => "float",
    inline_table => "inline-table",
    key_options => "key-options",
    missing_hostname => "missing-hostname",
    missing_required_var => "missing-required-var",
    plaintext_password => "plaintext-password",
    root_admin => "root-admin",
    timezone_path => "timezone-path",
    two_matches => "two-matches",
    unclosed_string => "unclosed-string",
    undeclared_var => "undeclared-var",
    unknown_key => "unknown-key",
    unknown_table => "unknown-table",
    unknown_timezone => "unknown-timezone",
    wrong_var_type => "wrong-var-type",
);
