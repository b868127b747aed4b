//! Mirror mode: copies refreshed page by page, dirty write-back, conflict policies, no lost update, no
//! torn read, metrics, and every bad input to the mirror ABI.

use std::sync::Arc;

use broker::mode::ConflictPolicy;
use broker::{Broker, InstanceId, Mode, RegionId, RegionSpec, Rights, TenantId};
use broker_tests::{args, broker, call, code, handle, start, tenant, watchdog, Status};
use proptest::prelude::*;

const PAGE: u64 = 4096;

fn setup(size: u64, policy: ConflictPolicy) -> (Broker, TenantId, RegionId) {
    let b = broker();
    let t = tenant(&b, "alpha");
    let r = b
        .create_region(
            t,
            RegionSpec::new("data", size, Mode::Mirror).with_members(Rights::ALL).with_policy(policy),
        )
        .expect("region");
    (b, t, r)
}

fn host_u64(b: &Broker, r: RegionId, at: u64) -> u64 {
    let mut w = [0u8; 8];
    b.read_region(r, at, &mut w).expect("host read");
    u64::from_le_bytes(w)
}

/// The named test for the `mirror_app` guest: edits stay local until commit, commit writes back only
/// dirty pages, and refresh copies only changed pages, all visible in the metrics.
#[test]
pub(crate) fn mirror_app() {
    let (b, t, r) = setup(16 * PAGE, ConflictPolicy::Reject);
    let app = start(&b, t, "mirror_app", "app");
    let slot = call(&b, app, "acquire", args![0]);
    assert_eq!(slot, 0);
    assert_eq!(call(&b, app, "version", args![0]), 0);
    assert_eq!(call(&b, app, "store", args![0, 8i64, 77i64]), 0);
    assert_eq!(host_u64(&b, r, 8), 0, "an uncommitted edit is local");
    assert_eq!(call(&b, app, "commit", args![0]), 1, "one dirty page written back");
    assert_eq!(host_u64(&b, r, 8), 77);
    assert_eq!(call(&b, app, "version", args![0]), 1);
    let after_commit = b.region_traffic(r).expect("traffic");
    // Out: the acquire's 16 pages plus the host's two 8-byte reads above.
    assert_eq!(
        (after_commit.bytes_out, after_commit.bytes_in, after_commit.commits),
        (16 * PAGE + 16, PAGE, 1)
    );

    // Two host writes touch pages 5 and 9: a refresh copies exactly those two pages.
    b.write_region(r, 5 * PAGE + 1, &[1]).expect("write");
    b.write_region(r, 9 * PAGE + 100, &[2, 3]).expect("write");
    assert_eq!(call(&b, app, "refresh", args![0]), 2);
    let stats = b.region_traffic(r).expect("traffic");
    assert_eq!(stats.pages_refreshed, 2);
    assert_eq!(stats.bytes_out - after_commit.bytes_out, 2 * PAGE);
    assert_eq!(call(&b, app, "version", args![0]), 3);
    assert_eq!(call(&b, app, "refresh", args![0]), 0, "nothing changed since");
    assert_eq!(b.region_traffic(r).expect("traffic"), stats, "a no-op refresh copies nothing");
    let inst = b.instance_traffic(app).expect("traffic");
    assert_eq!((inst.pages_refreshed, inst.commits, inst.bytes_in), (2, 1, PAGE));

    assert_eq!(call(&b, app, "view_u64", args![0, 8i64]), 77);
    assert_eq!(
        call(&b, app, "view_u64", args![0, 3i64]),
        code(Status::InvalidArgument),
        "misaligned typed view"
    );
    assert_eq!(
        call(&b, app, "view_u64", args![0, i64::try_from(16 * PAGE).expect("small")]),
        code(Status::OutOfBounds)
    );
    // Discard throws local edits away.
    assert_eq!(call(&b, app, "store", args![0, 16i64, 5i64]), 0);
    assert_eq!(call(&b, app, "discard", args![0]), 0);
    assert_eq!(call(&b, app, "load", args![0, 16i64]), 0);
    assert_eq!(call(&b, app, "commit", args![0]), 0, "a clean mirror commits no page");
}

#[test]
fn reject_policy_refuses_a_stale_commit_and_reports_the_version() {
    let (b, t, r) = setup(4 * PAGE, ConflictPolicy::Reject);
    let a = start(&b, t, "mirror_app", "a");
    let c = start(&b, t, "mirror_app", "c");
    call(&b, a, "acquire", args![0]);
    call(&b, c, "acquire", args![0]);
    assert_eq!(call(&b, a, "store", args![0, 0i64, 1i64]), 0);
    assert_eq!(call(&b, a, "commit", args![0]), 1);
    assert_eq!(call(&b, c, "store", args![0, i64::try_from(2 * PAGE).expect("small"), 2i64]), 0);
    assert_eq!(
        call(&b, c, "commit", args![0]),
        code(Status::Conflict),
        "even a disjoint page conflicts under reject"
    );
    assert_eq!(call(&b, c, "version", args![0]), 1, "the conflict reports the current version");
    assert_eq!(host_u64(&b, r, 2 * PAGE), 0, "a refused commit writes nothing");
    assert_eq!(b.region_traffic(r).expect("traffic").conflicts, 1);
    // Refresh brings in page 0 and keeps the local edit on page 2; the retry succeeds.
    assert_eq!(call(&b, c, "refresh", args![0]), 1);
    assert_eq!(call(&b, c, "commit", args![0]), 1);
    assert_eq!((host_u64(&b, r, 0), host_u64(&b, r, 2 * PAGE)), (1, 2));
}

#[test]
fn merge_policy_accepts_disjoint_pages_and_refuses_overlaps() {
    let (b, t, r) = setup(4 * PAGE, ConflictPolicy::Merge);
    let a = start(&b, t, "mirror_app", "a");
    let c = start(&b, t, "mirror_app", "c");
    call(&b, a, "acquire", args![0]);
    call(&b, c, "acquire", args![0]);
    assert_eq!(call(&b, a, "store", args![0, 0i64, 1i64]), 0);
    assert_eq!(call(&b, c, "store", args![0, i64::try_from(PAGE).expect("small"), 2i64]), 0);
    assert_eq!(call(&b, a, "commit", args![0]), 1);
    assert_eq!(call(&b, c, "commit", args![0]), 1, "disjoint pages merge");
    assert_eq!((host_u64(&b, r, 0), host_u64(&b, r, PAGE)), (1, 2));
    // Both now edit page 0 (c never saw a's write to it): the second commit conflicts.
    assert_eq!(call(&b, a, "store", args![0, 8i64, 3i64]), 0);
    assert_eq!(call(&b, c, "store", args![0, 16i64, 4i64]), 0);
    assert_eq!(call(&b, a, "commit", args![0]), 1);
    assert_eq!(call(&b, c, "commit", args![0]), code(Status::Conflict));
    assert_eq!((host_u64(&b, r, 8), host_u64(&b, r, 16)), (3, 0));
}

#[test]
fn last_writer_wins_never_refuses() {
    let (b, t, r) = setup(PAGE, ConflictPolicy::LastWriterWins);
    let a = start(&b, t, "mirror_app", "a");
    let c = start(&b, t, "mirror_app", "c");
    call(&b, a, "acquire", args![0]);
    call(&b, c, "acquire", args![0]);
    assert_eq!(call(&b, a, "store", args![0, 0i64, 1i64]), 0);
    assert_eq!(call(&b, c, "store", args![0, 0i64, 2i64]), 0);
    assert_eq!(call(&b, a, "commit", args![0]), 1);
    assert_eq!(call(&b, c, "commit", args![0]), 1);
    assert_eq!(host_u64(&b, r, 0), 2);
    assert_eq!(b.region_traffic(r).expect("traffic").conflicts, 0);
}

/// Under last-writer-wins, a commit writes back only the bytes it changed (issue 15): apps that each
/// count on their own part of one page, never refreshing, keep every count; a refresh then brings the
/// others' bytes into each app's copy.
#[test]
fn last_writer_wins_writes_back_only_the_bytes_a_commit_changed() {
    let (b, t, r) = setup(PAGE, ConflictPolicy::LastWriterWins);
    let apps: Vec<InstanceId> = (0..3).map(|i| start(&b, t, "mirror_app", &format!("app{i}"))).collect();
    for app in &apps {
        assert_eq!(call(&b, *app, "acquire", args![0]), 0);
    }
    let rounds = 20;
    for _ in 0..rounds {
        for (i, app) in apps.iter().enumerate() {
            let at = 8 * i64::try_from(i).expect("small");
            let v = call(&b, *app, "load", args![0, at]);
            assert_eq!(call(&b, *app, "store", args![0, at, v + 1]), 0);
            assert_eq!(call(&b, *app, "commit", args![0]), 1, "one page, with only this app's bytes");
        }
    }
    for i in 0..apps.len() {
        assert_eq!(host_u64(&b, r, 8 * i as u64), rounds, "app {i}'s count is whole");
    }
    // The first app's copy still holds zeros for the others' counters until it refreshes: the page it
    // committed over their changes is refreshed, not taken as seen.
    assert_eq!(call(&b, apps[0], "load", args![0, 8i64]), 0);
    assert_eq!(call(&b, apps[0], "refresh", args![0]), 1);
    assert_eq!(call(&b, apps[0], "load", args![0, 8i64]), i64::try_from(rounds).expect("small"));
    assert_eq!(call(&b, apps[0], "load", args![0, 0i64]), i64::try_from(rounds).expect("small"));
}

/// Under last-writer-wins, a commit that changed bytes on both sides of another app's change keeps
/// that change: on a page another app committed to since this one saw it, the commit copies each run
/// of its own changed bytes alone (issue 18 copies the span between the first and last changed byte
/// in one go, but only on a page nobody else changed).
#[test]
fn last_writer_wins_keeps_another_apps_bytes_between_two_changes() {
    let (b, t, r) = setup(PAGE, ConflictPolicy::LastWriterWins);
    let (a, other) = (start(&b, t, "mirror_app", "a"), start(&b, t, "mirror_app", "other"));
    for app in [a, other] {
        assert_eq!(call(&b, app, "acquire", args![0]), 0);
    }
    assert_eq!(call(&b, other, "store", args![0, 8i64, 5i64]), 0);
    assert_eq!(call(&b, other, "commit", args![0]), 1);
    assert_eq!(call(&b, a, "store", args![0, 0i64, 7i64]), 0);
    assert_eq!(call(&b, a, "store", args![0, 16i64, 9i64]), 0);
    assert_eq!(call(&b, a, "commit", args![0]), 1);
    assert_eq!((host_u64(&b, r, 0), host_u64(&b, r, 8), host_u64(&b, r, 16)), (7, 5, 9));
    // On a page nobody else changed, the span goes whole and the bytes between stay the region's.
    assert_eq!(call(&b, a, "refresh", args![0]), 1);
    assert_eq!(call(&b, a, "store", args![0, 0i64, 1i64]), 0);
    assert_eq!(call(&b, a, "store", args![0, 24i64, 2i64]), 0);
    assert_eq!(call(&b, a, "commit", args![0]), 1);
    let words: Vec<u64> = (0..4).map(|i| host_u64(&b, r, 8 * i)).collect();
    assert_eq!(words, [1, 5, 9, 2]);
}

/// Hint pages count from the capability's range, whatever its alignment (issue 15). The broker once
/// counted them from the region page holding the range's start, so on `[100, 5100)` a change at range
/// offset 4050 hinted as page 0 was compared as region page 0 and silently not published.
#[test]
fn hints_count_pages_from_the_ranges_start_whatever_its_alignment() {
    use broker_abi::rights::{READ, WRITE};
    let (b, t, r) = setup(4 * PAGE, ConflictPolicy::Reject);
    let a = start(&b, t, "handle_attacker", "attacker");
    let h = handle(call(&b, a, "open_data", args![]));
    let rw = i32::try_from(READ | WRITE).expect("rights bits");
    let scratch = i32::try_from(call(&b, a, "scratch", args![])).expect("pointer");
    let byte = |at: u64| {
        let mut v = [0u8; 1];
        b.read_region(r, at, &mut v).expect("read");
        v[0]
    };

    // [100, 5100): 5000 bytes, range pages [0, 4096) and [4096, 5000).
    let sub = handle(call(&b, a, "restrict_range_keep", args![h, rw, 100i64, 5000i64]));
    assert_eq!(call(&b, a, "mirror_acquire_raw", args![sub, scratch, 5000]), 0);
    assert_eq!(call(&b, a, "scratch_put", args![4050, 0xab_i64, 1]), 0);
    assert_eq!(call(&b, a, "mirror_hint_raw", args![sub, 0, 1]), 0);
    assert_eq!(call(&b, a, "mirror_commit_raw", args![sub, scratch, 5000, 0i64]), 0);
    assert_eq!(byte(4150), 0xab, "the hinted change is published");
    assert_eq!(call(&b, a, "out_version", args![]), 1);
    // The range has two pages: page 2, or two pages from page 1, are refused and change nothing.
    for (first, pages) in [(2, 1), (1, 2), (0, 3)] {
        let got = call(&b, a, "mirror_hint_raw", args![sub, first, pages]);
        assert_eq!(got, code(Status::OutOfBounds), "hint {first}+{pages}");
    }
    assert_eq!(call(&b, a, "scratch_put", args![4990, 0xcd_i64, 1]), 0);
    assert_eq!(call(&b, a, "mirror_hint_raw", args![sub, 1, 1]), 0);
    assert_eq!(call(&b, a, "mirror_commit_raw", args![sub, scratch, 5000, 1i64]), 0);
    assert_eq!(byte(5090), 0xcd);
    // A change outside the hinted pages stays the app's own (its promise), and the commit says so: no
    // page written, no new version.
    assert_eq!(call(&b, a, "scratch_put", args![10, 0x11_i64, 1]), 0);
    assert_eq!(call(&b, a, "mirror_hint_raw", args![sub, 1, 1]), 0);
    assert_eq!(call(&b, a, "mirror_commit_raw", args![sub, scratch, 5000, 2i64]), 0);
    assert_eq!((byte(110), call(&b, a, "out_version", args![])), (0, 2));

    // [4000, 4200): one range page, though it spans two region pages.
    let small = handle(call(&b, a, "restrict_range_keep", args![h, rw, 4000i64, 200i64]));
    let buf = scratch + 8192;
    assert_eq!(call(&b, a, "mirror_acquire_raw", args![small, buf, 200]), 0);
    assert_eq!(call(&b, a, "mirror_hint_raw", args![small, 1, 1]), code(Status::OutOfBounds));
    assert_eq!(call(&b, a, "scratch_put", args![8192 + 150, 0xef_i64, 1]), 0);
    assert_eq!(call(&b, a, "mirror_hint_raw", args![small, 0, 1]), 0);
    assert_eq!(call(&b, a, "mirror_commit_raw", args![small, buf, 200, 2i64]), 0);
    assert_eq!(byte(4150), 0xef, "range offset 150 is region offset 4150, on region page 1");
}

/// `broker-guest`'s `Mirror` agrees with the broker on an unaligned grant (issue 15): the pages it
/// hints for its typed stores are counted from the granted range's start, so a store at range offset
/// 4050 of a grant of `[100, 5100)` reaches region offset 4150, and one at 4990 reaches 5090.
#[test]
fn the_guest_librarys_mirror_agrees_with_the_broker_on_an_unaligned_grant() {
    let b = broker();
    let t = tenant(&b, "alpha");
    // No member rights: the app reaches the region only through its grant of [100, 5100).
    let r = b.create_region(t, RegionSpec::new("data", 8192, Mode::Mirror)).expect("region");
    let app = start(&b, t, "mirror_app", "app");
    b.grant(r, app, Rights::READ | Rights::WRITE, 100, Some(5000)).expect("grant");
    assert_eq!(call(&b, app, "acquire", args![0]), 0);
    // One store on range page 0 (region page 1): the library hints page 0 and commits.
    assert_eq!(call(&b, app, "store", args![0, 4050i64, 0x1122_3344i64]), 0);
    let before = b.instance_traffic(app).expect("traffic").host_calls;
    assert_eq!(call(&b, app, "commit", args![0]), 1);
    let calls = b.instance_traffic(app).expect("traffic").host_calls - before;
    assert_eq!(calls, 2, "one hint and the commit");
    assert_eq!(host_u64(&b, r, 4150), 0x1122_3344, "the hinted store is published");
    // One on range page 1.
    assert_eq!(call(&b, app, "store", args![0, 4990i64, 0x55i64]), 0);
    assert_eq!(call(&b, app, "commit", args![0]), 1);
    assert_eq!(host_u64(&b, r, 5090), 0x55);
}

/// Runs `apps` apps concurrently, each making `per_app` accepted increments of its counter (retrying
/// conflicts), and checks that nothing was lost and that accepted commits form a serial order.
fn no_lost_update(apps: usize, per_app: usize, shared_page: bool, policy: ConflictPolicy) {
    let (b, t, r) = setup(8 * PAGE, policy);
    let b = Arc::new(b);
    let offset = |i: usize| -> i64 {
        let at = if shared_page { 8 * i as u64 } else { PAGE * i as u64 };
        i64::try_from(at).expect("small")
    };
    let ids: Vec<InstanceId> = (0..apps).map(|i| start(&b, t, "mirror_app", &format!("app{i}"))).collect();
    for id in &ids {
        assert_eq!(call(&b, *id, "acquire", args![0]), 0);
    }
    let workers: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (b, id, at) = (Arc::clone(&b), *id, offset(i));
            std::thread::spawn(move || {
                let (mut accepted, mut rejected) = (Vec::new(), 0u64);
                while accepted.len() < per_app {
                    let v = call(&b, id, "try_increment", args![0, at]);
                    if v == code(Status::Conflict) {
                        rejected += 1;
                    } else {
                        assert!(v > 0, "unexpected status {v}");
                        accepted.push(v);
                    }
                }
                (accepted, rejected)
            })
        })
        .collect();
    let mut versions = Vec::new();
    let mut rejected = 0;
    for w in workers {
        let (acc, rej) = w.join().expect("worker");
        versions.extend(acc);
        rejected += rej;
    }
    for i in 0..apps {
        let at = u64::try_from(offset(i)).expect("non-negative");
        assert_eq!(host_u64(&b, r, at), per_app as u64, "app {i}'s increments are all there");
    }
    // Each accepted commit has its own version, and together they are exactly 1..=n: a serial order.
    versions.sort_unstable();
    let expected: Vec<i64> = (1..=i64::try_from(apps * per_app).expect("small")).collect();
    assert_eq!(versions, expected);
    let stats = b.region_traffic(r).expect("traffic");
    assert_eq!(stats.commits, (apps * per_app) as u64);
    assert_eq!(stats.conflicts, rejected, "every rejected commit was reported to its app");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(6), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_commits_lose_no_update(apps in 2usize..=4, per_app in 3usize..=12, shared_page: bool, policy in 0usize..3) {
        // Under last-writer-wins too: each app changes only its own counter, and a commit writes back
        // only the bytes it changed.
        let policy = ConflictPolicy::ALL[policy];
        watchdog(120, move || no_lost_update(apps, per_app, shared_page, policy));
    }
}

#[test]
fn no_reader_sees_a_torn_commit() {
    watchdog(120, || {
        let size = 8 * PAGE;
        let (b, t, r) = setup(size, ConflictPolicy::LastWriterWins);
        let b = Arc::new(b);
        b.write_region(r, 0, &vec![1u8; 8 * 4096]).expect("uniform start");
        let writers: Vec<InstanceId> = (0..2).map(|i| start(&b, t, "mirror_app", &format!("w{i}"))).collect();
        let mirror_reader = start(&b, t, "mirror_app", "mr");
        let handle_reader = start(&b, t, "handle_app", "hr");
        for w in &writers {
            call(&b, *w, "acquire", args![0]);
        }
        call(&b, mirror_reader, "acquire", args![0]);
        let h = handle(call(&b, handle_reader, "open", args![0]));
        let len = i32::try_from(size).expect("small");

        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, w) in writers.iter().enumerate() {
            let (b, w) = (Arc::clone(&b), *w);
            threads.push(std::thread::spawn(move || {
                for k in 0..150i32 {
                    let byte = 2 + (k * 2 + i32::try_from(i).expect("small")) % 250;
                    assert_eq!(call(&b, w, "fill", args![0, byte]), 0);
                    assert!(call(&b, w, "commit", args![0]) >= 0);
                }
            }));
        }
        {
            let b = Arc::clone(&b);
            threads.push(std::thread::spawn(move || {
                for k in 0..150u8 {
                    b.write_region(r, 0, &vec![k.wrapping_mul(3) | 1; 8 * 4096]).expect("host write");
                }
            }));
        }
        let (mut observed, mut host_buf) = (0u64, vec![0u8; 8 * 4096]);
        while threads.iter().any(|t| !t.is_finished()) || observed < 30 {
            assert_ne!(call(&b, mirror_reader, "refresh", args![0]), code(Status::Conflict));
            assert_ne!(
                call(&b, mirror_reader, "uniform", args![0]),
                -1000,
                "mirror refresh saw a torn commit"
            );
            assert_ne!(
                call(&b, handle_reader, "uniform_read", args![h, len]),
                -1000,
                "handle read saw a torn commit"
            );
            b.read_region(r, 0, &mut host_buf).expect("host read");
            assert!(host_buf.iter().all(|x| *x == host_buf[0]), "host read saw a torn commit");
            observed += 1;
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        for t in threads {
            t.join().expect("writer");
        }
    });
}

#[test]
fn hinted_commits_compare_and_publish_only_the_hinted_pages() {
    let (b, t, r) = setup(4 * PAGE, ConflictPolicy::Reject);
    let app = start(&b, t, "mirror_app", "app");
    assert_eq!(call(&b, app, "acquire", args![0]), 0);
    // Typed stores are tracked: the commit hints their two pages and publishes both.
    assert_eq!(call(&b, app, "store", args![0, 8i64, 11i64]), 0);
    assert_eq!(call(&b, app, "store", args![0, i64::try_from(3 * PAGE).expect("small"), 33i64]), 0);
    let before = b.instance_traffic(app).expect("traffic");
    assert_eq!(call(&b, app, "commit", args![0]), 2);
    assert_eq!((host_u64(&b, r, 8), host_u64(&b, r, 3 * PAGE)), (11, 33));
    let after = b.instance_traffic(app).expect("traffic");
    assert_eq!(after.host_calls - before.host_calls, 3, "two hints (pages 0 and 3) and the commit");
    // A commit with nothing written hints no page: nothing is compared, nothing written.
    assert_eq!(call(&b, app, "commit", args![0]), 0);
    assert_eq!(b.region_info(r).expect("info").version, 1);

    // Pages 1 and 2 written, only page 1 hinted: only page 1 is published; the app's change to page 2
    // stays its own.
    assert_eq!(call(&b, app, "hinted_commit", args![0, 1, 2, 0x77]), 1);
    let byte = |at: u64| {
        let mut v = [0u8; 1];
        b.read_region(r, at, &mut v).expect("read");
        v[0]
    };
    assert_eq!((byte(PAGE), byte(2 * PAGE)), (0x77, 0));
    // Writes through the whole slice are untracked, so the next ordinary commit compares every page
    // and publishes page 2 as well.
    // (The raw commit left the library's version behind: the refresh catches up on page 1.)
    assert_eq!(call(&b, app, "refresh", args![0]), 1);
    assert_eq!(call(&b, app, "commit", args![0]), 1);
    assert_eq!(byte(2 * PAGE), 0x77);
}

#[test]
fn mirror_bad_inputs() {
    let (b, t, r) = setup(PAGE, ConflictPolicy::Reject);
    let a = start(&b, t, "handle_attacker", "attacker");
    let h = handle(call(&b, a, "open_data", args![]));
    let scratch = i32::try_from(call(&b, a, "scratch", args![])).expect("pointer");
    let end = i32::try_from(call(&b, a, "memory_bytes", args![])).expect("small memory");
    let page = 4096;

    // Before any acquire there is nothing to refresh or commit.
    assert_eq!(
        call(&b, a, "mirror_refresh_raw", args![h, scratch, page, 0i64]),
        code(Status::InvalidArgument)
    );
    assert_eq!(
        call(&b, a, "mirror_commit_raw", args![h, scratch, page, 0i64]),
        code(Status::InvalidArgument)
    );
    assert_eq!(call(&b, a, "mirror_hint_raw", args![h, 0, 1]), code(Status::InvalidArgument));
    // Wrong length, bad pointers.
    assert_eq!(call(&b, a, "mirror_acquire_raw", args![h, scratch, 100]), code(Status::InvalidArgument));
    assert_eq!(call(&b, a, "mirror_acquire_raw", args![h, end - 100, page]), code(Status::BadPointer));
    assert_eq!(call(&b, a, "mirror_acquire_raw", args![h, -1, page]), code(Status::BadPointer));
    assert_eq!(call(&b, a, "mirror_acquire_raw", args![h, scratch, page]), 0);
    // Hints past the mirror's one page, overflowing, or negative are refused; in range they are taken.
    for (first, pages) in [(1, 1), (0, 2), (-1, 2), (2, -1), (-1, -1)] {
        let got = call(&b, a, "mirror_hint_raw", args![h, first, pages]);
        assert_eq!(got, code(Status::OutOfBounds), "hint {first}+{pages}");
    }
    assert_eq!(call(&b, a, "mirror_hint_raw", args![h, 0, 0]), 0);
    assert_eq!(call(&b, a, "mirror_hint_raw", args![h, 0, 1]), 0);
    assert_eq!(call(&b, a, "mirror_hint_raw", args![0, 0, 1]), code(Status::InvalidHandle));
    // Versions from the future, negative versions, wrong lengths on refresh and commit.
    assert_eq!(call(&b, a, "mirror_refresh_raw", args![h, scratch, page, 5i64]), code(Status::BadVersion));
    assert_eq!(call(&b, a, "mirror_refresh_raw", args![h, scratch, page, -1i64]), code(Status::BadVersion));
    assert_eq!(call(&b, a, "mirror_commit_raw", args![h, scratch, page, 99i64]), code(Status::BadVersion));
    assert_eq!(
        call(&b, a, "mirror_commit_raw", args![h, scratch, page - 1, 0i64]),
        code(Status::InvalidArgument)
    );
    assert_eq!(call(&b, a, "mirror_commit_raw", args![h, end - 10, page, 0i64]), code(Status::BadPointer));
    // A stale base: the host wrote meanwhile; the commit is refused, reports version 1, writes nothing.
    b.write_region(r, 100, &[7]).expect("host write");
    assert_eq!(call(&b, a, "scratch_put", args![0, 0x55i64, 1]), 0);
    assert_eq!(call(&b, a, "mirror_commit_raw", args![h, scratch, page, 0i64]), code(Status::Conflict));
    assert_eq!(call(&b, a, "out_version", args![]), 1);
    let mut first = [0u8; 1];
    b.read_region(r, 0, &mut first).expect("read");
    assert_eq!(first, [0]);
    // A bad out-pointer is refused before anything is written.
    assert_eq!(call(&b, a, "mirror_refresh_raw", args![h, scratch, page, 0i64]), 0);
    assert_eq!(call(&b, a, "scratch_put", args![0, 0x55i64, 1]), 0);
    assert_eq!(
        call(&b, a, "mirror_commit_out_raw", args![h, scratch, page, end - 4]),
        code(Status::BadPointer)
    );
    assert_eq!(b.region_info(r).expect("info").version, 1, "nothing was committed");
    assert_eq!(call(&b, a, "mirror_commit_raw", args![h, scratch, page, 1i64]), 0);
    b.read_region(r, 0, &mut first).expect("read");
    assert_eq!(first, [0x55]);

    // A read-only capability can acquire but not commit.
    let ro = i32::try_from(call(&b, a, "restrict_raw_keep", args![h, 1])).expect("handle");
    assert_eq!(call(&b, a, "mirror_acquire_raw", args![ro, scratch, page]), 0);
    assert_eq!(
        call(&b, a, "mirror_commit_raw", args![ro, scratch, page, 2i64]),
        code(Status::PermissionDenied)
    );
    assert_eq!(call(&b, a, "mirror_hint_raw", args![ro, 0, 1]), code(Status::PermissionDenied));
    // Closed handles are stale for every mirror call.
    assert_eq!(call(&b, a, "close_raw", args![ro]), 0);
    assert_eq!(call(&b, a, "mirror_refresh_raw", args![ro, scratch, page, 2i64]), code(Status::StaleHandle));
    assert_eq!(call(&b, a, "mirror_hint_raw", args![ro, 0, 1]), code(Status::StaleHandle));

    // Mirror calls on a handle-mode region are refused.
    b.create_region(t, RegionSpec::new("plain", PAGE, Mode::Handle).with_members(Rights::ALL))
        .expect("region");
    assert_eq!(call(&b, a, "scratch_put", args![0, i64::from_le_bytes(*b"plain\0\0\0"), 5]), 0);
    let hp = handle(call(&b, a, "open_scratch", args![5]));
    assert_eq!(call(&b, a, "mirror_acquire_raw", args![hp, scratch, page]), code(Status::WrongMode));
    assert_eq!(call(&b, a, "mirror_hint_raw", args![hp, 0, 1]), code(Status::WrongMode));
}
