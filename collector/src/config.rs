//! Collector settings, from the command line or the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

/// How to run a collector.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "sightline-collector",
    version,
    about = "Receives OTLP logs and traces, stores them, serves the query API and UI"
)]
pub struct CollectorConfig {
    /// Directory for the log index and the span store.
    #[arg(long, env = "SIGHTLINE_DATA_DIR", default_value = "./data/collector")]
    pub data_dir: PathBuf,
    /// Address of the OTLP/gRPC receiver (logs and traces).
    #[arg(
        long,
        env = "SIGHTLINE_OTLP_GRPC_ADDR",
        default_value = "127.0.0.1:4317"
    )]
    pub otlp_grpc_addr: SocketAddr,
    /// Address of the query API and the UI.
    #[arg(long, env = "SIGHTLINE_HTTP_ADDR", default_value = "127.0.0.1:7070")]
    pub http_addr: SocketAddr,
}
