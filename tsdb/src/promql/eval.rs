//! The evaluator: walks the parsed expression once per evaluation step.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use promql_parser::label::{MatchOp, Matchers};
use promql_parser::parser::{
    AggregateExpr, AtModifier, BinaryExpr, Expr, LabelModifier, Offset, SubqueryExpr,
    VectorMatchCardinality, VectorSelector,
};

use super::functions;
use super::{QueryError, Queryable, Sample, Series, Value, is_stale_nan};
use crate::{LabelMatcher, Labels, METRIC_NAME, MatchKind};

/// Evaluates PromQL queries; cheap to build, holds only settings.
#[derive(Debug, Clone)]
pub struct Engine {
    /// How far back an instant vector selector looks for a sample.
    pub lookback_delta_ms: i64,
    /// Step of subqueries that give none (`x[5m:]`).
    pub default_subquery_step_ms: i64,
    /// Most samples one query may hold in memory at once (Prometheus'
    /// `--query.max-samples`): selected samples, subquery steps and the
    /// points of a range query's result so far.
    pub max_samples: usize,
}

impl Default for Engine {
    fn default() -> Self {
        Engine {
            lookback_delta_ms: 5 * 60 * 1000,
            default_subquery_step_ms: 60 * 1000,
            max_samples: DEFAULT_MAX_SAMPLES,
        }
    }
}

/// Prometheus' default `--query.max-samples`.
pub const DEFAULT_MAX_SAMPLES: usize = 50_000_000;

/// Prometheus' error past `--query.max-samples`, word for word.
pub const TOO_MANY_SAMPLES: &str =
    "query processing would load too many samples into memory in query execution";

/// The error of an evaluation stopped by its cancellation flag.
pub const QUERY_CANCELED: &str = "query canceled";

/// Deepest nesting of brackets (`(`, `[`, `{`) a query may have. The parser
/// and the evaluator recurse once per level; real queries nest a handful
/// of levels, and a bomb of 100,000 parentheses must be refused before the
/// parser overflows its thread's stack.
pub const MAX_NESTING_DEPTH: usize = 128;

/// Stack a thread evaluating untrusted queries should have: enough for a
/// query at [`MAX_NESTING_DEPTH`] and [`MAX_OPERATORS`] even in a debug
/// build (about 4 KiB a level there; a tenth of it optimised). Only the
/// pages a query touches are ever mapped.
pub const EVAL_STACK_BYTES: usize = 32 << 20;

/// Most operators (binary and unary) a query may have. A chain `a + b + c`
/// parses into a tree as deep as it has operators, so this bounds the
/// depth of the tree the parser, the evaluator and `Drop` recurse through.
pub const MAX_OPERATORS: usize = 1_000;

impl Engine {
    /// Parses `query` into an expression.
    ///
    /// `promql-parser` 0.11 turns duration literals into `Duration` with
    /// `Duration::from_secs_f64`, which panics on values a `Duration` cannot
    /// hold (found by fuzzing: `up[2m:13333333333333333333333333333333333]`,
    /// `rate(x[1e400])`, `x offset Inf`). Query text comes from any API
    /// client, so those literals are refused first, as Prometheus refuses
    /// them ("duration out of range"). Should the parser still panic on an
    /// input nobody has found yet, the panic is caught and answered as a
    /// parse error instead of taking a thread, or a rule group, down.
    ///
    /// Before the (recursive) parser sees the text, its nesting depth and
    /// number of operators are checked against [`MAX_NESTING_DEPTH`] and
    /// [`MAX_OPERATORS`], so that no query can overflow the stack.
    pub fn parse(query: &str) -> Result<Expr, QueryError> {
        check_tokens(query).map_err(QueryError::Parse)?;
        let expr = std::panic::catch_unwind(|| promql_parser::parser::parse(query))
            .unwrap_or_else(|panic| {
                let reason = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("the parser failed");
                Err(format!("invalid query {query:?}: {reason}"))
            })
            .map_err(QueryError::Parse)?;
        check_count_values_labels(&expr)?;
        Ok(expr)
    }

    /// Evaluates `query` at one instant.
    pub fn instant_query(
        &self,
        storage: &dyn Queryable,
        query: &str,
        time_ms: i64,
    ) -> Result<Value, QueryError> {
        let expr = Self::parse(query)?;
        self.instant_expr(storage, &expr, time_ms)
    }

    /// Evaluates a parsed expression at one instant.
    pub fn instant_expr(
        &self,
        storage: &dyn Queryable,
        expr: &Expr,
        time_ms: i64,
    ) -> Result<Value, QueryError> {
        let never = AtomicBool::new(false);
        self.instant_expr_cancellable(storage, expr, time_ms, &never)
    }

    /// [`Engine::instant_expr`] that gives up as soon as `cancelled` is set
    /// (checked at every node and every subquery step), with
    /// [`QueryError::Execution`] [`QUERY_CANCELED`].
    pub fn instant_expr_cancellable(
        &self,
        storage: &dyn Queryable,
        expr: &Expr,
        time_ms: i64,
        cancelled: &AtomicBool,
    ) -> Result<Value, QueryError> {
        let evaluator = Evaluator::new(storage, self, time_ms, time_ms, cancelled);
        let value = evaluator.eval(expr, time_ms)?;
        if let Value::Vector(samples) = &value {
            check_unique_labelsets(samples)?;
        }
        Ok(value)
    }

    /// Evaluates `query` at every step from `start_ms` to `end_ms` inclusive;
    /// a scalar result becomes one series without labels.
    pub fn range_query(
        &self,
        storage: &dyn Queryable,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<Series>, QueryError> {
        let expr = Self::parse(query)?;
        self.range_expr(storage, &expr, start_ms, end_ms, step_ms)
    }

    /// Evaluates a parsed expression as a range query.
    pub fn range_expr(
        &self,
        storage: &dyn Queryable,
        expr: &Expr,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<Series>, QueryError> {
        let never = AtomicBool::new(false);
        self.range_expr_cancellable(storage, expr, start_ms, end_ms, step_ms, &never)
    }

    /// [`Engine::range_expr`] that gives up as soon as `cancelled` is set
    /// (a query past its timeout), with [`QueryError::Execution`]
    /// [`QUERY_CANCELED`]. The points of the result count towards
    /// [`Engine::max_samples`].
    pub fn range_expr_cancellable(
        &self,
        storage: &dyn Queryable,
        expr: &Expr,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        cancelled: &AtomicBool,
    ) -> Result<Vec<Series>, QueryError> {
        if step_ms <= 0 {
            return Err(QueryError::Execution(
                "zero or negative query resolution step".into(),
            ));
        }
        // Each step selects its window: fetched ahead, a few dozen selects
        // serve every step.
        let prefetch = super::prefetch::Prefetch::new(storage, end_ms - start_ms, step_ms);
        let evaluator = Evaluator::new(&prefetch, self, start_ms, end_ms, cancelled);
        let mut series: Vec<Series> = Vec::new();
        let mut index_by_labels = StepIndex::default();
        let mut time_ms = start_ms;
        while time_ms <= end_ms {
            evaluator.check_cancelled()?;
            let samples = match evaluator.eval(expr, time_ms)? {
                Value::Scalar(value) => {
                    vec![Sample {
                        labels: Labels::default(),
                        timestamp_ms: time_ms,
                        value,
                    }]
                }
                Value::Vector(samples) => {
                    check_unique_labelsets(&samples)?;
                    samples
                }
                Value::Matrix(_) | Value::String(_) => {
                    return Err(QueryError::Execution(
                        "invalid expression type for range query, must be Scalar or instant Vector"
                            .into(),
                    ));
                }
            };
            // the result so far stays in memory to the end
            evaluator.hold(samples.len())?;
            append_step(&mut series, &mut index_by_labels, time_ms, samples, 0);
            time_ms = time_ms.saturating_add(step_ms);
            if time_ms == i64::MAX {
                break;
            }
        }
        Ok(series)
    }
}

/// Where each label set's series is, while steps are appended (hashed
/// fast: a subquery may append millions of steps).
type StepIndex = HashMap<Labels, usize, foldhash::fast::RandomState>;

/// Appends the samples of one step to the series they belong to; a new
/// series has room for `reserve` points.
fn append_step(
    series: &mut Vec<Series>,
    index_by_labels: &mut StepIndex,
    time_ms: i64,
    samples: Vec<Sample>,
    reserve: usize,
) {
    for sample in samples {
        let index = match index_by_labels.get(&sample.labels) {
            Some(index) => *index,
            None => {
                index_by_labels.insert(sample.labels.clone(), series.len());
                let mut points = Vec::new();
                // only a hint: without the room, the points grow as usual
                let _ = points.try_reserve_exact(reserve);
                series.push(Series {
                    labels: sample.labels,
                    points,
                });
                series.len() - 1
            }
        };
        series[index].points.push((time_ms, sample.value));
    }
}

pub(super) fn check_unique_labelsets(samples: &[Sample]) -> Result<(), QueryError> {
    if samples.len() < 2 {
        return Ok(());
    }
    let mut seen = HashSet::with_capacity(samples.len());
    for sample in samples {
        if !seen.insert(&sample.labels) {
            return Err(QueryError::Execution(
                "vector cannot contain metrics with the same labelset".into(),
            ));
        }
    }
    Ok(())
}

fn duration_ms(duration: &Duration) -> i64 {
    duration.as_millis() as i64
}

fn offset_ms(offset: &Option<Offset>) -> i64 {
    match offset {
        None => 0,
        Some(Offset::Pos(duration)) => duration_ms(duration),
        Some(Offset::Neg(duration)) => -duration_ms(duration),
    }
}

fn system_time_ms(time: &SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(duration) => duration.as_millis() as i64,
        Err(error) => -(error.duration().as_millis() as i64),
    }
}

/// A range vector with the window it was selected over.
pub(super) struct RangeArg {
    pub(super) series: Vec<Series>,
    /// End of the window (evaluation time after `@` and `offset`).
    pub(super) end_ms: i64,
    pub(super) range_ms: i64,
}

/// Longest duration a query may name: what Prometheus' `time.Duration`
/// holds (2^63 ns, about 292 years).
const MAX_DURATION_SECONDS: f64 = 9_223_372_036.854_775;

/// Checks the tokens of `query` before the parser sees them:
///
/// - brackets nest at most [`MAX_NESTING_DEPTH`] deep, and there are at
///   most [`MAX_OPERATORS`] operators, so the recursive parser cannot
///   overflow its stack;
/// - no duration literal is one `Duration::from_secs_f64` would panic on:
///   the `[du]` tokens (`5m`, and bare seconds inside brackets) and numbers
///   where the grammar takes a duration (after `[`, the `:` of a subquery,
///   `offset` and `offset -`).
///
/// Lexing errors are left to the parser, which reports them with their
/// position (the lexer fails before the parser runs).
fn check_tokens(query: &str) -> Result<(), String> {
    use lrpar::{Lexeme, Lexer, NonStreamingLexer};
    use promql_parser::parser::token::{
        T_ADD, T_ATAN2, T_COLON, T_DIV, T_DURATION, T_EQLC, T_GTE, T_GTR, T_LAND, T_LEFT_BRACE,
        T_LEFT_BRACKET, T_LEFT_PAREN, T_LOR, T_LSS, T_LTE, T_LUNLESS, T_MOD, T_MUL, T_NEQ,
        T_NUMBER, T_OFFSET, T_POW, T_RIGHT_BRACE, T_RIGHT_BRACKET, T_RIGHT_PAREN, T_SUB,
    };

    let Ok(lexer) = promql_parser::parser::lexer(query) else {
        return Ok(());
    };
    let (mut last, mut before_last) = (None, None);
    let (mut depth, mut operators) = (0usize, 0usize);
    for lexeme in lexer.iter().flatten() {
        let token = lexeme.tok_id();
        match token {
            T_LEFT_PAREN | T_LEFT_BRACE | T_LEFT_BRACKET => {
                depth += 1;
                if depth > MAX_NESTING_DEPTH {
                    return Err(format!(
                        "query nests brackets more than {MAX_NESTING_DEPTH} deep (at character {}); the limit is {MAX_NESTING_DEPTH}",
                        lexeme.span().start() + 1
                    ));
                }
            }
            T_RIGHT_PAREN | T_RIGHT_BRACE | T_RIGHT_BRACKET => depth = depth.saturating_sub(1),
            T_ADD | T_SUB | T_MUL | T_DIV | T_MOD | T_POW | T_ATAN2 | T_EQLC | T_NEQ | T_LSS
            | T_LTE | T_GTR | T_GTE | T_LAND | T_LOR | T_LUNLESS => {
                operators += 1;
                if operators > MAX_OPERATORS {
                    return Err(format!(
                        "query has more than {MAX_OPERATORS} operators (at character {}); the limit is {MAX_OPERATORS}",
                        lexeme.span().start() + 1
                    ));
                }
            }
            _ => {}
        }
        let text = lexer.span_str(lexeme.span());
        let takes_duration = matches!(last, Some(T_LEFT_BRACKET | T_COLON | T_OFFSET))
            || (matches!(last, Some(T_SUB | T_ADD)) && before_last == Some(T_OFFSET));
        let seconds = match token {
            T_DURATION => text.parse::<f64>().ok(),
            T_NUMBER if takes_duration => promql_parser::util::parse_str_radix(text).ok(),
            _ => None,
        };
        if let Some(seconds) = seconds
            && !(0.0..=MAX_DURATION_SECONDS).contains(&seconds)
        {
            return Err(format!(
                "duration out of range: {text:?} at character {}",
                lexeme.span().start() + 1
            ));
        }
        (before_last, last) = (last, Some(token));
    }
    Ok(())
}

/// Visits every node of `expr`, parents before children, with an explicit
/// stack: the tree's depth is bounded by [`check_tokens`], but no walk here
/// recurses anyway. Stops at the first error `visit` returns.
pub(super) fn walk(
    expr: &Expr,
    mut visit: impl FnMut(&Expr) -> Result<(), QueryError>,
) -> Result<(), QueryError> {
    let mut pending = vec![expr];
    while let Some(expr) = pending.pop() {
        visit(expr)?;
        match expr {
            Expr::Aggregate(aggregate) => {
                pending.push(&aggregate.expr);
                if let Some(param) = &aggregate.param {
                    pending.push(param);
                }
            }
            Expr::Unary(unary) => pending.push(&unary.expr),
            Expr::Binary(binary) => {
                pending.push(&binary.lhs);
                pending.push(&binary.rhs);
            }
            Expr::Paren(paren) => pending.push(&paren.expr),
            Expr::Subquery(subquery) => pending.push(&subquery.expr),
            Expr::Call(call) => pending.extend(call.args.args.iter().map(|arg| arg.as_ref())),
            Expr::NumberLiteral(_)
            | Expr::StringLiteral(_)
            | Expr::VectorSelector(_)
            | Expr::MatrixSelector(_)
            | Expr::Extension(_) => {}
        }
    }
    Ok(())
}

/// Refuses `count_values` with a parameter that is not a label name, as
/// Prometheus does, whether or not there is data to count.
fn check_count_values_labels(expr: &Expr) -> Result<(), QueryError> {
    walk(expr, |expr| match expr {
        Expr::Aggregate(aggregate)
            if aggregate.op.to_string() == "count_values"
                && let Some(param) = &aggregate.param
                && let Expr::StringLiteral(label) = param.as_ref()
                && !is_legacy_label_name(&label.val) =>
        {
            Err(QueryError::Parse(format!(
                "invalid label name {:?}",
                label.val
            )))
        }
        _ => Ok(()),
    })
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`: a label name every Prometheus client accepts.
fn is_legacy_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) struct Evaluator<'a> {
    storage: &'a dyn Queryable,
    engine: &'a Engine,
    query_start_ms: i64,
    query_end_ms: i64,
    /// Set from outside to stop the evaluation (a timeout, a shutdown).
    cancelled: &'a AtomicBool,
    /// Samples held in memory now, against [`Engine::max_samples`].
    samples: Cell<usize>,
}

pub(super) fn matchers_of(selector: &VectorSelector) -> Result<Vec<LabelMatcher>, QueryError> {
    convert_matchers(&selector.name, &selector.matchers)
}

fn convert_matchers(
    name: &Option<String>,
    matchers: &Matchers,
) -> Result<Vec<LabelMatcher>, QueryError> {
    let mut result = Vec::new();
    if let Some(name) = name {
        result.push(LabelMatcher::equal(METRIC_NAME, name));
    }
    for matcher in &matchers.matchers {
        let kind = match matcher.op {
            MatchOp::Equal => MatchKind::Equal,
            MatchOp::NotEqual => MatchKind::NotEqual,
            MatchOp::Re(_) => MatchKind::Regex,
            MatchOp::NotRe(_) => MatchKind::NotRegex,
        };
        let converted = LabelMatcher::new(kind, &matcher.name, &matcher.value)
            .map_err(|error| QueryError::Parse(format!("invalid regular expression: {error}")))?;
        result.push(converted);
    }
    Ok(result)
}

impl<'a> Evaluator<'a> {
    fn new(
        storage: &'a dyn Queryable,
        engine: &'a Engine,
        query_start_ms: i64,
        query_end_ms: i64,
        cancelled: &'a AtomicBool,
    ) -> Self {
        Evaluator {
            storage,
            engine,
            query_start_ms,
            query_end_ms,
            cancelled,
            samples: Cell::new(0),
        }
    }

    /// [`QUERY_CANCELED`] once the query's flag is set.
    fn check_cancelled(&self) -> Result<(), QueryError> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(QueryError::Execution(QUERY_CANCELED.into()));
        }
        Ok(())
    }

    /// Counts `count` more samples held in memory, or fails with
    /// Prometheus' [`TOO_MANY_SAMPLES`] past [`Engine::max_samples`].
    fn hold(&self, count: usize) -> Result<(), QueryError> {
        let held = self.samples.get().saturating_add(count);
        if held > self.engine.max_samples {
            return Err(QueryError::Execution(TOO_MANY_SAMPLES.into()));
        }
        self.samples.set(held);
        Ok(())
    }

    /// Fails like [`Evaluator::hold`] if `count` more samples would not
    /// fit, without holding them (a vector that lives for one step).
    fn check_room(&self, count: usize) -> Result<(), QueryError> {
        self.hold(count)?;
        self.samples.set(self.samples.get() - count);
        Ok(())
    }

    fn at_time(&self, at: &Option<AtModifier>, time_ms: i64) -> i64 {
        match at {
            None => time_ms,
            Some(AtModifier::Start) => self.query_start_ms,
            Some(AtModifier::End) => self.query_end_ms,
            Some(AtModifier::At(time)) => system_time_ms(time),
        }
    }

    pub(super) fn eval(&self, expr: &Expr, time_ms: i64) -> Result<Value, QueryError> {
        self.check_cancelled()?;
        match expr {
            Expr::NumberLiteral(number) => Ok(Value::Scalar(number.val)),
            Expr::StringLiteral(string) => Ok(Value::String(string.val.clone())),
            Expr::Paren(paren) => self.eval(&paren.expr, time_ms),
            Expr::Unary(unary) => match self.eval(&unary.expr, time_ms)? {
                Value::Scalar(value) => Ok(Value::Scalar(-value)),
                Value::Vector(samples) => Ok(Value::Vector(
                    samples
                        .into_iter()
                        .map(|sample| Sample {
                            labels: sample.labels.without_metric_name(),
                            timestamp_ms: sample.timestamp_ms,
                            value: -sample.value,
                        })
                        .collect(),
                )),
                _ => Err(QueryError::Execution(
                    "unary minus needs a scalar or a vector".into(),
                )),
            },
            Expr::VectorSelector(selector) => {
                let samples = self.select_instant(selector, time_ms)?;
                Ok(Value::Vector(
                    samples
                        .into_iter()
                        .map(|(labels, _, value)| Sample {
                            labels,
                            timestamp_ms: time_ms,
                            value,
                        })
                        .collect(),
                ))
            }
            Expr::MatrixSelector(_) | Expr::Subquery(_) => {
                Ok(Value::Matrix(self.eval_range_arg(expr, time_ms)?.series))
            }
            Expr::Binary(binary) => self.eval_binary(binary, time_ms),
            Expr::Aggregate(aggregate) => self.eval_aggregate(aggregate, time_ms),
            Expr::Call(call) => {
                // what the arguments held (range vectors, subqueries) is
                // dropped when the function returns
                let held = self.samples.get();
                let value = functions::call(self, call, time_ms);
                self.samples.set(held);
                let value = value?;
                if let Value::Vector(samples) = &value {
                    self.check_room(samples.len())?;
                    check_unique_labelsets(samples)?;
                }
                Ok(value)
            }
            Expr::Extension(_) => Err(QueryError::Execution(
                "extension expressions are not supported".into(),
            )),
        }
    }

    pub(super) fn eval_vector(&self, expr: &Expr, time_ms: i64) -> Result<Vec<Sample>, QueryError> {
        match self.eval(expr, time_ms)? {
            Value::Vector(samples) => Ok(samples),
            _ => Err(QueryError::Execution("expected an instant vector".into())),
        }
    }

    pub(super) fn eval_scalar(&self, expr: &Expr, time_ms: i64) -> Result<f64, QueryError> {
        match self.eval(expr, time_ms)? {
            Value::Scalar(value) => Ok(value),
            _ => Err(QueryError::Execution("expected a scalar".into())),
        }
    }

    pub(super) fn eval_string(&self, expr: &Expr, time_ms: i64) -> Result<String, QueryError> {
        match self.eval(expr, time_ms)? {
            Value::String(value) => Ok(value),
            _ => Err(QueryError::Execution("expected a string".into())),
        }
    }

    /// The instant vector selected at `time_ms`: (labels, sample time, value)
    /// of the newest sample within the lookback window, unless it is stale.
    pub(super) fn select_instant(
        &self,
        selector: &VectorSelector,
        time_ms: i64,
    ) -> Result<Vec<(Labels, i64, f64)>, QueryError> {
        let matchers = matchers_of(selector)?;
        let reference_ms = self.at_time(&selector.at, time_ms) - offset_ms(&selector.offset);
        let start_ms = reference_ms - self.engine.lookback_delta_ms + 1;
        let selected = self.storage.select(&matchers, start_ms, reference_ms)?;
        self.check_room(selected.iter().map(|series| series.samples.len()).sum())?;
        let mut result = Vec::new();
        for series in selected {
            if let Some(&(sample_ms, value)) = series.samples.last()
                && !is_stale_nan(value)
            {
                result.push((series.labels, sample_ms, value));
            }
        }
        Ok(result)
    }

    /// Evaluates a matrix selector or a subquery.
    pub(super) fn eval_range_arg(&self, expr: &Expr, time_ms: i64) -> Result<RangeArg, QueryError> {
        match expr {
            Expr::Paren(paren) => self.eval_range_arg(&paren.expr, time_ms),
            Expr::MatrixSelector(matrix) => {
                let selector = &matrix.vs;
                let matchers = matchers_of(selector)?;
                let end_ms = self.at_time(&selector.at, time_ms) - offset_ms(&selector.offset);
                let range_ms = duration_ms(&matrix.range);
                let selected = self
                    .storage
                    .select(&matchers, end_ms - range_ms + 1, end_ms)?;
                self.hold(selected.iter().map(|series| series.samples.len()).sum())?;
                let mut series = Vec::new();
                for data in selected {
                    let points: Vec<(i64, f64)> = data
                        .samples
                        .into_iter()
                        .filter(|(_, value)| !is_stale_nan(*value))
                        .collect();
                    if !points.is_empty() {
                        series.push(Series {
                            labels: data.labels,
                            points,
                        });
                    }
                }
                Ok(RangeArg {
                    series,
                    end_ms,
                    range_ms,
                })
            }
            Expr::Subquery(subquery) => self.eval_subquery(subquery, time_ms),
            _ => Err(QueryError::Execution("expected a range vector".into())),
        }
    }

    fn eval_subquery(&self, subquery: &SubqueryExpr, time_ms: i64) -> Result<RangeArg, QueryError> {
        let end_ms = self.at_time(&subquery.at, time_ms) - offset_ms(&subquery.offset);
        let range_ms = duration_ms(&subquery.range);
        let step_ms = match &subquery.step {
            Some(step) if !step.is_zero() => duration_ms(step),
            _ => self.engine.default_subquery_step_ms,
        };
        let window_start = end_ms - range_ms;
        let mut step_time = step_ms * (window_start / step_ms);
        if step_time <= window_start {
            step_time += step_ms;
        }
        let mut series: Vec<Series> = Vec::new();
        let mut index_by_labels = StepIndex::default();
        while step_time <= end_ms {
            // an inner function releases what it held when it returns;
            // the points of the subquery stay until its caller is done
            let samples = match self.eval(&subquery.expr, step_time)? {
                Value::Scalar(value) => {
                    vec![Sample {
                        labels: Labels::default(),
                        timestamp_ms: step_time,
                        value,
                    }]
                }
                Value::Vector(samples) => samples,
                _ => {
                    return Err(QueryError::Execution(
                        "subquery is only allowed on instant vector".into(),
                    ));
                }
            };
            self.hold(samples.len())?;
            // A new series gets room for the steps left (as far as the
            // budget goes) at once: grown by doubling, a vector of millions
            // of points is copied, and briefly held twice, on the way.
            // The budget counts this step's samples as held already: they
            // are points too (room one short would double the vector at
            // the last point the budget allows).
            let steps_left = ((end_ms - step_time) / step_ms) as usize + 1;
            let budget_left =
                self.engine.max_samples.saturating_sub(self.samples.get()) + samples.len();
            let reserve = steps_left.min(budget_left / samples.len().max(1));
            append_step(
                &mut series,
                &mut index_by_labels,
                step_time,
                samples,
                reserve,
            );
            step_time = match step_time.checked_add(step_ms) {
                Some(next) => next,
                None => break,
            };
        }
        Ok(RangeArg {
            series,
            end_ms,
            range_ms,
        })
    }

    fn eval_binary(&self, binary: &BinaryExpr, time_ms: i64) -> Result<Value, QueryError> {
        let operator = binary.op.to_string();
        let return_bool = binary
            .modifier
            .as_ref()
            .is_some_and(|modifier| modifier.return_bool);
        let left = self.eval(&binary.lhs, time_ms)?;
        let right = self.eval(&binary.rhs, time_ms)?;
        match (left, right) {
            (Value::Scalar(left), Value::Scalar(right)) => {
                let (value, keep) = binary_op(&operator, left, right)?;
                if is_comparison(&operator) {
                    return Ok(Value::Scalar(if keep { 1.0 } else { 0.0 }));
                }
                Ok(Value::Scalar(value))
            }
            (Value::Vector(vector), Value::Scalar(scalar)) => {
                self.vector_scalar(&operator, vector, scalar, false, return_bool)
            }
            (Value::Scalar(scalar), Value::Vector(vector)) => {
                self.vector_scalar(&operator, vector, scalar, true, return_bool)
            }
            (Value::Vector(left), Value::Vector(right)) => {
                self.vector_vector(binary, &operator, left, right, return_bool)
            }
            _ => Err(QueryError::Execution(format!(
                "invalid operand types for binary operator {operator}"
            ))),
        }
    }

    fn vector_scalar(
        &self,
        operator: &str,
        vector: Vec<Sample>,
        scalar: f64,
        scalar_on_left: bool,
        return_bool: bool,
    ) -> Result<Value, QueryError> {
        let comparison = is_comparison(operator);
        let mut result = Vec::with_capacity(vector.len());
        for sample in vector {
            let (left, right) = if scalar_on_left {
                (scalar, sample.value)
            } else {
                (sample.value, scalar)
            };
            let (mut value, keep) = binary_op(operator, left, right)?;
            if comparison {
                value = sample.value;
            }
            let mut labels = sample.labels;
            if return_bool {
                value = if keep { 1.0 } else { 0.0 };
                labels.remove(METRIC_NAME);
            } else if !keep {
                continue;
            }
            if !comparison {
                labels.remove(METRIC_NAME);
            }
            result.push(Sample {
                labels,
                timestamp_ms: sample.timestamp_ms,
                value,
            });
        }
        Ok(Value::Vector(result))
    }

    fn vector_vector(
        &self,
        binary: &BinaryExpr,
        operator: &str,
        left: Vec<Sample>,
        right: Vec<Sample>,
        return_bool: bool,
    ) -> Result<Value, QueryError> {
        let matching = binary
            .modifier
            .as_ref()
            .and_then(|modifier| modifier.matching.clone());
        let signature = |labels: &Labels| match_labels(labels, &matching);
        match operator {
            "and" => {
                let right_signatures: HashSet<Labels> = right
                    .iter()
                    .map(|sample| signature(&sample.labels))
                    .collect();
                return Ok(Value::Vector(
                    left.into_iter()
                        .filter(|sample| right_signatures.contains(&signature(&sample.labels)))
                        .collect(),
                ));
            }
            "or" => {
                let left_signatures: HashSet<Labels> = left
                    .iter()
                    .map(|sample| signature(&sample.labels))
                    .collect();
                let mut result = left;
                result.extend(
                    right
                        .into_iter()
                        .filter(|sample| !left_signatures.contains(&signature(&sample.labels))),
                );
                return Ok(Value::Vector(result));
            }
            "unless" => {
                let right_signatures: HashSet<Labels> = right
                    .iter()
                    .map(|sample| signature(&sample.labels))
                    .collect();
                return Ok(Value::Vector(
                    left.into_iter()
                        .filter(|sample| !right_signatures.contains(&signature(&sample.labels)))
                        .collect(),
                ));
            }
            _ => {}
        }
        if left.is_empty() || right.is_empty() {
            return Ok(Value::Vector(Vec::new()));
        }
        let cardinality = binary
            .modifier
            .as_ref()
            .map(|modifier| modifier.card.clone())
            .unwrap_or(VectorMatchCardinality::OneToOne);
        let include: Vec<String> = match &cardinality {
            VectorMatchCardinality::ManyToOne(labels)
            | VectorMatchCardinality::OneToMany(labels) => labels.labels.clone(),
            _ => Vec::new(),
        };
        let one_to_many = matches!(cardinality, VectorMatchCardinality::OneToMany(_));
        let one_to_one = matches!(cardinality, VectorMatchCardinality::OneToOne);
        let (many_side, one_side) = if one_to_many {
            (right, left)
        } else {
            (left, right)
        };
        let mut one_by_signature: HashMap<Labels, &Sample> = HashMap::new();
        for sample in &one_side {
            let key = signature(&sample.labels);
            if let Some(duplicate) = one_by_signature.get(&key) {
                let side = if one_to_many { "left" } else { "right" };
                return Err(QueryError::Execution(format!(
                    "found duplicate series for the match group {key} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                    sample.labels, duplicate.labels
                )));
            }
            one_by_signature.insert(key, sample);
        }
        let comparison = is_comparison(operator);
        let mut matched_one_to_one: HashSet<Labels> = HashSet::new();
        let mut inserted: HashMap<Labels, HashSet<Labels>> = HashMap::new();
        let mut result = Vec::new();
        for many in &many_side {
            let key = signature(&many.labels);
            let Some(one) = one_by_signature.get(&key) else {
                continue;
            };
            let (left_value, right_value) = if one_to_many {
                (one.value, many.value)
            } else {
                (many.value, one.value)
            };
            let (mut value, keep) = binary_op(operator, left_value, right_value)?;
            if return_bool {
                value = if keep { 1.0 } else { 0.0 };
            } else if !keep {
                continue;
            }
            let mut labels = many.labels.clone();
            if !comparison {
                labels.remove(METRIC_NAME);
            }
            if one_to_one {
                match &matching {
                    Some(LabelModifier::Include(on)) => labels.keep(&on.labels),
                    Some(LabelModifier::Exclude(ignoring)) => {
                        for name in &ignoring.labels {
                            labels.remove(name);
                        }
                    }
                    None => {}
                }
            }
            for name in &include {
                labels.set(name, one.labels.get(name));
            }
            if return_bool {
                labels.remove(METRIC_NAME);
            }
            if one_to_one {
                if !matched_one_to_one.insert(key) {
                    return Err(QueryError::Execution(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                    ));
                }
            } else if !inserted.entry(key).or_default().insert(labels.clone()) {
                return Err(QueryError::Execution(
                    "multiple matches for labels: grouping labels must ensure unique matches"
                        .into(),
                ));
            }
            result.push(Sample {
                labels,
                timestamp_ms: many.timestamp_ms,
                value,
            });
        }
        Ok(Value::Vector(result))
    }

    fn eval_aggregate(&self, aggregate: &AggregateExpr, time_ms: i64) -> Result<Value, QueryError> {
        let operator = aggregate.op.to_string();
        let samples = self.eval_vector(&aggregate.expr, time_ms)?;
        let parameter = match &aggregate.param {
            Some(param) => Some(self.eval(param, time_ms)?),
            None => None,
        };
        let grouping = |labels: &Labels| -> Labels {
            match &aggregate.modifier {
                Some(LabelModifier::Include(by)) => {
                    let mut grouped = labels.clone();
                    grouped.keep(&by.labels);
                    grouped
                }
                Some(LabelModifier::Exclude(without)) => {
                    let mut grouped = labels.without_metric_name();
                    for name in &without.labels {
                        grouped.remove(name);
                    }
                    grouped
                }
                None => Labels::default(),
            }
        };
        let mut group_order: Vec<Labels> = Vec::new();
        let mut groups: HashMap<Labels, Vec<Sample>> = HashMap::new();
        for sample in samples {
            let key = grouping(&sample.labels);
            let members = groups.entry(key.clone()).or_insert_with(|| {
                group_order.push(key);
                Vec::new()
            });
            members.push(sample);
        }
        let mut result = Vec::new();
        for key in group_order {
            let members = groups.remove(&key).unwrap_or_default();
            let values: Vec<f64> = members.iter().map(|sample| sample.value).collect();
            let value = match operator.as_str() {
                "sum" => kahan_sum(&values),
                "avg" => functions::average(&values),
                "count" => values.len() as f64,
                "group" => 1.0,
                "min" => values.iter().copied().fold(f64::NAN, |minimum, value| {
                    if minimum > value || minimum.is_nan() {
                        value
                    } else {
                        minimum
                    }
                }),
                "max" => values.iter().copied().fold(f64::NAN, |maximum, value| {
                    if maximum < value || maximum.is_nan() {
                        value
                    } else {
                        maximum
                    }
                }),
                "stddev" => functions::variance(&values).sqrt(),
                "stdvar" => functions::variance(&values),
                "quantile" => {
                    let quantile = scalar_parameter(&parameter)?;
                    functions::quantile(quantile, values)
                }
                "topk" | "bottomk" | "limitk" => {
                    let k = scalar_parameter(&parameter)?;
                    if k.is_nan() {
                        return Err(QueryError::Execution("Parameter value is NaN".into()));
                    }
                    if k < 1.0 {
                        continue;
                    }
                    let k = if k > members.len() as f64 {
                        members.len()
                    } else {
                        k as usize
                    };
                    let mut members = members;
                    match operator.as_str() {
                        "topk" => members
                            .sort_by(|left, right| descending_nan_last(left.value, right.value)),
                        "bottomk" => members
                            .sort_by(|left, right| ascending_nan_last(left.value, right.value)),
                        _ => {}
                    }
                    result.extend(members.into_iter().take(k));
                    continue;
                }
                "count_values" => {
                    let label = match &parameter {
                        Some(Value::String(label)) => label.clone(),
                        _ => {
                            return Err(QueryError::Execution(
                                "count_values needs a string parameter".into(),
                            ));
                        }
                    };
                    if !is_valid_label_name(&label) {
                        return Err(QueryError::Execution(format!(
                            "invalid label name {label:?}"
                        )));
                    }
                    let mut counts: Vec<(String, f64)> = Vec::new();
                    for value in values {
                        let formatted = super::format_value(value);
                        match counts
                            .iter_mut()
                            .find(|(existing, _)| *existing == formatted)
                        {
                            Some(entry) => entry.1 += 1.0,
                            None => counts.push((formatted, 1.0)),
                        }
                    }
                    for (formatted, count) in counts {
                        let mut labels = key.clone();
                        labels.set(&label, &formatted);
                        result.push(Sample {
                            labels,
                            timestamp_ms: time_ms,
                            value: count,
                        });
                    }
                    continue;
                }
                other => {
                    return Err(QueryError::Execution(format!(
                        "unsupported aggregation {other}"
                    )));
                }
            };
            result.push(Sample {
                labels: key,
                timestamp_ms: time_ms,
                value,
            });
        }
        Ok(Value::Vector(result))
    }
}

fn scalar_parameter(parameter: &Option<Value>) -> Result<f64, QueryError> {
    match parameter {
        Some(Value::Scalar(value)) => Ok(*value),
        _ => Err(QueryError::Execution(
            "aggregation needs a scalar parameter".into(),
        )),
    }
}

pub(super) fn ascending_nan_last(left: f64, right: f64) -> std::cmp::Ordering {
    match (left.is_nan(), right.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        (false, false) => left
            .partial_cmp(&right)
            .unwrap_or(std::cmp::Ordering::Equal),
    }
}

pub(super) fn descending_nan_last(left: f64, right: f64) -> std::cmp::Ordering {
    match (left.is_nan(), right.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        (false, false) => right
            .partial_cmp(&left)
            .unwrap_or(std::cmp::Ordering::Equal),
    }
}

pub(super) fn is_valid_label_name(name: &str) -> bool {
    !name.is_empty() && std::str::from_utf8(name.as_bytes()).is_ok()
}

/// Labels used to match two samples across a binary operator.
fn match_labels(labels: &Labels, matching: &Option<LabelModifier>) -> Labels {
    match matching {
        Some(LabelModifier::Include(on)) => {
            let mut kept = labels.clone();
            kept.keep(&on.labels);
            kept
        }
        Some(LabelModifier::Exclude(ignoring)) => {
            let mut kept = labels.without_metric_name();
            for name in &ignoring.labels {
                kept.remove(name);
            }
            kept
        }
        None => labels.without_metric_name(),
    }
}

fn is_comparison(operator: &str) -> bool {
    matches!(operator, "==" | "!=" | ">" | "<" | ">=" | "<=")
}

/// Applies an arithmetic or comparison operator: (value, keep).
fn binary_op(operator: &str, left: f64, right: f64) -> Result<(f64, bool), QueryError> {
    Ok(match operator {
        "+" => (left + right, true),
        "-" => (left - right, true),
        "*" => (left * right, true),
        "/" => (left / right, true),
        "%" => (left % right, true),
        "^" => (left.powf(right), true),
        "atan2" => (left.atan2(right), true),
        "==" => (left, left == right),
        "!=" => (left, left != right),
        ">" => (left, left > right),
        "<" => (left, left < right),
        ">=" => (left, left >= right),
        "<=" => (left, left <= right),
        other => {
            return Err(QueryError::Execution(format!(
                "unsupported operator {other}"
            )));
        }
    })
}

/// Neumaier-compensated summation step, as Prometheus' `kahanSumInc`.
pub(super) fn kahan_sum_inc(increment: f64, sum: f64, compensation: f64) -> (f64, f64) {
    let total = sum + increment;
    let compensation = if total.is_infinite() {
        0.0
    } else if sum.abs() >= increment.abs() {
        compensation + ((sum - total) + increment)
    } else {
        compensation + ((increment - total) + sum)
    };
    (total, compensation)
}

pub(super) fn kahan_sum(values: &[f64]) -> f64 {
    let (mut sum, mut compensation) = (0.0, 0.0);
    for value in values {
        (sum, compensation) = kahan_sum_inc(*value, sum, compensation);
    }
    if sum.is_infinite() {
        sum
    } else {
        sum + compensation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promql::MemoryStorage;

    #[test]
    fn a_subquery_that_fills_the_budget_never_grows_its_points() {
        let engine = Engine {
            max_samples: 1_000,
            ..Engine::default()
        };
        let storage = MemoryStorage::default();
        let cancelled = AtomicBool::new(false);
        let evaluator = Evaluator::new(&storage, &engine, 1_000_000, 1_000_000, &cancelled);
        let Ok(Expr::Subquery(subquery)) = promql_parser::parser::parse("vector(1)[1000s:1s]")
        else {
            panic!("a subquery");
        };
        // 1,000 steps, each a point: exactly the budget. Room one short
        // doubled the vector at the last point (with an allocator that
        // copies on growth, twice the points were briefly resident).
        let range = evaluator
            .eval_subquery(&subquery, 1_000_000)
            .expect("within the budget");
        let points = &range.series[0].points;
        assert_eq!(points.len(), 1_000);
        assert_eq!(points.capacity(), 1_000);
    }
}
