//! The inventory service: stock per product and reservations against it.
//! A product that runs out is restocked (a delivery arrives), so a long
//! demo run sees the occasional out-of-stock order without starving.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::metrics::{OUT_OF_STOCK_TOTAL, RESERVATIONS_RELEASED_TOTAL};
use super::{AppError, AppState, catalog};

/// Units of each product at start and after a restock.
const INITIAL_STOCK: u32 = 200;

/// The most open reservations kept.
const MAX_RESERVATIONS: usize = 10_000;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/stock", get(stock))
        .route("/reservations", post(reserve))
        .route("/reservations/{id}", delete(release))
}

struct Reservation {
    product_id: String,
    quantity: u32,
}

struct Stock {
    available: HashMap<&'static str, u32>,
    reservations: HashMap<String, Reservation>,
}

/// Stock and open reservations.
pub(super) struct InventoryState {
    stock: Mutex<Stock>,
}

impl Default for InventoryState {
    fn default() -> Self {
        let available = catalog::PRODUCTS
            .iter()
            .map(|product| (product.id, INITIAL_STOCK))
            .collect();
        Self {
            stock: Mutex::new(Stock {
                available,
                reservations: HashMap::new(),
            }),
        }
    }
}

/// `POST /reservations` body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReserveRequest {
    pub(super) order_id: String,
    pub(super) product_id: String,
    pub(super) quantity: u32,
}

async fn stock(State(state): State<Arc<AppState>>) -> Json<HashMap<&'static str, u32>> {
    let stock = state
        .inventory
        .stock
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    Json(stock.available.clone())
}

async fn reserve(
    State(state): State<Arc<AppState>>,
    body: Result<Json<ReserveRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    let Json(request) = body?;
    let Some(product) = catalog::find(&request.product_id) else {
        return Err(AppError::UnknownProduct(request.product_id));
    };
    // A database round trip.
    tokio::time::sleep(Duration::from_millis(rand::random_range(2..10))).await;
    let outcome = {
        let mut stock = state
            .inventory
            .stock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let available = stock.available.entry(product.id).or_default();
        if *available < request.quantity {
            let had = *available;
            *available = INITIAL_STOCK;
            Err(had)
        } else {
            *available -= request.quantity;
            let left = *available;
            let reservation_id = format!("res-{}", crate::random_hex(10));
            // Reservations of paid orders are never released: keep the
            // table bounded by forgetting an old one.
            if stock.reservations.len() >= MAX_RESERVATIONS
                && let Some(old) = stock.reservations.keys().next().cloned()
            {
                stock.reservations.remove(&old);
            }
            stock.reservations.insert(
                reservation_id.clone(),
                Reservation {
                    product_id: request.product_id.clone(),
                    quantity: request.quantity,
                },
            );
            Ok((reservation_id, left))
        }
    };
    match outcome {
        Ok((reservation_id, left)) => {
            tracing::info!(
                order_id = %request.order_id,
                product_id = %request.product_id,
                quantity = request.quantity,
                %reservation_id,
                stock_left = left,
                "stock reserved"
            );
            let body = serde_json::json!({ "reservation_id": reservation_id, "stock_left": left });
            Ok((StatusCode::CREATED, Json(body)))
        }
        Err(had) => {
            state.metrics.inc(OUT_OF_STOCK_TOTAL, &[]);
            tracing::warn!(
                order_id = %request.order_id,
                product_id = %request.product_id,
                quantity = request.quantity,
                available = had,
                restocked_to = INITIAL_STOCK,
                "out of stock, restock ordered"
            );
            Err(AppError::OutOfStock(request.product_id))
        }
    }
}

/// The compensating step: gives a reservation's units back.
async fn release(
    State(state): State<Arc<AppState>>,
    Path(reservation_id): Path<String>,
) -> Result<StatusCode, AppError> {
    let released = {
        let mut stock = state
            .inventory
            .stock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let reservation = stock.reservations.remove(&reservation_id);
        if let Some(reservation) = &reservation
            && let Some(product) = catalog::find(&reservation.product_id)
        {
            *stock.available.entry(product.id).or_default() += reservation.quantity;
        }
        reservation
    };
    let Some(reservation) = released else {
        return Err(AppError::NotFound(format!("reservation {reservation_id}")));
    };
    state.metrics.inc(RESERVATIONS_RELEASED_TOTAL, &[]);
    tracing::info!(
        %reservation_id,
        product_id = %reservation.product_id,
        quantity = reservation.quantity,
        "reservation released"
    );
    Ok(StatusCode::NO_CONTENT)
}
