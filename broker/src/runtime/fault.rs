//! Faults outside wasm code: a window's protection meets a wasmtime helper, not a wasm instruction.
//!
//! wasmtime runs `memory.fill`, `memory.copy`, `memory.init` (and the atomics' wait and notify) as
//! host-side helper calls. Its own signal handler turns a fault into a trap only when the faulting
//! instruction is wasm code; a helper writing into a read-only window, or reading a revoked one, would
//! take the whole process down. This module installs a per-store handler (wasmtime's
//! `StoreExt::set_signal_handler`, which wasmtime runs first for every signal raised while that store
//! is executing) that recognises such a fault and makes it harmless:
//!
//! 1. it only acts on `SIGSEGV` whose address lies in the accessible part of this instance's own linear
//!    memory and whose program counter is outside the module's compiled code (faults in wasm code stay
//!    wasmtime's, which traps them precisely);
//! 2. it scrubs the memory ([`MemoryShape::scrub`]): every accessible page becomes a fresh private
//!    zero page in one `mmap`, so every window is gone and the helper, resumed, finishes on zeros that
//!    belong to nobody else;
//! 3. it records the fault in the instance's [`Fence`] and advances the engine's epoch, so the instance
//!    traps at its next epoch check (a loop header or function entry), at its next host call, or when
//!    the call returns, whichever comes first; the trap names the region.
//!
//! Everything the handler does is async-signal-safe: atomic loads and stores, one `mmap` system call,
//! no allocation, no lock. The scrub replaces whole mappings from the reservation's start to its
//! inaccessible tail, so it never needs the kernel to split a mapping and cannot hit the kernel's limit
//! on mappings. If the kernel refused anyway (out of memory for its own bookkeeping), the handler
//! declines and wasmtime's default handling applies.
//!
//! This module is one of the few allowed to use `unsafe` (see `ARCHITECTURE.md`).

#![allow(unsafe_code, reason = "reads signal contexts and installs a store's signal handler")]

use std::ops::Range;
use std::sync::Arc;

use wasmtime::unix::StoreExt;
use wasmtime::Store;

use crate::mode::shared::Fence;

/// The program counter of an interrupted thread, from its signal context.
///
/// # Safety
/// `context` must be the `ucontext_t` pointer the kernel passed to a signal handler.
unsafe fn program_counter(context: *const libc::c_void) -> Option<usize> {
    let uc = context.cast::<libc::ucontext_t>();
    if uc.is_null() {
        return None;
    }
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        // SAFETY: the kernel passes a valid `ucontext_t` (caller's obligation); REG_RIP indexes gregs.
        let rip = unsafe { (*uc).uc_mcontext.gregs[libc::REG_RIP as usize] };
        usize::try_from(rip).ok()
    }
    #[cfg(all(target_os = "linux", target_arch = "aarch64"))]
    {
        // SAFETY: as above; `pc` is the interrupted program counter.
        let pc = unsafe { (*uc).uc_mcontext.pc };
        usize::try_from(pc).ok()
    }
    #[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
    {
        None
    }
}

/// Installs the window fault handler on `store`, whose compiled code occupies `code` and whose memory
/// (once it has one) `fence` guards.
pub(crate) fn install<T>(store: &mut Store<T>, fence: Arc<Fence>, code: Range<usize>) {
    let handler = move |signum: libc::c_int, info: *const libc::siginfo_t, context: *const libc::c_void| {
        if signum != libc::SIGSEGV || info.is_null() {
            return false;
        }
        // SAFETY: the kernel passed a valid siginfo for SIGSEGV; `si_addr` reads its fault address.
        let addr = unsafe { (*info).si_addr() } as usize;
        // SAFETY: `context` is the context the kernel passed to the signal handler.
        let Some(pc) = (unsafe { program_counter(context) }) else {
            return false;
        };
        if code.contains(&pc) {
            // A wasm instruction: wasmtime traps it precisely, with the faulting address.
            return false;
        }
        let Some(shape) = fence.shape() else {
            return false;
        };
        if !shape.contains(addr) {
            return false;
        }
        // SAFETY: this store is executing (wasmtime calls the handler only then), so its memory is alive;
        // the code that faulted copies through raw pointers (a wasmtime helper or the broker's guest
        // memory accessor) and, resumed, sees the fresh zero pages.
        if unsafe { shape.scrub() }.is_err() {
            return false;
        }
        let guest = u64::try_from(addr - shape.base()).unwrap_or(u64::MAX);
        fence.record_fault(guest);
        true
    };
    // SAFETY: the handler is async-signal-safe (see the module docs): it reads the signal's own data,
    // atomics and a `OnceLock` already set, makes one `mmap` system call and advances an atomic counter.
    unsafe { store.set_signal_handler(handler) };
}
