//! Compiles the native half of the broker's C-library support into one static library,
//! `libbroker_toolkit.a`, which the UI toolkit extension (`broker::ext::ui`) links against.
//!
//! `native/toolkit/toolkit.c` is a small C object toolkit written as an independent C library would be
//! (LVGL-like objects with C function-pointer callbacks); `native/toolkit/trampolines.c` is the broker's
//! pool of static C functions that turn a slot number into a real callback pointer and forward to Rust.
//! Both are built with the `cc` crate, the usual way to build a few C files from Cargo.

fn main() {
    const SOURCES: [&str; 2] = ["native/toolkit/toolkit.c", "native/toolkit/trampolines.c"];
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=native/toolkit/toolkit.h");
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    cc::Build::new()
        .files(SOURCES)
        .include("native/toolkit")
        .std("c11")
        .warnings(true)
        .extra_warnings(true)
        .compile("broker_toolkit");
}
