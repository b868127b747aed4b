//! WASI preview 1 for core modules: the imports that stock toolchains target (`wasm32-wasip1` Rust
//! with `std`, C with wasi-libc), linked beside `broker_v1` from wasmtime-wasi (`wasmtime_wasi::p1`)
//! with a policy of least authority per instance.
//!
//! What an instance gets by default:
//! - no preopened directories, so no file system at all, unless its [`WasiConfig::dirs`] grants some
//!   under its tenant's app data directory (see [`dirs`]);
//! - no arguments and no environment unless its [`WasiConfig`] sets them;
//! - the host's clocks and random numbers;
//! - an empty stdin;
//! - stdout and stderr into the instance's [`InstanceLog`], a ring of the last N KiB charged to its
//!   tenant's `log_bytes` quota, and from there, rate-limited, to the host's `tracing` output;
//! - `proc_exit` ends the call and stops the instance (state stopped, restartable), not a trap.
//!
//! WASI host functions are async (wasmtime's `call_async`, on the broker's fibers): a `poll_oneoff`
//! sleep parks the call and frees its worker, as `region_wait` does, and the call's budget still ends
//! it. Their timers run on a small tokio runtime of the broker's own ([`AsyncContext`]), which the
//! workers enter.
//!
//! A module is a WASI app if it imports anything from [`MODULE`]. A reactor (a `cdylib`, or C built
//! with `-mexec-model=reactor`) exports `_initialize`, which the broker calls once after
//! instantiation, as the WASI application ABI asks; a command exports `_start`, which callers call
//! like any export.

pub mod dirs;
pub mod log;

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime::{Engine, Linker, Store};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::WasiCtxBuilder;

pub use dirs::DirGrant;
pub use log::{InstanceLog, LogLine, LogRead, LogStream};

/// The import module of WASI preview 1.
pub const MODULE: &str = "wasi_snapshot_preview1";

/// The reactor initialiser the broker calls after instantiating a WASI app that exports it.
pub const INITIALIZE: &str = "_initialize";

/// Most bytes one WASI call may carry from the guest to the host (wasmtime's hostcall fuel): a larger
/// `fd_write` or `poll_oneoff` fails with `ENOMEM`, so no single call costs the host more than this
/// much memory, or more than this much work, outside the epoch checks that bound the rest.
pub const HOSTCALL_BYTES: usize = 1 << 20;

/// Most random bytes one `random_get` may ask for.
pub const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// A WASI app's log ring when its [`crate::InstanceConfig`] does not say: 64 KiB.
pub const DEFAULT_LOG_BYTES: u64 = 64 << 10;

/// Largest log ring an instance may ask for: 16 MiB.
pub const MAX_LOG_BYTES: u64 = 16 << 20;

/// What a WASI app is given beyond the defaults (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasiConfig {
    /// Its arguments (`argv`), none by default. By convention the first is the program's name.
    pub args: Vec<String>,
    /// Its environment, none by default.
    pub env: Vec<(String, String)>,
    /// The size of its log ring in bytes, reserved from the tenant's `log_bytes` quota: from
    /// [`log::MIN_CAPACITY`] to [`MAX_LOG_BYTES`]; [`DEFAULT_LOG_BYTES`] by default.
    pub log_bytes: u64,
    /// Directories it may use, under its tenant's app data directory; none by default.
    pub dirs: Vec<DirGrant>,
}

impl Default for WasiConfig {
    fn default() -> WasiConfig {
        WasiConfig { args: Vec::new(), env: Vec::new(), log_bytes: DEFAULT_LOG_BYTES, dirs: Vec::new() }
    }
}

/// Largest total size of an instance's arguments and environment (names, values and one byte each
/// for the terminators), as Linux's `ARG_MAX` bounds a process's.
pub const MAX_ARGS_ENV_BYTES: usize = 64 << 10;

impl WasiConfig {
    /// Checks a configuration from outside (the control API, a scenario file, a host).
    ///
    /// # Errors
    /// The field and why: `log_bytes` out of range, `args` or `env` too large or holding a NUL byte
    /// (which the guest could not see), an environment name that is empty or holds `=`, or `dirs`
    /// too many or not plain paths (see [`DirGrant::check`]).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let min = log::MIN_CAPACITY as u64;
        if !(min..=MAX_LOG_BYTES).contains(&self.log_bytes) {
            return Err(("log_bytes", format!("{} is outside {min}..={MAX_LOG_BYTES}", self.log_bytes)));
        }
        let mut total = 0usize;
        for a in &self.args {
            if a.contains('\0') {
                return Err(("args", "an argument holds a NUL byte".into()));
            }
            total = total.saturating_add(a.len() + 1);
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(("env", format!("{k:?}: a name is not empty and holds no '=' or NUL")));
            }
            total = total.saturating_add(k.len() + v.len() + 2);
        }
        if self.dirs.len() > dirs::MAX_DIRS {
            return Err(("dirs", format!("{} directories, at most {}", self.dirs.len(), dirs::MAX_DIRS)));
        }
        for d in &self.dirs {
            d.check().map_err(|e| ("dirs", e))?;
        }
        if total > MAX_ARGS_ENV_BYTES {
            return Err((
                "args",
                format!("arguments and environment take {total} bytes, above {MAX_ARGS_ENV_BYTES}"),
            ));
        }
        Ok(())
    }
}

/// Whether `module` is a WASI app (imports anything from [`MODULE`]).
pub(crate) fn imports_wasi(module: &wasmtime::Module) -> bool {
    module.imports().any(|i| i.module() == MODULE)
}

/// The names wasmtime-wasi defines under [`MODULE`], so a module importing anything else is refused
/// when it is loaded, naming the import.
pub(crate) fn names(engine: &Engine) -> wasmtime::Result<HashSet<String>> {
    let mut linker: Linker<WasiP1Ctx> = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |cx| cx)?;
    let mut store = Store::new(engine, WasiCtxBuilder::new().build_p1());
    Ok(linker.iter(&mut store).filter(|(m, _, _)| *m == MODULE).map(|(_, n, _)| n.to_owned()).collect())
}

/// The WASI context of one instantiation: `config`'s arguments and environment, output into `log`,
/// and `config`'s directories opened under `root` (the tenant's app data directory).
///
/// # Errors
/// A directory could not be opened (or there is no `root` for one), and why.
pub(crate) fn context(
    config: &WasiConfig,
    log: Option<&Arc<InstanceLog>>,
    root: Option<&std::path::Path>,
) -> Result<WasiP1Ctx, String> {
    let mut builder = WasiCtxBuilder::new();
    builder.args(&config.args).envs(&config.env).max_random_size(MAX_RANDOM_BYTES);
    if let Some(log) = log {
        builder.stdout(LogOutput { log: Arc::clone(log), stream: LogStream::Stdout });
        builder.stderr(LogOutput { log: Arc::clone(log), stream: LogStream::Stderr });
    }
    for d in &config.dirs {
        let root = root.ok_or("this broker has no app data directory for preopened directories")?;
        let fd = dirs::open_beneath(root, &d.path)?;
        let perms =
            if d.writable { wasmtime_wasi::FsPerms::ReadWrite } else { wasmtime_wasi::FsPerms::ReadOnly };
        builder.preopened_dir(dirs::fd_path(&fd), &d.guest, perms).map_err(|e| format!("{}: {e}", d.path))?;
    }
    Ok(builder.build_p1())
}

/// The exit status of a call that ended in `proc_exit`, if it did.
pub(crate) fn exit_status(e: &wasmtime::Error) -> Option<i32> {
    e.downcast_ref::<wasmtime_wasi::I32Exit>().map(|e| e.0)
}

/// The tokio runtime that wasmtime-wasi's timers and file operations run on: one thread, which drives
/// the timers of parked calls (their futures are polled by the broker's workers, which enter this
/// runtime's context). Shut down without waiting when the broker goes, so a broker may be dropped on
/// an async runtime's thread.
pub(crate) struct AsyncContext {
    runtime: Option<tokio::runtime::Runtime>,
}

impl AsyncContext {
    /// Starts the runtime's thread.
    pub(crate) fn new() -> std::io::Result<AsyncContext> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(4)
            .thread_name("broker-wasi")
            .enable_time()
            .build()?;
        Ok(AsyncContext { runtime: Some(runtime) })
    }

    /// What a worker enters to poll WASI futures.
    pub(crate) fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.runtime.as_ref().map(|r| r.handle().clone())
    }
}

impl Drop for AsyncContext {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// An app's stdout or stderr, written into its log.
#[derive(Clone)]
struct LogOutput {
    log: Arc<InstanceLog>,
    stream: LogStream,
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogOutput {
    /// Always ready: a write never waits (the ring drops its oldest lines instead).
    async fn ready(&mut self) {}
}

/// Writes at most this much at once, so one write call's host work stays small.
const WRITE_BUDGET: usize = 64 << 10;

impl OutputStream for LogOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.log.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

impl tokio::io::AsyncWrite for LogOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.log.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
