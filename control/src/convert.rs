//! Hand-written conversions between protobuf messages and the control plane's domain types: requests
//! into the arguments of `ControlPlane`'s methods, and its answers into response messages. Only what the
//! wire alone knows is decided here (enum numbers, absent messages and oneofs, 0 for a default); every
//! check of a value (names, sizes, rights bits, quotas, limits) is the plane's, so the two never
//! disagree. Missing or out-of-range fields become [`ApiError`]s naming the field; nothing here panics
//! on client input.

use std::time::Duration;

use broker_proto::pb;
use tonic::Status;

use super::plane::{
    rights_field, InstanceStats, LogEntry, NewGrant, NewInstance, NewRegion, Owned, RegionBytes, RegionEvent,
    RegionRef, RegionStats, ScenarioProgress, ScenarioRequest, TenantStats,
};
use super::status::{ApiError, ApiResult};
use broker::mode::ConflictPolicy;
use broker::{
    Backing, InstanceInfo, Mode, ModuleInfo, Quotas, RegionInfo, Rights, RunState, TenantInfo, TrafficStats,
    Usage, Val,
};

/// A message field the request must set; `None` is the missing field `field`.
pub(crate) fn required<T>(field: &'static str, value: Option<T>) -> ApiResult<T> {
    value.ok_or(ApiError::MissingField(field))
}

/// The domain quotas of a `Quotas` message: absent optional fields take their defaults. `cpu_shares` is
/// taken as sent; the plane refuses one out of range, naming `quotas.cpu_shares`.
pub fn quotas_from(q: &pb::Quotas) -> Quotas {
    Quotas {
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
        cpu_shares: q.cpu_shares.unwrap_or(Quotas::DEFAULT_CPU_SHARES),
        log_bytes: q.log_bytes.unwrap_or(Quotas::DEFAULT_LOG_BYTES),
    }
}

/// The `Quotas` message of domain quotas, every field set.
pub fn quotas_to(q: &Quotas) -> pb::Quotas {
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
        log_bytes: Some(q.log_bytes),
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
        log_bytes: u.log_bytes,
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

/// The instance a `StartInstance` request asks for: a 0 limit, or no `config`, is the broker's default.
pub(crate) fn new_instance(r: &pb::StartInstanceRequest) -> NewInstance {
    let (call_timeout_ms, max_memory_bytes, log_bytes) =
        r.config.as_ref().map_or((0, 0, 0), |c| (c.call_timeout_ms, c.max_memory_bytes, c.log_bytes));
    NewInstance {
        module: r.module.clone(),
        name: r.name.clone(),
        call_timeout: (call_timeout_ms > 0).then(|| Duration::from_millis(call_timeout_ms)),
        max_memory_bytes: (max_memory_bytes > 0).then_some(max_memory_bytes),
        args: r.config.as_ref().map(|c| c.args.clone()).unwrap_or_default(),
        env: r.config.as_ref().map(|c| c.env.clone()).unwrap_or_default(),
        log_bytes: (log_bytes > 0).then_some(log_bytes),
        dirs: r
            .config
            .as_ref()
            .map(|c| {
                c.dirs
                    .iter()
                    .map(|d| broker::wasi::DirGrant {
                        path: d.path.clone(),
                        guest: d.guest_path.clone(),
                        writable: d.writable,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The region a `CreateRegion` request asks for; the plane converts it once the caller is scoped.
impl TryFrom<&pb::CreateRegionRequest> for NewRegion {
    type Error = ApiError;

    fn try_from(r: &pb::CreateRegionRequest) -> ApiResult<NewRegion> {
        Ok(NewRegion {
            mode: mode_from(r.mode)?,
            policy: policy_from(r.policy)?,
            persistent: persistent_from(r.backing)?,
            name: r.name.clone(),
            size: r.size,
            member_rights: r.member_rights,
            replicated: replicated_from(r.replication)?,
        })
    }
}

/// Whether a `Replication` enum value asks for a replicated region.
fn replicated_from(raw: i32) -> ApiResult<bool> {
    match pb::Replication::try_from(raw) {
        Ok(pb::Replication::Unspecified | pb::Replication::Node) => Ok(false),
        Ok(pb::Replication::Cluster) => Ok(true),
        Err(_) => {
            Err(ApiError::InvalidField { field: "replication", reason: format!("unknown value {raw}") })
        }
    }
}

/// A region named by a request that is a `RegionRef`, or nests one.
pub(crate) fn region_ref(r: &pb::RegionRef) -> RegionRef<'_> {
    RegionRef { tenant: &r.tenant, name: &r.name }
}

/// The region and rights of a `SetMemberRights` request, checked in that order.
pub(crate) fn member_rights_from(r: &pb::SetMemberRightsRequest) -> ApiResult<(RegionRef<'_>, Rights)> {
    let region = required("region", r.region.as_ref())?;
    Ok((region_ref(region), rights_field("rights", r.rights)?))
}

/// The grant a `Grant` request asks for.
pub(crate) fn new_grant(r: &pb::GrantRequest) -> NewGrant {
    NewGrant { instance: r.instance.clone(), rights: r.rights, offset: r.offset, len: r.len }
}

/// The scenario a `RunScenario` request asks for.
pub(crate) fn scenario_from(r: pb::RunScenarioRequest) -> ScenarioRequest {
    ScenarioRequest { builtin: r.builtin, toml: r.toml, modes: r.modes, scale: r.scale }
}

pub(crate) fn state_to(s: RunState) -> pb::InstanceState {
    match s {
        RunState::Running => pb::InstanceState::Running,
        RunState::Trapped => pb::InstanceState::Trapped,
        RunState::Stopped => pb::InstanceState::Stopped,
    }
}

fn instance_to(tenant: &str, i: &InstanceInfo) -> pb::Instance {
    let s = &i.status;
    pb::Instance {
        tenant: tenant.to_owned(),
        name: i.name.clone(),
        module: s.module.clone(),
        state: state_to(s.state).into(),
        calls: s.calls,
        traps: s.traps,
        restarts: s.restarts,
        last_trap: s.last_trap.clone().unwrap_or_default(),
    }
}

/// A call's arguments as sent; the plane converts them (`TryInto`) once the instance and export are
/// checked.
pub(crate) struct Args<'a>(pub(crate) &'a [pb::Value]);

impl TryFrom<Args<'_>> for Vec<Val> {
    type Error = ApiError;

    fn try_from(args: Args<'_>) -> ApiResult<Vec<Val>> {
        args.0.iter().map(value_from).collect()
    }
}

fn value_from(v: &pb::Value) -> Result<Val, ApiError> {
    use pb::value::Value as V;
    match v.value {
        Some(V::I32(x)) => Ok(Val::I32(x)),
        Some(V::I64(x)) => Ok(Val::I64(x)),
        Some(V::F32(x)) => Ok(Val::F32(x.to_bits())),
        Some(V::F64(x)) => Ok(Val::F64(x.to_bits())),
        None => Err(ApiError::InvalidField { field: "args", reason: "a value has no type set".into() }),
    }
}

fn value_to(v: &Val) -> Result<pb::Value, ApiError> {
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

/// A call's results; a value the API cannot carry (a reference) fails the call.
pub(crate) fn results_to(results: &[Val]) -> ApiResult<pb::CallInstanceResponse> {
    Ok(pb::CallInstanceResponse { results: results.iter().map(value_to).collect::<ApiResult<_>>()? })
}

pub(crate) fn tenant_to(t: &TenantInfo) -> pb::Tenant {
    pb::Tenant { name: t.name.clone(), quotas: Some(quotas_to(&t.quotas)), usage: Some(usage_to(&t.usage)) }
}

pub(crate) fn module_to(tenant: &str, m: ModuleInfo) -> pb::Module {
    pb::Module { tenant: tenant.to_owned(), name: m.name, size: m.size, exports: m.exports }
}

pub(crate) fn modules_to(m: Owned<Vec<ModuleInfo>>) -> pb::ListModulesResponse {
    pb::ListModulesResponse { modules: m.value.into_iter().map(|x| module_to(&m.tenant, x)).collect() }
}

pub(crate) fn instance_msg(i: &Owned<InstanceInfo>) -> pb::Instance {
    instance_to(&i.tenant, &i.value)
}

pub(crate) fn instances_to(i: &Owned<Vec<InstanceInfo>>) -> pb::ListInstancesResponse {
    pb::ListInstancesResponse { instances: i.value.iter().map(|x| instance_to(&i.tenant, x)).collect() }
}

fn region_to(tenant: &str, info: RegionInfo) -> pb::Region {
    let backing = match info.backing {
        Backing::Ephemeral => pb::Backing::Ephemeral,
        Backing::Persistent(_) => pb::Backing::Persistent,
    };
    pb::Region {
        tenant: tenant.to_owned(),
        name: info.name,
        size: info.size,
        mode: mode_to(info.mode).into(),
        policy: policy_to(info.policy).into(),
        backing: backing.into(),
        version: info.version,
        member_rights: info.members.bits(),
    }
}

pub(crate) fn region_msg(r: Owned<RegionInfo>) -> pb::Region {
    region_to(&r.tenant, r.value)
}

pub(crate) fn regions_to(r: Owned<Vec<RegionInfo>>) -> pb::ListRegionsResponse {
    pb::ListRegionsResponse { regions: r.value.into_iter().map(|x| region_to(&r.tenant, x)).collect() }
}

pub(crate) fn read_to(r: RegionBytes) -> pb::ReadRegionResponse {
    pb::ReadRegionResponse { data: r.data, version: r.version }
}

pub(crate) fn stats_to(s: TenantStats) -> pb::StatsResponse {
    pb::StatsResponse {
        tenant: Some(tenant_to(&s.tenant)),
        regions: s.regions.into_iter().map(region_stats_to).collect(),
        instances: s.instances.into_iter().map(instance_stats_to).collect(),
    }
}

fn region_stats_to(r: RegionStats) -> pb::RegionStats {
    pb::RegionStats { name: r.name, version: r.version, traffic: r.traffic.as_ref().map(traffic_to) }
}

fn instance_stats_to(i: InstanceStats) -> pb::InstanceStats {
    pb::InstanceStats {
        name: i.name,
        calls: i.calls,
        traps: i.traps,
        handles: i.handles,
        traffic: i.traffic.as_ref().map(traffic_to),
        windows: i.windows,
    }
}

/// A watch stream's item.
pub(crate) fn event_to(e: RegionEvent) -> Result<pb::RegionEvent, Status> {
    Ok(pb::RegionEvent {
        tenant: e.tenant,
        region: e.region,
        version: e.version,
        offset: e.offset,
        len: e.len,
        missed: e.missed,
    })
}

/// A log stream's item.
pub(crate) fn log_line_to(e: LogEntry) -> Result<pb::LogLine, Status> {
    let stream = match e.line.stream {
        broker::wasi::LogStream::Stdout => pb::LogStream::Stdout,
        broker::wasi::LogStream::Stderr => pb::LogStream::Stderr,
    };
    Ok(pb::LogLine {
        seq: e.line.seq,
        stream: stream.into(),
        text: e.line.text,
        cut: e.line.cut,
        lost: e.lost,
    })
}

/// A scenario stream's item: progress, the report (last), or the error that ended the run.
pub(crate) fn progress_to(p: ApiResult<ScenarioProgress>) -> Result<pb::ScenarioProgress, Status> {
    let p = p?;
    let (report_json, ok, report_text) = match p.report {
        Some(r) => (r.json, r.ok, r.text),
        None => (String::new(), false, String::new()),
    };
    Ok(pb::ScenarioProgress {
        done: p.done,
        total: p.total,
        message: p.message,
        report_json,
        ok,
        report_text,
    })
}
