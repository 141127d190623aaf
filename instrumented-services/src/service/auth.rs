//! The auth service: logins and session tokens, kept in an in-memory
//! session cache with a time to live.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::metrics::{LOGINS_TOTAL, TOKEN_CHECKS_TOTAL};
use super::{AppError, AppState};

/// How long a session lives.
const SESSION_TTL: Duration = Duration::from_secs(30 * 60);

/// The most sessions kept; the oldest are evicted beyond it.
const MAX_SESSIONS: usize = 10_000;

/// Every demo user's password (it is a demo).
pub(crate) const DEMO_PASSWORD: &str = "demo";

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/login", post(login))
        .route("/sessions/verify", get(verify))
}

struct Session {
    user_id: String,
    created: Instant,
}

/// The session cache.
#[derive(Default)]
pub(super) struct AuthState {
    sessions: Mutex<HashMap<String, Session>>,
}

impl AuthState {
    fn insert(&self, token: String, user_id: String) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, session| session.created.elapsed() < SESSION_TTL);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, session)| session.created)
                .map(|(token, _)| token.clone())
        {
            sessions.remove(&oldest);
        }
        let created = Instant::now();
        sessions.insert(token, Session { user_id, created });
    }

    fn user_of(&self, token: &str) -> Option<String> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(token)
            .filter(|session| session.created.elapsed() < SESSION_TTL)
            .map(|session| session.user_id.clone())
    }
}

/// `POST /login` body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginRequest {
    pub(crate) user_id: String,
    pub(crate) password: String,
}

#[derive(Debug, Serialize)]
struct LoginAnswer {
    token: String,
    user_id: String,
    expires_in_s: u64,
}

async fn login(
    State(state): State<Arc<AppState>>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<LoginAnswer>), AppError> {
    let Json(request) = body?;
    if request.user_id.is_empty() || request.user_id.len() > 64 {
        return Err(AppError::BadRequest(
            "user_id must have 1 to 64 characters".into(),
        ));
    }
    // Hashing a password takes a moment.
    tokio::time::sleep(Duration::from_millis(rand::random_range(3..12))).await;
    if request.password != DEMO_PASSWORD {
        state
            .metrics
            .inc(LOGINS_TOTAL, &[("outcome", "bad_password")]);
        tracing::warn!(user_id = %request.user_id, "login refused: bad password");
        return Err(AppError::Unauthorized("wrong user or password".into()));
    }
    let token = crate::random_hex(32);
    state.auth.insert(token.clone(), request.user_id.clone());
    state.metrics.inc(LOGINS_TOTAL, &[("outcome", "ok")]);
    tracing::info!(user_id = %request.user_id, "user logged in");
    let answer = LoginAnswer {
        token,
        user_id: request.user_id,
        expires_in_s: SESSION_TTL.as_secs(),
    };
    Ok((StatusCode::OK, Json(answer)))
}

/// The bearer token of an `Authorization` header.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// `GET /sessions/verify` with `Authorization: Bearer <token>`: the
/// session's user, or 401.
async fn verify(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, AppError> {
    let Some(token) = bearer_token(&headers) else {
        state
            .metrics
            .inc(TOKEN_CHECKS_TOTAL, &[("outcome", "missing")]);
        return Err(AppError::Unauthorized("no bearer token".into()));
    };
    match state.auth.user_of(token) {
        Some(user_id) => {
            state
                .metrics
                .inc(TOKEN_CHECKS_TOTAL, &[("outcome", "valid")]);
            tracing::info!(%user_id, "session valid");
            Ok(Json(serde_json::json!({ "user_id": user_id })))
        }
        None => {
            state
                .metrics
                .inc(TOKEN_CHECKS_TOTAL, &[("outcome", "invalid")]);
            tracing::warn!("unknown or expired session token");
            Err(AppError::Unauthorized("unknown or expired session".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_found_by_token_and_bearer_headers_parse() {
        let state = AuthState::default();
        state.insert("t1".into(), "u1".into());
        assert_eq!(state.user_of("t1").as_deref(), Some("u1"));
        assert_eq!(state.user_of("t2"), None);

        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
    }
}
