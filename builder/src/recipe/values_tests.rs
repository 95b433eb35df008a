use super::*;

fn ok<T: TryFrom<String, Error = String>>(s: &str) -> bool {
    T::try_from(s.to_string()).is_ok()
}

#[test]
fn debian_names() {
    assert!(ok::<DebName>("trixie") && ok::<DebName>("php8.4-fpm") && ok::<DebName>("libstdc++6"));
    assert!(!ok::<DebName>("-oAPT::x") && !ok::<DebName>("Trixie") && !ok::<DebName>("a") && !ok::<DebName>("a b"));
}

#[test]
fn urls() {
    assert!(ok::<Url>("http://deb.debian.org/debian") && ok::<Url>("https://example.org:8443/x?y=1"));
    for bad in ["-o/etc/x", "file:///etc/passwd", "http://", "http://a b", "http://a\n", "ftp://a", "http://-x/"] {
        assert!(!ok::<Url>(bad), "{bad}");
    }
    assert!(!ok::<Url>(&format!("http://a/{}", "x".repeat(MAX_URL))));
}

#[test]
fn host_names() {
    assert!(ok::<Hostname>("box.example.org") && ok::<Hostname>("kiln-minimal"));
    let long = ["a".repeat(63), "b".repeat(63)].join(".");
    assert!(!ok::<Hostname>(&long), "127 characters: longer than Linux takes");
    assert!(!ok::<Hostname>(&"a".repeat(64)), "label longer than 63");
    for bad in ["-x", "x-", "a..b", "bad_host!", ""] {
        assert!(!ok::<Hostname>(bad), "{bad}");
    }
}

#[test]
fn users_groups_owners() {
    assert!(ok::<UserName>("admin") && ok::<UserName>("_apt") && ok::<UserName>("libvirt-qemu"));
    assert!(!ok::<UserName>("sudo,root") && !ok::<UserName>("-r") && !ok::<UserName>(&"a".repeat(33)));
    assert!(ok::<Owner>("www-data:www-data") && ok::<Owner>("root"));
    assert!(!ok::<Owner>("a:b:c") && !ok::<Owner>(":x") && !ok::<Owner>("--from=x"));
}

#[test]
fn time_zones_and_locales() {
    for good in ["Etc/UTC", "UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "Etc/GMT+5"] {
        assert!(ok::<TimeZone>(good), "{good}");
    }
    for bad in ["../../etc/shadow", "/etc/shadow", "Europe/../../x", "Europe//Berlin", "a/b/c/d", "-x"] {
        assert!(!ok::<TimeZone>(bad), "{bad}");
    }
    for good in ["C", "C.UTF-8", "POSIX", "de_DE.UTF-8", "en_US", "ca_ES.UTF-8@valencia", "ast_ES.UTF-8"] {
        assert!(ok::<Locale>(good), "{good}");
    }
    for bad in ["de_DE.UTF-8\nLC_ALL=x", "../x", "de", "de_DE UTF-8"] {
        assert!(!ok::<Locale>(bad), "{bad}");
    }
}

#[test]
fn words_units_paths_patterns() {
    assert!(ok::<KernelWord>("quiet") && ok::<KernelWord>("console=ttyS0,115200"));
    assert!(!ok::<KernelWord>("quiet\ninitrd /x") && !ok::<KernelWord>("a b") && !ok::<KernelWord>(""));
    assert!(ok::<UnitName>("getty@tty1.service") && ok::<UnitName>("-.mount") && !ok::<UnitName>("nginx"));
    assert!(ok::<ImagePath>("/opt/app") && ok::<ImagePath>("/usr/lib/x.d/a"));
    for bad in ["/", "/.", "/..", "opt", "/opt/../etc", "//opt", "/opt/", "/opt/./x", "/a\nb"] {
        assert!(!ok::<ImagePath>(bad), "{bad}");
    }
    assert!(ok::<PinPattern>("vendor-*") && ok::<PinPattern>("/^lib.*/") && !ok::<PinPattern>("*\nPin: x"));
    assert!(ok::<FileName>("vendor") && !ok::<FileName>("../x") && !ok::<FileName>("a.b"));
    assert!(ok::<Version>("2024.1") && ok::<Version>("1.0~rc1+b2") && !ok::<Version>("../1"));
    assert!(!ok::<Version>("-1") && !ok::<Version>("1/2"));
}

#[test]
fn serialises_as_a_string() {
    let v = DebName::try_from("trixie").unwrap();
    assert_eq!(serde_json::to_string(&v).unwrap(), "\"trixie\"");
    assert_eq!(&*v, "trixie");
}

#[test]
fn site_values() {
    let ed = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHujRq0FKpcfDFx2ld6F+WN1mr7vgvgphVyrE0w2SsGA alice@example.org";
    assert!(ok::<SshPublicKey>(ed) && ok::<SshPublicKey>(&ed[..ed.len() - 18]));
    for bad in [ed.replace("ssh-ed25519", "ssh-dss"), ed.replace("AAAAC3", "BAAAC3"), format!("{ed}\nssh-ed25519 AAAA")]
    {
        assert!(!ok::<SshPublicKey>(&bad), "{bad}");
    }
    assert!(ok::<CryptHash>("$y$j9T$Zm9vYmFyYmF6cXV4$3CuBDmppYjd2kIRpjjuJUwv694kYoUf00mk8LnTCnR8"));
    let sha = "$6$saltsalt$SSzpZvwuM2HFg3pJbicMz7YbtF3KjU0EO7G0hX5e9HRmpX8o0YzJD944y1EqiBT3ussz5O6DdQI5/VoTYpTFL/";
    assert!(ok::<CryptHash>(sha) && ok::<CryptHash>(&sha.replace("$6$", "$6$rounds=5000$")));
    for bad in ["hunter2", "$1$abc$def", "$y$j9T$salt$short", "$6$salt$x"] {
        assert!(!ok::<CryptHash>(bad), "{bad}");
        assert!(!CryptHash::try_from(bad).unwrap_err().contains(bad), "a password is never shown back");
    }
    assert!(ok::<IpPrefix>("192.0.2.10/24") && ok::<IpPrefix>("2001:db8::10/64") && ok::<IpPrefix>("10.0.0.1/0"));
    for bad in ["192.0.2.10", "192.0.2.10/33", "2001:db8::/129", "192.0.2.010/24", "192.0.2.1/+4"] {
        assert!(!ok::<IpPrefix>(bad), "{bad}");
    }
    assert!(ok::<MacAddress>("52:54:00:AB:cd:ef") && !ok::<MacAddress>("52-54-00-ab-cd-ef"));
    assert!(ok::<InterfaceMatch>("en*") && ok::<InterfaceMatch>("eth[01]") && !ok::<InterfaceMatch>("a/b"));
    assert!(!ok::<InterfaceMatch>("abcdefghijklmnop"), "16 characters: longer than IFNAMSIZ");
    assert!(ok::<NtpServer>("ntp.example.org") && ok::<NtpServer>("2001:db8::123") && !ok::<NtpServer>("-x"));
    assert!(ok::<Email>("first.last+tag@example.org") && !ok::<Email>("a@b@c") && !ok::<Email>("a\"b@c"));
    assert!(ok::<SiteVarName>("admin_email") && !ok::<SiteVarName>("_x") && !ok::<SiteVarName>("a-b"));
}
