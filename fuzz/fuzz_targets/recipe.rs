//! `kiln check` on an untrusted recipe: load it (parse, validate, merge) and render the
//! templates of its overlays. Input: the recipe text, then optionally a NUL byte and the text
//! of a template `ov/t.tera` the recipe may name as an overlay (`overlays = ["ov"]`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        // libFuzzer's hook aborts on every panic. The template engine runs on a thread named
        // "template" whose panics kiln catches and reports as recipe errors (template.rs):
        // those are handled, not crashes. Any other panic still aborts.
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() != Some("template") {
                report(info);
            }
        }));
    },
    |data: &[u8]| {
    let dir = kiln_fuzz::scratch();
    let (recipe, template) = kiln_fuzz::split(data);
    let ov = dir.join("ov");
    std::fs::create_dir_all(&ov).unwrap();
    std::fs::write(ov.join("t.tera"), template).unwrap();
    let path = dir.join("recipe.toml");
    std::fs::write(&path, recipe).unwrap();
    if let Ok(r) = kiln::recipe::load(&path) {
        let _ = kiln::customize::overlay::render(&r);
    }
    }
);
