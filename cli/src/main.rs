//! The `broker` binary: everything lives in the library (`broker_cli::cli`); this only runs it.

fn main() -> std::process::ExitCode {
    broker_cli::cli::main()
}
