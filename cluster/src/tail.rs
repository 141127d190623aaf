//! Live tail across the cluster, by subscription: the root holds a stream
//! open to every live node, and each node streams the records its owned
//! partitions read from then on that match the query.
//!
//! An owner announces each batch of entries it reads (a bounded broadcast:
//! a stream too slow to keep up skips batches, counted). A node's tail
//! stream (`GET /internal/v1/tail?q=`, on the query port behind its token)
//! matches the announced records with the query language's record matcher
//! and sends each match as a line of JSON, and an empty line when idle so
//! a departed root is noticed. The root re-lists the live nodes every
//! couple of seconds, connects to new ones, drops departed ones, and
//! forwards each record once (a partition handed over is read again by
//! its new owner from the checkpoint: the records it re-announces are
//! recognized by their ids).
//!
//! A record reaches the tail when its owner has read it, as it becomes
//! searchable; records read while a node's stream reconnects are not
//! replayed (a live view, as `kubectl logs -f` across a restart).

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Deserialize;
use sightline_store::{Batch, Cursor, LogHit, LogMatcher, TailSink, record_seq};
use tokio::sync::broadcast;

use crate::cache::CacheStats;
use crate::fresh::InternalApi;
use crate::metastore::Metastore;
use crate::query::Peers;
use crate::splits::Decoded;

pub const TAIL_PATH: &str = "/internal/v1/tail";
/// Batches of entries announced and not yet taken by every stream.
pub(crate) const ANNOUNCED: usize = 1024;
/// An idle stream sends an empty line this often.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often the root re-lists the live nodes.
const REFRESH: Duration = Duration::from_secs(2);
/// Records forwarded by the root whose ids it remembers, to drop repeats.
const REMEMBERED_IDS: usize = 65_536;
/// Records between the nodes' streams and the sink.
const MERGED: usize = 1024;
/// A line longer than this is not a record: the stream is dropped.
const MAX_LINE: usize = 16 << 20;

/// The announced batches of entries this node's owned partitions read.
pub(crate) type Announcements = broadcast::Sender<Arc<Vec<Decoded>>>;

#[derive(Debug, Deserialize)]
pub(crate) struct TailParams {
    #[serde(default)]
    q: String,
}

/// Serves [`TAIL_PATH`]: the matching records this node's partitions read
/// from now on, one JSON line each.
pub(crate) async fn serve(
    axum::extract::State(api): axum::extract::State<Arc<InternalApi>>,
    axum::extract::Query(params): axum::extract::Query<TailParams>,
) -> Result<axum::response::Response, (axum::http::StatusCode, String)> {
    let matcher = if params.q.trim().is_empty() {
        None
    } else {
        Some(
            LogMatcher::new(&params.q)
                .map_err(|error| (axum::http::StatusCode::BAD_REQUEST, error.to_string()))?,
        )
    };
    let stream = Stream {
        receiver: api.partitions.announcements().subscribe(),
        matcher,
        stats: OpenStream::new(api.reader.cache_stats()),
    };
    let body = futures::stream::unfold(stream, |mut stream| async move {
        loop {
            let next = tokio::time::timeout(HEARTBEAT, stream.receiver.recv()).await;
            match next {
                Err(_) => {
                    return Some((
                        Ok::<_, Infallible>(bytes::Bytes::from_static(b"\n")),
                        stream,
                    ));
                }
                Ok(Ok(entries)) => {
                    let lines = render(&entries, stream.matcher.as_ref());
                    if !lines.is_empty() {
                        return Some((Ok(bytes::Bytes::from(lines)), stream));
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(skipped))) => {
                    stream
                        .stats
                        .stats
                        .tail_skipped
                        .fetch_add(skipped, Ordering::Relaxed);
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            }
        }
    });
    Ok(axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(axum::body::Body::from_stream(body))
        .unwrap_or_default())
}

struct Stream {
    receiver: broadcast::Receiver<Arc<Vec<Decoded>>>,
    matcher: Option<LogMatcher>,
    stats: OpenStream,
}

/// Counts a tail stream open while it lives.
struct OpenStream {
    stats: Arc<CacheStats>,
}

impl OpenStream {
    fn new(stats: Arc<CacheStats>) -> OpenStream {
        stats.tail_streams.fetch_add(1, Ordering::Relaxed);
        stats.tail_streams_total.fetch_add(1, Ordering::Relaxed);
        OpenStream { stats }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.stats.tail_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The matching records of `entries`, a JSON line each, with the ids a
/// search gives them.
fn render(entries: &[Decoded], matcher: Option<&LogMatcher>) -> Vec<u8> {
    let mut lines = Vec::new();
    for (sequence, batch) in entries {
        let Batch::Logs(records) = batch.as_ref() else {
            continue;
        };
        for (index, record) in records.iter().enumerate() {
            if !matcher.is_none_or(|matcher| matcher.matches(record)) {
                continue;
            }
            // A `LogHit`'s JSON, the record borrowed rather than copied.
            #[derive(serde::Serialize)]
            struct Hit<'a> {
                id: String,
                #[serde(flatten)]
                record: &'a sightline_store::LogRecord,
            }
            let hit = Hit {
                id: Cursor {
                    timestamp: record.timestamp,
                    seq: record_seq(*sequence, index),
                }
                .encode(),
                record,
            };
            if serde_json::to_writer(&mut lines, &hit).is_ok() {
                lines.push(b'\n');
            }
        }
    }
    lines
}

/// The root's side of a subscription: streams from every live node,
/// merged into `sink` until it closes.
pub(crate) async fn follow(
    metastore: Arc<Metastore>,
    peers: Peers,
    query: String,
    mut sink: Box<dyn TailSink>,
) {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<LogHit>(MERGED);
    let mut streams: HashMap<String, (String, tokio::task::JoinHandle<()>)> = HashMap::new();
    let mut seen = RecentIds::default();
    let mut refresh = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            _ = refresh.tick() => {
                if sink.is_closed() {
                    break;
                }
                let nodes = match metastore.live_addresses(peers.ttl()).await {
                    Ok(nodes) => nodes,
                    Err(error) => {
                        tracing::warn!(%error, "live tail: the live nodes cannot be listed; trying again");
                        continue;
                    }
                };
                streams.retain(|node, (address, stream)| {
                    let keep = !stream.is_finished()
                        && nodes.iter().any(|(live, at)| live == node && at == address);
                    if !keep {
                        stream.abort();
                    }
                    keep
                });
                for (node, address) in nodes {
                    if streams.contains_key(&node) {
                        continue;
                    }
                    let stream = tokio::spawn(stream_from(
                        peers.clone(),
                        address.clone(),
                        query.clone(),
                        sender.clone(),
                    ));
                    streams.insert(node, (address, stream));
                }
            }
            hit = receiver.recv() => {
                let Some(hit) = hit else { break };
                if seen.first_time(&hit.id) && !sink.send(hit) {
                    break;
                }
            }
        }
    }
    for (_, (_, stream)) in streams {
        stream.abort();
    }
}

/// One node's tail stream into `sender`, until it ends or goes silent.
async fn stream_from(
    peers: Peers,
    address: String,
    query: String,
    sender: tokio::sync::mpsc::Sender<LogHit>,
) {
    let url = format!("{}://{address}{TAIL_PATH}", peers.scheme());
    let mut request = peers.http().get(&url).query(&[("q", query.as_str())]);
    if let Some(token) = peers.token() {
        request = request.bearer_auth(token);
    }
    let mut response = match request.send().await {
        Ok(response) if response.status().is_success() => response,
        Ok(response) => {
            tracing::warn!(%url, status = %response.status(), "live tail: a node refused the stream");
            return;
        }
        Err(error) => {
            tracing::warn!(%url, %error, "live tail: a node cannot be reached");
            return;
        }
    };
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(3 * HEARTBEAT, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => return,
            Ok(Err(error)) => {
                tracing::warn!(%url, %error, "live tail: a node's stream failed");
                return;
            }
            Err(_) => {
                tracing::warn!(%url, "live tail: a node's stream went silent");
                return;
            }
        };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = &line[..line.len() - 1];
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<LogHit>(line) {
                Ok(hit) => {
                    if sender.send(hit).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%url, %error, "live tail: a line of a node's stream is not a record")
                }
            }
        }
        if buffer.len() > MAX_LINE {
            tracing::warn!(%url, "live tail: a node's stream sent a line over 16 MiB");
            return;
        }
    }
}

/// The ids of the records forwarded lately, to forward each once.
#[derive(Default)]
struct RecentIds {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentIds {
    /// Whether `id` is new (it is remembered from now on).
    fn first_time(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        self.ids.insert(id.to_string());
        self.order.push_back(id.to_string());
        while self.order.len() > REMEMBERED_IDS {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_store::LogRecord;

    #[test]
    fn announced_records_are_matched_and_given_their_search_ids() {
        let records = |bodies: &[&str]| {
            Arc::new(Batch::Logs(
                bodies
                    .iter()
                    .enumerate()
                    .map(|(i, body)| LogRecord {
                        timestamp: 1_000 + i as i64,
                        body: body.to_string(),
                        service: "cart".into(),
                        ..LogRecord::default()
                    })
                    .collect(),
            ))
        };
        let entries: Vec<Decoded> = vec![
            (7, records(&["payment declined", "ok"])),
            (8, Arc::new(Batch::Spans(Vec::new()))),
            (9, records(&["declined again"])),
        ];
        let matcher = LogMatcher::new("declined").unwrap();
        let lines = render(&entries, Some(&matcher));
        let hits: Vec<LogHit> = lines
            .split(|byte| *byte == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).unwrap())
            .collect();
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].record.body, "payment declined");
        let want = Cursor {
            timestamp: 1_000,
            seq: record_seq(7, 0),
        };
        assert_eq!(hits[0].id, want.encode());
        assert_eq!(
            hits[1].id,
            Cursor {
                timestamp: 1_000,
                seq: record_seq(9, 0),
            }
            .encode()
        );
        assert_eq!(render(&entries, None).split(|b| *b == b'\n').count(), 4);
    }

    #[test]
    fn the_root_forwards_each_record_once_and_remembers_a_bounded_number() {
        let mut seen = RecentIds::default();
        assert!(seen.first_time("1-1"));
        assert!(!seen.first_time("1-1"));
        for n in 0..REMEMBERED_IDS + 10 {
            seen.first_time(&format!("x-{n}"));
        }
        assert!(seen.ids.len() <= REMEMBERED_IDS);
        assert!(seen.first_time("1-1"), "the oldest ids are forgotten");
    }
}
