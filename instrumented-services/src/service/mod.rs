//! The shop services: one binary, `shop-service --service <role>`.
//!
//! Every role shares the same skeleton ([`run`]): telemetry from
//! [`crate::telemetry`], an axum server whose routes are traced by
//! [`middleware::trace_request`] (server span, `X-Request-ID`, W3C trace
//! context), health endpoints, and graceful shutdown on SIGTERM/SIGINT. A
//! role only contributes its routes:
//!
//! | role | default port | routes |
//! |---|---|---|
//! | `gateway` | 8000 | `POST /api/orders` (calls order), `GET /api/products` |
//! | `order` | 8002 | `POST /orders` |
//!
//! Adding a service (auth 8001, inventory 8003, payment 8004, notification
//! 8005) is one module with a `routes()` function and one [`ServiceRole`]
//! variant.

pub mod catalog;
mod error;
mod gateway;
pub mod middleware;
mod order;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::json;

pub use error::AppError;

use crate::shutdown::ShutdownSignals;
use crate::telemetry::{SERVICE_VERSION, Telemetry};

/// Timeout of one call from a service to another.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Which service this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceRole {
    /// The public entry point: `/api/*`, calls the other services.
    Gateway,
    /// Creates orders.
    Order,
}

impl ServiceRole {
    /// The service name: `service.name` of its spans, `service` of its logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Order => "order",
        }
    }

    /// The port it listens on by default (8000-8005 are the demo's ports).
    pub fn default_port(self) -> u16 {
        match self {
            Self::Gateway => 8000,
            Self::Order => 8002,
        }
    }

    fn routes(self) -> Router<Arc<AppState>> {
        match self {
            Self::Gateway => gateway::routes(),
            Self::Order => order::routes(),
        }
    }
}

/// Command line of `shop-service`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "shop-service",
    version,
    about = "One service of the Sightline demo shop"
)]
pub struct ServiceArgs {
    /// Which service to run.
    #[arg(long, env = "SHOP_SERVICE", value_enum)]
    pub service: ServiceRole,

    /// Address to listen on [default: 127.0.0.1:<the role's port>]; port 0
    /// picks a free port, reported in the `listening` log line.
    #[arg(long, env = "SHOP_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Base URL of the order service (used by the gateway).
    #[arg(long, env = "SHOP_ORDER_URL", default_value = "http://127.0.0.1:8002")]
    pub order_url: String,

    /// OTLP gRPC endpoint spans are exported to.
    #[arg(
        long,
        env = "SHOP_OTLP_ENDPOINT",
        default_value = "http://127.0.0.1:4317"
    )]
    pub otlp_endpoint: String,
}

impl ServiceArgs {
    /// The address to listen on, with the role's default filled in.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, self.service.default_port())))
    }
}

/// State shared by the handlers of every role.
pub struct AppState {
    role: ServiceRole,
    ready: AtomicBool,
    http: reqwest::Client,
    order_url: String,
}

impl AppState {
    /// State for `args`; the service reports ready from the start.
    pub fn new(args: &ServiceArgs) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(UPSTREAM_TIMEOUT)
            .build()
            .context("failed to build the HTTP client")?;
        Ok(Self {
            role: args.service,
            ready: AtomicBool::new(true),
            http,
            order_url: args.order_url.trim_end_matches('/').to_owned(),
        })
    }
}

/// The complete router of a service: its role's traced routes plus the
/// (untraced, so probes do not flood the trace store) health endpoints.
pub fn router(state: Arc<AppState>) -> Router {
    let traced = state
        .role
        .routes()
        .route_layer(axum::middleware::from_fn(middleware::trace_request));
    Router::new()
        .merge(traced)
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(state)
}

async fn live() -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "status": "live" }))
}

async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, axum::Json<serde_json::Value>) {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, axum::Json(json!({ "status": "ready" })))
    } else {
        let body = json!({ "status": "shutting down" });
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body))
    }
}

/// Runs the service until SIGTERM or SIGINT, then drains in-flight requests
/// and flushes its spans. Must be called inside a Tokio runtime.
pub async fn run(args: ServiceArgs) -> anyhow::Result<()> {
    let telemetry = Telemetry::init_service(args.service.name(), &args.otlp_endpoint)?;
    let result = serve(&args).await;
    if let Err(error) = &result {
        tracing::error!(error = format!("{error:#}"), "service failed");
    }
    telemetry.shutdown().await;
    result
}

async fn serve(args: &ServiceArgs) -> anyhow::Result<()> {
    let mut signals = ShutdownSignals::install().context("failed to install signal handlers")?;
    let state = Arc::new(AppState::new(args)?);
    let listen_addr = args.listen_addr();
    let listener = tokio::net::TcpListener::bind(listen_addr)
        .await
        .with_context(|| format!("failed to listen on {listen_addr}"))?;
    let local_addr = listener
        .local_addr()
        .context("failed to read the listen address")?;
    tracing::info!(
        addr = %local_addr,
        version = SERVICE_VERSION,
        otlp_endpoint = %args.otlp_endpoint,
        "listening"
    );

    let shutdown_state = Arc::clone(&state);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            let reason = signals.recv().await;
            shutdown_state.ready.store(false, Ordering::Relaxed);
            tracing::info!(signal = reason.as_str(), "shutting down");
        })
        .await
        .context("HTTP server failed")?;
    tracing::info!("stopped");
    Ok(())
}
