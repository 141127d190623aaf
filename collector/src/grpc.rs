//! OTLP/gRPC receivers for logs and traces.

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use sightline_store::{LogRecord, Span};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use crate::ingest::{IngestError, Ingester};
use crate::otlp;

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

pub struct LogsReceiver {
    ingester: Ingester<LogRecord>,
}

#[tonic::async_trait]
impl LogsService for LogsReceiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let records = otlp::log_records(request.into_inner());
        self.ingester.ingest(records).await?;
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

pub struct TracesReceiver {
    ingester: Ingester<Span>,
}

#[tonic::async_trait]
impl TraceService for TracesReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let (spans, rejected) = otlp::spans(request.into_inner());
        self.ingester.ingest(spans).await?;
        let partial_success = (rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: rejected as i64,
            error_message: format!(
                "{rejected} spans had a missing or malformed trace_id or span_id"
            ),
        });
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success,
        }))
    }
}

pub fn logs_service(ingester: Ingester<LogRecord>) -> LogsServiceServer<LogsReceiver> {
    LogsServiceServer::new(LogsReceiver { ingester })
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
}

pub fn trace_service(ingester: Ingester<Span>) -> TraceServiceServer<TracesReceiver> {
    TraceServiceServer::new(TracesReceiver { ingester })
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
}
