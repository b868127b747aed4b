//! The `broker` command line: `broker serve` (the daemon), `broker demo`, and client commands in the
//! form `broker <noun> <verb>` that talk to a daemon over gRPC, printing tables or, with `--json`, JSON.
//!
//! `main.rs` only calls [`main`]; tests call [`run`] with arguments and an output buffer.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use broker_proto::pb;
use broker_proto::pb::broker_client::BrokerClient;
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value as Json};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use broker::tenant::{QuotaField, QuotaKind};
use broker::{Broker, BrokerConfig, Quotas};
use broker_control::server::{serve, ServeConfig, ServeError};
use broker_control::ControlPlane;

/// Multi-tenant shared-memory broker for WebAssembly apps.
#[derive(Debug, Parser)]
#[command(name = "broker", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the daemon is and who we are.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// The daemon's address.
    #[arg(long, global = true, env = "BROKER_ADDR", default_value = "http://127.0.0.1:7878")]
    addr: String,
    /// Bearer token: the admin token or a tenant token.
    #[arg(long, global = true, env = "BROKER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The tenant to act on (a tenant token implies its own).
    #[arg(long, global = true, env = "BROKER_TENANT", default_value = "")]
    tenant: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the built-in demo: two apps of two tenants share a region through a read-only grant.
    Demo {
        /// How many readings the producer app writes.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        readings: u32,
    },
    /// Measure the mode trade-off matrix: modes x region sizes x access patterns x readers, with a
    /// native baseline on the same mapping; print a table and a recommended mode per cell, and write
    /// the figures as JSON and SVG charts.
    Bench(BenchArgs),
    /// Run the daemon: the gRPC control API.
    Serve(ServeArgs),
    /// Brokers on several hosts, joined through NATS JetStream (`broker serve --cluster`).
    Cluster {
        #[command(subcommand)]
        verb: ClusterVerb,
    },
    /// Tenants (admin token).
    Tenant {
        #[command(subcommand)]
        verb: TenantVerb,
        #[command(flatten)]
        conn: Conn,
    },
    /// Wasm modules of a tenant.
    Module {
        #[command(subcommand)]
        verb: ModuleVerb,
        #[command(flatten)]
        conn: Conn,
    },
    /// Instances of a tenant's modules.
    Instance {
        #[command(subcommand)]
        verb: InstanceVerb,
        #[command(flatten)]
        conn: Conn,
    },
    /// Regions of host memory.
    Region {
        #[command(subcommand)]
        verb: RegionVerb,
        #[command(flatten)]
        conn: Conn,
    },
    /// Hold N concurrent clients for M seconds of mixed RPCs against an in-process daemon on loopback;
    /// report errors (must be 0), latency percentiles and resident memory at the start and the end.
    Loadtest {
        /// Concurrent clients.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
        clients: u64,
        /// Seconds of load.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        seconds: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Multi-app scenarios: run a built-in scenario or a scenario file once per mode and report what
    /// each mode cost (ops/s, MB/s, latency, copies, host calls, memory) and whether the apps' results
    /// were right.
    Scenario {
        #[command(subcommand)]
        verb: ScenarioVerb,
    },
    /// Statistics of a tenant: usage, regions, instances.
    Stats {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
enum ScenarioVerb {
    /// Run a scenario in-process on a fresh broker per mode; print the report, write it as JSON and an
    /// SVG chart, and exit non-zero if a check failed.
    Run(ScenarioRunArgs),
    /// List the built-in scenarios.
    List,
    /// Print a built-in scenario's file: a commented starting point for your own.
    Show {
        /// The built-in scenario's name.
        name: String,
    },
    /// Validate a scenario file without running it.
    Check {
        /// A built-in scenario's name or a path to a .toml file.
        scenario: String,
    },
}

#[derive(Debug, Args)]
struct ScenarioRunArgs {
    /// A built-in scenario (see `broker scenario list`) or a path to a scenario .toml file.
    #[arg(default_value = broker_scenario::DEFAULT)]
    scenario: String,
    /// Modes to run, comma-separated, e.g. `handle,mirror,shared` (default: the scenario's own list);
    /// regions declared `mode = "auto"` take each mode in turn, the same guest binaries run in all.
    #[arg(long)]
    modes: Option<String>,
    /// Multiply every actor's duration and iterations (0.1 for a quick look).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Directory for `<scenario>.json` and `<scenario>.svg`.
    #[arg(long, default_value = "target/broker-scenarios")]
    out: PathBuf,
    /// Worker threads of the broker (default: one per core, at least two).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    workers: Option<u64>,
    /// How the workers share the CPUs, as for `broker serve`: "idle" (default, as the daemon) or
    /// "normal".
    #[arg(long, default_value = "idle")]
    worker_priority: broker::runtime::WorkerPriority,
    /// Print the JSON report instead of the table.
    #[arg(long)]
    json: bool,
    /// No progress output (by default: a progress bar on a terminal, plain lines on stderr otherwise).
    #[arg(long)]
    quiet: bool,
    /// For a scenario with `nodes` (a cluster of brokers): the NATS server with JetStream to join them
    /// through (nats://HOST:PORT). By default the run starts a `nats-server` of its own.
    #[arg(long)]
    nats: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ClusterVerb {
    /// List the live nodes (each one's address, the tenants that live on it, and its load) and the
    /// replicated regions (each one's home, epoch, and the messages the stream keeps of it).
    Status {
        /// The NATS server of the cluster (nats://HOST:PORT).
        #[arg(long, env = "BROKER_CLUSTER")]
        cluster: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML config file (keys: listen, state_dir, admin_token_file, max_message_bytes, concurrency_limit,
    /// workers, ui, trampolines, worker_priority, drain_timeout_ms).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:7878).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Directory for persistent state (tenants, modules, regions, grants).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Worker threads running instances (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Native trampolines (toolkit event callbacks) all tenants' apps may hold together: 1 to 1024, the
    /// number compiled in (default 64). Each tenant holds at most its `trampolines` quota of them.
    #[arg(long)]
    trampolines: Option<u32>,
    /// Turn the UI toolkit extension off (config `ui = false`): apps get no `broker_ui_v1` imports,
    /// and uploads of modules that import them are refused. On by default.
    #[arg(long)]
    no_ui: bool,
    /// How workers (which also compile uploads) share the CPUs: "idle" (default: workers run in the
    /// kernel's idle class, so the daemon's own threads, and with them every tenant's replies, always
    /// get a core at once; for a host that runs the broker) or "normal" (workers at nice +5; for a
    /// host shared with other busy processes).
    #[arg(long)]
    worker_priority: Option<broker::runtime::WorkerPriority>,
    /// Join the cluster whose NATS server (with JetStream) is at this URL (nats://HOST:PORT). Without
    /// it the broker is a single node and needs no NATS.
    #[arg(long, requires = "node")]
    cluster: Option<String>,
    /// This broker's node name in the cluster (letters, digits, '-' and '_'; unique among live nodes).
    #[arg(long, requires = "cluster")]
    node: Option<String>,
}

/// The quota flags, one per [`broker::Quotas::FIELDS`] entry (`--region-bytes`, `--cpu-shares`, ...),
/// so a new quota gets its flag without anyone listing it here; byte quotas also take sizes such as
/// `64MiB`. Holds the flags given.
#[derive(Debug, Clone, Default)]
struct QuotaArgs(Vec<(&'static QuotaField, u64)>);

impl clap::FromArgMatches for QuotaArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<QuotaArgs, clap::Error> {
        let given = Quotas::FIELDS.iter().filter_map(|f| m.get_one::<u64>(f.name).map(|v| (f, *v))).collect();
        Ok(QuotaArgs(given))
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = QuotaArgs::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for QuotaArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        Quotas::FIELDS.iter().fold(cmd, |cmd, f| {
            let arg =
                clap::Arg::new(f.name).long(f.name.replace('_', "-")).help(f.help).help_heading("Quotas");
            cmd.arg(match f.kind {
                QuotaKind::Bytes => arg
                    .value_name("BYTES")
                    .value_parser(|s: &str| broker::region::parse_size(s).map_err(|e| e.to_string())),
                QuotaKind::Millis => arg.value_name("MS").value_parser(clap::value_parser!(u64)),
                QuotaKind::Count | QuotaKind::Weight => {
                    arg.value_name("N").value_parser(clap::value_parser!(u64))
                }
            })
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        QuotaArgs::augment_args(cmd)
    }
}

#[derive(Debug, Subcommand)]
enum TenantVerb {
    /// Create a tenant.
    Create {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    /// List tenants.
    List,
    /// Change a tenant's quotas (unset ones keep their value).
    Quotas {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    /// Issue a token for a tenant; `--rotate` revokes the earlier ones.
    Token {
        /// The tenant's name.
        name: String,
        /// Revoke every earlier token of the tenant.
        #[arg(long)]
        rotate: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ModuleVerb {
    /// Upload a .wasm file as a module.
    Upload {
        /// The module's name.
        name: String,
        /// The .wasm file.
        file: PathBuf,
    },
    /// List modules.
    List,
    /// Delete a module. Refused while any instance of it exists, stopped ones included: delete them
    /// first (`broker instance delete NAME`).
    Delete {
        /// The module's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum InstanceVerb {
    /// Start an instance of a module.
    Start {
        /// The instance's name.
        name: String,
        /// The module to run.
        #[arg(long)]
        module: String,
        /// Longest a call may run, in milliseconds.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Cap on linear memory, in bytes.
        #[arg(long)]
        max_memory: Option<u64>,
        /// A WASI app's argument (repeat for each; by convention the first is the program's name).
        #[arg(long = "arg", value_name = "ARG")]
        args: Vec<String>,
        /// A WASI app's environment variable, NAME=value (repeat for each).
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// A directory a WASI app may use, PATH:GUEST[:rw] (repeat for each): PATH is plain names
        /// under the tenant's directory in `<state dir>/app-data/`, created if missing; GUEST is where
        /// the app sees it; read-only unless `:rw`. Needs a daemon with --state-dir.
        #[arg(long = "dir", value_name = "PATH:GUEST[:rw]", value_parser = parse_dir)]
        dirs: Vec<pb::DirGrant>,
        /// A WASI app's log ring (the output `instance logs` shows), e.g. 256KiB; default 64KiB.
        #[arg(long, value_parser = |s: &str| broker::region::parse_size(s).map_err(|e| e.to_string()))]
        log_bytes: Option<u64>,
    },
    /// Show what a WASI app printed (stdout and stderr, the last --log-bytes of it kept by the daemon);
    /// with -f, keep following new lines until interrupted. Lines on stderr are marked `stderr| `.
    Logs {
        /// The instance.
        name: String,
        /// Keep the stream open and print lines as the app writes them.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines kept.
        #[arg(long, value_name = "N")]
        tail: Option<u32>,
    },
    /// Call an exported function: arguments as `i32:5`, `i64:-1`, `f32:1.5`, `f64:2` (plain numbers are i32).
    Call {
        /// The instance.
        name: String,
        /// The exported function.
        export: String,
        /// Arguments.
        args: Vec<String>,
    },
    /// Stop an instance: its running call is interrupted and its memory and handles freed. It stays
    /// listed as stopped, keeping its name, module and config (and its slot of the `instances` quota),
    /// until `restart` runs it again or `delete` removes it; it stays stopped across a daemon restart.
    Stop {
        /// The instance.
        name: String,
    },
    /// Restart a trapped or stopped instance (a running one starts afresh); its grants are applied
    /// again.
    Restart {
        /// The instance.
        name: String,
    },
    /// Delete an instance, stopping it first if it runs: its name and its slot of the `instances`
    /// quota are freed, and grants to it are forgotten. Needed before deleting its module.
    Delete {
        /// The instance.
        name: String,
    },
    /// Show an instance's state, counters and last trap.
    Status {
        /// The instance.
        name: String,
    },
    /// List instances.
    List,
}

#[derive(Debug, Subcommand)]
enum RegionVerb {
    /// Create a region.
    Create {
        /// The region's name.
        name: String,
        /// Size in bytes.
        #[arg(long)]
        size: u64,
        /// handle, mirror or shared.
        #[arg(long, default_value = "handle")]
        mode: broker::Mode,
        /// reject, last-writer-wins or merge (mirror commits).
        #[arg(long, default_value = "reject")]
        policy: broker::mode::ConflictPolicy,
        /// Back the region by a file in the daemon's state dir.
        #[arg(long)]
        persistent: bool,
        /// Rights every app of the tenant opens it with by name: letters of r, w, m, g, n (default:
        /// none; then only the instances it is granted to may open it).
        #[arg(long, default_value = "")]
        members: String,
        /// `node` (this node alone) or `cluster`: replicated through the daemon's cluster
        /// (`broker serve --cluster`), this node its home, every other node with the tenant a replica.
        #[arg(long, default_value = "node", value_parser = ["node", "cluster"])]
        replication: String,
    },
    /// Set the rights every app of the tenant opens the region with by name (letters of r, w, m, g,
    /// n; "" for none). Handles opened through the old rights are revoked; grants are untouched.
    Members {
        /// The region.
        name: String,
        /// Rights: letters of r (read), w (write), m (map), g (grant), n (watch); "" for none.
        rights: String,
    },
    /// List regions.
    List,
    /// Show a region.
    Info {
        /// The region.
        name: String,
    },
    /// Read bytes (printed as hex).
    Read {
        /// The region.
        name: String,
        /// Start offset.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Number of bytes.
        #[arg(long, default_value_t = 64)]
        len: u64,
    },
    /// Write bytes given as hex.
    Write {
        /// The region.
        name: String,
        /// Start offset.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// The bytes, as hex (e.g. 2a00ff).
        #[arg(long)]
        hex: String,
    },
    /// Grant an instance rights over the region (or a range of it).
    Grant {
        /// The region.
        name: String,
        /// The instance: `name` or `tenant/name`.
        instance: String,
        /// Rights: letters of r (read), w (write), m (map), g (grant), n (watch).
        #[arg(long, default_value = "r")]
        rights: String,
        /// Start of the range.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Length of the range (default: to the end).
        #[arg(long)]
        len: Option<u64>,
    },
    /// Revoke a grant (or, without --grant, every capability to the region).
    Revoke {
        /// The region.
        name: String,
        /// The grant id printed by `region grant`.
        #[arg(long)]
        grant: Option<u64>,
    },
    /// Destroy a region.
    Destroy {
        /// The region.
        name: String,
    },
    /// Make a persistent region durable (msync).
    Flush {
        /// The region.
        name: String,
    },
    /// Print changes to a region as they happen.
    Watch {
        /// The region.
        name: String,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

/// Why a command failed, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The daemon could not be reached.
    #[error("could not connect to {addr}: {reason}\nhint: is `broker serve` running there? Set --addr or BROKER_ADDR.")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The daemon refused the request.
    #[error("{what} failed: {message}{hint}")]
    Rpc {
        /// The request.
        what: &'static str,
        /// The server's message.
        message: String,
        /// What to do.
        hint: String,
    },
    /// A local problem: a file, an argument.
    #[error("{0}")]
    Local(String),
    /// The daemon failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

fn rpc_error(what: &'static str, s: Status) -> CliError {
    // A call that reached the wrong node of a cluster names the right one (issue 19).
    let node = |key: &str| s.metadata().get(key).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let (Some(node), Some(address)) = (node("broker-node"), node("broker-node-address")) {
        let hint =
            format!("\nhint: run it against node {node}: --addr http://{address} with a token of that node.");
        return CliError::Rpc { what, message: s.message().to_owned(), hint };
    }
    let hint = match s.code() {
        Code::Unauthenticated => {
            "\nhint: pass --token or set BROKER_TOKEN (the admin token is in <state-dir>/admin.token)."
        }
        Code::PermissionDenied => {
            "\nhint: this needs the admin token, or a token of the tenant that owns the object."
        }
        Code::NotFound => "\nhint: check the name and --tenant (list with `broker <noun> list`).",
        Code::InvalidArgument => "\nhint: see `broker <noun> <verb> --help` for valid values.",
        Code::ResourceExhausted => {
            "\nhint: a quota is exhausted; see `broker stats` and `broker tenant quotas`."
        }
        Code::AlreadyExists => "\nhint: pick another name, or delete the existing object first.",
        Code::FailedPrecondition => {
            "\nhint: the object is not in a state that allows this (e.g. restart a trapped or stopped \
             instance, or delete a module's instances before the module)."
        }
        _ => "",
    };
    CliError::Rpc { what, message: s.message().to_owned(), hint: hint.to_owned() }
}

fn scenario_command(verb: ScenarioVerb, out: &mut dyn Write) -> Result<bool, CliError> {
    let write = |out: &mut dyn Write, text: &str| {
        out.write_all(text.as_bytes()).map_err(|e| CliError::Local(format!("writing the output: {e}")))
    };
    match verb {
        ScenarioVerb::List => {
            for (name, text) in broker_scenario::BUILTINS {
                let description =
                    broker_scenario::parse(text, name, None).map(|s| s.description).unwrap_or_default();
                write(out, &format!("{name:<12} {description}\n"))?;
            }
            Ok(true)
        }
        ScenarioVerb::Show { name } => {
            let text = broker_scenario::builtin::builtin_text(&name).ok_or_else(|| {
                let known: Vec<_> = broker_scenario::BUILTINS.iter().map(|(n, _)| *n).collect();
                CliError::Local(format!("no built-in scenario {name:?} (known: {})", known.join(", ")))
            })?;
            write(out, text)?;
            Ok(true)
        }
        ScenarioVerb::Check { scenario: name } => {
            let s = broker_scenario::load(&name).map_err(|e| CliError::Local(e.to_string()))?;
            write(
                out,
                &format!(
                    "{name}: ok ({} tenants, {} instances, {} regions, {} phases)\n",
                    s.tenants.len(),
                    s.instances.len(),
                    s.regions.len(),
                    s.phases.len()
                ),
            )?;
            Ok(true)
        }
        ScenarioVerb::Run(args) => {
            let s = broker_scenario::load(&args.scenario).map_err(|e| CliError::Local(e.to_string()))?;
            let modes = args
                .modes
                .as_deref()
                .map(broker_scenario::spec::parse_modes)
                .transpose()
                .map_err(|e| CliError::Local(format!("--modes: {e}")))?;
            let opts = broker_scenario::RunOptions {
                modes,
                scale: args.scale,
                workers: args.workers.and_then(|w| usize::try_from(w).ok()),
                worker_priority: args.worker_priority,
                cancel: broker_scenario::Cancel::new(),
                nats: args.nats.clone(),
            };
            let progress: Box<dyn broker_scenario::metrics::ProgressSink> = if args.quiet {
                Box::new(broker_scenario::metrics::NoProgress)
            } else {
                Box::new(broker_scenario::metrics::TerminalProgress::stderr())
            };
            let report = broker_scenario::run(&s, &opts, progress.as_ref())
                .map_err(|e| CliError::Local(e.to_string()))?;
            if args.json {
                let json = serde_json::to_string_pretty(&report)
                    .map_err(|e| CliError::Local(format!("encoding the report: {e}")))?;
                write(out, &format!("{json}\n"))?;
            } else {
                write(out, &report.render())?;
            }
            let files = report.write_files(&args.out).map_err(|e| CliError::Local(e.to_string()))?;
            if !args.json {
                let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                write(out, &format!("wrote {}\n", names.join(", ")))?;
                write(out, if report.ok() { "all checks passed\n" } else { "SOME CHECKS FAILED\n" })?;
            }
            Ok(report.ok())
        }
    }
}

/// Entry point of the binary: parses arguments, runs the command, prints errors, returns the exit code.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut out = std::io::stdout();
    match run(cli, &mut out) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a parsed command, writing its output to `out`; `Ok(false)` means it ran but reports failure.
///
/// # Errors
/// [`CliError`] with an actionable message.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<bool, CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Local(format!("cannot start the async runtime: {e}")))?;
    match cli.command {
        Command::Demo { readings } => {
            let report = crate::demo::run(readings, out)
                .map_err(|e| CliError::Local(format!("the demo could not run: {e}")))?;
            Ok(report.ok())
        }
        Command::Bench(args) => bench_main(args, out),
        Command::Serve(args) => rt.block_on(serve_main(args, out)).map(|()| true),
        Command::Cluster { verb: ClusterVerb::Status { cluster, json } } => {
            rt.block_on(cluster_status(&cluster, json, out)).map(|()| true)
        }
        Command::Tenant { verb, conn } => rt.block_on(tenant(verb, &conn, out)).map(|()| true),
        Command::Module { verb, conn } => rt.block_on(module(verb, &conn, out)).map(|()| true),
        Command::Instance { verb, conn } => rt.block_on(instance(verb, &conn, out)).map(|()| true),
        Command::Region { verb, conn } => rt.block_on(region(verb, &conn, out)).map(|()| true),
        Command::Stats { conn } => rt.block_on(stats(&conn, out)).map(|()| true),
        Command::Scenario { verb } => scenario_command(verb, out),
        Command::Loadtest { clients, seconds, json } => {
            let clients = usize::try_from(clients).unwrap_or(16);
            let mut progress = |line: String| eprintln!("{line}");
            let report = rt
                .block_on(crate::loadtest::run(clients, seconds, &mut progress))
                .map_err(CliError::Local)?;
            let io = |e: std::io::Error| CliError::Local(format!("cannot write output: {e}"));
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report).unwrap_or_default()).map_err(io)?;
            } else {
                writeln!(
                    out,
                    "clients {}  seconds {}  ops {}  errors {}  ops/s {:.0}",
                    report.clients, report.seconds, report.ops, report.errors, report.ops_per_sec
                )
                .map_err(io)?;
                writeln!(
                    out,
                    "latency p50 {:.0} us  p99 {:.0} us  max {:.0} us",
                    report.p50_us, report.p99_us, report.max_us
                )
                .map_err(io)?;
                writeln!(out, "rss start {} MiB  end {} MiB", report.rss_start >> 20, report.rss_end >> 20)
                    .map_err(io)?;
            }
            Ok(report.errors == 0)
        }
    }
}

/// The daemon's settings: the config file's (or the defaults), with the flags over them.
fn serve_config(args: ServeArgs) -> Result<ServeConfig, CliError> {
    let mut config = match &args.config {
        Some(path) => ServeConfig::load(path)?,
        None => ServeConfig::default(),
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.state_dir {
        config.state_dir = Some(d);
    }
    if let Some(w) = args.workers {
        config.workers = w;
    }
    if let Some(t) = args.trampolines {
        config.trampolines = t;
    }
    if args.no_ui {
        config.ui = false;
    }
    if let Some(p) = args.worker_priority {
        config.worker_priority = p;
    }
    Ok(config)
}

/// Runs the daemon. Once the listener is bound, prints exactly one line `listening on <addr>` to `out`
/// (and flushes it), so a supervisor or test that asked for port 0 learns the port without polling.
async fn serve_main(args: ServeArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let membership_of = args.cluster.clone().zip(args.node.clone());
    let config = serve_config(args)?;
    let (token, source) = config.admin_token()?;
    if source == "generated for this run" {
        eprintln!("admin token (this run only; use --state-dir to keep one): {token}");
    } else {
        tracing::info!(source = %source, "admin token loaded");
    }
    let workers = if config.workers == 0 { BrokerConfig::default().workers } else { config.workers };
    let broker = Arc::new(
        Broker::new(BrokerConfig {
            workers,
            ui: config.ui_config(),
            worker_priority: config.worker_priority,
            // WASI apps' granted directories live with the rest of the state.
            app_data: config.state_dir.as_ref().map(|d| d.join("app-data")),
            // The daemon's writes come through gRPC, which uses `write_region_queued` anyway.
            ..BrokerConfig::default()
        })
        .map_err(|e| CliError::Local(e.to_string()))?,
    );
    let replicating = Arc::clone(&broker);
    let plane =
        Arc::new(ControlPlane::open(broker, &token, config.state_dir.clone()).map_err(ServeError::from)?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| CliError::Local(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::Local(format!("cannot read the bound address of {}: {e}", config.listen)))?;
    // Install the signal handlers before announcing the address: a SIGTERM sent as soon as the line is
    // read must take the graceful path (drain, flush), not the default action that kills the process.
    let shutdown = shutdown_signal()?;
    // Joined before the address is announced, so a node that cannot join never looks up.
    let joined = match membership_of {
        Some((url, node)) => {
            let joined = crate::cluster::Joined::join(&url, &node, &addr.to_string(), replicating)
                .await
                .map_err(|e| CliError::Local(format!("cannot join the cluster: {e}")))?;
            plane.set_cluster(joined.plane_cluster());
            tracing::info!(node = %node, cluster = %url, "joined the cluster");
            Some(joined)
        }
        None => None,
    };
    writeln!(out, "listening on {addr}")
        .and_then(|()| out.flush())
        .map_err(|e| CliError::Local(format!("cannot write output: {e}")))?;
    serve(plane, listener, &config, shutdown).await?;
    if let Some(j) = joined {
        j.leave().await;
    }
    Ok(())
}

/// `broker cluster status`: the live nodes as the cluster's KV bucket has them, and the replicated
/// regions with what the change stream holds of each.
async fn cluster_status(url: &str, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let nodes = broker_cluster::status(url).await.map_err(|e| CliError::Local(e.to_string()))?;
    let regions = broker_cluster::regions(url).await.map_err(|e| CliError::Local(e.to_string()))?;
    let io = |e: std::io::Error| CliError::Local(format!("cannot write output: {e}"));
    if json {
        let status = serde_json::json!({ "nodes": nodes, "regions": regions });
        writeln!(out, "{}", serde_json::to_string_pretty(&status).unwrap_or_default()).map_err(io)?;
        return Ok(());
    }
    if nodes.is_empty() {
        writeln!(out, "no live nodes in the cluster at {url}").map_err(io)?;
        return Ok(());
    }
    writeln!(out, "{:<20} {:<22} {:>9} {:>7}  tenants", "node", "address", "instances", "regions")
        .map_err(io)?;
    for n in &nodes {
        writeln!(
            out,
            "{:<20} {:<22} {:>9} {:>7}  {}",
            n.node,
            n.address,
            n.load.instances,
            n.load.regions,
            n.load.tenants.join(",")
        )
        .map_err(io)?;
    }
    if !regions.is_empty() {
        writeln!(
            out,
            "\n{:<32} {:>12} {:<8} {:<20} {:>5} {:>9}",
            "replicated region", "size", "mode", "home", "epoch", "messages"
        )
        .map_err(io)?;
        for status in &regions {
            let r = &status.record;
            let alive = if nodes.iter().any(|n| n.node == r.home) { "" } else { " (down)" };
            let name = format!("{}/{}", r.tenant, r.name);
            let messages = status.messages.map_or_else(|| "?".to_string(), |m| m.to_string());
            writeln!(
                out,
                "{name:<32} {:>12} {:<8} {:<20} {:>5} {messages:>9}",
                r.size,
                r.mode,
                format!("{}{alive}", r.home),
                r.epoch
            )
            .map_err(io)?;
        }
    }
    Ok(())
}

/// Registers for SIGINT and SIGTERM now and returns a future that resolves on the first of them.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| CliError::Local(format!("cannot handle {name}: {e}")))
    };
    let mut term = listen(SignalKind::terminate(), "SIGTERM")?;
    let mut interrupt = listen(SignalKind::interrupt(), "SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("shutting down: draining calls");
    })
}

async fn client(conn: &Conn) -> Result<BrokerClient<Channel>, CliError> {
    let endpoint = tonic::transport::Endpoint::from_shared(conn.addr.clone())
        .map_err(|e| CliError::Local(format!("invalid --addr {}: {e}", conn.addr)))?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| CliError::Connect { addr: conn.addr.clone(), reason: e.to_string() })?;
    Ok(BrokerClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
}

fn req<T>(conn: &Conn, msg: T) -> Result<Request<T>, CliError> {
    let mut r = Request::new(msg);
    if let Some(t) = &conn.token {
        let v = format!("Bearer {t}")
            .parse()
            .map_err(|_| CliError::Local("the token has characters a header cannot carry".into()))?;
        r.metadata_mut().insert("authorization", v);
    }
    Ok(r)
}

fn print(out: &mut dyn Write, conn: &Conn, value: &Json, table: &[Vec<String>]) -> Result<(), CliError> {
    let io = |e: std::io::Error| CliError::Local(format!("cannot write output: {e}"));
    if conn.json {
        writeln!(out, "{}", serde_json::to_string_pretty(value).unwrap_or_default()).map_err(io)?;
        return Ok(());
    }
    let widths: Vec<usize> = (0..table.first().map_or(0, Vec::len))
        .map(|c| table.iter().map(|row| row.get(c).map_or(0, String::len)).max().unwrap_or(0))
        .collect();
    for row in table {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        writeln!(out, "{}", line.join("  ").trim_end()).map_err(io)?;
    }
    Ok(())
}

/// The quotas to send: `base` (the tenant's current quotas, or the defaults) with the flags given
/// applied.
///
/// # Errors
/// [`CliError::Local`] for a flag the broker would refuse (a weight out of range), naming the field.
fn quotas_msg(q: &QuotaArgs, base: Option<&pb::Quotas>) -> Result<pb::Quotas, CliError> {
    let mut quotas = base.map_or_else(Quotas::default, broker_control::quotas_from_pb);
    for (f, v) in &q.0 {
        f.set(&mut quotas, *v).map_err(|e| CliError::Local(format!("quotas.{}: {e}", f.name)))?;
    }
    Ok(broker_control::quotas_to_pb(&quotas))
}

fn tenant_json(t: &pb::Tenant) -> Json {
    let q = t.quotas.as_ref().map_or_else(Quotas::default, broker_control::quotas_from_pb);
    let u = t.usage.unwrap_or_default();
    json!({
        "name": t.name,
        "quotas": Quotas::FIELDS.iter().map(|f| (f.name.to_owned(), json!(f.get(&q)))).collect::<serde_json::Map<_, _>>(),
        "usage": {"region_bytes": u.region_bytes, "regions": u.regions, "instances": u.instances, "handles": u.handles, "memory_bytes": u.memory_bytes, "windows": u.windows, "modules": u.modules, "module_bytes": u.module_bytes, "compiled_bytes": u.compiled_bytes, "trampolines": u.trampolines, "watches": u.watches, "events": u.events},
    })
}

fn tenant_row(t: &pb::Tenant) -> Vec<String> {
    let q = t.quotas.as_ref().map_or_else(Quotas::default, broker_control::quotas_from_pb);
    let u = t.usage.unwrap_or_default();
    vec![
        t.name.clone(),
        format!("{}/{}", u.regions, q.regions),
        format!("{}/{}", u.region_bytes, q.region_bytes),
        format!("{}/{}", u.instances, q.instances),
        format!("{}/{}", u.handles, q.handles),
        format!("{}/{}", u.memory_bytes, q.memory_bytes),
    ]
}

const TENANT_HEADER: [&str; 6] = ["TENANT", "REGIONS", "REGION BYTES", "INSTANCES", "HANDLES", "MEMORY"];

fn header(cols: &[&str]) -> Vec<String> {
    cols.iter().map(|s| (*s).to_owned()).collect()
}

async fn tenant(verb: TenantVerb, conn: &Conn, out: &mut dyn Write) -> Result<(), CliError> {
    let mut c = client(conn).await?;
    let tenants: Vec<pb::Tenant> = match verb {
        TenantVerb::Create { name, quotas } => {
            let q = quotas_msg(&quotas, None)?;
            vec![c
                .create_tenant(req(conn, pb::CreateTenantRequest { name, quotas: Some(q) })?)
                .await
                .map_err(|s| rpc_error("tenant create", s))?
                .into_inner()]
        }
        TenantVerb::List => {
            c.list_tenants(req(conn, pb::ListTenantsRequest {})?)
                .await
                .map_err(|s| rpc_error("tenant list", s))?
                .into_inner()
                .tenants
        }
        TenantVerb::Quotas { name, quotas } => {
            let current = c
                .list_tenants(req(conn, pb::ListTenantsRequest {})?)
                .await
                .map_err(|s| rpc_error("tenant quotas", s))?
                .into_inner();
            let base = current.tenants.iter().find(|t| t.name == name).and_then(|t| t.quotas);
            let q = quotas_msg(&quotas, base.as_ref())?;
            vec![c
                .set_quotas(req(conn, pb::SetQuotasRequest { tenant: name, quotas: Some(q) })?)
                .await
                .map_err(|s| rpc_error("tenant quotas", s))?
                .into_inner()]
        }
        TenantVerb::Token { name, rotate } => {
            let t = c
                .issue_token(req(conn, pb::IssueTokenRequest { tenant: name.clone(), rotate })?)
                .await
                .map_err(|s| rpc_error("tenant token", s))?
                .into_inner();
            let value = json!({"tenant": name, "token": t.token, "rotated": rotate});
            return print(out, conn, &value, &[vec!["TOKEN".into()], vec![t.token]]);
        }
    };
    let value = Json::Array(tenants.iter().map(tenant_json).collect());
    let mut table = vec![header(&TENANT_HEADER)];
    table.extend(tenants.iter().map(tenant_row));
    print(out, conn, &value, &table)
}

async fn module(verb: ModuleVerb, conn: &Conn, out: &mut dyn Write) -> Result<(), CliError> {
    let mut c = client(conn).await?;
    let tenant = conn.tenant.clone();
    let modules = match verb {
        ModuleVerb::Upload { name, file } => {
            let wasm = std::fs::read(&file)
                .map_err(|e| CliError::Local(format!("cannot read {}: {e}", file.display())))?;
            vec![c
                .upload_module(req(conn, pb::UploadModuleRequest { tenant, name, wasm })?)
                .await
                .map_err(|s| rpc_error("module upload", s))?
                .into_inner()]
        }
        ModuleVerb::List => {
            c.list_modules(req(conn, pb::ListModulesRequest { tenant })?)
                .await
                .map_err(|s| rpc_error("module list", s))?
                .into_inner()
                .modules
        }
        ModuleVerb::Delete { name } => {
            c.delete_module(req(conn, pb::ModuleRef { tenant, name: name.clone() })?)
                .await
                .map_err(|s| rpc_error("module delete", s))?;
            return print(out, conn, &json!({"deleted": name}), &[vec![format!("deleted module {name}")]]);
        }
    };
    let value = Json::Array(
        modules
            .iter()
            .map(|m| json!({"tenant": m.tenant, "name": m.name, "size": m.size, "exports": m.exports}))
            .collect(),
    );
    let mut table = vec![header(&["MODULE", "SIZE", "EXPORTS"])];
    table.extend(modules.iter().map(|m| vec![m.name.clone(), m.size.to_string(), m.exports.join(",")]));
    print(out, conn, &value, &table)
}

fn parse_arg(s: &str) -> Result<pb::Value, CliError> {
    use pb::value::Value as V;
    let bad = || CliError::Local(format!("bad argument {s:?}: use i32:5, i64:-1, f32:1.5 or f64:2"));
    let (ty, v) = s.split_once(':').unwrap_or(("i32", s));
    let value = match ty {
        "i32" => V::I32(v.parse().map_err(|_| bad())?),
        "i64" => V::I64(v.parse().map_err(|_| bad())?),
        "f32" => V::F32(v.parse().map_err(|_| bad())?),
        "f64" => V::F64(v.parse().map_err(|_| bad())?),
        _ => return Err(bad()),
    };
    Ok(pb::Value { value: Some(value) })
}

fn value_json(v: &pb::Value) -> Json {
    use pb::value::Value as V;
    match v.value {
        Some(V::I32(x)) => json!({"i32": x}),
        Some(V::I64(x)) => json!({"i64": x}),
        Some(V::F32(x)) => json!({"f32": x}),
        Some(V::F64(x)) => json!({"f64": x}),
        None => Json::Null,
    }
}

/// A `--dir PATH:GUEST[:rw]` value.
fn parse_dir(s: &str) -> Result<pb::DirGrant, String> {
    let (rest, writable) = match s.strip_suffix(":rw") {
        Some(rest) => (rest, true),
        None => (s.strip_suffix(":ro").unwrap_or(s), false),
    };
    let (path, guest) = rest.split_once(':').ok_or_else(|| format!("{s:?} is not PATH:GUEST[:rw]"))?;
    Ok(pb::DirGrant { path: path.into(), guest_path: guest.into(), writable })
}

fn state_name(state: i32) -> &'static str {
    match pb::InstanceState::try_from(state) {
        Ok(pb::InstanceState::Running) => "running",
        Ok(pb::InstanceState::Trapped) => "trapped",
        Ok(pb::InstanceState::Stopped) => "stopped",
        _ => "unknown",
    }
}

async fn instance(verb: InstanceVerb, conn: &Conn, out: &mut dyn Write) -> Result<(), CliError> {
    let mut c = client(conn).await?;
    let tenant = conn.tenant.clone();
    let r = |name: String| pb::InstanceRef { tenant: tenant.clone(), name };
    let instances = match verb {
        InstanceVerb::Start { name, module, timeout_ms, max_memory, args, env, dirs, log_bytes } => {
            let config = pb::InstanceConfig {
                call_timeout_ms: timeout_ms.unwrap_or(0),
                max_memory_bytes: max_memory.unwrap_or(0),
                args,
                env,
                log_bytes: log_bytes.unwrap_or(0),
                dirs,
            };
            vec![c
                .start_instance(req(
                    conn,
                    pb::StartInstanceRequest { tenant: tenant.clone(), module, name, config: Some(config) },
                )?)
                .await
                .map_err(|s| rpc_error("instance start", s))?
                .into_inner()]
        }
        InstanceVerb::Call { name, export, args } => {
            let args = args.iter().map(|a| parse_arg(a)).collect::<Result<Vec<_>, _>>()?;
            let res = c
                .call_instance(req(
                    conn,
                    pb::CallInstanceRequest { tenant: tenant.clone(), instance: name, export, args },
                )?)
                .await
                .map_err(|s| rpc_error("instance call", s))?
                .into_inner();
            let value = Json::Array(res.results.iter().map(value_json).collect());
            let shown: Vec<String> = res.results.iter().map(|v| value_json(v).to_string()).collect();
            return print(out, conn, &value, &[vec!["RESULTS".into()], vec![shown.join(" ")]]);
        }
        InstanceVerb::Logs { name, follow, tail } => {
            let request =
                pb::InstanceLogsRequest { instance: Some(r(name)), follow, tail: tail.unwrap_or(0) };
            let mut stream = c
                .instance_logs(req(conn, request)?)
                .await
                .map_err(|s| rpc_error("instance logs", s))?
                .into_inner();
            let io = |e: std::io::Error| CliError::Local(format!("cannot write output: {e}"));
            while let Some(l) = stream.message().await.map_err(|s| rpc_error("instance logs", s))? {
                let stderr = l.stream == i32::from(pb::LogStream::Stderr);
                let text = String::from_utf8_lossy(&l.text);
                if conn.json {
                    let stream = if stderr { "stderr" } else { "stdout" };
                    let value =
                        json!({"seq": l.seq, "stream": stream, "text": text, "cut": l.cut, "lost": l.lost});
                    writeln!(out, "{value}").map_err(io)?;
                } else {
                    if l.lost > 0 {
                        writeln!(out, "... {} lines overwritten before they were read", l.lost)
                            .map_err(io)?;
                    }
                    let mark = if stderr { "stderr| " } else { "" };
                    let cont = if l.cut { " \\" } else { "" };
                    writeln!(out, "{mark}{text}{cont}").map_err(io)?;
                }
                out.flush().map_err(io)?;
            }
            return Ok(());
        }
        InstanceVerb::Stop { name } => {
            c.stop_instance(req(conn, r(name.clone()))?).await.map_err(|s| rpc_error("instance stop", s))?;
            return print(out, conn, &json!({"stopped": name}), &[vec![format!("stopped instance {name}")]]);
        }
        InstanceVerb::Delete { name } => {
            c.delete_instance(req(conn, r(name.clone()))?)
                .await
                .map_err(|s| rpc_error("instance delete", s))?;
            return print(out, conn, &json!({"deleted": name}), &[vec![format!("deleted instance {name}")]]);
        }
        InstanceVerb::Restart { name } => vec![c
            .restart_instance(req(conn, r(name))?)
            .await
            .map_err(|s| rpc_error("instance restart", s))?
            .into_inner()],
        InstanceVerb::Status { name } => vec![c
            .get_instance(req(conn, r(name))?)
            .await
            .map_err(|s| rpc_error("instance status", s))?
            .into_inner()],
        InstanceVerb::List => {
            c.list_instances(req(conn, pb::ListInstancesRequest { tenant: tenant.clone() })?)
                .await
                .map_err(|s| rpc_error("instance list", s))?
                .into_inner()
                .instances
        }
    };
    let value = Json::Array(
        instances
            .iter()
            .map(|i| json!({"tenant": i.tenant, "name": i.name, "module": i.module, "state": state_name(i.state), "calls": i.calls, "traps": i.traps, "restarts": i.restarts, "last_trap": i.last_trap}))
            .collect(),
    );
    let mut table = vec![header(&["INSTANCE", "MODULE", "STATE", "CALLS", "TRAPS", "LAST TRAP"])];
    table.extend(instances.iter().map(|i| {
        vec![
            i.name.clone(),
            i.module.clone(),
            state_name(i.state).into(),
            i.calls.to_string(),
            i.traps.to_string(),
            i.last_trap.clone(),
        ]
    }));
    print(out, conn, &value, &table)
}

fn region_json(r: &pb::Region) -> Json {
    let mode = pb::Mode::try_from(r.mode).map_or("unknown", |m| m.as_str_name());
    let backing = pb::Backing::try_from(r.backing).map_or("unknown", |b| b.as_str_name());
    let policy = pb::ConflictPolicy::try_from(r.policy).map_or("unknown", |p| p.as_str_name());
    json!({"tenant": r.tenant, "name": r.name, "size": r.size, "mode": mode, "policy": policy, "backing": backing, "version": r.version, "members": rights_letters(r.member_rights)})
}

/// Rights bits as the letters `--rights` takes (r, w, m, g, n); "-" for none.
fn rights_letters(bits: u32) -> String {
    use broker_abi::rights::{GRANT, MAP, READ, WATCH, WRITE};
    let letters: String = [(READ, 'r'), (WRITE, 'w'), (MAP, 'm'), (GRANT, 'g'), (WATCH, 'n')]
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, c)| *c)
        .collect();
    if letters.is_empty() {
        "-".into()
    } else {
        letters
    }
}

fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_lowercase().replace('_', "-")
}

fn parse_rights(s: &str) -> Result<u32, CliError> {
    s.chars().try_fold(0u32, |acc, c| {
        let bit = match c {
            'r' => broker_abi::rights::READ,
            'w' => broker_abi::rights::WRITE,
            'm' => broker_abi::rights::MAP,
            'g' => broker_abi::rights::GRANT,
            'n' => broker_abi::rights::WATCH,
            _ => return Err(CliError::Local(format!("bad right {c:?}: use letters of r, w, m, g, n"))),
        };
        Ok(acc | bit)
    })
}

fn parse_hex(s: &str) -> Result<Vec<u8>, CliError> {
    hex::decode(s)
        .map_err(|e| CliError::Local(format!("bad hex {s:?} ({e}): use pairs of hex digits, e.g. 2a00ff")))
}

async fn region(verb: RegionVerb, conn: &Conn, out: &mut dyn Write) -> Result<(), CliError> {
    let mut c = client(conn).await?;
    let tenant = conn.tenant.clone();
    let rr = |name: String| pb::RegionRef { tenant: tenant.clone(), name };
    let regions = match verb {
        RegionVerb::Create { name, size, mode, policy, persistent, members, replication } => {
            let member_rights = parse_rights(&members)?;
            let mode = match mode {
                broker::Mode::Handle => pb::Mode::Handle,
                broker::Mode::Mirror => pb::Mode::Mirror,
                broker::Mode::Shared => pb::Mode::Shared,
            };
            let policy = match policy {
                broker::mode::ConflictPolicy::Reject => pb::ConflictPolicy::Reject,
                broker::mode::ConflictPolicy::LastWriterWins => pb::ConflictPolicy::LastWriterWins,
                broker::mode::ConflictPolicy::Merge => pb::ConflictPolicy::Merge,
            };
            let backing = if persistent { pb::Backing::Persistent } else { pb::Backing::Ephemeral };
            let msg = pb::CreateRegionRequest {
                tenant: tenant.clone(),
                name,
                size,
                mode: mode.into(),
                policy: policy.into(),
                backing: backing.into(),
                member_rights,
                replication: if replication == "cluster" {
                    pb::Replication::Cluster.into()
                } else {
                    pb::Replication::Node.into()
                },
            };
            vec![c
                .create_region(req(conn, msg)?)
                .await
                .map_err(|s| rpc_error("region create", s))?
                .into_inner()]
        }
        RegionVerb::Members { name, rights } => {
            let rights = parse_rights(&rights)?;
            vec![c
                .set_member_rights(req(conn, pb::SetMemberRightsRequest { region: Some(rr(name)), rights })?)
                .await
                .map_err(|s| rpc_error("region members", s))?
                .into_inner()]
        }
        RegionVerb::List => {
            c.list_regions(req(conn, pb::ListRegionsRequest { tenant: tenant.clone() })?)
                .await
                .map_err(|s| rpc_error("region list", s))?
                .into_inner()
                .regions
        }
        RegionVerb::Info { name } => vec![c
            .get_region(req(conn, rr(name))?)
            .await
            .map_err(|s| rpc_error("region info", s))?
            .into_inner()],
        RegionVerb::Read { name, offset, len } => {
            let res = c
                .read_region(req(conn, pb::ReadRegionRequest { region: Some(rr(name)), offset, len })?)
                .await
                .map_err(|s| rpc_error("region read", s))?
                .into_inner();
            let hex = hex::encode(&res.data);
            return print(
                out,
                conn,
                &json!({"version": res.version, "offset": offset, "hex": hex}),
                &[vec![hex]],
            );
        }
        RegionVerb::Write { name, offset, hex } => {
            let data = parse_hex(&hex)?;
            let res = c
                .write_region(req(conn, pb::WriteRegionRequest { region: Some(rr(name)), offset, data })?)
                .await
                .map_err(|s| rpc_error("region write", s))?
                .into_inner();
            return print(
                out,
                conn,
                &json!({"version": res.version}),
                &[vec![format!("version {}", res.version)]],
            );
        }
        RegionVerb::Grant { name, instance, rights, offset, len } => {
            let rights = parse_rights(&rights)?;
            let res = c
                .grant(req(conn, pb::GrantRequest { region: Some(rr(name)), instance, rights, offset, len })?)
                .await
                .map_err(|s| rpc_error("region grant", s))?
                .into_inner();
            return print(
                out,
                conn,
                &json!({"grant_id": res.grant_id}),
                &[vec![format!("grant {}", res.grant_id)]],
            );
        }
        RegionVerb::Revoke { name, grant } => {
            c.revoke(req(conn, pb::RevokeRequest { region: Some(rr(name)), grant_id: grant.unwrap_or(0) })?)
                .await
                .map_err(|s| rpc_error("region revoke", s))?;
            return print(out, conn, &json!({"revoked": grant.unwrap_or(0)}), &[vec!["revoked".into()]]);
        }
        RegionVerb::Destroy { name } => {
            c.destroy_region(req(conn, rr(name.clone()))?)
                .await
                .map_err(|s| rpc_error("region destroy", s))?;
            return print(
                out,
                conn,
                &json!({"destroyed": name}),
                &[vec![format!("destroyed region {name}")]],
            );
        }
        RegionVerb::Flush { name } => {
            let res = c
                .flush_region(req(conn, rr(name))?)
                .await
                .map_err(|s| rpc_error("region flush", s))?
                .into_inner();
            let text = if res.persistent { "flushed" } else { "ephemeral region: nothing to flush" };
            return print(out, conn, &json!({"persistent": res.persistent}), &[vec![text.into()]]);
        }
        RegionVerb::Watch { name, count } => {
            let mut stream = c
                .watch_region(req(conn, rr(name))?)
                .await
                .map_err(|s| rpc_error("region watch", s))?
                .into_inner();
            let mut seen = 0u64;
            while count.is_none_or(|n| seen < n) {
                let Some(e) = stream.message().await.map_err(|s| rpc_error("region watch", s))? else {
                    break;
                };
                let value =
                    json!({"version": e.version, "offset": e.offset, "len": e.len, "missed": e.missed});
                print(
                    out,
                    conn,
                    &value,
                    &[vec![format!(
                        "version {} offset {} len {} missed {}",
                        e.version, e.offset, e.len, e.missed
                    )]],
                )?;
                seen += 1;
            }
            return Ok(());
        }
    };
    let value = Json::Array(regions.iter().map(region_json).collect());
    let mut table = vec![header(&["REGION", "SIZE", "MODE", "POLICY", "BACKING", "VERSION", "MEMBERS"])];
    table.extend(regions.iter().map(|r| {
        vec![
            r.name.clone(),
            r.size.to_string(),
            short(pb::Mode::try_from(r.mode).map_or("?", |m| m.as_str_name()), "MODE_"),
            short(
                pb::ConflictPolicy::try_from(r.policy).map_or("?", |p| p.as_str_name()),
                "CONFLICT_POLICY_",
            ),
            short(pb::Backing::try_from(r.backing).map_or("?", |b| b.as_str_name()), "BACKING_"),
            r.version.to_string(),
            rights_letters(r.member_rights),
        ]
    }));
    print(out, conn, &value, &table)
}

async fn stats(conn: &Conn, out: &mut dyn Write) -> Result<(), CliError> {
    let mut c = client(conn).await?;
    let s = c
        .stats(req(conn, pb::StatsRequest { tenant: conn.tenant.clone() })?)
        .await
        .map_err(|s| rpc_error("stats", s))?
        .into_inner();
    let t = s.tenant.clone().unwrap_or_default();
    let traffic = |tr: &Option<pb::Traffic>| {
        let tr = (*tr).unwrap_or_default();
        json!({"bytes_in": tr.bytes_in, "bytes_out": tr.bytes_out, "pages_refreshed": tr.pages_refreshed, "commits": tr.commits, "conflicts": tr.conflicts, "host_calls": tr.host_calls})
    };
    let value = json!({
        "tenant": tenant_json(&t),
        "regions": s.regions.iter().map(|r| json!({"name": r.name, "version": r.version, "traffic": traffic(&r.traffic)})).collect::<Vec<_>>(),
        "instances": s.instances.iter().map(|i| json!({"name": i.name, "calls": i.calls, "traps": i.traps, "handles": i.handles, "traffic": traffic(&i.traffic)})).collect::<Vec<_>>(),
    });
    let mut table = vec![
        header(&TENANT_HEADER),
        tenant_row(&t),
        vec![],
        header(&["REGION", "VERSION", "BYTES IN", "BYTES OUT", "COMMITS", "CONFLICTS"]),
    ];
    for r in &s.regions {
        let tr = r.traffic.unwrap_or_default();
        table.push(vec![
            r.name.clone(),
            r.version.to_string(),
            tr.bytes_in.to_string(),
            tr.bytes_out.to_string(),
            tr.commits.to_string(),
            tr.conflicts.to_string(),
        ]);
    }
    table.push(vec![]);
    table.push(header(&["INSTANCE", "CALLS", "TRAPS", "HANDLES", "BYTES IN", "BYTES OUT", "HOST CALLS"]));
    for i in &s.instances {
        let tr = i.traffic.unwrap_or_default();
        table.push(vec![
            i.name.clone(),
            i.calls.to_string(),
            i.traps.to_string(),
            i.handles.to_string(),
            tr.bytes_in.to_string(),
            tr.bytes_out.to_string(),
            tr.host_calls.to_string(),
        ]);
    }
    print(out, conn, &value, &table)
}

/// `broker bench`: which cells to measure and where to write the report.
#[derive(Debug, Args)]
#[command(
    after_help = "Defaults: all modes; sizes 4KiB,64KiB,1MiB,16MiB,64MiB; all patterns; readers 1,2,8; \
                  150 ms a cell. --quick: sizes 4KiB,1MiB, readers 1,2, 20 ms a cell. Flags given explicitly \
                  override either. Run a release build (`cargo run --release -p broker-cli -- bench`): a debug \
                  build measures the host's debug code."
)]
struct BenchArgs {
    /// Modes to measure, comma-separated: handle, mirror, shared.
    #[arg(long, value_delimiter = ',', value_parser = broker_scenario::bench::parse_mode)]
    modes: Option<Vec<broker::Mode>>,
    /// Region sizes, comma-separated, in bytes or with a B, KiB, MiB or GiB suffix (multiples of 8, at
    /// most 1GiB), e.g. `4KiB,1MiB`.
    #[arg(long, value_delimiter = ',', value_parser = broker_scenario::bench::parse_size)]
    sizes: Option<Vec<u64>>,
    /// Access patterns, comma-separated: scan (sum every u64 in order), random (random 8-byte loads),
    /// write1 (random 8-byte accesses, 1% stores, committed every 1024).
    #[arg(long, value_delimiter = ',', value_parser = parse_pattern)]
    patterns: Option<Vec<broker_scenario::bench::Pattern>>,
    /// Concurrent readers (guest instances; host threads for native), comma-separated, 1 to 64.
    #[arg(long, value_delimiter = ',', value_parser = broker_scenario::bench::parse_readers)]
    readers: Option<Vec<usize>>,
    /// Milliseconds each cell is measured, after a warm-up call.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    cell_ms: Option<u64>,
    /// Directory for bench.json and bench-<pattern>.svg.
    #[arg(long, default_value = "target/broker-bench")]
    out: PathBuf,
    /// A small matrix for a smoke run (see below).
    #[arg(long)]
    quick: bool,
}

fn parse_pattern(s: &str) -> Result<broker_scenario::bench::Pattern, broker_scenario::bench::BenchArgError> {
    s.parse()
}

fn bench_main(args: BenchArgs, out: &mut dyn Write) -> Result<bool, CliError> {
    use broker_scenario::bench::{self, BenchConfig};
    let mut config = if args.quick { BenchConfig::quick() } else { BenchConfig::standard() };
    if let Some(modes) = args.modes {
        config.modes = modes;
    }
    if let Some(sizes) = args.sizes {
        config.sizes = sizes;
    }
    if let Some(patterns) = args.patterns {
        config.patterns = patterns;
    }
    if let Some(readers) = args.readers {
        config.readers = readers;
    }
    if let Some(ms) = args.cell_ms {
        config.cell = std::time::Duration::from_millis(ms);
    }
    let progress = broker_scenario::metrics::TerminalProgress::stderr();
    let report =
        bench::run(&config, &progress).map_err(|e| CliError::Local(format!("the bench failed: {e}")))?;
    let written = report.write(&args.out).map_err(|e| CliError::Local(e.to_string()))?;
    let io = |e: std::io::Error| CliError::Local(format!("cannot write output: {e}"));
    out.write_all(report.render().as_bytes()).map_err(io)?;
    for path in std::iter::once(&written.json).chain(&written.charts) {
        writeln!(out, "wrote {}", path.display()).map_err(io)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arguments of `broker serve <flags>`.
    fn serve_args(flags: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(["broker", "serve"].iter().chain(flags)).expect("valid arguments");
        match cli.command {
            Command::Serve(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    /// Issue 16: the daemon's broker has the UI toolkit extension unless `--no-ui` or the config's
    /// `ui = false` turns it off; `--trampolines` sizes the extension's pool.
    #[test]
    fn r16_serve_turns_the_ui_extension_on_unless_told_otherwise() {
        let ui = |flags: &[&str]| serve_config(serve_args(flags)).expect("config").ui_config();
        assert_eq!(ui(&[]), Some(broker::UiConfig::default()));
        assert_eq!(ui(&["--trampolines", "128"]), Some(broker::UiConfig { trampolines: 128 }));
        assert_eq!(ui(&["--no-ui"]), None);
        let file = std::env::temp_dir().join(format!("broker-r16-{}.toml", std::process::id()));
        std::fs::write(&file, "ui = false\ntrampolines = 8\n").expect("config written");
        let from_file = ui(&["--config", file.to_str().expect("a UTF-8 temp dir")]);
        let _ = std::fs::remove_file(&file);
        assert_eq!(from_file, None);
    }
}
