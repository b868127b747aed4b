//! The conformance suite: the same properties checked under every mode, as iceoryx2 runs one generic
//! test suite against every backend.
//!
//! Each property is a function of the mode, instantiated for handle, mirror and shared by
//! `conformance_tests!`, and drives one guest, `conformance_app`, whose exports are written once against
//! `Region` and the mode-agnostic `View`. Where the modes legitimately differ (a mirror publishes at
//! commit and sees others' writes at refresh, the hardware stops a store into a read-only or revoked
//! shared window by trapping the app) the difference is stated once, in `expect`, and every property
//! reads it from there.

use broker::{
    Broker, Error, InstanceError, InstanceId, Mode, RegionId, RegionSpec, Rights, RunState, TenantId, Val,
};
use broker_tests::{args, broker, call, code, handle, start, tenant, Status};

const PAGE: u64 = 4096;
/// The size of the region every property works on.
const SIZE: u64 = 4 * PAGE;

// Indexes into conformance_app's name tables.
const DATA: i32 = 0;
const ALPHA_DATA: i32 = 1;
const TO_BETA_READER: i32 = 0;
const TO_BETA_RELAY: i32 = 1;
const TO_NOBODY: i32 = 2;

/// How an access the broker must not let through ends.
#[derive(Clone, Copy, Debug)]
enum Refused {
    /// The app gets this status.
    Status(Status),
    /// The app traps, with a message that contains every one of these parts.
    Trap(&'static [&'static str]),
}

/// Everything in which the modes legitimately differ, in one place.
struct Expect {
    /// The view is the app's own copy (a mirror): its writes reach the region at `commit`, and others'
    /// writes reach the view at `refresh`. Otherwise both happen at once.
    copy: bool,
    /// A store in place through a view without the write right: handle and mirror refuse it, and the
    /// hardware stops a store into a read-only window by trapping the app.
    read_only_store: Refused,
    /// Any access through a view after its capability was revoked: a stale handle, or a trap that names
    /// the revoked window's region.
    revoked_access: Refused,
    /// Opening a view without the read right: a mirror acquire and a window map need it; a handle-mode
    /// view opens (`None`) and refuses each read.
    view_without_read: Option<Status>,
    /// Opening a view over a sub-range that neither starts nor ends on a page boundary: only a window
    /// needs whole pages.
    unaligned_view: Option<Status>,
    /// Whether a store through a view (committed) reaches the region's watchers: stores into a shared
    /// window bypass the broker.
    view_store_is_watched: bool,
    /// The shared windows one view maps (`Broker::window_count`).
    windows_per_view: usize,
}

fn expect(mode: Mode) -> Expect {
    let denied = Refused::Status(Status::PermissionDenied);
    let stale = Refused::Status(Status::StaleHandle);
    match mode {
        Mode::Handle => Expect {
            copy: false,
            read_only_store: denied,
            revoked_access: stale,
            view_without_read: None,
            unaligned_view: None,
            view_store_is_watched: true,
            windows_per_view: 0,
        },
        Mode::Mirror => Expect {
            copy: true,
            read_only_store: denied,
            revoked_access: stale,
            view_without_read: Some(Status::PermissionDenied),
            unaligned_view: None,
            view_store_is_watched: true,
            windows_per_view: 0,
        },
        Mode::Shared => Expect {
            copy: false,
            read_only_store: Refused::Trap(&["read-only shared window of region alpha/data"]),
            revoked_access: Refused::Trap(&["shared window of region alpha/data", "which was revoked"]),
            view_without_read: Some(Status::PermissionDenied),
            unaligned_view: Some(Status::Unaligned),
            view_store_is_watched: false,
            windows_per_view: 1,
        },
    }
}

/// Instantiates every property for every mode: `mod <mode> { #[test] fn <property>() }`.
macro_rules! conformance_tests {
    (@mode $module:ident, $mode:expr, [$($property:ident),+ $(,)?]) => {
        mod $module {
            use super::Mode;
            $(
                #[test]
                fn $property() {
                    super::$property($mode)
                }
            )+
        }
    };
    ($($module:ident => $mode:expr),+ $(,)?; $properties:tt) => {
        $(conformance_tests!(@mode $module, $mode, $properties);)+
    };
}

conformance_tests!(
    handle => Mode::Handle,
    mirror => Mode::Mirror,
    shared => Mode::Shared;
    [
        visibility,
        rights,
        write_only,
        delegation,
        revocation,
        closing_revokes_grants,
        host_revocation,
        sub_ranges,
        unaligned_sub_range,
        watch,
        view_code,
        record_members,
    ]
);

/// Tenant alpha owns region "data" (four pages, of the mode under test, open to alpha's apps) and runs
/// "writer"; tenant beta runs "reader" and "relay", which reach the region only through grants.
struct World {
    b: Broker,
    e: Expect,
    alpha: TenantId,
    data: RegionId,
    writer: InstanceId,
    reader: InstanceId,
    relay: InstanceId,
}

fn world(mode: Mode) -> World {
    let b = broker();
    let alpha = tenant(&b, "alpha");
    let beta = tenant(&b, "beta");
    let data = b
        .create_region(alpha, RegionSpec::new("data", SIZE, mode).with_members(Rights::ALL))
        .expect("region");
    let writer = start(&b, alpha, "conformance_app", "writer");
    let reader = start(&b, beta, "conformance_app", "reader");
    let relay = start(&b, beta, "conformance_app", "relay");
    World { b, e: expect(mode), alpha, data, writer, reader, relay }
}

/// A view slot returned by the guest (non-negative), as the `i32` it takes back.
fn slot(v: i64) -> i32 {
    assert!(v >= 0, "expected a view slot, got status {v}");
    i32::try_from(v).expect("small slot")
}

/// Rights as the guest takes them.
fn bits(r: Rights) -> i32 {
    i32::try_from(r.bits()).expect("rights bits fit")
}

impl World {
    fn call(&self, inst: InstanceId, export: &str, args: &[Val]) -> i64 {
        call(&self.b, inst, export, args)
    }

    fn open(&self, inst: InstanceId, sel: i32) -> i32 {
        handle(self.call(inst, "open", args![sel]))
    }

    fn view(&self, inst: InstanceId, h: i32) -> i32 {
        slot(self.call(inst, "view_open", args![h]))
    }

    fn host_u64(&self, at: u64) -> u64 {
        let mut w = [0u8; 8];
        self.b.read_region(self.data, at, &mut w).expect("host read");
        u64::from_le_bytes(w)
    }

    /// Asserts that the region holds exactly these little-endian words and zeros everywhere else.
    fn assert_region_holds(&self, words: &[(u64, u64)]) {
        let mut want = vec![0u8; usize::try_from(SIZE).expect("small")];
        for &(at, v) in words {
            let at = usize::try_from(at).expect("small");
            want[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        let mut got = vec![0u8; want.len()];
        self.b.read_region(self.data, 0, &mut got).expect("host read");
        assert!(got == want, "the region holds other bytes than {words:?}");
    }

    /// Calls `export`, which must be refused as `refused` says; a trapped app refuses later calls.
    fn assert_refused(&self, inst: InstanceId, export: &str, args: &[Val], refused: Refused) {
        match refused {
            Refused::Status(s) => assert_eq!(self.call(inst, export, args), code(s), "{export}"),
            Refused::Trap(parts) => {
                let err = self.b.call(inst, export, args).expect_err("the access must trap");
                let Error::Instance(InstanceError::Trapped { message }) = &err else {
                    panic!("{export}: expected a trap, got {err:?}")
                };
                for part in parts {
                    assert!(message.contains(part), "{export}: {message}");
                }
                let later = self.b.call(inst, "ping", &[]).expect_err("a trapped app refuses calls");
                assert!(
                    matches!(later, Error::Instance(InstanceError::NotRunning { state: RunState::Trapped })),
                    "{later:?}"
                );
            }
        }
    }
}

/// A host write is seen by the apps, and an app's write by the host and by another app (a mirror's at
/// commit and refresh).
fn visibility(mode: Mode) {
    let w = world(mode);
    let later = |v: i64| if w.e.copy { 0 } else { v };
    w.b.grant(w.data, w.reader, Rights::READ | Rights::WRITE | Rights::MAP, 0, None).expect("grant");
    let vw = w.view(w.writer, w.open(w.writer, DATA));
    let vr = w.view(w.reader, w.open(w.reader, ALPHA_DATA));

    assert_eq!(w.call(w.writer, "store", args![vw, 8i64, 41i64]), 0);
    assert_eq!(w.host_u64(8), u64::try_from(later(41)).expect("small"), "a mirror publishes at commit");
    assert_eq!(w.call(w.writer, "commit", args![vw]), 0);
    assert_eq!(w.host_u64(8), 41);
    assert_eq!(w.call(w.reader, "load", args![vr, 8i64]), later(41), "a mirror sees others at refresh");
    assert_eq!(w.call(w.reader, "refresh", args![vr]), 0);
    assert_eq!(w.call(w.reader, "load", args![vr, 8i64]), 41);

    // The other way round, across tenants.
    let at = i64::try_from(PAGE + 16).expect("small");
    assert_eq!(w.call(w.reader, "put", args![vr, at, 42i64]), 0);
    assert_eq!(w.host_u64(PAGE + 16), 42);
    assert_eq!(w.call(w.writer, "fetch", args![vw, at]), 42);

    w.b.write_region(w.data, 2 * PAGE, &7u64.to_le_bytes()).expect("host write");
    let at = i64::try_from(2 * PAGE).expect("small");
    for (inst, v) in [(w.writer, vw), (w.reader, vr)] {
        assert_eq!(w.call(inst, "load", args![v, at]), later(7));
        assert_eq!(w.call(inst, "fetch", args![v, at]), 7);
    }
    w.assert_region_holds(&[(8, 41), (PAGE + 16, 42), (2 * PAGE, 7)]);
}

/// A read-only grant: the holder reads, every write it tries is refused (or, into a read-only window,
/// traps it alone) and changes nothing, and the owner carries on.
fn rights(mode: Mode) {
    let w = world(mode);
    let hw = w.open(w.writer, DATA);
    let vw = w.view(w.writer, hw);
    assert_eq!(w.call(w.writer, "put", args![vw, 8i64, 42i64]), 0);
    let read_only = bits(Rights::READ | Rights::MAP);
    assert_eq!(w.call(w.writer, "grant", args![hw, TO_BETA_READER, read_only, 0i64, -1i64]), 0);
    let hr = w.open(w.reader, ALPHA_DATA);
    assert_eq!(w.call(w.reader, "info_rights", args![hr]), i64::from(read_only));
    let vr = w.view(w.reader, hr);
    assert_eq!(w.call(w.reader, "fetch", args![vr, 8i64]), 42);

    let denied = code(Status::PermissionDenied);
    assert_eq!(w.call(w.reader, "put", args![vr, 8i64, 7i64]), denied, "through the view");
    assert_eq!(w.call(w.reader, "write_u64", args![hr, 16i64, 7i64]), denied, "through a host call");
    assert_eq!(w.call(w.reader, "fill", args![hr, 24i64, 16, 0xAA]), denied);
    w.assert_region_holds(&[(8, 42)]);

    // The owner's writes still reach the reader.
    assert_eq!(w.call(w.writer, "put", args![vw, 8i64, 43i64]), 0);
    assert_eq!(w.call(w.reader, "fetch", args![vr, 8i64]), 43);

    w.assert_refused(w.reader, "poke", args![vr, 8i64, 7i64], w.e.read_only_store);
    w.assert_region_holds(&[(8, 43)]);
    // The broker, the region and the writer carry on untouched.
    assert_eq!(w.call(w.writer, "put", args![vw, 8i64, 44i64]), 0);
    assert_eq!(w.call(w.writer, "fetch", args![vw, 8i64]), 44);
    w.b.restart_instance(w.reader).expect("restart");
    assert_eq!(w.b.window_count(), w.e.windows_per_view, "only the writer's view is left");
}

/// A write-only capability writes but never reads, and cannot be widened back.
fn write_only(mode: Mode) {
    let w = world(mode);
    w.b.write_region(w.data, 0, &5u64.to_le_bytes()).expect("host write");
    let hw = w.open(w.writer, DATA);
    let wo = handle(w.call(w.writer, "restrict", args![hw, bits(Rights::WRITE), 0i64, -1i64]));
    assert_eq!(w.call(w.writer, "info_rights", args![wo]), i64::from(bits(Rights::WRITE)));
    let denied = code(Status::PermissionDenied);
    assert_eq!(w.call(w.writer, "read_u64", args![wo, 0i64]), denied);
    assert_eq!(w.call(w.writer, "sum", args![wo, 0i64, 8]), denied);
    assert_eq!(w.call(w.writer, "write_u64", args![wo, 8i64, 6i64]), 0);
    assert_eq!(w.call(w.writer, "restrict", args![wo, bits(Rights::READ), 0i64, -1i64]), denied);
    match w.e.view_without_read {
        Some(refused) => assert_eq!(w.call(w.writer, "view_open", args![wo]), code(refused)),
        None => {
            let v = w.view(w.writer, wo);
            assert_eq!(w.call(w.writer, "fetch", args![v, 0i64]), denied);
            assert_eq!(w.call(w.writer, "put", args![v, 16i64, 7i64]), 0);
            assert_eq!(w.host_u64(16), 7);
        }
    }
    assert_eq!((w.host_u64(0), w.host_u64(8)), (5, 6));
}

/// Delegation needs the grant right and never widens rights or range.
fn delegation(mode: Mode) {
    let w = world(mode);
    let (read, write, grant) = (bits(Rights::READ), bits(Rights::WRITE), bits(Rights::GRANT));
    let hw = w.open(w.writer, DATA);
    assert_eq!(w.call(w.writer, "grant", args![hw, TO_BETA_READER, read | grant, 0i64, 1000i64]), 0);
    let hr = w.open(w.reader, ALPHA_DATA);
    assert_eq!(
        w.call(w.reader, "grant", args![hr, TO_BETA_RELAY, read | write, 0i64, -1i64]),
        code(Status::PermissionDenied)
    );
    assert_eq!(
        w.call(w.reader, "grant", args![hr, TO_BETA_RELAY, read, 0i64, 1001i64]),
        code(Status::OutOfBounds)
    );
    assert_eq!(
        w.call(w.reader, "restrict", args![hr, read | write, 0i64, -1i64]),
        code(Status::PermissionDenied)
    );
    assert_eq!(w.call(w.reader, "grant", args![hr, TO_NOBODY, read, 0i64, -1i64]), code(Status::NotFound));
    assert_eq!(w.call(w.reader, "grant", args![hr, TO_BETA_RELAY, read, 10i64, 20i64]), 0);
    let hx = w.open(w.relay, ALPHA_DATA);
    assert_eq!(w.call(w.relay, "info_len", args![hx]), 20);
    assert_eq!(w.call(w.relay, "info_rights", args![hx]), i64::from(read));
    // Without the grant right, a holder cannot delegate at all.
    assert_eq!(
        w.call(w.relay, "grant", args![hx, TO_BETA_READER, read, 0i64, -1i64]),
        code(Status::PermissionDenied)
    );
}

/// A revoke makes every handle derived from the revoked one stale, restrictions and re-grants
/// included; every view over them fails or traps, and nothing the apps do afterwards reaches the region.
fn revocation(mode: Mode) {
    let w = world(mode);
    w.b.write_region(w.data, 0, &5u64.to_le_bytes()).expect("host write");
    let all = Rights::READ | Rights::WRITE | Rights::MAP;
    let hw = w.open(w.writer, DATA);
    assert_eq!(
        w.call(w.writer, "grant", args![hw, TO_BETA_READER, bits(all | Rights::GRANT), 0i64, -1i64]),
        0
    );
    let hr = w.open(w.reader, ALPHA_DATA);
    let vr = w.view(w.reader, hr);
    assert_eq!(w.call(w.reader, "fetch", args![vr, 0i64]), 5);
    let hr_sub = handle(w.call(w.reader, "restrict", args![hr, bits(Rights::READ), 0i64, 8i64]));
    let read_map = bits(Rights::READ | Rights::MAP);
    assert_eq!(w.call(w.reader, "grant", args![hr, TO_BETA_RELAY, read_map, 0i64, -1i64]), 0);
    let hx = w.open(w.relay, ALPHA_DATA);
    let vx = w.view(w.relay, hx);
    assert_eq!(w.call(w.relay, "fetch", args![vx, 0i64]), 5);

    assert_eq!(w.call(w.writer, "revoke", args![hw]), 0);
    for (inst, h) in [(w.reader, hr), (w.reader, hr_sub), (w.relay, hx)] {
        assert_eq!(w.call(inst, "read_u64", args![h, 0i64]), code(Status::StaleHandle));
    }
    assert_eq!(w.call(w.reader, "write_u64", args![hr, 0i64, 9i64]), code(Status::StaleHandle));
    assert_eq!(w.call(w.reader, "open", args![ALPHA_DATA]), code(Status::NotFound), "the grant is gone");
    assert_eq!(w.call(w.writer, "write_u64", args![hw, 8i64, 1i64]), 0, "revoke keeps the revoker's handle");
    assert_eq!(w.b.handle_count(w.reader).expect("count"), 0);
    assert_eq!(w.b.handle_count(w.relay).expect("count"), 0);

    w.assert_refused(w.reader, "put", args![vr, 0i64, 9i64], w.e.revoked_access);
    w.assert_refused(w.relay, "fetch", args![vx, 0i64], w.e.revoked_access);
    w.assert_region_holds(&[(0, 5), (8, 1)]);
    assert_eq!(w.b.window_count(), 0);
}

/// Closing the handle a grant was made through revokes the grant, and the views over it.
fn closing_revokes_grants(mode: Mode) {
    let w = world(mode);
    let hw = w.open(w.writer, DATA);
    assert_eq!(
        w.call(w.writer, "grant", args![hw, TO_BETA_READER, bits(Rights::READ | Rights::MAP), 0i64, -1i64]),
        0
    );
    let hr = w.open(w.reader, ALPHA_DATA);
    let vr = w.view(w.reader, hr);
    assert_eq!(w.call(w.writer, "close", args![hw]), 0);
    assert_eq!(w.call(w.reader, "read_u64", args![hr, 0i64]), code(Status::StaleHandle));
    w.assert_refused(w.reader, "fetch", args![vr, 0i64], w.e.revoked_access);
}

/// The host revokes a grant it made, then destroys the region: both revoke every handle and view.
fn host_revocation(mode: Mode) {
    let w = world(mode);
    let grant = w.b.grant(w.data, w.reader, Rights::READ | Rights::MAP, 0, Some(PAGE)).expect("grant");
    let hr = w.open(w.reader, ALPHA_DATA);
    assert_eq!(w.call(w.reader, "info_len", args![hr]), i64::try_from(PAGE).expect("small"));
    let vr = w.view(w.reader, hr);
    w.b.revoke_grant(grant).expect("revoke");
    assert_eq!(w.call(w.reader, "read_u64", args![hr, 0i64]), code(Status::StaleHandle));
    assert!(matches!(w.b.revoke_grant(grant), Err(Error::GrantNotFound(_))));
    w.assert_refused(w.reader, "fetch", args![vr, 0i64], w.e.revoked_access);

    let hw = w.open(w.writer, DATA);
    let vw = w.view(w.writer, hw);
    w.b.destroy_region(w.data).expect("destroy");
    assert_eq!(w.call(w.writer, "read_u64", args![hw, 0i64]), code(Status::StaleHandle));
    assert_eq!(w.call(w.writer, "open", args![DATA]), code(Status::NotFound));
    w.assert_refused(w.writer, "put", args![vw, 0i64, 1i64], w.e.revoked_access);
    assert!(matches!(w.b.read_region(w.data, 0, &mut [0u8; 1]), Err(Error::RegionNotFound(_))));
    let usage = w.b.tenant_usage(w.alpha).expect("usage");
    assert_eq!((usage.regions, usage.region_bytes), (0, 0), "the region's quota went back");
}

/// A restricted handle looks like a smaller region starting at 0: offsets are relative to its start,
/// and nothing past its end is reachable, through the view or host calls.
fn sub_ranges(mode: Mode) {
    let w = world(mode);
    let hw = w.open(w.writer, DATA);
    let rwm = bits(Rights::READ | Rights::WRITE | Rights::MAP);
    let page = i64::try_from(PAGE).expect("small");
    let sub = handle(w.call(w.writer, "restrict", args![hw, rwm, page, page]));
    assert_eq!(w.call(w.writer, "info_len", args![sub]), page);
    let v = w.view(w.writer, sub);
    assert_eq!(w.call(w.writer, "put", args![v, 8i64, 42i64]), 0);
    assert_eq!(w.host_u64(PAGE + 8), 42);
    w.b.write_region(w.data, PAGE + 16, &7u64.to_le_bytes()).expect("host write");
    assert_eq!(w.call(w.writer, "fetch", args![v, 16i64]), 7);
    assert_eq!(w.call(w.writer, "read_u64", args![sub, 16i64]), 7);

    let oob = code(Status::OutOfBounds);
    assert_eq!(w.call(w.writer, "put", args![v, page - 4, 1i64]), oob);
    assert_eq!(w.call(w.writer, "fetch", args![v, page]), oob);
    assert_eq!(w.call(w.writer, "write_u64", args![sub, page - 4, 1i64]), oob);
    assert_eq!(w.call(w.writer, "read_u64", args![sub, page]), oob);
    assert_eq!(w.call(w.writer, "restrict", args![sub, bits(Rights::READ), 0i64, page + 1]), oob);
    assert_eq!(w.call(w.writer, "restrict", args![sub, bits(Rights::READ), page + 1, -1i64]), oob);
    assert_eq!(
        w.call(w.writer, "restrict", args![sub, bits(Rights::READ | Rights::GRANT), 0i64, -1i64]),
        code(Status::PermissionDenied)
    );
    w.assert_region_holds(&[(PAGE + 8, 42), (PAGE + 16, 7)]);
}

/// A grant of a sub-range that is not page aligned confines its holder to it; a view over it is a
/// mirror of its bytes or host calls, but no window.
fn unaligned_sub_range(mode: Mode) {
    let w = world(mode);
    let hw = w.open(w.writer, DATA);
    let rwm = bits(Rights::READ | Rights::WRITE | Rights::MAP);
    assert_eq!(w.call(w.writer, "grant", args![hw, TO_BETA_READER, rwm, 100i64, 50i64]), 0);
    let hr = w.open(w.reader, ALPHA_DATA);
    assert_eq!(w.call(w.reader, "info_len", args![hr]), 50);
    assert_eq!(w.call(w.reader, "fill", args![hr, 0i64, 50, 9]), 0);
    assert_eq!(w.call(w.reader, "fill", args![hr, 1i64, 50, 9]), code(Status::OutOfBounds));
    assert_eq!(w.call(w.reader, "sum", args![hr, 0i64, 50]), 9 * 50);
    let mut bytes = vec![0u8; usize::try_from(SIZE).expect("small")];
    w.b.read_region(w.data, 0, &mut bytes).expect("host read");
    assert!(bytes[100..150].iter().all(|b| *b == 9));
    assert_eq!(bytes.iter().map(|b| u64::from(*b)).sum::<u64>(), 9 * 50, "nothing outside was written");

    match w.e.unaligned_view {
        Some(refused) => assert_eq!(w.call(w.reader, "view_open", args![hr]), code(refused)),
        None => {
            let v = w.view(w.reader, hr);
            assert_eq!(w.call(w.reader, "fetch", args![v, 42i64]), 0x0909_0909_0909_0909);
            assert_eq!(w.call(w.reader, "put", args![v, 42i64, 1i64]), 0);
            assert_eq!(w.call(w.reader, "put", args![v, 43i64, 1i64]), code(Status::OutOfBounds));
            w.b.read_region(w.data, 0, &mut bytes).expect("host read");
            assert_eq!(u64::from_le_bytes(bytes[142..150].try_into().expect("8 bytes")), 1);
            assert_eq!(bytes.iter().map(|b| u64::from(*b)).sum::<u64>(), 9 * 42 + 1);
        }
    }
}

/// A write fires the watch callback, with the version and the changed range relative to the watched
/// handle; closing the handle ends the watch.
fn watch(mode: Mode) {
    let w = world(mode);
    // What the reader's callback saw: calls, the last version, `offset << 32 | len`, user data. Deliveries
    // are queued on the reader's worker ahead of the call that asks.
    let watched = || -> [i64; 4] { [0, 1, 2, 3].map(|what| w.call(w.reader, "watched", args![what])) };
    w.b.grant(w.data, w.reader, Rights::READ | Rights::WATCH, 0, None).expect("grant");
    let hr = w.open(w.reader, ALPHA_DATA);
    assert_eq!(w.call(w.reader, "watch", args![hr, 7]), 0);
    assert_eq!(w.b.write_region(w.data, 100, &[1, 2, 3, 4]).expect("host write"), 1);
    assert_eq!(watched(), [1, 1, (100 << 32) | 4, 7], "a host write");

    let hw = w.open(w.writer, DATA);
    assert_eq!(w.call(w.writer, "write_u64", args![hw, 200i64, 5i64]), 0);
    assert_eq!(watched(), [2, 2, (200 << 32) | 8, 7], "an app's host call");

    // Every byte of the value differs from the zeros it replaces, so a mirror commit reports all eight.
    let v = w.view(w.writer, hw);
    assert_eq!(w.call(w.writer, "put", args![v, 300i64, 0x0102_0304_0506_0708i64]), 0);
    assert_eq!(w.host_u64(300), 0x0102_0304_0506_0708);
    let seen =
        if w.e.view_store_is_watched { [3, 3, (300 << 32) | 8, 7] } else { [2, 2, (200 << 32) | 8, 7] };
    assert_eq!(watched(), seen, "a store through a view");
    assert_eq!(w.b.region_info(w.data).expect("info").version, u64::try_from(seen[1]).expect("small"));

    assert_eq!(w.call(w.reader, "close", args![hr]), 0);
    w.b.write_region(w.data, 0, &[1]).expect("host write");
    assert_eq!(watched(), seen, "closing the handle ended the watch");
}

/// The same guest function (`view_add`, written against `Region::view`) gives the same results in every
/// mode.
fn view_code(mode: Mode) {
    let w = world(mode);
    assert_eq!(w.call(w.writer, "view_add", args![DATA, 8i64, 5i64]), 5);
    assert_eq!(w.call(w.writer, "view_add", args![DATA, 8i64, 6i64]), 11);
    w.b.write_region(w.data, 8, &100u64.to_le_bytes()).expect("host write");
    assert_eq!(w.call(w.writer, "view_add", args![DATA, 8i64, 1i64]), 101);
    assert_eq!(w.host_u64(8), 101);
    let end = i64::try_from(SIZE).expect("small");
    assert_eq!(w.call(w.writer, "view_add", args![DATA, end, 1i64]), code(Status::OutOfBounds));
    assert_eq!(w.b.window_count(), 0, "each call's view is gone with it");
}

/// A `Reading` record's bytes as `repr(C)` lays them out (seq 0, celsius 8, flags 12, kind 14, spare
/// 15, history 16..32), written here by hand, independently of the guest's `member!` offsets.
fn reading(seq: u64, celsius: f32, flags: u16, kind: u8, history: [u32; 4]) -> [u8; 32] {
    let mut r = [0u8; 32];
    r[0..8].copy_from_slice(&seq.to_le_bytes());
    r[8..12].copy_from_slice(&celsius.to_le_bytes());
    r[12..14].copy_from_slice(&flags.to_le_bytes());
    r[14] = kind;
    for (i, h) in history.iter().enumerate() {
        r[16 + 4 * i..20 + 4 * i].copy_from_slice(&h.to_le_bytes());
    }
    r
}

/// Typed members (`member!`, `Members`): one member or several of a record stored in the region are
/// read and written by name, at the compiler's offsets, through the same code in every mode; a write
/// of some members leaves the others alone; a record that does not fit, or whose offset overflows, is
/// refused and changes nothing.
fn record_members(mode: Mode) {
    let w = world(mode);
    let v = w.view(w.writer, w.open(w.writer, DATA));
    // An odd record offset: members are read and written unaligned.
    let (rec, at) = (PAGE + 3, i64::try_from(PAGE + 3).expect("small"));
    let before = reading(7, 21.5, 0xBEEF, 3, [10, 11, 12, 13]);
    w.b.write_region(w.data, rec, &before).expect("host write");

    assert_eq!(w.call(w.writer, "member_get", args![v, at, 0]), 7, "seq");
    assert_eq!(w.call(w.writer, "member_get", args![v, at, 1]), i64::from(21.5f32.to_bits()), "celsius");
    assert_eq!(w.call(w.writer, "member_get", args![v, at, 2]), 3, "kind");
    assert_eq!(w.call(w.writer, "member_get", args![v, at, 3]), 12, "history[2]");
    assert_eq!(w.call(w.writer, "members_sum", args![v, at]), 7 + 3 + 12);

    let celsius = i32::from_ne_bytes((-4.25f32).to_bits().to_ne_bytes());
    assert_eq!(w.call(w.writer, "members_set", args![v, at, 99i64, celsius, 9]), 0);
    let mut got = [0u8; 32];
    w.b.read_region(w.data, rec, &mut got).expect("host read");
    assert_eq!(got, reading(99, -4.25, 0xBEEF, 9, [10, 11, 12, 13]), "only seq, celsius and kind changed");
    assert_eq!(w.call(w.writer, "members_sum", args![v, at]), 99 + 9 + 12);

    // A record near the end: seq and celsius fit, kind (at 14) does not. The write is refused whole,
    // in every mode.
    let tail = SIZE - 12;
    let tail_at = i64::try_from(tail).expect("small");
    w.b.write_region(w.data, tail, &[0x5A; 12]).expect("host write");
    let oob = code(Status::OutOfBounds);
    assert_eq!(w.call(w.writer, "members_set", args![v, tail_at, 1i64, celsius, 1]), oob);
    let mut tail_bytes = [0u8; 12];
    w.b.read_region(w.data, tail, &mut tail_bytes).expect("host read");
    assert_eq!(tail_bytes, [0x5A; 12], "a refused write of members changes none of them");
    assert_eq!(w.call(w.writer, "member_get", args![v, tail_at, 0]), 0x5A5A_5A5A_5A5A_5A5A, "seq fits");
    assert_eq!(w.call(w.writer, "member_get", args![v, tail_at, 3]), oob, "history lies past the end");
    assert_eq!(w.call(w.writer, "members_sum", args![v, tail_at]), oob);
    // An offset whose sum with the member's overflows, and a negative one.
    assert_eq!(w.call(w.writer, "member_get", args![v, i64::MAX, 3]), oob);
    assert_eq!(w.call(w.writer, "members_set", args![v, -1i64, 1i64, celsius, 1]), oob);
    assert_eq!(w.call(w.writer, "member_get", args![v, at, 4]), code(Status::InvalidArgument));
    let mut whole = [0u8; 32];
    w.b.read_region(w.data, rec, &mut whole).expect("host read");
    assert_eq!(whole, got, "the record is as the last accepted write left it");

    // A read-only holder reads members and is refused writing them, in every mode (a mirror at its
    // commit, as for every mirror write).
    let read_only = bits(Rights::READ | Rights::MAP);
    let hw = w.open(w.writer, DATA);
    assert_eq!(w.call(w.writer, "grant", args![hw, TO_BETA_READER, read_only, 0i64, -1i64]), 0);
    let vr = w.view(w.reader, w.open(w.reader, ALPHA_DATA));
    assert_eq!(w.call(w.reader, "member_get", args![vr, at, 0]), 99);
    let denied = code(Status::PermissionDenied);
    assert_eq!(w.call(w.reader, "members_set", args![vr, at, 5i64, celsius, 5]), denied);
    w.b.read_region(w.data, rec, &mut whole).expect("host read");
    assert_eq!(whole, got, "a refused holder changed nothing");
}

/// The named test for the `conformance_app` guest: one instance holds a view of a region of each mode
/// at once; each view takes its region's mechanism, and the same exports move the same bytes.
#[test]
pub(crate) fn conformance_app() {
    let b = broker();
    let t = tenant(&b, "alpha");
    let app = start(&b, t, "conformance_app", "app");
    // conformance_app's region names 2, 3 and 4; `view_mode` numbers the mechanisms as the ABI does.
    let regions =
        [(2, "handle", Mode::Handle, 0), (3, "mirror", Mode::Mirror, 1), (4, "shared", Mode::Shared, 2)];
    let mut views = Vec::new();
    for (sel, name, mode, mechanism) in regions {
        let r =
            b.create_region(t, RegionSpec::new(name, PAGE, mode).with_members(Rights::ALL)).expect("region");
        let v = slot(call(&b, app, "view_open", args![handle(call(&b, app, "open", args![sel]))]));
        assert_eq!(call(&b, app, "view_mode", args![v]), mechanism, "{name}");
        views.push((v, r));
    }
    assert_eq!(b.window_count(), 1, "only the shared region's view is a window");
    for (k, (v, r)) in (100i64..).zip(&views) {
        assert_eq!(call(&b, app, "put", args![*v, 16i64, k]), 0);
        let mut word = [0u8; 8];
        b.read_region(*r, 16, &mut word).expect("host read");
        assert_eq!(i64::from_le_bytes(word), k);
        b.write_region(*r, 24, &(k + 1).to_le_bytes()).expect("host write");
        assert_eq!(call(&b, app, "fetch", args![*v, 24i64]), k + 1);
    }
}
