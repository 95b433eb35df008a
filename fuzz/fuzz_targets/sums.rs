//! `SHA256SUMS` as `kiln verify` reads it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(entries) = kiln::release::checksums::parse(text) {
            // A list read back must render and parse to itself.
            let again = kiln::release::checksums::parse(&kiln::release::checksums::render(&entries)).unwrap();
            assert_eq!(again.len(), entries.len());
        }
    }
});
