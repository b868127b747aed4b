//! The C header `guest-lib/include/broker.h` agrees with the `broker-abi` crate: every status code,
//! rights bit, mode and import name (a tidy check, so the header cannot drift).

use broker_abi::{func, mode, rights, Status};

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
    assert!(h.contains(&format!("import_module(\"{}\")", broker_abi::MODULE)));
    for name in func::ALL {
        let decl = format!("BROKER_IMPORT({name})");
        assert_eq!(h.matches(&decl).count(), 1, "{decl}");
    }
    assert_eq!(
        h.matches("BROKER_IMPORT(").count() - 1,
        func::ALL.len(),
        "no import beyond the ABI (minus the macro's own definition)"
    );
}
