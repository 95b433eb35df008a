//! Stage progress on stderr: a spinner with elapsed time on a terminal, plain lines otherwise.
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    tty: bool,
    total: usize,
    done: usize,
    timings: Vec<(String, f64)>,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        Progress { tty: std::io::stderr().is_terminal(), total, done: 0, timings: Vec::new() }
    }

    /// Run one stage, reporting its start and how long it took.
    pub fn stage<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.done += 1;
        let label = format!("[{}/{}] {name}", self.done, self.total);
        let start = Instant::now();
        let bar = if self.tty {
            let bar = ProgressBar::new_spinner().with_message(label.clone());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            Some(bar)
        } else {
            eprintln!("kiln: {label} ...");
            None
        };
        let result = f();
        let secs = start.elapsed().as_secs_f64();
        let line = match &result {
            Ok(_) => format!("kiln: {label} done in {secs:.1}s"),
            Err(_) => format!("kiln: {label} failed after {secs:.1}s"),
        };
        if let Some(bar) = bar {
            bar.finish_and_clear()
        }
        eprintln!("{line}");
        self.timings.push((name.to_string(), secs));
        result
    }

    /// (stage, seconds) for every stage run so far.
    pub fn timings(&self) -> &[(String, f64)] {
        &self.timings
    }
}
