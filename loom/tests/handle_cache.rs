//! The handle cache against a racing revocation, under loom: once a revocation has returned, no lookup
//! that begins afterwards succeeds, whatever the interleaving; and a lookup with no revocation in sight
//! always succeeds.

use broker_loom::cache::{HandleCache, Removals};
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::{Arc, Mutex};

/// The capability space, reduced to what the race is about: whether handle `H` is live, behind the
/// capability lock, and the removal count that removals tick under it.
struct Space {
    live: Mutex<bool>,
    removals: Removals,
}

const H: u32 = 7;

/// An instance's lookup, through `HandleCache::resolve` as `GuestCtx::lookup` does it: the cache while
/// no removal happened since it was filled, otherwise the table under the lock.
fn lookup(space: &Space, cache: &mut HandleCache<u32>) -> Result<u32, ()> {
    cache.resolve(
        H,
        &space.removals,
        |v| Some(*v),
        || {
            let live = space.live.lock().map_err(|_| ())?;
            if !*live {
                return Err(());
            }
            Ok((42, 42, space.removals.count()))
        },
    )
}

/// Revokes `H` as `CapSpace` does: under the lock, ticking the count before the removal returns; then
/// says it returned.
fn revoke(space: &Space, returned: &AtomicBool) {
    {
        let mut live = space.live.lock().expect("lock");
        space.removals.tick();
        *live = false;
    }
    returned.store(true, Ordering::Release);
}

fn space() -> Arc<Space> {
    Arc::new(Space { live: Mutex::new(true), removals: Removals::default() })
}

#[test]
fn no_lookup_after_a_returned_revocation_succeeds() {
    loom::model(|| {
        let space = space();
        let returned = Arc::new(AtomicBool::new(false));
        let reader = {
            let (space, returned) = (Arc::clone(&space), Arc::clone(&returned));
            loom::thread::spawn(move || {
                let mut cache = HandleCache::default();
                // Fills the cache, or not, depending on where the revocation falls.
                let _ = lookup(&space, &mut cache);
                for _ in 0..2 {
                    let after = returned.load(Ordering::Acquire);
                    let got = lookup(&space, &mut cache);
                    if after {
                        assert!(got.is_err(), "a lookup after the revocation returned succeeded");
                    }
                }
            })
        };
        revoke(&space, &returned);
        reader.join().expect("reader");
    });
}

#[test]
fn a_removal_elsewhere_only_costs_a_locked_lookup() {
    loom::model(|| {
        let space = space();
        let other = {
            let space = Arc::clone(&space);
            // Some other capability is removed: the count moves, H stays live.
            loom::thread::spawn(move || {
                let _live = space.live.lock().expect("lock");
                space.removals.tick();
            })
        };
        let mut cache = HandleCache::default();
        for _ in 0..3 {
            assert_eq!(lookup(&space, &mut cache), Ok(42), "a live handle always resolves");
        }
        other.join().expect("other");
    });
}
