//! Replicated regions, the engine's side: a region may be a *replica* whose writes go to its home.
//!
//! The engine knows no network. A host that replicates regions across brokers (the `broker-cluster`
//! crate, over NATS JetStream) gives a replica region an [`Upstream`]: every write to it (handle
//! writes, mirror commits, host writes) becomes a [`Proposal`] the upstream takes to the region's home,
//! which applies it with [`Region::apply_proposal`] under the same conflict rules as a local commit.
//! Changes reach a replica, its own included, only through [`Region::apply_replicated`], in the
//! home's version order, so every replica holds the home's bytes at the home's versions.
//!
//! **Invariant:** a replica's version never goes backwards: a change at or below its version is
//! ignored, whatever the stream redelivers.
//!
//! **Invariant:** a proposal returns only after the change it made has landed in the replica (or with
//! an error), so an app reads its own writes; a refused proposal wrote nothing anywhere.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{len64, Change, Region, RegionError};

/// Where a replica's writes go: the region's home, reached however the host reaches it.
pub trait Upstream: Send + Sync + std::fmt::Debug {
    /// Takes `proposal` to the home and returns what it answered. Blocks the calling thread; returns
    /// `Ok` only once the accepted change has been applied to the replica (see the module's
    /// invariants), and [`Refused::Unavailable`] if the home cannot be reached in time.
    ///
    /// # Errors
    /// [`Refused`].
    fn propose(&self, proposal: Proposal) -> Result<Accepted, Refused>;

    /// Names the home, for errors (`node "b"`).
    fn home(&self) -> String;
}

/// A write proposed to a region's home: the check the home makes first, then the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// What the home checks before writing.
    pub check: Check,
    /// The bytes to write, at absolute offsets.
    pub spans: Vec<Span>,
}

/// Bytes at an absolute offset of a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Where they go.
    pub offset: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// The conflict check of a proposal: a replica's mirror commit carries its region's conflict policy
/// this way, since the home alone knows the current versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// None: a handle or host write, or a `last-writer-wins` commit.
    Blind,
    /// `reject`: refused unless the region is still at this version.
    Version(u64),
    /// `merge`: refused if any of these pages (index, version the writer saw) changed since.
    Pages(Vec<(u64, u64)>),
}

/// A proposal the home wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The region's version just before the change.
    pub previous: u64,
    /// The version of the change (equal to `previous` if there was nothing to write).
    pub version: u64,
}

/// Why a proposal wrote nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The check failed: the region changed since the writer saw it.
    #[error("the region changed since it was read: it is at version {current}")]
    Conflict {
        /// The home's current version.
        current: u64,
    },
    /// The home could not be reached, or has no writer now (it died and no node took over yet).
    #[error("the region's home is unavailable: {0}")]
    Unavailable(String),
    /// A span lies outside the region.
    #[error(transparent)]
    Region(#[from] RegionError),
}

impl Region {
    /// Whether the region is a replica, whose writes go to its home.
    pub fn is_replica(&self) -> bool {
        self.replica.load(Ordering::Acquire)
    }

    /// Makes the region a replica whose writes go to `upstream`, or (`None`) its own home again, as a
    /// replica that took the region over becomes.
    pub fn set_upstream(&self, upstream: Option<Arc<dyn Upstream>>) {
        let mut slot = self.upstream.write();
        self.replica.store(upstream.is_some(), Ordering::Release);
        *slot = upstream;
    }

    /// The upstream, if the region is a replica.
    pub(crate) fn upstream(&self) -> Option<Arc<dyn Upstream>> {
        if !self.is_replica() {
            return None;
        }
        self.upstream.read().clone()
    }

    /// Writes `proposal` through the upstream if the region is a replica, else here as its home would.
    ///
    /// # Errors
    /// [`Refused`].
    pub(crate) fn propose(&self, proposal: Proposal) -> Result<Accepted, Refused> {
        match self.upstream() {
            Some(up) => up.propose(proposal),
            None => self.apply_proposal(&proposal),
        }
    }

    /// Writes `spans` with no check (a handle or host write) through the upstream of a replica, or here
    /// as [`Region::write_many`] would for its home; returns the new version.
    ///
    /// # Errors
    /// [`RegionError::OutOfBounds`], [`RegionError::Unavailable`]; nothing is written.
    pub(crate) fn propose_blind(&self, spans: Vec<Span>) -> Result<u64, RegionError> {
        match self.propose(Proposal { check: Check::Blind, spans }) {
            Ok(a) => Ok(a.version),
            Err(Refused::Region(e)) => Err(e),
            Err(Refused::Unavailable(reason)) => Err(RegionError::Unavailable { reason }),
            Err(Refused::Conflict { current }) => Err(RegionError::Unavailable {
                reason: format!("the home refused a write without a check (at version {current})"),
            }),
        }
    }

    /// Applies a proposal at the home: checks it against the current versions under the writer lock,
    /// then writes every span as one change (one version, one published [`Change`] spanning them).
    ///
    /// # Errors
    /// [`Refused::Conflict`] and [`Refused::Region`] for a span out of bounds: nothing is written.
    pub fn apply_proposal(&self, proposal: &Proposal) -> Result<Accepted, Refused> {
        for s in &proposal.spans {
            self.memory.check(s.offset, s.bytes.len())?;
        }
        let mut pages = self.lock_for_write();
        let current = self.version();
        let conflict = match &proposal.check {
            Check::Blind => false,
            Check::Version(base) => *base < current,
            Check::Pages(seen) => seen.iter().any(|(page, saw)| {
                usize::try_from(*page).ok().and_then(|p| pages.0.get(p)).is_none_or(|now| now > saw)
            }),
        };
        if conflict {
            drop(pages);
            self.traffic.conflicted();
            return Err(Refused::Conflict { current });
        }
        if proposal.spans.iter().all(|s| s.bytes.is_empty()) {
            return Ok(Accepted { previous: current, version: current });
        }
        for s in &proposal.spans {
            self.memory.copy_in(s.offset, &s.bytes)?;
        }
        let version = self.bump_version();
        self.finish_change(&mut pages, version, &proposal.spans);
        Ok(Accepted { previous: current, version })
    }

    /// Stamps the whole region with a new version, `next(current)` (at least one more), as one change
    /// spanning all of it, without touching its bytes: a home's watcher then captures the whole region
    /// at that version, which is the snapshot replicas start from. Returns the version.
    pub fn restamp(&self, next: impl FnOnce(u64) -> u64) -> u64 {
        let mut pages = self.lock_for_write();
        let current = self.version();
        let version = next(current).max(current.saturating_add(1));
        if let Some(lease) = &self.lease {
            lease.cover(version);
        }
        self.version.store(version, Ordering::Release);
        let size = self.size();
        pages.mark(0, size, version);
        self.publish(Change { version, offset: 0, len: size });
        version
    }

    /// Applies a change the home made, at the home's version: the bytes of every span, then the
    /// version, the pages and the watchers, as a local write would. A change at or below the current
    /// version is ignored (returns false): replicas never go back.
    ///
    /// # Errors
    /// [`RegionError::OutOfBounds`] for a span outside the region; nothing is written.
    pub fn apply_replicated(&self, version: u64, spans: &[Span]) -> Result<bool, RegionError> {
        for s in spans {
            self.memory.check(s.offset, s.bytes.len())?;
        }
        let mut pages = self.lock_for_write();
        if version <= self.version() {
            return Ok(false);
        }
        for s in spans {
            self.memory.copy_in(s.offset, &s.bytes)?;
        }
        if let Some(lease) = &self.lease {
            lease.cover(version);
        }
        self.version.store(version, Ordering::Release);
        self.finish_change(&mut pages, version, spans);
        Ok(true)
    }

    /// Marks the spans' pages with `version`, counts the bytes and publishes one change spanning them;
    /// callers hold the writer lock and have set the version.
    fn finish_change(&self, pages: &mut super::WriteLocked<'_>, version: u64, spans: &[Span]) {
        let (mut lo, mut hi, mut total) = (u64::MAX, 0u64, 0u64);
        for s in spans.iter().filter(|s| !s.bytes.is_empty()) {
            let len = len64(s.bytes.len());
            pages.mark(s.offset, len, version);
            total += len;
            lo = lo.min(s.offset);
            hi = hi.max(s.offset.saturating_add(len));
        }
        self.traffic.copied_in(total);
        if lo < hi {
            self.publish(Change { version, offset: lo, len: hi - lo });
        }
    }
}
