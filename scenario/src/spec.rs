//! The scenario file format (TOML) and its validation.
//!
//! A file declares tenants, modules (a guest app of this repository, or a path to a `.wasm` file),
//! regions, instances, grants and workload phases, and which figures to report. It is parsed once into
//! raw serde types that keep the position of every value ([`toml::Spanned`]), then validated into a
//! [`Scenario`] whose references are all resolved: every error names the file, the line and the field,
//! and nothing else in the runner sees raw input. `scenarios/example.toml` documents the format.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use broker::capability::Rights;
use broker::mode::mirror::ConflictPolicy;
use broker::mode::Mode;
use broker::name::Name;
use broker::tenant::{QuotaKind, Quotas};

/// A scenario file that does not parse or does not make sense, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {field}: {reason}")]
pub struct SpecError {
    /// The file (or the built-in scenario's name).
    pub file: String,
    /// 1-based line of the offending value (the start of the file when the position is unknown).
    pub line: usize,
    /// The offending field, as a path (`region[2].size`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A validated scenario: every name resolved, every value in range.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The scenario's name.
    pub name: String,
    /// The brokers of the run's cluster, by name (`nodes`; empty: one broker, no cluster). With
    /// nodes, every node has every tenant and module, and regions and instances name their node.
    pub nodes: Vec<String>,
    /// One paragraph on what it models.
    pub description: String,
    /// The modes a run uses when the caller does not choose.
    pub modes: Vec<Mode>,
    /// The figures the report shows.
    pub figures: Vec<Figure>,
    /// Tenants, in declaration order.
    pub tenants: Vec<TenantDef>,
    /// Modules.
    pub modules: Vec<ModuleDef>,
    /// Regions.
    pub regions: Vec<RegionDef>,
    /// Instances, started in declaration order.
    pub instances: Vec<InstanceDef>,
    /// Grants, made after every region and instance exists.
    pub grants: Vec<GrantDef>,
    /// Workload phases, run one after the other.
    pub phases: Vec<PhaseDef>,
}

/// A figure a report can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Figure {
    /// Operations per second.
    OpsPerSec,
    /// Megabytes per second (operations times the actor's `bytes_per_op`).
    MbPerSec,
    /// p50/p99/p999 latency.
    Latency,
    /// Bytes copied across the sandbox boundary per operation.
    BytesCopiedPerOp,
    /// Host calls per operation.
    HostCallsPerOp,
    /// Peak resident memory of the run.
    PeakRss,
}

impl Figure {
    /// Every figure, in report order.
    pub const ALL: [Figure; 6] = [
        Figure::OpsPerSec,
        Figure::MbPerSec,
        Figure::Latency,
        Figure::BytesCopiedPerOp,
        Figure::HostCallsPerOp,
        Figure::PeakRss,
    ];

    /// The name used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Figure::OpsPerSec => "ops_per_sec",
            Figure::MbPerSec => "mb_per_sec",
            Figure::Latency => "latency",
            Figure::BytesCopiedPerOp => "bytes_copied_per_op",
            Figure::HostCallsPerOp => "host_calls_per_op",
            Figure::PeakRss => "peak_rss",
        }
    }
}

/// A tenant.
#[derive(Debug, Clone)]
pub struct TenantDef {
    /// Its name.
    pub name: String,
    /// Its quotas (the defaults, with the file's overrides).
    pub quotas: Quotas,
}

/// Where a module's code comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleSource {
    /// A guest app of this repository, embedded in the broker at build time.
    Guest(String),
    /// A `.wasm` file (relative paths are relative to the scenario file).
    File(PathBuf),
}

/// A module loaded into a tenant.
#[derive(Debug, Clone)]
pub struct ModuleDef {
    /// The owning tenant.
    pub tenant: String,
    /// The module's name.
    pub name: String,
    /// Its code.
    pub source: ModuleSource,
}

/// Which mode a region uses in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeChoice {
    /// The mode under test (each run of `--modes` uses one).
    UnderTest,
    /// Always this mode, whatever the run tests.
    Fixed(Mode),
}

impl ModeChoice {
    /// The mode this region has in a run of `under_test`.
    pub fn resolve(self, under_test: Mode) -> Mode {
        match self {
            ModeChoice::UnderTest => under_test,
            ModeChoice::Fixed(m) => m,
        }
    }
}

/// A region.
#[derive(Debug, Clone)]
pub struct RegionDef {
    /// The owning tenant.
    pub tenant: String,
    /// The region's name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Its mode.
    pub mode: ModeChoice,
    /// Mirror conflict policy.
    pub policy: ConflictPolicy,
    /// Backed by a file (in a temporary directory of the run) rather than anonymous memory.
    pub persistent: bool,
    /// What every app of the owning tenant may open it with by name (`members`; none by default:
    /// only the instances it is granted to).
    pub members: Rights,
    /// The node it is created on (its home, if replicated): an index into [`Scenario::nodes`], 0
    /// without nodes.
    pub node: usize,
    /// Replicated across the nodes (`replication = "cluster"`): every other node keeps a replica.
    pub replicated: bool,
}

/// An instance of a module.
#[derive(Debug, Clone)]
pub struct InstanceDef {
    /// The owning tenant.
    pub tenant: String,
    /// The instance's name.
    pub name: String,
    /// The module it runs (of the same tenant).
    pub module: String,
    /// The longest one call may run (`None`: the broker's default); at most the tenant's
    /// `max_call_timeout_ms` quota.
    pub call_timeout: Option<Duration>,
    /// Calls made once every grant exists, in order (e.g. to open regions and register callbacks).
    pub init: Vec<CallDef>,
    /// The node it runs on: an index into [`Scenario::nodes`], 0 without nodes.
    pub node: usize,
}

/// An argument of a call: a constant or a value the runner fills in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// A constant (passed as i32 or i64, whatever the export's parameter is).
    Int(i64),
    /// `"{i}"`: the operation's index within the actor (0, 1, ...).
    Index,
    /// `"{mode}"`: the ABI code of the mode under test.
    Mode,
    /// `"{thread}"`: the index of the actor's thread issuing the call.
    Thread,
}

/// A call of an export of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallDef {
    /// Index into [`Scenario::instances`].
    pub instance: usize,
    /// The export.
    pub export: String,
    /// Its arguments.
    pub args: Vec<Arg>,
}

/// A grant of a region to an instance.
#[derive(Debug, Clone)]
pub struct GrantDef {
    /// Index into [`Scenario::regions`].
    pub region: usize,
    /// Index into [`Scenario::instances`].
    pub to: usize,
    /// The rights granted.
    pub rights: Rights,
    /// Start of the granted range.
    pub offset: u64,
    /// Length of the range (`None`: to the end).
    pub len: Option<u64>,
}

/// How long an actor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// This many operations in all (over all its threads).
    Iterations(u64),
    /// For this long.
    Duration(Duration),
}

/// What one operation of an actor does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Calls exports in order; a negative result is an error status. Step results named by a tally are
    /// summed into it.
    Calls(Vec<Step>),
    /// The host's native sensor service: operation `i` writes sample `i` (`sensor.sample(i)`) into the
    /// region's ring (layout in `guests/apps/src/bin/scenario_nanoapp.rs`). With `ack_service`, the
    /// runner registers that host service; apps call it with the newest sample they processed, which
    /// gives the end-to-end latency from write to acknowledgement.
    SensorFeed {
        /// Index into [`Scenario::regions`].
        region: usize,
        /// Name of the acknowledgement service, if any.
        ack_service: Option<String>,
    },
    /// Module uploads, as a tenant's control-plane client makes them: operation `i` loads the module
    /// into the tenant under the fresh name `upload.<i>` (compiling it) and unloads it again, through
    /// the same `Broker` calls the control plane's `UploadModule` and `DeleteModule` make.
    Upload {
        /// The tenant that uploads.
        tenant: String,
        /// What it uploads.
        module: UploadSource,
    },
}

/// The module an upload actor loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadSource {
    /// A guest app of this repository.
    Guest(String),
    /// A generated module of at least this many bytes (whole functions) that is expensive to compile
    /// (see `scenario::generated`).
    Generated(u64),
}

/// One call of an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The call; for a call whose instance is named with `{thread}`, `call.instance` is thread 0's.
    pub call: CallDef,
    /// For a call whose instance is named with `{thread}`: the instance of each of the actor's threads
    /// (thread `t` calls `per_thread[t]`); empty otherwise.
    pub per_thread: Vec<usize>,
    /// Tally that sums this step's results.
    pub tally: Option<String>,
}

impl Step {
    /// The instance (index into [`Scenario::instances`]) that the actor's thread `thread` calls.
    pub fn instance(&self, thread: u32) -> usize {
        usize::try_from(thread)
            .ok()
            .and_then(|t| self.per_thread.get(t))
            .copied()
            .unwrap_or(self.call.instance)
    }
}

/// A workload running during a phase, concurrently with the phase's other actors.
#[derive(Debug, Clone, PartialEq)]
pub struct ActorDef {
    /// Its name (unique in the phase).
    pub name: String,
    /// How long it runs (scaled by the run's scale factor).
    pub amount: Amount,
    /// Operations per second over all its threads (`None`: as fast as possible).
    pub rate: Option<f64>,
    /// Host threads issuing operations.
    pub concurrency: u32,
    /// Bytes one operation moves (for MB/s; 0 hides the figure).
    pub bytes_per_op: u64,
    /// What an operation does.
    pub work: Work,
    /// Instances whose traffic and host calls count against this actor (indices).
    pub observe: Vec<usize>,
}

/// What a check expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this value.
    Equals(i64),
    /// At least this value.
    AtLeast(i64),
    /// The number of operations the named actor of this phase completed.
    Ops(String),
    /// The pipeline checksum (see `scenario_pipeline`) of as many blocks as the named actor completed,
    /// each block the size of the region.
    PipelineChecksum {
        /// The actor whose operations produced the blocks.
        actor: String,
        /// Index into [`Scenario::regions`]: the block.
        region: usize,
    },
    /// The sum of `sensor.sample(i)` over the samples the named sensor-feed actor wrote.
    SensorSum(String),
    /// No expectation: the value is reported.
    Report,
}

/// Where a check's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckSource {
    /// The result of a call.
    Call(CallDef),
    /// A tally of this phase.
    Tally(String),
}

/// A functional check, evaluated at the end of its phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckDef {
    /// What it checks, in words.
    pub name: String,
    /// Where the value comes from.
    pub source: CheckSource,
    /// What it must be.
    pub expect: Expect,
    /// The check is skipped (and says why) unless this export of the same instance returns 0; e.g. a
    /// checksum over every sample only holds when none was missed.
    pub when_zero: Option<String>,
}

/// A phase: actors running concurrently, then checks.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseDef {
    /// Its name.
    pub name: String,
    /// Its actors.
    pub actors: Vec<ActorDef>,
    /// Its checks.
    pub checks: Vec<CheckDef>,
}

/// The longest an actor may run (before scaling): bounds every deadline the runner computes.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The slowest and fastest paces an actor may ask for, in operations per second.
const MIN_RATE: f64 = 0.001;
const MAX_RATE: f64 = 1e9;
/// The largest module an upload actor may generate.
const MAX_GENERATED_MODULE: u64 = 1 << 30;
/// What `{thread}` in an instance name stands for.
const THREAD: &str = "{thread}";

// ----- raw file types -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Spanned<String>,
    nodes: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    description: String,
    modes: Option<Spanned<Vec<Spanned<String>>>>,
    report: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default, rename = "tenant")]
    tenants: Vec<Spanned<RawTenant>>,
    #[serde(default, rename = "module")]
    modules: Vec<Spanned<RawModule>>,
    #[serde(default, rename = "region")]
    regions: Vec<Spanned<RawRegion>>,
    #[serde(default, rename = "instance")]
    instances: Vec<Spanned<RawInstance>>,
    #[serde(default, rename = "grant")]
    grants: Vec<Spanned<RawGrant>>,
    #[serde(default, rename = "phase")]
    phases: Vec<Spanned<RawPhase>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: Spanned<String>,
    #[serde(default)]
    quotas: Option<Spanned<RawQuotas>>,
}

/// A tenant's quotas as written: any of [`Quotas::FIELDS`] by name, each a number or (for byte
/// quotas) a size such as `"64MiB"`.
type RawQuotas = std::collections::BTreeMap<String, Spanned<RawSize>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModule {
    tenant: Spanned<String>,
    name: Spanned<String>,
    guest: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum RawSize {
    Int(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    tenant: Spanned<String>,
    name: Spanned<String>,
    size: Spanned<RawSize>,
    mode: Option<Spanned<String>>,
    policy: Option<Spanned<String>>,
    #[serde(default)]
    persistent: bool,
    members: Option<Spanned<Vec<Spanned<String>>>>,
    node: Option<Spanned<String>>,
    replication: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCall {
    call: Spanned<String>,
    export: Spanned<String>,
    #[serde(default)]
    args: Vec<Spanned<RawArg>>,
    tally: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawArg {
    Int(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    tenant: Spanned<String>,
    name: Spanned<String>,
    module: Spanned<String>,
    call_timeout: Option<Spanned<String>>,
    #[serde(default)]
    init: Vec<Spanned<RawInitCall>>,
    node: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInitCall {
    export: Spanned<String>,
    #[serde(default)]
    args: Vec<Spanned<RawArg>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    region: Spanned<String>,
    to: Spanned<String>,
    rights: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    offset: Option<Spanned<RawSize>>,
    len: Option<Spanned<RawSize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhase {
    name: Spanned<String>,
    #[serde(default, rename = "actor")]
    actors: Vec<Spanned<RawActor>>,
    #[serde(default, rename = "check")]
    checks: Vec<Spanned<RawCheck>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActor {
    name: Spanned<String>,
    iterations: Option<Spanned<i64>>,
    duration: Option<Spanned<String>>,
    rate: Option<Spanned<f64>>,
    concurrency: Option<Spanned<i64>>,
    bytes_per_op: Option<Spanned<RawSize>>,
    #[serde(default)]
    steps: Vec<Spanned<RawCall>>,
    feed: Option<Spanned<RawFeed>>,
    upload: Option<Spanned<RawUpload>>,
    observe: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpload {
    tenant: Spanned<String>,
    guest: Option<Spanned<String>>,
    size: Option<Spanned<RawSize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeed {
    region: Spanned<String>,
    ack_service: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: Spanned<String>,
    call: Option<Spanned<String>>,
    export: Option<Spanned<String>>,
    #[serde(default)]
    args: Vec<Spanned<RawArg>>,
    tally: Option<Spanned<String>>,
    expect: Spanned<RawExpect>,
    when_zero: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum RawExpect {
    Equals(i64),
    AtLeast(i64),
    Ops(String),
    PipelineChecksum { actor: String, region: String },
    SensorSum(String),
    Report(bool),
}

// ----- validation -----

/// Validation context: the file's text (for line numbers) and its name and directory.
struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    dir: Option<&'a Path>,
}

impl Ctx<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
    }

    fn err(&self, span: &Range<usize>, field: impl Into<String>, reason: impl Into<String>) -> SpecError {
        SpecError {
            file: self.file.to_owned(),
            line: self.line(span),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub use broker::region::parse_size;

/// Parses a duration: `"500ms"`, `"2s"`, `"1m"`.
///
/// # Errors
/// A description of what is wrong.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 =
        digits.parse().map_err(|_| format!("{text:?} is not a duration (e.g. \"500ms\", \"2s\")"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(|| format!("{text:?} overflows")),
        other => Err(format!("unknown unit {other:?} in {text:?} (use ms, s or m)")),
    }
}

/// Parses a mode name (`handle`, `mirror`, `shared`).
fn parse_mode(text: &str) -> Option<Mode> {
    text.parse().ok()
}

/// Parses a comma-separated list of modes (`"handle,mirror,shared"`).
///
/// # Errors
/// The first unknown name.
pub fn parse_modes(text: &str) -> Result<Vec<Mode>, String> {
    let mut modes = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let m =
            parse_mode(part).ok_or_else(|| format!("unknown mode {part:?} (use handle, mirror, shared)"))?;
        if !modes.contains(&m) {
            modes.push(m);
        }
    }
    if modes.is_empty() {
        return Err("no modes given".into());
    }
    Ok(modes)
}

fn size(ctx: &Ctx<'_>, v: &Spanned<RawSize>, field: &str) -> Result<u64, SpecError> {
    match v.get_ref() {
        RawSize::Int(n) => u64::try_from(*n).map_err(|_| ctx.err(&v.span(), field, "must not be negative")),
        RawSize::Text(t) => parse_size(t).map_err(|e| ctx.err(&v.span(), field, e.to_string())),
    }
}

/// Sets the quota `key` of `quotas` from a scenario file's value: a size for byte quotas, a
/// non-negative integer for the others, a weight in range for `cpu_shares`.
fn quota(
    ctx: &Ctx<'_>,
    quotas: &mut Quotas,
    key: &str,
    v: &Spanned<RawSize>,
    field: &str,
) -> Result<(), SpecError> {
    let Some(f) = Quotas::field(key) else {
        let known: Vec<&str> = Quotas::FIELDS.iter().map(|f| f.name).collect();
        return Err(ctx.err(&v.span(), field, format!("no quota {key:?} (known: {})", known.join(", "))));
    };
    let value = match (f.kind, v.get_ref()) {
        (QuotaKind::Bytes, _) => size(ctx, v, field)?,
        (_, RawSize::Int(n)) => {
            u64::try_from(*n).map_err(|_| ctx.err(&v.span(), field, "must not be negative"))?
        }
        (_, RawSize::Text(_)) => return Err(ctx.err(&v.span(), field, "must be a whole number")),
    };
    f.set(quotas, value).map_err(|e| ctx.err(&v.span(), field, e.to_string()))
}

fn name(ctx: &Ctx<'_>, v: &Spanned<String>, field: &str) -> Result<String, SpecError> {
    Name::new(v.get_ref())
        .map(|n| n.as_str().to_owned())
        .map_err(|e| ctx.err(&v.span(), field, e.to_string()))
}

fn args(ctx: &Ctx<'_>, raw: &[Spanned<RawArg>], field: &str) -> Result<Vec<Arg>, SpecError> {
    raw.iter()
        .enumerate()
        .map(|(k, a)| match a.get_ref() {
            RawArg::Int(n) => Ok(Arg::Int(*n)),
            RawArg::Text(t) => match t.as_str() {
                "{i}" => Ok(Arg::Index),
                "{mode}" => Ok(Arg::Mode),
                "{thread}" => Ok(Arg::Thread),
                other => Err(ctx.err(
                    &a.span(),
                    format!("{field}.args[{k}]"),
                    format!("{other:?} is not an argument (use an integer, \"{{i}}\", \"{{mode}}\" or \"{{thread}}\")"),
                )),
            },
        })
        .collect()
}

/// Names declared so far, for resolving references.
#[derive(Default)]
struct Names {
    tenants: HashSet<String>,
    modules: HashSet<(String, String)>,
    regions: HashMap<String, usize>,
    instances: HashMap<String, usize>,
}

/// A list of rights names (`["read", "write"]`) as [`Rights`]; `field` names the list in errors.
fn rights_list(
    ctx: &Ctx<'_>,
    list: &Spanned<Vec<Spanned<String>>>,
    field: &str,
) -> Result<Rights, SpecError> {
    let mut rights = Rights::NONE;
    for (r, right) in list.get_ref().iter().enumerate() {
        rights |= match right.get_ref().as_str() {
            "read" => Rights::READ,
            "write" => Rights::WRITE,
            "map" => Rights::MAP,
            "grant" => Rights::GRANT,
            "watch" => Rights::WATCH,
            "all" => Rights::ALL,
            _ => {
                return Err(ctx.err(
                    &right.span(),
                    format!("{field}[{r}]"),
                    "use read, write, map, grant, watch or all",
                ))
            }
        };
    }
    Ok(rights)
}

fn qualified(
    ctx: &Ctx<'_>,
    map: &HashMap<String, usize>,
    v: &Spanned<String>,
    field: &str,
    what: &str,
) -> Result<usize, SpecError> {
    map.get(v.get_ref().as_str()).copied().ok_or_else(|| {
        let mut known: Vec<&str> = map.keys().map(String::as_str).collect();
        known.sort_unstable();
        ctx.err(
            &v.span(),
            field,
            format!(
                "no {what} {:?} is declared (\"tenant/name\"; declared: {})",
                v.get_ref(),
                known.join(", ")
            ),
        )
    })
}

fn call(
    ctx: &Ctx<'_>,
    names: &Names,
    instance: &Spanned<String>,
    export: &Spanned<String>,
    raw_args: &[Spanned<RawArg>],
    field: &str,
) -> Result<CallDef, SpecError> {
    let instance = qualified(ctx, &names.instances, instance, &format!("{field}.call"), "instance")?;
    if export.get_ref().is_empty() {
        return Err(ctx.err(&export.span(), format!("{field}.export"), "must not be empty"));
    }
    Ok(CallDef { instance, export: export.get_ref().clone(), args: args(ctx, raw_args, field)? })
}

/// Parses and validates a scenario. `file` names it in errors; `dir` resolves relative module paths.
///
/// # Errors
/// [`SpecError`] naming the file, line and field of the first problem.
pub fn parse(text: &str, file: &str, dir: Option<&Path>) -> Result<Scenario, SpecError> {
    let ctx = Ctx { file, text, dir };
    let raw: RawScenario = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        SpecError {
            file: file.to_owned(),
            line: ctx.line(&span),
            field: "(syntax)".into(),
            reason: e.message().trim().to_owned(),
        }
    })?;
    validate(&ctx, raw)
}

fn validate(ctx: &Ctx<'_>, raw: RawScenario) -> Result<Scenario, SpecError> {
    let scenario_name = name(ctx, &raw.name, "name")?;
    let mut nodes: Vec<String> = Vec::new();
    if let Some(list) = &raw.nodes {
        for (k, n) in list.get_ref().iter().enumerate() {
            let node = name(ctx, n, &format!("nodes[{k}]"))?;
            if nodes.contains(&node) {
                return Err(ctx.err(&n.span(), format!("nodes[{k}]"), "declared twice"));
            }
            nodes.push(node);
        }
        if nodes.len() < 2 {
            return Err(ctx.err(&list.span(), "nodes", "a cluster needs at least two nodes"));
        }
    }
    // A region's or instance's `node`: one of `nodes`, or none without them.
    let node_ref = |n: &Option<Spanned<String>>, field: &str| -> Result<usize, SpecError> {
        match n {
            None => Ok(0),
            Some(n) => nodes.iter().position(|x| x == n.get_ref()).ok_or_else(|| {
                ctx.err(&n.span(), field, format!("not one of the scenario's nodes {nodes:?}"))
            }),
        }
    };
    let modes = match &raw.modes {
        None => Mode::ALL.to_vec(),
        Some(list) => {
            let mut modes = Vec::new();
            for (k, m) in list.get_ref().iter().enumerate() {
                let mode = parse_mode(m.get_ref()).ok_or_else(|| {
                    ctx.err(&m.span(), format!("modes[{k}]"), "use handle, mirror or shared")
                })?;
                if !modes.contains(&mode) {
                    modes.push(mode);
                }
            }
            if modes.is_empty() {
                return Err(ctx.err(&list.span(), "modes", "name at least one mode"));
            }
            modes
        }
    };
    let figures = match &raw.report {
        None => Figure::ALL.to_vec(),
        Some(list) => {
            let mut figures = Vec::new();
            for (k, f) in list.get_ref().iter().enumerate() {
                let figure =
                    Figure::ALL.iter().copied().find(|x| x.as_str() == f.get_ref()).ok_or_else(|| {
                        let known: Vec<_> = Figure::ALL.iter().map(|x| x.as_str()).collect();
                        ctx.err(
                            &f.span(),
                            format!("report[{k}]"),
                            format!("unknown figure; use {}", known.join(", ")),
                        )
                    })?;
                figures.push(figure);
            }
            figures
        }
    };

    let mut names = Names::default();
    let mut tenants = Vec::new();
    for (k, t) in raw.tenants.iter().enumerate() {
        let t = t.get_ref();
        let field = format!("tenant[{k}]");
        let tname = name(ctx, &t.name, &format!("{field}.name"))?;
        if !names.tenants.insert(tname.clone()) {
            return Err(ctx.err(&t.name.span(), format!("{field}.name"), "declared twice"));
        }
        let mut quotas = Quotas::default();
        if let Some(q) = &t.quotas {
            for (key, v) in q.get_ref() {
                quota(ctx, &mut quotas, key, v, &format!("{field}.quotas.{key}"))?;
            }
        }
        tenants.push(TenantDef { name: tname, quotas });
    }
    if tenants.is_empty() {
        return Err(ctx.err(&raw.name.span(), "tenant", "declare at least one [[tenant]]"));
    }

    let tenant_ref = |v: &Spanned<String>, field: &str| -> Result<String, SpecError> {
        if names.tenants.contains(v.get_ref()) {
            Ok(v.get_ref().clone())
        } else {
            Err(ctx.err(&v.span(), field, format!("no tenant {:?} is declared", v.get_ref())))
        }
    };

    let mut modules = Vec::new();
    let mut module_names = HashSet::new();
    for (k, m) in raw.modules.iter().enumerate() {
        let field = format!("module[{k}]");
        let span = m.span();
        let m = m.get_ref();
        let tenant = tenant_ref(&m.tenant, &format!("{field}.tenant"))?;
        let mname = name(ctx, &m.name, &format!("{field}.name"))?;
        let source = match (&m.guest, &m.path) {
            (Some(g), None) => {
                if crate::guest(g.get_ref()).is_none() {
                    let known: Vec<&str> = crate::GUESTS.iter().map(|(n, _)| *n).collect();
                    return Err(ctx.err(
                        &g.span(),
                        format!("{field}.guest"),
                        format!("no guest app {:?} in this build (known: {})", g.get_ref(), known.join(", ")),
                    ));
                }
                ModuleSource::Guest(g.get_ref().clone())
            }
            (None, Some(p)) => {
                let path = Path::new(p.get_ref());
                let path = match ctx.dir {
                    Some(dir) if path.is_relative() => dir.join(path),
                    _ => path.to_path_buf(),
                };
                if !path.is_file() {
                    return Err(ctx.err(
                        &p.span(),
                        format!("{field}.path"),
                        format!("{} is not a readable file", path.display()),
                    ));
                }
                ModuleSource::File(path)
            }
            _ => {
                return Err(ctx.err(
                    &span,
                    field,
                    "give exactly one of `guest` (an app of this repo) or `path`",
                ))
            }
        };
        if !module_names.insert((tenant.clone(), mname.clone())) {
            return Err(ctx.err(&m.name.span(), format!("{field}.name"), "declared twice in this tenant"));
        }
        modules.push(ModuleDef { tenant, name: mname, source });
    }
    names.modules = module_names;

    let mut regions = Vec::new();
    for (k, r) in raw.regions.iter().enumerate() {
        let field = format!("region[{k}]");
        let r = r.get_ref();
        let tenant = tenant_ref(&r.tenant, &format!("{field}.tenant"))?;
        let rname = name(ctx, &r.name, &format!("{field}.name"))?;
        let bytes = size(ctx, &r.size, &format!("{field}.size"))?;
        if bytes == 0 || bytes > broker::region::MAX_REGION_SIZE {
            return Err(ctx.err(
                &r.size.span(),
                format!("{field}.size"),
                format!("must be 1 byte to {} bytes", broker::region::MAX_REGION_SIZE),
            ));
        }
        let mode = match &r.mode {
            None => ModeChoice::UnderTest,
            Some(m) if m.get_ref() == "auto" => ModeChoice::UnderTest,
            Some(m) => ModeChoice::Fixed(parse_mode(m.get_ref()).ok_or_else(|| {
                ctx.err(
                    &m.span(),
                    format!("{field}.mode"),
                    "use auto (the mode under test), handle, mirror or shared",
                )
            })?),
        };
        let policy = match &r.policy {
            None => ConflictPolicy::default(),
            Some(p) => match p.get_ref().as_str() {
                "reject" => ConflictPolicy::Reject,
                "last-writer-wins" => ConflictPolicy::LastWriterWins,
                "merge" => ConflictPolicy::Merge,
                _ => {
                    return Err(ctx.err(
                        &p.span(),
                        format!("{field}.policy"),
                        "use reject, last-writer-wins or merge",
                    ))
                }
            },
        };
        let qualified = format!("{tenant}/{rname}");
        if names.regions.insert(qualified, regions.len()).is_some() {
            return Err(ctx.err(&r.name.span(), format!("{field}.name"), "declared twice in this tenant"));
        }
        let members = match &r.members {
            None => Rights::NONE,
            Some(list) => rights_list(ctx, list, &format!("{field}.members"))?,
        };
        let node = node_ref(&r.node, &format!("{field}.node"))?;
        let replicated = match &r.replication {
            None => false,
            Some(x) => match x.get_ref().as_str() {
                "node" => false,
                "cluster" if nodes.is_empty() => {
                    return Err(ctx.err(&x.span(), format!("{field}.replication"), "declare the scenario's nodes first"))
                }
                "cluster" if r.persistent || mode == ModeChoice::Fixed(Mode::Shared) => {
                    return Err(ctx.err(
                        &x.span(),
                        format!("{field}.replication"),
                        "a replicated region is in handle or mirror mode (shared is node-local) and not persistent",
                    ))
                }
                "cluster" => true,
                _ => return Err(ctx.err(&x.span(), format!("{field}.replication"), "use node or cluster")),
            },
        };
        regions.push(RegionDef {
            tenant,
            name: rname,
            size: bytes,
            mode,
            policy,
            persistent: r.persistent,
            members,
            node,
            replicated,
        });
    }

    // Instances first without their init calls: init calls may name any instance.
    let mut instances = Vec::new();
    for (k, i) in raw.instances.iter().enumerate() {
        let field = format!("instance[{k}]");
        let i = i.get_ref();
        let tenant = tenant_ref(&i.tenant, &format!("{field}.tenant"))?;
        let iname = name(ctx, &i.name, &format!("{field}.name"))?;
        if !names.modules.contains(&(tenant.clone(), i.module.get_ref().clone())) {
            return Err(ctx.err(
                &i.module.span(),
                format!("{field}.module"),
                format!("tenant {tenant:?} declares no module {:?}", i.module.get_ref()),
            ));
        }
        if names.instances.insert(format!("{tenant}/{iname}"), instances.len()).is_some() {
            return Err(ctx.err(&i.name.span(), format!("{field}.name"), "declared twice in this tenant"));
        }
        let call_timeout = match &i.call_timeout {
            None => None,
            Some(t) => {
                let f = format!("{field}.call_timeout");
                let timeout = parse_duration(t.get_ref()).map_err(|e| ctx.err(&t.span(), &f, e))?;
                if timeout.is_zero() {
                    return Err(ctx.err(&t.span(), f, "must be longer than 0"));
                }
                // The broker refuses it too; said here, it names the line.
                let cap =
                    tenants.iter().find(|d| d.name == tenant).map_or(0, |d| d.quotas.max_call_timeout_ms);
                if timeout > Duration::from_millis(cap) {
                    return Err(ctx.err(
                        &t.span(),
                        f,
                        format!("exceeds tenant {tenant:?}'s quota max_call_timeout_ms = {cap}"),
                    ));
                }
                Some(timeout)
            }
        };
        instances.push(InstanceDef {
            tenant,
            name: iname,
            module: i.module.get_ref().clone(),
            call_timeout,
            init: Vec::new(),
            node: node_ref(&i.node, &format!("{field}.node"))?,
        });
    }
    for (k, i) in raw.instances.iter().enumerate() {
        let field = format!("instance[{k}]");
        let mut init = Vec::new();
        for (c, call) in i.get_ref().init.iter().enumerate() {
            let call = call.get_ref();
            let f = format!("{field}.init[{c}]");
            if call.export.get_ref().is_empty() {
                return Err(ctx.err(&call.export.span(), format!("{f}.export"), "must not be empty"));
            }
            init.push(CallDef {
                instance: k,
                export: call.export.get_ref().clone(),
                args: args(ctx, &call.args, &f)?,
            });
        }
        instances[k].init = init;
    }

    let mut grants = Vec::new();
    for (k, g) in raw.grants.iter().enumerate() {
        let field = format!("grant[{k}]");
        let g = g.get_ref();
        let region = qualified(ctx, &names.regions, &g.region, &format!("{field}.region"), "region")?;
        let to = qualified(ctx, &names.instances, &g.to, &format!("{field}.to"), "instance")?;
        let rights = rights_list(ctx, &g.rights, &format!("{field}.rights"))?;
        if rights == Rights::NONE {
            return Err(ctx.err(&g.rights.span(), format!("{field}.rights"), "grant at least one right"));
        }
        let offset =
            g.offset.as_ref().map(|o| size(ctx, o, &format!("{field}.offset"))).transpose()?.unwrap_or(0);
        let len = g.len.as_ref().map(|l| size(ctx, l, &format!("{field}.len"))).transpose()?;
        let region_size = regions[region].size;
        if offset.checked_add(len.unwrap_or(0)).is_none_or(|end| end > region_size) || offset >= region_size {
            return Err(ctx.err(
                &g.region.span(),
                field.clone(),
                format!("range {offset}+{len:?} does not fit the region's {region_size} bytes"),
            ));
        }
        if !regions[region].replicated && regions[region].node != instances[to].node {
            return Err(ctx.err(
                &g.to.span(),
                format!("{field}.to"),
                "the instance runs on another node than the region, which is not replicated",
            ));
        }
        grants.push(GrantDef { region, to, rights, offset, len });
    }

    let mut phases = Vec::new();
    for (p, phase) in raw.phases.iter().enumerate() {
        let field = format!("phase[{p}]");
        let span = phase.span();
        let phase = phase.get_ref();
        let pname = name(ctx, &phase.name, &format!("{field}.name"))?;
        if phases.iter().any(|x: &PhaseDef| x.name == pname) {
            return Err(ctx.err(&phase.name.span(), format!("{field}.name"), "declared twice"));
        }
        let mut actors: Vec<ActorDef> = Vec::new();
        for (a, actor) in phase.actors.iter().enumerate() {
            let f = format!("{field}.actor[{a}]");
            let aspan = actor.span();
            actors.push(validate_actor(ctx, &names, &tenants, &regions, actor.get_ref(), &aspan, &f)?);
            if actors[..actors.len() - 1].iter().any(|x| x.name == actors[actors.len() - 1].name) {
                return Err(ctx.err(
                    &actor.get_ref().name.span(),
                    format!("{f}.name"),
                    "declared twice in this phase",
                ));
            }
        }
        if actors.is_empty() {
            return Err(ctx.err(&span, field, "declare at least one [[phase.actor]]"));
        }
        let mut checks = Vec::new();
        for (c, check) in phase.checks.iter().enumerate() {
            let f = format!("{field}.check[{c}]");
            checks.push(validate_check(ctx, &names, &actors, check, &f)?);
        }
        phases.push(PhaseDef { name: pname, actors, checks });
    }
    if phases.is_empty() {
        return Err(ctx.err(&raw.name.span(), "phase", "declare at least one [[phase]]"));
    }

    Ok(Scenario {
        name: scenario_name,
        nodes,
        description: raw.description.trim().to_owned(),
        modes,
        figures,
        tenants,
        modules,
        regions,
        instances,
        grants,
        phases,
    })
}

fn validate_actor(
    ctx: &Ctx<'_>,
    names: &Names,
    tenants: &[TenantDef],
    regions: &[RegionDef],
    a: &RawActor,
    span: &Range<usize>,
    field: &str,
) -> Result<ActorDef, SpecError> {
    let aname = name(ctx, &a.name, &format!("{field}.name"))?;
    let amount = match (&a.iterations, &a.duration) {
        (Some(n), None) => Amount::Iterations(
            u64::try_from(*n.get_ref())
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ctx.err(&n.span(), format!("{field}.iterations"), "must be at least 1"))?,
        ),
        (None, Some(d)) => {
            let d_parsed = parse_duration(d.get_ref())
                .map_err(|e| ctx.err(&d.span(), format!("{field}.duration"), e))?;
            if d_parsed.is_zero() || d_parsed > MAX_DURATION {
                return Err(ctx.err(
                    &d.span(),
                    format!("{field}.duration"),
                    "must be longer than 0 and at most 7 days",
                ));
            }
            Amount::Duration(d_parsed)
        }
        _ => return Err(ctx.err(span, field, "give exactly one of `iterations` or `duration`")),
    };
    let rate = match &a.rate {
        None => None,
        Some(r) if (MIN_RATE..=MAX_RATE).contains(r.get_ref()) => Some(*r.get_ref()),
        Some(r) => {
            return Err(ctx.err(
                &r.span(),
                format!("{field}.rate"),
                "must be 0.001 to 1e9 operations per second",
            ))
        }
    };
    let concurrency = match &a.concurrency {
        None => 1,
        Some(c) => u32::try_from(*c.get_ref())
            .ok()
            .filter(|c| (1..=64).contains(c))
            .ok_or_else(|| ctx.err(&c.span(), format!("{field}.concurrency"), "must be 1 to 64 threads"))?,
    };
    let bytes_per_op = a
        .bytes_per_op
        .as_ref()
        .map(|b| size(ctx, b, &format!("{field}.bytes_per_op")))
        .transpose()?
        .unwrap_or(0);
    let kinds =
        usize::from(!a.steps.is_empty()) + usize::from(a.feed.is_some()) + usize::from(a.upload.is_some());
    if kinds != 1 {
        return Err(ctx.err(
            span,
            field,
            "give exactly one of `steps` (calls), `feed` (the sensor service) or `upload` (module uploads)",
        ));
    }
    let work = match (&a.feed, &a.upload) {
        (Some(feed), _) => {
            let feed_ref = feed.get_ref();
            let region =
                qualified(ctx, &names.regions, &feed_ref.region, &format!("{field}.feed.region"), "region")?;
            if regions[region].size < 64 + 16 {
                return Err(ctx.err(
                    &feed_ref.region.span(),
                    format!("{field}.feed.region"),
                    "a sensor ring needs at least 80 bytes (a 64-byte header and one 16-byte slot)",
                ));
            }
            let ack_service = match &feed_ref.ack_service {
                Some(s) if s.get_ref().is_empty() => {
                    return Err(ctx.err(&s.span(), format!("{field}.feed.ack_service"), "must not be empty"))
                }
                Some(s) => Some(s.get_ref().clone()),
                None => None,
            };
            Work::SensorFeed { region, ack_service }
        }
        (None, Some(upload)) => validate_upload(ctx, tenants, upload, &format!("{field}.upload"))?,
        (None, None) => {
            let mut steps = Vec::new();
            for (s, step) in a.steps.iter().enumerate() {
                let step = step.get_ref();
                let f = format!("{field}.steps[{s}]");
                let (call, per_thread) = if step.call.get_ref().contains(THREAD) {
                    per_thread_call(ctx, names, step, concurrency, &f)?
                } else {
                    (call(ctx, names, &step.call, &step.export, &step.args, &f)?, Vec::new())
                };
                let tally = step.tally.as_ref().map(|t| t.get_ref().clone());
                steps.push(Step { call, per_thread, tally });
            }
            Work::Calls(steps)
        }
    };
    let observe = match &a.observe {
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(k, o)| qualified(ctx, &names.instances, o, &format!("{field}.observe[{k}]"), "instance"))
            .collect::<Result<Vec<_>, _>>()?,
        None => match &work {
            Work::Calls(steps) => {
                let mut v: Vec<usize> = steps
                    .iter()
                    .flat_map(|s| s.per_thread.iter().copied().chain([s.call.instance]))
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            }
            Work::SensorFeed { .. } => (0..names.instances.len()).collect(),
            Work::Upload { .. } => Vec::new(),
        },
    };
    Ok(ActorDef { name: aname, amount, rate, concurrency, bytes_per_op, work, observe })
}

/// A step whose instance is named with `{thread}`: each of the actor's `threads` calls the instance
/// named with its own index in place of `{thread}`, and every one of them must be declared.
fn per_thread_call(
    ctx: &Ctx<'_>,
    names: &Names,
    step: &RawCall,
    threads: u32,
    field: &str,
) -> Result<(CallDef, Vec<usize>), SpecError> {
    let pattern = step.call.get_ref();
    let mut per_thread = Vec::new();
    for t in 0..threads {
        let name = pattern.replace(THREAD, &t.to_string());
        let instance = names.instances.get(&name).copied().ok_or_else(|| {
            ctx.err(
                &step.call.span(),
                format!("{field}.call"),
                format!(
                    "no instance {name:?} is declared for thread {t} of {threads} ({THREAD} stands for each \
                     thread's index, 0 to concurrency - 1)"
                ),
            )
        })?;
        per_thread.push(instance);
    }
    // The export and arguments are checked as for any call, against thread 0's instance.
    let first = Spanned::new(step.call.span(), pattern.replace(THREAD, "0"));
    let call = call(ctx, names, &first, &step.export, &step.args, field)?;
    Ok((call, per_thread))
}

fn validate_upload(
    ctx: &Ctx<'_>,
    tenants: &[TenantDef],
    upload: &Spanned<RawUpload>,
    field: &str,
) -> Result<Work, SpecError> {
    let span = upload.span();
    let upload = upload.get_ref();
    let tenant = upload.tenant.get_ref();
    let Some(quotas) = tenants.iter().find(|t| &t.name == tenant).map(|t| t.quotas) else {
        return Err(ctx.err(
            &upload.tenant.span(),
            format!("{field}.tenant"),
            format!("no tenant {tenant:?} is declared"),
        ));
    };
    let module = match (&upload.guest, &upload.size) {
        (Some(g), None) => match crate::guest(g.get_ref()) {
            Some(bytes) => {
                let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
                if len > quotas.module_bytes {
                    return Err(ctx.err(
                        &g.span(),
                        format!("{field}.guest"),
                        format!(
                            "its {len} bytes exceed tenant {tenant:?}'s quota module_bytes = {}",
                            quotas.module_bytes
                        ),
                    ));
                }
                UploadSource::Guest(g.get_ref().clone())
            }
            None => {
                let known: Vec<&str> = crate::GUESTS.iter().map(|(n, _)| *n).collect();
                return Err(ctx.err(
                    &g.span(),
                    format!("{field}.guest"),
                    format!("no guest app {:?} in this build (known: {})", g.get_ref(), known.join(", ")),
                ));
            }
        },
        (None, Some(s)) => {
            let f = format!("{field}.size");
            let bytes = size(ctx, s, &f)?;
            if bytes == 0 || bytes > MAX_GENERATED_MODULE {
                return Err(ctx.err(&s.span(), f, "must be 1 byte to 1GiB"));
            }
            if bytes > quotas.module_bytes {
                return Err(ctx.err(
                    &s.span(),
                    f,
                    format!("exceeds tenant {tenant:?}'s quota module_bytes = {}", quotas.module_bytes),
                ));
            }
            UploadSource::Generated(bytes)
        }
        _ => {
            return Err(ctx.err(
                &span,
                field,
                "give exactly one of `guest` (an app of this repo) or `size` (a generated module)",
            ))
        }
    };
    Ok(Work::Upload { tenant: tenant.clone(), module })
}

fn validate_check(
    ctx: &Ctx<'_>,
    names: &Names,
    actors: &[ActorDef],
    check: &Spanned<RawCheck>,
    field: &str,
) -> Result<CheckDef, SpecError> {
    let span = check.span();
    let c = check.get_ref();
    let source = match (&c.call, &c.export, &c.tally) {
        (Some(i), Some(e), None) => CheckSource::Call(call(ctx, names, i, e, &c.args, field)?),
        (None, None, Some(t)) => CheckSource::Tally(t.get_ref().clone()),
        _ => return Err(ctx.err(&span, field, "give either `call` and `export`, or `tally`")),
    };
    let actor = |n: &str| -> Result<String, SpecError> {
        if actors.iter().any(|a| a.name == n) {
            Ok(n.to_owned())
        } else {
            Err(ctx.err(&c.expect.span(), format!("{field}.expect"), format!("no actor {n:?} in this phase")))
        }
    };
    let expect = match c.expect.get_ref() {
        RawExpect::Equals(v) => Expect::Equals(*v),
        RawExpect::AtLeast(v) => Expect::AtLeast(*v),
        RawExpect::Ops(a) => Expect::Ops(actor(a)?),
        RawExpect::PipelineChecksum { actor: a, region } => {
            let region = names.regions.get(region).copied().ok_or_else(|| {
                ctx.err(
                    &c.expect.span(),
                    format!("{field}.expect.region"),
                    format!("no region {region:?} is declared"),
                )
            })?;
            Expect::PipelineChecksum { actor: actor(a)?, region }
        }
        RawExpect::SensorSum(a) => {
            let a = actor(a)?;
            if !actors.iter().any(|x| x.name == a && matches!(x.work, Work::SensorFeed { .. })) {
                return Err(ctx.err(
                    &c.expect.span(),
                    format!("{field}.expect"),
                    format!("actor {a:?} is not a feed"),
                ));
            }
            Expect::SensorSum(a)
        }
        RawExpect::Report(true) => Expect::Report,
        RawExpect::Report(false) => {
            return Err(ctx.err(
                &c.expect.span(),
                format!("{field}.expect"),
                "use `{ report = true }` to report a value",
            ))
        }
    };
    let when_zero = match (&c.when_zero, &source) {
        (Some(w), CheckSource::Call(_)) => Some(w.get_ref().clone()),
        (Some(w), CheckSource::Tally(_)) => {
            return Err(ctx.err(
                &w.span(),
                format!("{field}.when_zero"),
                "only applies to a check that calls",
            ))
        }
        (None, _) => None,
    };
    Ok(CheckDef { name: c.name.get_ref().clone(), source, expect, when_zero })
}
