//! What a guest may be given: the handles an app gets by opening a region by name, creating one,
//! restricting a handle, and the grants it makes to other instances. The policy (no ambient authority
//! within a tenant) lives here, on top of the registries and the capability space of
//! [`crate::registry::Core`].

use broker_abi::LEN_TO_END;

use super::GuestCtx;
use crate::capability::{CapError, Handle, Rights};
use crate::error::Error;
use crate::mode::{ConflictPolicy, Mode};
use crate::name::{Name, QualifiedName};
use crate::region::Backing;
use crate::registry::Core;

/// Opens `name` for a guest, with what it was given and nothing more (no ambient authority within
/// a tenant): a region this instance created (all rights), the latest grant to this instance, or a
/// region of its own tenant opened to the tenant's apps (its member rights), in that order.
pub(crate) fn open(core: &Core, ctx: &GuestCtx, q: &QualifiedName) -> Result<Handle, Error> {
    let own = ctx.tenant.name();
    let shown = || match &q.tenant {
        Some(t) => format!("{t}/{}", q.name),
        None => q.name.to_string(),
    };
    let owner = q.tenant.as_ref().unwrap_or(own);
    let own_region = if owner == own { core.region_named(ctx.tenant.id(), &q.name) } else { None };
    let mut caps = core.caps.lock();
    let created = own_region.filter(|r| caps.creator(*r) == Some(ctx.instance)).and_then(|r| caps.root(r));
    let source = created
        .or_else(|| caps.find_grant(ctx.instance, owner.as_str(), q.name.as_str()))
        .or_else(|| own_region.and_then(|r| caps.members(r)));
    let Some(source) = source else {
        // A region of its own tenant exists (the tenant's operator made it): say why it is closed.
        return Err(if own_region.is_some() {
            Error::RegionNotGranted(shown())
        } else {
            Error::RegionNotFound(shown())
        });
    };
    let rights = caps.cap(source).map_err(|_| Error::RegionNotFound(shown()))?.rights;
    Ok(caps.derive_handle(source, rights, 0, LEN_TO_END, ctx.instance, &ctx.tenant)?)
}

/// Creates a region for a guest, owned by its tenant, and hands its creator a handle with every right
/// (undone if the handle cannot be made).
pub(crate) fn create_region(
    core: &Core,
    ctx: &GuestCtx,
    name: Name,
    size: u64,
    mode: Mode,
) -> Result<Handle, Error> {
    let region =
        core.create_region(&ctx.tenant, name, size, mode, ConflictPolicy::default(), Backing::Ephemeral)?;
    let derived = {
        let mut caps = core.caps.lock();
        // Its creator may open it again by name; other apps need a grant.
        caps.set_creator(region.id(), ctx.instance);
        caps.root(region.id())
            .ok_or(CapError::Gone)
            .and_then(|root| caps.derive_handle(root, Rights::ALL, 0, LEN_TO_END, ctx.instance, &ctx.tenant))
    };
    derived.map_err(|e| {
        // Creating without being able to hold it would leave an orphan: undo the creation.
        let _ = core.destroy_region(region.id());
        Error::from(e)
    })
}

/// A new handle to part of what `handle` reaches, with at most its rights.
pub(crate) fn restrict(
    core: &Core,
    ctx: &GuestCtx,
    handle: Handle,
    rights: Rights,
    offset: i64,
    len: i64,
) -> Result<Handle, Error> {
    let mut caps = core.caps.lock();
    let cap = caps.lookup(ctx.instance, handle)?;
    Ok(caps.derive_handle(cap.id, rights, offset, len, ctx.instance, &ctx.tenant)?)
}

/// Grants part of what `handle` reaches to another instance (`GRANT` needed), named within the caller's
/// tenant or as `tenant/instance`.
pub(crate) fn grant(
    core: &Core,
    ctx: &GuestCtx,
    handle: Handle,
    target: &QualifiedName,
    rights: Rights,
    offset: i64,
    len: i64,
) -> Result<(), Error> {
    // The handle is checked first, so a forged handle gets a handle error whatever the target.
    let cap = core.caps.lock().lookup(ctx.instance, handle)?;
    cap.require(Rights::GRANT)?;
    let tenant_id = match &target.tenant {
        None => ctx.tenant.id(),
        Some(t) => {
            core.tenant_named(t).ok_or_else(|| Error::InstanceNotFound(format!("{t}/{}", target.name)))?
        }
    };
    let target_id = core
        .instance_named(tenant_id, &target.name)
        .ok_or_else(|| Error::InstanceNotFound(target.name.to_string()))?;
    // Revoked in between? Then the derivation finds its parent gone and refuses.
    core.caps.lock().derive_grant(cap.id, rights, offset, len, target_id, &ctx.tenant)?;
    Ok(())
}
