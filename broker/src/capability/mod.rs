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

mod table;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use broker_abi::rights as bits;

use crate::region::{Region, RegionId};
use crate::runtime::InstanceId;
use crate::tenant::{QuotaError, Resource, Tenant};

pub use table::Handle;
use table::HandleTable;

/// A set of capability rights.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rights(u32);

impl Rights {
    /// Read the region's bytes.
    pub const READ: Rights = Rights(bits::READ);
    /// Write the region's bytes.
    pub const WRITE: Rights = Rights(bits::WRITE);
    /// Map the region (shared mode).
    pub const MAP: Rights = Rights(bits::MAP);
    /// Delegate the capability to another instance.
    pub const GRANT: Rights = Rights(bits::GRANT);
    /// Watch the region for changes.
    pub const WATCH: Rights = Rights(bits::WATCH);
    /// Every right.
    pub const ALL: Rights = Rights(bits::ALL);
    /// No right.
    pub const NONE: Rights = Rights(0);

    /// Rights from ABI bits; `None` if any bit is unknown.
    pub fn from_bits(b: u32) -> Option<Rights> {
        (b & !bits::ALL == 0).then_some(Rights(b))
    }

    /// The ABI bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether every right in `other` is in `self`.
    pub fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Rights {
    type Output = Rights;
    fn bitor(self, rhs: Rights) -> Rights {
        Rights(self.0 | rhs.0)
    }
}

impl fmt::Debug for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names =
            [(bits::READ, 'r'), (bits::WRITE, 'w'), (bits::MAP, 'm'), (bits::GRANT, 'g'), (bits::WATCH, 'n')];
        for (bit, c) in names {
            write!(f, "{}", if self.0 & bit != 0 { c } else { '-' })?;
        }
        Ok(())
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
        let oob = CapError::OutOfBounds { offset: rel_offset, len: len_i, cap_len: self.len };
        let off = u64::try_from(rel_offset).map_err(|_| oob.clone())?;
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.offset + off),
            _ => Err(oob),
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// The region's root: its owner tenant.
    Root,
    /// A slot of an instance's handle table.
    Slot(InstanceId, u32),
    /// An instance's inbox of received grants, opened by name.
    Inbox(InstanceId),
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

    /// Removes an instance's table and inbox, and every capability it held or that was derived from one.
    pub fn remove_instance(&mut self, instance: InstanceId) {
        let held: Vec<CapId> = self
            .nodes
            .iter()
            .filter(|(_, n)| matches!(n.holder, Holder::Slot(i, _) | Holder::Inbox(i) if i == instance))
            .map(|(id, _)| *id)
            .collect();
        for id in held {
            self.remove_subtree(id);
        }
        self.tables.remove(&instance);
        self.inboxes.remove(&instance);
    }

    /// Removes a region's whole tree (on destroy).
    pub fn remove_region(&mut self, region: RegionId) {
        if let Some(root) = self.roots.remove(&region) {
            self.remove_subtree(root);
        }
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
            Node {
                region,
                rights,
                range,
                parent: Some(parent),
                children: BTreeSet::new(),
                holder: Holder::Slot(instance, slot),
                charged: Some(Arc::clone(tenant)),
            },
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
        self.link(
            id,
            parent,
            Node {
                region,
                rights,
                range,
                parent: Some(parent),
                children: BTreeSet::new(),
                holder: Holder::Inbox(target),
                charged: Some(Arc::clone(tenant)),
            },
        );
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
        Ok(self.revoke_children(id))
    }

    /// Revokes every capability derived from `id`; returns how many were removed.
    pub fn revoke_children(&mut self, id: CapId) -> usize {
        let children = self.nodes.get_mut(&id).map(|n| std::mem::take(&mut n.children)).unwrap_or_default();
        children.into_iter().map(|c| self.remove_detached(c)).sum()
    }

    /// Closes `instance`'s `handle`: removes it and everything derived from it.
    ///
    /// # Errors
    /// [`CapError::InvalidHandle`] or [`CapError::StaleHandle`].
    pub fn close(&mut self, instance: InstanceId, handle: Handle) -> Result<(), CapError> {
        let id = self.lookup(instance, handle)?.id;
        self.remove_subtree(id);
        Ok(())
    }

    /// Removes `id` and its descendants; returns how many nodes were removed.
    pub fn remove_subtree(&mut self, id: CapId) -> usize {
        if let Some(parent) = self.nodes.get(&id).and_then(|n| n.parent) {
            if let Some(p) = self.nodes.get_mut(&parent) {
                p.children.remove(&id);
            }
        }
        self.remove_detached(id)
    }

    /// Removes a node already unlinked from its parent, and its descendants, iteratively (a long
    /// delegation chain must not overflow the host stack).
    fn remove_detached(&mut self, id: CapId) -> usize {
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
            }
            if let Some(t) = node.charged {
                t.release(Resource::Handles, 1);
            }
        }
        removed
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
