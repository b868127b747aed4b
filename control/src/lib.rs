//! The control plane: the gRPC API (`broker.v1`) through which operators and tenants drive the broker,
//! its authentication, and the daemon's persistent state.
//!
//! The crate is split as tonic-health is: [`plane::ControlPlane`] is the domain handle (the broker, the
//! token hashes, the state store, the API's grants), whose methods take the authenticated caller and
//! domain types and know nothing of gRPC; [`service::ControlService`] is the thin tonic adapter over it,
//! converting messages (`convert.rs`) and nothing else; [`auth::AuthInterceptor`] authenticates every
//! call before the adapter sees it; [`server::serve`] runs the daemon, with health and [`reflection`]
//! (both protocol versions, over one index of every served service's descriptors).
//! **Boundary:** `tonic` and protobuf types appear only at the edge (the adapter, the conversions, the
//! interceptor in `auth.rs`, `status.rs`, the server and reflection, and the generated
//! `broker_proto::pb`), never in `plane.rs` or `store.rs`; `status.rs` is the only place that maps
//! errors to gRPC statuses.

#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod auth;
mod convert;
pub mod plane;
pub mod reflection;
pub mod server;
pub mod service;
pub mod status;
pub mod store;

pub use auth::Identity;
/// The conversions between the `Quotas` message and the domain's quotas, for clients that edit
/// quotas (the CLI).
pub use convert::{quotas_from as quotas_from_pb, quotas_to as quotas_to_pb};
pub use plane::{Cluster, ControlPlane, NodeAddress};
pub use server::{serve, ServeConfig};
pub use service::ControlService;
pub use status::{ApiError, ApiResult};
