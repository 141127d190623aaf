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
//! searched and the rest checked on each record; metric queries evaluate
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
        .route("/loki/api/v1/status/buildinfo", get(buildinfo))
        .route("/loki/api/v1/tail", get(tail))
}

/// An error as Loki answers it: a status and a line of text.
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
