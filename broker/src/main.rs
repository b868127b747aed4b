//! The `broker` command line: parses arguments and runs the chosen command; nothing else lives here.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Multi-tenant shared-memory broker for WebAssembly apps.
#[derive(Debug, Parser)]
#[command(name = "broker", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the built-in demo: two apps of two tenants share a region through a read-only grant.
    Demo {
        /// How many readings the producer app writes.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        readings: u32,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Demo { readings } => {
            let report =
                broker::demo::run(readings, &mut std::io::stdout()).context("the demo could not run")?;
            Ok(report.ok())
        }
    }
}
