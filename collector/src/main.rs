use clap::Parser;
use sightline_collector::config::{Cli, RuleFiles, Tool};
use sightline_metrics::alerting;

/// mimalloc instead of glibc's malloc: the ingest path allocates and frees
/// many small strings and maps per record and span; with glibc a quarter to
/// a third of the collector's CPU went to malloc and free (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tantivy=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(tool) = cli.tool {
        let mut out = std::io::stdout();
        let passed = match tool {
            Tool::Test {
                what: RuleFiles::Rules { files },
            } => alerting::test_rules(&files, &mut out),
            Tool::Check {
                what: RuleFiles::Rules { files },
            } => alerting::check_rules(&files, &mut out),
        };
        return if passed {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        };
    }
    match sightline_collector::run(cli.collector, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("collector failed: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => return interrupt.await.unwrap_or(()),
            };
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    interrupt.await.unwrap_or(());
}
