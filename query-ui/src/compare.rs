//! Trace comparison: how one trace differs from another, or from what is
//! typical for its operations.
//!
//! `GET /api/traces/compare?a=<trace id>&b=<trace id>` compares two traces:
//! - **structure**: spans are keyed by their path from the root (`service
//!   name` of each ancestor, then their own), so a retry, a cache miss's
//!   extra call or a step skipped shows as a path one trace has more often
//!   than the other;
//! - **time**: self time (a span's duration minus the time its children
//!   covered) summed per service and per operation, side by side, and each
//!   trace's critical path (the chain of spans that set its latency, as
//!   Jaeger finds it);
//! - **the difference**: the operation whose self time differs most
//!   (spans only one trace has count fully), named in one sentence.
//!
//! `b=typical` compares trace `a` with what its operations usually take:
//! the p50 and p95 of each operation's duration over the hour before the
//! trace ended, from the span-derived RED metrics
//! (`traces_spanmetrics_duration_seconds_bucket`), two PromQL queries for
//! all of the trace's services. An operation slower than its p95 is named.
//!
//! Bounded: at most [`MAX_ROWS`] operations and structure rows are listed
//! (the largest differences first; the rest are counted in `warnings`), and
//! each trace is read whole once.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use sightline_store::traces::{critical_path, self_times};
use sightline_store::{Span, SpanStatus};
use sightline_tsdb::promql::{Engine, Value as PromValue};

use crate::QueryState;
use crate::error::ApiError;

/// Rows listed at most per table.
pub(crate) const MAX_ROWS: usize = 200;

/// How far back "typical" looks from the trace's end.
const TYPICAL_WINDOW: &str = "1h";

#[derive(Debug, Deserialize)]
pub(crate) struct CompareParams {
    a: Option<String>,
    b: Option<String>,
}

/// One trace's headline: its root, duration, size and critical path.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TraceSide {
    pub(crate) trace_id: String,
    pub(crate) root_service: String,
    pub(crate) root_name: String,
    /// Nanoseconds since the epoch.
    pub(crate) start: i64,
    /// Nanoseconds, first start to last end.
    pub(crate) duration: i64,
    pub(crate) span_count: usize,
    pub(crate) errors: usize,
    pub(crate) critical_path: Vec<PathStep>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PathStep {
    pub(crate) span_id: String,
    pub(crate) service: String,
    pub(crate) name: String,
    pub(crate) duration: i64,
    pub(crate) self_time: i64,
}

/// What one trace did in one operation (or service): spans, their summed
/// duration and self time, the longest span (nanoseconds), errors.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) count: usize,
    pub(crate) duration: i64,
    pub(crate) self_time: i64,
    pub(crate) longest: i64,
    pub(crate) errors: usize,
}

/// What an operation usually takes, nanoseconds (absent without metrics).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub(crate) struct Typical {
    pub(crate) p50: Option<i64>,
    pub(crate) p95: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct OperationRow {
    pub(crate) service: String,
    pub(crate) name: String,
    pub(crate) a: Usage,
    /// The other trace's (two traces).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) b: Option<Usage>,
    /// The operation's usual duration (`b=typical`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) typical: Option<Typical>,
    /// B's self time minus A's; with `typical`, A's longest span minus the
    /// p95 (0 when within it or unknown).
    pub(crate) delta: i64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServiceRow {
    pub(crate) service: String,
    pub(crate) a: Usage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) b: Option<Usage>,
}

/// A path from the root that the traces have a different number of times.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StructureRow {
    /// `service name` of each span from the root down to this one.
    pub(crate) path: Vec<String>,
    pub(crate) service: String,
    pub(crate) name: String,
    pub(crate) a: usize,
    pub(crate) b: usize,
}

/// `GET /api/traces/compare`.
#[derive(Debug, Serialize)]
pub(crate) struct Comparison {
    /// `trace` (two traces) or `typical`.
    pub(crate) mode: &'static str,
    pub(crate) a: TraceSide,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) b: Option<TraceSide>,
    /// The biggest difference, in one sentence.
    pub(crate) difference: String,
    /// The operation it is about, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) difference_operation: Option<(String, String)>,
    pub(crate) structure: Vec<StructureRow>,
    pub(crate) services: Vec<ServiceRow>,
    pub(crate) operations: Vec<OperationRow>,
    pub(crate) warnings: Vec<String>,
}

/// `GET /api/traces/compare?a=<trace id>&b=<trace id | typical>`
pub(crate) async fn compare(
    State(state): State<QueryState>,
    Query(params): Query<CompareParams>,
) -> Result<Json<Comparison>, ApiError> {
    let trace_id = |name: &str, value: Option<String>| {
        let value = value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::BadRequest(format!("{name}: a trace id is needed")))?;
        if value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(value.to_ascii_lowercase())
        } else {
            Err(ApiError::BadRequest(format!(
                "{name}: {value:?} is not a trace id (32 hex digits)"
            )))
        }
    };
    let a = trace_id("a", params.a)?;
    let b = match params.b.as_deref() {
        Some("typical") => None,
        _ => Some(trace_id("b (a trace id or typical)", params.b)?),
    };
    let comparison =
        tokio::task::spawn_blocking(move || compare_blocking(&state, &a, b.as_deref()))
            .await
            .map_err(|error| ApiError::Internal(error.to_string()))??;
    Ok(Json(comparison))
}

fn read(state: &QueryState, trace_id: &str, name: &str) -> Result<Analysed, ApiError> {
    let spans = state.spans.trace(trace_id)?;
    if spans.is_empty() {
        return Err(ApiError::NotFound(format!(
            "{name}: trace {trace_id} not found"
        )));
    }
    Ok(Analysed::new(trace_id, spans))
}

fn compare_blocking(state: &QueryState, a: &str, b: Option<&str>) -> Result<Comparison, ApiError> {
    let a = read(state, a, "a")?;
    match b {
        Some(b) => Ok(compare_traces(&a, &read(state, b, "b")?)),
        None => {
            let typical = typical_of(state, &a);
            Ok(compare_typical(&a, &typical))
        }
    }
}

/// One trace, read and measured.
pub(crate) struct Analysed {
    side: TraceSide,
    operations: BTreeMap<(String, String), Usage>,
    services: BTreeMap<String, Usage>,
    paths: BTreeMap<Vec<String>, usize>,
}

impl Analysed {
    pub(crate) fn new(trace_id: &str, spans: Vec<Span>) -> Analysed {
        let ids: HashMap<&str, usize> = spans
            .iter()
            .enumerate()
            .map(|(index, span)| (span.span_id.as_str(), index))
            .collect();
        let self_times = self_times(&spans);
        // The root: no parent in this trace; the earliest such.
        let parent_of = |span: &Span| {
            span.parent_span_id
                .as_deref()
                .and_then(|parent| ids.get(parent).copied())
        };
        let root = spans
            .iter()
            .filter(|span| parent_of(span).is_none())
            .min_by_key(|span| span.start_time)
            .unwrap_or(&spans[0]);
        let mut operations: BTreeMap<(String, String), Usage> = BTreeMap::new();
        let mut services: BTreeMap<String, Usage> = BTreeMap::new();
        let mut paths: BTreeMap<Vec<String>, usize> = BTreeMap::new();
        for (index, span) in spans.iter().enumerate() {
            let error = usize::from(span.status == SpanStatus::Error);
            let add = |usage: &mut Usage| {
                usage.count += 1;
                usage.duration += span.duration_nanos();
                usage.self_time += self_times[index];
                usage.longest = usage.longest.max(span.duration_nanos());
                usage.errors += error;
            };
            let key = (span.service.clone(), span.name.clone());
            add(operations.entry(key).or_default());
            add(services.entry(span.service.clone()).or_default());
            // The path from the root, at most 64 deep (a cycle in bad data
            // stops there).
            let mut path = vec![operation_text(span)];
            let mut cursor = parent_of(span);
            while let Some(parent) = cursor
                && path.len() < 64
            {
                path.push(operation_text(&spans[parent]));
                cursor = parent_of(&spans[parent]);
            }
            path.reverse();
            *paths.entry(path).or_default() += 1;
        }
        let by_id: HashMap<&str, (&Span, i64)> = spans
            .iter()
            .zip(&self_times)
            .map(|(span, self_time)| (span.span_id.as_str(), (span, *self_time)))
            .collect();
        let critical_path = critical_path(&spans, &root.span_id)
            .into_iter()
            .filter_map(|id| {
                by_id.get(id.as_str()).map(|(span, self_time)| PathStep {
                    span_id: span.span_id.clone(),
                    service: span.service.clone(),
                    name: span.name.clone(),
                    duration: span.duration_nanos(),
                    self_time: *self_time,
                })
            })
            .collect();
        let start = spans.iter().map(|s| s.start_time).min().unwrap_or_default();
        let end = spans.iter().map(|s| s.end_time).max().unwrap_or_default();
        let side = TraceSide {
            trace_id: trace_id.to_string(),
            root_service: root.service.clone(),
            root_name: root.name.clone(),
            start,
            duration: end - start,
            span_count: spans.len(),
            errors: spans
                .iter()
                .filter(|s| s.status == SpanStatus::Error)
                .count(),
            critical_path,
        };
        Analysed {
            side,
            operations,
            services,
            paths,
        }
    }
}

fn operation_text(span: &Span) -> String {
    format!("{} {}", span.service, span.name)
}

/// Nanoseconds as people read them: `850 µs`, `12.3 ms`, `2.05 s`.
fn human(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "+" };
    let abs = nanos.unsigned_abs() as f64;
    let text = if abs >= 1e9 {
        format!("{:.2} s", abs / 1e9)
    } else if abs >= 1e6 {
        format!("{:.1} ms", abs / 1e6)
    } else {
        format!("{:.0} µs", abs / 1e3)
    };
    format!("{sign}{text}")
}

/// Keeps the first [`MAX_ROWS`] of `rows`, saying how many were left out.
fn bounded<T>(mut rows: Vec<T>, what: &str, warnings: &mut Vec<String>) -> Vec<T> {
    if rows.len() > MAX_ROWS {
        warnings.push(format!(
            "{} more {what} not listed (the {MAX_ROWS} largest differences are)",
            rows.len() - MAX_ROWS
        ));
        rows.truncate(MAX_ROWS);
    }
    rows
}

pub(crate) fn compare_traces(a: &Analysed, b: &Analysed) -> Comparison {
    let mut warnings = Vec::new();
    let keys: std::collections::BTreeSet<&(String, String)> =
        a.operations.keys().chain(b.operations.keys()).collect();
    let mut operations: Vec<OperationRow> = keys
        .into_iter()
        .map(|key| {
            let (left, right) = (
                a.operations.get(key).copied().unwrap_or_default(),
                b.operations.get(key).copied().unwrap_or_default(),
            );
            OperationRow {
                service: key.0.clone(),
                name: key.1.clone(),
                a: left,
                b: Some(right),
                typical: None,
                delta: right.self_time - left.self_time,
            }
        })
        .collect();
    operations.sort_by_key(|row| std::cmp::Reverse(row.delta.unsigned_abs()));
    let services_keys: std::collections::BTreeSet<&String> =
        a.services.keys().chain(b.services.keys()).collect();
    let services = services_keys
        .into_iter()
        .map(|service| ServiceRow {
            service: service.clone(),
            a: a.services.get(service).copied().unwrap_or_default(),
            b: Some(b.services.get(service).copied().unwrap_or_default()),
        })
        .collect();
    let path_keys: std::collections::BTreeSet<&Vec<String>> =
        a.paths.keys().chain(b.paths.keys()).collect();
    let mut structure: Vec<StructureRow> = path_keys
        .into_iter()
        .filter_map(|path| {
            let (left, right) = (
                a.paths.get(path).copied().unwrap_or(0),
                b.paths.get(path).copied().unwrap_or(0),
            );
            let last = path.last()?;
            let (service, name) = last.split_once(' ').unwrap_or((last.as_str(), ""));
            (left != right).then(|| StructureRow {
                path: path.clone(),
                service: service.to_string(),
                name: name.to_string(),
                a: left,
                b: right,
            })
        })
        .collect();
    structure.sort_by_key(|row| std::cmp::Reverse(row.a.abs_diff(row.b)));
    let (difference, difference_operation) = match operations.first() {
        Some(row) if row.delta != 0 => {
            let b_usage = row.b.unwrap_or_default();
            let only = match (row.a.count, b_usage.count) {
                (0, count) => format!(", {count} spans only in B"),
                (count, 0) => format!(", {count} spans only in A"),
                (left, right) if left != right => format!(", {left} spans in A, {right} in B"),
                _ => String::new(),
            };
            (
                format!(
                    "{} {}: {} {} self time in B than in A{only}",
                    row.service,
                    row.name,
                    human(row.delta).trim_start_matches(['+', '-']),
                    if row.delta > 0 { "more" } else { "less" },
                ),
                Some((row.service.clone(), row.name.clone())),
            )
        }
        _ => ("the traces spend their time alike".to_string(), None),
    };
    Comparison {
        mode: "trace",
        a: a.side.clone(),
        b: Some(b.side.clone()),
        difference,
        difference_operation,
        structure: bounded(structure, "paths", &mut warnings),
        services,
        operations: bounded(operations, "operations", &mut warnings),
        warnings,
    }
}

/// Each operation's typical duration, from the span metrics.
pub(crate) type TypicalDurations = HashMap<(String, String), Typical>;

/// The p50 and p95 of every operation of `a`'s services over the hour
/// before it ended; empty (with no error) when there are no span metrics.
fn typical_of(state: &QueryState, a: &Analysed) -> TypicalDurations {
    let services: Vec<String> = a
        .services
        .keys()
        .map(|service| promql_regex_literal(service))
        .collect();
    let time_ms = (a.side.start + a.side.duration) / 1_000_000;
    let mut typical = TypicalDurations::new();
    for (quantile, p95) in [("0.5", false), ("0.95", true)] {
        let query = format!(
            "histogram_quantile({quantile}, sum by (service, span_name, le) (rate(traces_spanmetrics_duration_seconds_bucket{{service=~\"{}\"}}[{TYPICAL_WINDOW}])))",
            services.join("|")
        );
        let Ok(PromValue::Vector(samples)) =
            Engine::default().instant_query(&*state.metrics, &query, time_ms)
        else {
            continue;
        };
        for sample in samples {
            if !sample.value.is_finite() {
                continue;
            }
            let key = (
                sample.labels.get("service").to_string(),
                sample.labels.get("span_name").to_string(),
            );
            let nanos = Some((sample.value * 1e9).round() as i64);
            let entry = typical.entry(key).or_default();
            if p95 {
                entry.p95 = nanos;
            } else {
                entry.p50 = nanos;
            }
        }
    }
    typical
}

/// `text` matched literally inside a PromQL double-quoted regex.
fn promql_regex_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            // The regex escapes it, then the string escapes each backslash.
            '\\' => out.push_str("\\\\\\\\"),
            '.' | '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$' => {
                out.push_str("\\\\");
                out.push(character);
            }
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
    out
}

pub(crate) fn compare_typical(a: &Analysed, typical: &TypicalDurations) -> Comparison {
    let mut warnings = Vec::new();
    if typical.is_empty() {
        warnings.push(format!(
            "no span metrics for these services in the {TYPICAL_WINDOW} before the trace: typical durations unknown"
        ));
    }
    let mut operations: Vec<OperationRow> = a
        .operations
        .iter()
        .map(|(key, usage)| {
            let usual = typical.get(key).copied();
            let delta = usual
                .and_then(|t| t.p95)
                .map_or(0, |p95| (usage.longest - p95).max(0));
            OperationRow {
                service: key.0.clone(),
                name: key.1.clone(),
                a: *usage,
                b: None,
                typical: Some(usual.unwrap_or_default()),
                delta,
            }
        })
        .collect();
    operations.sort_by_key(|row| std::cmp::Reverse(row.delta));
    let (difference, difference_operation) = match operations.first() {
        Some(row) if row.delta > 0 => {
            let longest = row.a.longest;
            let p95 = row.typical.and_then(|t| t.p95).unwrap_or_default();
            (
                format!(
                    "{} {}: took {} where its p95 is {} ({} over)",
                    row.service,
                    row.name,
                    human(longest).trim_start_matches('+'),
                    human(p95).trim_start_matches('+'),
                    human(row.delta).trim_start_matches('+')
                ),
                Some((row.service.clone(), row.name.clone())),
            )
        }
        _ if typical.is_empty() => ("typical durations unknown".to_string(), None),
        _ => ("every operation within its typical p95".to_string(), None),
    };
    let services = a
        .services
        .iter()
        .map(|(service, usage)| ServiceRow {
            service: service.clone(),
            a: *usage,
            b: None,
        })
        .collect();
    Comparison {
        mode: "typical",
        a: a.side.clone(),
        b: None,
        difference,
        difference_operation,
        structure: Vec::new(),
        services,
        operations: bounded(operations, "operations", &mut warnings),
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    fn span(
        id: &str,
        parent: Option<&str>,
        service: &str,
        name: &str,
        start: i64,
        end: i64,
    ) -> Span {
        Span {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_string),
            name: name.into(),
            service: service.into(),
            start_time: start * MS,
            end_time: end * MS,
            ..Span::default()
        }
    }

    /// gateway -> order -> payment charge; the slow one waits 2 s in
    /// payment and calls the provider twice.
    fn checkout(slow: bool) -> Vec<Span> {
        let charge_end = if slow { 2_030 } else { 30 };
        let mut spans = vec![
            span("g", None, "gateway", "POST /orders", 0, charge_end + 20),
            span("o", Some("g"), "order", "POST /orders", 5, charge_end + 15),
            span("p", Some("o"), "payment", "POST /charge", 10, charge_end),
            span("c1", Some("p"), "payment", "provider call", 12, 22),
        ];
        if slow {
            spans.push(span("c2", Some("p"), "payment", "provider call", 25, 35));
        }
        spans
    }

    #[test]
    fn two_traces_differ_in_the_operation_that_took_the_time_and_in_their_shape() {
        let healthy = Analysed::new("a", checkout(false));
        let slow = Analysed::new("b", checkout(true));
        let comparison = compare_traces(&healthy, &slow);
        assert_eq!(
            comparison.difference_operation,
            Some(("payment".to_string(), "POST /charge".to_string()))
        );
        assert_eq!(
            comparison.difference,
            "payment POST /charge: 1.99 s more self time in B than in A"
        );
        // The extra provider call is the one path the traces differ in.
        assert_eq!(comparison.structure.len(), 1, "{:?}", comparison.structure);
        let extra = &comparison.structure[0];
        assert_eq!(
            extra.path,
            [
                "gateway POST /orders",
                "order POST /orders",
                "payment POST /charge",
                "payment provider call"
            ]
        );
        assert_eq!((extra.a, extra.b), (1, 2));
        // Self time per service: payment's grew by the wait (its children
        // covered 10 ms, then 20 ms).
        let payment = comparison
            .services
            .iter()
            .find(|row| row.service == "payment")
            .unwrap();
        assert_eq!(payment.a.self_time, 20 * MS);
        assert_eq!(payment.b.unwrap().self_time, 2_020 * MS);
        assert_eq!(payment.b.unwrap().count, 3);
        // Critical paths run root to leaf.
        let path: Vec<&str> = comparison
            .b
            .as_ref()
            .unwrap()
            .critical_path
            .iter()
            .map(|s| s.span_id.as_str())
            .collect();
        assert_eq!(path, ["g", "o", "p", "c2", "c1"]);
        assert_eq!(comparison.a.duration, 50 * MS);
        assert_eq!(comparison.b.as_ref().unwrap().duration, 2_050 * MS);
        // A trace against itself: nothing to name.
        let same = compare_traces(&healthy, &Analysed::new("a", checkout(false)));
        assert_eq!(same.difference, "the traces spend their time alike");
        assert!(same.structure.is_empty());
    }

    #[test]
    fn against_typical_the_operation_over_its_p95_is_named() {
        let slow = Analysed::new("b", checkout(true));
        let mut typical = TypicalDurations::new();
        let usual = |p50: i64, p95: i64| Typical {
            p50: Some(p50 * MS),
            p95: Some(p95 * MS),
        };
        typical.insert(("gateway".into(), "POST /orders".into()), usual(40, 2_100));
        typical.insert(("order".into(), "POST /orders".into()), usual(30, 2_100));
        typical.insert(("payment".into(), "POST /charge".into()), usual(20, 40));
        typical.insert(("payment".into(), "provider call".into()), usual(8, 12));
        let comparison = compare_typical(&slow, &typical);
        assert_eq!(comparison.mode, "typical");
        assert_eq!(
            comparison.difference,
            "payment POST /charge: took 2.02 s where its p95 is 40.0 ms (1.98 s over)"
        );
        assert_eq!(comparison.operations[0].delta, 1_980 * MS);
        assert!(comparison.warnings.is_empty());
        let unknown = compare_typical(&slow, &TypicalDurations::new());
        assert_eq!(unknown.difference, "typical durations unknown");
        assert_eq!(unknown.warnings.len(), 1);
    }

    #[test]
    fn service_names_are_matched_literally() {
        assert_eq!(promql_regex_literal("a.b|c"), "a\\\\.b\\\\|c");
        assert_eq!(promql_regex_literal("say \"hi\""), "say \\\"hi\\\"");
        let selector = format!("x{{service=~\"{}\"}}", promql_regex_literal("a.b (v2)|c\\"));
        let matchers = sightline_tsdb::promql::parse_selector(&selector).unwrap();
        assert!(matchers[1].matches("a.b (v2)|c\\"));
        assert!(!matchers[1].matches("aXb (v2)|c\\"));
    }
}
