//! Capabilities: who may do what to which bytes of a region.
//!
//! Every instance has its own handle table; a [`Handle`] is a `u32` that packs a slot index and the
//! slot's generation, and 0 is never valid. Each handle names a node of one global derivation tree
//! (as in seL4's mapping database): the root of a region's tree stands for its owner tenant, and every
//! other capability was derived from its parent by opening, restricting or granting, with rights and
//! range that can only shrink. Revoking a capability removes its whole subtree; closing removes the node
//! itself too. Freeing a slot bumps its generation, so a stale handle can never reach another capability
//! (a slot whose generation would wrap is retired instead of reused).
//!
//! **Invariant:** a derived capability's rights are a subset of its parent's, and its range lies inside
//! the parent's range.
//! **Invariant:** every node is referenced by exactly one holder (a root entry, a handle slot or an
//! inbox entry) and is charged to one tenant's handle quota, released when the node is removed.
//!
//! What a capability makes possible beyond its handle (a watch, a native callback, a shared window
//! mapped through it) is owned by the module that made it and hangs off the node as a [`Cleanup`]
//! hook, run once when the node is removed. Revocation hooks ([`Cleanup::revocation`]) take access
//! away: they run first, before the removing operation returns, and their failures are what that
//! operation reports. This module knows no more about them than that, so it holds no `unsafe` code
//! and depends on nothing above it (`region`, `tenant` and `name` only).

mod cache;
mod table;
#[cfg(test)]
mod tests;

/// The atomics [`cache`] uses (the loom model in `loom/` compiles that file with loom's instead).
mod sync {
    pub(super) use std::sync::atomic::{AtomicU64, Ordering};
}

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use crate::region::{Region, RegionId};
use crate::tenant::{QuotaError, Resource, Tenant};

pub use cache::{HandleCache, Removals};
pub use table::Handle;
use table::HandleTable;

pub use broker_abi::Rights;

/// Identifies an instance for the lifetime of a broker (a restart keeps the id): the holder of a handle
/// table and an inbox here, a store in `runtime`, which re-exports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(pub(crate) u64);

impl InstanceId {
    /// The raw id.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instance#{}", self.0)
    }
}

/// An absolute byte range of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapRange {
    /// Start, from the region's start.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl CapRange {
    /// The sub-range `[rel_offset, rel_offset+rel_len)` of this range, relative to its start;
    /// `rel_len == LEN_TO_END` (-1) means "to the end".
    ///
    /// # Errors
    /// [`CapError::OutOfBounds`] if the sub-range is negative, overflows, or leaves this range.
    pub fn sub(self, rel_offset: i64, rel_len: i64) -> Result<CapRange, CapError> {
        let oob = CapError::OutOfBounds { offset: rel_offset, len: rel_len, cap_len: self.len };
        let off = u64::try_from(rel_offset).map_err(|_| oob.clone())?;
        let rest = self.len.checked_sub(off).ok_or_else(|| oob.clone())?;
        let len = if rel_len == broker_abi::LEN_TO_END {
            rest
        } else {
            u64::try_from(rel_len).map_err(|_| oob.clone())?
        };
        if len > rest {
            return Err(oob);
        }
        Ok(CapRange { offset: self.offset + off, len })
    }

    /// The absolute offset of an access of `len` bytes at `rel_offset`, checked against this range.
    ///
    /// # Errors
    /// [`CapError::OutOfBounds`] if the access is negative, overflows, or leaves this range.
    pub fn access(self, rel_offset: i64, len: u64) -> Result<u64, CapError> {
        let len_i = i64::try_from(len).unwrap_or(i64::MAX);
        let oob = || CapError::OutOfBounds { offset: rel_offset, len: len_i, cap_len: self.len };
        let off = u64::try_from(rel_offset).map_err(|_| oob())?;
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.offset + off),
            _ => Err(oob()),
        }
    }
}

/// Why a capability operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    /// The handle is 0, was never issued, or lies beyond the table.
    #[error("invalid handle {0:#x}")]
    InvalidHandle(u32),
    /// The handle was closed or revoked.
    #[error("stale handle {0:#x} (closed or revoked)")]
    StaleHandle(u32),
    /// The capability lacks a needed right.
    #[error("capability holds rights {held}, the operation needs {needed}")]
    PermissionDenied {
        /// Rights the operation needs.
        needed: Rights,
        /// Rights the capability holds.
        held: Rights,
    },
    /// A derivation asked for rights its parent does not hold.
    #[error("cannot widen rights {held} to {requested}")]
    Escalation {
        /// Rights asked for.
        requested: Rights,
        /// Rights the parent holds.
        held: Rights,
    },
    /// An access or sub-range lies outside the capability's range.
    #[error("range at offset {offset} of length {len} lies outside the capability's {cap_len} bytes")]
    OutOfBounds {
        /// Requested offset, relative to the capability.
        offset: i64,
        /// Requested length.
        len: i64,
        /// Length of the capability's range.
        cap_len: u64,
    },
    /// The instance's handle table has no free slot left.
    #[error("handle table is full")]
    TableFull,
    /// The tenant's handle quota is used up.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// The capability (a grant or root) no longer exists.
    #[error("capability no longer exists")]
    Gone,
    /// Capabilities were removed, but a shared window mapped through one of them could not be taken
    /// away (the kernel refused even the scrub of the memory); that instance is being stopped. A
    /// revocation hook (see `mode::shared`) returns it; the operation that removed the capability
    /// reports it.
    #[error(
        "the shared window of region {region} could not be revoked ({reason}); its instance is being stopped"
    )]
    NotRevoked {
        /// The region the window maps.
        region: String,
        /// What the kernel said.
        reason: String,
    },
}

/// Identifies a node of the derivation tree; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CapId(u64);

impl CapId {
    /// The raw id.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// What a handle resolves to: the region, the rights and the absolute range.
#[derive(Debug, Clone)]
pub struct Cap {
    /// The node in the derivation tree.
    pub id: CapId,
    /// The region.
    pub region: Arc<Region>,
    /// Rights held.
    pub rights: Rights,
    /// Absolute range of the region covered.
    pub range: CapRange,
}

impl Cap {
    /// Refuses unless the capability holds `needed`.
    ///
    /// # Errors
    /// [`CapError::PermissionDenied`].
    pub fn require(&self, needed: Rights) -> Result<(), CapError> {
        if self.rights.contains(needed) {
            Ok(())
        } else {
            Err(CapError::PermissionDenied { needed, held: self.rights })
        }
    }

    /// Whether this capability may be mapped as a shared window: mapping gives read access by
    /// hardware, so a read-only window needs READ as well as MAP, and a writable one WRITE too.
    ///
    /// # Errors
    /// [`CapError::PermissionDenied`] naming every right the mapping needs.
    pub fn may_map(&self, writable: bool) -> Result<(), CapError> {
        let needed =
            if writable { Rights::READ | Rights::WRITE | Rights::MAP } else { Rights::READ | Rights::MAP };
        self.require(needed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// The region's root: its owner tenant.
    Root,
    /// A slot of an instance's handle table.
    Slot(InstanceId, u32),
    /// An instance's inbox of received grants, opened by name.
    Inbox(InstanceId),
    /// The region's membership: what every app of the owner tenant may open it with, by name.
    Members,
}

#[derive(Debug)]
struct Node {
    region: Arc<Region>,
    rights: Rights,
    range: CapRange,
    parent: Option<CapId>,
    children: BTreeSet<CapId>,
    holder: Holder,
    /// The tenant whose handle quota this node counts against (none for roots).
    charged: Option<Arc<Tenant>>,
    /// What to undo when the capability goes: a shared window, watches, native callback
    /// registrations, objects.
    cleanups: Vec<(CleanupTag, Cleanup)>,
}

/// What a cleanup hook undoes, so it can be found and run early (unwatch, unregister).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CleanupTag {
    /// The shared window mapped through this capability (its revocation hook, see `mode::shared`).
    Window,
    /// A watch registered through this capability.
    Watch,
    /// A native event callback registration (by trampoline slot index).
    NativeCallback(u32),
    /// The native object behind a region (on its root).
    NativeObject,
}

impl Node {
    /// A capability derived from `parent`, held by `holder` and charged to `tenant`.
    fn derived(
        region: Arc<Region>,
        rights: Rights,
        range: CapRange,
        parent: CapId,
        holder: Holder,
        tenant: &Arc<Tenant>,
    ) -> Node {
        Node {
            region,
            rights,
            range,
            parent: Some(parent),
            children: BTreeSet::new(),
            holder,
            charged: Some(Arc::clone(tenant)),
            cleanups: Vec::new(),
        }
    }
}

/// A hook run once when its capability is removed (or explicitly, by tag).
pub struct Cleanup(Hook);

enum Hook {
    /// Takes access away; runs before the capability's other hooks, and may fail.
    Revocation(Box<dyn FnOnce() -> Result<(), CapError> + Send>),
    /// Gives something back; cannot fail.
    Release(Box<dyn FnOnce() + Send>),
}

impl Cleanup {
    /// Wraps a hook that gives something back (a watch, a registration, an object).
    pub fn new(f: impl FnOnce() + Send + 'static) -> Cleanup {
        Cleanup(Hook::Release(Box::new(f)))
    }

    /// Wraps a hook that takes access away (a shared window's unmapping). It runs, under the space's
    /// lock, before the operation removing its capability returns and before the capability's other
    /// hooks; if it fails, that operation reports its error instead of success (the capability is gone
    /// all the same).
    pub fn revocation(f: impl FnOnce() -> Result<(), CapError> + Send + 'static) -> Cleanup {
        Cleanup(Hook::Revocation(Box::new(f)))
    }

    fn revokes(&self) -> bool {
        matches!(self.0, Hook::Revocation(_))
    }

    fn run(self) -> Result<(), CapError> {
        match self.0 {
            Hook::Revocation(f) => f(),
            Hook::Release(f) => {
                f();
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Cleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.revokes() { "Cleanup(revocation)" } else { "Cleanup" })
    }
}

/// The global capability space: the derivation tree, every instance's handle table and inbox.
#[derive(Debug, Default)]
pub struct CapSpace {
    nodes: HashMap<CapId, Node>,
    next_id: u64,
    roots: HashMap<RegionId, CapId>,
    tables: HashMap<InstanceId, HandleTable>,
    /// Grants received, ordered by id, which is also the order they were made in.
    inboxes: HashMap<InstanceId, BTreeSet<CapId>>,
    /// Failures of revocation hooks since the last public operation reported them.
    failures: Vec<CapError>,
    /// Each region's membership node (see [`CapSpace::set_members`]), if it has one.
    members: HashMap<RegionId, CapId>,
    /// The instance that created each guest-created region: it may open it again by name.
    creators: HashMap<RegionId, InstanceId>,
    /// Ticked by every removal of a node, so instances' lock-free [`HandleCache`]s drop what they
    /// resolved (see [`cache`]).
    removals: Arc<Removals>,
}

impl CapSpace {
    /// An empty space.
    pub fn new() -> CapSpace {
        CapSpace::default()
    }

    fn fresh_id(&mut self) -> CapId {
        self.next_id += 1;
        CapId(self.next_id)
    }

    /// Adds the root capability of a new region (all rights, whole range).
    pub fn add_root(&mut self, region: Arc<Region>) -> CapId {
        let id = self.fresh_id();
        let range = CapRange { offset: 0, len: region.size() };
        self.roots.insert(region.id(), id);
        self.nodes.insert(
            id,
            Node {
                region,
                rights: Rights::ALL,
                range,
                parent: None,
                children: BTreeSet::new(),
                holder: Holder::Root,
                charged: None,
                cleanups: Vec::new(),
            },
        );
        id
    }

    /// The root capability of a region.
    pub fn root(&self, region: RegionId) -> Option<CapId> {
        self.roots.get(&region).copied()
    }

    /// Gives an instance an empty handle table and inbox.
    pub fn add_instance(&mut self, instance: InstanceId) {
        self.tables.entry(instance).or_default();
        self.inboxes.entry(instance).or_default();
    }

    /// Removes every capability an instance held (handles and received grants) and everything derived
    /// from them, running their hooks. The caller drops the instance's store (and memory) next, after
    /// forgetting whatever else it kept about the instance's memory (`registry::Core::remove_instance`
    /// does both).
    ///
    /// # Errors
    /// [`CapError::NotRevoked`] if a revocation hook failed (a window, of this instance or of another
    /// one derived from these capabilities, could not be revoked).
    pub fn remove_instance(&mut self, instance: InstanceId) -> Result<(), CapError> {
        let held: Vec<CapId> = self
            .nodes
            .iter()
            .filter(|(_, n)| matches!(n.holder, Holder::Slot(i, _) | Holder::Inbox(i) if i == instance))
            .map(|(id, _)| *id)
            .collect();
        for id in held {
            self.remove_subtree(id);
        }
        // The table stays (with every slot's generation bumped), so a restarted instance never gets a
        // handle value its earlier incarnation used; `forget_instance` drops it when the instance is gone.
        // Reopening a region it created is one of the capabilities it held: stopped or restarted, it
        // holds none.
        self.creators.retain(|_, creator| *creator != instance);
        self.take_failures()
    }

    /// Drops a deleted instance's table and inbox, with every capability they held.
    ///
    /// # Errors
    /// As [`CapSpace::remove_instance`].
    pub fn forget_instance(&mut self, instance: InstanceId) -> Result<(), CapError> {
        let removed = self.remove_instance(instance);
        self.tables.remove(&instance);
        self.inboxes.remove(&instance);
        removed
    }

    /// Removes a region's whole tree (on destroy).
    ///
    /// # Errors
    /// [`CapError::NotRevoked`] if a revocation hook failed (a window could not be revoked; its instance
    /// is being stopped).
    pub fn remove_region(&mut self, region: RegionId) -> Result<(), CapError> {
        if let Some(root) = self.roots.remove(&region) {
            self.remove_subtree(root);
        }
        self.creators.remove(&region);
        self.take_failures()
    }

    /// Sets what every app of the region's owner tenant may open it with by name (`Rights::NONE`:
    /// nothing; only its creator and the instances it was granted to may). The membership is a node
    /// derived from the root, and handles opened through it derive from it, so changing it revokes
    /// every handle (and window) opened through the old one, as revoking a grant does; apps open the
    /// region again under the new rights.
    ///
    /// # Errors
    /// [`CapError::Gone`] if the region has no root; [`CapError::NotRevoked`] as for
    /// [`CapSpace::revoke_children`] (the new membership is in place even then).
    pub fn set_members(&mut self, region: RegionId, rights: Rights) -> Result<(), CapError> {
        let root = self.root(region).ok_or(CapError::Gone)?;
        if let Some(old) = self.members.remove(&region) {
            self.remove_subtree(old);
        }
        if rights != Rights::NONE {
            let (region_arc, range) = self.check_derivation(root, rights, 0, broker_abi::LEN_TO_END)?;
            let id = self.fresh_id();
            // Not charged to a handle quota: it is the operator's setting, like the root.
            let node = Node {
                region: region_arc,
                rights,
                range,
                parent: Some(root),
                children: BTreeSet::new(),
                holder: Holder::Members,
                charged: None,
                cleanups: Vec::new(),
            };
            self.link(id, root, node);
            self.members.insert(region, id);
        }
        self.take_failures()
    }

    /// The region's membership node, if its owner tenant's apps may open it by name.
    pub fn members(&self, region: RegionId) -> Option<CapId> {
        self.members.get(&region).copied()
    }

    /// Records that `instance` created `region` (it may open it again by name).
    pub fn set_creator(&mut self, region: RegionId, instance: InstanceId) {
        self.creators.insert(region, instance);
    }

    /// The instance that created `region`, for guest-created regions.
    pub fn creator(&self, region: RegionId) -> Option<InstanceId> {
        self.creators.get(&region).copied()
    }

    /// Takes away `region`'s creator's right to open it again by name (revoke-all does).
    pub fn clear_creator(&mut self, region: RegionId) {
        self.creators.remove(&region);
    }

    /// Reports (once) the revocation hooks that failed since the last report.
    fn take_failures(&mut self) -> Result<(), CapError> {
        match std::mem::take(&mut self.failures).into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }

    /// The removal count, shared with the instances' [`HandleCache`]s.
    pub fn removals(&self) -> &Arc<Removals> {
        &self.removals
    }

    /// Resolves an instance's handle.
    ///
    /// # Errors
    /// [`CapError::InvalidHandle`] or [`CapError::StaleHandle`].
    pub fn lookup(&self, instance: InstanceId, handle: Handle) -> Result<Cap, CapError> {
        let table = self.tables.get(&instance).ok_or(CapError::StaleHandle(handle.raw()))?;
        let id = table.get(handle)?;
        self.cap(id)
    }

    /// Resolves a node by id.
    ///
    /// # Errors
    /// [`CapError::Gone`] if it was removed.
    pub fn cap(&self, id: CapId) -> Result<Cap, CapError> {
        let n = self.nodes.get(&id).ok_or(CapError::Gone)?;
        Ok(Cap { id, region: Arc::clone(&n.region), rights: n.rights, range: n.range })
    }

    /// Derives from `parent` a capability with `rights` over the relative sub-range, held in a new slot
    /// of `instance`'s table and charged to `tenant`.
    ///
    /// # Errors
    /// [`CapError::Escalation`], [`CapError::OutOfBounds`], [`CapError::Quota`], [`CapError::TableFull`],
    /// [`CapError::Gone`]. Nothing changes on error.
    pub fn derive_handle(
        &mut self,
        parent: CapId,
        rights: Rights,
        rel_offset: i64,
        rel_len: i64,
        instance: InstanceId,
        tenant: &Arc<Tenant>,
    ) -> Result<Handle, CapError> {
        let (region, range) = self.check_derivation(parent, rights, rel_offset, rel_len)?;
        let reservation = tenant.reserve(Resource::Handles, 1)?;
        let id = self.fresh_id();
        let table = self.tables.get_mut(&instance).ok_or(CapError::Gone)?;
        let (handle, slot) = table.insert(id).ok_or(CapError::TableFull)?;
        reservation.commit();
        self.link(
            id,
            parent,
            Node::derived(region, rights, range, parent, Holder::Slot(instance, slot), tenant),
        );
        Ok(handle)
    }

    /// Derives from `parent` a capability delivered to `target`'s inbox, charged to `tenant`.
    ///
    /// # Errors
    /// As [`CapSpace::derive_handle`]; [`CapError::Gone`] if the target has no inbox.
    pub fn derive_grant(
        &mut self,
        parent: CapId,
        rights: Rights,
        rel_offset: i64,
        rel_len: i64,
        target: InstanceId,
        tenant: &Arc<Tenant>,
    ) -> Result<CapId, CapError> {
        let (region, range) = self.check_derivation(parent, rights, rel_offset, rel_len)?;
        if !self.inboxes.contains_key(&target) {
            return Err(CapError::Gone);
        }
        tenant.reserve(Resource::Handles, 1)?.commit();
        let id = self.fresh_id();
        if let Some(inbox) = self.inboxes.get_mut(&target) {
            inbox.insert(id);
        }
        self.link(id, parent, Node::derived(region, rights, range, parent, Holder::Inbox(target), tenant));
        Ok(id)
    }

    fn check_derivation(
        &self,
        parent: CapId,
        rights: Rights,
        rel_offset: i64,
        rel_len: i64,
    ) -> Result<(Arc<Region>, CapRange), CapError> {
        let p = self.nodes.get(&parent).ok_or(CapError::Gone)?;
        if !p.rights.contains(rights) {
            return Err(CapError::Escalation { requested: rights, held: p.rights });
        }
        let range = p.range.sub(rel_offset, rel_len)?;
        Ok((Arc::clone(&p.region), range))
    }

    fn link(&mut self, id: CapId, parent: CapId, node: Node) {
        self.nodes.insert(id, node);
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children.insert(id);
        }
    }

    /// The most recent grant in `instance`'s inbox for the region `owner/name`.
    pub fn find_grant(&self, instance: InstanceId, owner: &str, name: &str) -> Option<CapId> {
        let inbox = self.inboxes.get(&instance)?;
        inbox.iter().rev().copied().find(|id| {
            self.nodes
                .get(id)
                .is_some_and(|n| n.region.owner_name().as_str() == owner && n.region.name().as_str() == name)
        })
    }

    /// Revokes every capability derived from `instance`'s `handle`, keeping the handle itself.
    ///
    /// # Errors
    /// [`CapError::InvalidHandle`] or [`CapError::StaleHandle`].
    pub fn revoke(&mut self, instance: InstanceId, handle: Handle) -> Result<usize, CapError> {
        let id = self.lookup(instance, handle)?.id;
        self.revoke_children(id)
    }

    /// Revokes every capability derived from `id`; returns how many were removed.
    ///
    /// # Errors
    /// [`CapError::NotRevoked`] if a revocation hook failed (a window could not be revoked; its instance
    /// is being stopped): the capabilities are gone, but the revocation is not reported as complete.
    pub fn revoke_children(&mut self, id: CapId) -> Result<usize, CapError> {
        let children = self.nodes.get_mut(&id).map(|n| std::mem::take(&mut n.children)).unwrap_or_default();
        let removed = children.into_iter().map(|c| self.remove_detached(c)).sum();
        self.take_failures().map(|()| removed)
    }

    /// Closes `instance`'s `handle`: removes it and everything derived from it.
    ///
    /// # Errors
    /// [`CapError::InvalidHandle`] or [`CapError::StaleHandle`]; [`CapError::NotRevoked`] as for
    /// [`CapSpace::revoke_children`].
    pub fn close(&mut self, instance: InstanceId, handle: Handle) -> Result<(), CapError> {
        let id = self.lookup(instance, handle)?.id;
        self.remove_subtree(id);
        self.take_failures()
    }

    /// Removes `id` (a grant or any node) and its descendants.
    ///
    /// # Errors
    /// [`CapError::NotRevoked`] as for [`CapSpace::revoke_children`].
    pub fn revoke_node(&mut self, id: CapId) -> Result<(), CapError> {
        self.remove_subtree(id);
        self.take_failures()
    }

    /// Removes `id` and its descendants; returns how many nodes were removed. Callers report
    /// revocation hooks' failures with `take_failures`.
    fn remove_subtree(&mut self, id: CapId) -> usize {
        if let Some(parent) = self.nodes.get(&id).and_then(|n| n.parent) {
            if let Some(p) = self.nodes.get_mut(&parent) {
                p.children.remove(&id);
            }
        }
        self.remove_detached(id)
    }

    /// Removes a node already unlinked from its parent, and its descendants, iteratively (a long
    /// delegation chain must not overflow the host stack), running each node's hooks as it goes: so
    /// every revocation hook has run when this returns.
    fn remove_detached(&mut self, id: CapId) -> usize {
        if self.nodes.contains_key(&id) {
            // Before anything is removed (a node already gone removes nothing and ticks nothing), under
            // the lock that every filled cache entry read the count under: no entry filled before this
            // removal is used after it returns.
            self.removals.tick();
        }
        let mut stack = vec![id];
        let mut removed = 0;
        while let Some(id) = stack.pop() {
            let Some(node) = self.nodes.remove(&id) else {
                continue;
            };
            removed += 1;
            stack.extend(node.children);
            match node.holder {
                Holder::Root => {
                    self.roots.remove(&node.region.id());
                }
                Holder::Slot(instance, slot) => {
                    if let Some(t) = self.tables.get_mut(&instance) {
                        t.free(slot);
                    }
                }
                Holder::Inbox(instance) => {
                    if let Some(inbox) = self.inboxes.get_mut(&instance) {
                        inbox.remove(&id);
                    }
                }
                Holder::Members => {
                    if self.members.get(&node.region.id()) == Some(&id) {
                        self.members.remove(&node.region.id());
                    }
                }
            }
            if let Some(t) = node.charged {
                t.release(Resource::Handles, 1);
            }
            // Revocations first: whatever a later hook does, no access outlives its capability.
            let (revocations, releases): (Vec<_>, Vec<_>) =
                node.cleanups.into_iter().map(|(_, hook)| hook).partition(Cleanup::revokes);
            for hook in revocations.into_iter().chain(releases) {
                if let Err(e) = hook.run() {
                    self.failures.push(e);
                }
            }
        }
        removed
    }

    /// Attaches a cleanup hook to a capability.
    ///
    /// # Errors
    /// [`CapError::Gone`] if the capability no longer exists.
    pub fn add_cleanup(&mut self, id: CapId, tag: CleanupTag, hook: Cleanup) -> Result<(), CapError> {
        let node = self.nodes.get_mut(&id).ok_or(CapError::Gone)?;
        node.cleanups.push((tag, hook));
        Ok(())
    }

    /// Whether a capability has a hook with this tag.
    pub fn has_cleanup(&self, id: CapId, tag: CleanupTag) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.cleanups.iter().any(|(t, _)| *t == tag))
    }

    /// Runs and removes the hooks with this tag; returns how many ran.
    ///
    /// # Errors
    /// [`CapError::NotRevoked`] (or whatever else it returned) if a revocation hook failed; every hook
    /// with the tag ran and is gone all the same.
    pub fn run_cleanup(&mut self, id: CapId, tag: CleanupTag) -> Result<usize, CapError> {
        let run = self.take_cleanup(id, tag);
        let n = run.len();
        for hook in run {
            if let Err(e) = hook.run() {
                self.failures.push(e);
            }
        }
        self.take_failures().map(|()| n)
    }

    /// Removes the hooks with this tag without running them (what they would undo was undone some
    /// other way, as when a guest unmaps its window); returns how many were dropped.
    pub fn drop_cleanup(&mut self, id: CapId, tag: CleanupTag) -> usize {
        self.take_cleanup(id, tag).len()
    }

    fn take_cleanup(&mut self, id: CapId, tag: CleanupTag) -> Vec<Cleanup> {
        let Some(node) = self.nodes.get_mut(&id) else { return Vec::new() };
        let (taken, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut node.cleanups).into_iter().partition(|(t, _)| *t == tag);
        node.cleanups = keep;
        taken.into_iter().map(|(_, hook)| hook).collect()
    }

    /// Number of live capabilities (all nodes, roots included), for leak checks.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no capabilities at all.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Number of open handles of an instance.
    pub fn handles_of(&self, instance: InstanceId) -> usize {
        self.tables.get(&instance).map_or(0, HandleTable::live)
    }
}
