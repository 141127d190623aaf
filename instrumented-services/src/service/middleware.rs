//! The request middleware shared by every traced route.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use opentelemetry::trace::TraceContextExt as _;
use tracing::Instrument as _;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::faults::FaultOutcome;
use super::metrics::FAULTS_INJECTED_TOTAL;
use super::{AppState, ServiceRole};
use crate::propagation::{
    RequestId, extract_context, request_id_or_generate, set_request_id_header,
};

/// Wraps a request in a server span and gives it a request id.
///
/// - the request id is the caller's `X-Request-ID` or a fresh one; handlers
///   read it as `Extension<RequestId>`, and it is echoed in the response;
/// - the span is named `<METHOD> <route>` and is a child of the caller's
///   span when the request carries a W3C `traceparent`; it carries
///   `http.method`, `http.route`, `http.status_code` and `request_id`, and
///   its status is `ERROR` on a 5xx answer;
/// - one `request completed` log line per request, inside the span, so every
///   service a request touched logs its request id and trace id;
/// - injected faults ([`super::faults`]) apply inside the span: added
///   latency, then `500 injected fault` or `503 down` instead of the handler;
/// - `http_requests_total` and `http_request_duration_seconds` count it.
pub async fn trace_request(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = match request.extensions().get::<MatchedPath>() {
        Some(matched) => matched.as_str().to_owned(),
        None => request.uri().path().to_owned(),
    };
    let request_id = request_id_or_generate(request.headers());
    let span_name = format!("{method} {route}");
    let span = tracing::info_span!(
        "http_request",
        otel.name = span_name.as_str(),
        otel.kind = "server",
        otel.status_code = Empty,
        http.method = method.as_str(),
        http.route = route.as_str(),
        http.status_code = Empty,
        request_id = request_id.as_str(),
    );
    let caller_context = extract_context(request.headers());
    if caller_context.span().span_context().is_valid() {
        // Cannot fail: the span has not been started yet.
        let _ = span.set_parent(caller_context);
    }
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));

    let handle = async {
        let (latency, outcome) = state.faults.get().draw();
        if !latency.is_zero() {
            state
                .metrics
                .inc(FAULTS_INJECTED_TOTAL, &[("kind", "latency")]);
            // Payment's delay is its card provider's: the charge handler
            // waits it out inside the provider call, where a slow provider
            // would show.
            if state.role == ServiceRole::Payment && route == super::payment::CHARGES_ROUTE {
                request
                    .extensions_mut()
                    .insert(super::payment::ProviderDelay(latency));
            } else {
                tokio::time::sleep(latency).await;
            }
        }
        match outcome {
            FaultOutcome::Proceed => next.run(request).await,
            FaultOutcome::Error => {
                state
                    .metrics
                    .inc(FAULTS_INJECTED_TOTAL, &[("kind", "error")]);
                tracing::error!(
                    fault = "error",
                    error_type = "injected_fault",
                    "injected fault"
                );
                let body = serde_json::json!({ "error": "injected fault" });
                (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(body),
                )
                    .into_response()
            }
            FaultOutcome::Down => {
                state
                    .metrics
                    .inc(FAULTS_INJECTED_TOTAL, &[("kind", "down")]);
                let body = serde_json::json!({ "error": "service down (injected fault)" });
                (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(body),
                )
                    .into_response()
            }
        }
    };
    let mut response = handle.instrument(span.clone()).await;

    let status = response.status();
    span.record("http.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let otel = span.context();
    let span_context = otel.span().span_context().clone();
    // Only a sampled trace can be opened from its exemplar.
    let trace = (span_context.is_valid() && span_context.is_sampled()).then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    });
    state.metrics.observe_request(
        method.as_str(),
        &route,
        status.as_u16(),
        started.elapsed().as_secs_f64(),
        trace,
    );
    if state.role == ServiceRole::Payment {
        super::payment::count_failed_charge(&state.metrics, &route, status);
    }
    // Microsecond precision, without float noise in the log line.
    let elapsed_ms = started.elapsed().as_micros() as f64 / 1000.0;
    span.in_scope(|| {
        let status = status.as_u16();
        let method = method.as_str();
        let route = route.as_str();
        if status >= 500 {
            let error_type = error_type(status);
            tracing::error!(
                method,
                route,
                status,
                elapsed_ms,
                error_type,
                "request failed"
            );
        } else if status >= 400 {
            tracing::warn!(method, route, status, elapsed_ms, "request rejected");
        } else {
            tracing::info!(method, route, status, elapsed_ms, "request completed");
        }
    });
    set_request_id_header(response.headers_mut(), &request_id);
    response
}

/// What failed a request, by its 5xx status: the `error_type` its log line
/// carries, which `| stats count() by service, error_type` groups.
fn error_type(status: u16) -> &'static str {
    match status {
        502 => "bad_gateway",
        503 => "unavailable",
        504 => "timeout",
        _ => "internal",
    }
}
