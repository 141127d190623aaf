//! `sightline-demo`: runs the Sightline stack and the demo shop with live
//! traffic; see `sightline_demo::launcher`.

use std::process::ExitCode;

use clap::Parser as _;
use sightline_demo::launcher::{self, DemoArgs};

fn main() -> ExitCode {
    let args = DemoArgs::parse();
    sightline_demo::telemetry::init_launcher_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sightline-demo: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(launcher::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sightline-demo: {error:#}");
            ExitCode::FAILURE
        }
    }
}
