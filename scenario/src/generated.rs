//! A generated wasm module of a chosen size that is expensive to compile: what an `upload` actor loads
//! in a loop to flood the broker with compilations, as a tenant uploading large modules would.
//!
//! The bytes are written directly in the wasm binary format: the module is one function shape repeated,
//! so a generator of a few dozen lines needs no encoder crate. Every function takes and returns an
//! `i64` and is a chain of [`ROUNDS`] if/else diamonds of i64 arithmetic on two locals, with constants
//! drawn from a fixed linear congruential sequence: distinct code for Cranelift to optimise and
//! register-allocate (megabytes take it seconds), produced by a loop over bytes (megabytes take
//! milliseconds). The same size always gives the same bytes. The module imports nothing, so the
//! broker's import check accepts it, and exports its first function as `run`.

/// if/else diamonds per function: about 2.5 KiB of code each, large enough that a function's
/// compilation, not per-function overhead, dominates.
const ROUNDS: usize = 64;

/// The type every function has: `(i64) -> i64`.
const I64: u8 = 0x7e;

/// A valid module of at least `size` bytes (whole functions, at least one).
pub fn generated_module(size: usize) -> Vec<u8> {
    let mut lcg = 0x2545_F491_4F6C_DD1Du64;
    let mut next_constant = move || {
        lcg = lcg.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (lcg >> 11).cast_signed()
    };
    // Sections other than the code take a few bytes per function: the code alone decides the size.
    let mut code = Vec::with_capacity(size + 4096);
    let mut functions = 0usize;
    let mut body = Vec::new();
    while functions == 0 || code.len() < size {
        body.clear();
        // One group of one extra i64 local (local 1); local 0 is the parameter.
        body.extend_from_slice(&[0x01, 0x01, I64]);
        for _ in 0..ROUNDS {
            // y = x * c ^ y
            body.extend_from_slice(&[0x20, 0x00, 0x42]);
            signed(&mut body, next_constant());
            body.extend_from_slice(&[0x7e, 0x20, 0x01, 0x85, 0x22, 0x01]);
            // if y & 1 == 0 { x = rotl(y, 13) } else { x = x + d }
            body.extend_from_slice(&[0x42, 0x01, 0x83, 0x50, 0x04, 0x40]);
            body.extend_from_slice(&[0x20, 0x01, 0x42, 0x0d, 0x89, 0x21, 0x00]);
            body.extend_from_slice(&[0x05, 0x20, 0x00, 0x42]);
            signed(&mut body, next_constant());
            body.extend_from_slice(&[0x7c, 0x21, 0x00, 0x0b]);
        }
        // return x
        body.extend_from_slice(&[0x20, 0x00, 0x0b]);
        unsigned(&mut code, body.len());
        code.extend_from_slice(&body);
        functions += 1;
    }

    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(&mut module, 1, &[0x01, 0x60, 0x01, I64, 0x01, I64]);
    let mut declared = Vec::new();
    unsigned(&mut declared, functions);
    declared.resize(declared.len() + functions, 0x00);
    section(&mut module, 3, &declared);
    section(&mut module, 7, &[0x01, 0x03, b'r', b'u', b'n', 0x00, 0x00]);
    let mut entries = Vec::with_capacity(code.len() + 8);
    unsigned(&mut entries, functions);
    entries.extend_from_slice(&code);
    section(&mut module, 10, &entries);
    module
}

/// Appends section `id` with `content`.
fn section(out: &mut Vec<u8>, id: u8, content: &[u8]) {
    out.push(id);
    unsigned(out, content.len());
    out.extend_from_slice(content);
}

/// Appends `v` as unsigned LEB128.
fn unsigned(out: &mut Vec<u8>, mut v: usize) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends `v` as signed LEB128.
fn signed(out: &mut Vec<u8>, mut v: i64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        let done = (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_modules_are_valid_deterministic_and_at_least_the_size_asked() {
        let engine = wasmtime::Engine::default();
        for size in [0, 1, 4096, 1 << 20] {
            let bytes = generated_module(size);
            assert!(bytes.len() >= size, "{} < {size}", bytes.len());
            assert!(bytes.len() < size + 8192, "whole functions overshoot by less than one: {}", bytes.len());
            wasmtime::Module::validate(&engine, &bytes).expect("valid wasm");
            assert_eq!(bytes, generated_module(size), "the same size gives the same bytes");
        }
    }

    #[test]
    fn a_generated_module_runs() {
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, generated_module(1)).expect("compiles");
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("instantiates");
        let run = instance.get_typed_func::<i64, i64>(&mut store, "run").expect("exports run");
        let a = run.call(&mut store, 1).expect("runs");
        assert_eq!(a, run.call(&mut store, 1).expect("runs"), "a pure function");
        assert_ne!(a, run.call(&mut store, 2).expect("runs"));
    }

    #[test]
    fn leb128_matches_the_reference_encodings() {
        let enc_u = |v: usize| {
            let mut out = Vec::new();
            unsigned(&mut out, v);
            out
        };
        let enc_s = |v: i64| {
            let mut out = Vec::new();
            signed(&mut out, v);
            out
        };
        assert_eq!(enc_u(0), [0x00]);
        assert_eq!(enc_u(624_485), [0xe5, 0x8e, 0x26]);
        assert_eq!(enc_s(-1), [0x7f]);
        assert_eq!(enc_s(63), [0x3f]);
        assert_eq!(enc_s(64), [0xc0, 0x00]);
        assert_eq!(enc_s(-123_456), [0xc0, 0xbb, 0x78]);
        assert_eq!(enc_s(i64::MIN).len(), 10);
    }
}
