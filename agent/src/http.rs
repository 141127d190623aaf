//! The agent's HTTP endpoint: the probes, `GET /metrics` (the agent's own
//! telemetry, the pod watch's counters and container states of
//! [`crate::kubernetes`], then the node and container families of
//! [`crate::hostmetrics`] when they are on).
//!
//! - `GET /-/healthy` (and `/health`): liveness, the agent answers;
//! - `GET /-/ready`: readiness, `200` once the collector has answered an
//!   export (the agent sends an empty one at start, so an idle node gets
//!   ready too), `503` with the reason before that. The checkpoints are
//!   loaded before this endpoint listens.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::error::{AgentError, Result};
use crate::hostmetrics::HostMetrics;
use crate::kubernetes::Pods;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Whether the agent can do its job: the collector has answered once.
/// Readiness stays once reached: a collector that goes away later is
/// retried with the files as the buffer, and a restart would not help.
#[derive(Debug)]
pub struct Readiness {
    collector: String,
    answered: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Readiness {
    pub fn new(collector: &str) -> Readiness {
        Readiness {
            collector: collector.to_owned(),
            answered: AtomicBool::new(false),
            last_error: Mutex::new(None),
        }
    }

    /// The collector acknowledged an export.
    pub(crate) fn collector_answered(&self) {
        self.answered.store(true, Ordering::Release);
    }

    /// An export failed; the reason shows while the agent is not ready.
    pub(crate) fn collector_failed(&self, error: &str) {
        if !self.is_ready() {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_owned());
        }
    }

    pub fn is_ready(&self) -> bool {
        self.answered.load(Ordering::Acquire)
    }

    /// What `/-/ready` answers: `Ok` when ready, the reason otherwise.
    pub fn explain(&self) -> std::result::Result<&'static str, String> {
        if self.is_ready() {
            return Ok("ready");
        }
        let last_error = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        Err(match &*last_error {
            Some(error) => format!(
                "not ready: the collector at {} has not answered yet (last error: {error})",
                self.collector
            ),
            None => format!(
                "not ready: waiting for the collector at {} to answer",
                self.collector
            ),
        })
    }
}

/// The routes, without a socket (tests call it with `oneshot`).
pub fn router(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Router {
    router_with_host_metrics(metrics, readiness, None, None)
}

/// The routes, with node and container metrics appended to `/metrics`
/// when `host` is given, and the pod watch's when `pods` is.
pub fn router_with_host_metrics(
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    host: Option<Arc<HostMetrics>>,
    pods: Option<Arc<Pods>>,
) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/-/healthy", get(health))
        .route("/-/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(HttpState {
            metrics,
            readiness,
            host,
            pods,
        })
}

/// What the handlers read.
#[derive(Debug, Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    host: Option<Arc<HostMetrics>>,
    pods: Option<Arc<Pods>>,
}

async fn health() -> &'static str {
    "ok"
}

async fn ready(State(state): State<HttpState>) -> axum::response::Response {
    match state.readiness.explain() {
        Ok(text) => text.into_response(),
        Err(reason) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

async fn render_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let mut body = state.metrics.render_prometheus();
    if let Some(pods) = &state.pods {
        pods.render(&mut body);
    }
    if let Some(host) = &state.host {
        body.push_str(&host.render().await);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// Serves `router` on `listener` until shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    mut shutdown: Shutdown,
) -> Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.triggered().await })
        .await
        .map_err(AgentError::HttpServe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn get_text(path: &str, metrics: Arc<Metrics>) -> (StatusCode, String) {
        get_with(
            path,
            metrics,
            Arc::new(Readiness::new("http://127.0.0.1:4317")),
        )
        .await
    }

    async fn get_with(
        path: &str,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
    ) -> (StatusCode, String) {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = router(metrics, readiness).oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn health_is_ok() {
        assert_eq!(
            get_text("/health", Arc::default()).await,
            (StatusCode::OK, "ok".to_owned())
        );
    }

    #[tokio::test]
    async fn ready_once_the_collector_answered_and_says_why_not_before() {
        let readiness = Arc::new(Readiness::new("http://10.0.0.9:4317"));
        let (status, body) = get_with("/-/ready", Arc::default(), readiness.clone()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("waiting for the collector at http://10.0.0.9:4317"),
            "{body}"
        );
        readiness.collector_failed("tcp connect error: Connection refused");
        let (status, body) = get_with("/-/ready", Arc::default(), readiness.clone()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("last error: tcp connect error: Connection refused"),
            "{body}"
        );
        readiness.collector_answered();
        assert_eq!(
            get_with("/-/ready", Arc::default(), readiness.clone()).await,
            (StatusCode::OK, "ready".to_owned())
        );
        // Once ready, a later failure does not take readiness back.
        readiness.collector_failed("deadline exceeded");
        assert_eq!(
            get_with("/-/ready", Arc::default(), readiness.clone())
                .await
                .0,
            StatusCode::OK
        );
        assert_eq!(
            get_with("/-/healthy", Arc::default(), readiness).await,
            (StatusCode::OK, "ok".to_owned())
        );
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let metrics = Arc::new(Metrics::default());
        metrics.add_read(2, 10);
        let (status, body) = get_text("/metrics", metrics).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("sightline_agent_lines_read_total 2"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn unknown_path_is_404() {
        assert_eq!(
            get_text("/nope", Arc::default()).await.0,
            StatusCode::NOT_FOUND
        );
    }
}
