//! The payment service: a simulated external payment provider, with a
//! provider round trip of realistic (long-tailed) latency and occasional
//! declines.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use super::metrics::{Metrics, PAYMENTS_FAILED_TOTAL, PAYMENTS_PROCESSED_TOTAL};
use super::{AppError, AppState};

/// The route whose failures `payments_failed_total` counts.
const CHARGES_ROUTE: &str = "/charges";

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new().route(CHARGES_ROUTE, post(charge))
}

/// The simulated provider's behaviour.
pub(super) struct PaymentState {
    decline_rate: f64,
}

impl PaymentState {
    pub(super) fn new(decline_rate: f64) -> Self {
        Self { decline_rate }
    }
}

/// `POST /charges` body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChargeRequest {
    pub(super) order_id: String,
    pub(super) user_id: String,
    pub(super) amount_cents: u64,
}

/// Counts a failed charge, whatever failed it (a decline, a handler error
/// or an injected fault): called by the request middleware for every
/// answered request of the payment service.
pub(super) fn count_failed_charge(metrics: &Metrics, route: &str, status: StatusCode) {
    if route != CHARGES_ROUTE || status.is_success() {
        return;
    }
    let reason = match status {
        StatusCode::PAYMENT_REQUIRED => "declined",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        status if status.is_client_error() => "invalid",
        _ => "error",
    };
    metrics.inc(PAYMENTS_FAILED_TOTAL, &[("reason", reason)]);
}

/// A provider round trip: mostly 40-120 ms, sometimes much slower.
fn provider_latency() -> Duration {
    let mut rng = rand::rng();
    let base = rng.random_range(40..120);
    let tail = if rng.random_bool(0.05) {
        rng.random_range(200..600)
    } else {
        0
    };
    Duration::from_millis(base + tail)
}

async fn charge(
    State(state): State<Arc<AppState>>,
    body: Result<Json<ChargeRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    let Json(request) = body?;
    let amount = request.amount_cents as f64 / 100.0;
    let provider = tracing::info_span!(
        "provider.authorize",
        otel.kind = "client",
        peer.service = "card-provider",
        order_id = %request.order_id,
        amount,
    );
    let declined = rand::rng().random_bool(state.payment.decline_rate);
    tokio::time::sleep(provider_latency())
        .instrument(provider)
        .await;
    if declined {
        tracing::warn!(
            order_id = %request.order_id,
            user_id = %request.user_id,
            amount,
            "payment declined by the provider"
        );
        return Err(AppError::PaymentDeclined("card declined".into()));
    }
    let payment_id = format!("pay-{}", crate::random_hex(12));
    state.metrics.inc(PAYMENTS_PROCESSED_TOTAL, &[]);
    tracing::info!(
        order_id = %request.order_id,
        user_id = %request.user_id,
        amount,
        %payment_id,
        "payment charged"
    );
    let body = serde_json::json!({ "payment_id": payment_id, "status": "captured" });
    Ok((StatusCode::CREATED, Json(body)))
}
