//! Progress of long runs (bench matrices, scenarios), reported as events to a [`ProgressSink`], so the
//! run does not care whether a terminal draws a bar, a pipe gets plain lines, a test collects them or
//! a gRPC stream forwards them.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;

/// One step of progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressEvent<'a> {
    /// A run of `total` steps begins.
    Start {
        /// How many steps the run has.
        total: u64,
        /// What runs.
        label: &'a str,
    },
    /// `done` of `total` steps are complete; `message` says what the last one was.
    Advance {
        /// Steps complete.
        done: u64,
        /// Steps in all.
        total: u64,
        /// What just completed.
        message: &'a str,
    },
    /// A line of output to show next to the progress (above a bar).
    Line(&'a str),
    /// The run is over.
    Finish,
}

impl ProgressEvent<'_> {
    /// The event as one plain line: `label: 12 steps`, `[3/12] message`, the line itself, or `done`.
    pub fn to_line(&self) -> String {
        match self {
            ProgressEvent::Start { total, label } => format!("{label}: {total} steps"),
            ProgressEvent::Advance { done, total, message } => format!("[{done}/{total}] {message}"),
            ProgressEvent::Line(line) => (*line).to_owned(),
            ProgressEvent::Finish => "done".to_owned(),
        }
    }
}

/// Receives progress events; implementations must be cheap, as runs call them between measurements.
pub trait ProgressSink: Send + Sync {
    /// Handles one event.
    fn event(&self, event: ProgressEvent<'_>);
}

/// Ignores every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn event(&self, _event: ProgressEvent<'_>) {}
}

/// Which stream a [`TerminalProgress`] writes to.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Progress on a terminal: an indicatif bar when the stream is a terminal, plain lines
/// (`[3/12] message`) when it is piped; [`ProgressEvent::Line`] prints above the bar. Thread-safe.
#[derive(Debug)]
pub struct TerminalProgress {
    stream: Stream,
    tty: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl TerminalProgress {
    /// Progress on standard output.
    pub fn stdout() -> TerminalProgress {
        TerminalProgress {
            stream: Stream::Stdout,
            tty: std::io::stdout().is_terminal(),
            bar: Mutex::new(None),
        }
    }

    /// Progress on standard error, for commands whose standard output is a report.
    pub fn stderr() -> TerminalProgress {
        TerminalProgress {
            stream: Stream::Stderr,
            tty: std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
        }
    }

    fn print(&self, line: &str) {
        // Progress is best effort: a closed pipe must not abort the run it reports on.
        let _ = match self.stream {
            Stream::Stdout => writeln!(std::io::stdout().lock(), "{line}"),
            Stream::Stderr => writeln!(std::io::stderr().lock(), "{line}"),
        };
    }

    fn new_bar(&self, total: u64, label: &str) -> ProgressBar {
        let target = match self.stream {
            Stream::Stdout => ProgressDrawTarget::stdout(),
            Stream::Stderr => ProgressDrawTarget::stderr(),
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        if let Ok(style) =
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed} {wide_msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_owned());
        bar
    }
}

impl ProgressSink for TerminalProgress {
    fn event(&self, event: ProgressEvent<'_>) {
        let mut bar = self.bar.lock();
        if !self.tty {
            if !matches!(event, ProgressEvent::Finish) {
                self.print(&event.to_line());
            }
            return;
        }
        match event {
            ProgressEvent::Start { total, label } => {
                if let Some(old) = bar.take() {
                    old.finish_and_clear();
                }
                *bar = Some(self.new_bar(total, label));
            }
            ProgressEvent::Advance { done, total, message } => match bar.as_ref() {
                Some(b) => {
                    b.set_length(total);
                    b.set_position(done);
                    b.set_message(message.to_owned());
                }
                None => self.print(&event.to_line()),
            },
            ProgressEvent::Line(line) => match bar.as_ref() {
                Some(b) => b.println(line),
                None => self.print(line),
            },
            ProgressEvent::Finish => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
            }
        }
    }
}

/// Records every event as an owned line ([`ProgressEvent::to_line`]), for tests and for streaming
/// progress over gRPC.
#[derive(Debug, Default)]
pub struct CollectProgress {
    lines: Mutex<Vec<String>>,
}

impl CollectProgress {
    /// An empty collector.
    pub fn new() -> CollectProgress {
        CollectProgress::default()
    }

    /// Every line so far, in order.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().clone()
    }
}

impl ProgressSink for CollectProgress {
    fn event(&self, event: ProgressEvent<'_>) {
        self.lines.lock().push(event.to_line());
    }
}
