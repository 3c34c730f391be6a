//! `identify-queue-server`: the identify queue over HTTP (see the `server` module).

use clap::Parser;

fn main() -> std::process::ExitCode {
    identify_queue::server::main(identify_queue::server::Args::parse())
}
