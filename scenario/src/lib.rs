//! Multi-app scenarios: files that declare tenants, modules, regions, grants and workload phases, and
//! the runner that executes them once per mode and reports what each mode cost.
//!
//! [`spec`] turns a TOML file into a validated [`Scenario`] (every error names the file, line and
//! field); [`run()`] builds a fresh broker per mode, runs the phases and evaluates the checks against
//! results the host computes itself ([`expect`]); [`report`] renders the figures as a table, JSON and an
//! SVG chart. [`builtin`] embeds the five scenarios of `scenarios/`: sensor-hub, ui-toolkit, pipeline,
//! mixed-trust and noisy-neighbor.

#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod bench;
pub mod metrics;

pub mod builtin;
pub mod expect;
mod generated;
pub mod report;
mod run;
pub mod spec;

pub use builtin::{load, LoadError, BUILTINS, DEFAULT};
pub use report::{CheckOutcome, ScenarioReport};
pub use run::{run, Cancel, RunError, RunOptions};
pub use spec::{parse, Scenario, SpecError};
