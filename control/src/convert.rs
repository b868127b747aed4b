//! Hand-written conversions between protobuf messages and domain types. Missing or out-of-range
//! fields become [`ApiError`]s naming the field; nothing here panics on client input.

use std::time::Duration;

use broker_proto::pb;

use super::status::ApiError;
use broker::mode::ConflictPolicy;
use broker::{InstanceConfig, InstanceStatus, Mode, Quotas, RunState, TrafficStats, Usage, Val};

/// The domain quotas of a `Quotas` message: absent optional fields take their defaults.
///
/// # Errors
/// [`ApiError::InvalidField`] naming `quotas.cpu_shares` when it is 0 or above
/// [`Quotas::MAX_CPU_SHARES`].
pub(crate) fn quotas_from(q: &pb::Quotas) -> Result<Quotas, ApiError> {
    let cpu_shares = match q.cpu_shares {
        None => Quotas::DEFAULT_CPU_SHARES,
        Some(shares) => Quotas::check_cpu_shares(shares)
            .map_err(|e| ApiError::InvalidField { field: "quotas.cpu_shares", reason: e.to_string() })?,
    };
    Ok(Quotas {
        region_bytes: q.region_bytes,
        regions: q.regions,
        instances: q.instances,
        handles: q.handles,
        memory_bytes: q.memory_bytes,
        // Absent (a client built before windows had quotas): the default.
        windows: q.windows.unwrap_or(Quotas::DEFAULT_WINDOWS),
        windows_per_instance: q.windows_per_instance.unwrap_or(Quotas::DEFAULT_WINDOWS_PER_INSTANCE),
        modules: q.modules.unwrap_or(Quotas::DEFAULT_MODULES),
        module_bytes: q.module_bytes.unwrap_or(Quotas::DEFAULT_MODULE_BYTES),
        compiled_bytes: q.compiled_bytes.unwrap_or(Quotas::DEFAULT_COMPILED_BYTES),
        max_call_timeout_ms: q.max_call_timeout_ms.unwrap_or(Quotas::DEFAULT_MAX_CALL_TIMEOUT_MS),
        trampolines: q.trampolines.unwrap_or(Quotas::DEFAULT_TRAMPOLINES),
        max_workers: q.max_workers.unwrap_or(0),
        watches: q.watches.unwrap_or(Quotas::DEFAULT_WATCHES),
        cpu_shares,
    })
}

pub(crate) fn quotas_to(q: &Quotas) -> pb::Quotas {
    pb::Quotas {
        region_bytes: q.region_bytes,
        regions: q.regions,
        instances: q.instances,
        handles: q.handles,
        memory_bytes: q.memory_bytes,
        windows: Some(q.windows),
        windows_per_instance: Some(q.windows_per_instance),
        modules: Some(q.modules),
        module_bytes: Some(q.module_bytes),
        compiled_bytes: Some(q.compiled_bytes),
        max_call_timeout_ms: Some(q.max_call_timeout_ms),
        trampolines: Some(q.trampolines),
        max_workers: Some(q.max_workers),
        watches: Some(q.watches),
        cpu_shares: Some(q.cpu_shares),
    }
}

pub(crate) fn usage_to(u: &Usage) -> pb::Usage {
    pb::Usage {
        region_bytes: u.region_bytes,
        regions: u.regions,
        instances: u.instances,
        handles: u.handles,
        memory_bytes: u.memory_bytes,
        windows: u.windows,
        modules: u.modules,
        module_bytes: u.module_bytes,
        compiled_bytes: u.compiled_bytes,
        trampolines: u.trampolines,
        watches: u.watches,
        events: u.events,
    }
}

pub(crate) fn mode_from(raw: i32) -> Result<Mode, ApiError> {
    match pb::Mode::try_from(raw) {
        Ok(pb::Mode::Unspecified) => Err(ApiError::InvalidField {
            field: "mode",
            reason: "MODE_UNSPECIFIED: say MODE_HANDLE, MODE_MIRROR or MODE_SHARED".into(),
        }),
        Ok(pb::Mode::Handle) => Ok(Mode::Handle),
        Ok(pb::Mode::Mirror) => Ok(Mode::Mirror),
        Ok(pb::Mode::Shared) => Ok(Mode::Shared),
        Err(_) => Err(ApiError::InvalidField { field: "mode", reason: format!("unknown mode {raw}") }),
    }
}

pub(crate) fn mode_to(m: Mode) -> pb::Mode {
    match m {
        Mode::Handle => pb::Mode::Handle,
        Mode::Mirror => pb::Mode::Mirror,
        Mode::Shared => pb::Mode::Shared,
    }
}

pub(crate) fn policy_from(raw: i32) -> Result<ConflictPolicy, ApiError> {
    match pb::ConflictPolicy::try_from(raw) {
        Ok(pb::ConflictPolicy::Unspecified | pb::ConflictPolicy::Reject) => Ok(ConflictPolicy::Reject),
        Ok(pb::ConflictPolicy::LastWriterWins) => Ok(ConflictPolicy::LastWriterWins),
        Ok(pb::ConflictPolicy::Merge) => Ok(ConflictPolicy::Merge),
        Err(_) => Err(ApiError::InvalidField { field: "policy", reason: format!("unknown policy {raw}") }),
    }
}

pub(crate) fn policy_to(p: ConflictPolicy) -> pb::ConflictPolicy {
    match p {
        ConflictPolicy::Reject => pb::ConflictPolicy::Reject,
        ConflictPolicy::LastWriterWins => pb::ConflictPolicy::LastWriterWins,
        ConflictPolicy::Merge => pb::ConflictPolicy::Merge,
    }
}

/// Whether the requested backing is persistent.
pub(crate) fn persistent_from(raw: i32) -> Result<bool, ApiError> {
    match pb::Backing::try_from(raw) {
        Ok(pb::Backing::Unspecified | pb::Backing::Ephemeral) => Ok(false),
        Ok(pb::Backing::Persistent) => Ok(true),
        Err(_) => Err(ApiError::InvalidField { field: "backing", reason: format!("unknown backing {raw}") }),
    }
}

/// The longest call deadline a client may ask for.
const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(3600);

pub(crate) fn instance_config_from(c: Option<&pb::InstanceConfig>) -> Result<InstanceConfig, ApiError> {
    let mut config = InstanceConfig::default();
    if let Some(c) = c {
        if c.call_timeout_ms > 0 {
            let t = Duration::from_millis(c.call_timeout_ms);
            if t > MAX_CALL_TIMEOUT {
                return Err(ApiError::InvalidField {
                    field: "config.call_timeout_ms",
                    reason: "at most one hour".into(),
                });
            }
            config.call_timeout = t;
        }
        if c.max_memory_bytes > 0 {
            config.max_memory_bytes = c.max_memory_bytes;
        }
    }
    Ok(config)
}

pub(crate) fn state_to(s: RunState) -> pb::InstanceState {
    match s {
        RunState::Running => pb::InstanceState::Running,
        RunState::Trapped => pb::InstanceState::Trapped,
        RunState::Stopped => pb::InstanceState::Stopped,
    }
}

pub(crate) fn instance_to(tenant: &str, name: &str, s: &InstanceStatus) -> pb::Instance {
    pb::Instance {
        tenant: tenant.to_owned(),
        name: name.to_owned(),
        module: s.module.clone(),
        state: state_to(s.state).into(),
        calls: s.calls,
        traps: s.traps,
        restarts: s.restarts,
        last_trap: s.last_trap.clone().unwrap_or_default(),
    }
}

pub(crate) fn value_from(v: &pb::Value) -> Result<Val, ApiError> {
    use pb::value::Value as V;
    match v.value {
        Some(V::I32(x)) => Ok(Val::I32(x)),
        Some(V::I64(x)) => Ok(Val::I64(x)),
        Some(V::F32(x)) => Ok(Val::F32(x.to_bits())),
        Some(V::F64(x)) => Ok(Val::F64(x.to_bits())),
        None => Err(ApiError::InvalidField { field: "args", reason: "a value has no type set".into() }),
    }
}

pub(crate) fn value_to(v: &Val) -> Result<pb::Value, ApiError> {
    use pb::value::Value as V;
    let value = match v {
        Val::I32(x) => V::I32(*x),
        Val::I64(x) => V::I64(*x),
        Val::F32(x) => V::F32(f32::from_bits(*x)),
        Val::F64(x) => V::F64(f64::from_bits(*x)),
        _ => return Err(ApiError::Precondition("the export returned a value the API cannot carry".into())),
    };
    Ok(pb::Value { value: Some(value) })
}

pub(crate) fn traffic_to(t: &TrafficStats) -> pb::Traffic {
    pb::Traffic {
        bytes_in: t.bytes_in,
        bytes_out: t.bytes_out,
        pages_refreshed: t.pages_refreshed,
        commits: t.commits,
        conflicts: t.conflicts,
        host_calls: t.host_calls,
    }
}
