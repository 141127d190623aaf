//! Telemetry set-up shared by every shop service: spans exported over OTLP
//! gRPC and JSON log lines on stdout, both from one `tracing` subscriber.
//!
//! ```text
//! tracing spans/events ─┬─ tracing-opentelemetry ─ batch processor ─ OTLP/gRPC ─> collector
//!                       └─ JsonLogLayer ─ stdout ─> (runtime log file) ─> agent
//! ```
//!
//! Exporting is best effort: the exporter connects lazily and retries, so a
//! collector that is not up yet (or goes away) costs spans, never the
//! service.

use std::cell::Cell;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceId, Tracer as _,
    TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::json_log::JsonLogLayer;

/// Log filter used when `RUST_LOG` is unset: our own events at `info`, the
/// chatty network stack (including the exporter's own) only when it warns.
pub const DEFAULT_LOG_FILTER: &str =
    "info,h2=warn,hyper=warn,hyper_util=warn,tonic=warn,tower=warn,reqwest=warn,opentelemetry=warn";

/// How long one OTLP export may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long shutdown waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The version reported as `service.version`.
pub const SERVICE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The instrumentation scope name of our spans.
const TRACER_NAME: &str = "sightline-demo";

thread_local! {
    /// The trace id the next root span created on this thread gets, see
    /// [`start_linked_root`].
    static NEXT_ROOT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// Random ids, except that a root span started by [`start_linked_root`]
/// joins the trace it is linked to.
#[derive(Debug, Default)]
struct LinkableIds(RandomIdGenerator);

impl IdGenerator for LinkableIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_ROOT_TRACE_ID
            .take()
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

/// Starts a consumer span for background work caused by `origin` (for
/// example the delivery of an event): a root span (it has no parent, the
/// work is not nested in the request that caused it) with a link to
/// `origin`, in `origin`'s trace so that the request's trace and its logs
/// show the follow-up work (Jaeger shows it as `FOLLOWS_FROM`). Returns the
/// context to parent the work's own spans on; end the span with
/// `context.span().end()`.
pub fn start_linked_root(
    name: &'static str,
    origin: SpanContext,
    attributes: Vec<KeyValue>,
) -> opentelemetry::Context {
    let tracer = opentelemetry::global::tracer(TRACER_NAME);
    let builder = tracer
        .span_builder(name)
        .with_kind(SpanKind::Consumer)
        .with_attributes(attributes);
    let builder = if origin.is_valid() {
        NEXT_ROOT_TRACE_ID.set(Some(origin.trace_id()));
        builder.with_links(vec![Link::with_context(origin)])
    } else {
        builder
    };
    let span = builder.start_with_context(&tracer, &opentelemetry::Context::new());
    NEXT_ROOT_TRACE_ID.set(None);
    opentelemetry::Context::new().with_span(span)
}

/// Keeps the tracer provider alive; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Installs the global subscriber for service `service_name`: spans go to
    /// the OTLP gRPC endpoint `otlp_endpoint` (for example
    /// `http://127.0.0.1:4317`), logs to stdout as JSON lines.
    ///
    /// Must be called inside a Tokio runtime (the gRPC channel lives on it).
    pub fn init_service(service_name: &str, otlp_endpoint: &str) -> anyhow::Result<Self> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(otlp_endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .with_context(|| format!("invalid OTLP endpoint {otlp_endpoint}"))?;
        let resource = Resource::builder()
            .with_service_name(service_name.to_owned())
            .with_attribute(KeyValue::new("service.version", SERVICE_VERSION))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .with_id_generator(LinkableIds::default())
            .build();
        let tracer = provider.tracer(TRACER_NAME);
        opentelemetry::global::set_tracer_provider(provider.clone());

        tracing_subscriber::registry()
            .with(log_filter())
            .with(tracing_opentelemetry::layer().with_tracer(tracer))
            .with(JsonLogLayer::new(service_name, std::io::stdout))
            .try_init()
            .context("a tracing subscriber is already installed")?;
        Ok(Self { provider })
    }

    /// Exports the spans still queued and stops the exporter. Blocks for at
    /// most a few seconds, on a blocking thread so the runtime can keep
    /// driving the gRPC channel.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let result =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "failed to flush spans on shutdown"),
            Err(error) => tracing::warn!(%error, "span flush task failed"),
        }
    }
}

/// Human-readable logs on stderr, for the launcher (its stdout is for the
/// user-facing lines).
pub fn init_launcher_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER))
}
