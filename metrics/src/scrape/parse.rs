//! The exposition parser: Prometheus text format 0.0.4 and OpenMetrics 1.0.
//!
//! [`parse`] turns one scrape body into samples and family metadata, or
//! fails as a whole with a [`ParseError`] naming the line and what is wrong
//! there, as Prometheus fails a scrape on the first bad line.
//!
//! What each format accepts:
//! - both: `# HELP` (with `\\` and `\n` escapes), `# TYPE`, label values with
//!   `\\`, `\"` and `\n` escapes, `NaN`, `+Inf`, `-Inf`, an optional
//!   timestamp, and an exemplar after ` # ` (labels, value and an optional
//!   timestamp in seconds, kept with its sample);
//! - text: blank lines and other comments are skipped, timestamps are
//!   integer milliseconds;
//! - OpenMetrics: `# UNIT`, timestamps in (fractional) seconds, the body must
//!   end with `# EOF` and nothing may follow it, and the `_created` series of
//!   counters, histograms and summaries are dropped as Prometheus drops them.
//!
//! ```
//! use sightline_collector::scrape::parse::{parse, Format};
//!
//! let body = "# TYPE up_total counter\nup_total{job=\"a\\\"b\"} 1 1700000000000\n";
//! let exposition = parse(body, Format::Text).unwrap();
//! assert_eq!(exposition.samples[0].labels[1], ("job".to_string(), "a\"b".to_string()));
//! assert_eq!(exposition.samples[0].timestamp_ms, Some(1_700_000_000_000));
//! ```

use std::collections::BTreeMap;

use sightline_tsdb::{METRIC_NAME, MetricMetadata};
use sightline_vocab::names::is_metric_name;

/// The `Accept` header of a scrape, as Prometheus sends it.
pub const ACCEPT_HEADER: &str =
    "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1";

/// Which exposition format a body is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The format a response's `Content-Type` announces; text when absent or
    /// unknown, as Prometheus falls back.
    pub fn from_content_type(content_type: Option<&str>) -> Format {
        match content_type {
            Some(value)
                if value
                    .trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/openmetrics-text") =>
            {
                Format::OpenMetrics
            }
            _ => Format::Text,
        }
    }
}

/// One sample of a scrape body.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSample<'a> {
    /// The series as the line wrote it: the metric name and its label set,
    /// exactly (the key of a scrape cache).
    pub series: &'a str,
    name: &'a str,
    /// `__name__` first, then the labels in the order of the line; empty
    /// for a series the caller said it knows ([`parse_known`]), whose
    /// labels were not parsed again.
    pub labels: Vec<(String, String)>,
    /// The sample's own timestamp, in milliseconds, when the line had one.
    pub timestamp_ms: Option<i64>,
    pub value: f64,
    pub exemplar: Option<ParsedExemplar>,
}

/// The exemplar after a sample: `# {trace_id="..."} 0.42 [1700000000.123]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedExemplar {
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Its own timestamp (seconds in the text, as OpenMetrics writes it),
    /// in milliseconds.
    pub timestamp_ms: Option<i64>,
}

impl ParsedSample<'_> {
    /// The metric name.
    pub fn name(&self) -> &str {
        self.name
    }
}

/// A parsed scrape body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition<'a> {
    pub samples: Vec<ParsedSample<'a>>,
    /// Per metric family, from `# TYPE`, `# HELP` and `# UNIT`.
    pub metadata: BTreeMap<String, MetricMetadata>,
    /// Exemplars seen (also those of dropped `_created` samples).
    pub exemplars: usize,
    /// `_created` samples dropped.
    pub created_dropped: usize,
}

/// Why a body was refused: the 1-based line and what is wrong on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Decodes a body as UTF-8; the error names the line of the first bad byte.
pub fn decode_utf8(body: Vec<u8>) -> Result<String, ParseError> {
    String::from_utf8(body).map_err(|error| {
        let valid = error.utf8_error().valid_up_to();
        let line = 1 + error.as_bytes()[..valid]
            .iter()
            .filter(|byte| **byte == b'\n')
            .count();
        ParseError {
            line,
            message: "invalid UTF-8".to_string(),
        }
    })
}

/// The message of the [`ParseError`] that [`parse_limited`] stops with.
pub const SAMPLE_LIMIT_EXCEEDED: &str = "sample limit exceeded";

/// Parses a whole scrape body.
pub fn parse(text: &str, format: Format) -> Result<Exposition<'_>, ParseError> {
    parse_limited(text, format, usize::MAX)
}

/// Parses a scrape body, stopping at the first sample past `sample_limit`
/// with [`SAMPLE_LIMIT_EXCEEDED`], so a huge target costs at most the limit.
pub fn parse_limited(
    text: &str,
    format: Format,
    sample_limit: usize,
) -> Result<Exposition<'_>, ParseError> {
    parse_known(text, format, sample_limit, &|_| false)
}

/// [`parse_limited`] for a caller that keeps a scrape cache (as Prometheus
/// does): the labels of a series for which `known(series text)` is true
/// are not parsed (nor allocated) again, its sample has the series text
/// and no labels. The text of a known series was parsed whole before, so
/// it is valid; only where it ends is found (quotes and escapes honoured).
pub fn parse_known<'a>(
    text: &'a str,
    format: Format,
    sample_limit: usize,
    known: &dyn Fn(&str) -> bool,
) -> Result<Exposition<'a>, ParseError> {
    let mut parser = Parser {
        format,
        exposition: Exposition::default(),
        types: BTreeMap::new(),
        sample_limit,
        known,
    };
    let mut lines = text.split('\n').enumerate().peekable();
    let mut saw_eof = false;
    let mut last_line = 0;
    while let Some((index, raw)) = lines.next() {
        let number = index + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        // The piece after the final newline.
        if line.is_empty() && lines.peek().is_none() {
            break;
        }
        last_line = number;
        if saw_eof {
            return Err(ParseError {
                line: number,
                message: "unexpected content after # EOF".to_string(),
            });
        }
        let result = match format {
            Format::Text => parser.text_line(line),
            Format::OpenMetrics => parser.openmetrics_line(line, &mut saw_eof),
        };
        result.map_err(|message| ParseError {
            line: number,
            message,
        })?;
    }
    if format == Format::OpenMetrics && !saw_eof {
        return Err(ParseError {
            line: last_line.max(1),
            message: "missing # EOF at the end of an OpenMetrics body".to_string(),
        });
    }
    Ok(parser.exposition)
}

struct Parser<'a, 'k> {
    format: Format,
    exposition: Exposition<'a>,
    known: &'k dyn Fn(&str) -> bool,
    /// Family name to `# TYPE`, to find and drop `_created` series.
    types: BTreeMap<String, String>,
    /// Samples kept at most; one more fails the parse.
    sample_limit: usize,
}

const TEXT_TYPES: &[&str] = &["counter", "gauge", "histogram", "summary", "untyped"];
const OPENMETRICS_TYPES: &[&str] = &[
    "counter",
    "gauge",
    "histogram",
    "gaugehistogram",
    "stateset",
    "info",
    "summary",
    "unknown",
];

impl<'a> Parser<'a, '_> {
    fn text_line(&mut self, line: &'a str) -> Result<(), String> {
        let line = line.trim_start_matches([' ', '\t']);
        if line.is_empty() {
            return Ok(());
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start_matches([' ', '\t']);
            let (keyword, rest) = split_word(comment);
            return match keyword {
                "HELP" | "TYPE" => self.metadata_line(keyword, rest),
                // Any other comment is a comment.
                _ => Ok(()),
            };
        }
        self.sample_line(line)
    }

    fn openmetrics_line(&mut self, line: &'a str, saw_eof: &mut bool) -> Result<(), String> {
        if line.is_empty() {
            return Err("unexpected empty line".to_string());
        }
        if line == "# EOF" {
            *saw_eof = true;
            return Ok(());
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let (keyword, rest) = split_word(comment);
            return match keyword {
                "HELP" | "TYPE" | "UNIT" => self.metadata_line(keyword, rest),
                _ => Err(format!(
                    "expected # HELP, # TYPE, # UNIT or # EOF, found {:?}",
                    truncate(line)
                )),
            };
        }
        if line.starts_with('#') {
            return Err(format!("malformed comment {:?}", truncate(line)));
        }
        self.sample_line(line)
    }

    fn metadata_line(&mut self, keyword: &str, rest: &str) -> Result<(), String> {
        let (name, value) = split_word(rest);
        if name.is_empty() {
            return Err(format!("# {keyword} without a metric name"));
        }
        if !is_metric_name(name) {
            return Err(format!("invalid metric name {:?} in # {keyword}", name));
        }
        let entry = self
            .exposition
            .metadata
            .entry(name.to_string())
            .or_insert_with(|| MetricMetadata {
                kind: "unknown".to_string(),
                ..MetricMetadata::default()
            });
        match keyword {
            "HELP" => entry.help = unescape_help(value)?,
            "UNIT" => entry.unit = value.to_string(),
            _ => {
                let allowed = match self.format {
                    Format::Text => TEXT_TYPES,
                    Format::OpenMetrics => OPENMETRICS_TYPES,
                };
                let kind = value.trim_end_matches([' ', '\t']);
                if !allowed.contains(&kind) {
                    return Err(format!("unknown metric type {:?} for {name}", kind));
                }
                self.types.insert(name.to_string(), kind.to_string());
                entry.kind = if kind == "untyped" { "unknown" } else { kind }.to_string();
            }
        }
        Ok(())
    }

    fn sample_line(&mut self, line: &'a str) -> Result<(), String> {
        let mut cursor = Cursor { line, position: 0 };
        let name = cursor.metric_name().ok_or_else(|| {
            format!(
                "expected a metric name at the start of {:?}",
                truncate(line)
            )
        })?;
        let after_name = cursor.position;
        let known_end = {
            let mut ahead = Cursor {
                line,
                position: after_name,
            };
            ahead.skip_spaces();
            match ahead.peek() {
                Some(b'{') => label_set_end(ahead.rest()).map(|length| ahead.position + length),
                _ => Some(after_name),
            }
        }
        .filter(|end| (self.known)(&line[..*end]));
        let mut labels = Vec::new();
        let series_end;
        let mut spaces;
        if let Some(end) = known_end {
            cursor.position = end;
            series_end = end;
            spaces = cursor.skip_spaces();
        } else {
            labels.push((METRIC_NAME.to_string(), name.to_string()));
            spaces = cursor.skip_spaces();
            series_end = if cursor.eat(b'{') {
                cursor.label_set(&mut labels)?;
                let end = cursor.position;
                spaces = cursor.skip_spaces();
                end
            } else {
                after_name
            };
        }
        let series = &line[..series_end];
        if spaces == 0 {
            return Err(match cursor.peek() {
                None => format!("no value for {name}"),
                Some(_) => format!(
                    "unexpected character {:?} after the labels of {name}",
                    cursor.rest().chars().next().unwrap_or(' ')
                ),
            });
        }
        let value_token = cursor.token();
        let value = parse_float(value_token)
            .ok_or_else(|| format!("invalid value {:?} for {name}", truncate(value_token)))?;
        let mut timestamp_ms = None;
        let spaced = cursor.skip_spaces() > 0;
        if spaced && cursor.peek().is_some() && cursor.peek() != Some(b'#') {
            let token = cursor.token();
            timestamp_ms =
                Some(self.timestamp(token).ok_or_else(|| {
                    format!("invalid timestamp {:?} for {name}", truncate(token))
                })?);
            cursor.skip_spaces();
        }
        let mut exemplar = None;
        match cursor.peek() {
            None => {}
            Some(b'#') if spaced || timestamp_ms.is_some() => {
                exemplar = Some(
                    cursor
                        .exemplar()
                        .map_err(|error| format!("{error} of {name}"))?,
                );
                self.exposition.exemplars += 1;
            }
            Some(_) => {
                return Err(format!(
                    "unexpected {:?} after the value of {name}",
                    truncate(cursor.rest())
                ));
            }
        }
        if self.format == Format::OpenMetrics && self.is_created_series(name) {
            self.exposition.created_dropped += 1;
            return Ok(());
        }
        if self.exposition.samples.len() >= self.sample_limit {
            return Err(SAMPLE_LIMIT_EXCEEDED.to_string());
        }
        self.exposition.samples.push(ParsedSample {
            series,
            name,
            labels,
            timestamp_ms,
            value,
            exemplar,
        });
        Ok(())
    }

    fn timestamp(&self, token: &str) -> Option<i64> {
        match self.format {
            Format::Text => token.parse::<i64>().ok(),
            Format::OpenMetrics => {
                let seconds = token.parse::<f64>().ok().filter(|s| s.is_finite())?;
                let millis = (seconds * 1000.0).round();
                (millis.abs() < 9.2e18).then_some(millis as i64)
            }
        }
    }

    fn is_created_series(&self, name: &str) -> bool {
        let Some(family) = name.strip_suffix("_created") else {
            return false;
        };
        matches!(
            self.types.get(family).map(String::as_str),
            Some("counter" | "histogram" | "summary" | "gaugehistogram")
        )
    }
}

struct Cursor<'a> {
    line: &'a str,
    position: usize,
}

/// The length of the label set `{...}` at the start of `text`, up to and
/// including its `}` (quoted values may hold `}`, `"` escaped as `\"`);
/// `None` when it does not end.
fn label_set_end(text: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (index, byte) in text.bytes().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'}' if !quoted => return Some(index + 1),
            _ => {}
        }
    }
    None
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.line.as_bytes().get(self.position).copied()
    }

    fn rest(&self) -> &'a str {
        &self.line[self.position..]
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.position += 1;
            true
        } else {
            false
        }
    }

    /// Skips spaces and tabs; how many.
    fn skip_spaces(&mut self) -> usize {
        let start = self.position;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.position += 1;
        }
        self.position - start
    }

    /// Everything up to the next space, tab or end.
    fn token(&mut self) -> &'a str {
        let start = self.position;
        while !matches!(self.peek(), None | Some(b' ' | b'\t')) {
            self.position += 1;
        }
        &self.line[start..self.position]
    }

    fn name_with(&mut self, colon: bool) -> Option<&'a str> {
        let start = self.position;
        while let Some(byte) = self.peek() {
            let ok = byte.is_ascii_alphabetic()
                || byte == b'_'
                || (colon && byte == b':')
                || (self.position > start && byte.is_ascii_digit());
            if !ok {
                break;
            }
            self.position += 1;
        }
        (self.position > start).then(|| &self.line[start..self.position])
    }

    fn metric_name(&mut self) -> Option<&'a str> {
        self.name_with(true)
    }

    /// The inside of `{...}` after the `{`.
    fn label_set(&mut self, labels: &mut Vec<(String, String)>) -> Result<(), String> {
        loop {
            self.skip_spaces();
            if self.eat(b'}') {
                return Ok(());
            }
            let name = self.name_with(false).ok_or_else(|| {
                format!(
                    "expected a label name or '}}' at {:?}",
                    truncate(self.rest())
                )
            })?;
            self.skip_spaces();
            if !self.eat(b'=') {
                return Err(format!("expected '=' after label name {name}"));
            }
            self.skip_spaces();
            if !self.eat(b'"') {
                return Err(format!("expected '\"' to open the value of label {name}"));
            }
            let value = self.label_value(name)?;
            if labels.iter().any(|(existing, _)| existing == name) {
                return Err(format!("duplicate label name {name}"));
            }
            labels.push((name.to_string(), value));
            self.skip_spaces();
            if self.eat(b',') {
                continue;
            }
            if self.eat(b'}') {
                return Ok(());
            }
            return Err(format!(
                "expected ',' or '}}' after the value of label {name}"
            ));
        }
    }

    /// A quoted label value after its opening quote, escapes resolved.
    fn label_value(&mut self, name: &str) -> Result<String, String> {
        let mut value = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((offset, character)) = chars.next() {
            match character {
                '"' => {
                    self.position += offset + 1;
                    return Ok(value);
                }
                '\\' => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => {
                        return Err(format!(
                            "invalid escape sequence '\\{other}' in the value of label {name}"
                        ));
                    }
                    None => break,
                },
                other => value.push(other),
            }
        }
        Err(format!("unterminated value of label {name}"))
    }

    /// `# {labels} value [timestamp]` after a sample.
    fn exemplar(&mut self) -> Result<ParsedExemplar, String> {
        self.eat(b'#');
        self.skip_spaces();
        if !self.eat(b'{') {
            return Err("expected '{' to open the exemplar".to_string());
        }
        let mut labels = Vec::new();
        self.label_set(&mut labels)
            .map_err(|error| format!("invalid exemplar: {error}"))?;
        if self.skip_spaces() == 0 {
            return Err("expected a value after the exemplar's labels".to_string());
        }
        let token = self.token();
        let Some(value) = parse_float(token) else {
            return Err(format!("invalid exemplar value {:?}", truncate(token)));
        };
        let mut timestamp_ms = None;
        if self.skip_spaces() > 0 && self.peek().is_some() {
            let timestamp = self.token();
            let millis = timestamp
                .parse::<f64>()
                .ok()
                .map(|seconds| (seconds * 1000.0).round())
                .filter(|millis| millis.is_finite() && millis.abs() < i64::MAX as f64);
            let Some(millis) = millis else {
                return Err(format!(
                    "invalid exemplar timestamp {:?}",
                    truncate(timestamp)
                ));
            };
            timestamp_ms = Some(millis as i64);
            self.skip_spaces();
        }
        if self.peek().is_some() {
            return Err(format!(
                "unexpected {:?} after the exemplar",
                truncate(self.rest())
            ));
        }
        Ok(ParsedExemplar {
            labels,
            value,
            timestamp_ms,
        })
    }
}

/// A sample value: a decimal float, `NaN`, `+Inf`, `-Inf` (any case, as Go's
/// `ParseFloat` reads them).
fn parse_float(token: &str) -> Option<f64> {
    if token.is_empty() {
        return None;
    }
    match token.to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "inf" | "+inf" | "infinity" | "+infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        _ => {
            // Rust also reads these words; they were handled above, and any
            // other letters but an exponent are not a number.
            if token.bytes().any(|byte| {
                !(byte.is_ascii_digit() || matches!(byte, b'.' | b'e' | b'E' | b'+' | b'-'))
            }) {
                return None;
            }
            token.parse().ok()
        }
    }
}

fn split_word(text: &str) -> (&str, &str) {
    match text.find([' ', '\t']) {
        Some(end) => (
            &text[..end],
            text[end + 1..].trim_start_matches([' ', '\t']),
        ),
        None => (text, ""),
    }
}

fn unescape_help(text: &str) -> Result<String, String> {
    let mut help = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(character) = chars.next() {
        if character != '\\' {
            help.push(character);
            continue;
        }
        match chars.next() {
            Some('\\') => help.push('\\'),
            Some('n') => help.push('\n'),
            Some('"') => help.push('"'),
            // Prometheus keeps an unknown escape as it is in HELP.
            Some(other) => {
                help.push('\\');
                help.push(other);
            }
            None => help.push('\\'),
        }
    }
    Ok(help)
}

/// A piece of input short enough for an error message.
fn truncate(text: &str) -> &str {
    match text.char_indices().nth(60) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn known_series_are_not_parsed_again_and_come_back_the_same() {
        let body = "# TYPE a counter\na_total{path=\"/x}\\\"y\",code=\"200\"} 1 1700000000000\nb 2\nc {l=\"v\"}  3\nd{} 4\n";
        let first = parse(body, Format::Text).unwrap();
        let series: Vec<&str> = first.samples.iter().map(|s| s.series).collect();
        assert_eq!(
            series,
            [
                "a_total{path=\"/x}\\\"y\",code=\"200\"}",
                "b",
                "c {l=\"v\"}",
                "d{}"
            ]
        );
        let known = |text: &str| series.contains(&text);
        let again = parse_known(body, Format::Text, usize::MAX, &known).unwrap();
        assert_eq!(again.samples.len(), first.samples.len());
        for (cached, parsed) in again.samples.iter().zip(&first.samples) {
            assert!(cached.labels.is_empty());
            assert_eq!(cached.series, parsed.series);
            assert_eq!(cached.name(), parsed.name());
            assert_eq!(cached.value, parsed.value);
            assert_eq!(cached.timestamp_ms, parsed.timestamp_ms);
        }
        // Only what is known is skipped.
        let some = parse_known(body, Format::Text, usize::MAX, &|text| text == "b").unwrap();
        assert!(some.samples[1].labels.is_empty());
        assert_eq!(some.samples[0].labels, first.samples[0].labels);
    }

    #[test]
    fn parsing_stops_at_the_first_sample_past_the_limit() {
        let body = "# TYPE m gauge\nm{i=\"1\"} 1\nm{i=\"2\"} 2\nm{i=\"3\"} 3\nnot a sample\n";
        let error = parse_limited(body, Format::Text, 2).unwrap_err();
        assert_eq!(error.line, 4);
        assert_eq!(error.message, SAMPLE_LIMIT_EXCEEDED);
        let exposition = parse_limited("m 1\nm2 2\n", Format::Text, 2).unwrap();
        assert_eq!(exposition.samples.len(), 2);
    }

    #[test]
    fn text_format_with_every_feature() {
        let body = "# HELP http_requests_total The total\\nnumber of \\\\ requests.\n\
# TYPE http_requests_total counter\n\
http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n\
http_requests_total{method=\"post\",code=\"400\",} 3 1395066363000\n\
\n\
# A free comment\n\
msdos_file_access_time_seconds{path=\"C:\\\\DIR\\\\FILE.TXT\",error=\"Cannot find file:\\n\\\"FILE.TXT\\\"\"} 1.458255915e9\n\
metric_without_timestamp_and_labels 12.47\n\
something_weird{problem=\"division by zero\"} +Inf -3982045\n\
minus_inf -Inf\n\
not_a_number NaN\n\
# TYPE rpc_duration_seconds summary\n\
rpc_duration_seconds{quantile=\"0.5\"} 4773\n\
rpc_duration_seconds_sum 1.7560473e+07\n\
rpc_duration_seconds_count 2693\n\
# TYPE latency histogram\n\
latency_bucket{le=\"0.1\"} 3\n\
latency_bucket{le=\"+Inf\"} 5\n\
latency_sum 0.7\n\
latency_count 5\n";
        let exposition = parse(body, Format::Text).unwrap();
        let samples = &exposition.samples;
        assert_eq!(samples.len(), 14);
        assert_eq!(
            samples[1].labels,
            labels(&[
                ("__name__", "http_requests_total"),
                ("method", "post"),
                ("code", "400")
            ])
        );
        assert_eq!(samples[1].timestamp_ms, Some(1_395_066_363_000));
        assert_eq!(samples[2].labels[1].1, "C:\\DIR\\FILE.TXT");
        assert_eq!(samples[2].labels[2].1, "Cannot find file:\n\"FILE.TXT\"");
        assert_eq!(samples[2].value, 1.458255915e9);
        assert_eq!(samples[3].timestamp_ms, None);
        assert_eq!(samples[4].value, f64::INFINITY);
        assert_eq!(samples[4].timestamp_ms, Some(-3_982_045));
        assert_eq!(samples[5].value, f64::NEG_INFINITY);
        assert!(samples[6].value.is_nan());
        assert_eq!(samples[7].labels[1], ("quantile".into(), "0.5".into()));
        assert_eq!(samples[11].name(), "latency_bucket");
        let metadata = &exposition.metadata["http_requests_total"];
        assert_eq!(metadata.kind, "counter");
        assert_eq!(metadata.help, "The total\nnumber of \\ requests.");
        assert_eq!(exposition.metadata["rpc_duration_seconds"].kind, "summary");
        assert_eq!(exposition.metadata["latency"].kind, "histogram");
    }

    #[test]
    fn openmetrics_with_units_exemplars_created_and_eof() {
        let body = "# TYPE acme_http_router_request_seconds summary\n\
# UNIT acme_http_router_request_seconds seconds\n\
# HELP acme_http_router_request_seconds Latency though all of ACME's HTTP request router.\n\
acme_http_router_request_seconds_sum{path=\"/api/v1\",method=\"GET\"} 9036.32\n\
acme_http_router_request_seconds_count{path=\"/api/v1\",method=\"GET\"} 807283.0\n\
acme_http_router_request_seconds_created{path=\"/api/v1\",method=\"GET\"} 1605281325.0\n\
# TYPE foo counter\n\
foo_total 17.0 1520879607.789 # {trace_id=\"KOO5S4vxi0o\"} 0.67\n\
foo_created 1520872607.123\n\
# TYPE hist histogram\n\
hist_bucket{le=\"0.01\"} 0 # {trace_id=\"a\"} 0.005 1520879607.7\n\
hist_bucket{le=\"+Inf\"} 17\n\
hist_count 17\n\
hist_sum 324789.3\n\
# EOF\n";
        let exposition = parse(body, Format::OpenMetrics).unwrap();
        let names: Vec<&str> = exposition.samples.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "acme_http_router_request_seconds_sum",
                "acme_http_router_request_seconds_count",
                "foo_total",
                "hist_bucket",
                "hist_bucket",
                "hist_count",
                "hist_sum"
            ]
        );
        assert_eq!(exposition.samples[2].timestamp_ms, Some(1_520_879_607_789));
        assert_eq!(exposition.exemplars, 2);
        assert_eq!(
            exposition.samples[2].exemplar,
            Some(ParsedExemplar {
                labels: vec![("trace_id".into(), "KOO5S4vxi0o".into())],
                value: 0.67,
                timestamp_ms: None,
            })
        );
        assert_eq!(
            exposition.samples[3].exemplar,
            Some(ParsedExemplar {
                labels: vec![("trace_id".into(), "a".into())],
                value: 0.005,
                timestamp_ms: Some(1_520_879_607_700),
            })
        );
        assert_eq!(exposition.samples[4].exemplar, None);
        assert_eq!(exposition.created_dropped, 2);
        let metadata = &exposition.metadata["acme_http_router_request_seconds"];
        assert_eq!(metadata.unit, "seconds");
        assert_eq!(metadata.kind, "summary");
        assert_eq!(exposition.metadata["foo"].kind, "counter");
    }

    #[test]
    fn parses_what_the_collector_serves() {
        let metrics = crate::span_metrics::SpanMetrics::default();
        let span = sightline_store::Span {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_string(),
            span_id: "00f067aa0ba902b7".to_string(),
            service: "check\"out".to_string(),
            name: "GET /cart".to_string(),
            kind: "server".to_string(),
            start_time: 0,
            end_time: 3_000_000,
            ..sightline_store::Span::default()
        };
        metrics.count(&[span]);
        for openmetrics in [false, true] {
            let text = metrics.render(openmetrics);
            let (body, format) = if openmetrics {
                (
                    crate::span_metrics::to_openmetrics(&text),
                    Format::OpenMetrics,
                )
            } else {
                (text, Format::Text)
            };
            let exposition = parse(&body, format).unwrap_or_else(|error| panic!("{error}\n{body}"));
            let calls = exposition
                .samples
                .iter()
                .find(|sample| sample.name() == "traces_spanmetrics_calls_total")
                .unwrap();
            assert_eq!(calls.value, 1.0);
            assert!(
                calls
                    .labels
                    .contains(&("service".into(), "check\"out".into()))
            );
            assert_eq!(exposition.exemplars, usize::from(openmetrics));
            let buckets = exposition
                .samples
                .iter()
                .filter(|sample| sample.name() == "traces_spanmetrics_duration_seconds_bucket")
                .count();
            assert!(buckets > 5, "{body}");
        }
    }

    /// Each malformed body fails on the line named, with what is wrong.
    #[test]
    fn malformed_input_names_line_and_problem() {
        let cases: &[(Format, &str, usize, &str)] = &[
            (
                Format::Text,
                "ok 1\nbad{a=\"1\" 2\n",
                2,
                "expected ',' or '}'",
            ),
            (
                Format::Text,
                "ok 1\n\nno_value\n",
                3,
                "no value for no_value",
            ),
            (Format::Text, "x{a=\"1\"}2\n", 1, "unexpected character '2'"),
            (Format::Text, "x abc\n", 1, "invalid value \"abc\""),
            (Format::Text, "x 1 12.5\n", 1, "invalid timestamp"),
            (Format::Text, "x 1 2 3\n", 1, "unexpected \"3\""),
            (
                Format::Text,
                "x{a=\"\\t\"} 1\n",
                1,
                "invalid escape sequence",
            ),
            (
                Format::Text,
                "x{a=\"open} 1\n",
                1,
                "unterminated value of label a",
            ),
            (
                Format::Text,
                "x{a=\"1\",a=\"2\"} 1\n",
                1,
                "duplicate label name a",
            ),
            (Format::Text, "x{1a=\"1\"} 1\n", 1, "expected a label name"),
            (
                Format::Text,
                "x{a 1\n",
                1,
                "expected '=' after label name a",
            ),
            (Format::Text, "x{a=1} 1\n", 1, "expected '\"'"),
            (
                Format::Text,
                "# TYPE x countr\n",
                1,
                "unknown metric type \"countr\"",
            ),
            (Format::Text, "# TYPE\n", 1, "without a metric name"),
            (Format::Text, "1x 1\n", 1, "expected a metric name"),
            (Format::Text, "x 1 # {a=\"b\"\n", 1, "invalid exemplar"),
            (Format::OpenMetrics, "x 1\n", 1, "missing # EOF"),
            (Format::OpenMetrics, "x 1\n# EOF\ny 2\n", 3, "after # EOF"),
            (
                Format::OpenMetrics,
                "x 1\n\n# EOF\n",
                2,
                "unexpected empty line",
            ),
            (
                Format::OpenMetrics,
                "# hello\n# EOF\n",
                1,
                "expected # HELP",
            ),
            (
                Format::OpenMetrics,
                "# TYPE x untyped\n# EOF\n",
                1,
                "unknown metric type",
            ),
            (
                Format::OpenMetrics,
                "x 1 abc\n# EOF\n",
                1,
                "invalid timestamp",
            ),
            (
                Format::OpenMetrics,
                "x 1 # {a=\"b\"}\n# EOF\n",
                1,
                "expected a value after the exemplar",
            ),
            (
                Format::OpenMetrics,
                "x 1 # {a=\"b\"} 1 2 3\n# EOF\n",
                1,
                "after the exemplar",
            ),
        ];
        for (format, body, line, message) in cases {
            let error = parse(body, *format).expect_err(body);
            assert_eq!(error.line, *line, "{body:?}: {error}");
            assert!(
                error.message.contains(message),
                "{body:?}: {error} should say {message:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_names_its_line() {
        let error = decode_utf8(b"a 1\nb{x=\"\xff\"} 1\n".to_vec()).unwrap_err();
        assert_eq!(error.line, 2);
    }

    #[test]
    fn content_type_picks_the_format() {
        assert_eq!(
            Format::from_content_type(Some(
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::from_content_type(Some("text/plain; version=0.0.4")),
            Format::Text
        );
        assert_eq!(Format::from_content_type(None), Format::Text);
    }

    proptest::proptest! {
        /// Any input gives samples or an error naming a line of the input,
        /// never a panic.
        #[test]
        fn never_panics(body in "[a-z_{}=\",# \\\\\n0-9.+\\-A-Za-z]{0,200}") {
            for format in [Format::Text, Format::OpenMetrics] {
                if let Err(error) = parse(&body, format) {
                    proptest::prop_assert!(error.line >= 1);
                    proptest::prop_assert!(error.line <= body.split('\n').count().max(1));
                }
            }
        }

        /// Label values survive escaping and parsing unchanged.
        #[test]
        fn label_values_round_trip(value in "\\PC{0,40}") {
            let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let body = format!("m{{l=\"{escaped}\"}} 1\n");
            let exposition = parse(&body, Format::Text).unwrap();
            proptest::prop_assert_eq!(&exposition.samples[0].labels[1].1, &value);
        }
    }
}
