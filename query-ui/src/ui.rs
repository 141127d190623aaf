//! The browser UI: static assets compiled into the binary, and the Grafana
//! dashboards of `dashboards/*.json` it renders.
//!
//! - `GET /` and `GET /ui/{file}`: the page, its ES modules and styles, and
//!   the vendored uPlot charting library;
//! - `GET /api/dashboards`: `{"dashboards": [{uid, title, file, tags}]}`;
//! - `GET /api/dashboards/{uid}`: the dashboard JSON (404 when unknown).

use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;

use crate::QueryState;
use crate::error::ApiError;
use crate::response::{DashboardEntry, DashboardList};

include!(concat!(env!("OUT_DIR"), "/dashboards.rs"));

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
    ("traces.js", JS, include_str!("assets/traces.js")),
    ("request.js", JS, include_str!("assets/request.js")),
    ("services.js", JS, include_str!("assets/services.js")),
    ("dashboards.js", JS, include_str!("assets/dashboards.js")),
    ("alerts.js", JS, include_str!("assets/alerts.js")),
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
        .route("/api/dashboards", get(list_dashboards))
        .route("/api/dashboards/{uid}", get(get_dashboard))
}

async fn ui_file(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => asset(content_type, body),
        None => (StatusCode::NOT_FOUND, format!("no UI file {file}")).into_response(),
    }
}

/// A dashboard file's JSON: the dashboard itself, or Grafana's export
/// envelope `{"dashboard": {...}}` unwrapped.
fn parse_dashboard(text: &str) -> Result<Value, String> {
    let mut value: Value = serde_json::from_str(text).map_err(|error| error.to_string())?;
    if value.get("panels").is_none() && value.get("dashboard").is_some() {
        value = value["dashboard"].take();
    }
    if !value.is_object() {
        return Err("not a JSON object".into());
    }
    Ok(value)
}

/// The uid of a dashboard: its `uid`, or the file name without `.json`.
fn dashboard_uid(file: &str, dashboard: &Value) -> String {
    dashboard["uid"]
        .as_str()
        .filter(|uid| !uid.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| file.trim_end_matches(".json").to_string())
}

async fn list_dashboards() -> Json<DashboardList> {
    let dashboards = DASHBOARDS
        .iter()
        .map(|(file, text)| match parse_dashboard(text) {
            Ok(dashboard) => DashboardEntry {
                uid: dashboard_uid(file, &dashboard),
                title: dashboard["title"].as_str().unwrap_or(file).to_string(),
                file,
                tags: Some(
                    dashboard
                        .get("tags")
                        .cloned()
                        .unwrap_or(Value::Array(Vec::new())),
                ),
                error: None,
            },
            Err(error) => DashboardEntry {
                uid: file.trim_end_matches(".json").to_string(),
                title: file.to_string(),
                file,
                tags: None,
                error: Some(format!("dashboards/{file}: {error}")),
            },
        })
        .collect();
    Json(DashboardList { dashboards })
}

async fn get_dashboard(Path(uid): Path<String>) -> Result<Json<Value>, ApiError> {
    for (file, text) in DASHBOARDS {
        let dashboard = match parse_dashboard(text) {
            Ok(dashboard) => dashboard,
            Err(error) if file.trim_end_matches(".json") == uid => {
                return Err(ApiError::BadRequest(format!("dashboards/{file}: {error}")));
            }
            Err(_) => continue,
        };
        if dashboard_uid(file, &dashboard) == uid {
            return Ok(Json(dashboard));
        }
    }
    Err(ApiError::NotFound(format!("no dashboard with uid {uid}")))
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

    #[test]
    fn dashboards_are_read_bare_or_in_grafanas_export_envelope() {
        let bare = parse_dashboard(r#"{"uid": "shop", "title": "Shop", "panels": []}"#).unwrap();
        assert_eq!(dashboard_uid("shop.json", &bare), "shop");
        let wrapped =
            parse_dashboard(r#"{"dashboard": {"title": "Node", "panels": []}, "meta": {}}"#)
                .unwrap();
        assert_eq!(wrapped["title"], "Node");
        assert_eq!(
            dashboard_uid("node.json", &wrapped),
            "node",
            "the file name without a uid"
        );
        let error = parse_dashboard("{\"panels\": [").unwrap_err();
        assert!(error.contains("line 1"), "{error}");
        assert!(parse_dashboard("[1]").is_err());
    }

    #[tokio::test]
    async fn every_embedded_dashboard_is_listed_and_served_by_uid() {
        let list = serde_json::to_value(list_dashboards().await.0).unwrap();
        let listed = list["dashboards"].as_array().unwrap();
        assert_eq!(listed.len(), DASHBOARDS.len());
        for entry in listed {
            assert!(entry.get("error").is_none(), "{entry}");
            let uid = entry["uid"].as_str().unwrap().to_string();
            let dashboard = get_dashboard(Path(uid.clone())).await.unwrap().0;
            assert_eq!(
                dashboard_uid(entry["file"].as_str().unwrap(), &dashboard),
                uid
            );
        }
        assert!(matches!(
            get_dashboard(Path("no-such-dashboard".into())).await,
            Err(ApiError::NotFound(_))
        ));
        let missing = ui_file(Path("nope.js".into())).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let vendored = ui_file(Path("vendor/uPlot.esm.js".into())).await;
        assert_eq!(vendored.status(), StatusCode::OK);
    }
}
