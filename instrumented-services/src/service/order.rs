//! The order service: creates orders.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{AppError, AppState, catalog};

/// The most items of one product in one order.
const MAX_QUANTITY: u32 = 100;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/orders", post(create_order))
}

/// An order as a client asks for it (the gateway's body is passed on as is).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OrderRequest {
    pub(super) user_id: String,
    pub(super) product_id: String,
    #[serde(default = "default_quantity")]
    pub(super) quantity: u32,
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
        Ok(())
    }
}

/// A created order.
#[derive(Debug, Serialize)]
struct Order {
    order_id: String,
    user_id: String,
    product_id: String,
    quantity: u32,
    total_cents: u64,
    status: &'static str,
}

async fn create_order(
    body: Result<Json<OrderRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Order>), AppError> {
    let Json(request) = body?;
    request.validate()?;
    let Some(product) = catalog::find(&request.product_id) else {
        tracing::warn!(product_id = %request.product_id, "order for unknown product");
        return Err(AppError::UnknownProduct(request.product_id));
    };
    let order = Order {
        order_id: format!("ord-{}", crate::random_hex(12)),
        total_cents: product.price_cents * u64::from(request.quantity),
        user_id: request.user_id,
        product_id: request.product_id,
        quantity: request.quantity,
        status: "created",
    };
    tracing::info!(
        order_id = %order.order_id,
        user_id = %order.user_id,
        product_id = %order.product_id,
        quantity = order.quantity,
        total_cents = order.total_cents,
        "order created"
    );
    Ok((StatusCode::CREATED, Json(order)))
}
