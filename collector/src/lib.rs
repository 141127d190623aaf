//! The Sightline collector: takes OTLP in, keeps it durable, answers queries.
//!
//! Roles:
//! - [`grpc`]: OTLP/gRPC receivers for logs and traces;
//! - [`otlp`]: the mapping from OTLP messages to the store's model;
//! - [`ingest`]: the bounded queue and writer thread per store that commit
//!   before acknowledging (group commit);
//! - [`run`]: wires the stores, receivers and the query API/UI from
//!   `sightline-query-ui` into one process.
//!
//! The collector acknowledges a batch only after the store committed it, and
//! never knows an on-disk layout: that is `sightline-store`'s.

pub mod config;
pub mod grpc;
pub mod ingest;
pub mod otlp;

use std::sync::Arc;

use anyhow::Context;
use sightline_query_ui::QueryState;
use sightline_store::{LogIndex, SpanStore};
use tokio::net::TcpListener;

pub use config::CollectorConfig;

use crate::ingest::{DEFAULT_QUEUE_BATCHES, Ingester};

/// Runs the collector until `shutdown` resolves, then drains the writers.
pub async fn run(
    config: CollectorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let logs_dir = config.data_dir.join("logs");
    let spans_dir = config.data_dir.join("spans");
    let (logs, spans) = tokio::task::spawn_blocking(move || {
        let logs = LogIndex::open(&logs_dir)
            .with_context(|| format!("failed to open log index at {}", logs_dir.display()))?;
        let spans = SpanStore::open(&spans_dir)
            .with_context(|| format!("failed to open span store at {}", spans_dir.display()))?;
        anyhow::Ok((Arc::new(logs), Arc::new(spans)))
    })
    .await??;

    let (log_ingester, log_writer) = Ingester::start("logs", logs.clone(), DEFAULT_QUEUE_BATCHES)?;
    let (span_ingester, span_writer) =
        Ingester::start("spans", spans.clone(), DEFAULT_QUEUE_BATCHES)?;

    let grpc_listener = TcpListener::bind(config.otlp_grpc_addr)
        .await
        .with_context(|| format!("failed to bind OTLP gRPC on {}", config.otlp_grpc_addr))?;
    let http_listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("failed to bind query API on {}", config.http_addr))?;
    tracing::info!(otlp_grpc = %grpc_listener.local_addr()?, http = %http_listener.local_addr()?, data_dir = %config.data_dir.display(), "collector listening");

    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_sender.send(true);
    });
    let mut stop_grpc = stop.clone();
    let grpc = tonic::transport::Server::builder()
        .add_service(grpc::logs_service(log_ingester))
        .add_service(grpc::trace_service(span_ingester))
        .serve_with_incoming_shutdown(tokio_stream_from(grpc_listener), async move {
            let _ = stop_grpc.wait_for(|stopped| *stopped).await;
        });
    let mut stop_http = stop;
    let router = sightline_query_ui::router(QueryState { logs, spans });
    let http = axum::serve(http_listener, router).with_graceful_shutdown(async move {
        let _ = stop_http.wait_for(|stopped| *stopped).await;
    });
    let (grpc_result, http_result) = tokio::join!(grpc, http);
    grpc_result.context("OTLP gRPC server failed")?;
    http_result.context("query API server failed")?;

    // The receivers are gone, so the ingesters are dropped: the writers drain and stop.
    tokio::task::spawn_blocking(move || {
        let _ = log_writer.join();
        let _ = span_writer.join();
    })
    .await?;
    tracing::info!("collector stopped");
    Ok(())
}

fn tokio_stream_from(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
}
