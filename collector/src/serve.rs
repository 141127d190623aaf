//! The collector's three listeners and what each serves: OTLP/gRPC and
//! OTLP/HTTP (the receivers), and the query port (query API and UI,
//! remote-write, `_bulk`, `/metrics`, `/api/v1/targets`, `/-/reload`).
//! Servers stop gracefully once `stop` turns true.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::routing::get;
use sightline_metrics::MetricsPipeline;
use sightline_pipeline::Pipeline;
use sightline_query_ui::QueryState;
use sightline_store::LogStore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

use crate::auth::{self, Auth};
use crate::ingest::Ingest;
use crate::metrics::{CollectorMetrics, DiskUsage};
use crate::ratelimit::RateLimiter;
use crate::reload::Reloader;
use crate::tls::{self, ServerTls};
use crate::{Stores, elastic, forward, grpc, loki, otlp_http, remote_write, zipkin};

/// The bound listeners, before anything is served on them.
pub(crate) struct Listeners {
    otlp_grpc: TcpListener,
    otlp_http: TcpListener,
    http: TcpListener,
    /// Fluentd's forward protocol, when `--forward-addr` is given.
    forward: Option<TcpListener>,
    pub(crate) addresses: Addresses,
}

/// Where a running collector listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    /// The query API, the UI, `/metrics` and the compatibility APIs.
    pub http: SocketAddr,
    /// Fluentd's forward protocol, when enabled.
    pub forward: Option<SocketAddr>,
}

impl Listeners {
    /// Binds the three addresses of `config` (port 0: any free port) and
    /// warns about each open scope on a non-loopback address.
    pub(crate) async fn bind(
        config: &crate::CollectorConfig,
        auth: &Auth,
    ) -> anyhow::Result<Listeners> {
        let otlp_grpc = bind(config.otlp_grpc_addr, "OTLP/gRPC").await?;
        let otlp_http = bind(config.otlp_http_addr, "OTLP/HTTP").await?;
        let http = bind(config.http_addr, "query API").await?;
        let forward = match config.forward_addr {
            Some(address) => Some(bind(address, "Fluentd forward").await?),
            None => None,
        };
        let addresses = Addresses {
            otlp_grpc: otlp_grpc.local_addr()?,
            otlp_http: otlp_http.local_addr()?,
            http: http.local_addr()?,
            forward: forward.as_ref().map(TcpListener::local_addr).transpose()?,
        };
        if let Some(address) = addresses.forward
            && !address.ip().is_loopback()
        {
            tracing::warn!(%address, "the Fluentd forward listener has no authentication or TLS: keep it on a private network");
        }
        tracing::info!(
            otlp_grpc = %addresses.otlp_grpc,
            otlp_http = %addresses.otlp_http,
            http = %addresses.http,
            data_dir = %config.data_dir.display(),
            "collector listening"
        );
        auth::warn_if_exposed(
            auth,
            &[
                ("OTLP/gRPC", addresses.otlp_grpc, auth::Scope::Ingest),
                ("OTLP/HTTP", addresses.otlp_http, auth::Scope::Ingest),
                ("query API", addresses.http, auth::Scope::Ingest),
                ("query API", addresses.http, auth::Scope::Query),
            ],
        );
        Ok(Listeners {
            otlp_grpc,
            otlp_http,
            http,
            forward,
            addresses,
        })
    }
}

async fn bind(address: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("failed to bind the {what} listener on {address}"))
}

/// What the listeners serve.
pub(crate) struct Parts {
    pub(crate) ingest: Ingest,
    pub(crate) rate_limiter: Option<Arc<RateLimiter>>,
    pub(crate) auth: Auth,
    pub(crate) tls: Option<ServerTls>,
    pub(crate) stores: Stores,
    pub(crate) reading: crate::Reading,
    pub(crate) metrics: Arc<MetricsPipeline>,
    pub(crate) telemetry: Arc<CollectorMetrics>,
    pub(crate) reloader: Reloader,
    /// Where the UI's dashboards are read from.
    pub(crate) dashboards: sightline_query_ui::DashboardDir,
    pub(crate) searches: sightline_query_ui::Searches,
}

/// The three servers, running.
pub(crate) struct Servers {
    otlp_grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    otlp_http: JoinHandle<std::io::Result<()>>,
    http: JoinHandle<std::io::Result<()>>,
    forward: Option<JoinHandle<std::io::Result<()>>>,
}

impl Servers {
    /// Waits until every server has stopped (after `stop`): the first
    /// failure, in the order OTLP/gRPC, OTLP/HTTP, query API.
    pub(crate) async fn stopped(self) -> anyhow::Result<()> {
        let (otlp_grpc, otlp_http, http) = tokio::join!(self.otlp_grpc, self.otlp_http, self.http);
        otlp_grpc?.context("OTLP/gRPC server failed")?;
        otlp_http?.context("OTLP/HTTP server failed")?;
        http?.context("query API server failed")?;
        if let Some(forward) = self.forward {
            forward.await?.context("Fluentd forward server failed")?;
        }
        Ok(())
    }
}

/// Starts serving `parts` on `listeners` until `stop` turns true.
pub(crate) fn serve(
    listeners: Listeners,
    parts: Parts,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Servers> {
    let stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let Parts {
        ingest,
        rate_limiter,
        auth,
        tls,
        stores,
        reading,
        metrics,
        telemetry,
        reloader,
        dashboards,
        searches,
    } = parts;
    let otlp_grpc = otlp_grpc(
        listeners.otlp_grpc,
        &ingest,
        &metrics,
        &rate_limiter,
        &auth,
        tls.as_ref(),
        stopped(stop.clone()),
    )?;
    let otlp_http = tls::serve_http(
        listeners.otlp_http,
        tls.as_ref().map(ServerTls::ingest_acceptor),
        otlp_http::router(ingest.clone())
            .merge(zipkin::router(ingest.clone()))
            .merge(loki::router(ingest.clone()))
            .merge(otlp_http::metrics_router(
                metrics.otlp(),
                rate_limiter.clone(),
            ))
            .layer(axum::middleware::from_fn_with_state(
                auth.clone(),
                auth::ingest_layer,
            )),
        stopped(stop.clone()),
    );
    let metrics_page = MetricsPage {
        telemetry,
        ingest: ingest.clone(),
        logs: stores.logs.clone(),
        wal_dir: stores.wal_dir.clone(),
        spans_dir: stores.spans_dir.clone(),
        metrics: metrics.clone(),
    };
    let probe_routes = probes(ingest.pipeline().clone(), ingest.cluster_log());
    let router = sightline_query_ui::router(QueryState {
        logs: reading.logs,
        spans: reading.spans,
        metrics: reading.metrics,
        rules: match reading.rules {
            Some(cluster) => {
                cluster.set_local(metrics.rules());
                cluster
            }
            None => metrics.rules(),
        },
        dashboards,
        searches,
    })
    .merge(remote_write::router(metrics.remote_write(), rate_limiter))
    // `_bulk` charges the rate limit itself, to answer as Elasticsearch.
    .nest("/elastic", elastic::router(ingest.clone()))
    // A nested router does not answer its prefix with a trailing slash;
    // Vector and Logstash ask `GET /elastic/` for the version.
    .route("/elastic/", elastic::root_route())
    .route(
        "/metrics",
        get(move |headers: axum::http::HeaderMap| render_metrics(metrics_page.clone(), headers)),
    )
    .merge(probe_routes)
    .merge(reading.internal.unwrap_or_default())
    .merge(metrics.api_router())
    .merge(reloader.router())
    .layer(axum::middleware::from_fn_with_state(auth, auth::http_layer));
    let http = tls::serve_http(
        listeners.http,
        tls.as_ref().map(ServerTls::query_acceptor),
        router,
        stopped(stop.clone()),
    );
    let forward = listeners
        .forward
        .map(|listener| tokio::spawn(forward::serve(listener, ingest, stop.clone())));
    Ok(Servers {
        otlp_grpc: tokio::spawn(otlp_grpc),
        otlp_http: tokio::spawn(otlp_http),
        http: tokio::spawn(http),
        forward,
    })
}

/// Kubernetes' probes, at Prometheus' paths: `/-/healthy` (liveness) fails
/// only when a restart is what helps, a pipeline thread having stopped;
/// `/-/ready` (readiness) passes once the WAL is replayed and while the
/// disk accepts writes. Both say why when they fail.
/// In cluster mode, readiness also needs the connection to NATS: without it
/// every publish is refused.
fn probes(pipeline: Pipeline, cluster: Option<sightline_cluster::ClusterLog>) -> axum::Router {
    let ready = pipeline.clone();
    axum::Router::new()
        .route(
            "/-/healthy",
            get(move || async move { probe_answer(pipeline.liveness().map(|()| "healthy")) }),
        )
        .route(
            "/-/ready",
            get(move || async move {
                let local = ready.readiness().explain();
                probe_answer(match &cluster {
                    Some(log) if local.is_ok() && !log.is_connected() => Err(
                        "not ready: not connected to NATS (cluster mode's log); ingest is refused until it reconnects".into(),
                    ),
                    _ => local,
                })
            }),
        )
}

fn probe_answer(outcome: Result<&'static str, String>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match outcome {
        Ok(text) => format!("{text}\n").into_response(),
        Err(reason) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("{reason}\n"),
        )
            .into_response(),
    }
}

/// The OTLP/gRPC server: logs, traces and metrics.
fn otlp_grpc(
    listener: TcpListener,
    ingest: &Ingest,
    metrics: &MetricsPipeline,
    rate_limiter: &Option<Arc<RateLimiter>>,
    auth: &Auth,
    tls: Option<&ServerTls>,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static> {
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server
            .tls_config(tls.grpc_config())
            .context("invalid TLS settings for the OTLP/gRPC listener")?;
    }
    Ok(server
        .add_service(InterceptedService::new(
            grpc::logs_service(ingest.clone()),
            auth.grpc_ingest(),
        ))
        .add_service(InterceptedService::new(
            grpc::trace_service(ingest.clone()),
            auth.grpc_ingest(),
        ))
        .add_service(InterceptedService::new(
            grpc::metrics_service(metrics.otlp(), rate_limiter.clone()),
            auth.grpc_ingest(),
        ))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stopped,
        ))
}

/// What `/metrics` reads.
#[derive(Clone)]
struct MetricsPage {
    telemetry: Arc<CollectorMetrics>,
    ingest: Ingest,
    logs: Arc<LogStore>,
    wal_dir: PathBuf,
    spans_dir: PathBuf,
    /// Span metrics, the rule engine's and the notifier's counters.
    metrics: Arc<MetricsPipeline>,
}

async fn render_metrics(
    page: MetricsPage,
    headers: axum::http::HeaderMap,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let budget = page.ingest.pipeline().budget_in_use() as u64;
    let (logs, wal_dir, spans_dir) = (page.logs.clone(), page.wal_dir, page.spans_dir);
    let disk = tokio::task::spawn_blocking(move || DiskUsage {
        wal_bytes: sightline_store::wal::disk_bytes(&wal_dir).unwrap_or(0),
        log_index_bytes: logs.disk_bytes(),
        span_store_bytes: sightline_store::dir_size(&spans_dir),
        log_records: logs.num_records(),
        memory_budget_in_use: budget,
    })
    .await
    .unwrap_or_default();
    // Exemplars (trace ids on latency buckets) need OpenMetrics.
    let openmetrics = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let text = page.telemetry.render(disk) + &page.metrics.render_metrics(openmetrics);
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
