//! Compiles every guest app in `guests/apps` to `wasm32-unknown-unknown` with `+atomics,+bulk-memory`,
//! every WASI app in `guests/wasi-apps` (ordinary Rust with `std`) to `wasm32-wasip1`, assembles every
//! hand-written guest in `guests/wat` (raw instructions, for attacks no library would emit), and writes
//! `$OUT_DIR/guests.rs` with one path constant per guest, modelled on wasmtime's
//! `crates/test-programs/artifacts/build.rs`.
//!
//! The C WASI apps in `guests/wasi-c` are compiled with clang against Debian's wasi-libc
//! (`clang --target=wasm32-wasi --sysroot=/usr`); where clang or wasi-libc is missing they are
//! installed with apt-get when the build may (root, and `BROKER_NO_APT` unset), and otherwise the
//! checked-in build next to each source is used, with a warning.
//!
//! The wasm32 standard libraries are installed with `rustup target add` when they are missing, so a
//! fresh machine needs no manual step (`rust-toolchain.toml` lists the targets, but rustup only installs
//! listed targets together with a new toolchain).

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";
/// The target of the WASI apps.
const WASI_TARGET: &str = "wasm32-wasip1";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let apps = manifest_dir.join("apps");
    let wasi_apps = manifest_dir.join("wasi-apps");
    let repo = manifest_dir.parent().expect("guests/ lives inside the repository").to_path_buf();

    for dir in [
        apps.join("src"),
        wasi_apps.join("src"),
        repo.join("guest-lib/src"),
        repo.join("abi/src"),
        manifest_dir.join("wat"),
        manifest_dir.join("wasi-c"),
    ] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    for file in [
        apps.join("Cargo.toml"),
        apps.join("Cargo.lock"),
        wasi_apps.join("Cargo.toml"),
        wasi_apps.join("Cargo.lock"),
        repo.join("guest-lib/Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    ensure_target(TARGET);
    ensure_target(WASI_TARGET);

    // A target dir of its own: the outer cargo holds the lock on the workspace's profile dir.
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target"))
        .join("guests");

    // Atomics for shared windows; the exported function table lets the broker call callbacks.
    let flags = "-Ctarget-feature=+atomics,+bulk-memory\x1f-Clink-arg=--export-table";
    cargo_build(&apps, TARGET, &target_dir, flags, &[]);
    // Ordinary std programs, built the way their users build them; the exported table lets the broker
    // call their callbacks.
    cargo_build(&wasi_apps, WASI_TARGET, &target_dir, "-Clink-arg=--export-table", &["--examples"]);

    let wasm_dir = target_dir.join(TARGET).join("release");
    let mut guests: Vec<(String, PathBuf)> = bins(&apps.join("src/bin"))
        .into_iter()
        .map(|n| (n.clone(), wasm_dir.join(format!("{n}.wasm"))))
        .collect();
    let wasi_dir = target_dir.join(WASI_TARGET).join("release/examples");
    for name in files_with(&wasi_apps.join("src"), "rs").into_iter().filter(|n| n != "lib") {
        guests.push((name.clone(), wasi_dir.join(format!("{name}.wasm"))));
    }
    let wasi_c = manifest_dir.join("wasi-c");
    let c_out = out_dir.join("wasi-c");
    std::fs::create_dir_all(&c_out).expect("failed to create the C output dir");
    let include = repo.join("guest-lib/include");
    println!("cargo:rerun-if-changed={}", include.display());
    let mut clang = None;
    for name in files_with(&wasi_c, "c") {
        let source = wasi_c.join(format!("{name}.c"));
        let clang = clang.get_or_insert_with(wasi_clang);
        let built = clang
            .as_deref()
            .and_then(|c| compile_wasi_c(c, &include, &source, &c_out.join(format!("{name}.wasm"))));
        let path = built.unwrap_or_else(|| {
            println!("cargo:warning=no clang with wasi-libc: using the checked-in build of {name}.c");
            wasi_c.join(format!("{name}.wasm"))
        });
        guests.push((name, path));
    }
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

/// Builds the crate in `dir` for `target` in release mode, with `rustflags` (encoded, `\x1f`-separated).
fn cargo_build(dir: &Path, target: &str, target_dir: &Path, rustflags: &str, extra: &[&str]) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir)
        .arg("build")
        .arg("--release")
        .arg("--locked")
        .arg("--target")
        .arg(target)
        .arg("--target-dir")
        .arg(target_dir)
        .args(extra)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // Wrappers (clippy, sccache) and host flags are for the outer build only.
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR");
    let status = cmd.status().unwrap_or_else(|e| panic!("failed to run cargo for {}: {e}", dir.display()));
    assert!(status.success(), "building {} failed: {status}", dir.display());
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

/// The packages that give clang, lld and wasi-libc for `--target=wasm32-wasi --sysroot=/usr`.
const WASI_C_PACKAGES: &[&str] = &["clang", "lld", "wasi-libc", "libclang-rt-14-dev-wasm32"];

/// A clang that can build WASI programs against Debian's wasi-libc, installing it if the build may.
fn wasi_clang() -> Option<PathBuf> {
    let found = || {
        let libc = Path::new("/usr/lib/wasm32-wasi/libc.a").exists();
        let clang = ["clang", "clang-14", "clang-15", "clang-16"]
            .iter()
            .map(PathBuf::from)
            .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()));
        clang.filter(|_| libc)
    };
    if let Some(c) = found() {
        return Some(c);
    }
    let may_install = env::var_os("BROKER_NO_APT").is_none() && is_root();
    if !may_install {
        return None;
    }
    println!("cargo:warning=installing {} with apt-get for the C WASI apps", WASI_C_PACKAGES.join(" "));
    // Bounded (coreutils' `timeout`): a machine without a reachable mirror falls back to the
    // checked-in builds rather than hanging the build.
    let install = || {
        Command::new("timeout")
            .args(["600", "apt-get", "install", "-y", "--no-install-recommends"])
            .args(WASI_C_PACKAGES)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        // A fresh machine has no package lists yet.
        let updated = Command::new("timeout")
            .args(["300", "apt-get", "update"])
            .stdout(std::process::Stdio::null())
            .status();
        if !updated.is_ok_and(|s| s.success()) || !install() {
            return None;
        }
    }
    found()
}

/// Whether this build runs as root (who may install packages), read from `/proc/self/status`.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1)) == Some("0")
    })
}

/// Builds one C WASI app as a reactor; `None` (with a warning) if clang fails.
fn compile_wasi_c(clang: &Path, include: &Path, source: &Path, out: &Path) -> Option<PathBuf> {
    let output = Command::new(clang)
        .args(["--target=wasm32-wasi", "--sysroot=/usr", "-O2", "-mexec-model=reactor"])
        .arg("-I")
        .arg(include)
        .arg("-o")
        .arg(out)
        .arg(source)
        .output()
        .ok()?;
    if output.status.success() {
        return Some(out.to_path_buf());
    }
    println!(
        "cargo:warning=clang failed on {}: {}",
        source.display(),
        String::from_utf8_lossy(&output.stderr).lines().next().unwrap_or_default()
    );
    None
}

/// Installs the standard library of `target` for the active toolchain if it is missing.
fn ensure_target(target: &str) {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = sysroot.is_some_and(|s| s.join("lib/rustlib").join(target).join("lib").is_dir());
    if installed {
        return;
    }
    let status = Command::new("rustup").args(["target", "add", target]).status().unwrap_or_else(|e| {
        panic!("the {target} target is missing and rustup could not be run to install it: {e}")
    });
    assert!(status.success(), "`rustup target add {target}` failed: {status}");
}
