//! `control_plane`: what the gRPC control API costs on top of the broker it drives. A real server runs
//! in-process on `127.0.0.1:0` (as `broker serve` does, health and reflection included); one client
//! calls GetRegion (a cheap unary RPC), ReadRegion and WriteRegion of 4 KiB and 1 MiB, and the same
//! broker functions (`region_info`, `read_region`, `write_region`) are called directly in the same run
//! as the baseline.
//!
//! After the criterion group, a summary prints per operation the p50 and p99 latency of single calls,
//! the throughput of one client calling back to back (and of 16 concurrent clients for GetRegion), and
//! the ratio of gRPC to the in-process call.

#![allow(missing_docs, reason = "criterion_group! generates an undocumented function")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::{Broker, BrokerConfig, RegionId};
use broker_benches::full_run;
use broker_control::server::ServeError;
use broker_control::{ControlPlane, ServeConfig};
use broker_proto::pb;
use broker_proto::pb::broker_client::BrokerClient;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// The region every operation touches: large enough for the biggest transfer.
const REGION_BYTES: u64 = 1 << 20;
const SIZES: [(usize, &str); 2] = [(4096, "4KiB"), (1 << 20, "1MiB")];
/// Clients in flight at once for the concurrent GetRegion row.
const CONCURRENT: usize = 16;

/// One operation, through either path.
#[derive(Debug, Clone, Copy)]
enum Op {
    GetRegion,
    Read(usize, &'static str),
    Write(usize, &'static str),
}

impl Op {
    fn all() -> Vec<Op> {
        let mut ops = vec![Op::GetRegion];
        for (len, label) in SIZES {
            ops.extend([Op::Read(len, label), Op::Write(len, label)]);
        }
        ops
    }

    fn name(self) -> &'static str {
        match self {
            Op::GetRegion => "get_region",
            Op::Read(..) => "read",
            Op::Write(..) => "write",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Op::GetRegion => "-",
            Op::Read(_, l) | Op::Write(_, l) => l,
        }
    }

    fn bytes(self) -> usize {
        match self {
            Op::GetRegion => 0,
            Op::Read(n, _) | Op::Write(n, _) => n,
        }
    }
}

/// A server on loopback, a client of it with a tenant token, and the broker behind it.
struct Bench {
    rt: tokio::runtime::Runtime,
    plane: Arc<ControlPlane>,
    region: RegionId,
    addr: String,
    client: BrokerClient<Channel>,
    token: MetadataValue<Ascii>,
    data: Vec<u8>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

fn authorized<T>(token: &MetadataValue<Ascii>, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", token.clone());
    r
}

fn bearer(token: &str) -> MetadataValue<Ascii> {
    format!("Bearer {token}").parse().expect("an ascii token")
}

fn region_ref() -> pb::RegionRef {
    pb::RegionRef { tenant: String::new(), name: "bench".into() }
}

impl Bench {
    /// Binds the listener, then spawns the server (so the client connects at once), and sets up a tenant
    /// and a region through the API itself.
    fn start() -> Bench {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let admin = "bench-admin-token";
        let broker =
            Arc::new(Broker::new(BrokerConfig { workers: 1, ..BrokerConfig::default() }).expect("broker"));
        let plane = Arc::new(ControlPlane::open(broker, admin, None).expect("control plane"));
        let served = Arc::clone(&plane);
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let addr = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(async move {
            let config = ServeConfig::default();
            broker_control::serve(served, listener, &config, async {
                let _ = rx.await;
            })
            .await
        });
        let client = rt.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(addr.clone())
                .expect("endpoint")
                .connect()
                .await
                .expect("connect");
            BrokerClient::new(channel).max_decoding_message_size(8 << 20).max_encoding_message_size(8 << 20)
        });
        let token = rt.block_on(async {
            let mut c = client.clone();
            let admin = bearer(admin);
            let quotas = pb::Quotas {
                region_bytes: 1 << 30,
                regions: 16,
                instances: 16,
                handles: 1024,
                memory_bytes: 1 << 30,
                ..Default::default()
            };
            let tenant = pb::CreateTenantRequest { name: "bench".into(), quotas: Some(quotas) };
            c.create_tenant(authorized(&admin, tenant)).await.expect("tenant");
            let issue = pb::IssueTokenRequest { tenant: "bench".into(), rotate: false };
            let token =
                bearer(&c.issue_token(authorized(&admin, issue)).await.expect("token").into_inner().token);
            let region = pb::CreateRegionRequest {
                tenant: String::new(),
                name: "bench".into(),
                size: REGION_BYTES,
                mode: pb::Mode::Handle.into(),
                policy: 0,
                backing: 0,
                // Only the control plane touches it: no app opens it.
                member_rights: 0,
                replication: 0,
            };
            c.create_region(authorized(&token, region)).await.expect("region");
            token
        });
        let broker = plane.broker();
        let tenant = broker.tenant_id("bench").expect("the tenant exists");
        let region = broker.region_id(tenant, "bench").expect("the region exists");
        let data = (0..SIZES[1].0).map(|i| u8::try_from(i % 251).unwrap_or(0)).collect();
        Bench { rt, plane, region, addr, client, token, data, shutdown: Some(tx), server: Some(server) }
    }

    /// One call over gRPC.
    async fn grpc(&self, client: &mut BrokerClient<Channel>, op: Op) {
        match op {
            Op::GetRegion => {
                let r = client.get_region(authorized(&self.token, region_ref())).await.expect("GetRegion");
                std::hint::black_box(r);
            }
            Op::Read(len, _) => {
                let len64 = u64::try_from(len).expect("a small length");
                let msg = pb::ReadRegionRequest { region: Some(region_ref()), offset: 0, len: len64 };
                let r = client.read_region(authorized(&self.token, msg)).await.expect("ReadRegion");
                assert_eq!(r.get_ref().data.len(), len);
            }
            Op::Write(len, _) => {
                // Building the request copies the bytes once, as any client holding them in a buffer would.
                let msg = pb::WriteRegionRequest {
                    region: Some(region_ref()),
                    offset: 0,
                    data: self.data[..len].to_vec(),
                };
                let r = client.write_region(authorized(&self.token, msg)).await.expect("WriteRegion");
                std::hint::black_box(r);
            }
        }
    }

    /// The same operation on the broker directly.
    fn direct(&self, op: Op, buf: &mut [u8]) {
        match op {
            Op::GetRegion => {
                std::hint::black_box(self.plane.broker().region_info(self.region).expect("region_info"));
            }
            Op::Read(len, _) => {
                self.plane.broker().read_region(self.region, 0, &mut buf[..len]).expect("read_region");
                std::hint::black_box(&buf[..len]);
            }
            Op::Write(len, _) => {
                std::hint::black_box(
                    self.plane.broker().write_region(self.region, 0, &self.data[..len]).expect("write"),
                );
            }
        }
    }

    /// `n` gRPC calls back to back; their total time.
    fn grpc_loop(&self, op: Op, n: u64) -> Duration {
        self.rt.block_on(async {
            let mut client = self.client.clone();
            let start = Instant::now();
            for _ in 0..n {
                self.grpc(&mut client, op).await;
            }
            start.elapsed()
        })
    }

    /// `n` direct calls back to back; their total time.
    fn direct_loop(&self, op: Op, n: u64) -> Duration {
        let mut buf = vec![0u8; SIZES[1].0];
        let start = Instant::now();
        for _ in 0..n {
            self.direct(op, &mut buf);
        }
        start.elapsed()
    }

    /// `n` gRPC calls, each timed: the per-call latencies and the wall time of them all.
    fn grpc_samples(&self, op: Op, n: usize) -> (Vec<Duration>, Duration) {
        self.rt.block_on(async {
            let mut client = self.client.clone();
            for _ in 0..n.min(50) {
                self.grpc(&mut client, op).await;
            }
            let mut each = Vec::with_capacity(n);
            let start = Instant::now();
            for _ in 0..n {
                let t = Instant::now();
                self.grpc(&mut client, op).await;
                each.push(t.elapsed());
            }
            (each, start.elapsed())
        })
    }

    /// `n` direct calls, each timed.
    fn direct_samples(&self, op: Op, n: usize) -> (Vec<Duration>, Duration) {
        let mut buf = vec![0u8; SIZES[1].0];
        for _ in 0..n.min(50) {
            self.direct(op, &mut buf);
        }
        let mut each = Vec::with_capacity(n);
        let start = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            self.direct(op, &mut buf);
            each.push(t.elapsed());
        }
        (each, start.elapsed())
    }

    /// `n` GetRegion calls spread over [`CONCURRENT`] clients in flight at once, each on its own
    /// connection.
    fn concurrent_get_region(&self, n: usize) -> (Vec<Duration>, Duration) {
        let per_client = n.div_ceil(CONCURRENT);
        self.rt.block_on(async {
            let mut clients = Vec::new();
            for _ in 0..CONCURRENT {
                let channel = tonic::transport::Endpoint::from_shared(self.addr.clone())
                    .expect("endpoint")
                    .connect()
                    .await
                    .expect("connect");
                clients.push(BrokerClient::new(channel));
            }
            let mut tasks = tokio::task::JoinSet::new();
            let start = Instant::now();
            for mut c in clients {
                let token = self.token.clone();
                tasks.spawn(async move {
                    let mut each = Vec::with_capacity(per_client);
                    for _ in 0..per_client {
                        let t = Instant::now();
                        c.get_region(authorized(&token, region_ref())).await.expect("GetRegion");
                        each.push(t.elapsed());
                    }
                    each
                });
            }
            let mut each = Vec::with_capacity(per_client * CONCURRENT);
            while let Some(done) = tasks.join_next().await {
                each.extend(done.expect("a client task"));
            }
            (each, start.elapsed())
        })
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            let outcome = self.rt.block_on(h).expect("server task");
            outcome.expect("the server ends cleanly");
        }
    }
}

fn control_plane(c: &mut Criterion) {
    let bench = Bench::start();
    let mut g = c.benchmark_group("control_plane");
    g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    for op in Op::all() {
        let bytes = u64::try_from(op.bytes()).unwrap_or(0);
        g.throughput(if bytes == 0 { Throughput::Elements(1) } else { Throughput::Bytes(bytes) });
        g.bench_function(BenchmarkId::new(format!("{}/grpc", op.name()), op.label()), |b| {
            b.iter_custom(|n| bench.grpc_loop(op, n))
        });
        g.bench_function(BenchmarkId::new(format!("{}/in_process", op.name()), op.label()), |b| {
            b.iter_custom(|n| bench.direct_loop(op, n))
        });
    }
    g.finish();
}

/// Latency percentiles and throughput of a sample.
struct Figures {
    p50: Duration,
    p99: Duration,
    ops_per_sec: f64,
}

/// Nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted.get(rank - 1).copied().unwrap_or_default()
}

fn figures((mut each, wall): (Vec<Duration>, Duration)) -> Figures {
    each.sort_unstable();
    #[allow(clippy::cast_precision_loss, reason = "reporting figures")]
    let ops_per_sec = each.len() as f64 / wall.as_secs_f64().max(f64::MIN_POSITIVE);
    Figures { p50: percentile(&each, 50), p99: percentile(&each, 99), ops_per_sec }
}

fn row(op: Op, path: &str, f: &Figures, ratio: Option<f64>) {
    #[allow(clippy::cast_precision_loss, reason = "reporting figures")]
    let mb_s = if op.bytes() == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}", f.ops_per_sec * op.bytes() as f64 / 1e6)
    };
    let ratio = ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{:<11} {:<5} {:<16} {:>10.3} {:>10.3} {:>11.0} {:>9} {:>10}",
        op.name(),
        op.label(),
        path,
        us(f.p50),
        us(f.p99),
        f.ops_per_sec,
        mb_s,
        ratio
    );
}

/// Prints p50/p99 latency, throughput and the gRPC/in-process ratio per operation, measured now.
fn summary(full: bool) {
    let bench = Bench::start();
    let n = if full { 2000 } else { 20 };
    println!("\ncontrol_plane summary ({n} calls per row, one client calling back to back unless noted;");
    println!(
        "latencies include the two clock reads around each call; x in-proc = gRPC p50 / in-process p50;"
    );
    println!("MB/s in 10^6 bytes)");
    println!(
        "{:<11} {:<5} {:<16} {:>10} {:>10} {:>11} {:>9} {:>10}",
        "op", "size", "path", "p50 us", "p99 us", "ops/s", "MB/s", "x in-proc"
    );
    for op in Op::all() {
        let grpc = figures(bench.grpc_samples(op, n));
        let direct = figures(bench.direct_samples(op, n));
        let ratio = grpc.p50.as_secs_f64() / direct.p50.as_secs_f64().max(1e-9);
        row(op, "grpc", &grpc, Some(ratio));
        row(op, "in_process", &direct, None);
        if matches!(op, Op::GetRegion) {
            let concurrent = figures(bench.concurrent_get_region(n));
            row(op, &format!("grpc x{CONCURRENT} clients"), &concurrent, None);
        }
    }
}

criterion_group!(
    name = benches;
    config = Criterion::default();
    targets = control_plane
);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary(full_run());
}
