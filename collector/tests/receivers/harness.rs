//! A real ingest path on a temporary directory, and requests without a socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use sightline_collector::ingest::{Ingest, Limits};
use sightline_collector::metrics::CollectorMetrics;
use sightline_pipeline::{Pipeline, PipelineConfig, PipelineThreads};
use sightline_store::{LogQuery, LogRecord, LogStore, Span, SpanStore};
use tempfile::TempDir;
use tower::ServiceExt;

/// How long a test waits for records to become searchable.
const SEARCHABLE_WITHIN: Duration = Duration::from_secs(30);

pub(crate) struct Harness {
    pub(crate) ingest: Ingest,
    pub(crate) logs: Arc<LogStore>,
    pub(crate) spans: Arc<SpanStore>,
    threads: PipelineThreads,
    _dir: TempDir,
}

impl Harness {
    /// A pipeline that commits every 20 ms, with default limits.
    pub(crate) fn start() -> Harness {
        Harness::start_with(|config| config.commit_interval = Duration::from_millis(20))
    }

    pub(crate) fn start_with(configure: impl FnOnce(&mut PipelineConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let logs = Arc::new(LogStore::open(&dir.path().join("logs")).unwrap());
        let spans = Arc::new(SpanStore::open(&dir.path().join("spans")).unwrap());
        let mut config = PipelineConfig::new(dir.path().join("wal"));
        configure(&mut config);
        let metrics = Arc::new(CollectorMetrics::default());
        let (pipeline, threads) =
            Pipeline::start(config, logs.clone(), spans.clone(), metrics.clone()).unwrap();
        let ingest = Ingest::new(pipeline, Limits::default(), metrics);
        Harness {
            ingest,
            logs,
            spans,
            threads,
            _dir: dir,
        }
    }

    /// Waits until `count` records are searchable; returns all of them, newest first.
    pub(crate) async fn records(&self, count: usize) -> Vec<LogRecord> {
        let deadline = Instant::now() + SEARCHABLE_WITHIN;
        loop {
            let logs = self.logs.clone();
            let result = tokio::task::spawn_blocking(move || {
                logs.search(&LogQuery {
                    limit: 1000,
                    ..LogQuery::default()
                })
                .unwrap()
            })
            .await
            .unwrap();
            if result.hits.len() >= count {
                return result.hits.into_iter().map(|hit| hit.record).collect();
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {count} records became searchable",
                result.hits.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the trace has `count` spans; returns them.
    pub(crate) async fn trace(&self, trace_id: &str, count: usize) -> Vec<Span> {
        let deadline = Instant::now() + SEARCHABLE_WITHIN;
        loop {
            let (spans, trace_id_owned) = (self.spans.clone(), trace_id.to_string());
            let found = tokio::task::spawn_blocking(move || spans.trace(&trace_id_owned).unwrap())
                .await
                .unwrap();
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {count} spans became searchable",
                found.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the pipeline once every router built from it is gone.
    pub(crate) async fn stop(self) {
        let Harness {
            ingest,
            threads,
            _dir,
            ..
        } = self;
        drop(ingest);
        tokio::task::spawn_blocking(move || threads.join())
            .await
            .unwrap();
    }
}

/// An answer, fully read.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

pub(crate) async fn send(router: Router, request: Request<Body>) -> Answer {
    let response = router.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

pub(crate) fn post(path: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::post(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(body.into()).unwrap()
}

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

pub(crate) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}
