//! Just enough of Debian's control-file format (deb822) for dpkg's status file, apt's
//! Packages lists and machine-readable copyright files: paragraphs of `Field: value`.
//!
//! Only each field's first line is kept: continuation lines (long descriptions, licence texts,
//! conffile lists) are never needed here. Field names compare case-insensitively.

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

#[cfg(test)]
mod tests {
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
