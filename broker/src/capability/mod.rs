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

use crate::mode::shared::{self, MapAt, MemoryFence, ShareError, Tombstone, Window, HOST_PAGE};
use crate::mode::Mode;
use crate::region::{Region, RegionId};
use crate::runtime::InstanceId;
use crate::tenant::{QuotaError, Resource, Tenant};

pub use table::Handle;
use table::HandleTable;

pub use broker_abi::Rights;

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
    /// Capabilities were removed, but a shared window mapped through one of them could not be taken
    /// away (the kernel refused even the scrub of the memory); that instance is being stopped.
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
    /// The shared window mapped through this capability, if any.
    window: Option<Window>,
    /// What to undo when the capability goes: watches, native callback registrations, objects.
    cleanups: Vec<(CleanupTag, Cleanup)>,
}

/// What a cleanup hook undoes, so it can be found and run early (unwatch, unregister).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CleanupTag {
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
            window: None,
            cleanups: Vec::new(),
        }
    }
}

/// A hook run once when its capability is removed (or explicitly, by tag).
pub struct Cleanup(Box<dyn FnOnce() + Send>);

impl Cleanup {
    /// Wraps a hook.
    pub fn new(f: impl FnOnce() + Send + 'static) -> Cleanup {
        Cleanup(Box::new(f))
    }
}

impl fmt::Debug for Cleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cleanup")
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
    /// Where revoked windows were, per instance, so traps there can name the region.
    tombstones: HashMap<InstanceId, Vec<Tombstone>>,
    /// Windows whose revocation failed; their instances were told to stop, and they go with them.
    unrevoked: Vec<Window>,
    /// Revocation failures since the last public operation reported them.
    failures: Vec<CapError>,
    /// Each region's membership node (see [`CapSpace::set_members`]), if it has one.
    members: HashMap<RegionId, CapId>,
    /// The instance that created each guest-created region: it may open it again by name.
    creators: HashMap<RegionId, InstanceId>,
}

/// What a guest asks for when it maps a window.
pub struct MapRequest {
    /// Guest address of the window (page aligned).
    pub guest_ptr: u32,
    /// Length in bytes (the capability's length rounded up to whole pages).
    pub len: u64,
    /// Map read-write (needs the write right) rather than read-only.
    pub writable: bool,
    /// Host address of the guest's linear memory.
    pub memory_base: usize,
    /// The linear memory's current size.
    pub memory_size: usize,
    pub(crate) fence: MemoryFence,
    /// The instance's tenant, charged for the window.
    pub(crate) tenant: Arc<Tenant>,
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
                window: None,
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
    /// from them. The caller drops the instance's store (and memory) next.
    ///
    /// # Errors
    /// [`CapError::NotRevoked`] if a window of another instance, derived from one of these
    /// capabilities, could not be revoked.
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
        self.tombstones.remove(&instance);
        // Reopening a region it created is one of the capabilities it held: stopped or restarted, it
        // holds none.
        self.creators.retain(|_, creator| *creator != instance);
        // Its memory goes with its store, right after this.
        self.unrevoked.retain(|w| w.instance != instance);
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
    /// [`CapError::NotRevoked`] if a window could not be revoked (its instance is being stopped).
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
                window: None,
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

    /// Reports (once) the windows that could not be revoked since the last report.
    fn take_failures(&mut self) -> Result<(), CapError> {
        match std::mem::take(&mut self.failures).into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
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
    /// [`CapError::NotRevoked`] if a window could not be revoked (its instance is being stopped): the
    /// capabilities are gone, but the revocation is not reported as complete.
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
    /// revocation failures with `take_failures`.
    fn remove_subtree(&mut self, id: CapId) -> usize {
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
                Holder::Members => {
                    if self.members.get(&node.region.id()) == Some(&id) {
                        self.members.remove(&node.region.id());
                    }
                }
            }
            if let Some(t) = node.charged {
                t.release(Resource::Handles, 1);
            }
            if let Some(w) = node.window {
                let instance = w.instance;
                match w.revoke() {
                    Ok(tomb) => self.tombstones.entry(instance).or_default().push(tomb),
                    Err(failed) => {
                        let (w, e) = *failed;
                        self.failures.push(match e {
                            ShareError::NotRevoked { region, reason } => {
                                CapError::NotRevoked { region, reason }
                            }
                            other => CapError::NotRevoked {
                                region: w.region.qualified_name(),
                                reason: other.to_string(),
                            },
                        });
                        self.unrevoked.push(w);
                    }
                }
            }
            // Hooks run after the window is gone: whatever a hook does, no mapping is left unrecorded.
            for (_, hook) in node.cleanups {
                (hook.0)();
            }
        }
        removed
    }

    /// Maps the region of `instance`'s `handle` into its linear memory at `req.guest_ptr`.
    ///
    /// The mapping is made under this space's lock, so a concurrent revoke either precedes it (the
    /// handle is stale) or follows it (and unmaps it): no window outlives its capability.
    ///
    /// # Errors
    /// Handle and rights errors, [`ShareError`] for mode, alignment, length, range and overlap problems.
    pub fn map_window(
        &mut self,
        instance: InstanceId,
        handle: Handle,
        req: MapRequest,
    ) -> Result<(), ShareError> {
        let cap = self.lookup(instance, handle)?;
        cap.may_map(req.writable)?;
        let mode = cap.region.mode();
        if mode != Mode::Shared {
            return Err(ShareError::WrongMode(mode));
        }
        let end = cap.range.offset + cap.range.len;
        if u64::from(req.guest_ptr) % HOST_PAGE != 0
            || cap.range.offset % HOST_PAGE != 0
            || (end % HOST_PAGE != 0 && end != cap.region.size())
        {
            return Err(ShareError::Unaligned {
                guest_ptr: req.guest_ptr,
                offset: cap.range.offset,
                len: cap.range.len,
            });
        }
        let expected = cap.range.len.div_ceil(HOST_PAGE) * HOST_PAGE;
        if req.len != expected {
            return Err(ShareError::LengthMismatch { given: req.len, expected });
        }
        let memory = u64::try_from(req.memory_size).unwrap_or(u64::MAX);
        if u64::from(req.guest_ptr).checked_add(req.len).is_none_or(|e| e > memory) {
            return Err(ShareError::BeyondMemory {
                guest_ptr: req.guest_ptr,
                len: req.len,
                memory_size: memory,
            });
        }
        if self.nodes.get(&cap.id).is_some_and(|n| n.window.is_some()) {
            return Err(ShareError::AlreadyMapped);
        }
        // A revoked window the new one covers only in part would lose its record (and with it the
        // guest's way to get those pages back): refuse; unmap the revoked window first.
        let partly_covers_a_revoked_window = self.tombstones.get(&instance).is_some_and(|ts| {
            ts.iter().any(|t| {
                shared::overlap(t.guest_ptr, t.len, req.guest_ptr, req.len)
                    && !(t.guest_ptr >= req.guest_ptr
                        && u64::from(t.guest_ptr) + t.len <= u64::from(req.guest_ptr) + req.len)
            })
        });
        if partly_covers_a_revoked_window {
            return Err(ShareError::Overlap { guest_ptr: req.guest_ptr, len: req.len });
        }
        let clash = self
            .nodes
            .values()
            .filter_map(|n| n.window.as_ref())
            .any(|w| w.instance == instance && w.overlaps(req.guest_ptr, req.len));
        if clash {
            return Err(ShareError::Overlap { guest_ptr: req.guest_ptr, len: req.len });
        }
        // Every window (and every revoked one not yet unmapped) costs the process kernel mappings: bound
        // them per instance and per tenant. A new window replaces the tombstones it covers.
        let limit = req.tenant.quotas().windows_per_instance;
        let held = self.windows_of(instance).saturating_sub(self.tombstones.get(&instance).map_or(0, |ts| {
            ts.iter().filter(|t| shared::overlap(t.guest_ptr, t.len, req.guest_ptr, req.len)).count()
        }));
        let held = u64::try_from(held).unwrap_or(u64::MAX);
        if held >= limit {
            return Err(ShareError::Quota(QuotaError {
                resource: Resource::InstanceWindows,
                limit,
                in_use: held,
                requested: 1,
            }));
        }
        // A window over the instance's own revoked window takes over that tombstone's place in the
        // quota (the tombstone goes once the window is mapped); otherwise it reserves a new one.
        let covered = self.tombstones.get_mut(&instance).and_then(|ts| {
            let i = ts.iter().position(|t| shared::overlap(t.guest_ptr, t.len, req.guest_ptr, req.len))?;
            ts.get_mut(i).and_then(Tombstone::take_charge)
        });
        let charge = match covered {
            Some(c) => c,
            None => req.tenant.reserve(Resource::Windows, 1)?,
        };
        let at = MapAt {
            instance,
            memory_base: req.memory_base,
            guest_ptr: req.guest_ptr,
            len: req.len,
            region_offset: cap.range.offset,
            writable: req.writable,
            fence: req.fence,
            charge,
        };
        #[allow(unsafe_code, reason = "the one place windows are created; this type keeps their invariant")]
        let mapped = {
            // SAFETY: the range was checked to lie inside the caller's accessible linear memory and to be
            // page aligned; the caller is the instance itself, inside a host call that holds no reference
            // into its memory; the window is stored in the capability's node, and an instance's nodes are
            // removed (unmapping the window) before its store and memory drop.
            unsafe { Window::map(Arc::clone(&cap.region), at) }
        };
        let window = mapped.map_err(|e| ShareError::Os(e.to_string()))?;
        if let Some(tombs) = self.tombstones.get_mut(&instance) {
            tombs.retain(|t| !shared::overlap(t.guest_ptr, t.len, req.guest_ptr, req.len));
        }
        if let Some(n) = self.nodes.get_mut(&cap.id) {
            n.window = Some(window);
        }
        Ok(())
    }

    /// Unmaps the window at `guest_ptr` mapped through `handle`, giving the guest zeroed pages back. A
    /// window already revoked (stale handle) is cleaned up the same way.
    ///
    /// # Errors
    /// [`ShareError::NotMapped`], or the handle's error if it is stale and no revoked window was there.
    pub(crate) fn unmap_window(
        &mut self,
        instance: InstanceId,
        handle: Handle,
        guest_ptr: u32,
        memory_base: usize,
        fence: &MemoryFence,
    ) -> Result<(), ShareError> {
        match self.lookup(instance, handle) {
            Ok(cap) => {
                let node = self.nodes.get_mut(&cap.id).ok_or(CapError::Gone)?;
                if node.window.as_ref().is_none_or(|w| w.guest_ptr != guest_ptr) {
                    return Err(ShareError::NotMapped { guest_ptr });
                }
                let window = node.window.take().ok_or(ShareError::NotMapped { guest_ptr })?;
                window.unmap().map_err(|(window, e)| {
                    // Still mapped: keep it where revocation finds it.
                    node.window = Some(window);
                    ShareError::Os(e.to_string())
                })
            }
            Err(e) => {
                let tombs = self.tombstones.get_mut(&instance);
                let found = tombs.as_ref().and_then(|t| t.iter().position(|t| t.guest_ptr == guest_ptr));
                let (Some(tombs), Some(i)) = (tombs, found) else { return Err(e.into()) };
                let Some(tomb) = tombs.get(i) else { return Err(e.into()) };
                // SAFETY: the tombstone records a window this instance mapped inside its own memory, which is
                // alive (tombstones are dropped with the instance); the caller is the instance itself.
                #[allow(unsafe_code, reason = "restores pages of the caller's own memory")]
                let restored = unsafe { shared::restore(memory_base, tomb, fence) };
                restored.map_err(|e| ShareError::Os(e.to_string()))?;
                // Restored: the tombstone (and the window quota it held) goes.
                tombs.swap_remove(i);
                Ok(())
            }
        }
    }

    /// A description of what was at wasm address `addr` of `instance`, if it is a revoked window or a
    /// read-only one, to explain a memory fault there.
    pub fn explain_fault(&self, instance: InstanceId, addr: u64) -> Option<String> {
        let inside = |ptr: u32, len: u64| addr >= u64::from(ptr) && addr < u64::from(ptr).saturating_add(len);
        if let Some(t) =
            self.tombstones.get(&instance).and_then(|ts| ts.iter().find(|t| inside(t.guest_ptr, t.len)))
        {
            return Some(format!(
                "access to the shared window of region {} at {addr:#x}, which was revoked",
                t.region
            ));
        }
        self.nodes
            .values()
            .filter_map(|n| n.window.as_ref())
            .find(|w| w.instance == instance && inside(w.guest_ptr, w.len))
            .map(|w| {
                let kind = if w.writable { "read-write" } else { "read-only" };
                format!(
                    "fault in the {kind} shared window of region {} at {addr:#x}",
                    w.region.qualified_name()
                )
            })
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
    pub fn run_cleanup(&mut self, id: CapId, tag: CleanupTag) -> usize {
        let Some(node) = self.nodes.get_mut(&id) else { return 0 };
        let (run, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut node.cleanups).into_iter().partition(|(t, _)| *t == tag);
        node.cleanups = keep;
        let n = run.len();
        for (_, hook) in run {
            (hook.0)();
        }
        n
    }

    /// Number of live windows (for leak checks).
    pub fn window_count(&self) -> usize {
        self.nodes.values().filter(|n| n.window.is_some()).count()
    }

    /// Windows an instance holds, revoked ones not yet unmapped (tombstones) included: what its window
    /// quota counts.
    pub fn windows_of(&self, instance: InstanceId) -> usize {
        let live =
            self.nodes.values().filter_map(|n| n.window.as_ref()).filter(|w| w.instance == instance).count();
        live + self.tombstones.get(&instance).map_or(0, Vec::len)
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
