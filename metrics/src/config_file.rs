//! The collector's configuration file: the sections of `prometheus.yml` that
//! a metrics pipeline needs, plus Sightline's own.
//!
//! An existing `prometheus.yml` loads unchanged: `global`, `scrape_configs`
//! (static targets and file-based discovery; `tls_config`, `authorization`,
//! `bearer_token(_file)` and `basic_auth`, with Prometheus' rules on which
//! may be combined and paths relative to this file's directory;
//! `relabel_configs` and `metric_relabel_configs`, see
//! [`crate::scrape::relabel`]), `rule_files` and `alerting` mean what they
//! mean to Prometheus. Sections and keys Sightline does not
//! implement (`remote_write`, `scrape_config_files`, ...) are listed in
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
//!   - job_name: node
//!     scheme: https
//!     tls_config: { ca_file: certs/ca.pem }
//!     authorization: { credentials_file: secrets/node-token }
//!     static_configs: [{ targets: ["node-1:9100"] }]
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
use sightline_vocab::names::is_metric_name;

use crate::scrape::client::{Auth, Credentials, Secret, TlsSettings};
use crate::scrape::relabel::{Relabel, RelabelConfig};
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
    /// The collector's cluster mode (NATS, PostgreSQL, object storage),
    /// read by the collector (`sightline_cluster::ClusterConfig`).
    pub cluster: Option<serde_norway::Value>,
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
    #[serde(default)]
    pub kubernetes_sd_configs: Vec<KubernetesSdConfig>,
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
    /// TLS towards the targets (`scheme: https`).
    #[serde(default)]
    pub tls_config: TlsConfig,
    /// `Authorization: <type> <credentials>`.
    #[serde(default)]
    pub authorization: Option<AuthorizationConfig>,
    /// Legacy form of `authorization` with the `Bearer` type.
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    /// Legacy form of `authorization.credentials_file`.
    #[serde(default)]
    pub bearer_token_file: Option<String>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuthConfig>,
    /// Rules applied to each discovered target's labels before the target
    /// is created.
    #[serde(default)]
    pub relabel_configs: Vec<RelabelConfig>,
    /// Rules applied to each scraped series before it is stored.
    #[serde(default)]
    pub metric_relabel_configs: Vec<RelabelConfig>,
    /// `relabel_configs`, checked by [`ConfigFile::parse`].
    #[serde(skip)]
    pub target_relabel: Vec<Relabel>,
    /// `metric_relabel_configs`, checked by [`ConfigFile::parse`].
    #[serde(skip)]
    pub metric_relabel: Vec<Relabel>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_norway::Value>,
}

/// `tls_config`: how scrapes verify targets and prove who they are.
/// Paths are relative to the config file's directory.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_norway::Value>,
}

impl TlsConfig {
    /// These settings with their files resolved against `config_dir`.
    pub fn settings(&self, config_dir: &Path) -> TlsSettings {
        let pem = |relative: &String| crate::scrape::client::Pem::File(config_dir.join(relative));
        TlsSettings {
            ca_file: self.ca_file.as_ref().map(pem),
            cert_file: self.cert_file.as_ref().map(pem),
            key_file: self.key_file.as_ref().map(pem),
            server_name: self.server_name.clone(),
            insecure_skip_verify: self.insecure_skip_verify,
        }
    }
}

/// `authorization`: a header `Authorization: <type> <credentials>`.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthorizationConfig {
    #[serde(rename = "type", default = "bearer")]
    pub kind: String,
    #[serde(default)]
    pub credentials: Option<Secret>,
    /// Read on every scrape; relative to the config file's directory.
    #[serde(default)]
    pub credentials_file: Option<String>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_norway::Value>,
}

/// `basic_auth`: HTTP basic authentication.
#[derive(Debug, Clone, Deserialize)]
pub struct BasicAuthConfig {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: Option<Secret>,
    /// Read on every scrape; relative to the config file's directory.
    #[serde(default)]
    pub password_file: Option<String>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_norway::Value>,
}

impl ScrapeConfig {
    /// The job's TLS settings and credentials, paths resolved against
    /// `config_dir`. The combinations were checked at parse time.
    pub fn client_settings(&self, config_dir: &Path) -> (TlsSettings, Option<Auth>) {
        let path = |relative: &String| config_dir.join(relative);
        let tls = self.tls_config.settings(config_dir);
        let credentials = |inline: &Option<Secret>, file: &Option<String>| match (inline, file) {
            (Some(secret), _) => Some(Credentials::Inline(secret.clone())),
            (None, Some(file)) => Some(Credentials::File(path(file))),
            (None, None) => None,
        };
        let auth = if let Some(basic) = &self.basic_auth {
            Some(Auth::Basic {
                username: basic.username.clone(),
                password: credentials(&basic.password, &basic.password_file),
            })
        } else if let Some(authorization) = &self.authorization {
            credentials(&authorization.credentials, &authorization.credentials_file).map(
                |credentials| Auth::Authorization {
                    scheme: authorization.kind.clone(),
                    credentials,
                },
            )
        } else {
            credentials(&self.bearer_token, &self.bearer_token_file).map(|credentials| {
                Auth::Authorization {
                    scheme: "Bearer".to_string(),
                    credentials,
                }
            })
        };
        (tls, auth)
    }

    /// Prometheus' rules for the TLS and credentials keys.
    fn check_client(&self) -> Result<(), String> {
        let job = &self.job_name;
        let legacy_bearer = self.bearer_token.is_some() || self.bearer_token_file.is_some();
        if self.bearer_token.is_some() && self.bearer_token_file.is_some() {
            return Err(format!(
                "scrape_configs[{job}]: at most one of bearer_token & bearer_token_file must be configured"
            ));
        }
        if self.basic_auth.is_some() && (legacy_bearer || self.authorization.is_some()) {
            return Err(format!(
                "scrape_configs[{job}]: at most one of basic_auth, authorization, bearer_token & bearer_token_file must be configured"
            ));
        }
        if let Some(authorization) = &self.authorization {
            if legacy_bearer {
                return Err(format!(
                    "scrape_configs[{job}]: authorization is not compatible with bearer_token & bearer_token_file"
                ));
            }
            if authorization.credentials.is_some() && authorization.credentials_file.is_some() {
                return Err(format!(
                    "scrape_configs[{job}]: authorization: at most one of credentials & credentials_file must be configured"
                ));
            }
            if authorization.kind.eq_ignore_ascii_case("basic") {
                return Err(format!(
                    "scrape_configs[{job}]: authorization type cannot be set to \"basic\", use \"basic_auth\" instead"
                ));
            }
            if authorization.kind.is_empty()
                || !authorization
                    .kind
                    .bytes()
                    .all(|byte| byte.is_ascii_graphic())
            {
                return Err(format!(
                    "scrape_configs[{job}]: authorization type {:?} is not a valid scheme",
                    authorization.kind
                ));
            }
        }
        if let Some(basic) = &self.basic_auth
            && basic.password.is_some()
            && basic.password_file.is_some()
        {
            return Err(format!(
                "scrape_configs[{job}]: basic_auth: at most one of password & password_file must be configured"
            ));
        }
        match (&self.tls_config.cert_file, &self.tls_config.key_file) {
            (Some(_), None) => Err(format!(
                "scrape_configs[{job}]: tls_config: cert_file needs key_file"
            )),
            (None, Some(_)) => Err(format!(
                "scrape_configs[{job}]: tls_config: key_file needs cert_file"
            )),
            _ => Ok(()),
        }
    }

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

/// `kubernetes_sd_configs` entry (the `pod` and `endpoints` roles): pods,
/// or endpoints with their services and pods, found by watches of the
/// Kubernetes API (`scrape/kubernetes.rs`).
#[derive(Debug, Clone, Deserialize)]
pub struct KubernetesSdConfig {
    pub role: String,
    /// Unset inside a pod: the service account's API server, token and CA.
    #[serde(default)]
    pub api_server: Option<String>,
    #[serde(default)]
    pub kubeconfig_file: Option<String>,
    #[serde(default)]
    pub namespaces: KubernetesNamespaces,
    #[serde(default)]
    pub selectors: Vec<serde_norway::Value>,
    /// Towards `api_server`; paths relative to the config file.
    #[serde(default)]
    pub tls_config: TlsConfig,
    #[serde(default)]
    pub bearer_token_file: Option<String>,
    #[serde(flatten)]
    pub(crate) unknown: BTreeMap<String, serde_norway::Value>,
}

/// `namespaces:` of a `kubernetes_sd_configs` entry (every one when empty).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct KubernetesNamespaces {
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub own_namespace: bool,
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
        let mut config: ConfigFile =
            serde_norway::from_str(text).map_err(|error| error.to_string())?;
        config.check()?;
        for scrape in &mut config.scrape_configs {
            scrape.target_relabel =
                compile_rules(&scrape.job_name, "relabel_configs", &scrape.relabel_configs)?;
            scrape.metric_relabel = compile_rules(
                &scrape.job_name,
                "metric_relabel_configs",
                &scrape.metric_relabel_configs,
            )?;
        }
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
            scrape.check_client()?;
            for (index, kubernetes) in scrape.kubernetes_sd_configs.iter().enumerate() {
                let at = format!(
                    "scrape_configs[{}].kubernetes_sd_configs[{index}]",
                    scrape.job_name
                );
                if kubernetes.role != "pod" && kubernetes.role != "endpoints" {
                    return Err(format!(
                        "{at}: role {:?} is not supported yet (pod and endpoints are; service, node, endpointslice and ingress are not)",
                        kubernetes.role
                    ));
                }
                if kubernetes.kubeconfig_file.is_some() && kubernetes.api_server.is_some() {
                    return Err(format!(
                        "{at}: cannot use 'kubeconfig_file' and 'api_server' simultaneously"
                    ));
                }
                if !kubernetes.selectors.is_empty() || kubernetes.namespaces.own_namespace {
                    return Err(format!(
                        "{at}: selectors and namespaces.own_namespace are not supported yet: filter with relabel_configs, or name the namespaces"
                    ));
                }
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
            let job = &scrape.job_name;
            ignored.extend(
                scrape
                    .unknown
                    .keys()
                    .map(|key| format!("scrape_configs[{job}].{key}")),
            );
            for (index, kubernetes) in scrape.kubernetes_sd_configs.iter().enumerate() {
                ignored.extend(
                    kubernetes
                        .unknown
                        .keys()
                        .chain(kubernetes.tls_config.unknown.keys())
                        .map(|key| {
                            format!("scrape_configs[{job}].kubernetes_sd_configs[{index}].{key}")
                        }),
                );
            }
            let nested = [
                ("tls_config", Some(&scrape.tls_config.unknown)),
                (
                    "authorization",
                    scrape.authorization.as_ref().map(|auth| &auth.unknown),
                ),
                (
                    "basic_auth",
                    scrape.basic_auth.as_ref().map(|auth| &auth.unknown),
                ),
            ];
            for (section, unknown) in nested {
                ignored.extend(
                    unknown
                        .into_iter()
                        .flat_map(BTreeMap::keys)
                        .map(|key| format!("scrape_configs[{job}].{section}.{key}")),
                );
            }
        }
        ignored
    }
}

/// Checks a job's relabeling rules; the error names the job and the rule.
fn compile_rules(job: &str, key: &str, rules: &[RelabelConfig]) -> Result<Vec<Relabel>, String> {
    rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            rule.compile()
                .map_err(|error| format!("scrape_configs[{job}].{key}[{index}]: {error}"))
        })
        .collect()
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    sightline_tsdb::promql::parse_duration(&text).map_err(serde::de::Error::custom)
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

fn bearer() -> String {
    "Bearer".into()
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
    use crate::scrape::client::Pem;

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
    relabel_configs: [{ source_labels: [env], regex: test, action: drop }]
    honor_chunks: true
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
            vec!["remote_write", "scrape_configs[shop].honor_chunks"]
        );
        assert_eq!(shop.target_relabel.len(), 1);
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

    #[test]
    fn relabel_errors_name_the_job_and_the_rule() {
        let error = ConfigFile::parse(
            "scrape_configs:\n  - job_name: shop\n    relabel_configs:\n      - { target_label: a }\n      - { source_labels: [a] }\n",
        )
        .unwrap_err();
        assert_eq!(
            error,
            "scrape_configs[shop].relabel_configs[1]: relabel configuration for replace action requires 'target_label' value"
        );
        let error = ConfigFile::parse(
            "scrape_configs:\n  - job_name: node\n    metric_relabel_configs: [{ regex: '(', action: labeldrop }]\n",
        )
        .unwrap_err();
        assert!(
            error
                .starts_with("scrape_configs[node].metric_relabel_configs[0]: invalid regex \"(\""),
            "{error}"
        );
        let error = ConfigFile::parse(
            "scrape_configs:\n  - job_name: node\n    metric_relabel_configs: [{ action: hashmod, target_label: h, modulus: 0 }]\n",
        )
        .unwrap_err();
        assert!(error.contains("requires non-zero modulus"), "{error}");
        // An unknown key in a rule fails the file, as in Prometheus.
        let error = ConfigFile::parse(
            "scrape_configs:\n  - job_name: node\n    relabel_configs: [{ action: keep, source: x }]\n",
        )
        .unwrap_err();
        assert!(error.contains("unknown field `source`"), "{error}");
    }

    #[test]
    fn tls_and_credentials_resolve_relative_to_the_config_file() {
        let config = ConfigFile::parse(
            r#"
scrape_configs:
  - job_name: secure
    scheme: https
    tls_config:
      ca_file: certs/ca.pem
      cert_file: /etc/sightline/client.pem
      key_file: client-key.pem
      server_name: node.internal
      min_version: TLS13
    authorization: { credentials_file: token }
  - job_name: legacy
    bearer_token: s3cret-legacy
  - job_name: basic
    basic_auth: { username: prom, password_file: pw }
  - job_name: custom
    authorization: { type: Token, credentials: s3cret-inline }
"#,
        )
        .unwrap();
        let dir = Path::new("/opt/conf");
        let (tls, auth) = config.scrape_configs[0].client_settings(dir);
        assert_eq!(
            tls,
            TlsSettings {
                ca_file: Some(Pem::File(PathBuf::from("/opt/conf/certs/ca.pem"))),
                cert_file: Some(Pem::File(PathBuf::from("/etc/sightline/client.pem"))),
                key_file: Some(Pem::File(PathBuf::from("/opt/conf/client-key.pem"))),
                server_name: Some("node.internal".into()),
                insecure_skip_verify: false,
            }
        );
        assert_eq!(
            auth,
            Some(Auth::Authorization {
                scheme: "Bearer".into(),
                credentials: Credentials::File(PathBuf::from("/opt/conf/token")),
            })
        );
        assert_eq!(
            config.scrape_configs[1].client_settings(dir).1,
            Some(Auth::Authorization {
                scheme: "Bearer".into(),
                credentials: Credentials::Inline(Secret::new("s3cret-legacy")),
            })
        );
        assert_eq!(
            config.scrape_configs[2].client_settings(dir).1,
            Some(Auth::Basic {
                username: "prom".into(),
                password: Some(Credentials::File(PathBuf::from("/opt/conf/pw"))),
            })
        );
        assert_eq!(
            config.scrape_configs[3].client_settings(dir).1,
            Some(Auth::Authorization {
                scheme: "Token".into(),
                credentials: Credentials::Inline(Secret::new("s3cret-inline")),
            })
        );
        // Unknown keys inside the new sections are listed like the others.
        assert_eq!(
            config.ignored(),
            vec!["scrape_configs[secure].tls_config.min_version"]
        );
        // No secret in what may be printed.
        let printed = format!("{config:?}");
        assert!(
            !printed.contains("s3cret") && printed.contains("<redacted>"),
            "{printed}"
        );
    }

    #[test]
    fn conflicting_credentials_are_refused_as_prometheus_does() {
        let cases = [
            (
                "basic_auth: {username: a, password: b}\n    bearer_token: c",
                "at most one of basic_auth, authorization, bearer_token & bearer_token_file",
            ),
            (
                "basic_auth: {username: a}\n    authorization: {credentials: c}",
                "at most one of basic_auth, authorization, bearer_token & bearer_token_file",
            ),
            (
                "authorization: {credentials: c}\n    bearer_token_file: f",
                "authorization is not compatible with bearer_token & bearer_token_file",
            ),
            (
                "bearer_token: c\n    bearer_token_file: f",
                "at most one of bearer_token & bearer_token_file",
            ),
            (
                "authorization: {credentials: c, credentials_file: f}",
                "at most one of credentials & credentials_file",
            ),
            (
                "authorization: {type: Basic, credentials: c}",
                "use \"basic_auth\" instead",
            ),
            (
                "basic_auth: {username: a, password: b, password_file: f}",
                "at most one of password & password_file",
            ),
            ("tls_config: {cert_file: c.pem}", "cert_file needs key_file"),
            ("tls_config: {key_file: k.pem}", "key_file needs cert_file"),
        ];
        for (keys, expected) in cases {
            let text = format!("scrape_configs:\n  - job_name: j\n    {keys}\n");
            let error = ConfigFile::parse(&text).unwrap_err();
            assert!(
                error.contains(expected) && error.contains("scrape_configs[j]"),
                "{keys}: {error}"
            );
        }
    }

    #[test]
    fn kubernetes_discovery_parses_the_pod_role_and_says_what_it_lacks() {
        let text = "scrape_configs:\n  - job_name: pods\n    kubernetes_sd_configs:\n      - role: pod\n        api_server: https://k8s:6443\n        namespaces: {names: [shop]}\n        tls_config: {ca_file: ca.pem}\n        bearer_token_file: token\n";
        let config = ConfigFile::parse(text).unwrap();
        let kubernetes = &config.scrape_configs[0].kubernetes_sd_configs[0];
        assert_eq!(kubernetes.api_server.as_deref(), Some("https://k8s:6443"));
        assert_eq!(kubernetes.namespaces.names, ["shop"]);
        assert!(config.ignored().is_empty(), "{:?}", config.ignored());
        for (entry, expected) in [
            ("{role: service}", "role \"service\" is not supported yet"),
            (
                "{role: pod, kubeconfig_file: k, api_server: http://a}",
                "cannot use 'kubeconfig_file' and 'api_server' simultaneously",
            ),
            (
                "{role: pod, selectors: [{role: pod, label: a=b}]}",
                "selectors",
            ),
        ] {
            let text =
                format!("scrape_configs:\n  - job_name: j\n    kubernetes_sd_configs: [{entry}]\n");
            let error = ConfigFile::parse(&text).unwrap_err();
            assert!(
                error.contains(expected)
                    && error.contains("scrape_configs[j].kubernetes_sd_configs[0]"),
                "{entry}: {error}"
            );
        }
    }
}
