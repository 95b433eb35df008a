//! Recipe errors that point at a file, line, column and key.
use std::fmt;
use std::path::{Path, PathBuf};

/// A problem in a recipe file. Callers match on it to tell bad input (exit 2) from build failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RecipeError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted key path (`disk.size`, `checks[1].unit`), when one applies.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl RecipeError {
    /// Error at a byte offset of `text` (the contents of `file`).
    pub fn at(file: &Path, text: &str, offset: usize, key: Option<String>, message: impl Into<String>) -> Self {
        let (line, column) = line_col(text, offset);
        RecipeError { file: file.to_path_buf(), line, column, key, message: message.into() }
    }

    /// Error about a whole file (no better position known): points at line 1.
    pub fn file(file: &Path, key: Option<String>, message: impl Into<String>) -> Self {
        RecipeError { file: file.to_path_buf(), line: 1, column: 1, key, message: message.into() }
    }
}

/// Where a value was written: file, line, column and its key there. Merged values keep it, so
/// a check after merging (duplicate names, the default host name) points into the right layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
}

impl Origin {
    pub fn new(file: &Path, text: &str, offset: usize, key: String) -> Origin {
        let (line, column) = line_col(text, offset);
        Origin { file: file.to_path_buf(), line, column, key }
    }

    /// An error at this origin, about `key` (or the origin's own key).
    pub fn error(&self, key: Option<String>, message: impl Into<String>) -> RecipeError {
        RecipeError {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            key: Some(key.unwrap_or_else(|| self.key.clone())),
            message: message.into(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

/// Turn a serde path (`checks[1].$__serde_spanned_private_value.foo`) into a readable key path.
pub fn clean_key_path(path: &str) -> String {
    path.replace(".$__serde_spanned_private_value", "").replace("$__serde_spanned_private_value", "")
}

/// The key a toml/serde error is about: the path, plus the field name for unknown fields.
pub fn key_of(path: &str, message: &str) -> Option<String> {
    let mut key = clean_key_path(path);
    if key == "." {
        key.clear();
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(name) = rest.split('`').next() {
            let parent = key.rsplit_once('.').map(|(p, _)| p.to_string()).unwrap_or_default();
            // serde_path_to_error already appends the unknown field to the path.
            key = if key.ends_with(name) {
                key
            } else if parent.is_empty() {
                name.to_string()
            } else {
                format!("{parent}.{name}")
            };
        }
    }
    (!key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 9), (2, 4));
    }

    #[test]
    fn key_path_strips_spanned_marker() {
        assert_eq!(
            key_of("checks[1].$__serde_spanned_private_value.foo", "unknown field `foo`, expected `unit`").as_deref(),
            Some("checks[1].foo")
        );
        assert_eq!(key_of("disk.size", "invalid type").as_deref(), Some("disk.size"));
        assert_eq!(key_of(".", "missing field"), None);
    }
}
