//! Host extensions: groups of host functions a broker offers only when its host turns them on, each
//! under an import module of its own and with state of its own, as wasmtime-wasi adds one linker module
//! per proposal.
//!
//! The core ABI (`broker_v1`, in [`crate::abi`]) is always there; an extension sits on top of it. It
//! reaches the core through what every host function has (the caller's capability space, tenant and
//! event sink, in `caller.data().ctx`) and through the [`crate::registry::Core`] it is given when the
//! broker starts; the core never reaches an extension. A broker whose host left an extension off has
//! none of its imports, so `Broker::load_module` refuses a module that imports them, naming the import.
//!
//! - [`ui`]: the native C toolkit and its callback trampolines, under `broker_ui_v1`.

pub mod ui;
