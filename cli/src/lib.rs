//! The `broker` command: the daemon (`broker serve`), the CLI client of its gRPC API, the demo, the load
//! test, and the front ends of the scenario runner and `broker bench` (which live in `broker-scenario`).
//!
//! The binary (`src/main.rs`) only calls [`cli::main`]; everything is here so tests can drive the CLI in
//! process.

#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod cli;
pub mod cluster;
pub mod demo;
pub mod loadtest;
