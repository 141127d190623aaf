//! The payment service: a simulated external payment provider, with a
//! provider round trip of realistic (long-tailed) latency and occasional
//! declines. The service's injected latency fault slows the provider (the
//! `provider.authorize` span), and a round trip over a second is logged.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Json, Router};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use super::metrics::{Metrics, PAYMENTS_FAILED_TOTAL, PAYMENTS_PROCESSED_TOTAL};
use super::{AppError, AppState};

/// The route whose failures `payments_failed_total` counts.
pub(super) const CHARGES_ROUTE: &str = "/charges";

/// An injected latency fault of the payment service: the card provider
/// answers this much later (the request middleware hands it over).
#[derive(Debug, Clone, Copy)]
pub(super) struct ProviderDelay(pub(super) Duration);

/// A provider round trip longer than this is logged as slow (the natural
/// tail stays under it).
const PROVIDER_BUDGET: Duration = Duration::from_secs(1);

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
    delay: Option<Extension<ProviderDelay>>,
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
    let round_trip = provider_latency() + delay.map(|Extension(delay)| delay.0).unwrap_or_default();
    tokio::time::sleep(round_trip).instrument(provider).await;
    if round_trip > PROVIDER_BUDGET {
        tracing::warn!(
            order_id = %request.order_id,
            provider_ms = round_trip.as_millis() as u64,
            "card provider answered after {} ms, over its {} ms budget",
            round_trip.as_millis(),
            PROVIDER_BUDGET.as_millis()
        );
    }
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
