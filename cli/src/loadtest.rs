//! `broker loadtest`: a bounded load generator on loopback. It starts a daemon in this process on
//! `127.0.0.1:0`, holds N concurrent clients for M seconds of mixed RPCs (writes, reads, region info,
//! stats, calls into an app), and reports errors (which must be 0), latency percentiles, throughput and
//! the process's resident memory at the start and the end (which must stay bounded).

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_proto::pb;
use broker_proto::pb::broker_client::BrokerClient;
use serde::Serialize;

use broker::{Broker, BrokerConfig};
use broker_control::server::{serve, ServeConfig};
use broker_control::ControlPlane;

/// What a load run measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LoadReport {
    /// Concurrent clients.
    pub clients: usize,
    /// Seconds of load.
    pub seconds: u64,
    /// RPCs completed.
    pub ops: u64,
    /// RPCs that failed.
    pub errors: u64,
    /// Completed RPCs per second.
    pub ops_per_sec: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th-percentile latency, microseconds.
    pub p99_us: f64,
    /// Slowest call, microseconds.
    pub max_us: f64,
    /// Resident memory after set-up, bytes.
    pub rss_start: u64,
    /// Resident memory at the end, bytes.
    pub rss_end: u64,
}

/// Resident set size of this process, from `/proc/self/status`.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

fn req<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// Runs the load and returns its report; progress goes to `progress` once a second.
///
/// # Errors
/// A message if the in-process daemon or the set-up fails.
pub async fn run(
    clients: usize,
    seconds: u64,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<LoadReport, String> {
    let admin = "loadtest-admin";
    let broker = Arc::new(Broker::new(BrokerConfig::default()).map_err(|e| e.to_string())?);
    let plane = Arc::new(ControlPlane::open(broker, admin, None).map_err(|e| e.to_string())?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = ServeConfig::default();
    let server = tokio::spawn(async move {
        serve(plane, listener, &config, async {
            let _ = stopped.await;
        })
        .await
    });
    let channel = tonic::transport::Endpoint::from_shared(addr.clone())
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut c = BrokerClient::new(channel);
    let setup = async {
        c.create_tenant(req(admin, pb::CreateTenantRequest { name: "load".into(), quotas: None })).await?;
        let size = u64::try_from(clients.max(1) * 4096).unwrap_or(4096);
        let region = pb::CreateRegionRequest {
            tenant: "load".into(),
            name: "data".into(),
            size,
            mode: pb::Mode::Handle.into(),
            policy: 0,
            backing: 0,
            // Every client app reads and writes its own slot of the one region.
            member_rights: broker_abi::rights::READ | broker_abi::rights::WRITE,
            replication: 0,
        };
        c.create_region(req(admin, region)).await?;
        let wasm = broker_guests::HANDLE_APP_WASM.to_vec();
        c.upload_module(req(
            admin,
            pb::UploadModuleRequest { tenant: "load".into(), name: "app".into(), wasm },
        ))
        .await?;
        let start = pb::StartInstanceRequest {
            tenant: "load".into(),
            module: "app".into(),
            name: "app".into(),
            config: None,
        };
        c.start_instance(req(admin, start)).await?;
        Ok::<(), tonic::Status>(())
    };
    setup.await.map_err(|s| format!("set-up failed: {s}"))?;

    let rss_start = rss_bytes();
    let began = Instant::now();
    let deadline = began + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        let endpoint = tonic::transport::Endpoint::from_shared(addr.clone()).map_err(|e| e.to_string())?;
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let Ok(channel) = endpoint.connect().await else { return (lat, 1) };
            let mut c = BrokerClient::new(channel);
            let region = || Some(pb::RegionRef { tenant: "load".into(), name: "data".into() });
            let offset = u64::try_from(i * 4096).unwrap_or(0);
            let mut k = 0u64;
            while Instant::now() < deadline {
                k += 1;
                let t = Instant::now();
                let ok = match k % 5 {
                    0 => c
                        .write_region(req(
                            admin,
                            pb::WriteRegionRequest {
                                region: region(),
                                offset,
                                data: k.to_le_bytes().to_vec(),
                            },
                        ))
                        .await
                        .is_ok(),
                    1 => c
                        .read_region(req(
                            admin,
                            pb::ReadRegionRequest { region: region(), offset, len: 4096 },
                        ))
                        .await
                        .is_ok(),
                    2 => c
                        .get_region(req(admin, pb::RegionRef { tenant: "load".into(), name: "data".into() }))
                        .await
                        .is_ok(),
                    3 => c.stats(req(admin, pb::StatsRequest { tenant: "load".into() })).await.is_ok(),
                    _ => c
                        .call_instance(req(
                            admin,
                            pb::CallInstanceRequest {
                                tenant: "load".into(),
                                instance: "app".into(),
                                export: "ping".into(),
                                args: Vec::new(),
                            },
                        ))
                        .await
                        .is_ok(),
                };
                lat.push(t.elapsed());
                if !ok {
                    errors += 1;
                }
            }
            (lat, errors)
        });
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut all = Vec::new();
    let mut errors = 0u64;
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(Ok((lat, e))) => {
                    all.extend(lat);
                    errors += e;
                }
                Some(Err(_)) => errors += 1,
                None => break,
            },
            _ = tick.tick() => progress(format!("{:>3}s  clients {clients}  rss {} MiB", began.elapsed().as_secs(), rss_bytes() >> 20)),
        }
    }
    let elapsed = began.elapsed();
    let rss_end = rss_bytes();
    let _ = stop.send(());
    let _ = server.await;
    all.sort_unstable();
    let pct = |p: f64| {
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "an index into a sorted sample"
        )]
        let i = ((all.len().saturating_sub(1)) as f64 * p).round() as usize;
        all.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    let ops = u64::try_from(all.len()).unwrap_or(u64::MAX);
    #[allow(clippy::cast_precision_loss, reason = "reporting figures")]
    let ops_per_sec = ops as f64 / elapsed.as_secs_f64().max(1e-9);
    Ok(LoadReport {
        clients,
        seconds,
        ops,
        errors,
        ops_per_sec,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        max_us: pct(1.0),
        rss_start,
        rss_end,
    })
}
