use super::*;

fn render_text(text: &str) -> Result<String, RecipeError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.conf.tera");
    std::fs::write(&path, text).unwrap();
    let mut ctx = tera::Context::new();
    ctx.insert("vars", &serde_json::json!({ "port": 8080, "name": "box" }));
    render(&path, &ctx, "overlays[0]").map(|b| String::from_utf8(b).unwrap())
}

fn err(text: &str) -> String {
    render_text(text).unwrap_err().to_string()
}

#[test]
fn renders_templates() {
    assert_eq!(render_text("{{ vars.name }}:{{ vars.port }}\n").unwrap(), "box:8080\n");
    let r = render_text("{% for i in range(end=3) %}{{ i }}{% endfor %}|{% for i in range(start=1, end=7, step_by=2) %}{{ i }}{% endfor %}");
    assert_eq!(r.unwrap(), "012|135");
}

#[test]
fn no_environment_and_no_other_files() {
    let e = err("{{ get_env(name=\"HOME\") }}");
    assert!(e.contains("`get_env` is not available"), "{e}");
    for (text, word) in [
        ("a\n{% include \"/etc/passwd\" %}", "include"),
        ("{% import \"x\" as m %}", "import"),
        ("{% extends \"x\" %}", "extends"),
        ("{% macro f() %}{{ self::f() }}{% endmacro %}", "macro"),
        ("{%- set_global s = 1 %}", "set_global"),
    ] {
        let e = err(text);
        assert!(e.contains(&format!("`{word}` is not available in kiln templates")), "{e}");
        assert!(e.contains("t.conf.tera:") && e.contains("key `overlays[0]`"), "{e}");
    }
    assert!(err("a\n{% include \"x\" %}").contains("t.conf.tera:2:1:"));
}

#[test]
fn work_and_output_are_bounded() {
    let e = err("{% for i in range(end=1000000) %}{% endfor %}");
    assert!(e.contains("range: more than 100000 elements"), "{e}");
    let e = err("{% for i in range(end=300) %}{% for j in range(end=400) %}{% endfor %}{% endfor %}");
    assert!(e.contains("range: more than 100000 elements"), "{e}");
    let e = err(&format!("{{% for i in range(end=50000) %}}{}{{% endfor %}}", "x".repeat(100)));
    assert!(e.contains("output larger than"), "{e}");
    let e = err("{{ \"x\" | indent(width=100000000, first=true) }}");
    assert!(e.contains("`width` is at most 256"), "{e}");
    let big = "a".repeat(4000);
    let e = err(&format!("{{{{ \"{big}\" | replace(from=\"a\", to=\"{big}\") }}}}"));
    assert!(e.contains("filter `replace`: result larger"), "{e}");
    let e = err(&format!("{}1{}", "{{ ".to_string() + &"(".repeat(40), ")".repeat(40) + " }}"));
    assert!(e.contains("nested more than 32 deep"), "{e}");
    let e = err(&"{% if true %}".repeat(40));
    assert!(e.contains("nested more than 32 deep"), "{e}");
}

#[test]
fn arithmetic_overflow_is_an_error() {
    let e = err("{{ 9223372036854775807 + 1 }}");
    assert!(e.contains("template error") && e.contains("out of bounds"), "{e}");
}

#[test]
fn only_regular_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("t.tera");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = render(&fifo, &tera::Context::new(), "overlays[0]").unwrap_err().to_string();
    assert!(e.contains("not a regular file (a named pipe)"), "{e}");
    let big = dir.path().join("big.tera");
    std::fs::write(&big, vec![b'x'; (MAX_SOURCE + 1) as usize]).unwrap();
    let e = render(&big, &tera::Context::new(), "overlays[0]").unwrap_err().to_string();
    assert!(e.contains("more than the limit"), "{e}");
}
