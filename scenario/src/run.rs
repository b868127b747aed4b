//! The scenario runner: builds a fresh in-process broker per mode (with the UI toolkit extension on and
//! the `sensor.sample` service registered, whatever the scenario uses), sets the scenario up, runs its
//! phases (each phase's actors concurrently, each actor on its own host threads), measures, and
//! evaluates the checks.
//!
//! Measurements are taken where they are cheap and honest: an operation's latency is the wall time of
//! its calls as the host sees them (for the sensor feed, from the sample's write to the app's
//! acknowledgement; for an upload, the module's load and unload); bytes copied and host calls are the
//! instances' own traffic counters, read before and after the phase. The same guest binaries run in
//! every mode; only the regions declared `auto` change mode.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmtime::{Val, ValType};

use super::expect;
use super::generated::generated_module;
use super::report::{
    compare_phases, ActorReport, CheckOutcome, CheckReport, ModeRun, PhaseReport, ScenarioReport,
};
use super::spec::{
    ActorDef, Amount, Arg, CallDef, CheckDef, CheckSource, Expect, ModuleSource, PhaseDef, Scenario,
    UploadSource, Work,
};
use crate::metrics::{peak_rss_bytes, reset_peak_rss, Latency, ProgressEvent, ProgressSink};
use broker::{
    Broker, BrokerConfig, Error, InstanceConfig, InstanceId, Mode, RegionId, RegionSpec, TenantId, UiConfig,
};

/// Stops a scenario run early: actors finish the operation in hand and the run ends with
/// [`RunError::Cancelled`]. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A fresh token, not cancelled.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Asks the run to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether the run was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The modes to run, one run each (`None`: the scenario's own list).
    pub modes: Option<Vec<Mode>>,
    /// Multiplies every actor's iterations and duration (0.01 for a quick functional run); at least one
    /// operation always runs.
    pub scale: f64,
    /// Worker threads of each run's broker (`None`: the default, one per core and at least two).
    pub workers: Option<usize>,
    /// How each run's workers share the CPUs: as the daemon's do by default (`Idle`), so the figures
    /// say what `broker serve` does.
    pub worker_priority: broker::WorkerPriority,
    /// Stops the run early (a gRPC client that went away, a daemon shutting down).
    pub cancel: Cancel,
    /// The NATS server (with JetStream) of a scenario with `nodes`; `None`: the runner starts a
    /// `nats-server` of its own on a free loopback port with a temporary store.
    pub nats: Option<String>,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            modes: None,
            scale: 1.0,
            workers: None,
            worker_priority: broker::WorkerPriority::Idle,
            cancel: Cancel::new(),
            nats: None,
        }
    }
}

/// Why a run could not be carried out (a failed check is not an error: the report says so).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An option is out of range.
    #[error("invalid option {field}: {reason}")]
    InvalidOption {
        /// The option.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The broker refused a setup step.
    #[error("{step}: {source}")]
    Setup {
        /// The step, e.g. `creating region producers/stage1`.
        step: String,
        /// The broker's error.
        source: Error,
    },
    /// A module file could not be read.
    #[error("reading module {path}: {source}")]
    ModuleFile {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An init call failed or returned a negative status.
    #[error("init call {instance}.{export}: {reason}")]
    Init {
        /// The instance.
        instance: String,
        /// The export.
        export: String,
        /// What happened.
        reason: String,
    },
    /// A persistent region's directory could not be made.
    #[error("temporary directory for persistent regions: {0}")]
    TempDir(std::io::Error),
    /// The run was cancelled before it finished.
    #[error("the run was cancelled")]
    Cancelled,
}

fn setup<T>(step: impl FnOnce() -> String, r: Result<T, Error>) -> Result<T, RunError> {
    r.map_err(|source| RunError::Setup { step: step(), source })
}

/// Runs `scenario` once per mode and reports every figure and check.
///
/// # Errors
/// [`RunError`] if a run cannot be set up; failed checks and errored operations are in the report.
pub fn run(
    scenario: &Scenario,
    opts: &RunOptions,
    progress: &dyn ProgressSink,
) -> Result<ScenarioReport, RunError> {
    if !(opts.scale.is_finite() && opts.scale > 0.0 && opts.scale <= 1000.0) {
        return Err(RunError::InvalidOption {
            field: "scale",
            reason: format!("{} is not in (0, 1000]", opts.scale),
        });
    }
    if opts.workers == Some(0) || opts.workers.is_some_and(|w| w > 256) {
        return Err(RunError::InvalidOption { field: "workers", reason: "must be 1 to 256".into() });
    }
    let modes = opts.modes.clone().unwrap_or_else(|| scenario.modes.clone());
    if modes.is_empty() {
        return Err(RunError::InvalidOption { field: "modes", reason: "no modes given".into() });
    }
    let total = u64::try_from(modes.len() * scenario.phases.len()).unwrap_or(u64::MAX);
    let label = format!("scenario {}", scenario.name);
    progress.event(ProgressEvent::Start { total, label: &label });
    let mut runs = Vec::new();
    for (m, mode) in modes.iter().enumerate() {
        if opts.cancel.is_cancelled() {
            progress.event(ProgressEvent::Finish);
            return Err(RunError::Cancelled);
        }
        let done_before = u64::try_from(m * scenario.phases.len()).unwrap_or(0);
        let run = run_mode(scenario, *mode, opts, progress, done_before, total);
        match run {
            Ok(run) => runs.push(run),
            Err(e) => {
                progress.event(ProgressEvent::Finish);
                return Err(e);
            }
        }
    }
    progress.event(ProgressEvent::Finish);
    Ok(ScenarioReport {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        figures: scenario.figures.iter().map(|f| f.as_str().to_owned()).collect(),
        scale: opts.scale,
        cores: std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        workers: opts.workers.unwrap_or_else(|| BrokerConfig::default().workers),
        across_phases: compare_phases(&runs),
        runs,
    })
}

/// The most samples of one feed actor whose send time is kept for the latency figure.
const MAX_TIMED_SAMPLES: u64 = 1 << 22;

/// Send times of the samples of the feed actor running now, for the acknowledgement service.
#[derive(Default)]
struct AckState {
    current: Mutex<Option<Arc<FeedClock>>>,
}

struct FeedClock {
    start: Instant,
    /// Nanoseconds after `start` at which sample `i` was written (`u64::MAX`: not yet).
    written: Vec<AtomicU64>,
    latency: Mutex<Latency>,
    /// One past the newest sample acknowledged.
    acked: AtomicU64,
}

impl FeedClock {
    fn ack(&self, seq: u64) {
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let sent =
            usize::try_from(seq).ok().and_then(|i| self.written.get(i)).map(|w| w.load(Ordering::Acquire));
        if let Some(sent) = sent.filter(|s| *s != u64::MAX) {
            self.latency.lock().record_ns(now.saturating_sub(sent));
            self.acked.fetch_max(seq + 1, Ordering::Relaxed);
        }
    }
}

/// Everything a running scenario needs to find by index.
struct World<'a> {
    scenario: &'a Scenario,
    /// One broker per node (one in all without nodes).
    nodes: Vec<Arc<Broker>>,
    /// The first node's broker (the only one without nodes).
    first: Arc<Broker>,
    mode: Mode,
    /// The first node's tenants (uploads go there).
    tenants: HashMap<String, TenantId>,
    instances: Vec<InstanceId>,
    /// Each region on the node it was created on (its home), where host feeds write it.
    regions: Vec<RegionId>,
    acks: HashMap<String, Arc<AckState>>,
    /// Parameter types of each (instance, export) called, looked up once.
    params: Mutex<HashMap<(usize, String), Vec<ValType>>>,
}

impl World<'_> {
    fn instance_name(&self, i: usize) -> String {
        self.scenario.instances.get(i).map_or_else(|| format!("#{i}"), |d| format!("{}/{}", d.tenant, d.name))
    }

    /// Makes one call, filling in `{i}`, `{mode}` and `{thread}`; returns the export's i64 result.
    fn call(&self, call: &CallDef, index: u64, thread: u32) -> Result<i64, String> {
        self.call_on(call.instance, call, index, thread)
    }

    /// Makes `call` on instance `on` (index into the scenario's instances) instead of its own: a step
    /// whose instance is named with `{thread}`.
    fn call_on(&self, on: usize, call: &CallDef, index: u64, thread: u32) -> Result<i64, String> {
        let instance = self.instances.get(on).copied().ok_or("no such instance")?;
        let broker = self.broker_of(on);
        let key = (on, call.export.clone());
        let params = {
            let mut cache = self.params.lock();
            match cache.get(&key) {
                Some(p) => p.clone(),
                None => {
                    let p = broker.export_params(instance, &call.export).map_err(|e| e.to_string())?;
                    cache.insert(key, p.clone());
                    p
                }
            }
        };
        if params.len() != call.args.len() {
            return Err(format!(
                "{}.{} takes {} arguments, the scenario passes {}",
                self.instance_name(on),
                call.export,
                params.len(),
                call.args.len()
            ));
        }
        let mut vals = Vec::with_capacity(params.len());
        for (ty, arg) in params.iter().zip(&call.args) {
            let v: i64 = match arg {
                Arg::Int(v) => *v,
                Arg::Index => i64::try_from(index).unwrap_or(i64::MAX),
                Arg::Mode => i64::from(self.mode.to_raw()),
                Arg::Thread => i64::from(thread),
            };
            vals.push(match ty {
                ValType::I64 => Val::I64(v),
                ValType::I32 => Val::I32(
                    i32::try_from(v)
                        .map_err(|_| format!("argument {v} of {} does not fit an i32", call.export))?,
                ),
                other => {
                    return Err(format!("{} takes a {other} parameter; scenarios pass integers", call.export))
                }
            });
        }
        broker.call_i64(instance, &call.export, &vals).map_err(|e| e.to_string())
    }

    /// The broker instance `i` runs on.
    fn broker_of(&self, i: usize) -> &Broker {
        let node = self.scenario.instances.get(i).map_or(0, |d| d.node);
        self.nodes.get(node).unwrap_or(&self.first)
    }

    /// The broker region `r` was created on.
    fn home_of(&self, r: usize) -> &Broker {
        let node = self.scenario.regions.get(r).map_or(0, |d| d.node);
        self.nodes.get(node).unwrap_or(&self.first)
    }

    fn traffic(&self, observe: &[usize]) -> (u64, u64) {
        observe.iter().filter_map(|i| self.instances.get(*i).map(|id| (*i, id))).fold(
            (0, 0),
            |(bytes, calls), (i, id)| match self.broker_of(i).instance_traffic(*id) {
                Ok(t) => (bytes + t.bytes_in + t.bytes_out, calls + t.host_calls),
                Err(_) => (bytes, calls),
            },
        )
    }
}

fn run_mode(
    scenario: &Scenario,
    mode: Mode,
    opts: &RunOptions,
    progress: &dyn ProgressSink,
    done_before: u64,
    total: u64,
) -> Result<ModeRun, RunError> {
    let started = Instant::now();
    let rss_reset = reset_peak_rss();
    let defaults = BrokerConfig::default();
    // Every scenario broker has the UI toolkit extension, with its default pool: scenario files may run
    // toolkit apps, and tenants' `trampolines` quotas share that pool.
    let config = BrokerConfig {
        workers: opts.workers.unwrap_or(defaults.workers),
        worker_priority: opts.worker_priority,
        ui: Some(UiConfig::default()),
        ..defaults
    };
    // One broker per node, each with every tenant, service and module (one broker without nodes).
    let node_count = scenario.nodes.len().max(1);
    let mut nodes: Vec<Arc<Broker>> = Vec::with_capacity(node_count);
    for _ in 0..node_count {
        let broker = setup(|| "starting the broker".into(), Broker::new(config.clone()))?;
        setup(
            || format!("registering service {}", expect::SENSOR_SERVICE),
            broker.register_service(expect::SENSOR_SERVICE, None, expect::sensor_service()),
        )?;
        nodes.push(Arc::new(broker));
    }
    let state_dir = if scenario.regions.iter().any(|r| r.persistent) {
        let prefix = format!("broker-scenario-{}-{mode}-", scenario.name);
        Some(tempfile::Builder::new().prefix(&prefix).tempdir().map_err(RunError::TempDir)?)
    } else {
        None
    };

    let mut node_tenants: Vec<HashMap<&str, TenantId>> = Vec::with_capacity(node_count);
    for broker in &nodes {
        let mut tenants: HashMap<&str, TenantId> = HashMap::new();
        for t in &scenario.tenants {
            let id =
                setup(|| format!("creating tenant {}", t.name), broker.create_tenant(&t.name, t.quotas))?;
            tenants.insert(&t.name, id);
        }
        node_tenants.push(tenants);
    }
    let tenant = |node: usize, name: &str| {
        node_tenants
            .get(node)
            .and_then(|t| t.get(name))
            .copied()
            .ok_or_else(|| Error::TenantNotFound(name.to_owned()))
    };

    let mut acks = HashMap::new();
    for phase in &scenario.phases {
        for actor in &phase.actors {
            if let Work::SensorFeed { ack_service: Some(service), .. } = &actor.work {
                if acks.contains_key(service) {
                    continue;
                }
                let state = Arc::new(AckState::default());
                for broker in &nodes {
                    let s = Arc::clone(&state);
                    let f: broker::ServiceFn = Arc::new(move |args: &[u8]| {
                        let seq = args
                            .get(..8)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_le_bytes)
                            .ok_or("expects an 8-byte sequence number")?;
                        if let Some(clock) = s.current.lock().as_ref() {
                            clock.ack(seq);
                        }
                        Ok(Vec::new())
                    });
                    setup(
                        || format!("registering service {service}"),
                        broker.register_service(service, None, f),
                    )?;
                }
                acks.insert(service.clone(), state);
            }
        }
    }

    for m in &scenario.modules {
        let bytes: Vec<u8> = match &m.source {
            ModuleSource::Guest(g) => crate::guest(g).map(<[u8]>::to_vec).unwrap_or_default(),
            ModuleSource::File(path) => std::fs::read(path)
                .map_err(|source| RunError::ModuleFile { path: path.display().to_string(), source })?,
        };
        for (n, broker) in nodes.iter().enumerate() {
            let t = setup(|| format!("module {}/{}", m.tenant, m.name), tenant(n, &m.tenant))?;
            setup(
                || format!("loading module {}/{}", m.tenant, m.name),
                broker.load_module(t, &m.name, &bytes),
            )?;
        }
    }

    // Each region on its node; a replicated one then on every other node too, as a replica.
    let cluster = if scenario.nodes.is_empty() {
        None
    } else {
        Some(crate::cluster::ClusterRun::start(&scenario.nodes, &nodes, opts.nats.as_deref())?)
    };
    let mut regions = Vec::new();
    let mut node_regions: Vec<Vec<Option<RegionId>>> = vec![vec![None; scenario.regions.len()]; node_count];
    for (k, r) in scenario.regions.iter().enumerate() {
        let t = setup(|| format!("region {}/{}", r.tenant, r.name), tenant(r.node, &r.tenant))?;
        let mode_here = r.mode.resolve(mode);
        if r.replicated && mode_here == Mode::Shared {
            return Err(RunError::InvalidOption {
                field: "modes",
                reason: format!(
                    "region {}/{} is replicated: shared mode is node-local (run handle and mirror)",
                    r.tenant, r.name
                ),
            });
        }
        let mut spec =
            RegionSpec::new(r.name.clone(), r.size, mode_here).with_policy(r.policy).with_members(r.members);
        if let (true, Some(dir)) = (r.persistent, &state_dir) {
            spec = spec.persistent(dir.path().join(format!("{}-{}.region", r.tenant, r.name)));
        }
        let home = nodes.get(r.node).unwrap_or(&nodes[0]);
        let id = setup(|| format!("creating region {}/{}", r.tenant, r.name), home.create_region(t, spec))?;
        regions.push(id);
        node_regions[r.node][k] = Some(id);
    }
    if let Some(cluster) = &cluster {
        for (k, r) in scenario.regions.iter().enumerate().filter(|(_, r)| r.replicated) {
            cluster.share(r.node, &r.tenant, &r.name)?;
            for n in (0..node_count).filter(|n| *n != r.node) {
                node_regions[n][k] = Some(cluster.follow(n, &r.tenant, &r.name)?);
            }
        }
    }

    let mut instances = Vec::new();
    for i in &scenario.instances {
        let t = setup(|| format!("instance {}/{}", i.tenant, i.name), tenant(i.node, &i.tenant))?;
        let defaults = InstanceConfig::default();
        let config =
            InstanceConfig { call_timeout: i.call_timeout.unwrap_or(defaults.call_timeout), ..defaults };
        let broker = nodes.get(i.node).unwrap_or(&nodes[0]);
        instances.push(setup(
            || format!("starting instance {}/{}", i.tenant, i.name),
            broker.start_instance(t, &i.module, &i.name, config),
        )?);
    }

    for g in &scenario.grants {
        let r = &scenario.regions[g.region];
        let i = &scenario.instances[g.to];
        // Validated: the region exists on the instance's node (its own, or a replica).
        let region = node_regions[i.node][g.region].ok_or_else(|| RunError::Setup {
            step: format!("granting {}/{}", r.tenant, r.name),
            source: Error::RegionNotFound(r.name.clone()),
        })?;
        let broker = nodes.get(i.node).unwrap_or(&nodes[0]);
        setup(
            || format!("granting {}/{} to {}/{}", r.tenant, r.name, i.tenant, i.name),
            broker.grant(region, instances[g.to], g.rights, g.offset, g.len),
        )?;
    }

    let tenants = node_tenants[0].iter().map(|(name, id)| ((*name).to_owned(), *id)).collect();
    let first = Arc::clone(&nodes[0]);
    let world = World {
        scenario,
        nodes,
        first,
        mode,
        tenants,
        instances,
        regions,
        acks,
        params: Mutex::new(HashMap::new()),
    };
    for i in &scenario.instances {
        for call in &i.init {
            let fail = |reason: String| RunError::Init {
                instance: format!("{}/{}", i.tenant, i.name),
                export: call.export.clone(),
                reason,
            };
            match world.call(call, 0, 0) {
                Ok(v) if v < 0 => return Err(fail(status_text(v))),
                Ok(_) => {}
                Err(e) => return Err(fail(e)),
            }
        }
    }

    let mut phases = Vec::new();
    for (p, phase) in scenario.phases.iter().enumerate() {
        let done = done_before + u64::try_from(p).unwrap_or(0);
        phases.push(run_phase(&world, phase, opts, progress, done, total));
        if opts.cancel.is_cancelled() {
            return Err(RunError::Cancelled);
        }
        let report: &PhaseReport = &phases[phases.len() - 1];
        let summary = report
            .actors
            .iter()
            .map(|a| format!("{} {:.0} ops/s", a.name, a.ops_per_sec))
            .collect::<Vec<_>>()
            .join(", ");
        let failed = report.checks.iter().filter(|c| c.outcome == CheckOutcome::Fail).count();
        let line = format!(
            "{} · {} · {}: {summary}{}",
            scenario.name,
            mode,
            phase.name,
            if failed > 0 { format!(" · {failed} check(s) FAILED") } else { String::new() }
        );
        progress.event(ProgressEvent::Advance { done: done + 1, total, message: &line });
    }
    drop(world);
    drop(cluster);
    drop(state_dir);
    Ok(ModeRun {
        mode: mode.to_string(),
        phases,
        peak_rss_bytes: if rss_reset { peak_rss_bytes() } else { None },
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn status_text(v: i64) -> String {
    i32::try_from(v)
        .ok()
        .and_then(broker_abi::Status::from_code)
        .map_or_else(|| format!("returned {v}"), |s| format!("returned {} ({v})", s.c_name()))
}

/// What one actor measured.
struct ActorOutcome {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    latency: Latency,
    end_to_end: bool,
    tallies: BTreeMap<String, i64>,
    copied: u64,
    host_calls: u64,
}

fn scaled(amount: Amount, scale: f64) -> Amount {
    match amount {
        #[allow(clippy::cast_precision_loss, reason = "iteration counts are far below 2^52")]
        #[allow(
            clippy::cast_possible_truncation,
            reason = "rounded, positive and bounded by the check above"
        )]
        #[allow(clippy::cast_sign_loss, reason = "positive")]
        Amount::Iterations(n) => Amount::Iterations(((n as f64 * scale).round() as u64).max(1)),
        Amount::Duration(d) => Amount::Duration(d.mul_f64(scale).max(Duration::from_millis(1))),
    }
}

fn run_phase(
    world: &World<'_>,
    phase: &PhaseDef,
    opts: &RunOptions,
    progress: &dyn ProgressSink,
    done: u64,
    total: u64,
) -> PhaseReport {
    let counters: Vec<AtomicU64> = phase.actors.iter().map(|_| AtomicU64::new(0)).collect();
    let finished = AtomicBool::new(false);
    let outcomes: Vec<ActorOutcome> = std::thread::scope(|s| {
        let handles: Vec<_> = phase
            .actors
            .iter()
            .zip(&counters)
            .map(|(actor, counter)| {
                s.spawn(|| run_actor(world, actor, scaled(actor.amount, opts.scale), counter, &opts.cancel))
            })
            .collect();
        // Progress while the actors run: the operation counts, once a second.
        let ticker = s.spawn(|| loop {
            std::thread::park_timeout(Duration::from_secs(1));
            if finished.load(Ordering::Acquire) {
                break;
            }
            let ops: Vec<String> = phase
                .actors
                .iter()
                .zip(&counters)
                .map(|(a, c)| format!("{} {}", a.name, c.load(Ordering::Relaxed)))
                .collect();
            let msg =
                format!("{} · {} · {}: {} ops", world.scenario.name, world.mode, phase.name, ops.join(", "));
            progress.event(ProgressEvent::Advance { done, total, message: &msg });
        });
        let outcomes = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| ActorOutcome {
                    ops: 0,
                    errors: 1,
                    first_error: Some("actor thread panicked".into()),
                    elapsed: Duration::ZERO,
                    latency: Latency::new(),
                    end_to_end: false,
                    tallies: BTreeMap::new(),
                    copied: 0,
                    host_calls: 0,
                })
            })
            .collect();
        finished.store(true, Ordering::Release);
        ticker.thread().unpark();
        outcomes
    });

    let mut tallies: BTreeMap<String, i64> = BTreeMap::new();
    let mut actors = Vec::new();
    for (actor, o) in phase.actors.iter().zip(outcomes) {
        for (k, v) in &o.tallies {
            *tallies.entry(k.clone()).or_default() += v;
        }
        actors.push(actor_report(actor, &o));
    }
    let checks = phase.checks.iter().map(|c| run_check(world, &actors, &tallies, c)).collect();
    PhaseReport { name: phase.name.clone(), actors, tallies, checks }
}

fn actor_report(actor: &ActorDef, o: &ActorOutcome) -> ActorReport {
    let secs = o.elapsed.as_secs_f64().max(1e-9);
    #[allow(clippy::cast_precision_loss, reason = "figures for people")]
    let (ops_f, per_op) = (o.ops as f64, |v: u64| if o.ops == 0 { 0.0 } else { v as f64 / o.ops as f64 });
    ActorReport {
        name: actor.name.clone(),
        ops: o.ops,
        errors: o.errors,
        first_error: o.first_error.clone(),
        seconds: o.elapsed.as_secs_f64(),
        ops_per_sec: ops_f / secs,
        #[allow(clippy::cast_precision_loss, reason = "figures for people")]
        mb_per_sec: (actor.bytes_per_op > 0).then(|| ops_f * actor.bytes_per_op as f64 / secs / 1e6),
        latency: o.latency.summary(),
        latency_kind: if o.end_to_end { "write to acknowledgement" } else { "per operation" }.to_owned(),
        bytes_copied_per_op: per_op(o.copied),
        host_calls_per_op: per_op(o.host_calls),
    }
}

fn run_actor(
    world: &World<'_>,
    actor: &ActorDef,
    amount: Amount,
    counter: &AtomicU64,
    cancel: &Cancel,
) -> ActorOutcome {
    let (copied0, calls0) = world.traffic(&actor.observe);
    let feed = match &actor.work {
        Work::SensorFeed { region, ack_service } => {
            // Send times are kept for at most MAX_TIMED_SAMPLES samples (32 MiB); later samples go
            // untimed, so no scenario value can make the runner allocate without bound.
            let capacity = match amount {
                Amount::Iterations(n) => n.min(MAX_TIMED_SAMPLES),
                #[allow(clippy::cast_possible_truncation, reason = "bounded by the min")]
                #[allow(clippy::cast_sign_loss, reason = "positive")]
                Amount::Duration(d) => actor.rate.map_or(1 << 20, |r| {
                    (r * d.as_secs_f64() * 1.5 + 16.0).min(MAX_TIMED_SAMPLES as f64) as u64
                }),
            };
            let clock = Arc::new(FeedClock {
                start: Instant::now(),
                written: (0..capacity).map(|_| AtomicU64::new(u64::MAX)).collect(),
                latency: Mutex::new(Latency::new()),
                acked: AtomicU64::new(0),
            });
            let ack = ack_service.as_ref().and_then(|s| world.acks.get(s)).cloned();
            if let Some(a) = &ack {
                *a.current.lock() = Some(Arc::clone(&clock));
            }
            Some((
                world.regions.get(*region).copied(),
                world.scenario.regions.get(*region).map(|r| r.size),
                clock,
                ack,
            ))
        }
        Work::Calls(_) | Work::Upload { .. } => None,
    };
    // An upload's module is made before the clock starts: the operation is its load and unload alone.
    let upload = match &actor.work {
        Work::Upload { tenant, module } => {
            let bytes: Cow<'static, [u8]> = match module {
                UploadSource::Guest(g) => Cow::Borrowed(crate::guest(g).unwrap_or_default()),
                // Validated to at most 1 GiB, which fits the `usize` of any host the broker builds for.
                UploadSource::Generated(size) => {
                    Cow::Owned(generated_module(usize::try_from(*size).unwrap_or(0)))
                }
            };
            Some((world.tenants.get(tenant).copied(), bytes))
        }
        _ => None,
    };

    let next = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = match amount {
        Amount::Duration(d) => Some(start + d),
        Amount::Iterations(_) => None,
    };
    let limit = match amount {
        Amount::Iterations(n) => n,
        Amount::Duration(_) => u64::MAX,
    };
    let shared = Mutex::new((Latency::new(), BTreeMap::<String, i64>::new(), 0u64, None::<String>));
    // The feed has one writer: samples must go out in order.
    let threads = if feed.is_some() { 1 } else { actor.concurrency };
    let per_thread_interval = actor.rate.map(|r| Duration::from_secs_f64(f64::from(threads) / r));
    std::thread::scope(|s| {
        for thread in 0..threads {
            let (next, shared, feed, upload) = (&next, &shared, &feed, &upload);
            s.spawn(move || {
                let mut latency = Latency::new();
                let mut tallies: BTreeMap<String, i64> = BTreeMap::new();
                let mut errors = 0u64;
                let mut first_error = None;
                let mut k = 0u32;
                loop {
                    // A timed thread makes at least one operation, even when it started after the
                    // phase's time was up (a loaded machine), so every actor has figures to report.
                    let late = k > 0 && deadline.is_some_and(|d| Instant::now() >= d);
                    if late || cancel.is_cancelled() {
                        break;
                    }
                    if let Some(interval) = per_thread_interval {
                        let due = start + interval * k;
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                    }
                    k = k.saturating_add(1);
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= limit {
                        break;
                    }
                    let t0 = Instant::now();
                    let result = match (&actor.work, feed, upload) {
                        (Work::Calls(steps), _, _) => run_steps(world, steps, i, thread, &mut tallies),
                        (
                            Work::SensorFeed { region: r, .. },
                            Some((Some(region), Some(size), clock, _)),
                            _,
                        ) => write_sample(world.home_of(*r), *region, *size, clock, i),
                        (Work::Upload { .. }, _, Some((Some(tenant), bytes))) => {
                            upload_module(world, *tenant, bytes, i)
                        }
                        (Work::Upload { tenant, .. }, _, _) => Err(format!("no tenant {tenant}")),
                        _ => Err("feed region missing".to_owned()),
                    };
                    match result {
                        Ok(()) => {
                            latency.record(t0.elapsed());
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                }
                let mut g = shared.lock();
                g.0.merge(&latency);
                for (k, v) in tallies {
                    *g.1.entry(k).or_default() += v;
                }
                g.2 += errors;
                if g.3.is_none() {
                    g.3 = first_error;
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let (op_latency, tallies, errors, first_error) = shared.into_inner();
    let (latency, end_to_end) = match &feed {
        Some((_, _, clock, Some(ack))) => {
            // Acknowledgements of the last samples may still be on their way: wait for the apps to catch
            // up (bounded), then stop timing this feed.
            let until = Instant::now() + Duration::from_secs(5);
            let written = counter.load(Ordering::Relaxed);
            while clock.acked.load(Ordering::Relaxed) < written && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            *ack.current.lock() = None;
            let l = std::mem::take(&mut *clock.latency.lock());
            (l, true)
        }
        _ => (op_latency, false),
    };
    let (copied1, calls1) = world.traffic(&actor.observe);
    ActorOutcome {
        ops: counter.load(Ordering::Relaxed),
        errors,
        first_error,
        elapsed,
        latency,
        end_to_end,
        tallies,
        copied: copied1.saturating_sub(copied0),
        host_calls: calls1.saturating_sub(calls0),
    }
}

fn run_steps(
    world: &World<'_>,
    steps: &[super::spec::Step],
    i: u64,
    thread: u32,
    tallies: &mut BTreeMap<String, i64>,
) -> Result<(), String> {
    for step in steps {
        let instance = step.instance(thread);
        let v = world.call_on(instance, &step.call, i, thread)?;
        if v < 0 {
            return Err(format!("{}.{} {}", world.instance_name(instance), step.call.export, status_text(v)));
        }
        if let Some(t) = &step.tally {
            let e = tallies.entry(t.clone()).or_default();
            *e = e.saturating_add(v);
        }
    }
    Ok(())
}

/// Upload `i`: loads `wasm` into `tenant` as module `upload.<i>` (compiling it, as the control plane's
/// `UploadModule` does) and unloads it again, so the next upload compiles afresh and the tenant's module
/// quotas hold at most one module per thread.
fn upload_module(world: &World<'_>, tenant: TenantId, wasm: &[u8], i: u64) -> Result<(), String> {
    let name = format!("upload.{i}");
    world.first.load_module(tenant, &name, wasm).map_err(|e| format!("uploading {name}: {e}"))?;
    world.first.unload_module(tenant, &name).map_err(|e| format!("unloading {name}: {e}"))
}

/// Writes sample `i` into its ring slot, then publishes the new count in the header (one version
/// each; apps watch the header).
fn write_sample(
    broker: &Broker,
    region: RegionId,
    size: u64,
    clock: &FeedClock,
    i: u64,
) -> Result<(), String> {
    const HEADER: u64 = 64;
    const SLOT: u64 = 16;
    let slots = (size.saturating_sub(HEADER) / SLOT).max(1);
    let mut slot = [0u8; 16];
    slot[..8].copy_from_slice(&i.to_le_bytes());
    slot[8..].copy_from_slice(&expect::sensor_sample(i).to_le_bytes());
    broker.write_region(region, HEADER + (i % slots) * SLOT, &slot).map_err(|e| e.to_string())?;
    if let Some(w) = usize::try_from(i).ok().and_then(|k| clock.written.get(k)) {
        w.store(u64::try_from(clock.start.elapsed().as_nanos()).unwrap_or(u64::MAX), Ordering::Release);
    }
    broker.write_region(region, 0, &(i + 1).to_le_bytes()).map_err(|e| e.to_string())?;
    Ok(())
}

fn run_check(
    world: &World<'_>,
    actors: &[ActorReport],
    tallies: &BTreeMap<String, i64>,
    check: &CheckDef,
) -> CheckReport {
    let report = |value: Option<i64>, expected: Option<String>, outcome: CheckOutcome, detail: String| {
        CheckReport { name: check.name.clone(), value, expected, outcome, detail }
    };
    let ops_of = |name: &str| actors.iter().find(|a| a.name == name).map_or(0, |a| a.ops);
    if let (Some(gate), CheckSource::Call(call)) = (&check.when_zero, &check.source) {
        let gate_call = CallDef { instance: call.instance, export: gate.clone(), args: Vec::new() };
        match world.call(&gate_call, 0, 0) {
            Ok(0) => {}
            Ok(v) => {
                return report(None, None, CheckOutcome::Skipped, format!("skipped: {gate} is {v}, not 0"));
            }
            Err(e) => return report(None, None, CheckOutcome::Fail, format!("{gate}: {e}")),
        }
    }
    let value = match &check.source {
        CheckSource::Call(call) => match world.call(call, 0, 0) {
            Ok(v) => v,
            Err(e) => return report(None, None, CheckOutcome::Fail, e),
        },
        CheckSource::Tally(t) => tallies.get(t).copied().unwrap_or(0),
    };
    #[allow(clippy::cast_possible_wrap, reason = "checksums are compared as the guest's i64 bits")]
    let expected: Option<i64> = match &check.expect {
        Expect::Equals(v) => Some(*v),
        Expect::AtLeast(min) => {
            let ok = value >= *min;
            let outcome = if ok { CheckOutcome::Pass } else { CheckOutcome::Fail };
            return report(Some(value), Some(format!(">= {min}")), outcome, String::new());
        }
        Expect::Ops(a) => Some(i64::try_from(ops_of(a)).unwrap_or(i64::MAX)),
        Expect::PipelineChecksum { actor, region } => {
            let block = world.scenario.regions.get(*region).map_or(0, |r| r.size);
            Some(expect::pipeline_checksum(ops_of(actor), block) as i64)
        }
        Expect::SensorSum(a) => Some(expect::sensor_sum(ops_of(a)) as i64),
        Expect::Report => return report(Some(value), None, CheckOutcome::Reported, String::new()),
    };
    match expected {
        Some(e) if e == value => report(Some(value), Some(e.to_string()), CheckOutcome::Pass, String::new()),
        Some(e) => report(Some(value), Some(e.to_string()), CheckOutcome::Fail, String::new()),
        None => report(Some(value), None, CheckOutcome::Reported, String::new()),
    }
}
