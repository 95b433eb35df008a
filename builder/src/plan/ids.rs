//! Deterministic identifiers: every GUID, UUID and volume id in an image is derived from a seed
//! (the plan's hash) and a purpose label, never drawn at random.
use sha2::{Digest, Sha256};
use uuid::Uuid;

fn digest(seed: &str, purpose: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"kiln-id-v1\0");
    h.update(seed.as_bytes());
    h.update(b"\0");
    h.update(purpose.as_bytes());
    h.finalize().into()
}

/// A UUID (RFC 9562 version 8, "custom") derived from `seed` and `purpose`.
pub fn uuid(seed: &str, purpose: &str) -> Uuid {
    let d = digest(seed, purpose);
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid()
}

/// A 32-bit id (FAT volume serial) derived from `seed` and `purpose`.
pub fn u32(seed: &str, purpose: &str) -> u32 {
    let d = digest(seed, purpose);
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

#[cfg(test)]
mod tests {
    #[test]
    fn stable_and_distinct() {
        let a = super::uuid("seed", "root");
        assert_eq!(a, super::uuid("seed", "root"));
        assert_ne!(a, super::uuid("seed", "esp"));
        assert_ne!(a, super::uuid("other", "root"));
        assert_eq!(a.get_version_num(), 8);
    }
}
