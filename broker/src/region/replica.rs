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
//! **Invariant:** a proposal the home refused (a conflict, or expired before it arrived) wrote nothing
//! anywhere; one that was accepted returns once its change landed in the replica, within the
//! upstream's time limit, so an app reads its own writes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{len64, Change, Region, RegionError};

/// Where a replica's writes go: the region's home, reached however the host reaches it.
pub trait Upstream: Send + Sync + std::fmt::Debug {
    /// Takes `proposal` to the home and returns what it answered. Blocks the calling thread, and
    /// waits (within its time limit) for the version it answers with to land in the replica, so the
    /// writer reads its own write and can refresh to a conflict's version; [`Refused::Unavailable`] if
    /// the home cannot be reached in time.
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
    /// [`Refused::Conflict`], [`Refused::Region`] for a span out of bounds, [`Refused::Unavailable`]
    /// if the region is a replica (not the home): nothing is written.
    pub fn apply_proposal(&self, proposal: &Proposal) -> Result<Accepted, Refused> {
        if self.is_replica() {
            // A proposal that reached a node after it stopped being the home.
            return Err(Refused::Unavailable("this node is not the region's home any more".into()));
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::{Accepted, Check, Proposal, Refused, Span, Upstream};
    use crate::region::{Change, Region, RegionError, PAGE_SIZE};

    fn region(pages: u64) -> Region {
        crate::region::tests::region(pages * PAGE_SIZE)
    }

    fn span(offset: u64, bytes: &[u8]) -> Span {
        Span { offset, bytes: bytes.to_vec() }
    }

    fn read(r: &Region, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        r.read(offset, &mut buf).expect("read");
        buf
    }

    /// The changes a region's watchers saw.
    fn watched(r: &Region) -> Arc<Mutex<Vec<Change>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        r.watch(Arc::new(move |c: &Change| s.lock().push(*c)));
        seen
    }

    #[test]
    fn a_home_applies_a_proposal_under_its_check_or_writes_nothing() {
        let r = region(4);
        let seen = watched(&r);
        // Blind: one version for every span, one change spanning them.
        let blind =
            Proposal { check: Check::Blind, spans: vec![span(10, &[1, 2]), span(PAGE_SIZE * 2, &[3])] };
        assert_eq!(r.apply_proposal(&blind), Ok(Accepted { previous: 0, version: 1 }));
        assert_eq!((read(&r, 10, 2), read(&r, PAGE_SIZE * 2, 1)), (vec![1, 2], vec![3]));
        assert_eq!(*seen.lock(), [Change { version: 1, offset: 10, len: PAGE_SIZE * 2 + 1 - 10 }]);
        // Version: refused once the region moved past the writer's base.
        let stale = Proposal { check: Check::Version(0), spans: vec![span(0, &[9])] };
        assert_eq!(r.apply_proposal(&stale), Err(Refused::Conflict { current: 1 }));
        let fresh = Proposal { check: Check::Version(1), spans: vec![span(0, &[9])] };
        assert_eq!(r.apply_proposal(&fresh), Ok(Accepted { previous: 1, version: 2 }));
        // Pages: page 0 is at version 2 now, page 1 was never written, page 2 at version 1.
        let p0_old =
            Proposal { check: Check::Pages(vec![(1, 0), (0, 1)]), spans: vec![span(PAGE_SIZE, &[7])] };
        assert_eq!(r.apply_proposal(&p0_old), Err(Refused::Conflict { current: 2 }));
        let untouched =
            Proposal { check: Check::Pages(vec![(1, 0), (2, 1)]), spans: vec![span(PAGE_SIZE, &[7])] };
        assert_eq!(r.apply_proposal(&untouched), Ok(Accepted { previous: 2, version: 3 }));
        // A page index beyond the region is a conflict, never a panic.
        let beyond = Proposal { check: Check::Pages(vec![(u64::MAX, 0)]), spans: vec![span(0, &[1])] };
        assert!(matches!(r.apply_proposal(&beyond), Err(Refused::Conflict { .. })));
        // A span out of bounds (or overflowing) is refused before anything is written.
        let out = Proposal { check: Check::Blind, spans: vec![span(0, &[5]), span(u64::MAX, &[1])] };
        assert!(matches!(r.apply_proposal(&out), Err(Refused::Region(RegionError::OutOfBounds { .. }))));
        assert_eq!((read(&r, 0, 1), r.version()), (vec![9], 3));
        // Nothing to write: no version.
        assert_eq!(
            r.apply_proposal(&Proposal { check: Check::Blind, spans: vec![] }),
            Ok(Accepted { previous: 3, version: 3 })
        );
        assert_eq!(seen.lock().len(), 3);
    }

    #[test]
    fn a_replica_takes_changes_at_the_homes_versions_and_never_goes_back() {
        let r = region(2);
        let seen = watched(&r);
        assert_eq!(r.apply_replicated(5, &[span(3, &[1, 1])]), Ok(true));
        assert_eq!(r.version(), 5);
        // At or below the version: ignored, bytes untouched, nobody told.
        assert_eq!(r.apply_replicated(5, &[span(3, &[2, 2])]), Ok(false));
        assert_eq!(r.apply_replicated(4, &[span(3, &[2, 2])]), Ok(false));
        assert_eq!((read(&r, 3, 2), r.version()), (vec![1, 1], 5));
        // Out of bounds: refused whole.
        let out = r.apply_replicated(9, &[span(0, &[4]), span(PAGE_SIZE * 2, &[4])]);
        assert!(matches!(out, Err(RegionError::OutOfBounds { .. })));
        assert_eq!((read(&r, 0, 1), r.version()), (vec![0], 5));
        // Pages carry the change's version, as a local write's would.
        assert_eq!(r.apply_replicated(1 << 33, &[span(PAGE_SIZE, &[6])]), Ok(true));
        assert_eq!(r.pages.read().0, [5, 1 << 33]);
        assert_eq!(seen.lock().iter().map(|c| c.version).collect::<Vec<_>>(), [5, 1 << 33]);
        // A restamp moves the version (at least by one) over the whole region, bytes unchanged.
        assert_eq!(r.restamp(|v| v + 10), (1 << 33) + 10);
        assert_eq!(r.restamp(|_| 0), (1 << 33) + 11);
        assert_eq!(read(&r, 3, 2), vec![1, 1]);
        assert_eq!(
            seen.lock().last(),
            Some(&Change { version: (1 << 33) + 11, offset: 0, len: PAGE_SIZE * 2 })
        );
    }

    /// An upstream that records proposals and answers as told.
    #[derive(Debug)]
    struct Recorder(Mutex<Vec<Proposal>>, Result<Accepted, Refused>);

    impl Upstream for Recorder {
        fn propose(&self, proposal: Proposal) -> Result<Accepted, Refused> {
            self.0.lock().push(proposal);
            self.1.clone()
        }

        fn home(&self) -> String {
            "elsewhere".into()
        }
    }

    #[test]
    fn a_replicas_writes_go_upstream_and_leave_it_untouched() {
        let r = region(1);
        let up = Arc::new(Recorder(Mutex::new(Vec::new()), Err(Refused::Unavailable("down".into()))));
        r.set_upstream(Some(up.clone()));
        assert!(r.is_replica());
        // A host write becomes a blind proposal; refused, it wrote nothing.
        assert_eq!(r.write(8, &[1, 2, 3]), Err(RegionError::Unavailable { reason: "down".into() }));
        assert_eq!((read(&r, 8, 3), r.version()), (vec![0, 0, 0], 0));
        assert_eq!(*up.0.lock(), [Proposal { check: Check::Blind, spans: vec![span(8, &[1, 2, 3])] }]);
        // A replica is not a home: a proposal that reaches it is refused.
        let p = Proposal { check: Check::Blind, spans: vec![span(0, &[1])] };
        assert!(matches!(r.apply_proposal(&p), Err(Refused::Unavailable(_))));
        // Its own home again: writes are local.
        r.set_upstream(None);
        assert_eq!(r.write(8, &[1, 2, 3]), Ok(1));
        assert_eq!(up.0.lock().len(), 1);
    }
}
