//! The `faultline` command: parse arguments, run, exit with the code the
//! library chose (see `exit.rs` and the README's table).

use clap::Parser;

/// mimalloc rather than the system's allocator: the runner allocates and
/// frees a few small strings per operation (keys, details, findings), and
/// the offline check spent a seventh of its time in glibc's malloc and
/// free (BENCHMARKS.md §4).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = faultline::cli::Cli::parse();
    std::process::ExitCode::from(faultline::cli::run(cli))
}
