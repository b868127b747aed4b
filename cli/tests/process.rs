//! The `broker serve` binary as a real process: it announces its address on stdout, keeps tenants,
//! regions and the admin token in its state dir across a graceful restart (SIGTERM: drain, flush,
//! exit 0), and loses nothing that `FlushRegion` acknowledged when it is killed outright (SIGKILL).
//! It also serves a client in another language: `examples/python/client.py` walks the API against it.
//!
//! Every child runs under a guard that kills it on drop and a watchdog that kills it if the test stalls,
//! so a failing test never leaves a daemon behind.

/// Finding a Python with grpcio (shared with the integration suite).
#[path = "../../tests/support/python.rs"]
mod python;

/// A real NATS JetStream server (shared with the cluster crate's tests).
#[path = "../../tests/support/nats.rs"]
mod nats;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use broker_proto::pb;
use broker_proto::pb::broker_client::BrokerClient;
use rustix::process::{kill_process, Pid, Signal};
use tonic::transport::Channel;

/// How long one daemon may live before the watchdog kills it: far longer than any case needs, so it
/// fires only on a hang (which then fails the test instead of blocking it forever).
const WATCHDOG: Duration = Duration::from_secs(120);

/// A fresh state dir, removed on drop.
struct StateDir(tempfile::TempDir);

impl StateDir {
    fn new(case: &str) -> StateDir {
        let dir = tempfile::Builder::new().prefix(&format!("broker-process-{case}-")).tempdir();
        StateDir(dir.expect("create the state dir"))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

/// A running `broker serve`: killed (SIGKILL) and reaped on drop unless it already exited; a watchdog
/// thread kills it after [`WATCHDOG`].
struct Daemon {
    child: Child,
    /// Kept open so the daemon never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
    addr: String,
    log: PathBuf,
    watchdog: Option<mpsc::Sender<()>>,
}

impl Daemon {
    /// Starts the binary on `127.0.0.1:0` over `state_dir` and reads the address it announces.
    fn start(state_dir: &Path, run: u32) -> Daemon {
        Daemon::start_with(state_dir, run, &[])
    }

    /// As [`Daemon::start`], with more `broker serve` arguments (a `--listen` among them replaces
    /// `127.0.0.1:0`).
    fn start_with(state_dir: &Path, run: u32, extra: &[&str]) -> Daemon {
        let log = state_dir.with_extension(format!("run{run}.log"));
        let stderr = std::fs::File::create(&log).expect("create the daemon log");
        let listen: &[&str] = if extra.contains(&"--listen") { &[] } else { &["--listen", "127.0.0.1:0"] };
        let mut child = Command::new(env!("CARGO_BIN_EXE_broker"))
            .arg("serve")
            .args(listen)
            .args(["--workers", "2", "--state-dir"])
            .arg(state_dir)
            .args(extra)
            .env_remove("BROKER_ADMIN_TOKEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn the broker binary");
        let pid = child.id();
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            // Either the guard hung up (the child is reaped) or the time ran out: kill it then, which
            // turns a hang into a failed read or call in the test thread.
            if rx.recv_timeout(WATCHDOG) == Err(mpsc::RecvTimeoutError::Timeout) {
                signal(pid, Signal::KILL);
            }
        });
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut daemon = Daemon { child, _stdout: stdout, addr: String::new(), log, watchdog: Some(tx) };
        let mut line = String::new();
        daemon._stdout.read_line(&mut line).expect("read the daemon's stdout");
        let Some(addr) = line.trim_end().strip_prefix("listening on ") else {
            panic!("expected `listening on <addr>`, got {line:?}; log:\n{}", daemon.log_text())
        };
        daemon.addr = format!("http://{addr}");
        daemon
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` and waits for the process to exit.
    fn stop_with(&mut self, sig: Signal) -> ExitStatus {
        signal(self.pid(), sig);
        let status = self.child.wait().expect("wait for the daemon");
        // Reaped: its pid may be reused, so the watchdog must not signal it any more.
        drop(self.watchdog.take());
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        drop(self.watchdog.take());
        if std::thread::panicking() {
            eprintln!("daemon log ({}):\n{}", self.log.display(), self.log_text());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn signal(pid: u32, sig: Signal) {
    let pid = i32::try_from(pid).ok().and_then(Pid::from_raw).expect("a child pid");
    // The child may have exited already (then there is nothing to signal).
    let _ = kill_process(pid, sig);
}

/// A gRPC client of a daemon, with a bearer token. Its runtime has a worker thread of its own, so the
/// client answers the server (pings, a graceful close) between calls, as a real client does.
struct Client {
    rt: tokio::runtime::Runtime,
    inner: BrokerClient<Channel>,
    token: String,
}

impl Client {
    fn connect(d: &Daemon, token: &str) -> Client {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        Client::on(rt, d, token)
    }

    /// A client whose runtime runs only while the test blocks on a call: between calls it answers
    /// nothing, like a hung or vanished client.
    fn stalled(d: &Daemon, token: &str) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        Client::on(rt, d, token)
    }

    fn on(rt: tokio::runtime::Runtime, d: &Daemon, token: &str) -> Client {
        Client::on_addr(rt, &d.addr, token)
    }

    /// A client of the daemon at `addr` (for a thread of its own, which cannot borrow the daemon).
    fn at(addr: &str, token: &str) -> Client {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        Client::on_addr(rt, addr, token)
    }

    fn on_addr(rt: tokio::runtime::Runtime, addr: &str, token: &str) -> Client {
        let channel = rt
            .block_on(tonic::transport::Endpoint::from_shared(addr.to_owned()).expect("endpoint").connect())
            .expect("connect to the daemon");
        Client { rt, inner: BrokerClient::new(channel), token: token.to_owned() }
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        let value = format!("Bearer {}", self.token).parse().expect("an ascii token");
        r.metadata_mut().insert("authorization", value);
        r
    }
}

/// Calls one RPC on a [`Client`] and returns the message (or the status).
macro_rules! rpc {
    ($c:expr, $method:ident, $msg:expr) => {{
        let c = &$c;
        c.rt.block_on(c.inner.clone().$method(c.req($msg))).map(|r| r.into_inner())
    }};
}

fn admin_token(state_dir: &Path) -> String {
    let token = std::fs::read_to_string(state_dir.join("admin.token")).expect("the admin token file");
    token.trim().to_owned()
}

fn region_ref(name: &str) -> Option<pb::RegionRef> {
    Some(pb::RegionRef { tenant: "acme".into(), name: name.into() })
}

fn create_region(c: &Client, name: &str, size: u64, backing: pb::Backing) {
    let msg = pb::CreateRegionRequest {
        tenant: "acme".into(),
        name: name.into(),
        size,
        mode: pb::Mode::Handle.into(),
        policy: 0,
        backing: backing.into(),
        member_rights: broker_abi::rights::ALL,
        replication: 0,
    };
    rpc!(c, create_region, msg).expect("create the region");
}

fn write(c: &Client, region: &str, offset: u64, data: &[u8]) -> u64 {
    let msg = pb::WriteRegionRequest { region: region_ref(region), offset, data: data.to_vec() };
    rpc!(c, write_region, msg).expect("write").version
}

fn read(c: &Client, region: &str, offset: u64, len: u64) -> Vec<u8> {
    rpc!(c, read_region, pb::ReadRegionRequest { region: region_ref(region), offset, len })
        .expect("read")
        .data
}

fn flush(c: &Client, region: &str) -> bool {
    let r = region_ref(region).expect("a ref");
    rpc!(c, flush_region, r).expect("flush").persistent
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| u8::try_from(i % 251).unwrap_or(0)).collect()
}

#[test]
fn graceful_restart_keeps_state_and_the_admin_token() {
    let dir = StateDir::new("graceful");
    let bytes = pattern(3000);
    let mut d = Daemon::start(dir.path(), 1);
    let token = admin_token(dir.path());
    assert!(token.starts_with("brk_"), "a generated token: {token}");
    let admin = Client::connect(&d, &token);
    rpc!(admin, create_tenant, pb::CreateTenantRequest { name: "acme".into(), quotas: None })
        .expect("tenant");
    create_region(&admin, "durable", 8192, pb::Backing::Persistent);
    create_region(&admin, "scratch", 4096, pb::Backing::Ephemeral);
    assert_eq!(write(&admin, "durable", 100, &bytes), 1);
    write(&admin, "scratch", 0, &[0xee; 64]);
    assert!(flush(&admin, "durable"), "a persistent region says it was flushed");
    assert!(!flush(&admin, "scratch"), "flushing an ephemeral region is a no-op");
    // Bytes written after the last explicit flush: the graceful shutdown's final flush covers them.
    write(&admin, "durable", 8000, &[0x5a; 192]);
    // A client still watching a region must not hold the shutdown up.
    let mut watch = rpc!(admin, watch_region, region_ref("durable").expect("a ref")).expect("watch");

    let status = d.stop_with(Signal::TERM);
    assert!(status.success(), "SIGTERM shuts the daemon down cleanly: {status:?}");
    assert!(d.log_text().contains("flushed=1"), "the shutdown flushed the persistent region");
    let last = admin.rt.block_on(watch.message()).expect("the watch stream ended cleanly, not cut off");
    assert_eq!(last, None, "the shutdown ended the watch stream");
    drop(watch);
    drop(admin);
    drop(d);

    let mut d = Daemon::start(dir.path(), 2);
    assert_eq!(admin_token(dir.path()), token, "the admin token file is kept, not regenerated");
    let admin = Client::connect(&d, &token);
    let tenants = rpc!(admin, list_tenants, pb::ListTenantsRequest {}).expect("the admin token still works");
    assert_eq!(tenants.tenants.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["acme"]);
    let regions =
        rpc!(admin, list_regions, pb::ListRegionsRequest { tenant: "acme".into() }).expect("list").regions;
    let mut shapes: Vec<(String, u64, i32)> =
        regions.iter().map(|r| (r.name.clone(), r.size, r.backing)).collect();
    shapes.sort();
    assert_eq!(
        shapes,
        [
            ("durable".to_owned(), 8192, i32::from(pb::Backing::Persistent)),
            ("scratch".to_owned(), 4096, i32::from(pb::Backing::Ephemeral)),
        ]
    );
    assert_eq!(read(&admin, "durable", 100, 3000), bytes, "the persistent bytes survived");
    assert_eq!(read(&admin, "durable", 8000, 192), vec![0x5a; 192], "the late write is kept too");
    assert_eq!(read(&admin, "durable", 0, 100), vec![0; 100]);
    assert_eq!(read(&admin, "scratch", 0, 4096), vec![0; 4096], "the ephemeral region came back zeroed");
    // The restarted daemon takes new state too.
    assert_eq!(write(&admin, "scratch", 0, &[1]), 1);
    let status = d.stop_with(Signal::TERM);
    assert!(status.success(), "{status:?}");
}

#[test]
fn sigkill_after_an_acknowledged_flush_loses_nothing() {
    let dir = StateDir::new("sigkill");
    let bytes = pattern(5000);
    let mut d = Daemon::start(dir.path(), 1);
    let token = admin_token(dir.path());
    let admin = Client::connect(&d, &token);
    rpc!(admin, create_tenant, pb::CreateTenantRequest { name: "acme".into(), quotas: None })
        .expect("tenant");
    create_region(&admin, "durable", 1 << 16, pb::Backing::Persistent);
    write(&admin, "durable", 4000, &bytes);
    assert!(flush(&admin, "durable"));

    let status = d.stop_with(Signal::KILL);
    assert!(!status.success(), "SIGKILL gives no chance to exit cleanly: {status:?}");
    drop(admin);
    drop(d);

    let mut d = Daemon::start(dir.path(), 2);
    let admin = Client::connect(&d, &token);
    let info =
        rpc!(admin, get_region, region_ref("durable").expect("a ref")).expect("the region is still defined");
    assert_eq!((info.size, info.backing), (1 << 16, i32::from(pb::Backing::Persistent)));
    assert_eq!(read(&admin, "durable", 4000, 5000), bytes, "the flushed bytes survived the kill");
    // The metadata store opened cleanly and takes writes again.
    rpc!(admin, create_tenant, pb::CreateTenantRequest { name: "later".into(), quotas: None })
        .expect("the store accepts a new tenant after the crash");
    let mut names: Vec<String> = rpc!(admin, list_tenants, pb::ListTenantsRequest {})
        .expect("list")
        .tenants
        .into_iter()
        .map(|t| t.name)
        .collect();
    names.sort();
    assert_eq!(names, ["acme", "later"]);
    let status = d.stop_with(Signal::TERM);
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_client_that_stops_answering_cannot_hold_the_shutdown_up() {
    let dir = StateDir::new("stalled");
    let config = dir.path().with_extension("toml");
    std::fs::write(&config, "drain_timeout_ms = 200\n").expect("write the config");
    let mut d = Daemon::start_with(dir.path(), 1, &["--config", config.to_str().expect("a utf-8 path")]);
    let token = admin_token(dir.path());
    let stalled = Client::stalled(&d, &token);
    rpc!(stalled, create_tenant, pb::CreateTenantRequest { name: "acme".into(), quotas: None })
        .expect("tenant");
    create_region(&stalled, "durable", 4096, pb::Backing::Persistent);
    write(&stalled, "durable", 0, b"kept");
    // The client holds its connection open but answers nothing while the daemon drains.
    let status = d.stop_with(Signal::TERM);
    assert!(status.success(), "the drain gave up on the silent client and exited cleanly: {status:?}");
    assert!(d.log_text().contains("drain deadline passed"), "the deadline, not the client, ended the drain");
    assert!(d.log_text().contains("flushed=1"), "the final flush still ran");
    drop(stalled);
    drop(d);
    let _ = std::fs::remove_file(&config);

    // The state is intact after the cut-short drain.
    let mut d = Daemon::start(dir.path(), 2);
    let admin = Client::connect(&d, &token);
    assert_eq!(read(&admin, "durable", 0, 4), b"kept");
    let status = d.stop_with(Signal::TERM);
    assert!(status.success(), "{status:?}");
}

/// Region size of the crash loop: 16 pages, so a whole-region write takes long enough to be caught
/// half-done by a kill now and then.
const JOURNAL: u64 = 64 << 10;

/// The region's bytes for commit number `seq`: every 8-byte word derived from `seq` and its index, so
/// a torn image (words from two commits) is detected.
fn journal_image(seq: u64) -> Vec<u8> {
    (0..JOURNAL / 8).flat_map(|i| (seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i).to_le_bytes()).collect()
}

/// The commit number an image belongs to, or `None` if it is torn (or not an image at all).
fn journal_seq(bytes: &[u8]) -> Option<u64> {
    if bytes.iter().all(|b| *b == 0) {
        return Some(0);
    }
    let first = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    // Word 0 is seq * K ^ 0; K is odd, so multiplying by its inverse recovers seq.
    let seq = first.wrapping_mul(inverse(0x9E37_79B9_7F4A_7C15));
    (journal_image(seq) == bytes).then_some(seq)
}

/// The multiplicative inverse of an odd number modulo 2^64 (Newton's iteration).
fn inverse(k: u64) -> u64 {
    let mut x = k;
    for _ in 0..6 {
        x = x.wrapping_mul(2u64.wrapping_sub(k.wrapping_mul(x)));
    }
    x
}

/// SIGKILL at pseudo-random moments while a client commits whole-region images and flushes them, 100
/// times (`BROKER_CRASH_ITERATIONS` changes the count, e.g. in scripts/stress.sh). After every restart:
/// the metadata store opens (the daemon starts and lists the region), the region is a whole image (no
/// torn commit), and it is at least as new as the last flush the daemon acknowledged.
#[test]
fn sigkill_at_random_moments_never_loses_or_tears_a_flushed_commit() {
    let iterations: u32 =
        std::env::var("BROKER_CRASH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let dir = StateDir::new("crash-loop");
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut acknowledged = 0u64;
    let mut seq = 0u64;
    for run in 0..iterations {
        let mut d = Daemon::start(dir.path(), run);
        let token = admin_token(dir.path());
        let c = Client::connect(&d, &token);
        if run == 0 {
            rpc!(c, create_tenant, pb::CreateTenantRequest { name: "acme".into(), quotas: None })
                .expect("tenant");
            create_region(&c, "journal", JOURNAL, pb::Backing::Persistent);
        }
        let image = read(&c, "journal", 0, JOURNAL);
        let found = journal_seq(&image);
        assert!(found.is_some(), "run {run}: the region is torn after a SIGKILL");
        let found = found.unwrap_or(0);
        assert!(found >= acknowledged, "run {run}: flushed commit {acknowledged} lost (found {found})");
        seq = seq.max(found);
        // Commit and flush in a loop on a thread; kill the daemon at a pseudo-random moment meanwhile.
        let (tx, rx) = mpsc::channel::<u64>();
        let start_seq = seq;
        let writer = std::thread::spawn(move || {
            let mut s = start_seq;
            loop {
                s += 1;
                let w = pb::WriteRegionRequest {
                    region: region_ref("journal"),
                    offset: 0,
                    data: journal_image(s),
                };
                if rpc!(c, write_region, w).is_err() {
                    break;
                }
                let f = region_ref("journal").expect("a ref");
                if rpc!(c, flush_region, f).is_err() {
                    break;
                }
                if tx.send(s).is_err() {
                    break;
                }
            }
        });
        std::thread::sleep(Duration::from_millis(5 + next() % 40));
        d.stop_with(Signal::KILL);
        let _ = writer.join();
        for s in rx.try_iter() {
            acknowledged = acknowledged.max(s);
            seq = seq.max(s);
        }
        // Commits sent after the last acknowledged flush may or may not have been written.
        seq += 1;
    }
    // One last start: the store opens cleanly and the region holds the newest acknowledged flush or later.
    let d = Daemon::start(dir.path(), iterations);
    let c = Client::connect(&d, &admin_token(dir.path()));
    let found = journal_seq(&read(&c, "journal", 0, JOURNAL)).expect("not torn");
    assert!(found >= acknowledged && acknowledged > 0, "acknowledged {acknowledged}, found {found}");
}

/// `broker loadtest`: 8 clients for 2 seconds of mixed RPCs against an in-process daemon: no errors,
/// and resident memory at the end within a bounded growth of the start.
#[test]
fn loadtest_reports_no_errors_and_bounded_memory() {
    let out = Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(["loadtest", "--clients", "8", "--seconds", "2", "--json"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run broker loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "loadtest failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["ops"].as_u64().is_some_and(|n| n > 100), "{report}");
    let (start, end) =
        (report["rss_start"].as_u64().unwrap_or(0), report["rss_end"].as_u64().unwrap_or(u64::MAX));
    assert!(start > 0 && end <= start + (64 << 20), "resident memory grew from {start} to {end}");
    assert!(report["p99_us"].as_f64().is_some_and(|p| p > 0.0), "{report}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("clients 8"), "progress is printed once a second");
}

fn i32v(v: i32) -> pb::Value {
    pb::Value { value: Some(pb::value::Value::I32(v)) }
}

/// Calls an export of the `isolation_ops` guest through the daemon and returns its one result.
fn op_call(c: &Client, instance: &str, export: &str, args: &[i32]) -> Result<i64, tonic::Status> {
    let msg = pb::CallInstanceRequest {
        tenant: String::new(),
        instance: instance.into(),
        export: export.into(),
        args: args.iter().map(|a| i32v(*a)).collect(),
    };
    let results = rpc!(c, call_instance, msg)?.results;
    Ok(match results.first().and_then(|v| v.value) {
        Some(pb::value::Value::I32(v)) => i64::from(v),
        Some(pb::value::Value::I64(v)) => v,
        other => panic!("unexpected result {other:?}"),
    })
}

/// What the kernel has handed the process: mappings, open files and threads.
fn kernel_resources(pid: u32) -> (usize, usize, usize) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps").lines().count();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fds").count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a thread count");
    (maps, fds, threads)
}

/// Issue 13 through the real daemon, with tenant tokens only: map/unmap churn leaves the daemon's
/// mappings, files and threads where they were; `memory.fill` over a read-only window and
/// `memory.copy` out of a revoked one trap the attacker, not the daemon; revocation through the API
/// takes the window away; another tenant's calls answer throughout.
#[test]
fn r13_a_hostile_tenant_cannot_kill_the_daemon_or_outlive_a_revoke() {
    let dir = StateDir::new("r13");
    let d = Daemon::start(dir.path(), 1);
    let admin = Client::connect(&d, &admin_token(dir.path()));
    let mut clients = Vec::new();
    for name in ["evil", "acme"] {
        rpc!(admin, create_tenant, pb::CreateTenantRequest { name: name.into(), quotas: None })
            .expect("tenant");
        let t = rpc!(admin, issue_token, pb::IssueTokenRequest { tenant: name.into(), rotate: false })
            .expect("token");
        let c = Client::connect(&d, &t.token);
        let upload = pb::UploadModuleRequest {
            tenant: String::new(),
            name: "ops".into(),
            wasm: broker_guests::ISOLATION_OPS_WASM.to_vec(),
        };
        rpc!(c, upload_module, upload).expect("upload");
        let start = pb::StartInstanceRequest {
            tenant: String::new(),
            module: "ops".into(),
            name: name.into(),
            config: None,
        };
        rpc!(c, start_instance, start).expect("start");
        clients.push(c);
    }
    let (evil, acme) = (&clients[0], &clients[1]);
    let data = || Some(pb::RegionRef { tenant: String::new(), name: "data".into() });
    let region = pb::CreateRegionRequest {
        tenant: String::new(),
        name: "data".into(),
        size: 8192,
        mode: pb::Mode::Shared.into(),
        policy: 0,
        backing: pb::Backing::Ephemeral.into(),
        member_rights: broker_abi::rights::ALL,
        replication: 0,
    };
    rpc!(evil, create_region, region).expect("region");
    let grant = |rights| {
        let msg = pb::GrantRequest { region: data(), instance: "evil".into(), rights, offset: 0, len: None };
        rpc!(evil, grant, msg).expect("grant").grant_id
    };
    let open = || {
        for (i, byte) in b"evil/data".iter().enumerate() {
            let at = 0x100 + i32::try_from(i).expect("short");
            op_call(evil, "evil", "op", &[10, at, i32::from(*byte), 0]).expect("store8");
        }
        i32::try_from(op_call(evil, "evil", "open", &[0x100, 9]).expect("open")).expect("a small handle")
    };
    let acme_answers = || assert_eq!(op_call(acme, "acme", "op", &[12, 0, 0, 0]).expect("acme answers"), 0);

    // Churn: map and unmap a read-write window 2,000 times.
    grant(1 | 2 | 4);
    let h = open();
    // Warm up first: the daemon's async runtime starts its threads (and their stacks and arenas) lazily.
    for i in 0..300 {
        assert_eq!(op_call(evil, "evil", "map", &[h, 0x10_0000, 8192, i % 2]).expect("map"), 0);
        assert_eq!(op_call(evil, "evil", "unmap", &[h, 0x10_0000]).expect("unmap"), 0);
    }
    let before = kernel_resources(d.pid());
    for i in 0..2_000 {
        let at = 0x10_0000 + (i % 5) * 0x4000;
        assert_eq!(op_call(evil, "evil", "map", &[h, at, 8192, i % 2]).expect("map"), 0);
        assert_eq!(op_call(evil, "evil", "unmap", &[h, at]).expect("unmap"), 0);
    }
    let after = kernel_resources(d.pid());
    // The async runtime may start a blocking-pool thread at any time (a stack, its guard and an
    // allocator arena: a few mappings each); the 2,000 cycles themselves must add nothing (they used
    // to add two mappings each).
    let new_threads = after.2.saturating_sub(before.2);
    assert!(
        after.0 <= before.0 + 8 * new_threads && after.1 == before.1,
        "(mappings, fds, threads) went from {before:?} to {after:?} over 2,000 map/unmap cycles"
    );
    acme_answers();

    // memory.fill over a read-only window.
    let ro = grant(1 | 4);
    let h = open();
    assert_eq!(op_call(evil, "evil", "map", &[h, 0x20_0000, 8192, 0]).expect("map"), 0);
    let err = op_call(evil, "evil", "op", &[2, 0x20_0000, 0x41, 4096]).expect_err("the fill traps");
    assert!(err.message().contains("read-only shared window of region evil/data"), "{}", err.message());
    acme_answers();
    let restart = pb::InstanceRef { tenant: String::new(), name: "evil".into() };
    rpc!(evil, restart_instance, restart.clone()).expect("restart");
    let _ = ro;

    // memory.copy out of a window of another tenant's region, which its owner revoked through the API.
    let shared = pb::CreateRegionRequest {
        tenant: String::new(),
        name: "shared".into(),
        size: 8192,
        mode: pb::Mode::Shared.into(),
        policy: 0,
        backing: pb::Backing::Ephemeral.into(),
        member_rights: broker_abi::rights::ALL,
        replication: 0,
    };
    rpc!(acme, create_region, shared).expect("region");
    let acme_shared = || Some(pb::RegionRef { tenant: String::new(), name: "shared".into() });
    let to_evil = pb::GrantRequest {
        region: acme_shared(),
        instance: "evil/evil".into(),
        rights: 1 | 2 | 4,
        offset: 0,
        len: None,
    };
    let rw = rpc!(acme, grant, to_evil).expect("grant").grant_id;
    for (i, byte) in b"acme/shared".iter().enumerate() {
        let at = 0x100 + i32::try_from(i).expect("short");
        op_call(evil, "evil", "op", &[10, at, i32::from(*byte), 0]).expect("store8");
    }
    let h =
        i32::try_from(op_call(evil, "evil", "open", &[0x100, 11]).expect("open")).expect("a small handle");
    // A second handle through the same grant, read through host calls until its instance resolves it
    // without the capability lock (issue 18's handle cache).
    let h2 =
        i32::try_from(op_call(evil, "evil", "open", &[0x100, 11]).expect("open")).expect("a small handle");
    for _ in 0..3 {
        assert_eq!(op_call(evil, "evil", "read", &[h2, 0x8_0000, 64]).expect("read"), 0);
    }
    assert_eq!(op_call(evil, "evil", "map", &[h, 0x20_0000, 8192, 1]).expect("map"), 0);
    rpc!(acme, revoke, pb::RevokeRequest { region: acme_shared(), grant_id: rw }).expect("revoke");
    let stale = i64::from(broker_abi::Status::StaleHandle.code());
    assert_eq!(
        op_call(evil, "evil", "read", &[h2, 0x8_0000, 64]).expect("the read answers"),
        stale,
        "a handle read after the revoke returned is refused, cached or not"
    );
    let err = op_call(evil, "evil", "op", &[4, 0x20_0000, 0x8_0000, 4096]).expect_err("the copy traps");
    assert!(err.message().contains("acme/shared") && err.message().contains("revoked"), "{}", err.message());
    acme_answers();
    let read = rpc!(acme, read_region, pb::ReadRegionRequest { region: acme_shared(), offset: 0, len: 8192 })
        .expect("read");
    assert!(read.data.iter().all(|b| *b == 0), "nothing reached the region");
    let read = rpc!(evil, read_region, pb::ReadRegionRequest { region: data(), offset: 0, len: 8192 })
        .expect("read");
    assert!(read.data.iter().all(|b| *b == 0), "the fill never reached evil's own region");
    rpc!(evil, restart_instance, restart).expect("restart");
    // Every window went with the restarts: the only new mapping since the churn is acme's region (and
    // whatever new runtime threads brought).
    let end = kernel_resources(d.pid());
    assert!(
        end.0 <= after.0 + 1 + 8 * end.2.saturating_sub(after.2),
        "the restarted attacker holds extra mappings: {after:?} -> {end:?}"
    );
}

/// Issue 14 through the real daemon, with tenant tokens only: a tenant the operator allows hour-long
/// calls spins in three instances on a two-worker daemon (each call raises its own flag once inside its
/// loop: with three spinners on two workers that only happens if running calls give their workers up);
/// another tenant's calls answer meanwhile; StopInstance ends a spinning call at once.
#[test]
fn r14_a_spinning_tenant_cannot_starve_another_through_the_daemon() {
    const HOUR_MS: u64 = 3_600_000;
    let dir = StateDir::new("r14");
    let d = Daemon::start(dir.path(), 1);
    let admin = Client::connect(&d, &admin_token(dir.path()));
    let hour = pb::Quotas {
        region_bytes: 1 << 20,
        regions: 4,
        instances: 8,
        handles: 256,
        memory_bytes: 1 << 30,
        max_call_timeout_ms: Some(HOUR_MS),
        ..pb::Quotas::default()
    };
    let mut tokens = Vec::new();
    for (name, quotas) in [("evil", Some(hour)), ("acme", None)] {
        rpc!(admin, create_tenant, pb::CreateTenantRequest { name: name.into(), quotas }).expect("tenant");
        let t = rpc!(admin, issue_token, pb::IssueTokenRequest { tenant: name.into(), rotate: false })
            .expect("token");
        let c = Client::connect(&d, &t.token);
        let upload = pb::UploadModuleRequest {
            tenant: String::new(),
            name: "m".into(),
            wasm: broker_guests::RUNTIME_MISBEHAVE_WASM.to_vec(),
        };
        rpc!(c, upload_module, upload).expect("upload");
        tokens.push(t.token);
    }
    let (evil, acme) = (Client::connect(&d, &tokens[0]), Client::connect(&d, &tokens[1]));
    let flag = || Some(pb::RegionRef { tenant: String::new(), name: "flag".into() });
    let region = pb::CreateRegionRequest {
        tenant: String::new(),
        name: "flag".into(),
        size: 64,
        mode: pb::Mode::Handle.into(),
        policy: 0,
        backing: pb::Backing::Ephemeral.into(),
        member_rights: broker_abi::rights::ALL,
        replication: 0,
    };
    rpc!(evil, create_region, region).expect("region");
    let start = |c: &Client, name: &str, timeout_ms| {
        let config = Some(pb::InstanceConfig { call_timeout_ms: timeout_ms, ..Default::default() });
        let msg =
            pb::StartInstanceRequest { tenant: String::new(), module: "m".into(), name: name.into(), config };
        rpc!(c, start_instance, msg).expect("start");
    };
    let spinners = ["s1", "s2", "s3"];
    for s in spinners {
        start(&evil, s, HOUR_MS);
    }
    start(&acme, "a", 0);
    let calls: Vec<_> = spinners
        .iter()
        .zip(1..)
        .map(|(s, slot)| {
            let (d_addr, token, s) = (d.addr.clone(), tokens[0].clone(), (*s).to_owned());
            std::thread::spawn(move || {
                let c = Client::at(&d_addr, &token);
                op_call(&c, &s, "spin_signal_at", &[slot])
            })
        })
        .collect();
    loop {
        let read = rpc!(evil, read_region, pb::ReadRegionRequest { region: flag(), offset: 0, len: 32 })
            .expect("read the flags");
        if read.data.chunks(8).skip(1).all(|w| w != [0; 8]) {
            break;
        }
        assert!(calls.iter().all(|t| !t.is_finished()), "a spinning call ended before raising its flag");
        std::thread::yield_now();
    }
    for _ in 0..20 {
        assert_eq!(op_call(&acme, "a", "ping", &[]).expect("acme answers"), 7);
    }
    for (s, call) in spinners.iter().zip(calls) {
        rpc!(evil, stop_instance, pb::InstanceRef { tenant: String::new(), name: (*s).into() })
            .expect("stop");
        let ended = call.join().expect("thread").expect_err("a stopped spinner's call fails");
        assert_eq!(ended.code(), tonic::Code::Aborted, "{ended:?}");
    }
    assert_eq!(op_call(&acme, "a", "ping", &[]).expect("acme answers"), 7);

    // Counting what the kernel hands out: calls (each store keeps one fiber stack), waits that time
    // out (a timer each), restarts (a fresh store) and uploads (compiled on a worker) leave the
    // daemon's mappings, files and threads where they were after a warm-up.
    let cycle = |i: i32| {
        assert_eq!(op_call(&acme, "a", "ping", &[]).expect("ping"), 7);
        rpc!(acme, restart_instance, pb::InstanceRef { tenant: String::new(), name: "a".into() })
            .expect("restart");
        let upload = pb::UploadModuleRequest {
            tenant: String::new(),
            name: format!("u{i}"),
            wasm: broker_guests::RUNTIME_MISBEHAVE_WASM.to_vec(),
        };
        rpc!(acme, upload_module, upload).expect("upload");
        rpc!(acme, delete_module, pb::ModuleRef { tenant: String::new(), name: format!("u{i}") })
            .expect("delete");
    };
    for i in 0..5 {
        cycle(i);
    }
    let before = kernel_resources(d.pid());
    for i in 5..55 {
        cycle(i);
    }
    let after = kernel_resources(d.pid());
    let new_threads = after.2.saturating_sub(before.2);
    assert!(
        after.0 <= before.0 + 8 * new_threads + 8 && after.1 == before.1 && new_threads <= 2,
        "(mappings, fds, threads) went from {before:?} to {after:?} over 50 call/restart/upload cycles"
    );
}

/// Issue 15: a persistent region's version never goes backwards, across a graceful restart and across
/// SIGKILL after writes that were never flushed.
#[test]
fn r15_region_versions_never_go_backwards_across_restarts_and_kills() {
    let dir = StateDir::new("r15-versions");
    let mut d = Daemon::start(dir.path(), 1);
    let token = admin_token(dir.path());
    let admin = Client::connect(&d, &token);
    rpc!(admin, create_tenant, pb::CreateTenantRequest { name: "acme".into(), quotas: None })
        .expect("tenant");
    create_region(&admin, "durable", 4096, pb::Backing::Persistent);
    let mut seen = 0;
    for i in 0..5u8 {
        let v = write(&admin, "durable", 0, &[i]);
        assert!(v > seen, "versions rise: {v} after {seen}");
        seen = v;
    }
    let version =
        |c: &Client| rpc!(c, get_region, region_ref("durable").expect("ref")).expect("region").version;
    // A graceful restart.
    assert!(d.stop_with(Signal::TERM).success());
    let mut d = Daemon::start(dir.path(), 2);
    let admin = Client::connect(&d, &token);
    assert!(version(&admin) >= seen, "after a restart: {} < {seen}", version(&admin));
    let v = write(&admin, "durable", 0, &[9]);
    assert!(v > seen, "a write after the restart: {v} <= {seen}");
    seen = v;
    // Writes that are never flushed, then SIGKILL.
    for i in 0..5u8 {
        seen = write(&admin, "durable", 1, &[i]);
    }
    d.stop_with(Signal::KILL);
    let d = Daemon::start(dir.path(), 3);
    let admin = Client::connect(&d, &token);
    assert!(version(&admin) >= seen, "after SIGKILL: {} < {seen}", version(&admin));
    let v = write(&admin, "durable", 0, &[1]);
    assert!(v > seen, "a write after SIGKILL: {v} <= {seen}");
}

/// Issue 15, item 7: the Python example client (`examples/python/client.py`) walks the API against the
/// real daemon, as the admin and then with the tenant token it is issued, and cleans up after itself.
/// Skipped, saying why, only where no Python can get grpcio; `BROKER_REQUIRE_PYTHON=1` turns that skip
/// into a failure.
#[test]
fn r15_python_example_client_walks_the_api() {
    let python = match python::python_with_grpcio() {
        Ok(python) => python,
        Err(why) if std::env::var_os("BROKER_REQUIRE_PYTHON").is_none() => {
            eprintln!("SKIPPED r15_python_example_client: no Python with grpcio and grpcio-tools: {why}");
            return;
        }
        Err(why) => panic!("BROKER_REQUIRE_PYTHON is set but there is no Python with grpcio: {why}"),
    };
    let dir = StateDir::new("python");
    let mut d = Daemon::start(dir.path(), 1);
    let token = admin_token(dir.path());
    let module = dir.path().with_extension("wasm");
    std::fs::write(&module, broker_guests::RUNTIME_MISBEHAVE_WASM).expect("write the guest");
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/client.py");
    // The client's calls have deadlines, and the daemon's watchdog ends them if the client hangs.
    let out = Command::new(&python)
        .arg(&client)
        .args(["--addr", &d.addr, "--token", &token, "--call", "ping", "--module"])
        .arg(&module)
        .env_remove("BROKER_ADDR")
        .env_remove("BROKER_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run the Python client");
    let _ = std::fs::remove_file(&module);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        client.display(),
        out.status
    );
    for step in [
        "stubs",
        "connect",
        "health",
        "reflection",
        "create tenant",
        "upload module",
        "start instance",
        "call",
        "create region",
        "grant",
        "watch",
        "write",
        "watch event",
        "cleanup: revoke",
        "cleanup: destroy region",
        "cleanup: delete instance",
        "cleanup: delete module",
    ] {
        let prefix = format!("ok {step}: ");
        assert!(stdout.lines().any(|l| l.starts_with(&prefix)), "no `{prefix}` line:\n{stdout}");
    }
    assert!(stdout.contains("ok call: ping() -> [7]"), "{stdout}");
    assert!(stdout.contains("ok health: broker.v1.Broker is SERVING"), "{stdout}");
    assert!(stdout.ends_with("all steps passed\n"), "{stdout}");
    // Shown with `--nocapture`: what the Python client did.
    print!("{stdout}");

    // The client took down what it made: only its tenant is left.
    let admin = Client::connect(&d, &token);
    let tenant = || "python-example".to_owned();
    let modules = rpc!(admin, list_modules, pb::ListModulesRequest { tenant: tenant() }).expect("modules");
    let instances =
        rpc!(admin, list_instances, pb::ListInstancesRequest { tenant: tenant() }).expect("instances");
    let regions = rpc!(admin, list_regions, pb::ListRegionsRequest { tenant: tenant() }).expect("regions");
    assert!(modules.modules.is_empty(), "{modules:?}");
    assert!(instances.instances.is_empty(), "{instances:?}");
    assert!(regions.regions.is_empty(), "{regions:?}");
    drop(admin);
    let status = d.stop_with(Signal::TERM);
    assert!(status.success(), "{status:?}");
}

/// Issue 15, item 5, through real daemon restarts: a stopped instance comes back stopped (and its API
/// grant with it, applied once it is restarted), a deleted one stays gone, a running one runs; a
/// restart clears the stopped mark, so the next daemon runs it again.
#[test]
fn r15_a_stopped_instance_stays_stopped_across_restarts_and_a_deleted_one_stays_gone() {
    let dir = StateDir::new("r15-stopped");
    let mut d = Daemon::start(dir.path(), 1);
    let token = admin_token(dir.path());
    let admin = Client::connect(&d, &token);
    let mut tokens = Vec::new();
    for name in ["alpha", "beta"] {
        rpc!(admin, create_tenant, pb::CreateTenantRequest { name: name.into(), quotas: None })
            .expect("tenant");
        let t = rpc!(admin, issue_token, pb::IssueTokenRequest { tenant: name.into(), rotate: false })
            .expect("token");
        tokens.push(t.token);
    }
    let region = pb::CreateRegionRequest {
        tenant: "alpha".into(),
        name: "data".into(),
        size: 4096,
        mode: pb::Mode::Handle.into(),
        policy: 0,
        backing: pb::Backing::Ephemeral.into(),
        member_rights: broker_abi::rights::ALL,
        replication: 0,
    };
    rpc!(admin, create_region, region).expect("region");
    let beta = Client::connect(&d, &tokens[1]);
    let upload = pb::UploadModuleRequest {
        tenant: String::new(),
        name: "app".into(),
        wasm: broker_guests::HANDLE_APP_WASM.to_vec(),
    };
    rpc!(beta, upload_module, upload).expect("upload");
    for name in ["kept", "gone", "live"] {
        let start = pb::StartInstanceRequest {
            tenant: String::new(),
            module: "app".into(),
            name: name.into(),
            config: None,
        };
        rpc!(beta, start_instance, start).expect("start");
    }
    let grant = pb::GrantRequest {
        region: Some(pb::RegionRef { tenant: "alpha".into(), name: "data".into() }),
        instance: "beta/kept".into(),
        rights: 1,
        offset: 0,
        len: None,
    };
    rpc!(admin, grant, grant).expect("grant");
    let iref = |name: &str| pb::InstanceRef { tenant: String::new(), name: name.into() };
    rpc!(beta, stop_instance, iref("kept")).expect("stop");
    rpc!(beta, delete_instance, iref("gone")).expect("delete");
    drop(beta);
    drop(admin);
    assert!(d.stop_with(Signal::TERM).success());
    drop(d);

    let state = |c: &Client, name: &str| rpc!(c, get_instance, iref(name)).map(|i| i.state);
    let (stopped, running) = (i32::from(pb::InstanceState::Stopped), i32::from(pb::InstanceState::Running));
    let mut d = Daemon::start(dir.path(), 2);
    let beta = Client::connect(&d, &tokens[1]);
    assert_eq!(state(&beta, "kept").expect("kept"), stopped, "a stopped instance comes back stopped");
    assert_eq!(state(&beta, "live").expect("live"), running);
    assert_eq!(state(&beta, "gone").expect_err("gone").code(), tonic::Code::NotFound);
    let refused = op_call(&beta, "kept", "ping", &[]).expect_err("a stopped instance refuses calls");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    rpc!(beta, restart_instance, iref("kept")).expect("restart");
    assert!(
        op_call(&beta, "kept", "open", &[1]).expect("open alpha/data") > 0,
        "its grant came back with it"
    );
    rpc!(beta, stop_instance, iref("live")).expect("stop");
    drop(beta);
    assert!(d.stop_with(Signal::TERM).success());
    drop(d);

    let mut d = Daemon::start(dir.path(), 3);
    let beta = Client::connect(&d, &tokens[1]);
    assert_eq!(state(&beta, "kept").expect("kept"), running, "restarted, it runs after a daemon restart");
    assert_eq!(state(&beta, "live").expect("live"), stopped);
    assert!(op_call(&beta, "kept", "open", &[1]).expect("open alpha/data") > 0);
    let listed =
        rpc!(beta, list_instances, pb::ListInstancesRequest { tenant: String::new() }).expect("list");
    let mut names: Vec<_> = listed.instances.iter().map(|i| i.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["kept", "live"]);
    drop(beta);
    assert!(d.stop_with(Signal::TERM).success());
}

/// Issue 15, items 1 and 2, against the real daemon killed outright: quotas lowered below what a
/// tenant holds block new allocations and hide nothing after a SIGKILL and restart (its persistent
/// region and its data are back, and its instance, which no longer fits the memory quota, is back
/// stopped and runs once the quota allows), and a region's member rights are stored with it.
#[test]
fn r15_lowered_quotas_and_member_rights_survive_a_kill() {
    let dir = StateDir::new("r15-quotas");
    let mut d = Daemon::start(dir.path(), 1);
    let token = admin_token(dir.path());
    let admin = Client::connect(&d, &token);
    rpc!(admin, create_tenant, pb::CreateTenantRequest { name: "acme".into(), quotas: None })
        .expect("tenant");
    create_region(&admin, "kept", 8192, pb::Backing::Persistent);
    let read_only =
        pb::SetMemberRightsRequest { region: region_ref("kept"), rights: broker_abi::rights::READ };
    rpc!(admin, set_member_rights, read_only).expect("member rights");
    write(&admin, "kept", 100, b"still here");
    assert!(flush(&admin, "kept"));
    let wasm = broker_guests::RUNTIME_MISBEHAVE_WASM.to_vec();
    rpc!(admin, upload_module, pb::UploadModuleRequest { tenant: "acme".into(), name: "m".into(), wasm })
        .expect("module");
    let start = pb::StartInstanceRequest {
        tenant: "acme".into(),
        module: "m".into(),
        name: "a".into(),
        config: None,
    };
    rpc!(admin, start_instance, start).expect("instance");
    // Every stored-object quota to zero, below what acme holds: accepted.
    let zero = pb::Quotas {
        region_bytes: 0,
        regions: 0,
        instances: 0,
        handles: 0,
        memory_bytes: 0,
        ..Default::default()
    };
    rpc!(admin, set_quotas, pb::SetQuotasRequest { tenant: "acme".into(), quotas: Some(zero) })
        .expect("lowering below usage is accepted");

    d.stop_with(Signal::KILL);
    let d = Daemon::start(dir.path(), 2);
    let admin = Client::connect(&d, &token);
    let kept = rpc!(admin, get_region, region_ref("kept").expect("ref")).expect("the region is back");
    assert_eq!(kept.member_rights, broker_abi::rights::READ, "member rights are stored with the region");
    assert_eq!(read(&admin, "kept", 100, 10), b"still here");
    // With no memory left in its quota it cannot run, so it comes back stopped: listed, restartable.
    let a = || pb::InstanceRef { tenant: "acme".into(), name: "a".into() };
    let status = rpc!(admin, get_instance, a()).expect("the instance is back");
    assert_eq!(status.state, i32::from(pb::InstanceState::Stopped));
    let raised = pb::Quotas {
        region_bytes: 0,
        regions: 0,
        instances: 0,
        handles: 0,
        memory_bytes: 1 << 30,
        ..Default::default()
    };
    rpc!(admin, set_quotas, pb::SetQuotasRequest { tenant: "acme".into(), quotas: Some(raised) })
        .expect("quotas");
    let restarted = rpc!(admin, restart_instance, a()).expect("with memory it runs again");
    assert_eq!(restarted.state, i32::from(pb::InstanceState::Running));
    // The lowered quotas block what is new.
    let more = pb::CreateRegionRequest {
        tenant: "acme".into(),
        name: "more".into(),
        size: 64,
        mode: pb::Mode::Handle.into(),
        policy: 0,
        backing: 0,
        member_rights: 0,
        replication: 0,
    };
    let err = rpc!(admin, create_region, more).expect_err("over the lowered quota");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
}

/// Issue 15, item 2: flushes of one persistent region racing each other and the writes (four clients
/// flushing while a fifth writes) leave a whole image that survives SIGKILL, and no temporary file.
#[test]
fn r15_concurrent_flushes_survive_a_kill_whole() {
    let dir = StateDir::new("r15-flush");
    let mut d = Daemon::start(dir.path(), 1);
    let token = admin_token(dir.path());
    let admin = Client::connect(&d, &token);
    rpc!(admin, create_tenant, pb::CreateTenantRequest { name: "acme".into(), quotas: None })
        .expect("tenant");
    let size = 1u64 << 16;
    create_region(&admin, "r", size, pb::Backing::Persistent);
    std::thread::scope(|s| {
        let flushers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..10 {
                        assert!(flush(&admin, "r"));
                    }
                })
            })
            .collect();
        for byte in 1..=20u8 {
            write(&admin, "r", 0, &vec![byte; 1 << 16]);
        }
        for f in flushers {
            f.join().expect("a flusher");
        }
    });
    assert!(flush(&admin, "r"));
    d.stop_with(Signal::KILL);
    let d = Daemon::start(dir.path(), 2);
    let admin = Client::connect(&d, &token);
    assert!(read(&admin, "r", 0, size).iter().all(|b| *b == 20), "the last flushed image came back whole");
    let leftovers: Vec<String> = std::fs::read_dir(dir.path().join("regions").join("acme"))
        .expect("the tenant's regions")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
}

/// A restart that cannot bring an instance back (here: its module imports the UI toolkit and the daemon
/// runs with `--no-ui`) keeps the grants made to it, for the start that brings it back; creating an
/// instance under its name in the meantime deletes them, since they were never granted to that one.
#[test]
fn r16_grants_of_an_instance_a_restart_cannot_bring_back_are_kept_until_its_name_is_reused() {
    let dir = StateDir::new("r16-kept-grants");
    let mut d = Daemon::start(dir.path(), 1);
    let token = admin_token(dir.path());
    let admin = Client::connect(&d, &token);
    rpc!(admin, create_tenant, pb::CreateTenantRequest { name: "acme".into(), quotas: None })
        .expect("tenant");
    create_region(&admin, "r", 8192, pb::Backing::Ephemeral);
    let upload = |c: &Client, name: &str, wasm: &[u8]| {
        let msg = pb::UploadModuleRequest { tenant: "acme".into(), name: name.into(), wasm: wasm.to_vec() };
        rpc!(c, upload_module, msg).expect("module");
    };
    let start = |c: &Client, module: &str, name: &str| {
        let msg = pb::StartInstanceRequest {
            tenant: "acme".into(),
            module: module.into(),
            name: name.into(),
            config: None,
        };
        rpc!(c, start_instance, msg).expect("instance");
    };
    upload(&admin, "toolkit", broker_guests::CALLBACK_APP_WASM);
    let grant = |c: &Client, instance: &str| {
        let msg = pb::GrantRequest {
            region: region_ref("r"),
            instance: instance.into(),
            rights: broker_abi::rights::READ,
            offset: 0,
            len: Some(8192),
        };
        rpc!(c, grant, msg).expect("grant").grant_id
    };
    start(&admin, "toolkit", "reused");
    start(&admin, "toolkit", "kept");
    let (to_reused, to_kept) = (grant(&admin, "reused"), grant(&admin, "kept"));
    assert!(d.stop_with(Signal::TERM).success());

    // Without the toolkit neither instance comes back; one name is taken by a new instance.
    let mut d = Daemon::start_with(dir.path(), 2, &["--no-ui"]);
    let admin = Client::connect(&d, &token);
    let gone = rpc!(admin, get_instance, pb::InstanceRef { tenant: "acme".into(), name: "kept".into() });
    assert_eq!(gone.expect_err("not restored").code(), tonic::Code::NotFound);
    upload(&admin, "plain", broker_guests::RUNTIME_MISBEHAVE_WASM);
    start(&admin, "plain", "reused");
    assert!(d.stop_with(Signal::TERM).success());

    // With it, the instance that kept its name gets its grant back; the reused name does not.
    let d = Daemon::start(dir.path(), 3);
    let admin = Client::connect(&d, &token);
    let revoke = |id: u64| rpc!(admin, revoke, pb::RevokeRequest { region: region_ref("r"), grant_id: id });
    revoke(to_kept).expect("the grant to the instance that came back is still there");
    let stale = revoke(to_reused).expect_err("the grant to the replaced instance was deleted");
    assert_eq!(stale.code(), tonic::Code::NotFound, "{stale:?}");
    let reused = rpc!(admin, get_instance, pb::InstanceRef { tenant: "acme".into(), name: "reused".into() })
        .expect("the new instance");
    assert_eq!(reused.module, "plain");
}

/// A WASI app through the real daemon and the CLI alone, as a user would: upload, start with an
/// argument, an environment variable and a writable directory, call, then `broker instance logs`
/// shows what it printed, and the file it wrote is under the tenant's app data directory in the state
/// dir.
#[test]
fn r17_a_wasi_app_through_the_daemon_and_the_cli() {
    let dir = StateDir::new("r17-wasi");
    let mut d = Daemon::start(dir.path(), 1);
    let token = admin_token(dir.path());
    let module = dir.path().with_extension("app.wasm");
    std::fs::write(&module, broker_guests::WASI_STD_APP_WASM).expect("write the app");
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_broker"))
            .args(args)
            .env("BROKER_ADDR", &d.addr)
            .env("BROKER_TOKEN", &token)
            .env("BROKER_TENANT", "acme")
            .stdin(Stdio::null())
            .output()
            .expect("run the CLI");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "broker {args:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
        text
    };
    cli(&["tenant", "create", "acme"]);
    cli(&["module", "upload", "app", module.to_str().expect("utf-8 path")]);
    cli(&[
        "instance",
        "start",
        "a",
        "--module",
        "app",
        "--arg",
        "app",
        "--env",
        "K=v",
        "--dir",
        "files:/data:rw",
    ]);
    assert!(cli(&["instance", "call", "a", "args_env"]).contains("2"));
    assert!(cli(&["instance", "call", "a", "write_file", "100"]).contains("100"));
    cli(&["instance", "call", "a", "hello"]);
    let logs = cli(&["instance", "logs", "a"]);
    assert_eq!(
        logs.lines().collect::<Vec<_>>(),
        ["arg app", "env K=v", "hello from a std wasm32-wasip1 app", "stderr| and a line on stderr"],
        "{logs}"
    );
    let tail = cli(&["instance", "logs", "a", "--tail", "1", "--json"]);
    let line: serde_json::Value = serde_json::from_str(tail.trim()).expect("one JSON line");
    assert_eq!((line["stream"].as_str(), line["seq"].as_u64()), (Some("stderr"), Some(3)), "{tail}");
    let file = dir.path().join("app-data/acme/files/out.txt");
    assert_eq!(std::fs::read(&file).expect("the app's file").len(), 100);
    assert!(d.stop_with(Signal::TERM).success());
    let _ = std::fs::remove_file(&module);
}

/// `broker cluster status --json` against the cluster at `url`.
fn cluster_status(url: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(["cluster", "status", "--json", "--cluster", url])
        .output()
        .expect("run broker cluster status");
    assert!(out.status.success(), "cluster status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// Each node's name and address, as `broker cluster status` lists them.
fn cluster_nodes(url: &str) -> Vec<(String, String)> {
    cluster_status(url)["nodes"]
        .as_array()
        .expect("a list of nodes")
        .iter()
        .map(|n| {
            (n["node"].as_str().unwrap_or("").to_string(), n["address"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

/// Issue 19: daemons started with `--cluster` and `--node` are listed by `broker cluster status`
/// with the addresses they serve on; a daemon asking for a live node's name is refused and exits; a
/// daemon shut down gracefully leaves the list at once.
#[test]
fn r19_daemons_join_a_cluster_and_leave_it_on_shutdown() {
    let nats = nats::Nats::start();
    let (da, db, dc) = (StateDir::new("cluster-a"), StateDir::new("cluster-b"), StateDir::new("cluster-c"));
    let mut a = Daemon::start_with(da.path(), 1, &["--cluster", &nats.url, "--node", "alpha"]);
    let b = Daemon::start_with(db.path(), 1, &["--cluster", &nats.url, "--node", "beta"]);
    let bare = |d: &Daemon| d.addr.trim_start_matches("http://").to_string();
    assert_eq!(
        cluster_nodes(&nats.url),
        [("alpha".to_string(), bare(&a)), ("beta".to_string(), bare(&b))],
        "both nodes, with their addresses"
    );
    let taken = Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(dc.path())
        .args(["--cluster", &nats.url, "--node", "alpha"])
        .stdin(Stdio::null())
        .output()
        .expect("run a third daemon");
    assert!(!taken.status.success(), "a taken node name must be refused");
    assert!(
        String::from_utf8_lossy(&taken.stderr).contains("taken"),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    let status = a.stop_with(Signal::TERM);
    assert!(status.success(), "{status:?}");
    assert_eq!(cluster_nodes(&nats.url), [("beta".to_string(), bare(&b))], "alpha left on shutdown");
}

/// `region` read through `c`, or the status (a replica that has not appeared yet is not found).
fn try_read(c: &Client, region: &str, len: u64) -> Result<(Vec<u8>, u64), tonic::Status> {
    rpc!(c, read_region, pb::ReadRegionRequest { region: region_ref(region), offset: 0, len })
        .map(|r| (r.data, r.version))
}

/// Waits until `region` reads `want` through `c`; returns its version.
fn until_reads(c: &Client, region: &str, want: &[u8]) -> u64 {
    until_reads_from(c, region, want, 0)
}

/// As [`until_reads`], failing if any read on the way shows a version below `floor`.
fn until_reads_from(c: &Client, region: &str, want: &[u8], floor: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = try_read(c, region, want.len() as u64);
        if let Ok((data, version)) = &got {
            assert!(*version >= floor, "{region} showed version {version}, older than {floor}");
            if data == want {
                return *version;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{region} never read as expected: {:?}",
            got.map(|g| g.1)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 19 through the real daemons: a region created with `replication = cluster` on one node
/// appears on another node that has the tenant, both nodes' gRPC writes land on both (the replica's go
/// to the home), a replica killed with SIGKILL and started again on its state dir resyncs everything
/// written meanwhile, and a call naming a tenant that lives on another node is answered with that
/// node's name and address. Shared mode and a daemon without `--cluster` are refused.
#[test]
fn r19_a_replicated_region_across_daemons_survives_a_replica_kill() {
    let nats = nats::Nats::start();
    let (da, db, dl) = (StateDir::new("repl-a"), StateDir::new("repl-b"), StateDir::new("repl-lone"));
    let a = Daemon::start_with(da.path(), 1, &["--cluster", &nats.url, "--node", "alpha"]);
    let mut b = Daemon::start_with(db.path(), 1, &["--cluster", &nats.url, "--node", "beta"]);
    let lone = Daemon::start(dl.path(), 1);
    let (ca, cb) =
        (Client::connect(&a, &admin_token(da.path())), Client::connect(&b, &admin_token(db.path())));
    let cl = Client::connect(&lone, &admin_token(dl.path()));
    for c in [&ca, &cb, &cl] {
        rpc!(c, create_tenant, pb::CreateTenantRequest { name: "acme".into(), quotas: None })
            .expect("tenant");
    }
    const SIZE: u64 = 16 * 1024;
    let region = |mode: pb::Mode, replication: pb::Replication| pb::CreateRegionRequest {
        tenant: "acme".into(),
        name: "data".into(),
        size: SIZE,
        mode: mode.into(),
        policy: 0,
        backing: 0,
        member_rights: broker_abi::rights::ALL,
        replication: replication.into(),
    };
    let shared = rpc!(ca, create_region, region(pb::Mode::Shared, pb::Replication::Cluster));
    assert_eq!(
        shared.map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::InvalidArgument),
        "shared is node-local"
    );
    let alone = rpc!(cl, create_region, region(pb::Mode::Handle, pb::Replication::Cluster));
    assert_eq!(alone.map(|_| ()).map_err(|s| s.code()), Err(tonic::Code::FailedPrecondition), "no cluster");
    rpc!(ca, create_region, region(pb::Mode::Mirror, pb::Replication::Cluster)).expect("replicated region");

    let mut model = vec![0u8; usize::try_from(SIZE).expect("size")];
    let put = |model: &mut Vec<u8>, c: &Client, i: usize| {
        let bytes = u32::try_from(i).expect("i").wrapping_mul(2_654_435_761).to_le_bytes();
        let at = (i * 331) % (model.len() - 4);
        write(c, "data", at as u64, &bytes);
        model[at..at + 4].copy_from_slice(&bytes);
    };
    until_reads(&cb, "data", &vec![0; model.len()]);
    for i in 0..200 {
        put(&mut model, if i % 2 == 0 { &ca } else { &cb }, i);
    }
    let va = until_reads(&ca, "data", &model);
    let shown = until_reads(&cb, "data", &model);
    assert_eq!(shown, va, "the replica has the home's version");

    // SIGKILL the replica; the home goes on; the replica comes back on its state dir and resyncs.
    let b_listen = b.addr.trim_start_matches("http://").to_string();
    assert!(!b.stop_with(Signal::KILL).success());
    drop(cb);
    for i in 200..300 {
        put(&mut model, &ca, i);
    }
    let b =
        Daemon::start_with(db.path(), 2, &["--listen", &b_listen, "--cluster", &nats.url, "--node", "beta"]);
    let cb = Client::connect(&b, &admin_token(db.path()));
    let va = until_reads(&ca, "data", &model);
    // Never older than what it showed before it was killed, from its first answer on.
    assert_eq!(until_reads_from(&cb, "data", &model, shown), va, "the restarted replica caught up");
    for i in 300..320 {
        put(&mut model, &cb, i);
    }
    until_reads(&ca, "data", &model);

    // A tenant only alpha has: beta answers with alpha's name and address.
    rpc!(ca, create_tenant, pb::CreateTenantRequest { name: "solo".into(), quotas: None }).expect("tenant");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let asked = rpc!(cb, list_regions, pb::ListRegionsRequest { tenant: "solo".into() });
        match asked {
            Err(s) if s.code() == tonic::Code::FailedPrecondition => break s,
            other => {
                assert!(std::time::Instant::now() < deadline, "never redirected: {:?}", other.map(|_| ()));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    let meta = |k: &str| status.metadata().get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(meta("broker-node").as_deref(), Some("alpha"), "{status:?}");
    assert_eq!(
        meta("broker-node-address"),
        Some(a.addr.trim_start_matches("http://").to_string()),
        "{status:?}"
    );

    // Status lists the region with its home and what the stream holds of it: the home's snapshot
    // and the 320 writes (fewer messages where writes went out together), nothing purged yet.
    let status = cluster_status(&nats.url);
    let regions = status["regions"].as_array().expect("a list of regions");
    assert_eq!(regions.len(), 1, "{status}");
    let r = &regions[0];
    assert_eq!(
        (r["tenant"].as_str(), r["name"].as_str(), r["home"].as_str()),
        (Some("acme"), Some("data"), Some("alpha"))
    );
    let messages = r["messages"].as_u64().expect("a count of messages");
    assert!((2..=321).contains(&messages), "{messages} messages for 320 writes: {status}");
}
