//! One error for every ingest path and the one place that turns it into a
//! gRPC status or an HTTP answer.
//!
//! Every receiver (OTLP/gRPC, OTLP/HTTP, `_bulk`, remote-write) fails with a
//! [`ReceiveError`]. The codes are decided here and nowhere else:
//!
//! | error | gRPC | HTTP | `Retry-After` |
//! |---|---|---|---|
//! | bad input (undecodable, malformed, unknown encoding or type) | `INVALID_ARGUMENT` | 400, 415 for a media type or encoding | |
//! | body over a size limit | `RESOURCE_EXHAUSTED` | 413 | |
//! | client over its ingest rate | `RESOURCE_EXHAUSTED` | 429 | the client's wait |
//! | ingest over capacity (queue or memory budget) | `RESOURCE_EXHAUSTED` | 429 | 1 s |
//! | stopping, or the WAL or metric store cannot write (full disk) | `UNAVAILABLE` | 503 (remote-write: 500) | 5 s (remote-write: none) |
//!
//! Senders retry 429 and 503 (`RESOURCE_EXHAUSTED` and `UNAVAILABLE`) and
//! drop what answered 400. The body of an HTTP answer is the protocol's own:
//! `google.rpc.Status` for OTLP/HTTP ([`crate::otlp_http`]),
//! Elasticsearch's error document for `_bulk` ([`crate::elastic`], with
//! [`ReceiveError::elastic_type`]), plain text for remote-write
//! ([`crate::remote_write`]); each renders the status, code and wait
//! decided here.

use std::time::Duration;

use axum::http::StatusCode;
use tonic::Status;

pub use crate::http_body::BodyError;
use crate::metrics::Limit;
use sightline_pipeline::IngestError;
use crate::ratelimit::RateLimited;

/// Seconds a client is asked to wait when ingest is over capacity.
const RETRY_AFTER_BUSY: Duration = Duration::from_secs(1);

/// Seconds a client is asked to wait when the collector cannot store.
const RETRY_AFTER_UNAVAILABLE: Duration = Duration::from_secs(5);

/// Why an ingest request was refused, whatever its protocol.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The body could not be received or decoded ([`crate::http_body`]).
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("{0}")]
    UnsupportedContentType(String),
    /// The content does not decode, or cannot be taken as a whole.
    #[error("{0}")]
    Malformed(String),
    /// No such route (Elasticsearch's 404 for the paths it does not serve).
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    /// The durable log refused the batch: busy, stopping or not writable.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The metric store could not append (its message says what failed).
    #[error("{0}")]
    MetricStore(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The HTTP protocols ingest speaks; they agree on all codes but one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    OtlpHttp,
    Elastic,
    /// Prometheus remote-write: a store failure is a 500, as Prometheus
    /// answers it, and carries no `Retry-After`.
    RemoteWrite,
}

impl ReceiveError {
    /// The HTTP status of this refusal and how long the client should wait.
    pub fn http(&self, flavour: Flavour) -> (StatusCode, Option<Duration>) {
        match self {
            ReceiveError::Body(error) => (body_status(error), None),
            ReceiveError::UnsupportedContentType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, None),
            ReceiveError::Malformed(_) => (StatusCode::BAD_REQUEST, None),
            ReceiveError::NotFound(_) => (StatusCode::NOT_FOUND, None),
            ReceiveError::RateLimited(limited) => (
                StatusCode::TOO_MANY_REQUESTS,
                Some(limited.retry_after.max(Duration::from_secs(1))),
            ),
            ReceiveError::Ingest(IngestError::Busy) => {
                (StatusCode::TOO_MANY_REQUESTS, Some(RETRY_AFTER_BUSY))
            }
            ReceiveError::MetricStore(_) if flavour == Flavour::RemoteWrite => {
                (StatusCode::INTERNAL_SERVER_ERROR, None)
            }
            ReceiveError::Ingest(
                IngestError::ShuttingDown | IngestError::Starting | IngestError::Storage(_),
            )
            | ReceiveError::MetricStore(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(RETRY_AFTER_UNAVAILABLE),
            ),
            ReceiveError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, None),
        }
    }

    /// The gRPC code of this refusal: what an OTLP/gRPC answer carries and
    /// what an OTLP/HTTP error body (`google.rpc.Status`) names.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            ReceiveError::Body(error) => match body_status(error) {
                StatusCode::PAYLOAD_TOO_LARGE => tonic::Code::ResourceExhausted,
                _ => tonic::Code::InvalidArgument,
            },
            ReceiveError::UnsupportedContentType(_)
            | ReceiveError::Malformed(_)
            | ReceiveError::NotFound(_) => tonic::Code::InvalidArgument,
            ReceiveError::RateLimited(_) | ReceiveError::Ingest(IngestError::Busy) => {
                tonic::Code::ResourceExhausted
            }
            ReceiveError::Ingest(
                IngestError::ShuttingDown | IngestError::Starting | IngestError::Storage(_),
            )
            | ReceiveError::MetricStore(_) => tonic::Code::Unavailable,
            ReceiveError::Internal(_) => tonic::Code::Internal,
        }
    }

    /// The `type` of Elasticsearch's error document for this refusal.
    pub fn elastic_type(&self) -> &'static str {
        match self {
            ReceiveError::Body(error) => match body_status(error) {
                StatusCode::PAYLOAD_TOO_LARGE => "content_too_long_exception",
                StatusCode::UNSUPPORTED_MEDIA_TYPE => "illegal_argument_exception",
                _ => "parse_exception",
            },
            ReceiveError::UnsupportedContentType(_)
            | ReceiveError::Malformed(_)
            | ReceiveError::NotFound(_) => "illegal_argument_exception",
            ReceiveError::RateLimited(_) | ReceiveError::Ingest(IngestError::Busy) => {
                "es_rejected_execution_exception"
            }
            ReceiveError::Ingest(
                IngestError::ShuttingDown | IngestError::Starting | IngestError::Storage(_),
            )
            | ReceiveError::MetricStore(_) => "unavailable_shards_exception",
            ReceiveError::Internal(_) => "exception",
        }
    }

    /// The collector limit that refused the request, for `/metrics`.
    pub fn limit(&self) -> Option<Limit> {
        match self {
            ReceiveError::Body(BodyError::TooLarge { .. }) => Some(Limit::BodyBytes),
            ReceiveError::Body(
                BodyError::DecodedTooLarge { .. } | BodyError::AnnouncedTooLarge { .. },
            ) => Some(Limit::DecodedBytes),
            _ => None,
        }
    }

    /// Logs the refusal: a warning when the collector failed in a way
    /// nothing else reports (a store that cannot append, a bug), else at
    /// debug level. A client's mistake is not the operator's problem, and a
    /// full disk or a busy pipeline is logged once by the pipeline when its
    /// state changes, not once per refused retry.
    pub fn log(&self, route: &'static str) {
        if matches!(
            self,
            ReceiveError::MetricStore(_) | ReceiveError::Internal(_)
        ) {
            tracing::warn!(route, error = %self, "ingest request failed");
        } else {
            tracing::debug!(route, error = %self, "ingest request refused");
        }
    }
}

fn body_status(error: &BodyError) -> StatusCode {
    match error {
        BodyError::TooLarge { .. }
        | BodyError::DecodedTooLarge { .. }
        | BodyError::AnnouncedTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        BodyError::UnsupportedEncoding { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        BodyError::Gzip(_) | BodyError::Snappy(_) | BodyError::Read(_) => StatusCode::BAD_REQUEST,
    }
}

impl From<ReceiveError> for Status {
    fn from(error: ReceiveError) -> Status {
        error.log("otlp/grpc");
        Status::new(error.grpc_code(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn limited() -> ReceiveError {
        ReceiveError::RateLimited(RateLimited {
            client: IpAddr::V4(Ipv4Addr::LOCALHOST),
            bytes_per_second: 10,
            retry_after: Duration::from_secs(7),
        })
    }

    /// The codes real senders depend on: retry 429/503, drop 400.
    #[test]
    fn each_refusal_has_its_code_in_every_protocol() {
        let cases: Vec<(ReceiveError, tonic::Code, u16, Option<u64>, &str)> = vec![
            (
                ReceiveError::Malformed("bad".into()),
                tonic::Code::InvalidArgument,
                400,
                None,
                "illegal_argument_exception",
            ),
            (
                ReceiveError::Body(BodyError::TooLarge { limit: 1 }),
                tonic::Code::ResourceExhausted,
                413,
                None,
                "content_too_long_exception",
            ),
            (
                ReceiveError::Body(BodyError::Gzip("eof".into())),
                tonic::Code::InvalidArgument,
                400,
                None,
                "parse_exception",
            ),
            (
                ReceiveError::Body(BodyError::UnsupportedEncoding {
                    found: "\"br\"".into(),
                    expected: "expected gzip or identity",
                }),
                tonic::Code::InvalidArgument,
                415,
                None,
                "illegal_argument_exception",
            ),
            (
                limited(),
                tonic::Code::ResourceExhausted,
                429,
                Some(7),
                "es_rejected_execution_exception",
            ),
            (
                ReceiveError::Ingest(IngestError::Busy),
                tonic::Code::ResourceExhausted,
                429,
                Some(1),
                "es_rejected_execution_exception",
            ),
            (
                ReceiveError::Ingest(IngestError::Starting),
                tonic::Code::Unavailable,
                503,
                Some(5),
                "unavailable_shards_exception",
            ),
            (
                ReceiveError::Ingest(IngestError::Storage("no space left".into())),
                tonic::Code::Unavailable,
                503,
                Some(5),
                "unavailable_shards_exception",
            ),
            (
                ReceiveError::Ingest(IngestError::ShuttingDown),
                tonic::Code::Unavailable,
                503,
                Some(5),
                "unavailable_shards_exception",
            ),
            (
                ReceiveError::MetricStore("failed to store the samples: full".into()),
                tonic::Code::Unavailable,
                503,
                Some(5),
                "unavailable_shards_exception",
            ),
        ];
        for (error, code, status, retry_after, elastic_type) in cases {
            assert_eq!(error.grpc_code(), code, "{error}");
            for flavour in [Flavour::OtlpHttp, Flavour::Elastic] {
                let (http, wait) = error.http(flavour);
                assert_eq!(http.as_u16(), status, "{error}");
                assert_eq!(wait.map(|wait| wait.as_secs()), retry_after, "{error}");
            }
            assert_eq!(error.elastic_type(), elastic_type, "{error}");
        }
    }

    #[test]
    fn a_grpc_status_carries_the_code_and_the_message() {
        let status = Status::from(limited());
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "ingest rate limit of 10 bytes/s exceeded for client 127.0.0.1; retry after 7 s"
        );
    }

    #[test]
    fn remote_write_answers_a_store_failure_with_500() {
        let error = ReceiveError::MetricStore("failed to store the samples: full".into());
        assert_eq!(
            error.http(Flavour::RemoteWrite),
            (StatusCode::INTERNAL_SERVER_ERROR, None)
        );
        assert_eq!(
            limited().http(Flavour::RemoteWrite),
            (StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(7)))
        );
    }

    #[test]
    fn the_size_limits_are_counted_by_name() {
        assert_eq!(
            ReceiveError::Body(BodyError::TooLarge { limit: 1 }).limit(),
            Some(Limit::BodyBytes)
        );
        assert_eq!(
            ReceiveError::Body(BodyError::AnnouncedTooLarge { size: 2, limit: 1 }).limit(),
            Some(Limit::DecodedBytes)
        );
        assert_eq!(limited().limit(), None);
    }
}
