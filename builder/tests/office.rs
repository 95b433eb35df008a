//! The sovereign office (recipes/sovereign-office.toml, issue 14) built from the Debian mirror
//! alone and boot-tested under QEMU with 4 GiB: its test recipe adds alice and bob with
//! office-user and proves each protocol with a real client in the guest (one check each). The
//! box boots with a site file whose domain (rathaus.example) is not the image's default, and
//! the image holds no trace of it: one image, any municipality's domain (docs/site.md). The
//! image is also scanned for secrets: none from the build host, the box makes its own. Needs
//! root, the host tools and the Debian mirror: KILN_E2E=1 (scripts/test).
mod common;
use common::*;
use std::path::Path;

const RECIPE: &str = "tests/recipes/e2e/sovereign-office.toml";

/// What `kiln test` must report as passed, one line per protocol (names from the recipe).
const PROOFS: &[&str] = &[
    "LDAP: the directory answers with its base",
    "LDAP: administrator credentials made on this box, root only",
    "HTTPS: the start page is served with this box's certificate, which names the site's domain",
    "site: the office serves the site's domain and organisation",
    "Rspamd: the milter answers on 11332",
    "Rspamd: Postfix hands SMTP and submission mail to Rspamd",
    "DKIM: the key was made on this box, readable by root and Rspamd only",
    "office-user: alice and bob are added",
    "SMTP: alice sends bob mail over submission with authentication",
    "IMAPS: bob reads alice's mail",
    "SMTP: a forged sender is refused",
    "SMTP/IMAPS: a wrong password is refused",
    "DKIM: alice's mail to bob is signed for the domain and the signature verifies",
    "Rspamd: a spam message (GTUBE) is rejected",
    "CalDAV: alice creates an event and reads it back; bob cannot; a wrong password cannot",
    "CardDAV: alice creates a contact and reads it back; bob cannot; a wrong password cannot",
    "WebDAV: alice writes a file to her share and reads it back; bob cannot; a wrong password cannot",
    "XMPP: alice and bob log in and a message passes",
    "XMPP: a wrong password is refused",
    "SSO/OIDC: alice signs in to the portal and gets an OIDC code, tokens and userinfo; a wrong password is refused",
    "office-user remove bob: every service refuses bob",
    "first-boot secrets are root only",
    "no failed units",
];

#[test]
fn sovereign_office_builds_from_debian_alone_and_every_protocol_works() {
    if !e2e_enabled() {
        return;
    }
    let base = e2e_dir().join("sovereign-office");
    let image = build(RECIPE, &base.join("out"), &shared_cache());
    let size = std::fs::metadata(&image).unwrap().len();
    let used = run("du", &["-B1", image.to_str().unwrap()]).split_whitespace().next().unwrap().parse::<u64>().unwrap();
    eprintln!("sovereign-office: image {} MiB ({} MiB allocated)", size >> 20, used >> 20);

    scan_root(&image, &base);
    // The site's domain comes from the site volume alone: the image has never seen it.
    assert!(!contains_bytes(&image, SITE_DOMAIN.split('.').next().unwrap()), "{SITE_DOMAIN} is in the image");

    let site = base.join("site.toml");
    std::fs::write(&site, SITE).unwrap();
    let args =
        ["test", image.to_str().unwrap(), "--memory", "4096", "--timeout", "1500", "--site", site.to_str().unwrap()];
    let out = kiln(&[&args[..], &["--json"]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(out.status.success(), "kiln test failed:\n{stdout}\n{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = json["checks"].as_array().unwrap();
    let detail = |name: &str| {
        let c = checks.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no check {name}: {json:#}"));
        assert_eq!(c["ok"], true, "not passed: {name}: {c}");
        c["detail"].as_str().unwrap_or_default().to_string()
    };
    for proof in PROOFS {
        detail(proof);
    }
    let site_said = detail("site: the office serves the site's domain and organisation");
    for want in [
        "domain=rathaus.example base=dc=rathaus,dc=example",
        "<h1>Stadt Rathaus &amp; Co</h1>",
        "DNS:rathaus.example, DNS:auth.rathaus.example, DNS:office.rathaus.example",
    ] {
        assert!(site_said.contains(want), "the office did not take the site's values ({want}): {site_said}");
    }
    eprintln!(
        "sovereign-office: boot to all checks ready {}s ({}), memory: {}",
        json["boot_to_ready_seconds"],
        json["accel"],
        detail("guest memory in use (free -m)")
    );
}

/// The site file the box boots with: a domain, organisation and host name that are not the
/// image's defaults (office.home.arpa).
const SITE_DOMAIN: &str = "rathaus.example";
const SITE: &str = "hostname = \"office.rathaus.example\"\n\n[vars]\ndomain = \"rathaus.example\"\norganisation = \"Stadt Rathaus & Co\"\nadmin_email = \"it@rathaus.example\"\n";

/// Whether `needle` occurs anywhere in the file, ignoring case (GNU grep, which is fast on
/// the image's holes; exit 1 is "not found").
fn contains_bytes(path: &Path, needle: &str) -> bool {
    let status = std::process::Command::new("grep")
        .args(["-q", "-a", "-i", "-F", "-e", needle, "--"])
        .arg(path)
        .status()
        .unwrap();
    assert!(matches!(status.code(), Some(0 | 1)), "grep failed on {}: {status}", path.display());
    status.success()
}

/// No private key, password hash or first-boot secret in the root file system: everything
/// outside /usr (which holds only what Debian's packages ship) is read from the image with
/// debugfs and searched.
fn scan_root(image: &Path, base: &Path) {
    let plan = plan_of(Path::new(RECIPE));
    let root = cut_partition(image, &plan["layout"]["partitions"][1], &base.join("root.img"));
    for secret in [
        "/root/directory-credentials",
        "/etc/ssl/private/ssl-cert-snakeoil.key",
        "/etc/prosody/certs/office.key",
        "/root/sso-credentials",
        "/etc/office/domain",
        "/var/lib/kiln/first-boot/office-directory.done",
        "/var/lib/kiln/first-boot/office-sso.done",
        "/var/lib/rspamd/dkim/office.home.arpa.dkim.key",
        "/var/lib/rspamd/dkim",
        "/root/mail-dkim-credentials",
    ] {
        assert!(!exists_in(&root, secret), "{secret} must not be in the image");
    }
    let dump = base.join("rootfs");
    if dump.exists() {
        std::fs::remove_dir_all(&dump).unwrap();
    }
    std::fs::create_dir_all(&dump).unwrap();
    for dir in ["etc", "var", "root", "home", "srv", "opt"] {
        if exists_in(&root, &format!("/{dir}")) {
            run("debugfs", &["-R", &format!("rdump /{dir} {}", dump.display()), root.to_str().unwrap()]);
        }
    }
    let mut found = Vec::new();
    scan_dir(&dump, &dump, &mut found);
    assert!(found.is_empty(), "secrets in the image:\n{}", found.join("\n"));
    // slapd's own build-time directory (random administrator password) is gone.
    assert_eq!(std::fs::read_dir(dump.join("etc/ldap/slapd.d")).unwrap().count(), 0, "slapd.d left in the image");
    std::fs::remove_dir_all(&dump).unwrap();
    std::fs::remove_file(&root).unwrap();
}

fn scan_dir(top: &Path, dir: &Path, found: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ty = e.file_type().unwrap();
        let path = e.path();
        if ty.is_dir() {
            scan_dir(top, &path, found);
            continue;
        }
        if !ty.is_file() {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&data);
        let rel = path.strip_prefix(top).unwrap().display().to_string();
        for needle in ["PRIVATE KEY-----", "olcRootPW:", "userPassword:", "{SSHA}"] {
            if text.contains(needle) {
                found.push(format!("/{rel}: {needle}"));
            }
        }
        // Password hashes in shadow files (`*` and `!` lock an account without one).
        if rel == "etc/shadow" || rel == "etc/gshadow" {
            for line in text.lines() {
                let hash = line.split(':').nth(1).unwrap_or("");
                if hash.starts_with('$') {
                    found.push(format!("/{rel}: a password hash for {}", line.split(':').next().unwrap_or("")));
                }
            }
        }
    }
}

fn plan_of(recipe: &Path) -> serde_json::Value {
    let out = kiln(&["check", "--print", recipe.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}
