//! Collector settings, from the command line or the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How to run a collector.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "sightline-collector",
    version,
    about = "Receives logs, traces and metrics (OTLP, _bulk, remote-write, scraping), stores them, evaluates alert rules, serves the query API and UI"
)]
pub struct CollectorConfig {
    /// Directory for the write-ahead log, the log index and the span store.
    #[arg(long, env = "SIGHTLINE_DATA_DIR", default_value = "./data/collector")]
    pub data_dir: PathBuf,
    /// Address of the OTLP/gRPC receiver (logs, traces and metrics).
    #[arg(
        long,
        env = "SIGHTLINE_OTLP_GRPC_ADDR",
        default_value = "127.0.0.1:4317"
    )]
    pub otlp_grpc_addr: SocketAddr,
    /// Address of the OTLP/HTTP receiver (`/v1/logs`, `/v1/traces`).
    #[arg(
        long,
        env = "SIGHTLINE_OTLP_HTTP_ADDR",
        default_value = "127.0.0.1:4318"
    )]
    pub otlp_http_addr: SocketAddr,
    /// Address of the Fluentd forward protocol listener (TCP, usually
    /// `0.0.0.0:24224`), for Fluentd's and Fluent Bit's `forward` outputs;
    /// off when not given. It has no authentication or TLS.
    #[arg(long, env = "SIGHTLINE_FORWARD_ADDR")]
    pub forward_addr: Option<SocketAddr>,
    /// Configuration file: a `prometheus.yml` (scrape configs, rule files,
    /// alerting) plus Sightline's own sections; see `config_file.rs`.
    #[arg(long, env = "SIGHTLINE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of Grafana dashboard JSON files the UI renders, read on
    /// every request (a changed file shows without a restart); a mounted
    /// ConfigMap on Kubernetes. Without it the UI lists no dashboards.
    #[arg(long, value_name = "DIR", env = "SIGHTLINE_DASHBOARDS_DIR")]
    pub dashboards_dir: Option<PathBuf>,
    /// Address of the query API, the UI and the compatibility APIs (`/elastic`).
    #[arg(long, env = "SIGHTLINE_HTTP_ADDR", default_value = "127.0.0.1:7070")]
    pub http_addr: SocketAddr,
    /// How long logs are kept; whole days are dropped past it.
    #[arg(long, env = "SIGHTLINE_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// How often new records become searchable (index commit interval).
    #[arg(long, env = "SIGHTLINE_COMMIT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub commit_interval: Duration,
    /// Largest log record (body plus attributes) accepted, in bytes.
    #[arg(long, env = "SIGHTLINE_MAX_RECORD_BYTES", default_value_t = 1024 * 1024)]
    pub max_record_bytes: usize,
    /// Most attributes a log record or span may have; one with more is refused.
    #[arg(long, env = "SIGHTLINE_MAX_ATTRIBUTES", default_value_t = crate::ingest::DEFAULT_MAX_ATTRIBUTES)]
    pub max_attributes: usize,
    /// Longest attribute key accepted, in bytes; a record with a longer one is refused.
    #[arg(long, env = "SIGHTLINE_MAX_ATTRIBUTE_KEY_BYTES", default_value_t = crate::ingest::DEFAULT_MAX_ATTRIBUTE_KEY_BYTES)]
    pub max_attribute_key_bytes: usize,
    /// Longest attribute value accepted, in bytes; a record with a longer one is refused.
    #[arg(long, env = "SIGHTLINE_MAX_ATTRIBUTE_VALUE_BYTES", default_value_t = crate::ingest::DEFAULT_MAX_ATTRIBUTE_VALUE_BYTES)]
    pub max_attribute_value_bytes: usize,
    /// Ingest bytes per second each client address may send (OTLP, `_bulk`,
    /// remote write); over it: 429 with `Retry-After` or `RESOURCE_EXHAUSTED`. 0: no limit.
    #[arg(long, env = "SIGHTLINE_INGEST_RATE_LIMIT_BYTES", default_value_t = 0)]
    pub ingest_rate_limit_bytes: u64,
    /// Bytes a client may send at once before its rate applies.
    #[arg(long, env = "SIGHTLINE_INGEST_RATE_BURST_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub ingest_rate_burst_bytes: u64,
    /// Bytes of accepted batches that may wait for indexing before senders are told to back off.
    #[arg(long, env = "SIGHTLINE_INGEST_MEMORY_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub ingest_memory_bytes: usize,
    /// How long a batch that does not fit `--ingest-memory-bytes` waits for room before its sender is told to back off (429 / RESOURCE_EXHAUSTED); 0s refuses at once. Waiting batches hold at most a quarter of the budget more.
    #[arg(long, env = "SIGHTLINE_INGEST_BUDGET_WAIT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub ingest_budget_wait: Duration,
    /// Disk space kept free (a file in the WAL directory, at least 1 MiB) so that records acknowledged when the disk fills can still be indexed; a full disk makes the collector read-only until it fits again.
    #[arg(long, env = "SIGHTLINE_DISK_RESERVE_BYTES", default_value_t = sightline_pipeline::DEFAULT_DISK_RESERVE_BYTES)]
    pub disk_reserve_bytes: u64,
    /// Bearer tokens for ingest and for queries (see `auth.rs`).
    #[command(flatten)]
    pub auth: AuthFlags,
    /// TLS on the listeners (see `tls.rs`).
    #[command(flatten)]
    pub tls: TlsFlags,

    #[command(flatten)]
    pub cluster: ClusterFlags,
}

/// Cluster mode: its settings in their own file (or the `cluster:` section
/// of `--config`), and its secrets, kept out of files that are usually
/// ConfigMaps: each overrides the file's value.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterFlags {
    /// Runs in cluster mode with this file's settings (the keys of the
    /// `cluster:` section: nats, postgres, object_store, ...), instead of a
    /// `cluster:` section in `--config`.
    #[arg(long, value_name = "FILE", env = "SIGHTLINE_CLUSTER_CONFIG")]
    pub cluster_config: Option<PathBuf>,
    /// PostgreSQL URL of the cluster's metastore, with its password
    /// (overrides `cluster.postgres`).
    #[arg(
        long,
        value_name = "URL",
        env = "SIGHTLINE_CLUSTER_POSTGRES_URL",
        hide_env_values = true
    )]
    pub cluster_postgres_url: Option<sightline_vocab::secret::Secret>,
    /// Access key id for the splits' object storage (overrides
    /// `cluster.object_store.access_key_id`).
    #[arg(
        long,
        value_name = "KEY",
        env = "SIGHTLINE_CLUSTER_S3_ACCESS_KEY_ID",
        hide_env_values = true
    )]
    pub cluster_s3_access_key_id: Option<sightline_vocab::secret::Secret>,
    /// Secret access key for the splits' object storage.
    #[arg(
        long,
        value_name = "SECRET",
        env = "SIGHTLINE_CLUSTER_S3_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub cluster_s3_secret_access_key: Option<sightline_vocab::secret::Secret>,
    /// `host:port` the other collectors reach this one's query port at
    /// (overrides `cluster.advertise_address`; a pod's `$(POD_IP):7070`).
    #[arg(
        long,
        value_name = "HOST:PORT",
        env = "SIGHTLINE_CLUSTER_ADVERTISE_ADDRESS"
    )]
    pub cluster_advertise_address: Option<String>,
}

/// TLS for the three listeners; none of the flags: plain TCP.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsFlags {
    /// PEM certificate chain served on all three listeners (with `--tls-key`).
    #[arg(long, value_name = "FILE", env = "SIGHTLINE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, value_name = "FILE", env = "SIGHTLINE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): clients of the ingest ports (OTLP/gRPC and
    /// OTLP/HTTP) must present a certificate signed by one of them (mutual
    /// TLS); the query API and UI port asks for none.
    #[arg(long, value_name = "FILE", env = "SIGHTLINE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

/// Where the collector's bearer tokens come from. A scope without any token
/// is open.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthFlags {
    /// File of bearer tokens accepted by the receivers, one per line (several
    /// while a key is rotated). No ingest token: ingest is open.
    #[arg(long, value_name = "FILE", env = "SIGHTLINE_INGEST_TOKEN_FILE")]
    pub ingest_token_file: Option<PathBuf>,
    /// One ingest token; prefer the environment or the file to the flag,
    /// which other local users can read from the process list.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SIGHTLINE_INGEST_TOKEN",
        hide_env_values = true
    )]
    pub ingest_token: Option<sightline_vocab::secret::Secret>,
    /// File of bearer tokens accepted by the query API and the UI, one per
    /// line. No query token: queries are open.
    #[arg(long, value_name = "FILE", env = "SIGHTLINE_QUERY_TOKEN_FILE")]
    pub query_token_file: Option<PathBuf>,
    /// One query token (see `--ingest-token` about the flag).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SIGHTLINE_QUERY_TOKEN",
        hide_env_values = true
    )]
    pub query_token: Option<sightline_vocab::secret::Secret>,
}

/// The command line: the collector's flags, or one of the rule tools.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "sightline-collector",
    version,
    about = "Receives logs, traces and metrics (OTLP, _bulk, remote-write, scraping), stores them, evaluates alert rules, serves the query API and UI",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A tool to run instead of the collector.
    #[command(subcommand)]
    pub tool: Option<Tool>,
    #[command(flatten)]
    pub collector: CollectorConfig,
}

/// Rule tools with `promtool`'s names and output.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Tool {
    /// Run rule unit tests (`promtool test rules`); exit 1 if any fails.
    Test {
        #[command(subcommand)]
        what: RuleFiles,
    },
    /// Check rule files (`promtool check rules`); exit 1 if any is invalid.
    Check {
        #[command(subcommand)]
        what: RuleFiles,
    },
}

/// What a tool works on.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum RuleFiles {
    /// Rule files, or unit-test files for `test`.
    Rules {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}
