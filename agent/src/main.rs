//! `sightline-agent`: parses flags, sets up logging to stderr and runs the
//! agent library until SIGTERM/SIGINT.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use sightline_agent::Cli;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let runtime = match sightline_agent::runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run_main())
}

async fn run_main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    if cli.check_config {
        let checked = cli.load().and_then(|config| config.validate());
        return match checked {
            Ok(()) => {
                println!("config ok");
                std::process::ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match sightline_agent::run_cli(cli).await.context("agent failed") {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
