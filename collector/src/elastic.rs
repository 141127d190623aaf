//! Elasticsearch compatibility under `/elastic`, so Fluent Bit, Vector and
//! Logstash ship logs to Sightline by pointing their Elasticsearch output at
//! `http://collector:7070/elastic`.
//!
//! Routes (relative to `/elastic`):
//!
//! - `GET /` and `HEAD /`: a version document like Elasticsearch 8's (clients
//!   check `version.number` and the `X-Elastic-Product` header, which every
//!   response carries);
//! - `GET /_cluster/health`: green, for health checks (Vector's);
//! - `POST|PUT /_bulk` and `POST|PUT /{index}/_bulk`: NDJSON action and
//!   document pairs, gzip allowed. `index` and `create` store their document
//!   as a log record; `delete` and `update` answer a per-item error. Items
//!   come back in order with their status, and `errors` is true when any
//!   failed; a bad document fails only its own item.
//!
//! A document becomes a [`LogRecord`] the way shippers shape them, by the
//! mapping in `document.rs` (timestamp, body, severity, service, Kubernetes
//! resource, ids, the rest as attributes), with the index as the
//! `elastic.index` resource attribute; `request_id` (and the other
//! `REQUEST_ID_KEYS`) is also promoted. A timestamp field that holds no
//! time fails its item.
//!
//! A malformed action line fails the whole request with 400, as in
//! Elasticsearch: the pairing of the lines after it is unknown.
//!
//! # Busy answers that every shipper retries
//!
//! A `_bulk` request that cannot be taken now (its client over the ingest
//! rate limit, the ingest queue or memory budget full, the disk full, the
//! collector stopping) must be retried by the sender, yet the shippers
//! disagree on what they retry:
//!
//! | answer | Fluent Bit `es` | Vector `elasticsearch` | Logstash | rsyslog `omelasticsearch` |
//! |---|---|---|---|---|
//! | whole request 429/503, error body | retries (any non-2xx) | retries (429, 5xx) | retries (429, 503) | retries from 8.2606 (429, 5xx suspend the action); before, parses the body, finds no `items` and drops the batch |
//! | 200, `errors: true`, items with status 429 | retries the chunk | drops it unless `request_retry_partial` (default false) | retries the items | resubmits the items with `retryfailures="on"`; drops them otherwise |
//!
//! Elasticsearch itself answers both ways: a full write thread pool rejects
//! shard requests, which come back as items with status 429 and
//! `es_rejected_execution_exception` inside a 200; indexing pressure on the
//! coordinating node rejects the whole request with 429 and
//! `{"error": {"root_cause": [..], "type": "es_rejected_execution_exception",
//! "reason": ..}, "status": 429}`. Neither is retried by all four, so
//! Sightline sends one answer that is both: the whole-request status (429
//! when busy or rate limited, 503 when stopping or unable to write) with
//! `Retry-After`, and a body holding Elasticsearch's `error` and `status`
//! *and* `took`, `errors: true` and one item per action, each with that
//! status and the same error (an item whose document was bad keeps its own
//! 400). Status-driven clients (Fluent Bit, Vector, Logstash, rsyslog from
//! 8.2606) retry the request; older rsyslog, which reads the body of any
//! status, finds the items and resubmits them with `retryfailures="on"`.
//! Every answer, these included, carries `X-Elastic-Product:
//! Elasticsearch`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, middleware};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sightline_store::LogRecord;
use sightline_vocab::clock::now_nanos;

use crate::error::{Flavour, ReceiveError};
use crate::http_body::{self, BodyRules, Encodings};
use crate::ingest::Ingest;
use crate::document;

/// The Elasticsearch version announced to clients.
const VERSION: &str = "8.11.0";

/// A stable, made-up cluster id.
const CLUSTER_UUID: &str = "c2lnaHRsaW5lLWNsdXN0";

/// Index name used when neither the URL nor the action names one.
const DEFAULT_INDEX: &str = "sightline";

/// The bodies `_bulk` takes: NDJSON, gzip allowed, 16 MiB as received and
/// 64 MiB decompressed.
const BODY: BodyRules = BodyRules {
    max_body_bytes: 16 * 1024 * 1024,
    max_decoded_bytes: 64 * 1024 * 1024,
    encodings: Encodings::IdentityOrGzip,
};

static PRODUCT_HEADER: HeaderName = HeaderName::from_static("x-elastic-product");

#[derive(Clone)]
struct ElasticState {
    ingest: Ingest,
    /// `_seq_no` of the next stored document.
    next_seq_no: Arc<AtomicU64>,
}

/// The Elasticsearch-compatible routes; `lib.rs` nests them under `/elastic`.
/// `_bulk` charges the ingest rate limit of `ingest`, and a limited request
/// gets an Elasticsearch answer naming its items.
pub fn router(ingest: Ingest) -> Router {
    let state = ElasticState {
        ingest,
        next_seq_no: Arc::new(AtomicU64::new(0)),
    };
    Router::new()
        .route("/", get(info))
        .route("/_cluster/health", get(cluster_health))
        .route("/_bulk", post(bulk).put(bulk))
        .route("/{index}/_bulk", post(bulk_into_index).put(bulk_into_index))
        .fallback(not_found)
        .layer(middleware::map_response(add_product_header))
        .with_state(state)
}

/// `GET|HEAD /elastic/`, with the trailing slash Vector and Logstash send.
///
/// A router nested at `/elastic` answers `/elastic` for its `/` route but not
/// `/elastic/`, so the host mounts this one next to the nested router:
///
/// ```text
/// router
///     .nest("/elastic", elastic::router(ingest.clone()))
///     .route("/elastic/", elastic::root_route())
/// ```
pub fn root_route<S: Clone + Send + Sync + 'static>() -> MethodRouter<S> {
    get(info).layer(middleware::map_response(add_product_header))
}

async fn add_product_header(mut response: Response) -> Response {
    response.headers_mut().insert(
        PRODUCT_HEADER.clone(),
        HeaderValue::from_static("Elasticsearch"),
    );
    response
}

async fn info() -> Json<Value> {
    Json(json!({
        "name": "sightline",
        "cluster_name": "sightline",
        "cluster_uuid": CLUSTER_UUID,
        "version": {
            "number": VERSION,
            "build_flavor": "default",
            "build_type": "tar",
            "lucene_version": "9.8.0",
            "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0"
        },
        "tagline": "You Know, for Search"
    }))
}

async fn cluster_health() -> Json<Value> {
    Json(json!({
        "cluster_name": "sightline",
        "status": "green",
        "timed_out": false,
        "number_of_nodes": 1,
        "number_of_data_nodes": 1,
        "active_primary_shards": 1,
        "active_shards": 1,
        "relocating_shards": 0,
        "initializing_shards": 0,
        "unassigned_shards": 0,
        "active_shards_percent_as_number": 100.0
    }))
}

async fn not_found(uri: axum::http::Uri) -> EsError {
    EsError::from(ReceiveError::NotFound(format!(
        "sightline answers only /, /_cluster/health and /_bulk here, not {}",
        uri.path()
    )))
}

/// An Elasticsearch-style error for a whole request:
/// `{"error": {"root_cause": [..], "type": .., "reason": ..}, "status": N}`,
/// with the status, `type` and `Retry-After` [`crate::error`] decides.
///
/// A refusal to be retried (429, 503) also carries `took`, `errors` and one
/// item per action (see the module docs).
#[derive(Debug)]
struct EsError {
    error: ReceiveError,
    /// Elasticsearch's `type` where it is more precise than the error's.
    kind: Option<&'static str>,
    items: Vec<BulkItem>,
}

impl From<ReceiveError> for EsError {
    fn from(error: ReceiveError) -> EsError {
        EsError {
            error,
            kind: None,
            items: Vec::new(),
        }
    }
}

impl EsError {
    fn bad_request(reason: impl Into<String>) -> EsError {
        EsError::from(ReceiveError::Malformed(reason.into()))
    }

    fn kind(&self) -> &'static str {
        self.kind.unwrap_or_else(|| self.error.elastic_type())
    }

    /// Answers each entry with this refusal, except the entries whose own
    /// document was bad: they keep their 400.
    fn with_items(mut self, entries: Vec<BulkEntry>) -> EsError {
        let (status, _) = self.error.http(Flavour::Elastic);
        let error = ItemError {
            kind: self.kind(),
            reason: self.error.to_string(),
        };
        self.items = entries
            .into_iter()
            .map(|entry| entry.into_refused_item(status, error.clone()))
            .collect();
        self
    }
}

impl IntoResponse for EsError {
    fn into_response(self) -> Response {
        self.error.log("elastic bulk");
        let (status, retry_after) = self.error.http(Flavour::Elastic);
        let (kind, reason) = (self.kind(), self.error.to_string());
        let cause = json!({"type": kind, "reason": reason});
        let mut body = json!({
            "error": {"root_cause": [cause], "type": kind, "reason": reason},
            "status": status.as_u16(),
        });
        if !self.items.is_empty() {
            body["took"] = json!(0);
            body["errors"] = json!(true);
            body["items"] = serde_json::to_value(&self.items).unwrap_or_default();
        }
        let mut response = (status, Json(body)).into_response();
        if let Some(wait) = retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(wait.as_secs()));
        }
        response
    }
}

async fn bulk(state: State<ElasticState>, request: Request) -> Response {
    run_bulk(&state, None, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn bulk_into_index(
    state: State<ElasticState>,
    Path(index): Path<String>,
    request: Request,
) -> Response {
    run_bulk(&state, Some(index), request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn run_bulk(
    state: &ElasticState,
    default_index: Option<String>,
    request: Request,
) -> Result<Response, EsError> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    // Charged before the body is read, refused after: the refusal names the
    // request's items, so that every shipper retries them.
    let client = http_body::client(&parts.extensions);
    let limited = state
        .ingest
        .admit(Some(client), http_body::content_length(&parts.headers))
        .err();
    let received = http_body::receive(body, &parts.headers, &BODY)
        .await
        .map_err(ReceiveError::from)?;
    let (mut entries, size) = tokio::task::spawn_blocking(move || {
        let body = received.decode().map_err(ReceiveError::from)?;
        if let Some(limited) = limited {
            // Only the action lines: each gets its refusal.
            let actions = parse_actions(&body, default_index.as_deref());
            return Err(EsError::from(ReceiveError::from(limited)).with_items(actions));
        }
        let entries = parse_bulk(&body, default_index.as_deref(), now_nanos())?;
        Ok::<_, EsError>((entries, body.len()))
    })
    .await
    .map_err(|error| ReceiveError::Internal(error.to_string()))??;

    // Hand the good documents to ingest; remember which entry each came from.
    let mut records = Vec::new();
    let mut record_entries = Vec::new();
    for (position, entry) in entries.iter_mut().enumerate() {
        match std::mem::replace(&mut entry.outcome, Outcome::Stored) {
            Outcome::Store(record) => {
                records.push(*record);
                record_entries.push(position);
            }
            other => entry.outcome = other,
        }
    }
    let malformed = entries
        .iter()
        .filter(|entry| matches!(entry.outcome, Outcome::Failed(_)))
        .count();
    if malformed > 0 {
        state.ingest.count_malformed(malformed as u64);
    }
    let rejections = match state.ingest.logs(records, size).await {
        Ok(rejections) => rejections,
        Err(error) => return Err(EsError::from(ReceiveError::from(error)).with_items(entries)),
    };
    for rejection in rejections {
        if let Some(&position) = record_entries.get(rejection.index) {
            entries[position].outcome = Outcome::Failed(ItemError::mapping(rejection.reason));
        }
    }

    let errors = entries
        .iter()
        .any(|entry| matches!(entry.outcome, Outcome::Failed(_)));
    let items = entries
        .into_iter()
        .map(|entry| entry.into_item(&state.next_seq_no))
        .collect();
    let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(Json(BulkResponse {
        took,
        errors,
        items,
    })
    .into_response())
}

/// The `_bulk` answer.
#[derive(Debug, Serialize)]
struct BulkResponse {
    took: u64,
    errors: bool,
    items: Vec<BulkItem>,
}

/// One item of the answer, keyed by its action: `{"index": {...}}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
enum BulkItem {
    Index(ItemResult),
    Create(ItemResult),
    Delete(ItemResult),
    Update(ItemResult),
}

#[derive(Debug, Serialize)]
struct ItemResult {
    #[serde(rename = "_index")]
    index: String,
    #[serde(rename = "_id")]
    id: String,
    #[serde(rename = "_version", skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'static str>,
    #[serde(rename = "_shards", skip_serializing_if = "Option::is_none")]
    shards: Option<Shards>,
    #[serde(rename = "_seq_no", skip_serializing_if = "Option::is_none")]
    seq_no: Option<u64>,
    #[serde(rename = "_primary_term", skip_serializing_if = "Option::is_none")]
    primary_term: Option<u64>,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ItemError>,
}

#[derive(Debug, Serialize)]
struct Shards {
    total: u32,
    successful: u32,
    failed: u32,
}

/// Why one item failed; the rest of the request is unaffected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct ItemError {
    #[serde(rename = "type")]
    kind: &'static str,
    reason: String,
}

impl ItemError {
    /// The line is not a JSON object.
    fn document(reason: impl Into<String>) -> ItemError {
        ItemError {
            kind: "document_parsing_exception",
            reason: reason.into(),
        }
    }

    /// The document is JSON but a field cannot be used (or ingest refused it).
    fn mapping(reason: impl Into<String>) -> ItemError {
        ItemError {
            kind: "mapper_parsing_exception",
            reason: reason.into(),
        }
    }

    fn unsupported(action: Action) -> ItemError {
        ItemError {
            kind: "illegal_argument_exception",
            reason: format!(
                "{} is not supported: sightline stores logs append-only",
                action.name()
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Index,
    Create,
    Delete,
    Update,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Index => "index",
            Action::Create => "create",
            Action::Delete => "delete",
            Action::Update => "update",
        }
    }
}

#[derive(Debug)]
enum Outcome {
    Store(Box<LogRecord>),
    Stored,
    Failed(ItemError),
}

/// One action of a bulk request and what became of it.
#[derive(Debug)]
struct BulkEntry {
    action: Action,
    index: String,
    id: Option<String>,
    outcome: Outcome,
}

impl BulkEntry {
    fn into_item(self, next_seq_no: &AtomicU64) -> BulkItem {
        let id = self.id.unwrap_or_else(generate_id);
        let result = match self.outcome {
            Outcome::Failed(error) => ItemResult {
                index: self.index,
                id,
                version: None,
                result: None,
                shards: None,
                seq_no: None,
                primary_term: None,
                status: StatusCode::BAD_REQUEST.as_u16(),
                error: Some(error),
            },
            Outcome::Stored | Outcome::Store(_) => ItemResult {
                index: self.index,
                id,
                version: Some(1),
                result: Some("created"),
                shards: Some(Shards {
                    total: 1,
                    successful: 1,
                    failed: 0,
                }),
                seq_no: Some(next_seq_no.fetch_add(1, Ordering::Relaxed)),
                primary_term: Some(1),
                status: StatusCode::CREATED.as_u16(),
                error: None,
            },
        };
        match self.action {
            Action::Index => BulkItem::Index(result),
            Action::Create => BulkItem::Create(result),
            Action::Delete => BulkItem::Delete(result),
            Action::Update => BulkItem::Update(result),
        }
    }
}

impl BulkEntry {
    /// The item of an entry refused with `status` (429, 503) as a whole
    /// request; an entry whose document was bad keeps its own error.
    fn into_refused_item(self, status: StatusCode, error: ItemError) -> BulkItem {
        let (status, error) = match self.outcome {
            Outcome::Failed(own) => (StatusCode::BAD_REQUEST, own),
            Outcome::Store(_) | Outcome::Stored => (status, error),
        };
        let result = ItemResult {
            index: self.index,
            id: self.id.unwrap_or_else(generate_id),
            version: None,
            result: None,
            shards: None,
            seq_no: None,
            primary_term: None,
            status: status.as_u16(),
            error: Some(error),
        };
        match self.action {
            Action::Index => BulkItem::Index(result),
            Action::Create => BulkItem::Create(result),
            Action::Delete => BulkItem::Delete(result),
            Action::Update => BulkItem::Update(result),
        }
    }
}

/// The lines of an NDJSON body (a trailing `\r` dropped), numbered from 1
/// for error messages.
fn numbered_lines(body: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    body.split(|byte| *byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .enumerate()
        .map(|(number, line)| (number + 1, line))
}

/// The index an action names, else the one in the URL, else the default.
fn index_of(named: Option<String>, default_index: Option<&str>) -> String {
    named
        .or_else(|| default_index.map(str::to_string))
        .unwrap_or_else(|| DEFAULT_INDEX.to_string())
}

/// The action lines of a bulk body, without reading the documents: what a
/// refused request needs to name its items. Stops at a malformed action
/// line (the pairing after it is unknown).
fn parse_actions(body: &[u8], default_index: Option<&str>) -> Vec<BulkEntry> {
    let mut lines = numbered_lines(body);
    let mut entries = Vec::new();
    while let Some((line_number, line)) = lines.next() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok((action, meta)) = parse_action(line, line_number) else {
            break;
        };
        if action != Action::Delete {
            let _document = lines.next();
        }
        entries.push(BulkEntry {
            action,
            index: index_of(meta.index, default_index),
            id: meta.id,
            outcome: Outcome::Stored,
        });
    }
    entries
}

/// A document id like Elasticsearch's: 20 characters, unique in this process
/// and, through the clock, across restarts.
fn generate_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let count = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:014x}{:06x}",
        ((now_nanos() as u64) >> 8) & ((1 << 56) - 1),
        count & 0xff_ffff
    )
}

/// Splits an NDJSON bulk body into entries; documents are mapped to records
/// (or to their item's error). Fails only when an action line is malformed or
/// there is no action at all.
fn parse_bulk(
    body: &[u8],
    default_index: Option<&str>,
    now: i64,
) -> Result<Vec<BulkEntry>, EsError> {
    let mut lines = numbered_lines(body);
    let mut entries = Vec::new();
    while let Some((line_number, line)) = lines.next() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (action, meta) = parse_action(line, line_number)?;
        let index = index_of(meta.index, default_index);
        let outcome = match action {
            Action::Delete => Outcome::Failed(ItemError::unsupported(action)),
            Action::Update => {
                let _document = lines.next();
                Outcome::Failed(ItemError::unsupported(action))
            }
            Action::Index | Action::Create => match lines.next() {
                None => Outcome::Failed(ItemError::document(format!(
                    "the {} action on line {line_number} has no document line",
                    action.name()
                ))),
                Some((document_line, document)) => match parse_document(document, document_line)
                    .and_then(|document| to_record(document, &index, now))
                {
                    Ok(record) => Outcome::Store(Box::new(record)),
                    Err(error) => Outcome::Failed(error),
                },
            },
        };
        entries.push(BulkEntry {
            action,
            index,
            id: meta.id,
            outcome,
        });
    }
    if entries.is_empty() {
        return Err(EsError {
            kind: Some("action_request_validation_exception"),
            ..EsError::bad_request("Validation Failed: 1: no requests added;")
        });
    }
    Ok(entries)
}

/// Fuzz entry point (not an API): parses `data` as a `_bulk` body.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
#[doc(hidden)]
pub fn fuzz_bulk(data: &[u8]) {
    let _ = parse_bulk(data, None, 0);
}

/// `_index` and `_id` of an action line.
#[derive(Debug, Default)]
struct ActionMeta {
    index: Option<String>,
    id: Option<String>,
}

fn parse_action(line: &[u8], line_number: usize) -> Result<(Action, ActionMeta), EsError> {
    let value: Value = serde_json::from_slice(line).map_err(|error| {
        EsError::bad_request(format!(
            "Malformed action/metadata line [{line_number}]: {}",
            without_position(&error)
        ))
    })?;
    let Value::Object(object) = value else {
        return Err(EsError::bad_request(format!(
            "Malformed action/metadata line [{line_number}], expected START_OBJECT"
        )));
    };
    let mut entries = object.into_iter();
    let (Some((name, meta)), None) = (entries.next(), entries.next()) else {
        return Err(EsError::bad_request(format!(
            "Malformed action/metadata line [{line_number}], expected exactly one action"
        )));
    };
    let action = match name.as_str() {
        "index" => Action::Index,
        "create" => Action::Create,
        "delete" => Action::Delete,
        "update" => Action::Update,
        other => {
            return Err(EsError::bad_request(format!(
                "Malformed action/metadata line [{line_number}], expected one of [create, delete, index, update] but found [{other}]"
            )));
        }
    };
    let Value::Object(meta) = meta else {
        return Err(EsError::bad_request(format!(
            "Malformed action/metadata line [{line_number}], expected an object after [{name}]"
        )));
    };
    let text = |value: Option<&Value>| match value {
        Some(Value::String(text)) if !text.is_empty() => Some(text.clone()),
        Some(Value::Number(number)) => Some(number.to_string()),
        _ => None,
    };
    Ok((
        action,
        ActionMeta {
            index: text(meta.get("_index")),
            id: text(meta.get("_id")),
        },
    ))
}

fn parse_document(line: &[u8], line_number: usize) -> Result<Map<String, Value>, ItemError> {
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(document)) => Ok(document),
        Ok(other) => Err(ItemError::document(format!(
            "[{line_number}:1] failed to parse: the document is {}, not an object",
            json_kind(&other)
        ))),
        Err(error) => Err(ItemError::document(format!(
            "[{line_number}:{}] failed to parse: {}",
            error.column(),
            without_position(&error)
        ))),
    }
}

/// A serde_json message without its " at line 1 column 5" (one line of a
/// bulk body is not the request's line 1).
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Maps a shipper's document to a log record (see the module docs).
fn to_record(document: Map<String, Value>, index: &str, now: i64) -> Result<LogRecord, ItemError> {
    document::to_record(document, ("elastic.index", index), now).map_err(ItemError::mapping)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{UNKNOWN_SERVICE, parse_timestamp, severity};
    use proptest::prelude::*;

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn record(document: Value) -> LogRecord {
        to_record(object(document), "logs-app", NOW).unwrap()
    }

    #[test]
    fn a_fluent_bit_kubernetes_document_becomes_a_record() {
        let record = record(json!({
            "@timestamp": "2024-05-01T12:00:00.123456789Z",
            "log": "payment declined\n",
            "stream": "stderr",
            "level": "warning",
            "request_id": "req-42",
            "trace_id": "5B8EFFF798038103D269B633813FC60C",
            "span_id": "not-hex",
            "kubernetes": {
                "pod_name": "payment-7d9f", "namespace_name": "shop", "pod_id": "c0ffee",
                "container_name": "payment", "host": "node-1", "docker_id": "abc123",
                "labels": {"app": "payment-svc"}
            }
        }));
        assert_eq!(record.timestamp, 1_714_564_800_123_456_789);
        assert_eq!(record.observed_timestamp, NOW);
        assert_eq!(record.body, "payment declined");
        assert_eq!(
            (record.severity_text.as_str(), record.severity_number),
            ("WARN", 13)
        );
        assert_eq!(
            record.service, "payment",
            "container name before the app label"
        );
        assert_eq!(
            record.trace_id.as_deref(),
            Some("5b8efff798038103d269b633813fc60c")
        );
        assert_eq!(record.span_id, None);
        assert_eq!(record.request_id.as_deref(), Some("req-42"));
        assert_eq!(
            Value::Object(std::sync::Arc::unwrap_or_clone(record.resource)),
            json!({
                "k8s.namespace.name": "shop", "k8s.pod.name": "payment-7d9f", "k8s.pod.uid": "c0ffee",
                "k8s.container.name": "payment", "host.name": "node-1", "container.id": "abc123",
                "service.name": "payment", "elastic.index": "logs-app"
            })
        );
        assert_eq!(
            Value::Object(record.attributes),
            json!({
                "stream": "stderr", "request_id": "req-42", "span_id": "not-hex",
                "kubernetes": {"labels": {"app": "payment-svc"}}
            })
        );
    }

    #[test]
    fn ecs_and_flat_dotted_fields_are_both_understood() {
        let nested = record(json!({
            "message": "hi", "log": {"level": "ERROR", "logger": "main"},
            "service": {"name": "checkout"}, "host": {"name": "h1"}, "timestamp": 1_714_564_800_000_i64
        }));
        assert_eq!(
            (nested.severity_text.as_str(), nested.severity_number),
            ("ERROR", 17)
        );
        assert_eq!(nested.service, "checkout");
        assert_eq!(nested.resource["host.name"], "h1");
        assert_eq!(nested.timestamp, 1_714_564_800_000_000_000, "epoch millis");
        assert_eq!(
            Value::Object(nested.attributes),
            json!({"log": {"logger": "main"}})
        );

        let flat = record(
            json!({"msg": "hi", "log.level": "info", "service.name": "cart", "time": 1_714_564_800}),
        );
        assert_eq!(
            (flat.severity_text.as_str(), flat.service.as_str()),
            ("INFO", "cart")
        );
        assert_eq!(flat.timestamp, 1_714_564_800_000_000_000, "epoch seconds");
        assert!(flat.attributes.is_empty());
    }

    #[test]
    fn missing_fields_get_defaults() {
        let record = record(json!({"user": {"id": 7}}));
        assert_eq!(record.timestamp, NOW);
        assert_eq!(record.body, "");
        assert_eq!(record.service, UNKNOWN_SERVICE);
        assert_eq!(record.severity_number, 0);
        assert_eq!(record.attributes["user"]["id"], 7);
        let app = self::record(json!({"kubernetes": {"labels": {"app": "web"}}}));
        assert_eq!(app.service, "web");
    }

    #[test]
    fn timestamps_in_shippers_formats() {
        let cases = [
            (
                json!("2024-05-01T12:00:00Z"),
                Some(1_714_564_800_000_000_000),
            ),
            (
                json!("2024-05-01T14:00:00+02:00"),
                Some(1_714_564_800_000_000_000),
            ),
            (
                json!("2024-05-01 12:00:00.5"),
                Some(1_714_564_800_500_000_000),
            ),
            (
                json!("2024-05-01T12:00:00"),
                Some(1_714_564_800_000_000_000),
            ),
            (json!(1_714_564_800.25), Some(1_714_564_800_250_000_000)),
            (
                json!(1_714_564_800_000_000_i64),
                Some(1_714_564_800_000_000_000),
            ),
            (
                json!(1_714_564_800_000_000_000_i64),
                Some(1_714_564_800_000_000_000),
            ),
            (json!("1714564800000"), Some(1_714_564_800_000_000_000)),
            (json!("yesterday"), None),
            (json!(-5), None),
            (json!(1e300), None),
            (json!(true), None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_timestamp(&value), expected, "{value}");
        }
        let error = to_record(object(json!({"@timestamp": "soon"})), "i", NOW).unwrap_err();
        assert_eq!(error.kind, "mapper_parsing_exception");
        assert!(error.reason.contains("[@timestamp]"), "{}", error.reason);
    }

    #[test]
    fn severities_normalize_to_otlp() {
        let cases = [
            (json!("debug"), ("DEBUG", 5)),
            (json!("Information"), ("INFO", 9)),
            (json!("WARNING"), ("WARN", 13)),
            (json!("err"), ("ERROR", 17)),
            (json!("crit"), ("ERROR", 18)),
            (json!("notice"), ("INFO", 10)),
            (json!(0), ("FATAL", 21)),
            (json!(30), ("INFO", 9)),
            (json!("50"), ("ERROR", 17)),
            (json!(3), ("ERROR", 17)),
            (json!("audit"), ("AUDIT", 0)),
            (json!(12345), ("12345", 0)),
        ];
        for (value, (text, number)) in cases {
            assert_eq!(severity(&value), (text.to_string(), number), "{value}");
        }
    }

    #[test]
    fn bulk_bodies_pair_actions_with_documents() {
        let body = concat!(
            "{\"index\":{\"_index\":\"a\",\"_id\":\"1\"}}\n{\"message\":\"one\"}\n",
            "\n",
            "{\"create\":{}}\r\n{\"message\":\"two\"}\r\n",
            "{\"delete\":{\"_id\":\"9\"}}\n",
            "{\"update\":{\"_id\":\"9\"}}\n{\"doc\":{\"x\":1}}\n",
            "{\"index\":{}}\n{\"message\": oops}\n",
            "{\"index\":{}}\n[1,2]\n",
            "{\"index\":{}}\n",
        );
        let entries = parse_bulk(body.as_bytes(), Some("url-index"), NOW).unwrap();
        let summary: Vec<_> = entries
            .iter()
            .map(|entry| {
                let outcome = match &entry.outcome {
                    Outcome::Store(record) => record.body.clone(),
                    Outcome::Failed(error) => error.kind.to_string(),
                    Outcome::Stored => "stored".into(),
                };
                (
                    entry.action.name(),
                    entry.index.as_str(),
                    entry.id.as_deref(),
                    outcome,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("index", "a", Some("1"), "one".to_string()),
                ("create", "url-index", None, "two".into()),
                (
                    "delete",
                    "url-index",
                    Some("9"),
                    "illegal_argument_exception".into()
                ),
                (
                    "update",
                    "url-index",
                    Some("9"),
                    "illegal_argument_exception".into()
                ),
                (
                    "index",
                    "url-index",
                    None,
                    "document_parsing_exception".into()
                ),
                (
                    "index",
                    "url-index",
                    None,
                    "document_parsing_exception".into()
                ),
                (
                    "index",
                    "url-index",
                    None,
                    "document_parsing_exception".into()
                ),
            ]
        );
        let Outcome::Failed(error) = &entries[4].outcome else {
            unreachable!()
        };
        assert!(
            error
                .reason
                .starts_with("[10:13] failed to parse: expected value"),
            "{}",
            error.reason
        );
    }

    #[test]
    fn malformed_action_lines_fail_the_request() {
        for (body, expected) in [
            ("{\"index\":{}\n{}\n", "line [1]"),
            ("{}\n{\"index\":{}}\n{}\n", "expected exactly one action"),
            (
                "{\"index\":{}}\n{}\n{\"upsert\":{}}\n{}\n",
                "found [upsert]",
            ),
            ("{\"index\":5}\n{}\n", "expected an object"),
            ("\"index\"\n", "expected START_OBJECT"),
        ] {
            let error = parse_bulk(body.as_bytes(), None, NOW).unwrap_err();
            assert_eq!(
                error.error.http(Flavour::Elastic).0,
                StatusCode::BAD_REQUEST
            );
            let reason = error.error.to_string();
            assert!(reason.contains(expected), "{body:?}: {reason}");
        }
        let error = parse_bulk(b"\n \n", None, NOW).unwrap_err();
        assert_eq!(error.kind(), "action_request_validation_exception");
    }

    #[test]
    fn generated_ids_are_unique() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| generate_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.len() == 20), "{ids:?}");
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("@timestamp".to_string()),
            Just("timestamp".to_string()),
            Just("time".to_string()),
            Just("message".to_string()),
            Just("log".to_string()),
            Just("level".to_string()),
            Just("log.level".to_string()),
            Just("service".to_string()),
            Just("service.name".to_string()),
            Just("kubernetes".to_string()),
            Just("labels".to_string()),
            Just("app".to_string()),
            Just("pod_name".to_string()),
            Just("host".to_string()),
            Just("name".to_string()),
            Just("trace_id".to_string()),
            Just("span.id".to_string()),
            Just("request_id".to_string()),
            "[a-z._]{0,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[0-9a-f]{16,32}".prop_map(Value::from),
            "[0-9 :.TZ+-]{0,30}".prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..6)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    fn bulk_line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            json_value().prop_map(|value| serde_json::to_vec(&value).unwrap()),
            Just(b"{\"index\":{}}".to_vec()),
            Just(b"{\"create\":{\"_index\":\"x\",\"_id\":7}}".to_vec()),
            Just(b"{\"update\":{}}".to_vec()),
            Just(b"{\"delete\":{}}".to_vec()),
            prop::collection::vec(any::<u8>(), 0..40),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn no_document_panics_the_mapping(document in json_value()) {
            if let Value::Object(document) = document {
                let _ = to_record(document, "index", NOW);
            }
        }

        #[test]
        fn no_bulk_body_panics_the_parser(lines in prop::collection::vec(bulk_line(), 0..12)) {
            let body = lines.join(&b'\n');
            if let Ok(entries) = parse_bulk(&body, None, NOW) {
                let next_seq_no = AtomicU64::new(0);
                for entry in entries {
                    serde_json::to_string(&entry.into_item(&next_seq_no)).unwrap();
                }
            }
        }

        #[test]
        fn no_bytes_panic_the_parser(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_bulk(&body, Some("i"), NOW);
        }
    }
}
