//! Parsers: turn a decoded entry into an OTLP [`LogRecord`].
//!
//! A message that is a JSON object becomes structured (fields as
//! attributes, promoted severity, timestamp, trace context and request id);
//! so does a plain-text line in a format the `text` presets know (syslog,
//! klog, access logs, Python's and Java's loggers, a header of timestamp
//! and level, a `key=value` tail: `crate::text`); with the `logfmt` parser
//! `key=value` pairs do the same, and with the `regex` parser the named
//! captures of a configured regex. Anything else stays plain text in the
//! body. The field names looked for are
//! configurable ([`FieldNames`]).

use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use regex::Regex;
use serde_json::{Map, Value};

use crate::config::FieldsConfig;
use crate::decode::{Entry, parse_rfc3339_nanos};
use crate::otlp;

/// Attribute holding the stream (`stdout`/`stderr`) a line was written to.
pub const ATTR_IOSTREAM: &str = "log.iostream";
/// Attribute holding the request id, whatever the application called it.
pub const ATTR_REQUEST_ID: &str = "request_id";
/// Attribute set (to `true`) on messages cut at the size limit.
pub const ATTR_TRUNCATED: &str = "log.truncated";

/// The field names the parsers promote, from `[fields]` in the config.
#[derive(Debug, Clone)]
pub struct FieldNames {
    body: Vec<String>,
    severity: Vec<String>,
    timestamp: Vec<String>,
    trace_id: Vec<String>,
    span_id: Vec<String>,
    request_id: Vec<String>,
}

impl FieldNames {
    /// From the `[fields]` section.
    pub fn from_config(config: &FieldsConfig) -> FieldNames {
        FieldNames {
            body: config.message.clone(),
            severity: config.severity.clone(),
            timestamp: config.timestamp.clone(),
            trace_id: config.trace_id.clone(),
            span_id: config.span_id.clone(),
            request_id: config.request_id.clone(),
        }
    }
}

impl Default for FieldNames {
    fn default() -> Self {
        FieldNames::from_config(&FieldsConfig::default())
    }
}

/// How a message is parsed.
#[derive(Debug, Clone)]
pub enum Parser {
    /// JSON objects are parsed, then the plain-text formats the `text`
    /// parser's presets know (their checks reject other lines by their
    /// first bytes); anything else stays text.
    Auto,
    /// JSON objects only; anything else stays text.
    Json,
    /// `key=value` pairs (values may be `"quoted"`); JSON objects still
    /// parse as JSON.
    Logfmt,
    /// Named captures of the regex become fields; no match stays text.
    Regex(Arc<Regex>),
    /// Plain-text formats by preset (`crate::text`): header, message and a
    /// `key=value` tail; JSON objects still parse as JSON, and lines no
    /// preset knows stay text. The same as `Auto` today; named so a rule
    /// says what it expects.
    Text,
    /// Messages stay text.
    None,
}
/// Nested object where `tracing-subscriber`'s JSON format puts event fields.
const NESTED_FIELDS_KEY: &str = "fields";

/// Normalised severity: the shared table of `sightline_vocab::severity`.
pub use sightline_vocab::severity::Severity;

/// Builds the OTLP record for one decoded entry with the default parser
/// and field names.
pub fn parse_entry(entry: Entry, observed_unix_nano: u64) -> LogRecord {
    parse_entry_with(
        entry,
        observed_unix_nano,
        &Parser::Auto,
        &FieldNames::default(),
    )
}

/// Builds the OTLP record for one decoded entry. Never fails: input the
/// parser does not recognise is kept as plain text.
pub fn parse_entry_with(
    entry: Entry,
    observed_unix_nano: u64,
    parser: &Parser,
    fields: &FieldNames,
) -> LogRecord {
    let mut record = LogRecord {
        time_unix_nano: entry.timestamp_unix_nano.unwrap_or(observed_unix_nano),
        observed_time_unix_nano: observed_unix_nano,
        ..Default::default()
    };
    let object = match parser {
        Parser::None => None,
        Parser::Json => json_object(&entry.message),
        Parser::Auto | Parser::Text => {
            json_object(&entry.message).or_else(|| crate::text::parse(&entry.message))
        }
        Parser::Logfmt => json_object(&entry.message).or_else(|| logfmt_object(&entry.message)),
        Parser::Regex(regex) => regex_object(regex, &entry.message),
    };
    match object {
        Some(object) => apply_fields(&mut record, object, entry.message, fields),
        None => record.body = Some(otlp::string_value(entry.message)),
    }
    if let Some(stream) = entry.stream {
        record.attributes.push(otlp::key_value(
            ATTR_IOSTREAM,
            otlp::string_value(stream.as_str()),
        ));
    }
    if entry.truncated {
        record
            .attributes
            .push(otlp::key_value(ATTR_TRUNCATED, otlp::bool_value(true)));
    }
    for (key, value) in entry.attributes {
        record
            .attributes
            .push(otlp::key_value(key, otlp::string_value(value)));
    }
    record
}

/// A parsed message's top-level fields, in their order. A vector, not a
/// map: a dozen keys are found faster by scanning than by tree lookups,
/// and building it costs one allocation.
type Object = Vec<(String, Value)>;

/// Deserializes a JSON object into an [`Object`].
struct TopLevel(Object);

impl<'de> serde::Deserialize<'de> for TopLevel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TopLevelVisitor;
        impl<'de> serde::de::Visitor<'de> for TopLevelVisitor {
            type Value = TopLevel;

            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TopLevel, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(12));
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    fields.push(entry);
                }
                Ok(TopLevel(fields))
            }
        }
        deserializer.deserialize_map(TopLevelVisitor)
    }
}

/// Key lookups shared by the top-level [`Object`] and nested JSON maps.
trait FieldMap {
    fn get_field(&self, key: &str) -> Option<&Value>;
    fn get_field_mut(&mut self, key: &str) -> Option<&mut Value>;
    fn remove_field(&mut self, key: &str) -> Option<Value>;
}

impl FieldMap for Object {
    fn get_field(&self, key: &str) -> Option<&Value> {
        self.iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value)
    }

    fn get_field_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.iter_mut()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value)
    }

    fn remove_field(&mut self, key: &str) -> Option<Value> {
        let index = self.iter().position(|(name, _)| name == key)?;
        Some(self.remove(index).1)
    }
}

impl FieldMap for Map<String, Value> {
    fn get_field(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }

    fn get_field_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.get_mut(key)
    }

    fn remove_field(&mut self, key: &str) -> Option<Value> {
        self.remove(key)
    }
}

fn json_object(message: &str) -> Option<Object> {
    let trimmed = message.trim();
    if !(trimmed.starts_with('{') && trimmed.ends_with('}')) {
        return None;
    }
    serde_json::from_str::<TopLevel>(trimmed)
        .ok()
        .map(|top| top.0)
}

/// `level=info msg="order placed" id=7`: at least one pair, else `None`
/// (plain text is not logfmt). Bare words next to pairs are kept as keys
/// with value `true`.
fn logfmt_object(message: &str) -> Option<Object> {
    let mut object = Object::new();
    let mut pairs = 0;
    let bytes = message.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        while index < bytes.len() && bytes[index] == b' ' {
            index += 1;
        }
        let key_start = index;
        while index < bytes.len() && bytes[index] != b'=' && bytes[index] != b' ' {
            index += 1;
        }
        let key = &message[key_start..index];
        if key.is_empty() {
            if index < bytes.len() {
                // A stray `=`: not logfmt.
                return None;
            }
            break;
        }
        if index >= bytes.len() || bytes[index] == b' ' {
            object.push((key.to_owned(), Value::Bool(true)));
            continue;
        }
        index += 1; // '='
        let value = if index < bytes.len() && bytes[index] == b'"' {
            index += 1;
            let mut value = String::new();
            let mut closed = false;
            while index < bytes.len() {
                match bytes[index] {
                    b'\\' if index + 1 < bytes.len() => {
                        // The escaped character may be multi-byte.
                        let escaped = message[index + 1..].chars().next().unwrap_or('\\');
                        value.push(match escaped {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        });
                        index += 1 + escaped.len_utf8();
                    }
                    b'"' => {
                        index += 1;
                        closed = true;
                        break;
                    }
                    _ => {
                        let rest = &message[index..];
                        let next = rest.chars().next().unwrap_or(' ');
                        value.push(next);
                        index += next.len_utf8();
                    }
                }
            }
            if !closed {
                return None;
            }
            value
        } else {
            let value_start = index;
            while index < bytes.len() && bytes[index] != b' ' {
                index += 1;
            }
            message[value_start..index].to_owned()
        };
        pairs += 1;
        object.push((key.to_owned(), Value::String(value)));
    }
    (pairs > 0).then_some(object)
}

fn regex_object(regex: &Regex, message: &str) -> Option<Object> {
    let captures = regex.captures(message)?;
    let mut object = Object::new();
    for name in regex.capture_names().flatten() {
        if let Some(found) = captures.name(name) {
            object.push((name.to_owned(), Value::String(found.as_str().to_owned())));
        }
    }
    Some(object)
}

fn apply_fields(record: &mut LogRecord, mut object: Object, raw: String, fields: &FieldNames) {
    let body = take_first(&mut object, &fields.body)
        .or_else(|| take_nested(&mut object, &fields.body))
        .map(|value| match value {
            Value::String(text) => otlp::string_value(text),
            other => json_to_any(other),
        });
    record.body = Some(body.unwrap_or_else(|| otlp::string_value(raw)));

    if let Some(level) = take_first(&mut object, &fields.severity) {
        let (text, number) = severity_of(&level);
        record.severity_text = text;
        record.severity_number = number;
    }

    if let Some(time_unix_nano) = take_parsed(&mut object, &fields.timestamp, timestamp_of) {
        record.time_unix_nano = time_unix_nano;
    }

    let trace_id = take_parsed(&mut object, &fields.trace_id, hex_id::<16>)
        .or_else(|| take_parsed_nested(&mut object, &fields.trace_id, hex_id::<16>));
    if let Some(trace_id) = trace_id {
        record.trace_id = trace_id.to_vec();
    }
    let span_id = take_parsed(&mut object, &fields.span_id, hex_id::<8>)
        .or_else(|| take_parsed_nested(&mut object, &fields.span_id, hex_id::<8>));
    if let Some(span_id) = span_id {
        record.span_id = span_id.to_vec();
    }

    let request_id = take_first(&mut object, &fields.request_id)
        .or_else(|| take_nested(&mut object, &fields.request_id));
    if let Some(request_id) = request_id {
        let text = match request_id {
            Value::String(text) => text,
            other => other.to_string(),
        };
        record
            .attributes
            .push(otlp::key_value(ATTR_REQUEST_ID, otlp::string_value(text)));
    }

    record.attributes.extend(
        object
            .into_iter()
            .map(|(key, value)| otlp::key_value(key, json_to_any(value))),
    );
}

/// Removes and returns the value of the first key present.
fn take_first(object: &mut impl FieldMap, keys: &[String]) -> Option<Value> {
    keys.iter().find_map(|key| object.remove_field(key))
}

/// Like [`take_first`], inside the nested `fields` object.
fn take_nested(object: &mut Object, keys: &[String]) -> Option<Value> {
    match object.get_field_mut(NESTED_FIELDS_KEY) {
        Some(Value::Object(fields)) => take_first(fields, keys),
        _ => None,
    }
}

/// Removes the first key whose value `parse` accepts; others stay put.
fn take_parsed<T>(
    object: &mut impl FieldMap,
    keys: &[String],
    parse: impl Fn(&Value) -> Option<T>,
) -> Option<T> {
    for key in keys {
        if let Some(parsed) = object.get_field(key).and_then(&parse) {
            object.remove_field(key);
            return Some(parsed);
        }
    }
    None
}

fn take_parsed_nested<T>(
    object: &mut Object,
    keys: &[String],
    parse: impl Fn(&Value) -> Option<T>,
) -> Option<T> {
    match object.get_field_mut(NESTED_FIELDS_KEY) {
        Some(Value::Object(fields)) => take_parsed(fields, keys, parse),
        _ => None,
    }
}

/// Severity text and number of a level value; unknown names keep their
/// text (uppercased) with number 0 (unspecified).
fn severity_of(level: &Value) -> (String, i32) {
    let known = match level {
        Value::String(name) => Severity::from_name(name),
        Value::Number(number) => number.as_i64().and_then(Severity::from_pino),
        _ => None,
    };
    match known {
        Some(severity) => (severity.text().to_owned(), severity.number()),
        None => match level {
            Value::String(name) => (name.trim().to_uppercase(), 0),
            other => (other.to_string(), 0),
        },
    }
}

/// RFC 3339 text, or a Unix epoch number in s, ms, µs or ns (guessed from
/// its magnitude, as zap and pino write them).
fn timestamp_of(value: &Value) -> Option<u64> {
    match value {
        Value::String(text) => parse_rfc3339_nanos(text),
        Value::Number(number) => {
            // Integers are scaled exactly; floats (`1700000000.123`) as floats.
            if let Some(epoch) = number.as_u64() {
                let scale = match epoch {
                    0 => return None,
                    e if e >= 100_000_000_000_000_000 => 1,
                    e if e >= 100_000_000_000_000 => 1_000,
                    e if e >= 100_000_000_000 => 1_000_000,
                    _ => 1_000_000_000,
                };
                return epoch.checked_mul(scale);
            }
            let epoch = number.as_f64()?;
            if !epoch.is_finite() || epoch <= 0.0 {
                return None;
            }
            let nanos = if epoch >= 1e17 {
                epoch
            } else if epoch >= 1e14 {
                epoch * 1e3
            } else if epoch >= 1e11 {
                epoch * 1e6
            } else {
                epoch * 1e9
            };
            // Float to int casts saturate; anything past u64 is nonsense anyway.
            Some(nanos as u64)
        }
        _ => None,
    }
}

/// A hex id of exactly `N` bytes that is not all zeros (invalid in W3C).
fn hex_id<const N: usize>(value: &Value) -> Option<[u8; N]> {
    let Value::String(text) = value else {
        return None;
    };
    let mut id = [0u8; N];
    hex::decode_to_slice(text.trim(), &mut id).ok()?;
    id.iter().any(|byte| *byte != 0).then_some(id)
}

fn object_to_key_values(object: Map<String, Value>) -> Vec<KeyValue> {
    object
        .into_iter()
        .map(|(key, value)| otlp::key_value(key, json_to_any(value)))
        .collect()
}

/// Maps JSON to an OTLP [`AnyValue`]: objects to kvlists, arrays to arrays,
/// integers to int, other numbers to double.
pub(crate) fn json_to_any(value: Value) -> AnyValue {
    match value {
        Value::Null => otlp::empty_value(),
        Value::Bool(flag) => otlp::bool_value(flag),
        Value::Number(number) => match number.as_i64() {
            Some(integer) => otlp::int_value(integer),
            None => otlp::double_value(number.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(text) => otlp::string_value(text),
        Value::Array(values) => otlp::array_value(values.into_iter().map(json_to_any).collect()),
        Value::Object(object) => otlp::kvlist_value(object_to_key_values(object)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::IoStream;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;

    const OBSERVED: u64 = 42;
    const CRI_TIME: u64 = 1_795_240_128_123_456_789;

    fn parse(message: &str) -> LogRecord {
        let entry = Entry {
            timestamp_unix_nano: Some(CRI_TIME),
            stream: Some(IoStream::Stdout),
            message: message.to_owned(),
            ..Entry::default()
        };
        parse_entry(entry, OBSERVED)
    }

    /// Renders an AnyValue compactly for table-driven assertions.
    fn show(value: &AnyValue) -> String {
        match &value.value {
            None => "null".to_owned(),
            Some(Any::StringValue(text)) => format!("{text:?}"),
            Some(Any::BoolValue(flag)) => flag.to_string(),
            Some(Any::IntValue(integer)) => format!("{integer}i"),
            Some(Any::DoubleValue(double)) => format!("{double}f"),
            Some(Any::ArrayValue(array)) => {
                format!(
                    "[{}]",
                    array.values.iter().map(show).collect::<Vec<_>>().join(",")
                )
            }
            Some(Any::KvlistValue(list)) => format!("{{{}}}", show_attributes(&list.values)),
            Some(other) => format!("{other:?}"),
        }
    }

    fn show_attributes(attributes: &[KeyValue]) -> String {
        let mut parts: Vec<String> = attributes
            .iter()
            .map(|kv| {
                format!(
                    "{}={}",
                    kv.key,
                    kv.value.as_ref().map(show).unwrap_or_default()
                )
            })
            .collect();
        parts.sort();
        parts.join(",")
    }

    /// `body | severity_text/number | time | attributes`
    fn render(record: &LogRecord) -> String {
        format!(
            "{} | {}/{} | {} | {}",
            record.body.as_ref().map(show).unwrap_or_default(),
            record.severity_text,
            record.severity_number,
            record.time_unix_nano,
            show_attributes(&record.attributes)
        )
    }

    #[test]
    fn json_and_plain_messages() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"level":"INFO","msg":"order placed","order":{"id":7,"items":["a","b"]},"ok":true,"ratio":0.5}"#,
                r#""order placed" | INFO/9 | 1795240128123456789 | log.iostream="stdout",ok=true,order={id=7i,items=["a","b"]},ratio=0.5f"#,
            ),
            (
                r#"{"severity":"warning","message":"slow","time":"2026-11-21T07:48:48.123456789+02:00"}"#,
                r#""slow" | WARN/13 | 1795240128123456789 | log.iostream="stdout""#,
            ),
            (
                r#"{"lvl":"eRRor","msg":"boom","ts":"not a time"}"#,
                r#""boom" | ERROR/17 | 1795240128123456789 | log.iostream="stdout",ts="not a time""#,
            ),
            (
                r#"{"timestamp":"2026-11-21T05:48:48Z","level":"INFO","fields":{"message":"tracing event","user":"u1"},"target":"order"}"#,
                r#""tracing event" | INFO/9 | 1795240128000000000 | fields={user="u1"},log.iostream="stdout",target="order""#,
            ),
            (
                r#"{"level":30,"time":1795240128123,"msg":"pino"}"#,
                r#""pino" | INFO/9 | 1795240128123000000 | log.iostream="stdout""#,
            ),
            (
                r#"{"level":"audit","msg":"custom level","v":null}"#,
                r#""custom level" | AUDIT/0 | 1795240128123456789 | log.iostream="stdout",v=null"#,
            ),
            (
                r#"{"no_message":1}"#,
                r#""{\"no_message\":1}" | /0 | 1795240128123456789 | log.iostream="stdout",no_message=1i"#,
            ),
            (
                "plain text",
                r#""plain text" | /0 | 1795240128123456789 | log.iostream="stdout""#,
            ),
            (
                r#"{"broken": "#,
                r#""{\"broken\": " | /0 | 1795240128123456789 | log.iostream="stdout""#,
            ),
            (
                "[1,2]",
                r#""[1,2]" | /0 | 1795240128123456789 | log.iostream="stdout""#,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(render(&parse(input)), *expected, "input: {input}");
        }
    }

    #[test]
    fn the_plain_text_walkthrough_line_becomes_a_structured_record() {
        // The line of the walkthrough, with the default (auto) parser.
        let record = parse(
            "2024-01-15 10:30:45 [INFO] Order created: order_id=5001, user_id=123, amount=99.99",
        );
        assert_eq!(
            render(&record),
            r#""Order created" | INFO/9 | 1705314645000000000 | amount=99.99f,log.iostream="stdout",order_id=5001i,user_id=123i"#
        );
        // Lines no preset knows stay as they are.
        let plain = parse("GET /healthz");
        assert_eq!(
            render(&plain),
            r#""GET /healthz" | /0 | 1795240128123456789 | log.iostream="stdout""#
        );
    }

    #[test]
    fn severity_names() {
        let cases: &[(&str, Option<(&str, i32)>)] = &[
            ("trace", Some(("TRACE", 1))),
            ("DEBUG", Some(("DEBUG", 5))),
            ("Info", Some(("INFO", 9))),
            ("notice", Some(("INFO", 10))),
            ("warning", Some(("WARN", 13))),
            ("WARN", Some(("WARN", 13))),
            ("err", Some(("ERROR", 17))),
            ("critical", Some(("FATAL", 21))),
            ("panic", Some(("FATAL", 21))),
            ("loud", None),
        ];
        for (name, expected) in cases {
            let got =
                Severity::from_name(name).map(|severity| (severity.text(), severity.number()));
            assert_eq!(got, *expected, "{name}");
        }
    }

    #[test]
    fn trace_context_and_request_id() {
        let record = parse(
            r#"{"msg":"charged","trace_id":"4BF92F3577B34DA6A3CE929D0E0E4736","spanId":"00f067aa0ba902b7","requestId":"req-42"}"#,
        );
        assert_eq!(
            hex::encode(&record.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(hex::encode(&record.span_id), "00f067aa0ba902b7");
        assert_eq!(
            show_attributes(&record.attributes),
            r#"log.iostream="stdout",request_id="req-42""#
        );
    }

    #[test]
    fn invalid_trace_ids_stay_attributes() {
        let record = parse(
            r#"{"msg":"x","trace_id":"abc","span_id":"0000000000000000","x-request-id":1234,"correlation_id":"c"}"#,
        );
        assert!(record.trace_id.is_empty());
        assert!(record.span_id.is_empty());
        assert_eq!(
            show_attributes(&record.attributes),
            r#"correlation_id="c",log.iostream="stdout",request_id="1234",span_id="0000000000000000",trace_id="abc""#
        );
    }

    #[test]
    fn nested_fields_trace_context() {
        let record = parse(
            r#"{"level":"DEBUG","fields":{"message":"m","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","request_id":"r1"}}"#,
        );
        assert_eq!(
            hex::encode(&record.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            show_attributes(&record.attributes),
            r#"fields={},log.iostream="stdout",request_id="r1""#
        );
    }

    #[test]
    fn plain_entry_without_runtime_time_uses_observed_time() {
        let entry = Entry {
            message: "hi".to_owned(),
            ..Entry::default()
        };
        let record = parse_entry(entry, OBSERVED);
        assert_eq!(record.time_unix_nano, OBSERVED);
        assert_eq!(record.observed_time_unix_nano, OBSERVED);
        assert!(record.attributes.is_empty());
    }

    fn parse_with(message: &str, parser: &Parser, fields: &FieldNames) -> LogRecord {
        let entry = Entry {
            timestamp_unix_nano: Some(CRI_TIME),
            message: message.to_owned(),
            ..Entry::default()
        };
        parse_entry_with(entry, OBSERVED, parser, fields)
    }

    #[test]
    fn logfmt_messages() {
        let cases: &[(&str, &str)] = &[
            (
                r#"level=warn msg="slow query" duration_ms=812 request_id=r-9 cached"#,
                r#""slow query" | WARN/13 | 1795240128123456789 | cached=true,duration_ms="812",request_id="r-9""#,
            ),
            (
                r#"ts=2026-11-21T05:48:48Z msg="say \"hi\"" x="#,
                r#""say \"hi\"" | /0 | 1795240128000000000 | x="""#,
            ),
            (
                "just some words",
                r#""just some words" | /0 | 1795240128123456789 | "#,
            ),
            (
                r#"msg="unterminated"#,
                r#""msg=\"unterminated" | /0 | 1795240128123456789 | "#,
            ),
            (
                // Found by fuzz/parse: an escaped multi-byte character panicked.
                r#"msg="a \é b""#,
                r#""a é b" | /0 | 1795240128123456789 | "#,
            ),
            (
                r#"{"msg":"json still wins"}"#,
                r#""json still wins" | /0 | 1795240128123456789 | "#,
            ),
        ];
        for (input, expected) in cases {
            let record = parse_with(input, &Parser::Logfmt, &FieldNames::default());
            assert_eq!(render(&record), *expected, "input: {input}");
        }
    }

    #[test]
    fn regex_parser_and_custom_field_names() {
        let regex = Regex::new(r"^(?P<sev>[A-Z]+) \[(?P<rid>[^\]]+)\] (?P<text>.*)$").unwrap();
        let fields = FieldNames::from_config(&FieldsConfig {
            message: vec!["text".to_owned()],
            severity: vec!["sev".to_owned()],
            request_id: vec!["rid".to_owned()],
            ..FieldsConfig::default()
        });
        let record = parse_with(
            "ERROR [abc-1] payment declined",
            &Parser::Regex(Arc::new(regex.clone())),
            &fields,
        );
        assert_eq!(
            render(&record),
            r#""payment declined" | ERROR/17 | 1795240128123456789 | request_id="abc-1""#
        );
        let unmatched = parse_with("no match", &Parser::Regex(Arc::new(regex)), &fields);
        assert_eq!(
            render(&unmatched),
            r#""no match" | /0 | 1795240128123456789 | "#
        );
        let json = parse_with(
            r#"{"text":"t","correlation_id":"c"}"#,
            &Parser::Auto,
            &fields,
        );
        assert_eq!(
            render(&json),
            r#""t" | /0 | 1795240128123456789 | correlation_id="c""#
        );
    }

    #[test]
    fn truncation_flag_and_runtime_attributes() {
        let entry = Entry {
            message: "cut".to_owned(),
            truncated: true,
            attributes: vec![("tag".to_owned(), "web".to_owned())],
            ..Entry::default()
        };
        let record = parse_entry(entry, OBSERVED);
        assert_eq!(
            show_attributes(&record.attributes),
            r#"log.truncated=true,tag="web""#
        );
    }
}
