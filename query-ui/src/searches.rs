//! Saved searches and the alerts made from them:
//!
//! - `GET /api/searches`: every saved search (with its alert, if any);
//! - `POST /api/searches` `{"name", "query"}`: saves one (`400` naming the
//!   problem: an empty or taken name, an invalid query);
//! - `DELETE /api/searches/{id}`: deletes one, and its alert;
//! - `PUT /api/searches/{id}/alert` `{"threshold", "window", "for",
//!   "group_by", "severity"}`: "alert from this search": a counter of the
//!   records the search matches (labelled by `group_by`), its history
//!   from the stored records, and the rule
//!   `sum by (<label>) (increase(<counter>[<window>])) > <threshold>`,
//!   applied without a restart; answers the search and what the backfill
//!   wrote;
//! - `DELETE /api/searches/{id}/alert`: removes the alert.
//!
//! The file is the store's ([`SavedSearches`]); what an alert becomes is
//! the metrics pipeline's, reached through [`SearchAlerts`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, put};
use serde::Deserialize;
use serde_json::{Value, json};
use sightline_store::{SavedSearch, SavedSearches, SearchAlert};
use sightline_vocab::names::is_metric_name;

use crate::QueryState;
use crate::error::ApiError;

/// What the alerts of saved searches are applied by (the collector's
/// metrics pipeline).
pub trait SearchAlerts: Send + Sync {
    /// Applies every alert of `searches` (a new one gets its history);
    /// answers what each backfill wrote, or why nothing was applied.
    fn apply(
        &self,
        searches: Vec<SavedSearch>,
    ) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + 'static>>;
}

/// No alerts: saved searches only.
pub struct NoAlerts;

impl SearchAlerts for NoAlerts {
    fn apply(
        &self,
        searches: Vec<SavedSearch>,
    ) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + 'static>> {
        let any = searches.iter().any(|search| search.alert.is_some());
        Box::pin(async move {
            match any {
                true => Err("this server makes no alerts from saved searches".into()),
                false => Ok(json!([])),
            }
        })
    }
}

/// The saved searches and what applies their alerts.
#[derive(Clone)]
pub struct Searches {
    pub saved: Arc<SavedSearches>,
    pub alerts: Arc<dyn SearchAlerts>,
}

/// Shortest and longest alert window.
const MIN_WINDOW: Duration = Duration::from_secs(15);
const MAX_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

pub(crate) fn routes() -> axum::Router<QueryState> {
    axum::Router::new()
        .route("/api/searches", get(list).post(save))
        .route("/api/searches/{id}", delete(remove))
        .route(
            "/api/searches/{id}/alert",
            put(set_alert).delete(remove_alert),
        )
}

async fn list(State(state): State<QueryState>) -> Json<Value> {
    Json(json!({ "searches": state.searches.saved.list() }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaveBody {
    name: String,
    query: String,
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(body)| body)
        .map_err(|rejection| ApiError::BadRequest(format!("the body: {}", rejection.body_text())))
}

async fn save(
    State(state): State<QueryState>,
    request: Result<Json<SaveBody>, JsonRejection>,
) -> Result<(StatusCode, Json<SavedSearch>), ApiError> {
    let SaveBody { name, query } = body(request)?;
    let saved = state.searches.saved.clone();
    let now = sightline_vocab::clock::now_nanos();
    let search = tokio::task::spawn_blocking(move || saved.save(&name, &query, now))
        .await?
        .map_err(bad_request)?;
    Ok((StatusCode::CREATED, Json(search)))
}

async fn remove(
    State(state): State<QueryState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let had_alert = found(&state, &id)?.alert.is_some();
    let saved = state.searches.saved.clone();
    tokio::task::spawn_blocking(move || saved.delete(&id)).await??;
    if had_alert {
        reapply(&state).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertBody {
    /// Fires when more records than this match in the window.
    threshold: f64,
    /// A Prometheus duration; default `1m`.
    #[serde(default)]
    window: Option<String>,
    #[serde(default, rename = "for")]
    for_duration: Option<String>,
    /// One field to count by (`ip_address`, `service`, `resource.<key>`).
    #[serde(default)]
    group_by: Option<String>,
    #[serde(default)]
    severity: Option<String>,
}

async fn set_alert(
    State(state): State<QueryState>,
    Path(id): Path<String>,
    request: Result<Json<AlertBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let request = body(request)?;
    let search = found(&state, &id)?;
    let alert = alert_of(&search, request)?;
    let saved = state.searches.saved.clone();
    let previous = search.alert.clone();
    let (store_id, next) = (id.clone(), Some(alert));
    let updated = tokio::task::spawn_blocking(move || saved.set_alert(&store_id, next))
        .await?
        .map_err(bad_request)?;
    match state
        .searches
        .alerts
        .apply(state.searches.saved.list())
        .await
    {
        Ok(backfill) => Ok(Json(json!({ "search": updated, "backfill": backfill }))),
        Err(error) => {
            // Not applied: the file goes back to what runs.
            let saved = state.searches.saved.clone();
            tokio::task::spawn_blocking(move || saved.set_alert(&id, previous)).await??;
            Err(ApiError::BadRequest(error))
        }
    }
}

async fn remove_alert(
    State(state): State<QueryState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    found(&state, &id)?;
    let saved = state.searches.saved.clone();
    tokio::task::spawn_blocking(move || saved.set_alert(&id, None)).await??;
    reapply(&state).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Applies the saved searches' alerts as the file now has them, after one
/// was removed (which cannot be refused).
async fn reapply(state: &QueryState) -> Result<(), ApiError> {
    state
        .searches
        .alerts
        .apply(state.searches.saved.list())
        .await
        .map(|_| ())
        .map_err(ApiError::Internal)
}

fn found(state: &QueryState, id: &str) -> Result<SavedSearch, ApiError> {
    state
        .searches
        .saved
        .get(id)
        .ok_or_else(|| ApiError::NotFound(format!("saved search {id:?} not found")))
}

/// The store's refusals are the request's fault, except I/O.
fn bad_request(error: sightline_store::StoreError) -> ApiError {
    match error {
        sightline_store::StoreError::InvalidQuery(message)
        | sightline_store::StoreError::TooLarge(message) => ApiError::BadRequest(message),
        other => other.into(),
    }
}

/// Checks an alert request against its search.
fn alert_of(search: &SavedSearch, request: AlertBody) -> Result<SearchAlert, ApiError> {
    if !request.threshold.is_finite() || request.threshold < 0.0 {
        return Err(ApiError::BadRequest(format!(
            "`threshold` must be a number of records, 0 or more (got {})",
            request.threshold
        )));
    }
    let duration = |name: &str, text: Option<&str>, default: &str| {
        sightline_tsdb::promql::parse_duration(text.unwrap_or(default))
            .map_err(|error| ApiError::BadRequest(format!("`{name}`: {error}")))
    };
    let window = duration("window", request.window.as_deref(), "1m")?;
    if !(MIN_WINDOW..=MAX_WINDOW).contains(&window) {
        return Err(ApiError::BadRequest(format!(
            "`window` must be between {} and {}",
            humantime::format_duration(MIN_WINDOW),
            humantime::format_duration(MAX_WINDOW)
        )));
    }
    let for_duration = match request.for_duration.as_deref() {
        None | Some("" | "0" | "0s") => Duration::ZERO,
        text => duration("for", text, "0s")?,
    };
    let group_by = request
        .group_by
        .map(|field| field.trim().to_string())
        .filter(|field| !field.is_empty());
    if let Some(field) = &group_by {
        // The field must be one the aggregations count by (the history).
        if field.contains(',') || field.contains(char::is_whitespace) {
            return Err(ApiError::BadRequest("`group_by` takes one field".into()));
        }
        sightline_store::pipes::check_field(field)
            .map_err(|error| ApiError::BadRequest(format!("`group_by`: {error}")))?;
    }
    let severity = request.severity.unwrap_or_else(|| "warning".into());
    if severity.is_empty()
        || severity.len() > 32
        || !severity
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(ApiError::BadRequest(format!(
            "`severity` must be a short word like `warning` or `critical` (got {severity:?})"
        )));
    }
    // Named after the search and its label: another label is another
    // counter (the old one's series would not match the new rule).
    let metric = match &group_by {
        Some(field) => format!(
            "search_{}_by_{}_total",
            search.id.replace('-', "_"),
            field.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        ),
        None => format!("search_{}_total", search.id.replace('-', "_")),
    };
    if !is_metric_name(&metric) {
        return Err(ApiError::Internal(format!(
            "cannot name a metric after {:?}",
            search.id
        )));
    }
    Ok(SearchAlert {
        metric,
        group_by,
        threshold: request.threshold,
        window_seconds: window.as_secs(),
        for_seconds: for_duration.as_secs(),
        severity,
        created: sightline_vocab::clock::now_nanos(),
    })
}

#[cfg(test)]
impl Searches {
    /// Saved searches in `dir`, without alerts.
    pub(crate) fn in_dir(dir: &std::path::Path) -> Searches {
        std::fs::create_dir_all(dir).unwrap();
        Searches {
            saved: Arc::new(SavedSearches::open(&dir.join("saved-searches.json")).unwrap()),
            alerts: Arc::new(NoAlerts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Method, Request};
    use tower::ServiceExt;

    async fn call(
        state: &QueryState,
        method: Method,
        uri: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = crate::router(state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn searches_are_saved_listed_deleted_and_bad_alerts_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::prometheus::tests::state(dir.path());
        let (status, saved) = call(
            &state,
            Method::POST,
            "/api/searches",
            json!({"name": "Failed logins", "query": "body:\"login failed\""}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{saved}");
        assert_eq!(saved["id"], "failed-logins");
        let (status, error) = call(
            &state,
            Method::POST,
            "/api/searches",
            json!({"name": "broken", "query": "service:(auth"}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            error["error"].as_str().unwrap().contains("position"),
            "{error}"
        );
        let (status, error) =
            call(&state, Method::POST, "/api/searches", json!({"name": "x"})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            error["error"].as_str().unwrap().contains("query"),
            "{error}"
        );

        for (body, expected) in [
            (json!({"threshold": -1}), "`threshold`"),
            (
                json!({"threshold": 10, "window": "5s"}),
                "`window` must be between",
            ),
            (json!({"threshold": 10, "window": "soon"}), "`window`"),
            (json!({"threshold": 10, "group_by": "body"}), "`group_by`"),
            (json!({"threshold": 10, "group_by": "a, b"}), "one field"),
            (
                json!({"threshold": 10, "severity": "very bad"}),
                "`severity`",
            ),
        ] {
            let (status, error) = call(
                &state,
                Method::PUT,
                "/api/searches/failed-logins/alert",
                body.clone(),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
            assert!(
                error["error"].as_str().unwrap().contains(expected),
                "{body}: {error}"
            );
        }
        // A valid alert this server cannot apply: refused, and not kept.
        let (status, error) = call(
            &state,
            Method::PUT,
            "/api/searches/failed-logins/alert",
            json!({"threshold": 10, "group_by": "ip_address"}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            error["error"].as_str().unwrap().contains("no alerts"),
            "{error}"
        );
        let (status, list) = call(&state, Method::GET, "/api/searches", Value::Null).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["searches"][0]["name"], "Failed logins");
        assert!(list["searches"][0].get("alert").is_none(), "{list}");

        let (status, _) = call(
            &state,
            Method::PUT,
            "/api/searches/nope/alert",
            json!({"threshold": 1}),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = call(
            &state,
            Method::DELETE,
            "/api/searches/failed-logins",
            Value::Null,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (_, list) = call(&state, Method::GET, "/api/searches", Value::Null).await;
        assert_eq!(list["searches"], json!([]));
    }
}
