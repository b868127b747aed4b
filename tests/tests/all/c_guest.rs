//! A C app built against `guest-lib/include/broker.h` runs on the broker like a Rust one.

use std::path::{Path, PathBuf};
use std::process::Command;

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

#[test]
fn checked_in_c_guest_runs() {
    check(&std::fs::read(broker_guests::C_HANDLE_COUNTER).expect("checked-in build"));
}

fn clang() -> Option<PathBuf> {
    ["clang", "clang-14", "clang-15", "clang-16"]
        .iter()
        .map(PathBuf::from)
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// Where clang (and lld) are installed, the source is rebuilt and the fresh build passes the same checks,
/// so the checked-in binary cannot silently diverge from its source.
#[test]
fn c_guest_rebuilds_from_source_where_clang_exists() {
    let Some(clang) = clang() else {
        eprintln!("clang not installed: only the checked-in C build was tested");
        return;
    };
    let out = std::env::temp_dir().join(format!("broker-c-guest-{}.wasm", std::process::id()));
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-lib/include");
    let status = Command::new(clang)
        .args(["--target=wasm32", "-O2", "-nostdlib", "-Wl,--no-entry"])
        .arg("-I")
        .arg(&include)
        .arg("-o")
        .arg(&out)
        .arg(broker_guests::C_HANDLE_COUNTER_SOURCE)
        .output()
        .expect("run clang");
    if !status.status.success() && String::from_utf8_lossy(&status.stderr).contains("wasm-ld") {
        eprintln!("clang is installed without lld: only the checked-in C build was tested");
        return;
    }
    assert!(status.status.success(), "clang failed: {}", String::from_utf8_lossy(&status.stderr));
    let fresh = std::fs::read(&out).expect("clang output");
    let _ = std::fs::remove_file(&out);
    check(&fresh);
}
