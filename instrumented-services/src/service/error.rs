use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Every way a handler can fail, mapped to an HTTP status and a JSON body
/// `{"error": "<message>"}`, so no request ends without a proper response.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request body is not what the route expects.
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// The order names a product the catalog does not have.
    #[error("unknown product {0}")]
    UnknownProduct(String),
    /// No valid session token.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The token is valid but names someone else.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The thing asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The client sent too many requests.
    #[error("rate limit exceeded, retry later")]
    TooManyRequests,
    /// Not enough stock.
    #[error("out of stock: {0}")]
    OutOfStock(String),
    /// The payment provider declined the charge.
    #[error("payment declined: {0}")]
    PaymentDeclined(String),
    /// A downstream service could not be reached or answered garbage.
    #[error("{service} service unavailable: {message}")]
    Upstream {
        /// The service that failed.
        service: &'static str,
        /// What went wrong.
        message: String,
    },
}

impl AppError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnknownProduct(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::OutOfStock(_) => StatusCode::CONFLICT,
            Self::PaymentDeclined(_) => StatusCode::PAYMENT_REQUIRED,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

impl From<JsonRejection> for AppError {
    fn from(rejection: JsonRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (self.status(), Json(json!({ "error": self.to_string() }))).into_response()
    }
}
