//! List-then-watch of one collection, as client-go's reflectors keep a
//! cache: a list read in pages (`limit`/`continue`), then a watch from the
//! list's resource version that asks for bookmarks and resumes from the
//! last version it saw when the server ends it (`timeoutSeconds`). A `410
//! Gone` (the version expired, as an HTTP status or an `ERROR` event) lists
//! again; any other failure waits with a backoff (1 s doubling to 30 s) and
//! lists again. The caller keeps what it is told ([`Change`]); it keeps the
//! last good state while the server is away.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::api::{Api, ApiError};
use crate::types::{List, Object, WatchEvent};

/// How long the server keeps one watch open before it ends it.
const WATCH_SECONDS: u64 = 300;

const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Objects per page of a list: a large cluster's list is read in pages, as
/// client-go's informers read it, not as one response.
const PAGE: usize = 500;

/// The largest watch event read; a longer line ends the watch.
const MAX_EVENT_BYTES: usize = 16 << 20;

/// What the watch learned.
#[derive(Debug)]
pub enum Change<T> {
    /// A (re)list: these are all the objects now; forget any other.
    Listed(Vec<T>),
    /// Added or modified.
    Applied(T),
    Deleted(T),
}

/// Counters of one watch, for the owner's `/metrics`.
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Lists read (the first and every relist).
    pub lists: AtomicU64,
    /// Objects added, modified or deleted by watch events.
    pub events: AtomicU64,
    /// Watches ended by an expired version (`410 Gone`).
    pub expired: AtomicU64,
    /// Requests that failed (the server down, refusing, an unreadable
    /// answer); each is followed by a backoff.
    pub failures: AtomicU64,
}

/// One collection to keep: `collection` is its path (`/api/v1/pods`,
/// `/api/v1/namespaces/shop/pods`), `selector` an optional query
/// (`fieldSelector=spec.nodeName%3Dnode-a`), `what` names it in logs.
pub struct Watch {
    pub api: Arc<Api>,
    pub collection: String,
    pub selector: Option<String>,
    pub what: String,
}

/// Why a watch ended without a failure.
enum Ended {
    /// The server closed it (its timeout): watch again from the version.
    Closed,
    /// The version expired: list again.
    Gone,
}

impl Watch {
    /// Keeps the collection, telling `on` every change, until the task is
    /// dropped.
    pub async fn run<T: DeserializeOwned + Object>(
        self,
        stats: Arc<WatchStats>,
        mut on: impl FnMut(Change<T>) + Send,
    ) {
        let mut backoff = BACKOFF_START;
        loop {
            let mut version = match self.list::<T>().await {
                Ok((items, version)) => {
                    stats.lists.fetch_add(1, Ordering::Relaxed);
                    on(Change::Listed(items));
                    backoff = BACKOFF_START;
                    version
                }
                Err(error) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(what = %self.what, %error, "listing failed; keeping what is known and retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            loop {
                match self.watch(&mut version, &stats, &mut on).await {
                    Ok(Ended::Closed) => continue,
                    Ok(Ended::Gone) => {
                        stats.expired.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(what = %self.what, "the watch's version expired; listing again");
                        break;
                    }
                    Err(error) => {
                        stats.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(what = %self.what, %error, "watching failed; listing again after a pause");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        break;
                    }
                }
            }
        }
    }

    fn query(&self, rest: &str) -> String {
        match &self.selector {
            Some(selector) => format!("{}?{selector}&{rest}", self.collection),
            None => format!("{}?{rest}", self.collection),
        }
    }

    async fn list<T: DeserializeOwned>(&self) -> Result<(Vec<T>, String), ApiError> {
        let mut items = Vec::new();
        let mut next = String::new();
        loop {
            let mut page = format!("limit={PAGE}");
            if !next.is_empty() {
                page.push_str("&continue=");
                page.push_str(&percent_encode(&next));
            }
            let list: List<T> = self.api.get(&self.query(&page)).await?;
            items.extend(list.items);
            if list.metadata.next.is_empty() {
                return Ok((items, list.metadata.resource_version));
            }
            next = list.metadata.next;
        }
    }

    /// Watches from `version` (updated as events arrive).
    async fn watch<T: DeserializeOwned + Object>(
        &self,
        version: &mut String,
        stats: &WatchStats,
        on: &mut (impl FnMut(Change<T>) + Send),
    ) -> Result<Ended, ApiError> {
        let path = self.query(&format!(
            "watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={}",
            percent_encode(version)
        ));
        let mut response = match self
            .api
            .request(&path, Duration::from_secs(WATCH_SECONDS + 30))
            .await
        {
            Ok(response) => response,
            Err(ApiError::Gone) => return Ok(Ended::Gone),
            Err(error) => return Err(error),
        };
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| ApiError::Other(format!("the watch of {}: {error}", self.what)))?
        {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let event: WatchEvent = serde_json::from_slice(&line)
                    .map_err(|error| ApiError::Other(format!("a watch event: {error}")))?;
                match event.kind.as_str() {
                    "ADDED" | "MODIFIED" | "DELETED" => {
                        let object: T = serde_json::from_value(event.object).map_err(|error| {
                            ApiError::Other(format!("a watch event's object: {error}"))
                        })?;
                        object.metadata().resource_version.clone_into(version);
                        stats.events.fetch_add(1, Ordering::Relaxed);
                        on(if event.kind == "DELETED" {
                            Change::Deleted(object)
                        } else {
                            Change::Applied(object)
                        });
                    }
                    "BOOKMARK" => {
                        if let Some(bookmark) = event.object["metadata"]["resourceVersion"].as_str()
                        {
                            bookmark.clone_into(version);
                        }
                    }
                    "ERROR" if event.object["code"].as_u64() == Some(410) => {
                        return Ok(Ended::Gone);
                    }
                    other => {
                        return Err(ApiError::Other(format!(
                            "a watch event of type {other:?}: {}",
                            event.object
                        )));
                    }
                }
            }
            if pending.len() > MAX_EVENT_BYTES {
                return Err(ApiError::Other(format!(
                    "a watch event over {} MiB",
                    MAX_EVENT_BYTES >> 20
                )));
            }
        }
        Ok(Ended::Closed)
    }
}

/// `text` as a URL query value.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use axum::extract::{Query, State};
    use axum::response::IntoResponse;
    use serde_json::json;

    use super::*;
    use crate::types::Pod;

    /// Requests seen, and how many watches were opened.
    #[derive(Default)]
    struct Server {
        seen: Mutex<Vec<String>>,
        watches: AtomicU64,
    }

    fn pod(name: &str, version: u32) -> serde_json::Value {
        json!({"metadata": {"name": name, "namespace": "shop", "resourceVersion": version.to_string()}})
    }

    /// Pages of one pod; the first watch sends a bookmark, an added pod and
    /// then `410 Gone` as an event; the second is refused with a 410
    /// status; the third deletes a pod and stays open.
    async fn pods(
        State(server): State<Arc<Server>>,
        Query(query): Query<BTreeMap<String, String>>,
        uri: axum::http::Uri,
    ) -> axum::response::Response {
        server.seen.lock().unwrap().push(uri.to_string());
        if !query.contains_key("watch") {
            let page: usize = query.get("continue").map_or(0, |c| c.parse().unwrap());
            let all = [pod("a", 1), pod("b", 2)];
            let next = if page == 0 { "1" } else { "" };
            return axum::Json(json!({"metadata": {"resourceVersion": "5", "continue": next}, "items": [all[page]]}))
                .into_response();
        }
        let body = match server.watches.fetch_add(1, Ordering::SeqCst) {
            0 => format!(
                "{}\n{}\n{}\n",
                json!({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "7"}}}),
                json!({"type": "ADDED", "object": pod("c", 8)}),
                json!({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}),
            ),
            1 => return (axum::http::StatusCode::GONE, "expired").into_response(),
            _ => {
                let deleted = json!({"type": "DELETED", "object": pod("a", 9)});
                let stream = futures_stream(format!("{deleted}\n"));
                return axum::body::Body::from_stream(stream).into_response();
            }
        };
        body.into_response()
    }

    /// One chunk, then a stream that never ends (an open watch).
    fn futures_stream(
        first: String,
    ) -> impl futures_util::Stream<Item = Result<String, std::io::Error>> {
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            sender.send(Ok(first)).await.ok();
            sender.closed().await;
        });
        tokio_stream_from(receiver)
    }

    fn tokio_stream_from(
        mut receiver: tokio::sync::mpsc::Receiver<Result<String, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<String, std::io::Error>> {
        futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
    }

    #[tokio::test]
    async fn a_watch_lists_in_pages_follows_events_and_lists_again_when_its_version_expires() {
        let server = Arc::new(Server::default());
        let app = axum::Router::new()
            .route("/api/v1/pods", axum::routing::get(pods))
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let api = Api::at(
            &format!("http://{address}"),
            &crate::http::TlsSettings::default(),
            None,
            "test",
        )
        .unwrap();
        let watch = Watch {
            api: Arc::new(api),
            collection: "/api/v1/pods".into(),
            selector: Some("fieldSelector=spec.nodeName%3Dnode-a".into()),
            what: "pods".into(),
        };
        let (sender, mut changes) = tokio::sync::mpsc::unbounded_channel();
        let stats = Arc::new(WatchStats::default());
        let task = tokio::spawn(watch.run(stats.clone(), move |change: Change<Pod>| {
            let described = match change {
                Change::Listed(pods) => format!(
                    "listed {}",
                    pods.iter()
                        .map(|pod| pod.metadata.name.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Change::Applied(pod) => format!("applied {}", pod.metadata.name),
                Change::Deleted(pod) => format!("deleted {}", pod.metadata.name),
            };
            sender.send(described).unwrap();
        }));
        let mut seen = Vec::new();
        while seen.len() < 5 {
            let change = tokio::time::timeout(Duration::from_secs(10), changes.recv())
                .await
                .expect("a change within 10 s")
                .unwrap();
            seen.push(change);
        }
        task.abort();
        assert_eq!(
            seen,
            [
                "listed a,b",
                "applied c",
                "listed a,b",
                "listed a,b",
                "deleted a"
            ]
        );
        assert_eq!(stats.expired.load(Ordering::Relaxed), 2);
        assert_eq!(stats.failures.load(Ordering::Relaxed), 0);
        let requests = server.seen.lock().unwrap().clone();
        // Every request carries the selector, the second page its token,
        // and the first watch starts at the list's version with bookmarks.
        assert!(
            requests
                .iter()
                .all(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
            "{requests:?}"
        );
        assert!(requests[1].contains("continue=1"), "{requests:?}");
        assert!(
            requests[2].contains("watch=1")
                && requests[2].contains("resourceVersion=5")
                && requests[2].contains("allowWatchBookmarks=true"),
            "{requests:?}"
        );
    }
}
