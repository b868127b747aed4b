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
        "broker/src/ext/ui/toolkit.rs",
        "broker/src/ext/ui/trampoline.rs",
        "guest-lib/src/sys.rs",
        "guest-lib/src/shared.rs",
    ];
    let files: Vec<PathBuf> =
        host_files().into_iter().filter(|f| !f.starts_with(repo().join("guests/apps"))).collect();
    let offenders: Vec<_> = files
        .iter()
        .filter(|f| {
            let rel = f.strip_prefix(repo()).unwrap_or(f).to_string_lossy().replace('\\', "/");
            !allowed.contains(&rel.as_str()) && std::fs::read_to_string(f).is_ok_and(|s| mentions_unsafe(&s))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "the {} keyword outside the allowed modules: {offenders:?}",
        concat!("un", "safe")
    );
}

/// Whether code (comments skipped) uses the `unsafe` keyword in any form: blocks, functions, impls,
/// traits, extern blocks and attributes such as `#[unsafe(no_mangle)]`. Lint names like `unsafe_code`
/// are other words.
fn mentions_unsafe(text: &str) -> bool {
    let keyword = concat!("un", "safe");
    code_lines(text).any(|line| {
        line.match_indices(keyword).any(|(at, _)| {
            let word = |c: char| c.is_alphanumeric() || c == '_';
            let before = line[..at].chars().next_back();
            let after = line[at + keyword.len()..].chars().next();
            !before.is_some_and(word) && !after.is_some_and(word)
        })
    })
}

#[test]
fn the_unsafe_check_sees_every_form() {
    let k = concat!("un", "safe");
    for form in ["{ x }", "fn f() {}", "impl Send for X {}", "trait T {}", "extern \"C\" {}"] {
        assert!(mentions_unsafe(&format!("{k} {form}")), "{k} {form}");
    }
    assert!(mentions_unsafe(&format!("#[{k}(no_mangle)]")));
    assert!(mentions_unsafe(&format!("let x = {k}{{ y }};")));
    assert!(!mentions_unsafe(&format!("#![deny({k}_code)]")), "a lint name is another word");
    assert!(!mentions_unsafe(&format!("// {k} {{ in a comment }}")));
}

/// The lines of a file that are code: line comments (doc comments included) and the tail of a line
/// after ` // ` are dropped.
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !l.trim_start().starts_with("//")).map(|l| l.split(" // ").next().unwrap_or(l))
}

/// The names a file's code reaches through `prefix` (`crate::` or a crate name with `::`): the first
/// segment of every path, `use prefix{a, b::c}` lists included.
fn reached(text: &str, prefix: &str) -> std::collections::BTreeSet<String> {
    let code: String = code_lines(text).collect::<Vec<_>>().join("\n");
    let mut out = std::collections::BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    for (at, _) in code.match_indices(prefix) {
        let rest = &code[at + prefix.len()..];
        if let Some(list) = rest.strip_prefix('{') {
            let list = list.split('}').next().unwrap_or("");
            out.extend(list.split(',').map(|item| ident(item.trim())).filter(|i| !i.is_empty()));
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

/// The engine's top-level modules (`broker/src/<m>.rs` or `broker/src/<m>/`), each with the engine
/// modules its code names through `crate::`.
fn engine_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let src = repo().join("broker/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let module = |f: &Path| {
        let rel = f.strip_prefix(&src).unwrap_or(f);
        let first = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned());
        first.unwrap_or_default().trim_end_matches(".rs").to_owned()
    };
    let tops: std::collections::BTreeSet<String> =
        files.iter().map(|f| module(f)).filter(|m| m != "lib").collect();
    let mut graph = std::collections::BTreeMap::new();
    for f in files.iter().filter(|f| f.file_name().is_some_and(|n| n != "tests.rs")) {
        let m = module(f);
        if m == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let deps: &mut std::collections::BTreeSet<String> = graph.entry(m.clone()).or_default();
        deps.extend(reached(&text, "crate::").into_iter().filter(|d| *d != m && tops.contains(d)));
    }
    graph
}

/// Pairs of engine modules that import each other, found by the graph of [`engine_graph`].
fn engine_cycles() -> Vec<(String, String)> {
    let graph = engine_graph();
    let mut cycles = Vec::new();
    for (a, deps) in &graph {
        for b in deps {
            if a < b && graph.get(b).is_some_and(|d| d.contains(a)) {
                cycles.push((a.clone(), b.clone()));
            }
        }
    }
    cycles
}

/// The engine's layering, file by file: (path prefix, names its code must not reach, through which
/// prefix, and why).
const LAYERS: &[(&str, &[&str], &str, &str)] = &[
    ("broker/src/abi/", &["broker"], "crate::", "host functions sit on the registries, not the facade"),
    ("broker/src/registry.rs", &["abi", "broker"], "crate::", "the core sits below the ABI and the facade"),
    ("broker/src/runtime/pool.rs", &["instance"], "super::", "the pool runs anything Runnable"),
    ("broker/src/runtime/pool.rs", &["runtime"], "crate::", "the pool runs anything Runnable"),
    ("broker/src/region/", &["capability", "abi", "runtime"], "crate::", "regions sit below capabilities"),
    ("scenario/src/bench/model.rs", &["runner", "report", "recommend"], "super::", "the model is the bottom"),
    ("scenario/src/bench/recommend.rs", &["runner", "report"], "super::", "the rule reads the model"),
    ("scenario/src/bench/report.rs", &["runner"], "super::", "the report reads the model"),
];

#[test]
fn modules_keep_their_layers() {
    let mut files = host_files();
    files.retain(|f| !f.ends_with("tests.rs"));
    let mut broken = Vec::new();
    for (prefix, banned, via, why) in LAYERS {
        let matching: Vec<&PathBuf> = files.iter().filter(|f| rel(f).starts_with(prefix)).collect();
        assert!(!matching.is_empty(), "no file matches {prefix}: update the layering rules");
        for f in matching {
            let names = reached(&std::fs::read_to_string(f).unwrap_or_default(), via);
            for b in banned.iter().filter(|b| names.contains(**b)) {
                broken.push(format!("{} reaches {via}{b} ({why})", rel(f)));
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

/// A file's path from the repository root, with `/` separators.
fn rel(f: &Path) -> String {
    f.strip_prefix(repo()).unwrap_or(f).to_string_lossy().replace('\\', "/")
}

#[test]
fn crates_keep_their_layers() {
    // (crate dir, crates its code must not name): the engine carries no protocol, CLI, tools or
    // guests; the scenario runner no protocol or CLI; the control plane no CLI.
    let rules: &[(&str, &[&str])] = &[
        (
            "broker/",
            &["tonic", "prost", "clap", "broker_guests", "broker_scenario", "broker_control", "broker_cli"],
        ),
        ("scenario/", &["tonic", "prost", "clap", "broker_control", "broker_cli"]),
        ("control/", &["clap", "broker_cli"]),
    ];
    let mut broken = Vec::new();
    for f in host_files() {
        let path = rel(&f);
        let Some((_, banned)) = rules.iter().find(|(dir, _)| path.starts_with(dir)) else { continue };
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for b in banned.iter().filter(|b| code_lines(&text).any(|l| l.contains(&format!("{b}::")))) {
            broken.push(format!("{path} names {b}"));
        }
    }
    assert!(broken.is_empty(), "crate layering broken:\n{}", broken.join("\n"));
    for (dir, banned) in rules {
        let manifest = std::fs::read_to_string(repo().join(dir).join("Cargo.toml")).expect("manifest");
        for b in banned.iter().map(|b| b.replace('_', "-")) {
            assert!(
                !manifest.lines().any(|l| l.starts_with(&format!("{b} ")) || l.starts_with(&format!("{b}."))),
                "{dir}Cargo.toml depends on {b}"
            );
        }
    }
}

/// Prints the engine's module graph and the pairs of modules that still import each other (run with
/// `--nocapture`); asserts the graph was read, and that the cycles the architecture issue named are gone.
#[test]
fn engine_module_graph() {
    let graph = engine_graph();
    assert!(graph.len() >= 10, "the engine's modules were found: {graph:?}");
    for (m, deps) in &graph {
        eprintln!("{m} -> {}", deps.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    let cycles = engine_cycles();
    eprintln!("{} pairs of engine modules import each other: {cycles:?}", cycles.len());
    for named in [("abi", "broker"), ("abi", "registry"), ("broker", "registry")] {
        let pair = (named.0.to_owned(), named.1.to_owned());
        assert!(!cycles.contains(&pair), "{named:?} import each other again");
    }
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

/// Every writer into a region's memory makes the write sequence odd (`Region::lock_for_write`), or a
/// lock-free small read could keep bytes from the middle of its write (issue 18). So nothing outside
/// the region module takes the pages writer lock itself.
#[test]
fn region_writers_take_the_lock_through_the_write_sequence() {
    let mut files = Vec::new();
    rust_files(&repo().join("broker/src"), &mut files);
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| !f.ends_with("broker/src/region/mod.rs"))
        .filter(|f| {
            std::fs::read_to_string(f).is_ok_and(|t| code_lines(&t).any(|l| l.contains("pages.write()")))
        })
        .map(|f| rel(f))
        .collect();
    assert!(files.len() > 20, "found only {} files", files.len());
    assert!(
        offenders.is_empty(),
        "take the region's writer lock through Region::lock_for_write: {offenders:?}"
    );
    let region = std::fs::read_to_string(repo().join("broker/src/region/mod.rs")).expect("readable");
    assert_eq!(
        code_lines(&region).filter(|l| l.contains("pages.write()")).count(),
        1,
        "region/mod.rs takes the writer lock only in lock_for_write"
    );
}
