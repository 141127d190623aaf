//! Alertmanager silences from Sightline's Alerts view: the silence
//! endpoints of Alertmanager's API v2, passed through to the Alertmanagers
//! of `alerting.alertmanagers` (as Grafana's Alertmanager data source does),
//! so the UI lists, creates and expires silences where they take effect.
//!
//! - `GET /api/alertmanager/api/v2/silences[?filter=...]`: the silences;
//! - `POST /api/alertmanager/api/v2/silences`: create (or update, with an
//!   `id`) one, Alertmanager's `PostableSilence`; answers `{"silenceID"}`;
//! - `DELETE /api/alertmanager/api/v2/silence/{id}`: expire one.
//!
//! Each request goes to the configured Alertmanagers in order until one
//! answers (an HA pair shares its silences by gossip); Alertmanager's own
//! status and body are passed back, so its validation messages reach the
//! user. Only these three endpoints are forwarded, with a timeout and a
//! cap on the bytes read back. `GET /api/alertmanager/status` says which
//! Alertmanagers are configured (none: the UI explains how to add one).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};

use crate::alerting::Notifier;

/// How long one Alertmanager may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes read back from an Alertmanager (a silence list is small;
/// this bounds a misbehaving one).
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Most bytes of a silence sent to Alertmanager.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Clone)]
struct Proxy {
    notifier: Arc<Notifier>,
}

/// The routes; the Alertmanagers are read from `notifier` per request, so
/// a config reload applies to the next one.
pub(crate) fn router(notifier: Arc<Notifier>) -> Router {
    let proxy = Proxy { notifier };
    Router::new()
        .route("/api/alertmanager/status", get(status))
        .route(
            "/api/alertmanager/api/v2/silences",
            get(list_silences).post(post_silence),
        )
        .route(
            "/api/alertmanager/api/v2/silence/{id}",
            delete(expire_silence),
        )
        .with_state(proxy)
}

async fn status(State(proxy): State<Proxy>) -> Response {
    let alertmanagers = proxy.notifier.alertmanager_bases();
    axum::Json(serde_json::json!({ "alertmanagers": alertmanagers })).into_response()
}

async fn list_silences(State(proxy): State<Proxy>, RawQuery(query): RawQuery) -> Response {
    let path = match query {
        Some(query) => format!("/api/v2/silences?{query}"),
        None => "/api/v2/silences".to_string(),
    };
    proxy.forward(Method::GET, &path, None).await
}

async fn post_silence(State(proxy): State<Proxy>, body: Bytes) -> Response {
    if body.len() > MAX_REQUEST_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a silence may have at most {MAX_REQUEST_BYTES} bytes"),
        );
    }
    // Alertmanager checks the silence itself; this only refuses what is
    // not JSON, so its message is about the body, not a proxy failure.
    if let Err(parse) = serde_json::from_slice::<serde_json::Value>(&body) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("the silence is not JSON: {parse}"),
        );
    }
    proxy
        .forward(Method::POST, "/api/v2/silences", Some(body))
        .await
}

async fn expire_silence(State(proxy): State<Proxy>, Path(id): Path<String>) -> Response {
    // Alertmanager's ids are UUIDs; anything else is refused before it
    // could reach another path.
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a silence id"),
        );
    }
    proxy
        .forward(Method::DELETE, &format!("/api/v2/silence/{id}"), None)
        .await
}

impl Proxy {
    /// Sends the request to each Alertmanager in turn until one answers;
    /// passes its answer back.
    async fn forward(&self, method: Method, path: &str, body: Option<Bytes>) -> Response {
        let bases = self.notifier.alertmanager_bases();
        if bases.is_empty() {
            return error(
                StatusCode::NOT_FOUND,
                "no Alertmanager is configured: add one under alerting.alertmanagers in the collector's config file".into(),
            );
        }
        let mut failures = Vec::new();
        for base in &bases {
            let mut request = self
                .notifier
                .client()
                .request(method.clone(), format!("{base}{path}"))
                .timeout(TIMEOUT);
            if let Some(body) = &body {
                request = request
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            match request.send().await {
                Ok(response) => return pass_back(base, response).await,
                Err(failure) => failures.push(format!("{base}: {failure}")),
            }
        }
        error(
            StatusCode::BAD_GATEWAY,
            format!("no Alertmanager answered: {}", failures.join("; ")),
        )
    }
}

/// Alertmanager's status, content type and body (at most
/// [`MAX_RESPONSE_BYTES`]); a refusal as `{"error"}` naming the
/// Alertmanager and carrying its message, as the collector's own errors.
async fn pass_back(base: &str, mut response: reqwest::Response) -> Response {
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| HeaderValue::from_bytes(value.as_bytes()).ok())
        .unwrap_or_else(|| HeaderValue::from_static("application/json"));
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return error(
                        StatusCode::BAD_GATEWAY,
                        format!("the Alertmanager's answer is over {MAX_RESPONSE_BYTES} bytes"),
                    );
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(failure) => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    format!("reading the Alertmanager's answer failed: {failure}"),
                );
            }
        }
    }
    if !status.is_success() {
        return error(
            status,
            format!("Alertmanager {base}: {}", refusal_text(&body)),
        );
    }
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// What an Alertmanager's error body says: a JSON string (its validation
/// errors), an object's `message` or `error`, or the text itself.
fn refusal_text(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::String(text)) => text,
        Ok(serde_json::Value::Object(object)) => object
            .get("message")
            .or_else(|| object.get("error"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| serde_json::Value::Object(object).to_string()),
        _ => String::from_utf8_lossy(body).trim().to_string(),
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alertmanager_refusal_is_told_in_its_own_words() {
        assert_eq!(
            refusal_text(br#""silence invalid: invalid label matcher 0: invalid label name \"\"""#),
            r#"silence invalid: invalid label matcher 0: invalid label name """#
        );
        assert_eq!(
            refusal_text(br#"{"code": 422, "message": "endsAt in body is required"}"#),
            "endsAt in body is required"
        );
        assert_eq!(refusal_text(b"not found\n"), "not found");
    }
}
