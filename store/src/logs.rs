//! The log index: one tantivy index on disk holding [`LogRecord`]s.

use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;

use tantivy::collector::{Count, TopDocs};
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, RangeQuery};
use tantivy::schema::{
    Field, INDEXED, IndexRecordOption, JsonObjectOptions, STORED, STRING, Schema, TEXT,
    TextFieldIndexing, Value,
};
use tantivy::{
    DocAddress, Index, IndexReader, IndexWriter, Order, ReloadPolicy, TantivyDocument, Term,
};

use crate::error::{Result, StoreError};
use crate::model::LogRecord;

/// Memory the tantivy writer may use for its in-flight segments.
const WRITER_MEMORY_BYTES: usize = 64 * 1024 * 1024;

/// Largest number of records one search may return.
pub(crate) const MAX_SEARCH_LIMIT: usize = 10_000;

/// A search over the log index.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Query string (`field:value`, AND/OR/NOT, phrases). Empty matches all.
    pub query: String,
    /// Inclusive lower bound on the record timestamp, nanoseconds.
    pub start: Option<i64>,
    /// Exclusive upper bound on the record timestamp, nanoseconds.
    pub end: Option<i64>,
    /// Number of records to return, newest first.
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogSearchResult {
    /// Matching records, newest first, at most `limit`.
    pub records: Vec<LogRecord>,
    /// How many records matched in all.
    pub total_hits: usize,
}

struct LogFields {
    timestamp: Field,
    severity: Field,
    severity_number: Field,
    service: Field,
    body: Field,
    attributes: Field,
    resource: Field,
    trace_id: Field,
    span_id: Field,
    request_id: Field,
    source: Field,
}

fn log_schema() -> (Schema, LogFields) {
    let mut builder = Schema::builder();
    let json_options = JsonObjectOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("default")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
        .set_expand_dots_enabled();
    let fields = LogFields {
        timestamp: builder.add_i64_field("timestamp", INDEXED | tantivy::schema::FAST),
        severity: builder.add_text_field("severity", STRING),
        severity_number: builder.add_i64_field("severity_number", INDEXED),
        service: builder.add_text_field("service", STRING),
        body: builder.add_text_field("body", TEXT),
        attributes: builder.add_json_field("attributes", json_options.clone()),
        resource: builder.add_json_field("resource", json_options),
        trace_id: builder.add_text_field("trace_id", STRING),
        span_id: builder.add_text_field("span_id", STRING),
        request_id: builder.add_text_field("request_id", STRING),
        source: builder.add_text_field("source", STORED),
    };
    (builder.build(), fields)
}

/// Log records in a tantivy index on disk.
///
/// Writes go through [`LogIndex::add`] and become visible to searches after
/// [`LogIndex::commit`], which also makes them durable. All methods block:
/// call them from a blocking thread, never from an async task.
pub struct LogIndex {
    writer: Mutex<IndexWriter>,
    reader: IndexReader,
    query_parser: QueryParser,
    fields: LogFields,
}

impl LogIndex {
    /// Opens the index in `dir`, creating it when the directory is empty.
    pub fn open(dir: &Path) -> Result<LogIndex> {
        std::fs::create_dir_all(dir)?;
        let (schema, fields) = log_schema();
        let directory = tantivy::directory::MmapDirectory::open(dir)?;
        let index = Index::open_or_create(directory, schema)?;
        let writer = index.writer(WRITER_MEMORY_BYTES)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let mut query_parser = QueryParser::for_index(&index, vec![fields.body, fields.attributes]);
        // `payment declined` means both words, as in Quickwit and Kibana's KQL.
        query_parser.set_conjunction_by_default();
        Ok(LogIndex {
            writer: Mutex::new(writer),
            reader,
            query_parser,
            fields,
        })
    }

    /// Adds records to the index. They are searchable after the next commit.
    pub fn add(&self, records: &[LogRecord]) -> Result<()> {
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for record in records {
            writer.add_document(self.to_document(record))?;
        }
        Ok(())
    }

    /// Makes every added record durable and visible to searches.
    pub fn commit(&self) -> Result<()> {
        let mut writer = self
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        writer.commit()?;
        drop(writer);
        self.reader.reload()?;
        Ok(())
    }

    /// Number of committed records.
    pub fn num_records(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Runs a search; records come back newest first.
    pub fn search(&self, query: &LogQuery) -> Result<LogSearchResult> {
        let parsed = self.parse_query(query)?;
        let searcher = self.reader.searcher();
        let limit = query.limit.clamp(1, MAX_SEARCH_LIMIT);
        let top_docs =
            TopDocs::with_limit(limit).order_by_fast_field::<i64>("timestamp", Order::Desc);
        let (hits, total_hits) = searcher.search(&parsed, &(top_docs, Count))?;
        let records = hits
            .into_iter()
            .map(|(_timestamp, address)| self.load_record(&searcher, address))
            .collect::<Result<Vec<_>>>()?;
        Ok(LogSearchResult {
            records,
            total_hits,
        })
    }

    fn parse_query(&self, query: &LogQuery) -> Result<Box<dyn Query>> {
        let text_query: Box<dyn Query> = if query.query.trim().is_empty() {
            Box::new(AllQuery)
        } else {
            crate::query::parse(&self.query_parser, &query.query)?
        };
        if query.start.is_none() && query.end.is_none() {
            return Ok(text_query);
        }
        let to_term = |nanos: i64| Term::from_field_i64(self.fields.timestamp, nanos);
        let lower = query
            .start
            .map_or(Bound::Unbounded, |s| Bound::Included(to_term(s)));
        let upper = query
            .end
            .map_or(Bound::Unbounded, |e| Bound::Excluded(to_term(e)));
        let time_range: Box<dyn Query> = Box::new(RangeQuery::new(lower, upper));
        Ok(Box::new(BooleanQuery::new(vec![
            (Occur::Must, text_query),
            (Occur::Must, time_range),
        ])))
    }

    fn to_document(&self, record: &LogRecord) -> TantivyDocument {
        let f = &self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_i64(f.timestamp, record.timestamp);
        doc.add_text(f.severity, &record.severity_text);
        doc.add_i64(f.severity_number, i64::from(record.severity_number));
        doc.add_text(f.service, &record.service);
        doc.add_text(f.body, &record.body);
        doc.add_object(f.attributes, to_json_object(&record.attributes));
        doc.add_object(f.resource, to_json_object(&record.resource));
        for (field, id) in [
            (f.trace_id, &record.trace_id),
            (f.span_id, &record.span_id),
            (f.request_id, &record.request_id),
        ] {
            if let Some(id) = id {
                doc.add_text(field, id);
            }
        }
        // Serializing a struct of strings, numbers and JSON maps cannot fail.
        let source = serde_json::to_string(record).unwrap_or_default();
        doc.add_text(f.source, source);
        doc
    }

    fn load_record(&self, searcher: &tantivy::Searcher, address: DocAddress) -> Result<LogRecord> {
        let doc: TantivyDocument = searcher.doc(address)?;
        let source = doc
            .get_first(self.fields.source)
            .and_then(|value| value.as_str())
            .ok_or_else(|| StoreError::CorruptDocument("log record without source".into()))?;
        serde_json::from_str(source).map_err(|error| StoreError::CorruptDocument(error.to_string()))
    }
}

pub(crate) fn to_json_object(
    map: &serde_json::Map<String, serde_json::Value>,
) -> std::collections::BTreeMap<String, tantivy::schema::OwnedValue> {
    map.iter()
        .map(|(key, value)| (key.clone(), value.clone().into()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(timestamp: i64, body: &str, request_id: Option<&str>) -> LogRecord {
        let attributes = json!({"user_id": "u-42", "http": {"status": 500}});
        let resource = json!({"k8s.pod.name": "gateway-abc12", "service.name": "gateway"});
        LogRecord {
            timestamp,
            observed_timestamp: timestamp,
            severity_text: "INFO".into(),
            severity_number: 9,
            body: body.into(),
            service: "gateway".into(),
            resource: resource.as_object().unwrap().clone(),
            attributes: attributes.as_object().unwrap().clone(),
            trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
            span_id: Some("b7ad6b7169203331".into()),
            request_id: request_id.map(str::to_string),
        }
    }

    fn index_with(records: &[LogRecord]) -> (tempfile::TempDir, LogIndex) {
        let dir = tempfile::tempdir().unwrap();
        let index = LogIndex::open(dir.path()).unwrap();
        index.add(records).unwrap();
        index.commit().unwrap();
        (dir, index)
    }

    fn bodies(index: &LogIndex, query: &str) -> Vec<String> {
        let query = LogQuery {
            query: query.into(),
            limit: 100,
            ..LogQuery::default()
        };
        index
            .search(&query)
            .unwrap()
            .records
            .into_iter()
            .map(|r| r.body)
            .collect()
    }

    #[test]
    fn queries_find_the_right_records_newest_first() {
        let (_dir, index) = index_with(&[
            record(1_000, "order created", Some("req-1")),
            record(3_000, "payment declined", Some("req-2")),
            record(2_000, "order shipped", Some("req-1")),
        ]);
        let cases = [
            (
                "",
                vec!["payment declined", "order shipped", "order created"],
            ),
            ("request_id:req-1", vec!["order shipped", "order created"]),
            ("order", vec!["order shipped", "order created"]),
            ("\"payment declined\"", vec!["payment declined"]),
            ("order -shipped", vec!["order created"]),
            ("order AND NOT shipped", vec!["order created"]),
            ("NOT shipped", vec!["payment declined", "order created"]),
            ("order created", vec!["order created"]),
            (
                "shipped OR declined",
                vec!["payment declined", "order shipped"],
            ),
            ("user_id:u-42 AND declined", vec!["payment declined"]),
            (
                "attributes.http.status:500 AND created",
                vec!["order created"],
            ),
            (
                "resource.k8s.pod.name:gateway-abc12 AND shipped",
                vec!["order shipped"],
            ),
            (
                "service:gateway AND trace_id:0af7651916cd43dd8448eb211c80319c AND created",
                vec!["order created"],
            ),
            ("request_id:nope", vec![]),
        ];
        for (query, expected) in cases {
            assert_eq!(bodies(&index, query), expected, "query {query:?}");
        }
    }

    #[test]
    fn time_range_and_limit_apply() {
        let (_dir, index) = index_with(&[
            record(1_000, "a", None),
            record(2_000, "b", None),
            record(3_000, "c", None),
        ]);
        let query = LogQuery {
            query: String::new(),
            start: Some(1_500),
            end: Some(3_000),
            limit: 10,
        };
        let result = index.search(&query).unwrap();
        assert_eq!(result.total_hits, 1);
        assert_eq!(result.records[0].body, "b");
        let query = LogQuery {
            limit: 2,
            ..LogQuery::default()
        };
        let result = index.search(&query).unwrap();
        assert_eq!(result.total_hits, 3);
        assert_eq!(result.records.len(), 2);
    }

    #[test]
    fn records_come_back_whole_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let original = record(42, "hello", Some("req-9"));
        {
            let index = LogIndex::open(dir.path()).unwrap();
            index.add(std::slice::from_ref(&original)).unwrap();
            index.commit().unwrap();
        }
        let index = LogIndex::open(dir.path()).unwrap();
        let query = LogQuery {
            query: "request_id:req-9".into(),
            limit: 1,
            ..LogQuery::default()
        };
        assert_eq!(index.search(&query).unwrap().records, vec![original]);
    }

    #[test]
    fn a_bad_query_is_an_error_not_a_panic() {
        let (_dir, index) = index_with(&[record(1, "x", None)]);
        for (text, expected) in [
            ("body:(unclosed", "position"),
            ("nosuchfield:", "position"),
            ("timestamp:abc", "valid integer"),
        ] {
            let query = LogQuery {
                query: text.into(),
                limit: 1,
                ..LogQuery::default()
            };
            let error = index.search(&query).unwrap_err();
            assert!(
                matches!(error, StoreError::InvalidQuery(_)),
                "{text}: {error}"
            );
            assert!(error.to_string().contains(expected), "{text}: {error}");
        }
    }
}
