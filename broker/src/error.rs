//! The error of the broker's host API: everything an embedding program (or the control plane) can be
//! told about a refused request.
//!
//! Each variant carries the offending values. The guest-facing ABI maps these to status codes in
//! `abi::errno`, the only place that does so.

use crate::capability::CapError;
use crate::mode::ModeNotSupported;
use crate::name::NameError;
use crate::region::RegionError;
use crate::runtime::InstanceError;
use crate::tenant::QuotaError;

/// Why the broker refused a host API call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A name broke the naming rules.
    #[error("invalid name {name:?}: {source}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Which rule it broke.
        source: NameError,
    },
    /// An argument other than a name is malformed.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The argument.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No tenant has that name or id.
    #[error("tenant {0} not found")]
    TenantNotFound(String),
    /// A tenant with that name exists.
    #[error("tenant {0} already exists")]
    TenantExists(String),
    /// The module could not be compiled or imports something the broker does not provide.
    #[error("module {name} is invalid: {reason}")]
    InvalidModule {
        /// The module's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No module has that name in the tenant.
    #[error("module {0} not found")]
    ModuleNotFound(String),
    /// A module with that name exists in the tenant.
    #[error("module {0} already exists")]
    ModuleExists(String),
    /// A module cannot be unloaded while instances of it exist, stopped ones included (they can be
    /// restarted).
    #[error("module {module} is in use by instances {}; delete them first", instances.join(", "))]
    ModuleInUse {
        /// The module.
        module: String,
        /// Its instances, running, trapped or stopped.
        instances: Vec<String>,
    },
    /// No instance has that name or id.
    #[error("instance {0} not found")]
    InstanceNotFound(String),
    /// An instance with that name exists in the tenant.
    #[error("instance {0} already exists")]
    InstanceExists(String),
    /// No region has that name or id.
    #[error("region {0} not found")]
    RegionNotFound(String),
    /// An app asked to open a region of its own tenant that was neither granted to it, nor created by
    /// it, nor opened to the tenant's apps (`members`).
    #[error("region {0} is not granted to this instance (grant it, or set the region's member rights)")]
    RegionNotGranted(String),
    /// A region with that name exists in the tenant.
    #[error("region {0} already exists")]
    RegionExists(String),
    /// The grant was revoked or never existed.
    #[error("grant {0} not found")]
    GrantNotFound(u64),
    /// The region mode is not implemented yet.
    #[error(transparent)]
    ModeNotSupported(#[from] ModeNotSupported),
    /// A quota would be exceeded; nothing was created.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// A region refused the operation.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// A capability refused the operation.
    #[error(transparent)]
    Capability(#[from] CapError),
    /// An instance failed or refused the call.
    #[error(transparent)]
    Instance(#[from] InstanceError),
}
