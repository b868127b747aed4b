//! The broker: a multi-tenant host for WebAssembly apps that arbitrates regions of host memory between
//! the host and apps, and among apps.
//!
//! An embedding program builds a [`Broker`], creates tenants with quotas, loads modules, starts instances
//! and creates regions; apps built on `broker-guest` open regions by name and reach them through
//! capability handles whose rights and ranges the broker checks on every call. Optional groups of host
//! functions, such as the native UI toolkit ([`UiConfig`]), are extensions in [`ext`] that the embedder
//! turns on in [`BrokerConfig`]. See `ARCHITECTURE.md` for the module map and the invariants each
//! module keeps.
//!
//! ```no_run
//! use broker::{Broker, BrokerConfig, InstanceConfig, Mode, Quotas, RegionSpec, Rights};
//! # fn main() -> Result<(), broker::Error> {
//! let broker = Broker::new(BrokerConfig::default())?;
//! let tenant = broker.create_tenant("acme", Quotas::default())?;
//! # let wasm: Vec<u8> = Vec::new();
//! broker.load_module(tenant, "app", &wasm)?;
//! let app = broker.start_instance(tenant, "app", "app-1", InstanceConfig::default())?;
//! // Apps hold only what they are given: here every app of "acme" may read and write "data".
//! let spec = RegionSpec::new("data", 4096, Mode::Handle).with_members(Rights::READ | Rights::WRITE);
//! let region = broker.create_region(tenant, spec)?;
//! broker.write_region(region, 0, b"hello")?;
//! let results = broker.call(app, "run", &[])?;
//! # let _ = results;
//! # Ok(())
//! # }
//! ```

#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod abi;
mod broker;
pub mod capability;
mod error;
pub mod ext;
pub mod mode;
pub mod name;
pub mod region;
mod registry;
pub mod runtime;
pub mod tenant;
pub mod wasi;

pub use crate::broker::{Broker, BrokerConfig, GrantId, InstanceInfo, ModuleInfo, TenantInfo};
pub use crate::capability::{CapError, Handle, Rights};
pub use crate::error::Error;
pub use crate::ext::ui::{Ui, UiConfig};
pub use crate::mode::Mode;
pub use crate::region::{
    Accepted, Backing, Check, Proposal, Refused, RegionId, RegionInfo, RegionSpec, Span, TrafficStats,
    Upstream,
};
pub use crate::registry::ServiceFn;
pub use crate::runtime::{
    InstanceConfig, InstanceError, InstanceId, InstanceStatus, RunState, WorkerPriority,
};
pub use crate::tenant::{QuotaError, Quotas, Resource, TenantId, Usage};
pub use wasmtime::Val;
