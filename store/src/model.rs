use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Resource attributes (`service.name`, `k8s.pod.name`, `host.name`, ...)
/// as a JSON object, shared by every record and span of one resource: a
/// batch holds one copy per resource, not one per record.
pub type SharedResource = Arc<Map<String, Value>>;

/// One log record as stored and as returned by queries.
///
/// Ids are lowercase hex strings; absent ids are `None`, never empty strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LogRecord {
    /// Event time, nanoseconds since the Unix epoch.
    pub timestamp: i64,
    /// When the pipeline first saw the record, nanoseconds since the epoch.
    pub observed_timestamp: i64,
    pub severity_text: String,
    /// OTLP severity number (1-24), 0 when unknown.
    pub severity_number: i32,
    pub body: String,
    /// `service.name` from the resource, or `unknown_service`.
    pub service: String,
    /// Resource attributes (`k8s.pod.name`, `host.name`, ...), as a JSON
    /// object. Absent from the stored JSON of format 3 partitions, which
    /// keep it once per stream.
    #[serde(default)]
    pub resource: SharedResource,
    /// Record attributes (parsed fields), as a JSON object.
    pub attributes: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Final status of a span, as OTLP defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SpanStatus {
    #[default]
    Unset,
    Ok,
    Error,
}

/// One span as stored and as returned by trace lookups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    pub name: String,
    pub service: String,
    /// OTLP span kind in lowercase: `internal`, `server`, `client`, `producer`, `consumer`.
    pub kind: String,
    /// Nanoseconds since the Unix epoch.
    pub start_time: i64,
    pub end_time: i64,
    pub status: SpanStatus,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_message: String,
    pub attributes: Map<String, Value>,
    pub resource: SharedResource,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<SpanEvent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<SpanLink>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Span {
    pub fn duration_nanos(&self) -> i64 {
        self.end_time.saturating_sub(self.start_time)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SpanEvent {
    pub time: i64,
    pub name: String,
    pub attributes: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SpanLink {
    pub trace_id: String,
    pub span_id: String,
    pub attributes: Map<String, Value>,
}
