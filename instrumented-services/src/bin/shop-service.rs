//! `shop-service --service <role>`: one service of the demo shop; see
//! `sightline_demo::service`.

use std::process::ExitCode;

use clap::Parser as _;
use sightline_demo::service::{self, ServiceArgs};

fn main() -> ExitCode {
    let args = ServiceArgs::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("shop-service: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(service::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Also logged as JSON by `run`; this line is for a human reading stderr.
            eprintln!("shop-service: {error:#}");
            ExitCode::FAILURE
        }
    }
}
