//! The bytes replication puts on NATS: changes in the region stream, and proposals and their replies
//! between a replica and the home. Little-endian, length-prefixed, checked on every read: a message
//! that is not one is an error, never a panic or an allocation its length did not pay for.

use broker::{Accepted, Check, Proposal, Span};

/// Tags a change message (format 1).
const CHANGE: &[u8; 4] = b"BRC1";
/// Tags a batch of whole changes in one message (format 1).
const BATCH: &[u8; 4] = b"BRB1";
/// Tags a proposal (format 1).
const PROPOSAL: &[u8; 4] = b"BRP1";

/// The most bytes of spans one message carries: below NATS's default `max_payload` (1 MiB), so a
/// change of a large region goes in several messages of one version.
pub(crate) const MAX_CHUNK: usize = 512 * 1024;

/// A message that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed replication message: {0}")]
pub struct WireError(&'static str);

/// One message of a region's change stream: all or part of the change at `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChangeMsg {
    /// A snapshot: the spans cover the whole region.
    pub snapshot: bool,
    /// The last message of this version: the change is whole once it arrived.
    pub last: bool,
    /// The region's version after the change.
    pub version: u64,
    /// Bytes at absolute offsets.
    pub spans: Vec<Span>,
}

/// Splits a change into messages of at most [`MAX_CHUNK`] bytes of spans each (a span may be split).
pub(crate) fn chunks(snapshot: bool, version: u64, spans: Vec<Span>) -> Vec<ChangeMsg> {
    let mut out = Vec::new();
    let mut current: Vec<Span> = Vec::new();
    let mut size = 0;
    for span in spans {
        let mut offset = span.offset;
        let mut rest = &span.bytes[..];
        loop {
            let room = MAX_CHUNK - size;
            let take = rest.len().min(room);
            let (now, later) = rest.split_at(take);
            if !now.is_empty() || rest.is_empty() {
                current.push(Span { offset, bytes: now.to_vec() });
            }
            size += take;
            offset += take as u64;
            rest = later;
            if size == MAX_CHUNK {
                out.push(ChangeMsg { snapshot, last: false, version, spans: std::mem::take(&mut current) });
                size = 0;
            }
            if rest.is_empty() {
                break;
            }
        }
    }
    if !current.is_empty() || out.is_empty() {
        out.push(ChangeMsg { snapshot, last: false, version, spans: current });
    }
    if let Some(m) = out.last_mut() {
        m.last = true;
    }
    out
}

fn put_spans(b: &mut Vec<u8>, spans: &[Span]) {
    b.extend_from_slice(&u32::try_from(spans.len()).unwrap_or(u32::MAX).to_le_bytes());
    for s in spans {
        b.extend_from_slice(&s.offset.to_le_bytes());
        b.extend_from_slice(&u32::try_from(s.bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
        b.extend_from_slice(&s.bytes);
    }
}

pub(crate) fn encode_change(m: &ChangeMsg) -> Vec<u8> {
    let mut b = Vec::with_capacity(32 + m.spans.iter().map(|s| 12 + s.bytes.len()).sum::<usize>());
    b.extend_from_slice(CHANGE);
    b.push(u8::from(m.snapshot) | (u8::from(m.last) << 1));
    b.extend_from_slice(&m.version.to_le_bytes());
    put_spans(&mut b, &m.spans);
    b
}

/// Reads a message front to back, refusing to read past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError("truncated"));
        }
        let (now, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(now)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let mut a = [0; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// A count of items that take at least `each` bytes: one the rest of the message cannot hold is
    /// `too_many`, so it allocates nothing.
    fn count(&mut self, each: usize, too_many: &'static str) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n > self.0.len() / each {
            return Err(WireError(too_many));
        }
        Ok(n)
    }

    fn spans(&mut self) -> Result<Vec<Span>, WireError> {
        let n = self.count(12, "span count larger than the message")?;
        let mut spans = Vec::with_capacity(n);
        for _ in 0..n {
            let offset = self.u64()?;
            let len = self.u32()? as usize;
            spans.push(Span { offset, bytes: self.take(len)?.to_vec() });
        }
        Ok(spans)
    }

    fn end(&self) -> Result<(), WireError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(WireError("trailing bytes"))
        }
    }
}

/// Several whole changes (none a snapshot), in version order, as one message: a home publishes what it
/// queued while the last publish was in flight in one go.
pub(crate) fn encode_batch(changes: &[ChangeMsg]) -> Vec<u8> {
    let size: usize = changes.iter().flat_map(|c| &c.spans).map(|s| 12 + s.bytes.len()).sum();
    let mut b = Vec::with_capacity(8 + 12 * changes.len() + size);
    b.extend_from_slice(BATCH);
    b.extend_from_slice(&u32::try_from(changes.len()).unwrap_or(u32::MAX).to_le_bytes());
    for c in changes {
        b.extend_from_slice(&c.version.to_le_bytes());
        put_spans(&mut b, &c.spans);
    }
    b
}

/// The changes of a message of the stream: one (a change or a chunk of one) or a batch of whole ones.
pub(crate) fn decode_message(bytes: &[u8]) -> Result<Vec<ChangeMsg>, WireError> {
    if bytes.get(..4) != Some(&BATCH[..]) {
        return decode_change(bytes).map(|c| vec![c]);
    }
    let mut r = Reader(&bytes[4..]);
    // A version and a span count: 12 bytes at least.
    let n = r.count(12, "change count larger than the message")?;
    let mut changes = Vec::with_capacity(n);
    for _ in 0..n {
        let version = r.u64()?;
        changes.push(ChangeMsg { snapshot: false, last: true, version, spans: r.spans()? });
    }
    r.end()?;
    Ok(changes)
}

pub(crate) fn decode_change(bytes: &[u8]) -> Result<ChangeMsg, WireError> {
    let mut r = Reader(bytes);
    if r.take(4)? != CHANGE {
        return Err(WireError("not a change"));
    }
    let flags = r.u8()?;
    let version = r.u64()?;
    let spans = r.spans()?;
    r.end()?;
    Ok(ChangeMsg { snapshot: flags & 1 != 0, last: flags & 2 != 0, version, spans })
}

/// A proposal and when it expires (milliseconds since the Unix epoch, the sender's clock): the home
/// refuses it after that, so a proposal that waited in a buffer while NATS was away never lands after
/// its writer was told it failed.
pub(crate) fn encode_proposal(p: &Proposal, expires_ms: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(40 + p.spans.iter().map(|s| 12 + s.bytes.len()).sum::<usize>());
    b.extend_from_slice(PROPOSAL);
    b.extend_from_slice(&expires_ms.to_le_bytes());
    match &p.check {
        Check::Blind => b.push(0),
        Check::Version(v) => {
            b.push(1);
            b.extend_from_slice(&v.to_le_bytes());
        }
        Check::Pages(pages) => {
            b.push(2);
            b.extend_from_slice(&u32::try_from(pages.len()).unwrap_or(u32::MAX).to_le_bytes());
            for (page, seen) in pages {
                b.extend_from_slice(&page.to_le_bytes());
                b.extend_from_slice(&seen.to_le_bytes());
            }
        }
    }
    put_spans(&mut b, &p.spans);
    b
}

pub(crate) fn decode_proposal(bytes: &[u8]) -> Result<(Proposal, u64), WireError> {
    let mut r = Reader(bytes);
    if r.take(4)? != PROPOSAL {
        return Err(WireError("not a proposal"));
    }
    let expires_ms = r.u64()?;
    let check = match r.u8()? {
        0 => Check::Blind,
        1 => Check::Version(r.u64()?),
        2 => {
            let n = r.count(16, "page count larger than the message")?;
            let mut pages = Vec::with_capacity(n);
            for _ in 0..n {
                pages.push((r.u64()?, r.u64()?));
            }
            Check::Pages(pages)
        }
        _ => return Err(WireError("unknown check")),
    };
    let spans = r.spans()?;
    r.end()?;
    Ok((Proposal { check, spans }, expires_ms))
}

/// The home's answer to a proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Written, and published to the stream.
    Accepted(Accepted),
    /// The check failed; the home's current version.
    Conflict(u64),
    /// Not written, for the reason given (not the home any more, a span out of bounds, a
    /// malformed proposal, the stream unreachable).
    Refused(String),
}

pub(crate) fn encode_reply(r: &Reply) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    match r {
        Reply::Accepted(a) => {
            b.push(0);
            b.extend_from_slice(&a.previous.to_le_bytes());
            b.extend_from_slice(&a.version.to_le_bytes());
        }
        Reply::Conflict(current) => {
            b.push(1);
            b.extend_from_slice(&current.to_le_bytes());
        }
        Reply::Refused(why) => {
            b.push(2);
            b.extend_from_slice(why.as_bytes());
        }
    }
    b
}

pub(crate) fn decode_reply(bytes: &[u8]) -> Result<Reply, WireError> {
    let mut r = Reader(bytes);
    let reply = match r.u8()? {
        0 => Reply::Accepted(Accepted { previous: r.u64()?, version: r.u64()? }),
        1 => Reply::Conflict(r.u64()?),
        2 => {
            let why = String::from_utf8_lossy(r.0).into_owned();
            r.0 = &[];
            Reply::Refused(why)
        }
        _ => return Err(WireError("unknown reply")),
    };
    r.end()?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(offset: u64, len: usize, byte: u8) -> Span {
        Span { offset, bytes: vec![byte; len] }
    }

    #[test]
    fn changes_round_trip_and_large_ones_split_into_ordered_chunks() {
        let spans = vec![span(10, 3, 1), span(MAX_CHUNK as u64 * 2, MAX_CHUNK + 5, 2), span(7, 0, 3)];
        let msgs = chunks(false, 9, spans.clone());
        assert_eq!(msgs.len(), 2);
        assert!(msgs.iter().all(|m| m.version == 9 && !m.snapshot));
        assert_eq!(msgs.iter().filter(|m| m.last).count(), 1);
        assert!(msgs[1].last);
        // Put back together, the chunks hold every byte at its offset.
        let mut rebuilt = std::collections::BTreeMap::new();
        for m in &msgs {
            assert!(m.spans.iter().map(|s| s.bytes.len()).sum::<usize>() <= MAX_CHUNK);
            let back = decode_change(&encode_change(m)).expect("decode");
            assert_eq!(&back, m);
            for s in &back.spans {
                for (i, b) in s.bytes.iter().enumerate() {
                    rebuilt.insert(s.offset + i as u64, *b);
                }
            }
        }
        let mut expected = std::collections::BTreeMap::new();
        for s in &spans {
            for (i, b) in s.bytes.iter().enumerate() {
                expected.insert(s.offset + i as u64, *b);
            }
        }
        assert_eq!(rebuilt, expected);
        // An empty change is still one message, the last.
        assert_eq!(
            chunks(true, 1, Vec::new()),
            vec![ChangeMsg { snapshot: true, last: true, version: 1, spans: vec![] }]
        );
    }

    #[test]
    fn batches_round_trip_and_single_changes_decode_as_one() {
        let changes = vec![
            ChangeMsg { snapshot: false, last: true, version: 4, spans: vec![span(1, 3, 7)] },
            ChangeMsg { snapshot: false, last: true, version: 5, spans: vec![span(9, 1, 8), span(20, 2, 9)] },
        ];
        assert_eq!(decode_message(&encode_batch(&changes)), Ok(changes.clone()));
        assert_eq!(decode_message(&encode_change(&changes[1])), Ok(vec![changes[1].clone()]));
        let mut huge = BATCH.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_message(&huge), Err(WireError("change count larger than the message")));
        let mut long = encode_batch(&changes);
        long.push(1);
        assert_eq!(decode_message(&long), Err(WireError("trailing bytes")));
    }

    #[test]
    fn proposals_and_replies_round_trip() {
        for check in [Check::Blind, Check::Version(7), Check::Pages(vec![(1, 2), (3, 4)])] {
            let p = Proposal { check, spans: vec![span(4096, 5, 9)] };
            assert_eq!(decode_proposal(&encode_proposal(&p, 77)), Ok((p, 77)));
        }
        for r in [
            Reply::Accepted(Accepted { previous: 3, version: 4 }),
            Reply::Conflict(12),
            Reply::Refused("not the home".into()),
        ] {
            assert_eq!(decode_reply(&encode_reply(&r)), Ok(r));
        }
    }

    #[test]
    fn malformed_messages_are_errors_without_large_allocations() {
        assert!(decode_change(b"").is_err());
        assert!(decode_change(b"BRP1").is_err());
        let mut huge = b"BRC1\x02".to_vec();
        huge.extend_from_slice(&1u64.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_change(&huge), Err(WireError("span count larger than the message")));
        let mut short =
            encode_change(&ChangeMsg { snapshot: false, last: true, version: 1, spans: vec![span(0, 8, 1)] });
        short.pop();
        assert_eq!(decode_change(&short), Err(WireError("truncated")));
        let mut long = encode_proposal(&Proposal { check: Check::Blind, spans: vec![] }, 0);
        long.push(0);
        assert_eq!(decode_proposal(&long), Err(WireError("trailing bytes")));
        assert!(decode_proposal(b"BRP1\0\0\0\0\0\0\0\0\x09").is_err());
        assert!(decode_reply(&[7]).is_err());
        assert!(decode_reply(&[0, 1]).is_err());
    }
}
