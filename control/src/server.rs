//! The daemon: `broker serve` runs the gRPC API on a loopback address by default (behind the
//! authentication interceptor, [`ControlService::with_auth`]), with the health service and reflection (`v1` and `v1alpha`, listing and resolving every service served here), message-size
//! and concurrency limits, and a graceful shutdown that stops accepting calls, ends watch streams, drains
//! the calls in flight (for at most `drain_timeout_ms`, so a client that never answers cannot hold the
//! daemon up) and flushes persistent regions.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use broker_proto::pb;
use serde::Deserialize;
use tonic::transport::server::TcpIncoming;

use super::auth;
use super::plane::ControlPlane;
use super::reflection::{IndexError, ReflectionIndex, ReflectionV1, ReflectionV1Alpha};
use super::service::ControlService;
use super::status::ApiError;

/// Settings of `broker serve`, from a TOML file and flags (flags win).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where tenants, modules, region definitions, grants and persistent regions live; none means
    /// nothing survives a restart.
    pub state_dir: Option<PathBuf>,
    /// The admin token itself (prefer `admin_token_file` or `BROKER_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// A file holding the admin token.
    pub admin_token_file: Option<PathBuf>,
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// Concurrent requests per connection.
    pub concurrency_limit: usize,
    /// Worker threads running instances (0: one per core, at least two).
    pub workers: usize,
    /// Whether the daemon's broker has the UI toolkit extension (the `broker_ui_v1` imports): on by
    /// default; `ui = false` (or `broker serve --no-ui`) turns it off, and the daemon then refuses
    /// uploads of modules that import the toolkit.
    pub ui: bool,
    /// Native trampolines the UI extension's pool may bind at once (`UiConfig::trampolines`): 1 to
    /// `ext::ui::MAX_TRAMPOLINES`; anything else is refused when the broker starts. Unused with the
    /// extension off.
    pub trampolines: u32,
    /// How workers share the CPUs with the daemon's other threads (`BrokerConfig::worker_priority`):
    /// "idle" (the default) or "normal".
    pub worker_priority: broker::runtime::WorkerPriority,
    /// On shutdown, how long to wait for calls in flight and for clients to close their connections
    /// before giving up on them, in milliseconds.
    pub drain_timeout_ms: u64,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            state_dir: None,
            admin_token: None,
            admin_token_file: None,
            max_message_bytes: 32 << 20,
            concurrency_limit: 64,
            workers: 0,
            ui: true,
            trampolines: broker::ext::ui::DEFAULT_TRAMPOLINES,
            worker_priority: broker::runtime::WorkerPriority::Idle,
            drain_timeout_ms: 10_000,
        }
    }
}

/// Why the daemon could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The config file is unreadable or invalid.
    #[error("config {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and field where TOML says so.
        reason: String,
    },
    /// The admin token could not be read or created.
    #[error("admin token: {0}")]
    AdminToken(String),
    /// The control plane could not start (state store, broker).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The gRPC server failed.
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection index could not be built from the compiled-in descriptor sets.
    #[error("reflection: {0}")]
    Reflection(#[from] IndexError),
}

impl ServeConfig {
    /// The UI toolkit extension's settings for the daemon's broker, `None` when `ui` is off.
    pub fn ui_config(&self) -> Option<broker::UiConfig> {
        self.ui.then_some(broker::UiConfig { trampolines: self.trampolines })
    }

    /// Parses a TOML config file.
    ///
    /// # Errors
    /// [`ServeError::Config`] naming the file and, from TOML, the line and field.
    pub fn load(path: &Path) -> Result<ServeConfig, ServeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServeError::Config { path: path.to_owned(), reason: e.to_string() })?;
        toml::from_str(&text).map_err(|e| ServeError::Config { path: path.to_owned(), reason: e.to_string() })
    }

    /// The admin token: from the config, its file, `BROKER_ADMIN_TOKEN`, or `<state-dir>/admin.token`
    /// (created with a fresh random token on first start). Without any of these, a fresh token for this
    /// run; the second value says where it came from, for the log.
    ///
    /// # Errors
    /// [`ServeError::AdminToken`] if a named file cannot be read or the state dir not written.
    pub fn admin_token(&self) -> Result<(String, String), ServeError> {
        let err = |e: std::io::Error| ServeError::AdminToken(e.to_string());
        if let Some(t) = &self.admin_token {
            return Ok((t.trim().to_owned(), "the config file".into()));
        }
        if let Some(f) = &self.admin_token_file {
            return Ok((std::fs::read_to_string(f).map_err(err)?.trim().to_owned(), f.display().to_string()));
        }
        if let Ok(t) = std::env::var("BROKER_ADMIN_TOKEN") {
            return Ok((t.trim().to_owned(), "BROKER_ADMIN_TOKEN".into()));
        }
        let fresh = || auth::new_token().map_err(|e| ServeError::AdminToken(e.to_string()));
        match &self.state_dir {
            Some(dir) => {
                let path = dir.join("admin.token");
                if let Ok(t) = std::fs::read_to_string(&path) {
                    return Ok((t.trim().to_owned(), path.display().to_string()));
                }
                std::fs::create_dir_all(dir).map_err(err)?;
                let token = fresh()?;
                write_private(&path, &token).map_err(err)?;
                Ok((token, format!("{} (created)", path.display())))
            }
            None => Ok((fresh()?, "generated for this run".into())),
        }
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Accepted connections with `TCP_NODELAY` set. The server's own TCP options apply only to listeners it
/// binds itself; without this, a response split over two small writes (headers, then a 4 KiB body)
/// waits for the client's delayed ACK under Nagle's algorithm: about 40 ms per call.
fn incoming(listener: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Serves the API on `listener` until `shutdown` resolves, then ends every watch stream, drains calls
/// in flight for at most [`ServeConfig::drain_timeout_ms`], and flushes every persistent region.
///
/// # Errors
/// [`ServeError::Transport`] if the server fails, [`ServeError::Api`] if the final flush fails.
pub async fn serve(
    plane: Arc<ControlPlane>,
    listener: tokio::net::TcpListener,
    config: &ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<pb::broker_server::BrokerServer<ControlService>>().await;
    // Both reflection versions answer from one index of every service added below, health included.
    let index = Arc::new(ReflectionIndex::daemon()?);
    // Every call of the API is authenticated by the interceptor `with_auth` wraps it in; health and
    // reflection are public.
    let api = ControlService::with_auth(Arc::clone(&plane), config.max_message_bytes);
    tracing::info!(addr = %listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()), "serving broker.v1");
    let (draining, drain_started) = tokio::sync::oneshot::channel::<()>();
    let closing = Arc::clone(&plane);
    let shutdown = async move {
        shutdown.await;
        // Watch streams never end by themselves, and the drain below waits for every open stream.
        closing.end_watches();
        let _ = draining.send(());
    };
    let server = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(config.concurrency_limit.max(1))
        .add_service(health_service)
        .add_service(
            ReflectionV1::new(Arc::clone(&index))
                .into_server()
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(config.max_message_bytes),
        )
        .add_service(
            ReflectionV1Alpha::new(index)
                .into_server()
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(config.max_message_bytes),
        )
        .add_service(api)
        .serve_with_incoming_shutdown(incoming(listener), shutdown);
    // The graceful close of an HTTP/2 connection needs the client's answer to a ping: a client that
    // hangs or has vanished would hold the drain up forever, so the drain has a deadline.
    let drain = Duration::from_millis(config.drain_timeout_ms);
    let deadline = async move {
        match drain_started.await {
            Ok(()) => tokio::time::sleep(drain).await,
            // The server ended without a shutdown: nothing to time.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        served = server => served?,
        () = deadline => tracing::warn!(?drain, "drain deadline passed; dropping the remaining connections"),
    }
    let flushed = plane.broker().flush_all().map_err(ApiError::from)?;
    tracing::info!(flushed, "drained; persistent regions flushed");
    Ok(())
}
