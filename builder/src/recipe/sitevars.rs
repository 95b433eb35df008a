//! Site variables: what a recipe's layers declare (`[site.vars.NAME]`), the typed values a
//! site file gives them, the image's list of them (`/usr/lib/kiln/site/vars`), and the check
//! of `.site` templates, which may use nothing but `{{ site.NAME }}` placeholders.
use super::error::{Origin, RecipeError};
use super::values::{Domain, Email, OneLine, SiteVarName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use toml::Spanned;

/// The kinds of value a site variable takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VarType {
    /// One line of text (no control characters, at most 1024 characters).
    String,
    /// A DNS domain name (RFC 1123).
    Domain,
    /// An e-mail address.
    Email,
    /// A TOML integer.
    Integer,
    /// A TOML boolean.
    Bool,
}

impl VarType {
    pub fn name(self) -> &'static str {
        match self {
            VarType::String => "string",
            VarType::Domain => "domain",
            VarType::Email => "email",
            VarType::Integer => "integer",
            VarType::Bool => "bool",
        }
    }

    /// The typed value of `v`, or what is wrong with it.
    pub fn value(self, v: &toml::Value) -> Result<SiteValue, String> {
        let text = |check: fn(&str) -> Result<(), String>| match v {
            toml::Value::String(s) => check(s).map(|()| SiteValue::Text(s.clone())),
            other => Err(format!("expected a {} (a quoted string), found {}", self.name(), other.type_str())),
        };
        match self {
            VarType::String => text(|s| OneLine::try_from(s).map(drop)),
            VarType::Domain => text(|s| Domain::try_from(s).map(drop)),
            VarType::Email => text(|s| Email::try_from(s).map(drop)),
            VarType::Integer => match v {
                toml::Value::Integer(i) => Ok(SiteValue::Integer(*i)),
                other => Err(format!("expected an integer (unquoted, e.g. 8080), found {}", other.type_str())),
            },
            VarType::Bool => match v {
                toml::Value::Boolean(b) => Ok(SiteValue::Bool(*b)),
                other => Err(format!("expected a bool (true or false, unquoted), found {}", other.type_str())),
            },
        }
    }
}

impl fmt::Display for VarType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A site variable's value, checked against its type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SiteValue {
    Bool(bool),
    Integer(i64),
    Text(String),
}

impl SiteValue {
    fn as_toml(&self) -> toml::Value {
        match self {
            SiteValue::Bool(b) => toml::Value::Boolean(*b),
            SiteValue::Integer(i) => toml::Value::Integer(*i),
            SiteValue::Text(s) => toml::Value::String(s.clone()),
        }
    }
}

/// As written into templates and `/usr/lib/kiln/site/vars`: `true`/`false`, decimal, the text.
impl fmt::Display for SiteValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SiteValue::Bool(b) => write!(f, "{b}"),
            SiteValue::Integer(i) => write!(f, "{i}"),
            SiteValue::Text(s) => f.write_str(s),
        }
    }
}

/// One declared site variable (as in the plan and the manifest's `site_vars`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteVar {
    pub name: SiteVarName,
    #[serde(rename = "type")]
    pub kind: VarType,
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<SiteValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<OneLine>,
}

impl SiteVar {
    /// Re-check a declaration read from elsewhere (a manifest): its default against its type.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(d) = &self.default {
            self.kind.value(&d.as_toml()).map_err(|e| format!("site variable `{}`: default: {e}", self.name))?;
            if self.required {
                return Err(format!("site variable `{}` is required and has a default", self.name));
            }
        }
        if self.name == "hostname" {
            return Err("`hostname` is not a site variable name (it is the site file's own key)".into());
        }
        Ok(())
    }
}

/// `[site]` of a recipe or layer as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteLayer {
    /// Keys are plain strings, so that serde's errors name them (`site.vars.domain.type`).
    pub vars: Option<BTreeMap<String, Spanned<SiteVarLayer>>>,
}

/// `[site.vars.NAME]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteVarLayer {
    #[serde(rename = "type")]
    pub kind: VarType,
    pub required: Option<bool>,
    pub default: Option<Spanned<toml::Value>>,
    pub description: Option<OneLine>,
}

/// The declarations of one file, each with where it was written.
pub fn declarations(site: SiteLayer, file: &Path, text: &str) -> Result<Vec<(SiteVar, Origin)>, RecipeError> {
    let mut out = Vec::new();
    for (name, decl) in site.vars.unwrap_or_default() {
        let key = format!("site.vars.{name}");
        let at = |offset: usize, key: &str, msg: String| RecipeError::at(file, text, offset, Some(key.into()), msg);
        let start = decl.span().start;
        let var_name = SiteVarName::try_from(name.as_str()).map_err(|m| at(start, &key, m))?;
        if var_name == "hostname" {
            let msg = "`hostname` is the site file's own key, not a variable: templates use `{{ site.hostname }}` without declaring it";
            return Err(at(start, &key, msg.into()));
        }
        let origin = Origin::new(file, text, start, key.clone());
        let SiteVarLayer { kind, required, default, description } = decl.into_inner();
        let default = match default {
            Some(d) => {
                let dkey = format!("{key}.default");
                let value = kind.value(d.get_ref()).map_err(|m| at(d.span().start, &dkey, m))?;
                if required == Some(true) {
                    let msg = "a variable with a default is optional: drop `required = true` or the default";
                    return Err(at(d.span().start, &dkey, msg.into()));
                }
                Some(value)
            }
            None => None,
        };
        let var = SiteVar { name: var_name, kind, required: required.unwrap_or(false), default, description };
        out.push((var, origin));
    }
    Ok(out)
}

/// The merged declarations, sorted by name: a variable declared twice must be declared identically.
pub fn merge(all: Vec<(SiteVar, Origin)>) -> Result<Vec<SiteVar>, RecipeError> {
    let mut seen: BTreeMap<String, (SiteVar, Origin)> = BTreeMap::new();
    for (var, origin) in all {
        match seen.get(var.name.as_str()) {
            Some((first, _)) if *first == var => {}
            Some((_, at)) => {
                return Err(origin.error(
                    None,
                    format!(
                        "site variable `{}` is declared differently here and at {at}: layers may declare a variable only identically",
                        var.name
                    ),
                ))
            }
            None => {
                seen.insert(var.name.to_string(), (var, origin));
            }
        }
    }
    Ok(seen.into_values().map(|(v, _)| v).collect())
}

/// `/usr/lib/kiln/site/vars`: one line per variable, `NAME<TAB>TYPE<TAB>required|optional<TAB>DEFAULT`.
pub fn vars_file(vars: &[SiteVar]) -> String {
    let mut out = String::new();
    for v in vars {
        let need = if v.required { "required" } else { "optional" };
        let default = v.default.as_ref().map(ToString::to_string).unwrap_or_default();
        out.push_str(&format!("{}\t{}\t{need}\t{default}\n", v.name, v.kind));
    }
    out
}

/// Check a `.site` template: only `{{ site.NAME }}` placeholders (spaces inside the braces
/// optional) naming a declared variable or `hostname`. Err: byte offset and message.
pub fn check_template(text: &str, vars: &[SiteVar]) -> Result<(), (usize, String)> {
    let only = "a .site template may hold only `{{ site.NAME }}` placeholders";
    let mut from = 0;
    while let Some(i) = text[from..].find(['{', '}']).map(|i| i + from) {
        let rest = &text[i..];
        if rest.starts_with("{%") || rest.starts_with("{#") {
            return Err((i, format!("`{}` opens a Tera tag or comment: {only} (rendered on the box)", &rest[..2])));
        }
        if !rest.starts_with("{{") {
            from = i + 1;
            continue;
        }
        let Some(end) = rest.find("}}") else {
            return Err((i, format!("`{{{{` is not closed by `}}}}`: {only}")));
        };
        let inner = rest[2..end].trim_matches(' ');
        let shown: String = rest[..end + 2].chars().take(80).flat_map(char::escape_debug).collect();
        let Some(name) = inner.strip_prefix("site.").filter(|n| SiteVarName::try_from(*n).is_ok()) else {
            return Err((i, format!("`{shown}` is not a site placeholder: {only}")));
        };
        if name != "hostname" && !vars.iter().any(|v| v.name == name) {
            let mut names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
            names.push("hostname");
            return Err((i, format!("`{shown}` names no declared site variable (known: {})", names.join(", "))));
        }
        from = i + end + 2;
    }
    Ok(())
}

/// Replace every `{{ site.NAME }}` of a checked template with `value(NAME)`; None when a
/// placeholder has no value. The box renders the same way (docs/site.md).
pub fn render(text: &str, value: impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        let end = rest[i..].find("}}")? + i;
        let name = rest[i + 2..end].trim_matches(' ').strip_prefix("site.")?;
        out.push_str(&rest[..i]);
        out.push_str(&value(name)?);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, kind: VarType, default: Option<SiteValue>) -> SiteVar {
        let required = default.is_none();
        SiteVar { name: name.try_into().unwrap(), kind, required, default, description: None }
    }

    #[test]
    fn vars_file_is_one_tab_separated_line_per_variable() {
        let vars = [
            var("domain", VarType::Domain, None),
            var("port", VarType::Integer, Some(SiteValue::Integer(8080))),
            var("tls", VarType::Bool, Some(SiteValue::Bool(true))),
        ];
        assert_eq!(
            vars_file(&vars),
            "domain\tdomain\trequired\t\nport\tinteger\toptional\t8080\ntls\tbool\toptional\ttrue\n"
        );
    }

    #[test]
    fn templates_take_only_site_placeholders() {
        let vars = [var("domain", VarType::Domain, None)];
        let ok = |t: &str| check_template(t, &vars).is_ok();
        assert!(ok("server_name {{ site.domain }} {{site.hostname}};\nmap { x }\n"));
        assert!(ok("{{  site.domain  }}") && ok("} {"));
        for bad in
            ["{{ other }}", "{% if x %}", "{# c #}", "{{ site.mail }}", "{{ site.domain | upper }}", "{{ site.domain"]
        {
            assert!(!ok(bad), "{bad}");
        }
        assert_eq!(check_template("ab\n{{ x }}", &vars).unwrap_err().0, 3);
    }

    #[test]
    fn render_replaces_placeholders_or_gives_up() {
        let v = |n: &str| (n == "domain").then(|| "example.org".to_string());
        assert_eq!(
            render("a {{ site.domain }} {{site.domain}}}\n", v).as_deref(),
            Some("a example.org example.org}\n")
        );
        assert_eq!(render("{{ site.mail }}", v), None);
    }

    #[test]
    fn typed_values() {
        let t = |k: VarType, v: toml::Value| k.value(&v);
        assert_eq!(t(VarType::Integer, 3.into()), Ok(SiteValue::Integer(3)));
        assert!(t(VarType::Integer, "3".into()).is_err());
        assert!(t(VarType::Bool, "yes".into()).is_err());
        assert!(t(VarType::Domain, "Ex ample".into()).is_err());
        assert!(t(VarType::Email, "a@b".into()).is_ok() && t(VarType::Email, "a@@b".into()).is_err());
        assert!(t(VarType::String, "a\tb".into()).is_err());
    }
}
