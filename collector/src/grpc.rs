//! OTLP/gRPC receivers for logs, traces and metrics.
//!
//! The three services are served by [`OtlpServer`], one generic tonic
//! service in place of the servers `opentelemetry-proto` generates: those
//! hard-wire tonic-prost's codec, which answers a request whose protobuf
//! does not decode with `INTERNAL` (gRPC's code for a broken peer). OTLP
//! asks for `INVALID_ARGUMENT`: the batch is bad and retrying it cannot
//! help, which is what a sender needs to know to drop it instead of
//! retrying forever. [`OtlpCodec`] decodes with prost and says so. Framing
//! and decompression errors stay tonic's (`INTERNAL`, as the gRPC spec asks).

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use crate::ingest::{Ingest, spans_message, summarize};
use crate::otlp;
use crate::pipeline::IngestError;
use crate::ratelimit::RateLimiter;
use sightline_metrics::otlp::OtlpMetrics;

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

/// One OTLP export service: its gRPC name, its messages and its handler.
/// OTLP services have a single unary method, `Export`.
pub trait ExportService: Send + Sync + 'static {
    /// The fully qualified service name, `package.Service`.
    const NAME: &'static str;
    type Request: Message + Default + Send + 'static;
    type Response: Message + Send + 'static;

    fn export(
        &self,
        request: Request<Self::Request>,
    ) -> impl Future<Output = Result<Response<Self::Response>, Status>> + Send;
}

/// prost encoding and decoding; a message that does not decode is the
/// client's fault: `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct OtlpCodec<Encode, Decode>(PhantomData<fn(Encode) -> Decode>);

impl<Encode, Decode> Default for OtlpCodec<Encode, Decode> {
    fn default() -> Self {
        OtlpCodec(PhantomData)
    }
}

impl<Encode, Decode> Codec for OtlpCodec<Encode, Decode>
where
    Encode: Message + Send + 'static,
    Decode: Message + Default + Send + 'static,
{
    type Encode = Encode;
    type Decode = Decode;
    type Encoder = OtlpCodec<Encode, ()>;
    type Decoder = OtlpCodec<(), Decode>;

    fn encoder(&mut self) -> Self::Encoder {
        OtlpCodec(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        OtlpCodec(PhantomData)
    }
}

impl<Encode: Message> Encoder for OtlpCodec<Encode, ()> {
    type Item = Encode;
    type Error = Status;

    fn encode(&mut self, item: Encode, buffer: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // An `EncodeBuf` grows as needed, so encoding cannot run out of room.
        item.encode(buffer)
            .map_err(|error| Status::internal(format!("failed to encode the response: {error}")))
    }
}

impl<Decode: Message + Default> Decoder for OtlpCodec<(), Decode> {
    type Item = Decode;
    type Error = Status;

    fn decode(&mut self, buffer: &mut DecodeBuf<'_>) -> Result<Option<Decode>, Status> {
        Decode::decode(buffer).map(Some).map_err(|error| {
            Status::invalid_argument(format!(
                "the request is not a valid protobuf message: {error}"
            ))
        })
    }
}

/// A tonic service serving one [`ExportService`] with [`OtlpCodec`]; gzip
/// and zstd requests accepted, decoded size capped at [`MAX_MESSAGE_BYTES`].
pub struct OtlpServer<S> {
    service: Arc<S>,
    accept_compression: EnabledCompressionEncodings,
}

impl<S> Clone for OtlpServer<S> {
    fn clone(&self) -> Self {
        OtlpServer {
            service: self.service.clone(),
            accept_compression: self.accept_compression,
        }
    }
}

impl<S: ExportService> OtlpServer<S> {
    pub fn new(service: S) -> OtlpServer<S> {
        let mut accept_compression = EnabledCompressionEncodings::default();
        accept_compression.enable(CompressionEncoding::Gzip);
        accept_compression.enable(CompressionEncoding::Zstd);
        OtlpServer {
            service: Arc::new(service),
            accept_compression,
        }
    }

    fn is_export(path: &str) -> bool {
        path.strip_prefix('/')
            .and_then(|path| path.strip_prefix(S::NAME))
            .is_some_and(|method| method == "/Export")
    }
}

impl<S: ExportService> NamedService for OtlpServer<S> {
    const NAME: &'static str = S::NAME;
}

/// The `Export` method as tonic's unary handler.
struct ExportMethod<S>(Arc<S>);

impl<S: ExportService> UnaryService<S::Request> for ExportMethod<S> {
    type Response = S::Response;
    type Future = BoxFuture<Response<S::Response>, Status>;

    fn call(&mut self, request: Request<S::Request>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.export(request).await })
    }
}

impl<S, B> Service<http::Request<B>> for OtlpServer<S>
where
    S: ExportService,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !Self::is_export(request.uri().path()) {
            let status = Status::unimplemented(format!(
                "{} has no method {}",
                S::NAME,
                request.uri().path()
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let method = ExportMethod(self.service.clone());
        let accept_compression = self.accept_compression;
        Box::pin(async move {
            let mut grpc = Grpc::new(OtlpCodec::<S::Response, S::Request>::default())
                .apply_compression_config(
                    accept_compression,
                    EnabledCompressionEncodings::default(),
                )
                .apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), None);
            Ok(grpc.unary(method, request).await)
        })
    }
}

pub struct LogsReceiver {
    ingest: Ingest,
}

impl ExportService for LogsReceiver {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;

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

impl ExportService for TracesReceiver {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    type Request = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;

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

pub fn logs_service(ingest: Ingest) -> OtlpServer<LogsReceiver> {
    OtlpServer::new(LogsReceiver { ingest })
}

pub fn trace_service(ingest: Ingest) -> OtlpServer<TracesReceiver> {
    OtlpServer::new(TracesReceiver { ingest })
}

/// The OTLP metrics receiver: data points become time series in the
/// metric store (see [`sightline_metrics::otlp`] for the naming).
pub struct MetricsReceiver {
    /// The per-client ingest rate, shared with every other ingest path
    /// (data points go to the metric store, not the pipeline).
    rate_limiter: Option<Arc<RateLimiter>>,
    metrics: OtlpMetrics,
}

impl ExportService for MetricsReceiver {
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    type Request = ExportMetricsServiceRequest;
    type Response = ExportMetricsServiceResponse;

    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let client = request.remote_addr().map(|address| address.ip());
        let request = request.into_inner();
        if let (Some(limiter), Some(client)) = (&self.rate_limiter, client) {
            limiter
                .charge(client, request.encoded_len())
                .map_err(|limited| Status::resource_exhausted(limited.to_string()))?;
        }
        let partial_success = self
            .metrics
            .export(request)
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success,
        }))
    }
}

pub fn metrics_service(
    metrics: OtlpMetrics,
    rate_limiter: Option<Arc<RateLimiter>>,
) -> OtlpServer<MetricsReceiver> {
    OtlpServer::new(MetricsReceiver {
        rate_limiter,
        metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_names_are_the_generated_ones() {
        use opentelemetry_proto::tonic::collector::{logs, metrics, trace};
        assert_eq!(
            LogsReceiver::NAME,
            logs::v1::logs_service_server::SERVICE_NAME
        );
        assert_eq!(
            TracesReceiver::NAME,
            trace::v1::trace_service_server::SERVICE_NAME
        );
        assert_eq!(
            MetricsReceiver::NAME,
            metrics::v1::metrics_service_server::SERVICE_NAME
        );
    }
}
