//! Licences from Debian's machine-readable copyright files (DEP-5), as SPDX expressions.
//!
//! Debian short names become SPDX identifiers where the meaning is unambiguous (`GPL-2+` →
//! `GPL-2.0-or-later`, `Expat` → `MIT`, `BSD-3-clause` → `BSD-3-Clause`, any exact SPDX id);
//! every other name becomes a `LicenseRef-…` that the SBOM declares. The identifiers come
//! from the `spdx` crate's copy of the SPDX licence list.
use crate::debian::deb822;
use std::collections::BTreeMap;

/// The licences of one package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Licences {
    /// SPDX licence expression (the `AND` of every distinct licence field).
    pub expression: String,
    /// `LicenseRef-…` ids used in `expression`, with the Debian name each stands for.
    pub refs: BTreeMap<String, String>,
}

/// The licences declared by a machine-readable copyright file; None for a free-form file
/// or one without any `License` field.
pub fn from_copyright(text: &str) -> Option<Licences> {
    let mut paras = deb822::paragraphs(text).peekable();
    let header = paras.peek()?;
    if !header.get("Format").is_some_and(|f| f.contains("copyright-format") || f.contains("dep5")) {
        return None;
    }
    let mut refs = BTreeMap::new();
    let mut terms: Vec<String> = Vec::new();
    for (i, p) in paras.enumerate() {
        // Stand-alone License paragraphs only hold texts for names used elsewhere.
        if i > 0 && !p.has("Files") {
            continue;
        }
        let Some(field) = p.get("License") else { continue };
        if let Some(expr) = translate(field, &mut refs) {
            if !terms.contains(&expr) {
                terms.push(expr);
            }
        }
    }
    if terms.is_empty() {
        return None;
    }
    let expression = if terms.len() == 1 {
        terms.remove(0)
    } else {
        terms.iter().map(|t| parenthesize(t)).collect::<Vec<_>>().join(" AND ")
    };
    Some(Licences { expression, refs })
}

fn parenthesize(expr: &str) -> String {
    if expr.contains(" OR ") || expr.contains(" AND ") {
        format!("({expr})")
    } else {
        expr.to_string()
    }
}

/// Translate the first line of a DEP-5 `License` field (`GPL-2+ or Artistic, and Expat`).
/// `and` binds tighter than `or` in both languages; a comma separates lower-precedence groups.
pub fn translate(field: &str, refs: &mut BTreeMap<String, String>) -> Option<String> {
    let mut groups: Vec<(Option<&str>, String)> = Vec::new();
    for (i, group) in field.split(',').enumerate() {
        let mut words: Vec<&str> = group.split_whitespace().collect();
        let joiner = if i > 0 {
            match words.first().map(|w| w.to_ascii_lowercase()) {
                Some(w) if w == "and" || w == "or" => {
                    words.remove(0);
                    Some(if w == "and" { "AND" } else { "OR" })
                }
                _ => Some("AND"),
            }
        } else {
            None
        };
        if let Some(expr) = translate_group(&words, refs) {
            groups.push((joiner, expr));
        }
    }
    let mut out = String::new();
    let several = groups.len() > 1;
    for (joiner, expr) in groups {
        if let (Some(j), false) = (joiner, out.is_empty()) {
            out.push_str(&format!(" {j} "));
        }
        out.push_str(&if several { parenthesize(&expr) } else { expr });
    }
    (!out.is_empty()).then_some(out)
}

/// Names joined by `and`/`or`; `NAME with X exception` stays one term.
fn translate_group(words: &[&str], refs: &mut BTreeMap<String, String>) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let mut term: Vec<&str> = Vec::new();
    let flush = |term: &mut Vec<&str>, parts: &mut Vec<String>, refs: &mut BTreeMap<String, String>| {
        if !term.is_empty() {
            parts.push(translate_term(&term.join(" "), refs));
            term.clear();
        }
    };
    for w in words {
        match w.to_ascii_lowercase().as_str() {
            op @ ("and" | "or") => {
                flush(&mut term, &mut parts, refs);
                if !parts.is_empty() && !parts.last().is_some_and(|p| p == "AND" || p == "OR") {
                    parts.push(op.to_ascii_uppercase());
                }
            }
            _ => term.push(w),
        }
    }
    flush(&mut term, &mut parts, refs);
    while parts.last().is_some_and(|p| p == "AND" || p == "OR") {
        parts.pop();
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// One licence, possibly `NAME with X exception`.
fn translate_term(term: &str, refs: &mut BTreeMap<String, String>) -> String {
    let lower = term.to_ascii_lowercase();
    if let Some(at) = lower.find(" with ") {
        let (name, rest) = (&term[..at], term[at + 6..].trim());
        let exception = rest.strip_suffix(" exception").unwrap_or(rest).trim();
        let exc_id = [exception.to_string(), format!("{exception}-exception")]
            .into_iter()
            .find_map(|e| spdx::exception_id(&e).filter(|x| !x.is_deprecated()));
        if let (Some(id), Some(exc)) = (spdx_id(name), exc_id) {
            return format!("{id} WITH {}", exc.name);
        }
    } else if let Some(id) = spdx_id(term) {
        return id;
    }
    let id = license_ref(term);
    refs.entry(id.clone()).or_insert_with(|| term.to_string());
    id
}

/// The SPDX identifier a Debian short name means, if there is exactly one.
pub fn spdx_id(name: &str) -> Option<String> {
    let valid =
        |id: &str| spdx::license_id(id).filter(|l| !l.is_deprecated() && l.name == id).map(|l| l.name.to_string());
    if let Some(id) = valid(name) {
        return Some(id);
    }
    if let Some(id) = gnu(name) {
        return valid(&id);
    }
    let alias = match name.to_ascii_lowercase().as_str() {
        "expat" => Some("MIT"),
        "apache-2" => Some("Apache-2.0"),
        "mpl-2" => Some("MPL-2.0"),
        "mpl-1.1" => Some("MPL-1.1"),
        "cc0" => Some("CC0-1.0"),
        "psf-2" => Some("PSF-2.0"),
        _ => None,
    };
    if let Some(a) = alias {
        return valid(a);
    }
    // Debian writes e.g. `BSD-3-clause` or `zlib` for `BSD-3-Clause` and `Zlib`.
    spdx::identifiers::LICENSES.iter().find(|(id, _, _)| id.eq_ignore_ascii_case(name)).and_then(|(id, _, _)| valid(id))
}

/// `GPL-2+`, `LGPL-2.1`, `GFDL-NIV-1.3+`, `GPL-2.0+` → SPDX's `-only` / `-or-later` ids.
fn gnu(name: &str) -> Option<String> {
    let (base, later) = match name.strip_suffix('+') {
        Some(b) => (b, true),
        None => (name, false),
    };
    let (family, version) = ["AGPL-", "LGPL-", "GPL-", "GFDL-NIV-", "GFDL-"]
        .iter()
        .find_map(|f| base.strip_prefix(f).map(|v| (&f[..f.len() - 1], v)))?;
    let version = match version {
        "1" | "1.0" => "1.0",
        "2" | "2.0" => "2.0",
        "2.1" => "2.1",
        "3" | "3.0" => "3.0",
        "1.1" | "1.2" | "1.3" => version,
        _ => return None,
    };
    let suffix = if later { "or-later" } else { "only" };
    Some(match family {
        "GFDL-NIV" => format!("GFDL-{version}-no-invariants-{suffix}"),
        f => format!("{f}-{version}-{suffix}"),
    })
}

/// `LicenseRef-` plus the name with characters SPDX ids cannot hold replaced (`+` → `-plus`).
pub fn license_ref(name: &str) -> String {
    let mut id = String::from("LicenseRef-");
    for c in name.trim().chars() {
        match c {
            c if c.is_ascii_alphanumeric() || c == '.' || c == '-' => id.push(c),
            '+' => id.push_str("-plus"),
            _ => id.push('-'),
        }
    }
    if id.len() == "LicenseRef-".len() {
        id.push_str("unnamed");
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(s: &str) -> (String, Vec<String>) {
        let mut refs = BTreeMap::new();
        let e = translate(s, &mut refs).unwrap();
        (e, refs.into_keys().collect())
    }

    #[test]
    fn debian_names_map_to_spdx() {
        assert_eq!(tr("GPL-2+").0, "GPL-2.0-or-later");
        assert_eq!(tr("GPL-2").0, "GPL-2.0-only");
        assert_eq!(tr("LGPL-2.1+").0, "LGPL-2.1-or-later");
        assert_eq!(tr("GPL-2.0+").0, "GPL-2.0-or-later");
        assert_eq!(tr("GFDL-NIV-1.3+").0, "GFDL-1.3-no-invariants-or-later");
        assert_eq!(tr("Expat").0, "MIT");
        assert_eq!(tr("BSD-3-clause").0, "BSD-3-Clause");
        assert_eq!(tr("zlib").0, "Zlib");
        assert_eq!(tr("Apache-2.0").0, "Apache-2.0");
        assert_eq!(tr("GPL-2 with Linux-syscall-note exception").0, "GPL-2.0-only WITH Linux-syscall-note");
    }

    #[test]
    fn expressions_and_refs() {
        assert_eq!(
            tr("GPL-1+ or Artistic"),
            ("GPL-1.0-or-later OR LicenseRef-Artistic".into(), vec!["LicenseRef-Artistic".into()])
        );
        assert_eq!(
            tr("GPL-2+ or AFL-2.1, and Expat and Tcl-BSDish").0,
            "(GPL-2.0-or-later OR AFL-2.1) AND (MIT AND LicenseRef-Tcl-BSDish)"
        );
        assert_eq!(tr("public-domain").0, "LicenseRef-public-domain");
        assert_eq!(tr("GPL-3+ with Bison exception").0, "LicenseRef-GPL-3-plus-with-Bison-exception");
        assert_eq!(tr("MIT/X11").0, "LicenseRef-MIT-X11");
        assert_eq!(tr("GPL").0, "LicenseRef-GPL");
    }

    #[test]
    fn copyright_file_to_expression() {
        let text = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nSource: x\n\nFiles: *\nCopyright: me\nLicense: GPL-3+\n\nFiles: a/*\nCopyright: you\nLicense: GPL-3+\n\nFiles: b/*\nLicense: BSD-3-clause or public-domain\n\nLicense: public-domain\n Text.\n\nLicense: GPL-3+\n On Debian systems ...\n";
        let l = from_copyright(text).unwrap();
        assert_eq!(l.expression, "GPL-3.0-or-later AND (BSD-3-Clause OR LicenseRef-public-domain)");
        assert_eq!(l.refs.get("LicenseRef-public-domain").map(String::as_str), Some("public-domain"));
        assert!(from_copyright("This is free-form.\n\nGPL.\n").is_none());
    }
}
