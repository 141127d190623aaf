//! Agent configuration: the command line ([`Cli`]), the optional TOML file
//! and the validated library configuration ([`Config`]) that
//! [`crate::run`] takes.
//!
//! Precedence: defaults, then the file given with `--config`, then flags
//! (and their `SIGHTLINE_AGENT_*` environment variables). The file is
//! strict: an unknown key is an error that names the key. Every key is
//! documented with its default in `sightline-agent.example.toml`, which a
//! test parses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgAction, Parser};
use serde::Deserialize;

use crate::error::{AgentError, Result};

mod patterns;

pub(crate) use patterns::ContainerPatterns;

/// Default glob for kubelet-managed container logs.
pub const DEFAULT_INCLUDE: &str = "/var/log/pods/*/*/*.log";
/// Default glob for Docker's json-file logs.
pub const DEFAULT_DOCKER_INCLUDE: &str = "/var/lib/docker/containers/*/*-json.log";
/// Default OTLP gRPC endpoint of the collector.
pub const DEFAULT_COLLECTOR: &str = "http://127.0.0.1:4317";
/// Default directory for checkpoints.
pub const DEFAULT_DATA_DIR: &str = "./data/agent";
/// Default listen address for `/health` and `/metrics`.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:2020";

/// Command line of `sightline-agent`. Every flag can also be set from the
/// environment as `SIGHTLINE_AGENT_<FLAG>`; flags override the file.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "sightline-agent",
    version,
    about = "Tails container logs and ships them over OTLP"
)]
pub struct Cli {
    /// TOML configuration file; flags given as well override its keys.
    #[arg(long, value_name = "FILE", env = "SIGHTLINE_AGENT_CONFIG")]
    pub config: Option<PathBuf>,

    /// Validate the configuration, print the result and exit.
    #[arg(long)]
    pub check_config: bool,

    /// Glob of log files to tail; repeat the flag for several globs
    /// (comma-separated in the environment variable). Default: kubelet and
    /// Docker log locations.
    #[arg(
        long = "include",
        value_name = "GLOB",
        env = "SIGHTLINE_AGENT_INCLUDE",
        value_delimiter = ','
    )]
    pub include: Vec<String>,

    /// OTLP gRPC endpoint of the collector [default: http://127.0.0.1:4317].
    #[arg(long, value_name = "URL", env = "SIGHTLINE_AGENT_COLLECTOR")]
    pub collector: Option<String>,

    /// File holding the collector's ingest token (first non-comment line),
    /// sent as `authorization: Bearer <token>` on every export.
    #[arg(
        long,
        value_name = "FILE",
        env = "SIGHTLINE_AGENT_COLLECTOR_TOKEN_FILE"
    )]
    pub collector_token_file: Option<PathBuf>,

    /// The collector's ingest token itself (prefer the environment to the
    /// flag, which shows in the process list); wins over the file.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SIGHTLINE_AGENT_TOKEN",
        hide_env_values = true
    )]
    pub collector_token: Option<CollectorToken>,

    /// PEM CA certificate(s) trusted for an `https://` collector.
    #[arg(long, value_name = "FILE", env = "SIGHTLINE_AGENT_COLLECTOR_CA")]
    pub collector_ca: Option<PathBuf>,

    /// PEM client certificate shown to an `https://` collector that asks
    /// for one (mutual TLS); needs `--client-key`.
    #[arg(long, value_name = "FILE", env = "SIGHTLINE_AGENT_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of `--client-cert`.
    #[arg(long, value_name = "FILE", env = "SIGHTLINE_AGENT_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,

    /// Directory where checkpoints are kept [default: ./data/agent].
    #[arg(long, value_name = "DIR", env = "SIGHTLINE_AGENT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Listen address for `GET /health` and `GET /metrics`
    /// [default: 127.0.0.1:2020].
    #[arg(long, value_name = "ADDR", env = "SIGHTLINE_AGENT_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,

    /// Value of the `host.name` resource attribute; defaults to this
    /// machine's hostname.
    #[arg(long, value_name = "NAME", env = "SIGHTLINE_AGENT_HOST_NAME")]
    pub host_name: Option<String>,

    /// Read files that have no checkpoint from their beginning (default);
    /// `--read-from-start=false` starts the files already there at the
    /// agent's first start at their current end (files that appear later
    /// are always read from their beginning: none of their lines may be
    /// lost).
    #[arg(long, value_name = "BOOL", env = "SIGHTLINE_AGENT_READ_FROM_START",
          action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub read_from_start: Option<bool>,

    /// The node whose pods the agent watches for their metadata
    /// (`kubernetes.node_name`); in a DaemonSet, set `NODE_NAME` from the
    /// downward API (`spec.nodeName`).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,
}

impl Cli {
    /// Builds the [`Config`]: defaults, then the `--config` file, then flags.
    pub fn load(&self) -> Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        self.apply_overrides(&mut config);
        Ok(config)
    }

    /// Turns the command line into a [`Config`] without a file (flags and
    /// defaults only).
    pub fn into_config(self) -> Config {
        let mut config = Config::default();
        self.apply_overrides(&mut config);
        config
    }

    /// Applies the flags that were given on top of `config`.
    pub fn apply_overrides(&self, config: &mut Config) {
        if !self.include.is_empty() {
            config.include.clone_from(&self.include);
        }
        if let Some(collector) = &self.collector {
            config.collector.clone_from(collector);
        }
        if let Some(file) = &self.collector_token_file {
            config.collector_token_file = Some(file.clone());
        }
        if let Some(token) = &self.collector_token {
            config.collector_token = Some(token.clone());
        }
        if let Some(file) = &self.collector_ca {
            config.collector_ca = Some(file.clone());
        }
        if let Some(file) = &self.client_cert {
            config.client_cert = Some(file.clone());
        }
        if let Some(file) = &self.client_key {
            config.client_key = Some(file.clone());
        }
        if let Some(data_dir) = &self.data_dir {
            config.data_dir.clone_from(data_dir);
        }
        if let Some(http_addr) = self.http_addr {
            config.http_addr = http_addr;
        }
        if let Some(host_name) = &self.host_name {
            config.host_name.clone_from(host_name);
        }
        if let Some(read_from_start) = self.read_from_start {
            config.read_from_start = read_from_start;
        }
        if let Some(node_name) = self.node_name.as_ref().filter(|name| !name.is_empty()) {
            config.kubernetes.node_name = Some(node_name.clone());
        }
        if config.host_name.is_empty() {
            config.host_name = detect_host_name();
        }
    }
}

/// Everything the agent needs to run. Build it from [`Cli`], from a TOML
/// file ([`Config::from_toml`]) or by hand (tests do), then pass it to
/// [`crate::run`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Globs of files to tail.
    pub include: Vec<String>,
    /// Globs of files never to tail, even when `include` matches them.
    pub exclude_paths: Vec<String>,
    /// OTLP gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    pub collector: String,
    /// File holding the collector's ingest token (first non-comment line).
    pub collector_token_file: Option<PathBuf>,
    /// The ingest token from `--collector-token` or `SIGHTLINE_AGENT_TOKEN`;
    /// never read from the file, and wins over `collector_token_file`.
    #[serde(skip)]
    pub collector_token: Option<CollectorToken>,
    /// PEM CA certificate(s) trusted for an `https://` collector (required
    /// there: no system roots are built in).
    pub collector_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Compression of export requests.
    pub compression: Compression,
    /// Directory holding `checkpoints.json`.
    pub data_dir: PathBuf,
    /// Listen address of the health/metrics server (port 0 picks one).
    pub http_addr: SocketAddr,
    /// Value of the `host.name` resource attribute (default: detected).
    pub host_name: String,
    /// Read files without a checkpoint from the start; when false, only the
    /// files found at the agent's first start on its data directory begin
    /// at their end (later files are always read from their start).
    pub read_from_start: bool,
    /// Bytes of log lines read but not yet acknowledged, across all files;
    /// readers pause when it is used up.
    pub memory_budget_bytes: usize,
    /// Resource attributes added to every record.
    pub resource: ResourceConfig,
    /// Which files and records are not shipped.
    pub filters: FilterConfig,
    /// Secrets masked before records leave the node.
    pub redact: RedactConfig,
    /// Field names the parsers look for.
    pub fields: FieldsConfig,
    /// Multiline defaults.
    pub multiline: MultilineConfig,
    /// Per-container rules, first match wins.
    pub containers: Vec<ContainerRule>,
    /// Intervals, sizes and limits; the defaults suit production.
    pub tuning: Tuning,
    /// Node and container metrics served on `/metrics`.
    pub host_metrics: HostMetricsConfig,
    /// Pod metadata from the Kubernetes API.
    pub kubernetes: KubernetesConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            include: vec![
                DEFAULT_INCLUDE.to_owned(),
                DEFAULT_DOCKER_INCLUDE.to_owned(),
            ],
            exclude_paths: Vec::new(),
            collector: DEFAULT_COLLECTOR.to_owned(),
            collector_token_file: None,
            collector_token: None,
            collector_ca: None,
            client_cert: None,
            client_key: None,
            compression: Compression::default(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            http_addr: DEFAULT_HTTP_ADDR
                .parse()
                .expect("default http addr is valid"),
            host_name: detect_host_name(),
            read_from_start: true,
            memory_budget_bytes: 4 * 1024 * 1024,
            resource: ResourceConfig::default(),
            filters: FilterConfig::default(),
            redact: RedactConfig::default(),
            fields: FieldsConfig::default(),
            multiline: MultilineConfig::default(),
            containers: Vec::new(),
            tuning: Tuning::default(),
            host_metrics: HostMetricsConfig::default(),
            kubernetes: KubernetesConfig::default(),
        }
    }
}

/// Pod metadata from the Kubernetes API (`[kubernetes]`): a watch of the
/// pods on this node adds their workload, node, labels and selected
/// annotations to every record, and their annotations steer the agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Watch the API: on by default when the agent runs in a pod
    /// (`KUBERNETES_SERVICE_HOST` is set) or `api_server`/`kubeconfig`
    /// is given.
    pub enabled: Option<bool>,
    /// The API server's URL; in a pod, the service account's by default.
    pub api_server: Option<String>,
    /// CA of `api_server` (PEM).
    pub ca_file: Option<PathBuf>,
    /// Bearer token for `api_server`, read again on every request.
    pub token_file: Option<PathBuf>,
    /// A kubeconfig whose current context is used instead.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (`spec.nodeName` of its pods); `--node-name` or
    /// the `NODE_NAME` environment variable (set it from the downward
    /// API), else the host name.
    pub node_name: Option<String>,
    /// How long a file whose pod the watch does not know yet waits for
    /// it before it is shipped with its path's metadata only.
    #[serde(with = "duration_text")]
    pub pod_wait: Duration,
    /// Pod labels (globs) copied as `k8s.pod.label.<key>`.
    pub labels: Vec<String>,
    /// Pod labels (globs) never copied.
    pub exclude_labels: Vec<String>,
    /// Pod annotations (globs) copied as `k8s.pod.annotation.<key>`.
    pub annotations: Vec<String>,
    /// Pod annotations (globs) never copied.
    pub exclude_annotations: Vec<String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            enabled: None,
            api_server: None,
            ca_file: None,
            token_file: None,
            kubeconfig: None,
            node_name: None,
            pod_wait: Duration::from_secs(5),
            labels: vec!["*".to_owned()],
            exclude_labels: vec![
                "pod-template-hash".to_owned(),
                "controller-revision-hash".to_owned(),
                "pod-template-generation".to_owned(),
            ],
            annotations: vec!["sightline.io/*".to_owned()],
            exclude_annotations: vec![
                "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
            ],
        }
    }
}

/// A bearer token for the collector; `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct CollectorToken(String);

impl CollectorToken {
    /// The token's text.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The token of `collector_token`, else the first line of
    /// `collector_token_file` that is neither blank nor a `#` comment.
    pub fn resolve(config: &Config) -> Result<Option<CollectorToken>> {
        if let Some(token) = &config.collector_token {
            return Ok(Some(token.clone()));
        }
        let Some(path) = &config.collector_token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|error| AgentError::InvalidConfig {
            key: "collector_token_file",
            reason: format!("cannot read {}: {error}", path.display()),
        })?;
        text.lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| Some(CollectorToken(line.to_owned())))
            .ok_or_else(|| AgentError::InvalidConfig {
                key: "collector_token_file",
                reason: format!("{} holds no token", path.display()),
            })
    }
}

impl std::str::FromStr for CollectorToken {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        let token = text.trim();
        if token.is_empty() {
            return Err("the collector token is empty".to_owned());
        }
        Ok(CollectorToken(token.to_owned()))
    }
}

impl std::fmt::Debug for CollectorToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("CollectorToken(<redacted>)")
    }
}

/// Compression of export requests (the collector accepts both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip: what every OTLP receiver accepts; tonic compresses it at
    /// level 6, about as much CPU as the rest of the pipeline together.
    Gzip,
    /// zstd (default): a fraction of gzip's CPU. A receiver that refuses
    /// it gets gzip instead, once, automatically.
    #[default]
    Zstd,
}

/// Static resource attributes and how `service.name` is chosen.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceConfig {
    /// Added to the resource of every file.
    #[serde(rename = "static")]
    pub static_attributes: BTreeMap<String, String>,
    /// Container labels (Docker) whose first present value becomes
    /// `service.name`; the container name otherwise.
    pub service_name_labels: Vec<String>,
}

impl Default for ResourceConfig {
    fn default() -> Self {
        ResourceConfig {
            static_attributes: BTreeMap::new(),
            service_name_labels: vec![
                "app.kubernetes.io/name".to_owned(),
                "com.docker.compose.service".to_owned(),
                "app".to_owned(),
            ],
        }
    }
}

/// What is not shipped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Namespaces (globs) whose containers are not tailed.
    pub exclude_namespaces: Vec<String>,
    /// Container names (globs) that are not tailed.
    pub exclude_containers: Vec<String>,
    /// Container label (Docker) or annotation that, set to `"true"`,
    /// excludes the container.
    pub exclude_label: String,
    /// Records whose message matches any of these regexes are dropped.
    pub drop_patterns: Vec<String>,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            exclude_namespaces: Vec::new(),
            exclude_containers: Vec::new(),
            exclude_label: "sightline.io/exclude".to_owned(),
            drop_patterns: Vec::new(),
        }
    }
}

/// Masking of secrets in bodies and string attributes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactConfig {
    /// Replace e-mail addresses.
    pub emails: bool,
    /// Replace `Bearer <token>` credentials.
    pub bearer_tokens: bool,
    /// Replace AWS access key ids (`AKIA…`, `ASIA…`).
    pub aws_keys: bool,
    /// Replace card numbers (13 to 19 digits that pass the Luhn check).
    pub card_numbers: bool,
    /// Text put in place of what is masked.
    pub replacement: String,
    /// Extra regexes; every match is replaced.
    pub patterns: Vec<String>,
}

impl Default for RedactConfig {
    fn default() -> Self {
        RedactConfig {
            emails: false,
            bearer_tokens: true,
            aws_keys: true,
            card_numbers: true,
            replacement: "[REDACTED]".to_owned(),
            patterns: Vec::new(),
        }
    }
}

/// Field names the JSON/logfmt/regex parsers promote.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldsConfig {
    /// The body.
    pub message: Vec<String>,
    /// The severity.
    pub severity: Vec<String>,
    /// The record's own timestamp.
    pub timestamp: Vec<String>,
    /// W3C trace id (32 hex digits).
    pub trace_id: Vec<String>,
    /// W3C span id (16 hex digits).
    pub span_id: Vec<String>,
    /// Request id, promoted to the `request_id` attribute.
    pub request_id: Vec<String>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

impl Default for FieldsConfig {
    fn default() -> Self {
        FieldsConfig {
            message: strings(&["message", "msg"]),
            severity: strings(&["level", "severity", "lvl"]),
            timestamp: strings(&["timestamp", "time", "ts"]),
            trace_id: strings(&["trace_id", "traceId", "trace.id"]),
            span_id: strings(&["span_id", "spanId", "span.id"]),
            request_id: strings(sightline_vocab::names::REQUEST_ID_KEYS),
        }
    }
}

/// Multiline defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MultilineConfig {
    /// Mode for containers without a rule: `none` or a preset.
    pub default: MultilineMode,
    /// A pending record is emitted when no line joined it for this long.
    #[serde(with = "duration_text")]
    pub flush_timeout: Duration,
    /// A joined record is cut when it grows past this many bytes.
    pub max_bytes: usize,
}

impl Default for MultilineConfig {
    fn default() -> Self {
        MultilineConfig {
            default: MultilineMode::None,
            flush_timeout: Duration::from_secs(1),
            max_bytes: 256 * 1024,
        }
    }
}

/// How continuation lines are recognised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MultilineMode {
    /// Every line is a record.
    #[default]
    None,
    /// Java stack traces (`\tat …`, `Caused by:`, `... 12 more`).
    Java,
    /// Python tracebacks.
    Python,
    /// Go panics and goroutine dumps.
    Go,
    /// Java, Python and Go together.
    Auto,
    /// A line matching the rule's `multiline_start` starts a record; any
    /// other line continues it.
    Start,
}

/// Runtime log format of a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Detected from the first line.
    #[default]
    Auto,
    /// containerd / CRI-O.
    Cri,
    /// Docker json-file.
    Docker,
    /// Lines as they are.
    Plain,
}

/// How messages are parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParserKind {
    /// JSON objects are parsed, then plain-text lines in a format the
    /// `text` presets know; anything else stays text.
    #[default]
    Auto,
    /// JSON objects only; anything else stays text.
    Json,
    /// `key=value key2="quoted value"`.
    Logfmt,
    /// Plain-text formats by preset: a timestamp and level header, the
    /// message and a `key=value` tail (syslog, klog, nginx and Apache
    /// access logs, Python's and Java's default loggers).
    Text,
    /// The rule's `regex`, named captures become fields.
    Regex,
    /// Messages stay text.
    None,
}

/// Settings for the containers a rule matches. Empty match fields match
/// anything; values are globs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerRule {
    /// Namespace glob (kubelet paths).
    pub namespace: String,
    /// Pod name glob (kubelet paths).
    pub pod: String,
    /// Container name glob (kubelet or Docker).
    pub container: String,
    /// File path glob.
    pub path: String,
    /// Do not tail matching containers.
    pub exclude: bool,
    /// Runtime format of the files.
    pub format: Format,
    /// Message parser.
    pub parser: ParserKind,
    /// Regex with named captures for `parser = "regex"`.
    pub regex: String,
    /// Multiline mode (overrides `multiline.default`).
    pub multiline: Option<MultilineMode>,
    /// Start-of-record regex for `multiline = "start"`.
    pub multiline_start: String,
}

/// Intervals, sizes and limits of the pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tuning {
    /// How often the globs are scanned in full: the fallback to inotify,
    /// which finds new and renamed files within milliseconds.
    #[serde(with = "duration_text")]
    pub discovery_interval: Duration,
    /// How long a reader waits at end of file before polling again.
    #[serde(with = "duration_text")]
    pub poll_interval: Duration,
    /// After a file was renamed or removed, how long its reader keeps
    /// waiting for late writes once it has read everything.
    #[serde(with = "duration_text")]
    pub rotate_wait: Duration,
    /// A final line without a newline (or a pending partial) is emitted
    /// when the file has not grown for this long.
    #[serde(with = "duration_text")]
    pub partial_flush_timeout: Duration,
    /// Bytes read from a file per read call.
    pub read_buffer_bytes: usize,
    /// Longest line kept whole; longer lines are cut and flagged.
    pub max_line_bytes: usize,
    /// Flush a batch when it holds this many records.
    pub batch_max_records: usize,
    /// Flush a batch when its records add up to about this many bytes
    /// (stay under the collector's gRPC message limit, 4 MiB by default).
    pub batch_max_bytes: usize,
    /// Flush a batch at the latest this long after its first record.
    #[serde(with = "duration_text")]
    pub batch_max_wait: Duration,
    /// How often acknowledged offsets are written to disk.
    #[serde(with = "duration_text")]
    pub checkpoint_interval: Duration,
    /// First retry delay of a failed export.
    #[serde(with = "duration_text")]
    pub retry_initial_backoff: Duration,
    /// Largest retry delay of a failed export.
    #[serde(with = "duration_text")]
    pub retry_max_backoff: Duration,
    /// Deadline of one export call.
    #[serde(with = "duration_text")]
    pub export_timeout: Duration,
    /// After shutdown is requested, how long to keep trying to deliver
    /// what was already read. Undelivered records are re-read next start.
    #[serde(with = "duration_text")]
    pub shutdown_grace: Duration,
    /// Capacity (in read chunks) of the queue from readers to the batcher.
    pub reader_queue_chunks: usize,
    /// Capacity (in batches) of the queue from the batcher to the sink.
    pub sink_queue_batches: usize,
    /// Files decoded at the same time (0: one per CPU).
    pub reader_threads: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            discovery_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(200),
            rotate_wait: Duration::from_secs(5),
            partial_flush_timeout: Duration::from_secs(5),
            read_buffer_bytes: 64 * 1024,
            max_line_bytes: 1024 * 1024,
            batch_max_records: 2000,
            batch_max_bytes: 2 * 1024 * 1024,
            batch_max_wait: Duration::from_millis(200),
            checkpoint_interval: Duration::from_secs(1),
            retry_initial_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_secs(5),
            export_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            reader_queue_chunks: 16,
            sink_queue_batches: 2,
            reader_threads: 0,
        }
    }
}

/// node_exporter's default `--collector.filesystem.fs-types-exclude`.
pub const DEFAULT_FILESYSTEM_TYPES_EXCLUDE: &str = "^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|erofs|sysfs|tracefs)$";
/// node_exporter's default `--collector.filesystem.mount-points-exclude`,
/// plus the kubelet's per-pod volumes (one tmpfs per projected volume).
pub const DEFAULT_MOUNT_POINTS_EXCLUDE: &str = "^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+|var/lib/kubelet/.+)($|/)";

/// node_exporter's default `--collector.diskstats.device-exclude`:
/// partitions, RAM disks, loop and floppy devices.
pub const DEFAULT_DISK_DEVICES_EXCLUDE: &str =
    "^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\\d+n\\d+p)\\d+$";

/// Node (node_exporter) and container (cAdvisor) metrics on `/metrics`;
/// see [`crate::hostmetrics`]. In a DaemonSet, mount the host's `/proc`,
/// `/sys` and `/` and point the roots at the mounts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostMetricsConfig {
    /// Serve the node and container families at all.
    pub enabled: bool,
    /// The host's procfs (`/host/proc` in a DaemonSet).
    pub proc_root: PathBuf,
    /// The host's sysfs; cgroups are read under `<sys_root>/fs/cgroup`.
    pub sys_root: PathBuf,
    /// The host's root filesystem: mount points are looked up under it
    /// for `statvfs`, and labelled as the host sees them.
    pub rootfs: PathBuf,
    /// The kubelet's pod log directories, `<namespace>_<pod>_<uid>`.
    pub pod_logs_dir: PathBuf,
    /// The kubelet's container log links, `<pod>_<namespace>_<container>-<id>.log`.
    pub container_logs_dir: PathBuf,
    /// Filesystem types (regex) without `node_filesystem_*` series.
    pub filesystem_types_exclude: String,
    /// Mount points (regex) without `node_filesystem_*` series.
    pub mount_points_exclude: String,
    /// Block devices (regex) without `node_disk_*` series.
    pub disk_devices_exclude: String,
    /// Most cgroups read per scrape; deeper or later ones are left out.
    pub max_cgroups: usize,
    /// A collection is reused by scrapes within this long.
    #[serde(with = "duration_text")]
    pub cache_for: Duration,
    /// A scrape waits this long for a collection, then answers without it.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
}

impl Default for HostMetricsConfig {
    fn default() -> Self {
        HostMetricsConfig {
            enabled: true,
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            rootfs: PathBuf::from("/"),
            pod_logs_dir: PathBuf::from("/var/log/pods"),
            container_logs_dir: PathBuf::from("/var/log/containers"),
            filesystem_types_exclude: DEFAULT_FILESYSTEM_TYPES_EXCLUDE.to_owned(),
            mount_points_exclude: DEFAULT_MOUNT_POINTS_EXCLUDE.to_owned(),
            disk_devices_exclude: DEFAULT_DISK_DEVICES_EXCLUDE.to_owned(),
            max_cgroups: 4096,
            cache_for: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Parses a TOML document; unknown keys are rejected by name.
    pub fn from_toml(text: &str) -> Result<Config> {
        toml::from_str(text).map_err(|error| AgentError::ConfigFile {
            path: PathBuf::new(),
            reason: error.to_string(),
        })
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|error| AgentError::ConfigFile {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
        toml::from_str(&text).map_err(|error| AgentError::ConfigFile {
            path: path.to_owned(),
            reason: error.to_string(),
        })
    }

    /// Checks the configuration once at start-up; the error names the bad key.
    pub fn validate(&self) -> Result<()> {
        if self.include.is_empty() {
            return Err(invalid(
                "include",
                "at least one glob is required".to_owned(),
            ));
        }
        for (key, patterns) in [
            ("include", &self.include),
            ("exclude_paths", &self.exclude_paths),
        ] {
            for pattern in patterns {
                if let Err(error) = glob::Pattern::new(pattern) {
                    return Err(invalid(key, format!("bad glob {pattern:?}: {error}")));
                }
            }
        }
        if let Err(error) = tonic::transport::Endpoint::from_shared(self.collector.clone()) {
            return Err(invalid(
                "collector",
                format!("bad url {:?}: {error}", self.collector),
            ));
        }
        let https = self.collector.starts_with("https://");
        if !https && !self.collector.starts_with("http://") {
            return Err(invalid(
                "collector",
                format!(
                    "url {:?} must start with http:// or https://",
                    self.collector
                ),
            ));
        }
        if https && self.collector_ca.is_none() {
            return Err(invalid(
                "collector_ca",
                "an https:// collector needs the CA that signed its certificate".to_owned(),
            ));
        }
        for (key, file) in [
            ("collector_ca", &self.collector_ca),
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
        ] {
            if !https && file.is_some() {
                return Err(invalid(
                    key,
                    "is only used with an https:// collector".to_owned(),
                ));
            }
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(invalid(
                "client_cert",
                "client_cert and client_key go together".to_owned(),
            ));
        }
        if self.host_name.is_empty() {
            return Err(invalid("host_name", "must not be empty".to_owned()));
        }
        if self.memory_budget_bytes < 64 * 1024 {
            return Err(invalid(
                "memory_budget_bytes",
                "must be at least 65536".to_owned(),
            ));
        }
        let tuning = &self.tuning;
        if tuning.batch_max_records == 0 || tuning.batch_max_bytes == 0 {
            return Err(invalid(
                "tuning.batch_max_records",
                "batches must allow at least one record".to_owned(),
            ));
        }
        if tuning.read_buffer_bytes == 0 || tuning.max_line_bytes == 0 {
            return Err(invalid(
                "tuning.read_buffer_bytes",
                "buffers must not be empty".to_owned(),
            ));
        }
        if tuning.read_buffer_bytes > self.memory_budget_bytes {
            return Err(invalid(
                "tuning.read_buffer_bytes",
                "must not exceed memory_budget_bytes".to_owned(),
            ));
        }
        if tuning.reader_queue_chunks == 0 || tuning.sink_queue_batches == 0 {
            return Err(invalid(
                "tuning.reader_queue_chunks",
                "queues need a capacity of at least 1".to_owned(),
            ));
        }
        if self.host_metrics.timeout.is_zero() {
            return Err(invalid(
                "host_metrics.timeout",
                "must be longer than 0s".to_owned(),
            ));
        }
        // Every glob and regex, compiled alone: the runtime parts built
        // from them ([`crate::start`] builds each once) fail on nothing else.
        self.host_metrics.exclusions()?;
        self.rule_patterns()?;
        self.redact.compiled_patterns()?;
        Ok(())
    }

    /// Path of the checkpoint file inside the data directory.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.data_dir.join("checkpoints.json")
    }

    /// The number of reader threads to use.
    pub(crate) fn reader_threads(&self) -> usize {
        match self.tuning.reader_threads {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            threads => threads,
        }
    }
}

pub(crate) fn invalid(key: &'static str, reason: String) -> AgentError {
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

/// Durations written as text: `"200ms"`, `"5s"`, `"1m 30s"`.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_defaults() {
        let cli = Cli::try_parse_from(["sightline-agent"]).unwrap();
        let config = cli.load().unwrap();
        assert_eq!(config.include, [DEFAULT_INCLUDE, DEFAULT_DOCKER_INCLUDE]);
        assert_eq!(config.collector, DEFAULT_COLLECTOR);
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(config.http_addr.to_string(), DEFAULT_HTTP_ADDR);
        assert!(config.read_from_start);
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
        let config = cli.into_config();
        assert_eq!(config.include, ["/a/*.log", "/b/*.log"]);
        assert!(!config.read_from_start);
        assert_eq!(config.host_name, "node-1");

        let bare_flag = Cli::try_parse_from(["sightline-agent", "--read-from-start"]).unwrap();
        assert!(bare_flag.into_config().read_from_start);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "include = [\"/from/file/*.log\"]\ncollector = \"http://file:4317\"\nhost_name = \"file-host\"\n[tuning]\nbatch_max_wait = \"50ms\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "sightline-agent",
            "--config",
            file.to_str().unwrap(),
            "--collector",
            "http://flag:4317",
        ])
        .unwrap();
        let config = cli.load().unwrap();
        assert_eq!(config.include, ["/from/file/*.log"]);
        assert_eq!(config.collector, "http://flag:4317");
        assert_eq!(config.host_name, "file-host");
        assert_eq!(config.tuning.batch_max_wait, Duration::from_millis(50));
    }

    #[test]
    fn unknown_keys_are_named() {
        let cases = [
            ("colector = \"x\"", "colector"),
            ("[tuning]\npoll = \"1s\"", "poll"),
            ("[[containers]]\nnamespaec = \"x\"", "namespaec"),
            ("[redact]\ncards = true", "cards"),
        ];
        for (text, key) in cases {
            let error = Config::from_toml(text).unwrap_err().to_string();
            assert!(error.contains(key), "{text}: {error}");
        }
    }

    #[test]
    fn example_file_parses_and_matches_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/sightline-agent.example.toml");
        let mut config = Config::from_file(Path::new(path)).unwrap();
        config.host_name = "node".to_owned();
        config.validate().unwrap();
        let defaults = Config::default();
        assert_eq!(config.include, defaults.include);
        assert_eq!(config.collector, defaults.collector);
        assert_eq!(config.memory_budget_bytes, defaults.memory_budget_bytes);
        assert_eq!(config.fields.request_id, defaults.fields.request_id);
        assert_eq!(
            format!("{:?}", config.tuning),
            format!("{:?}", defaults.tuning),
            "every tuning key documented with its default"
        );
        assert_eq!(
            format!("{:?}", config.redact),
            format!("{:?}", defaults.redact)
        );
    }

    #[test]
    fn validate_names_the_bad_key() {
        let mut config = Config {
            include: vec!["/var/log/[".to_owned()],
            host_name: "h".to_owned(),
            ..Config::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("`include`"), "{error}");

        config.include = vec!["/x/*.log".to_owned()];
        config.collector = "127.0.0.1:4317".to_owned();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("`collector`"), "{error}");

        config.collector = DEFAULT_COLLECTOR.to_owned();
        config.filters.drop_patterns = vec!["(".to_owned()];
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("`filters.drop_patterns`"), "{error}");
    }

    #[test]
    fn tls_settings_need_an_https_collector_and_go_in_pairs() {
        let mut config = Config {
            host_name: "h".to_owned(),
            collector: "https://collector:4317".to_owned(),
            ..Config::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("`collector_ca`"), "{error}");

        config.collector_ca = Some(PathBuf::from("ca.pem"));
        config.validate().unwrap();

        config.client_cert = Some(PathBuf::from("agent.pem"));
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("client_key"), "{error}");
        config.client_key = Some(PathBuf::from("agent-key.pem"));
        config.validate().unwrap();

        config.collector = DEFAULT_COLLECTOR.to_owned();
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains("`collector_ca`") && error.contains("https://"),
            "{error}"
        );
    }

    #[test]
    fn collector_token_comes_from_the_flag_or_the_file_and_never_debug_prints() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "# ingest token\n\n  from-file  \nsecond\n").unwrap();
        let mut config = Config {
            collector_token_file: Some(file.clone()),
            ..Config::default()
        };
        let token = CollectorToken::resolve(&config).unwrap().unwrap();
        assert_eq!(token.expose(), "from-file");
        assert!(!format!("{config:?}").contains("from-file"));
        config.collector_token = Some("from-env".parse().unwrap());
        let token = CollectorToken::resolve(&config).unwrap().unwrap();
        assert_eq!(token.expose(), "from-env");
        assert!(!format!("{config:?}").contains("from-env"));
        std::fs::write(&file, "# nothing\n").unwrap();
        config.collector_token = None;
        let error = CollectorToken::resolve(&config).unwrap_err().to_string();
        assert!(error.contains("holds no token"), "{error}");
        assert!(
            CollectorToken::resolve(&Config::default())
                .unwrap()
                .is_none()
        );
    }
}
