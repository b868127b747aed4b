//! `callbacks`: what it costs to call into an app. Host → app: a host write to a watched region and
//! the watch callback it triggers, run on the writing thread while the app is idle (the default) or
//! handed to the app's worker (`callbacks_on_writer` off). C library → app: the toolkit firing an event
//! through a native trampoline into the app's callback. The baseline, measured in the same run, is a
//! direct wasmtime typed `Func::call` of the same callback function in a bare store; beside it, the same
//! call through `call_async` in a store that needs async calls, as every broker store does (epoch
//! yields, waiting host calls): the floor of any callback that can be preempted.

#![allow(missing_docs, reason = "criterion_group! generates an undocumented function")]

use std::future::Future;
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
/// region and listening to a toolkit object. `on_writer`: [`BrokerConfig::callbacks_on_writer`], whether
/// host writes run the callbacks they trigger on the writing thread or hand them to the app's worker.
fn world(on_writer: bool) -> World {
    let config = BrokerConfig {
        workers: 1,
        ui: Some(UiConfig::default()),
        callbacks_on_writer: on_writer,
        ..BrokerConfig::default()
    };
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
    /// Callbacks delivered so far.
    fn delivered(&self) -> u64 {
        self.broker.event_counts(self.app).expect("counts").0
    }

    /// Waits until `target` callbacks were delivered, watching the broker's count (a call to the app
    /// would wake its worker, which costs more than a callback); yields, so a worker sharing this core
    /// gets it.
    fn wait_delivered(&self, target: u64) {
        while self.delivered() < target {
            std::thread::yield_now();
        }
    }

    /// `n` host writes, each delivering a watch callback; waits until all were delivered.
    fn watch_events(&self, n: u64) -> Duration {
        let mut delivered = self.delivered();
        let start = Instant::now();
        let mut left = n;
        while left > 0 {
            // Stay within a watch's undelivered capacity so nothing merges: every write is one callback.
            let batch = left.min(broker::runtime::events::WATCH_SOURCE_CAPACITY as u64);
            for _ in 0..batch {
                self.broker.write_region(self.data, 0, &[1]).expect("write");
            }
            delivered += batch;
            self.wait_delivered(delivered);
            left -= batch;
        }
        start.elapsed()
    }

    /// `n` toolkit events, each through a trampoline into the app's callback.
    fn toolkit_events(&self, n: u64) -> Duration {
        let ui = self.broker.ui().expect("the broker has the UI extension");
        let mut delivered = self.delivered();
        let start = Instant::now();
        let mut left = n;
        while left > 0 {
            let batch = left.min(128);
            for i in 0..batch {
                ui.send(self.object, 3, i32::try_from(i).unwrap_or(0)).expect("send");
            }
            delivered += batch;
            self.wait_delivered(delivered);
            left -= batch;
        }
        start.elapsed()
    }

    /// `n` round trips: one host write, then wait until its callback ran.
    fn watch_round_trips(&self, n: u64) -> Duration {
        let mut delivered = self.delivered();
        let start = Instant::now();
        for _ in 0..n {
            self.broker.write_region(self.data, 0, &[1]).expect("write");
            delivered += 1;
            self.wait_delivered(delivered);
        }
        start.elapsed()
    }

    fn ping_round_trips(&self, n: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            self.broker.call_i64(self.app, "ping", &[]).expect("ping");
        }
        start.elapsed()
    }
}

/// The same callback function in a bare store, called directly with wasmtime's typed API: with
/// `call` ([`direct`]), or with `call_async` in a store that needs async calls ([`direct_async`]).
struct Direct {
    store: wasmtime::Store<()>,
    func: wasmtime::TypedFunc<(u32, u32, u64, u64, u64, u32), ()>,
}

/// An engine of `config` with `callback_app` compiled, a linker that stubs its imports, and a store.
fn bare(config: &wasmtime::Config) -> (wasmtime::Module, wasmtime::Linker<()>, wasmtime::Store<()>) {
    let engine = wasmtime::Engine::new(config).expect("engine");
    let module = wasmtime::Module::new(&engine, broker_guests::CALLBACK_APP_WASM).expect("module");
    let mut linker = wasmtime::Linker::new(&engine);
    linker.define_unknown_imports_as_traps(&module).expect("stubs");
    let store = wasmtime::Store::new(&engine, ());
    (module, linker, store)
}

/// The watch callback at table `index` of `instance`, typed.
fn callback_at(store: wasmtime::Store<()>, instance: wasmtime::Instance, index: i64) -> Direct {
    let mut store = store;
    let table = instance.get_table(&mut store, "__indirect_function_table").expect("table");
    let Some(wasmtime::Ref::Func(Some(f))) = table.get(&mut store, u64::try_from(index).expect("index"))
    else {
        panic!("the callback is in the table")
    };
    let func = f.typed(&store).expect("signature");
    Direct { store, func }
}

/// Polls `f` once: the bare store's calls never wait.
fn ready<T>(f: impl Future<Output = T>) -> T {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(f).poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("a bare store's call does not wait"),
    }
}

fn direct() -> Direct {
    let mut config = wasmtime::Config::new();
    config.wasm_threads(true);
    let (module, linker, mut store) = bare(&config);
    let instance = linker.instantiate(&mut store, &module).expect("instance");
    let index = instance
        .get_typed_func::<(), i64>(&mut store, "on_change_index")
        .expect("export")
        .call(&mut store, ())
        .expect("index");
    callback_at(store, instance, index)
}

/// As every call into a broker instance is: epoch yields make the store require `call_async`. The
/// floor for any delivery that can be preempted.
fn direct_async() -> Direct {
    let mut config = wasmtime::Config::new();
    config.wasm_threads(true);
    config.epoch_interruption(true);
    let (module, linker, mut store) = bare(&config);
    store.epoch_deadline_async_yield_and_update(1_000_000);
    store.set_epoch_deadline(1_000_000);
    let instance = ready(linker.instantiate_async(&mut store, &module)).expect("instance");
    let f = instance.get_typed_func::<(), i64>(&mut store, "on_change_index").expect("export");
    let index = ready(f.call_async(&mut store, ())).expect("index");
    callback_at(store, instance, index)
}

impl Direct {
    fn run(&mut self, n: u64) -> Duration {
        let start = Instant::now();
        for i in 0..n {
            self.func.call(&mut self.store, (1, 1, i, 0, 1, 0)).expect("call");
        }
        start.elapsed()
    }

    fn run_async(&mut self, n: u64) -> Duration {
        let start = Instant::now();
        for i in 0..n {
            ready(self.func.call_async(&mut self.store, (1, 1, i, 0, 1, 0))).expect("call");
        }
        start.elapsed()
    }
}

fn callbacks(c: &mut Criterion) {
    let w = world(true);
    let q = world(false);
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
    g.bench_function(BenchmarkId::new("host_to_app_through_worker", "watch_throughput"), |b| {
        b.iter_custom(|n| q.watch_events(n))
    });
    g.bench_function(BenchmarkId::new("host_to_app_through_worker", "watch_round_trip"), |b| {
        b.iter_custom(|n| q.watch_round_trips(n))
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
    let w = world(true);
    let q = world(false);
    let mut d = direct();
    let mut da = direct_async();
    let n = if full { 20_000 } else { 200 };
    let best = |f: &mut dyn FnMut(u64) -> Duration| {
        (0..if full { 5 } else { 1 }).map(|_| f(n)).min().unwrap_or_default()
    };
    let base = per(best(&mut |n| d.run(n)), n);
    let base_async = per(best(&mut |n| da.run_async(n)), n);
    let watch = per(best(&mut |n| w.watch_events(n)), n);
    let rt = per(best(&mut |n| w.watch_round_trips(n)), n);
    let watch_q = per(best(&mut |n| q.watch_events(n)), n);
    let rt_q = per(best(&mut |n| q.watch_round_trips(n / 10)), n / 10);
    let tramp = per(best(&mut |n| w.toolkit_events(n)), n);
    let ping = per(best(&mut |n| w.ping_round_trips(n / 10)), n / 10);
    println!(
        "\ncallbacks summary (best of {}; baseline = direct wasmtime typed call of the same callback)",
        if full { 5 } else { 1 }
    );
    println!("{:<52} {:>12} {:>12} {:>10}", "path", "ns/callback", "callbacks/s", "x direct");
    for (name, ns) in [
        ("direct typed Func::call (baseline)", base),
        ("direct typed call_async (the floor of a fiber call)", base_async),
        ("host write -> watch callback, on the writer", watch),
        ("host write -> watch callback, on the writer, 1 by 1", rt),
        ("host write -> watch callback, through the worker", watch_q),
        ("host write -> callback via worker, 1 by 1", rt_q),
        ("toolkit event -> trampoline -> callback", tramp),
        ("an empty call round trip (for scale)", ping),
    ] {
        println!("{name:<52} {ns:>12.1} {:>12.0} {:>10.1}", 1e9 / ns, ns / base);
    }
    for (label, world) in [("on the writer", &w), ("through the worker", &q)] {
        let (delivered, dead, merged) = world.broker.event_counts(world.app).expect("counts");
        println!("({label}: delivered {delivered}, undeliverable {dead}, merged {merged})");
    }
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
