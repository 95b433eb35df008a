//! Stage progress on stderr: a spinner with elapsed time on a terminal, plain lines otherwise.
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The running stage's spinner and label, for [`note`].
static CURRENT: Mutex<Option<(ProgressBar, String)>> = Mutex::new(None);

/// Progress inside the running stage, from any thread: on a terminal it joins the stage's
/// spinner line; otherwise, when `plain` (a few lines per stage, not a counter), a line of its own.
pub fn note(text: &str, plain: bool) {
    let current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    match &*current {
        Some((bar, label)) => bar.set_message(format!("{label}: {text}")),
        None if plain => eprintln!("kiln:   {text}"),
        None => {}
    }
}

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
            *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = Some((bar.clone(), label.clone()));
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
            CURRENT.lock().unwrap_or_else(|p| p.into_inner()).take();
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

/// Milestones of something kiln waits for (a guest's boot), each with the time since it began:
/// one line per milestone; on a terminal also a spinner below them with the time running.
pub struct Milestones {
    what: String,
    start: Instant,
    bar: Option<ProgressBar>,
}

impl Milestones {
    /// Wait for `what`, which began at `since` with the milestone `first`.
    pub fn start(what: &str, first: &str, since: Instant) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let mut m = Milestones { what: what.to_string(), start: since, bar };
        m.reached(first);
        m
    }

    /// `name` was reached now.
    pub fn reached(&mut self, name: &str) {
        let line = format!("kiln: {}: {name} at {:.1}s", self.what, self.start.elapsed().as_secs_f64());
        match &self.bar {
            Some(bar) => {
                bar.println(line);
                bar.set_message(format!("{}: after {name}", self.what));
            }
            None => eprintln!("{line}"),
        }
    }
}

impl Drop for Milestones {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Progress of a long copy (`kiln flash`'s write and read-back): on a terminal a bar with MB/s
/// and time left, otherwise a plain line every 10 %.
pub struct Transfer {
    what: String,
    total: u64,
    start: Instant,
    bar: Option<ProgressBar>,
    next_line: u64,
}

impl Transfer {
    pub fn start(what: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}, {eta} left",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(format!("kiln: {what}"));
            bar
        });
        if bar.is_none() {
            eprintln!("kiln: {what}: {} MiB ...", total >> 20);
        }
        Transfer { what: what.to_string(), total, start: Instant::now(), bar, next_line: total / 10 }
    }

    pub fn update(&mut self, done: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None if done >= self.next_line && done < self.total => {
                let secs = self.start.elapsed().as_secs_f64().max(1e-3);
                let rate = done as f64 / secs;
                let left = (self.total - done) as f64 / rate.max(1.0);
                eprintln!(
                    "kiln: {}: {} of {} MiB, {:.0} MB/s, {left:.0}s left",
                    self.what,
                    done >> 20,
                    self.total >> 20,
                    rate / 1e6
                );
                self.next_line = done + self.total / 10;
            }
            None => {}
        }
    }

    /// Close the bar; returns the seconds taken and prints the summary line.
    pub fn finish(self) -> f64 {
        let secs = self.start.elapsed().as_secs_f64();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "kiln: {}: {} MiB in {secs:.1}s ({:.0} MB/s)",
            self.what,
            self.total >> 20,
            self.total as f64 / secs.max(1e-3) / 1e6
        );
        secs
    }
}
