//! Agent configuration: the command line ([`Cli`]) and the validated
//! library configuration ([`Config`]) that [`crate::run`] takes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};

use crate::error::{AgentError, Result};

/// Default glob for kubelet-managed container logs.
pub const DEFAULT_INCLUDE: &str = "/var/log/pods/*/*/*.log";
/// Default OTLP gRPC endpoint of the collector.
pub const DEFAULT_COLLECTOR: &str = "http://127.0.0.1:4317";
/// Default directory for checkpoints.
pub const DEFAULT_DATA_DIR: &str = "./data/agent";
/// Default listen address for `/health` and `/metrics`.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:2020";

/// Command line of `sightline-agent`. Every flag can also be set from the
/// environment as `SIGHTLINE_AGENT_<FLAG>`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sightline-agent",
    version,
    about = "Tails container logs and ships them over OTLP"
)]
pub struct Cli {
    /// Glob of log files to tail; repeat the flag for several globs
    /// (comma-separated in the environment variable).
    #[arg(long = "include", value_name = "GLOB", env = "SIGHTLINE_AGENT_INCLUDE",
          value_delimiter = ',', default_value = DEFAULT_INCLUDE)]
    pub include: Vec<String>,

    /// OTLP gRPC endpoint of the collector.
    #[arg(long, value_name = "URL", env = "SIGHTLINE_AGENT_COLLECTOR", default_value = DEFAULT_COLLECTOR)]
    pub collector: String,

    /// Directory where checkpoints are kept.
    #[arg(long, value_name = "DIR", env = "SIGHTLINE_AGENT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// Listen address for `GET /health` and `GET /metrics`.
    #[arg(long, value_name = "ADDR", env = "SIGHTLINE_AGENT_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,

    /// Value of the `host.name` resource attribute; defaults to this
    /// machine's hostname.
    #[arg(long, value_name = "NAME", env = "SIGHTLINE_AGENT_HOST_NAME")]
    pub host_name: Option<String>,

    /// Read files that have no checkpoint from their beginning (default);
    /// `--read-from-start=false` starts them at their current end.
    #[arg(long, value_name = "BOOL", env = "SIGHTLINE_AGENT_READ_FROM_START",
          action = ArgAction::Set, num_args = 0..=1, default_value_t = true,
          default_missing_value = "true")]
    pub read_from_start: bool,
}

impl Cli {
    /// Turns the command line into a library [`Config`] with default tuning.
    pub fn into_config(self) -> Config {
        Config {
            include: self.include,
            collector: self.collector,
            data_dir: self.data_dir,
            http_addr: self.http_addr,
            host_name: self.host_name.unwrap_or_else(detect_host_name),
            read_from_start: self.read_from_start,
            tuning: Tuning::default(),
        }
    }
}

/// Everything the agent needs to run. Build it from [`Cli`] or by hand
/// (tests do), then pass it to [`crate::run`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Globs of files to tail.
    pub include: Vec<String>,
    /// OTLP gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    pub collector: String,
    /// Directory holding `checkpoints.json`.
    pub data_dir: PathBuf,
    /// Listen address of the health/metrics server (port 0 picks one).
    pub http_addr: SocketAddr,
    /// Value of the `host.name` resource attribute.
    pub host_name: String,
    /// Read files without a checkpoint from the start (else from the end).
    pub read_from_start: bool,
    /// Intervals and sizes; the defaults suit production.
    pub tuning: Tuning,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            include: vec![DEFAULT_INCLUDE.to_owned()],
            collector: DEFAULT_COLLECTOR.to_owned(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            http_addr: DEFAULT_HTTP_ADDR
                .parse()
                .expect("default http addr is valid"),
            host_name: detect_host_name(),
            read_from_start: true,
            tuning: Tuning::default(),
        }
    }
}

/// Intervals, sizes and limits of the pipeline.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// How often globs are expanded to find new files.
    pub discovery_interval: Duration,
    /// How long a reader waits at end of file before polling again.
    pub poll_interval: Duration,
    /// Bytes read from a file per read call.
    pub read_buffer_bytes: usize,
    /// Longest line kept whole; longer lines are split into pieces.
    pub max_line_bytes: usize,
    /// Flush a batch when it holds this many records.
    pub batch_max_records: usize,
    /// Flush a batch when its records add up to about this many bytes
    /// (stay under the collector's gRPC message limit, 4 MiB by default).
    pub batch_max_bytes: usize,
    /// Flush a batch at the latest this long after its first record.
    pub batch_max_wait: Duration,
    /// How often acknowledged offsets are written to disk.
    pub checkpoint_interval: Duration,
    /// First retry delay of a failed export.
    pub retry_initial_backoff: Duration,
    /// Largest retry delay of a failed export.
    pub retry_max_backoff: Duration,
    /// Deadline of one export call.
    pub export_timeout: Duration,
    /// After shutdown is requested, how long to keep trying to deliver
    /// what was already read. Undelivered records are re-read next start.
    pub shutdown_grace: Duration,
    /// Capacity (in read chunks) of the queue from readers to the batcher.
    pub reader_queue_chunks: usize,
    /// Capacity (in batches) of the queue from the batcher to the sink.
    pub sink_queue_batches: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            discovery_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(200),
            read_buffer_bytes: 64 * 1024,
            max_line_bytes: 1024 * 1024,
            batch_max_records: 1000,
            batch_max_bytes: 2 * 1024 * 1024,
            batch_max_wait: Duration::from_millis(200),
            checkpoint_interval: Duration::from_secs(1),
            retry_initial_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_secs(5),
            export_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            reader_queue_chunks: 64,
            sink_queue_batches: 2,
        }
    }
}

impl Config {
    /// Checks the configuration once at start-up; the error names the bad key.
    pub fn validate(&self) -> Result<()> {
        if self.include.is_empty() {
            return Err(invalid(
                "include",
                "at least one glob is required".to_owned(),
            ));
        }
        for pattern in &self.include {
            if let Err(error) = glob::Pattern::new(pattern) {
                return Err(invalid("include", format!("bad glob {pattern:?}: {error}")));
            }
        }
        if let Err(error) = tonic::transport::Endpoint::from_shared(self.collector.clone()) {
            return Err(invalid(
                "collector",
                format!("bad url {:?}: {error}", self.collector),
            ));
        }
        if !self.collector.starts_with("http://") {
            // TLS needs tonic's tls features; not built in yet.
            return Err(invalid(
                "collector",
                format!("url {:?} must start with http://", self.collector),
            ));
        }
        if self.host_name.is_empty() {
            return Err(invalid("host-name", "must not be empty".to_owned()));
        }
        let tuning = &self.tuning;
        if tuning.batch_max_records == 0 || tuning.batch_max_bytes == 0 {
            return Err(invalid(
                "batch_max_records",
                "batches must allow at least one record".to_owned(),
            ));
        }
        if tuning.read_buffer_bytes == 0 || tuning.max_line_bytes == 0 {
            return Err(invalid(
                "read_buffer_bytes",
                "buffers must not be empty".to_owned(),
            ));
        }
        if tuning.reader_queue_chunks == 0 || tuning.sink_queue_batches == 0 {
            return Err(invalid(
                "reader_queue_chunks",
                "queues need a capacity of at least 1".to_owned(),
            ));
        }
        Ok(())
    }

    /// Path of the checkpoint file inside the data directory.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.data_dir.join("checkpoints.json")
    }
}

fn invalid(key: &'static str, reason: String) -> AgentError {
    AgentError::InvalidConfig { key, reason }
}

/// The machine's hostname: `/proc/sys/kernel/hostname`, else `$HOSTNAME`,
/// else `localhost`.
pub fn detect_host_name() -> String {
    let from_proc = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty());
    from_proc
        .or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_defaults() {
        let cli = Cli::try_parse_from(["sightline-agent"]).unwrap();
        assert_eq!(cli.include, vec![DEFAULT_INCLUDE.to_owned()]);
        assert_eq!(cli.collector, DEFAULT_COLLECTOR);
        assert_eq!(cli.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(cli.http_addr.to_string(), DEFAULT_HTTP_ADDR);
        assert!(cli.read_from_start);
        let config = cli.into_config();
        assert!(!config.host_name.is_empty());
        config.validate().unwrap();
    }

    #[test]
    fn cli_repeated_include_and_flags() {
        let cli = Cli::try_parse_from([
            "sightline-agent",
            "--include",
            "/a/*.log",
            "--include",
            "/b/*.log",
            "--host-name",
            "node-1",
            "--read-from-start=false",
        ])
        .unwrap();
        assert_eq!(
            cli.include,
            vec!["/a/*.log".to_owned(), "/b/*.log".to_owned()]
        );
        assert!(!cli.read_from_start);
        assert_eq!(cli.into_config().host_name, "node-1");

        let bare_flag = Cli::try_parse_from(["sightline-agent", "--read-from-start"]).unwrap();
        assert!(bare_flag.read_from_start);
    }

    #[test]
    fn validate_names_the_bad_key() {
        let config = Config {
            include: vec!["/var/log/[".to_owned()],
            ..Config::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("`include`"), "{error}");

        let config = Config {
            collector: "127.0.0.1:4317".to_owned(),
            ..Config::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("`collector`"), "{error}");
    }
}
