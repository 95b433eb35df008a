//! Tera templates of overlays, rendered in a sandbox: templates come with shared layers, so
//! they get no environment (`get_env` fails), no other files (no `include`, `import`,
//! `extends`), no recursion (no macros) and bounded work: source and output size, `range`
//! lengths, nesting depth and time are limited, and a panic of the engine is a recipe error.
//!
//! The kiln binary renders each template in a child process of its own (itself, re-executed
//! with [`CHILD_ARG`], through `host::cmd`): a template that loops without touching any limit
//! is killed at the deadline with its process group, so no work goes on after kiln gave up.
//! Library callers that did not opt in with [`render_in_child_processes`] (tests), and kiln
//! without a mounted /proc, render on a thread of their own process, which can only be
//! abandoned, not stopped.
use crate::recipe::RecipeError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest template source.
pub const MAX_SOURCE: u64 = 1 << 20;
/// Largest rendered file, and largest value a filter may return.
pub const MAX_OUTPUT: usize = 4 << 20;
/// Elements all `range` calls of one template may produce together.
pub const MAX_RANGE: usize = 100_000;
/// Deepest nesting of blocks, brackets and parentheses.
pub const MAX_NESTING: usize = 32;
/// Time one template may take.
pub const TIME_LIMIT: Duration = Duration::from_secs(10);
/// Tags a template may not use: they reach other templates or allow recursion and unbounded growth.
const REFUSED: [&str; 5] = ["macro", "import", "include", "extends", "set_global"];
/// Tags that open a block.
const BLOCKS: [&str; 5] = ["if", "for", "filter", "block", "raw"];

/// Render `path` against `ctx`. Errors are recipe errors naming the template; `key` is the
/// overlay's key in the recipe, for errors of the sandbox itself.
pub fn render(path: &Path, ctx: &tera::Context, key: &str) -> Result<Vec<u8>, RecipeError> {
    match SELF_EXE.get() {
        Some(exe) => super::template_child::render(exe, path, ctx, key),
        None => render_here(path, ctx, key),
    }
}

/// The kiln binary's path: set by `main`, it makes every later `render` use a child process.
static SELF_EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Render templates in child processes of `exe` (the running kiln binary).
pub fn render_in_child_processes(exe: PathBuf) {
    let _ = SELF_EXE.set(exe);
}

pub use super::template_child::{child_main, CHILD_ARG};

/// Render in this process, on a thread of its own with a deadline.
pub fn render_here(path: &Path, ctx: &tera::Context, key: &str) -> Result<Vec<u8>, RecipeError> {
    let whole = |message: String| RecipeError::file(path, Some(key.to_string()), message);
    let text = crate::host::files::read_regular(path, MAX_SOURCE)
        .map_err(|e| whole(format!("cannot read template: {e} (templates are regular files of at most 1MiB)")))?;
    check_source(&text).map_err(|(offset, message)| {
        RecipeError::at(path, &text, offset, Some(key.to_string()), format!("template error: {message}"))
    })?;
    let (tx, rx) = std::sync::mpsc::channel();
    let (file, context) = (path.to_path_buf(), ctx.clone());
    let deadline = Instant::now() + TIME_LIMIT;
    let source = text.clone();
    std::thread::Builder::new()
        .name("template".into())
        .stack_size(16 << 20)
        .spawn(move || {
            let run = || sandboxed(&file, &source, &context, deadline);
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)));
        })
        .map_err(|e| whole(format!("cannot start rendering: {e}")))?;
    // The renderer checks the deadline itself; waiting a little longer lets it say so.
    match rx.recv_timeout(TIME_LIMIT + Duration::from_secs(2)) {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(whole("template error: the template engine failed (a panic, caught by kiln)".into())),
        Err(_) => Err(whole(format!("template error: rendering took longer than {}s", TIME_LIMIT.as_secs()))),
    }
}

/// Render on this thread with the sandbox's functions, filters and output limit.
fn sandboxed(path: &Path, text: &str, ctx: &tera::Context, deadline: Instant) -> Result<Vec<u8>, RecipeError> {
    let mut tera = tera::Tera::default();
    tera.autoescape_on(vec![]);
    restrict(&mut tera, deadline);
    let name = path.display().to_string();
    let fail = |e: tera::Error| error(path, text, &e);
    tera.add_raw_template(&name, text).map_err(fail)?;
    let mut out = Limited { buf: Vec::new(), deadline };
    tera.render_to(&name, ctx, &mut out).map_err(fail)?;
    Ok(out.buf)
}

/// Replace what reaches the host or grows without bound.
fn restrict(tera: &mut tera::Tera, deadline: Instant) {
    tera.register_function("get_env", |_: &HashMap<String, tera::Value>| -> tera::Result<tera::Value> {
        Err(tera::Error::msg("`get_env` is not available in kiln templates: put the value into [vars]"))
    });
    let budget = Arc::new(AtomicUsize::new(MAX_RANGE));
    tera.register_function("range", move |args: &HashMap<String, tera::Value>| range(args, &budget, deadline));
    let filters: Vec<(String, Arc<dyn tera::Filter>)> =
        tera.filters.iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect();
    for (name, inner) in filters {
        tera.register_filter(&name.clone(), Bounded { name, inner, deadline });
    }
}

/// `range(end, start=0, step_by=1)` with a budget of elements for the whole template.
fn range(args: &HashMap<String, tera::Value>, budget: &AtomicUsize, deadline: Instant) -> tera::Result<tera::Value> {
    let int = |k: &str, default: Option<i64>| match args.get(k) {
        Some(v) => v.as_i64().ok_or_else(|| tera::Error::msg(format!("range: `{k}` must be an integer"))),
        None => default.ok_or_else(|| tera::Error::msg(format!("range: `{k}` is required"))),
    };
    let (start, end, step) = (int("start", Some(0))?, int("end", None)?, int("step_by", Some(1))?);
    if step <= 0 {
        return Err(tera::Error::msg("range: `step_by` must be positive"));
    }
    if Instant::now() > deadline {
        return Err(tera::Error::msg(format!("rendering took longer than {}s", TIME_LIMIT.as_secs())));
    }
    let span = end.saturating_sub(start).max(0);
    let count = usize::try_from(span / step + i64::from(span % step != 0)).unwrap_or(usize::MAX);
    let left = budget.load(Ordering::Relaxed);
    if count > left {
        return Err(tera::Error::msg(format!(
            "range: more than {MAX_RANGE} elements in all in one template (kiln's limit)"
        )));
    }
    budget.store(left - count, Ordering::Relaxed);
    Ok(tera::Value::Array((start..end).step_by(step as usize).map(tera::Value::from).collect()))
}

/// A built-in filter whose arguments and result are kept within `MAX_OUTPUT`.
struct Bounded {
    name: String,
    inner: Arc<dyn tera::Filter>,
    deadline: Instant,
}

impl tera::Filter for Bounded {
    fn filter(&self, value: &tera::Value, args: &HashMap<String, tera::Value>) -> tera::Result<tera::Value> {
        let too_big = || tera::Error::msg(format!("filter `{}`: result larger than {MAX_OUTPUT} bytes", self.name));
        if Instant::now() > self.deadline {
            return Err(tera::Error::msg(format!("rendering took longer than {}s", TIME_LIMIT.as_secs())));
        }
        let arg = |k: &str| args.get(k).and_then(|v| v.as_str()).map(str::len);
        match self.name.as_str() {
            "indent" if args.get("width").and_then(|w| w.as_u64()).is_some_and(|w| w > 256) => {
                return Err(tera::Error::msg("filter `indent`: `width` is at most 256"))
            }
            "replace" => {
                let (s, from) = (value.as_str().unwrap_or(""), args.get("from").and_then(|v| v.as_str()).unwrap_or(""));
                let hits = if from.is_empty() { 0 } else { s.matches(from).count() };
                if s.len().saturating_add(hits.saturating_mul(arg("to").unwrap_or(0))) > MAX_OUTPUT {
                    return Err(too_big());
                }
            }
            _ => {}
        }
        let out = self.inner.filter(value, args)?;
        if size(&out) > MAX_OUTPUT {
            return Err(too_big());
        }
        Ok(out)
    }

    fn is_safe(&self) -> bool {
        self.inner.is_safe()
    }
}

/// Bytes a value takes, roughly (strings and containers).
fn size(v: &tera::Value) -> usize {
    match v {
        tera::Value::String(s) => s.len(),
        tera::Value::Array(a) => a.iter().map(|x| size(x) + 1).sum(),
        tera::Value::Object(o) => o.iter().map(|(k, x)| k.len() + size(x) + 1).sum(),
        _ => 8,
    }
}

/// The rendered output, refused past `MAX_OUTPUT` or the deadline.
struct Limited {
    buf: Vec<u8>,
    deadline: Instant,
}

impl std::io::Write for Limited {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > MAX_OUTPUT {
            return Err(std::io::Error::other(format!("output larger than {MAX_OUTPUT} bytes (kiln's limit)")));
        }
        if Instant::now() > self.deadline {
            return Err(std::io::Error::other(format!("rendering took longer than {}s", TIME_LIMIT.as_secs())));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Refused tags and too deep nesting, found before Tera parses anything (its parser recurses).
/// Err: byte offset and message.
fn check_source(text: &str) -> Result<(), (usize, String)> {
    let (mut blocks, mut brackets) = (0usize, 0usize);
    let mut rest = text;
    while let Some(open) = rest.find(['{', '}', '(', ')', '[', ']']) {
        let offset = text.len() - rest.len() + open;
        let tail = &rest[open..];
        if let Some(tag) = tail.strip_prefix("{%") {
            let word = tag.trim_start_matches(['-', ' ', '\t', '\n', '\r']);
            let word = &word[..word.find(|c: char| !c.is_ascii_alphanumeric() && c != '_').unwrap_or(word.len())];
            if REFUSED.contains(&word) {
                return Err((
                    offset,
                    format!("`{word}` is not available in kiln templates (no other files, macros or globals)"),
                ));
            }
            if BLOCKS.contains(&word) {
                blocks += 1;
            } else if word.starts_with("end") {
                blocks = blocks.saturating_sub(1);
            }
        } else if tail.starts_with(['(', '[']) {
            brackets += 1;
        } else if tail.starts_with([')', ']']) {
            brackets = brackets.saturating_sub(1);
        }
        if blocks > MAX_NESTING || brackets > MAX_NESTING {
            return Err((offset, format!("nested more than {MAX_NESTING} deep (kiln's limit)")));
        }
        rest = &rest[open + 1..];
    }
    Ok(())
}

/// A Tera error as a recipe error: Tera's position, or the first line naming an undefined variable.
fn error(path: &Path, text: &str, e: &tera::Error) -> RecipeError {
    let detail = error_chain(e);
    let (line, column) = position(&detail, text);
    let key = undefined_variable(&detail);
    // The first line only repeats the file name ("Failed to parse '…'").
    let msg = detail.lines().skip(1).filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("\n    ");
    RecipeError { file: PathBuf::from(path), line, column, key, message: format!("template error: {msg}") }
}

fn error_chain(e: &tera::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    parts.join("\n")
}

/// Line and column of a template error: Tera's parser says ` --> L:C`; for a missing variable,
/// the first line that names it.
fn position(detail: &str, text: &str) -> (usize, usize) {
    if let Some(at) = detail.find("--> ") {
        let rest = &detail[at + 4..];
        let mut nums = rest.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
        if let (Some(l), Some(c)) = (nums.next(), nums.next()) {
            return (l.parse().unwrap_or(1), c.parse().unwrap_or(1));
        }
    }
    if let Some(var) = undefined_variable(detail) {
        for (i, line) in text.lines().enumerate() {
            if let Some(c) = line.find(&var) {
                return (i + 1, line[..c].chars().count() + 1);
            }
        }
    }
    (1, 1)
}

fn undefined_variable(detail: &str) -> Option<String> {
    let rest = detail.split("Variable `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
