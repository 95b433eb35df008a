//! `[[ports]]`: the guest ports a recipe's services listen on, which `kiln boot` and `kiln test`
//! forward to free ports on the host's 127.0.0.1 (SSH, port 22, is always forwarded).
//!
//! ```toml
//! [[ports]]
//! name = "web"          # a-z, 0-9 and `-`; unique
//! guest = 443           # 1-65535; unique
//! protocol = "tcp"      # optional; only tcp
//! scheme = "https"      # optional: http or https, to print a URL
//! ```
use super::error::{Origin, RecipeError};
use super::origins::Unique;
use super::values::FileName;
use serde::{Deserialize, Serialize};
use std::path::Path;
use toml::Spanned;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortLayer {
    pub name: FileName,
    /// Wider than a port, so that 70000 gets the message below rather than serde's.
    pub guest: u32,
    pub protocol: Option<String>,
    pub scheme: Option<String>,
}

/// A service port of the guest, as the plan and the manifest record it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub name: String,
    pub guest: u16,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
}

/// One entry's values: why it is not allowed, if it is not.
fn check(p: &PortLayer) -> Result<(), String> {
    if !(1..=65535).contains(&p.guest) {
        return Err(format!("`guest = {}` is not a port number (1 to 65535)", p.guest));
    }
    if let Some(proto) = p.protocol.as_deref().filter(|&x| x != "tcp") {
        return Err(format!("protocol `{}` is not supported (allowed: tcp)", proto.escape_debug()));
    }
    if let Some(s) = p.scheme.as_deref().filter(|&x| x != "http" && x != "https") {
        return Err(format!("scheme `{}` is not allowed (allowed: http, https)", s.escape_debug()));
    }
    Ok(())
}

/// Per file, where positions are known.
pub fn per_file(
    ports: &Option<Vec<Spanned<PortLayer>>>,
    err: &impl Fn(usize, &str, String) -> RecipeError,
) -> Result<(), RecipeError> {
    for (i, p) in ports.iter().flatten().enumerate() {
        check(p.get_ref()).map_err(|m| err(p.span().start, &format!("ports[{i}]"), m))?;
    }
    Ok(())
}

/// The merged list: names and guest ports each used once.
pub fn resolve(ports: Vec<Spanned<PortLayer>>, origins: &[Origin], file: &Path) -> Result<Vec<Port>, RecipeError> {
    let mut names = Unique::new("ports", "ports", origins);
    let mut guests = Unique::new("ports", "ports", origins).hint(" (the same guest port twice)");
    let mut out = Vec::new();
    for (i, p) in ports.into_iter().enumerate() {
        let p = p.into_inner();
        check(&p).map_err(|m| RecipeError::file(file, Some("ports".into()), m))?;
        names.check(i, &p.name, file)?;
        guests.check(i, &p.guest.to_string(), file)?;
        out.push(Port {
            name: p.name.to_string(),
            guest: u16::try_from(p.guest).expect("checked above"),
            protocol: p.protocol.unwrap_or_else(|| "tcp".into()),
            scheme: p.scheme,
        });
    }
    Ok(out)
}
