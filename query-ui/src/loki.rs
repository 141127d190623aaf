//! Grafana Loki's HTTP query API over Sightline's logs, for Grafana's Loki
//! data source and `logcli`: `query_range`, `query`, `labels`,
//! `label/<name>/values`, `series`, `index/stats`, `status/buildinfo`, and
//! `tail` over a WebSocket (the live tail's records, filtered by LogQL).
//! The language is [`crate::logql`]; answers are in Loki's JSON
//! (`{"status":"success","data":{"resultType":...,"result":[...]}}`),
//! errors are plain text with a 400, as Loki answers them.
//!
//! Labels, label values and series of plain selectors are answered by the
//! log store's aggregations over every record in the range; log queries
//! page through the search newest first, the selector's equality matchers
//! searched and the rest checked on each record. Metric queries of
//! `count_over_time` or `rate` over a plain selector, alone or under
//! `sum [by (...)]` (Grafana's log volume), are answered by the
//! aggregations over every record ([`aggregated`]); the others evaluate
//! over the records of their range, at most [`MAX_SCANNED`] of them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use sightline_store::pipes::Pipeline;
use sightline_store::{LogQuery, StoreError};
use sightline_vocab::clock::now_nanos;
use sightline_vocab::exposition::format_float;

use crate::QueryState;
use crate::logql::{self, Entry, Expr, LABELS, Labels, LogExpr, MetricExpr};
use crate::params::Pairs as _;

/// Most records a query may read (Loki bounds by bytes and series).
pub(crate) const MAX_SCANNED: usize = 500_000;

/// Most log lines one answer holds (Loki's `max_entries_limit_per_query`).
const MAX_LIMIT: usize = 5_000;

/// Most points of one series (Loki's resolution limit).
const MAX_POINTS: i64 = 11_000;

/// Records per search page while reading.
const PAGE: usize = 10_000;

const HOUR: i64 = 3_600_000_000_000;

pub(crate) fn routes() -> Router<QueryState> {
    Router::new()
        .route("/loki/api/v1/query_range", get(query_range))
        .route("/loki/api/v1/query", get(query))
        .route("/loki/api/v1/labels", get(labels))
        .route("/loki/api/v1/label", get(labels))
        .route("/loki/api/v1/label/{name}/values", get(label_values))
        .route("/loki/api/v1/series", get(series))
        .route("/loki/api/v1/index/stats", get(index_stats))
        .route("/loki/api/v1/detected_fields", get(detected_fields))
        .route("/loki/api/v1/status/buildinfo", get(buildinfo))
        .route("/loki/api/v1/tail", get(tail))
}

/// An error as Loki answers it: a status and a line of text.
#[derive(Debug)]
pub(crate) struct LokiError(StatusCode, String);

impl LokiError {
    fn bad(message: impl Into<String>) -> LokiError {
        LokiError(StatusCode::BAD_REQUEST, message.into())
    }
}

impl IntoResponse for LokiError {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

impl From<crate::error::ApiError> for LokiError {
    fn from(error: crate::error::ApiError) -> LokiError {
        use crate::error::ApiError;
        let status = match &error {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        LokiError(status, error.to_string())
    }
}

impl From<StoreError> for LokiError {
    fn from(error: StoreError) -> LokiError {
        match error {
            StoreError::InvalidQuery(message) | StoreError::TooLarge(message) => {
                LokiError::bad(message)
            }
            StoreError::Unavailable(message) => LokiError(StatusCode::SERVICE_UNAVAILABLE, message),
            other => LokiError(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.value(name)
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0.values(name)
    }

    fn time(&self, name: &str) -> Result<Option<i64>, LokiError> {
        self.get(name)
            .map(|text| parse_time(name, text))
            .transpose()
    }

    /// `[start, end]`: `end` defaults to now, `start` to `default` before it.
    fn range(&self, default: i64) -> Result<(i64, i64), LokiError> {
        let end = self.time("end")?.unwrap_or_else(now_nanos);
        let start = match self.time("start")? {
            Some(start) => start,
            None => match self.get("since") {
                Some(since) => end - parse_step("since", since)?,
                None => end - default,
            },
        };
        if end < start {
            return Err(LokiError::bad(
                "end timestamp must not be before or equal to start time",
            ));
        }
        Ok((start, end))
    }

    fn limit(&self) -> Result<usize, LokiError> {
        let limit = match self.get("limit") {
            None => 100,
            Some(text) => text
                .parse::<usize>()
                .map_err(|_| LokiError::bad(format!("invalid limit {text:?}")))?,
        };
        if limit > MAX_LIMIT {
            return Err(LokiError::bad(format!(
                "max entries limit per query exceeded, limit > max_entries_limit_per_query ({limit} > {MAX_LIMIT})"
            )));
        }
        Ok(limit.max(1))
    }

    fn forward(&self) -> Result<bool, LokiError> {
        match self
            .get("direction")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("backward") => Ok(false),
            Some("forward") => Ok(true),
            Some(other) => Err(LokiError::bad(format!("invalid direction {other:?}"))),
        }
    }
}

/// A Loki time: nanoseconds, seconds (with a fraction), or RFC 3339.
fn parse_time(name: &str, text: &str) -> Result<i64, LokiError> {
    if let Ok(integer) = text.parse::<i64>() {
        // Loki reads integers as nanoseconds; Grafana sends them so, and
        // `logcli` sends RFC 3339. Small ones are seconds.
        return Ok(if integer.abs() < 100_000_000_000 {
            integer * 1_000_000_000
        } else {
            integer
        });
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return Ok((seconds * 1e9) as i64);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|at| at.unix_timestamp_nanos() as i64)
        .map_err(|_| LokiError::bad(format!("invalid {name} {text:?}: not a timestamp")))
}

/// A step or duration: `15s`, `1m`, or seconds.
fn parse_step(name: &str, text: &str) -> Result<i64, LokiError> {
    logql::parse_duration(text)
        .ok_or_else(|| LokiError::bad(format!("invalid {name} {text:?}: not a duration")))
}

fn parse_query(text: Option<&str>) -> Result<Expr, LokiError> {
    let text = text.ok_or_else(|| LokiError::bad("query is required"))?;
    logql::parse(text).map_err(|error| LokiError::bad(error.to_string()))
}

fn success(result_type: &str, result: Value, started: Instant, entries: usize) -> Json<Value> {
    Json(json!({
        "status": "success",
        "data": {
            "resultType": result_type,
            "result": result,
            "stats": {"summary": {
                "execTime": started.elapsed().as_secs_f64(),
                "totalEntriesReturned": entries,
            }},
        },
    }))
}

/// A log query's `streams` answer over `[start, end]`, with the
/// request's `limit` and `direction`.
async fn log_answer(
    state: QueryState,
    log: LogExpr,
    params: &Params,
    (start, end): (i64, i64),
    started: Instant,
) -> Result<Json<Value>, LokiError> {
    let limit = params.limit()?;
    let forward = params.forward()?;
    let (streams, count) =
        blocking(move || log_streams(&state, &log, start, end, limit, forward)).await?;
    Ok(success("streams", streams, started, count))
}

async fn query_range(
    State(state): State<QueryState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, LokiError> {
    let params = Params(params);
    let started = Instant::now();
    let expr = parse_query(params.get("query"))?;
    let (start, end) = params.range(HOUR)?;
    match expr {
        Expr::Log(log) => log_answer(state, log, &params, (start, end), started).await,
        Expr::Metric(metric) => {
            let step = match params.get("step") {
                Some(text) => parse_step("step", text)?,
                None => ((end - start) / 1_000_000_000 / 250).max(1) * 1_000_000_000,
            };
            if (end - start) / step > MAX_POINTS {
                return Err(LokiError::bad(format!(
                    "exceeded maximum resolution of {MAX_POINTS} points per timeseries. Try decreasing the query resolution (?step=XX)"
                )));
            }
            let times: Vec<i64> = (0..=(end - start) / step)
                .map(|i| start + i * step)
                .collect();
            let series = blocking(move || evaluate(&state, &metric, &times)).await?;
            let result: Vec<Value> = series
                .iter()
                .map(|s| {
                    json!({
                        "metric": s.labels,
                        "values": s.points.iter().map(|(t, v)| point(*t, *v)).collect::<Vec<_>>(),
                    })
                })
                .collect();
            Ok(success("matrix", Value::Array(result), started, 0))
        }
    }
}

async fn query(
    State(state): State<QueryState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, LokiError> {
    let params = Params(params);
    let started = Instant::now();
    let expr = parse_query(params.get("query"))?;
    let at = params.time("time")?.unwrap_or_else(now_nanos);
    match expr {
        Expr::Log(log) => log_answer(state, log, &params, (at - HOUR, at), started).await,
        Expr::Metric(metric) => {
            let literal = metric.is_scalar();
            let series = blocking(move || evaluate(&state, &metric, &[at])).await?;
            if literal && series.len() == 1 {
                // A literal: Loki answers a scalar.
                let (t, v) = series[0].points[0];
                return Ok(success("scalar", point(t, v), started, 0));
            }
            let result: Vec<Value> = series
                .iter()
                .filter_map(|s| {
                    s.points
                        .first()
                        .map(|(t, v)| json!({"metric": s.labels, "value": point(*t, *v)}))
                })
                .collect();
            Ok(success("vector", Value::Array(result), started, 0))
        }
    }
}

/// `[seconds, "value"]`, as Loki and Prometheus write a point.
fn point(t: i64, v: f64) -> Value {
    json!([t as f64 / 1e9, format_float(v)])
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LokiError> + Send + 'static,
) -> Result<T, LokiError> {
    let task = tokio::task::spawn_blocking(work);
    match tokio::time::timeout(crate::api::LOG_QUERY_TIMEOUT, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(error)) => Err(LokiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            error.to_string(),
        )),
        Err(_) => Err(LokiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the query timed out; narrow the selector or the time range".into(),
        )),
    }
}

/// Reads the records of `log` in `[start, end]`, newest first, calling
/// `take` with each processed entry until it returns `false`. Errors past
/// [`MAX_SCANNED`] records read when `bounded`.
fn read(
    state: &QueryState,
    log: &LogExpr,
    start: i64,
    end: i64,
    mut take: impl FnMut(Entry) -> bool,
) -> Result<(), LokiError> {
    let mut after = None;
    let mut scanned = 0;
    loop {
        let page = state.logs.search(&LogQuery {
            query: log.prefilter(),
            start: Some(start),
            end: Some(end + 1),
            limit: PAGE,
            after,
        })?;
        for hit in &page.hits {
            if let Some(entry) = log.process(&hit.record)
                && !take(entry)
            {
                return Ok(());
            }
        }
        scanned += page.hits.len();
        match page.next {
            Some(next) if scanned < MAX_SCANNED => after = Some(next),
            Some(_) => {
                return Err(LokiError::bad(format!(
                    "the query reads more than {MAX_SCANNED} records; narrow the selector or the time range"
                )));
            }
            None => return Ok(()),
        }
    }
}

/// Entries as Loki's `streams`: one per label set, values in the order given.
fn streams_json(entries: Vec<Entry>) -> Value {
    let mut streams: BTreeMap<Labels, Vec<Value>> = BTreeMap::new();
    for entry in entries {
        streams
            .entry(entry.labels)
            .or_default()
            .push(json!([entry.timestamp.to_string(), entry.line]));
    }
    Value::Array(
        streams
            .into_iter()
            .map(|(labels, values)| json!({"stream": labels, "values": values}))
            .collect(),
    )
}

/// `GET /loki/api/v1/tail` (WebSocket): the newest `limit` entries since
/// `start` (default: the last hour), oldest first, then every new one as
/// it becomes searchable, each message `{"streams": [...]}` as Loki sends.
async fn tail(
    State(state): State<QueryState>,
    Query(params): Query<Vec<(String, String)>>,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Result<Response, LokiError> {
    let params = Params(params);
    let Expr::Log(log) = parse_query(params.get("query"))? else {
        return Err(LokiError::bad("tail takes a log query, not a metric query"));
    };
    let limit = params.limit()?;
    let start = params.time("start")?.unwrap_or_else(|| now_nanos() - HOUR);
    // Subscribed before the history is read: nothing falls between.
    let live = crate::api::live_records(state.clone(), prefilter_or_all(&log)).await?;
    Ok(upgrade.on_upgrade(move |socket| follow(socket, state, log, start, limit, live)))
}

async fn follow(
    mut socket: axum::extract::ws::WebSocket,
    state: QueryState,
    log: LogExpr,
    start: i64,
    limit: usize,
    mut live: tokio::sync::mpsc::Receiver<sightline_store::LogHit>,
) {
    use axum::extract::ws::Message;
    let history_log = log.clone();
    let history = blocking(move || {
        let mut entries = Vec::new();
        read(&state, &history_log, start, now_nanos(), |entry| {
            entries.push(entry);
            entries.len() < limit
        })?;
        entries.reverse();
        Ok(entries)
    })
    .await;
    let send = |entries: Vec<Entry>| {
        Message::Text(
            json!({"streams": streams_json(entries), "dropped_entries": null})
                .to_string()
                .into(),
        )
    };
    let mut newest = match history {
        Ok(entries) => {
            let newest = entries.last().map(|entry| entry.timestamp);
            if !entries.is_empty() && socket.send(send(entries)).await.is_err() {
                return;
            }
            newest
        }
        Err(LokiError(_, message)) => {
            let _ = socket.send(Message::Text(message.into())).await;
            return;
        }
    };
    loop {
        tokio::select! {
            hit = live.recv() => {
                let Some(hit) = hit else { return };
                // What the history already sent is not sent again.
                if newest.is_some_and(|newest| hit.record.timestamp <= newest) {
                    continue;
                }
                newest = None;
                if let Some(entry) = log.process(&hit.record)
                    && socket.send(send(vec![entry])).await.is_err()
                {
                    return;
                }
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

fn log_streams(
    state: &QueryState,
    log: &LogExpr,
    start: i64,
    end: i64,
    limit: usize,
    forward: bool,
) -> Result<(Value, usize), LokiError> {
    let mut entries = Vec::new();
    read(state, log, start, end, |entry| {
        entries.push(entry);
        // Backward: the newest `limit` are the first read. Forward: the
        // oldest, so everything is read.
        forward || entries.len() < limit
    })?;
    if forward {
        entries.reverse();
    }
    entries.truncate(limit);
    let count = entries.len();
    Ok((streams_json(entries), count))
}

fn evaluate(
    state: &QueryState,
    metric: &MetricExpr,
    times: &[i64],
) -> Result<Vec<logql::Series>, LokiError> {
    if let Some(series) = aggregated(state, metric, times) {
        return series;
    }
    evaluate_records(state, metric, times)
}

/// Evaluates over the records of the range, read one by one.
fn evaluate_records(
    state: &QueryState,
    metric: &MetricExpr,
    times: &[i64],
) -> Result<Vec<logql::Series>, LokiError> {
    let (first, last) = (
        times.first().copied().unwrap_or(0),
        times.last().copied().unwrap_or(0),
    );
    let mut inputs = Vec::new();
    for (log, range) in metric.logs() {
        let mut entries = Vec::new();
        read(state, log, first - range, last, |entry| {
            entries.push(entry);
            true
        })?;
        inputs.push(entries);
    }
    Ok(logql::evaluate(metric, times, &mut inputs.into_iter()))
}

/// Most series a metric query answers by the aggregations (Loki's
/// `max_query_series`).
const MAX_SERIES: u32 = 500;

/// How far after each step's time the aggregations' buckets start.
const WINDOW_SHIFT: i64 = 1_000;

/// `count_over_time` or `rate` of a plain selector, alone or under
/// `sum [by (...)]` (Grafana's log volume and most dashboards' panels),
/// answered by the store's aggregations over every record: a timechart
/// whose buckets tile each step's window (span: the greatest common
/// divisor of step and range, aligned with the steps), grouped by the
/// labels the answer keeps. `None` for anything else (or more buckets
/// than a timechart takes): those read the records.
fn aggregated(
    state: &QueryState,
    metric: &MetricExpr,
    times: &[i64],
) -> Option<Result<Vec<logql::Series>, LokiError>> {
    let (labels, inner): (Option<&[String]>, &MetricExpr) = match metric {
        MetricExpr::Aggregate {
            op: logql::AggOp::Sum,
            without: false,
            labels,
            inner,
        } => (Some(labels), inner),
        other => (None, other),
    };
    let MetricExpr::Range {
        function: function @ (logql::RangeFn::Count | logql::RangeFn::Rate),
        log,
        range,
        unwrap: None,
    } = inner
    else {
        return None;
    };
    if !log.is_plain_selector() || *range <= 0 {
        return None;
    }
    let (first, last) = (*times.first()?, *times.last()?);
    let step = match times {
        [one, two, ..] => two - one,
        _ => *range,
    };
    let span = gcd(step, *range);
    if span <= 0 || (last - first + range) / span > sightline_store::pipes::MAX_TIMECHART_BUCKETS {
        return None;
    }
    // The labels of each answer series, and the fields they come from.
    let kept: Vec<(&str, &str)> = match labels {
        Some(labels) => labels
            .iter()
            .filter_map(|label| field_of(label).map(|field| (label.as_str(), field)))
            .collect(),
        None => LABELS.to_vec(),
    };
    let pipeline = Pipeline {
        text: String::new(),
        search: prefilter_or_all(log),
        command: sightline_store::pipes::Command::Timechart {
            span: Some(span),
            metrics: vec![sightline_store::pipes::Metric {
                function: sightline_store::pipes::Function::Count,
                field: None,
                name: "count".into(),
            }],
            by: kept.iter().map(|(_, field)| field.to_string()).collect(),
        },
        sort: Vec::new(),
        head: None,
        keep_missing: true,
        series_limit: MAX_SERIES,
        // Loki's windows are (t - range, t]; the aggregations' buckets
        // [b, b + span): buckets start a microsecond after each step's
        // boundaries (their keys are floats, exact to a quarter of one),
        // so a line at a step's very time counts in the window ending there.
        offset: (first + WINDOW_SHIFT).rem_euclid(span),
    };
    let table = match state
        .logs
        .stats(&pipeline, first - range + WINDOW_SHIFT, last + WINDOW_SHIFT)
    {
        Ok(table) => table,
        Err(error) => return Some(Err(error.into())),
    };
    if table
        .warnings
        .iter()
        .any(|warning| warning.contains("largest series"))
    {
        return Some(Err(LokiError::bad(format!(
            "maximum of series ({MAX_SERIES}) reached for a single query; narrow the selector or group by fewer labels"
        ))));
    }
    // Label set -> bucket start (ns) -> records.
    let mut buckets: BTreeMap<Labels, BTreeMap<i64, f64>> = BTreeMap::new();
    for row in &table.rows {
        let (Some(at), Some(count)) = (
            row.first().and_then(Value::as_i64),
            row.last().and_then(Value::as_f64),
        ) else {
            continue;
        };
        let labels: Labels = kept
            .iter()
            .zip(&row[1..row.len() - 1])
            .filter_map(|((label, _), value)| Some((label.to_string(), shown(label, value)?)))
            .collect();
        // Rows are in milliseconds: back to the step-aligned nanoseconds.
        let at = ((at * 1_000_000 - pipeline.offset) as f64 / span as f64).round() as i64 * span
            + pipeline.offset;
        *buckets.entry(labels).or_default().entry(at).or_default() += count;
    }
    let seconds = *range as f64 / 1e9;
    let series = buckets
        .into_iter()
        .filter_map(|(labels, counts)| {
            let points: Vec<(i64, f64)> = times
                .iter()
                .filter_map(|&t| {
                    let count: f64 = counts
                        .range(t - range + WINDOW_SHIFT..t + WINDOW_SHIFT)
                        .map(|(_, count)| count)
                        .sum();
                    (count > 0.0).then(|| match function {
                        logql::RangeFn::Rate => (t, count / seconds),
                        _ => (t, count),
                    })
                })
                .collect();
            (!points.is_empty()).then_some(logql::Series { labels, points })
        })
        .collect();
    Some(Ok(series))
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a.abs() } else { gcd(b, a % b) }
}

/// The pipes field of a label, or `None` for a label records do not have.
fn field_of(label: &str) -> Option<&'static str> {
    LABELS
        .iter()
        .find(|(name, _)| *name == label)
        .map(|(_, field)| *field)
}

/// A label's value as Loki shows it.
fn shown(label: &str, value: &Value) -> Option<String> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Null => return None,
        other => other.to_string(),
    };
    if text.is_empty() {
        return None;
    }
    Some(if label == "level" {
        text.to_ascii_lowercase()
    } else {
        text
    })
}

/// Runs `text` (a query with pipes) over `[start, end]`.
fn table(
    state: &QueryState,
    text: &str,
    start: i64,
    end: i64,
    keep_missing: bool,
) -> Result<sightline_store::pipes::StatsTable, LokiError> {
    let mut pipeline: Pipeline =
        sightline_store::pipes::parse(text)?.ok_or_else(|| LokiError::bad("no pipes"))?;
    pipeline.keep_missing = keep_missing;
    Ok(state.logs.stats(&pipeline, start, end + 1)?)
}

/// The values of `label` among the records `selector` matches.
fn values_of(
    state: &QueryState,
    label: &str,
    selector: Option<&LogExpr>,
    start: i64,
    end: i64,
) -> Result<BTreeSet<String>, LokiError> {
    let Some(field) = field_of(label) else {
        return Ok(BTreeSet::new());
    };
    match selector {
        Some(log) if !log.is_plain_selector() => {
            let mut values = BTreeSet::new();
            read(state, log, start, end, |entry| {
                if let Some(value) = entry.labels.get(label) {
                    values.insert(value.clone());
                }
                true
            })?;
            Ok(values)
        }
        _ => {
            let search = selector.map_or_else(|| "*".to_string(), prefilter_or_all);
            let answer = table(
                state,
                &format!("{search} | stats count() by {field}"),
                start,
                end,
                false,
            )?;
            Ok(answer
                .rows
                .iter()
                .filter_map(|row| shown(label, &row[0]))
                .collect())
        }
    }
}

async fn labels(
    State(state): State<QueryState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, LokiError> {
    let params = Params(params);
    let (start, end) = params.range(6 * HOUR)?;
    let selector = selector(params.get("query"))?;
    let names = blocking(move || {
        let mut names = Vec::new();
        for (label, _) in LABELS {
            if !values_of(&state, label, selector.as_ref(), start, end)?.is_empty() {
                names.push(label.to_string());
            }
        }
        names.sort();
        Ok(names)
    })
    .await?;
    Ok(Json(json!({"status": "success", "data": names})))
}

fn selector(text: Option<&str>) -> Result<Option<LogExpr>, LokiError> {
    text.map(|text| match logql::parse(text) {
        Ok(Expr::Log(log)) => Ok(log),
        Ok(Expr::Metric(_)) => Err(LokiError::bad(
            "a stream selector is expected, not a metric query",
        )),
        Err(error) => Err(LokiError::bad(error.to_string())),
    })
    .transpose()
}

async fn label_values(
    State(state): State<QueryState>,
    Path(name): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, LokiError> {
    let params = Params(params);
    let (start, end) = params.range(6 * HOUR)?;
    let selector = selector(params.get("query"))?;
    let values = blocking(move || values_of(&state, &name, selector.as_ref(), start, end)).await?;
    Ok(Json(json!({"status": "success", "data": values})))
}

/// The label sets of the streams `log` matches.
fn streams_of(
    state: &QueryState,
    log: &LogExpr,
    start: i64,
    end: i64,
) -> Result<BTreeSet<Labels>, LokiError> {
    let mut found = BTreeSet::new();
    if log.is_plain_selector() {
        let fields: Vec<&str> = LABELS.iter().map(|(_, field)| *field).collect();
        let answer = table(
            state,
            &format!(
                "{} | stats count() by {}",
                log.prefilter(),
                fields.join(", ")
            ),
            start,
            end,
            true,
        )?;
        for row in &answer.rows {
            let labels: Labels = LABELS
                .iter()
                .zip(row)
                .filter_map(|((label, _), value)| {
                    shown(label, value).map(|v| (label.to_string(), v))
                })
                .collect();
            found.insert(labels);
        }
    } else {
        read(state, log, start, end, |entry| {
            let labels: Labels = entry
                .labels
                .into_iter()
                .filter(|(name, _)| field_of(name).is_some())
                .collect();
            found.insert(labels);
            true
        })?;
    }
    Ok(found)
}

async fn series(
    State(state): State<QueryState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, LokiError> {
    let params = Params(params);
    let (start, end) = params.range(6 * HOUR)?;
    let mut selectors = Vec::new();
    for text in params.all("match[]").into_iter().chain(params.all("match")) {
        selectors.extend(selector(Some(text))?);
    }
    if selectors.is_empty() {
        return Err(LokiError::bad("match[] is required"));
    }
    let found = blocking(move || {
        let mut all = BTreeSet::new();
        for log in &selectors {
            all.extend(streams_of(&state, log, start, end)?);
        }
        Ok(all)
    })
    .await?;
    Ok(Json(json!({"status": "success", "data": found})))
}

/// Streams, chunks, entries and bytes a query reads. Entries and streams
/// are counted; Sightline has no chunks (each stream counts as one), and
/// bytes are estimated from the newest 1,000 lines when more match.
async fn index_stats(
    State(state): State<QueryState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, LokiError> {
    let params = Params(params);
    let (start, end) = params.range(HOUR)?;
    let log = selector(params.get("query"))?.ok_or_else(|| LokiError::bad("query is required"))?;
    let answer = blocking(move || {
        let streams = streams_of(&state, &log, start, end)?.len();
        // A plain selector's entries are counted by the aggregations; any
        // other query's by reading its records. Either way the first 1,000
        // lines read give the mean line size.
        let counted = if log.is_plain_selector() {
            let answer = table(
                &state,
                &format!("{} | stats count()", prefilter_or_all(&log)),
                start,
                end,
                false,
            )?;
            Some(answer.rows[0][0].as_u64().unwrap_or(0) as usize)
        } else {
            None
        };
        let (mut read_entries, mut sample) = (0usize, (0usize, 0usize));
        read(&state, &log, start, end, |entry| {
            read_entries += 1;
            if sample.0 < 1_000 {
                sample.0 += 1;
                sample.1 += entry.line.len();
            }
            counted.is_none() || sample.0 < 1_000
        })?;
        let entries = counted.unwrap_or(read_entries);
        let bytes = (sample.1 * entries).checked_div(sample.0).unwrap_or(0);
        Ok(json!({"streams": streams, "chunks": streams, "entries": entries, "bytes": bytes}))
    })
    .await?;
    Ok(Json(answer))
}

fn prefilter_or_all(log: &LogExpr) -> String {
    let search = log.prefilter();
    if search.is_empty() {
        "*".to_string()
    } else {
        search
    }
}

/// Most lines `detected_fields` looks at, newest first.
const DETECT_SAMPLE: usize = 1_000;
/// Most distinct values counted per field.
const DETECT_VALUES: usize = 10_000;

/// `detected_fields`, as Loki 3 answers it for Grafana's Logs Drilldown:
/// the fields `| json` finds (the agent's parsed attributes, and a JSON
/// line's keys) in the newest matching lines, at most [`DETECT_SAMPLE`]
/// (or `line_limit`), each with its type (`int`, `float`, `boolean`,
/// `duration`, `bytes`, `string`) and distinct values among them (Loki
/// estimates over every line; this counts the sample exactly).
async fn detected_fields(
    State(state): State<QueryState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, LokiError> {
    let params = Params(params);
    let (start, end) = params.range(HOUR)?;
    let mut log =
        selector(params.get("query"))?.ok_or_else(|| LokiError::bad("query is required"))?;
    let sample = match params.get("line_limit") {
        None => DETECT_SAMPLE,
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| LokiError::bad(format!("invalid line_limit {text:?}")))?
            .clamp(1, DETECT_SAMPLE),
    };
    let limit = match params.get("limit") {
        None => 1_000,
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| LokiError::bad(format!("invalid limit {text:?}")))?,
    };
    log.stages.push(logql::Stage::Json);
    let answer = blocking(move || {
        let mut fields: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut read_lines = 0;
        read(&state, &log, start, end, |entry| {
            read_lines += 1;
            for (label, value) in entry.labels {
                if LABELS.iter().any(|(name, _)| *name == label) {
                    continue;
                }
                let values = fields.entry(label).or_default();
                if values.len() < DETECT_VALUES {
                    values.insert(value);
                }
            }
            read_lines < sample
        })?;
        let fields: Vec<Value> = fields
            .into_iter()
            .take(limit)
            .map(|(label, values)| {
                json!({
                    "label": label,
                    "type": detected_type(&values),
                    "cardinality": values.len(),
                    "parsers": ["json"],
                })
            })
            .collect();
        Ok(json!({"fields": fields, "limit": limit}))
    })
    .await?;
    Ok(Json(answer))
}

/// The type Loki would detect for every one of `values`.
fn detected_type(values: &BTreeSet<String>) -> &'static str {
    let all = |check: fn(&str) -> bool| values.iter().all(|value| check(value));
    if all(|value| value.parse::<i64>().is_ok()) {
        "int"
    } else if all(|value| value.parse::<f64>().is_ok()) {
        "float"
    } else if all(|value| value == "true" || value == "false") {
        "boolean"
    } else if all(|value| humantime::parse_duration(value).is_ok()) {
        "duration"
    } else if all(is_bytes) {
        "bytes"
    } else {
        "string"
    }
}

/// `1.5KB`, `10MiB`, `3B`: a number and a byte unit.
fn is_bytes(value: &str) -> bool {
    let digits = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits);
    !number.is_empty()
        && number.parse::<f64>().is_ok()
        && matches!(
            unit.trim(),
            "B" | "kB" | "KB" | "KiB" | "MB" | "MiB" | "GB" | "GiB" | "TB" | "TiB" | "PB" | "PiB"
        )
}

async fn buildinfo() -> Json<Value> {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": "sightline",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_store::{LogRecord, LogStore};
    use std::sync::Arc;

    /// The aggregations answer as reading every record would: Grafana's
    /// log volume (`sum by (level)`), a rate per stream, an instant query,
    /// a range that is not the step.
    #[test]
    fn metric_queries_on_the_aggregations_answer_as_reading_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = crate::prometheus::tests::state(dir.path());
        let logs = LogStore::open(&dir.path().join("loki-logs")).unwrap();
        let t0: i64 = 1_700_000_000_000_000_000;
        let second = 1_000_000_000i64;
        let mut records = Vec::new();
        for index in 0..600i64 {
            let mut record = LogRecord {
                timestamp: t0 + index * 997_000_000 + index % 7,
                body: format!("line {index}"),
                service: ["checkout", "payment", "auth"][index as usize % 3].into(),
                severity_text: ["INFO", "ERROR"][(index as usize / 5) % 2].into(),
                ..LogRecord::default()
            };
            if index % 4 != 0 {
                Arc::make_mut(&mut record.resource).insert(
                    "k8s.namespace.name".into(),
                    Value::from(if index % 2 == 0 { "shop" } else { "ops" }),
                );
            }
            records.push(record);
        }
        let start = t0 + 30 * second + 123_456_789;
        // Lines at the very time of steps: in the window ending there.
        for k in 0..60 {
            let mut record = records[k as usize].clone();
            record.timestamp = start + k * 5 * second;
            records.push(record);
        }
        logs.add(0, &records).unwrap();
        logs.commit(1).unwrap();
        state.logs = Arc::new(logs);

        let cases: [(&str, i64, usize); 7] = [
            // Grafana 11's log volume query.
            (
                "sum by (level, detected_level) (count_over_time({service_name=\"payment\"} | drop __error__, __error_details__[15s]))",
                15,
                30,
            ),
            (
                "count_over_time({service_name=\"payment\"} | keep level [1m])",
                15,
                30,
            ),
            (
                "sum by (level) (count_over_time({service_name=~\".+\"}[15s]))",
                15,
                30,
            ),
            ("count_over_time({service_name=\"payment\"}[1m])", 15, 30),
            ("sum(rate({namespace=\"shop\"}[30s]))", 10, 40),
            (
                "sum by (namespace, service_name) (count_over_time({namespace=\"ops\", level!=\"error\"}[20s]))",
                20,
                25,
            ),
            ("rate({service_name=\"auth\"}[2m])", 120, 1),
        ];
        let mut answered = 0;
        for (query, step_s, points) in cases {
            let Expr::Metric(metric) = logql::parse(query).unwrap() else {
                panic!("{query} is a metric query");
            };
            let times: Vec<i64> = (0..points as i64)
                .map(|k| start + k * step_s * second)
                .collect();
            let expected = evaluate_records(&state, &metric, &times).unwrap();
            match aggregated(&state, &metric, &times) {
                Some(found) => {
                    answered += 1;
                    let found = found.unwrap();
                    let shape = |series: &[logql::Series]| -> Vec<(Labels, Vec<i64>)> {
                        series
                            .iter()
                            .map(|s| (s.labels.clone(), s.points.iter().map(|p| p.0).collect()))
                            .collect()
                    };
                    assert_eq!(shape(&found), shape(&expected), "{query}");
                    for (found, expected) in found.iter().zip(&expected) {
                        for (a, b) in found.points.iter().zip(&expected.points) {
                            assert!((a.1 - b.1).abs() < 1e-9, "{query}: {a:?} != {b:?}");
                        }
                    }
                }
                None => assert!(
                    query.contains("=~") || query.contains("keep"),
                    "{query} was not aggregated"
                ),
            }
            assert!(!expected.is_empty(), "{query} matched nothing");
        }
        assert_eq!(answered, 5, "every plain selector is aggregated");
    }

    #[tokio::test]
    async fn detected_fields_names_each_parsed_field_with_its_type_and_distinct_values() {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().unwrap();
        let mut state = crate::prometheus::tests::state(dir.path());
        let logs = LogStore::open(&dir.path().join("loki-logs")).unwrap();
        let t0: i64 = 1_700_000_000_000_000_000;
        let records: Vec<LogRecord> = (0..20i64)
            .map(|index| {
                let mut record = LogRecord {
                    timestamp: t0 + index,
                    body: format!("{{\"route\": \"/r{}\"}}", index % 4),
                    service: "checkout".into(),
                    ..LogRecord::default()
                };
                for (key, value) in [
                    ("http.status", Value::from(200 + index % 3)),
                    ("latency", Value::from(format!("{}ms", index))),
                    ("ratio", Value::from(index as f64 / 3.0)),
                    ("cached", Value::from(index % 2 == 0)),
                    ("size", Value::from(format!("{index}KB"))),
                ] {
                    record.attributes.insert(key.into(), value);
                }
                record
            })
            .collect();
        logs.add(0, &records).unwrap();
        logs.commit(1).unwrap();
        state.logs = Arc::new(logs);
        let uri = format!(
            "/loki/api/v1/detected_fields?query=%7Bservice_name%3D%22checkout%22%7D&start={}&end={}",
            t0 - 1,
            t0 + 100
        );
        let response = crate::router(state)
            .oneshot(
                axum::http::Request::get(uri)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = serde_json::from_slice(
            &axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap(),
        )
        .unwrap();
        let found: BTreeMap<String, (String, u64)> = body["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|field| {
                assert_eq!(field["parsers"], json!(["json"]));
                (
                    field["label"].as_str().unwrap().to_string(),
                    (
                        field["type"].as_str().unwrap().to_string(),
                        field["cardinality"].as_u64().unwrap(),
                    ),
                )
            })
            .collect();
        let expected: BTreeMap<String, (String, u64)> = [
            ("http_status", ("int", 3)),
            ("latency", ("duration", 20)),
            ("ratio", ("float", 20)),
            ("cached", ("boolean", 2)),
            ("size", ("bytes", 20)),
            ("route", ("string", 4)),
        ]
        .into_iter()
        .map(|(label, (kind, count))| (label.to_string(), (kind.to_string(), count)))
        .collect();
        assert_eq!(found, expected, "{body}");
    }
}
