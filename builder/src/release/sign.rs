//! Keys and signatures in minisign's format (via the `minisign` crate): `kiln keygen` makes a
//! key pair, `kiln build --sign` signs `SHA256SUMS`, `kiln verify --key` checks the signature.
//! Debian's `minisign` tool reads the same files (`minisign -Vm SHA256SUMS -p kiln.pub`).
//!
//! The secret key is only ever held in memory: it is never copied into the image, the work
//! directory or the output directory. Its passphrase comes from `KILN_PASSPHRASE` or a prompt
//! on the terminal, never from the command line.
use anyhow::{bail, ensure, Context, Result};
use ct_codecs::{Base64, Decoder};
use minisign::{PublicKey, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};
use std::io::{Cursor, IsTerminal};
use std::path::{Path, PathBuf};

/// Environment variable holding the secret key's passphrase (for CI; prompts otherwise).
pub const PASSPHRASE_ENV: &str = "KILN_PASSPHRASE";
/// Suffix of signature files (`SHA256SUMS.minisig`).
pub const SIG_SUFFIX: &str = ".minisig";

/// Where a key pair lives: `<prefix>.key` (secret) and `<prefix>.pub` (public).
#[derive(Debug, Clone)]
pub struct KeyPaths {
    pub secret: PathBuf,
    pub public: PathBuf,
}

impl KeyPaths {
    /// `DIR/kiln.key` and `DIR/kiln.pub`.
    pub fn in_dir(dir: &Path) -> Self {
        Self::with_prefix(&dir.join("kiln"))
    }

    /// `PREFIX.key` and `PREFIX.pub`.
    pub fn with_prefix(prefix: &Path) -> Self {
        let with = |ext: &str| {
            let mut s = prefix.as_os_str().to_owned();
            s.push(ext);
            PathBuf::from(s)
        };
        KeyPaths { secret: with(".key"), public: with(".pub") }
    }
}

/// A minisign key id as minisign shows it: 16 upper-case hex digits.
pub fn key_id(keynum: &[u8]) -> String {
    let mut b = [0u8; 8];
    b.copy_from_slice(&keynum[..8.min(keynum.len())]);
    format!("{:016X}", u64::from_le_bytes(b))
}

/// Make a key pair and write it to `paths`. `passphrase` None writes an unencrypted secret key.
/// Existing files are kept unless `force`. Returns the key id.
pub fn keygen(paths: &KeyPaths, passphrase: Option<String>, force: bool) -> Result<String> {
    for p in [&paths.secret, &paths.public] {
        ensure!(force || !p.exists(), "{} exists; not overwriting a key (use --force to replace it)", p.display());
    }
    let encrypted = passphrase.is_some();
    let kp = match passphrase {
        Some(pw) => minisign::KeyPair::generate_encrypted_keypair(Some(pw)),
        None => minisign::KeyPair::generate_unencrypted_keypair(),
    }
    .context("generating a key pair")?;
    let comment =
        if encrypted { "minisign encrypted secret key" } else { "minisign secret key (unencrypted, made by kiln)" };
    let secret = kp.sk.to_box(Some(comment)).context("encoding the secret key")?.into_string();
    let public = kp.pk.to_box().context("encoding the public key")?.into_string();
    write_key(&paths.secret, secret.as_bytes(), 0o600, force)?;
    write_key(&paths.public, public.as_bytes(), 0o644, force)?;
    Ok(key_id(kp.pk.keynum()))
}

/// Write a key file atomically (mode set before the rename); an existing file is replaced only
/// with `force`.
fn write_key(path: &Path, data: &[u8], mode: u32, force: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |tmp: &Path| -> Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).open(tmp).context("opening the key's temporary file")?;
        f.set_permissions(std::fs::Permissions::from_mode(mode)).context("setting key file mode")?;
        f.write_all(data).context("writing key")?;
        f.sync_all().context("syncing key")
    };
    if force {
        crate::host::files::write_atomically(path, write)
    } else {
        crate::host::files::write_new_atomically(path, write)
    }
    .with_context(|| format!("writing {}", path.display()))
}

/// A passphrase from `KILN_PASSPHRASE`, else from a prompt on the terminal (asked twice when
/// `confirm`). Fails when neither is available.
pub fn passphrase(what: &str, confirm: bool) -> Result<String> {
    if let Some(pw) = std::env::var_os(PASSPHRASE_ENV) {
        let pw = pw.into_string().map_err(|_| anyhow::anyhow!("{PASSPHRASE_ENV} is not valid UTF-8"))?;
        ensure!(!pw.is_empty(), "{PASSPHRASE_ENV} is set but empty");
        return Ok(pw);
    }
    if !(std::io::stdin().is_terminal() || std::io::stderr().is_terminal()) {
        bail!("{what} needs a passphrase: set {PASSPHRASE_ENV} or run kiln on a terminal");
    }
    let pw = rpassword::prompt_password(format!("Passphrase for {what}: "))
        .context("reading the passphrase from the terminal")?;
    ensure!(!pw.is_empty(), "empty passphrase (use --unencrypted for a key without one)");
    if confirm {
        let again =
            rpassword::prompt_password("Passphrase (again): ").context("reading the passphrase from the terminal")?;
        ensure!(pw == again, "the passphrases differ");
    }
    Ok(pw)
}

/// A secret key ready to sign, with its public half. Debug output never shows the key.
#[derive(Clone)]
pub struct Signer {
    sk: SecretKey,
    pk: PublicKey,
    /// Where the key was read from (for messages).
    pub path: PathBuf,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({}, key id {})", self.path.display(), self.key_id())
    }
}

/// Length of a decoded secret key line: algorithms (6), KDF salt and limits (48), key id (8),
/// Ed25519 secret and public key (64), checksum (32).
const UNENCRYPTED_KEY_BYTES: usize = 158;

impl Signer {
    /// Read a secret key file; an encrypted key is decrypted with [`passphrase`].
    pub fn load(path: &Path) -> Result<Signer> {
        Self::load_with(path, || passphrase(&format!("the secret key {}", path.display()), false))
    }

    /// Read a secret key file; `get_passphrase` is called only for an encrypted key.
    pub fn load_with(path: &Path, get_passphrase: impl FnOnce() -> Result<String>) -> Result<Signer> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading secret key {}", path.display()))?;
        let encoded = text.lines().nth(1).map(str::trim).unwrap_or("");
        let bytes = Base64::decode_to_vec(encoded, None).unwrap_or_default();
        let raw = SecretKey::from_bytes(&bytes).ok();
        let Some(raw) = raw else {
            bail!("{} is not a minisign secret key (expected a comment line and a base64 key line)", path.display());
        };
        let boxed = SecretKeyBox::from_string(&text).context("reading secret key")?;
        let sk = if raw.is_encrypted() {
            let pw = get_passphrase()?;
            match boxed.into_secret_key(Some(pw)) {
                Ok(sk) => sk,
                Err(e) if matches!(e.kind(), minisign::ErrorKind::Verify) => {
                    bail!("wrong passphrase for the secret key {}", path.display())
                }
                Err(e) => bail!("decrypting the secret key {}: {e}", path.display()),
            }
        } else {
            match boxed.into_unencrypted_secret_key() {
                Ok(sk) => sk,
                // minisign (C, up to 0.11 as in Debian 12) writes keys made with -W (no password)
                // without a checksum: its 32 bytes at the end are zero. There is nothing to check.
                Err(_)
                    if bytes.len() == UNENCRYPTED_KEY_BYTES
                        && bytes[UNENCRYPTED_KEY_BYTES - 32..].iter().all(|&b| b == 0) =>
                {
                    raw
                }
                Err(e) => bail!("reading the secret key {}: {e}", path.display()),
            }
        };
        let pk = PublicKey::from_secret_key(&sk)
            .map_err(|e| anyhow::anyhow!("deriving the public key of {}: {e}", path.display()))?;
        Ok(Signer { sk, pk, path: path.to_path_buf() })
    }

    pub fn key_id(&self) -> String {
        key_id(self.pk.keynum())
    }

    /// The public key as the second line of a `.pub` file shows it (base64).
    pub fn public_key(&self) -> String {
        self.pk.to_base64()
    }

    /// The `.minisig` text for `data`. The trusted comment is signed too; pass only
    /// deterministic facts (no wall-clock time).
    pub fn sign(&self, data: &[u8], trusted_comment: &str) -> Result<String> {
        let untrusted = format!("signature from kiln secret key {}", self.key_id());
        let sig = minisign::sign(Some(&self.pk), &self.sk, Cursor::new(data), Some(trusted_comment), Some(&untrusted))
            .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
        Ok(sig.into_string())
    }
}

/// Read a public key file (`kiln.pub`, or one made by `minisign -G`).
pub fn load_public_key(path: &Path) -> Result<PublicKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading public key {}", path.display()))?;
    parse_public_key(&text).map_err(|e| anyhow::anyhow!("{} is not a minisign public key: {e}", path.display()))
}

/// Parse the text of a public key file (what [`load_public_key`] does after reading it; the
/// fuzz target `minisign` calls it on untrusted bytes).
pub fn parse_public_key(text: &str) -> Result<PublicKey, minisign::PError> {
    PublicKeyBox::from_string(text).and_then(PublicKey::from_box)
}

/// Why a signature was not accepted (callers word each case differently).
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("not a minisign signature ({0})")]
    Malformed(String),
    #[error("made by key id {signed_by}, not by the given public key (key id {given})")]
    OtherKey { signed_by: String, given: String },
    #[error("does not match the signed data ({0})")]
    Mismatch(String),
}

/// Length of an Ed25519 signature, the `.minisig`'s last line once decoded.
const GLOBAL_SIG_LEN: usize = 64;

/// Decoded length of the signature of the trusted comment (the fourth line, read as
/// `SignatureBox::from_string` reads it). minisign 0.10 indexes it without checking its length
/// and panics on a shorter one once the data's signature has passed (found by scripts/fuzz).
fn comment_signature_len(text: &str) -> Option<usize> {
    let line = text.lines().nth(3)?;
    Base64::decode_to_vec(line.trim().as_bytes(), None).ok().map(|v| v.len())
}

/// Check a `.minisig` text against `data`; returns the trusted comment.
pub fn verify(pk: &PublicKey, signature: &str, data: &[u8]) -> Result<String, SignatureError> {
    let sig = SignatureBox::from_string(signature).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    if comment_signature_len(signature) != Some(GLOBAL_SIG_LEN) {
        let msg = format!("the signature of the trusted comment is not {GLOBAL_SIG_LEN} bytes");
        return Err(SignatureError::Malformed(msg));
    }
    let (signed_by, given) = (key_id(sig.keynum()), key_id(pk.keynum()));
    if signed_by != given {
        return Err(SignatureError::OtherKey { signed_by, given });
    }
    minisign::verify(pk, &sig, Cursor::new(data), true, false, false)
        .map_err(|e| SignatureError::Mismatch(e.to_string()))?;
    sig.trusted_comment().map_err(|e| SignatureError::Malformed(format!("unreadable trusted comment: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unencrypted_round_trip_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let paths = KeyPaths::in_dir(dir.path());
        let id = keygen(&paths, None, false).unwrap();
        assert!(keygen(&paths, None, false).unwrap_err().to_string().contains("not overwriting"));
        let signer = Signer::load(&paths.secret).unwrap();
        assert_eq!(signer.key_id(), id);
        let sig = signer.sign(b"data\n", "timestamp:1735689600\tfile:SHA256SUMS").unwrap();
        let pk = load_public_key(&paths.public).unwrap();
        assert_eq!(verify(&pk, &sig, b"data\n").unwrap(), "timestamp:1735689600\tfile:SHA256SUMS");
        assert!(verify(&pk, &sig, b"datA\n").unwrap_err().to_string().contains("does not match"));
        let other = KeyPaths::with_prefix(&dir.path().join("other"));
        keygen(&other, None, false).unwrap();
        let err = verify(&load_public_key(&other.public).unwrap(), &sig, b"data\n").unwrap_err().to_string();
        assert!(err.contains(&format!("made by key id {id}")), "{err}");
    }

    #[test]
    fn encrypted_key_needs_the_right_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let paths = KeyPaths::in_dir(dir.path());
        keygen(&paths, Some("correct horse".into()), false).unwrap();
        let text = std::fs::read_to_string(&paths.secret).unwrap();
        assert!(text.starts_with("untrusted comment: minisign encrypted secret key\n"), "{text}");
        let err = Signer::load_with(&paths.secret, || Ok("wrong".into())).unwrap_err().to_string();
        assert!(err.contains("wrong passphrase for the secret key"), "{err}");
        let err = Signer::load_with(&paths.secret, || anyhow::bail!("no passphrase here")).unwrap_err().to_string();
        assert!(err.contains("no passphrase here"), "{err}");
        let signer = Signer::load_with(&paths.secret, || Ok("correct horse".into())).unwrap();
        let sig = signer.sign(b"x", "t").unwrap();
        assert_eq!(verify(&load_public_key(&paths.public).unwrap(), &sig, b"x").unwrap(), "t");
    }

    #[test]
    fn garbage_keys_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        for text in ["", "one line", "untrusted comment: x\nnot base64!\n", "untrusted comment: x\nRWQ=\n"] {
            std::fs::write(&f, text).unwrap();
            assert!(Signer::load_with(&f, || Ok("x".into())).is_err());
            assert!(load_public_key(&f).is_err());
        }
        let pk = {
            let paths = KeyPaths::in_dir(dir.path());
            keygen(&paths, None, false).unwrap();
            load_public_key(&paths.public).unwrap()
        };
        for sig in ["", "untrusted comment: a\n", "untrusted comment: a\nRWQ\ntrusted comment: b\nxyz\n"] {
            assert!(verify(&pk, sig, b"x").is_err());
        }
    }

    #[test]
    fn short_comment_signature_is_malformed_not_a_panic() {
        // A good signature whose last line (the trusted comment's signature) is cut short:
        // minisign 0.10 panicked on it (fuzz target `minisign`).
        let dir = tempfile::tempdir().unwrap();
        let paths = KeyPaths::in_dir(dir.path());
        keygen(&paths, None, false).unwrap();
        let pk = load_public_key(&paths.public).unwrap();
        let sig = Signer::load(&paths.secret).unwrap().sign(b"data\n", "t").unwrap();
        let lines: Vec<&str> = sig.lines().collect();
        assert_eq!(lines.len(), 4, "{sig}");
        for last in [&lines[3][..40], "", "AAAA"] {
            let cut = format!("{}\n{}\n{}\n{last}\n", lines[0], lines[1], lines[2]);
            let err = verify(&pk, &cut, b"data\n").unwrap_err();
            assert!(matches!(err, SignatureError::Malformed(_)), "{err}");
        }
        assert_eq!(verify(&pk, &sig, b"data\n").unwrap(), "t");
    }

    #[test]
    fn secret_key_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = KeyPaths::with_prefix(&dir.path().join("k"));
        keygen(&paths, None, false).unwrap();
        assert_eq!(std::fs::metadata(&paths.secret).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(paths.public.ends_with("k.pub"));
    }

    #[test]
    fn debug_hides_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let paths = KeyPaths::in_dir(dir.path());
        keygen(&paths, None, false).unwrap();
        let signer = Signer::load(&paths.secret).unwrap();
        let shown = format!("{signer:?}");
        assert!(shown.starts_with("Signer(") && shown.contains(&signer.key_id()), "{shown}");
        assert!(shown.len() < 200, "{shown}");
    }
}
