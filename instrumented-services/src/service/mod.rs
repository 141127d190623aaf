//! The shop services: one binary, `shop-service --service <role>`.
//!
//! Every role shares the same skeleton ([`run`]): telemetry from
//! [`crate::telemetry`], an axum server whose routes are traced by
//! [`middleware::trace_request`] (server span, `X-Request-ID`, W3C trace
//! context, `/metrics` counters, injected [`faults`]), health endpoints,
//! `/metrics`, `/admin/faults`, and graceful shutdown on SIGTERM/SIGINT. A
//! role only contributes its routes:
//!
//! | role | default port | routes | calls |
//! |---|---|---|---|
//! | `gateway` | 8000 | `POST /api/login`, `GET /api/products`, `POST /api/orders`, `GET /api/orders/{id}` | auth, order |
//! | `auth` | 8001 | `POST /login`, `GET /sessions/verify` | |
//! | `order` | 8002 | `POST /orders`, `GET /orders/{id}` | inventory, payment, notification |
//! | `inventory` | 8003 | `GET /stock`, `POST /reservations`, `DELETE /reservations/{id}` | |
//! | `payment` | 8004 | `POST /charges` | |
//! | `notification` | 8005 | `POST /events` (202, delivered in the background) | |
//!
//! Configuration comes from flags or the `SHOP_*` environment variables
//! named in [`ServiceArgs`].

mod auth;
pub mod catalog;
mod error;
pub mod faults;
mod gateway;
mod inventory;
pub mod metrics;
pub mod middleware;
mod notification;
mod order;
mod payment;
mod upstream;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

pub use error::AppError;
use faults::{FaultConfig, Faults};
use metrics::Metrics;

use crate::shutdown::ShutdownSignals;
use crate::telemetry::{SERVICE_VERSION, Telemetry};

/// Timeout of one call from a service to another.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Which service this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceRole {
    /// The public entry point: `/api/*`, calls the other services.
    Gateway,
    /// Logins and session tokens.
    Auth,
    /// Creates orders.
    Order,
    /// Stock and reservations.
    Inventory,
    /// Charges cards (a simulated payment provider).
    Payment,
    /// Sends order confirmation emails in the background.
    Notification,
}

impl ServiceRole {
    /// Every role, in port order.
    pub const ALL: [ServiceRole; 6] = [
        Self::Gateway,
        Self::Auth,
        Self::Order,
        Self::Inventory,
        Self::Payment,
        Self::Notification,
    ];

    /// The service name: `service.name` of its spans, `service` of its logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Auth => "auth",
            Self::Order => "order",
            Self::Inventory => "inventory",
            Self::Payment => "payment",
            Self::Notification => "notification",
        }
    }

    /// The counters of this role that exist from the start, at 0, with
    /// the label values alerts and dashboards select.
    pub fn counters_from_zero(
        self,
    ) -> &'static [(&'static str, &'static [(&'static str, &'static str)])] {
        use metrics::{
            EMAILS_SENT_TOTAL, LOGINS_TOTAL, ORDERS_CREATED_TOTAL, PAYMENTS_FAILED_TOTAL,
            PAYMENTS_PROCESSED_TOTAL, RATE_LIMITED_TOTAL,
        };
        match self {
            Self::Gateway => &[(RATE_LIMITED_TOTAL, &[])],
            Self::Auth => &[
                (LOGINS_TOTAL, &[("outcome", "ok")]),
                (LOGINS_TOTAL, &[("outcome", "bad_password")]),
            ],
            Self::Order => &[(ORDERS_CREATED_TOTAL, &[])],
            Self::Inventory => &[],
            Self::Payment => &[
                (PAYMENTS_PROCESSED_TOTAL, &[]),
                (PAYMENTS_FAILED_TOTAL, &[("reason", "declined")]),
                (PAYMENTS_FAILED_TOTAL, &[("reason", "unavailable")]),
            ],
            Self::Notification => &[(EMAILS_SENT_TOTAL, &[])],
        }
    }

    /// How its log lines are written: the notification service writes
    /// plain text, as many older services do (the agent's `text` parser
    /// takes it apart); the others JSON.
    pub fn log_format(self) -> crate::json_log::LineFormat {
        match self {
            Self::Notification => crate::json_log::LineFormat::Text,
            _ => crate::json_log::LineFormat::Json,
        }
    }

    /// The role called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.name() == name)
    }

    /// The port it listens on by default (8000-8005 are the demo's ports).
    pub fn default_port(self) -> u16 {
        match self {
            Self::Gateway => 8000,
            Self::Auth => 8001,
            Self::Order => 8002,
            Self::Inventory => 8003,
            Self::Payment => 8004,
            Self::Notification => 8005,
        }
    }

    fn routes(self) -> Router<Arc<AppState>> {
        match self {
            Self::Gateway => gateway::routes(),
            Self::Auth => auth::routes(),
            Self::Order => order::routes(),
            Self::Inventory => inventory::routes(),
            Self::Payment => payment::routes(),
            Self::Notification => notification::routes(),
        }
    }
}

/// Command line of `shop-service`; every flag also reads an environment
/// variable.
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

    /// Base URL of the auth service (used by the gateway).
    #[arg(long, env = "SHOP_AUTH_URL", default_value = "http://127.0.0.1:8001")]
    pub auth_url: String,

    /// Base URL of the order service (used by the gateway).
    #[arg(long, env = "SHOP_ORDER_URL", default_value = "http://127.0.0.1:8002")]
    pub order_url: String,

    /// Base URL of the inventory service (used by order).
    #[arg(
        long,
        env = "SHOP_INVENTORY_URL",
        default_value = "http://127.0.0.1:8003"
    )]
    pub inventory_url: String,

    /// Base URL of the payment service (used by order).
    #[arg(
        long,
        env = "SHOP_PAYMENT_URL",
        default_value = "http://127.0.0.1:8004"
    )]
    pub payment_url: String,

    /// Base URL of the notification service (used by order).
    #[arg(
        long,
        env = "SHOP_NOTIFICATION_URL",
        default_value = "http://127.0.0.1:8005"
    )]
    pub notification_url: String,

    /// OTLP gRPC endpoint spans are exported to.
    #[arg(
        long,
        env = "SHOP_OTLP_ENDPOINT",
        default_value = "http://127.0.0.1:4317"
    )]
    pub otlp_endpoint: String,

    /// Faults active from the start, e.g. `latency=800ms@0.3,errors=0.1`
    /// or `down`; changeable at runtime with `POST /admin/faults`.
    #[arg(long, env = "SHOP_FAULTS", default_value = "", value_parser = parse_faults)]
    pub faults: FaultConfig,

    /// Gateway: requests per second allowed per client (token bucket
    /// refill rate); a client is its bearer token, else its address.
    #[arg(long, env = "SHOP_RATE_LIMIT", default_value_t = 20.0)]
    pub rate_limit: f64,

    /// Gateway: burst size of the per-client rate limiter.
    #[arg(long, env = "SHOP_RATE_LIMIT_BURST", default_value_t = 40.0)]
    pub rate_limit_burst: f64,

    /// Payment: share of charges the simulated provider declines.
    #[arg(long, env = "SHOP_PAYMENT_DECLINE_RATE", default_value_t = 0.05)]
    pub payment_decline_rate: f64,
}

fn parse_faults(spec: &str) -> Result<FaultConfig, String> {
    FaultConfig::parse_spec(spec)
}

impl ServiceArgs {
    /// The address to listen on, with the role's default filled in.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, self.service.default_port())))
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..=1.0).contains(&self.payment_decline_rate) {
            anyhow::bail!(
                "--payment-decline-rate (SHOP_PAYMENT_DECLINE_RATE) must be between 0 and 1, got {}",
                self.payment_decline_rate
            );
        }
        if !(self.rate_limit > 0.0 && self.rate_limit_burst >= 1.0) {
            anyhow::bail!(
                "--rate-limit must be positive and --rate-limit-burst at least 1 (SHOP_RATE_LIMIT, SHOP_RATE_LIMIT_BURST)"
            );
        }
        Ok(())
    }
}

/// The base URLs of the other services.
pub(crate) struct Peers {
    pub(crate) auth: String,
    pub(crate) order: String,
    pub(crate) inventory: String,
    pub(crate) payment: String,
    pub(crate) notification: String,
}

/// State shared by the handlers of every role.
pub struct AppState {
    role: ServiceRole,
    ready: AtomicBool,
    http: reqwest::Client,
    peers: Peers,
    faults: Faults,
    metrics: Metrics,
    gateway: gateway::GatewayState,
    auth: auth::AuthState,
    orders: order::OrderState,
    inventory: inventory::InventoryState,
    payment: payment::PaymentState,
    notification: notification::NotificationState,
}

impl AppState {
    /// State for `args`; the service reports ready from the start.
    pub fn new(args: &ServiceArgs) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(UPSTREAM_TIMEOUT)
            .build()
            .context("failed to build the HTTP client")?;
        let base = |url: &str| url.trim_end_matches('/').to_owned();
        let metrics = Metrics::default();
        // Counters an alert takes the increase of start at 0, as client
        // libraries do for known series: a first increment seen at the first
        // scrape is then an increase, not where the series begins.
        for (name, labels) in args.service.counters_from_zero() {
            metrics.add(name, labels, 0.0);
        }
        Ok(Self {
            role: args.service,
            ready: AtomicBool::new(true),
            http,
            peers: Peers {
                auth: base(&args.auth_url),
                order: base(&args.order_url),
                inventory: base(&args.inventory_url),
                payment: base(&args.payment_url),
                notification: base(&args.notification_url),
            },
            faults: Faults::new(args.faults.clone()),
            metrics,
            gateway: gateway::GatewayState::new(args.rate_limit, args.rate_limit_burst),
            auth: auth::AuthState::default(),
            orders: order::OrderState::default(),
            inventory: inventory::InventoryState::default(),
            payment: payment::PaymentState::new(args.payment_decline_rate),
            notification: notification::NotificationState::default(),
        })
    }
}

/// The complete router of a service: its role's traced routes plus the
/// (untraced, so probes do not flood the trace store) health endpoints.
pub fn router(state: Arc<AppState>) -> Router {
    let mut routes = state.role.routes();
    if state.role == ServiceRole::Gateway {
        routes = routes.route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            gateway::rate_limit,
        ));
    }
    let traced = routes.route_layer(axum::middleware::from_fn_with_state(
        Arc::clone(&state),
        middleware::trace_request,
    ));
    Router::new()
        .merge(traced)
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics_endpoint))
        .route(
            "/admin/faults",
            get(faults::get_faults)
                .post(faults::set_faults)
                .delete(faults::clear_faults),
        )
        .with_state(state)
}

/// Liveness, with the process id so an operator (or a test) can kill it.
async fn live(State(state): State<Arc<AppState>>) -> axum::Json<serde_json::Value> {
    axum::Json(json!({
        "status": "live",
        "service": state.role.name(),
        "pid": std::process::id(),
    }))
}

/// `/metrics`: OpenMetrics (with exemplars) when the scraper accepts it,
/// as Prometheus' does, else the text format.
async fn metrics_endpoint(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    if openmetrics {
        let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
        (
            [(header::CONTENT_TYPE, content_type)],
            state.metrics.render_openmetrics(),
        )
    } else {
        let content_type = "text/plain; version=0.0.4; charset=utf-8";
        (
            [(header::CONTENT_TYPE, content_type)],
            state.metrics.render(),
        )
    }
}

async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, axum::Json<serde_json::Value>) {
    if state.faults.get().down {
        let body = json!({ "status": "down (injected fault)" });
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body))
    } else if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, axum::Json(json!({ "status": "ready" })))
    } else {
        let body = json!({ "status": "shutting down" });
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body))
    }
}

/// Runs the service until SIGTERM or SIGINT, then drains in-flight requests
/// and flushes its spans. Must be called inside a Tokio runtime.
pub async fn run(args: ServiceArgs) -> anyhow::Result<()> {
    let telemetry = Telemetry::init_service(
        args.service.name(),
        &args.otlp_endpoint,
        args.service.log_format(),
    )?;
    let result = serve(&args).await;
    if let Err(error) = &result {
        tracing::error!(error = format!("{error:#}"), "service failed");
    }
    telemetry.shutdown().await;
    result
}

async fn serve(args: &ServiceArgs) -> anyhow::Result<()> {
    args.validate()?;
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

    if state.faults.get().is_active() {
        let faults = state.faults.get();
        tracing::warn!(
            latency_ms = faults.latency_ms,
            latency_probability = faults.latency_probability,
            error_rate = faults.error_rate,
            down = faults.down,
            "starting with faults"
        );
    }
    let background = (state.role == ServiceRole::Notification)
        .then(|| notification::start_worker(Arc::clone(&state)));
    let shutdown_state = Arc::clone(&state);
    axum::serve(
        listener,
        router(Arc::clone(&state)).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let reason = signals.recv().await;
        shutdown_state.ready.store(false, Ordering::Relaxed);
        tracing::info!(signal = reason.as_str(), "shutting down");
    })
    .await
    .context("HTTP server failed")?;
    if let Some(worker) = background {
        notification::stop_worker(&state, worker).await;
    }
    tracing::info!("stopped");
    Ok(())
}
