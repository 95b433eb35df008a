//! `kiln site check` (and `kiln boot/test/flash --site`) on an untrusted site file: load it
//! (TOML, every value through its allow-list type), check it against declared site variables,
//! and check and render a `.site` template against them. Input: the site file, then optionally
//! a NUL byte and the text of a `.site` template.
#![no_main]
use kiln::recipe::sitevars::{self, SiteVar};
use libfuzzer_sys::fuzz_target;

/// One variable of every type, required and optional, with and without defaults.
const DECLARED: &str = r#"[
  {"name": "domain", "type": "domain", "required": true},
  {"name": "admin_email", "type": "email", "required": false, "default": "admin@example.org"},
  {"name": "http_port", "type": "integer", "required": false, "default": 443},
  {"name": "public", "type": "bool", "required": false},
  {"name": "organisation", "type": "string", "required": false, "default": "Gemeinde"}
]"#;

fuzz_target!(|data: &[u8]| {
    let declared: Vec<SiteVar> = serde_json::from_str(DECLARED).unwrap();
    let dir = kiln_fuzz::scratch();
    let (site, template) = kiln_fuzz::split(data);
    let path = dir.join("site.toml");
    std::fs::write(&path, site).unwrap();
    if let Ok(s) = kiln::recipe::site::load(&path) {
        let _ = s.check(&declared);
    }
    if let Ok(t) = std::str::from_utf8(template) {
        if sitevars::check_template(t, &declared).is_ok() {
            let _ = sitevars::render(t, |name| Some(format!("<{name}>")));
        }
    }
});
