//! Preopened directories: what of the host's file system a WASI app may reach, granted per instance by
//! the operator (`WasiConfig::dirs`) and never beyond its tenant's own directory under the broker's
//! app data directory (`BrokerConfig::app_data`; `<state dir>/app-data` for `broker serve`).
//!
//! A grant names a path relative to `<app data>/<tenant>/`, made of plain names (the broker's name
//! rules: no `.`, `..`, `/` or empty component), so it can only name a place inside that directory.
//! The broker creates what is missing and opens it one component at a time with `O_NOFOLLOW`, so a
//! symbolic link an app left there (apps with a writable grant can make one) is refused, not
//! followed out of the tenant's directory. wasmtime-wasi (cap-std) then keeps the app's own paths
//! inside the opened directory.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};

/// Most preopened directories an instance may be given.
pub const MAX_DIRS: usize = 8;

/// Longest guest path of a preopened directory, in bytes.
pub const MAX_GUEST_PATH: usize = 256;

/// A directory a WASI app may use.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirGrant {
    /// Where on the host: a path of plain names (`a/b`) under the tenant's app data directory,
    /// created if missing.
    pub path: String,
    /// Where the app sees it (`/data`, say).
    pub guest: String,
    /// Whether the app may create, write and remove files there (otherwise it may only read).
    pub writable: bool,
}

impl DirGrant {
    /// Checks the grant's paths.
    ///
    /// # Errors
    /// Why the path or the guest path is not acceptable.
    pub fn check(&self) -> Result<(), String> {
        if self.path.is_empty() {
            return Err("a directory's path is empty".into());
        }
        for component in self.path.split('/') {
            crate::name::Name::new(component)
                .map_err(|e| format!("path {:?}: component {component:?}: {e}", self.path))?;
        }
        if self.guest.is_empty() || self.guest.len() > MAX_GUEST_PATH || self.guest.contains('\0') {
            return Err(format!(
                "guest path {:?}: 1 to {MAX_GUEST_PATH} bytes without NUL",
                self.guest.chars().take(40).collect::<String>()
            ));
        }
        Ok(())
    }
}

/// Opens `root/path` as a directory, creating `root` and any missing component, following no symbolic
/// link on the way (`path` is checked by [`DirGrant::check`]).
///
/// # Errors
/// The system's error, with the component it failed at; never a host path beyond `path`.
pub(crate) fn open_beneath(root: &Path, path: &str) -> Result<OwnedFd, String> {
    std::fs::create_dir_all(root).map_err(|e| format!("the tenant's app data directory: {e}"))?;
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let mut dir = rustix::fs::open(root, flags, Mode::empty())
        .map_err(|e| format!("the tenant's app data directory: {e}"))?;
    for component in path.split('/') {
        match rustix::fs::mkdirat(&dir, component, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(format!("{path}: creating {component:?}: {e}")),
        }
        dir = rustix::fs::openat(&dir, component, flags, Mode::empty()).map_err(|e| match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
                format!("{path}: {component:?} is not a directory (a symbolic link, say): refused")
            }
            e => format!("{path}: opening {component:?}: {e}"),
        })?;
    }
    Ok(dir)
}

/// A path that opens exactly the directory `fd` is open on (the process's own magic link to it), for
/// APIs that take a path: nothing can change where it leads while `fd` is open.
pub(crate) fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(path: &str, guest: &str) -> DirGrant {
        DirGrant { path: path.into(), guest: guest.into(), writable: false }
    }

    #[test]
    fn paths_are_plain_names_and_guest_paths_are_bounded() {
        assert!(grant("data", "/data").check().is_ok());
        assert!(grant("a/b-c/d.e", "/x").check().is_ok());
        for bad in ["", "..", ".", "a/../b", "/abs", "a//b", "a/", "a b"] {
            assert!(grant(bad, "/data").check().is_err(), "{bad:?}");
        }
        assert!(grant("a", "").check().is_err());
        assert!(grant("a", "/a\0").check().is_err());
        assert!(grant("a", &"x".repeat(MAX_GUEST_PATH + 1)).check().is_err());
    }

    #[test]
    fn opening_creates_what_is_missing_and_refuses_symbolic_links() {
        let root = tempfile::tempdir().expect("tempdir");
        let tenant = root.path().join("t");
        let fd = open_beneath(&tenant, "a/b").expect("created and opened");
        assert!(tenant.join("a/b").is_dir());
        // The magic link leads to the directory itself.
        std::fs::write(Path::new(&fd_path(&fd)).join("f"), b"x").expect("write through the fd path");
        assert_eq!(std::fs::read(tenant.join("a/b/f")).expect("read"), b"x");
        std::os::unix::fs::symlink("/etc", tenant.join("a/link")).expect("symlink");
        let refused = open_beneath(&tenant, "a/link").expect_err("a symlink is not followed");
        assert!(refused.contains("not a directory") && !refused.contains("/etc"), "{refused}");
        std::os::unix::fs::symlink("/", root.path().join("u")).expect("symlink");
        assert!(open_beneath(&root.path().join("u"), "etc").is_err(), "a linked tenant root is refused");
    }
}
