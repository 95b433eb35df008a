//! Allow-lists for recipe values that reach commands, file names and file contents.
//!
//! A recipe is untrusted input: CI builds shared layers as root. Each kind of value is a
//! newtype that can only be made by its check, so a bad value is refused while the file is
//! parsed (with file, line, column and key), and nothing downstream can receive one. The
//! types serialise as plain strings and dereference to `str`: plans and callers see strings.
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

macro_rules! value_type {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                $check(&s)?;
                Ok($name(s))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = String;
            fn try_from(s: &str) -> Result<Self, String> {
                $name::try_from(s.to_string())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<std::ffi::OsStr> for $name {
            fn as_ref(&self) -> &std::ffi::OsStr {
                self.0.as_ref()
            }
        }

        impl AsRef<std::path::Path> for $name {
            fn as_ref(&self) -> &std::path::Path {
                self.0.as_ref()
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

value_type!(
    /// A Debian package or suite name (Debian policy: `[a-z0-9][a-z0-9+.-]+`).
    DebName,
    check_deb_name
);
value_type!(
    /// An archive component (`main`, `non-free-firmware`, `pve-no-subscription`).
    ArchiveComponent,
    check_component
);
value_type!(
    /// An http:// or https:// URL: mirrors, repositories, artifacts.
    Url,
    check_url
);
value_type!(
    /// An image version: part of file names.
    Version,
    check_version
);
value_type!(
    /// A recipe name: part of file names and the default host name.
    RecipeName,
    check_recipe_name
);
value_type!(
    /// A host name (RFC 1123, and what Linux takes as a host name).
    Hostname,
    check_hostname
);
value_type!(
    /// A user or group name.
    UserName,
    check_user_name
);
value_type!(
    /// `user` or `user:group`.
    Owner,
    check_owner
);
value_type!(
    /// A zoneinfo name (`Europe/Berlin`, `Etc/UTC`): never a path.
    TimeZone,
    check_timezone
);
value_type!(
    /// `ll_CC.CHARSET` (optionally `@modifier`), or C, C.UTF-8, POSIX.
    Locale,
    check_locale
);
value_type!(
    /// One word of the kernel command line.
    KernelWord,
    check_kernel_word
);
value_type!(
    /// A systemd unit name with a known suffix.
    UnitName,
    check_unit_name
);
value_type!(
    /// A normalised absolute path in the image, not its root.
    ImagePath,
    check_image_path
);
value_type!(
    /// One package pattern of an apt pin (`vendor-*`).
    PinPattern,
    check_pin_pattern
);
value_type!(
    /// A name used as a file name (repositories, artifacts, first-boot actions).
    FileName,
    check_file_name
);

mod site;
pub use site::*;

/// The values as plain strings.
pub fn strings<T: AsRef<str>>(v: &[T]) -> Vec<String> {
    v.iter().map(|x| x.as_ref().to_string()).collect()
}

/// Longest URL accepted.
pub const MAX_URL: usize = 2048;

fn all(s: &str, ok: impl Fn(char) -> bool) -> bool {
    s.chars().all(ok)
}

fn check_deb_name(s: &str) -> Result<(), String> {
    let ok = s.len() >= 2
        && s.len() <= 128
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && all(s, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '.' | '-'));
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a Debian package or suite name: lower-case letters, digits, `+`, `.` and `-`, starting with a letter or digit, 2 to 128 characters",
            shown(s)
        )
    })
}

fn check_component(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && !s.contains("..")
        && all(s, |c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '_' | '-' | '/'));
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not an archive component: letters, digits, `+`, `.`, `_`, `-` and `/`, starting with a letter or digit, at most 64 characters",
            shown(s)
        )
    })
}

fn check_url(s: &str) -> Result<(), String> {
    let allowed = "an http:// or https:// URL without spaces or control characters, at most 2048 characters";
    let rest = s.strip_prefix("http://").or_else(|| s.strip_prefix("https://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or("")).unwrap_or("");
    let ok = rest.is_some()
        && s.len() <= MAX_URL
        && !host.is_empty()
        && !host.starts_with(['-', '@', ':'])
        && !s.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\'));
    ok.then_some(()).ok_or_else(|| format!("`{}` is not {allowed}", shown(s)))
}

fn check_version(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && all(s, |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '~' | '-'));
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a valid version: letters, digits, `.`, `_`, `+`, `~` and `-`, starting with a letter or digit, at most 64 characters",
            shown(s)
        )
    })
}

fn check_recipe_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && all(s, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a valid recipe name: use lower-case letters, digits, `.`, `_` and `-`, starting with a letter or digit",
            shown(s)
        )
    })
}

/// RFC 1123 labels; at most 64 characters in all, Linux's limit for a host name
/// (`HOST_NAME_MAX`: a longer /etc/hostname is refused by the kernel and systemd).
pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && all(l, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

fn check_hostname(s: &str) -> Result<(), String> {
    is_hostname(s).then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a valid host name (RFC 1123: labels of lower-case letters, digits and `-`, at most 63 characters each, not starting or ending with `-`; at most 64 characters in all)",
            shown(s)
        )
    })
}

fn is_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && all(s, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

fn check_user_name(s: &str) -> Result<(), String> {
    is_user_name(s).then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a valid user or group name (one name: lower-case letters, digits, `_` and `-`, starting with a letter or `_`, at most 32 characters)",
            shown(s)
        )
    })
}

fn check_owner(s: &str) -> Result<(), String> {
    let mut parts = s.split(':');
    let ok = match (parts.next(), parts.next(), parts.next()) {
        (Some(u), None, None) => is_user_name(u),
        (Some(u), Some(g), None) => is_user_name(u) && is_user_name(g),
        _ => false,
    };
    ok.then_some(()).ok_or_else(|| {
        format!("`{}` is not `user` or `user:group` (user and group names: lower-case letters, digits, `_` and `-`, starting with a letter or `_`, at most 32 characters)", shown(s))
    })
}

fn check_timezone(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split('/').collect();
    let ok = s.len() <= 64
        && parts.len() <= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 32
                && p.starts_with(|c: char| c.is_ascii_alphabetic())
                && all(p, |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-'))
        });
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a time zone name: `Area/City` such as `Europe/Berlin` or `Etc/UTC` (letters, digits, `_`, `+`, `-`; each part starting with a letter; never a path)",
            shown(s)
        )
    })
}

fn check_locale(s: &str) -> Result<(), String> {
    let shape = || {
        let (rest, modifier) = s.split_once('@').unwrap_or((s, ""));
        let (lang_country, charset) = rest.split_once('.').unwrap_or((rest, ""));
        let (lang, country) = lang_country.split_once('_')?;
        let ok = (2..=3).contains(&lang.len())
            && all(lang, |c| c.is_ascii_lowercase())
            && country.len() == 2
            && all(country, |c| c.is_ascii_uppercase())
            && charset.len() <= 16
            && all(charset, |c| c.is_ascii_alphanumeric() || c == '-')
            && modifier.len() <= 16
            && all(modifier, |c| c.is_ascii_lowercase());
        ok.then_some(())
    };
    let ok = matches!(s, "C" | "C.UTF-8" | "POSIX") || shape().is_some();
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a locale: `ll_CC.CHARSET` such as `de_DE.UTF-8` (optionally `@modifier`), or `C`, `C.UTF-8`, `POSIX`",
            shown(s)
        )
    })
}

fn check_kernel_word(s: &str) -> Result<(), String> {
    let ok = !s.is_empty() && s.len() <= 1024 && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not one kernel command-line word: no spaces, newlines or control characters (write one list entry per word), at most 1024 characters",
            shown(s)
        )
    })
}

/// Suffixes of unit names a recipe may name.
pub const UNIT_SUFFIXES: [&str; 9] =
    [".service", ".socket", ".target", ".mount", ".path", ".timer", ".device", ".automount", ".swap"];

pub fn is_unit_name(s: &str) -> bool {
    s.len() <= 255
        && all(s, |c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c))
        && UNIT_SUFFIXES.iter().any(|x| s.ends_with(x) && s.len() > x.len())
}

fn check_unit_name(s: &str) -> Result<(), String> {
    is_unit_name(s).then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a systemd unit name: letters, digits, `:`, `-`, `_`, `.`, `\\` and `@`, ending in .service, .socket, .target, .mount, .path, .timer, .device, .automount or .swap (e.g. `nginx.service`)",
            shown(s)
        )
    })
}

fn check_image_path(s: &str) -> Result<(), String> {
    let ok = s.len() <= 4096
        && s.starts_with('/')
        && s.len() > 1
        && !s.ends_with('/')
        && s[1..].split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && !s.chars().any(|c| c.is_control());
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not an absolute path in the image (starting with `/`, normalised: no `..`, `.`, `//` or trailing `/`, not the root itself)",
            shown(s)
        )
    })
}

fn check_pin_pattern(s: &str) -> Result<(), String> {
    let ok = !s.is_empty() && s.len() <= 256 && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not an apt package pattern: one pattern per entry, without spaces, newlines or control characters",
            shown(s)
        )
    })
}

fn check_file_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && all(s, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    ok.then_some(()).ok_or_else(|| {
        format!(
            "`{}` is not a valid name: use lower-case letters, digits and `-`, starting with a letter or digit, at most 64 characters",
            shown(s)
        )
    })
}

/// A value as shown in an error: control characters escaped, long values cut.
fn shown(s: &str) -> String {
    let escaped: String = s.chars().flat_map(char::escape_debug).collect();
    if escaped.chars().count() <= 80 {
        escaped
    } else {
        format!("{}…", escaped.chars().take(80).collect::<String>())
    }
}

#[cfg(test)]
#[path = "values_tests.rs"]
mod tests;
