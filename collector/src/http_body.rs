//! The one body reader of every HTTP ingest route: OTLP/HTTP (`/v1/logs`,
//! `/v1/traces`, `/v1/metrics`), Elasticsearch `_bulk` and Prometheus
//! remote-write.
//!
//! A route describes its body with [`BodyRules`]: the largest body received,
//! the largest body once decoded, and the `Content-Encoding`s it takes
//! (identity and gzip for OTLP and `_bulk`, snappy's block format for
//! remote-write). [`receive`] refuses an encoding the route does not take
//! and a body over the limit as soon as it can tell (a `Content-Length`
//! over the limit before anything is read); [`Received::decode`] undoes the
//! encoding without producing more than the decoded limit, and is meant for
//! the blocking pool. Errors are [`BodyError`]s, answered through
//! [`crate::error`] like every other refusal.
//!
//! The client's address and the request's announced size, what the ingest
//! rate limit charges, come from [`client`] and [`content_length`].

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use axum::http::{Extensions, HeaderMap};
use tokio_stream::StreamExt;

/// What a route accepts as a request body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyRules {
    /// Largest body accepted as received (compressed or not), in bytes.
    pub(crate) max_body_bytes: usize,
    /// Largest body accepted after decoding, in bytes.
    pub(crate) max_decoded_bytes: usize,
    /// The `Content-Encoding`s taken.
    pub(crate) encodings: Encodings,
}

/// The `Content-Encoding`s a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encodings {
    /// None, `identity` or `gzip` (OTLP/HTTP, `_bulk`).
    IdentityOrGzip,
    /// `snappy` (block format) and nothing else (remote-write).
    Snappy,
}

/// How one body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Snappy,
}

/// What can go wrong with a request body before its content is decoded.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is over the limit of {limit} bytes (max_body_bytes)")]
    TooLarge { limit: usize },
    #[error("decompressed request body is over the limit of {limit} bytes (max_decoded_bytes)")]
    DecodedTooLarge { limit: usize },
    /// Snappy announces the decoded size up front: refused before decoding.
    #[error("snappy-decoded request would be {size} bytes, over the limit of {limit} bytes")]
    AnnouncedTooLarge { size: usize, limit: usize },
    #[error("unsupported Content-Encoding {found}, {expected}")]
    UnsupportedEncoding {
        found: String,
        expected: &'static str,
    },
    #[error("malformed gzip body: {0}")]
    Gzip(String),
    #[error("malformed snappy body: {0}")]
    Snappy(String),
    #[error("failed to read the request body: {0}")]
    Read(String),
}

/// A body as received, still encoded.
#[derive(Debug)]
pub(crate) struct Received {
    bytes: Bytes,
    encoding: Encoding,
    max_decoded_bytes: usize,
}

impl Received {
    /// A body already in memory, checked as [`receive`] checks one (fuzz
    /// targets and tests).
    pub(crate) fn in_memory(
        bytes: Bytes,
        headers: &HeaderMap,
        rules: &BodyRules,
    ) -> Result<Received, BodyError> {
        let encoding = encoding(headers, rules.encodings)?;
        if bytes.len() > rules.max_body_bytes {
            return Err(BodyError::TooLarge {
                limit: rules.max_body_bytes,
            });
        }
        Ok(Received {
            bytes,
            encoding,
            max_decoded_bytes: rules.max_decoded_bytes,
        })
    }

    /// Undoes the encoding, refusing to produce more than the route's
    /// decoded limit. CPU work: run it on the blocking pool.
    pub(crate) fn decode(self) -> Result<Bytes, BodyError> {
        let limit = self.max_decoded_bytes;
        match self.encoding {
            Encoding::Identity if self.bytes.len() > limit => {
                Err(BodyError::DecodedTooLarge { limit })
            }
            Encoding::Identity => Ok(self.bytes),
            Encoding::Gzip => gunzip(&self.bytes, limit).map(Bytes::from),
            Encoding::Snappy => unsnappy(&self.bytes, limit).map(Bytes::from),
        }
    }
}

/// Checks the request's `Content-Encoding` against `rules`, then reads the
/// body, refusing it once it is over `rules.max_body_bytes`.
pub(crate) async fn receive(
    body: Body,
    headers: &HeaderMap,
    rules: &BodyRules,
) -> Result<Received, BodyError> {
    let encoding = encoding(headers, rules.encodings)?;
    let limit = rules.max_body_bytes;
    let announced = content_length(headers);
    if announced > limit {
        return Err(BodyError::TooLarge { limit });
    }
    let mut stream = body.into_data_stream();
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| BodyError::Read(error.to_string()))?;
        let received = first.as_ref().map_or(0, Bytes::len) + joined.len() + chunk.len();
        if received > limit {
            return Err(BodyError::TooLarge { limit });
        }
        match first.take() {
            // One chunk is the common case: kept as it is, without a copy.
            None if joined.is_empty() => first = Some(chunk),
            None => joined.extend_from_slice(&chunk),
            Some(earlier) => {
                joined.reserve(announced.max(received).min(limit));
                joined.extend_from_slice(&earlier);
                joined.extend_from_slice(&chunk);
            }
        }
    }
    let bytes = match first {
        Some(only) => only,
        None => Bytes::from(joined),
    };
    Ok(Received {
        bytes,
        encoding,
        max_decoded_bytes: rules.max_decoded_bytes,
    })
}

/// The request's `Content-Encoding`, when `accepted` takes it.
fn encoding(headers: &HeaderMap, accepted: Encodings) -> Result<Encoding, BodyError> {
    let value = headers.get(CONTENT_ENCODING).map(|value| {
        value
            .to_str()
            .unwrap_or("(not text)")
            .trim()
            .to_ascii_lowercase()
    });
    match accepted {
        Encodings::IdentityOrGzip => match value.as_deref() {
            None | Some("" | "identity") => Ok(Encoding::Identity),
            Some("gzip" | "x-gzip") => Ok(Encoding::Gzip),
            Some(other) => Err(BodyError::UnsupportedEncoding {
                found: format!("{other:?}"),
                expected: "expected gzip or identity",
            }),
        },
        Encodings::Snappy => match value.as_deref() {
            Some("snappy") => Ok(Encoding::Snappy),
            found => Err(BodyError::UnsupportedEncoding {
                found: found.map_or("(none)".to_string(), |value| format!("{value:?}")),
                expected: "remote write needs snappy",
            }),
        },
    }
}

/// Decompresses (possibly multi-member) gzip, reading at most one byte past
/// `limit` so a bomb allocates no more than about twice the limit.
fn gunzip(compressed: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut decoded = Vec::with_capacity(compressed.len().saturating_mul(4).min(limit));
    let mut reader = flate2::read::MultiGzDecoder::new(compressed).take(limit as u64 + 1);
    reader
        .read_to_end(&mut decoded)
        .map_err(|error| BodyError::Gzip(error.to_string()))?;
    if decoded.len() > limit {
        return Err(BodyError::DecodedTooLarge { limit });
    }
    Ok(decoded)
}

/// Undoes snappy's block format after checking the size it announces.
fn unsnappy(compressed: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let size = snap::raw::decompress_len(compressed)
        .map_err(|error| BodyError::Snappy(error.to_string()))?;
    if size > limit {
        return Err(BodyError::AnnouncedTooLarge { size, limit });
    }
    snap::raw::Decoder::new()
        .decompress_vec(compressed)
        .map_err(|error| BodyError::Snappy(error.to_string()))
}

/// The request's media type (`Content-Type` without parameters, lower
/// case), `default` when it has none.
pub(crate) fn media_type(headers: &HeaderMap, default: &str) -> String {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or(default)
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The client's address, or `0.0.0.0` when the server did not record it.
pub(crate) fn client(extensions: &Extensions) -> IpAddr {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip())
}

/// The request's `Content-Length`, 0 when absent (a streamed body).
pub(crate) fn content_length(headers: &HeaderMap) -> usize {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<usize>().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Flavour, ReceiveError};
    use axum::http::{HeaderValue, StatusCode};
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    const OTLP: BodyRules = BodyRules {
        max_body_bytes: 8,
        max_decoded_bytes: 5,
        encodings: Encodings::IdentityOrGzip,
    };

    const SNAPPY: BodyRules = BodyRules {
        encodings: Encodings::Snappy,
        ..OTLP
    };

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn headers(encoding: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(encoding) = encoding {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        headers
    }

    fn status(error: BodyError) -> StatusCode {
        ReceiveError::from(error).http(Flavour::OtlpHttp).0
    }

    async fn read(
        body: impl Into<Body>,
        encoding: Option<&'static str>,
        rules: &BodyRules,
    ) -> Result<Bytes, BodyError> {
        receive(body.into(), &headers(encoding), rules)
            .await?
            .decode()
    }

    #[tokio::test]
    async fn gzip_is_undone_and_capped() {
        let decoded = read(
            gzip(b"hello"),
            Some("gzip"),
            &BodyRules {
                max_body_bytes: 1024,
                ..OTLP
            },
        )
        .await
        .unwrap();
        assert_eq!(decoded.as_ref(), b"hello");
        let error = read(
            gzip(b"hello!"),
            Some("GZIP"),
            &BodyRules {
                max_body_bytes: 1024,
                ..OTLP
            },
        )
        .await
        .unwrap_err();
        assert!(
            matches!(error, BodyError::DecodedTooLarge { limit: 5 }),
            "{error}"
        );
        let error = read("not gzip", Some("gzip"), &OTLP).await.unwrap_err();
        assert!(matches!(error, BodyError::Gzip(_)), "{error}");
        assert_eq!(status(error), StatusCode::BAD_REQUEST);
        let error = read("", Some("br"), &OTLP).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"unsupported Content-Encoding "br", expected gzip or identity"#
        );
        assert_eq!(status(error), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[tokio::test]
    async fn the_received_size_is_capped_with_or_without_content_length() {
        assert_eq!(read("12345", None, &OTLP).await.unwrap().as_ref(), b"12345");
        let error = read("123456789", None, &OTLP).await.unwrap_err();
        assert!(matches!(error, BodyError::TooLarge { limit: 8 }), "{error}");
        // Announced too large: refused before reading (the body is empty).
        let mut announced = headers(None);
        announced.insert(CONTENT_LENGTH, HeaderValue::from_static("9"));
        let error = receive(Body::empty(), &announced, &OTLP).await.unwrap_err();
        assert!(matches!(error, BodyError::TooLarge { limit: 8 }), "{error}");
        // Received in several chunks, joined in order.
        let chunks: Vec<Result<&'static str, std::io::Error>> = vec![Ok("ab"), Ok("cd"), Ok("e")];
        let body = Body::from_stream(tokio_stream::iter(chunks));
        let received = receive(body, &headers(None), &OTLP).await.unwrap();
        assert_eq!(received.decode().unwrap().as_ref(), b"abcde");
        let chunks: Vec<Result<&'static str, std::io::Error>> = vec![Ok("abcde"), Ok("fghi")];
        let body = Body::from_stream(tokio_stream::iter(chunks));
        let error = receive(body, &headers(None), &OTLP).await.unwrap_err();
        assert!(matches!(error, BodyError::TooLarge { limit: 8 }), "{error}");
    }

    #[tokio::test]
    async fn snappy_is_required_and_its_announced_size_checked_first() {
        let encoded = snap::raw::Encoder::new().compress_vec(b"hello").unwrap();
        let decoded = read(encoded, Some("snappy"), &SNAPPY).await.unwrap();
        assert_eq!(decoded.as_ref(), b"hello");
        let error = read("x", Some("gzip"), &SNAPPY).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"unsupported Content-Encoding "gzip", remote write needs snappy"#
        );
        let error = read("x", None, &SNAPPY).await.unwrap_err();
        assert!(error.to_string().contains("(none)"), "{error}");
        // A snappy block starts with its decompressed length as a varint.
        let error = read(vec![6], Some("snappy"), &SNAPPY).await.unwrap_err();
        assert!(
            matches!(error, BodyError::AnnouncedTooLarge { size: 6, limit: 5 }),
            "{error}"
        );
        let error = read(vec![0xff], Some("snappy"), &SNAPPY).await.unwrap_err();
        assert!(
            error.to_string().starts_with("malformed snappy body"),
            "{error}"
        );
    }

    #[test]
    fn the_client_is_the_connection_address_or_unspecified() {
        let mut extensions = Extensions::new();
        assert_eq!(client(&extensions), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        extensions.insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 7], 4318))));
        assert_eq!(client(&extensions), IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)));
    }
}
