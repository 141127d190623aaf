//! OTLP/gRPC receivers for logs, traces and metrics: the transport of the
//! services in [`crate::service`]. This module decodes a request, hands it
//! to its service (admission to the ingest rate, then export) and encodes
//! the answer; a refusal becomes a status through [`crate::error`].
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
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::Message;
use sightline_metrics::otlp::OtlpMetrics;
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use crate::error::ReceiveError;
use crate::ingest::Ingest;
use crate::ratelimit::RateLimiter;
use crate::service::{LogsService, MetricsService, OtlpService, TracesService};

/// Largest decoded OTLP request accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

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
            Status::from(ReceiveError::Malformed(format!(
                "the request is not a valid protobuf message: {error}"
            )))
        })
    }
}

/// A tonic service serving one [`OtlpService`] with [`OtlpCodec`]; gzip
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

impl<S: OtlpService> OtlpServer<S> {
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

impl<S: OtlpService> NamedService for OtlpServer<S> {
    const NAME: &'static str = S::NAME;
}

/// The `Export` method as tonic's unary handler.
struct ExportMethod<S>(Arc<S>);

impl<S: OtlpService> UnaryService<S::Request> for ExportMethod<S> {
    type Response = S::Response;
    type Future = BoxFuture<Response<S::Response>, Status>;

    fn call(&mut self, request: Request<S::Request>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move {
            let client = request.remote_addr().map(|address| address.ip());
            let request = request.into_inner();
            let size = request.encoded_len();
            service.admit(client, size)?;
            Ok(Response::new(service.export(request, size).await?))
        })
    }
}

impl<S, B> Service<http::Request<B>> for OtlpServer<S>
where
    S: OtlpService,
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

pub fn logs_service(ingest: Ingest) -> OtlpServer<LogsService> {
    OtlpServer::new(LogsService::new(ingest))
}

pub fn trace_service(ingest: Ingest) -> OtlpServer<TracesService> {
    OtlpServer::new(TracesService::new(ingest))
}

pub fn metrics_service(
    metrics: OtlpMetrics,
    rate_limiter: Option<Arc<RateLimiter>>,
) -> OtlpServer<MetricsService> {
    OtlpServer::new(MetricsService::new(metrics, rate_limiter))
}
