//! The lock file (`RECIPE.lock`) as `kiln build --locked` reads it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(lock) = kiln::lock::Lock::from_toml(text, std::path::Path::new("fuzz.lock")) {
            // What kiln does with a lock it read: hash it and write it back.
            let _ = lock.hash();
            let _ = lock.to_toml();
        }
    }
});
