//! SHA-256 checksums: the `SHA256SUMS` file (as `sha256sum` prints it and `sha256sum -c`
//! reads it) and the hashing wrappers that compute digests while data is written or read.
use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::path::Path;

/// Name of the checksum file in an output directory.
pub const SUMS_FILE: &str = "SHA256SUMS";

/// One line of a `SHA256SUMS` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Plain file name (no directory), relative to the checksum file.
    pub file: String,
}

/// `SHA256SUMS` text: `<hex>  <name>` per line, as `sha256sum` prints it.
pub fn render(entries: &[Entry]) -> String {
    entries.iter().map(|e| format!("{}  {}\n", e.sha256, e.file)).collect()
}

/// Parse `SHA256SUMS` text. Names must be plain file names: a checksum file never points
/// outside its own directory. Errors give the line number.
pub fn parse(text: &str) -> Result<Vec<Entry>> {
    let mut entries: Vec<Entry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.is_empty() {
            continue;
        }
        let Some((hash, rest)) = line.split_once(' ') else { bail!("line {n} is not `<sha256>  <file>`") };
        // sha256sum writes "  name" (text mode) or " *name" (binary mode).
        let file = rest
            .strip_prefix(' ')
            .or_else(|| rest.strip_prefix('*'))
            .with_context(|| format!("line {n} is not `<sha256>  <file>`"))?;
        ensure!(is_hex64(hash), "line {n}: `{hash}` is not a SHA-256 in hex");
        ensure!(is_plain_name(file), "line {n}: `{file}` is not a plain file name");
        ensure!(!entries.iter().any(|e| e.file == file), "line {n}: `{file}` is listed twice");
        entries.push(Entry { sha256: hash.to_ascii_lowercase(), file: file.to_string() });
    }
    Ok(entries)
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A name without directories, control characters or backslashes (which sha256sum would escape).
pub fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\']) && !s.chars().any(char::is_control)
}

/// SHA-256 (hex) and length of a file, read once.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (mut hasher, mut len) = (Sha256::new(), 0u64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), len))
}

/// A writer that hashes and counts everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), len: 0 }
    }

    /// The inner writer, the hex SHA-256 and the byte count of what was written.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new(), len: 0 }
    }

    /// The hex SHA-256 and the byte count of what was read so far.
    pub fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_matches_sha256sum_and_parses_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.img"), b"hello\n").unwrap();
        let (sha, len) = hash_file(&dir.path().join("a.img")).unwrap();
        assert_eq!(len, 6);
        let text = render(&[Entry { sha256: sha, file: "a.img".into() }]);
        let out = crate::host::cmd::Cmd::new("sha256sum").arg("a.img").current_dir(dir.path()).output().unwrap();
        assert_eq!(text, out);
        std::fs::write(dir.path().join(SUMS_FILE), &text).unwrap();
        // `output` fails unless sha256sum -c exits 0.
        crate::host::cmd::Cmd::new("sha256sum")
            .args(["-c", SUMS_FILE])
            .current_dir(dir.path())
            .output()
            .expect("sha256sum -c accepts SHA256SUMS");
        assert_eq!(parse(&text).unwrap()[0].file, "a.img");
    }

    #[test]
    fn rejects_paths_and_bad_lines() {
        let h = "0".repeat(64);
        assert!(parse(&format!("{h}  ../etc/passwd\n")).unwrap_err().to_string().contains("line 1"));
        assert!(parse(&format!("{h}  a\n{h}  a\n")).unwrap_err().to_string().contains("twice"));
        assert!(parse("abc  a\n").is_err());
        assert_eq!(parse(&format!("{h} *b\n")).unwrap()[0].file, "b");
    }
}
