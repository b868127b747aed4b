//! The guest boundary's error and its mapping to the ABI status codes: the only place that maps broker
//! errors to what a guest sees.

use broker_abi::Status;

use crate::capability::CapError;
use crate::error::Error;
use crate::mode::mirror::MirrorError;
use crate::mode::shared::ShareError;
use crate::mode::Mode;
use crate::name::NameError;
use crate::region::RegionError;

/// Why a host function refused a guest's call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbiError {
    /// A pointer and length do not lie inside the guest's linear memory (or it exports none).
    #[error("guest range at {ptr:#x} of {len} bytes lies outside linear memory of {memory_len} bytes")]
    BadPointer {
        /// The guest pointer.
        ptr: u32,
        /// The length.
        len: u32,
        /// The memory's size.
        memory_len: usize,
    },
    /// A guest range lies over a read-only window (and the host would write it) or a revoked window.
    #[error("guest range at {ptr:#x} of {len} bytes lies over a read-only or revoked shared window")]
    GuardedPointer {
        /// The guest pointer.
        ptr: u32,
        /// The length.
        len: u32,
    },
    /// A name was refused.
    #[error("bad name: {0}")]
    Name(#[from] NameError),
    /// Rights bits outside the known set.
    #[error("unknown rights bits {0:#x}")]
    UnknownRights(u32),
    /// A mode value outside the known set.
    #[error("unknown region mode {0}")]
    UnknownMode(u32),
    /// A size or length argument is negative or zero where that is not allowed.
    #[error("invalid {field}: {value}")]
    InvalidValue {
        /// The argument.
        field: &'static str,
        /// Its value.
        value: i64,
    },
    /// The call needs a region in another mode.
    #[error("the call needs a {needed}-mode region, this one is {actual}")]
    WrongMode {
        /// The mode the call works on.
        needed: Mode,
        /// The region's mode.
        actual: Mode,
    },
    /// A callback was refused at registration.
    #[error(transparent)]
    Callback(#[from] crate::runtime::events::CallbackError),
    /// This capability already has a watch.
    #[error("a watch is already registered through this handle")]
    AlreadyRegistered,
    /// No watch is registered through this handle.
    #[error("no watch is registered through this handle")]
    NotRegistered,
    /// The handle's region is not a toolkit object.
    #[error("the handle does not name a toolkit object")]
    NotAnObject,
    /// `ui_delete` through a capability that does not cover the whole object, or that another
    /// tenant's app holds: deleting would destroy what the capability does not give.
    #[error("the capability covers only part of the object, or another tenant's: close the handle instead")]
    NotWholeObject,
    /// The native library refused.
    #[error("native library: {0}")]
    Native(String),
    /// A fixed pool (trampolines, callbacks per object, function handles) is used up.
    #[error("exhausted: {0}")]
    Exhausted(String),
    /// No host service of that name.
    #[error("no host service named {0:?}")]
    NoSuchService(String),
    /// The caller's tenant may not use that service.
    #[error("tenant may not use host service {0:?}")]
    ServiceDenied(String),
    /// The host service failed.
    #[error("host service failed: {0}")]
    Service(String),
    /// The result does not fit the caller's buffer (its length was written).
    #[error("result of {needed} bytes does not fit a buffer of {cap}")]
    ResultTooLarge {
        /// Bytes needed.
        needed: u32,
        /// Bytes offered.
        cap: u32,
    },
    /// A map or unmap was refused.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// A wait ended by its timeout.
    #[error("wait timed out")]
    TimedOut,
    /// A mirror operation was refused.
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    /// The broker refused the operation.
    #[error(transparent)]
    Broker(#[from] Error),
}

impl From<CapError> for AbiError {
    fn from(e: CapError) -> AbiError {
        AbiError::Broker(Error::Capability(e))
    }
}

impl From<RegionError> for AbiError {
    fn from(e: RegionError) -> AbiError {
        AbiError::Broker(Error::Region(e))
    }
}

impl AbiError {
    /// The status code the guest receives.
    pub fn status(&self) -> Status {
        match self {
            AbiError::BadPointer { .. } | AbiError::GuardedPointer { .. } => Status::BadPointer,
            AbiError::Name(_)
            | AbiError::UnknownRights(_)
            | AbiError::UnknownMode(_)
            | AbiError::InvalidValue { .. } => Status::InvalidArgument,
            AbiError::WrongMode { .. } => Status::WrongMode,
            AbiError::Mirror(m) => match m {
                MirrorError::LengthMismatch { .. } | MirrorError::NotAcquired => Status::InvalidArgument,
                MirrorError::BadVersion { .. } => Status::BadVersion,
                MirrorError::Conflict { .. } => Status::Conflict,
                MirrorError::Unavailable { .. } => Status::Unavailable,
                MirrorError::HintOutOfRange { .. } => Status::OutOfBounds,
            },
            AbiError::Share(e) => match e {
                ShareError::Cap(c) => broker_status(&Error::Capability(c.clone())),
                ShareError::WrongMode(_) => Status::WrongMode,
                ShareError::Unaligned { .. } => Status::Unaligned,
                ShareError::LengthMismatch { .. } => Status::InvalidArgument,
                ShareError::BeyondMemory { .. } => Status::BadPointer,
                ShareError::AlreadyMapped | ShareError::Overlap { .. } => Status::Busy,
                ShareError::NotMapped { .. } => Status::NotFound,
                ShareError::Os(_) | ShareError::NotRevoked { .. } => Status::Internal,
                ShareError::Quota(_) => Status::QuotaExceeded,
            },
            AbiError::TimedOut => Status::TimedOut,
            AbiError::Callback(_) => Status::BadCallback,
            AbiError::AlreadyRegistered => Status::Busy,
            AbiError::NotRegistered | AbiError::NoSuchService(_) => Status::NotFound,
            AbiError::NotAnObject => Status::WrongMode,
            AbiError::NotWholeObject => Status::PermissionDenied,
            AbiError::Native(_) => Status::Internal,
            AbiError::Exhausted(_) => Status::QuotaExceeded,
            AbiError::ServiceDenied(_) => Status::PermissionDenied,
            AbiError::Service(_) => Status::ServiceFailed,
            AbiError::ResultTooLarge { .. } => Status::OutOfBounds,
            AbiError::Broker(e) => broker_status(e),
        }
    }
}

fn broker_status(e: &Error) -> Status {
    match e {
        Error::InvalidName { .. } | Error::InvalidArgument { .. } | Error::InvalidModule { .. } => {
            Status::InvalidArgument
        }
        Error::TenantNotFound(_)
        | Error::ModuleNotFound(_)
        | Error::InstanceNotFound(_)
        | Error::RegionNotFound(_)
        | Error::GrantNotFound(_) => Status::NotFound,
        Error::TenantExists(_)
        | Error::ModuleExists(_)
        | Error::InstanceExists(_)
        | Error::RegionExists(_) => Status::AlreadyExists,
        Error::ModeNotSupported(_) => Status::ModeNotSupported,
        // Guests never unload modules; mapped for completeness.
        Error::ModuleInUse { .. } | Error::RegionNotGranted(_) => Status::PermissionDenied,
        Error::Quota(_) => Status::QuotaExceeded,
        Error::Region(RegionError::OutOfBounds { .. }) => Status::OutOfBounds,
        Error::Region(RegionError::ZeroSize | RegionError::TooLarge { .. }) => Status::InvalidArgument,
        Error::Region(RegionError::Os { .. }) | Error::Instance(_) => Status::Internal,
        Error::Region(RegionError::Unavailable { .. }) => Status::Unavailable,
        Error::Capability(c) => match c {
            CapError::InvalidHandle(_) => Status::InvalidHandle,
            CapError::StaleHandle(_) | CapError::Gone => Status::StaleHandle,
            CapError::NotRevoked { .. } => Status::Internal,
            CapError::PermissionDenied { .. } | CapError::Escalation { .. } => Status::PermissionDenied,
            CapError::OutOfBounds { .. } => Status::OutOfBounds,
            CapError::Quota(_) | CapError::TableFull => Status::QuotaExceeded,
        },
    }
}
