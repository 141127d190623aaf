//! What a shipper's JSON document says about its log record: the one
//! mapping behind `_bulk` documents (`elastic.rs`) and OTLP records whose
//! body is a JSON object, as a string or a kvlist (what Fluent Bit's and the
//! OTel Collector's outputs send for a container's JSON line, unparsed).
//!
//! | record | document fields, first present wins |
//! |---|---|
//! | timestamp | `@timestamp`, `timestamp`, `time`, `ts` (RFC 3339, or epoch seconds / millis / micros / nanos by magnitude) |
//! | body | `message`, `log`, `msg` (when not an object) |
//! | severity | `level`, `severity`, `log.level`, `lvl`, normalized to OTLP text and number |
//! | service | `service.name`, `service`, `kubernetes.container_name`, `kubernetes.labels.app` |
//! | resource | Fluent Bit's `kubernetes.*` (`namespace_name`, `pod_name`, `pod_id`, `container_name`, `host`, `docker_id`, `container_image`) as OTel names, and `host.name` |
//! | trace_id, span_id | `trace_id`, `traceId`, `trace.id` / `span_id`, `spanId`, `span.id` when valid hex |
//! | attributes | every other field |
//!
//! Dotted names are looked up both as flat keys (`"log.level"`) and as
//! nested objects (`{"log": {"level": ..}}`).

use serde_json::{Map, Value};
use sightline_vocab::severity::Severity;

use crate::otlp::REQUEST_ID_KEYS;

/// A document taken apart into the parts of a log record.
#[derive(Debug, Default)]
pub(crate) struct Shaped {
    /// `None` without a timestamp field; an error (the field kept as an
    /// attribute) when it holds no time.
    pub(crate) timestamp: Option<Result<i64, String>>,
    pub(crate) body: Option<String>,
    pub(crate) severity: Option<(String, i32)>,
    /// `service.name`, or a name the Kubernetes fields give.
    pub(crate) service: Option<String>,
    /// Resource attributes the document carries (Kubernetes metadata).
    pub(crate) resource: Map<String, Value>,
    pub(crate) trace_id: Option<String>,
    pub(crate) span_id: Option<String>,
    /// Every other field.
    pub(crate) attributes: Map<String, Value>,
}

/// Takes `document` apart (see the module docs).
pub(crate) fn shape(mut document: Map<String, Value>) -> Shaped {
    let timestamp = take_first(&mut document, &["@timestamp", "timestamp", "time", "ts"]).map(
        |(field, value)| match parse_timestamp(&value) {
            Some(timestamp) => Ok(timestamp),
            None => {
                let message = format!(
                    "failed to parse field [{field}] of type [date]: {value} is neither RFC 3339 nor epoch time"
                );
                document.insert(field.to_string(), value);
                Err(message)
            }
        },
    );

    let body = ["message", "log", "msg"]
        .iter()
        .find_map(|field| match document.get(*field) {
            Some(Value::String(_) | Value::Number(_) | Value::Bool(_)) => {
                document.remove(*field).map(body_text)
            }
            _ => None,
        });

    let severity = take_first(&mut document, &["level", "severity", "log.level", "lvl"])
        .map(|(_, value)| severity(&value));

    let mut resource = Map::new();
    for (field, name) in [
        ("kubernetes.namespace_name", "k8s.namespace.name"),
        ("kubernetes.pod_name", "k8s.pod.name"),
        ("kubernetes.pod_id", "k8s.pod.uid"),
        ("kubernetes.container_name", "k8s.container.name"),
        ("kubernetes.host", "host.name"),
        ("kubernetes.docker_id", "container.id"),
        ("kubernetes.container_image", "container.image.name"),
        ("host.name", "host.name"),
    ] {
        if resource.contains_key(name) {
            continue;
        }
        // Objects and arrays stay attributes: a resource attribute is one value.
        if get_path(&document, field).is_some_and(is_scalar)
            && let Some(value) = take_path(&mut document, field)
        {
            resource.insert(name.to_string(), value);
        }
    }

    let service = match take_first(&mut document, &["service.name", "service"]) {
        Some((_, Value::String(name))) if !name.is_empty() => Some(name),
        Some((field, other)) => {
            // Not a usable name (an object, a number...): keep it as it came.
            document.insert(field.to_string(), other);
            fallback_service(&document, &resource)
        }
        None => fallback_service(&document, &resource),
    };

    let trace_id = take_id(&mut document, &["trace_id", "traceId", "trace.id"], 32);
    let span_id = take_id(&mut document, &["span_id", "spanId", "span.id"], 16);
    Shaped {
        timestamp,
        body,
        severity,
        service,
        resource,
        trace_id,
        span_id,
        attributes: document,
    }
}

/// The service of a document that names none.
pub(crate) const UNKNOWN_SERVICE: &str = "unknown_service";

/// A shipper's document as a log record ([`shape`]), with `origin` (the
/// index or tag it was sent to) as a resource attribute; an error when its
/// timestamp field holds no time. Without one, the time is `now`.
pub(crate) fn to_record(
    document: Map<String, Value>,
    (origin_key, origin): (&str, &str),
    now: i64,
) -> Result<sightline_store::LogRecord, String> {
    let shaped = shape(document);
    let timestamp = match shaped.timestamp {
        Some(Ok(timestamp)) => timestamp,
        Some(Err(message)) => return Err(message),
        None => now,
    };
    let mut resource = shaped.resource;
    let service = shaped
        .service
        .unwrap_or_else(|| UNKNOWN_SERVICE.to_string());
    resource.insert("service.name".into(), Value::String(service.clone()));
    resource.insert(origin_key.into(), Value::String(origin.to_string()));
    let (severity_text, severity_number) = shaped.severity.unwrap_or_default();
    Ok(sightline_store::LogRecord {
        timestamp,
        observed_timestamp: now,
        severity_text,
        severity_number,
        body: shaped.body.unwrap_or_default(),
        service,
        resource: std::sync::Arc::new(resource),
        request_id: request_id(&shaped.attributes),
        attributes: shaped.attributes,
        trace_id: shaped.trace_id,
        span_id: shaped.span_id,
    })
}

/// The request id among `attributes` ([`REQUEST_ID_KEYS`]), text or number.
pub(crate) fn request_id(attributes: &Map<String, Value>) -> Option<String> {
    REQUEST_ID_KEYS
        .iter()
        .find_map(|key| match attributes.get(*key)? {
            Value::String(id) if !id.is_empty() => Some(id.clone()),
            Value::Number(id) => Some(id.to_string()),
            _ => None,
        })
}

fn fallback_service(
    document: &Map<String, Value>,
    resource: &Map<String, Value>,
) -> Option<String> {
    let container = resource.get("k8s.container.name");
    let app = get_path(document, "kubernetes.labels.app");
    [container, app]
        .into_iter()
        .flatten()
        .find_map(|value| match value {
            Value::String(name) if !name.is_empty() => Some(name.clone()),
            _ => None,
        })
}

fn is_scalar(value: &Value) -> bool {
    !matches!(value, Value::Object(_) | Value::Array(_) | Value::Null)
}

fn body_text(value: Value) -> String {
    match value {
        Value::String(text) => text.trim_end_matches(['\n', '\r']).to_string(),
        other => other.to_string(),
    }
}

/// Removes and returns the first of `paths` present (flat or nested) with a
/// non-null value.
fn take_first(
    document: &mut Map<String, Value>,
    paths: &[&'static str],
) -> Option<(&'static str, Value)> {
    paths.iter().find_map(|path| {
        get_path(document, path).filter(|value| !value.is_null())?;
        take_path(document, path).map(|value| (*path, value))
    })
}

/// Removes an id field when it holds valid hex of `hex_len` digits (not all
/// zeros); anything else stays an attribute.
fn take_id(document: &mut Map<String, Value>, paths: &[&str], hex_len: usize) -> Option<String> {
    paths.iter().find_map(|path| {
        let Some(Value::String(text)) = get_path(document, path) else {
            return None;
        };
        let valid = text.len() == hex_len
            && text.bytes().all(|byte| byte.is_ascii_hexdigit())
            && text.bytes().any(|byte| byte != b'0');
        if !valid {
            return None;
        }
        let id = text.to_ascii_lowercase();
        take_path(document, path);
        Some(id)
    })
}

/// The value at a dotted path: the flat key itself, or nested objects along
/// any split of the path at its dots.
fn get_path<'a>(document: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = document.get(path) {
        return Some(value);
    }
    path.match_indices('.')
        .find_map(|(dot, _)| match document.get(&path[..dot]) {
            Some(Value::Object(inner)) => get_path(inner, &path[dot + 1..]),
            _ => None,
        })
}

/// Removes the value at a dotted path (see [`get_path`]); parents left empty
/// are removed too.
fn take_path(document: &mut Map<String, Value>, path: &str) -> Option<Value> {
    if let Some(value) = document.remove(path) {
        return Some(value);
    }
    for (dot, _) in path.match_indices('.') {
        let (parent, rest) = (&path[..dot], &path[dot + 1..]);
        let Some(Value::Object(inner)) = document.get_mut(parent) else {
            continue;
        };
        if let Some(value) = take_path(inner, rest) {
            if inner.is_empty() {
                document.remove(parent);
            }
            return Some(value);
        }
    }
    None
}

/// Nanoseconds since the epoch from an RFC 3339 string (a space instead of
/// `T` and a missing offset, meaning UTC, are tolerated) or an epoch number,
/// whose unit is guessed from its magnitude (seconds below 10^11, millis
/// below 10^14, micros below 10^17, nanos above).
pub(crate) fn parse_timestamp(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => match number.as_i64() {
            Some(whole) => epoch_to_nanos(whole, 0.0),
            None => epoch_float_to_nanos(number.as_f64()?),
        },
        Value::String(text) => {
            let text = text.trim();
            if let Ok(whole) = text.parse::<i64>() {
                return epoch_to_nanos(whole, 0.0);
            }
            if let Ok(number) = text.parse::<f64>() {
                return epoch_float_to_nanos(number);
            }
            parse_rfc3339(text)
        }
        _ => None,
    }
}

fn epoch_float_to_nanos(number: f64) -> Option<i64> {
    if !number.is_finite() || number < 0.0 || number >= i64::MAX as f64 {
        return None;
    }
    let whole = number.trunc();
    epoch_to_nanos(whole as i64, number - whole)
}

/// `whole` units plus a `fraction` of one, the unit guessed from the
/// magnitude. The fraction counts to the microsecond, as far as an f64 of
/// seconds since 1970 is precise.
fn epoch_to_nanos(whole: i64, fraction: f64) -> Option<i64> {
    let scale: i64 = match whole {
        ..0 => return None,
        0..100_000_000_000 => 1_000_000_000,
        100_000_000_000..100_000_000_000_000 => 1_000_000,
        100_000_000_000_000..100_000_000_000_000_000 => 1_000,
        _ => 1,
    };
    let fraction_micros = (fraction * scale as f64 / 1_000.0).round() as i64;
    whole
        .checked_mul(scale)?
        .checked_add(fraction_micros * 1_000)
}

fn parse_rfc3339(text: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let parse = |text: &str| {
        time::OffsetDateTime::parse(text, &Rfc3339)
            .ok()
            .and_then(|moment| i64::try_from(moment.unix_timestamp_nanos()).ok())
    };
    if let Some(nanos) = parse(text) {
        return Some(nanos);
    }
    // "2024-05-01 12:00:00.123" and "2024-05-01T12:00:00": shippers' local formats.
    let mut fixed = text.replacen(' ', "T", 1);
    let has_offset = fixed.ends_with(['Z', 'z'])
        || fixed
            .get(19..)
            .is_some_and(|tail| tail.contains(['+', '-']));
    if !has_offset {
        fixed.push('Z');
    }
    parse(&fixed)
}

/// OTLP severity text and number for a level as shippers write it: names
/// (`info`, `WARNING`, `err`, `crit`...), syslog numbers (0-7) and
/// pino/bunyan numbers (10-60), by the shared table of
/// `sightline_vocab::severity`. Unknown names keep their text, number 0.
pub(crate) fn severity(value: &Value) -> (String, i32) {
    let known = |severity: Severity| (severity.text().to_string(), severity.number());
    match value {
        Value::Number(number) => {
            let level = number.as_i64();
            let syslog_or_pino =
                |level| Severity::from_syslog(level).or(Severity::from_pino(level));
            match level.and_then(syslog_or_pino) {
                Some(severity) => known(severity),
                None => (number.to_string(), 0),
            }
        }
        Value::String(text) => {
            let trimmed = text.trim();
            if let Ok(number) = trimmed.parse::<i64>() {
                return severity(&Value::from(number));
            }
            match Severity::from_name(trimmed) {
                Some(severity) => known(severity),
                None => (trimmed.to_ascii_uppercase(), 0),
            }
        }
        Value::Bool(_) | Value::Null | Value::Array(_) | Value::Object(_) => (String::new(), 0),
    }
}
