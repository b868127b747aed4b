//! Mirror mode: the app works on its own copy of a region in its linear memory, refreshes it page by
//! page, and commits its changes back.
//!
//! The broker keeps, per mirror, a shadow of what the app was last given and the page versions it saw.
//! A refresh copies only pages whose version moved (and costs one atomic load when nothing did); a
//! commit diffs the app's buffer against the shadow page by page and writes back only the bytes that
//! differ, so under `last-writer-wins` apps that change different bytes of one page keep each other's
//! changes.
//!
//! Pages are counted two ways. Versions, refreshes and conflicts work on the region's pages (a range
//! that starts inside a page shares it with whatever precedes it). Hints (`mirror_hint`) name pages of
//! the capability's range, as the app sees its buffer: range page `k` is bytes `[k * 4096, (k + 1) *
//! 4096)` of the range, whatever the range's alignment.
//!
//! Atomicity: commits hold the region's writer lock (the same `RwLock` as handle-mode writes) while
//! they copy and bump versions; acquires, refreshes, handle reads and host reads hold the reader lock.
//! So every reader sees all of a commit or none of it. We chose a reader/writer lock over a seqlock
//! because readers copy large ranges into guest memory: a seqlock reader would have to retry whole
//! 16 MiB copies under write pressure and could starve, while the lock bounds a reader's wait by one
//! commit. Shared-mode windows bypass the lock by design.
//!
//! Conflicts ([`ConflictPolicy`]): `reject` refuses a commit unless the mirror saw the region's current
//! version; `merge` refuses only if a page the commit touches changed since the mirror saw it;
//! `last-writer-wins` never refuses. A refused commit writes nothing.

use std::fmt;
use std::str::FromStr;

use crate::abi::guest_memory::GuestBytes;
use crate::capability::CapRange;
use crate::region::len64;
use crate::region::{Check, PageVersions, Proposal, Refused, Region, Span, Upstream, PAGE_SIZE};
use crate::tenant::Reservation;

/// What a commit does when the region changed since the mirror was last in sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ConflictPolicy {
    /// Refuse the commit and report the current version (the default).
    #[default]
    Reject,
    /// Write the dirty pages regardless.
    LastWriterWins,
    /// Accept commits whose dirty pages nobody else changed since the mirror saw them.
    Merge,
}

impl ConflictPolicy {
    /// Every policy.
    pub const ALL: [ConflictPolicy; 3] =
        [ConflictPolicy::Reject, ConflictPolicy::LastWriterWins, ConflictPolicy::Merge];
}

impl fmt::Display for ConflictPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConflictPolicy::Reject => "reject",
            ConflictPolicy::LastWriterWins => "last-writer-wins",
            ConflictPolicy::Merge => "merge",
        })
    }
}

impl FromStr for ConflictPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<ConflictPolicy, String> {
        ConflictPolicy::ALL.into_iter().find(|p| p.to_string() == s).ok_or_else(|| {
            format!("unknown conflict policy {s:?}; expected reject, last-writer-wins or merge")
        })
    }
}

/// Why a mirror operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    /// The buffer's length is not the capability's length.
    #[error("mirror buffer is {given} bytes, the capability covers {expected}")]
    LengthMismatch {
        /// The buffer length passed.
        given: u64,
        /// The capability's length.
        expected: u64,
    },
    /// A version newer than the region's (or negative).
    #[error("version {given} is not a version of this region (current {current})")]
    BadVersion {
        /// The version passed.
        given: i64,
        /// The region's version.
        current: u64,
    },
    /// The region is a replica and its home cannot take the commit now; nothing was written.
    #[error("the region's home is unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The region changed since the mirror's base; nothing was written.
    #[error("commit conflicts with changes since the mirror's base; region is at version {current}")]
    Conflict {
        /// The region's current version.
        current: u64,
    },
    /// No mirror was acquired through this handle.
    #[error("no mirror acquired through this handle")]
    NotAcquired,
    /// A hint names pages outside the mirror.
    #[error("pages {first}..{first}+{pages} are not all inside the mirror's {range_pages} pages")]
    HintOutOfRange {
        /// First page hinted.
        first: u32,
        /// Pages hinted.
        pages: u32,
        /// Pages the mirror's range covers, counted from its start.
        range_pages: usize,
    },
}

/// The broker's record of one mirror: what the app was given, and when.
pub(crate) struct MirrorState {
    range: CapRange,
    /// The bytes the app's buffer held after the last acquire, refresh or commit.
    shadow: Vec<u8>,
    /// Per page of the range: the page version the shadow holds.
    seen: Vec<u64>,
    /// A region version at which every page of the range was as in the shadow.
    synced: u64,
    /// Range pages the app says it changed since the last commit (a bit per 4 KiB of the range,
    /// counted from the range's start); `None`: no hint, the next commit compares every page.
    hints: Option<Vec<u64>>,
    /// Charge for the shadow against the tenant's memory quota.
    _charge: Reservation,
}

/// Outcome of a refresh or commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Synced {
    /// The region version the mirror now reflects (after a commit: the commit's version).
    pub(crate) version: u64,
    /// Pages copied.
    pub(crate) pages: u32,
}

/// The pages of `range`: for each, its index in the region and the slice of the range's buffer.
fn pages(range: CapRange) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> {
    let end = range.offset + range.len;
    PageVersions::touched(range.offset, range.len).map(move |p| {
        let page_start = u64::try_from(p).unwrap_or(u64::MAX).saturating_mul(PAGE_SIZE);
        let lo = page_start.max(range.offset) - range.offset;
        let hi = page_start.saturating_add(PAGE_SIZE).min(end) - range.offset;
        (p, usize::try_from(lo).unwrap_or(usize::MAX)..usize::try_from(hi).unwrap_or(usize::MAX))
    })
}

/// From the first byte where `mine` and `theirs` differ to the last, if any does.
fn changed_span(mine: &[u8], theirs: &[u8]) -> Option<std::ops::Range<usize>> {
    let differs = |(a, b): (&u8, &u8)| a != b;
    let lo = mine.iter().zip(theirs).position(differs)?;
    let hi = mine.iter().zip(theirs).rposition(differs)?;
    Some(lo..hi + 1)
}

/// The runs of bytes where `mine` differs from `theirs` (same length), as ranges of indices. Equal
/// stretches are skipped 64 bytes at a time (a `memcmp`), so a page with a few changed bytes costs
/// little more than comparing it.
fn changed_runs<'a>(mine: &'a [u8], theirs: &'a [u8]) -> impl Iterator<Item = std::ops::Range<usize>> + 'a {
    const CHUNK: usize = 64;
    let len = mine.len().min(theirs.len());
    let differs = move |i: usize| mine.get(i) != theirs.get(i);
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < len {
            let end = (i + CHUNK).min(len);
            if i % CHUNK == 0 && mine.get(i..end) == theirs.get(i..end) {
                i = end;
            } else if differs(i) {
                break;
            } else {
                i += 1;
            }
        }
        if i >= len {
            return None;
        }
        let start = i;
        while i < len && differs(i) {
            i += 1;
        }
        Some(start..i)
    })
}

fn check_len(range: CapRange, len: usize) -> Result<(), MirrorError> {
    if len64(len) == range.len {
        Ok(())
    } else {
        Err(MirrorError::LengthMismatch { given: len64(len), expected: range.len })
    }
}

fn version_arg(given: i64, current: u64) -> Result<u64, MirrorError> {
    u64::try_from(given).ok().filter(|v| *v <= current).ok_or(MirrorError::BadVersion { given, current })
}

/// Copies the capability's range into `dst` and starts tracking the mirror.
///
/// # Errors
/// [`MirrorError::LengthMismatch`].
pub(crate) fn acquire(
    region: &Region,
    range: CapRange,
    dst: &GuestBytes<'_>,
    charge: Reservation,
) -> Result<(MirrorState, u64), MirrorError> {
    check_len(range, dst.len())?;
    let mismatch = MirrorError::LengthMismatch { given: len64(dst.len()), expected: range.len };
    let mut shadow = vec![0u8; dst.len()];
    let pv = region.pages.read();
    // The range was checked against the region when the capability was derived.
    region.memory.copy_out(range.offset, &mut shadow).map_err(|_| mismatch.clone())?;
    let seen =
        PageVersions::touched(range.offset, range.len).map(|p| pv.0.get(p).copied().unwrap_or(0)).collect();
    let version = region.version();
    drop(pv);
    // The app gets exactly the bytes the shadow records (copied from the shadow, not the region again).
    dst.write_from(0, &shadow).map_err(|_| mismatch)?;
    region.traffic.copied_out(range.len);
    let state = MirrorState { range, shadow, seen, synced: version, hints: None, _charge: charge };
    Ok((state, version))
}

impl MirrorState {
    /// The capability range this mirror covers.
    pub(crate) fn range(&self) -> CapRange {
        self.range
    }

    /// Copies into `dst` every page that changed since `since` or since the mirror saw it.
    ///
    /// # Errors
    /// [`MirrorError::LengthMismatch`], [`MirrorError::BadVersion`].
    pub(crate) fn refresh(
        &mut self,
        region: &Region,
        dst: &GuestBytes<'_>,
        since: i64,
    ) -> Result<Synced, MirrorError> {
        check_len(self.range, dst.len())?;
        let current = region.version();
        let since = version_arg(since, current)?;
        // The common case, an unchanged region, costs one atomic load: no page is looked at.
        if current == self.synced && since >= self.synced {
            return Ok(Synced { version: current, pages: 0 });
        }
        let pv = region.pages.read();
        let current = region.version();
        let mut copied = 0u32;
        for (i, (p, slice)) in pages(self.range).enumerate() {
            let version = pv.0.get(p).copied().unwrap_or(0);
            let Some(seen) = self.seen.get_mut(i) else { continue };
            if version != *seen || version > since {
                let at = self.range.offset + len64(slice.start);
                let start = slice.start;
                let Some(s) = self.shadow.get_mut(slice) else {
                    continue;
                };
                // Region to shadow, then shadow to the app: the app gets what the shadow records.
                if region.memory.copy_out(at, s).is_ok() && dst.write_from(start, s).is_ok() {
                    *seen = version;
                    copied += 1;
                }
            }
        }
        drop(pv);
        self.synced = current;
        region.traffic.refreshed(u64::from(copied));
        region.traffic.copied_out(u64::from(copied) * PAGE_SIZE);
        Ok(Synced { version: current, pages: copied })
    }

    /// Limits the next commit to the pages hinted since the last one (`pages == 0` hints none but
    /// still turns the limit on): the app promises it changed no other page, so a commit costs the
    /// pages it changed rather than the whole range. An app that breaks the promise only keeps its
    /// unhinted changes to itself.
    ///
    /// # Errors
    /// [`MirrorError::HintOutOfRange`]; the hints are unchanged then.
    pub(crate) fn hint(&mut self, first: u32, pages: u32) -> Result<(), MirrorError> {
        let range_pages = self.range_pages();
        let out = MirrorError::HintOutOfRange { first, pages, range_pages };
        let (Ok(start), Ok(count)) = (usize::try_from(first), usize::try_from(pages)) else {
            return Err(out);
        };
        match start.checked_add(count) {
            Some(end) if end <= range_pages => {
                let bits = self.hints.get_or_insert_with(|| vec![0u64; range_pages.div_ceil(64)]);
                for i in start..end {
                    if let Some(w) = bits.get_mut(i / 64) {
                        *w |= 1 << (i % 64);
                    }
                }
                Ok(())
            }
            _ => Err(out),
        }
    }

    /// Pages of the range as the app counts them (its buffer in 4 KiB pages).
    fn range_pages(&self) -> usize {
        usize::try_from(self.range.len.div_ceil(PAGE_SIZE)).unwrap_or(usize::MAX)
    }

    /// Writes back the bytes of `src` that differ from what the app was given, under the region's
    /// policy.
    ///
    /// # Errors
    /// [`MirrorError::LengthMismatch`], [`MirrorError::BadVersion`], [`MirrorError::Conflict`] (nothing
    /// written).
    pub(crate) fn commit(
        &mut self,
        region: &Region,
        src: &GuestBytes<'_>,
        base: i64,
    ) -> Result<Synced, MirrorError> {
        check_len(self.range, src.len())?;
        // Hints apply to one commit, whatever its outcome (an app retrying after a conflict hints again).
        let hints = self.hints.take();
        let page = usize::try_from(PAGE_SIZE).unwrap_or(usize::MAX);
        let hinted_page =
            |k: usize| hints.as_ref().is_none_or(|b| b.get(k / 64).is_some_and(|w| w & (1 << (k % 64)) != 0));
        // A region page's part of the range is compared if any range page it overlaps was hinted.
        let hinted = |slice: &std::ops::Range<usize>| {
            slice.is_empty() || (slice.start / page..=(slice.end - 1) / page).any(hinted_page)
        };
        // Copy each page out of guest memory once, then compare the copy with the shadow: the bytes
        // committed are exactly the bytes the decision was made on.
        let mut dirty: Vec<(usize, usize, std::ops::Range<usize>)> = Vec::new();
        let mut staged: Vec<u8> = Vec::new();
        for (i, (p, slice)) in pages(self.range).enumerate().filter(|(_, (_, slice))| hinted(slice)) {
            let Some(s) = self.shadow.get(slice.clone()) else {
                continue;
            };
            let at = staged.len();
            staged.resize(at + slice.len(), 0);
            let copied = staged.get_mut(at..).is_some_and(|copy| src.read_into(slice.start, copy).is_ok());
            if copied && staged.get(at..).is_some_and(|copy| copy != s) {
                dirty.push((i, p, slice));
            } else {
                staged.truncate(at);
            }
        }

        if let Some(up) = region.upstream().filter(|_| !dirty.is_empty()) {
            return self.commit_upstream(region, up.as_ref(), &dirty, &staged, base);
        }
        let mut pv = region.lock_for_write();
        let current = region.version();
        let base = version_arg(base, current)?;
        let conflict = match region.policy() {
            ConflictPolicy::Reject => base < current || self.synced < current,
            ConflictPolicy::Merge => dirty.iter().any(|(i, p, _)| pv.0.get(*p) != self.seen.get(*i)),
            ConflictPolicy::LastWriterWins => false,
        };
        if conflict {
            drop(pv);
            region.traffic.conflicted();
            return Err(MirrorError::Conflict { current });
        }
        if dirty.is_empty() {
            return Ok(Synced { version: current, pages: 0 });
        }
        let version = region.bump_version();
        // Per dirty page: whether the app's copy of it is now the region's (nobody else changed it
        // since the app saw it; only last-writer-wins commits over such changes).
        let mut whole = Vec::with_capacity(dirty.len());
        let (mut first, mut last) = (usize::MAX, 0);
        let mut from = 0;
        for (i, p, slice) in &dirty {
            let n = slice.len();
            let (Some(mine), Some(theirs)) = (staged.get(from..from + n), self.shadow.get(slice.clone()))
            else {
                whole.push(false);
                from += n;
                continue;
            };
            // Nobody changed this page since the app saw it: the region holds what the shadow does.
            let untouched = pv.0.get(*p) == self.seen.get(*i);
            // Only the bytes this commit changed. On a page nobody else changed, the span from the
            // first changed byte to the last goes in one copy (the bytes between are the region's
            // own); under last-writer-wins, on a page another app changed meanwhile, each run of
            // changed bytes goes alone, so the other app's bytes this commit did not change are kept.
            // (Run by run everywhere, a commit that changed a byte in every word made a copy per byte.)
            let (span, runs) = if untouched {
                (changed_span(mine, theirs), None)
            } else {
                (None, Some(changed_runs(mine, theirs)))
            };
            for run in span.into_iter().chain(runs.into_iter().flatten()) {
                let (Some(bytes), at) = (mine.get(run.clone()), slice.start + run.start) else { continue };
                // In range by construction: the slice lies inside the capability's range.
                let _ = region.memory.copy_in(self.range.offset + len64(at), bytes);
                first = first.min(at);
                last = last.max(at + bytes.len());
            }
            whole.push(untouched);
            if let Some(v) = pv.0.get_mut(*p) {
                *v = version;
            }
            from += n;
        }
        region.publish(crate::region::Change {
            version,
            offset: self.range.offset + len64(first.min(last)),
            len: len64(last.saturating_sub(first)),
        });
        drop(pv);

        let mut from = 0;
        for ((i, _, slice), whole) in dirty.iter().zip(whole) {
            let n = slice.len();
            if let (Some(s), Some(bytes)) = (self.shadow.get_mut(slice.clone()), staged.get(from..from + n)) {
                s.copy_from_slice(bytes);
            }
            // A page others also changed stays at the version the app last saw, so its next refresh
            // brings their bytes.
            if let Some(seen) = self.seen.get_mut(*i).filter(|_| whole) {
                *seen = version;
            }
            from += n;
        }
        if self.synced == current {
            self.synced = version;
        }
        region.traffic.committed();
        region.traffic.copied_in(len64(staged.len()));
        Ok(Synced { version, pages: u32::try_from(dirty.len()).unwrap_or(u32::MAX) })
    }

    /// [`MirrorState::commit`] on a replica: the dirty pages' changed bytes go to the region's home as
    /// one proposal carrying the region's policy as its check (the home alone knows the current
    /// versions), and the mirror takes the outcome as a local commit would.
    ///
    /// # Errors
    /// [`MirrorError::BadVersion`], [`MirrorError::Conflict`] with the home's version,
    /// [`MirrorError::Unavailable`]; nothing is written then.
    fn commit_upstream(
        &mut self,
        region: &Region,
        up: &dyn Upstream,
        dirty: &[(usize, usize, std::ops::Range<usize>)],
        staged: &[u8],
        base: i64,
    ) -> Result<Synced, MirrorError> {
        let base = version_arg(base, region.version())?;
        let check = match region.policy() {
            ConflictPolicy::Reject => Check::Version(base.min(self.synced)),
            ConflictPolicy::Merge => Check::Pages(
                dirty.iter().map(|(i, p, _)| (len64(*p), self.seen.get(*i).copied().unwrap_or(0))).collect(),
            ),
            ConflictPolicy::LastWriterWins => Check::Blind,
        };
        // As a local commit copies: one span per page whose other bytes are known to be the region's,
        // run by run where another writer may have changed them (last-writer-wins).
        let mut spans = Vec::new();
        let mut from = 0;
        for (_, _, slice) in dirty {
            let n = slice.len();
            if let (Some(mine), Some(theirs)) = (staged.get(from..from + n), self.shadow.get(slice.clone())) {
                let runs: Vec<std::ops::Range<usize>> = match check {
                    Check::Blind => changed_runs(mine, theirs).collect(),
                    _ => changed_span(mine, theirs).into_iter().collect(),
                };
                for run in runs {
                    if let Some(bytes) = mine.get(run.clone()) {
                        let offset = self.range.offset + len64(slice.start + run.start);
                        spans.push(Span { offset, bytes: bytes.to_vec() });
                    }
                }
            }
            from += n;
        }
        let checked = !matches!(check, Check::Blind);
        let accepted = match up.propose(Proposal { check, spans }) {
            Ok(a) => a,
            Err(Refused::Conflict { current }) => {
                region.traffic.conflicted();
                // The home's version once it landed here; the replica's own if not yet, so the app's
                // refresh to it is a version of this region.
                return Err(MirrorError::Conflict { current: current.min(region.version()) });
            }
            Err(Refused::Unavailable(reason)) => return Err(MirrorError::Unavailable { reason }),
            // Out of the region's bounds cannot happen (the spans lie in the capability's range); a home
            // that says so holds a region of another size.
            Err(Refused::Region(e)) => {
                return Err(MirrorError::Unavailable { reason: format!("the home refused: {e}") })
            }
        };
        // Landed here (the upstream waits for it, within its time): the commit's version is this
        // region's too. Not yet: the mirror stays at what it saw, and its next refresh brings the pages.
        let landed = region.version() >= accepted.version;
        let mut from = 0;
        for (i, _, slice) in dirty {
            let n = slice.len();
            if let (Some(s), Some(bytes)) = (self.shadow.get_mut(slice.clone()), staged.get(from..from + n)) {
                s.copy_from_slice(bytes);
            }
            // Checked, nobody else changed the page: the app's copy is the region's at the new version.
            if let Some(seen) = self.seen.get_mut(*i).filter(|_| checked && landed) {
                *seen = accepted.version;
            }
            from += n;
        }
        if self.synced == accepted.previous && landed {
            self.synced = accepted.version;
        }
        let version = if landed { accepted.version } else { region.version() };
        region.traffic.committed();
        region.traffic.copied_in(len64(staged.len()));
        Ok(Synced { version, pages: u32::try_from(dirty.len()).unwrap_or(u32::MAX) })
    }
}
