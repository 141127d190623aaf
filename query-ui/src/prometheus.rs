//! The Prometheus HTTP API (`/api/v1/...`), so that Grafana's Prometheus data
//! source, `promtool` and other Prometheus clients work against the collector.
//!
//! Endpoints, each answering `GET` and form-encoded `POST` (URL and body
//! parameters are merged, the body's first, as Go's `FormValue` does):
//!
//! - `/api/v1/query` (`query`, `time`, `timeout`) and `/api/v1/query_range`
//!   (`query`, `start`, `end`, `step`, `timeout`), evaluated by
//!   [`sightline_tsdb::promql::Engine`];
//! - `/api/v1/series` (`match[]`, `start`, `end`, `limit`), `/api/v1/labels`
//!   and `/api/v1/label/{name}/values` (optional `match[]`, `start`, `end`,
//!   `limit`);
//! - `/api/v1/metadata` (`metric`, `limit`), from the store's metadata;
//! - `/api/v1/rules` (`type=alert|record`, `rule_name[]`, `rule_group[]`,
//!   `file[]`, `exclude_alerts`) and `/api/v1/alerts`, from the rule engine's
//!   [`RuleStatusSource`](sightline_tsdb::rules::RuleStatusSource);
//! - `/api/v1/status/buildinfo`, and `/api/v1/status/flags` with the query
//!   settings in force;
//! - `/api/v1/query_exemplars` (`query`, `start`, `end`): the exemplars of
//!   the series the query's selectors select, from the store's bounded
//!   exemplar store (`sightline_tsdb::exemplars`).
//!
//! Responses use Prometheus' envelope, `{"status":"success","data":...}`
//! (with `"warnings"` when there are any), and its errors,
//! `{"status":"error","errorType":...,"error":...}`: `bad_data` 400,
//! `execution` 422, `timeout` and `unavailable` 503, `internal` 500.
//! Times are RFC 3339 or float Unix seconds; durations (`step`, `timeout`)
//! float seconds or a Prometheus duration (`15s`, `1m`).
//!
//! ## Version reported to clients
//!
//! `/api/v1/status/buildinfo` reports [`PROMETHEUS_COMPATIBLE_VERSION`]
//! (`3.0.0`) as `version`: Grafana picks its query features from that
//! version, and the engine follows Prometheus 3.x semantics (left-open range
//! windows, 3.x extrapolation). Sightline's own version is in `revision`
//! (`sightline-<version>`) and `branch` (`sightline`).
//!
//! ## Queries, the store lock and limits
//!
//! A query runs on a thread of its own and reads the store one select at a
//! time, taking the read lock only for that select: ingest is never held up
//! by a long query, and a query that selects nothing (`vector(1)`) never
//! waits for the lock. At most [`MAX_CONCURRENT_QUERIES`] run at once and
//! at most [`MAX_QUEUED_QUERIES`] wait for a slot, each for a few seconds
//! within its own timeout (2 minutes unless `timeout` says less); others
//! answer 503 `unavailable` at once. A query past its timeout answers 503
//! `timeout` and its evaluation stops at the next node or step it
//! evaluates, freeing its thread and slot; shutdown stops every running
//! evaluation the same way ([`cancel_queries`]).
//!
//! A query nested deeper than the engine's limits answers 400 `bad_data`
//! naming the limit; one that would hold more than 50,000,000 samples at
//! once (Prometheus' `--query.max-samples`: selected samples, subquery
//! steps, the result so far) answers 422 `execution`, `query processing
//! would load too many samples into memory in query execution`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use sightline_tsdb::promql::{
    EVAL_STACK_BYTES, Engine, QUERY_CANCELED, QueryError, Queryable, Value, format_value,
    parse_duration, parse_selector,
};
use sightline_tsdb::rules::{AlertState, AlertStatus, RuleHealth, RuleKind, RuleStatus};
use sightline_tsdb::{LabelMatcher, Labels, MetricReader};
use sightline_vocab::clock::now_ms;
use sightline_vocab::names::is_label_name;
use tokio::sync::Semaphore;

use crate::QueryState;
use crate::params::Pairs as _;
use crate::response::{
    AlertJson, Alerts, BuildInfo, MetricMetadataEntry, PromErrorBody, PromExemplar, PromLabels,
    PromPoint, PromSample, PromSeries, PromSeriesExemplars, PromSuccess, PromTime, QueryData,
    QueryFlags, RuleGroupJson, RuleGroups, RuleJson, RuleKindJson,
};

/// The Prometheus version `/api/v1/status/buildinfo` reports, so that
/// Grafana enables the features of the PromQL dialect the engine speaks.
pub(crate) const PROMETHEUS_COMPATIBLE_VERSION: &str = "3.0.0";

/// Queries evaluated at the same time (Prometheus' `--query.max-concurrency`
/// default); others wait for a slot.
pub(crate) const MAX_CONCURRENT_QUERIES: usize = 20;

/// Query timeout when the request gives none (Prometheus' `--query.timeout`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Most points (samples of a vector, points of a matrix) one query answers:
/// about 40 MB of JSON. Past it the query fails as Prometheus' does past
/// `--query.max-samples`, instead of building a response that size.
pub(crate) const MAX_RESULT_POINTS: usize = 1_000_000;

/// Prometheus' limit on the points of one series in a range query.
const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// The earliest and latest times a request can name (Prometheus' `minTime`
/// and `maxTime`, which clients send formatted as below).
const MIN_TIME_MS: i64 = i64::MIN / 4;
const MAX_TIME_MS: i64 = i64::MAX / 4;
const MIN_TIME_TEXT: &str = "-292273086-05-16T16:47:06Z";
const MAX_TIME_TEXT: &str = "292277025-08-18T07:12:54.999999999Z";

static QUERY_SLOTS: Semaphore = Semaphore::const_new(MAX_CONCURRENT_QUERIES);

/// The routes of the Prometheus HTTP API.
pub(crate) fn routes() -> Router<QueryState> {
    Router::new()
        .route("/api/v1/query", get(instant_query).post(instant_query))
        .route("/api/v1/query_range", get(range_query).post(range_query))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(label_names).post(label_names))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/metadata", get(metadata).post(metadata))
        .route("/api/v1/rules", get(rules).post(rules))
        .route("/api/v1/alerts", get(alerts).post(alerts))
        .route("/api/v1/status/buildinfo", get(build_info))
        .route("/api/v1/status/flags", get(flags))
        .route(
            "/api/v1/query_exemplars",
            get(query_exemplars).post(query_exemplars),
        )
}

/// Prometheus' error classes, with their HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorType {
    BadData,
    Execution,
    Timeout,
    Internal,
    Unavailable,
}

impl ErrorType {
    fn name(self) -> &'static str {
        match self {
            ErrorType::BadData => "bad_data",
            ErrorType::Execution => "execution",
            ErrorType::Timeout => "timeout",
            ErrorType::Internal => "internal",
            ErrorType::Unavailable => "unavailable",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            ErrorType::BadData => StatusCode::BAD_REQUEST,
            ErrorType::Execution => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::Timeout | ErrorType::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorType::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answer of the Prometheus API.
#[derive(Debug)]
struct PromError {
    kind: ErrorType,
    message: String,
}

impl PromError {
    fn bad_data(message: impl Into<String>) -> PromError {
        PromError {
            kind: ErrorType::BadData,
            message: message.into(),
        }
    }

    /// `invalid parameter "name": reason`, as Prometheus words it.
    fn invalid_parameter(name: &str, reason: impl std::fmt::Display) -> PromError {
        PromError::bad_data(format!("invalid parameter {name:?}: {reason}"))
    }

    fn from_query(error: QueryError) -> PromError {
        match error {
            QueryError::Parse(message) => {
                PromError::invalid_parameter("query", format!("parse error: {message}"))
            }
            // stopped by a shutdown (a timeout has answered already)
            QueryError::Execution(message) if message == QUERY_CANCELED => {
                unavailable(format!("{message}: the collector is shutting down"))
            }
            QueryError::Execution(message) => PromError {
                kind: ErrorType::Execution,
                message,
            },
            QueryError::Storage(message) => PromError {
                kind: ErrorType::Internal,
                message,
            },
        }
    }
}

impl IntoResponse for PromError {
    fn into_response(self) -> Response {
        if self.kind == ErrorType::Internal {
            tracing::error!(error = %self.message, "prometheus api request failed");
        }
        (
            self.kind.status(),
            Json(PromErrorBody {
                status: "error",
                error_type: self.kind.name(),
                error: &self.message,
            }),
        )
            .into_response()
    }
}

/// The success envelope around `data`.
fn success(data: impl Serialize, warnings: Vec<String>) -> Response {
    Json(PromSuccess {
        status: "success",
        data,
        warnings,
    })
    .into_response()
}

/// The request's parameters: a form body's (for a form-encoded `POST`)
/// followed by the URL's, repeated names kept in order.
struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = PromError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let url_pairs = Query::<Vec<(String, String)>>::try_from_uri(request.uri())
            .map_err(|error| PromError::bad_data(format!("invalid URL parameters: {error}")))?
            .0;
        let is_form = request.method() == Method::POST
            && request
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
        let mut pairs = Vec::new();
        if is_form {
            let axum::Form(body_pairs) =
                axum::Form::<Vec<(String, String)>>::from_request(request, state)
                    .await
                    .map_err(|error| {
                        PromError::bad_data(format!("invalid form body: {}", error.body_text()))
                    })?;
            pairs = body_pairs;
        }
        pairs.extend(url_pairs);
        Ok(Params(pairs))
    }
}

impl Params {
    /// The first non-empty value of `name`.
    fn get(&self, name: &str) -> Option<&str> {
        self.0.value(name)
    }

    /// Every value of `name`, in order.
    fn all(&self, name: &str) -> Vec<&str> {
        self.0.values(name)
    }

    fn time_or(&self, name: &str, default_ms: i64) -> Result<i64, PromError> {
        self.get(name)
            .map_or(Ok(default_ms), |text| parse_time(name, text))
    }

    fn required_time(&self, name: &str) -> Result<i64, PromError> {
        let text = self
            .get(name)
            .ok_or_else(|| PromError::invalid_parameter(name, "missing"))?;
        parse_time(name, text)
    }

    fn timeout(&self) -> Result<Duration, PromError> {
        match self.get("timeout") {
            None => Ok(DEFAULT_TIMEOUT),
            Some(text) => {
                let millis = parse_duration_ms("timeout", text)?;
                Ok(Duration::from_millis(millis.max(0) as u64).min(DEFAULT_TIMEOUT))
            }
        }
    }

    /// `limit`: `None` when absent or 0 (no limit), as Prometheus reads it
    /// for series and labels.
    fn limit(&self) -> Result<Option<usize>, PromError> {
        match self.get("limit") {
            None => Ok(None),
            Some(text) => match text.parse::<i64>() {
                Ok(0) => Ok(None),
                Ok(limit) if limit > 0 => Ok(Some(limit as usize)),
                _ => Err(PromError::invalid_parameter(
                    "limit",
                    format!("cannot parse {text:?}: limit must be a non-negative number"),
                )),
            },
        }
    }

    /// The `match[]` selectors, parsed.
    fn selectors(&self) -> Result<Vec<Vec<LabelMatcher>>, PromError> {
        self.all("match[]")
            .into_iter()
            .map(|text| {
                parse_selector(text).map_err(|error| {
                    let message = match error {
                        QueryError::Parse(message) => format!("parse error: {message}"),
                        other => other.to_string(),
                    };
                    PromError::invalid_parameter("match[]", message)
                })
            })
            .collect()
    }
}

/// A time parameter: float Unix seconds or RFC 3339, in milliseconds.
fn parse_time(name: &str, text: &str) -> Result<i64, PromError> {
    let invalid = || {
        PromError::invalid_parameter(name, format!("cannot parse {text:?} to a valid timestamp"))
    };
    if let Ok(seconds) = text.parse::<f64>() {
        let millis = (seconds * 1000.0).round();
        if !millis.is_finite() || millis < MIN_TIME_MS as f64 || millis > MAX_TIME_MS as f64 {
            return Err(invalid());
        }
        return Ok(millis as i64);
    }
    match text {
        MIN_TIME_TEXT => return Ok(MIN_TIME_MS),
        MAX_TIME_TEXT => return Ok(MAX_TIME_MS),
        _ => {}
    }
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| invalid())?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).map_err(|_| invalid())
}

/// A duration parameter: float seconds or a Prometheus duration, in
/// milliseconds.
fn parse_duration_ms(name: &str, text: &str) -> Result<i64, PromError> {
    let invalid =
        || PromError::invalid_parameter(name, format!("cannot parse {text:?} to a valid duration"));
    if let Ok(seconds) = text.parse::<f64>() {
        let millis = (seconds * 1000.0).round();
        if !millis.is_finite() || millis.abs() > i64::MAX as f64 / 1e6 {
            return Err(PromError::invalid_parameter(
                name,
                format!("cannot parse {text:?} to a valid duration. It overflows int64"),
            ));
        }
        return Ok(millis as i64);
    }
    // The duration parser refuses a zero duration such as `0s`.
    let number = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if !number.is_empty() && number.len() < text.len() && number.bytes().all(|b| b == b'0') {
        return Ok(0);
    }
    parse_duration(text)
        .map(|duration| duration.as_millis() as i64)
        .map_err(|_| invalid())
}

/// Sets the flag when dropped: when the request times out, or when its
/// client goes away and the handler is dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Most queries waiting for a slot; past it a query answers 503 at once
/// instead of queueing without bound.
pub(crate) const MAX_QUEUED_QUERIES: usize = 2 * MAX_CONCURRENT_QUERIES;

/// Longest wait for a slot (within the query's own timeout): a client
/// told "busy" quickly can retry, one left hanging cannot.
const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Queries waiting for a slot now.
static QUEUED: AtomicUsize = AtomicUsize::new(0);

/// Set once the collector shuts down: new queries answer 503.
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// The cancellation flags of the queries running now.
static RUNNING: Mutex<Vec<Weak<AtomicBool>>> = Mutex::new(Vec::new());

/// Stops every running PromQL evaluation at its next check and refuses new
/// ones: shutdown must not wait for a runaway query.
pub fn cancel_queries() {
    SHUTTING_DOWN.store(true, Ordering::Relaxed);
    let running = std::mem::take(&mut *RUNNING.lock().unwrap_or_else(|e| e.into_inner()));
    for flag in running.iter().filter_map(Weak::upgrade) {
        flag.store(true, Ordering::Relaxed);
    }
}

/// Counts a waiting query for as long as it waits.
struct Queued;

impl Queued {
    fn enter() -> Option<Queued> {
        QUEUED
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |waiting| {
                (waiting < MAX_QUEUED_QUERIES).then_some(waiting + 1)
            })
            .ok()
            .map(|_| Queued)
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        QUEUED.fetch_sub(1, Ordering::Relaxed);
    }
}

fn unavailable(message: impl Into<String>) -> PromError {
    PromError {
        kind: ErrorType::Unavailable,
        message: message.into(),
    }
}

/// Runs `work` on a thread of its own within `timeout` (waiting for a query
/// slot included). `work` reads through the [`MetricReader`] (an embedded
/// store takes its read lock per select, never for the whole query, so
/// ingest goes on while it runs). It gets a flag that is set once
/// nobody waits for its answer any more (timeout, client gone, shutdown);
/// the evaluator checks it at every node and step and stops, which frees
/// the thread and the slot.
///
/// At most [`MAX_CONCURRENT_QUERIES`] run at once; at most
/// [`MAX_QUEUED_QUERIES`] wait, each for at most [`QUEUE_WAIT`]. Others
/// answer 503 `unavailable` at once.
async fn run_blocking<T: Send + 'static>(
    state: &QueryState,
    timeout: Duration,
    work: impl FnOnce(&dyn MetricReader, &AtomicBool) -> Result<T, QueryError> + Send + 'static,
) -> Result<T, PromError> {
    let timed_out = |phase: &str| PromError {
        kind: ErrorType::Timeout,
        message: format!("query timed out in {phase}"),
    };
    if timeout.is_zero() {
        return Err(timed_out("query queue"));
    }
    if SHUTTING_DOWN.load(Ordering::Relaxed) {
        return Err(unavailable("the query engine is shutting down"));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let busy = || {
        unavailable(format!(
            "too many concurrent queries: {MAX_CONCURRENT_QUERIES} running and {MAX_QUEUED_QUERIES} waiting at most; retry later"
        ))
    };
    let permit = match QUERY_SLOTS.try_acquire() {
        Ok(permit) => permit,
        Err(tokio::sync::TryAcquireError::Closed) => {
            return Err(unavailable("the query engine is shutting down"));
        }
        Err(tokio::sync::TryAcquireError::NoPermits) => {
            let Some(_queued) = Queued::enter() else {
                return Err(busy());
            };
            let wait_until = deadline.min(tokio::time::Instant::now() + QUEUE_WAIT);
            match tokio::time::timeout_at(wait_until, QUERY_SLOTS.acquire()).await {
                Err(_) if wait_until < deadline => return Err(busy()),
                Err(_) => return Err(timed_out("query queue")),
                Ok(Err(_)) => return Err(unavailable("the query engine is shutting down")),
                Ok(Ok(permit)) => permit,
            }
        }
    };
    let metrics = state.metrics.clone();
    let cancelled = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancelled.clone());
    {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|flag| flag.strong_count() > 0);
        running.push(Arc::downgrade(&cancelled));
    }
    if SHUTTING_DOWN.load(Ordering::Relaxed) {
        return Err(unavailable("the query engine is shutting down"));
    }
    // A thread of its own, with the stack a query at the parser's limits
    // needs (tokio's threads have 2 MiB); the runtime does not wait for it
    // at shutdown, and it ends at its next check once cancelled.
    let (answer, task) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("promql".into())
        .stack_size(EVAL_STACK_BYTES)
        .spawn(move || {
            let _permit = permit;
            let _ = answer.send(work(&*metrics, &cancelled));
        })
        .map_err(|error| PromError {
            kind: ErrorType::Internal,
            message: format!("failed to start a query thread: {error}"),
        })?;
    match tokio::time::timeout_at(deadline, task).await {
        Err(_) => Err(timed_out("query execution")),
        Ok(Err(_)) => Err(PromError {
            kind: ErrorType::Internal,
            message: "the query thread ended without an answer".into(),
        }),
        Ok(Ok(result)) => result.map_err(PromError::from_query),
    }
}

/// [`run_blocking`] for work that needs no cancellation (series and
/// label listings).
async fn run_on_store<T: Send + 'static>(
    state: &QueryState,
    timeout: Duration,
    work: impl FnOnce(&dyn MetricReader) -> Result<T, QueryError> + Send + 'static,
) -> Result<T, PromError> {
    run_blocking(state, timeout, move |metrics, _| work(metrics)).await
}

fn point(millis: i64, value: f64) -> PromPoint {
    (PromTime(millis), format_value(value))
}

/// The query result at `time_ms` as the API answers it.
fn query_data(value: Value, time_ms: i64) -> QueryData {
    match value {
        Value::Scalar(number) => QueryData::Scalar(point(time_ms, number)),
        Value::String(text) => QueryData::String((PromTime(time_ms), text)),
        Value::Vector(samples) => QueryData::Vector(
            samples
                .into_iter()
                .map(|sample| PromSample {
                    value: point(sample.timestamp_ms, sample.value),
                    metric: PromLabels(sample.labels),
                })
                .collect(),
        ),
        Value::Matrix(series) => matrix(series),
    }
}

fn matrix(series: Vec<sightline_tsdb::promql::Series>) -> QueryData {
    QueryData::Matrix(
        series
            .into_iter()
            .map(|one| PromSeries {
                metric: PromLabels(one.labels),
                values: one
                    .points
                    .iter()
                    .map(|(millis, value)| point(*millis, *value))
                    .collect(),
            })
            .collect(),
    )
}

/// `GET|POST /api/v1/query`
async fn instant_query(
    State(state): State<QueryState>,
    params: Params,
) -> Result<Response, PromError> {
    let query = params.get("query").unwrap_or_default().to_string();
    let time_ms = params.time_or("time", now_ms())?;
    let timeout = params.timeout()?;
    let value = run_blocking(&state, timeout, move |store, cancelled| {
        let expr = Engine::parse(&query)?;
        Engine::default().instant_expr_cancellable(
            store as &dyn Queryable,
            &expr,
            time_ms,
            cancelled,
        )
    })
    .await?;
    let points = match &value {
        Value::Vector(samples) => samples.len(),
        Value::Matrix(series) => series.iter().map(|one| one.points.len()).sum(),
        Value::Scalar(_) | Value::String(_) => 1,
    };
    check_result_points(points, MAX_RESULT_POINTS)?;
    Ok(success(query_data(value, time_ms), Vec::new()))
}

/// `GET|POST /api/v1/query_range`
async fn range_query(
    State(state): State<QueryState>,
    params: Params,
) -> Result<Response, PromError> {
    let start_ms = params.required_time("start")?;
    let end_ms = params.required_time("end")?;
    if end_ms < start_ms {
        return Err(PromError::invalid_parameter(
            "end",
            "end timestamp must not be before start time",
        ));
    }
    let step_text = params
        .get("step")
        .ok_or_else(|| PromError::invalid_parameter("step", "missing"))?;
    let step_ms = parse_duration_ms("step", step_text)?;
    if step_ms <= 0 {
        return Err(PromError::invalid_parameter(
            "step",
            "zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    if (end_ms - start_ms) / step_ms > MAX_POINTS_PER_SERIES {
        return Err(PromError::bad_data(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ));
    }
    let query = params.get("query").unwrap_or_default().to_string();
    let timeout = params.timeout()?;
    let mut series = run_blocking(&state, timeout, move |store, cancelled| {
        let expr = Engine::parse(&query)?;
        Engine::default().range_expr_cancellable(
            store as &dyn Queryable,
            &expr,
            start_ms,
            end_ms,
            step_ms,
            cancelled,
        )
    })
    .await?;
    series.retain(|one| !one.points.is_empty());
    let points = series.iter().map(|one| one.points.len()).sum();
    check_result_points(points, MAX_RESULT_POINTS)?;
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(success(matrix(series), Vec::new()))
}

/// Refuses a result of more than `limit` points, with Prometheus' message.
fn check_result_points(points: usize, limit: usize) -> Result<(), PromError> {
    if points <= limit {
        return Ok(());
    }
    Err(PromError {
        kind: ErrorType::Execution,
        message: format!(
            "query processing would load too many samples into memory in query execution: {points} points, over the limit of {limit} per query"
        ),
    })
}

/// Label sets of the series matching any of `selectors` in the range,
/// sorted and without duplicates.
fn matching_series(
    store: &dyn MetricReader,
    selectors: &[Vec<LabelMatcher>],
    start_ms: i64,
    end_ms: i64,
) -> Result<BTreeSet<Labels>, QueryError> {
    let mut found = BTreeSet::new();
    for matchers in selectors {
        found.extend(store.series(matchers, start_ms, end_ms)?);
    }
    Ok(found)
}

/// Keeps the first `limit` items, with Prometheus' warning when it cut.
fn truncate<T>(items: &mut Vec<T>, limit: Option<usize>) -> Vec<String> {
    match limit {
        Some(limit) if items.len() > limit => {
            items.truncate(limit);
            vec!["results truncated due to limit".to_string()]
        }
        _ => Vec::new(),
    }
}

/// `GET|POST /api/v1/series`
async fn series(State(state): State<QueryState>, params: Params) -> Result<Response, PromError> {
    let selectors = params.selectors()?;
    if selectors.is_empty() {
        return Err(PromError::bad_data("no match[] parameter provided"));
    }
    let start_ms = params.time_or("start", MIN_TIME_MS)?;
    let end_ms = params.time_or("end", MAX_TIME_MS)?;
    let limit = params.limit()?;
    let found = run_on_store(&state, DEFAULT_TIMEOUT, move |store| {
        matching_series(store, &selectors, start_ms, end_ms)
    })
    .await?;
    let mut data: Vec<PromLabels> = found.into_iter().map(PromLabels).collect();
    let warnings = truncate(&mut data, limit);
    Ok(success(data, warnings))
}

/// `GET|POST /api/v1/labels`
async fn label_names(
    State(state): State<QueryState>,
    params: Params,
) -> Result<Response, PromError> {
    let selectors = params.selectors()?;
    let range = (params.get("start").is_some() || params.get("end").is_some())
        .then(|| {
            Ok::<_, PromError>((
                params.time_or("start", MIN_TIME_MS)?,
                params.time_or("end", MAX_TIME_MS)?,
            ))
        })
        .transpose()?;
    let limit = params.limit()?;
    let mut names = run_on_store(&state, DEFAULT_TIMEOUT, move |store| {
        if selectors.is_empty() && range.is_none() {
            return store.label_names();
        }
        let selectors = if selectors.is_empty() {
            vec![LabelMatcher::any_series()]
        } else {
            selectors
        };
        let (start_ms, end_ms) = range.unwrap_or((MIN_TIME_MS, MAX_TIME_MS));
        let mut names = BTreeSet::new();
        for labels in matching_series(store, &selectors, start_ms, end_ms)? {
            names.extend(labels.iter().map(|(name, _)| name.to_string()));
        }
        Ok(names.into_iter().collect())
    })
    .await?;
    let warnings = truncate(&mut names, limit);
    Ok(success(names, warnings))
}

/// `GET /api/v1/label/{name}/values`
async fn label_values(
    State(state): State<QueryState>,
    Path(name): Path<String>,
    params: Params,
) -> Result<Response, PromError> {
    if !is_label_name(&name) {
        return Err(PromError::bad_data(format!("invalid label name: {name:?}")));
    }
    let selectors = params.selectors()?;
    let range = (params.get("start").is_some() || params.get("end").is_some())
        .then(|| {
            Ok::<_, PromError>((
                params.time_or("start", MIN_TIME_MS)?,
                params.time_or("end", MAX_TIME_MS)?,
            ))
        })
        .transpose()?;
    let limit = params.limit()?;
    let mut values = run_on_store(&state, DEFAULT_TIMEOUT, move |store| {
        if selectors.is_empty() && range.is_none() {
            return store.label_values(&name);
        }
        let selectors = if selectors.is_empty() {
            vec![LabelMatcher::any_series()]
        } else {
            selectors
        };
        let (start_ms, end_ms) = range.unwrap_or((MIN_TIME_MS, MAX_TIME_MS));
        let mut values = BTreeSet::new();
        for labels in matching_series(store, &selectors, start_ms, end_ms)? {
            let value = labels.get(&name);
            if !value.is_empty() {
                values.insert(value.to_string());
            }
        }
        Ok(values.into_iter().collect())
    })
    .await?;
    let warnings = truncate(&mut values, limit);
    Ok(success(values, warnings))
}

/// `GET|POST /api/v1/metadata`
async fn metadata(State(state): State<QueryState>, params: Params) -> Result<Response, PromError> {
    let limit = match params.get("limit") {
        None => None,
        Some(text) => match text.parse::<i64>() {
            Ok(limit) if limit < 0 => None,
            Ok(limit) => Some(limit as usize),
            Err(_) => {
                return Err(PromError::invalid_parameter(
                    "limit",
                    format!("cannot parse {text:?}: limit must be a number"),
                ));
            }
        },
    };
    let metric = params.get("metric");
    let mut data: BTreeMap<String, [MetricMetadataEntry; 1]> = BTreeMap::new();
    let all = run_on_store(&state, DEFAULT_TIMEOUT, |store| store.metadata()).await?;
    for (name, entry) in all {
        if metric.is_some_and(|wanted| wanted != name) {
            continue;
        }
        if limit.is_some_and(|limit| data.len() >= limit) {
            break;
        }
        data.insert(
            name,
            [MetricMetadataEntry {
                kind: entry.kind,
                help: entry.help,
                unit: entry.unit,
            }],
        );
    }
    Ok(success(data, Vec::new()))
}

/// Go's `time.RFC3339Nano` for a time in milliseconds; Go's zero time when
/// there is none.
fn rfc3339(millis: Option<i64>) -> String {
    millis
        .and_then(|millis| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).ok()
        })
        .and_then(|time| {
            time.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string())
}

/// Go's `strconv.FormatFloat(value, 'e', -1, 64)`, how Prometheus writes
/// an alert's value (`1e+00`, `2.5e-01`).
fn format_exponent(value: f64) -> String {
    if !value.is_finite() {
        return format_value(value);
    }
    let text = format!("{value:e}");
    let Some((mantissa, exponent)) = text.split_once('e') else {
        return text;
    };
    let (sign, digits) = match exponent.strip_prefix('-') {
        Some(digits) => ('-', digits),
        None => ('+', exponent),
    };
    format!("{mantissa}e{sign}{digits:0>2}")
}

fn state_name(state: AlertState) -> &'static str {
    match state {
        AlertState::Inactive => "inactive",
        AlertState::Pending => "pending",
        AlertState::Firing => "firing",
    }
}

fn alert_json(alert: &AlertStatus) -> AlertJson {
    AlertJson {
        labels: alert.labels.clone(),
        annotations: alert.annotations.clone(),
        state: state_name(alert.state),
        active_at: rfc3339(Some(alert.active_at_ms)),
        value: format_exponent(alert.value),
        keep_firing_since: alert.keep_firing_since_ms.map(|since| rfc3339(Some(since))),
    }
}

fn rule_json(rule: &RuleStatus, with_alerts: bool) -> RuleJson {
    let health = match rule.health {
        RuleHealth::Unknown => "unknown",
        RuleHealth::Ok => "ok",
        RuleHealth::Err => "err",
    };
    let kind = match &rule.kind {
        RuleKind::Recording => RuleKindJson::Recording,
        RuleKind::Alerting {
            for_seconds,
            keep_firing_for_seconds,
            annotations,
            alerts,
            state,
        } => RuleKindJson::Alerting {
            state: state_name(*state),
            duration: *for_seconds,
            keep_firing_for: *keep_firing_for_seconds,
            annotations: annotations.clone(),
            alerts: if with_alerts {
                alerts.iter().map(alert_json).collect()
            } else {
                Vec::new()
            },
        },
    };
    RuleJson {
        name: rule.name.clone(),
        query: rule.query.clone(),
        labels: rule.labels.clone(),
        kind,
        health,
        last_error: rule.last_error.clone(),
        evaluation_time: rule.evaluation_seconds,
        last_evaluation: rfc3339(rule.last_evaluation_ms),
    }
}

/// `GET|POST /api/v1/rules`
async fn rules(State(state): State<QueryState>, params: Params) -> Result<Response, PromError> {
    let kind = params.get("type").map(str::to_ascii_lowercase);
    let (want_alerting, want_recording) = match kind.as_deref() {
        None => (true, true),
        Some("alert") => (true, false),
        Some("record") => (false, true),
        Some(other) => {
            return Err(PromError::invalid_parameter(
                "type",
                format!("not supported value {other:?}"),
            ));
        }
    };
    let exclude_alerts = match params.get("exclude_alerts") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(PromError::invalid_parameter(
                "exclude_alerts",
                format!("cannot parse {other:?} as a boolean"),
            ));
        }
    };
    let rule_names = params.all("rule_name[]");
    let group_names = params.all("rule_group[]");
    let files = params.all("file[]");
    let filtered = !rule_names.is_empty() || !group_names.is_empty() || !files.is_empty();
    let mut groups = Vec::new();
    for group in rule_groups(&state).await? {
        if !group_names.is_empty() && !group_names.contains(&group.name.as_str()) {
            continue;
        }
        if !files.is_empty() && !files.contains(&group.file.as_str()) {
            continue;
        }
        let rules: Vec<RuleJson> = group
            .rules
            .iter()
            .filter(|rule| match rule.kind {
                RuleKind::Recording => want_recording,
                RuleKind::Alerting { .. } => want_alerting,
            })
            .filter(|rule| rule_names.is_empty() || rule_names.contains(&rule.name.as_str()))
            .map(|rule| rule_json(rule, !exclude_alerts))
            .collect();
        if (filtered || kind.is_some()) && rules.is_empty() {
            continue;
        }
        groups.push(RuleGroupJson {
            name: group.name,
            file: group.file,
            rules,
            interval: group.interval_seconds,
            limit: 0,
            evaluation_time: group.evaluation_seconds,
            last_evaluation: rfc3339(group.last_evaluation_ms),
        });
    }
    Ok(success(RuleGroups { groups }, Vec::new()))
}

/// `GET|POST /api/v1/alerts`: the pending and firing alerts of every rule.
async fn alerts(State(state): State<QueryState>) -> Result<Response, PromError> {
    let mut active = Vec::new();
    for group in rule_groups(&state).await? {
        for rule in &group.rules {
            if let RuleKind::Alerting { alerts, .. } = &rule.kind {
                active.extend(
                    alerts
                        .iter()
                        .filter(|alert| alert.state != AlertState::Inactive)
                        .map(alert_json),
                );
            }
        }
    }
    Ok(success(Alerts { alerts: active }, Vec::new()))
}

/// Every rule group, read off the async runtime (in cluster mode it asks
/// the other nodes).
async fn rule_groups(
    state: &QueryState,
) -> Result<Vec<sightline_tsdb::rules::RuleGroupStatus>, PromError> {
    let rules = state.rules.clone();
    tokio::task::spawn_blocking(move || rules.rule_groups())
        .await
        .map_err(|error| unavailable(format!("reading the rules failed: {error}")))
}

/// `GET /api/v1/status/buildinfo`
async fn build_info() -> Response {
    success(
        BuildInfo {
            version: PROMETHEUS_COMPATIBLE_VERSION,
            revision: concat!("sightline-", env!("CARGO_PKG_VERSION")),
            branch: "sightline",
            build_user: "sightline",
            build_date: "",
            go_version: "none (Sightline is written in Rust)",
        },
        Vec::new(),
    )
}

/// `GET /api/v1/status/flags`: the query settings in force, under
/// Prometheus' flag names.
async fn flags() -> Response {
    let engine = Engine::default();
    success(
        QueryFlags {
            lookback_delta: format!("{}s", engine.lookback_delta_ms / 1000),
            max_concurrency: MAX_CONCURRENT_QUERIES.to_string(),
            timeout: format!("{}s", DEFAULT_TIMEOUT.as_secs()),
        },
        Vec::new(),
    )
}

/// `GET|POST /api/v1/query_exemplars?query=&start=&end=`: the exemplars of
/// every series the query's selectors select (as Prometheus extracts them),
/// in the range, in Prometheus' JSON shape.
async fn query_exemplars(
    State(state): State<QueryState>,
    params: Params,
) -> Result<Response, PromError> {
    let start_ms = params.time_or("start", MIN_TIME_MS)?;
    let end_ms = params.time_or("end", MAX_TIME_MS)?;
    if end_ms < start_ms {
        return Err(PromError::invalid_parameter(
            "end",
            "end timestamp must not be before start time",
        ));
    }
    let query = params
        .get("query")
        .ok_or_else(|| PromError::invalid_parameter("query", "missing"))?;
    let selectors = sightline_tsdb::promql::selectors_of(query).map_err(PromError::from_query)?;
    let timeout = params.timeout()?;
    let found = run_on_store(&state, timeout, move |metrics| {
        metrics.exemplars(&selectors, start_ms, end_ms)
    })
    .await?;
    let data: Vec<PromSeriesExemplars> = found
        .into_iter()
        .map(|series| PromSeriesExemplars {
            series_labels: PromLabels(series.series),
            exemplars: series
                .exemplars
                .into_iter()
                .map(|exemplar| PromExemplar {
                    labels: PromLabels(exemplar.labels),
                    value: format_value(exemplar.value),
                    timestamp: PromTime(exemplar.timestamp_ms),
                })
                .collect(),
        })
        .collect();
    Ok(success(data, Vec::new()))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::Request;
    use serde_json::{Value as JsonValue, json};
    use sightline_store::{LogStore, SpanStore};
    use sightline_tsdb::rules::{RuleGroupStatus, RuleStatusSource};
    use sightline_tsdb::{MetricMetadata, MetricStore};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn results_over_the_point_limit_fail_like_prometheus_max_samples() {
        assert!(check_result_points(MAX_RESULT_POINTS, MAX_RESULT_POINTS).is_ok());
        let error = check_result_points(11, 10).unwrap_err();
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: JsonValue = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["errorType"], "execution");
        assert_eq!(
            body["error"],
            "query processing would load too many samples into memory in query execution: 11 points, over the limit of 10 per query"
        );
    }

    /// 2023-11-14T22:13:20Z in Unix seconds.
    const T0: i64 = 1_700_000_000;

    struct OneGroup;

    impl RuleStatusSource for OneGroup {
        fn rule_groups(&self) -> Vec<RuleGroupStatus> {
            let alert = AlertStatus {
                labels: BTreeMap::from([
                    ("alertname".to_string(), "HighErrorRate".to_string()),
                    ("job".to_string(), "api".to_string()),
                ]),
                annotations: BTreeMap::from([(
                    "summary".to_string(),
                    "api errors at 0.25".to_string(),
                )]),
                state: AlertState::Firing,
                active_at_ms: T0 * 1000 + 500,
                keep_firing_since_ms: None,
                value: 0.25,
            };
            let inactive = AlertStatus {
                state: AlertState::Inactive,
                ..alert.clone()
            };
            vec![RuleGroupStatus {
                name: "api".into(),
                file: "/etc/rules/api.yml".into(),
                interval_seconds: 15.0,
                rules: vec![
                    RuleStatus {
                        name: "HighErrorRate".into(),
                        query: "job:errors:ratio > 0.1".into(),
                        kind: RuleKind::Alerting {
                            for_seconds: 60.0,
                            keep_firing_for_seconds: 0.0,
                            annotations: BTreeMap::from([(
                                "summary".to_string(),
                                "api errors at {{ $value }}".to_string(),
                            )]),
                            alerts: vec![alert, inactive],
                            state: AlertState::Firing,
                        },
                        labels: BTreeMap::from([("severity".to_string(), "page".to_string())]),
                        health: RuleHealth::Ok,
                        last_error: None,
                        last_evaluation_ms: Some(T0 * 1000 + 15_000),
                        evaluation_seconds: 0.002,
                        no_data_since_ms: None,
                    },
                    RuleStatus {
                        name: "job:errors:ratio".into(),
                        query: "sum by (job) (rate(errors_total[5m]))".into(),
                        kind: RuleKind::Recording,
                        labels: BTreeMap::new(),
                        health: RuleHealth::Err,
                        last_error: Some(
                            "vector cannot contain metrics with the same labelset".into(),
                        ),
                        last_evaluation_ms: None,
                        evaluation_seconds: 0.0,
                        no_data_since_ms: None,
                    },
                ],
                last_evaluation_ms: Some(T0 * 1000 + 15_000),
                evaluation_seconds: 0.003,
            }]
        }
    }

    fn requests(instance: &str) -> Labels {
        Labels::new([
            ("__name__", "http_requests_total"),
            ("job", "api"),
            ("instance", instance),
        ])
    }

    /// Two counters sampled every 15 s for 5 minutes from T0 (instance `a`
    /// grows by 10 a sample, `b` by 5), and a gauge.
    pub(crate) fn state(dir: &std::path::Path) -> QueryState {
        let metrics = MetricStore::open(dir.join("metrics")).unwrap();
        let mut samples = Vec::new();
        for step in 0..=20_i64 {
            let millis = (T0 + step * 15) * 1000;
            samples.push((requests("a"), millis, (step * 10) as f64));
            samples.push((requests("b"), millis, (step * 5) as f64));
            samples.push((
                Labels::new([("__name__", "temperature"), ("room", "lab")]),
                millis,
                21.5,
            ));
        }
        let outcome = metrics.append(&samples).unwrap();
        assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
        // A request's trace on each instance's counter, two on `a`.
        let exemplar = |trace: &str, seconds: f64| sightline_tsdb::Exemplar {
            labels: Labels::new([("trace_id", trace)]),
            value: 1.0,
            timestamp_ms: (T0 as f64 * 1000.0 + seconds * 1000.0) as i64,
        };
        let (a, b) = (Arc::new(requests("a")), Arc::new(requests("b")));
        let kept = metrics.append_exemplars(&[
            (
                a.clone(),
                exemplar("4bf92f3577b34da6a3ce929d0e0e4736", 30.0),
            ),
            (b, exemplar("00f067aa0ba902b700f067aa0ba902b7", 45.0)),
            (a, exemplar("0af7651916cd43dd8448eb211c80319c", 60.5)),
        ]);
        assert_eq!(kept.stored, 3);
        metrics.set_metadata(
            "http_requests_total",
            MetricMetadata {
                kind: "counter".into(),
                help: "Requests served.".into(),
                unit: String::new(),
            },
        );
        metrics.set_metadata(
            "temperature",
            MetricMetadata {
                kind: "gauge".into(),
                help: "Room temperature.".into(),
                unit: "celsius".into(),
            },
        );
        QueryState {
            logs: Arc::new(LogStore::open(&dir.join("logs")).unwrap()),
            spans: Arc::new(SpanStore::open(&dir.join("spans")).unwrap()),
            metrics: Arc::new(metrics),
            rules: Arc::new(OneGroup),
            dashboards: Default::default(),
            searches: crate::Searches::in_dir(dir),
        }
    }

    async fn send(state: &QueryState, request: Request<Body>) -> (StatusCode, JsonValue) {
        let response = crate::router(state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
        (status, body)
    }

    async fn get(state: &QueryState, uri: &str) -> (StatusCode, JsonValue) {
        send(state, Request::get(uri).body(Body::empty()).unwrap()).await
    }

    async fn post(state: &QueryState, uri: &str, form: &str) -> (StatusCode, JsonValue) {
        let request = Request::post(uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(form.to_string()))
            .unwrap();
        send(state, request).await
    }

    fn bad_data(message: &str) -> JsonValue {
        json!({"status": "error", "errorType": "bad_data", "error": message})
    }

    #[tokio::test]
    async fn query_bombs_answer_prometheus_errors_naming_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let nested = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        let chain = vec!["1"; 50_000].join("%2B");
        for (form, limit) in [
            (format!("query={nested}"), "the limit is 128"),
            (format!("query={chain}"), "the limit is 1000"),
        ] {
            let (status, body) = post(&state, "/api/v1/query", &form).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(body["errorType"], "bad_data", "{body}");
            let message = body["error"].as_str().unwrap();
            assert!(
                message.starts_with("invalid parameter \"query\": parse error: ")
                    && message.contains(limit),
                "{message}"
            );
        }
        let (status, body) = post(
            &state,
            "/api/v1/query",
            "query=count_values(\"1-x\", vector(1))",
        )
        .await;
        assert_eq!(
            (status, body),
            (
                StatusCode::BAD_REQUEST,
                bad_data("invalid parameter \"query\": parse error: invalid label name \"1-x\"")
            )
        );
    }

    #[tokio::test]
    async fn one_plus_one_answers_a_scalar_as_grafanas_health_check_expects() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let (status, body) = get(&state, "/api/v1/query?query=1%2B1&time=1700000000.5").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"status": "success", "data": {"resultType": "scalar", "result": [1700000000.5, "2"]}})
        );
        let (status, body) = post(&state, "/api/v1/query", "query=1%2B1&time=1700000000").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["data"]["result"], json!([1700000000, "2"]));
    }

    #[tokio::test]
    async fn instant_queries_answer_vectors_by_get_and_by_form_post() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let expected = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"job": "api"}, "value": [1700000300, "300"]},
        ]}});
        let (status, body) = get(
            &state,
            "/api/v1/query?query=sum+by+(job)+(http_requests_total)&time=1700000300",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, expected);
        let (status, body) = post(
            &state,
            "/api/v1/query",
            "query=sum%20by%20(job)%20(http_requests_total)&time=2023-11-14T22:18:20Z",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, expected);

        let (_, body) = get(
            &state,
            "/api/v1/query?query=temperature%5B30s%5D&time=1700000030.5",
        )
        .await;
        assert_eq!(
            body["data"],
            json!({"resultType": "matrix", "result": [{
                "metric": {"__name__": "temperature", "room": "lab"},
                "values": [[1700000015, "21.5"], [1700000030, "21.5"]],
            }]})
        );
        let (_, body) = get(&state, "/api/v1/query?query=%22hi%22&time=1700000000").await;
        assert_eq!(
            body["data"],
            json!({"resultType": "string", "result": [1700000000, "hi"]})
        );
        let (_, body) = get(
            &state,
            "/api/v1/query?query=temperature%20/%200&time=1700000000",
        )
        .await;
        assert_eq!(
            body["data"]["result"][0]["value"],
            json!([1700000000, "+Inf"])
        );
    }

    #[tokio::test]
    async fn range_queries_answer_sorted_matrices_by_get_and_by_form_post() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let expected = json!({"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {"__name__": "http_requests_total", "instance": "a", "job": "api"},
             "values": [[1700000000, "0"], [1700000030, "20"], [1700000060, "40"]]},
            {"metric": {"__name__": "http_requests_total", "instance": "b", "job": "api"},
             "values": [[1700000000, "0"], [1700000030, "10"], [1700000060, "20"]]},
        ]}});
        let (status, body) = get(
            &state,
            "/api/v1/query_range?query=http_requests_total&start=1700000000&end=1700000060&step=30",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, expected);
        let (status, body) = post(
            &state,
            "/api/v1/query_range",
            "query=http_requests_total&start=2023-11-14T22:13:20Z&end=1700000060&step=30s",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, expected);
    }

    #[tokio::test]
    async fn bad_requests_answer_prometheus_error_types_and_messages() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let parse_error = Engine::parse("sum(").unwrap_err();
        let QueryError::Parse(parser_message) = parse_error else {
            panic!("a parse error: {parse_error:?}");
        };
        let cases = [
            (
                "/api/v1/query?query=sum(",
                StatusCode::BAD_REQUEST,
                bad_data(&format!(
                    "invalid parameter \"query\": parse error: {parser_message}"
                )),
            ),
            (
                "/api/v1/query?query=up&time=yesterday",
                StatusCode::BAD_REQUEST,
                bad_data(
                    "invalid parameter \"time\": cannot parse \"yesterday\" to a valid timestamp",
                ),
            ),
            (
                "/api/v1/query_range?query=up&start=1700000000&end=1700100000&step=1",
                StatusCode::BAD_REQUEST,
                bad_data(
                    "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
                ),
            ),
            (
                "/api/v1/query_range?query=up&start=1700000000&end=1700000060&step=0",
                StatusCode::BAD_REQUEST,
                bad_data(
                    "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
                ),
            ),
            (
                "/api/v1/query_range?query=up&start=1700000000&end=1700000060&step=often",
                StatusCode::BAD_REQUEST,
                bad_data("invalid parameter \"step\": cannot parse \"often\" to a valid duration"),
            ),
            (
                "/api/v1/query_range?query=up&start=1700000060&end=1700000000&step=15",
                StatusCode::BAD_REQUEST,
                bad_data("invalid parameter \"end\": end timestamp must not be before start time"),
            ),
            (
                "/api/v1/query_range?query=up&end=1700000000&step=15",
                StatusCode::BAD_REQUEST,
                bad_data("invalid parameter \"start\": missing"),
            ),
            (
                "/api/v1/query?query=label_replace(http_requests_total,%22instance%22,%22x%22,%22%22,%22%22)&time=1700000300",
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"status": "error", "errorType": "execution",
                       "error": "vector cannot contain metrics with the same labelset"}),
            ),
            (
                "/api/v1/query?query=up&timeout=0s",
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "error", "errorType": "timeout",
                       "error": "query timed out in query queue"}),
            ),
            (
                "/api/v1/series",
                StatusCode::BAD_REQUEST,
                bad_data("no match[] parameter provided"),
            ),
            (
                "/api/v1/series?match[]=sum(up)",
                StatusCode::BAD_REQUEST,
                bad_data(
                    "invalid parameter \"match[]\": parse error: expected a series selector such as up{job=\"api\"}, got \"sum(up)\"",
                ),
            ),
            (
                "/api/v1/label/1st/values",
                StatusCode::BAD_REQUEST,
                bad_data("invalid label name: \"1st\""),
            ),
            (
                "/api/v1/rules?type=recorded",
                StatusCode::BAD_REQUEST,
                bad_data("invalid parameter \"type\": not supported value \"recorded\""),
            ),
        ];
        for (uri, status, expected) in cases {
            let (actual_status, body) = get(&state, uri).await;
            assert_eq!((actual_status, &body), (status, &expected), "{uri}");
        }
        assert!(!parser_message.is_empty());
    }

    #[tokio::test]
    async fn series_labels_and_label_values_answer_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let (status, body) = get(
            &state,
            "/api/v1/series?match[]=http_requests_total%7Binstance%3D%22b%22%7D&match[]=temperature",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body,
            json!({"status": "success", "data": [
                {"__name__": "http_requests_total", "instance": "b", "job": "api"},
                {"__name__": "temperature", "room": "lab"},
            ]})
        );
        let (_, body) = post(
            &state,
            "/api/v1/series",
            "match[]=%7Bjob%3D%22api%22%7D&start=1700000000&end=1700000300&limit=1",
        )
        .await;
        assert_eq!(
            body,
            json!({"status": "success", "warnings": ["results truncated due to limit"], "data": [
                {"__name__": "http_requests_total", "instance": "a", "job": "api"},
            ]})
        );
        let (_, body) = get(&state, "/api/v1/series?match[]=temperature&end=1699999999").await;
        assert_eq!(body, json!({"status": "success", "data": []}));

        let (_, body) = get(&state, "/api/v1/labels").await;
        assert_eq!(
            body,
            json!({"status": "success", "data": ["__name__", "instance", "job", "room"]})
        );
        let (_, body) = post(
            &state,
            "/api/v1/labels",
            "match[]=temperature&start=1700000000",
        )
        .await;
        assert_eq!(
            body,
            json!({"status": "success", "data": ["__name__", "room"]})
        );

        let (_, body) = get(&state, "/api/v1/label/__name__/values").await;
        assert_eq!(
            body,
            json!({"status": "success", "data": ["http_requests_total", "temperature"]})
        );
        let (_, body) = get(
            &state,
            "/api/v1/label/instance/values?match[]=http_requests_total&start=1700000000&end=1700000300",
        )
        .await;
        assert_eq!(body, json!({"status": "success", "data": ["a", "b"]}));
    }

    #[tokio::test]
    async fn metadata_answers_type_help_and_unit_per_metric() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let (status, body) = get(&state, "/api/v1/metadata").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"status": "success", "data": {
                "http_requests_total": [{"type": "counter", "help": "Requests served.", "unit": ""}],
                "temperature": [{"type": "gauge", "help": "Room temperature.", "unit": "celsius"}],
            }})
        );
        let (_, body) = get(&state, "/api/v1/metadata?metric=temperature").await;
        assert_eq!(body["data"].as_object().unwrap().len(), 1);
        assert_eq!(body["data"]["temperature"][0]["unit"], "celsius");
        let (_, body) = get(&state, "/api/v1/metadata?limit=1").await;
        assert_eq!(
            body["data"].as_object().unwrap().keys().collect::<Vec<_>>(),
            ["http_requests_total"]
        );
    }

    #[tokio::test]
    async fn rules_and_alerts_answer_in_prometheus_shape() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let firing = json!({
            "labels": {"alertname": "HighErrorRate", "job": "api"},
            "annotations": {"summary": "api errors at 0.25"},
            "state": "firing",
            "activeAt": "2023-11-14T22:13:20.5Z",
            "value": "2.5e-01",
        });
        let mut inactive = firing.clone();
        inactive["state"] = json!("inactive");
        let alerting = json!({
            "state": "firing",
            "name": "HighErrorRate",
            "query": "job:errors:ratio > 0.1",
            "duration": 60.0,
            "keepFiringFor": 0.0,
            "labels": {"severity": "page"},
            "annotations": {"summary": "api errors at {{ $value }}"},
            "alerts": [firing.clone(), inactive],
            "health": "ok",
            "evaluationTime": 0.002,
            "lastEvaluation": "2023-11-14T22:13:35Z",
            "type": "alerting",
        });
        let recording = json!({
            "name": "job:errors:ratio",
            "query": "sum by (job) (rate(errors_total[5m]))",
            "labels": {},
            "health": "err",
            "lastError": "vector cannot contain metrics with the same labelset",
            "evaluationTime": 0.0,
            "lastEvaluation": "0001-01-01T00:00:00Z",
            "type": "recording",
        });
        let group = |rules: Vec<JsonValue>| {
            json!({"status": "success", "data": {"groups": [{
                "name": "api",
                "file": "/etc/rules/api.yml",
                "rules": rules,
                "interval": 15.0,
                "limit": 0,
                "evaluationTime": 0.003,
                "lastEvaluation": "2023-11-14T22:13:35Z",
            }]}})
        };
        let (status, body) = get(&state, "/api/v1/rules").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, group(vec![alerting.clone(), recording.clone()]));
        let (_, body) = get(&state, "/api/v1/rules?type=alert").await;
        assert_eq!(body, group(vec![alerting.clone()]));
        let (_, body) = post(&state, "/api/v1/rules", "type=record").await;
        assert_eq!(body, group(vec![recording]));
        let (_, body) = get(&state, "/api/v1/rules?rule_name[]=NoSuchRule").await;
        assert_eq!(body, json!({"status": "success", "data": {"groups": []}}));

        let (status, body) = get(&state, "/api/v1/alerts").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"status": "success", "data": {"alerts": [firing]}})
        );
    }

    #[tokio::test]
    async fn buildinfo_and_exemplars_answer_in_prometheus_shape() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let (status, body) = get(&state, "/api/v1/status/buildinfo").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"status": "success", "data": {
                "version": "3.0.0",
                "revision": concat!("sightline-", env!("CARGO_PKG_VERSION")),
                "branch": "sightline",
                "buildUser": "sightline",
                "buildDate": "",
                "goVersion": "none (Sightline is written in Rust)",
            }})
        );
        let (status, body) = get(&state, "/api/v1/status/flags").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"status": "success", "data": {
                "query.lookback-delta": "300s",
                "query.max-concurrency": "20",
                "query.timeout": "120s",
            }})
        );
        // The exemplars of the series a query's selectors select, in range.
        let (status, body) = post(
            &state,
            "/api/v1/query_exemplars",
            &format!(
                "query=sum(rate(http_requests_total{{instance=\"a\"}}[5m]))/1&start={}&end={}",
                T0 + 40,
                T0 + 300
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"status": "success", "data": [{
                "seriesLabels": {"__name__": "http_requests_total", "instance": "a", "job": "api"},
                "exemplars": [{
                    "labels": {"trace_id": "0af7651916cd43dd8448eb211c80319c"},
                    "value": "1",
                    "timestamp": T0 as f64 + 60.5,
                }],
            }]})
        );
        let (_, body) = get(&state, "/api/v1/query_exemplars?query=http_requests_total").await;
        let traces: Vec<&str> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|series| series["exemplars"].as_array().unwrap())
            .map(|exemplar| exemplar["labels"]["trace_id"].as_str().unwrap())
            .collect();
        assert_eq!(traces.len(), 3, "{body}");
        let (_, body) = get(&state, "/api/v1/query_exemplars?query=temperature").await;
        assert_eq!(body, json!({"status": "success", "data": []}));
        for (uri, message) in [
            ("/api/v1/query_exemplars?query=sum(", "parse error"),
            (
                "/api/v1/query_exemplars",
                "invalid parameter \"query\": missing",
            ),
            (
                "/api/v1/query_exemplars?query=up&start=10&end=5",
                "end timestamp must not be before start time",
            ),
        ] {
            let (status, body) = get(&state, uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(body["errorType"], "bad_data", "{uri}");
            assert!(
                body["error"].as_str().unwrap().contains(message),
                "{uri}: {body}"
            );
        }
    }

    #[test]
    fn a_cancelled_range_query_stops_instead_of_evaluating_every_step() {
        let mut storage = sightline_tsdb::promql::MemoryStorage::default();
        storage.append(&requests("a"), T0 * 1000, 1.0);
        let expr = Engine::parse("http_requests_total").unwrap();
        let cancelled = AtomicBool::new(true);
        let result = Engine::default().range_expr_cancellable(
            &storage,
            &expr,
            T0 * 1000,
            (T0 + 3600) * 1000,
            1000,
            &cancelled,
        );
        assert_eq!(result, Err(QueryError::Execution("query canceled".into())));
        cancelled.store(false, Ordering::Relaxed);
        let series = Engine::default()
            .range_expr_cancellable(
                &storage,
                &expr,
                T0 * 1000,
                (T0 + 60) * 1000,
                30_000,
                &cancelled,
            )
            .unwrap();
        assert_eq!(
            series[0].points,
            [
                (T0 * 1000, 1.0),
                ((T0 + 30) * 1000, 1.0),
                ((T0 + 60) * 1000, 1.0)
            ]
        );
    }

    #[test]
    fn alert_values_are_formatted_as_go_formats_them() {
        for (value, expected) in [
            (1.0, "1e+00"),
            (0.25, "2.5e-01"),
            (123.45, "1.2345e+02"),
            (-3e-120, "-3e-120"),
            (f64::INFINITY, "+Inf"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(format_exponent(value), expected);
        }
    }

    #[test]
    fn times_and_durations_parse_as_prometheus_parses_them() {
        assert_eq!(
            parse_time("t", "1700000000.123").unwrap(),
            1_700_000_000_123
        );
        assert_eq!(
            parse_time("t", "2023-11-14T22:13:20.5+01:00").unwrap(),
            1_699_996_400_500
        );
        assert_eq!(parse_time("t", MIN_TIME_TEXT).unwrap(), MIN_TIME_MS);
        assert_eq!(parse_time("t", MAX_TIME_TEXT).unwrap(), MAX_TIME_MS);
        assert!(parse_time("t", "NaN").is_err());
        assert_eq!(parse_duration_ms("step", "1.5").unwrap(), 1_500);
        assert_eq!(parse_duration_ms("step", "1m30s").unwrap(), 90_000);
        assert!(parse_duration_ms("step", "1e300").is_err());
    }
}
