//! JSON handlers of the query API.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sightline_store::LogQuery;

use crate::QueryState;
use crate::error::ApiError;
use crate::jaeger;

const DEFAULT_LIMIT: usize = 100;

#[derive(Debug, Deserialize)]
pub(crate) struct LogSearchParams {
    #[serde(default)]
    q: String,
    start: Option<String>,
    end: Option<String>,
    limit: Option<usize>,
}

pub(crate) async fn search_logs(
    State(state): State<QueryState>,
    Query(params): Query<LogSearchParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let query = LogQuery {
        query: params.q,
        start: params
            .start
            .as_deref()
            .map(|t| parse_time("start", t))
            .transpose()?,
        end: params
            .end
            .as_deref()
            .map(|t| parse_time("end", t))
            .transpose()?,
        limit: params.limit.unwrap_or(DEFAULT_LIMIT),
    };
    let result = tokio::task::spawn_blocking(move || state.logs.search(&query)).await??;
    Ok(Json(serde_json::json!({
        "records": result.records,
        "total_hits": result.total_hits,
    })))
}

pub(crate) async fn get_trace(
    State(state): State<QueryState>,
    Path(trace_id): Path<String>,
) -> Result<Response, ApiError> {
    if trace_id.len() != 32 || !trace_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(format!(
            "trace id {trace_id:?} is not 32 hex characters"
        )));
    }
    let lookup_id = trace_id.clone();
    let spans = tokio::task::spawn_blocking(move || state.spans.trace(&lookup_id)).await??;
    if spans.is_empty() {
        return Ok(jaeger::not_found(&trace_id).into_response());
    }
    Ok(Json(jaeger::traces_response(&[spans])).into_response())
}

/// A time bound: nanoseconds since the epoch, or an RFC 3339 timestamp.
fn parse_time(name: &str, text: &str) -> Result<i64, ApiError> {
    if let Ok(nanos) = text.parse::<i64>() {
        return Ok(nanos);
    }
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|error| {
            ApiError::BadRequest(format!(
                "`{name}` must be nanoseconds since the epoch or an RFC 3339 time, got {text:?}: {error}"
            ))
        })?;
    i64::try_from(parsed.unix_timestamp_nanos())
        .map_err(|_| ApiError::BadRequest(format!("`{name}` is out of range: {text:?}")))
}
