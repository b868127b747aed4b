//! An instance's output: what a WASI app writes to stdout and stderr, kept as lines in a ring of a
//! fixed number of bytes (the last N KiB), readable and followable by the host, and passed on to the
//! host's `tracing` output at a bounded rate.
//!
//! The ring's bytes are reserved from the tenant's `log_bytes` quota when the instance is created and
//! given back when it is deleted, so output costs a tenant what it was allowed and nothing grows with
//! how much an app prints. An app that prints in a tight loop overwrites its own oldest lines; the time
//! it spends doing so is its own call's time, preemptible like the rest of it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::tenant::Reservation;

/// Longest line kept whole: a longer one is cut into pieces of this size, each a line of its own
/// (marked [`LogLine::cut`]), so one line never takes more than a part of the ring.
pub const MAX_LINE: usize = 4096;

/// Smallest ring: two of the longest lines.
pub const MIN_CAPACITY: usize = 2 * (MAX_LINE + 16);

/// Lines per second an instance may send to the host's `tracing` output, after a burst of
/// [`TRACE_BURST`]; the ring keeps every line regardless, and the next line traced says how many were
/// left out.
pub const TRACE_LINES_PER_SEC: u32 = 50;

/// Lines an instance may send to `tracing` at once before the rate applies.
pub const TRACE_BURST: u32 = 200;

/// Which of an app's output streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// File descriptor 1.
    Stdout,
    /// File descriptor 2.
    Stderr,
}

impl LogStream {
    fn index(self) -> usize {
        match self {
            LogStream::Stdout => 0,
            LogStream::Stderr => 1,
        }
    }

    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// One line of an app's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Position in the instance's output: 0 for its first line, one more for each line after.
    pub seq: u64,
    /// The stream it was written to.
    pub stream: LogStream,
    /// Its bytes, without the newline (apps may write any bytes; they are not checked to be UTF-8).
    pub text: Vec<u8>,
    /// The line went on: it was longer than [`MAX_LINE`] and the rest is in the next line(s).
    pub cut: bool,
}

/// Lines read from a log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRead {
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
    /// The `seq` to read from next time.
    pub next: u64,
    /// Lines between the `seq` asked for and the first one returned that the ring no longer held.
    pub lost: u64,
}

/// The output of one instance, across its restarts.
pub struct InstanceLog {
    tenant: String,
    instance: String,
    capacity: usize,
    inner: Mutex<Ring>,
    /// Tells followers a line arrived (its `seq` + 1), or that the log closed (the sender is dropped
    /// with the log).
    changed: tokio::sync::watch::Sender<u64>,
    /// The tenant's `log_bytes` charge for `capacity`, given back with the log.
    _charge: Reservation,
}

struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
    next_seq: u64,
    /// Per stream, the line being written (no newline yet).
    pending: [Vec<u8>; 2],
    trace: TraceBudget,
}

/// A token bucket for lines sent to `tracing`.
struct TraceBudget {
    tokens: f64,
    at: Instant,
    skipped: u64,
}

impl TraceBudget {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * f64::from(TRACE_LINES_PER_SEC);
        self.tokens = (self.tokens + refill).min(f64::from(TRACE_BURST));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.skipped += 1;
            false
        }
    }
}

/// What a line costs in the ring: its bytes and a fixed overhead, so empty lines are not free.
fn cost(text: &[u8]) -> usize {
    text.len() + 16
}

impl InstanceLog {
    /// A log of `capacity` bytes for `tenant`'s `instance`, paid for by `charge` (the tenant's
    /// `log_bytes` reservation of `capacity`).
    pub(crate) fn new(
        tenant: &str,
        instance: &str,
        capacity: usize,
        charge: Reservation,
    ) -> Arc<InstanceLog> {
        Arc::new(InstanceLog {
            tenant: tenant.to_owned(),
            instance: instance.to_owned(),
            capacity,
            inner: Mutex::new(Ring {
                lines: VecDeque::new(),
                bytes: 0,
                next_seq: 0,
                pending: [Vec::new(), Vec::new()],
                trace: TraceBudget { tokens: f64::from(TRACE_BURST), at: Instant::now(), skipped: 0 },
            }),
            changed: tokio::sync::watch::channel(0).0,
            _charge: charge,
        })
    }

    /// The ring's size in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends what an app wrote to `stream`. Only the part that can still be in the ring is looked
    /// at, so a huge write costs no more than the ring's size.
    pub(crate) fn write(&self, stream: LogStream, mut bytes: &[u8]) {
        let mut ring = self.inner.lock();
        let before = ring.next_seq;
        // Whatever lies before the last `capacity` bytes of a large write would be overwritten by the
        // rest of it anyway: skip to the line it ends in.
        if bytes.len() > self.capacity {
            let tail = &bytes[bytes.len() - self.capacity..];
            let start = tail.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
            bytes = &tail[start..];
            ring.pending[stream.index()].clear();
        }
        while !bytes.is_empty() {
            let pending = &mut ring.pending[stream.index()];
            let room = MAX_LINE - pending.len();
            match bytes.iter().take(room).position(|&b| b == b'\n') {
                Some(i) => {
                    pending.extend_from_slice(&bytes[..i]);
                    bytes = &bytes[i + 1..];
                    let text = std::mem::take(pending);
                    self.push(&mut ring, stream, text, false);
                }
                None if bytes.len() >= room => {
                    pending.extend_from_slice(&bytes[..room]);
                    bytes = &bytes[room..];
                    let text = std::mem::take(pending);
                    self.push(&mut ring, stream, text, true);
                }
                None => {
                    pending.extend_from_slice(bytes);
                    bytes = &[];
                }
            }
        }
        let after = ring.next_seq;
        drop(ring);
        if after != before {
            self.changed.send_replace(after);
        }
    }

    /// Ends any unfinished line (at the end of a call, or when the app exits), so it can be read.
    pub(crate) fn flush(&self) {
        let mut ring = self.inner.lock();
        let before = ring.next_seq;
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let text = std::mem::take(&mut ring.pending[stream.index()]);
            if !text.is_empty() {
                self.push(&mut ring, stream, text, false);
            }
        }
        let after = ring.next_seq;
        drop(ring);
        if after != before {
            self.changed.send_replace(after);
        }
    }

    fn push(&self, ring: &mut Ring, stream: LogStream, text: Vec<u8>, cut: bool) {
        if ring.trace.take() {
            let skipped = std::mem::take(&mut ring.trace.skipped);
            let shown = String::from_utf8_lossy(&text[..text.len().min(1024)]);
            tracing::info!(
                target: "broker::app",
                tenant = %self.tenant,
                instance = %self.instance,
                stream = stream.as_str(),
                skipped,
                "{shown}"
            );
        }
        let seq = ring.next_seq;
        ring.next_seq += 1;
        ring.bytes += cost(&text);
        ring.lines.push_back(LogLine { seq, stream, text, cut });
        while ring.bytes > self.capacity && ring.lines.len() > 1 {
            let Some(old) = ring.lines.pop_front() else { break };
            ring.bytes -= cost(&old.text);
        }
    }

    /// Up to `max` lines from `seq` on (the oldest still held if `seq` is older).
    pub fn read(&self, seq: u64, max: usize) -> LogRead {
        let ring = self.inner.lock();
        let first = ring.lines.front().map_or(ring.next_seq, |l| l.seq);
        let from = seq.max(first);
        let skip = usize::try_from(from - first).unwrap_or(usize::MAX);
        let lines: Vec<LogLine> = ring.lines.iter().skip(skip).take(max).cloned().collect();
        let next = lines.last().map_or(from.min(ring.next_seq), |l| l.seq + 1);
        LogRead { lines, next, lost: first.saturating_sub(seq) }
    }

    /// The `seq` the next line will get.
    pub fn next_seq(&self) -> u64 {
        self.inner.lock().next_seq
    }

    /// Changes to follow: the receiver sees a new value when lines arrive, and an error once the log
    /// is gone (its instance was deleted).
    pub fn follow(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

impl std::fmt::Debug for InstanceLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceLog")
            .field("tenant", &self.tenant)
            .field("instance", &self.instance)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}
