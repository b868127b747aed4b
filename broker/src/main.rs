//! The `broker` binary: everything lives in the library (`broker::control::cli`); this only runs it.

fn main() -> std::process::ExitCode {
    broker::control::cli::main()
}
