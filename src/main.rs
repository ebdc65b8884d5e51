//! The `slo-probe` binary: everything lives in the library (see `slo_probe::cli`).

fn main() -> std::process::ExitCode {
    slo_probe::cli::main()
}
