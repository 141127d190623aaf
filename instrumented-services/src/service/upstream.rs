//! Calls from one shop service to another: a client span per call, the W3C
//! trace context and the request id in the headers, and failures mapped to
//! [`AppError::Upstream`].

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use tracing::Instrument as _;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::AppError;
use crate::propagation::{inject_context, set_request_id_header};

/// One call to make.
pub(crate) struct Call<'a> {
    /// The called service's name (`peer.service`).
    pub(crate) service: &'static str,
    /// HTTP method.
    pub(crate) method: Method,
    /// The called service's base URL.
    pub(crate) base_url: &'a str,
    /// The path, e.g. `/reservations`.
    pub(crate) path: &'a str,
    /// The route template for the span name, e.g. `/reservations/{id}`.
    pub(crate) route: &'a str,
    /// The request id to pass on.
    pub(crate) request_id: &'a str,
    /// A JSON body, if any.
    pub(crate) body: Option<&'a serde_json::Value>,
    /// A bearer token to pass on, if any.
    pub(crate) bearer: Option<&'a str>,
    /// `client` for request/response, `producer` for fire-and-forget events.
    pub(crate) kind: &'static str,
}

/// What the called service answered.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: serde_json::Value,
}

impl Call<'_> {
    /// Makes the call inside a client span; answers whatever status the
    /// service answered, and an error only when it could not be reached.
    pub(crate) async fn send(self, http: &reqwest::Client) -> Result<Answer, AppError> {
        let url = format!("{}{}", self.base_url, self.path);
        let span_name = format!("{} {}", self.method, self.route);
        let span = tracing::info_span!(
            "http_client",
            otel.name = span_name.as_str(),
            otel.kind = self.kind,
            otel.status_code = Empty,
            http.method = self.method.as_str(),
            url.full = url.as_str(),
            peer.service = self.service,
            http.status_code = Empty,
            request_id = self.request_id,
        );
        let mut headers = HeaderMap::new();
        inject_context(&span.context(), &mut headers);
        set_request_id_header(&mut headers, self.request_id);
        if let Some(token) = self.bearer
            && let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
            headers.insert(http::header::AUTHORIZATION, value);
        }
        let mut request = http.request(self.method.clone(), &url).headers(headers);
        if let Some(body) = self.body {
            request = request.json(body);
        }
        let call = async {
            let response = request.send().await?;
            let status = response.status();
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes))
        };
        match call.instrument(span.clone()).await {
            Ok((status, bytes)) => {
                span.record("http.status_code", status.as_u16());
                if status.is_server_error() {
                    span.record("otel.status_code", "ERROR");
                }
                let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                Ok(Answer { status, body })
            }
            Err(error) => {
                span.record("otel.status_code", "ERROR");
                let message = error_chain(&error);
                let service = self.service;
                span.in_scope(
                    || tracing::error!(error = %message, %url, peer = service, "call failed"),
                );
                Err(AppError::Upstream { service, message })
            }
        }
    }
}

/// `error: cause: cause`, since reqwest's own message omits the causes.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
