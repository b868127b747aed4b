//! Multi-app scenarios: files that declare tenants, modules, regions, grants and workload phases, and
//! the runner that executes them once per mode and reports what each mode cost.
//!
//! [`spec`] turns a TOML file into a validated [`Scenario`] (every error names the file, line and
//! field); [`run()`] builds a fresh broker per mode, runs the phases and evaluates the checks against
//! results the host computes itself ([`expect`]); [`report`] renders the figures as a table, JSON and an
//! SVG chart. [`builtin`] embeds the seven scenarios of `scenarios/`: sensor-hub, ui-toolkit, pipeline,
//! mixed-trust, noisy-neighbor, wasi-app and cross-node (the pipeline on three brokers of a cluster).

#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod bench;
pub mod metrics;

pub mod builtin;
mod cluster;
pub mod expect;
mod generated;
pub mod report;
mod run;
pub mod spec;

pub use builtin::{load, LoadError, BUILTINS, DEFAULT};
pub use report::{CheckOutcome, ScenarioReport};
pub use run::{run, Cancel, RunError, RunOptions};
pub use spec::{parse, Scenario, SpecError};

/// The guest apps a scenario file may name (`guest = "..."`): the scenario apps, and `callback_app`,
/// whose host-service calls the noisy-neighbor victim makes. Only these are embedded in the tools that
/// run scenarios; the test suite's hostile guests never are.
pub static GUESTS: &[(&str, &[u8])] = &[
    ("callback_app", broker_guests::CALLBACK_APP_WASM),
    ("scenario_attacker", broker_guests::SCENARIO_ATTACKER_WASM),
    ("scenario_nanoapp", broker_guests::SCENARIO_NANOAPP_WASM),
    ("scenario_pipeline", broker_guests::SCENARIO_PIPELINE_WASM),
    ("scenario_widgets", broker_guests::SCENARIO_WIDGETS_WASM),
    ("wasi_std_app", broker_guests::WASI_STD_APP_WASM),
];

/// The embedded bytes of the guest a scenario names, if it is one of [`GUESTS`].
pub fn guest(name: &str) -> Option<&'static [u8]> {
    GUESTS.iter().find(|(n, _)| *n == name).map(|(_, bytes)| *bytes)
}
