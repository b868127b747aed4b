//! Unit tests of the derivation tree: attenuation, cascading revoke, close, quota charging.

use std::sync::Arc;

use super::*;
use crate::mode::Mode;
use crate::name::Name;
use crate::tenant::{Quotas, TenantId};

fn setup(handles: u64) -> (CapSpace, CapId, Arc<Tenant>) {
    let tenant =
        Tenant::new(TenantId(1), Name::new("t").expect("name"), Quotas { handles, ..Quotas::default() });
    let region = Region::new(
        RegionId(1),
        Name::new("r").expect("name"),
        TenantId(1),
        Name::new("t").expect("name"),
        100,
        Mode::Handle,
        crate::mode::ConflictPolicy::Reject,
        crate::region::Backing::Ephemeral,
    )
    .expect("region");
    let mut space = CapSpace::new();
    let root = space.add_root(Arc::new(region));
    for i in 1..=3 {
        space.add_instance(InstanceId(i));
    }
    (space, root, tenant)
}

#[test]
fn derivation_only_shrinks() {
    let (mut s, root, t) = setup(100);
    let a = InstanceId(1);
    let h = s.derive_handle(root, Rights::READ | Rights::GRANT, 10, 50, a, &t).expect("derive");
    let cap = s.lookup(a, h).expect("live");
    assert_eq!(cap.range, CapRange { offset: 10, len: 50 });
    assert_eq!(
        s.derive_handle(cap.id, Rights::WRITE, 0, 1, a, &t),
        Err(CapError::Escalation { requested: Rights::WRITE, held: Rights::READ | Rights::GRANT })
    );
    assert_eq!(
        s.derive_handle(cap.id, Rights::READ, 40, 11, a, &t),
        Err(CapError::OutOfBounds { offset: 40, len: 11, cap_len: 50 })
    );
    assert!(s.derive_handle(cap.id, Rights::READ, -1, 1, a, &t).is_err());
    assert!(s.derive_handle(cap.id, Rights::READ, i64::MAX, 2, a, &t).is_err());
    let sub = s.derive_handle(cap.id, Rights::READ, 40, LEN_TO_END_TEST, a, &t).expect("to end");
    assert_eq!(s.lookup(a, sub).expect("live").range, CapRange { offset: 50, len: 10 });
}

const LEN_TO_END_TEST: i64 = broker_abi::LEN_TO_END;

#[test]
fn revoke_cascades_and_close_removes_self() {
    let (mut s, root, t) = setup(100);
    let (a, b, c) = (InstanceId(1), InstanceId(2), InstanceId(3));
    let ha = s.derive_handle(root, Rights::ALL, 0, -1, a, &t).expect("a");
    let cap_a = s.lookup(a, ha).expect("a live").id;
    let gb = s.derive_grant(cap_a, Rights::READ | Rights::GRANT, 0, -1, b, &t).expect("grant b");
    let hb = s.derive_handle(gb, Rights::READ | Rights::GRANT, 0, -1, b, &t).expect("b opens");
    let cap_b = s.lookup(b, hb).expect("b live").id;
    let gc = s.derive_grant(cap_b, Rights::READ, 0, 10, c, &t).expect("grant c");
    let hc = s.derive_handle(gc, Rights::READ, 0, -1, c, &t).expect("c opens");
    assert_eq!(t.usage().handles, 5);

    assert_eq!(s.revoke(a, ha), Ok(4));
    assert_eq!(s.lookup(b, hb).map(|c| c.id), Err(CapError::StaleHandle(hb.raw())));
    assert_eq!(s.lookup(c, hc).map(|c| c.id), Err(CapError::StaleHandle(hc.raw())));
    assert!(s.lookup(a, ha).is_ok(), "revoke keeps the revoker's own capability");
    assert_eq!(s.find_grant(b, "t", "r"), None);
    assert_eq!(t.usage().handles, 1);

    s.close(a, ha).expect("close");
    assert_eq!(s.lookup(a, ha).map(|c| c.id), Err(CapError::StaleHandle(ha.raw())));
    assert_eq!(s.close(a, ha), Err(CapError::StaleHandle(ha.raw())));
    assert_eq!(t.usage().handles, 0);
    assert_eq!(s.len(), 1, "only the root remains");
}

#[test]
fn handle_quota_refuses_without_side_effects() {
    let (mut s, root, t) = setup(2);
    let a = InstanceId(1);
    s.derive_handle(root, Rights::READ, 0, -1, a, &t).expect("1");
    s.derive_handle(root, Rights::READ, 0, -1, a, &t).expect("2");
    let err = s.derive_handle(root, Rights::READ, 0, -1, a, &t).expect_err("quota");
    assert!(matches!(err, CapError::Quota(_)));
    assert_eq!(s.handles_of(a), 2);
    assert_eq!(s.len(), 3);
}

#[test]
fn instance_exit_removes_everything_it_held_and_derived() {
    let (mut s, root, t) = setup(100);
    let (a, b) = (InstanceId(1), InstanceId(2));
    let ha = s.derive_handle(root, Rights::ALL, 0, -1, a, &t).expect("a");
    let cap_a = s.lookup(a, ha).expect("live").id;
    let gb = s.derive_grant(cap_a, Rights::READ, 0, -1, b, &t).expect("grant");
    let hb = s.derive_handle(gb, Rights::READ, 0, -1, b, &t).expect("open");
    s.remove_instance(a);
    assert!(s.lookup(b, hb).is_err());
    assert_eq!(s.len(), 1);
    assert!(t.is_idle());
}

#[test]
fn a_long_delegation_chain_is_removed_without_recursion() {
    let (mut s, root, t) = setup(1_000_000);
    let a = InstanceId(1);
    let mut parent = root;
    for _ in 0..100_000 {
        parent = s.derive_grant(parent, Rights::READ, 0, -1, a, &t).expect("grant");
    }
    assert_eq!(s.revoke_children(root), 100_000);
    assert!(t.is_idle());
}
