//! The browser UI: static assets compiled into the binary (the dashboards
//! it renders are read at run time, see [`crate::dashboards`]).
//!
//! - `GET /` and `GET /ui/{file}`: the page, its ES modules and styles, and
//!   the vendored uPlot charting library.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::QueryState;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");

/// Files under `/ui/`: name, content type, body. The JavaScript is plain ES
/// modules; there is no build step.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", JS, APP_JS),
    ("app.css", CSS, include_str!("assets/app.css")),
    ("util.js", JS, include_str!("assets/util.js")),
    ("chart.js", JS, include_str!("assets/chart.js")),
    ("logs.js", JS, include_str!("assets/logs.js")),
    ("saved.js", JS, include_str!("assets/saved.js")),
    ("traces.js", JS, include_str!("assets/traces.js")),
    ("request.js", JS, include_str!("assets/request.js")),
    ("services.js", JS, include_str!("assets/services.js")),
    ("dashboards.js", JS, include_str!("assets/dashboards.js")),
    ("alerts.js", JS, include_str!("assets/alerts.js")),
    ("explore.js", JS, include_str!("assets/explore.js")),
    ("compare.js", JS, include_str!("assets/compare.js")),
    ("incident.js", JS, include_str!("assets/incident.js")),
    ("perf.js", JS, include_str!("assets/perf.js")),
    (
        "vendor/uPlot.esm.js",
        JS,
        include_str!("assets/vendor/uPlot.esm.js"),
    ),
    (
        "vendor/uPlot.min.css",
        CSS,
        include_str!("assets/vendor/uPlot.min.css"),
    ),
];

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// No inline script or style, nothing from other origins, no framing.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub(crate) fn routes() -> Router<QueryState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route("/ui/{*file}", get(ui_file))
        .route("/api/dashboards", get(crate::dashboards::list))
        .route("/api/dashboards/{uid}", get(crate::dashboards::get))
}

async fn ui_file(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => asset(content_type, body),
        None => (StatusCode::NOT_FOUND, format!("no UI file {file}")).into_response(),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(crate) async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log content reaches the page only as text: the UI never parses HTML
    /// from data, so `<script>` in a log line stays inert.
    #[test]
    fn the_ui_never_inserts_html_strings() {
        let ours = ASSETS
            .iter()
            .filter(|(name, content_type, _)| *content_type == JS && !name.starts_with("vendor/"));
        let mut checked = 0;
        for (name, _, body) in ours {
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
            ] {
                assert!(!body.contains(sink), "{name} uses {sink}");
            }
            checked += 1;
        }
        assert!(checked >= 9, "every module is checked");
        assert!(
            !INDEX_HTML.contains("<script>"),
            "no inline scripts in index.html"
        );
        assert!(
            !INDEX_HTML.contains("style="),
            "no inline styles in index.html"
        );
    }

    #[tokio::test]
    async fn unknown_ui_files_are_404_and_vendored_ones_served() {
        let missing = ui_file(Path("nope.js".into())).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let vendored = ui_file(Path("vendor/uPlot.esm.js".into())).await;
        assert_eq!(vendored.status(), StatusCode::OK);
    }
}
