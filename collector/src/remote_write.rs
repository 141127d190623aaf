//! Prometheus remote-write 1.0 receiver: `POST /api/v1/write` on the query
//! port, the HTTP transport of [`sightline_metrics::remote_write`].
//!
//! What a Prometheus server (or the Grafana agent, or vmagent) configured
//! with `remote_write: [{url: http://collector:7070/api/v1/write}]` sends:
//!
//! - the body is a `prometheus.WriteRequest` protobuf
//!   (`Content-Type: application/x-protobuf`), compressed with snappy's block
//!   format (`Content-Encoding: snappy`); both headers are checked and a
//!   mismatch answers 415 (remote-write 2.0, `proto=io.prometheus.write.v2.Request`,
//!   is refused that way too);
//! - the compressed body is capped at [`MAX_BODY_BYTES`] and the size the
//!   snappy header announces at [`MAX_DECODED_BYTES`]: 413 before anything
//!   is decompressed (the body is read by [`crate::http_body`], as for every
//!   HTTP ingest route);
//! - the request is charged to its client's ingest rate by its
//!   `Content-Length` before the body is read: 429 with `Retry-After` over it;
//! - samples are appended to the metric store on the blocking pool and the
//!   answer (204) waits for the store's fsync: what is acknowledged is durable;
//! - bad input answers 400 with what was wrong and where (an undecodable
//!   body, a series without `__name__`, out-of-order samples, native
//!   histograms, which Sightline does not store). As in Prometheus, the
//!   other samples of the batch are kept: a 400 tells the sender not to
//!   retry a batch that would fail again; a store failure answers 500.
//!
//! Every error is plain text, with the status [`crate::error`] decides.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use sightline_metrics::remote_write::{RemoteWrite, RemoteWriteError};

use crate::error::{Flavour, ReceiveError};
use crate::http_body::{self, BodyRules, Encodings};
use crate::ratelimit::{self, RateLimiter};

/// Largest compressed request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Largest decompressed request accepted, in bytes.
pub const MAX_DECODED_BYTES: usize = 32 * 1024 * 1024;

const BODY: BodyRules = BodyRules {
    max_body_bytes: MAX_BODY_BYTES,
    max_decoded_bytes: MAX_DECODED_BYTES,
    encodings: Encodings::Snappy,
};

#[derive(Clone)]
struct Receiver {
    service: RemoteWrite,
    rate_limiter: Option<Arc<RateLimiter>>,
}

/// The remote-write route, merged into the query API's router.
pub fn router(service: RemoteWrite, rate_limiter: Option<Arc<RateLimiter>>) -> Router {
    Router::new()
        .route("/api/v1/write", post(write))
        .with_state(Receiver {
            service,
            rate_limiter,
        })
}

async fn write(State(receiver): State<Receiver>, request: Request) -> Response {
    match receive(&receiver, request).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error_response(error),
    }
}

/// A refusal as plain text.
fn error_response(error: ReceiveError) -> Response {
    error.log("remote write");
    let (status, retry_after) = error.http(Flavour::RemoteWrite);
    let mut response = (
        status,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        error.to_string(),
    )
        .into_response();
    if let Some(wait) = retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(wait.as_secs()));
    }
    response
}

async fn receive(receiver: &Receiver, request: Request) -> Result<(), ReceiveError> {
    let (parts, body) = request.into_parts();
    let client = http_body::client(&parts.extensions);
    let bytes = http_body::content_length(&parts.headers);
    ratelimit::admit(receiver.rate_limiter.as_deref(), Some(client), bytes)?;
    check_content_type(&parts.headers)?;
    let received = http_body::receive(body, &parts.headers, &BODY).await?;
    let service = receiver.service.clone();
    tokio::task::spawn_blocking(move || {
        let decoded = received.decode()?;
        service.write(&decoded).map_err(refusal)
    })
    .await
    .map_err(|error| ReceiveError::Internal(error.to_string()))?
}

/// What the metrics pipeline refused, as ingest refusals are answered.
fn refusal(error: RemoteWriteError) -> ReceiveError {
    match error {
        RemoteWriteError::Malformed(message) => ReceiveError::Malformed(message),
        RemoteWriteError::Refused { .. } => ReceiveError::Malformed(error.to_string()),
        RemoteWriteError::Storage(_) => ReceiveError::MetricStore(error.to_string()),
    }
}

/// `application/x-protobuf`, and when a `proto=` parameter is given, the
/// remote-write 1.0 message.
fn check_content_type(headers: &HeaderMap) -> Result<(), ReceiveError> {
    let content_type = headers.get(CONTENT_TYPE).map_or("(none)", |value| {
        value.to_str().unwrap_or("(not text)").trim()
    });
    let mut parts = content_type.split(';').map(str::trim);
    let media_type = parts.next().unwrap_or_default();
    if !media_type.eq_ignore_ascii_case("application/x-protobuf") {
        return Err(ReceiveError::UnsupportedContentType(format!(
            "unsupported Content-Type {content_type:?}, remote write needs application/x-protobuf"
        )));
    }
    for parameter in parts {
        if let Some(proto) = parameter.strip_prefix("proto=")
            && proto != "prometheus.WriteRequest"
        {
            return Err(ReceiveError::UnsupportedContentType(format!(
                "unsupported remote write message {proto:?}: only remote write 1.0 (prometheus.WriteRequest) is supported"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_body::Received;
    use axum::body::Bytes;
    use axum::http::header::CONTENT_ENCODING;

    /// The body after the remote-write route's checks and decoding.
    fn decode(body: &[u8]) -> Result<sightline_metrics::remote_write::WriteRequest, ReceiveError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("snappy"));
        let received = Received::in_memory(Bytes::copy_from_slice(body), &headers, &BODY)?;
        sightline_metrics::remote_write::decode(&received.decode()?).map_err(refusal)
    }

    #[test]
    fn the_announced_decompressed_size_is_capped_before_decompressing() {
        // A snappy block starts with its decompressed length as a varint.
        let mut body = Vec::new();
        let mut length = (MAX_DECODED_BYTES + 1) as u64;
        while length >= 0x80 {
            body.push((length as u8) | 0x80);
            length >>= 7;
        }
        body.push(length as u8);
        let error = decode(&body).unwrap_err();
        assert_eq!(
            error.http(Flavour::RemoteWrite).0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert!(error.to_string().contains("over the limit"), "{error}");
    }

    #[test]
    fn refusals_keep_their_messages_and_a_store_failure_is_a_500() {
        let refused = refusal(RemoteWriteError::Refused {
            refused: 1,
            total: 2,
            details: "timeseries[0] {}: no __name__ label".into(),
        });
        assert_eq!(
            refused.http(Flavour::RemoteWrite).0,
            StatusCode::BAD_REQUEST
        );
        assert!(refused.to_string().starts_with("1 of 2 samples refused"));
        let failed = refusal(RemoteWriteError::Storage("disk full".into()));
        assert_eq!(
            failed.http(Flavour::RemoteWrite).0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(failed.to_string(), "failed to store the samples: disk full");
    }

    proptest::proptest! {
        #[test]
        fn no_bytes_panic_the_decoder(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode(&body);
            let compressed = snap::raw::Encoder::new().compress_vec(&body).unwrap();
            let _ = decode(&compressed);
        }
    }
}
