//! The notification service: takes `order.created` events (`POST /events`
//! answers `202 Accepted` at once) and delivers them in the background,
//! "sending" a confirmation email.
//!
//! The delivery is not part of the request that caused it: it runs in a
//! root span linked to the order's span (the event carries the producer's
//! `traceparent`, as CloudEvents' distributed tracing extension does), see
//! [`crate::telemetry::start_linked_root`]. Its log lines carry the
//! request id and order id of the event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use opentelemetry::KeyValue;
use opentelemetry::trace::TraceContextExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::metrics::EMAILS_SENT_TOTAL;
use super::{AppError, AppState};
use crate::propagation::extract_context;

/// Events waiting for delivery at most; beyond it `POST /events` answers 503.
const QUEUE_CAPACITY: usize = 1024;

/// How long shutdown waits for queued events to be delivered.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The event type this service handles.
pub(crate) const ORDER_CREATED: &str = "order.created";

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/events", post(accept))
}

/// An event as published by the order service.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Event {
    /// `order.created`.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) order_id: String,
    pub(crate) user_id: String,
    pub(crate) amount: f64,
    /// The request that caused the event.
    pub(crate) request_id: String,
    /// W3C `traceparent` of the producing span.
    pub(crate) traceparent: Option<String>,
}

/// The delivery queue.
pub(super) struct NotificationState {
    sender: mpsc::Sender<Event>,
    receiver: Mutex<Option<mpsc::Receiver<Event>>>,
}

impl Default for NotificationState {
    fn default() -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        Self {
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

async fn accept(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Event>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    let Json(event) = body?;
    if event.kind != ORDER_CREATED {
        return Err(AppError::BadRequest(format!(
            "unsupported event type {:?}",
            event.kind
        )));
    }
    let order_id = event.order_id.clone();
    if state.notification.sender.try_send(event).is_err() {
        return Err(AppError::Upstream {
            service: "notification",
            message: "delivery queue full".into(),
        });
    }
    tracing::info!(%order_id, "event queued for delivery");
    let body = serde_json::json!({ "status": "queued", "order_id": order_id });
    Ok((StatusCode::ACCEPTED, Json(body)))
}

/// Starts the background delivery of queued events.
pub(super) fn start_worker(state: Arc<AppState>) -> JoinHandle<()> {
    let receiver = state
        .notification
        .receiver
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    tokio::spawn(async move {
        let Some(mut receiver) = receiver else {
            return;
        };
        while let Some(event) = receiver.recv().await {
            deliver(&state, event).await;
        }
    })
}

/// Waits (boundedly) for the queue to drain, then stops the worker.
pub(super) async fn stop_worker(state: &AppState, worker: JoinHandle<()>) {
    let sender = &state.notification.sender;
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while sender.capacity() < sender.max_capacity() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if drained.is_err() {
        let left = sender.max_capacity() - sender.capacity();
        tracing::warn!(left, "stopping with undelivered events");
    }
    worker.abort();
}

/// Delivers one event in its own root span, linked to the producer's span.
async fn deliver(state: &AppState, event: Event) {
    let mut headers = HeaderMap::new();
    if let Some(traceparent) = event
        .traceparent
        .as_deref()
        .and_then(|value| HeaderValue::from_str(value).ok())
    {
        headers.insert("traceparent", traceparent);
    }
    let origin = extract_context(&headers).span().span_context().clone();
    let root = crate::telemetry::start_linked_root(
        "deliver order.created",
        origin,
        vec![
            KeyValue::new("messaging.operation", "process"),
            KeyValue::new("messaging.destination.name", ORDER_CREATED),
            KeyValue::new("request_id", event.request_id.clone()),
            KeyValue::new("order_id", event.order_id.clone()),
        ],
    );
    let span = tracing::info_span!(
        parent: None,
        "send_email",
        otel.name = "send email",
        otel.kind = "client",
        peer.service = "smtp",
        request_id = event.request_id.as_str(),
    );
    let _ = span.set_parent(root.clone());
    let send = async {
        // An SMTP round trip.
        tokio::time::sleep(Duration::from_millis(rand::random_range(15..60))).await;
        state.metrics.inc(EMAILS_SENT_TOTAL, &[]);
        tracing::info!(
            order_id = %event.order_id,
            user_id = %event.user_id,
            amount = event.amount,
            to = format!("{}@example.com", event.user_id),
            "order confirmation email sent"
        );
    };
    send.instrument(span).await;
    root.span().end();
}
