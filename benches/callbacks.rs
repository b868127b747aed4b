//! `callbacks`: what it costs to call into an app. Host → app: a host write to a watched region and
//! the watch callback it triggers on the app's worker. C library → app: the toolkit firing an event
//! through a native trampoline into the app's callback. The baseline, measured in the same run, is a
//! direct wasmtime typed `Func::call` of the same callback function in a bare store.

#![allow(missing_docs, reason = "criterion_group! generates an undocumented function")]

use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

use broker::{
    Broker, BrokerConfig, InstanceConfig, InstanceId, Mode, Quotas, RegionId, RegionSpec, Rights, UiConfig,
    Val,
};
use broker_benches::full_run;

struct World {
    broker: Broker,
    app: InstanceId,
    data: RegionId,
    object: RegionId,
}

/// A broker with the UI toolkit extension (the app uses the toolkit) and one `callback_app` watching a
/// region and listening to a toolkit object.
fn world() -> World {
    let config = BrokerConfig { workers: 1, ui: Some(UiConfig::default()), ..BrokerConfig::default() };
    let broker = Broker::new(config).expect("broker");
    let t = broker.create_tenant("bench", Quotas::default()).expect("tenant");
    let data = broker
        .create_region(t, RegionSpec::new("data", 4096, Mode::Handle).with_members(Rights::ALL))
        .expect("region");
    broker.load_module(t, "app", broker_guests::CALLBACK_APP_WASM).expect("module");
    let app = broker.start_instance(t, "app", "app", InstanceConfig::default()).expect("instance");
    assert!(broker.call_i64(app, "watch", &[Val::I32(0), Val::I32(1)]).expect("watch") > 0);
    assert!(broker.call_i64(app, "ui_make", &[Val::I32(0), Val::I32(1)]).expect("ui") > 0);
    let object =
        broker.regions(t).into_iter().find(|r| r.name.starts_with("ui.")).map(|r| r.id).expect("object");
    World { broker, app, data, object }
}

impl World {
    fn sync(&self) {
        self.broker.call_i64(self.app, "ping", &[]).expect("ping");
    }

    /// `n` host writes, each delivering a watch callback; waits until all were delivered.
    fn watch_events(&self, n: u64) -> Duration {
        let start = Instant::now();
        let mut left = n;
        while left > 0 {
            // Stay within a watch's undelivered capacity so nothing merges: every write is one callback.
            let batch = left.min(broker::runtime::events::WATCH_SOURCE_CAPACITY as u64);
            for _ in 0..batch {
                self.broker.write_region(self.data, 0, &[1]).expect("write");
            }
            self.sync();
            left -= batch;
        }
        start.elapsed()
    }

    /// `n` toolkit events, each through a trampoline into the app's callback.
    fn toolkit_events(&self, n: u64) -> Duration {
        let ui = self.broker.ui().expect("the broker has the UI extension");
        let start = Instant::now();
        let mut left = n;
        while left > 0 {
            let batch = left.min(128);
            for i in 0..batch {
                ui.send(self.object, 3, i32::try_from(i).unwrap_or(0)).expect("send");
            }
            self.sync();
            left -= batch;
        }
        start.elapsed()
    }

    /// `n` round trips: one host write, then wait for its callback.
    fn watch_round_trips(&self, n: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            self.broker.write_region(self.data, 0, &[1]).expect("write");
            self.sync();
        }
        start.elapsed()
    }

    fn ping_round_trips(&self, n: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            self.sync();
        }
        start.elapsed()
    }
}

/// The same callback function, called directly with wasmtime's typed API in a bare store.
struct Direct {
    store: wasmtime::Store<()>,
    func: wasmtime::TypedFunc<(u32, u32, u64, u64, u64, u32), ()>,
}

fn direct() -> Direct {
    let mut config = wasmtime::Config::new();
    config.wasm_threads(true);
    let engine = wasmtime::Engine::new(&config).expect("engine");
    let module = wasmtime::Module::new(&engine, broker_guests::CALLBACK_APP_WASM).expect("module");
    let mut linker = wasmtime::Linker::new(&engine);
    linker.define_unknown_imports_as_traps(&module).expect("stubs");
    let mut store = wasmtime::Store::new(&engine, ());
    let instance = linker.instantiate(&mut store, &module).expect("instance");
    let index = instance
        .get_typed_func::<(), i64>(&mut store, "on_change_index")
        .expect("export")
        .call(&mut store, ())
        .expect("index");
    let table = instance.get_table(&mut store, "__indirect_function_table").expect("table");
    let Some(wasmtime::Ref::Func(Some(f))) = table.get(&mut store, u64::try_from(index).expect("index"))
    else {
        panic!("the callback is in the table")
    };
    let func = f.typed(&store).expect("signature");
    Direct { store, func }
}

impl Direct {
    fn run(&mut self, n: u64) -> Duration {
        let start = Instant::now();
        for i in 0..n {
            self.func.call(&mut self.store, (1, 1, i, 0, 1, 0)).expect("call");
        }
        start.elapsed()
    }
}

fn callbacks(c: &mut Criterion) {
    let w = world();
    let mut d = direct();
    let mut g = c.benchmark_group("callbacks");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("direct_typed_call_baseline", "watch_fn"), |b| {
        b.iter_custom(|n| d.run(n))
    });
    g.bench_function(BenchmarkId::new("host_to_app", "watch_throughput"), |b| {
        b.iter_custom(|n| w.watch_events(n))
    });
    g.bench_function(BenchmarkId::new("host_to_app", "watch_round_trip"), |b| {
        b.iter_custom(|n| w.watch_round_trips(n))
    });
    g.bench_function(BenchmarkId::new("c_library_to_app", "trampoline_throughput"), |b| {
        b.iter_custom(|n| w.toolkit_events(n))
    });
    g.finish();
}

fn per(d: Duration, n: u64) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "reporting figures")]
    let v = d.as_nanos() as f64 / n.max(1) as f64;
    v
}

fn summary(full: bool) {
    let w = world();
    let mut d = direct();
    let n = if full { 20_000 } else { 200 };
    let best = |f: &mut dyn FnMut(u64) -> Duration| {
        (0..if full { 5 } else { 1 }).map(|_| f(n)).min().unwrap_or_default()
    };
    let base = per(best(&mut |n| d.run(n)), n);
    let watch = per(best(&mut |n| w.watch_events(n)), n);
    let tramp = per(best(&mut |n| w.toolkit_events(n)), n);
    let rt = per(best(&mut |n| w.watch_round_trips(n / 10)), n / 10);
    let ping = per(best(&mut |n| w.ping_round_trips(n / 10)), n / 10);
    let (delivered, dead, merged) = w.broker.event_counts(w.app).expect("counts");
    println!(
        "\ncallbacks summary (best of {}; baseline = direct wasmtime typed call of the same callback)",
        if full { 5 } else { 1 }
    );
    println!("{:<44} {:>12} {:>12} {:>10}", "path", "ns/callback", "callbacks/s", "x direct");
    for (name, ns) in [
        ("direct typed Func::call (baseline)", base),
        ("host write -> watch callback (throughput)", watch),
        ("toolkit event -> trampoline -> callback", tramp),
        ("host write -> callback, round trip", rt),
        ("  of which: an empty call round trip", ping),
    ] {
        println!("{name:<44} {ns:>12.1} {:>12.0} {:>10.1}", 1e9 / ns, ns / base);
    }
    println!("(delivered {delivered}, undeliverable {dead}, merged {merged})");
}

criterion_group!(
    name = benches;
    config = Criterion::default();
    targets = callbacks
);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary(full_run());
}
