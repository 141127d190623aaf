//! The Sightline collector: takes OTLP in, keeps it durable, answers queries.
//!
//! Roles:
//! - receivers: [`grpc`] (OTLP/gRPC), [`otlp_http`] (OTLP/HTTP, protobuf and
//!   JSON), [`elastic`] (Elasticsearch `_bulk`); they decode their wire format
//!   with [`otlp`] and hand records to [`ingest::Ingest`];
//! - [`ingest`]: per-record checks (partial success), then
//! - [`pipeline`]: the write-ahead log with group commit, acknowledgement
//!   after fsync, and the indexer thread that feeds the stores;
//! - [`run`]: wires stores, pipeline, receivers, retention and the query API
//!   from `sightline-query-ui` into one process;
//! - [`reload`]: re-reads the config and rule files on `SIGHUP` and
//!   `POST /-/reload`, keeping what did not change running.
//!
//! The collector acknowledges a batch only after it is fsynced in the WAL,
//! and never knows an on-disk layout: that is `sightline-store`'s.

pub mod auth;
pub mod config;
pub mod elastic;
pub mod error;
pub mod grpc;
mod http_body;
pub mod ingest;
pub mod metrics;
pub mod otlp;
pub mod otlp_http;
pub mod pipeline;
pub mod ratelimit;
pub mod reload;
pub mod remote_write;
pub mod service;
pub mod tls;

#[cfg(test)]
mod receiver_tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use sightline_query_ui::QueryState;
use sightline_store::{LogStore, SpanStore};
use sightline_tsdb::MetricStore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;

pub use config::CollectorConfig;

use crate::ingest::{Ingest, Limits};
use crate::metrics::{CollectorMetrics, DiskUsage};
use crate::pipeline::{Pipeline, PipelineConfig};

/// How often retention looks for partitions to drop.
const RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// Runs the collector until `shutdown` resolves, then drains the pipeline.
pub async fn run(
    config: CollectorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config_file = match &config.config {
        Some(path) => sightline_metrics::config_file::ConfigFile::load(path)?,
        None => sightline_metrics::config_file::ConfigFile::default(),
    };
    let auth = auth::Auth::from_config(&config)?;
    let tls = tls::ServerTls::from_flags(&config.tls)?;
    for key in config_file.ignored() {
        tracing::warn!(key, "config file key not supported by Sightline; ignored");
    }
    let log_metrics = Arc::new(
        sightline_metrics::log_metrics::LogMetrics::from_config(&config_file.log_metrics)
            .context("invalid log_metrics in the config file")?,
    );
    let data_dir = config.data_dir.clone();
    let (logs, spans, metric_store) = tokio::task::spawn_blocking(move || {
        let logs_dir = data_dir.join("logs");
        let spans_dir = data_dir.join("spans");
        let logs = LogStore::open(&logs_dir)
            .with_context(|| format!("failed to open the log store at {}", logs_dir.display()))?;
        let spans = SpanStore::open(&spans_dir)
            .with_context(|| format!("failed to open the span store at {}", spans_dir.display()))?;
        let metrics_dir = data_dir.join("metrics");
        let metric_store = MetricStore::open(&metrics_dir).with_context(|| {
            format!(
                "failed to open the metric store at {}",
                metrics_dir.display()
            )
        })?;
        anyhow::Ok((Arc::new(logs), Arc::new(spans), Arc::new(metric_store)))
    })
    .await??;

    let metrics = Arc::new(CollectorMetrics::default());
    metrics.config_loaded(true);
    let mut pipeline_config = PipelineConfig::new(config.data_dir.join("wal"));
    pipeline_config.commit_interval = config.commit_interval;
    pipeline_config.memory_budget_bytes = config.ingest_memory_bytes;
    pipeline_config.disk_reserve_bytes = config.disk_reserve_bytes;
    let (pipeline, pipeline_threads) = {
        let (logs, spans, metrics) = (logs.clone(), spans.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || Pipeline::start(pipeline_config, logs, spans, metrics))
            .await??
    };
    let limits = Limits {
        retention: config.retention,
        max_record_bytes: config.max_record_bytes,
        max_attributes: config.max_attributes,
        max_attribute_key_bytes: config.max_attribute_key_bytes,
        max_attribute_value_bytes: config.max_attribute_value_bytes,
        ..Limits::default()
    };
    let rate_limiter = ratelimit::RateLimiter::new(
        config.ingest_rate_limit_bytes,
        config.ingest_rate_burst_bytes,
        metrics.clone(),
    );
    let ingest = Ingest::new(pipeline, limits, metrics.clone())
        .with_log_metrics(log_metrics.clone())
        .with_rate_limiter(rate_limiter.clone());
    let otlp_metrics = sightline_metrics::otlp::OtlpMetrics::new(metric_store.clone());

    let grpc_listener = bind(config.otlp_grpc_addr, "OTLP/gRPC").await?;
    let otlp_http_listener = bind(config.otlp_http_addr, "OTLP/HTTP").await?;
    let http_listener = bind(config.http_addr, "query API").await?;
    tracing::info!(
        otlp_grpc = %grpc_listener.local_addr()?,
        otlp_http = %otlp_http_listener.local_addr()?,
        http = %http_listener.local_addr()?,
        data_dir = %config.data_dir.display(),
        "collector listening"
    );
    auth::warn_if_exposed(
        &auth,
        &[
            (
                "OTLP/gRPC",
                grpc_listener.local_addr()?,
                auth::Scope::Ingest,
            ),
            (
                "OTLP/HTTP",
                otlp_http_listener.local_addr()?,
                auth::Scope::Ingest,
            ),
            (
                "query API",
                http_listener.local_addr()?,
                auth::Scope::Ingest,
            ),
            ("query API", http_listener.local_addr()?, auth::Scope::Query),
        ],
    );

    let (stop_sender, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        // a runaway query must not hold the shutdown up: its evaluation
        // stops at its next step and its request answers
        sightline_query_ui::cancel_queries();
        let _ = stop_sender.send(true);
    });
    let stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };

    let retention = tokio::spawn(retention_loop(
        logs.clone(),
        spans.clone(),
        config.retention,
        metrics.clone(),
        stop.clone(),
    ));

    let mut grpc_server = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        grpc_server = grpc_server
            .tls_config(tls.grpc_config())
            .context("invalid TLS settings for the OTLP/gRPC listener")?;
    }
    let grpc = grpc_server
        .add_service(InterceptedService::new(
            grpc::logs_service(ingest.clone()),
            auth.grpc_ingest(),
        ))
        .add_service(InterceptedService::new(
            grpc::trace_service(ingest.clone()),
            auth.grpc_ingest(),
        ))
        .add_service(InterceptedService::new(
            grpc::metrics_service(otlp_metrics.clone(), rate_limiter.clone()),
            auth.grpc_ingest(),
        ))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
            stopped(stop.clone()),
        );
    let otlp_http = tls::serve_http(
        otlp_http_listener,
        tls.as_ref().map(tls::ServerTls::ingest_acceptor),
        otlp_http::router(ingest.clone())
            .merge(otlp_http::metrics_router(
                otlp_metrics,
                rate_limiter.clone(),
            ))
            .layer(axum::middleware::from_fn_with_state(
                auth.clone(),
                auth::ingest_layer,
            )),
        stopped(stop.clone()),
    );
    let metrics_state = MetricsState {
        metrics: metrics.clone(),
        ingest: ingest.clone(),
        logs: logs.clone(),
        data_dir: config.data_dir.clone(),
        rules: None,
    };
    // Stops by itself after a last flush once `stop` is set.
    tokio::spawn(sightline_metrics::log_metrics::flush_loop(
        log_metrics,
        metric_store.clone(),
        stop.clone(),
    ));
    let metric_maintenance = tokio::spawn(metric_maintenance_loop(
        metric_store.clone(),
        config.retention,
        stop.clone(),
    ));
    // Scraping: the config's jobs, and the collector's own /metrics.
    let config_dir = config
        .config
        .as_deref()
        .and_then(std::path::Path::parent)
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    // Behind TLS the self-scrape speaks https to the query listener.
    let self_scrape = sightline_metrics::scrape::SelfScrape {
        address: http_listener.local_addr()?,
        tls: tls.is_some(),
    };
    let scrape_jobs =
        sightline_metrics::scrape::jobs_from_config(&config_file, &config_dir, Some(self_scrape));
    let scraper_metrics = metrics.clone();
    let scraper = sightline_metrics::scrape::Scraper::start(
        scrape_jobs,
        metric_store.clone(),
        sightline_metrics::scrape::FILE_POLL_INTERVAL,
        stop.clone(),
    )?;
    // Rules: each group evaluated on its interval; alerts go to the
    // configured Alertmanagers and webhooks.
    let rules_base_dir = config
        .config
        .as_deref()
        .and_then(std::path::Path::parent)
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let default_base_url = {
        let scheme = if tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", http_listener.local_addr()?)
    };
    let ui_base_url = match &config_file.external_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => default_base_url.clone(),
    };
    let alerting = sightline_metrics::alerting::Alerting::from_config(
        &config_file,
        &rules_base_dir,
        ui_base_url,
        metric_store.clone(),
        spans.clone(),
    )?;
    let alerting = Arc::new(alerting);
    let rule_engine = alerting.engine.clone();
    let metrics_state = MetricsState {
        rules: Some((rule_engine.clone(), alerting.notifier.clone())),
        ..metrics_state
    };
    let notifier_task = alerting.start(stop.clone()).await;
    // SIGHUP and `/-/reload` re-read the config and rule files.
    let reloader = reload::Reloader {
        config: config.config.clone(),
        config_dir: rules_base_dir,
        self_scrape,
        default_base_url,
        scraper: scraper.clone(),
        alerting: alerting.clone(),
        metrics: scraper_metrics,
        log_metrics: format!("{:?}", config_file.log_metrics),
        running: Arc::default(),
    };
    tokio::spawn(reloader.clone().on_sighup(stop.clone()));
    let remote_write = remote_write::router(
        sightline_metrics::remote_write::RemoteWrite::new(metric_store.clone()),
        rate_limiter.clone(),
    );
    let router = sightline_query_ui::router(QueryState {
        logs,
        spans,
        metrics: metric_store,
        rules: rule_engine,
    })
    .merge(remote_write)
    // `_bulk` charges the rate limit itself, to answer as Elasticsearch.
    .nest("/elastic", elastic::router(ingest.clone()))
    // A nested router does not answer its prefix with a trailing slash;
    // Vector and Logstash ask `GET /elastic/` for the version.
    .route("/elastic/", elastic::root_route())
    .route(
        "/metrics",
        get(move |headers: axum::http::HeaderMap| render_metrics(metrics_state.clone(), headers)),
    )
    .merge(scraper.router())
    .merge(reloader.router())
    .layer(axum::middleware::from_fn_with_state(auth, auth::http_layer));
    drop(ingest);
    let http = tls::serve_http(
        http_listener,
        tls.as_ref().map(tls::ServerTls::query_acceptor),
        router,
        stopped(stop.clone()),
    );
    let (grpc_result, otlp_http_result, http_result) = tokio::join!(grpc, otlp_http, http);
    grpc_result.context("OTLP/gRPC server failed")?;
    otlp_http_result.context("OTLP/HTTP server failed")?;
    http_result.context("query API server failed")?;
    retention.abort();
    metric_maintenance.abort();
    notifier_task.abort();
    alerting.abort().await;

    // The servers are gone and with them every pipeline handle: the writer
    // drains its queue, the indexer commits, then both stop.
    tokio::task::spawn_blocking(move || pipeline_threads.join()).await?;
    tracing::info!("collector stopped");
    Ok(())
}

async fn bind(address: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("failed to bind the {what} listener on {address}"))
}

#[derive(Clone)]
struct MetricsState {
    metrics: Arc<CollectorMetrics>,
    ingest: Ingest,
    logs: Arc<LogStore>,
    data_dir: PathBuf,
    /// The rule engine's and the notifier's counters.
    rules: Option<(
        Arc<sightline_tsdb::rules::RuleEngine>,
        Arc<sightline_metrics::alerting::Notifier>,
    )>,
}

async fn render_metrics(
    state: MetricsState,
    headers: axum::http::HeaderMap,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let budget = state.ingest.pipeline().budget_in_use() as u64;
    let span_metrics = state.ingest.span_metrics().clone();
    let disk = tokio::task::spawn_blocking(move || DiskUsage {
        wal_bytes: sightline_store::wal::disk_bytes(&state.data_dir.join("wal")).unwrap_or(0),
        log_index_bytes: state.logs.disk_bytes(),
        span_store_bytes: sightline_store::dir_size(&state.data_dir.join("spans")),
        log_records: state.logs.num_records(),
        memory_budget_in_use: budget,
    })
    .await
    .unwrap_or_default();
    // Exemplars (trace ids on latency buckets) need OpenMetrics.
    let openmetrics = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let mut text = state.metrics.render(disk) + &span_metrics.render(openmetrics);
    if let Some((rules, notifier)) = &state.rules {
        text.push_str(&rules.render_metrics());
        text.push_str(&notifier.render_metrics());
    }
    if openmetrics {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            sightline_metrics::span_metrics::to_openmetrics(&text),
        )
    } else {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
    }
}

async fn retention_loop(
    logs: Arc<LogStore>,
    spans: Arc<SpanStore>,
    retention: Duration,
    metrics: Arc<CollectorMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(RETENTION_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let keep_from = sightline_vocab::clock::now_nanos()
            .saturating_sub(i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX));
        let (logs, spans) = (logs.clone(), spans.clone());
        // Span deletions take effect at the indexer's next commit.
        let dropped = tokio::task::spawn_blocking(move || {
            spans.delete_before(keep_from)?;
            logs.drop_partitions_before(keep_from)
        });
        match dropped.await {
            Ok(Ok(dropped)) if !dropped.is_empty() => {
                tracing::info!(partitions = ?dropped, "retention dropped log partitions");
                metrics.partitions_dropped(dropped.len() as u64);
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "retention failed"),
            Err(error) => tracing::error!(%error, "retention task failed"),
        }
    }
}

/// How long the time-series head grows before it is cut into a block
/// (Prometheus' default block range).
const METRIC_BLOCK_RANGE: Duration = Duration::from_secs(2 * 60 * 60);

async fn metric_maintenance_loop(
    store: Arc<MetricStore>,
    retention: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(RETENTION_CHECK_INTERVAL);
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
