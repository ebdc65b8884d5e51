//! The `slo-probe` binary: everything lives in the library (see `slo_probe::cli`).

/// jemalloc, for every allocation of the process on Linux (its symbols replace malloc's, so
/// librdkafka's allocations go to it too): glibc's arenas grew by about 0.4 MiB every 10 minutes
/// in an hour's soak while the bytes in use stayed flat; jemalloc returns what it no longer
/// uses. See BENCHMARKS.md, "Soak".
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options for this process, read once at its start (`MALLOC_CONF` in the
/// environment still overrides them). One arena: jemalloc's default is four per CPU, each
/// keeping its own partly used pages, 3 MiB more RSS at 100 probes on 2 CPUs (36.1 against 33.0
/// MiB), more on larger nodes; the agent allocates little (1-2% of a core at 100 probes), and at
/// 1 000 probes one arena cost no measurable CPU (BENCHMARKS.md, "Footprint").
#[cfg(target_os = "linux")]
#[unsafe(export_name = "malloc_conf")]
static MALLOC_CONF: &[u8; 10] = b"narenas:1\0";

fn main() -> std::process::ExitCode {
    slo_probe::cli::main()
}
