//! The image manifest (`*.manifest.json`) as `kiln verify` reads it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(m) = kiln::release::manifest::Manifest::from_json(text) {
            let _ = m.to_json();
        }
    }
});
