//! Loom models of the broker's lock-free protocols.
//!
//! Each model compiles one of the broker's own source files unchanged, with loom's atomics in place of
//! std's (the file takes its atomics from `super::sync`), and checks it under every interleaving loom
//! explores. Here: `broker/src/capability/cache.rs`, the per-instance handle caches that resolve a
//! handle without the capability lock (issue 18), against a revocation racing with the lookup.

/// The atomics the compiled files use: loom's, so loom sees every access.
mod sync {
    pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
}

/// `broker/src/capability/cache.rs`, as the broker compiles it.
#[path = "../../broker/src/capability/cache.rs"]
#[allow(dead_code, reason = "the broker uses every item; a model may not")]
pub mod cache;
