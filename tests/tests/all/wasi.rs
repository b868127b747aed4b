//! WASI apps: an ordinary Rust `std` program (`wasm32-wasip1`) and a C program built with wasi-libc run
//! on the broker under its default WASI policy, in every region mode, with their output read back from
//! the instance's log; and the bad cases: `proc_exit`, a path with no preopen, a stdout flood, a sleep
//! past the call's budget, and settings out of range.

use std::time::Duration;

use broker::wasi::{DirGrant, LogStream, WasiConfig};
use broker::{
    Error, InstanceConfig, InstanceError, InstanceId, Mode, Quotas, RegionSpec, Resource, Rights, RunState,
};
use broker_tests::{args, broker, call, start, start_with, tenant, watchdog};

/// The text of every line the instance's log holds, stdout and stderr alike, oldest first.
fn lines(b: &broker::Broker, i: InstanceId) -> Vec<(LogStream, String)> {
    let log = b.instance_log(i).expect("instance").expect("a WASI app has a log");
    let read = log.read(0, usize::MAX);
    read.lines.into_iter().map(|l| (l.stream, String::from_utf8_lossy(&l.text).into_owned())).collect()
}

fn stdout_lines(b: &broker::Broker, i: InstanceId) -> Vec<String> {
    lines(b, i).into_iter().filter(|(s, _)| *s == LogStream::Stdout).map(|(_, t)| t).collect()
}

/// A region `data` of `mode` holding `bytes`, readable and writable by every app of the tenant.
fn data_region(b: &broker::Broker, t: broker::TenantId, mode: Mode, bytes: &[u8]) {
    let id =
        b.create_region(t, RegionSpec::new("data", 8192, mode).with_members(Rights::ALL)).expect("region");
    b.write_region(id, 0, bytes).expect("host write");
}

/// The named test for the `wasi_std_app` guest: a std Rust program prints, hashes, allocates, reads the
/// clock and the host's random numbers, and reads and writes a region through `broker-guest` in every
/// mode; its lines arrive in its log in order, stdout and stderr apart.
#[test]
pub(crate) fn wasi_std_app() {
    watchdog(120, || {
        for mode in [Mode::Handle, Mode::Mirror, Mode::Shared] {
            let b = broker();
            let t = tenant(&b, "t");
            data_region(&b, t, mode, &[1, 2, 3, 4, 5, 6, 7, 8]);
            let app = start(&b, t, "wasi_std_app", "app");
            assert_eq!(call(&b, app, "hello", args![]), 2);
            assert_eq!(
                lines(&b, app),
                [
                    (LogStream::Stdout, "hello from a std wasm32-wasip1 app".to_owned()),
                    (LogStream::Stderr, "and a line on stderr".to_owned()),
                ]
            );
            // 4 MiB of Vec: (i % 251) summed over 4 << 20 bytes, plus 8 distinct words.
            let expected_sum: u64 = (0..4u64 << 20).map(|i| i % 251).sum();
            let sum = u32::try_from(expected_sum % (1 << 32)).expect("mod 2^32");
            assert_eq!(call(&b, app, "work", args![4]), 8 + i64::from(sum));
            let work = stdout_lines(&b, app).pop().expect("work printed");
            assert_eq!(work, format!("words=8 the=3 vec_bytes={} sum={sum} elapsed_ok=true", 4 << 20));
            // The region, through the mode-agnostic View: 1+..+8 = 36, then each byte bumped.
            assert_eq!(call(&b, app, "bump_region", args![8]), 36, "{mode:?}");
            let region = b.region_id(t, "data").expect("region");
            let mut now = [0u8; 8];
            b.read_region(region, 0, &mut now).expect("read");
            assert_eq!(now, [2, 3, 4, 5, 6, 7, 8, 9], "{mode:?}");
            let shown = stdout_lines(&b, app).pop().expect("bump printed");
            assert_eq!(shown, format!("region data: 8 bytes, sum 36, mode {mode:?}"));
            // Two random numbers from the host differ (2^-32 odds of a false failure).
            assert_ne!(call(&b, app, "random", args![]), call(&b, app, "random", args![]));
        }
    });
}

/// The named test for the `wasi_sort` guest: a C program built with wasi-libc reads the region through
/// the mechanism of its mode (region_read, a mirror, a window), sorts it with qsort and writes it back,
/// and printf's line reaches the log.
#[test]
pub(crate) fn wasi_sort() {
    watchdog(120, || {
        let values: [u32; 6] = [42, 7, 19, 3, 1000, 7];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        for (mode, how) in [(Mode::Handle, "handle"), (Mode::Mirror, "mirror"), (Mode::Shared, "shared")] {
            let b = broker();
            let t = tenant(&b, "t");
            data_region(&b, t, mode, &bytes);
            let app = start(&b, t, "wasi_sort", "sorter");
            let sum: u32 = values.iter().sum();
            assert_eq!(call(&b, app, "sort_region", args![6]), i64::from(sum), "{mode:?}");
            let region = b.region_id(t, "data").expect("region");
            let mut sorted = values;
            sorted.sort_unstable();
            let expected: Vec<u8> = sorted.iter().flat_map(|v| v.to_le_bytes()).collect();
            let mut now = [0u8; 24];
            b.read_region(region, 0, &mut now).expect("read");
            assert_eq!(now.to_vec(), expected, "{mode:?}");
            assert_eq!(stdout_lines(&b, app), [format!("sorted 6 values ({how}): min 3 max 1000")]);
            // Bad input: more values than the region holds is refused by the broker, not a trap.
            assert_eq!(
                call(&b, app, "sort_region", args![4096]),
                i64::from(broker_abi::Status::OutOfBounds.code())
            );
            assert_eq!(
                call(&b, app, "sort_region", args![-1]),
                i64::from(broker_abi::Status::InvalidArgument.code())
            );
        }
    });
}

/// `proc_exit` ends the call and stops the instance (not a trap); it restarts, and its log goes on.
#[test]
fn proc_exit_stops_the_instance_cleanly_and_it_restarts() {
    watchdog(60, || {
        let b = broker();
        let t = tenant(&b, "t");
        for guest in ["wasi_std_app", "wasi_sort"] {
            let app = start(&b, t, guest, guest);
            let err = b.call(app, "quit", args![3]).expect_err("an exit ends the call");
            assert_eq!(err, Error::Instance(InstanceError::Exited { status: 3 }));
            let status = b.instance_status(app).expect("status");
            assert_eq!((status.state, status.traps), (RunState::Stopped, 0), "{guest}: stopped, not trapped");
            assert_eq!(
                b.call(app, "quit", args![0]).err(),
                Some(Error::Instance(InstanceError::NotRunning { state: RunState::Stopped }))
            );
            assert_eq!(stdout_lines(&b, app), ["exiting with 3"], "{guest}");
            b.restart_instance(app).expect("restart");
            let again = b.call(app, "quit", args![0]).expect_err("exit 0 ends the call too");
            assert_eq!(again, Error::Instance(InstanceError::Exited { status: 0 }));
            assert_eq!(stdout_lines(&b, app), ["exiting with 3", "exiting with 0"], "the log spans restarts");
        }
    });
}

/// No preopened directory: opening a host path is an errno the app handles, not a trap or a read of the
/// host's file system.
#[test]
fn a_path_without_a_preopen_is_an_errno() {
    watchdog(60, || {
        let b = broker();
        let t = tenant(&b, "t");
        for guest in ["wasi_std_app", "wasi_sort"] {
            let app = start(&b, t, guest, guest);
            let errno = call(&b, app, "open_file", args![]);
            // wasi-libc's ENOTCAPABLE (76) or ENOENT (44): no preopen covers the path.
            assert!(errno == 76 || errno == 44, "{guest}: errno {errno}");
            assert_eq!(b.instance_status(app).expect("status").state, RunState::Running);
        }
    });
}

/// No arguments and no environment by default; the instance's config gives exactly what it sets.
#[test]
fn arguments_and_environment_come_only_from_the_config() {
    watchdog(60, || {
        let b = broker();
        let t = tenant(&b, "t");
        let bare = start(&b, t, "wasi_std_app", "bare");
        assert_eq!(call(&b, bare, "args_env", args![]), 0);
        assert!(stdout_lines(&b, bare).is_empty());
        let wasi = WasiConfig {
            args: vec!["app".into(), "--flag".into()],
            env: vec![("MODE".into(), "test".into())],
            ..WasiConfig::default()
        };
        let given =
            start_with(&b, t, "wasi_std_app", "given", InstanceConfig { wasi, ..InstanceConfig::default() });
        assert_eq!(call(&b, given, "args_env", args![]), 3);
        assert_eq!(stdout_lines(&b, given), ["arg app", "arg --flag", "env MODE=test"]);
    });
}

/// Settings out of range are refused, naming the setting, before anything is reserved.
#[test]
fn bad_wasi_settings_are_refused_naming_the_field() {
    watchdog(60, || {
        let b = broker();
        let t = tenant(&b, "t");
        let wasm = broker_guests::read(broker_guests::WASI_STD_APP).expect("built");
        b.load_module(t, "app", &wasm).expect("load");
        let cases: [(WasiConfig, &str); 5] = [
            (WasiConfig { log_bytes: 0, ..WasiConfig::default() }, "log_bytes"),
            (WasiConfig { log_bytes: u64::MAX, ..WasiConfig::default() }, "log_bytes"),
            (WasiConfig { args: vec!["a\0b".into()], ..WasiConfig::default() }, "args"),
            (WasiConfig { env: vec![("A=B".into(), "c".into())], ..WasiConfig::default() }, "env"),
            (WasiConfig { args: vec!["x".repeat(70_000)], ..WasiConfig::default() }, "args"),
        ];
        for (i, (wasi, field)) in cases.into_iter().enumerate() {
            let config = InstanceConfig { wasi, ..InstanceConfig::default() };
            match b.start_instance(t, "app", &format!("bad{i}"), config) {
                Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field, "case {i}"),
                other => panic!("case {i}: expected InvalidArgument({field}), got {other:?}"),
            }
        }
        assert_eq!(b.tenant_usage(t).expect("usage").log_bytes, 0, "nothing reserved");
        assert_eq!(b.tenant_usage(t).expect("usage").instances, 0);
    });
}

/// An app that floods stdout keeps only the last ring's worth, charged to its tenant's `log_bytes`
/// quota and given back when the instance is deleted; a ring over the quota refuses the instance.
#[test]
fn a_stdout_flood_stays_within_the_ring_and_the_tenants_quota() {
    watchdog(120, || {
        let b = broker();
        let ring = broker::wasi::log::MIN_CAPACITY as u64 * 2;
        let t = b.create_tenant("t", Quotas { log_bytes: ring + 100, ..Quotas::default() }).expect("tenant");
        let config = || InstanceConfig {
            wasi: WasiConfig { log_bytes: ring, ..WasiConfig::default() },
            ..InstanceConfig::default()
        };
        let app = start_with(&b, t, "wasi_std_app", "flood", config());
        assert_eq!(b.tenant_usage(t).expect("usage").log_bytes, ring);
        let n = 200_000;
        assert_eq!(call(&b, app, "flood", args![n]), i64::from(n));
        let log = b.instance_log(app).expect("instance").expect("log");
        let read = log.read(0, usize::MAX);
        let kept: usize = read.lines.iter().map(|l| l.text.len() + broker::wasi::log::RECORD_HEADER).sum();
        assert!(kept <= log.capacity(), "the ring holds at most its size: {kept}");
        assert!(read.lost > 0, "the oldest lines were dropped");
        let last = read.lines.last().expect("lines");
        assert_eq!(
            String::from_utf8_lossy(&last.text),
            format!("flood line {}", n - 1),
            "the newest line is kept"
        );
        assert_eq!(last.seq, u64::try_from(n - 1).expect("fits"), "every line was counted");
        drop(log);
        // A second ring does not fit the quota.
        let wasm = broker_guests::read(broker_guests::WASI_STD_APP).expect("built");
        let _ = b.load_module(t, "wasi_std_app", &wasm);
        match b.start_instance(t, "wasi_std_app", "second", config()) {
            Err(Error::Quota(q)) => assert_eq!(q.resource, Resource::LogBytes),
            other => panic!("expected the log_bytes quota, got {other:?}"),
        }
        b.delete_instance(app).expect("delete");
        assert_eq!(b.tenant_usage(t).expect("usage").log_bytes, 0, "the ring's charge is given back");
        start_with(&b, t, "wasi_std_app", "second", config());
    });
}

/// A line without a newline is ended when the call returns, so it can be read.
#[test]
fn an_unfinished_line_is_ended_with_the_call() {
    watchdog(60, || {
        let b = broker();
        let t = tenant(&b, "t");
        let app = start(&b, t, "wasi_std_app", "app");
        call(&b, app, "partial", args![]);
        assert_eq!(stdout_lines(&b, app), ["no newline here"]);
    });
}

/// A WASI sleep parks the call without holding a worker, wakes on time, and cannot outlive the call's
/// budget or the host's stop.
#[test]
fn a_sleep_parks_without_a_worker_and_the_budget_still_ends_it() {
    watchdog(120, || {
        let b = std::sync::Arc::new(broker());
        let t = tenant(&b, "t");
        let app = start(&b, t, "wasi_std_app", "sleeper");
        let slept = call(&b, app, "sleep_ms", args![30]);
        assert!(slept >= 30, "slept {slept} ms");
        // Three sleepers on two workers, each far longer than the test: a fourth app's call still runs,
        // since a parked sleep holds no worker. Ordered by events: each sleeper has logged that it is
        // going to sleep before the fourth call is made, and none has returned when it answers.
        let long = InstanceConfig { call_timeout: Duration::from_secs(60), ..InstanceConfig::default() };
        let sleepers: Vec<InstanceId> =
            (0..3).map(|i| start_with(&b, t, "wasi_std_app", &format!("s{i}"), long.clone())).collect();
        let threads: Vec<_> = sleepers
            .iter()
            .map(|&s| {
                let b = std::sync::Arc::clone(&b);
                std::thread::spawn(move || b.call(s, "sleep_ms", args![50_000]))
            })
            .collect();
        for &s in &sleepers {
            let mut polls = 0;
            while !stdout_lines(&b, s).iter().any(|l| l == "sleeping 50000 ms") {
                polls += 1;
                assert!(polls < 3000, "sleeper {s} never started");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let other = start(&b, t, "wasi_std_app", "other");
        assert_eq!(call(&b, other, "hello", args![]), 2);
        assert!(threads.iter().all(|t| !t.is_finished()), "the call ran while all three still slept");
        // The host's stop ends a sleep at once.
        for (&s, thread) in sleepers.iter().zip(threads) {
            b.stop_instance(s).expect("stop");
            let err = thread.join().expect("thread").expect_err("stopped");
            assert_eq!(err, Error::Instance(InstanceError::Killed));
        }
        // And the budget ends one.
        let timeout = Duration::from_millis(300);
        let short = InstanceConfig { call_timeout: timeout, ..InstanceConfig::default() };
        let s = start_with(&b, t, "wasi_std_app", "short", short);
        let err = b.call(s, "sleep_ms", args![50_000]).expect_err("the budget ends a sleep");
        assert_eq!(err, Error::Instance(InstanceError::Interrupted { timeout }));
        assert_eq!(b.instance_status(s).expect("status").state, RunState::Trapped);
    });
}

/// A broker whose WASI apps' directories live under `app_data`.
fn broker_with_app_data(app_data: &std::path::Path) -> broker::Broker {
    broker::Broker::new(broker::BrokerConfig {
        workers: 2,
        app_data: Some(app_data.to_path_buf()),
        ..broker::BrokerConfig::default()
    })
    .expect("broker")
}

fn with_dirs(dirs: Vec<DirGrant>) -> InstanceConfig {
    InstanceConfig { wasi: WasiConfig { dirs, ..WasiConfig::default() }, ..InstanceConfig::default() }
}

fn dir(path: &str, writable: bool) -> DirGrant {
    DirGrant { path: path.into(), guest: "/data".into(), writable }
}

/// A granted directory is the app's, under its tenant's app data directory and nowhere else: it reads
/// and writes there (read-only grants refuse writes with an errno), cannot climb out of it, and other
/// tenants' directories and the host's files stay out of reach.
#[test]
fn a_granted_directory_is_reachable_and_nothing_beyond_it() {
    watchdog(120, || {
        let app_data = tempfile::tempdir().expect("tempdir");
        let b = broker_with_app_data(app_data.path());
        let t = tenant(&b, "t");
        let rw = start_with(&b, t, "wasi_std_app", "rw", with_dirs(vec![dir("data", true)]));
        assert_eq!(call(&b, rw, "write_file", args![1000]), 1000);
        let written = std::fs::read(app_data.path().join("t/data/out.txt")).expect("on the host");
        assert_eq!(written.len(), 1000, "the file is in the tenant's directory");
        std::fs::write(app_data.path().join("t/data/in.txt"), b"from the host").expect("write");
        assert_eq!(call(&b, rw, "read_file", args![0]), 13);
        assert_eq!(stdout_lines(&b, rw), ["read /data/in.txt: from the host"]);
        // Out of the preopen: refused with an errno, the instance keeps running.
        std::fs::write(app_data.path().join("t/secret.txt"), b"tenant-level").expect("write");
        for which in [1, 2] {
            let r = call(&b, rw, "read_file", args![which]);
            assert!(r < 0, "read {which} escaped the preopen: {r}");
        }
        assert_eq!(b.instance_status(rw).expect("status").state, RunState::Running);

        // Read-only: reads work, writes are an errno.
        let ro = start_with(&b, t, "wasi_std_app", "ro", with_dirs(vec![dir("data", false)]));
        assert_eq!(call(&b, ro, "read_file", args![0]), 13);
        let w = call(&b, ro, "write_file", args![10]);
        assert!(w < 0, "a read-only grant refused the write: {w}");
        assert_eq!(std::fs::read(app_data.path().join("t/data/out.txt")).expect("read").len(), 1000);

        // Another tenant's same path is its own directory.
        let u = tenant(&b, "u");
        let other = start_with(&b, u, "wasi_std_app", "other", with_dirs(vec![dir("data", false)]));
        let r = call(&b, other, "read_file", args![0]);
        assert!(r < 0, "tenant u does not see tenant t's file: {r}");
        assert!(app_data.path().join("u/data").is_dir());
    });
}

/// A symbolic link where a granted path goes (an app with a writable grant can leave one) is refused
/// when the instance starts, never followed out of the tenant's directory; bad paths are refused
/// naming the field; and a broker without an app data directory refuses directories.
#[test]
fn directory_grants_refuse_links_bad_paths_and_brokers_without_app_data() {
    watchdog(120, || {
        let app_data = tempfile::tempdir().expect("tempdir");
        let b = broker_with_app_data(app_data.path());
        let t = tenant(&b, "t");
        std::fs::create_dir_all(app_data.path().join("t")).expect("mkdir");
        std::os::unix::fs::symlink("/etc", app_data.path().join("t/link")).expect("symlink");
        let wasm = broker_guests::read(broker_guests::WASI_STD_APP).expect("built");
        b.load_module(t, "app", &wasm).expect("load");
        match b.start_instance(t, "app", "linked", with_dirs(vec![dir("link", false)])) {
            Err(Error::Instance(InstanceError::Instantiate(m))) => {
                assert!(m.contains("not a directory") && !m.contains("/etc"), "{m}");
            }
            other => panic!("a symlink must be refused, got {other:?}"),
        }
        for bad in ["../t", "a/../../x", "/etc", "", "a//b", "."] {
            match b.start_instance(t, "app", "bad", with_dirs(vec![dir(bad, false)])) {
                Err(Error::InvalidArgument { field: "dirs", .. }) => {}
                other => panic!("{bad:?}: expected InvalidArgument(dirs), got {other:?}"),
            }
        }
        let nine = (0..9).map(|i| dir(&format!("d{i}"), false)).collect();
        assert!(matches!(
            b.start_instance(t, "app", "many", with_dirs(nine)),
            Err(Error::InvalidArgument { field: "dirs", .. })
        ));
        assert_eq!(b.tenant_usage(t).expect("usage").instances, 0, "nothing was left behind");

        let plain = broker();
        let p = tenant(&plain, "t");
        plain.load_module(p, "app", &wasm).expect("load");
        assert!(matches!(
            plain.start_instance(p, "app", "x", with_dirs(vec![dir("data", true)])),
            Err(Error::InvalidArgument { field: "dirs", .. })
        ));
    });
}

/// A watch callback that sleeps in WASI is bounded like a call: its budget ends it, and the host's
/// stop does at once, so stop, restart and delete never wait on it.
#[test]
fn a_callback_that_sleeps_cannot_outlive_its_budget_or_a_stop() {
    watchdog(120, || {
        let b = broker();
        let t = tenant(&b, "t");
        data_region(&b, t, Mode::Handle, &[0; 8]);
        let region = b.region_id(t, "data").expect("region");
        let timeout = Duration::from_millis(300);
        let short = InstanceConfig { call_timeout: timeout, ..InstanceConfig::default() };
        let app = start_with(&b, t, "wasi_std_app", "short", short);
        assert!(call(&b, app, "watch_and_sleep", args![]) > 0);
        b.write_region(region, 0, &[1]).expect("write");
        let mut polls = 0;
        while b.instance_status(app).expect("status").state == RunState::Running {
            polls += 1;
            assert!(polls < 3000, "the callback's budget never ended it");
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = b.instance_status(app).expect("status");
        assert_eq!(status.state, RunState::Trapped);
        assert!(status.last_trap.as_deref().is_some_and(|m| m.contains("deadline")), "{status:?}");
        assert_eq!(stdout_lines(&b, app), ["callback sleeping"]);

        let long = InstanceConfig { call_timeout: Duration::from_secs(60), ..InstanceConfig::default() };
        let app = start_with(&b, t, "wasi_std_app", "long", long);
        assert!(call(&b, app, "watch_and_sleep", args![]) > 0);
        b.write_region(region, 0, &[2]).expect("write");
        let mut polls = 0;
        while stdout_lines(&b, app).is_empty() {
            polls += 1;
            assert!(polls < 3000, "the callback never ran");
            std::thread::sleep(Duration::from_millis(10));
        }
        b.stop_instance(app).expect("a stop ends the sleeping callback");
        b.restart_instance(app).expect("restart");
        b.delete_instance(app).expect("delete");
    });
}

/// One WASI call carries at most `HOSTCALL_BYTES` from the guest: a larger write is an errno, not
/// seconds of host work; a write of newlines within it stays cheap and bounded by the ring.
#[test]
fn one_wasi_call_carries_a_bounded_amount() {
    watchdog(120, || {
        let b = broker();
        let t = tenant(&b, "t");
        let app = start(&b, t, "wasi_std_app", "app");
        // wasi-libc's ENOMEM is 48.
        assert_eq!(call(&b, app, "big_write", args![4]), -48);
        assert_eq!(call(&b, app, "big_write", args![0]), 0);
        let log = b.instance_log(app).expect("instance").expect("log");
        let before = log.next_seq();
        // Just under the bound: a million empty lines, kept only as far as the ring goes.
        let n = i64::try_from(broker::wasi::HOSTCALL_BYTES).expect("fits") - 4096;
        let wrote = call(&b, app, "big_write_bytes", args![n]);
        assert_eq!(wrote, n);
        assert_eq!(log.next_seq() - before, u64::try_from(n).expect("fits"), "every line counted");
        assert_eq!(b.instance_status(app).expect("status").state, RunState::Running);
    });
}
