//! PromQL evaluation over any [`Queryable`] storage.
//!
//! Queries are parsed with the `promql-parser` crate and evaluated here, step
//! by step, with Prometheus 3.x semantics: a 5-minute lookback for instant
//! vector selectors, left-open range windows, staleness markers that end a
//! series, extrapolated `rate`/`increase`/`delta`, and Prometheus' vector
//! matching rules and error messages.
//!
//! The engine knows nothing about on-disk layouts: the time-series store
//! ([`crate::TimeSeriesStore`]) implements [`Queryable`], and so does
//! [`MemoryStorage`], a plain in-memory table used by tests and the
//! conformance runner.
//!
//! ```
//! use sightline_tsdb::promql::{Engine, MemoryStorage, Value};
//! use sightline_tsdb::Labels;
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
mod prefetch;

use std::collections::BTreeMap;

use crate::{LabelMatcher, Labels, SeriesData, matches_all};

pub use eval::{
    DEFAULT_MAX_SAMPLES, EVAL_STACK_BYTES, Engine, MAX_NESTING_DEPTH, MAX_OPERATORS,
    QUERY_CANCELED, TOO_MANY_SAMPLES,
};

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
/// (Go's `strconv.FormatFloat(f, 'f', -1, 64)`), as the text exposition
/// writes it.
pub fn format_value(value: f64) -> String {
    sightline_vocab::exposition::format_float(value).into_owned()
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

/// The selectors of every series a query reads (its vector and matrix
/// selectors, inside functions, aggregations and subqueries), as
/// Prometheus' `query_exemplars` extracts them: exemplars are asked of the
/// series the expression is built from.
pub fn selectors_of(query: &str) -> Result<Vec<Vec<LabelMatcher>>, QueryError> {
    Ok(read_by(query)?.0)
}

/// [`selectors_of`], and how far back the query looks from its evaluation
/// time: its longest range or subquery range, in ms (0 for instant
/// selectors only), so a change that made it true began at most that long
/// before it did.
pub fn read_by(query: &str) -> Result<(Vec<Vec<LabelMatcher>>, i64), QueryError> {
    use promql_parser::parser::Expr;
    let expr = Engine::parse(query)?;
    let mut selectors = Vec::new();
    let mut lookback_ms = 0_i64;
    eval::walk(&expr, |expr| {
        match expr {
            Expr::VectorSelector(selector) => selectors.push(eval::matchers_of(selector)?),
            Expr::MatrixSelector(matrix) => {
                lookback_ms = lookback_ms.max(matrix.range.as_millis() as i64);
                selectors.push(eval::matchers_of(&matrix.vs)?);
            }
            Expr::Subquery(subquery) => {
                lookback_ms = lookback_ms.max(subquery.range.as_millis() as i64);
            }
            _ => {}
        }
        Ok(())
    })?;
    selectors.reverse();
    Ok((selectors, lookback_ms))
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
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn a_query_reads_the_series_of_every_selector_inside_it() {
        let query = r#"histogram_quantile(0.99, sum by (le) (rate(latency_bucket{service="payment"}[5m]))) > on() group_left max_over_time(slo[1h:1m]) + scalar(up{job=~"a.*"})"#;
        let selectors = selectors_of(query).unwrap();
        let described: Vec<Vec<String>> = selectors
            .iter()
            .map(|matchers| {
                matchers
                    .iter()
                    .map(|m| format!("{}{:?}{}", m.name, m.kind, m.value))
                    .collect()
            })
            .collect();
        assert_eq!(
            described,
            [
                vec!["__name__Equallatency_bucket", "serviceEqualpayment"],
                vec!["__name__Equalslo"],
                vec!["__name__Equalup", "jobRegexa.*"],
            ]
        );
        assert!(selectors_of("1 + 1").unwrap().is_empty());
        assert_eq!(read_by(query).unwrap().1, 3_600_000, "the subquery's hour");
        assert_eq!(read_by("up").unwrap().1, 0);
        assert!(selectors_of("sum(").is_err());
    }

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

    /// Runs `work` on a thread with a stack of `bytes`.
    fn on_stack<T: Send>(bytes: usize, work: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .stack_size(bytes)
                .spawn_scoped(scope, work)
                .unwrap()
                .join()
                .unwrap()
        })
    }

    #[test]
    fn bombs_of_nesting_and_operators_are_refused_before_the_parser_recurses() {
        let nested = |levels: usize, inner: &str| {
            format!("{}{inner}{}", "(".repeat(levels), ")".repeat(levels))
        };
        for (query, limit) in [
            (nested(100_000, "1"), "the limit is 128"),
            (
                format!("{}1{}", "abs(".repeat(200), ")".repeat(200)),
                "the limit is 128",
            ),
            (vec!["1"; 50_000].join("+"), "the limit is 1000"),
            (format!("{}1", "-".repeat(5_000)), "the limit is 1000"),
        ] {
            // the 2 MiB stack of tokio's threads is plenty to refuse it
            let error = on_stack(2 << 20, || Engine::parse(&query)).unwrap_err();
            assert!(
                matches!(&error, QueryError::Parse(message) if message.contains(limit)),
                "{error}"
            );
        }
        // At the limits, a query parses, evaluates and drops within
        // EVAL_STACK_BYTES, even in a debug build: nesting and an operator
        // chain at once.
        let chain = vec!["1"; MAX_OPERATORS + 1].join("+");
        let deepest = nested(MAX_NESTING_DEPTH - 2, &format!("sum(vector({chain}))"));
        let value = on_stack(EVAL_STACK_BYTES, || {
            let engine = Engine::default();
            let storage = MemoryStorage::default();
            let instant = engine.instant_query(&storage, &deepest, 0);
            let range = engine.range_query(&storage, &deepest, 0, 60_000, 15_000);
            (instant, range.map(|series| series.len()))
        });
        assert!(
            matches!(&value.0, Ok(Value::Vector(samples)) if samples[0].value == 1001.0),
            "{value:?}"
        );
        assert_eq!(value.1, Ok(1));
    }

    #[test]
    fn count_values_refuses_an_invalid_label_name_even_without_data() {
        let storage = MemoryStorage::default();
        for label in ["1-x", "", "a b"] {
            let query = format!("count_values({label:?}, up)");
            let error = Engine::default()
                .instant_query(&storage, &query, 0)
                .unwrap_err();
            assert_eq!(
                error,
                QueryError::Parse(format!("invalid label name {label:?}")),
                "{query}"
            );
        }
        let value = Engine::default().instant_query(&storage, "count_values(\"v\", vector(2))", 0);
        assert!(
            matches!(value, Ok(Value::Vector(ref samples)) if samples.len() == 1),
            "{value:?}"
        );
    }

    #[test]
    fn subquery_steps_and_range_results_count_against_the_sample_budget() {
        let mut storage = MemoryStorage::default();
        let up = Labels::new([("__name__", "up")]);
        for minute in 0..=60 {
            storage.append(&up, minute * 60_000, 1.0);
        }
        let engine = Engine {
            max_samples: 1_000,
            ..Engine::default()
        };
        fn too_many<T>() -> Result<T, QueryError> {
            Err(QueryError::Execution(TOO_MANY_SAMPLES.into()))
        }
        // 3e9 steps: refused after 1,000 of them instead of growing
        assert_eq!(
            engine.instant_query(&storage, "max_over_time(vector(1)[100y:1s])", 0),
            too_many()
        );
        assert_eq!(
            engine.instant_query(&storage, "count_over_time(up[1h:1s])", 3_600_000),
            too_many()
        );
        // the points of a range query's result are held to its end
        assert_eq!(
            engine
                .range_query(&storage, "up", 0, 3_600_000, 1_000)
                .map(|series| series.len()),
            too_many()
        );
        // what a function held is released when it returns: 60 steps of
        // a 900-step subquery each stay under the budget
        let series = engine
            .range_query(
                &storage,
                "count_over_time(up[15m:1s])",
                0,
                3_600_000,
                60_000,
            )
            .unwrap();
        assert_eq!(series[0].points.len(), 61);
        assert_eq!(Engine::default().max_samples, 50_000_000);
    }

    #[test]
    fn a_cancelled_evaluation_stops_inside_a_runaway_subquery() {
        let storage = MemoryStorage::default();
        let expr = Engine::parse("max_over_time(max_over_time(vector(1)[1h:1s])[30d:1s])").unwrap();
        let cancelled = AtomicBool::new(false);
        let answer = std::thread::scope(|scope| {
            let running = scope.spawn(|| {
                Engine::default().instant_expr_cancellable(&storage, &expr, 0, &cancelled)
            });
            std::thread::sleep(std::time::Duration::from_millis(200));
            cancelled.store(true, Ordering::Relaxed);
            running.join().unwrap()
        });
        assert_eq!(answer, Err(QueryError::Execution(QUERY_CANCELED.into())));
    }
}
