//! The order service: creates orders as a small saga.
//!
//! 1. reserve the stock at `inventory` (`409` when there is not enough);
//! 2. charge the total at `payment`; when that fails, release the
//!    reservation (the compensating step) and answer `402` (declined) or
//!    `502` (payment unavailable);
//! 3. keep the order and publish `order.created` to `notification` in the
//!    background (the client does not wait for it).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::metrics::{ORDER_VALUE_TOTAL, ORDERS_CREATED_TOTAL, ORDERS_FAILED_TOTAL};
use super::notification::{Event, ORDER_CREATED};
use super::upstream::Call;
use super::{AppError, AppState, catalog};
use crate::propagation::{RequestId, inject_context};

/// The most items of one product in one order.
const MAX_QUANTITY: u32 = 100;

/// The most orders kept for `GET /orders/{id}`.
const MAX_ORDERS: usize = 10_000;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(get_order))
}

/// An order as a client asks for it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OrderRequest {
    pub(super) user_id: String,
    pub(super) product_id: String,
    #[serde(default = "default_quantity")]
    pub(super) quantity: u32,
    /// The id the gateway gave the order when it received it, so every
    /// step of the order, from its receipt on, carries the same id; one is
    /// made here when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) order_id: Option<String>,
}

/// A new order id: `ord-` and 12 hex digits.
pub(super) fn new_order_id() -> String {
    format!("ord-{}", crate::random_hex(12))
}

fn default_quantity() -> u32 {
    1
}

impl OrderRequest {
    pub(super) fn validate(&self) -> Result<(), AppError> {
        if self.user_id.is_empty() || self.user_id.len() > 64 {
            return Err(AppError::BadRequest(
                "user_id must have 1 to 64 characters".into(),
            ));
        }
        if self.quantity == 0 || self.quantity > MAX_QUANTITY {
            let message = format!("quantity must be between 1 and {MAX_QUANTITY}");
            return Err(AppError::BadRequest(message));
        }
        if let Some(order_id) = &self.order_id {
            let well_formed = order_id.len() <= 64
                && order_id.strip_prefix("ord-").is_some_and(|rest| {
                    !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !well_formed {
                return Err(AppError::BadRequest(format!(
                    "order_id {order_id:?} must be ord- and letters, digits or -, at most 64 characters"
                )));
            }
        }
        Ok(())
    }
}

/// A created order.
#[derive(Debug, Clone, Serialize)]
struct Order {
    order_id: String,
    user_id: String,
    product_id: String,
    quantity: u32,
    total_cents: u64,
    payment_id: String,
    status: &'static str,
}

/// The orders created so far (the newest [`MAX_ORDERS`]).
#[derive(Default)]
pub(super) struct OrderState {
    orders: Mutex<(HashMap<String, Order>, VecDeque<String>)>,
}

impl OrderState {
    fn insert(&self, order: Order) {
        let mut guard = self.orders.lock().unwrap_or_else(|e| e.into_inner());
        let (orders, age) = &mut *guard;
        if age.len() >= MAX_ORDERS
            && let Some(oldest) = age.pop_front()
        {
            orders.remove(&oldest);
        }
        age.push_back(order.order_id.clone());
        orders.insert(order.order_id.clone(), order);
    }

    fn get(&self, order_id: &str) -> Option<Order> {
        let guard = self.orders.lock().unwrap_or_else(|e| e.into_inner());
        guard.0.get(order_id).cloned()
    }
}

async fn get_order(
    State(state): State<Arc<AppState>>,
    Path(order_id): Path<String>,
) -> Result<Json<Order>, AppError> {
    match state.orders.get(&order_id) {
        Some(order) => Ok(Json(order)),
        None => Err(AppError::NotFound(format!("order {order_id}"))),
    }
}

async fn create_order(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    body: Result<Json<OrderRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Order>), AppError> {
    let Json(request) = body?;
    request.validate()?;
    let Some(product) = catalog::find(&request.product_id) else {
        tracing::warn!(product_id = %request.product_id, "order for unknown product");
        state
            .metrics
            .inc(ORDERS_FAILED_TOTAL, &[("reason", "unknown_product")]);
        return Err(AppError::UnknownProduct(request.product_id));
    };
    let order_id = request.order_id.clone().unwrap_or_else(new_order_id);
    let total_cents = product.price_cents * u64::from(request.quantity);
    let amount = total_cents as f64 / 100.0;
    tracing::info!(
        %order_id,
        user_id = %request.user_id,
        product_id = %request.product_id,
        quantity = request.quantity,
        amount,
        "order validated"
    );

    // 1. Reserve the stock.
    let reserve_body = serde_json::json!({
        "order_id": order_id,
        "product_id": request.product_id,
        "quantity": request.quantity,
    });
    let reserved = Call {
        service: "inventory",
        method: Method::POST,
        base_url: &state.peers.inventory,
        path: "/reservations",
        route: "/reservations",
        request_id: &request_id,
        body: Some(&reserve_body),
        bearer: None,
        kind: "client",
    }
    .send(&state.http)
    .await?;
    let reservation_id = match reserved.status {
        StatusCode::CREATED => reserved.body["reservation_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        StatusCode::CONFLICT => {
            state
                .metrics
                .inc(ORDERS_FAILED_TOTAL, &[("reason", "out_of_stock")]);
            tracing::warn!(%order_id, product_id = %request.product_id, "order refused: out of stock");
            return Err(AppError::OutOfStock(request.product_id));
        }
        status => {
            state
                .metrics
                .inc(ORDERS_FAILED_TOTAL, &[("reason", "inventory_error")]);
            return Err(upstream_status("inventory", status));
        }
    };

    // 2. Charge; release the reservation when that fails.
    let charge_body = serde_json::json!({
        "order_id": order_id,
        "user_id": request.user_id,
        "amount_cents": total_cents,
    });
    let charged = Call {
        service: "payment",
        method: Method::POST,
        base_url: &state.peers.payment,
        path: "/charges",
        route: "/charges",
        request_id: &request_id,
        body: Some(&charge_body),
        bearer: None,
        kind: "client",
    }
    .send(&state.http)
    .await;
    let failure = match &charged {
        Ok(answer) if answer.status == StatusCode::CREATED => None,
        Ok(answer) if answer.status == StatusCode::PAYMENT_REQUIRED => Some((
            "payment_declined",
            AppError::PaymentDeclined("card declined".into()),
        )),
        Ok(answer) => Some(("payment_error", upstream_status("payment", answer.status))),
        Err(error) => Some((
            "payment_error",
            AppError::Upstream {
                service: "payment",
                message: error.to_string(),
            },
        )),
    };
    if let Some((reason, error)) = failure {
        tracing::warn!(%order_id, user_id = %request.user_id, amount, reason, "payment failed, releasing the reservation");
        release_reservation(&state, &request_id, &reservation_id).await;
        state
            .metrics
            .inc(ORDERS_FAILED_TOTAL, &[("reason", reason)]);
        return Err(error);
    }
    let payment_id = charged
        .ok()
        .and_then(|answer| answer.body["payment_id"].as_str().map(str::to_owned))
        .unwrap_or_default();

    // 3. Keep the order, notify in the background.
    let order = Order {
        order_id: order_id.clone(),
        total_cents,
        user_id: request.user_id.clone(),
        product_id: request.product_id,
        quantity: request.quantity,
        payment_id,
        status: "confirmed",
    };
    state.orders.insert(order.clone());
    state.metrics.inc(ORDERS_CREATED_TOTAL, &[]);
    state.metrics.add(ORDER_VALUE_TOTAL, &[], amount);
    tracing::info!(
        %order_id,
        user_id = %order.user_id,
        product_id = %order.product_id,
        quantity = order.quantity,
        total_cents,
        amount,
        "order created"
    );
    publish_order_created(&state, &request_id, &order);
    Ok((StatusCode::CREATED, Json(order)))
}

/// The compensating step. A failure is logged: the reservation then
/// expires with the inventory's bounded table.
async fn release_reservation(state: &AppState, request_id: &str, reservation_id: &str) {
    let path = format!("/reservations/{reservation_id}");
    let released = Call {
        service: "inventory",
        method: Method::DELETE,
        base_url: &state.peers.inventory,
        path: &path,
        route: "/reservations/{id}",
        request_id,
        body: None,
        bearer: None,
        kind: "client",
    }
    .send(&state.http)
    .await;
    match released {
        Ok(answer) if answer.status.is_success() => {
            tracing::info!(%reservation_id, "reservation released");
        }
        Ok(answer) => {
            tracing::error!(%reservation_id, status = answer.status.as_u16(), "failed to release the reservation");
        }
        Err(error) => {
            tracing::error!(%reservation_id, %error, "failed to release the reservation");
        }
    }
}

/// Publishes `order.created` without waiting: the producer span is a child
/// of the request's span, the delivery is the notification service's
/// business.
fn publish_order_created(state: &Arc<AppState>, request_id: &str, order: &Order) {
    let producer = tracing::info_span!(
        "publish",
        otel.name = "publish order.created",
        otel.kind = "producer",
        messaging.destination.name = ORDER_CREATED,
        order_id = order.order_id.as_str(),
        request_id,
    );
    let mut headers = http::HeaderMap::new();
    inject_context(&producer.context(), &mut headers);
    let traceparent = headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let event = Event {
        kind: ORDER_CREATED.into(),
        order_id: order.order_id.clone(),
        user_id: order.user_id.clone(),
        amount: order.total_cents as f64 / 100.0,
        request_id: request_id.to_owned(),
        traceparent,
    };
    let state = Arc::clone(state);
    let request_id = request_id.to_owned();
    tokio::spawn(
        async move {
            let Ok(body) = serde_json::to_value(&event) else {
                return;
            };
            let sent = Call {
                service: "notification",
                method: Method::POST,
                base_url: &state.peers.notification,
                path: "/events",
                route: "/events",
                request_id: &request_id,
                body: Some(&body),
                bearer: None,
                kind: "client",
            }
            .send(&state.http)
            .await;
            match sent {
                Ok(answer) if answer.status.is_success() => {}
                Ok(answer) => tracing::warn!(
                    order_id = %event.order_id,
                    status = answer.status.as_u16(),
                    "order.created not accepted by notification"
                ),
                // Already logged by the call.
                Err(_) => {}
            }
        }
        .instrument(producer),
    );
}

fn upstream_status(service: &'static str, status: StatusCode) -> AppError {
    AppError::Upstream {
        service,
        message: format!("answered {status}"),
    }
}
