//! minisign files as `kiln verify --key` reads them: the input is parsed as a public key
//! (`kiln.pub`) and checked as the signature (`SHA256SUMS.minisig`) of the seed SHA256SUMS
//! under the seed key, so mutated seeds reach the signature check itself.
#![no_main]
use libfuzzer_sys::fuzz_target;

const KEY: &str = include_str!("../seeds/minisign/fuzz.pub");
const SIGNED: &[u8] = include_bytes!("../seeds/sums/SHA256SUMS");

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = kiln::release::sign::parse_public_key(&text);
    let pk = kiln::release::sign::parse_public_key(KEY).unwrap();
    let _ = kiln::release::sign::verify(&pk, &text, SIGNED);
});
