//! Unit tests of the derivation tree: attenuation, cascading revoke, close, quota charging, and the
//! cleanup hooks (revocations first, their failures reported by the removing operation).

use std::sync::Arc;

use parking_lot::Mutex;

use super::*;
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
        // The region's mode and conflict policy mean nothing to capabilities.
        crate::Mode::Handle,
        Default::default(),
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
    s.remove_instance(a).expect("no windows to revoke");
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
    assert_eq!(s.revoke_children(root), Ok(100_000));
    assert!(t.is_idle());
}

/// What the hooks of the tests below record: (capability, whether the hook was the revocation).
type Log = Arc<Mutex<Vec<(u64, bool)>>>;

/// The error an injected revocation failure of capability `id` reports.
fn injected(id: u64) -> CapError {
    CapError::NotRevoked { region: id.to_string(), reason: "injected".into() }
}

/// Hangs a release hook and then a revocation hook (failing if `fail`) off `id`, both recording into
/// `log` when they run.
fn hook(s: &mut CapSpace, id: CapId, log: &Log, fail: bool) {
    let (release, revocation) = (Arc::clone(log), Arc::clone(log));
    let raw = id.get();
    s.add_cleanup(id, CleanupTag::Watch, Cleanup::new(move || release.lock().push((raw, false))))
        .expect("live");
    let hook = Cleanup::revocation(move || {
        revocation.lock().push((raw, true));
        if fail {
            Err(injected(raw))
        } else {
            Ok(())
        }
    });
    s.add_cleanup(id, CleanupTag::Window, hook).expect("live");
}

/// A space where instance 1 holds one handle, opened from the root, that carries [`hook`]s.
fn one_hooked_handle(fail: bool) -> (CapSpace, Handle, CapId, Log) {
    let (mut s, root, t) = setup(100);
    let log = Log::default();
    let h = s.derive_handle(root, Rights::ALL, 0, -1, InstanceId(1), &t).expect("open");
    let id = s.lookup(InstanceId(1), h).expect("live").id;
    hook(&mut s, id, &log, fail);
    (s, h, id, log)
}

#[test]
fn revocation_hooks_run_first_and_only_once() {
    let (mut s, h, id, log) = one_hooked_handle(false);
    let a = InstanceId(1);
    assert!(s.has_cleanup(id, CleanupTag::Window));
    s.close(a, h).expect("close");
    assert_eq!(*log.lock(), vec![(id.get(), true), (id.get(), false)], "the revocation ran first");
    assert!(!s.has_cleanup(id, CleanupTag::Window));
    assert_eq!(s.close(a, h), Err(CapError::StaleHandle(h.raw())));
    assert_eq!(log.lock().len(), 2, "hooks run once");
}

#[test]
fn a_failed_revocation_is_reported_by_the_removing_operation_once() {
    /// Removes the child (directly or with its parent) and returns what the operation said.
    type Remove = fn(&mut CapSpace, InstanceId, [(Handle, CapId); 2]) -> Result<(), CapError>;
    // Every way a capability goes: close, revoke, revoke of a node or of a node's children, instance
    // exit and deletion, a change of the region's members, region destroy.
    let ways: [(&str, Remove); 8] = [
        ("close", |s, a, [_, (child, _)]| s.close(a, child)),
        ("revoke", |s, a, [(parent, _), _]| s.revoke(a, parent).map(drop)),
        ("revoke_node", |s, _, [_, (_, child)]| s.revoke_node(child)),
        ("revoke_children", |s, _, [(_, parent), _]| s.revoke_children(parent).map(drop)),
        ("remove_instance", |s, a, _| s.remove_instance(a)),
        ("forget_instance", |s, a, _| s.forget_instance(a)),
        ("set_members", |s, _, _| s.set_members(RegionId(1), Rights::READ)),
        ("remove_region", |s, _, _| s.remove_region(RegionId(1))),
    ];
    for (name, remove) in ways {
        let (mut s, _, t) = setup(100);
        let a = InstanceId(1);
        let log = Log::default();
        s.set_members(RegionId(1), Rights::ALL).expect("members");
        let members = s.members(RegionId(1)).expect("members");
        // A handle opened through the membership, and one derived from it that carries the hooks.
        let parent = s.derive_handle(members, Rights::ALL, 0, -1, a, &t).expect("open");
        let parent = (parent, s.lookup(a, parent).expect("live").id);
        let child = s.derive_handle(parent.1, Rights::ALL, 0, -1, a, &t).expect("restrict");
        let child = (child, s.lookup(a, child).expect("live").id);
        hook(&mut s, child.1, &log, true);
        assert_eq!(remove(&mut s, a, [parent, child]), Err(injected(child.1.get())), "{name}");
        assert!(s.lookup(a, child.0).is_err(), "{name}: the capability is gone all the same");
        assert_eq!(*log.lock(), vec![(child.1.get(), true), (child.1.get(), false)], "{name}");
        // Reported once: the next removal, with no failure of its own, succeeds.
        assert_eq!(s.remove_region(RegionId(1)), Ok(()), "{name}");
        assert!(t.is_idle(), "{name}");
    }
}

#[test]
fn dropped_hooks_never_run() {
    let (mut s, h, id, log) = one_hooked_handle(true);
    assert_eq!(s.drop_cleanup(id, CleanupTag::Window), 1);
    assert_eq!(s.drop_cleanup(id, CleanupTag::Window), 0);
    assert!(!s.has_cleanup(id, CleanupTag::Window));
    assert!(s.has_cleanup(id, CleanupTag::Watch), "hooks of other tags stay");
    assert_eq!(s.run_cleanup(id, CleanupTag::Watch), Ok(1));
    s.close(InstanceId(1), h).expect("no failing hook is left");
    assert_eq!(*log.lock(), vec![(id.get(), false)]);
}

#[test]
fn run_cleanup_reports_a_failed_revocation() {
    let (mut s, h, id, log) = one_hooked_handle(true);
    assert_eq!(s.run_cleanup(id, CleanupTag::Window), Err(injected(id.get())));
    assert_eq!(s.run_cleanup(id, CleanupTag::Window), Ok(0));
    assert_eq!(*log.lock(), vec![(id.get(), true)]);
    assert!(s.lookup(InstanceId(1), h).is_ok(), "running a hook early leaves its capability");
}

/// A reference model of the derivation tree, checked against `CapSpace` after every operation of a
/// random sequence: grant, attenuate, revoke cascades, close and instance exit. Every capability carries
/// a release and a revocation hook, some of which fail: each operation runs exactly the hooks of the
/// capabilities it removes, revocations first, and reports a failure if and only if one of them failed.
mod model {
    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Open {
            inst: u8,
            fail: bool,
        },
        Restrict {
            inst: u8,
            pick: u8,
            rights: u8,
            off: u8,
            len: u8,
            fail: bool,
        },
        GrantAndOpen {
            inst: u8,
            pick: u8,
            target: u8,
            rights: u8,
            off: u8,
            len: u8,
            fail: bool,
        },
        Revoke {
            inst: u8,
            pick: u8,
        },
        RevokeGrant {
            target: u8,
            pick: u8,
        },
        Close {
            inst: u8,
            pick: u8,
        },
        Exit {
            inst: u8,
        },
        /// The instance is deleted (`forget_instance`): it never comes back.
        Forget {
            inst: u8,
        },
        /// The region is destroyed: its whole tree goes, the root with it.
        Destroy,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            28 => (0u8..3, fail()).prop_map(|(inst, fail)| Op::Open { inst, fail }),
            28 => (0u8..3, any::<u8>(), 0u8..32, 0u8..120, 0u8..120, fail()).prop_map(
                |(inst, pick, rights, off, len, fail)| Op::Restrict { inst, pick, rights, off, len, fail }
            ),
            28 => (0u8..3, any::<u8>(), 0u8..3, 0u8..32, 0u8..120, 0u8..120, fail()).prop_map(
                |(inst, pick, target, rights, off, len, fail)| Op::GrantAndOpen {
                    inst,
                    pick,
                    target,
                    rights,
                    off,
                    len,
                    fail
                }
            ),
            28 => (0u8..3, any::<u8>()).prop_map(|(inst, pick)| Op::Revoke { inst, pick }),
            28 => (0u8..3, any::<u8>()).prop_map(|(target, pick)| Op::RevokeGrant { target, pick }),
            28 => (0u8..3, any::<u8>()).prop_map(|(inst, pick)| Op::Close { inst, pick }),
            28 => (0u8..3).prop_map(|inst| Op::Exit { inst }),
            4 => (0u8..3).prop_map(|inst| Op::Forget { inst }),
            1 => Just(Op::Destroy),
        ]
    }

    /// Whether a new capability's revocation hook fails (as a window's does when the kernel refuses).
    fn fail() -> impl Strategy<Value = bool> {
        proptest::bool::weighted(0.1)
    }

    /// The model: capability `id` → (parent, rights, absolute range), the handles and inboxes holding
    /// them, handles that must no longer resolve, and capabilities whose revocation hook fails.
    #[derive(Default)]
    struct Model {
        caps: HashMap<u64, (Option<u64>, Rights, CapRange)>,
        handles: HashMap<u8, Vec<(Handle, u64)>>,
        inboxes: HashMap<u8, Vec<u64>>,
        dead: Vec<(u8, Handle)>,
        failing: HashSet<u64>,
        /// Deleted instances, and whether the region was destroyed: nothing more is opened by them or in
        /// it.
        forgotten: HashSet<u8>,
        destroyed: bool,
    }

    impl Model {
        fn descendants(&self, id: u64) -> Vec<u64> {
            let mut out = Vec::new();
            let mut stack = vec![id];
            while let Some(c) = stack.pop() {
                for (k, (p, _, _)) in &self.caps {
                    if *p == Some(c) {
                        out.push(*k);
                        stack.push(*k);
                    }
                }
            }
            out
        }

        /// What an instance's exit or deletion removes: every capability it holds (handles and
        /// received grants) and everything derived from them, once each.
        fn held_by(&self, i: u8) -> Vec<u64> {
            let mut roots: Vec<u64> =
                self.handles.get(&i).map(|v| v.iter().map(|(_, id)| *id).collect()).unwrap_or_default();
            roots.extend(self.inboxes.get(&i).cloned().unwrap_or_default());
            let mut gone = Vec::new();
            for id in roots {
                gone.push(id);
                gone.extend(self.descendants(id));
            }
            gone.sort_unstable();
            gone.dedup();
            gone
        }

        fn remove(&mut self, ids: &[u64]) {
            for id in ids {
                self.caps.remove(id);
            }
            for inbox in self.inboxes.values_mut() {
                inbox.retain(|id| !ids.contains(id));
            }
            for (inst, hs) in &mut self.handles {
                let (gone, keep): (Vec<_>, Vec<_>) = hs.drain(..).partition(|(_, id)| ids.contains(id));
                self.dead.extend(gone.into_iter().map(|(h, _)| (*inst, h)));
                *hs = keep;
            }
        }
    }

    /// Resolves `h` as an instance's host calls do: from its cache while no capability was removed
    /// since, otherwise through the space (remembering the answer at the count read then).
    fn resolve(
        s: &CapSpace,
        cache: &mut HandleCache<Cap>,
        inst: InstanceId,
        h: Handle,
    ) -> Result<Cap, CapError> {
        cache.resolve(
            h.raw(),
            s.removals(),
            |cap| Some(cap.clone()),
            || {
                let cap = s.lookup(inst, h)?;
                Ok((cap.clone(), cap, s.removals().count()))
            },
        )
    }

    fn sub(r: CapRange, off: u8, len: u8) -> Option<CapRange> {
        let (off, len) = (u64::from(off), u64::from(len));
        (off + len <= r.len).then_some(CapRange { offset: r.offset + off, len })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64), failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn capability_space_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
            let (mut s, root, t) = setup(10_000);
            let root_id = root.get();
            let mut m = Model::default();
            m.caps.insert(root_id, (None, Rights::ALL, CapRange { offset: 0, len: 100 }));
            let inst = |i: u8| InstanceId(u64::from(i) + 1);
            let log = Log::default();
            // Each instance's handle cache, used for every check below: a cache entry that outlived its
            // capability would resolve a dead handle.
            let mut caches: HashMap<u8, HandleCache<Cap>> = HashMap::new();
            for op in ops {
                // A deleted instance does nothing more, and nothing is opened in a destroyed region.
                let involved = match &op {
                    Op::Open { inst, .. } | Op::Restrict { inst, .. } | Op::Revoke { inst, .. }
                    | Op::Close { inst, .. } | Op::Exit { inst } | Op::Forget { inst } => vec![*inst],
                    Op::GrantAndOpen { inst, target, .. } => vec![*inst, *target],
                    Op::RevokeGrant { target, .. } => vec![*target],
                    Op::Destroy => vec![],
                };
                if involved.iter().any(|i| m.forgotten.contains(i)) || (m.destroyed && matches!(op, Op::Open { .. })) {
                    continue;
                }
                // What the operation removed (by the model) and what it reported.
                let mut removed: Vec<u64> = Vec::new();
                let mut outcome: Result<(), CapError> = Ok(());
                match op {
                    Op::Open { inst: i, fail } => {
                        let h = s.derive_handle(root, Rights::ALL, 0, -1, inst(i), &t).expect("open");
                        let id = s.lookup(inst(i), h).expect("live").id;
                        hook(&mut s, id, &log, fail);
                        let id = id.get();
                        if fail {
                            m.failing.insert(id);
                        }
                        m.caps.insert(id, (Some(root_id), Rights::ALL, CapRange { offset: 0, len: 100 }));
                        m.handles.entry(i).or_default().push((h, id));
                    }
                    Op::Restrict { inst: i, pick, rights, off, len, fail } => {
                        let Some(&(h, pid)) = m.handles.get(&i).and_then(|v| v.get(usize::from(pick) % v.len().max(1))) else { continue };
                        let (_, prights, prange) = m.caps[&pid];
                        let want = Rights::from_bits(u32::from(rights)).expect("5 bits");
                        let got = s.lookup(inst(i), h).and_then(|c| s.derive_handle(c.id, want, i64::from(off), i64::from(len), inst(i), &t));
                        match (prights.contains(want), sub(prange, off, len), got) {
                            (true, Some(r), Ok(nh)) => {
                                let id = s.lookup(inst(i), nh).expect("live").id;
                                hook(&mut s, id, &log, fail);
                                let id = id.get();
                                if fail {
                                    m.failing.insert(id);
                                }
                                m.caps.insert(id, (Some(pid), want, r));
                                m.handles.entry(i).or_default().push((nh, id));
                            }
                            (false, _, Err(CapError::Escalation { .. })) | (true, None, Err(CapError::OutOfBounds { .. })) => {}
                            (ok, r, got) => prop_assert!(false, "restrict: model says {ok} {r:?}, space says {got:?}"),
                        }
                    }
                    Op::GrantAndOpen { inst: i, pick, target, rights, off, len, fail } => {
                        let Some(&(h, pid)) = m.handles.get(&i).and_then(|v| v.get(usize::from(pick) % v.len().max(1))) else { continue };
                        let (_, prights, prange) = m.caps[&pid];
                        let want = Rights::from_bits(u32::from(rights)).expect("5 bits");
                        let grant = s.lookup(inst(i), h).and_then(|c| s.derive_grant(c.id, want, i64::from(off), i64::from(len), inst(target), &t));
                        match (prights.contains(want), sub(prange, off, len), grant) {
                            (true, Some(r), Ok(gid)) => {
                                hook(&mut s, gid, &log, fail);
                                m.caps.insert(gid.get(), (Some(pid), want, r));
                                m.inboxes.entry(target).or_default().push(gid.get());
                                let nh = s.derive_handle(gid, want, 0, -1, inst(target), &t).expect("open grant");
                                let id = s.lookup(inst(target), nh).expect("live").id;
                                hook(&mut s, id, &log, fail);
                                let id = id.get();
                                if fail {
                                    m.failing.extend([gid.get(), id]);
                                }
                                m.caps.insert(id, (Some(gid.get()), want, r));
                                m.handles.entry(target).or_default().push((nh, id));
                            }
                            (false, _, Err(CapError::Escalation { .. })) | (true, None, Err(CapError::OutOfBounds { .. })) => {}
                            (ok, r, got) => prop_assert!(false, "grant: model says {ok} {r:?}, space says {got:?}"),
                        }
                    }
                    Op::Revoke { inst: i, pick } => {
                        let Some(&(h, id)) = m.handles.get(&i).and_then(|v| v.get(usize::from(pick) % v.len().max(1))) else { continue };
                        let gone = m.descendants(id);
                        match s.revoke(inst(i), h) {
                            Ok(n) => prop_assert_eq!(n, gone.len()),
                            Err(e) => outcome = Err(e),
                        }
                        m.remove(&gone);
                        removed = gone;
                    }
                    Op::RevokeGrant { target, pick } => {
                        // The owner revokes a grant it made (as `Broker::revoke_grant` does): the grant
                        // and everything opened or derived through it go.
                        let Some(&gid) = m.inboxes.get(&target).and_then(|v| v.get(usize::from(pick) % v.len().max(1))) else { continue };
                        let mut gone = m.descendants(gid);
                        gone.push(gid);
                        outcome = s.revoke_node(CapId(gid));
                        m.remove(&gone);
                        removed = gone;
                    }
                    Op::Close { inst: i, pick } => {
                        let Some(&(h, id)) = m.handles.get(&i).and_then(|v| v.get(usize::from(pick) % v.len().max(1))) else { continue };
                        let mut gone = m.descendants(id);
                        gone.push(id);
                        outcome = s.close(inst(i), h);
                        m.remove(&gone);
                        removed = gone;
                    }
                    Op::Exit { inst: i } => {
                        let gone = m.held_by(i);
                        outcome = s.remove_instance(inst(i));
                        s.add_instance(inst(i));
                        m.remove(&gone);
                        removed = gone;
                    }
                    Op::Forget { inst: i } => {
                        let gone = m.held_by(i);
                        outcome = s.forget_instance(inst(i));
                        m.remove(&gone);
                        m.forgotten.insert(i);
                        removed = gone;
                    }
                    Op::Destroy => {
                        if m.destroyed {
                            continue;
                        }
                        let gone = m.descendants(root_id);
                        outcome = s.remove_region(RegionId(1));
                        // The root goes too; it has no hooks of its own.
                        m.remove(&[root_id]);
                        m.remove(&gone);
                        m.destroyed = true;
                        removed = gone;
                    }
                }
                // The operation reports a failed revocation if and only if it removed a capability whose
                // revocation hook fails, and then names one of them.
                let failed: Vec<String> =
                    removed.iter().filter(|id| m.failing.contains(id)).map(u64::to_string).collect();
                match &outcome {
                    Ok(()) => prop_assert!(failed.is_empty(), "{failed:?} failed, but the operation succeeded"),
                    Err(CapError::NotRevoked { region, .. }) => {
                        prop_assert!(failed.contains(region), "reported {region}, failed {failed:?}");
                    }
                    Err(e) => prop_assert!(false, "unexpected error {e:?}"),
                }
                // It ran exactly the hooks of what it removed, once each, each revocation before its
                // capability's other hooks.
                let ran = std::mem::take(&mut *log.lock());
                removed.sort_unstable();
                for revocation in [true, false] {
                    let mut ids: Vec<u64> = ran.iter().filter(|(_, r)| *r == revocation).map(|(id, _)| *id).collect();
                    ids.sort_unstable();
                    prop_assert_eq!(&ids, &removed);
                }
                for id in &removed {
                    let at = |revocation: bool| ran.iter().position(|e| *e == (*id, revocation));
                    prop_assert!(at(true) < at(false), "capability {id}: {ran:?}");
                }
                // Every live handle resolves to exactly the model's capability...
                for (i, hs) in &m.handles {
                    for (h, id) in hs {
                        let cap = resolve(&s, caches.entry(*i).or_default(), inst(*i), *h);
                        prop_assert!(cap.is_ok(), "handle {h:?} of instance {i} should be live");
                        let cap = cap.expect("checked");
                        let (_, rights, range) = m.caps[id];
                        prop_assert_eq!(cap.id.get(), *id);
                        prop_assert_eq!((cap.rights, cap.range), (rights, range));
                        // Mapping reads by hardware: READ and MAP for a read-only window, WRITE too for a
                        // writable one (issue 13: MAP alone once read the region).
                        prop_assert_eq!(cap.may_map(false).is_ok(), rights.contains(Rights::READ | Rights::MAP));
                        prop_assert_eq!(
                            cap.may_map(true).is_ok(),
                            rights.contains(Rights::READ | Rights::WRITE | Rights::MAP)
                        );
                    }
                }
                // ...and no dead one resolves to anything.
                for (i, h) in &m.dead {
                    prop_assert!(s.lookup(inst(*i), *h).is_err(), "dead handle {h:?} of instance {i} still resolves");
                    let cached = resolve(&s, caches.entry(*i).or_default(), inst(*i), *h);
                    prop_assert!(cached.is_err(), "dead handle {h:?} of instance {i} resolves from its cache");
                }
                // The space holds exactly the model's capabilities, each charged to the quota once.
                prop_assert_eq!(s.len(), m.caps.len());
                // (The root is not charged; a destroyed region has none.)
                let roots = usize::from(!m.destroyed);
                prop_assert_eq!(t.usage().handles, u64::try_from(s.len() - roots).expect("small"));
            }
        }
    }
}
