//! Tidy checks on the source tree, run as ordinary tests (rust-analyzer's habit).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() && name != "target" && !name.starts_with('.') {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The workspace's member crates, read from the root `Cargo.toml`, so a new crate is checked without
/// anyone remembering to list it here.
fn members() -> Vec<String> {
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).expect("root Cargo.toml");
    let line = manifest.lines().find(|l| l.starts_with("members")).expect("a members line");
    let list = line.split_once('[').and_then(|(_, rest)| rest.split_once(']')).expect("members = [...]").0;
    let members: Vec<String> =
        list.split(',').map(|m| m.trim().trim_matches('"').to_owned()).filter(|m| !m.is_empty()).collect();
    assert!(members.len() >= 8, "the workspace has the engine, tools, guests and tests: {members:?}");
    members
}

/// Every Rust file of the workspace's host crates (the guest apps, a workspace of their own, excluded).
fn host_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for d in members() {
        rust_files(&repo().join(d), &mut files);
    }
    files
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let mut files = host_files();
    rust_files(&repo().join("guests/apps"), &mut files);
    assert!(files.len() > 20, "found only {} files", files.len());
    let missing: Vec<_> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).is_ok_and(|s| s.trim_start().starts_with("//!")))
        .collect();
    assert!(missing.is_empty(), "files without a `//!` module doc: {missing:?}");
}

#[test]
fn unsafe_code_stays_in_the_listed_modules() {
    let allowed = [
        "broker/src/region/mapping.rs",
        "broker/src/runtime/memory_creator.rs",
        "broker/src/mode/shared.rs",
        "broker/src/runtime/fault.rs",
        "broker/src/abi/guest_memory.rs",
        "broker/src/runtime/priority.rs",
        "broker/src/native/toolkit.rs",
        "broker/src/native/trampoline.rs",
        "guest-lib/src/sys.rs",
        "guest-lib/src/shared.rs",
    ];
    let files: Vec<PathBuf> =
        host_files().into_iter().filter(|f| !f.starts_with(repo().join("guests/apps"))).collect();
    let offenders: Vec<_> = files
        .iter()
        .filter(|f| {
            let rel = f.strip_prefix(repo()).unwrap_or(f).to_string_lossy().replace('\\', "/");
            !allowed.contains(&rel.as_str())
                && std::fs::read_to_string(f).is_ok_and(|s| {
                    s.contains(concat!("unsafe", " {")) || s.contains(concat!("unsafe", " fn"))
                })
        })
        .collect();
    assert!(offenders.is_empty(), "unsafe outside the allowed modules: {offenders:?}");
}

/// The capability space sits below the modes, the runtime, the host functions, the registries and the
/// embedding API: what those hang off a capability (a shared window, a watch) reaches it as a cleanup
/// hook, so none of their rules, and none of their `unsafe` code, creeps back into it (issue 16).
#[test]
fn capability_imports_nothing_above_it() {
    let above = ["crate::mode", "crate::runtime", "crate::abi", "crate::registry", "crate::broker"];
    let mut files = Vec::new();
    rust_files(&repo().join("broker/src/capability"), &mut files);
    assert!(files.len() >= 3, "found only {files:?}");
    let offenders: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).expect("readable");
            let rel = f.strip_prefix(repo()).unwrap_or(f).display().to_string();
            above.iter().filter(|m| text.contains(*m)).map(move |m| format!("{rel}: {m}")).collect::<Vec<_>>()
        })
        .collect();
    assert!(offenders.is_empty(), "capability reaches above itself: {offenders:?}");
}
