//! The notification service: takes `order.created` events (`POST /events`
//! answers `202 Accepted` at once) and delivers them in the background,
//! "sending" a confirmation email.
//!
//! The delivery is not part of the request that caused it: it runs in a
//! root span linked to the order's span (the event carries the producer's
//! `traceparent`, as CloudEvents' distributed tracing extension does), see
//! [`crate::telemetry::start_linked_root`]. Its log lines carry the
//! request id and order id of the event.
//!
//! It is also the demo's alert inbox: Alertmanager's webhook receivers
//! (`pager` and `chat` in the shipped routing tree) post to
//! `POST /alerts/<receiver>`; each alert is logged (so it is searchable in
//! Sightline) and the last [`INBOX_CAPACITY`] are listed at `GET /alerts`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};
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

/// Alert notifications kept for `GET /alerts`.
pub(crate) const INBOX_CAPACITY: usize = 200;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/events", post(accept))
        .route("/alerts", get(inbox))
        .route("/alerts/{receiver}", post(receive_alerts))
}

/// One alert as an Alertmanager webhook receiver got it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReceivedAlert {
    /// The receiver of the routing tree that sent it (the path).
    receiver: String,
    /// `firing` or `resolved`.
    status: String,
    labels: serde_json::Map<String, serde_json::Value>,
    /// When it arrived, RFC 3339.
    received_at: String,
}

/// Alertmanager's webhook payload (version 4), the parts the inbox keeps.
#[derive(Debug, Deserialize)]
struct WebhookPayload {
    alerts: Vec<WebhookAlert>,
}

#[derive(Debug, Deserialize)]
struct WebhookAlert {
    status: String,
    #[serde(default)]
    labels: serde_json::Map<String, serde_json::Value>,
}

async fn receive_alerts(
    State(state): State<Arc<AppState>>,
    Path(receiver): Path<String>,
    body: Result<Json<WebhookPayload>, JsonRejection>,
) -> Result<StatusCode, AppError> {
    if receiver.is_empty()
        || receiver.len() > 64
        || !receiver
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(AppError::BadRequest(format!(
            "{receiver:?} is not a receiver name (letters, digits, - and _, at most 64)"
        )));
    }
    let Json(payload) = body?;
    let received_at = crate::format_rfc3339_nanos(time::OffsetDateTime::now_utc());
    let mut inbox = state
        .notification
        .inbox
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for alert in payload.alerts {
        let label = |name: &str| {
            alert
                .labels
                .get(name)
                .and_then(|value| value.as_str())
                .unwrap_or("")
                .to_string()
        };
        tracing::info!(
            receiver = receiver.as_str(),
            status = alert.status.as_str(),
            alertname = label("alertname"),
            severity = label("severity"),
            service = label("service"),
            "alert notification received"
        );
        if inbox.len() == INBOX_CAPACITY {
            inbox.pop_front();
        }
        inbox.push_back(ReceivedAlert {
            receiver: receiver.clone(),
            status: alert.status,
            labels: alert.labels,
            received_at: received_at.clone(),
        });
    }
    Ok(StatusCode::OK)
}

/// The alerts received, oldest first.
async fn inbox(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let inbox = state
        .notification
        .inbox
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    Json(serde_json::json!({ "alerts": inbox.iter().collect::<Vec<_>>() }))
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
    /// Alert notifications received, newest last.
    inbox: Mutex<VecDeque<ReceivedAlert>>,
}

impl Default for NotificationState {
    fn default() -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        Self {
            sender,
            receiver: Mutex::new(Some(receiver)),
            inbox: Mutex::new(VecDeque::new()),
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
