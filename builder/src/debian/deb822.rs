//! Just enough of Debian's control-file format (deb822) for dpkg's status file, apt's
//! Packages lists and machine-readable copyright files: paragraphs of `Field: value`.
//!
//! Only each field's first line is kept: continuation lines (long descriptions, licence texts,
//! conffile lists) are never needed here. Field names compare case-insensitively.
//!
//! Also the one deb822 file kiln writes for Debian itself: the image's apt sources
//! ([`debian_sources`]).
use crate::plan::Archive;

/// The keyring Debian's archives (security included) are signed with, from the image's
/// debian-archive-keyring (an apt dependency).
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Where the image's Debian sources live.
pub const DEBIAN_SOURCES: &str = "etc/apt/sources.list.d/debian.sources";

/// One paragraph: fields in order, each with the value on its first line (trimmed).
#[derive(Debug, Default, Clone)]
pub struct Paragraph<'a> {
    fields: Vec<(&'a str, &'a str)>,
}

impl<'a> Paragraph<'a> {
    /// The first value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// The paragraphs of `text`, separated by blank lines. `#` comment lines are skipped.
pub fn paragraphs(text: &str) -> impl Iterator<Item = Paragraph<'_>> {
    let mut lines = text.lines();
    std::iter::from_fn(move || {
        let mut para = Paragraph::default();
        for line in lines.by_ref() {
            if line.trim().is_empty() {
                if para.fields.is_empty() {
                    continue;
                }
                return Some(para);
            }
            if line.starts_with([' ', '\t', '#']) {
                continue;
            }
            if let Some((name, value)) = line.split_once(':') {
                para.fields.push((name.trim(), value.trim()));
            }
        }
        (!para.fields.is_empty()).then_some(std::mem::take(&mut para))
    })
}

/// The paragraphs of `text` as written (continuation lines included, no separating blank
/// line): for copying a Packages stanza exactly.
pub fn raw_paragraphs(text: &str) -> impl Iterator<Item = &str> {
    text.split("\n\n").map(|p| p.trim_matches('\n')).filter(|p| !p.trim().is_empty())
}

/// The value of a one-line field of a raw paragraph (field names compare exactly).
pub fn field<'a>(paragraph: &'a str, name: &str) -> Option<&'a str> {
    paragraph.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
}

/// The image's `/etc/apt/sources.list.d/debian.sources`: a stanza per URI in the order of
/// `archives` (the suite and its updates share one), each with `components` and
/// `Signed-By` Debian's keyring. Fails on a value that would break the format (white space or
/// control characters: a mirror from `KILN_MIRROR` is not checked like a recipe's).
pub fn debian_sources(archives: &[Archive], components: &[String]) -> anyhow::Result<String> {
    let words = archives.iter().flat_map(|a| [&a.uri, &a.suite]).chain(components);
    if let Some(bad) =
        words.into_iter().find(|w| w.is_empty() || w.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        anyhow::bail!("`{}` cannot be a URI, suite or component of the image's apt sources", bad.escape_debug());
    }
    let mut stanzas: Vec<(&str, Vec<&str>)> = Vec::new();
    for a in archives {
        match stanzas.iter_mut().find(|(uri, _)| *uri == a.uri) {
            Some((_, suites)) => suites.push(&a.suite),
            None => stanzas.push((&a.uri, vec![&a.suite])),
        }
    }
    let body = stanzas
        .iter()
        .map(|(uri, suites)| {
            format!(
                "Types: deb\nURIs: {uri}\nSuites: {}\nComponents: {}\nSigned-By: {DEBIAN_KEYRING}\n",
                suites.join(" "),
                components.join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok(format!("# The image's Debian archives, written by kiln from the recipe's [base].\n{body}"))
}

#[cfg(test)]
mod tests {
    use crate::plan::Archive;

    fn archive(uri: &str, suite: &str) -> Archive {
        Archive { uri: uri.into(), suite: suite.into() }
    }

    #[test]
    fn debian_sources_group_suites_by_uri_with_signed_by() {
        let all = [
            archive("http://deb.debian.org/debian", "trixie"),
            archive("http://deb.debian.org/debian", "trixie-updates"),
            archive("http://deb.debian.org/debian-security", "trixie-security"),
        ];
        let comps = ["main".to_string(), "non-free-firmware".to_string()];
        let text = super::debian_sources(&all, &comps).unwrap();
        assert_eq!(
            text,
            "# The image's Debian archives, written by kiln from the recipe's [base].\n\
             Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie trixie-updates\nComponents: main non-free-firmware\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
             Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: trixie-security\nComponents: main non-free-firmware\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
        // The file reads back with kiln's own parser: two stanzas, three suites.
        let paras: Vec<_> = super::paragraphs(&text).collect();
        assert_eq!(paras.len(), 2);
        assert_eq!(paras[1].get("Suites"), Some("trixie-security"));
        assert!(paras.iter().all(|p| p.get("Signed-By") == Some(super::DEBIAN_KEYRING)));

        // Only the suite: one stanza, one suite.
        let one = super::debian_sources(&all[..1], &comps[..1]).unwrap();
        assert_eq!(super::paragraphs(&one).count(), 1);
        assert!(one.contains("Suites: trixie\n") && !one.contains("-security"), "{one}");
    }

    #[test]
    fn debian_sources_refuse_values_that_break_the_format() {
        for bad in ["http://m/debian\nSigned-By: /tmp/evil", "http://m/debian x", ""] {
            let e = super::debian_sources(&[archive(bad, "trixie")], &["main".into()]).unwrap_err().to_string();
            assert!(e.contains("cannot be a URI, suite or component"), "{e}");
        }
    }

    #[test]
    fn splits_paragraphs_and_keeps_first_lines() {
        let text = "Package: a\nDescription: one\n more\n .\n\n\n# note\nPACKAGE: b\nVersion: 1:2.0\n";
        let paras: Vec<_> = super::paragraphs(text).collect();
        assert_eq!(paras.len(), 2);
        assert_eq!(paras[0].get("description"), Some("one"));
        assert_eq!(paras[1].get("Package"), Some("b"));
        assert_eq!(paras[1].get("Version"), Some("1:2.0"));
        assert!(!paras[1].has("Description"));
    }
}
