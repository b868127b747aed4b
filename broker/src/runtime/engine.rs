//! The shared wasmtime engine and the epoch ticker that bounds (and time-slices) every call.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use wasmtime::{Config, Engine};

use super::timer::Timers;
use crate::error::Error;

/// How often the epoch advances; call deadlines are checked, long calls yield their worker, and
/// waiting calls' timers fire at these ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(EPOCH_TICK_MS);

/// [`EPOCH_TICK`] in milliseconds.
pub(crate) const EPOCH_TICK_MS: u64 = 5;

/// The engine plus the thread that advances its epoch; stopping is joining.
pub(crate) struct EngineHandle {
    pub(crate) engine: Engine,
    /// Deadlines of suspended calls, fired by the ticker.
    pub(crate) timers: Arc<Timers>,
    stop: Option<Sender<()>>,
    ticker: Option<JoinHandle<()>>,
}

impl EngineHandle {
    pub(crate) fn new() -> Result<EngineHandle, Error> {
        let mut config = Config::new();
        // Guests are built with +atomics so that memory shared between them (shared mode) is accessed
        // with real atomic instructions; validating those needs the threads proposal.
        config.wasm_threads(true);
        config.epoch_interruption(true);
        // Calls run as futures on fibers (`call_async`), so a long call can give its worker back at an
        // epoch tick and a waiting host call can park without holding a thread (see `runtime::pool`).
        // Each store keeps its last fiber stack for the next call, so a call maps no new stack.
        // Linear memories are the broker's own reservations, so shared windows can be mapped into them.
        // wasmtime's copy-on-write memory images only work with its own memories.
        config.with_host_memory(std::sync::Arc::new(super::memory_creator::BrokerMemoryCreator));
        config.memory_init_cow(false);
        // One compilation uses one thread: it runs on a worker as its tenant's turn (see
        // `runtime::pool`), which bounds the cores compiling takes only if it stays on that thread.
        config.parallel_compilation(false);
        let engine = Engine::new(&config)
            .map_err(|e| Error::InvalidArgument { field: "engine config", reason: e.to_string() })?;
        let (stop, rx) = bounded::<()>(0);
        let ticking = engine.clone();
        let timers = Arc::new(Timers::default());
        let firing = Arc::clone(&timers);
        let ticker = std::thread::Builder::new()
            .name("broker-epoch".into())
            .spawn(move || {
                // Dropping `stop` (or sending on it) ends the loop; every timeout is one tick.
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(EPOCH_TICK) {
                    ticking.increment_epoch();
                    firing.fire(Instant::now());
                }
            })
            .map_err(|e| Error::InvalidArgument { field: "epoch thread", reason: e.to_string() })?;
        Ok(EngineHandle { engine, timers, stop: Some(stop), ticker: Some(ticker) })
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}
