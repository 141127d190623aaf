//! A local server that answers the Kubernetes API's requests the agent and
//! the collector make, in the API's JSON shapes: lists of pods, endpoints
//! and services in pages with a `resourceVersion` and a `continue` token,
//! pods filtered by the `spec.nodeName` field selector; watch streams of `BOOKMARK`, `ADDED`,
//! `MODIFIED` and `DELETED` events, an `ERROR` event with `410` when a
//! version expires, and a watch from a version replays what changed after
//! it (`410` once that is past the newest 10,000 events); single objects (ReplicaSets, Jobs) by path; `503` for
//! everything while it is "down".
//!
//! The demo serves its pods with it (the agent then adds their labels and
//! owners to their records, as on a cluster), and the end-to-end tests
//! drive it: no Kubernetes API server can be installed on the test
//! machines. It is a stand-in for the API's wire shapes, not an API
//! server: no writes, no authorization, no other resources.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

/// One open watch.
struct Watcher {
    resource: String,
    node: Option<String>,
    sender: tokio::sync::mpsc::UnboundedSender<String>,
}

#[derive(Default)]
struct Watchers {
    open: Vec<Watcher>,
    /// The newest [`HISTORY`] events: version, resource, node and line.
    history: std::collections::VecDeque<(u64, String, String, String)>,
    /// The newest version dropped from `history`: a watch from an older
    /// one is answered `410 Gone`, as by a server whose watch cache no
    /// longer reaches back that far.
    forgotten: u64,
}

/// Events a watch can be replayed from (the demo runs for days).
const HISTORY: usize = 10_000;

/// A watch event ending the watch with `410 Gone`.
fn gone_line() -> String {
    format!(
        "{}\n",
        json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410
        }})
    )
}

/// The fake server's objects and open watches.
#[derive(Default)]
pub struct FakeKubeApi {
    /// Objects by resource (`pods`, `endpoints`, `services`), then by
    /// `namespace/name`.
    collections: Mutex<BTreeMap<String, BTreeMap<String, Value>>>,
    /// Other objects by their path (`/apis/apps/v1/namespaces/shop/replicasets/web-7d9c`).
    objects: Mutex<BTreeMap<String, Value>>,
    version: Mutex<u64>,
    /// Open watches (their resource, the node their field selector names)
    /// and every event sent, so a watch from a version replays what came
    /// after it, as the API server's watch cache does. Held while objects
    /// change and while a list page is read: a list and the watch from its
    /// version then miss nothing.
    watchers: Mutex<Watchers>,
    /// Requests seen, `path?query`.
    pub seen: Mutex<Vec<String>>,
    /// The `Authorization` header of every request.
    pub authorizations: Mutex<BTreeSet<String>>,
    /// Answer every request with 503, as an API server that is down.
    pub down: AtomicBool,
}

impl FakeKubeApi {
    /// Serves the API on a loopback port; returns its port.
    pub async fn serve(self: &Arc<Self>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Kubernetes API");
        let port = listener.local_addr().expect("local address").port();
        let app = Router::new()
            .route("/api/v1/{resource}", get(collection))
            .fallback(get(object))
            .with_state(Arc::clone(self));
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    fn next_version(&self) -> u64 {
        let mut version = self.version.lock().unwrap();
        *version += 1;
        *version
    }

    /// Adds or replaces a pod and tells every watch of its node.
    pub fn put(&self, pod: Value) {
        self.put_in("pods", pod);
    }

    /// Adds or replaces an object of `resource` (`endpoints`, `services`)
    /// and tells every watch of it.
    pub fn put_in(&self, resource: &str, mut object: Value) {
        let mut watchers = self.watchers.lock().unwrap();
        let version = self.next_version();
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let key = object_key(&object);
        let kind = if self
            .collections
            .lock()
            .unwrap()
            .entry(resource.to_string())
            .or_default()
            .insert(key, object.clone())
            .is_some()
        {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let event = json!({"type": kind, "object": object});
        Self::send(&mut watchers, version, resource, &object, event);
    }

    /// Removes pod `namespace/name`; `tell`: with a `DELETED` event (else
    /// only a later list knows).
    pub fn delete(&self, key: &str, tell: bool) {
        let mut watchers = self.watchers.lock().unwrap();
        let pod = self
            .collections
            .lock()
            .unwrap()
            .get_mut("pods")
            .and_then(|pods| pods.remove(key))
            .expect("a known pod");
        let version = self.next_version();
        if tell {
            let event = json!({"type": "DELETED", "object": pod});
            Self::send(&mut watchers, version, "pods", &pod, event);
        }
    }

    /// Serves `object` at `path` (`GET` of one object).
    pub fn put_object(&self, path: &str, object: Value) {
        self.objects
            .lock()
            .unwrap()
            .insert(path.to_string(), object);
    }

    /// The number of requests whose path and query contain `part`.
    pub fn requests(&self, part: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|request| request.contains(part))
            .count()
    }

    fn send(watchers: &mut Watchers, version: u64, resource: &str, object: &Value, event: Value) {
        let node = object["spec"]["nodeName"].as_str().unwrap_or_default();
        let line = format!("{event}\n");
        watchers.history.push_back((
            version,
            resource.to_string(),
            node.to_string(),
            line.clone(),
        ));
        if watchers.history.len() > HISTORY
            && let Some((dropped, ..)) = watchers.history.pop_front()
        {
            watchers.forgotten = dropped;
        }
        watchers.open.retain(|watcher| {
            if watcher.resource != resource
                || watcher
                    .node
                    .as_deref()
                    .is_some_and(|selected| selected != node)
            {
                return !watcher.sender.is_closed();
            }
            watcher.sender.send(line.clone()).is_ok()
        });
    }

    /// Ends every watch with `410 Gone`, as a server whose history no
    /// longer holds the version does.
    pub fn expire_watches(&self) {
        let line = gone_line();
        for watcher in self.watchers.lock().unwrap().open.drain(..) {
            let _ = watcher.sender.send(line.clone());
        }
    }

    /// Records the request; false while down.
    fn answer(&self, uri: &axum::http::Uri, headers: &axum::http::HeaderMap) -> bool {
        self.seen.lock().unwrap().push(uri.to_string());
        self.authorizations.lock().unwrap().insert(
            headers
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .unwrap_or("none")
                .to_string(),
        );
        !self.down.load(Ordering::Relaxed)
    }
}

fn object_key(object: &Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

async fn object(
    State(api): State<Arc<FakeKubeApi>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    if !api.answer(&uri, &headers) {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    match api.objects.lock().unwrap().get(uri.path()) {
        Some(object) => axum::Json(object.clone()).into_response(),
        None => (
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404}),
            ),
        )
            .into_response(),
    }
}

async fn collection(
    State(api): State<Arc<FakeKubeApi>>,
    Path(resource): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    if !api.answer(&uri, &headers) {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    let node = query
        .get("fieldSelector")
        .and_then(|selector| selector.strip_prefix("spec.nodeName="))
        .map(str::to_string);
    let watching = query
        .get("watch")
        .is_some_and(|watch| watch == "1" || watch == "true");
    if !watching {
        // Pages of at most two objects (a server may return fewer than the
        // `limit` asked for) of one snapshot: the token carries the list's
        // version and the last key served, and every page reports that
        // version, so the watch from it replays whatever changed meanwhile.
        let watchers = api.watchers.lock().unwrap();
        let (version, after) = match query
            .get("continue")
            .and_then(|token| token.split_once('/'))
        {
            Some((version, after)) => (version.to_string(), Some(after.to_string())),
            None => (api.version.lock().unwrap().to_string(), None),
        };
        let collections = api.collections.lock().unwrap();
        let mut all = collections
            .get(&resource)
            .into_iter()
            .flat_map(BTreeMap::iter)
            .filter(|(key, object)| {
                after.as_deref().is_none_or(|after| key.as_str() > after)
                    && node
                        .as_deref()
                        .is_none_or(|node| object["spec"]["nodeName"] == node)
            });
        let page: Vec<(&String, &Value)> = all.by_ref().take(2).collect();
        let next = match (all.next(), page.last()) {
            (Some(_), Some((last, _))) => format!("{version}/{last}"),
            _ => String::new(),
        };
        let items: Vec<Value> = page.into_iter().map(|(_, object)| object.clone()).collect();
        drop(collections);
        drop(watchers);
        return axum::Json(json!({
            "kind": "List", "apiVersion": "v1",
            "metadata": {"resourceVersion": version, "continue": next},
            "items": items,
        }))
        .into_response();
    }
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<String>();
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|version| version.parse().ok())
        .unwrap_or(0);
    let mut watchers = api.watchers.lock().unwrap();
    if from < watchers.forgotten {
        let _ = sender.send(gone_line());
    } else {
        replay(&mut watchers, &api, from, resource, node, sender);
    }
    drop(watchers);
    let mut receiver = receiver;
    let stream = futures_util::stream::poll_fn(move |context| {
        receiver
            .poll_recv(context)
            .map(|line| line.map(Ok::<_, std::convert::Infallible>))
    });
    (
        [("content-type", "application/json")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// Sends a new watch what changed after `from`, then a bookmark (as a
/// server asked for them may send), and keeps it open.
fn replay(
    watchers: &mut Watchers,
    api: &FakeKubeApi,
    from: u64,
    resource: String,
    node: Option<String>,
    sender: tokio::sync::mpsc::UnboundedSender<String>,
) {
    for (_, _, _, line) in watchers.history.iter().filter(|(version, of, on, _)| {
        *version > from && *of == resource && node.as_deref().is_none_or(|node| node == on)
    }) {
        let _ = sender.send(line.clone());
    }
    let version = api.version.lock().unwrap().to_string();
    let bookmark = json!({"type": "BOOKMARK", "object": {
        "kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": version}
    }});
    let _ = sender.send(format!("{bookmark}\n"));
    watchers.open.push(Watcher {
        resource,
        node,
        sender,
    });
}
