//! Compiles every guest app in `guests/apps` to `wasm32-unknown-unknown` with `+atomics,+bulk-memory`,
//! assembles every hand-written guest in `guests/wat` (raw instructions, for attacks no library would
//! emit), and writes `$OUT_DIR/guests.rs` with one path constant per guest, modelled on wasmtime's
//! `crates/test-programs/artifacts/build.rs`.
//!
//! The wasm32 standard library is installed with `rustup target add` when it is missing, so a fresh machine
//! needs no manual step (`rust-toolchain.toml` lists the target, but rustup only installs listed targets
//! together with a new toolchain).

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let apps = manifest_dir.join("apps");
    let repo = manifest_dir.parent().expect("guests/ lives inside the repository").to_path_buf();

    for dir in [apps.join("src"), repo.join("guest-lib/src"), repo.join("abi/src"), manifest_dir.join("wat")]
    {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    for file in [apps.join("Cargo.toml"), apps.join("Cargo.lock"), repo.join("guest-lib/Cargo.toml")] {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    ensure_wasm_target();

    // A target dir of its own: the outer cargo holds the lock on the workspace's profile dir.
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target"))
        .join("guests");

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&apps)
        .arg("build")
        .arg("--release")
        .arg("--locked")
        .arg("--target")
        .arg(TARGET)
        .arg("--target-dir")
        .arg(&target_dir)
        // Atomics for shared windows; the exported function table lets the broker call callbacks.
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+atomics,+bulk-memory\x1f-Clink-arg=--export-table")
        // Wrappers (clippy, sccache) and host flags are for the outer build only.
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR");
    let status = cmd.status().expect("failed to run cargo for the guest apps");
    assert!(status.success(), "building the guest apps failed: {status}");

    let wasm_dir = target_dir.join(TARGET).join("release");
    let mut guests: Vec<(String, PathBuf)> = bins(&apps.join("src/bin"))
        .into_iter()
        .map(|n| (n.clone(), wasm_dir.join(format!("{n}.wasm"))))
        .collect();
    let wat_out = out_dir.join("wat");
    std::fs::create_dir_all(&wat_out).expect("failed to create the wat output dir");
    for name in files_with(&manifest_dir.join("wat"), "wat") {
        let source = manifest_dir.join("wat").join(format!("{name}.wat"));
        let bytes =
            wat::parse_file(&source).unwrap_or_else(|e| panic!("assembling {}: {e}", source.display()));
        let path = wat_out.join(format!("{name}.wasm"));
        std::fs::write(&path, bytes).expect("failed to write an assembled guest");
        guests.push((name, path));
    }
    guests.sort();
    let names: Vec<String> = guests.iter().map(|(n, _)| n.clone()).collect();
    let mut code = String::new();
    for (name, path) in &guests {
        assert!(path.exists(), "guest {name} produced no {}", path.display());
        let _ = writeln!(code, "/// Path of the `{name}` guest's `.wasm` file.");
        let _ = writeln!(code, "pub const {}: &str = {:?};", name.to_uppercase(), path.display().to_string());
        let _ = writeln!(code, "/// The `{name}` guest's `.wasm` bytes, embedded at build time.");
        let _ = writeln!(
            code,
            "pub static {}_WASM: &[u8] = include_bytes!({:?});",
            name.to_uppercase(),
            path.display().to_string()
        );
    }
    let _ = writeln!(code, "/// Every guest, as `(name, path)`.");
    let _ = writeln!(code, "pub const ALL: &[(&str, &str)] = &[");
    for name in &names {
        let _ = writeln!(code, "    ({name:?}, {}),", name.to_uppercase());
    }
    let _ = writeln!(code, "];");
    let _ = writeln!(code, "/// Calls `$mac!(suite, name)` for every guest `<suite>_<rest>`.");
    let _ = writeln!(code, "#[macro_export]\nmacro_rules! foreach_guest {{\n    ($mac:ident) => {{");
    for name in &names {
        let suite = name.split('_').next().unwrap_or(name);
        let _ = writeln!(code, "        $mac!({suite}, {name});");
    }
    let _ = writeln!(code, "    }};\n}}");
    std::fs::write(out_dir.join("guests.rs"), code).expect("failed to write guests.rs");
}

fn bins(dir: &Path) -> Vec<String> {
    files_with(dir, "rs")
}

/// Stems of the files in `dir` with extension `ext`.
fn files_with(dir: &Path, ext: &str) -> Vec<String> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{} exists: {e}", dir.display()));
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == ext).then(|| p.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect()
}

/// Installs the wasm32 standard library for the active toolchain if it is missing.
fn ensure_wasm_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = sysroot.is_some_and(|s| s.join("lib/rustlib").join(TARGET).join("lib").is_dir());
    if installed {
        return;
    }
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .expect("the wasm32 target is missing and rustup could not be run to install it");
    assert!(status.success(), "`rustup target add {TARGET}` failed: {status}");
}
