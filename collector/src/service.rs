//! The OTLP services, one per signal, free of any transport.
//!
//! OTLP/gRPC ([`crate::grpc`]) and OTLP/HTTP ([`crate::otlp_http`]) only
//! decode a request and encode the answer; what a request does is here:
//! [`OtlpService::admit`] charges it to its client's ingest rate
//! ([`crate::ratelimit`]), [`OtlpService::export`] stores it and answers the
//! `Export*ServiceResponse`, with a partial success when some records were
//! refused. Both fail with [`ReceiveError`], which each transport answers
//! through [`crate::error`].
//!
//! Logs and traces go through [`Ingest`] to the durable pipeline; metrics go
//! to the metric store through [`OtlpMetrics`].

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde::de::DeserializeOwned;
use sightline_metrics::otlp::OtlpMetrics;

use crate::error::ReceiveError;
use crate::ingest::{Ingest, spans_message, summarize};
use crate::otlp;
use crate::ratelimit::RateLimiter;

/// One OTLP export service: its messages, admission and export.
pub trait OtlpService: Clone + Send + Sync + 'static {
    /// The fully qualified protobuf service name, `package.Service`.
    const NAME: &'static str;
    type Request: Message + Default + DeserializeOwned + Send + 'static;
    type Response: Message + Send + 'static;

    /// Charges a request of `bytes` from `client` to its ingest rate; a
    /// request without a known client is not charged.
    fn admit(&self, client: Option<IpAddr>, bytes: usize) -> Result<(), ReceiveError>;

    /// Stores the request; `size` is its size as received, in bytes.
    fn export(
        &self,
        request: Self::Request,
        size: usize,
    ) -> impl Future<Output = Result<Self::Response, ReceiveError>> + Send;

    /// Counts a request refused before it reached [`OtlpService::export`].
    fn count_refused(&self, _error: &ReceiveError) {}
}

/// OTLP logs: records to the durable pipeline.
#[derive(Clone)]
pub struct LogsService {
    ingest: Ingest,
}

impl LogsService {
    pub fn new(ingest: Ingest) -> LogsService {
        LogsService { ingest }
    }
}

impl OtlpService for LogsService {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;

    fn admit(&self, client: Option<IpAddr>, bytes: usize) -> Result<(), ReceiveError> {
        Ok(self.ingest.admit(client, bytes)?)
    }

    async fn export(
        &self,
        request: ExportLogsServiceRequest,
        size: usize,
    ) -> Result<ExportLogsServiceResponse, ReceiveError> {
        let records = otlp::log_records(request);
        let rejections = self.ingest.logs(records, size).await?;
        let partial_success = (!rejections.is_empty()).then(|| ExportLogsPartialSuccess {
            rejected_log_records: rejections.len() as i64,
            error_message: summarize(&rejections, "log records"),
        });
        Ok(ExportLogsServiceResponse { partial_success })
    }

    fn count_refused(&self, error: &ReceiveError) {
        count_limit(&self.ingest, error);
    }
}

/// OTLP traces: spans to the durable pipeline; spans without valid ids are
/// refused while the rest of the request is stored.
#[derive(Clone)]
pub struct TracesService {
    ingest: Ingest,
}

impl TracesService {
    pub fn new(ingest: Ingest) -> TracesService {
        TracesService { ingest }
    }
}

impl OtlpService for TracesService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    type Request = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;

    fn admit(&self, client: Option<IpAddr>, bytes: usize) -> Result<(), ReceiveError> {
        Ok(self.ingest.admit(client, bytes)?)
    }

    async fn export(
        &self,
        request: ExportTraceServiceRequest,
        size: usize,
    ) -> Result<ExportTraceServiceResponse, ReceiveError> {
        let (spans, malformed) = otlp::spans(request);
        if malformed > 0 {
            self.ingest.count_malformed(malformed as u64);
        }
        let limited = self.ingest.spans(spans, size).await?;
        let partial_success =
            (malformed > 0 || !limited.is_empty()).then(|| ExportTracePartialSuccess {
                rejected_spans: (malformed + limited.len()) as i64,
                error_message: spans_message(malformed, &limited),
            });
        Ok(ExportTraceServiceResponse { partial_success })
    }

    fn count_refused(&self, error: &ReceiveError) {
        count_limit(&self.ingest, error);
    }
}

/// OTLP metrics: data points become time series in the metric store (see
/// [`sightline_metrics::otlp`] for the naming).
#[derive(Clone)]
pub struct MetricsService {
    metrics: OtlpMetrics,
    /// The per-client ingest rate, shared with every other ingest path
    /// (data points go to the metric store, not the pipeline).
    rate_limiter: Option<Arc<RateLimiter>>,
}

impl MetricsService {
    pub fn new(metrics: OtlpMetrics, rate_limiter: Option<Arc<RateLimiter>>) -> MetricsService {
        MetricsService {
            metrics,
            rate_limiter,
        }
    }
}

impl OtlpService for MetricsService {
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    type Request = ExportMetricsServiceRequest;
    type Response = ExportMetricsServiceResponse;

    fn admit(&self, client: Option<IpAddr>, bytes: usize) -> Result<(), ReceiveError> {
        Ok(crate::ratelimit::admit(
            self.rate_limiter.as_deref(),
            client,
            bytes,
        )?)
    }

    async fn export(
        &self,
        request: ExportMetricsServiceRequest,
        _size: usize,
    ) -> Result<ExportMetricsServiceResponse, ReceiveError> {
        let partial_success = self
            .metrics
            .export(request)
            .await
            .map_err(|error| ReceiveError::MetricStore(error.to_string()))?;
        Ok(ExportMetricsServiceResponse { partial_success })
    }
}

/// Counts a refusal by a body-size limit in `/metrics`.
fn count_limit(ingest: &Ingest, error: &ReceiveError) {
    if let Some(limit) = error.limit() {
        ingest.metrics().limited(limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_names_are_the_generated_ones() {
        use opentelemetry_proto::tonic::collector::{logs, metrics, trace};
        assert_eq!(
            LogsService::NAME,
            logs::v1::logs_service_server::SERVICE_NAME
        );
        assert_eq!(
            TracesService::NAME,
            trace::v1::trace_service_server::SERVICE_NAME
        );
        assert_eq!(
            MetricsService::NAME,
            metrics::v1::metrics_service_server::SERVICE_NAME
        );
    }
}
