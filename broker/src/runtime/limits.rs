//! Charges an instance's linear memory and tables to its tenant's quota.
//!
//! wasmtime asks the store's [`ResourceLimiter`] before every growth, including the initial allocation at
//! instantiation. Growth is refused (the guest's `memory.grow` returns -1) when it would exceed the
//! instance's own cap or the tenant's memory quota; everything reserved is released when the store drops.

use std::sync::Arc;

use wasmtime::ResourceLimiter;

use crate::tenant::{QuotaError, Resource, Tenant};

/// Table elements an instance may have (function tables of Rust guests are small).
const MAX_TABLE_ELEMENTS: usize = 100_000;

pub(crate) struct TenantLimiter {
    tenant: Arc<Tenant>,
    max_memory: u64,
    /// Bytes this store holds against the tenant's quota.
    reserved: u64,
    /// The last refusal, to explain a failed instantiation.
    pub(crate) last_refusal: Option<QuotaError>,
}

impl TenantLimiter {
    pub(crate) fn new(tenant: Arc<Tenant>, max_memory: u64) -> TenantLimiter {
        TenantLimiter { tenant, max_memory, reserved: 0, last_refusal: None }
    }
}

impl ResourceLimiter for TenantLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let (Ok(current), Ok(desired)) = (u64::try_from(current), u64::try_from(desired)) else {
            return Ok(false);
        };
        if maximum.is_some_and(|m| u64::try_from(m).is_ok_and(|m| desired > m)) || desired > self.max_memory {
            return Ok(false);
        }
        let delta = desired.saturating_sub(current);
        match self.tenant.try_add(Resource::MemoryBytes, delta) {
            Ok(()) => {
                self.reserved += delta;
                Ok(true)
            }
            Err(e) => {
                self.last_refusal = Some(e);
                Ok(false)
            }
        }
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // The growth we charged for did not happen; wasmtime does not say by how much, so the charge is
        // corrected when the store drops (it releases exactly `reserved`). Keeping a slightly high charge
        // until then errs on the safe side.
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn memories(&self) -> usize {
        1
    }
}

impl Drop for TenantLimiter {
    fn drop(&mut self) {
        self.tenant.release(Resource::MemoryBytes, self.reserved);
    }
}
