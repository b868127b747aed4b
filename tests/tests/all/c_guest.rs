//! A C app built against `guest-lib/include/broker.h` runs on the broker like a Rust one.

use std::path::{Path, PathBuf};
use std::process::Command;

use broker::mode::ConflictPolicy;
use broker::{InstanceConfig, Mode, RegionSpec, Rights};
use broker_tests::{args, broker, call, tenant, Status};

/// Loads a C guest build and checks its behaviour.
fn check(wasm: &[u8]) {
    let b = broker();
    let t = tenant(&b, "c");
    let data = b
        .create_region(t, RegionSpec::new("data", 64, Mode::Handle).with_members(Rights::ALL))
        .expect("region");
    b.load_module(t, "counter", wasm).expect("the C module uses only broker imports");
    let app = b.start_instance(t, "counter", "counter", InstanceConfig::default()).expect("start");
    assert_eq!(call(&b, app, "bump", args![5i64]), 5);
    assert_eq!(call(&b, app, "bump", args![37i64]), 42);
    let mut word = [0u8; 8];
    b.read_region(data, 0, &mut word).expect("read");
    assert_eq!(u64::from_le_bytes(word), 42);
    let packed = call(&b, app, "restricted", args![]);
    assert_eq!(packed & 0xffff_ffff, 16, "the restricted range is 16 bytes");
    assert_eq!(
        packed >> 32,
        i64::from(Status::PermissionDenied.code()),
        "a read-only restriction refuses writes"
    );
    assert_eq!(call(&b, app, "forged", args![]), i64::from(Status::InvalidHandle.code()));
    assert_eq!(b.handle_count(app).expect("count"), 0, "the app closed everything it opened");
}

/// The C mirror app (`guests/c/mirror_counter.c`, written from ABI.md alone) on unaligned grants:
/// hint pages count from the granted range's start ([100, 5100) has two pages, [4000, 4200) one), and
/// under last-writer-wins concurrent apps counting on one page, never refreshing, lose no count.
fn check_mirror(wasm: &[u8]) {
    let b = broker();
    let t = tenant(&b, "c");
    let data = b.create_region(t, RegionSpec::new("data", 8192, Mode::Mirror)).expect("region");
    b.load_module(t, "mirror", wasm).expect("the C module uses only broker imports");
    let byte = |at: u64| {
        let mut v = [0u8; 1];
        b.read_region(data, at, &mut v).expect("read");
        v[0]
    };
    let rw = Rights::READ | Rights::WRITE;
    let wide = b.start_instance(t, "mirror", "wide", InstanceConfig::default()).expect("start");
    b.grant(data, wide, rw, 100, Some(5000)).expect("grant");
    assert_eq!(call(&b, wide, "acquire", args![]), 5000);
    assert_eq!(call(&b, wide, "poke", args![4050, 0xab]), 0);
    assert_eq!(call(&b, wide, "hint", args![0, 1]), 0, "range page 0 holds range offset 4050");
    assert_eq!(call(&b, wide, "commit", args![]), 1);
    assert_eq!(byte(4150), 0xab, "the hinted byte is published");
    let out = i64::from(Status::OutOfBounds.code());
    assert_eq!(call(&b, wide, "hint", args![2, 1]), out, "the range has two pages");
    assert_eq!(call(&b, wide, "hint", args![1, 1]), 0);
    let narrow = b.start_instance(t, "mirror", "narrow", InstanceConfig::default()).expect("start");
    b.grant(data, narrow, rw, 4000, Some(200)).expect("grant");
    assert_eq!(call(&b, narrow, "acquire", args![]), 200);
    assert_eq!(call(&b, narrow, "hint", args![1, 1]), out, "one page, though it spans two of the region");
    assert_eq!(call(&b, narrow, "poke", args![150, 0xef]), 0);
    assert_eq!(call(&b, narrow, "hint", args![0, 1]), 0);
    assert_eq!(call(&b, narrow, "commit", args![]), 1);
    assert_eq!(byte(4150), 0xef);

    let b = std::sync::Arc::new(broker());
    let t = tenant(&b, "c");
    let spec = RegionSpec::new("data", 4096, Mode::Mirror).with_policy(ConflictPolicy::LastWriterWins);
    let data = b.create_region(t, spec.with_members(rw)).expect("region");
    b.load_module(t, "mirror", wasm).expect("module");
    let (apps, rounds) = (4, 50);
    let threads: Vec<_> = (0..apps)
        .map(|i| {
            let b = std::sync::Arc::clone(&b);
            let app =
                b.start_instance(t, "mirror", &format!("app{i}"), InstanceConfig::default()).expect("start");
            assert_eq!(call(&b, app, "acquire", args![]), 4096);
            std::thread::spawn(move || {
                for _ in 0..rounds {
                    assert_eq!(call(&b, app, "count", args![8 * i]), 1, "app {i}'s commit writes its page");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("app thread");
    }
    for i in 0..apps {
        let mut word = [0u8; 8];
        b.read_region(data, 8 * u64::try_from(i).expect("small"), &mut word).expect("read");
        assert_eq!(u64::from_le_bytes(word), rounds, "app {i}'s count is whole");
    }
}

#[test]
fn checked_in_c_guests_run() {
    check(&std::fs::read(broker_guests::C_HANDLE_COUNTER).expect("checked-in build"));
    check_mirror(&std::fs::read(broker_guests::C_MIRROR_COUNTER).expect("checked-in build"));
}

/// The checks a C guest build must pass.
type Checks = fn(&[u8]);

fn clang() -> Option<PathBuf> {
    ["clang", "clang-14", "clang-15", "clang-16"]
        .iter()
        .map(PathBuf::from)
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// Where clang (and lld) are installed, each C source is rebuilt and the fresh build passes the same
/// checks, so a checked-in binary cannot silently diverge from its source.
#[test]
fn c_guests_rebuild_from_source_where_clang_exists() {
    let Some(clang) = clang() else {
        eprintln!("clang not installed: only the checked-in C builds were tested");
        return;
    };
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-lib/include");
    let sources: [(&str, Checks); 2] = [
        (broker_guests::C_HANDLE_COUNTER_SOURCE, check),
        (broker_guests::C_MIRROR_COUNTER_SOURCE, check_mirror),
    ];
    let tmp = tempfile::tempdir().expect("a temporary directory");
    for (i, (source, checks)) in sources.into_iter().enumerate() {
        let out = tmp.path().join(format!("guest-{i}.wasm"));
        let status = Command::new(&clang)
            .args(["--target=wasm32", "-O2", "-nostdlib", "-Wl,--no-entry"])
            .arg("-I")
            .arg(&include)
            .arg("-o")
            .arg(&out)
            .arg(source)
            .output()
            .expect("run clang");
        if !status.status.success() && String::from_utf8_lossy(&status.stderr).contains("wasm-ld") {
            eprintln!("clang is installed without lld: only the checked-in C builds were tested");
            return;
        }
        assert!(
            status.status.success(),
            "clang failed on {source}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let fresh = std::fs::read(&out).expect("clang output");
        let _ = std::fs::remove_file(&out);
        checks(&fresh);
    }
}
