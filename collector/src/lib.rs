//! The Sightline collector: takes logs, traces and metrics in, keeps them
//! durable, answers queries.
//!
//! [`start`] is the composition root: it lists the parts and how they
//! connect, each built by its own module or crate:
//! - the stores under the data directory (`sightline-store`,
//!   `sightline-tsdb`);
//! - the durable path (`sightline-pipeline`): the write-ahead log with
//!   group commit, acknowledgement after fsync, and the indexer thread that
//!   feeds the stores, behind `ingest` (per-record checks, partial success);
//! - the metrics pipeline (`sightline-metrics`: scraping, rules and
//!   alerting, OTLP metrics and remote-write, log- and span-derived
//!   metrics), which observes what `ingest` acknowledges;
//! - `serve`: the listeners. The receivers `grpc` (OTLP/gRPC), `otlp_http`
//!   (OTLP/HTTP), `elastic` (`_bulk`) and `remote_write` decode their wire
//!   format and hand it to the OTLP services (`service`); the query port
//!   serves `sightline-query-ui`;
//! - the server shell: `auth`, `tls`, `ratelimit`, [`config`], `metrics`
//!   (the collector's own counters), `reload` (`SIGHUP`, `/-/reload`),
//!   `retention`.
//!
//! [`RunningCollector`] reloads and stops it; [`run`] is the binary's loop.
//! The collector acknowledges a batch only after it is fsynced in the WAL,
//! and never knows an on-disk layout: that is `sightline-store`'s.

mod auth;
pub mod config;
pub(crate) mod document;
mod http_body;
mod otlp;
mod reload;
mod retention;
mod searches;
mod serve;

/// Modules the receiver tests (`tests/receivers`, `tests/scrape_tls.rs`) and
/// the fuzz targets drive directly: public with the `testing` feature (the
/// collector's dev-dependency on itself turns it on), private otherwise.
/// Without it the library exposes [`start`], [`run`] and [`config`].
macro_rules! public_for_tests {
    ($($module:ident),* $(,)?) => {$(
        #[cfg(feature = "testing")]
        pub mod $module;
        #[cfg(not(feature = "testing"))]
        #[allow(unreachable_pub)]
        mod $module;
    )*};
}
public_for_tests!(
    elastic,
    error,
    forward,
    grpc,
    ingest,
    loki,
    metrics,
    otlp_http,
    ratelimit,
    remote_write,
    service,
    tls,
    zipkin,
);

#[cfg(test)]
mod receiver_tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use sightline_metrics::share::{Work, WorkShare};
use sightline_metrics::{MetricsConfig, MetricsPipeline, Observers, QueryListener};
use sightline_store::{LogStore, SpanStore};
use sightline_tsdb::MetricStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::CollectorConfig;
pub use serve::Addresses;

use crate::ingest::{Ingest, Limits};
use crate::metrics::CollectorMetrics;
use crate::ratelimit::RateLimiter;
use crate::reload::Reloader;
use crate::serve::{Listeners, Parts, Servers};
use sightline_pipeline::{Admission, Pipeline, PipelineConfig, PipelineThreads};

/// Runs the collector until `shutdown` resolves, then drains the pipeline;
/// `SIGHUP` reloads the configuration meanwhile.
pub async fn run(
    config: CollectorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Listening before anything is served: the probes answer during the
    // WAL replay, and a SIGHUP then (a config tool reloading) must not
    // take the default action and end the process; it reloads once started.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let collector = start(config).await?;
    tokio::spawn(
        collector
            .reloader
            .clone()
            .on_sighup(hangups, collector.stop.subscribe()),
    );
    shutdown.await;
    collector.shutdown().await
}

/// A started collector; stop it with [`RunningCollector::shutdown`].
pub struct RunningCollector {
    addresses: Addresses,
    stop: watch::Sender<bool>,
    servers: Servers,
    retention: JoinHandle<()>,
    metrics: Arc<MetricsPipeline>,
    reloader: Reloader,
    pipeline: PipelineThreads,
    /// Cluster mode's partition ownership.
    cluster: Option<sightline_cluster::Node>,
}

/// Opens the stores, binds every listener and starts every part, serving
/// while the WAL replays (`/-/healthy` answers, `/-/ready` and ingest say
/// it is replaying), and returns once the replay is done; the collector
/// runs until [`RunningCollector::shutdown`].
/// Fails, saying what and where, when a part cannot start (a config or rule
/// file, a store, an address, a TLS or token file).
pub async fn start(config: CollectorConfig) -> anyhow::Result<RunningCollector> {
    let metrics_config = MetricsConfig::load(config.config.as_deref())?;
    let auth = auth::Auth::from_config(&config)?;
    let tls = tls::ServerTls::from_flags(&config.tls)?;
    let stores = Stores::open(&config.data_dir).await?;
    let telemetry = Arc::new(CollectorMetrics::default());
    telemetry.config_loaded(true);
    let rate_limiter = RateLimiter::new(
        config.ingest_rate_limit_bytes,
        config.ingest_rate_burst_bytes,
        telemetry.clone(),
    );
    let (ingest, pipeline) = start_ingest(
        &config,
        &stores,
        metrics_config.observers(),
        &rate_limiter,
        &telemetry,
    )
    .await?;
    let listeners = Listeners::bind(&config, &auth).await?;
    let addresses = listeners.addresses;
    // Cluster mode: receivers publish to the partitioned log; this node
    // owns the partitions rendezvous hashing gives it.
    let (ingest, cluster, reading) = match cluster_config(&metrics_config, &config.cluster)? {
        Some(cluster_config) => {
            let cluster = sightline_cluster::Cluster::start(
                cluster_config,
                config.data_dir.join("cluster"),
                addresses.http,
                tls.is_some(),
                config.retention,
                auth.peer_token(),
            )
            .await
            .context("failed to start cluster mode")?;
            tracing::info!("cluster mode: ingest goes to the partitioned log");
            telemetry.set_cluster(
                cluster.node.stats.clone(),
                cluster.reader.cache_stats(),
                cluster.metrics.cache_stats(),
            );
            // Queries read the published splits, from whichever node.
            let reading = Reading {
                logs: cluster.reader.clone(),
                spans: cluster.reader,
                metrics: cluster.metrics.clone(),
                rules: Some(cluster.rules),
                internal: Some(cluster.internal),
                samples: Some(sightline_metrics::pipeline::SharedSamples {
                    log: cluster.samples,
                    reader: cluster.metrics,
                    share: {
                        let assignment = cluster.assignment;
                        WorkShare::assigned(move |work| match work {
                            Work::RuleGroup(key) => assignment.owns_rule_group(key),
                            Work::ScrapeTarget(key) => assignment.owns_scrape_target(key),
                        })
                    },
                }),
            };
            (
                ingest.with_cluster_log(
                    cluster.log.clone(),
                    Admission::new(config.ingest_memory_bytes, config.ingest_budget_wait),
                ),
                Some(cluster.node),
                reading,
            )
        }
        None => {
            let reading = Reading {
                logs: stores.logs.clone(),
                spans: stores.spans.clone(),
                metrics: stores.metrics.clone(),
                rules: None,
                internal: None,
                samples: None,
            };
            (ingest, None, reading)
        }
    };
    let (stop, stopped) = watch::channel(false);
    let retention = tokio::spawn(retention::retention_loop(
        stores.logs.clone(),
        stores.spans.clone(),
        config.retention,
        telemetry.clone(),
        stopped.clone(),
    ));
    let query = QueryListener {
        address: addresses.http,
        tls: tls.is_some(),
    };
    let mut reading = reading;
    let metrics = Arc::new(
        MetricsPipeline::start(
            metrics_config,
            query,
            stores.metrics.clone(),
            reading.samples.take(),
            stores.spans.clone(),
            config.retention,
            stopped.clone(),
        )
        .await?,
    );
    let reloader = Reloader::new(metrics.clone(), telemetry.clone());
    let searches = searches::start(&config.data_dir, metrics.clone(), reading.logs.clone()).await?;
    let parts = Parts {
        ingest,
        rate_limiter,
        auth,
        tls,
        stores,
        reading,
        metrics: metrics.clone(),
        telemetry,
        reloader: reloader.clone(),
        dashboards: match &config.dashboards_dir {
            Some(dir) => sightline_query_ui::DashboardDir::new(dir),
            None => sightline_query_ui::DashboardDir::default(),
        },
        searches,
    };
    let started = parts.ingest.pipeline().clone();
    let servers = serve::serve(listeners, parts, &stopped)?;
    let running = RunningCollector {
        addresses,
        stop,
        servers,
        retention,
        metrics,
        reloader,
        pipeline,
        cluster,
    };
    // Served already (`/-/healthy` answers, `/-/ready` says the WAL is
    // replaying), ready once the replay is done.
    let replayed = tokio::task::spawn_blocking(move || started.wait_started()).await?;
    if let Err(error) = replayed {
        let _ = running.shutdown().await;
        return Err(error);
    }
    tracing::info!("ready: the write-ahead log is replayed");
    Ok(running)
}

impl RunningCollector {
    /// Where it listens (with the ports chosen for port 0).
    pub fn addresses(&self) -> Addresses {
        self.addresses
    }

    /// Re-reads the config and rule files and applies them, as `SIGHUP`
    /// and `POST /-/reload` do; a file that fails to load changes nothing,
    /// and the error names it.
    pub async fn reload(&self) -> anyhow::Result<()> {
        self.reloader.reload().await
    }

    /// Stops serving, then drains the pipeline: the servers end (and with
    /// them every pipeline handle), the metrics pipeline stops, the WAL
    /// writer drains its queue and the indexer commits.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        // A runaway query must not hold the shutdown up: its evaluation
        // stops at its next step and its request answers.
        sightline_query_ui::cancel_queries();
        let _ = self.stop.send(true);
        let served = self.servers.stopped().await;
        self.retention.abort();
        self.metrics.shutdown().await;
        served?;
        if let Some(cluster) = self.cluster {
            // No receiver publishes any more: hand the partitions off with
            // their last splits published.
            cluster.shutdown().await;
        }
        let pipeline = self.pipeline;
        tokio::task::spawn_blocking(move || pipeline.join()).await?;
        tracing::info!("collector stopped");
        Ok(())
    }
}

/// The config file's `cluster:` section, checked.
/// The config file's `cluster:` section, checked, with the secrets of
/// `--cluster-*` (the environment) over it.
fn cluster_config(
    metrics_config: &MetricsConfig,
    secrets: &config::ClusterFlags,
) -> anyhow::Result<Option<sightline_cluster::ClusterConfig>> {
    let mut cluster: sightline_cluster::ClusterConfig = match (
        &secrets.cluster_config,
        metrics_config.cluster_section(),
    ) {
        (None, None) => return Ok(None),
        (Some(file), None) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("failed to read the cluster config {}", file.display()))?;
            serde_norway::from_str(&text)
                .with_context(|| format!("invalid cluster config {}", file.display()))?
        }
        (None, Some(section)) => serde_norway::from_value(section.clone())
            .context("invalid cluster section in the config file")?,
        (Some(file), Some(_)) => anyhow::bail!(
            "cluster mode is configured twice: --cluster-config {} and a cluster section in --config; keep one",
            file.display()
        ),
    };
    if let Some(url) = &secrets.cluster_postgres_url {
        cluster.postgres = url.expose().to_string();
    }
    if let Some(key) = &secrets.cluster_s3_access_key_id {
        cluster.object_store.access_key_id = Some(key.expose().to_string());
    }
    if let Some(address) = &secrets.cluster_advertise_address {
        cluster.advertise_address = Some(address.clone());
    }
    if let Some(secret) = &secrets.cluster_s3_secret_access_key {
        cluster.object_store.secret_access_key = Some(secret.expose().to_string());
    }
    anyhow::ensure!(
        !cluster.postgres.is_empty(),
        "cluster mode needs a PostgreSQL URL: cluster.postgres or SIGHTLINE_CLUSTER_POSTGRES_URL"
    );
    Ok(Some(cluster))
}

/// What the query API reads: the stores, or in cluster mode the
/// published splits and blocks and the owners' fresh data.
pub(crate) struct Reading {
    pub(crate) logs: Arc<dyn sightline_store::LogReader>,
    pub(crate) spans: Arc<dyn sightline_store::SpanReader>,
    pub(crate) metrics: Arc<dyn sightline_tsdb::MetricReader>,
    /// Cluster mode: every node's rule groups (embedded: this engine's).
    pub(crate) rules: Option<Arc<sightline_cluster::metrics::ClusterRules>>,
    /// Cluster mode: where samples are written and what rules read.
    pub(crate) samples: Option<sightline_metrics::pipeline::SharedSamples>,
    /// Cluster mode's internal API (fresh data for other nodes' queries).
    pub(crate) internal: Option<axum::Router>,
}

/// The stores under the data directory.
#[derive(Clone)]
pub(crate) struct Stores {
    pub(crate) logs: Arc<LogStore>,
    pub(crate) spans: Arc<SpanStore>,
    pub(crate) metrics: Arc<MetricStore>,
    /// The pipeline's write-ahead log.
    pub(crate) wal_dir: PathBuf,
    pub(crate) spans_dir: PathBuf,
}

impl Stores {
    /// Opens (or creates) each store under `data_dir`.
    async fn open(data_dir: &Path) -> anyhow::Result<Stores> {
        let data_dir = sightline_store::DataDir::new(data_dir);
        tokio::task::spawn_blocking(move || {
            let logs_dir = data_dir.logs();
            let spans_dir = data_dir.spans();
            let logs = LogStore::open(&logs_dir).with_context(|| {
                format!("failed to open the log store at {}", logs_dir.display())
            })?;
            let spans = SpanStore::open(&spans_dir).with_context(|| {
                format!("failed to open the span store at {}", spans_dir.display())
            })?;
            let metrics_dir = data_dir.metrics();
            let metrics = MetricStore::open(&metrics_dir).with_context(|| {
                format!(
                    "failed to open the metric store at {}",
                    metrics_dir.display()
                )
            })?;
            anyhow::Ok(Stores {
                logs: Arc::new(logs),
                spans: Arc::new(spans),
                metrics: Arc::new(metrics),
                wal_dir: data_dir.wal(),
                spans_dir,
            })
        })
        .await?
    }
}

/// Starts the durable pipeline (replaying the WAL into the stores) and the
/// checks in front of it, counting acknowledged data into `observers`.
async fn start_ingest(
    config: &CollectorConfig,
    stores: &Stores,
    observers: &Observers,
    rate_limiter: &Option<Arc<RateLimiter>>,
    telemetry: &Arc<CollectorMetrics>,
) -> anyhow::Result<(Ingest, PipelineThreads)> {
    let mut pipeline_config = PipelineConfig::new(stores.wal_dir.clone());
    pipeline_config.commit_interval = config.commit_interval;
    pipeline_config.memory_budget_bytes = config.ingest_memory_bytes;
    pipeline_config.budget_wait = config.ingest_budget_wait;
    pipeline_config.disk_reserve_bytes = config.disk_reserve_bytes;
    let (logs, spans, metrics) = (stores.logs.clone(), stores.spans.clone(), telemetry.clone());
    let (pipeline, threads) =
        tokio::task::spawn_blocking(move || Pipeline::spawn(pipeline_config, logs, spans, metrics))
            .await??;
    let limits = Limits {
        retention: config.retention,
        max_record_bytes: config.max_record_bytes,
        max_attributes: config.max_attributes,
        max_attribute_key_bytes: config.max_attribute_key_bytes,
        max_attribute_value_bytes: config.max_attribute_value_bytes,
        ..Limits::default()
    };
    let ingest = Ingest::new(pipeline, limits, telemetry.clone())
        .with_log_metrics(observers.log_metrics.clone())
        .with_span_metrics(observers.span_metrics.clone())
        .with_rate_limiter(rate_limiter.clone());
    Ok((ingest, threads))
}

#[cfg(test)]
mod cluster_config_tests {
    use super::*;

    const SECTION: &str =
        "nats:\n  servers: [\"nats://127.0.0.1:4222\"]\nobject_store:\n  bucket: splits\n";

    #[test]
    fn cluster_mode_comes_from_a_section_or_a_file_never_both_and_secrets_win() {
        let dir = tempfile::tempdir().unwrap();
        let with_section = dir.path().join("sightline.yml");
        let indented: String = SECTION.lines().map(|line| format!("  {line}\n")).collect();
        std::fs::write(
            &with_section,
            format!("cluster:\n{indented}  postgres: postgres://file@db/meta\n"),
        )
        .unwrap();
        let file = dir.path().join("cluster.yml");
        std::fs::write(&file, SECTION).unwrap();
        let plain = MetricsConfig::load(None).unwrap();
        let sectioned = MetricsConfig::load(Some(&with_section)).unwrap();
        let none = config::ClusterFlags::default();
        let from_file = config::ClusterFlags {
            cluster_config: Some(file.clone()),
            cluster_postgres_url: Some(sightline_vocab::secret::Secret::new(
                "postgres://env@db/meta",
            )),
            ..config::ClusterFlags::default()
        };

        assert!(
            cluster_config(&plain, &none).unwrap().is_none(),
            "embedded by default"
        );
        let cluster = cluster_config(&sectioned, &none).unwrap().unwrap();
        assert_eq!(cluster.postgres, "postgres://file@db/meta");
        assert_eq!(cluster.object_store.bucket, "splits");
        let cluster = cluster_config(&plain, &from_file).unwrap().unwrap();
        assert_eq!(
            cluster.postgres, "postgres://env@db/meta",
            "the secret wins"
        );
        let twice = cluster_config(&sectioned, &from_file)
            .unwrap_err()
            .to_string();
        assert!(twice.contains("configured twice"), "{twice}");
        let no_url = config::ClusterFlags {
            cluster_config: Some(file),
            ..config::ClusterFlags::default()
        };
        let missing = cluster_config(&plain, &no_url).unwrap_err().to_string();
        assert!(
            missing.contains("SIGHTLINE_CLUSTER_POSTGRES_URL"),
            "{missing}"
        );
    }
}
