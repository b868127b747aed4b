//! The control plane: the gRPC API (`broker.v1`) through which operators and tenants drive the broker,
//! its authentication, and the daemon's persistent state.
//!
//! [`ControlPlane`] holds the domain handle ([`broker::Broker`]), the token hashes and the state store;
//! [`service::ControlService`] is the tonic adapter over it; [`server::serve`] runs the daemon, with health
//! and [`reflection`] (both protocol versions, over one index of every served service's descriptors).
//! **Boundary:** protobuf types appear only in this module (and the generated `broker_proto::pb`);
//! `status.rs` is the only place that maps errors to gRPC statuses.

#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod auth;
mod convert;
pub mod reflection;
pub mod server;
pub mod service;
pub mod status;
pub mod store;

pub use server::{serve, ServeConfig};
pub use service::{ControlPlane, ControlService};
pub use status::ApiError;
