//! Prometheus-compatible scraping: targets from `scrape_configs`, one loop
//! per target, samples into the [`MetricStore`].
//!
//! Roles:
//! - [`client`]: one HTTP client per job, with its `tls_config` and
//!   credentials;
//! - [`parse`]: the exposition parser (text 0.0.4 and OpenMetrics 1.0);
//! - [`discovery`]: target files of `file_sd_configs`, polled for changes;
//! - [`target`]: one target's scrape loop, its synthetic series, staleness
//!   markers and health;
//! - [`Scraper`]: the manager. It turns jobs and their target groups into
//!   targets, starts a loop for each new one, stops (and marks stale) the
//!   ones discovery dropped, and answers `/api/v1/targets`;
//!   [`Scraper::reload`] swaps its jobs on a configuration reload, keeping
//!   the loops of unchanged targets.
//!
//! The collector scrapes itself unless a job already does: an implicit job
//! `sightline` scrapes its own `/metrics`, so its operational counters reach
//! the store and alert rules can use them, as a Prometheus server scraping
//! it would. The span metrics on that page are written into the store
//! directly ([`crate::span_metrics::flush_loop`]), so a scrape of the
//! collector's own address drops them. Behind TLS it scrapes its own
//! listener over https without verifying the certificate (see
//! [`jobs_from_config`]).

pub use sightline_kube::http as client;
pub mod discovery;
pub mod kubernetes;
pub mod parse;
pub mod relabel;
pub mod target;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::routing::get;
use sightline_tsdb::{Labels, SampleLog};
use tokio::sync::watch;

use crate::config_file::{ConfigFile, FileSdConfig, StaticConfig};
use client::{Auth, HttpClient, TlsSettings};
use discovery::FileDiscovery;
use relabel::Relabel;
use target::{ScrapeLimits, Target, TargetStatus};

/// The job the collector scrapes itself in, when no job does.
pub const SELF_JOB: &str = "sightline";

/// How often target files are checked for changes (besides their refresh
/// interval).
pub const FILE_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// One scrape job: its settings and where its targets come from.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub interval: Duration,
    /// At most the interval.
    pub timeout: Duration,
    pub scheme: String,
    pub metrics_path: String,
    pub params: BTreeMap<String, Vec<String>>,
    pub honor_labels: bool,
    pub honor_timestamps: bool,
    pub static_configs: Vec<StaticConfig>,
    pub file_sd_configs: Vec<FileSdConfig>,
    pub kubernetes_sd_configs: Vec<crate::config_file::KubernetesSdConfig>,
    /// Where relative `file_sd_configs` globs start.
    pub base_dir: PathBuf,
    pub limits: ScrapeLimits,
    /// `tls_config`, paths resolved.
    pub tls: TlsSettings,
    /// Credentials sent with every scrape.
    pub auth: Option<Auth>,
    /// Applied to each discovered target's labels.
    pub relabel_configs: Vec<Relabel>,
    /// Applied to each scraped series.
    pub metric_relabel_configs: Vec<Relabel>,
}

impl Job {
    /// A job with Prometheus' defaults and static targets.
    pub fn new(name: &str, interval: Duration, targets: Vec<String>) -> Job {
        Job {
            name: name.to_string(),
            interval,
            timeout: interval.min(Duration::from_secs(10)),
            scheme: "http".to_string(),
            metrics_path: "/metrics".to_string(),
            params: BTreeMap::new(),
            honor_labels: false,
            honor_timestamps: true,
            static_configs: vec![StaticConfig {
                targets,
                labels: BTreeMap::new(),
            }],
            file_sd_configs: Vec::new(),
            kubernetes_sd_configs: Vec::new(),
            base_dir: PathBuf::from("."),
            limits: ScrapeLimits::default(),
            tls: TlsSettings::default(),
            auth: None,
            relabel_configs: Vec::new(),
            metric_relabel_configs: Vec::new(),
        }
    }

    /// The targets of `groups` in this job, after `relabel_configs`, and
    /// the targets those rules dropped. A target whose relabeled labels
    /// cannot make one (no address, a bad scheme or interval) is logged
    /// and left out of both, as Prometheus does.
    pub fn targets(&self, groups: &[StaticConfig]) -> (Vec<Target>, Vec<DroppedTarget>) {
        let mut targets = Vec::new();
        let mut dropped = Vec::new();
        let metric_relabel: Arc<[Relabel]> = self.metric_relabel_configs.clone().into();
        // Targets that relabeling made the same (a pod's containers all
        // rewritten to its annotated port, say) are one target, the first,
        // as Prometheus keeps them: neither scraped twice nor listed twice.
        let mut unique = std::collections::HashSet::new();
        for group in groups {
            for address in &group.targets {
                let discovered = self.discovered_labels(group, address);
                let mut labels = Labels::new(discovered.clone());
                if !relabel::process(&self.relabel_configs, &mut labels) {
                    dropped.push(DroppedTarget {
                        job: self.name.clone(),
                        discovered_labels: discovered,
                    });
                    continue;
                }
                match self.target(discovered, &labels, metric_relabel.clone()) {
                    Ok(target) => {
                        if unique.insert((target.url.clone(), target.labels.clone())) {
                            targets.push(target);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(job = %self.name, %address, %error, "cannot create target")
                    }
                }
            }
        }
        (targets, dropped)
    }

    /// A target's labels before relabeling: the group's, its address, and
    /// the job's settings as `__scheme__`, `__metrics_path__`,
    /// `__scrape_interval__`, `__scrape_timeout__` and `job` unless the
    /// group sets them, and `__param_<name>` (the first value of each of
    /// the job's `params`).
    fn discovered_labels(&self, group: &StaticConfig, address: &str) -> BTreeMap<String, String> {
        let mut discovered = group.labels.clone();
        discovered.insert("__address__".into(), address.to_string());
        let defaults = [
            ("__scheme__", self.scheme.clone()),
            ("__metrics_path__", self.metrics_path.clone()),
            ("__scrape_interval__", prometheus_duration(self.interval)),
            (
                "__scrape_timeout__",
                prometheus_duration(self.timeout.min(self.interval)),
            ),
            ("job", self.name.clone()),
        ];
        for (name, value) in defaults {
            discovered.entry(name.into()).or_insert(value);
        }
        // The job's params win over a group's `__param_` labels, as in
        // Prometheus.
        for (name, values) in &self.params {
            if let Some(first) = values.first() {
                discovered.insert(format!("__param_{name}"), first.clone());
            }
        }
        discovered
    }

    /// The target that relabeled `labels` describe.
    fn target(
        &self,
        discovered: BTreeMap<String, String>,
        labels: &Labels,
        metric_relabel: Arc<[Relabel]>,
    ) -> Result<Target, String> {
        let address = labels.get("__address__");
        if address.is_empty() {
            return Err("no __address__ label after relabeling".into());
        }
        if address.contains('/') || address.contains(char::is_whitespace) {
            return Err(format!("{address:?} is not a host:port address"));
        }
        let scheme = labels.get("__scheme__");
        if scheme != "http" && scheme != "https" {
            return Err(format!("__scheme__ must be http or https, not {scheme:?}"));
        }
        let duration = |name: &str, default: Duration| match labels.get(name) {
            "" => Ok(default),
            text => sightline_tsdb::promql::parse_duration(text)
                .map_err(|error| format!("{name} {text:?}: {error}")),
        };
        let interval = duration("__scrape_interval__", self.interval)?;
        if interval.is_zero() {
            return Err("__scrape_interval__ must be positive".into());
        }
        let timeout = duration("__scrape_timeout__", self.timeout)?.min(interval);
        if let Some((name, _)) = labels
            .iter()
            .find(|(name, _)| !sightline_vocab::names::is_label_name(name))
        {
            return Err(format!("{name:?} is not a valid label name"));
        }
        let mut params = self.params.clone();
        for (name, value) in labels.iter() {
            if let Some(param) = name.strip_prefix("__param_") {
                let values = params.entry(param.to_string()).or_default();
                match values.first_mut() {
                    Some(first) => *first = value.to_string(),
                    None => values.push(value.to_string()),
                }
            }
        }
        let path = labels.get("__metrics_path__");
        let slash = if path.starts_with('/') { "" } else { "/" };
        let mut url = format!("{scheme}://{address}{slash}{path}");
        let query: Vec<String> = params
            .iter()
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |value| format!("{}={}", query_escape(name), query_escape(value)))
            })
            .collect();
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query.join("&"));
        }
        let mut target_labels =
            Labels::new(labels.iter().filter(|(name, _)| !name.starts_with("__")));
        if !target_labels.contains("instance") {
            target_labels.set("instance", address);
        }
        Ok(Target {
            job: self.name.clone(),
            labels: target_labels,
            discovered_labels: discovered,
            url,
            interval,
            timeout,
            honor_labels: self.honor_labels,
            honor_timestamps: self.honor_timestamps,
            limits: self.limits,
            metric_relabel,
        })
    }
}

/// A target that `relabel_configs` dropped, listed in `droppedTargets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedTarget {
    pub job: String,
    pub discovered_labels: BTreeMap<String, String>,
}

/// Go's `url.QueryEscape`: unreserved bytes as they are, space as `+`,
/// anything else percent-encoded.
fn query_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                escaped.push(byte as char)
            }
            b' ' => escaped.push('+'),
            _ => escaped.push_str(&format!("%{byte:02X}")),
        }
    }
    escaped
}

/// The collector's own query listener, for the implicit self-scrape job.
#[derive(Debug, Clone, Copy)]
pub struct SelfScrape {
    pub address: SocketAddr,
    /// Whether the listener speaks TLS.
    pub tls: bool,
}

/// The jobs of a config file, plus the implicit self-scrape job when no
/// static target is the collector's own address.
pub fn jobs_from_config(
    config: &ConfigFile,
    config_dir: &Path,
    self_scrape: Option<SelfScrape>,
) -> Vec<Job> {
    let mut jobs: Vec<Job> = config
        .scrape_configs
        .iter()
        .map(|scrape| {
            let (tls, auth) = scrape.client_settings(config_dir);
            Job {
                name: scrape.job_name.clone(),
                interval: scrape.interval(&config.global),
                timeout: scrape.timeout(&config.global),
                scheme: scrape.scheme.clone(),
                metrics_path: scrape.metrics_path.clone(),
                params: scrape.params.clone(),
                honor_labels: scrape.honor_labels,
                honor_timestamps: scrape.honor_timestamps,
                static_configs: scrape.static_configs.clone(),
                file_sd_configs: scrape.file_sd_configs.clone(),
                kubernetes_sd_configs: scrape.kubernetes_sd_configs.clone(),
                base_dir: config_dir.to_path_buf(),
                limits: scrape.limits(),
                tls,
                auth,
                relabel_configs: scrape.target_relabel.clone(),
                metric_relabel_configs: scrape.metric_relabel.clone(),
            }
        })
        .collect();
    let Some(SelfScrape { address, tls }) = self_scrape else {
        return jobs;
    };
    let host = if address.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        address.ip().to_string()
    };
    let port = address.port();
    let own = |target: &str| {
        target == address.to_string()
            || [host.as_str(), "127.0.0.1", "localhost", "0.0.0.0", "[::1]"]
                .iter()
                .any(|candidate| target == format!("{candidate}:{port}"))
    };
    let mut scraped = false;
    for job in &mut jobs {
        let own_targets: Vec<&str> = job
            .static_configs
            .iter()
            .flat_map(|group| &group.targets)
            .map(String::as_str)
            .filter(|target| own(target))
            .collect();
        scraped |= job.name == SELF_JOB || !own_targets.is_empty();
        if let Some(rule) = drop_span_metrics(&own_targets) {
            job.metric_relabel_configs.push(rule);
        }
    }
    if !scraped {
        let self_target = self_target(address);
        let drop_rule = drop_span_metrics(&[&self_target]);
        let mut job = Job::new(SELF_JOB, config.global.scrape_interval, vec![self_target]);
        job.metric_relabel_configs.extend(drop_rule);
        job.timeout = config.global.scrape_timeout.min(job.interval);
        if tls {
            job.scheme = "https".to_string();
            // The collector knows no CA for its own certificate (it may be
            // signed by anyone, or self-signed). Skipping verification is
            // safe for this one job: it dials the collector's own listener
            // on loopback (or the address it bound itself), so there is no
            // network path for anyone to sit in the middle of, and the
            // scrape sends no credentials (`/metrics` is open).
            job.tls.insecure_skip_verify = true;
        }
        jobs.push(job);
    }
    jobs
}

/// The target (and `instance`) of the implicit self-scrape job: the query
/// listener's address, on loopback when it listens on every address.
pub fn self_target(address: SocketAddr) -> String {
    let port = address.port();
    if address.ip().is_unspecified() {
        format!("127.0.0.1:{port}")
    } else if address.is_ipv6() {
        format!("[{}]:{port}", address.ip())
    } else {
        format!("{}:{port}", address.ip())
    }
}

/// A `metric_relabel_configs` rule dropping the span metrics scraped from
/// `targets` (the collector's own addresses, by the `instance` label they
/// give a series unless relabeled): the collector writes those into the
/// store itself. None without targets.
fn drop_span_metrics(targets: &[&str]) -> Option<Relabel> {
    if targets.is_empty() {
        return None;
    }
    let instances: Vec<String> = targets.iter().map(|target| regex::escape(target)).collect();
    let rule = relabel::RelabelConfig {
        source_labels: Some(vec![
            sightline_tsdb::METRIC_NAME.to_string(),
            "instance".to_string(),
        ]),
        separator: ";".to_string(),
        regex: format!(
            "(?:{});(?:{})",
            crate::span_metrics::METRIC_NAMES,
            instances.join("|")
        ),
        action: "drop".to_string(),
        ..Default::default()
    };
    match rule.compile() {
        Ok(rule) => Some(rule),
        Err(error) => {
            tracing::error!(%error, "cannot drop span metrics from the self-scrape");
            None
        }
    }
}

/// A running target loop.
struct Running {
    status: Arc<TargetStatus>,
    remove: watch::Sender<bool>,
}

/// New jobs for the manager, their clients, and who waits for them to
/// apply.
struct Reload {
    jobs: Vec<Job>,
    clients: BTreeMap<String, HttpClient>,
    applied: tokio::sync::oneshot::Sender<()>,
}

/// The scrape manager; clones share it.
#[derive(Clone)]
pub struct Scraper {
    targets: Arc<Mutex<BTreeMap<Target, Running>>>,
    /// Targets `relabel_configs` dropped, as of the last discovery.
    dropped: Arc<Mutex<Vec<DroppedTarget>>>,
    reloads: tokio::sync::mpsc::UnboundedSender<Reload>,
    /// The targets this collector scrapes (cluster mode: its share).
    share: crate::share::WorkShare,
}

impl Scraper {
    /// Starts discovery and the target loops; everything stops when
    /// `shutdown` turns true. `file_poll_interval` is how often target
    /// files are checked ([`FILE_POLL_INTERVAL`] in the collector). Fails,
    /// naming the job and the file, when a job's TLS files cannot be used.
    pub fn start(
        jobs: Vec<Job>,
        store: Arc<dyn SampleLog>,
        share: crate::share::WorkShare,
        file_poll_interval: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Scraper> {
        let mut clients = BTreeMap::new();
        for job in &jobs {
            let client = HttpClient::build(
                &format!("scrape job {:?}", job.name),
                &job.tls,
                job.auth.clone(),
            )?;
            clients.insert(job.name.clone(), client);
        }
        let (reloads, reloaded) = tokio::sync::mpsc::unbounded_channel();
        let scraper = Scraper {
            targets: Arc::new(Mutex::new(BTreeMap::new())),
            dropped: Arc::new(Mutex::new(Vec::new())),
            reloads,
            share,
        };
        tokio::spawn(scraper.clone().manage(
            jobs,
            store,
            clients,
            file_poll_interval,
            shutdown,
            reloaded,
        ));
        Ok(scraper)
    }

    /// Replaces the jobs, as on a configuration reload, and returns once
    /// the targets are reconciled: a target whose job, labels and settings
    /// are unchanged keeps its loop (no gap, no staleness markers), removed
    /// ones stop and mark their series stale, new ones start. Targets of a
    /// job whose TLS settings or credentials changed restart with the new
    /// client. Fails, changing nothing, when a job's client cannot be built.
    pub async fn reload(&self, jobs: Vec<Job>) -> anyhow::Result<()> {
        let mut clients = BTreeMap::new();
        for job in &jobs {
            let client = HttpClient::build(
                &format!("scrape job {:?}", job.name),
                &job.tls,
                job.auth.clone(),
            )?;
            clients.insert(job.name.clone(), client);
        }
        let (applied, done) = tokio::sync::oneshot::channel();
        self.reloads
            .send(Reload {
                jobs,
                clients,
                applied,
            })
            .map_err(|_| anyhow::anyhow!("the scrape manager has stopped"))?;
        done.await
            .map_err(|_| anyhow::anyhow!("the scrape manager has stopped"))
    }

    async fn manage(
        self,
        mut jobs: Vec<Job>,
        store: Arc<dyn SampleLog>,
        mut clients: BTreeMap<String, HttpClient>,
        file_poll_interval: Duration,
        mut shutdown: watch::Receiver<bool>,
        mut reloads: tokio::sync::mpsc::UnboundedReceiver<Reload>,
    ) {
        let discover = |jobs: &[Job]| -> Vec<Vec<FileDiscovery>> {
            jobs.iter()
                .map(|job| {
                    job.file_sd_configs
                        .iter()
                        .map(|config| FileDiscovery::new(config, &job.base_dir))
                        .collect()
                })
                .collect()
        };
        // Per job, its Kubernetes watches (stopped when dropped).
        let watch_kubernetes = |jobs: &[Job]| -> Vec<Vec<kubernetes::KubernetesDiscovery>> {
            jobs.iter()
                .map(|job| {
                    job.kubernetes_sd_configs
                        .iter()
                        .filter_map(|config| {
                            kubernetes::KubernetesDiscovery::start(config, &job.name, &job.base_dir)
                                .map_err(|error| {
                                    tracing::error!(
                                        job = %job.name,
                                        error = format!("{error:#}"),
                                        "kubernetes_sd_configs cannot start; the job has no Kubernetes targets"
                                    )
                                })
                                .ok()
                        })
                        .collect()
                })
                .collect()
        };
        let mut discoveries = discover(&jobs);
        let mut watches = watch_kubernetes(&jobs);
        let mut first = true;
        // Jobs whose targets restart at the next reconcile.
        let mut restart: Vec<String> = Vec::new();
        let mut applied: Option<tokio::sync::oneshot::Sender<()>> = None;
        loop {
            let moved = std::mem::take(&mut discoveries);
            let refreshed = tokio::task::spawn_blocking(move || {
                let mut changed = false;
                let mut moved = moved;
                for discovery in moved.iter_mut().flatten() {
                    changed |= discovery.refresh();
                }
                (moved, changed)
            })
            .await;
            let changed = match refreshed {
                Ok((moved, changed)) => {
                    discoveries = moved;
                    // Every watch's flag is taken, changed or not.
                    watches
                        .iter()
                        .flatten()
                        .fold(changed, |changed, watch| watch.take_changed() | changed)
                }
                Err(error) => {
                    tracing::error!(%error, "target discovery task failed");
                    return;
                }
            };
            if first || changed {
                first = false;
                let mut wanted = Vec::new();
                let mut dropped = Vec::new();
                for ((job, files), kubernetes) in jobs.iter().zip(&discoveries).zip(&watches) {
                    let mut groups = job.static_configs.clone();
                    groups.extend(files.iter().flat_map(FileDiscovery::groups));
                    groups.extend(
                        kubernetes
                            .iter()
                            .flat_map(kubernetes::KubernetesDiscovery::groups),
                    );
                    let (targets, job_dropped) = job.targets(&groups);
                    wanted.extend(targets);
                    dropped.extend(job_dropped);
                }
                self.reconcile(
                    wanted,
                    &std::mem::take(&mut restart),
                    &store,
                    &clients,
                    &shutdown,
                );
                *self
                    .dropped
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner()) = dropped;
            }
            if let Some(applied) = applied.take() {
                let _ = applied.send(());
            }
            tokio::select! {
                _ = tokio::time::sleep(file_poll_interval) => {}
                _ = shutdown.wait_for(|stopped| *stopped) => return,
                reload = reloads.recv() => {
                    let Some(reload) = reload else { continue };
                    restart = reload
                        .jobs
                        .iter()
                        .filter(|job| {
                            jobs.iter().any(|old| {
                                old.name == job.name && (old.tls != job.tls || old.auth != job.auth)
                            })
                        })
                        .map(|job| job.name.clone())
                        .collect();
                    jobs = reload.jobs;
                    clients = reload.clients;
                    discoveries = discover(&jobs);
                    watches = watch_kubernetes(&jobs);
                    first = true;
                    applied = Some(reload.applied);
                }
            }
        }
    }

    /// Starts loops for new targets and stops those no longer wanted.
    // A `Regex` caches matching state inside; a target's order and hash
    // come from the rules' text only, which never changes.
    #[allow(clippy::mutable_key_type)]
    fn reconcile(
        &self,
        wanted: Vec<Target>,
        restart: &[String],
        store: &Arc<dyn SampleLog>,
        clients: &BTreeMap<String, HttpClient>,
        shutdown: &watch::Receiver<bool>,
    ) {
        let mut running = self
            .targets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let wanted: BTreeMap<Target, ()> = wanted.into_iter().map(|target| (target, ())).collect();
        running.retain(|target, loop_| {
            let keep = wanted.contains_key(target) && !restart.contains(&target.job);
            if !keep {
                tracing::info!(url = %target.url, job = %target.job, "target removed");
                let _ = loop_.remove.send(true);
            }
            keep
        });
        for target in wanted.into_keys() {
            if running.contains_key(&target) {
                continue;
            }
            // Every target comes from one of the jobs the clients were
            // built for.
            let Some(client) = clients.get(&target.job) else {
                tracing::error!(job = %target.job, "no HTTP client for the job");
                continue;
            };
            tracing::info!(url = %target.url, job = %target.job, "target added");
            let status = Arc::new(TargetStatus {
                target: target.clone(),
                health: Mutex::default(),
            });
            let (remove, removed) = watch::channel(false);
            tokio::spawn(target::run(
                status.clone(),
                store.clone(),
                self.share.clone(),
                client.clone(),
                removed,
                shutdown.clone(),
            ));
            running.insert(target, Running { status, remove });
        }
    }

    /// Every active target and its health.
    pub fn targets(&self) -> Vec<Arc<TargetStatus>> {
        self.targets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .values()
            .map(|running| running.status.clone())
            .collect()
    }

    /// The targets `relabel_configs` dropped.
    pub fn dropped_targets(&self) -> Vec<DroppedTarget> {
        self.dropped
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// `GET /api/v1/targets` in Prometheus' format.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/api/v1/targets", get(targets_handler))
            .with_state(self.clone())
    }
}

#[derive(serde::Deserialize)]
struct TargetsQuery {
    state: Option<String>,
}

async fn targets_handler(
    State(scraper): State<Scraper>,
    Query(query): Query<TargetsQuery>,
) -> axum::Json<serde_json::Value> {
    let state = query.state.as_deref().unwrap_or("");
    let active = matches!(state, "" | "any" | "active");
    let dropped = matches!(state, "" | "any" | "dropped");
    let targets: Vec<serde_json::Value> = if active {
        scraper
            .targets()
            .iter()
            .map(|status| target_json(status))
            .collect()
    } else {
        Vec::new()
    };
    let all_dropped = scraper.dropped_targets();
    let mut dropped_counts: BTreeMap<&str, usize> = BTreeMap::new();
    for target in &all_dropped {
        *dropped_counts.entry(target.job.as_str()).or_default() += 1;
    }
    let dropped_targets: Vec<serde_json::Value> = if dropped {
        all_dropped
            .iter()
            .map(|target| {
                serde_json::json!({
                    "discoveredLabels": target.discovered_labels,
                    "scrapePool": target.job,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    axum::Json(serde_json::json!({
        "status": "success",
        "data": {
            "activeTargets": targets,
            "droppedTargets": dropped_targets,
            "droppedTargetCounts": dropped_counts,
        }
    }))
}

fn target_json(status: &TargetStatus) -> serde_json::Value {
    let target = &status.target;
    let health = status.health();
    let labels: BTreeMap<&str, &str> = target.labels.iter().collect();
    let last_scrape = health
        .last_scrape
        .map(rfc3339)
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string());
    serde_json::json!({
        "discoveredLabels": target.discovered_labels,
        "labels": labels,
        "scrapePool": target.job,
        "scrapeUrl": target.url,
        "globalUrl": target.url,
        "lastError": health.last_error,
        "lastScrape": last_scrape,
        "lastScrapeDuration": health.last_scrape_duration.as_secs_f64(),
        "health": health.health.as_str(),
        "scrapeInterval": prometheus_duration(target.interval),
        "scrapeTimeout": prometheus_duration(target.timeout),
        "samplesRejected": health.samples_rejected,
        "lastRejection": health.last_rejection,
    })
}

fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A duration as Prometheus prints one: `1h30m`, `15s`, `200ms`.
pub fn prometheus_duration(duration: Duration) -> String {
    let mut millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("y", 365 * 24 * 3_600_000),
        ("w", 7 * 24 * 3_600_000),
        ("d", 24 * 3_600_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if millis >= size {
            out.push_str(&format!("{}{unit}", millis / size));
            millis %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_labels_and_instance() {
        let mut job = Job::new("shop", Duration::from_secs(15), vec![]);
        job.params.insert("module".into(), vec!["http_2xx".into()]);
        let groups = vec![StaticConfig {
            targets: vec!["10.0.0.1:9100".into()],
            labels: BTreeMap::from([
                ("env".to_string(), "prod".to_string()),
                ("__metrics_path__".to_string(), "/probe".to_string()),
                ("__hidden".to_string(), "x".to_string()),
            ]),
        }];
        let (targets, dropped) = job.targets(&groups);
        assert_eq!(targets.len(), 1);
        assert!(dropped.is_empty());
        let target = &targets[0];
        assert_eq!(target.url, "http://10.0.0.1:9100/probe?module=http_2xx");
        assert_eq!(
            target.labels,
            Labels::new([
                ("env", "prod"),
                ("instance", "10.0.0.1:9100"),
                ("job", "shop")
            ])
        );
        assert_eq!(target.discovered_labels["__hidden"], "x");
    }

    #[test]
    fn relabel_configs_rewrite_and_drop_targets() {
        let config = ConfigFile::parse(
            r#"
scrape_configs:
  - job_name: blackbox
    scrape_interval: 30s
    params: { module: [http_2xx, extra] }
    static_configs:
      - targets: ["example.org", "drop.example.org", "bad host"]
        labels: { env: prod }
    relabel_configs:
      - { source_labels: [__address__], regex: 'drop\..*', action: drop }
      - { source_labels: [__address__], target_label: __param_target }
      - { source_labels: [__param_target], target_label: instance }
      - { target_label: __address__, replacement: '127.0.0.1:9115' }
      - { target_label: __metrics_path__, replacement: /probe }
      - { source_labels: [__scrape_interval__], target_label: interval }
      - { source_labels: [env], regex: prod, target_label: __scheme__, replacement: https }
"#,
        )
        .unwrap();
        let jobs = jobs_from_config(&config, Path::new("."), None);
        let (targets, dropped) = jobs[0].targets(&jobs[0].static_configs);
        assert_eq!(targets.len(), 2);
        let target = &targets[0];
        assert_eq!(
            target.url,
            "https://127.0.0.1:9115/probe?module=http_2xx&module=extra&target=example.org"
        );
        assert_eq!(
            target.labels,
            Labels::new([
                ("env", "prod"),
                ("instance", "example.org"),
                ("interval", "30s"),
                ("job", "blackbox")
            ])
        );
        assert_eq!(target.discovered_labels["__address__"], "example.org");
        assert_eq!(target.discovered_labels["__param_module"], "http_2xx");
        // A parameter value is escaped as Go's url.Values.Encode does.
        assert!(
            targets[1].url.ends_with("&target=bad+host"),
            "{}",
            targets[1].url
        );
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].job, "blackbox");
        assert_eq!(
            dropped[0].discovered_labels["__address__"],
            "drop.example.org"
        );
        assert_eq!(dropped[0].discovered_labels["__metrics_path__"], "/metrics");

        // Labels that cannot make a target leave it out, dropped or not.
        let config = ConfigFile::parse(
            r#"
scrape_configs:
  - job_name: broken
    static_configs: [{ targets: ["a:1", "b:1", "c:1"] }]
    relabel_configs:
      - { source_labels: [__address__], regex: 'a:1', target_label: __address__, replacement: '' }
      - { source_labels: [__address__], regex: 'b:1', target_label: __scrape_interval__, replacement: often }
"#,
        )
        .unwrap();
        let jobs = jobs_from_config(&config, Path::new("."), None);
        let (targets, dropped) = jobs[0].targets(&jobs[0].static_configs);
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].url, "http://c:1/metrics");
        assert!(dropped.is_empty());
    }

    /// The config and the output of Debian's Prometheus 2.42 for it
    /// (`/api/v1/targets`), recorded by hand.
    #[test]
    fn target_labels_match_what_prometheus_made_of_the_same_config() {
        let config = ConfigFile::parse(
            r#"
global: { scrape_interval: 30s, scrape_timeout: 10s }
scrape_configs:
  - job_name: blackbox
    params: { module: [http_2xx, extra] }
    static_configs:
      - targets: ["example.org", "drop.example.org", "bad host"]
        labels: { env: prod, __param_module: fromgroup }
    relabel_configs:
      - { source_labels: [__address__], regex: 'drop\..*', action: drop }
      - { source_labels: [__address__], target_label: __param_target }
      - { source_labels: [__param_target], target_label: instance }
      - { target_label: __address__, replacement: '127.0.0.1:9115' }
      - { target_label: __metrics_path__, replacement: probe }
      - { source_labels: [__scrape_interval__], target_label: interval }
      - { source_labels: [instance], target_label: shard, modulus: 7, action: hashmod }
      - { source_labels: [instance], regex: '(?P<host>[a-z]+)\.(.*)', target_label: 'h_${host}', replacement: '$2x$$' }
"#,
        )
        .unwrap();
        let jobs = jobs_from_config(&config, Path::new("."), None);
        let (targets, dropped) = jobs[0].targets(&jobs[0].static_configs);
        let discovered = |address: &str| {
            BTreeMap::from(
                [
                    ("__address__", address),
                    ("__metrics_path__", "/metrics"),
                    ("__param_module", "http_2xx"),
                    ("__scheme__", "http"),
                    ("__scrape_interval__", "30s"),
                    ("__scrape_timeout__", "10s"),
                    ("env", "prod"),
                    ("job", "blackbox"),
                ]
                .map(|(name, value)| (name.to_string(), value.to_string())),
            )
        };
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[0].discovered_labels, discovered("example.org"));
        assert_eq!(
            targets[0].labels,
            Labels::new([
                ("env", "prod"),
                ("h_example", "$"),
                ("instance", "example.org"),
                ("interval", "30s"),
                ("job", "blackbox"),
                ("shard", "4"),
            ])
        );
        assert_eq!(
            targets[0].url,
            "http://127.0.0.1:9115/probe?module=http_2xx&module=extra&target=example.org"
        );
        assert_eq!(targets[1].discovered_labels, discovered("bad host"));
        assert_eq!(
            targets[1].labels,
            Labels::new([
                ("env", "prod"),
                ("instance", "bad host"),
                ("interval", "30s"),
                ("job", "blackbox"),
                ("shard", "4"),
            ])
        );
        assert_eq!(
            targets[1].url,
            "http://127.0.0.1:9115/probe?module=http_2xx&module=extra&target=bad+host"
        );
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].discovered_labels, discovered("drop.example.org"));
    }

    #[test]
    fn self_scrape_is_implicit_unless_configured() {
        let address: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        let config = ConfigFile::parse(
            "scrape_configs: [{job_name: a, static_configs: [{targets: ['x:1']}]}]",
        )
        .unwrap();
        let plain = SelfScrape {
            address,
            tls: false,
        };
        let jobs = jobs_from_config(&config, Path::new("."), Some(plain));
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[1].name, SELF_JOB);
        assert_eq!(jobs[1].static_configs[0].targets, ["127.0.0.1:4000"]);
        assert_eq!(jobs[1].scheme, "http");
        assert!(!jobs[1].tls.insecure_skip_verify);
        // Behind TLS: https, without verification of its own certificate.
        let jobs = jobs_from_config(
            &config,
            Path::new("."),
            Some(SelfScrape { address, tls: true }),
        );
        assert_eq!(jobs[1].scheme, "https");
        assert!(jobs[1].tls.insecure_skip_verify);
        assert!(!jobs[0].tls.insecure_skip_verify);
        let config = ConfigFile::parse(
            "scrape_configs: [{job_name: me, static_configs: [{targets: ['localhost:4000']}]}]",
        )
        .unwrap();
        let jobs = jobs_from_config(&config, Path::new("."), Some(plain));
        assert_eq!(jobs.len(), 1);
    }

    /// The span metrics on the collector's `/metrics` are in the store
    /// already: a scrape of its own address drops them, and nothing else.
    #[test]
    fn a_scrape_of_the_collector_drops_its_span_metrics() {
        let address: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        let self_scrape = Some(SelfScrape {
            address,
            tls: false,
        });
        let kept = |job: &Job, name: &str, instance: &str| {
            let mut labels = Labels::new([("__name__", name), ("instance", instance)]);
            relabel::process(&job.metric_relabel_configs, &mut labels)
        };
        let config = ConfigFile::parse(
            "scrape_configs: [{job_name: a, static_configs: [{targets: ['x:1']}]}]",
        )
        .unwrap();
        let jobs = jobs_from_config(&config, Path::new("."), self_scrape);
        assert!(jobs[0].metric_relabel_configs.is_empty());
        let own = &jobs[1];
        assert!(!kept(
            own,
            "traces_spanmetrics_calls_total",
            "127.0.0.1:4000"
        ));
        assert!(!kept(
            own,
            "traces_service_graph_request_total",
            "127.0.0.1:4000"
        ));
        assert!(kept(
            own,
            "sightline_collector_ingested_total",
            "127.0.0.1:4000"
        ));
        // A configured job scraping the collector and another target drops
        // them from the collector only.
        let config = ConfigFile::parse(
            "scrape_configs: [{job_name: me, static_configs: [{targets: ['localhost:4000', 'tempo:3200']}]}]",
        )
        .unwrap();
        let jobs = jobs_from_config(&config, Path::new("."), self_scrape);
        assert_eq!(jobs.len(), 1);
        assert!(!kept(
            &jobs[0],
            "traces_spanmetrics_calls_total",
            "localhost:4000"
        ));
        assert!(kept(
            &jobs[0],
            "traces_spanmetrics_calls_total",
            "tempo:3200"
        ));
    }

    #[test]
    fn durations_print_like_prometheus() {
        assert_eq!(prometheus_duration(Duration::from_secs(60)), "1m");
        assert_eq!(prometheus_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(prometheus_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(prometheus_duration(Duration::from_secs(15)), "15s");
    }
}
