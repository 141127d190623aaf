//! The gateway: the shop's public API, fronting the other services.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use tracing::Instrument as _;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::order::OrderRequest;
use super::{AppError, AppState, catalog};
use crate::propagation::{RequestId, inject_context, set_request_id_header};

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/orders", post(create_order))
        .route("/api/products", get(list_products))
}

async fn list_products() -> Json<&'static [catalog::Product]> {
    Json(&catalog::PRODUCTS)
}

/// Checks the order and forwards it to the order service, answering with
/// the order service's status and body.
async fn create_order(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    body: Result<Json<OrderRequest>, JsonRejection>,
) -> Result<Response, AppError> {
    let Json(order) = body?;
    order.validate()?;
    tracing::info!(
        user_id = %order.user_id,
        product_id = %order.product_id,
        quantity = order.quantity,
        "order received"
    );
    let (status, body) = call_order_service(&state, &request_id, &order).await?;
    let order_id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|answer| {
            answer
                .get("order_id")
                .and_then(|id| id.as_str())
                .map(str::to_owned)
        });
    match order_id {
        Some(order_id) if status.is_success() => tracing::info!(%order_id, "order placed"),
        _ => tracing::warn!(status = status.as_u16(), "order service refused the order"),
    }
    let content_type = HeaderValue::from_static("application/json");
    Ok((status, [(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// `POST <order-url>/orders` inside a client span, with the trace context
/// and the request id in the headers.
async fn call_order_service(
    state: &AppState,
    request_id: &str,
    order: &OrderRequest,
) -> Result<(StatusCode, axum::body::Bytes), AppError> {
    let url = format!("{}/orders", state.order_url);
    let span = tracing::info_span!(
        "http_client",
        otel.name = "POST /orders",
        otel.kind = "client",
        otel.status_code = Empty,
        http.method = "POST",
        url.full = url.as_str(),
        peer.service = "order",
        http.status_code = Empty,
        request_id,
    );
    let mut headers = HeaderMap::new();
    inject_context(&span.context(), &mut headers);
    set_request_id_header(&mut headers, request_id);

    let call = async {
        let response = state
            .http
            .post(&url)
            .headers(headers)
            .json(order)
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, body))
    };
    match call.instrument(span.clone()).await {
        Ok((status, body)) => {
            span.record("http.status_code", status.as_u16());
            if status.is_server_error() {
                span.record("otel.status_code", "ERROR");
            }
            Ok((status, body))
        }
        Err(error) => {
            span.record("otel.status_code", "ERROR");
            let message = error_chain(&error);
            span.in_scope(|| tracing::error!(error = %message, %url, "order service call failed"));
            Err(AppError::Upstream {
                service: "order",
                message,
            })
        }
    }
}

/// `error: cause: cause`, since reqwest's own message omits the causes.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
