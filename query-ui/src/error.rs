use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sightline_store::StoreError;

use crate::response::ErrorBody;

/// The one error type of the query API: every handler error becomes a JSON
/// body `{"error": "..."}` with a status that says whose fault it was.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// A query that ran past its time limit, or whose data could not be
    /// reached (503).
    #[error("{0}")]
    Timeout(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::InvalidQuery(message) => {
                ApiError::BadRequest(format!("invalid query: {message}"))
            }
            StoreError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            // A query over its limits: the caller narrows it.
            StoreError::TooLarge(message) => ApiError::BadRequest(message),
            // 503, as a query past its time: retry later.
            StoreError::Unavailable(why) => ApiError::Timeout(why),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(error: tokio::task::JoinError) -> ApiError {
        ApiError::Internal(format!("query task failed: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "query failed");
        }
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}
