//! A real NATS server with JetStream for tests (issue 19): Debian's `nats-server`, installed when
//! missing, on a free loopback port with a temporary store, killed on drop. Included by path from the
//! test crates that need it.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server` with JetStream on a free loopback port and a temporary store, killed on drop.
pub struct Nats {
    child: Child,
    /// Where clients connect (`nats://127.0.0.1:PORT`).
    pub url: String,
    _store: tempfile::TempDir,
    port: u16,
}

/// The `nats-server` binary: Debian's, installed when missing (the test needs the real engine).
fn nats_server() -> String {
    let found = |p: &str| std::path::Path::new(p).exists();
    for p in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if found(p) {
            return p.to_string();
        }
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let install = ["install", "-y", "-q", "nats-server"];
    let installed = apt(&install) || (apt(&["update", "-q"]) && apt(&install));
    assert!(installed, "nats-server is missing and `apt-get install nats-server` failed");
    "/usr/sbin/nats-server".to_string()
}

impl Nats {
    /// Starts one and waits until it listens.
    pub fn start() -> Nats {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let store = tempfile::tempdir().expect("store dir");
        let child = spawn(port, store.path());
        Nats { child, url: format!("nats://127.0.0.1:{port}"), _store: store, port }
    }

    /// Stops the server (SIGKILL: nothing is flushed that JetStream had not synced).
    #[allow(dead_code, reason = "not every test crate including this stops its server")]
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and store, after [`Nats::stop`].
    #[allow(dead_code, reason = "not every test crate including this restarts its server")]
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(self.port, self._store.path());
    }
}

/// Starts `nats-server` with JetStream on `port` over `store`, and waits until it listens.
fn spawn(port: u16, store: &std::path::Path) -> Child {
    let child = Command::new(nats_server())
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
