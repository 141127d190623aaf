//! The agent's HTTP endpoint: `GET /health` and `GET /metrics` (the
//! agent's own telemetry, then the node and container families of
//! [`crate::hostmetrics`] when they are on).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::error::{AgentError, Result};
use crate::hostmetrics::HostMetrics;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The routes, without a socket (tests call it with `oneshot`).
pub fn router(metrics: Arc<Metrics>) -> Router {
    router_with_host_metrics(metrics, None)
}

/// The routes, with node and container metrics appended to `/metrics`
/// when `host` is given.
pub fn router_with_host_metrics(metrics: Arc<Metrics>, host: Option<Arc<HostMetrics>>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .with_state(HttpState { metrics, host })
}

/// What the handlers read.
#[derive(Debug, Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    host: Option<Arc<HostMetrics>>,
}

async fn health() -> &'static str {
    "ok"
}

async fn render_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let mut body = state.metrics.render_prometheus();
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
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = router(metrics).oneshot(request).await.unwrap();
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
