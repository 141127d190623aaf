//! Bearer-token authentication: one token set for ingest, one for queries.
//!
//! Every receiver (OTLP/gRPC, OTLP/HTTP, `/elastic/_bulk`,
//! `/api/v1/write`) asks for an ingest token; the query API, the UI and
//! the scrape-target listing ask for a query token. `/health`, the probes
//! (`/-/healthy`, `/-/ready`) and `/metrics` stay open so that probes and Prometheus-style scrapers work
//! without credentials (`/metrics` holds operational counters only).
//! A scope without tokens is open, which is why [`warn_if_exposed`] tells
//! the operator when an open scope listens beyond loopback.
//!
//! Tokens are compared in constant time and never logged: [`Secret`]'s
//! `Debug` prints a placeholder.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::CollectorConfig;

/// A token given on the command line or in the environment; `Debug` never
/// prints it.
pub(crate) use sightline_vocab::secret::Secret;

/// The tokens accepted for one scope; several may be valid at once so that
/// keys can be rotated.
pub(crate) struct Tokens {
    tokens: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Tokens({} redacted)", self.tokens.len())
    }
}

impl Tokens {
    /// Tokens from a file's lines (blank lines and `#` comments skipped)
    /// plus an inline token; `None` when neither gives one.
    fn load(
        file: Option<&Path>,
        inline: Option<&Secret>,
        what: &str,
    ) -> anyhow::Result<Option<Self>> {
        let mut tokens = Vec::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!("failed to read the {what} token file {}", path.display())
            })?;
            tokens.extend(parse_token_lines(&text));
            if tokens.is_empty() {
                anyhow::bail!("the {what} token file {} holds no token", path.display());
            }
        }
        if let Some(token) = inline {
            let token = token.expose().trim();
            if token.is_empty() {
                anyhow::bail!("the {what} token is set but empty");
            }
            tokens.push(token.as_bytes().to_vec());
        }
        Ok((!tokens.is_empty()).then_some(Tokens { tokens }))
    }

    /// Whether `given` is one of the tokens; every token is compared in
    /// full, in time independent of where the bytes differ.
    pub(crate) fn accepts(&self, given: &[u8]) -> bool {
        self.tokens
            .iter()
            .fold(false, |found, token| found | constant_time_eq(token, given))
    }
}

fn parse_token_lines(text: &str) -> impl Iterator<Item = Vec<u8>> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.as_bytes().to_vec())
}

fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    if expected.len() != given.len() {
        return false;
    }
    let difference = expected
        .iter()
        .zip(given)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b));
    std::hint::black_box(difference) == 0
}

/// Which token a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Ingest,
    Query,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Query => "query",
        }
    }
}

/// The token sets of both scopes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Auth {
    ingest: Option<Arc<Tokens>>,
    query: Option<Arc<Tokens>>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Missing(Scope),
    Malformed(Scope),
    Invalid(Scope),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Missing(scope) => write!(
                formatter,
                "missing credentials: send `authorization: Bearer <{} token>`",
                scope.name()
            ),
            Refusal::Malformed(scope) => write!(
                formatter,
                "malformed authorization header: expected `Bearer <{} token>`",
                scope.name()
            ),
            Refusal::Invalid(scope) => write!(formatter, "invalid {} token", scope.name()),
        }
    }
}

impl Auth {
    /// Token sets from the collector's flags and environment.
    pub(crate) fn from_config(config: &CollectorConfig) -> anyhow::Result<Self> {
        let ingest = Tokens::load(
            config.auth.ingest_token_file.as_deref(),
            config.auth.ingest_token.as_ref(),
            "ingest",
        )?;
        let query = Tokens::load(
            config.auth.query_token_file.as_deref(),
            config.auth.query_token.as_ref(),
            "query",
        )?;
        Ok(Auth {
            ingest: ingest.map(Arc::new),
            query: query.map(Arc::new),
        })
    }

    fn tokens(&self, scope: Scope) -> Option<&Tokens> {
        match scope {
            Scope::Ingest => self.ingest.as_deref(),
            Scope::Query => self.query.as_deref(),
        }
    }

    /// Checks an `authorization` header value against a scope's tokens; a
    /// scope without tokens accepts everything.
    pub(crate) fn check(&self, scope: Scope, authorization: Option<&[u8]>) -> Result<(), Refusal> {
        let Some(tokens) = self.tokens(scope) else {
            return Ok(());
        };
        let Some(value) = authorization else {
            return Err(Refusal::Missing(scope));
        };
        let token = bearer_token(value).ok_or(Refusal::Malformed(scope))?;
        if tokens.accepts(token) {
            Ok(())
        } else {
            Err(Refusal::Invalid(scope))
        }
    }

    /// The query token a cluster node sends when it calls another node's
    /// internal API on its query port (the nodes share their tokens).
    pub(crate) fn peer_token(&self) -> Option<String> {
        let tokens = self.query.as_deref()?;
        let token = tokens.tokens.first()?;
        Some(String::from_utf8_lossy(token).into_owned())
    }

    /// A tonic interceptor that asks for the ingest token.
    pub(crate) fn grpc_ingest(&self) -> GrpcIngestAuth {
        GrpcIngestAuth { auth: self.clone() }
    }
}

/// `Bearer <token>`, the scheme matched case-insensitively.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Refuses OTLP/gRPC exports without a valid ingest token
/// (`UNAUTHENTICATED`).
#[derive(Debug, Clone)]
pub(crate) struct GrpcIngestAuth {
    auth: Auth,
}

impl tonic::service::Interceptor for GrpcIngestAuth {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes());
        match self.auth.check(Scope::Ingest, authorization) {
            Ok(()) => Ok(request),
            Err(refusal) => Err(tonic::Status::unauthenticated(refusal.to_string())),
        }
    }
}

/// The scope a path of the query port needs, `None` for open paths.
fn http_scope(path: &str) -> Option<Scope> {
    match path {
        // The UI's page and code hold no data; every call they make for
        // data needs the query token, which the page asks the user for.
        "/health" | "/-/healthy" | "/-/ready" | "/metrics" | "/" => None,
        path if path.starts_with("/ui/") => None,
        "/api/v1/write" => Some(Scope::Ingest),
        path if path == "/elastic" || path.starts_with("/elastic/") => Some(Scope::Ingest),
        _ => Some(Scope::Query),
    }
}

/// Middleware for the query port: ingest routes ask for the ingest token,
/// everything else except `/health`, the probes, `/metrics` and the UI's static page and
/// assets for the query token.
pub(crate) async fn http_layer(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    match http_scope(request.uri().path()) {
        None => next.run(request).await,
        Some(scope) => checked(&auth, scope, request, next).await,
    }
}

/// Middleware for the OTLP/HTTP port: every route asks for the ingest token.
pub(crate) async fn ingest_layer(
    State(auth): State<Auth>,
    request: Request,
    next: Next,
) -> Response {
    checked(&auth, Scope::Ingest, request, next).await
}

async fn checked(auth: &Auth, scope: Scope, request: Request, next: Next) -> Response {
    match auth.check(scope, authorization(request.headers())) {
        Ok(()) => next.run(request).await,
        Err(refusal) => unauthorized(refusal),
    }
}

fn authorization(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
}

fn unauthorized(refusal: Refusal) -> Response {
    let body = serde_json::json!({ "status": "error", "errorType": "unauthorized", "error": refusal.to_string() });
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(body),
    )
        .into_response()
}

/// Warns for each listener that accepts a scope without tokens on a
/// non-loopback address.
pub(crate) fn warn_if_exposed(auth: &Auth, listeners: &[(&str, SocketAddr, Scope)]) {
    for (name, address, scope) in listeners {
        if auth.tokens(*scope).is_none() && !address.ip().is_loopback() {
            tracing::warn!(
                listener = name,
                address = %address,
                scope = scope.name(),
                "listening beyond loopback without a {} token: anyone who reaches this address can use it; set --{}-token-file or SIGHTLINE_{}_TOKEN",
                scope.name(),
                scope.name(),
                scope.name().to_uppercase(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(ingest: &[&str], query: &[&str]) -> Auth {
        let tokens = |list: &[&str]| {
            (!list.is_empty()).then(|| {
                Arc::new(Tokens {
                    tokens: list.iter().map(|token| token.as_bytes().to_vec()).collect(),
                })
            })
        };
        Auth {
            ingest: tokens(ingest),
            query: tokens(query),
        }
    }

    #[test]
    fn each_scope_accepts_only_its_own_tokens() {
        let auth = auth(&["in-old", "in-new"], &["q"]);
        assert_eq!(auth.check(Scope::Ingest, Some(b"Bearer in-old")), Ok(()));
        assert_eq!(auth.check(Scope::Ingest, Some(b"bearer in-new")), Ok(()));
        assert_eq!(
            auth.check(Scope::Query, Some(b"Bearer in-new")),
            Err(Refusal::Invalid(Scope::Query))
        );
        assert_eq!(
            auth.check(Scope::Ingest, Some(b"Bearer in-ne")),
            Err(Refusal::Invalid(Scope::Ingest))
        );
        assert_eq!(
            auth.check(Scope::Query, None),
            Err(Refusal::Missing(Scope::Query))
        );
        assert_eq!(
            auth.check(Scope::Query, Some(b"Basic cTpx")),
            Err(Refusal::Malformed(Scope::Query))
        );
        assert_eq!(
            auth.check(Scope::Query, Some(b"Bearer ")),
            Err(Refusal::Malformed(Scope::Query))
        );
    }

    #[test]
    fn a_scope_without_tokens_is_open() {
        let auth = auth(&[], &["q"]);
        assert_eq!(auth.check(Scope::Ingest, None), Ok(()));
        assert!(auth.check(Scope::Query, None).is_err());
    }

    #[test]
    fn token_files_skip_blank_lines_and_comments() {
        let tokens: Vec<Vec<u8>> =
            parse_token_lines("# rotated 2026-11\n  new-token  \n\nold-token\n").collect();
        assert_eq!(tokens, vec![b"new-token".to_vec(), b"old-token".to_vec()]);
    }

    #[test]
    fn paths_map_to_scopes() {
        assert_eq!(http_scope("/health"), None);
        assert_eq!(http_scope("/-/healthy"), None);
        assert_eq!(http_scope("/-/ready"), None);
        assert_eq!(http_scope("/metrics"), None);
        assert_eq!(http_scope("/elastic/_bulk"), Some(Scope::Ingest));
        assert_eq!(http_scope("/elastic"), Some(Scope::Ingest));
        assert_eq!(http_scope("/elasticsearch"), Some(Scope::Query));
        assert_eq!(http_scope("/api/v1/write"), Some(Scope::Ingest));
        assert_eq!(http_scope("/api/v1/query"), Some(Scope::Query));
        assert_eq!(http_scope("/"), None);
        assert_eq!(http_scope("/ui/app.js"), None);
        assert_eq!(http_scope("/api/dashboards"), Some(Scope::Query));
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let secret: Secret = "hunter2".parse().unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
