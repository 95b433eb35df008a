//! The site file (`site.toml`, docs/site.md): what differs from box to box, read at every boot
//! from outside the signed partitions. Parsed like a recipe (every value an allow-list type,
//! unknown keys refused, errors with file:line:column and key), then checked against the site
//! variables an image declares.
use super::error::{key_of, Origin, RecipeError};
use super::origins::Unique;
use super::sitevars::{SiteValue, SiteVar};
use super::values::{
    CryptHash, Hostname, InterfaceMatch, IpAddress, IpPrefix, Ipv4Address, Ipv6Address, Locale, MacAddress, NtpServer,
    SshPublicKey, TimeZone, UserName, XkbLayout,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use toml::Spanned;

/// Largest site file.
pub const MAX_SITE: u64 = 1 << 20;

/// User names an admin may not take: the accounts of Debian's base system.
const RESERVED_USERS: [&str; 21] = [
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "_apt",
    "nobody",
    "messagebus",
    "sshd",
    "polkitd",
];

/// A site file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteFile {
    hostname: Option<Hostname>,
    timezone: Option<TimeZone>,
    locale: Option<Locale>,
    keyboard: Option<XkbLayout>,
    #[serde(default)]
    admins: Vec<Spanned<Admin>>,
    #[serde(default)]
    network: Vec<Spanned<NetworkFile>>,
    vars: Option<Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>>,
}

/// An administrator: a member of `sudo`, with keys and (optionally) a password hash.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub name: UserName,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<SshPublicKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<CryptHash>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    match_name: Option<InterfaceMatch>,
    match_mac: Option<MacAddress>,
    dhcp: Option<bool>,
    #[serde(default)]
    addresses: Vec<IpPrefix>,
    gateway: Option<Ipv4Address>,
    gateway6: Option<Ipv6Address>,
    #[serde(default)]
    dns: Vec<IpAddress>,
    #[serde(default)]
    ntp: Vec<NtpServer>,
}

/// Which links a network entry configures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkMatch {
    MatchName(InterfaceMatch),
    MatchMac(MacAddress),
}

/// One network entry, with `dhcp` resolved (true when it has no addresses, unless set).
#[derive(Debug, Clone, Serialize)]
pub struct Network {
    #[serde(flatten)]
    pub link: LinkMatch,
    pub dhcp: bool,
    pub addresses: Vec<IpPrefix>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Address>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Address>,
    pub dns: Vec<IpAddress>,
    pub ntp: Vec<NtpServer>,
}

/// One variable as written: name, value, where the value and where the key is.
#[derive(Debug, Clone)]
struct Written {
    name: String,
    value: toml::Value,
    value_at: Origin,
    key_at: Origin,
}

/// A site file checked on its own (without an image's declarations).
#[derive(Debug, Clone, Serialize)]
pub struct Site {
    pub hostname: Hostname,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<TimeZone>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locale: Option<Locale>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyboard: Option<XkbLayout>,
    pub admins: Vec<Admin>,
    pub network: Vec<Network>,
    /// Every declared variable with its value (the site's, else the default); after `check`.
    pub vars: BTreeMap<String, SiteValue>,
    /// Variables as written, with where (checked by `check`).
    #[serde(skip)]
    written: Vec<Written>,
    /// Where `[vars]` starts (or the file's start), for a missing variable.
    #[serde(skip)]
    vars_at: Origin,
}

/// Read and check a site file on its own: syntax, keys, every value's type, admins, networks.
pub fn load(path: &Path) -> Result<Site, RecipeError> {
    let text = crate::host::files::read_regular(path, MAX_SITE).map_err(|e| {
        RecipeError::file(path, None, format!("cannot read site file: {e} (a regular file of at most 1MiB)"))
    })?;
    parse(path, &text)
}

/// Parse and check the text of a site file (`path` is only shown).
pub fn parse(path: &Path, text: &str) -> Result<Site, RecipeError> {
    let de = toml::Deserializer::new(text);
    let file: SiteFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let key_path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().to_string();
        let offset = inner.span().map(|s| s.start).unwrap_or(0);
        RecipeError::at(path, text, offset, key_of(&key_path, &message), message)
    })?;
    let hostname = file.hostname.ok_or_else(|| {
        RecipeError::file(
            path,
            Some("hostname".into()),
            "missing: a site file names the box (`hostname = \"office.example.org\"`)",
        )
    })?;
    let origin = |offset: usize, key: String| Origin::new(path, text, offset, key);
    let admin_origins: Vec<Origin> =
        file.admins.iter().enumerate().map(|(i, a)| origin(a.span().start, format!("admins[{i}]"))).collect();
    let mut names = Unique::new("admins", "admins", &admin_origins);
    let mut admins = Vec::new();
    for (i, a) in file.admins.into_iter().enumerate() {
        let a = a.into_inner();
        names.check(i, &a.name, path)?;
        let at = &admin_origins[i];
        if RESERVED_USERS.contains(&a.name.as_str()) {
            let msg = format!("`{}` is an account of the base system: name the admin after the person", a.name);
            return Err(at.error(Some(format!("admins[{i}].name")), msg));
        }
        if a.ssh_authorized_keys.is_empty() && a.password_hash.is_none() {
            let msg = "an admin needs `ssh_authorized_keys` or a `password_hash` (or both) to log in";
            return Err(at.error(None, msg));
        }
        admins.push(a);
    }
    let network = networks(file.network, path, text)?;
    let (written, vars_at) = match file.vars {
        Some(vars) => {
            let at = origin(vars.span().start, "vars".into());
            let list = vars.into_inner().into_iter().map(|(k, v)| {
                let name = k.get_ref().clone();
                let key = format!("vars.{name}");
                let (value_at, key_at) = (origin(v.span().start, key.clone()), origin(k.span().start, key));
                Written { name, value: v.into_inner(), value_at, key_at }
            });
            (list.collect(), at)
        }
        None => (Vec::new(), origin(0, "vars".into())),
    };
    Ok(Site {
        hostname,
        timezone: file.timezone,
        locale: file.locale,
        keyboard: file.keyboard,
        admins,
        network,
        vars: BTreeMap::new(),
        written,
        vars_at,
    })
}

/// Network entries: exactly one match each, no two alike.
fn networks(list: Vec<Spanned<NetworkFile>>, path: &Path, text: &str) -> Result<Vec<Network>, RecipeError> {
    let origins: Vec<Origin> = list
        .iter()
        .enumerate()
        .map(|(i, n)| Origin::new(path, text, n.span().start, format!("network[{i}]")))
        .collect();
    let mut seen = Unique::new("network entries", "network", &origins).hint("; merge them into one");
    let mut out = Vec::new();
    for (i, n) in list.into_iter().enumerate() {
        let n = n.into_inner();
        let link = match (n.match_name, n.match_mac) {
            (Some(name), None) => LinkMatch::MatchName(name),
            (None, Some(mac)) => LinkMatch::MatchMac(mac.to_ascii_lowercase().try_into().unwrap_or(mac)),
            _ => {
                let msg = "a network entry takes exactly one of `match_name` (interface name or glob) or `match_mac`";
                return Err(origins[i].error(None, msg));
            }
        };
        let shown = match &link {
            LinkMatch::MatchName(n) => format!("match_name {n}"),
            LinkMatch::MatchMac(m) => format!("match_mac {m}"),
        };
        // Unique names the entry by its match.
        seen.check(i, &shown, path)?;
        let dhcp = n.dhcp.unwrap_or(n.addresses.is_empty());
        out.push(Network {
            link,
            dhcp,
            addresses: n.addresses,
            gateway: n.gateway,
            gateway6: n.gateway6,
            dns: n.dns,
            ntp: n.ntp,
        });
    }
    Ok(out)
}

impl Site {
    /// Check the site's variables against an image's declarations: each one declared, of its
    /// type; every required one set. Fills `vars` with every variable's value (or default).
    pub fn check(mut self, declared: &[SiteVar]) -> Result<Site, RecipeError> {
        let known = || {
            let names: Vec<&str> = declared.iter().map(|v| v.name.as_str()).collect();
            if names.is_empty() {
                "this image declares no site variables".to_string()
            } else {
                format!("this image declares {}", names.join(", "))
            }
        };
        let mut vars = BTreeMap::new();
        for w in std::mem::take(&mut self.written) {
            let Some(decl) = declared.iter().find(|d| d.name == w.name.as_str()) else {
                return Err(w.key_at.error(None, format!("unknown site variable `{}`: {}", w.name, known())));
            };
            let typed = decl.kind.value(&w.value).map_err(|m| w.value_at.error(None, m))?;
            vars.insert(w.name, typed);
        }
        for d in declared {
            if vars.contains_key(d.name.as_str()) {
                continue;
            }
            match (&d.default, d.required) {
                (Some(v), _) => {
                    vars.insert(d.name.to_string(), v.clone());
                }
                (None, true) => {
                    let what = d.description.as_ref().map(|s| format!(" ({s})")).unwrap_or_default();
                    let msg = format!("missing: the image requires site variable `{}`{what}, a {}", d.name, d.kind);
                    return Err(self.vars_at.error(Some(format!("vars.{}", d.name)), msg));
                }
                (None, false) => {}
            }
        }
        self.vars = vars;
        Ok(self)
    }
}
