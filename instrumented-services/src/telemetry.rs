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
//!
//! A secured collector is reached with the OpenTelemetry SDKs' standard
//! environment variables: `OTEL_EXPORTER_OTLP_HEADERS` (e.g.
//! `authorization=Bearer%20<token>`, read by the exporter itself) and, for
//! an `https://` endpoint, `OTEL_EXPORTER_OTLP_CERTIFICATE` (the CA) and
//! `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`/`OTEL_EXPORTER_OTLP_CLIENT_KEY`
//! (mutual TLS), checked at start-up by [`exporter_tls`].

use std::cell::Cell;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use opentelemetry::KeyValue;
use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceId, Tracer as _,
    TracerProvider as _,
};
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
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
    /// `http://127.0.0.1:4317`), logs to stdout as lines in `log_format`.
    ///
    /// Must be called inside a Tokio runtime (the gRPC channel lives on it).
    pub fn init_service(
        service_name: &str,
        otlp_endpoint: &str,
        log_format: crate::json_log::LineFormat,
    ) -> anyhow::Result<Self> {
        let tls = exporter_tls(otlp_endpoint, |name| std::env::var_os(name))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        let exporter = match tls {
            Some(tls) => exporter.with_tls_config(tls),
            None => exporter,
        };
        let exporter = exporter
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
            .with(JsonLogLayer::new(service_name, std::io::stdout).with_format(log_format))
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

/// The CA that verifies an `https://` collector (PEM).
pub const OTLP_CA_ENV: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
/// The client certificate shown to the collector (PEM), for mutual TLS.
pub const OTLP_CLIENT_CERT_ENV: &str = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE";
/// The client certificate's private key (PEM).
pub const OTLP_CLIENT_KEY_ENV: &str = "OTEL_EXPORTER_OTLP_CLIENT_KEY";

/// The exporter's TLS settings for `endpoint`, from the standard variables
/// [`OTLP_CA_ENV`], [`OTLP_CLIENT_CERT_ENV`] and [`OTLP_CLIENT_KEY_ENV`]
/// (looked up with `var`): `None` for a plain `http://` endpoint.
///
/// An `https://` endpoint needs the CA (no system roots are built in); the
/// client certificate and key come together or not at all. Every file is
/// read and parsed here, so a missing or broken one stops the start with
/// an error naming the file and the variable instead of costing every span
/// later.
pub fn exporter_tls(
    endpoint: &str,
    var: impl Fn(&str) -> Option<OsString>,
) -> anyhow::Result<Option<ClientTlsConfig>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let path_of = |name: &str| {
        var(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    let read = |name: &str, path: &PathBuf| {
        std::fs::read(path)
            .with_context(|| format!("{name}={}: cannot read the file", path.display()))
    };
    let certificates = |name: &str, path: &PathBuf| -> anyhow::Result<Vec<u8>> {
        let pem = read(name, path)?;
        let count = CertificateDer::pem_slice_iter(&pem)
            .try_fold(0usize, |count, certificate| certificate.map(|_| count + 1))
            .map_err(|error| {
                anyhow::anyhow!("{name}={}: broken PEM certificate: {error}", path.display())
            })?;
        if count == 0 {
            bail!("{name}={}: no PEM certificate in the file", path.display());
        }
        Ok(pem)
    };

    let ca = path_of(OTLP_CA_ENV);
    let client_cert = path_of(OTLP_CLIENT_CERT_ENV);
    let client_key = path_of(OTLP_CLIENT_KEY_ENV);
    if !endpoint.starts_with("https://") {
        if let Some(name) = [
            (OTLP_CA_ENV, &ca),
            (OTLP_CLIENT_CERT_ENV, &client_cert),
            (OTLP_CLIENT_KEY_ENV, &client_key),
        ]
        .iter()
        .find_map(|(name, path)| path.as_ref().map(|_| name))
        {
            bail!("{name} is set but the OTLP endpoint {endpoint} is not https://");
        }
        return Ok(None);
    }
    let Some(ca) = ca else {
        bail!(
            "the OTLP endpoint {endpoint} is https:// but {OTLP_CA_ENV} is not set \
             (the CA file that verifies the collector; no system roots are built in)"
        );
    };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(certificates(OTLP_CA_ENV, &ca)?));
    match (client_cert, client_key) {
        (None, None) => {}
        (Some(_), None) => bail!("{OTLP_CLIENT_CERT_ENV} is set but {OTLP_CLIENT_KEY_ENV} is not"),
        (None, Some(_)) => bail!("{OTLP_CLIENT_KEY_ENV} is set but {OTLP_CLIENT_CERT_ENV} is not"),
        (Some(cert_path), Some(key_path)) => {
            let cert = certificates(OTLP_CLIENT_CERT_ENV, &cert_path)?;
            let key = read(OTLP_CLIENT_KEY_ENV, &key_path)?;
            PrivateKeyDer::from_pem_slice(&key).map_err(|error| {
                anyhow::anyhow!(
                    "{OTLP_CLIENT_KEY_ENV}={}: no usable PEM private key: {error}",
                    key_path.display()
                )
            })?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
    }
    Ok(Some(tls))
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// `exporter_tls` for `endpoint` with only `vars` set.
    fn tls_with(endpoint: &str, vars: &[(&str, &Path)]) -> anyhow::Result<Option<ClientTlsConfig>> {
        exporter_tls(endpoint, |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, path)| path.as_os_str().to_owned())
        })
    }

    #[test]
    fn plain_http_needs_no_files_and_refuses_tls_variables() {
        assert!(tls_with("http://127.0.0.1:4317", &[]).unwrap().is_none());
        let error = tls_with(
            "http://127.0.0.1:4317",
            &[(OTLP_CA_ENV, Path::new("/ca.pem"))],
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("OTEL_EXPORTER_OTLP_CERTIFICATE is set"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_or_broken_pem_names_the_file_and_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not-a-cert.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let missing = dir.path().join("missing.pem");
        let https = "https://127.0.0.1:4317";
        for (vars, expected) in [
            (
                vec![],
                "OTEL_EXPORTER_OTLP_CERTIFICATE is not set".to_owned(),
            ),
            (
                vec![(OTLP_CA_ENV, missing.as_path())],
                format!(
                    "OTEL_EXPORTER_OTLP_CERTIFICATE={}: cannot read",
                    missing.display()
                ),
            ),
            (
                vec![(OTLP_CA_ENV, not_pem.as_path())],
                format!(
                    "OTEL_EXPORTER_OTLP_CERTIFICATE={}: no PEM certificate",
                    not_pem.display()
                ),
            ),
            (
                vec![(OTLP_CA_ENV, broken.as_path())],
                format!(
                    "OTEL_EXPORTER_OTLP_CERTIFICATE={}: broken PEM",
                    broken.display()
                ),
            ),
        ] {
            let error = format!("{:#}", tls_with(https, &vars).unwrap_err());
            assert!(error.contains(&expected), "{expected}: {error}");
        }
    }

    #[test]
    fn client_certificate_and_key_come_together_and_the_key_must_parse() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert_pem = params.self_signed(&key).unwrap().pem();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, &cert_pem).unwrap();
        let key_file = dir.path().join("key.pem");
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let https = "https://127.0.0.1:4317";

        let tls = tls_with(
            https,
            &[
                (OTLP_CA_ENV, &cert),
                (OTLP_CLIENT_CERT_ENV, &cert),
                (OTLP_CLIENT_KEY_ENV, &key_file),
            ],
        );
        assert!(tls.unwrap().is_some());

        let error = tls_with(
            https,
            &[(OTLP_CA_ENV, &cert), (OTLP_CLIENT_CERT_ENV, &cert)],
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("OTEL_EXPORTER_OTLP_CLIENT_KEY is not"),
            "{error}"
        );
        // A certificate where the key should be.
        let error = tls_with(
            https,
            &[
                (OTLP_CA_ENV, &cert),
                (OTLP_CLIENT_CERT_ENV, &cert),
                (OTLP_CLIENT_KEY_ENV, &cert),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains(&format!(
                "OTEL_EXPORTER_OTLP_CLIENT_KEY={}: no usable PEM private key",
                cert.display()
            )),
            "{error}"
        );
    }
}
