//! Allow-lists for the values of a site file (`site.toml`) and of site variables: they reach
//! files on the box (networkd units, sudoers, authorized_keys, rendered templates), so each is
//! a newtype made only by its check, like the recipe's values.
use super::{all, is_hostname, shown};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

value_type!(
    /// An XKB keyboard layout name (`de`, `us`, `latam`).
    XkbLayout,
    check_xkb_layout
);
value_type!(
    /// One OpenSSH public key line: an allowed key type, a base64 blob of that type, a comment.
    SshPublicKey,
    check_ssh_key
);
value_type!(
    /// A crypt(5) password hash: yescrypt (`$y$`) or SHA-512 (`$6$`). Never a plaintext password.
    CryptHash,
    check_crypt_hash
);
value_type!(
    /// A network interface name, or a glob over names (`en*`, `eth[01]`).
    InterfaceMatch,
    check_interface_match
);
value_type!(
    /// An Ethernet MAC address, six colon-separated hex pairs.
    MacAddress,
    check_mac
);
value_type!(
    /// An IPv4 or IPv6 address with its prefix length (`192.0.2.10/24`, `2001:db8::10/64`).
    IpPrefix,
    check_ip_prefix
);
value_type!(
    /// An IPv4 or IPv6 address.
    IpAddress,
    check_ip
);
value_type!(
    /// An IPv4 address.
    Ipv4Address,
    check_ipv4
);
value_type!(
    /// An IPv6 address.
    Ipv6Address,
    check_ipv6
);
value_type!(
    /// A time server: a host name or an IP address.
    NtpServer,
    check_ntp_server
);
value_type!(
    /// A DNS domain name (RFC 1123 labels, at most 253 characters).
    Domain,
    check_domain
);
value_type!(
    /// An e-mail address `local@domain` (a conservative subset of RFC 5321).
    Email,
    check_email
);
value_type!(
    /// A site variable's name: `[a-z][a-z0-9_]{0,31}`.
    SiteVarName,
    check_site_var_name
);
value_type!(
    /// One line of text: no control characters (tabs and newlines included), at most 1024 characters.
    OneLine,
    check_one_line
);

/// Key types an admin's SSH key may have.
pub const SSH_KEY_TYPES: [&str; 7] = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

fn check_xkb_layout(s: &str) -> Result<(), String> {
    let ok = (2..=32).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && all(s, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not an XKB layout name: lower-case letters, digits, `_` and `-`, starting with a letter, 2 to 32 characters (e.g. `de`, `us`)",
            shown(s)
        )
    })
}

fn check_ssh_key(s: &str) -> Result<(), String> {
    ssh_key(s).map_err(|why| format!("`{}` is not an OpenSSH public key: {why}", shown(s)))
}

/// Why `s` is not `TYPE BASE64 [COMMENT]` with a blob that decodes and names TYPE.
fn ssh_key(s: &str) -> Result<(), String> {
    if s.len() > 16 << 10 {
        return Err("longer than 16KiB".into());
    }
    if s.chars().any(|c| c.is_control()) {
        return Err("one line without control characters (one key per list entry)".into());
    }
    let mut parts = s.splitn(3, ' ');
    let (kind, blob) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !SSH_KEY_TYPES.contains(&kind) {
        return Err(format!(
            "the key type must be one of {} (a line of a `.pub` file, `TYPE BASE64 COMMENT`)",
            SSH_KEY_TYPES.join(", ")
        ));
    }
    use ct_codecs::{Base64, Decoder};
    let bytes = Base64::decode_to_vec(blob, None).map_err(|_| "the key (second field) is not base64".to_string())?;
    let named = bytes
        .get(..4)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|n| bytes.get(4..4 + n))
        .ok_or_else(|| "the key (second field) is too short".to_string())?;
    if named != kind.as_bytes() {
        return Err(format!("the key (second field) is not a `{kind}` key"));
    }
    Ok(())
}

/// crypt(5)'s hash alphabet.
fn is_crypt_chars(s: &str) -> bool {
    !s.is_empty() && all(s, |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/'))
}

fn check_crypt_hash(s: &str) -> Result<(), String> {
    let fields: Vec<&str> = s.split('$').collect();
    let ok = match fields.as_slice() {
        ["", "y", params, salt, hash] => {
            is_crypt_chars(params) && is_crypt_chars(salt) && hash.len() == 43 && is_crypt_chars(hash)
        }
        ["", "6", rounds, salt, hash] => {
            rounds.strip_prefix("rounds=").is_some_and(|n| !n.is_empty() && all(n, |c| c.is_ascii_digit()))
                && sha512_tail(salt, hash)
        }
        ["", "6", salt, hash] => sha512_tail(salt, hash),
        _ => false,
    };
    // A plaintext password is never shown back, not even in an error.
    ok.then_some(()).ok_or_else(|| {
        "this is not a crypt(5) password hash: write a yescrypt (`$y$…`) or SHA-512 (`$6$…`) hash, never a plaintext password (make one with `mkpasswd -m yescrypt`)".to_string()
    })
}

fn sha512_tail(salt: &str, hash: &str) -> bool {
    salt.len() <= 16 && is_crypt_chars(salt) && hash.len() == 86 && is_crypt_chars(hash)
}

fn check_interface_match(s: &str) -> Result<(), String> {
    let ok = (1..=15).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric() || matches!(c, '*' | '?' | '['))
        && all(s, |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '*' | '?' | '[' | ']'));
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not an interface name or glob: letters, digits, `_`, `-`, `.` and the glob characters `*`, `?`, `[`, `]`, at most 15 characters (e.g. `en*`, `eth0`)",
            shown(s)
        )
    })
}

fn check_mac(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split(':').collect();
    let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && all(p, |c| c.is_ascii_hexdigit()));
    ok.then_some(()).ok_or_else(|| {
        format!("`{}` is not a MAC address: six hex pairs separated by `:` (e.g. `52:54:00:12:34:56`)", shown(s))
    })
}

fn check_ip_prefix(s: &str) -> Result<(), String> {
    let parsed = s.split_once('/').and_then(|(a, p)| {
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let ok = !p.is_empty() && p.len() <= 3 && all(p, |c| c.is_ascii_digit()) && p.parse::<u8>().ok()? <= max;
        ok.then_some(())
    });
    parsed.ok_or_else(|| {
        format!(
            "`{}` is not an address with a prefix length: `192.0.2.10/24` or `2001:db8::10/64` (prefix 0 to 32 for IPv4, 0 to 128 for IPv6)",
            shown(s)
        )
    })
}

fn check_ip(s: &str) -> Result<(), String> {
    s.parse::<IpAddr>().map(drop).map_err(|_| format!("`{}` is not an IPv4 or IPv6 address", shown(s)))
}

fn check_ipv4(s: &str) -> Result<(), String> {
    s.parse::<Ipv4Addr>().map(drop).map_err(|_| format!("`{}` is not an IPv4 address (e.g. `192.0.2.1`)", shown(s)))
}

fn check_ipv6(s: &str) -> Result<(), String> {
    s.parse::<Ipv6Addr>().map(drop).map_err(|_| format!("`{}` is not an IPv6 address (e.g. `2001:db8::1`)", shown(s)))
}

fn check_ntp_server(s: &str) -> Result<(), String> {
    let ok = s.parse::<IpAddr>().is_ok() || is_domain(s);
    ok.then_some(())
        .ok_or_else(|| format!("`{}` is not a time server: a host name (RFC 1123) or an IP address", shown(s)))
}

/// RFC 1123 labels, at most 253 characters in all.
pub fn is_domain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_hostname)
}

fn check_domain(s: &str) -> Result<(), String> {
    is_domain(s).then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a domain name (RFC 1123: labels of lower-case letters, digits and `-`, at most 63 characters each, not starting or ending with `-`; at most 253 characters in all)",
            shown(s)
        )
    })
}

fn check_email(s: &str) -> Result<(), String> {
    let ok = s.len() <= 254
        && s.split_once('@').is_some_and(|(local, domain)| {
            (1..=64).contains(&local.len())
                && !local.starts_with('.')
                && !local.ends_with('.')
                && !local.contains("..")
                && all(local, |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
                && is_domain(domain)
        });
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not an e-mail address: `local@domain`, the local part of letters, digits, `.`, `_`, `+` and `-`, the domain lower-case (RFC 1123)",
            shown(s)
        )
    })
}

fn check_site_var_name(s: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && all(s, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a site variable name: lower-case letters, digits and `_`, starting with a letter, at most 32 characters",
            shown(s)
        )
    })
}

fn check_one_line(s: &str) -> Result<(), String> {
    let ok = s.chars().count() <= 1024 && !s.chars().any(char::is_control);
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not one line of text: no tabs, newlines or control characters, at most 1024 characters",
            shown(s)
        )
    })
}
