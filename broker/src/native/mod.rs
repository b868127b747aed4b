//! Native C libraries the broker drives in-process, and the bridge that lets their C callbacks reach
//! Rust (and, later, the apps behind it).
//!
//! `toolkit` owns the C object toolkit built from `broker/native/toolkit/` by `build.rs`: an unchanged,
//! single-threaded C library whose objects live in native memory and whose callbacks are bare C
//! function pointers. [`Toolkit`] is its only safe entry point, and hands out [`ObjectId`]s instead of
//! pointers. `trampoline` owns the process's table of static C trampolines and the pools that share it
//! (one per broker, sized by its config): [`TrampolinePool::allocate`] binds a Rust [`EventTarget`] to a
//! slot and returns that slot's real C function pointer, which the C library stores and calls like any
//! other callback.
//!
//! This module is allowed `unsafe` because it is the FFI boundary; raw pointers do not leave it.

mod toolkit;
mod trampoline;

#[cfg(test)]
mod tests;

pub use toolkit::{
    CallbackId, EventCallback, EventCode, ObjFields, ObjectId, Toolkit, ToolkitError, MAX_EVENT_CALLBACKS,
    OBJ_FIELDS_SIZE, TEXT_CAPACITY,
};
pub use trampoline::{
    Event, EventTarget, PoolError, SlotId, Trampoline, TrampolinePool, DEFAULT_TRAMPOLINES, MAX_TRAMPOLINES,
};
