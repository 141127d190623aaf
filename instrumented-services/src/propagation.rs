//! Context that travels with a request across HTTP hops: the `X-Request-ID`
//! header and the W3C trace context (`traceparent`, `tracestate`).
//!
//! The gateway accepts a caller's `X-Request-ID` (or, without one, its
//! `X-Correlation-ID`, the other name users send) or generates one
//! ([`request_id_or_generate`]); every service passes it on unchanged under
//! both names and echoes both in its responses. The OpenTelemetry context is written into
//! outgoing headers with [`inject_context`] and read back from incoming ones
//! with [`extract_context`], so a server span becomes a child of the client
//! span that called it.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The request id header, lowercase as HTTP/2 wants it.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The other name of the same id, read when `X-Request-ID` is absent.
pub const CORRELATION_ID_HEADER: &str = "x-correlation-id";

/// The longest caller-supplied request id we keep; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// A request id attached to the request's extensions by the HTTP middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// A fresh request id (UUID-like random hex).
pub fn generate_request_id() -> String {
    crate::random_uuid_like()
}

/// The request id a caller sent, if it is usable: 1 to 128 visible ASCII
/// characters. Anything else (empty, too long, control characters) is
/// ignored, because the value ends up in every log line of the request.
pub fn request_id_from_headers(headers: &HeaderMap) -> Option<String> {
    let name = if headers.contains_key(REQUEST_ID_HEADER) {
        REQUEST_ID_HEADER
    } else {
        CORRELATION_ID_HEADER
    };
    let value = headers.get(name)?.to_str().ok()?.trim();
    let usable = !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_LEN
        && value.bytes().all(|byte| byte.is_ascii_graphic());
    usable.then(|| value.to_owned())
}

/// The caller's request id, or a fresh one.
pub fn request_id_or_generate(headers: &HeaderMap) -> String {
    request_id_from_headers(headers).unwrap_or_else(generate_request_id)
}

/// Sets the `X-Request-ID` and `X-Correlation-ID` headers. Ids come from
/// [`request_id_or_generate`] so they are always valid header values; an
/// invalid one is skipped.
pub fn set_request_id_header(headers: &mut HeaderMap, request_id: &str) {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(CORRELATION_ID_HEADER, value.clone());
        headers.insert(REQUEST_ID_HEADER, value);
    }
}

/// Writes the W3C trace context of `context` into `headers`.
pub fn inject_context(context: &Context, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(context, &mut HeaderInjector(headers));
}

/// Reads the W3C trace context from `headers`; an empty context when there
/// is none or it is malformed.
pub fn extract_context(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// [`Injector`] over an [`http::HeaderMap`] (the type both axum and reqwest
/// use).
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(name) = HeaderName::from_bytes(key.as_bytes()) else {
            return;
        };
        let Ok(value) = HeaderValue::from_str(&value) else {
            return;
        };
        self.0.insert(name, value);
    }
}

/// [`Extractor`] over an [`http::HeaderMap`].
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };

    fn headers_with_request_id(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn caller_request_id_is_kept() {
        let headers = headers_with_request_id("req-42");
        assert_eq!(request_id_from_headers(&headers).as_deref(), Some("req-42"));
        assert_eq!(request_id_or_generate(&headers), "req-42");
    }

    #[test]
    fn a_correlation_id_is_the_request_id_when_there_is_no_request_id() {
        let mut headers = HeaderMap::new();
        headers.insert("X-Correlation-ID", HeaderValue::from_static("corr-7"));
        assert_eq!(request_id_from_headers(&headers).as_deref(), Some("corr-7"));
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("req-1"));
        assert_eq!(request_id_from_headers(&headers).as_deref(), Some("req-1"));
        let mut out = HeaderMap::new();
        set_request_id_header(&mut out, "corr-7");
        assert_eq!(out[REQUEST_ID_HEADER], "corr-7");
        assert_eq!(out[CORRELATION_ID_HEADER], "corr-7");
    }

    #[test]
    fn header_name_is_case_insensitive() {
        let mut headers = HeaderMap::new();
        headers.insert("X-Request-ID", HeaderValue::from_static("abc"));
        assert_eq!(request_id_from_headers(&headers).as_deref(), Some("abc"));
    }

    #[test]
    fn unusable_request_ids_are_replaced() {
        let too_long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        for bad in ["", "   ", "has space", too_long.as_str()] {
            let headers = headers_with_request_id(bad);
            assert_eq!(request_id_from_headers(&headers), None, "{bad:?}");
            let generated = request_id_or_generate(&headers);
            assert_eq!(generated.len(), 36, "{bad:?} -> {generated}");
        }
        assert_eq!(request_id_from_headers(&HeaderMap::new()), None);
    }

    #[test]
    fn generated_request_ids_are_fresh_and_roundtrip_through_headers() {
        let first = generate_request_id();
        assert_ne!(first, generate_request_id());
        let mut headers = HeaderMap::new();
        set_request_id_header(&mut headers, &first);
        assert_eq!(request_id_from_headers(&headers), Some(first));
    }

    #[test]
    fn traceparent_roundtrip() {
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let span_id = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        let span_context = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let context = Context::new().with_remote_span_context(span_context);

        let mut headers = HeaderMap::new();
        inject_context(&context, &mut headers);
        assert_eq!(
            headers.get("traceparent").unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );

        let extracted = extract_context(&headers);
        let extracted_span = extracted.span();
        let extracted = extracted_span.span_context();
        assert!(extracted.is_remote());
        assert_eq!(extracted.trace_id(), trace_id);
        assert_eq!(extracted.span_id(), span_id);
        assert!(extracted.is_sampled());
    }

    #[test]
    fn missing_or_malformed_traceparent_gives_an_empty_context() {
        assert!(!extract_context(&HeaderMap::new()).has_active_span());
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static("00-zz-yy-01"));
        let context = extract_context(&headers);
        assert!(!context.span().span_context().is_valid());
    }
}
