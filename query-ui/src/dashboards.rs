//! The Grafana dashboards the UI renders, read at run time from a directory
//! (`--dashboards-dir`; a mounted ConfigMap on Kubernetes), as Grafana's
//! file provisioning does. The directory is read again on every request, so
//! an added, changed or removed file shows without a restart, and a
//! ConfigMap update (kubelet swaps its `..data` symlink) is seen at once.
//!
//! - `GET /api/dashboards`: `{"directory", "dashboards": [{uid, title, file, tags}]}`,
//!   by file name; a file that does not parse is listed with its `error`;
//! - `GET /api/dashboards/{uid}`: the dashboard JSON (404 when unknown).
//!
//! Files are `*.json` directly in the directory (names starting with `.`
//! skipped, symlinks followed); each is bounded ([`MAX_DASHBOARD_BYTES`]) and
//! so is their number ([`MAX_DASHBOARDS`]), so a stray file cannot make a
//! request large.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use serde_json::Value;

use crate::QueryState;
use crate::error::ApiError;
use crate::response::{DashboardEntry, DashboardList};

/// Largest dashboard file read; Grafana's biggest exports are a few hundred KiB.
pub(crate) const MAX_DASHBOARD_BYTES: u64 = 4 * 1024 * 1024;

/// Most dashboard files read from the directory (by name order).
pub(crate) const MAX_DASHBOARDS: usize = 500;

/// Where the dashboards are: a directory, or none configured.
#[derive(Debug, Clone, Default)]
pub struct DashboardDir(Option<Arc<PathBuf>>);

impl DashboardDir {
    pub fn new(path: impl Into<PathBuf>) -> DashboardDir {
        DashboardDir(Some(Arc::new(path.into())))
    }

    pub fn path(&self) -> Option<&Path> {
        self.0.as_deref().map(PathBuf::as_path)
    }
}

/// One file of the directory: its name and its dashboard, or why not.
struct DashboardFile {
    name: String,
    dashboard: Result<Value, String>,
}

/// Reads every dashboard file of `dir`, by name.
fn read_dir(dir: &Path) -> Result<Vec<DashboardFile>, ApiError> {
    let entries = std::fs::read_dir(dir).map_err(|error| {
        ApiError::Internal(format!(
            "cannot read the dashboards directory {}: {error}",
            dir.display()
        ))
    })?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.ends_with(".json") && !name.starts_with('.'))
        .collect();
    names.sort();
    names.truncate(MAX_DASHBOARDS);
    Ok(names
        .into_iter()
        .filter_map(|name| {
            let path = dir.join(&name);
            // Follows symlinks: a ConfigMap's files are links into `..data`.
            let metadata = std::fs::metadata(&path).ok()?;
            if !metadata.is_file() {
                return None;
            }
            let dashboard = if metadata.len() > MAX_DASHBOARD_BYTES {
                Err(format!(
                    "{} bytes, more than the {MAX_DASHBOARD_BYTES} a dashboard may have",
                    metadata.len()
                ))
            } else {
                std::fs::read_to_string(&path)
                    .map_err(|error| error.to_string())
                    .and_then(|text| parse_dashboard(&text))
            };
            Some(DashboardFile { name, dashboard })
        })
        .collect())
}

/// Reads the configured directory off the async workers; none configured
/// reads as empty.
async fn read_configured(dir: &DashboardDir) -> Result<Vec<DashboardFile>, ApiError> {
    let Some(dir) = dir.0.clone() else {
        return Ok(Vec::new());
    };
    tokio::task::spawn_blocking(move || read_dir(&dir)).await?
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

pub(crate) async fn list(State(state): State<QueryState>) -> Result<Json<DashboardList>, ApiError> {
    let files = read_configured(&state.dashboards).await?;
    let dashboards = files
        .into_iter()
        .map(|DashboardFile { name, dashboard }| match dashboard {
            Ok(dashboard) => DashboardEntry {
                uid: dashboard_uid(&name, &dashboard),
                title: dashboard["title"].as_str().unwrap_or(&name).to_string(),
                tags: Some(
                    dashboard
                        .get("tags")
                        .cloned()
                        .unwrap_or(Value::Array(Vec::new())),
                ),
                error: None,
                file: name,
            },
            Err(error) => DashboardEntry {
                uid: name.trim_end_matches(".json").to_string(),
                title: name.clone(),
                tags: None,
                error: Some(format!("{name}: {error}")),
                file: name,
            },
        })
        .collect();
    Ok(Json(DashboardList {
        directory: state
            .dashboards
            .path()
            .map(|path| path.display().to_string()),
        dashboards,
    }))
}

pub(crate) async fn get(
    State(state): State<QueryState>,
    UrlPath(uid): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    for DashboardFile { name, dashboard } in read_configured(&state.dashboards).await? {
        let dashboard = match dashboard {
            Ok(dashboard) => dashboard,
            Err(error) if name.trim_end_matches(".json") == uid => {
                return Err(ApiError::BadRequest(format!("{name}: {error}")));
            }
            Err(_) => continue,
        };
        if dashboard_uid(&name, &dashboard) == uid {
            return Ok(Json(dashboard));
        }
    }
    Err(ApiError::NotFound(format!("no dashboard with uid {uid}")))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// What the repository ships in `dashboards/` is listed without an
    /// error and served by uid.
    #[test]
    fn every_shipped_dashboard_is_listed_and_served_by_uid() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
        let files = read_dir(&shipped).unwrap();
        assert!(files.len() >= 4, "{} dashboards", files.len());
        let mut uids = std::collections::BTreeSet::new();
        for file in files {
            let dashboard = file
                .dashboard
                .unwrap_or_else(|error| panic!("dashboards/{}: {error}", file.name));
            assert!(
                dashboard["panels"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty())
            );
            assert!(
                uids.insert(dashboard_uid(&file.name, &dashboard)),
                "uids are unique"
            );
        }
    }

    /// The directory is read on every request: a file added, changed or
    /// broken shows at the next one; symlinks (a ConfigMap's layout) are
    /// followed, hidden entries and other files skipped, big files refused.
    #[test]
    fn the_directory_is_read_again_on_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("a.json", r#"{"uid": "a", "title": "First", "panels": []}"#);
        write("notes.txt", "not a dashboard");
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        write("..data/b.json", r#"{"title": "Linked", "panels": []}"#);
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path().join("..data/b.json"), dir.path().join("b.json"))
            .unwrap();
        let titles = |files: Vec<DashboardFile>| -> Vec<String> {
            files
                .into_iter()
                .map(|file| match file.dashboard {
                    Ok(dashboard) => dashboard["title"].as_str().unwrap().to_string(),
                    Err(error) => format!("error: {error}"),
                })
                .collect()
        };
        assert_eq!(titles(read_dir(dir.path()).unwrap()), ["First", "Linked"]);

        write(
            "a.json",
            r#"{"uid": "a", "title": "Renamed", "panels": []}"#,
        );
        write("c.json", "{\"title\": ");
        let now = titles(read_dir(dir.path()).unwrap());
        assert_eq!(now[..2], ["Renamed", "Linked"]);
        assert!(now[2].starts_with("error: EOF"), "{now:?}");

        let big = format!(
            r#"{{"title": "big", "panels": [], "pad": "{}"}}"#,
            "x".repeat(MAX_DASHBOARD_BYTES as usize)
        );
        write("c.json", &big);
        let now = titles(read_dir(dir.path()).unwrap());
        assert!(now[2].contains("more than the"), "{now:?}");

        let error = read_dir(&dir.path().join("missing")).err().unwrap();
        assert!(error.to_string().contains("missing"), "{error}");
    }
}
