//! PromQL evaluation over any [`Queryable`] storage.
//!
//! Queries are parsed with the `promql-parser` crate and evaluated here, step
//! by step, with Prometheus 3.x semantics: a 5-minute lookback for instant
//! vector selectors, left-open range windows, staleness markers that end a
//! series, extrapolated `rate`/`increase`/`delta`, and Prometheus' vector
//! matching rules and error messages.
//!
//! The engine knows nothing about on-disk layouts: the time-series store
//! ([`crate::tsdb::TimeSeriesStore`]) implements [`Queryable`], and so does
//! [`MemoryStorage`], a plain in-memory table used by tests and the
//! conformance runner.
//!
//! ```
//! use sightline_store::promql::{Engine, MemoryStorage, Value};
//! use sightline_store::tsdb::Labels;
//!
//! let mut storage = MemoryStorage::default();
//! let labels = Labels::new([("__name__", "up"), ("job", "api")]);
//! storage.append(&labels, 0, 1.0);
//! let engine = Engine::default();
//! let value = engine.instant_query(&storage, "sum(up)", 60_000).unwrap();
//! assert!(matches!(value, Value::Vector(ref samples) if samples[0].value == 1.0));
//! ```

mod eval;
mod functions;

use std::collections::BTreeMap;

use crate::tsdb::{LabelMatcher, Labels, SeriesData, matches_all};

pub use eval::Engine;

/// The bit pattern of Prometheus' staleness marker: a NaN that says "this
/// series ended here".
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// The staleness marker as a float.
pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// Whether `value` is the staleness marker (and not just any NaN).
pub fn is_stale_nan(value: f64) -> bool {
    value.to_bits() == STALE_NAN_BITS
}

/// Errors of parsing or evaluating a query.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum QueryError {
    /// The query text does not parse, or is not a valid expression.
    #[error("parse error: {0}")]
    Parse(String),
    /// The query is valid but cannot be evaluated on this data.
    #[error("{0}")]
    Execution(String),
    /// The storage failed to answer.
    #[error("storage error: {0}")]
    Storage(String),
}

/// Storage the engine reads from.
pub trait Queryable {
    /// Every series matching all `matchers` with its samples in
    /// `[start_ms, end_ms]`, staleness markers included, in time order.
    fn select(
        &self,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesData>, QueryError>;
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    /// Evaluation time, in milliseconds.
    pub timestamp_ms: i64,
    pub value: f64,
}

/// One series of a range vector or of a range query result.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    /// (timestamp ms, value), in time order.
    pub points: Vec<(i64, f64)>,
}

/// The result of evaluating an expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    String(String),
    Vector(Vec<Sample>),
    Matrix(Vec<Series>),
}

/// Formats a float as Prometheus does in label values and API responses
/// (Go's `strconv.FormatFloat(f, 'f', -1, 64)`).
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value == f64::INFINITY {
        "+Inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{value}")
    }
}

/// Parses a Prometheus duration (`15s`, `1m30s`, `2h`, `7d`, `1w`, `500ms`),
/// as rule files and `prometheus.yml` write them.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    promql_parser::util::parse_duration(text)
        .map_err(|error| format!("invalid duration {text:?}: {error}"))
}

/// Parses a series selector (`up{job="api"}`), as the `match[]` parameters
/// of the HTTP API write them, into label matchers.
pub fn parse_selector(text: &str) -> Result<Vec<LabelMatcher>, QueryError> {
    match Engine::parse(text)? {
        promql_parser::parser::Expr::VectorSelector(selector) => eval::matchers_of(&selector),
        _ => Err(QueryError::Parse(format!(
            "expected a series selector such as up{{job=\"api\"}}, got {text:?}"
        ))),
    }
}

/// A small in-memory [`Queryable`]: a sorted table of series.
#[derive(Debug, Default, Clone)]
pub struct MemoryStorage {
    series: BTreeMap<Labels, Vec<(i64, f64)>>,
}

impl MemoryStorage {
    /// Adds one sample; samples may arrive out of order, a sample at an
    /// existing timestamp replaces it.
    pub fn append(&mut self, labels: &Labels, timestamp_ms: i64, value: f64) {
        let points = self.series.entry(labels.clone()).or_default();
        match points.binary_search_by_key(&timestamp_ms, |(t, _)| *t) {
            Ok(index) => points[index].1 = value,
            Err(index) => points.insert(index, (timestamp_ms, value)),
        }
    }

    /// Removes every series.
    pub fn clear(&mut self) {
        self.series.clear();
    }

    /// Number of series.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }
}

impl Queryable for MemoryStorage {
    fn select(
        &self,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesData>, QueryError> {
        let mut result = Vec::new();
        for (labels, points) in &self.series {
            if !matches_all(matchers, labels) {
                continue;
            }
            let first = points.partition_point(|(t, _)| *t < start_ms);
            let last = points.partition_point(|(t, _)| *t <= end_ms);
            result.push(SeriesData {
                labels: labels.clone(),
                samples: points[first..last.max(first)].to_vec(),
            });
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_a_duration_cannot_hold_are_parse_errors_not_panics() {
        // Found by fuzzing: promql-parser 0.11 panics converting these to
        // a Duration.
        for query in [
            "max(up[02m:13333333333333333333333333333333333333333])",
            "sum(rate(orders_total[77777777777777777777777777777777777])) * 60",
            "rate(up[1e400])",
            "up offset Inf",
            "up offset NaN",
            "up offset -1e300",
            "up[0x7fffffffffffffff]",
        ] {
            let error = Engine::parse(query).unwrap_err();
            assert!(
                error.to_string().contains("duration out of range"),
                "{query}: {error}"
            );
            let storage = MemoryStorage::default();
            let answer = Engine::default().instant_query(&storage, query, 0);
            assert!(matches!(answer, Err(QueryError::Parse(_))), "{answer:?}");
        }
        // Large numbers elsewhere are values, not durations.
        for query in [
            "up > 1e400",
            "up > Inf",
            "up[5m] @ 1e10",
            "up[1h:1m] offset 1w",
        ] {
            let parsed = Engine::parse(query);
            assert!(
                !matches!(&parsed, Err(e) if e.to_string().contains("duration out of range")),
                "{query}: {parsed:?}"
            );
        }
    }
}
