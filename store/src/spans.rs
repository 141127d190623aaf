//! The span store: spans in a tantivy index, looked up by trace id.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use tantivy::collector::TopDocs;
use tantivy::query::TermQuery;
use tantivy::schema::{FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, Value};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::error::{Result, StoreError};
use crate::model::Span;

const WRITER_MEMORY_BYTES: usize = 32 * 1024 * 1024;

/// Upper bound on the spans one trace lookup returns.
pub(crate) const MAX_SPANS_PER_TRACE: usize = 100_000;

struct SpanFields {
    trace_id: Field,
    service: Field,
    operation: Field,
    start_time: Field,
    request_id: Field,
    source: Field,
}

fn span_schema() -> (Schema, SpanFields) {
    let mut builder = Schema::builder();
    let fields = SpanFields {
        trace_id: builder.add_text_field("trace_id", STRING),
        service: builder.add_text_field("service", STRING),
        operation: builder.add_text_field("operation", STRING),
        start_time: builder.add_i64_field("start_time", INDEXED | FAST),
        request_id: builder.add_text_field("request_id", STRING),
        source: builder.add_text_field("source", STORED),
    };
    (builder.build(), fields)
}

/// Spans on disk, every span of a trace retrievable by its trace id.
///
/// Like [`crate::LogIndex`], writes are visible and durable after
/// [`SpanStore::commit`], and every method blocks.
pub struct SpanStore {
    writer: Mutex<IndexWriter>,
    reader: IndexReader,
    fields: SpanFields,
    /// WAL position the last commit reached (the commit payload).
    committed_position: AtomicU64,
}

#[derive(Serialize, Deserialize)]
struct CommitPayload {
    wal_position: u64,
}

impl SpanStore {
    pub fn open(dir: &Path) -> Result<SpanStore> {
        std::fs::create_dir_all(dir)?;
        let (schema, fields) = span_schema();
        let directory = tantivy::directory::MmapDirectory::open(dir)?;
        let index = Index::open_or_create(directory, schema)?;
        let committed_position = index
            .load_metas()?
            .payload
            .and_then(|payload| serde_json::from_str::<CommitPayload>(&payload).ok())
            .map_or(0, |payload| payload.wal_position);
        let writer = index.writer(WRITER_MEMORY_BYTES)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(SpanStore {
            writer: Mutex::new(writer),
            reader,
            fields,
            committed_position: AtomicU64::new(committed_position),
        })
    }

    /// WAL position below which every span is committed: replay from here.
    pub fn committed_position(&self) -> u64 {
        self.committed_position.load(Ordering::Acquire)
    }

    /// Adds the spans of the WAL entry at `position`; skipped when a commit
    /// already covers it, so a replay never stores a span twice.
    pub fn add(&self, position: u64, spans: &[Span]) -> Result<()> {
        if position < self.committed_position() {
            return Ok(());
        }
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for span in spans {
            writer.add_document(self.to_document(span))?;
        }
        Ok(())
    }

    /// Makes every added span durable and visible, recording `position`.
    pub fn commit(&self, position: u64) -> Result<()> {
        let mut writer = self
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut prepared = writer.prepare_commit()?;
        let payload = serde_json::to_string(&CommitPayload {
            wal_position: position,
        })
        .unwrap_or_default();
        prepared.set_payload(&payload);
        if let Err(error) = prepared.commit() {
            drop(writer);
            self.rollback();
            return Err(error.into());
        }
        drop(writer);
        self.committed_position.store(position, Ordering::Release);
        self.reader.reload()?;
        Ok(())
    }

    /// Drops every span added since the last commit (after a failure); the
    /// caller adds them again from the WAL.
    pub fn rollback(&self) {
        let mut writer = self
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Err(error) = writer.rollback() {
            tracing::error!(%error, "failed to roll back the span store writer");
        }
    }

    /// Number of committed spans.
    pub fn num_spans(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Every committed span of the trace, ordered by start time. Empty when
    /// the trace is unknown.
    pub fn trace(&self, trace_id: &str) -> Result<Vec<Span>> {
        let searcher = self.reader.searcher();
        let term = Term::from_field_text(self.fields.trace_id, &trace_id.to_ascii_lowercase());
        let query = TermQuery::new(term, IndexRecordOption::Basic);
        let hits = searcher.search(
            &query,
            &TopDocs::with_limit(MAX_SPANS_PER_TRACE).order_by_score(),
        )?;
        let mut spans = hits
            .into_iter()
            .map(|(_score, address)| {
                let doc: TantivyDocument = searcher.doc(address)?;
                let source = doc
                    .get_first(self.fields.source)
                    .and_then(|value| value.as_str())
                    .ok_or_else(|| StoreError::CorruptDocument("span without source".into()))?;
                serde_json::from_str::<Span>(source)
                    .map_err(|error| StoreError::CorruptDocument(error.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        spans.sort_by(|a, b| {
            a.start_time
                .cmp(&b.start_time)
                .then_with(|| a.span_id.cmp(&b.span_id))
        });
        Ok(spans)
    }

    fn to_document(&self, span: &Span) -> TantivyDocument {
        let f = &self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.trace_id, &span.trace_id);
        doc.add_text(f.service, &span.service);
        doc.add_text(f.operation, &span.name);
        doc.add_i64(f.start_time, span.start_time);
        if let Some(request_id) = &span.request_id {
            doc.add_text(f.request_id, request_id);
        }
        let source = serde_json::to_string(span).unwrap_or_default();
        doc.add_text(f.source, source);
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace_id: &str, span_id: &str, parent: Option<&str>, start_time: i64) -> Span {
        Span {
            trace_id: trace_id.into(),
            span_id: span_id.into(),
            parent_span_id: parent.map(str::to_string),
            name: "GET /".into(),
            service: "gateway".into(),
            kind: "server".into(),
            start_time,
            end_time: start_time + 10,
            ..Span::default()
        }
    }

    #[test]
    fn returns_every_span_of_a_trace_in_start_order_and_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let store = SpanStore::open(dir.path()).unwrap();
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        store
            .add(
                0,
                &[
                    span(trace, "00f067aa0ba902b7", None, 100),
                    span(
                        "ffffffffffffffffffffffffffffffff",
                        "1111111111111111",
                        None,
                        50,
                    ),
                    span(trace, "00f067aa0ba902b8", Some("00f067aa0ba902b7"), 110),
                ],
            )
            .unwrap();
        store.commit(1).unwrap();
        let spans = store.trace(trace).unwrap();
        let ids: Vec<_> = spans.iter().map(|s| s.span_id.as_str()).collect();
        assert_eq!(ids, ["00f067aa0ba902b7", "00f067aa0ba902b8"]);
        assert_eq!(spans[1].parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert!(
            store
                .trace("00000000000000000000000000000000")
                .unwrap()
                .is_empty()
        );
        // Upper-case ids from users still find the trace.
        assert_eq!(store.trace(&trace.to_uppercase()).unwrap().len(), 2);
    }
}
