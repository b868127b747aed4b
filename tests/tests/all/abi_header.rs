//! The C header `guest-lib/include/broker.h` agrees with the `broker-abi` crate: every status code,
//! rights bit, mode, import name and import module (`broker_v1`, and `broker_ui_v1` for the UI toolkit
//! extension), a tidy check so the header cannot drift.

use broker_abi::{func, mode, rights, ui_func, Status, MODULE, UI_MODULE};

fn header() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-lib/include/broker.h");
    std::fs::read_to_string(path).expect("header exists")
}

fn define(h: &str, name: &str) -> String {
    h.lines()
        .find_map(|l| {
            l.strip_prefix("#define ")
                .and_then(|r| r.strip_prefix(name))
                .filter(|r| r.starts_with(' '))
                .map(|r| r.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("{name} is not defined in broker.h"))
}

fn number(v: &str) -> i64 {
    let v = v.trim_start_matches('(').trim_end_matches(')').trim_end_matches("LL").trim_end_matches('u');
    match v.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16).expect("hex"),
        None => v.parse().expect("decimal"),
    }
}

#[test]
fn status_codes_match() {
    let h = header();
    for s in Status::ALL {
        assert_eq!(number(&define(&h, s.c_name())), i64::from(s.code()), "{}", s.c_name());
    }
    assert_eq!(number(&define(&h, "BROKER_ABI_VERSION")), i64::from(broker_abi::VERSION));
}

#[test]
fn rights_modes_and_limits_match() {
    let h = header();
    let pairs = [
        ("BROKER_RIGHT_READ", rights::READ),
        ("BROKER_RIGHT_WRITE", rights::WRITE),
        ("BROKER_RIGHT_MAP", rights::MAP),
        ("BROKER_RIGHT_GRANT", rights::GRANT),
        ("BROKER_RIGHT_WATCH", rights::WATCH),
        ("BROKER_RIGHTS_ALL", rights::ALL),
        ("BROKER_MODE_HANDLE", mode::HANDLE),
        ("BROKER_MODE_MIRROR", mode::MIRROR),
        ("BROKER_MODE_SHARED", mode::SHARED),
        ("BROKER_MAX_NAME_LEN", broker_abi::MAX_NAME_LEN),
        ("BROKER_MAP_WRITE", broker_abi::map_flags::WRITE),
        ("BROKER_MAX_WAIT_MS", broker_abi::MAX_WAIT_MS),
        ("BROKER_MAX_IOVS", broker_abi::MAX_IOVS),
        ("BROKER_PAGE_SIZE", broker_abi::PAGE_SIZE),
    ];
    for (name, value) in pairs {
        assert_eq!(number(&define(&h, name)), i64::from(value), "{name}");
    }
    assert_eq!(number(&define(&h, "BROKER_LEN_TO_END")), broker_abi::LEN_TO_END);
}

#[test]
fn every_import_is_declared_once_with_the_module_name() {
    let h = header();
    assert!(h.contains(&format!("#define BROKER_IMPORT(name) __attribute__((import_module(\"{}\")", MODULE)));
    for name in func::ALL {
        let decl = format!("BROKER_IMPORT({name})");
        assert_eq!(h.matches(&decl).count(), 1, "{decl}");
    }
    assert_eq!(
        h.matches("BROKER_IMPORT(").count() - 1,
        func::ALL.len(),
        "no import beyond the ABI (minus the macro's own definition; BROKER_UI_IMPORT( does not match)"
    );
}

/// The toolkit's imports are declared with their own macro, which imports them from the extension's
/// module `broker_ui_v1`, never from `broker_v1`.
#[test]
fn the_toolkit_imports_come_from_the_ui_extension_module() {
    let h = header();
    let macro_line = format!("#define BROKER_UI_IMPORT(name) __attribute__((import_module(\"{UI_MODULE}\")");
    assert!(h.contains(&macro_line), "BROKER_UI_IMPORT imports from {UI_MODULE}");
    for name in ui_func::ALL {
        let decl = format!("BROKER_UI_IMPORT({name})");
        assert_eq!(h.matches(&decl).count(), 1, "{decl}");
        assert_eq!(h.matches(&format!("BROKER_IMPORT({name})")).count(), 0, "{name} is not in {MODULE}");
    }
    assert_eq!(
        h.matches("BROKER_UI_IMPORT(").count() - 1,
        ui_func::ALL.len(),
        "no import beyond the extension (minus the macro's own definition)"
    );
}
