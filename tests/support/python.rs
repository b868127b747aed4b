//! Finding a Python with grpcio for the tests that run a Python client, shared by the broker crate's
//! process tests and the integration suite (each includes this file with `#[path]`: they are
//! different crates, and `CARGO_TARGET_TMPDIR` exists only for test targets).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A Python interpreter that can run `examples/python/client.py` and `tests/python/reflection.py`,
/// from `examples/python/bootstrap.py`: `python3` if it imports grpcio and its tools, otherwise a
/// virtual environment under the target dir, where pip installs `examples/python/requirements.txt`
/// on first use.
///
/// # Errors
/// Why there is none: no `python3`, no `venv`, or pip could not install the packages (offline).
pub fn python_with_grpcio() -> Result<PathBuf, String> {
    // Both including crates sit one directory below the repository root.
    let bootstrap = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/bootstrap.py");
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-grpcio");
    let out = Command::new("python3")
        .arg(&bootstrap)
        .arg(&venv)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last() {
        Some(path) if out.status.success() => Ok(PathBuf::from(path)),
        _ => {
            Err(format!("{}: {}\n{}", bootstrap.display(), out.status, String::from_utf8_lossy(&out.stderr)))
        }
    }
}
