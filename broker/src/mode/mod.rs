//! Region modes: how an app reaches a region's bytes.
//!
//! The operator picks one [`Mode`] per region. This module is the one place that knows which modes this
//! broker implements ([`Mode::ensure_supported`]). Handle mode needs nothing beyond the region itself: its
//! copies are [`crate::region::Region`]'s locked reads and writes (which serve every mode: host reads and
//! writes and handle calls work on any region). [`mirror`] adds page-granular copy-on-access mirrors, and
//! [`shared`] zero-copy windows mapped into guests' linear memories.

pub mod mirror;
pub mod shared;

pub use mirror::ConflictPolicy;

use std::fmt;
use std::str::FromStr;

use broker_abi::mode as raw;

/// How apps reach a region's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Every access is a checked host call through a capability handle.
    Handle,
    /// The region is copied into the app's memory and written back on commit.
    Mirror,
    /// The region's pages are mapped into the app's memory.
    Shared,
}

/// The mode exists but is not implemented by this broker yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("region mode {0} is not supported by this broker")]
pub struct ModeNotSupported(pub Mode);

impl Mode {
    /// Every mode, in ABI order.
    pub const ALL: [Mode; 3] = [Mode::Handle, Mode::Mirror, Mode::Shared];

    /// The ABI encoding.
    pub fn to_raw(self) -> u32 {
        match self {
            Mode::Handle => raw::HANDLE,
            Mode::Mirror => raw::MIRROR,
            Mode::Shared => raw::SHARED,
        }
    }

    /// Decodes the ABI encoding; `None` for an unknown value.
    pub fn from_raw(v: u32) -> Option<Mode> {
        match v {
            raw::HANDLE => Some(Mode::Handle),
            raw::MIRROR => Some(Mode::Mirror),
            raw::SHARED => Some(Mode::Shared),
            _ => None,
        }
    }

    /// Refuses modes this broker does not implement (every mode is implemented now; the check stays so
    /// that a future mode is added in one place).
    ///
    /// # Errors
    /// [`ModeNotSupported`] for an unimplemented mode.
    pub fn ensure_supported(self) -> Result<(), ModeNotSupported> {
        match self {
            Mode::Handle | Mode::Mirror | Mode::Shared => Ok(()),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Handle => "handle",
            Mode::Mirror => "mirror",
            Mode::Shared => "shared",
        })
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.to_string() == s)
            .ok_or_else(|| format!("unknown mode {s:?}; expected handle, mirror or shared"))
    }
}
