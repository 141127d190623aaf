//! JSON log lines that join logs to traces.
//!
//! [`JsonLogLayer`] is a `tracing-subscriber` layer that writes one JSON
//! object per event and line:
//!
//! ```json
//! {"timestamp":"2026-11-21T05:48:48.123456789Z","level":"INFO","message":"order created",
//!  "service":"order","version":"0.1.0","target":"sightline_demo::service::order",
//!  "request_id":"3f2a…","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7",
//!  "order_id":"ord-1a2b3c4d5e6f","user_id":"u1"}
//! ```
//!
//! - `timestamp`: RFC 3339, UTC, nanoseconds; `level`: `TRACE` to `ERROR`;
//!   `message`: the event's message (when it has none: its `name` field,
//!   else empty);
//!   `service`: the service name; `version`: its version (this crate's);
//!   `target`: the module that logged.
//! - `request_id`: the nearest `request_id` field of the event's span or its
//!   ancestors (or of the event itself); absent outside requests.
//! - `trace_id` (32 hex) and `span_id` (16 hex): the OpenTelemetry span
//!   context of the event's span, as set up by `tracing-opentelemetry`;
//!   absent outside spans.
//! - then the event's own fields at top level. A field named like one of the
//!   fixed keys above (other than `request_id`) is written as `field.<name>`
//!   so it cannot forge them.
//!
//! With [`LineFormat::Text`] the same event is written as the plain text
//! many services still write, which the agent's `text` parser takes apart:
//!
//! ```text
//! 2026-11-21T05:48:48.123456789Z [INFO] order confirmation email sent: order_id=ord-1a2b, user_id=u1, amount=99.99, request_id=3f2a…, trace_id=4bf9…, span_id=00f0…
//! ```

use std::fmt;
use std::io::Write;
use std::sync::OnceLock;

use opentelemetry::trace::TraceContextExt;
use serde_json::Value;
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::telemetry::SERVICE_VERSION;

/// The span (or event) field whose value becomes the line's `request_id`.
pub const REQUEST_ID_FIELD: &str = "request_id";

/// Keys the layer writes itself; event fields cannot overwrite them.
const RESERVED_KEYS: [&str; 7] = [
    "timestamp",
    "level",
    "service",
    "version",
    "target",
    "trace_id",
    "span_id",
];

/// How a line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LineFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// `<timestamp> [<LEVEL>] <message>: key=value, key=value` (see the
    /// [module docs](self)).
    Text,
}

/// A layer writing one JSON object (or text line) per event to
/// `make_writer`, see the [module docs](self) for the format.
pub struct JsonLogLayer<W> {
    service: String,
    format: LineFormat,
    make_writer: W,
    dispatch: OnceLock<WeakDispatch>,
}

impl<W> JsonLogLayer<W> {
    /// A layer for `service`, writing to `make_writer` (for example
    /// `std::io::stdout`).
    pub fn new(service: impl Into<String>, make_writer: W) -> Self {
        Self {
            service: service.into(),
            format: LineFormat::Json,
            make_writer,
            dispatch: OnceLock::new(),
        }
    }

    /// The same layer writing lines in `format`.
    pub fn with_format(self, format: LineFormat) -> Self {
        Self { format, ..self }
    }

    /// The OpenTelemetry span context of span `id`, if the subscriber has a
    /// `tracing-opentelemetry` layer and the span context is valid.
    fn otel_ids(&self, id: &Id) -> Option<(String, String)> {
        let dispatch = self.dispatch.get()?.upgrade()?;
        let context = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
        let span = context.span();
        let span_context = span.span_context();
        span_context.is_valid().then(|| {
            (
                span_context.trace_id().to_string(),
                span_context.span_id().to_string(),
            )
        })
    }
}

/// The request id recorded on a span, kept in the span's extensions.
struct SpanRequestId(String);

impl<S, W> Layer<S> for JsonLogLayer<W>
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    W: for<'writer> MakeWriter<'writer> + 'static,
{
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        // The first registration wins; a layer is registered once.
        let _ = self.dispatch.set(dispatch.downgrade());
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut visitor = RequestIdVisitor::default();
        attrs.record(&mut visitor);
        if let (Some(request_id), Some(span)) = (visitor.request_id, ctx.span(id)) {
            span.extensions_mut().insert(SpanRequestId(request_id));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut visitor = RequestIdVisitor::default();
        values.record(&mut visitor);
        if let (Some(request_id), Some(span)) = (visitor.request_id, ctx.span(id)) {
            let mut extensions = span.extensions_mut();
            extensions.remove::<SpanRequestId>();
            extensions.insert(SpanRequestId(request_id));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let timestamp = crate::format_rfc3339_nanos(time::OffsetDateTime::now_utc());
        let metadata = event.metadata();

        let mut fields = FieldCollector::default();
        event.record(&mut fields);

        let event_span = ctx.event_span(event);
        let span_request_id = event_span.as_ref().and_then(|span| {
            span.scope().find_map(|ancestor| {
                let extensions = ancestor.extensions();
                extensions
                    .get::<SpanRequestId>()
                    .map(|request_id| request_id.0.clone())
            })
        });
        // No span extensions are borrowed here: `get_otel_context` locks them.
        let otel_ids = event_span
            .as_ref()
            .and_then(|span| self.otel_ids(&span.id()));

        let mut line = JsonLine::default();
        line.push("timestamp", Value::String(timestamp));
        line.push("level", Value::String(metadata.level().to_string()));
        let message = fields
            .message
            .take()
            .unwrap_or_else(|| fields.fallback_message());
        line.push("message", Value::String(message));
        line.push("service", Value::String(self.service.clone()));
        line.push("version", Value::String(SERVICE_VERSION.to_owned()));
        line.push("target", Value::String(metadata.target().to_owned()));
        if let Some(request_id) = fields.request_id.or(span_request_id) {
            line.push(REQUEST_ID_FIELD, Value::String(request_id));
        }
        if let Some((trace_id, span_id)) = otel_ids {
            line.push("trace_id", Value::String(trace_id));
            line.push("span_id", Value::String(span_id));
        }
        for (name, value) in fields.others {
            if RESERVED_KEYS.contains(&name) {
                line.push(&format!("field.{name}"), value);
            } else {
                line.push(name, value);
            }
        }

        let mut bytes = match self.format {
            LineFormat::Json => line.finish(),
            LineFormat::Text => text_line(&line.fields),
        };
        bytes.push(b'\n');
        let mut writer = self.make_writer.make_writer_for(metadata);
        // One write per line so concurrent lines never interleave. A failed
        // write to stdout cannot be reported anywhere better than stdout.
        let _ = writer.write_all(&bytes);
        let _ = writer.flush();
    }
}

/// A JSON object written key by key, so the fixed keys come first; the
/// fields are kept too for a text line.
#[derive(Default)]
struct JsonLine {
    bytes: Vec<u8>,
    fields: Vec<(String, Value)>,
}

impl JsonLine {
    fn push(&mut self, key: &str, value: Value) {
        self.bytes
            .push(if self.bytes.is_empty() { b'{' } else { b',' });
        // Serializing a `str` or a `Value` into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut self.bytes, key);
        self.bytes.push(b':');
        let _ = serde_json::to_writer(&mut self.bytes, &value);
        self.fields.push((key.to_owned(), value));
    }

    fn finish(mut self) -> Vec<u8> {
        if self.bytes.is_empty() {
            self.bytes.push(b'{');
        }
        self.bytes.push(b'}');
        self.bytes
    }
}

/// `<timestamp> [<LEVEL>] <message>: key=value, ...`: the fields a text
/// line leaves out are those the agent knows from elsewhere (`service` and
/// `version` from the resource, `target`).
fn text_line(fields: &[(String, Value)]) -> Vec<u8> {
    let text = |key: &str| {
        fields
            .iter()
            .find(|(name, _)| name == key)
            .and_then(|(_, value)| value.as_str())
            .unwrap_or_default()
    };
    let mut line = format!(
        "{} [{}] {}",
        text("timestamp"),
        text("level"),
        text("message")
    );
    let mut first = true;
    for (key, value) in fields {
        if matches!(
            key.as_str(),
            "timestamp" | "level" | "message" | "service" | "version" | "target"
        ) {
            continue;
        }
        line.push_str(if first { ": " } else { ", " });
        first = false;
        line.push_str(key);
        line.push('=');
        match value {
            Value::String(text)
                if !text.is_empty()
                    && !text.contains([' ', ',', '"', '=', '\\'])
                    && text.parse::<f64>().is_err()
                    && text != "true"
                    && text != "false" =>
            {
                line.push_str(text);
            }
            // Quoted so it stays one text value (JSON string escapes).
            Value::String(text) => line.push_str(&Value::from(text.as_str()).to_string()),
            other => line.push_str(&other.to_string()),
        }
    }
    line.into_bytes()
}

/// Finds a `request_id` field among a span's fields.
#[derive(Default)]
struct RequestIdVisitor {
    request_id: Option<String>,
}

impl Visit for RequestIdVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == REQUEST_ID_FIELD {
            self.request_id = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == REQUEST_ID_FIELD {
            self.request_id = Some(format!("{value:?}"));
        }
    }
}

/// Collects an event's fields as JSON values.
#[derive(Default)]
struct FieldCollector {
    message: Option<String>,
    request_id: Option<String>,
    others: Vec<(&'static str, Value)>,
}

impl FieldCollector {
    /// The message of an event logged without one: its `name` field (the
    /// OpenTelemetry SDK's internal events have one), else empty.
    fn fallback_message(&self) -> String {
        self.others
            .iter()
            .find_map(|(name, value)| (*name == "name").then(|| value.as_str()).flatten())
            .unwrap_or_default()
            .to_owned()
    }

    fn put(&mut self, field: &Field, value: Value) {
        match (field.name(), value) {
            ("message", Value::String(message)) => self.message = Some(message),
            (REQUEST_ID_FIELD, Value::String(request_id)) => self.request_id = Some(request_id),
            (name, value) => self.others.push((name, value)),
        }
    }
}

impl Visit for FieldCollector {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use std::sync::{Arc, Mutex};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Buffer {
        fn lines(&self) -> Vec<serde_json::Map<String, Value>> {
            let bytes = self.0.lock().unwrap().clone();
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect()
        }
    }

    fn with_subscriber(buffer: &Buffer, run: impl FnOnce()) {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(JsonLogLayer::new("order", buffer.clone()));
        tracing::subscriber::with_default(subscriber, run);
    }

    #[test]
    fn event_in_a_request_span_carries_request_and_trace_ids() {
        let buffer = Buffer::default();
        let mut expected_ids = None;
        with_subscriber(&buffer, || {
            let request = tracing::info_span!("request", request_id = "req-1");
            let inner = tracing::info_span!(parent: &request, "inner");
            let _entered = inner.enter();
            tracing::info!(order_id = "ord-1", quantity = 2, ok = true, "order created");
            let context = inner.context();
            let span = context.span();
            let span_context = span.span_context();
            expected_ids = Some((
                span_context.trace_id().to_string(),
                span_context.span_id().to_string(),
            ));
        });
        let (trace_id, span_id) = expected_ids.unwrap();

        let lines = buffer.lines();
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        let raw = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(
            raw.starts_with("{\"timestamp\":\""),
            "fixed keys come first: {raw}"
        );
        assert!(
            raw.contains(r#","level":"INFO","message":"order created","service":"order","#),
            "{raw}"
        );
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "order created");
        assert_eq!(line["service"], "order");
        assert_eq!(line["version"], SERVICE_VERSION);
        assert_eq!(line["request_id"], "req-1");
        assert_eq!(line["trace_id"], trace_id.as_str());
        assert_eq!(line["span_id"], span_id.as_str());
        assert_eq!(trace_id.len(), 32);
        assert_eq!(span_id.len(), 16);
        assert_eq!(line["order_id"], "ord-1");
        assert_eq!(line["quantity"], 2);
        assert_eq!(line["ok"], true);
        let timestamp = line["timestamp"].as_str().unwrap();
        assert!(
            timestamp.ends_with('Z') && timestamp.len() == 30,
            "{timestamp}"
        );
    }

    #[test]
    fn a_text_line_has_the_header_the_message_and_typed_pairs() {
        let buffer = Buffer::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(JsonLogLayer::new("notification", buffer.clone()).with_format(LineFormat::Text));
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!("request", request_id = "req-1");
            let _entered = request.enter();
            tracing::info!(
                order_id = "ord-1",
                amount = 99.99,
                note = "two words, one comma",
                code = "007",
                "order confirmation email sent"
            );
        });
        let bytes = buffer.0.lock().unwrap().clone();
        let line = String::from_utf8(bytes).unwrap();
        let (timestamp, rest) = line.split_once(' ').unwrap();
        assert!(
            timestamp.ends_with('Z') && timestamp.contains('T'),
            "{line}"
        );
        let rest = rest.trim_end();
        assert!(
            rest.starts_with("[INFO] order confirmation email sent: request_id=req-1, trace_id="),
            "{line}"
        );
        assert!(
            rest.ends_with(
                r#", order_id=ord-1, amount=99.99, note="two words, one comma", code="007""#
            ),
            "{line}"
        );
        assert!(
            !rest.contains("service="),
            "the resource says the service: {line}"
        );
    }

    #[test]
    fn event_outside_spans_has_no_ids_and_reserved_fields_are_not_forged() {
        let buffer = Buffer::default();
        with_subscriber(&buffer, || {
            tracing::warn!(service = "forged", trace_id = "forged", "careful");
        });
        let line = &buffer.lines()[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "careful");
        assert_eq!(line["service"], "order");
        assert_eq!(line["field.service"], "forged");
        assert_eq!(line["field.trace_id"], "forged");
        assert!(!line.contains_key("trace_id"));
        assert!(!line.contains_key("request_id"));
    }

    #[test]
    fn request_id_recorded_later_and_on_the_event_are_used() {
        let buffer = Buffer::default();
        with_subscriber(&buffer, || {
            let span = tracing::info_span!("request", request_id = tracing::field::Empty);
            span.record("request_id", "late");
            let _entered = span.enter();
            tracing::info!("first");
            tracing::info!(request_id = "explicit", "second");
        });
        let lines = buffer.lines();
        assert_eq!(lines[0]["request_id"], "late");
        assert_eq!(lines[1]["request_id"], "explicit");
    }

    #[test]
    fn events_without_a_message_still_have_one() {
        let buffer = Buffer::default();
        with_subscriber(&buffer, || {
            tracing::error!(name = "BatchSpanProcessor.ExportError", error = "refused");
            tracing::info!(count = 1);
        });
        let lines = buffer.lines();
        assert_eq!(lines[0]["message"], "BatchSpanProcessor.ExportError");
        assert_eq!(lines[0]["name"], "BatchSpanProcessor.ExportError");
        assert_eq!(lines[1]["message"], "");
    }
}
