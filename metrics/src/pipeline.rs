//! The metrics pipeline as one part of the collector: built from the config
//! file and the [`MetricStore`], it runs scraping, rule evaluation and
//! notification, the log- and span-derived metrics' flushes and the store's
//! block cutting and retention, and hands the collector what it serves
//! (OTLP metrics, remote-write and `/api/v1/targets` routes, counters for
//! `/metrics`).
//!
//! Two steps, because the receivers need the derived-metric observers before
//! the query listener (which the self-scrape and the alert links point at)
//! is bound: [`MetricsConfig::load`] reads and checks the config file,
//! [`MetricsPipeline::start`] starts everything.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use sightline_store::SpanStore;
use sightline_tsdb::rules::RuleEngine;
use sightline_tsdb::{Labels, MetricReader, MetricStore, SampleLog};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::alerting::Alerting;
use crate::config_file::ConfigFile;
use crate::log_metrics::LogMetrics;
use crate::otlp::OtlpMetrics;
use crate::scrape::{self, Scraper, SelfScrape};
use crate::span_metrics::SpanMetrics;

/// How often the metric store is checked for blocks to cut and delete.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

/// How long the time-series head grows before it is cut into a block
/// (Prometheus' default block range).
const METRIC_BLOCK_RANGE: Duration = Duration::from_secs(2 * 60 * 60);

/// The observers the receivers feed with acknowledged data: metrics derived
/// from log records and from spans.
#[derive(Clone)]
pub struct Observers {
    pub log_metrics: Arc<LogMetrics>,
    pub span_metrics: Arc<SpanMetrics>,
}

/// A read and checked config file, before anything runs.
pub struct MetricsConfig {
    /// The `--config` file, re-read at each reload; none: the defaults.
    path: Option<PathBuf>,
    file: ConfigFile,
    /// Where the config file's relative paths start.
    dir: PathBuf,
    observers: Observers,
}

impl MetricsConfig {
    /// Reads the config file at `path` (the defaults without one), warns
    /// about keys Sightline ignores and checks `log_metrics`.
    pub fn load(path: Option<&Path>) -> anyhow::Result<MetricsConfig> {
        let file = match path {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        warn_ignored(&file);
        let log_metrics = LogMetrics::from_config(&file.log_metrics)
            .context("invalid log_metrics in the config file")?;
        Ok(MetricsConfig {
            path: path.map(Path::to_path_buf),
            dir: path
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            file,
            observers: Observers {
                log_metrics: Arc::new(log_metrics),
                span_metrics: Arc::default(),
            },
        })
    }

    /// The file's `cluster:` section, if it has one (the collector reads it).
    pub fn cluster_section(&self) -> Option<&serde_norway::Value> {
        self.file.cluster.as_ref()
    }

    /// What the receivers count acknowledged data into.
    pub fn observers(&self) -> &Observers {
        &self.observers
    }
}

/// Where the collector serves its query port, which the self-scrape scrapes
/// and alert links point at.
#[derive(Debug, Clone, Copy)]
pub struct QueryListener {
    pub address: SocketAddr,
    /// Whether it speaks TLS.
    pub tls: bool,
}

/// Cluster mode's samples: where writers publish, what rules read, and
/// which rule groups and scrape targets are this node's.
pub struct SharedSamples {
    pub log: Arc<dyn SampleLog>,
    pub reader: Arc<dyn MetricReader>,
    pub share: crate::share::WorkShare,
}

/// The running metrics pipeline; see the module docs.
pub struct MetricsPipeline {
    /// The store as the writers see it: see [`SampleLog`].
    log: Arc<dyn SampleLog>,
    scraper: Scraper,
    alerting: Arc<Alerting>,
    otlp: OtlpMetrics,
    observers: Observers,
    path: Option<PathBuf>,
    dir: PathBuf,
    self_scrape: SelfScrape,
    /// The UI's URL when the config file sets no `external_url`.
    default_base_url: String,
    /// The `log_metrics` section it started with (debug form): they need a
    /// restart, a reload only warns.
    log_metrics_section: String,
    /// How often span metrics are flushed: the self-scrape's interval.
    span_flush_interval: watch::Sender<Duration>,
    /// The config file's `evaluation_interval`, which the saved searches'
    /// rule group runs at.
    evaluation_interval: Mutex<Duration>,
    /// One change of the saved searches' alerts at a time.
    applying_searches: tokio::sync::Mutex<()>,
    tasks: Mutex<Option<Tasks>>,
}

struct Tasks {
    notifier: JoinHandle<()>,
    maintenance: JoinHandle<()>,
    log_flush: JoinHandle<()>,
    span_flush: JoinHandle<()>,
}

impl MetricsPipeline {
    /// Starts scraping (the config's jobs and the collector's own
    /// `/metrics` at `query`), rule evaluation and notification, the
    /// derived metrics' flushes and the store's maintenance (`retention`);
    /// everything stops when `stop` turns true. Fails, naming the file,
    /// when a rule file, a scrape job's TLS files or the alerting section
    /// cannot be used.
    pub async fn start(
        config: MetricsConfig,
        query: QueryListener,
        store: Arc<MetricStore>,
        cluster: Option<SharedSamples>,
        spans: Arc<SpanStore>,
        retention: Duration,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<MetricsPipeline> {
        let MetricsConfig {
            path,
            file,
            dir,
            observers,
        } = config;
        // Every writer of samples holds the durable-log seam: the store
        // itself, or in cluster mode the partitioned log (and rules read
        // the cluster's samples).
        let (log, reader, share): (Arc<dyn SampleLog>, Arc<dyn MetricReader>, _) = match cluster {
            Some(shared) => (shared.log, shared.reader, shared.share),
            None => (
                store.clone(),
                store.clone(),
                crate::share::WorkShare::everything(),
            ),
        };
        let log_flush = tokio::spawn(crate::log_metrics::flush_loop(
            observers.log_metrics.clone(),
            log.clone(),
            stop.clone(),
        ));
        let maintenance = tokio::spawn(maintenance_loop(store.clone(), retention, stop.clone()));
        let self_scrape = SelfScrape {
            address: query.address,
            tls: query.tls,
        };
        let (span_flush_interval, interval) = watch::channel(file.global.scrape_interval);
        let span_flush = tokio::spawn(crate::span_metrics::flush_loop(
            observers.span_metrics.clone(),
            log.clone(),
            self_labels(query.address),
            interval,
            stop.clone(),
        ));
        let jobs = scrape::jobs_from_config(&file, &dir, Some(self_scrape));
        let scraper = Scraper::start(
            jobs,
            log.clone(),
            share.clone(),
            scrape::FILE_POLL_INTERVAL,
            stop.clone(),
        )?;
        let default_base_url = {
            let scheme = if query.tls { "https" } else { "http" };
            format!("{scheme}://{}", query.address)
        };
        let alerting = Arc::new(Alerting::from_config(
            &file,
            &dir,
            base_url(&file, &default_base_url),
            reader,
            log.clone(),
            share,
            spans,
        )?);
        let notifier = alerting.start(stop).await;
        Ok(MetricsPipeline {
            otlp: OtlpMetrics::new(log.clone()),
            log,
            scraper,
            alerting,
            observers,
            path,
            dir,
            self_scrape,
            default_base_url,
            log_metrics_section: format!("{:?}", file.log_metrics),
            span_flush_interval,
            evaluation_interval: Mutex::new(file.global.evaluation_interval),
            applying_searches: tokio::sync::Mutex::new(()),
            tasks: Mutex::new(Some(Tasks {
                notifier,
                maintenance,
                log_flush,
                span_flush,
            })),
        })
    }

    /// The OTLP metrics translator the OTLP services hand requests to.
    pub fn otlp(&self) -> OtlpMetrics {
        self.otlp.clone()
    }

    /// What the receivers count acknowledged data into.
    pub fn observers(&self) -> &Observers {
        &self.observers
    }

    /// The rule engine behind `/api/v1/rules` and `/api/v1/alerts`.
    pub fn rules(&self) -> Arc<RuleEngine> {
        self.alerting.engine.clone()
    }

    /// Remote-write's service, which the collector's `POST /api/v1/write`
    /// route (with the body reader, rate limit and errors of every ingest
    /// route) hands requests to.
    pub fn remote_write(&self) -> crate::remote_write::RemoteWrite {
        crate::remote_write::RemoteWrite::new(self.log.clone())
    }

    /// `/api/v1/targets`, and Alertmanager's silences passed through
    /// (`/api/alertmanager/...`, see [`crate::silences`]).
    pub fn api_router(&self) -> axum::Router {
        self.scraper
            .router()
            .merge(crate::silences::router(self.alerting.notifier.clone()))
    }

    /// The pipeline's counters for the collector's `/metrics`: span
    /// metrics (exemplars with `openmetrics`), the rule engine's and the
    /// notifier's.
    pub fn render_metrics(&self, openmetrics: bool) -> String {
        let mut text = self.observers.span_metrics.render(openmetrics);
        text.push_str(&self.alerting.engine.render_metrics());
        text.push_str(&self.alerting.notifier.render_metrics());
        text
    }

    /// Re-reads the config file and the rule files and applies scrape
    /// jobs, rules, external labels and URL, Alertmanagers and webhooks
    /// (see [`Scraper::reload`] and [`Alerting::apply`]). Everything is
    /// checked before anything is applied: a file that fails to load
    /// changes nothing, and the error names it. `log_metrics` need a
    /// restart (a change is logged). Callers run one reload at a time.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let file = match &self.path {
            Some(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || ConfigFile::load(&path))
                    .await
                    .context("config loading task failed")??
            }
            None => ConfigFile::default(),
        };
        warn_ignored(&file);
        if format!("{:?}", file.log_metrics) != self.log_metrics_section {
            tracing::warn!("log_metrics changed; they apply at the next restart");
        }
        let alerting = {
            let (file, dir) = (file.clone(), self.dir.clone());
            let base_url = base_url(&file, &self.default_base_url);
            tokio::task::spawn_blocking(move || Alerting::prepare(&file, &dir, base_url))
                .await
                .context("rule loading task failed")??
        };
        let jobs = scrape::jobs_from_config(&file, &self.dir, Some(self.self_scrape));
        self.scraper.reload(jobs).await?;
        self.alerting.apply(alerting).await;
        *self
            .evaluation_interval
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = file.global.evaluation_interval;
        self.span_flush_interval.send_if_modified(|interval| {
            let changed = *interval != file.global.scrape_interval;
            *interval = file.global.scrape_interval;
            changed
        });
        Ok(())
    }

    /// Applies the alerts of the saved searches (see
    /// [`crate::search_alerts`]): their counters and their rule group,
    /// without a restart. With `history`, a new alert's counter is first
    /// given its history from the stored records it reads (an alert just
    /// made); without (at start), counters start from zero. Everything is
    /// checked before anything changes; returns what each backfill wrote.
    pub async fn apply_saved_searches(
        &self,
        searches: Vec<sightline_store::SavedSearch>,
        history: Option<Arc<dyn sightline_store::LogReader>>,
    ) -> anyhow::Result<Vec<crate::search_alerts::BackfillReport>> {
        let _one_at_a_time = self.applying_searches.lock().await;
        let configs = crate::search_alerts::metric_configs(&searches);
        let log_metrics = &self.observers.log_metrics;
        let interval = *self
            .evaluation_interval
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let group = crate::search_alerts::rule_group(&searches, interval)
            .map_err(|error| anyhow::anyhow!("the saved searches' alerts: {error}"))?;
        let started = log_metrics
            .set_searches(&configs, history.is_some())
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        self.alerting
            .set_saved_groups(group.into_iter().collect())
            .await;
        let Some(logs) = history else {
            return Ok(Vec::new());
        };
        let mut reports = Vec::new();
        let new = searches.into_iter().filter_map(|search| {
            let alert = search.alert.clone()?;
            started.contains(&alert.metric).then_some((search, alert))
        });
        for (search, alert) in new {
            let name = alert.metric.clone();
            let (logs, samples) = (logs.clone(), self.log.clone());
            let written = tokio::task::spawn_blocking(move || {
                crate::search_alerts::backfill(&*logs, &*samples, &search, &alert)
            })
            .await
            .context("backfill task failed")
            .and_then(|written| written);
            match written {
                Ok((report, totals)) => {
                    log_metrics.release(&name, totals);
                    tracing::info!(metric = %name, records = report.records, samples = report.samples, "saved search's alert backfilled");
                    reports.push(report);
                }
                Err(error) => {
                    // Counted from now on, without history.
                    log_metrics.release(&name, Default::default());
                    tracing::warn!(metric = %name, error = %format!("{error:#}"), "saved search's alert has no history");
                    reports.push(crate::search_alerts::BackfillReport {
                        metric: name,
                        warnings: vec![format!("no history: {error:#}")],
                        ..Default::default()
                    });
                }
            }
        }
        Ok(reports)
    }

    /// Stops what does not stop by itself (maintenance, the notifier, the
    /// rule groups) and waits for the derived metrics' last flush, which
    /// `stop` started.
    pub async fn shutdown(&self) {
        let tasks = self
            .tasks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        let Some(tasks) = tasks else {
            return;
        };
        tasks.maintenance.abort();
        tasks.notifier.abort();
        self.alerting.abort().await;
        for flush in [tasks.log_flush, tasks.span_flush] {
            if let Err(error) = flush.await {
                tracing::error!(%error, "derived metrics flush task failed");
            }
        }
    }
}

/// The labels the collector's self-scrape gives its own series, which the
/// span metrics keep now that they skip it.
fn self_labels(address: SocketAddr) -> Labels {
    Labels::new([
        ("job", scrape::SELF_JOB.to_string()),
        ("instance", scrape::self_target(address)),
    ])
}

fn base_url(file: &ConfigFile, default: &str) -> String {
    match &file.external_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => default.to_string(),
    }
}

fn warn_ignored(file: &ConfigFile) {
    for key in file.ignored() {
        tracing::warn!(key, "config file key not supported by Sightline; ignored");
    }
}

/// Cuts blocks from the head and deletes blocks past `retention`, every
/// [`MAINTENANCE_INTERVAL`] until `stop`.
async fn maintenance_loop(
    store: Arc<MetricStore>,
    retention: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(MAINTENANCE_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let keep_from_ms = sightline_vocab::clock::now_nanos() / 1_000_000
            - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 2);
        let store = store.clone();
        let maintained = tokio::task::spawn_blocking(move || {
            store.maintain(METRIC_BLOCK_RANGE.as_millis() as i64, keep_from_ms)
        });
        match maintained.await {
            Ok(Ok(0)) => {}
            Ok(Ok(deleted)) => tracing::info!(deleted, "retention deleted metric blocks"),
            Ok(Err(error)) => tracing::error!(%error, "metric store maintenance failed"),
            Err(error) => tracing::error!(%error, "metric store maintenance task failed"),
        }
    }
}
