//! Templates rendered in a child process: the parent (`render`) sends the template's path, key
//! and context as JSON on the child's stdin and waits until the deadline; the child
//! (`child_main`, kiln started with `CHILD_ARG`) renders with `template::render_here` and answers
//! on stdout: exit 0 with the rendered bytes, or exit 3 with the recipe error as JSON. A child
//! still running at the deadline is killed with its process group (`host::cmd::Running::stop`).
use super::template::{render_here, MAX_OUTPUT, TIME_LIMIT};
use crate::host::cmd::Cmd;
use crate::recipe::RecipeError;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The hidden first argument that makes kiln a template renderer.
pub const CHILD_ARG: &str = "__render-template";
/// Exit status of a child that answers with a recipe error.
const ERROR_STATUS: i32 = 3;
/// Time past `TIME_LIMIT` after which the child is killed: less than the child's own thread
/// deadline (`TIME_LIMIT` + 2 s), so a runaway template is stopped here, by the parent.
const GRACE: Duration = Duration::from_secs(1);
/// Largest request read by the child (the context holds the recipe and its vars).
const MAX_REQUEST: u64 = 64 << 20;

#[derive(Serialize, Deserialize)]
struct Request {
    path: PathBuf,
    key: String,
    context: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct Failure {
    file: PathBuf,
    line: usize,
    column: usize,
    key: Option<String>,
    message: String,
}

/// Render `path` in a child process of `exe`, killed at the deadline.
pub fn render(exe: &Path, path: &Path, ctx: &tera::Context, key: &str) -> Result<Vec<u8>, RecipeError> {
    let whole = |message: String| RecipeError::file(path, Some(key.to_string()), message);
    let request = Request { path: path.to_path_buf(), key: key.to_string(), context: ctx.clone().into_json() };
    let input = serde_json::to_vec(&request).map_err(|e| whole(format!("template error: {e}")))?;
    let mut child = Cmd::new(exe)
        .arg(CHILD_ARG)
        .spawn(Stdio::piped(), Stdio::piped(), Stdio::piped())
        .map_err(|e| whole(format!("template error: cannot start the renderer: {e:#}")))?;
    let (stdin, stdout, stderr) = (child.child.stdin.take(), child.child.stdout.take(), child.child.stderr.take());
    let writer = std::thread::spawn(move || stdin.map(|mut s| s.write_all(&input)));
    let reader = std::thread::spawn(move || read_limited(stdout, MAX_OUTPUT as u64 + (1 << 20)));
    let errors = std::thread::spawn(move || read_limited(stderr, 64 << 10));
    let deadline = Instant::now() + TIME_LIMIT + GRACE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => break None,
        }
    };
    let Some(status) = status else {
        child.stop(Duration::from_millis(200));
        return Err(whole(format!(
            "template error: rendering took longer than {}s; the renderer was stopped",
            TIME_LIMIT.as_secs()
        )));
    };
    let _ = writer.join();
    let out = reader.join().unwrap_or_default();
    match status.code() {
        Some(0) => Ok(out),
        Some(ERROR_STATUS) => match serde_json::from_slice::<Failure>(&out) {
            Ok(f) => Err(RecipeError { file: f.file, line: f.line, column: f.column, key: f.key, message: f.message }),
            Err(e) => Err(whole(format!("template error: unreadable answer from the renderer: {e}"))),
        },
        _ => {
            let err = String::from_utf8_lossy(&errors.join().unwrap_or_default()).trim().to_string();
            Err(whole(format!("template error: the renderer failed ({status}): {err}")))
        }
    }
}

fn read_limited(from: Option<impl Read>, limit: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(r) = from {
        let _ = r.take(limit).read_to_end(&mut buf);
    }
    buf
}

/// The child: read the request on stdin, render, answer on stdout.
pub fn child_main() -> ExitCode {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().take(MAX_REQUEST).read_to_end(&mut input) {
        eprintln!("kiln: reading the template request: {e}");
        return ExitCode::FAILURE;
    }
    let request: Request = match serde_json::from_slice(&input) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kiln: a template request is JSON from kiln itself: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ctx = match tera::Context::from_value(request.context) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kiln: template context: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    let (bytes, code) = match render_here(&request.path, &ctx, &request.key) {
        Ok(data) => (data, ExitCode::SUCCESS),
        Err(e) => {
            let f = Failure { file: e.file, line: e.line, column: e.column, key: e.key, message: e.message };
            (serde_json::to_vec(&f).unwrap_or_default(), ExitCode::from(ERROR_STATUS as u8))
        }
    };
    if out.write_all(&bytes).and_then(|_| out.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    // The process ends here, and with it a render thread that missed its deadline.
    code
}
