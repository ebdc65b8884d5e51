//! The `slo-probe` binary: everything lives in the library (see `slo_probe::cli`).

/// jemalloc, for every allocation of the process on Linux (its symbols replace malloc's, so
/// librdkafka's allocations go to it too): glibc's arenas grew by about 0.4 MiB every 10 minutes
/// in an hour's soak while the bytes in use stayed flat; jemalloc returns what it no longer
/// uses. See BENCHMARKS.md, "Soak".
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    slo_probe::cli::main()
}
