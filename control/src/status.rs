//! The control plane's error, and the only place that maps errors to gRPC statuses.
//!
//! [`ApiError`] is what the domain `ControlPlane` and the conversions refuse a request with; it knows
//! nothing of gRPC. `From<ApiError> for Status` below is the one mapping to wire statuses, used by the
//! adapter and the authentication interceptor alike.

use tonic::{Code, Status};

use broker::capability::CapError;
use broker::region::RegionError;
use broker::runtime::InstanceError;
use broker::Error;

use super::store::StoreError;

/// Trailer metadata of a call that reached the wrong node: the node that holds the tenant.
pub const NODE_METADATA: &str = "broker-node";
/// Trailer metadata of a call that reached the wrong node: that node's control address.
pub const NODE_ADDRESS_METADATA: &str = "broker-node-address";

/// What a control-plane call answers: its result, or why it was refused.
pub type ApiResult<T> = Result<T, ApiError>;

/// Why a control-plane request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No token, or a token the broker does not know.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The token is valid but does not allow this request.
    #[error("{0}")]
    PermissionDenied(String),
    /// A required field is missing.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field has a value the broker cannot accept.
    #[error("invalid field `{field}`: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The request needs something the server is not configured for.
    #[error("{0}")]
    Precondition(String),
    /// The broker refused the operation.
    #[error(transparent)]
    Broker(#[from] Error),
    /// The state store failed.
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// Something inside the daemon failed that the request could not have caused (a worker task that
    /// panicked, no randomness for a token, a report that does not encode).
    #[error("{0}")]
    Internal(String),
    /// The tenant lives on another node of the cluster: the call belongs there.
    #[error("tenant {tenant:?} lives on node {node:?} at {address}: send the call there")]
    WrongNode {
        /// The tenant named.
        tenant: String,
        /// The node that holds it.
        node: String,
        /// Its control API's address.
        address: String,
    },
    /// Something the call needs cannot be reached now (the cluster); retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// The daemon is shutting down and takes no new long-lived calls.
    #[error("the broker is shutting down")]
    ShuttingDown,
}

/// A conversion that cannot fail: lets the plane take an argument that is either already a domain
/// value or still to be converted from the wire (`TryInto` with either error).
impl From<std::convert::Infallible> for ApiError {
    fn from(never: std::convert::Infallible) -> ApiError {
        match never {}
    }
}

fn code_of(e: &Error) -> Code {
    match e {
        Error::InvalidName { .. } | Error::InvalidArgument { .. } | Error::InvalidModule { .. } => {
            Code::InvalidArgument
        }
        Error::TenantNotFound(_)
        | Error::ModuleNotFound(_)
        | Error::InstanceNotFound(_)
        | Error::RegionNotFound(_)
        | Error::GrantNotFound(_) => Code::NotFound,
        Error::TenantExists(_)
        | Error::ModuleExists(_)
        | Error::InstanceExists(_)
        | Error::RegionExists(_) => Code::AlreadyExists,
        Error::ModeNotSupported(_) => Code::InvalidArgument,
        Error::ModuleInUse { .. } => Code::FailedPrecondition,
        Error::RegionNotGranted(_) => Code::PermissionDenied,
        Error::Quota(_) => Code::ResourceExhausted,
        Error::Region(RegionError::Os { .. }) => Code::Internal,
        Error::Region(RegionError::Unavailable { .. }) => Code::Unavailable,
        Error::Region(_) => Code::InvalidArgument,
        Error::Capability(c) => match c {
            CapError::Quota(_) | CapError::TableFull => Code::ResourceExhausted,
            CapError::PermissionDenied { .. } => Code::PermissionDenied,
            CapError::Escalation { .. } | CapError::OutOfBounds { .. } => Code::InvalidArgument,
            CapError::InvalidHandle(_) | CapError::StaleHandle(_) | CapError::Gone => Code::NotFound,
            CapError::NotRevoked { .. } => Code::Internal,
        },
        Error::Instance(i) => match i {
            InstanceError::NotRunning { .. } => Code::FailedPrecondition,
            InstanceError::NoSuchExport(_) => Code::NotFound,
            InstanceError::BadArguments { .. } | InstanceError::Instantiate(_) => Code::InvalidArgument,
            InstanceError::Trapped { .. }
            | InstanceError::Interrupted { .. }
            | InstanceError::Killed
            | InstanceError::Exited { .. } => Code::Aborted,
            InstanceError::ShuttingDown => Code::Unavailable,
        },
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let code = match &e {
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::MissingField(_) | ApiError::InvalidField { .. } => Code::InvalidArgument,
            ApiError::Precondition(_) => Code::FailedPrecondition,
            ApiError::Broker(b) => code_of(b),
            ApiError::Store(_) | ApiError::Internal(_) => Code::Internal,
            ApiError::ShuttingDown | ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::WrongNode { .. } => Code::FailedPrecondition,
        };
        let mut status = Status::new(code, e.to_string());
        if let ApiError::WrongNode { node, address, .. } = &e {
            // Machine-readable too: a client follows the answer without parsing the message.
            if let (Ok(n), Ok(a)) = (node.parse(), address.parse()) {
                status.metadata_mut().insert(NODE_METADATA, n);
                status.metadata_mut().insert(NODE_ADDRESS_METADATA, a);
            }
        }
        status
    }
}
