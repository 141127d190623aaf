//! OTLP/gRPC receivers for logs, traces and metrics.

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use crate::ingest::{Ingest, spans_message, summarize};
use crate::otlp;
use crate::otlp_metrics::OtlpMetrics;
use crate::pipeline::IngestError;

/// Largest decoded OTLP request accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

impl From<IngestError> for Status {
    fn from(error: IngestError) -> Status {
        match error {
            IngestError::Busy => Status::resource_exhausted(error.to_string()),
            IngestError::ShuttingDown => Status::unavailable(error.to_string()),
            IngestError::Storage(_) => Status::unavailable(error.to_string()),
        }
    }
}

/// Charges a request to its client's rate: `RESOURCE_EXHAUSTED` when over.
fn admit(ingest: &Ingest, client: Option<std::net::IpAddr>, size: usize) -> Result<(), Status> {
    ingest
        .admit(client, size)
        .map_err(|limited| Status::resource_exhausted(limited.to_string()))
}

pub struct LogsReceiver {
    ingest: Ingest,
}

#[tonic::async_trait]
impl LogsService for LogsReceiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let client = request.remote_addr().map(|address| address.ip());
        let request = request.into_inner();
        let size = request.encoded_len();
        admit(&self.ingest, client, size)?;
        let records = otlp::log_records(request);
        let rejections = self.ingest.logs(records, size).await?;
        let partial_success = (!rejections.is_empty()).then(|| ExportLogsPartialSuccess {
            rejected_log_records: rejections.len() as i64,
            error_message: summarize(&rejections, "log records"),
        });
        Ok(Response::new(ExportLogsServiceResponse { partial_success }))
    }
}

pub struct TracesReceiver {
    ingest: Ingest,
}

#[tonic::async_trait]
impl TraceService for TracesReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let client = request.remote_addr().map(|address| address.ip());
        let request = request.into_inner();
        let size = request.encoded_len();
        admit(&self.ingest, client, size)?;
        let (spans, rejected) = otlp::spans(request);
        if rejected > 0 {
            self.ingest.count_malformed(rejected as u64);
        }
        let limited = self.ingest.spans(spans, size).await?;
        let partial_success =
            (rejected > 0 || !limited.is_empty()).then(|| ExportTracePartialSuccess {
                rejected_spans: (rejected + limited.len()) as i64,
                error_message: spans_message(rejected, &limited),
            });
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success,
        }))
    }
}

pub fn logs_service(ingest: Ingest) -> LogsServiceServer<LogsReceiver> {
    LogsServiceServer::new(LogsReceiver { ingest })
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
}

pub fn trace_service(ingest: Ingest) -> TraceServiceServer<TracesReceiver> {
    TraceServiceServer::new(TracesReceiver { ingest })
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
}

/// The OTLP metrics receiver: data points become time series in the
/// metric store (see [`crate::otlp_metrics`] for the naming).
pub struct MetricsReceiver {
    metrics: OtlpMetrics,
}

#[tonic::async_trait]
impl MetricsService for MetricsReceiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let partial_success = self
            .metrics
            .export(request.into_inner())
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success,
        }))
    }
}

pub fn metrics_service(metrics: OtlpMetrics) -> MetricsServiceServer<MetricsReceiver> {
    MetricsServiceServer::new(MetricsReceiver { metrics })
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
}
