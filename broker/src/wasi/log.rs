//! An instance's output: what a WASI app writes to stdout and stderr, kept as lines in a ring of a
//! fixed number of bytes (the last N KiB), readable and followable by the host, and passed on to the
//! host's `tracing` output at a bounded rate.
//!
//! The ring's bytes are reserved from the tenant's `log_bytes` quota when the instance is created and
//! given back when it is deleted, so output costs a tenant what it was allowed and nothing grows with
//! how much an app prints. An app that prints in a tight loop overwrites its own oldest lines; the time
//! it spends doing so is its own call's time, preemptible like the rest of it.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;

use crate::tenant::{Reservation, Tenant};

/// Longest line kept whole: a longer one is cut into pieces of this size, each a line of its own
/// (marked [`LogLine::cut`]), so one line never takes more than a part of the ring.
pub const MAX_LINE: usize = 4096;

/// Smallest ring: two of the longest lines.
pub const MIN_CAPACITY: usize = 2 * (MAX_LINE + 16);

/// Lines per second a tenant's apps together may send to the host's `tracing` output, after a burst of
/// [`TRACE_BURST`]; the ring keeps every line regardless, and the next line traced says how many were
/// left out.
pub const TRACE_LINES_PER_SEC: u32 = 50;

/// Lines a tenant's apps may send to `tracing` at once before the rate applies.
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
    /// Where to read on from (see [`InstanceLog::read_from`]).
    pub cursor: LogCursor,
}

/// A position in a log: the next line's `seq`, and where its record is, if known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogCursor {
    /// The `seq` of the next line to read.
    pub seq: u64,
    /// Its record's position in the whole output, as a read that ended there saw it.
    at: Option<u64>,
}

impl LogCursor {
    /// The position of line `seq`, wherever its record is.
    pub fn at_seq(seq: u64) -> LogCursor {
        LogCursor { seq, at: None }
    }
}

/// The output of one instance, across its restarts.
pub struct InstanceLog {
    tenant: Arc<Tenant>,
    instance: String,
    capacity: usize,
    inner: Mutex<Ring>,
    /// Tells followers a line arrived (its `seq` + 1), or that the log closed (the sender is dropped
    /// with the log).
    changed: tokio::sync::watch::Sender<u64>,
    /// The tenant's `log_bytes` charge for `capacity`, given back with the log or when its instance is
    /// deleted ([`InstanceLog::close`]), whichever comes first.
    charge: Mutex<Option<Reservation>>,
}

/// The lines, one record after another in one buffer allocated whole at the start, so the ring's
/// memory is its size and nothing else: a record is a flags byte (stderr, cut), the text's length
/// (two bytes, little-endian) and the text.
struct Ring {
    buf: VecDeque<u8>,
    /// The `seq` of the oldest line held, and how many are held.
    first: u64,
    count: u64,
    /// Bytes dropped from the front so far: a record's position in the whole output is this plus its
    /// index in `buf`.
    dropped: u64,
    /// Per stream, the line being written (no newline yet); at most [`MAX_LINE`] bytes each.
    pending: [Vec<u8>; 2],
}

/// What a line costs in the ring beyond its bytes: its record's header (flags and length).
pub const RECORD_HEADER: usize = 3;
const HEADER: usize = RECORD_HEADER;
const STDERR: u8 = 1;
const CUT: u8 = 2;

impl Ring {
    /// The header of the record at `at`: (flags, text length).
    fn header(&self, at: usize) -> (u8, usize) {
        let b = |i| self.buf.get(at + i).copied().unwrap_or(0);
        (b(0), usize::from(u16::from_le_bytes([b(1), b(2)])))
    }

    fn pop(&mut self) {
        let (_, len) = self.header(0);
        let n = (HEADER + len).min(self.buf.len());
        self.buf.drain(..n);
        self.dropped += n as u64;
        self.first += 1;
        self.count -= 1;
    }

    /// Appends a line, dropping the oldest ones to make room within `capacity`.
    fn push(&mut self, capacity: usize, stream: LogStream, text: &[u8], cut: bool) {
        let text = &text[..text.len().min(MAX_LINE)];
        while self.count > 0 && self.buf.len() + HEADER + text.len() > capacity {
            self.pop();
        }
        let flags = (u8::from(stream == LogStream::Stderr) * STDERR) | (u8::from(cut) * CUT);
        let len = u16::try_from(text.len()).unwrap_or(u16::MAX).to_le_bytes();
        self.buf.extend([flags, len[0], len[1]]);
        self.buf.extend(text);
        self.count += 1;
    }

    fn next_seq(&self) -> u64 {
        self.first + self.count
    }
}

impl InstanceLog {
    /// A log of `capacity` bytes for `tenant`'s `instance`, paid for by `charge` (the tenant's
    /// `log_bytes` reservation of `capacity`).
    pub(crate) fn new(
        tenant: Arc<Tenant>,
        instance: &str,
        capacity: usize,
        charge: Reservation,
    ) -> Arc<InstanceLog> {
        Arc::new(InstanceLog {
            tenant,
            instance: instance.to_owned(),
            capacity,
            inner: Mutex::new(Ring {
                buf: VecDeque::with_capacity(capacity),
                first: 0,
                count: 0,
                dropped: 0,
                pending: [Vec::new(), Vec::new()],
            }),
            changed: tokio::sync::watch::channel(0).0,
            charge: Mutex::new(Some(charge)),
        })
    }

    /// Gives the ring's charge back to the tenant: its instance was deleted. The lines stay readable
    /// by whoever still holds the log, until they let go of it.
    pub(crate) fn close(&self) {
        drop(self.charge.lock().take());
    }

    /// The ring's size in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends what an app wrote to `stream`. Only the part that can still be in the ring is looked
    /// at, so a write larger than the ring costs no more than the ring's size.
    pub(crate) fn write(&self, stream: LogStream, mut bytes: &[u8]) {
        let mut traced = Vec::new();
        let mut ring = self.inner.lock();
        let before = ring.next_seq();
        // Whatever lies before the last `capacity` bytes of a large write would be overwritten by the
        // rest of it anyway: skip to the line it ends in.
        // Its lines are still counted, so `seq` numbers every line the app wrote.
        if bytes.len() > self.capacity {
            let tail_at = bytes.len() - self.capacity;
            let start =
                bytes[tail_at..].iter().position(|&b| b == b'\n').map_or(tail_at, |i| tail_at + i + 1);
            let skipped = bytes[..start].iter().filter(|&&b| b == b'\n').count() as u64;
            bytes = &bytes[start..];
            ring.pending[stream.index()].clear();
            let held = ring.buf.len() as u64;
            ring.buf.clear();
            ring.dropped += held;
            ring.first += ring.count + skipped;
            ring.count = 0;
        }
        while !bytes.is_empty() {
            let room = MAX_LINE - ring.pending[stream.index()].len();
            let (take, consumed) = match bytes.iter().take(room).position(|&b| b == b'\n') {
                Some(i) => (i, Some(i + 1)),
                None if bytes.len() >= room => (room, Some(room)),
                None => (bytes.len(), None),
            };
            ring.pending[stream.index()].extend_from_slice(&bytes[..take]);
            let Some(consumed) = consumed else { break };
            let cut = consumed == take;
            bytes = &bytes[consumed..];
            let line = std::mem::take(&mut ring.pending[stream.index()]);
            self.end_line(&mut ring, &mut traced, stream, &line, cut);
            ring.pending[stream.index()] = reuse(line);
        }
        self.release(ring, before, traced);
    }

    /// Lets go of the ring, then traces `traced` and tells followers if lines arrived since `before`.
    fn release(&self, ring: parking_lot::MutexGuard<'_, Ring>, before: u64, traced: Vec<Traced>) {
        let after = ring.next_seq();
        drop(ring);
        self.trace(traced);
        if after != before {
            self.changed.send_replace(after);
        }
    }

    /// Ends any unfinished line (at the end of a call, or when the app exits), so it can be read.
    pub(crate) fn flush(&self) {
        let mut traced = Vec::new();
        let mut ring = self.inner.lock();
        let before = ring.next_seq();
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let line = std::mem::take(&mut ring.pending[stream.index()]);
            if !line.is_empty() {
                self.end_line(&mut ring, &mut traced, stream, &line, false);
            }
            ring.pending[stream.index()] = reuse(line);
        }
        self.release(ring, before, traced);
    }

    /// Puts a finished line into the ring, and keeps the start of it for `tracing` if its tenant's
    /// budget of traced lines allows (sent once the ring's lock is released).
    fn end_line(&self, ring: &mut Ring, traced: &mut Vec<Traced>, stream: LogStream, text: &[u8], cut: bool) {
        if let Some(skipped) = self.tenant.trace_line() {
            // Escaped: an app's bytes never reach the host's log as control characters.
            let shown = String::from_utf8_lossy(&text[..text.len().min(1024)]).escape_debug().collect();
            traced.push(Traced { stream, shown, skipped });
        }
        ring.push(self.capacity, stream, text, cut);
    }

    fn trace(&self, lines: Vec<Traced>) {
        for Traced { stream, shown, skipped } in lines {
            tracing::info!(
                target: "broker::app",
                tenant = %self.tenant.name(),
                instance = %self.instance,
                stream = stream.as_str(),
                skipped,
                "{shown}"
            );
        }
    }

    /// Up to `max` lines from `seq` on (the oldest still held if `seq` is older).
    pub fn read(&self, seq: u64, max: usize) -> LogRead {
        self.read_from(LogCursor::at_seq(seq), max)
    }

    /// As [`InstanceLog::read`], from where an earlier read ended ([`LogRead::cursor`]): no walk over
    /// the lines before it, so a reader going through the whole ring a line at a time takes time in
    /// proportion to what it reads.
    pub fn read_from(&self, cursor: LogCursor, max: usize) -> LogRead {
        let ring = self.inner.lock();
        let seq = cursor.seq;
        let from = seq.max(ring.first).min(ring.next_seq());
        let known = cursor.at.filter(|_| seq == from).and_then(|at| at.checked_sub(ring.dropped));
        let mut at = match known.and_then(|a| usize::try_from(a).ok()).filter(|&a| a <= ring.buf.len()) {
            Some(a) => a,
            None => {
                let mut a = 0;
                for _ in ring.first..from {
                    a += HEADER + ring.header(a).1;
                }
                a
            }
        };
        let mut lines = Vec::new();
        let mut next = from;
        while next < ring.next_seq() && lines.len() < max {
            let (flags, len) = ring.header(at);
            let end = (at + HEADER + len).min(ring.buf.len());
            let text: Vec<u8> = ring.buf.range(at + HEADER..end).copied().collect();
            let stream = if flags & STDERR != 0 { LogStream::Stderr } else { LogStream::Stdout };
            lines.push(LogLine { seq: next, stream, text, cut: flags & CUT != 0 });
            at += HEADER + len;
            next += 1;
        }
        let cursor = LogCursor { seq: next, at: Some(ring.dropped + at as u64) };
        LogRead { lines, next, lost: ring.first.saturating_sub(seq), cursor }
    }

    /// The `seq` the next line will get.
    pub fn next_seq(&self) -> u64 {
        self.inner.lock().next_seq()
    }

    /// Changes to follow: the receiver sees a new value when lines arrive, and an error once the log
    /// is gone (its instance was deleted).
    pub fn follow(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// A line to pass on to `tracing`.
struct Traced {
    stream: LogStream,
    shown: String,
    skipped: u64,
}

/// An emptied line buffer to write the next line into: kept unless it grew past a line's size.
fn reuse(mut line: Vec<u8>) -> Vec<u8> {
    line.clear();
    if line.capacity() > MAX_LINE {
        line.shrink_to(MAX_LINE);
    }
    line
}

impl std::fmt::Debug for InstanceLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceLog")
            .field("tenant", &self.tenant.name())
            .field("instance", &self.instance)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::Name;
    use crate::tenant::{Quotas, Resource, TenantId};

    fn log(capacity: usize) -> Arc<InstanceLog> {
        let tenant = Tenant::new(TenantId(1), Name::new("t").expect("name"), Quotas::default());
        let charge = tenant.reserve(Resource::LogBytes, capacity as u64).expect("quota");
        InstanceLog::new(tenant, "i", capacity, charge)
    }

    fn texts(read: &LogRead) -> Vec<String> {
        read.lines.iter().map(|l| String::from_utf8_lossy(&l.text).into_owned()).collect()
    }

    #[test]
    fn the_ring_never_outgrows_its_size_however_many_lines() {
        let l = log(MIN_CAPACITY);
        let allocated = l.inner.lock().buf.capacity();
        for _ in 0..100 {
            l.write(LogStream::Stdout, &[b'\n'; 10_000]);
        }
        let ring = l.inner.lock();
        assert_eq!(ring.buf.capacity(), allocated, "the buffer was never reallocated");
        assert!(ring.buf.len() <= MIN_CAPACITY);
        assert_eq!(ring.next_seq(), 1_000_000, "every line counted");
        assert_eq!(ring.count, (MIN_CAPACITY / RECORD_HEADER) as u64, "empty lines cost their header");
    }

    #[test]
    fn lines_split_join_and_cut_as_written() {
        let l = log(MIN_CAPACITY);
        l.write(LogStream::Stdout, b"one\ntw");
        l.write(LogStream::Stderr, b"err\n");
        l.write(LogStream::Stdout, b"o\nthree");
        assert_eq!(texts(&l.read(0, 10)), ["one", "err", "two"]);
        l.flush();
        let all = l.read(0, 10);
        assert_eq!(texts(&all), ["one", "err", "two", "three"]);
        assert_eq!(all.lines[1].stream, LogStream::Stderr);
        l.write(LogStream::Stdout, &[b'x'; MAX_LINE + 10]);
        l.flush();
        let long = l.read(4, 10);
        assert_eq!(
            long.lines.iter().map(|l| (l.text.len(), l.cut)).collect::<Vec<_>>(),
            [(MAX_LINE, true), (10, false)]
        );
    }

    #[test]
    fn a_cursor_reads_on_where_the_last_read_ended_and_counts_what_was_lost() {
        let l = log(MIN_CAPACITY);
        for i in 0..10 {
            l.write(LogStream::Stdout, format!("line {i}\n").as_bytes());
        }
        let first = l.read(0, 3);
        assert_eq!(texts(&first), ["line 0", "line 1", "line 2"]);
        let next = l.read_from(first.cursor, 3);
        assert_eq!(texts(&next), ["line 3", "line 4", "line 5"]);
        assert_eq!(next.lost, 0);
        // Overwrite everything: a stale cursor reads from the oldest line held and says how many went.
        for _ in 0..3 {
            l.write(LogStream::Stdout, &[b'y'; MAX_LINE]);
        }
        l.flush();
        let after = l.read_from(next.cursor, 100);
        assert!(after.lost > 0 && after.lines.first().is_some_and(|x| x.seq == next.cursor.seq + after.lost));
        assert_eq!(after.next, l.next_seq());
    }
}
