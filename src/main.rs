//! The `faultline` command: parse arguments, run, exit with the code the
//! library chose (see `exit.rs` and the README's table).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = faultline::cli::Cli::parse();
    std::process::ExitCode::from(faultline::cli::run(cli))
}
