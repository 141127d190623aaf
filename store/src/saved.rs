//! Saved searches: named log queries kept server-side, in one versioned
//! JSON file of the data directory (`<data-dir>/saved-searches.json`),
//! rewritten whole (temporary file, fsync, rename) at every change.
//!
//! ```json
//! {"version": 1, "searches": [{"id": "failed-logins", "name": "failed logins",
//!   "query": "body:\"login failed\"", "created": 1700000000000000000,
//!   "alert": {"metric": "search_failed_logins_total", "group_by": "ip_address",
//!             "threshold": 10, "window_seconds": 60, "for_seconds": 0,
//!             "severity": "warning", "created": 1700000000000000000}}]}
//! ```
//!
//! A search may carry an alert: what the metrics pipeline turns into a
//! log-derived counter and an alert rule. This module only keeps the data
//! and checks what it can alone (names, sizes, the query's syntax); what an
//! alert means is the metrics pipeline's business.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// The file's format; a newer file is refused rather than rewritten.
pub const SAVED_SEARCHES_FORMAT_VERSION: u32 = 1;
/// Most saved searches one data directory keeps.
pub const MAX_SAVED_SEARCHES: usize = 1000;
/// Longest name, in bytes.
pub const MAX_NAME_BYTES: usize = 200;
/// Longest query, in bytes.
pub const MAX_QUERY_BYTES: usize = 8192;

/// One saved search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedSearch {
    /// Made from the name once, unique, stable: URLs use it.
    pub id: String,
    pub name: String,
    /// The log query as written, pipes included.
    pub query: String,
    /// When it was saved, in nanoseconds since the epoch.
    pub created: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<SearchAlert>,
}

/// An alert made from a saved search: a counter of the records its query
/// matches (per value of `group_by`) and a rule over that counter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchAlert {
    /// The counter's metric name.
    pub metric: String,
    /// The one field the counter is labelled by, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    /// Fires when more records than this match within the window.
    pub threshold: f64,
    pub window_seconds: u64,
    /// How long the condition must hold before the alert fires.
    #[serde(default)]
    pub for_seconds: u64,
    pub severity: String,
    /// When it was made, in nanoseconds since the epoch: the counter counts
    /// acknowledged records from then on, and its history before comes
    /// from the stored records (the backfill).
    pub created: i64,
}

#[derive(Serialize, Deserialize)]
struct FileDoc {
    version: u32,
    searches: Vec<SavedSearch>,
}

/// The saved searches of one data directory; every change is on disk
/// before the call returns.
#[derive(Debug)]
pub struct SavedSearches {
    path: PathBuf,
    searches: Mutex<Vec<SavedSearch>>,
}

impl SavedSearches {
    /// Opens the file at `path` (none yet: no searches). A file this
    /// version cannot read is an error that names it.
    pub fn open(path: &Path) -> Result<SavedSearches> {
        let searches = match std::fs::read(path) {
            Ok(bytes) => {
                let doc: FileDoc = serde_json::from_slice(&bytes).map_err(|error| {
                    StoreError::CorruptDocument(format!("{}: {error}", path.display()))
                })?;
                if doc.version > SAVED_SEARCHES_FORMAT_VERSION {
                    return Err(StoreError::CorruptDocument(format!(
                        "{}: format {} is newer than this collector reads ({SAVED_SEARCHES_FORMAT_VERSION})",
                        path.display(),
                        doc.version
                    )));
                }
                doc.searches
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(error.into()),
        };
        Ok(SavedSearches {
            path: path.to_path_buf(),
            searches: Mutex::new(searches),
        })
    }

    /// Every saved search, in the order saved.
    pub fn list(&self) -> Vec<SavedSearch> {
        self.lock().clone()
    }

    pub fn get(&self, id: &str) -> Option<SavedSearch> {
        self.lock().iter().find(|search| search.id == id).cloned()
    }

    /// Saves a new search; `now` is its creation time. Refuses an empty or
    /// taken name, an invalid query and more than [`MAX_SAVED_SEARCHES`].
    pub fn save(&self, name: &str, query: &str, now: i64) -> Result<SavedSearch> {
        let name = name.trim();
        if name.is_empty() {
            return Err(StoreError::InvalidQuery(
                "a saved search needs a name".into(),
            ));
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(StoreError::TooLarge(format!(
                "the name is {} bytes; at most {MAX_NAME_BYTES}",
                name.len()
            )));
        }
        if query.len() > MAX_QUERY_BYTES {
            return Err(StoreError::TooLarge(format!(
                "the query is {} bytes; at most {MAX_QUERY_BYTES}",
                query.len()
            )));
        }
        check_query(query)?;
        let mut searches = self.lock();
        if searches.iter().any(|search| search.name == name) {
            return Err(StoreError::InvalidQuery(format!(
                "a saved search named {name:?} exists; delete it or choose another name"
            )));
        }
        if searches.len() >= MAX_SAVED_SEARCHES {
            return Err(StoreError::TooLarge(format!(
                "{MAX_SAVED_SEARCHES} searches are saved already; delete one first"
            )));
        }
        let slug = slug(name);
        let mut id = slug.clone();
        let mut suffix = 2;
        while searches.iter().any(|search| search.id == id) {
            id = format!("{slug}-{suffix}");
            suffix += 1;
        }
        let search = SavedSearch {
            id,
            name: name.to_string(),
            query: query.to_string(),
            created: now,
            alert: None,
        };
        let mut next = searches.clone();
        next.push(search.clone());
        self.write(&next)?;
        *searches = next;
        Ok(search)
    }

    /// Deletes a search (and its alert); `false` when there was none.
    pub fn delete(&self, id: &str) -> Result<bool> {
        let mut searches = self.lock();
        let mut next = searches.clone();
        next.retain(|search| search.id != id);
        if next.len() == searches.len() {
            return Ok(false);
        }
        self.write(&next)?;
        *searches = next;
        Ok(true)
    }

    /// Sets (or with `None` removes) a search's alert.
    pub fn set_alert(&self, id: &str, alert: Option<SearchAlert>) -> Result<SavedSearch> {
        let mut searches = self.lock();
        let mut next = searches.clone();
        let search = next
            .iter_mut()
            .find(|search| search.id == id)
            .ok_or_else(|| StoreError::NotFound(format!("saved search {id:?}")))?;
        if let Some(alert) = &alert {
            let taken = searches.iter().any(|other| {
                other.id != id
                    && other
                        .alert
                        .as_ref()
                        .is_some_and(|theirs| theirs.metric == alert.metric)
            });
            if taken {
                return Err(StoreError::InvalidQuery(format!(
                    "metric {:?} belongs to another saved search's alert",
                    alert.metric
                )));
            }
        }
        search.alert = alert;
        let updated = search.clone();
        self.write(&next)?;
        *searches = next;
        Ok(updated)
    }

    fn write(&self, searches: &[SavedSearch]) -> Result<()> {
        let doc = FileDoc {
            version: SAVED_SEARCHES_FORMAT_VERSION,
            searches: searches.to_vec(),
        };
        let bytes = serde_json::to_vec_pretty(&doc)
            .map_err(|error| StoreError::CorruptDocument(error.to_string()))?;
        crate::logs::write_atomically(&self.path, &bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SavedSearch>> {
        self.searches.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A query's syntax, pipes included, as `/api/logs` and `/api/logs/stats`
/// would check it.
fn check_query(query: &str) -> Result<()> {
    let search = match crate::pipes::parse(query)? {
        Some(pipeline) => pipeline.search,
        None => query.to_string(),
    };
    crate::query::LogMatcher::new(&search).map(|_| ())
}

/// `Failed logins (EU)` -> `failed-logins-eu`; never empty.
fn slug(name: &str) -> String {
    let mut slug = String::new();
    for character in name.chars() {
        if character.is_ascii_alphanumeric() {
            slug.push(character.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
        if slug.len() >= 48 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-').to_string();
    if slug.is_empty() {
        "search".into()
    } else {
        slug
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn searches_survive_a_reopen_and_bad_ones_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("saved-searches.json");
        let saved = SavedSearches::open(&path).unwrap();
        assert!(saved.list().is_empty());
        let first = saved
            .save("Failed logins (EU)", "body:\"login failed\"", 1)
            .unwrap();
        assert_eq!(first.id, "failed-logins-eu");
        let second = saved
            .save(
                "failed logins eu",
                "severity:ERROR | stats count() by service",
                2,
            )
            .unwrap();
        assert_eq!(second.id, "failed-logins-eu-2", "ids stay unique");

        let error = saved.save("Failed logins (EU)", "x", 3).unwrap_err();
        assert!(error.to_string().contains("exists"), "{error}");
        let error = saved.save("  ", "x", 3).unwrap_err();
        assert!(error.to_string().contains("needs a name"), "{error}");
        let error = saved.save("broken", "service:(auth", 3).unwrap_err();
        assert!(matches!(error, StoreError::InvalidQuery(_)), "{error}");
        let error = saved.save("bad pipe", "* | stats nope()", 3).unwrap_err();
        assert!(matches!(error, StoreError::InvalidQuery(_)), "{error}");

        let alert = SearchAlert {
            metric: "search_failed_logins_eu_total".into(),
            group_by: Some("ip_address".into()),
            threshold: 10.0,
            window_seconds: 60,
            for_seconds: 0,
            severity: "warning".into(),
            created: 4,
        };
        saved.set_alert(&first.id, Some(alert.clone())).unwrap();
        let error = saved
            .set_alert(&second.id, Some(alert.clone()))
            .unwrap_err();
        assert!(
            error.to_string().contains("another saved search"),
            "{error}"
        );
        assert!(matches!(
            saved.set_alert("nope", None).unwrap_err(),
            StoreError::NotFound(_)
        ));

        let reopened = SavedSearches::open(&path).unwrap();
        assert_eq!(reopened.list(), saved.list());
        assert_eq!(reopened.get(&first.id).unwrap().alert, Some(alert));
        assert!(reopened.delete(&second.id).unwrap());
        assert!(!reopened.delete(&second.id).unwrap());
        assert_eq!(SavedSearches::open(&path).unwrap().list().len(), 1);

        // A file from a newer collector is refused, not overwritten.
        std::fs::write(&path, r#"{"version": 99, "searches": []}"#).unwrap();
        let error = SavedSearches::open(&path).unwrap_err();
        assert!(error.to_string().contains("format 99"), "{error}");
        assert!(std::fs::read_to_string(&path).unwrap().contains("99"));
    }
}
