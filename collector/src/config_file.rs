//! The collector's configuration file: the sections of `prometheus.yml` that
//! a metrics pipeline needs, plus Sightline's own.
//!
//! An existing `prometheus.yml` loads unchanged: `global`, `scrape_configs`
//! (static targets and file-based discovery), `rule_files` and `alerting`
//! mean what they mean to Prometheus. Sections and keys Sightline does not
//! implement (`remote_write`, `relabel_configs`, ...) are listed in
//! [`ConfigFile::ignored`] and logged at start, instead of failing the
//! whole file. Sightline's own sections are `log_metrics` (counters derived
//! from log records at ingest), `webhooks` (plain JSON notifications) and
//! `external_url` (the UI address links in notifications point at).
//!
//! ```yaml
//! global: { scrape_interval: 15s, evaluation_interval: 15s }
//! scrape_configs:
//!   - job_name: shop
//!     static_configs: [{ targets: ["127.0.0.1:8000"], labels: { env: demo } }]
//!     file_sd_configs: [{ files: ["targets/*.json"] }]
//! rule_files: ["rules/*.yml"]
//! alerting:
//!   alertmanagers: [{ static_configs: [{ targets: ["127.0.0.1:9093"] }] }]
//! log_metrics:
//!   - name: failed_logins_total
//!     query: 'body:"login failed"'
//!     labels: [ip_address]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::scrape::target::{DEFAULT_SAMPLE_LIMIT, ScrapeLimits};

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ConfigFile {
    pub global: GlobalConfig,
    pub scrape_configs: Vec<ScrapeConfig>,
    /// Globs, relative to the file's directory.
    pub rule_files: Vec<String>,
    pub alerting: AlertingConfig,
    pub log_metrics: Vec<LogMetricConfig>,
    pub webhooks: Vec<WebhookConfig>,
    /// Base address of the UI for links in notifications; the query
    /// listener's address when unset.
    pub external_url: Option<String>,
    /// Keys of any section that Sightline does not implement.
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_norway::Value>,
}

/// `global:` defaults for every scrape config and rule group.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GlobalConfig {
    #[serde(deserialize_with = "duration")]
    pub scrape_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub scrape_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub evaluation_interval: Duration,
    /// Added to alerts sent to Alertmanager.
    pub external_labels: BTreeMap<String, String>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_norway::Value>,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        // Prometheus' defaults.
        GlobalConfig {
            scrape_interval: Duration::from_secs(60),
            scrape_timeout: Duration::from_secs(10),
            evaluation_interval: Duration::from_secs(60),
            external_labels: BTreeMap::new(),
            unknown: BTreeMap::new(),
        }
    }
}

/// One `scrape_configs` entry: a job and how to find its targets.
#[derive(Debug, Clone, Deserialize)]
pub struct ScrapeConfig {
    pub job_name: String,
    /// `global.scrape_interval` when unset.
    #[serde(default, deserialize_with = "optional_duration")]
    pub scrape_interval: Option<Duration>,
    /// `global.scrape_timeout` when unset, capped at the interval.
    #[serde(default, deserialize_with = "optional_duration")]
    pub scrape_timeout: Option<Duration>,
    #[serde(default = "default_metrics_path")]
    pub metrics_path: String,
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// Query parameters added to the scrape URL.
    #[serde(default)]
    pub params: BTreeMap<String, Vec<String>>,
    /// Keep the target's own `job`/`instance` labels on conflict.
    #[serde(default)]
    pub honor_labels: bool,
    #[serde(default = "yes")]
    pub honor_timestamps: bool,
    #[serde(default)]
    pub static_configs: Vec<StaticConfig>,
    #[serde(default)]
    pub file_sd_configs: Vec<FileSdConfig>,
    /// Most samples a scrape may expose; more fails it with
    /// `sample limit exceeded`. Unset: [`DEFAULT_SAMPLE_LIMIT`]; 0: none.
    #[serde(default)]
    pub sample_limit: Option<usize>,
    /// Most labels a scraped series may have (target labels included); 0: none.
    #[serde(default)]
    pub label_limit: usize,
    /// Longest label name of a scraped series, in bytes; 0: none.
    #[serde(default)]
    pub label_name_length_limit: usize,
    /// Longest label value of a scraped series, in bytes; 0: none.
    #[serde(default)]
    pub label_value_length_limit: usize,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_norway::Value>,
}

impl ScrapeConfig {
    /// The interval this job scrapes at.
    pub fn interval(&self, global: &GlobalConfig) -> Duration {
        self.scrape_interval.unwrap_or(global.scrape_interval)
    }

    /// The job's per-scrape limits.
    pub fn limits(&self) -> ScrapeLimits {
        ScrapeLimits {
            sample_limit: self.sample_limit.unwrap_or(DEFAULT_SAMPLE_LIMIT),
            label_limit: self.label_limit,
            label_name_length_limit: self.label_name_length_limit,
            label_value_length_limit: self.label_value_length_limit,
        }
    }

    /// The per-scrape timeout: never longer than the interval.
    pub fn timeout(&self, global: &GlobalConfig) -> Duration {
        self.scrape_timeout
            .unwrap_or(global.scrape_timeout)
            .min(self.interval(global))
    }
}

/// A target group: addresses and labels shared by them. Also the format of
/// file-based discovery files (a JSON or YAML list of these).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct StaticConfig {
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `file_sd_configs` entry: target files, re-read when they change.
#[derive(Debug, Clone, Deserialize)]
pub struct FileSdConfig {
    /// Globs, relative to the config file's directory.
    pub files: Vec<String>,
    #[serde(default = "five_minutes", deserialize_with = "duration")]
    pub refresh_interval: Duration,
}

/// `alerting:`: where firing alerts go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AlertingConfig {
    pub alertmanagers: Vec<AlertmanagerConfig>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_norway::Value>,
}

/// One group of Alertmanagers.
#[derive(Debug, Clone, Deserialize)]
pub struct AlertmanagerConfig {
    #[serde(default)]
    pub static_configs: Vec<StaticConfig>,
    #[serde(default = "default_scheme")]
    pub scheme: String,
    #[serde(default)]
    pub path_prefix: String,
    #[serde(default = "ten_seconds", deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(default = "default_api_version")]
    pub api_version: String,
}

/// A counter derived from log records at ingest: every record matching
/// `query` adds one to the series labelled by the record's `labels` fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogMetricConfig {
    /// Metric name; `_total` is the convention.
    pub name: String,
    #[serde(default)]
    pub help: String,
    /// A log query in the search syntax of `/api/logs`.
    pub query: String,
    /// Record fields (`service`, `severity`, attribute names, `resource.x`)
    /// that become labels.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// A plain webhook: firing and resolved alerts POSTed as JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
}

/// An error that names the file and what is wrong in it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl ConfigFile {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigFileError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses and checks YAML text; the error says what and where.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: ConfigFile = serde_norway::from_str(text).map_err(|error| error.to_string())?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let mut jobs = std::collections::BTreeSet::new();
        for scrape in &self.scrape_configs {
            if scrape.job_name.is_empty() {
                return Err("scrape_configs: a job_name is empty".into());
            }
            if !jobs.insert(scrape.job_name.as_str()) {
                return Err(format!(
                    "scrape_configs: job_name {:?} appears twice",
                    scrape.job_name
                ));
            }
            if scrape.scheme != "http" && scrape.scheme != "https" {
                return Err(format!(
                    "scrape_configs[{}]: scheme must be http or https, not {:?}",
                    scrape.job_name, scrape.scheme
                ));
            }
            if scrape.interval(&self.global).is_zero() {
                return Err(format!(
                    "scrape_configs[{}]: scrape_interval must be positive",
                    scrape.job_name
                ));
            }
        }
        for metric in &self.log_metrics {
            if !is_metric_name(&metric.name) {
                return Err(format!(
                    "log_metrics: {:?} is not a valid metric name",
                    metric.name
                ));
            }
        }
        if self.global.evaluation_interval.is_zero() {
            return Err("global: evaluation_interval must be positive".into());
        }
        Ok(())
    }

    /// Dotted paths of keys this file sets that Sightline does not
    /// implement, to log at start.
    pub fn ignored(&self) -> Vec<String> {
        let mut ignored: Vec<String> = self.unknown.keys().cloned().collect();
        ignored.extend(
            self.global
                .unknown
                .keys()
                .map(|key| format!("global.{key}")),
        );
        ignored.extend(
            self.alerting
                .unknown
                .keys()
                .map(|key| format!("alerting.{key}")),
        );
        for scrape in &self.scrape_configs {
            ignored.extend(
                scrape
                    .unknown
                    .keys()
                    .map(|key| format!("scrape_configs[{}].{key}", scrape.job_name)),
            );
        }
        ignored
    }
}

/// Whether `name` matches `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_' || first == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    sightline_store::promql::parse_duration(&text).map_err(serde::de::Error::custom)
}

fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

fn default_metrics_path() -> String {
    "/metrics".into()
}

fn default_scheme() -> String {
    "http".into()
}

fn default_api_version() -> String {
    "v2".into()
}

fn yes() -> bool {
    true
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prometheus_yml_loads_and_unsupported_keys_are_listed() {
        let config = ConfigFile::parse(
            r#"
global:
  scrape_interval: 15s
  evaluation_interval: 30s
  external_labels: { cluster: demo }
scrape_configs:
  - job_name: shop
    scrape_interval: 5s
    scrape_timeout: 10s
    relabel_configs: [{ action: drop }]
    static_configs:
      - targets: ["127.0.0.1:8000", "127.0.0.1:8001"]
        labels: { env: demo }
    file_sd_configs:
      - files: ["targets/*.json"]
  - job_name: node
    static_configs: [{ targets: ["127.0.0.1:9100"] }]
rule_files: ["rules/*.yml"]
alerting:
  alertmanagers:
    - static_configs: [{ targets: ["127.0.0.1:9093"] }]
remote_write: [{ url: "http://example" }]
log_metrics:
  - name: failed_logins_total
    query: 'body:"login failed"'
    labels: [ip_address]
"#,
        )
        .unwrap();
        assert_eq!(config.global.evaluation_interval, Duration::from_secs(30));
        let shop = &config.scrape_configs[0];
        assert_eq!(shop.interval(&config.global), Duration::from_secs(5));
        // a timeout longer than the interval is capped at the interval
        assert_eq!(shop.timeout(&config.global), Duration::from_secs(5));
        assert_eq!(shop.static_configs[0].targets.len(), 2);
        assert_eq!(
            shop.file_sd_configs[0].refresh_interval,
            Duration::from_secs(300)
        );
        let node = &config.scrape_configs[1];
        assert_eq!(node.interval(&config.global), Duration::from_secs(15));
        assert_eq!(node.metrics_path, "/metrics");
        assert_eq!(
            config.ignored(),
            vec!["remote_write", "scrape_configs[shop].relabel_configs"]
        );
        assert_eq!(config.log_metrics[0].labels, vec!["ip_address"]);
    }

    #[test]
    fn errors_say_what_is_wrong_and_where() {
        let error = ConfigFile::parse("global:\n  scrape_interval: fast\n").unwrap_err();
        assert!(
            error.contains("fast") && error.contains("line 2"),
            "{error}"
        );
        let error =
            ConfigFile::parse("scrape_configs:\n  - job_name: a\n  - job_name: a\n").unwrap_err();
        assert!(error.contains("\"a\" appears twice"), "{error}");
        let error = ConfigFile::parse("log_metrics:\n  - name: 1bad\n    query: x\n").unwrap_err();
        assert!(error.contains("1bad"), "{error}");
    }
}
