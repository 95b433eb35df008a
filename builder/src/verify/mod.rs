//! `kiln verify IMAGE [--key PUB]`: the signature of `SHA256SUMS`, the checksum of every file
//! it lists, and the image's GPT and partitions against the manifest. Works on `.img` and on
//! `.img.zst` (decompressed as a stream, never to a temporary file). Every problem is reported
//! with the file it concerns (and, inside the image, the partition).
pub mod device;
pub mod scan;
use crate::disk::Layout;
use crate::release::checksums::{self, Entry, HashingReader, SUMS_FILE};
use crate::release::export;
use crate::release::manifest::Manifest;
use crate::release::sign;
use anyhow::{bail, Context, Result};
use minisign::PublicKey;
use scan::Range;
use serde::Serialize;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Fail,
    /// Something not checked, said plainly (no key given, a listed file absent).
    Note,
}

/// One finding: the file (or `file: partition N (label)`) and what was found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub status: Status,
    pub subject: String,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// Whether a public key was given and the signature was checked with it.
    pub signature_checked: bool,
}

impl Report {
    pub(super) fn push(&mut self, status: Status, subject: impl Into<String>, detail: impl Into<String>) {
        self.findings.push(Finding { status, subject: subject.into(), detail: detail.into() });
    }

    pub fn passed(&self) -> bool {
        !self.findings.iter().any(|f| f.status == Status::Fail)
    }

    pub(super) fn fail_count(&self) -> usize {
        self.findings.iter().filter(|f| f.status == Status::Fail).count()
    }

    /// The subjects that failed, in order, without repeats.
    pub fn failed(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for f in self.findings.iter().filter(|f| f.status == Status::Fail) {
            if !out.contains(&f.subject.as_str()) {
                out.push(&f.subject);
            }
        }
        out
    }
}

/// Verify `image` (`.img` or `.img.zst`) and the files beside it. `Err` only for problems that
/// stop verification from starting (no such image, unreadable public key).
pub fn verify(image: &Path, key: Option<&Path>) -> Result<Report> {
    let name = image
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable file name", image.display()))?
        .to_string();
    let compressed = name.ends_with(".img.zst");
    if !compressed && !name.ends_with(".img") {
        bail!("kiln verify reads raw (.img) and zstd-compressed (.img.zst) images, not {name}");
    }
    if !image.is_file() {
        bail!("{} not found", image.display());
    }
    let dir = image.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let mut r = Report::default();
    let Some((entries, manifest)) = check_release(&mut r, &dir, &name, key)? else { return Ok(r) };
    let image_entry = entries.iter().find(|e| e.file == name).cloned();
    check_image(&mut r, image, &name, compressed, image_entry.as_ref(), manifest.as_ref());
    Ok(r)
}

/// The files beside the image `name` in `dir`: the signature of `SHA256SUMS` (with `key`), the
/// manifest and every other listed file but the image. None when `SHA256SUMS` is unusable.
pub(super) fn check_release(
    r: &mut Report,
    dir: &Path,
    name: &str,
    key: Option<&Path>,
) -> Result<Option<(Vec<Entry>, Option<Manifest>)>> {
    let pk = key.map(sign::load_public_key).transpose()?;
    let sums_path = dir.join(SUMS_FILE);
    let sums_text = match std::fs::read(&sums_path) {
        Ok(t) => t,
        Err(e) => {
            r.push(Status::Fail, SUMS_FILE, format!("cannot be read beside the image ({e})"));
            return Ok(None);
        }
    };
    check_signature(r, pk.as_ref(), dir, &sums_text);
    let entries = match std::str::from_utf8(&sums_text).map_err(anyhow::Error::from).and_then(checksums::parse) {
        Ok(e) => e,
        Err(e) => {
            r.push(Status::Fail, SUMS_FILE, format!("unreadable: {e:#}"));
            return Ok(None);
        }
    };
    let stem = export::stem(name).to_string();
    let manifest_name = export::manifest_name(&stem);
    let manifest = check_manifest(r, dir, &entries, &manifest_name);
    if !entries.iter().any(|e| e.file == name) {
        r.push(Status::Fail, name, format!("not listed in {SUMS_FILE}"));
    }
    check_listed(r, dir, &entries, &[name, &manifest_name]);
    Ok(Some((entries, manifest)))
}

/// The signature of `SHA256SUMS` with the public key `pk`, or a note that it was not checked.
fn check_signature(r: &mut Report, pk: Option<&PublicKey>, dir: &Path, sums_text: &[u8]) {
    let sig_name = format!("{SUMS_FILE}{}", sign::SIG_SUFFIX);
    match pk {
        Some(pk) => {
            r.signature_checked = true;
            match std::fs::read(dir.join(&sig_name)) {
                Err(e) => {
                    r.push(Status::Fail, &sig_name, format!("cannot be read ({e}): the checksums are not signed"))
                }
                Ok(sig) => match sign::verify(pk, &String::from_utf8_lossy(&sig), sums_text) {
                    Ok(comment) => r.push(
                        Status::Ok,
                        &sig_name,
                        format!(
                            "good signature of {SUMS_FILE} by key id {} (trusted comment: {comment})",
                            sign::key_id(pk.keynum())
                        ),
                    ),
                    Err(e @ sign::SignatureError::Mismatch(_)) => r.push(
                        Status::Fail,
                        &sig_name,
                        format!("signature of {SUMS_FILE} {e}: {SUMS_FILE} or {sig_name} was altered"),
                    ),
                    Err(e @ sign::SignatureError::OtherKey { .. }) => {
                        r.push(Status::Fail, &sig_name, format!("signature of {SUMS_FILE} was {e}"))
                    }
                    Err(e @ sign::SignatureError::Malformed(_)) => r.push(
                        Status::Fail,
                        &sig_name,
                        format!("{e}: it was altered or is not {SUMS_FILE}'s signature"),
                    ),
                },
            }
        }
        None => r.push(
            Status::Note,
            &sig_name,
            "signature NOT checked (no --key given): the checksums prove the files are intact, not who made them",
        ),
    }
}

/// The checksums of the files listed in `SHA256SUMS` other than those in `skip` (checked on their own).
fn check_listed(r: &mut Report, dir: &Path, entries: &[Entry], skip: &[&str]) {
    for e in entries.iter().filter(|e| !skip.contains(&e.file.as_str())) {
        let path = dir.join(&e.file);
        if !path.exists() {
            r.push(Status::Note, &e.file, "listed but not present: skipped");
            continue;
        }
        match checksums::hash_file(&path) {
            Ok((sha, _)) => check_sum(r, e, &sha),
            Err(err) => r.push(Status::Fail, &e.file, format!("{err:#}")),
        }
    }
}

fn check_sum(r: &mut Report, e: &Entry, actual: &str) {
    if actual == e.sha256 {
        r.push(Status::Ok, &e.file, "checksum matches");
    } else {
        r.push(
            Status::Fail,
            &e.file,
            format!("checksum mismatch: SHA256SUMS says {}, the file has {actual}", e.sha256),
        );
    }
}

/// Check the manifest's checksum and read it; None when it cannot be trusted.
fn check_manifest(r: &mut Report, dir: &Path, entries: &[Entry], name: &str) -> Option<Manifest> {
    let Some(entry) = entries.iter().find(|e| e.file == name) else {
        r.push(Status::Fail, name, format!("not listed in {SUMS_FILE}: the image cannot be checked part by part"));
        return None;
    };
    let text = match std::fs::read(dir.join(name)) {
        Ok(t) => t,
        Err(e) => {
            r.push(Status::Fail, name, format!("cannot be read ({e})"));
            return None;
        }
    };
    let sha = crate::host::files::sha256_hex(&text);
    check_sum(r, entry, &sha);
    if sha != entry.sha256 {
        return None;
    }
    match std::str::from_utf8(&text).map_err(anyhow::Error::from).and_then(Manifest::from_json) {
        Ok(m) => Some(m),
        Err(e) => {
            r.push(Status::Fail, name, format!("{e:#}"));
            None
        }
    }
}

/// One pass over the image: its checksum, then GPT and partitions against the manifest.
fn check_image(
    r: &mut Report,
    image: &Path,
    name: &str,
    compressed: bool,
    entry: Option<&Entry>,
    manifest: Option<&Manifest>,
) {
    let ranges: Vec<Range> = manifest
        .map(|m| m.partitions.iter().map(|p| Range { offset: p.placed.offset, size: p.placed.size }).collect())
        .unwrap_or_default();
    let (scan, file_sha) = match scan_file(image, compressed, &ranges) {
        Ok(v) => v,
        Err(e) => {
            r.push(Status::Fail, name, format!("{e:#}"));
            // Still say whether the file matches its checksum.
            if let (Some(entry), Ok((sha, _))) = (entry, checksums::hash_file(image)) {
                check_sum(r, entry, &sha);
            }
            return;
        }
    };
    if let Some(entry) = entry {
        check_sum(r, entry, &file_sha);
    }
    let Some(m) = manifest else {
        r.push(Status::Note, name, "not compared with the manifest (no trusted manifest)");
        return;
    };
    let fails_before = r.fail_count();
    let fail = |r: &mut Report, subject: String, detail: String| r.push(Status::Fail, subject, detail);
    if scan.size != m.image.size {
        fail(r, name.to_string(), format!("image is {} bytes, the manifest says {}", scan.size, m.image.size));
    }
    check_gpt(r, name, &scan.layout, m);
    for (want, got) in m.partitions.iter().zip(&scan.ranges) {
        let subject = format!("{name}: partition {} ({})", want.placed.number, want.placed.label);
        match got {
            None => fail(r, subject, "the image ends inside this partition".into()),
            Some(sha) if *sha != want.sha256 => {
                fail(r, subject, format!("contents differ from the manifest (sha256 {sha}, expected {})", want.sha256))
            }
            Some(_) => r.push(Status::Ok, subject, "sha256 matches the manifest"),
        }
    }
    let found_cause = r.fail_count() > fails_before;
    if scan.sha256 != m.image.sha256 && !found_cause {
        fail(
            r,
            name.to_string(),
            "image differs from the manifest outside the partitions (GPT or the gaps between partitions)".into(),
        );
    } else if scan.sha256 == m.image.sha256 {
        r.push(
            Status::Ok,
            name,
            format!("image ({} bytes) matches the manifest: GPT and {} partitions", scan.size, m.partitions.len()),
        );
    }
}

/// The partition table (GPT) against the manifest: disk GUID, partition count and entries.
pub(super) fn check_gpt(r: &mut Report, name: &str, layout: &std::result::Result<Layout, String>, m: &Manifest) {
    let fail = |r: &mut Report, subject: String, detail: String| r.push(Status::Fail, subject, detail);
    match layout {
        Err(e) => fail(r, name.to_string(), format!("partition table (GPT) unreadable: {e}")),
        Ok(layout) => {
            if layout.disk_guid != m.image.disk_guid {
                fail(
                    r,
                    name.to_string(),
                    format!("GPT disk GUID {} differs from the manifest's {}", layout.disk_guid, m.image.disk_guid),
                );
            }
            if layout.partitions.len() != m.partitions.len() {
                fail(
                    r,
                    name.to_string(),
                    format!("GPT has {} partitions, the manifest {}", layout.partitions.len(), m.partitions.len()),
                );
            }
            for (want, got) in m.partitions.iter().map(|p| &p.placed).zip(&layout.partitions) {
                let subject = format!("{name}: partition {} ({})", want.number, want.label);
                let diffs: Vec<String> = [
                    (got.number != want.number).then(|| format!("number {}", got.number)),
                    (got.label != want.label).then(|| format!("label {:?}", got.label)),
                    (got.type_guid != want.type_guid).then(|| format!("type GUID {}", got.type_guid)),
                    (got.part_guid != want.part_guid).then(|| format!("partition GUID {}", got.part_guid)),
                    (got.offset != want.offset).then(|| format!("offset {}", got.offset)),
                    (got.size != want.size).then(|| format!("size {}", got.size)),
                    (got.flags != want.flags).then(|| format!("attributes {:#x}", got.flags)),
                ]
                .into_iter()
                .flatten()
                .collect();
                if !diffs.is_empty() {
                    fail(r, subject, format!("GPT entry differs from the manifest: {}", diffs.join(", ")));
                }
            }
        }
    }
}

/// Scan the image; for `.img.zst` also hash the compressed bytes while decompressing them.
/// Returns the scan and the SHA-256 of the file itself.
fn scan_file(path: &Path, compressed: bool, ranges: &[Range]) -> Result<(scan::Scan, String)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    if !compressed {
        let s = scan::scan(file, ranges)?;
        let sha = s.sha256.clone();
        return Ok((s, sha));
    }
    let shared = std::sync::Arc::new(std::sync::Mutex::new(None));
    let source = Decompress {
        decoder: Some(
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(1 << 20, HashingReader::new(file)))
                .context("starting zstd")?,
        ),
        done: shared.clone(),
    };
    let s = scan::scan(source, ranges).context("decompressing")?;
    let sha =
        shared.lock().ok().and_then(|mut g| g.take()).context("internal error: compressed stream not finished")?;
    Ok((s, sha))
}

/// A zstd decoder that, at the end of the stream, reads the rest of the compressed file too
/// and leaves the file's SHA-256 in `done`.
struct Decompress {
    decoder: Option<zstd::stream::read::Decoder<'static, BufReader<HashingReader<File>>>>,
    done: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Read for Decompress {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(d) = self.decoder.as_mut() else { return Ok(0) };
        let n = d.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Some(d) = self.decoder.take() {
                let mut rest = d.finish().into_inner();
                std::io::copy(&mut rest, &mut std::io::sink())?;
                let (sha, _) = rest.finish();
                if let Ok(mut g) = self.done.lock() {
                    *g = Some(sha);
                }
            }
        }
        Ok(n)
    }
}
