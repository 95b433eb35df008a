//! `./tarfilter`: the filter mmdebstrap puts between `dpkg-deb --fsys-tarfile` and `tar -x`
//! when it extracts the essential packages of a root with dpkg path excludes (kiln's default,
//! `base.docs = false`). mmdebstrap runs `./tarfilter` from its working directory when there is
//! one, else `mmtarfilter`, a Python program that decodes and re-encodes every member and
//! doubled the time of that phase. kiln runs mmdebstrap in a directory whose `tarfilter` is a
//! link to the kiln binary (`dir`); called by that name, kiln filters (`main`).
//!
//! The filter keeps `mmtarfilter`'s rules, as Debian 12's and 13's Python run them: a member is
//! left out when the last `--path-exclude`/`--path-include` pattern matching its name (without
//! the leading `.`; directories without a trailing `/`) is an exclude. Patterns are shell
//! wildcards in which `*` also matches `/`. (mmtarfilter's attempt to keep the directories a
//! path-include needs never applies: it reads the prefix off the translated regex, `(?s:…`.)
//! Kept members are copied byte for byte, with their extended headers; what dpkg installs over
//! them later is dpkg's own doing either way.
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The name mmdebstrap runs, and the name kiln recognises in its `argv[0]`.
pub const NAME: &str = "tarfilter";

const BLOCK: usize = 512;

/// Whether this process was started as `tarfilter`.
pub fn called_as() -> bool {
    std::env::args_os().next().is_some_and(|a| Path::new(&a).file_name().is_some_and(|n| n == NAME))
}

/// The filter's process: rules from the arguments, stdin to stdout. Exit status 1 with a
/// message on stderr when the arguments or the stream are bad.
pub fn main() -> std::process::ExitCode {
    let run = || -> Result<()> {
        let rules = Rules::parse(std::env::args().skip(1))?;
        let stdin = std::io::stdin().lock();
        let stdout = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        filter(&rules, std::io::BufReader::with_capacity(1 << 16, stdin), stdout)
    };
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln tarfilter: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The directory `dir`, made if needed, holding `tarfilter`: a link to this kiln binary (to run
/// mmdebstrap in).
pub fn dir(dir: &Path) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the kiln binary")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let link = dir.join(NAME);
    if std::fs::read_link(&link).ok().as_deref() != Some(exe.as_path()) {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&exe, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(dir.to_path_buf())
}

/// The path rules, in the order given.
#[derive(Debug, Default)]
pub struct Rules(Vec<(bool, String)>);

impl Rules {
    /// `--path-exclude=PATTERN` and `--path-include=PATTERN` (or the pattern as the next
    /// argument); anything else is refused, so a newer mmdebstrap asking for more fails loudly.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Rules> {
        let mut rules = Vec::new();
        let mut args = args.into_iter();
        while let Some(a) = args.next() {
            let (opt, value) = match a.split_once('=') {
                Some((o, v)) => (o.to_string(), v.to_string()),
                None => (a.clone(), args.next().with_context(|| format!("{a} needs a pattern"))?),
            };
            match opt.as_str() {
                "--path-exclude" => rules.push((true, value)),
                "--path-include" => rules.push((false, value)),
                _ => bail!("unknown argument {a:?} (kiln's tarfilter takes --path-exclude and --path-include only)"),
            }
        }
        Ok(Rules(rules))
    }

    /// Whether the member called `name` in the archive (`./usr/…`) is left out.
    pub fn skip(&self, name: &str) -> bool {
        let mut chars = name.chars();
        chars.next();
        let path = chars.as_str();
        let mut skip = false;
        for (exclude, pattern) in &self.0 {
            if glob(pattern.as_bytes(), path.as_bytes()) {
                skip = *exclude;
            }
        }
        skip
    }
}

/// Shell wildcard match of the whole `name` (Python's fnmatch): `*` any run of bytes including
/// `/`, `?` one character, `[…]` a set (`[!…]` its complement; an unclosed `[` is literal).
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
                continue;
            }
            Some(b'?') => Some((p + 1, n + char_len(name[n]))),
            Some(b'[') => match set(&pattern[p..], name, n) {
                Some((true, plen, nlen)) => Some((p + plen, n + nlen)),
                Some((false, ..)) => None,
                None => (name[n] == b'[').then_some((p + 1, n + 1)),
            },
            Some(&c) => (c == name[n]).then_some((p + 1, n + 1)),
            None => None,
        };
        match (step, star) {
            (Some((np, nn)), _) => (p, n) = (np, nn.min(name.len())),
            (None, Some((sp, sn))) => {
                star = Some((sp, sn + 1));
                (p, n) = (sp + 1, sn + 1);
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The byte length of the UTF-8 character starting with `b` (1 for a stray byte).
fn char_len(b: u8) -> usize {
    match b {
        0xf0..=0xf7 => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// The set at the start of `pattern` against the character at `name[n]`: (matched, the set's
/// length, the character's length), or None when the `[` is not closed.
fn set(pattern: &[u8], name: &[u8], n: usize) -> Option<(bool, usize, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some(b'!'));
    if negate {
        i += 1;
    }
    let start = i;
    // A `]` right after `[` or `[!` is a member.
    if pattern.get(i) == Some(&b']') {
        i += 1;
    }
    while pattern.get(i)? != &b']' {
        i += 1;
    }
    let members = &pattern[start..i];
    let len = char_len(name[n]).min(name.len() - n);
    let c = std::str::from_utf8(&name[n..n + len]).ok().and_then(|s| s.chars().next());
    let m = std::str::from_utf8(members).ok()?.chars().collect::<Vec<_>>();
    let mut hit = false;
    let mut k = 0;
    while k < m.len() {
        if k + 2 < m.len() && m[k + 1] == '-' {
            hit |= c.is_some_and(|c| m[k] <= c && c <= m[k + 2]);
            k += 3;
        } else {
            hit |= c == Some(m[k]);
            k += 1;
        }
    }
    Some((hit != negate, i + 1, len))
}

/// Copy the tar stream `input` to `output` without the members `rules` skip. The whole input is
/// read (dpkg-deb, writing it, must not get a broken pipe).
pub fn filter(rules: &Rules, input: impl Read, mut output: impl Write) -> Result<()> {
    members(input, |m| match m.name {
        Some(name) if rules.skip(&name) => Ok(()),
        _ => output.write_all(&m.raw).context("writing the filtered archive"),
    })?;
    output.write_all(&[0u8; 2 * BLOCK])?;
    output.flush().context("writing the filtered archive")
}

/// The members' names in the tar stream `input`, in order (`./usr/bin/sed`; a directory's
/// without its trailing `/`).
pub fn names(input: impl Read) -> Result<Vec<String>> {
    let mut names = Vec::new();
    members(input, |m| {
        names.extend(m.name);
        Ok(())
    })?;
    Ok(names)
}

/// One member of a tar stream.
struct Member {
    /// Its name (from a GNU long name or a pax path if it has one); None for a global pax header.
    name: Option<String>,
    /// Its blocks as they are: extended headers, header, data.
    raw: Vec<u8>,
}

/// Call `each` with every member of the tar stream `input`, then read the input to its end.
fn members(mut input: impl Read, mut each: impl FnMut(Member) -> Result<()>) -> Result<()> {
    let mut raw: Vec<u8> = Vec::new();
    let (mut long_name, mut pax_path, mut pax_size): (Option<String>, Option<String>, Option<u64>) = (None, None, None);
    loop {
        let mut header = [0u8; BLOCK];
        if !read_block(&mut input, &mut header)? || header.iter().all(|&b| b == 0) {
            break;
        }
        let kind = header[156];
        let size = pax_size.take().map_or_else(|| octal(&header[124..136]), Ok)?;
        let data = read_data(&mut input, size).with_context(|| format!("reading a member of {size} bytes"))?;
        match kind {
            b'L' => long_name = Some(c_string(&data)),
            b'x' => (pax_path, pax_size) = pax(&data)?,
            _ => {}
        }
        raw.extend_from_slice(&header);
        raw.extend_from_slice(&data);
        if matches!(kind, b'L' | b'K' | b'x') {
            // Extended headers belong to the next member: kept or left out with it.
            continue;
        }
        let name = (kind != b'g').then(|| {
            let mut name = pax_path.take().or(long_name.take()).unwrap_or_else(|| ustar_name(&header));
            if kind == b'5' || (kind == 0 && name.ends_with('/')) {
                name.truncate(name.trim_end_matches('/').len());
            }
            name
        });
        each(Member { name, raw: std::mem::take(&mut raw) })?;
    }
    std::io::copy(&mut input, &mut std::io::sink()).context("reading the end of the archive")?;
    Ok(())
}

/// One block, or false at the end of the input.
fn read_block(input: &mut impl Read, block: &mut [u8; BLOCK]) -> Result<bool> {
    let mut got = 0;
    while got < BLOCK {
        match input.read(&mut block[got..]).context("reading the archive")? {
            0 if got == 0 => return Ok(false),
            0 => bail!("the archive ends inside a header"),
            n => got += n,
        }
    }
    Ok(true)
}

/// A member's data with its padding to whole blocks.
fn read_data(input: &mut impl Read, size: u64) -> Result<Vec<u8>> {
    let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
    let mut data = Vec::with_capacity(padded.min(1 << 26) as usize);
    input.take(padded).read_to_end(&mut data)?;
    anyhow::ensure!(data.len() as u64 == padded, "the archive ends inside a member");
    Ok(data)
}

/// A numeric header field: octal digits, or base-256 when the first byte's high bit is set.
fn octal(field: &[u8]) -> Result<u64> {
    if field[0] & 0x80 != 0 {
        return Ok(field[1..].iter().fold(u64::from(field[0] & 0x7f), |v, &b| (v << 8) | u64::from(b)));
    }
    let text = std::str::from_utf8(field).context("a header's number")?;
    let digits = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if digits.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(digits, 8).with_context(|| format!("a header's number {digits:?}"))
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The name in a ustar header: `prefix/name` in POSIX ustar, `name` otherwise.
fn ustar_name(header: &[u8; BLOCK]) -> String {
    let name = c_string(&header[..100]);
    if &header[257..263] == b"ustar\0" && header[345] != 0 {
        return format!("{}/{name}", c_string(&header[345..500]));
    }
    name
}

/// `path` and `size` of a pax extended header's records (`LEN key=value\n`).
fn pax(data: &[u8]) -> Result<(Option<String>, Option<u64>)> {
    let (mut path, mut size) = (None, None);
    let mut rest = data;
    while let Some(space) = rest.iter().position(|&b| b == b' ') {
        let len: usize =
            std::str::from_utf8(&rest[..space]).ok().and_then(|s| s.parse().ok()).context("a pax record's length")?;
        anyhow::ensure!(len > space + 1 && len <= rest.len(), "a pax record's length is wrong");
        let record = &rest[space + 1..len - 1];
        if let Some(v) = record.strip_prefix(b"path=") {
            path = Some(String::from_utf8_lossy(v).into_owned());
        } else if let Some(v) = record.strip_prefix(b"size=") {
            size = Some(std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).context("a pax size")?);
        }
        rest = &rest[len..];
        if rest.first().is_none_or(|&b| b == 0) {
            break;
        }
    }
    Ok((path, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(args: &[&str]) -> Rules {
        Rules::parse(args.iter().map(|s| s.to_string())).unwrap()
    }

    #[test]
    fn wildcards_match_like_fnmatch() {
        assert!(glob(b"/usr/share/doc/*", b"/usr/share/doc/a/b/c"));
        assert!(glob(b"/usr/share/doc/*", b"/usr/share/doc/"));
        assert!(!glob(b"/usr/share/doc/*", b"/usr/share/doc"));
        assert!(glob(b"/usr/share/doc/*/copyright", b"/usr/share/doc/a/b/copyright"));
        assert!(!glob(b"/usr/share/doc/*/copyright", b"/usr/share/doc/a/copyright2"));
        assert!(glob(b"/a?c", b"/abc") && glob("/a?c".as_bytes(), "/aéc".as_bytes()) && !glob(b"/a?c", b"/ac"));
        assert!(glob(b"/[ab]x", b"/bx") && !glob(b"/[ab]x", b"/cx") && glob(b"/[!ab]x", b"/cx"));
        assert!(glob(b"/[a-c]", b"/b") && !glob(b"/[a-c]", b"/d") && glob(b"/[]]", b"/]"));
        assert!(glob(b"/[x", b"/[x") && !glob(b"/[x", b"/x"));
        assert!(glob(b"*", b"") && glob(b"**a", b"bba") && !glob(b"a", b"ab"));
    }

    /// The last matching pattern decides; directories an include needs are not kept.
    #[test]
    fn last_matching_rule_wins() {
        let r = rules(&[
            "--path-exclude=/usr/share/doc/*",
            "--path-include=/usr/share/doc/*/copyright",
            "--path-exclude",
            "/usr/share/man/*",
        ]);
        assert!(r.skip("./usr/share/doc/dash/changelog.gz"));
        assert!(!r.skip("./usr/share/doc/dash/copyright"));
        assert!(r.skip("./usr/share/doc/dash"), "an include keeps no directory (as mmtarfilter)");
        assert!(!r.skip("./usr/share/doc") && !r.skip("."));
        assert!(r.skip("./usr/share/man/man1/dash.1.gz") && !r.skip("./usr/bin/dash"));
        assert!(Rules::parse(["--transform=s/a/b/".to_string()]).is_err());
        assert!(Rules::parse(["--path-exclude".to_string()]).is_err());
    }
}
