//! No ambient authority inside a tenant (issue 15, item 1): an app opens a region of its own tenant only
//! if the region was granted to it, if it created the region, or if the region is opened to the
//! tenant's apps (`members`), and then with exactly those rights; revoking takes the access away again.

use broker::{Broker, InstanceId, Mode, RegionId, RegionSpec, Rights, TenantId};
use broker_tests::{args, broker, call, code, handle, open_in_attacker, start, tenant, Status};

/// Tenant "t" with a handle-mode region "data" that no app was given, and two apps of `handle_attacker`.
fn world() -> (Broker, TenantId, RegionId, InstanceId, InstanceId) {
    let b = broker();
    let t = tenant(&b, "t");
    let data = b.create_region(t, RegionSpec::new("data", 4096, Mode::Handle)).expect("region");
    let a = start(&b, t, "handle_attacker", "a");
    let c = start(&b, t, "handle_attacker", "c");
    (b, t, data, a, c)
}

/// Writes one byte from the app's scratch buffer at `offset` through `h`; the status.
fn write(b: &Broker, app: InstanceId, h: i32, offset: i64) -> i64 {
    let scratch = call(b, app, "scratch", args![]);
    let scratch = i32::try_from(scratch).expect("pointer");
    assert_eq!(call(b, app, "scratch_put", args![0, 5i64, 1]), 0);
    call(b, app, "write_raw", args![h, offset, scratch, 1])
}

/// Reads one byte at `offset` through `h` into the scratch buffer; the status.
fn read(b: &Broker, app: InstanceId, h: i32, offset: i64) -> i64 {
    let scratch = i32::try_from(call(b, app, "scratch", args![])).expect("pointer");
    call(b, app, "read_raw", args![h, offset, scratch, 1])
}

#[test]
fn an_app_opens_a_region_of_its_own_tenant_only_with_what_it_was_granted() {
    let (b, _, data, a, c) = world();
    assert_eq!(call(&b, a, "open_data", args![]), code(Status::PermissionDenied), "nothing was granted");

    // A read-only grant gives exactly that: reads, and no writes.
    let grant = b.grant(data, a, Rights::READ, 0, None).expect("grant");
    let h = handle(call(&b, a, "open_data", args![]));
    assert_eq!(read(&b, a, h, 0), 0);
    assert_eq!(write(&b, a, h, 0), code(Status::PermissionDenied));
    assert_eq!(b.region_info(data).expect("info").version, 0, "nothing was written");
    assert_eq!(call(&b, c, "open_data", args![]), code(Status::PermissionDenied), "c was given nothing");

    // Revoking the grant takes the access away, handle included, within the tenant too.
    b.revoke_grant(grant).expect("revoke");
    assert_eq!(read(&b, a, h, 0), code(Status::StaleHandle));
    assert_eq!(call(&b, a, "open_data", args![]), code(Status::PermissionDenied));

    // A read-write grant of a sub-range allows writes there only.
    b.grant(data, a, Rights::READ | Rights::WRITE, 100, Some(10)).expect("grant");
    let h = handle(call(&b, a, "open_data", args![]));
    assert_eq!(write(&b, a, h, 9), 0);
    assert_eq!(write(&b, a, h, 10), code(Status::OutOfBounds));
    let mut byte = [0u8; 1];
    b.read_region(data, 109, &mut byte).expect("read");
    assert_eq!(byte, [5], "offsets are relative to the granted range");
}

#[test]
fn the_app_that_created_a_region_may_open_it_again_and_its_siblings_may_not() {
    let (b, t, _, a, c) = world();
    assert_eq!(call(&b, a, "create_raw", args![4096i64, 0]), 0);
    let name = "made-by-attacker";
    let open = |app: InstanceId| open_in_attacker(&b, app, name);
    let again = handle(open(a));
    assert_eq!(write(&b, a, again, 0), 0, "its creator holds every right");
    assert_eq!(open(c), code(Status::PermissionDenied), "a sibling app was given nothing");
    // The creator's right to reopen it is a capability like the others: revoke-all takes it away.
    let region = b.region_id(t, name).expect("created");
    b.revoke_all(region).expect("revoke all");
    assert_eq!(read(&b, a, again, 0), code(Status::StaleHandle));
    assert_eq!(open(a), code(Status::PermissionDenied), "revoke-all took the creator's reopening too");
    // Until it is granted, by the host or by the creator.
    b.grant(region, c, Rights::READ, 0, None).expect("grant");
    let h = handle(open(c));
    assert_eq!(read(&b, c, h, 0), 0);
    assert_eq!(write(&b, c, h, 0), code(Status::PermissionDenied));
}

#[test]
fn a_restart_takes_away_the_creators_reopening_as_every_capability() {
    let (b, _, _, a, _) = world();
    assert_eq!(call(&b, a, "create_raw", args![4096i64, 0]), 0);
    b.restart_instance(a).expect("restart");
    assert_eq!(open_in_attacker(&b, a, "made-by-attacker"), code(Status::PermissionDenied));
}

#[test]
fn member_rights_open_a_region_to_the_tenants_apps_and_changing_them_revokes() {
    let (b, _, data, a, c) = world();
    assert_eq!(b.region_info(data).expect("info").members, Rights::NONE, "closed by default");
    b.set_members(data, Rights::READ).expect("members");
    assert_eq!(b.region_info(data).expect("info").members, Rights::READ);
    let ha = handle(call(&b, a, "open_data", args![]));
    let hc = handle(call(&b, c, "open_data", args![]));
    assert_eq!(read(&b, a, ha, 0), 0);
    assert_eq!(write(&b, c, hc, 0), code(Status::PermissionDenied), "members hold exactly the member rights");

    // Closing the region to members revokes what they opened through it.
    b.set_members(data, Rights::NONE).expect("members");
    assert_eq!(read(&b, a, ha, 0), code(Status::StaleHandle));
    assert_eq!(read(&b, c, hc, 0), code(Status::StaleHandle));
    assert_eq!(call(&b, a, "open_data", args![]), code(Status::PermissionDenied));

    // Widening them takes effect at the next open; a grant to one app is kept apart from them.
    b.set_members(data, Rights::READ | Rights::WRITE).expect("members");
    let ha = handle(call(&b, a, "open_data", args![]));
    assert_eq!(write(&b, a, ha, 0), 0);
    // The host revoking every capability to the region keeps the member rights.
    b.revoke_all(data).expect("revoke all");
    assert_eq!(read(&b, a, ha, 0), code(Status::StaleHandle));
    let ha = handle(call(&b, a, "open_data", args![]));
    assert_eq!(read(&b, a, ha, 0), 0, "members open it again after a revoke-all");
    assert_eq!(b.region_info(data).expect("info").members, Rights::READ | Rights::WRITE);
}

#[test]
fn a_region_created_open_to_members_and_other_tenants_unchanged() {
    let b = broker();
    let t = tenant(&b, "t");
    let other = tenant(&b, "other");
    let data = b
        .create_region(t, RegionSpec::new("data", 4096, Mode::Handle).with_members(Rights::READ))
        .expect("region");
    let a = start(&b, t, "handle_attacker", "a");
    let h = handle(call(&b, a, "open_data", args![]));
    assert_eq!(write(&b, a, h, 0), code(Status::PermissionDenied));
    // Member rights are for the owner tenant's apps only: another tenant still needs a grant, and
    // without one the region does not exist for it.
    let m = start(&b, other, "handle_attacker", "m");
    assert_eq!(call(&b, m, "open_data", args![]), code(Status::NotFound), "its own tenant has no data");
    b.grant(data, m, Rights::READ, 0, None).expect("grant");
    assert_eq!(call(&b, m, "open_data", args![]), code(Status::NotFound), "unqualified names are its own");
    assert_eq!(b.region_info(data).expect("info").members, Rights::READ);
    // A region that is gone has no members to set.
    let gone = b.create_region(t, RegionSpec::new("gone", 4096, Mode::Handle)).expect("region");
    b.destroy_region(gone).expect("destroy");
    assert!(matches!(b.set_members(gone, Rights::READ), Err(broker::Error::RegionNotFound(_))));
}
