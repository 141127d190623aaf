//! JSON handlers of the query API.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use sightline_store::{Cursor, Histogram, LogHit, LogQuery};
use sightline_vocab::clock::now_nanos;

use crate::QueryState;
use crate::error::ApiError;
use crate::jaeger;
use crate::response::{LogContext, LogPage, LogTerms, TermCount};

const DEFAULT_LIMIT: usize = 100;

/// Most records one search page returns (Elasticsearch's
/// `index.max_result_window`); further pages come with `cursor`.
pub(crate) const MAX_LIMIT: usize = 10_000;

/// How long a log search may run before it answers 503.
pub(crate) const LOG_QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Records the field sidebar samples for top values, as Kibana Discover does.
const TERMS_SAMPLE: usize = 500;

/// Buckets of the volume histogram when no interval is given.
const DEFAULT_BUCKETS: i64 = 60;

/// How often live tail looks for new records.
const TAIL_POLL: Duration = Duration::from_millis(500);

/// Runs a log search on a blocking thread, answering 503 past
/// [`LOG_QUERY_TIMEOUT`]. A search past the timeout still finishes on its
/// thread (tantivy cannot be interrupted), but the client is answered and
/// can retry narrower.
pub(crate) async fn within_timeout<T: Send + 'static>(
    search: impl FnOnce() -> sightline_store::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let task = tokio::task::spawn_blocking(search);
    let result = tokio::time::timeout(LOG_QUERY_TIMEOUT, task)
        .await
        .map_err(|_| {
            ApiError::Timeout(format!(
                "log search timed out after {}; narrow the time range or the query",
                humantime::format_duration(LOG_QUERY_TIMEOUT)
            ))
        })???;
    Ok(result)
}

#[derive(Debug, Deserialize)]
pub(crate) struct LogSearchParams {
    #[serde(default)]
    q: String,
    start: Option<String>,
    end: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub(crate) async fn search_logs(
    State(state): State<QueryState>,
    Query(params): Query<LogSearchParams>,
) -> Result<Json<LogPage>, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if limit > MAX_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "`limit` {limit} is over the maximum of {MAX_LIMIT} records per page; ask for the next page with `cursor`"
        )));
    }
    let query = LogQuery {
        query: params.q,
        start: parse_optional_time("start", params.start.as_deref())?,
        end: parse_optional_time("end", params.end.as_deref())?,
        limit,
        after: params.cursor.as_deref().map(Cursor::decode).transpose()?,
    };
    let result = within_timeout(move || state.logs.search(&query)).await?;
    Ok(Json(LogPage {
        records: result.hits,
        total_hits: result.total_hits,
        next_cursor: result.next.map(|cursor| cursor.encode()),
    }))
}

#[derive(Debug, Deserialize)]
pub(crate) struct HistogramParams {
    #[serde(default)]
    q: String,
    start: String,
    end: Option<String>,
    /// Bucket width: nanoseconds or a duration such as `1m`.
    interval: Option<String>,
}

pub(crate) async fn histogram(
    State(state): State<QueryState>,
    Query(params): Query<HistogramParams>,
) -> Result<Json<Histogram>, ApiError> {
    let start = parse_time("start", &params.start)?;
    let end = match params.end.as_deref() {
        Some(end) => parse_time("end", end)?,
        None => now_nanos(),
    };
    if end <= start {
        return Err(ApiError::BadRequest(format!(
            "`end` ({end}) must be after `start` ({start})"
        )));
    }
    let interval = match params.interval.as_deref() {
        Some(text) => parse_interval(text)?,
        None => ((end - start) / DEFAULT_BUCKETS).max(1),
    };
    let histogram =
        within_timeout(move || state.logs.histogram(&params.q, start, end, interval)).await?;
    Ok(Json(histogram))
}

#[derive(Debug, Deserialize)]
pub(crate) struct TermsParams {
    field: String,
    #[serde(default)]
    q: String,
    start: Option<String>,
    end: Option<String>,
    size: Option<usize>,
}

/// Top values of a field among the newest matching records.
pub(crate) async fn terms(
    State(state): State<QueryState>,
    Query(params): Query<TermsParams>,
) -> Result<Json<LogTerms>, ApiError> {
    let query = LogQuery {
        query: params.q,
        start: parse_optional_time("start", params.start.as_deref())?,
        end: parse_optional_time("end", params.end.as_deref())?,
        limit: TERMS_SAMPLE,
        after: None,
    };
    let result = within_timeout(move || state.logs.search(&query)).await?;
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut present = 0;
    for hit in &result.hits {
        let record = serde_json::to_value(&hit.record).unwrap_or_default();
        if let Some(value) = field_value(&record, &params.field) {
            present += 1;
            *counts.entry(value).or_default() += 1;
        }
    }
    let mut values: Vec<(String, u64)> = counts.into_iter().collect();
    values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    values.truncate(params.size.unwrap_or(10).clamp(1, 100));
    Ok(Json(LogTerms {
        field: params.field,
        sampled: result.hits.len(),
        present,
        values: values
            .into_iter()
            .map(|(value, count)| TermCount { value, count })
            .collect(),
    }))
}

#[derive(Debug, Deserialize)]
pub(crate) struct StatsParams {
    q: String,
    start: Option<String>,
    end: Option<String>,
}

/// The default time range of a table or of patterns: the last hour.
const DEFAULT_RANGE: i64 = 3_600_000_000_000;

/// A request's `start` and `end`: the last hour up to now when not given;
/// `end` must be after `start`.
pub(crate) fn range_or_last_hour(
    start: Option<&str>,
    end: Option<&str>,
) -> Result<(i64, i64), ApiError> {
    let end = parse_optional_time("end", end)?.unwrap_or_else(now_nanos);
    let start = parse_optional_time("start", start)?.unwrap_or(end - DEFAULT_RANGE);
    if end <= start {
        return Err(ApiError::BadRequest(format!(
            "`end` ({end}) must be after `start` ({start})"
        )));
    }
    Ok((start, end))
}

/// A query with pipes (`| stats ... by ...`, `| timechart`) answered over
/// every matching record in the time range, as a table.
pub(crate) async fn stats(
    State(state): State<QueryState>,
    Query(params): Query<StatsParams>,
) -> Result<Json<Value>, ApiError> {
    let (start, end) = range_or_last_hour(params.start.as_deref(), params.end.as_deref())?;
    let pipeline = sightline_store::pipes::parse(&params.q)?.ok_or_else(|| {
        ApiError::BadRequest(
            "the query has no pipes: add `| stats count() by <field>` or `| timechart count()`, or search with /api/logs"
                .into(),
        )
    })?;
    let began = std::time::Instant::now();
    let table = within_timeout(move || state.logs.stats(&pipeline, start, end)).await?;
    let mut answer = serde_json::to_value(table).unwrap_or_default();
    answer["took_ms"] = Value::from(began.elapsed().as_millis() as u64);
    Ok(Json(answer))
}

/// A field of a record by the query language's names: top-level fields,
/// `attributes.x`/`resource.x` paths, or a bare attribute name.
fn field_value(record: &Value, field: &str) -> Option<String> {
    let lookup = |root: &Value, path: &str| -> Option<Value> {
        if let Some(value) = root.get(path) {
            return Some(value.clone());
        }
        // Keys may contain dots (`k8s.pod.name`) or be nested (`http.status`).
        let (head, rest) = path.split_once('.')?;
        root.get(head)
            .and_then(|inner| {
                inner
                    .get(rest)
                    .or_else(|| inner.pointer(&format!("/{}", rest.replace('.', "/"))))
            })
            .cloned()
    };
    let value = lookup(record, field).or_else(|| lookup(&record["attributes"], field))?;
    match value {
        Value::Null | Value::Object(_) => None,
        Value::String(text) => Some(text),
        other => Some(other.to_string()),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ContextParams {
    before: Option<usize>,
    after: Option<usize>,
}

pub(crate) async fn context(
    State(state): State<QueryState>,
    Path(id): Path<String>,
    Query(params): Query<ContextParams>,
) -> Result<Json<LogContext>, ApiError> {
    let before = params.before.unwrap_or(10).min(1000);
    let after = params.after.unwrap_or(10).min(1000);
    let hits =
        tokio::task::spawn_blocking(move || state.logs.context(&id, before, after)).await??;
    Ok(Json(LogContext { records: hits }))
}

#[derive(Debug, Deserialize)]
pub(crate) struct TailParams {
    #[serde(default)]
    q: String,
}

/// Live tail: every new matching record as an SSE `record` event, oldest first.
pub(crate) async fn tail(
    State(state): State<QueryState>,
    Query(params): Query<TailParams>,
) -> Result<Sse<impl futures_core::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let receiver = live_records(state, params.q).await?;
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let hit = receiver.recv().await?;
        let data = serde_json::to_string(&hit).unwrap_or_default();
        Some((Ok(Event::default().event("record").data(data)), receiver))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The records matching `query` from now on, oldest first, until the
/// receiver is dropped: a cluster pushes them as its partitions' owners
/// read them (a subscription); elsewhere a search for what is newer runs
/// every [`TAIL_POLL`]. Shared by the live tail and Loki's `/tail`.
pub(crate) async fn live_records(
    state: QueryState,
    query: String,
) -> Result<tokio::sync::mpsc::Receiver<LogHit>, ApiError> {
    let logs = state.logs.clone();
    let query_text = query.clone();
    tokio::task::spawn_blocking(move || logs.validate_query(&query_text)).await??;
    let (sender, receiver) = tokio::sync::mpsc::channel::<LogHit>(256);
    let logs = state.logs.clone();
    let sink = Box::new(TailRecords(sender.clone()));
    let query_text = query.clone();
    let subscribed =
        tokio::task::spawn_blocking(move || logs.subscribe(&query_text, sink)).await??;
    // Only records that arrive after the request: taken here, not in the
    // task, which may first run after records written meanwhile.
    let mut start = now_nanos() - 1;
    if !subscribed {
        tokio::spawn(async move {
            let mut newest_seen: Option<Cursor> = None;
            loop {
                let search = LogQuery {
                    query: query.clone(),
                    start: Some(start),
                    end: None,
                    limit: 1000,
                    after: None,
                };
                let logs = state.logs.clone();
                let Ok(Ok(result)) =
                    tokio::task::spawn_blocking(move || logs.search(&search)).await
                else {
                    return;
                };
                let mut fresh: Vec<_> = result
                    .hits
                    .into_iter()
                    .filter(|hit| {
                        Cursor::decode(&hit.id)
                            .is_ok_and(|cursor| newest_seen.is_none_or(|seen| cursor > seen))
                    })
                    .collect();
                fresh.reverse();
                for hit in fresh {
                    if let Ok(cursor) = Cursor::decode(&hit.id) {
                        newest_seen = Some(cursor);
                        start = start.max(cursor.timestamp);
                    }
                    if sender.send(hit).await.is_err() {
                        return;
                    }
                }
                if sender.is_closed() {
                    return;
                }
                tokio::time::sleep(TAIL_POLL).await;
            }
        });
    }
    Ok(receiver)
}

/// A live tail's records, as a subscription's sink. A record that finds
/// the client's queue full is dropped, not waited for: the subscription
/// serves every tail of the node.
struct TailRecords(tokio::sync::mpsc::Sender<LogHit>);

impl sightline_store::TailSink for TailRecords {
    fn send(&mut self, hit: LogHit) -> bool {
        match self.0.try_send(hit) {
            Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => true,
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

pub(crate) async fn get_trace(
    State(state): State<QueryState>,
    Path(trace_id): Path<String>,
) -> Result<Response, ApiError> {
    check_trace_id(&trace_id)?;
    let lookup_id = trace_id.clone();
    let spans = tokio::task::spawn_blocking(move || state.spans.trace(&lookup_id)).await??;
    if spans.is_empty() {
        return Ok(jaeger::not_found(&trace_id).into_response());
    }
    Ok(Json(jaeger::traces_response(&[spans])).into_response())
}

pub(crate) fn parse_optional_time(name: &str, text: Option<&str>) -> Result<Option<i64>, ApiError> {
    text.filter(|t| !t.is_empty())
        .map(|t| parse_time(name, t))
        .transpose()
}

/// A time bound: nanoseconds since the epoch, an RFC 3339 timestamp, or
/// `now` / `now-15m` relative to the present.
fn parse_time(name: &str, text: &str) -> Result<i64, ApiError> {
    if let Ok(nanos) = text.parse::<i64>() {
        return Ok(nanos);
    }
    if let Some(relative) = text.strip_prefix("now") {
        let ago = match relative.strip_prefix('-') {
            Some(duration) => parse_duration(name, duration)?,
            None if relative.is_empty() => 0,
            None => {
                return Err(ApiError::BadRequest(format!(
                    "`{name}` must look like now-15m, got {text:?}"
                )));
            }
        };
        return Ok(now_nanos() - ago);
    }
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(|error| {
        ApiError::BadRequest(format!(
            "`{name}` must be nanoseconds since the epoch, an RFC 3339 time or now-<duration>, got {text:?}: {error}"
        ))
    })?;
    i64::try_from(parsed.unix_timestamp_nanos())
        .map_err(|_| ApiError::BadRequest(format!("`{name}` is out of range: {text:?}")))
}

fn parse_interval(text: &str) -> Result<i64, ApiError> {
    let nanos = match text.parse::<i64>() {
        Ok(nanos) => nanos,
        Err(_) => parse_duration("interval", text)?,
    };
    if nanos <= 0 {
        return Err(ApiError::BadRequest(format!(
            "`interval` must be positive, got {text:?}"
        )));
    }
    Ok(nanos)
}

fn parse_duration(name: &str, text: &str) -> Result<i64, ApiError> {
    humantime::parse_duration(text)
        .map(|duration| i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX))
        .map_err(|error| {
            ApiError::BadRequest(format!("`{name}`: invalid duration {text:?}: {error}"))
        })
}

pub(crate) fn check_trace_id(trace_id: &str) -> Result<(), ApiError> {
    if trace_id.len() != 32 || !trace_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(format!(
            "trace id {trace_id:?} is not 32 hex characters"
        )));
    }
    Ok(())
}
