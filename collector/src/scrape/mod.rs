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
//!   ones discovery dropped, and answers `/api/v1/targets`.
//!
//! The collector scrapes itself unless a job already does: an implicit job
//! `sightline` scrapes its own `/metrics`, so the span metrics reach the
//! store and alert rules can use them. Behind TLS it scrapes its own
//! listener over https without verifying the certificate (see
//! [`jobs_from_config`]).

pub mod client;
pub mod discovery;
pub mod parse;
pub mod target;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::routing::get;
use sightline_store::tsdb::{Labels, MetricStore};
use tokio::sync::watch;

use crate::config_file::{ConfigFile, FileSdConfig, StaticConfig};
use client::{JobClient, ScrapeAuth, TlsSettings};
use discovery::FileDiscovery;
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
    /// Where relative `file_sd_configs` globs start.
    pub base_dir: PathBuf,
    pub limits: ScrapeLimits,
    /// `tls_config`, paths resolved.
    pub tls: TlsSettings,
    /// Credentials sent with every scrape.
    pub auth: Option<ScrapeAuth>,
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
            base_dir: PathBuf::from("."),
            limits: ScrapeLimits::default(),
            tls: TlsSettings::default(),
            auth: None,
        }
    }

    /// The targets of `groups` in this job.
    pub fn targets(&self, groups: &[StaticConfig]) -> Vec<Target> {
        let mut targets = Vec::new();
        for group in groups {
            for address in &group.targets {
                let mut discovered = group.labels.clone();
                discovered.insert("__address__".into(), address.clone());
                discovered
                    .entry("__scheme__".into())
                    .or_insert_with(|| self.scheme.clone());
                discovered
                    .entry("__metrics_path__".into())
                    .or_insert_with(|| self.metrics_path.clone());
                discovered
                    .entry("job".into())
                    .or_insert_with(|| self.name.clone());
                let mut labels: BTreeMap<String, String> = discovered
                    .iter()
                    .filter(|(name, _)| !name.starts_with("__"))
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect();
                labels
                    .entry("instance".into())
                    .or_insert_with(|| address.clone());
                let mut url = format!(
                    "{}://{}{}",
                    discovered["__scheme__"], address, discovered["__metrics_path__"]
                );
                let query: Vec<String> = self
                    .params
                    .iter()
                    .flat_map(|(name, values)| {
                        values.iter().map(move |value| format!("{name}={value}"))
                    })
                    .collect();
                if !query.is_empty() {
                    url.push('?');
                    url.push_str(&query.join("&"));
                }
                targets.push(Target {
                    job: self.name.clone(),
                    labels: Labels::new(labels),
                    discovered_labels: discovered,
                    url,
                    interval: self.interval,
                    timeout: self.timeout.min(self.interval),
                    honor_labels: self.honor_labels,
                    honor_timestamps: self.honor_timestamps,
                    limits: self.limits,
                });
            }
        }
        targets
    }
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
                base_dir: config_dir.to_path_buf(),
                limits: scrape.limits(),
                tls,
                auth,
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
    let scraped = jobs.iter().any(|job| {
        job.name == SELF_JOB
            || job
                .static_configs
                .iter()
                .any(|group| group.targets.iter().any(|target| own(target)))
    });
    if !scraped {
        let self_target = if address.is_ipv6() && !address.ip().is_unspecified() {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut job = Job::new(SELF_JOB, config.global.scrape_interval, vec![self_target]);
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

/// A running target loop.
struct Running {
    status: Arc<TargetStatus>,
    remove: watch::Sender<bool>,
}

/// The scrape manager; clones share it.
#[derive(Clone)]
pub struct Scraper {
    targets: Arc<Mutex<BTreeMap<Target, Running>>>,
}

impl Scraper {
    /// Starts discovery and the target loops; everything stops when
    /// `shutdown` turns true. `file_poll_interval` is how often target
    /// files are checked ([`FILE_POLL_INTERVAL`] in the collector). Fails,
    /// naming the job and the file, when a job's TLS files cannot be used.
    pub fn start(
        jobs: Vec<Job>,
        store: Arc<MetricStore>,
        file_poll_interval: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Scraper> {
        let mut clients = BTreeMap::new();
        for job in &jobs {
            let client = JobClient::build(&job.name, &job.tls, job.auth.clone())?;
            clients.insert(job.name.clone(), client);
        }
        let scraper = Scraper {
            targets: Arc::new(Mutex::new(BTreeMap::new())),
        };
        tokio::spawn(
            scraper
                .clone()
                .manage(jobs, store, clients, file_poll_interval, shutdown),
        );
        Ok(scraper)
    }

    async fn manage(
        self,
        jobs: Vec<Job>,
        store: Arc<MetricStore>,
        clients: BTreeMap<String, JobClient>,
        file_poll_interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut discoveries: Vec<Vec<FileDiscovery>> = jobs
            .iter()
            .map(|job| {
                job.file_sd_configs
                    .iter()
                    .map(|config| FileDiscovery::new(config, &job.base_dir))
                    .collect()
            })
            .collect();
        let mut first = true;
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
                    changed
                }
                Err(error) => {
                    tracing::error!(%error, "target discovery task failed");
                    return;
                }
            };
            if first || changed {
                first = false;
                let mut wanted = Vec::new();
                for (job, files) in jobs.iter().zip(&discoveries) {
                    let mut groups = job.static_configs.clone();
                    groups.extend(files.iter().flat_map(FileDiscovery::groups));
                    wanted.extend(job.targets(&groups));
                }
                self.reconcile(wanted, &store, &clients, &shutdown);
            }
            tokio::select! {
                _ = tokio::time::sleep(file_poll_interval) => {}
                _ = shutdown.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    /// Starts loops for new targets and stops those no longer wanted.
    fn reconcile(
        &self,
        wanted: Vec<Target>,
        store: &Arc<MetricStore>,
        clients: &BTreeMap<String, JobClient>,
        shutdown: &watch::Receiver<bool>,
    ) {
        let mut running = self
            .targets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let wanted: BTreeMap<Target, ()> = wanted.into_iter().map(|target| (target, ())).collect();
        running.retain(|target, loop_| {
            let keep = wanted.contains_key(target);
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
    let active = matches!(
        query.state.as_deref(),
        None | Some("") | Some("any") | Some("active")
    );
    let targets: Vec<serde_json::Value> = if active {
        scraper
            .targets()
            .iter()
            .map(|status| target_json(status))
            .collect()
    } else {
        Vec::new()
    };
    axum::Json(serde_json::json!({
        "status": "success",
        "data": {
            "activeTargets": targets,
            "droppedTargets": [],
            "droppedTargetCounts": {},
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
        let targets = job.targets(&groups);
        assert_eq!(targets.len(), 1);
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

    #[test]
    fn durations_print_like_prometheus() {
        assert_eq!(prometheus_duration(Duration::from_secs(60)), "1m");
        assert_eq!(prometheus_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(prometheus_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(prometheus_duration(Duration::from_secs(15)), "15s");
    }
}
