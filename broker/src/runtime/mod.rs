//! The runtime: one wasmtime [`wasmtime::Engine`], one [`wasmtime::Store`] per instance, and a worker
//! pool that drives many instances on a few threads.
//!
//! Every instance has a mailbox (a crossbeam channel); calls are jobs posted to it, and a worker that
//! picks the instance up runs its jobs one at a time, so an instance is never entered by two threads at
//! once while instances as a whole run in parallel. Epoch interruption bounds every call, a
//! [`wasmtime::ResourceLimiter`] charges linear memory to the tenant's quota, and a trap marks the
//! instance as trapped (with the trap recorded) until it is restarted.
//!
//! **Invariant:** nothing a guest does (trap, runaway loop, memory bomb) unwinds into or blocks the host
//! beyond the call's epoch deadline.

mod engine;
pub mod events;
mod fault;
mod instance;
mod limits;
pub(crate) mod memory_creator;
mod pool;
mod priority;
mod reply;
mod timer;

use std::fmt;
use std::time::Duration;

// Defined with the capability space, whose handle tables it names: capabilities sit below the runtime.
pub use crate::capability::InstanceId;
pub(crate) use engine::EngineHandle;
pub(crate) use instance::{CallbacksHere, CellParts, EventSink, InstanceCell, InstanceState, StopTrap};
pub(crate) use pool::WorkerPool;
pub use priority::WorkerPriority;
pub(crate) use timer::{TimerKey, Timers};

/// Per-instance settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    /// Longest a single call may run before it is interrupted.
    pub call_timeout: Duration,
    /// Cap on this instance's linear memory (the tenant's quota applies on top).
    pub max_memory_bytes: u64,
    /// What a WASI app is given (ignored for other modules): arguments, environment, log ring size.
    pub wasi: crate::wasi::WasiConfig,
}

impl Default for InstanceConfig {
    /// 5 s per call, 256 MiB of linear memory, WASI's defaults (no arguments or environment, a
    /// 64 KiB log ring).
    fn default() -> InstanceConfig {
        InstanceConfig {
            call_timeout: Duration::from_secs(5),
            max_memory_bytes: 256 << 20,
            wasi: crate::wasi::WasiConfig::default(),
        }
    }
}

/// Whether an instance accepts calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Serving calls.
    Running,
    /// Its last call trapped (or was interrupted); it refuses calls until restarted.
    Trapped,
    /// Stopped by the host.
    Stopped,
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunState::Running => "running",
            RunState::Trapped => "trapped",
            RunState::Stopped => "stopped",
        })
    }
}

/// An instance's state and history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    /// The module the instance runs.
    pub module: String,
    /// Current state.
    pub state: RunState,
    /// Calls completed without trapping.
    pub calls: u64,
    /// Calls that trapped or were interrupted.
    pub traps: u64,
    /// Restarts so far.
    pub restarts: u64,
    /// The last trap's message.
    pub last_trap: Option<String>,
}

/// Why a call into an instance failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceError {
    /// The guest trapped; the instance now refuses calls until restarted.
    #[error("instance trapped: {message}")]
    Trapped {
        /// The trap, as wasmtime describes it.
        message: String,
    },
    /// The call ran past its deadline and was interrupted; the instance now refuses calls until restarted.
    #[error("call interrupted after exceeding its {timeout:?} deadline")]
    Interrupted {
        /// The deadline that was exceeded.
        timeout: Duration,
    },
    /// The host interrupted the call; the instance now refuses calls until restarted.
    #[error("call interrupted by the host")]
    Killed,
    /// A WASI app called `proc_exit`: the call ended there and the instance stopped (restartable).
    #[error("the app exited with status {status}; the instance is stopped")]
    Exited {
        /// The status it gave `proc_exit`.
        status: i32,
    },
    /// The instance is trapped or stopped.
    #[error("instance is {state}; restart it first")]
    NotRunning {
        /// Its state.
        state: RunState,
    },
    /// The module exports no function of that name.
    #[error("no exported function {0:?}")]
    NoSuchExport(String),
    /// The arguments do not match the export's signature.
    #[error("bad arguments for {export:?}: expected {expected}, got {got}")]
    BadArguments {
        /// The export.
        export: String,
        /// The expected parameter types.
        expected: String,
        /// The given argument types.
        got: String,
    },
    /// Instantiation failed.
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// The worker pool is shutting down and dropped the call.
    #[error("the broker is shutting down")]
    ShuttingDown,
}
