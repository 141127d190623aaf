//! The read side the query API is written against, and how answers of
//! several stores merge into one.
//!
//! [`LogReader`] and [`SpanReader`] are what a handler may ask: an embedded
//! collector answers with its one [`LogStore`] and [`SpanStore`]; a cluster
//! node answers from many immutable splits, each a store of its own, and
//! merges their answers with the functions here, so that a merged answer
//! is the one a single store holding all their records would give:
//! a global top-k on (timestamp, sequence) for searches, summed histograms,
//! a stream's neighbours gathered from every split, a trace's spans from
//! every split that holds some of them.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use crate::error::Result;
use crate::logs::{Cursor, Histogram, LogHit, LogQuery, LogSearchResult, LogStore};
use crate::model::{LogRecord, Span};
use crate::pipes::{Pipeline, StatsTable};
use crate::query::LogMatcher;
use crate::spans::{Operation, SpanStore, TraceQuery};
use crate::traces::{TraceSummary, summarize};

/// What the query API reads of logs. Every method blocks.
pub trait LogReader: Send + Sync {
    /// Checks a query string without running it.
    fn validate_query(&self, query: &str) -> Result<()>;
    /// Matching records, newest first; see [`LogStore::search`].
    fn search(&self, query: &LogQuery) -> Result<LogSearchResult>;
    /// Matching records per bucket and severity; see [`LogStore::histogram`].
    fn histogram(&self, query: &str, start: i64, end: i64, interval: i64) -> Result<Histogram>;
    /// A record among its stream's neighbours; see [`LogStore::context`].
    fn context(&self, id: &str, before: usize, after: usize) -> Result<Vec<LogHit>>;
    /// A query's pipes over every matching record in `[start, end)`, as a
    /// table; see [`LogStore::aggregate`].
    fn stats(&self, pipeline: &Pipeline, start: i64, end: i64) -> Result<StatsTable>;
    /// Live tail by subscription: from now on, every record matching
    /// `query` goes to `sink` as it becomes searchable, until the sink is
    /// closed. `Ok(false)` when this reader has no subscriptions (the
    /// caller polls [`LogReader::search`]).
    fn subscribe(&self, _query: &str, _sink: Box<dyn TailSink>) -> Result<bool> {
        Ok(false)
    }
}

/// Where a live tail's records go.
pub trait TailSink: Send {
    /// Takes a record; `false` once nobody listens any more.
    fn send(&mut self, hit: LogHit) -> bool;
    /// Whether nobody listens any more (asked between records).
    fn is_closed(&self) -> bool;
}

/// What the query API reads of spans and traces. Every method blocks.
pub trait SpanReader: Send + Sync {
    fn trace(&self, trace_id: &str) -> Result<Vec<Span>>;
    fn trace_ids_for_request(&self, request_id: &str) -> Result<Vec<String>>;
    fn traces_linking_to(&self, trace_id: &str) -> Result<Vec<String>>;
    fn summary(&self, trace_id: &str) -> Result<Option<TraceSummary>>;
    fn search_traces(&self, query: &TraceQuery) -> Result<Vec<TraceSummary>>;
    fn services(&self) -> Result<Vec<String>>;
    fn operations_with_kinds(&self, service: &str, kind: Option<&str>) -> Result<Vec<Operation>>;
    /// Operation names of a service's spans, sorted, each once.
    fn operations(&self, service: &str) -> Result<Vec<String>> {
        let names: BTreeSet<String> = self
            .operations_with_kinds(service, None)?
            .into_iter()
            .map(|operation| operation.name)
            .collect();
        Ok(names.into_iter().collect())
    }
}

impl LogReader for LogStore {
    fn validate_query(&self, query: &str) -> Result<()> {
        LogStore::validate_query(self, query)
    }
    fn search(&self, query: &LogQuery) -> Result<LogSearchResult> {
        LogStore::search(self, query)
    }
    fn histogram(&self, query: &str, start: i64, end: i64, interval: i64) -> Result<Histogram> {
        LogStore::histogram(self, query, start, end, interval)
    }
    fn context(&self, id: &str, before: usize, after: usize) -> Result<Vec<LogHit>> {
        LogStore::context(self, id, before, after)
    }
    fn stats(&self, pipeline: &Pipeline, start: i64, end: i64) -> Result<StatsTable> {
        LogStore::aggregate(self, pipeline, start, end)?.finish(pipeline, start, end)
    }
}

impl SpanReader for SpanStore {
    fn trace(&self, trace_id: &str) -> Result<Vec<Span>> {
        SpanStore::trace(self, trace_id)
    }
    fn trace_ids_for_request(&self, request_id: &str) -> Result<Vec<String>> {
        SpanStore::trace_ids_for_request(self, request_id)
    }
    fn traces_linking_to(&self, trace_id: &str) -> Result<Vec<String>> {
        SpanStore::traces_linking_to(self, trace_id)
    }
    fn summary(&self, trace_id: &str) -> Result<Option<TraceSummary>> {
        SpanStore::summary(self, trace_id)
    }
    fn search_traces(&self, query: &TraceQuery) -> Result<Vec<TraceSummary>> {
        SpanStore::search_traces(self, query)
    }
    fn services(&self) -> Result<Vec<String>> {
        SpanStore::services(self)
    }
    fn operations_with_kinds(&self, service: &str, kind: Option<&str>) -> Result<Vec<Operation>> {
        SpanStore::operations_with_kinds(self, service, kind)
    }
}

/// One page of `limit` records out of pages that each searched part of
/// the records with the same query and cursor: the newest `limit` of all,
/// the matches of every part counted.
pub fn merge_pages(pages: Vec<LogSearchResult>, limit: usize) -> LogSearchResult {
    let limit = limit.clamp(1, crate::logs::MAX_SEARCH_LIMIT);
    let mut total_hits = 0;
    let mut keyed: Vec<(Cursor, LogHit)> = Vec::new();
    for page in pages {
        total_hits += page.total_hits;
        keyed.extend(page.hits.into_iter().filter_map(|hit| {
            // Every hit's id is its cursor; one that is not sorts last.
            Some((Cursor::decode(&hit.id).ok()?, hit))
        }));
    }
    keyed.sort_by_key(|(cursor, _)| Reverse(*cursor));
    keyed.truncate(limit);
    let next = (keyed.len() == limit).then(|| keyed[limit - 1].0);
    LogSearchResult {
        hits: keyed.into_iter().map(|(_, hit)| hit).collect(),
        total_hits,
        next,
    }
}

/// A record's context out of its stream's older (newest first) and newer
/// (oldest first) neighbours as each part found them: oldest first, the
/// anchor in its place, at most `before` older and `after` newer.
pub fn assemble_context(
    anchor: LogHit,
    older: Vec<Vec<LogHit>>,
    newer: Vec<Vec<LogHit>>,
    before: usize,
    after: usize,
) -> Vec<LogHit> {
    let keyed = |hits: Vec<Vec<LogHit>>| -> Vec<(Cursor, LogHit)> {
        let mut keyed: Vec<(Cursor, LogHit)> = hits
            .into_iter()
            .flatten()
            .filter_map(|hit| Some((Cursor::decode(&hit.id).ok()?, hit)))
            .collect();
        keyed.sort_by_key(|(cursor, _)| *cursor);
        keyed.dedup_by_key(|(cursor, _)| *cursor);
        keyed
    };
    let older = keyed(older);
    let skip = older.len().saturating_sub(before);
    let mut context: Vec<LogHit> = older.into_iter().skip(skip).map(|(_, hit)| hit).collect();
    context.push(anchor);
    context.extend(keyed(newer).into_iter().take(after).map(|(_, hit)| hit));
    context
}

/// The spans of a trace out of the parts each store holds: ordered by start
/// time, each span once (a batch sent again may have been stored twice).
pub fn merge_trace(parts: Vec<Vec<Span>>) -> Vec<Span> {
    let mut spans: Vec<Span> = parts.into_iter().flatten().collect();
    spans.sort_by(|a, b| {
        a.start_time
            .cmp(&b.start_time)
            .then_with(|| a.span_id.cmp(&b.span_id))
    });
    spans.dedup_by(|a, b| a.span_id == b.span_id && a.start_time == b.start_time);
    spans
}

/// The summary of a trace whose spans several stores hold, each with the
/// summary of its own part: one part's summary is the trace's; more are
/// recomputed from `spans`, every span of the trace, and come back with
/// `true` and the search keys (operations, tags) a stored summary drops.
pub fn merge_summaries(
    trace_id: &str,
    parts: Vec<TraceSummary>,
    spans: impl FnOnce() -> Result<Vec<Span>>,
) -> Result<Option<(TraceSummary, bool)>> {
    match parts.len() {
        0 => Ok(None),
        1 => Ok(parts.into_iter().next().map(|summary| (summary, false))),
        _ => {
            let updated_at = parts.iter().map(|part| part.updated_at).max();
            let spans = spans()?;
            Ok(Some((
                summarize(trace_id, &spans, updated_at.unwrap_or(0)),
                true,
            )))
        }
    }
}

/// Sorted and each once: services, request's trace ids, linked traces.
pub fn merge_names(parts: Vec<Vec<String>>) -> Vec<String> {
    let names: BTreeSet<String> = parts.into_iter().flatten().collect();
    names.into_iter().collect()
}

/// A service's operations out of each part's: one per (name, kind), an
/// unkinded name only where no part knows its kind, as one store lists them.
pub fn merge_operations(parts: Vec<Vec<Operation>>) -> Vec<Operation> {
    let all: BTreeSet<Operation> = parts.into_iter().flatten().collect();
    let kinded: BTreeSet<&str> = all
        .iter()
        .filter(|operation| !operation.span_kind.is_empty())
        .map(|operation| operation.name.as_str())
        .collect();
    all.iter()
        .filter(|operation| {
            !operation.span_kind.is_empty() || !kinded.contains(operation.name.as_str())
        })
        .cloned()
        .collect()
}

/// Trace search results, newest first (then by trace id), at most `limit`.
pub fn newest_traces(mut traces: Vec<TraceSummary>, limit: usize) -> Vec<TraceSummary> {
    traces.sort_by(|a, b| {
        b.start_time
            .cmp(&a.start_time)
            .then_with(|| a.trace_id.cmp(&b.trace_id))
    });
    traces.truncate(limit.clamp(1, crate::spans::MAX_TRACE_SEARCH_LIMIT));
    traces
}

/// Records held in memory (a cluster owner's, not yet in a split), each
/// with its sequence number ([`crate::record_seq`]), searched as a store
/// holding them would answer `query`.
pub fn search_records<'a>(
    records: impl IntoIterator<Item = (u64, &'a LogRecord)>,
    query: &LogQuery,
) -> Result<LogSearchResult> {
    let matcher = matcher(&query.query)?;
    let limit = query.limit.clamp(1, crate::logs::MAX_SEARCH_LIMIT);
    let mut total_hits = 0;
    let mut keyed: Vec<(Cursor, &LogRecord)> = Vec::new();
    for (seq, record) in records {
        let in_range = query.start.is_none_or(|start| record.timestamp >= start)
            && query.end.is_none_or(|end| record.timestamp < end);
        if !in_range || !matcher.as_ref().is_none_or(|m| m.matches(record)) {
            continue;
        }
        total_hits += 1;
        let cursor = Cursor {
            timestamp: record.timestamp,
            seq,
        };
        if query.after.is_none_or(|after| cursor < after) {
            keyed.push((cursor, record));
        }
    }
    keyed.sort_by_key(|(cursor, _)| Reverse(*cursor));
    keyed.truncate(limit);
    let next = (keyed.len() == limit).then(|| keyed[limit - 1].0);
    Ok(LogSearchResult {
        hits: keyed
            .into_iter()
            .map(|(cursor, record)| LogHit {
                id: cursor.encode(),
                record: record.clone(),
            })
            .collect(),
        total_hits,
        next,
    })
}

/// The neighbours of `anchor` among records held in memory, as
/// [`LogStore::neighbours`] finds them in a store holding them: up to
/// `before` of its stream older than it (newest first) and up to `after`
/// newer (oldest first).
pub fn neighbour_records<'a>(
    records: impl IntoIterator<Item = (u64, &'a LogRecord)>,
    anchor: &LogHit,
    before: usize,
    after: usize,
) -> Result<(Vec<LogHit>, Vec<LogHit>)> {
    let at = Cursor::decode(&anchor.id)?;
    let stream = crate::logs::stream_key(&anchor.record);
    let mut older = Vec::new();
    let mut newer = Vec::new();
    for (seq, record) in records {
        let cursor = Cursor {
            timestamp: record.timestamp,
            seq,
        };
        if cursor == at || crate::logs::stream_key(record) != stream {
            continue;
        }
        if cursor < at {
            older.push((cursor, record));
        } else {
            newer.push((cursor, record));
        }
    }
    older.sort_by_key(|(cursor, _)| Reverse(*cursor));
    newer.sort_by_key(|(cursor, _)| *cursor);
    let hits = |keyed: Vec<(Cursor, &LogRecord)>, limit: usize| -> Vec<LogHit> {
        keyed
            .into_iter()
            .take(limit)
            .map(|(cursor, record)| LogHit {
                id: cursor.encode(),
                record: record.clone(),
            })
            .collect()
    };
    Ok((hits(older, before), hits(newer, after)))
}

/// The histogram of records held in memory, as
/// [`LogStore::histogram`] counts.
pub fn histogram_records<'a>(
    records: impl IntoIterator<Item = &'a LogRecord>,
    query: &str,
    start: i64,
    end: i64,
    interval: i64,
) -> Result<Histogram> {
    let matcher = matcher(query)?;
    let mut histogram = Histogram::empty(start, end, interval)?;
    let first_bucket = start.div_euclid(histogram.interval);
    for record in records {
        if record.timestamp < start
            || record.timestamp >= end
            || !matcher.as_ref().is_none_or(|m| m.matches(record))
        {
            continue;
        }
        let index = record.timestamp.div_euclid(histogram.interval) - first_bucket;
        if let Some(bucket) = usize::try_from(index)
            .ok()
            .and_then(|index| histogram.buckets.get_mut(index))
        {
            bucket.count += 1;
            *bucket
                .by_severity
                .entry(record.severity_text.clone())
                .or_default() += 1;
        }
    }
    Ok(histogram)
}

fn matcher(query: &str) -> Result<Option<LogMatcher>> {
    if query.trim().is_empty() {
        return Ok(None);
    }
    crate::validate_log_query(query)?;
    LogMatcher::new(query).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(timestamp: i64, seq: u64) -> LogHit {
        LogHit {
            id: Cursor { timestamp, seq }.encode(),
            record: LogRecord {
                timestamp,
                ..LogRecord::default()
            },
        }
    }

    fn page(hits: Vec<LogHit>, total_hits: usize) -> LogSearchResult {
        LogSearchResult {
            hits,
            total_hits,
            next: None,
        }
    }

    #[test]
    fn merged_pages_are_the_global_top_k_and_count_every_part() {
        let merged = merge_pages(
            vec![
                page(vec![hit(50, 1), hit(30, 1), hit(10, 1)], 7),
                page(vec![hit(40, 2), hit(30, 2), hit(20, 2)], 5),
                page(vec![], 0),
            ],
            4,
        );
        let order: Vec<(i64, u64)> = merged
            .hits
            .iter()
            .map(|hit| {
                let cursor = Cursor::decode(&hit.id).unwrap();
                (cursor.timestamp, cursor.seq)
            })
            .collect();
        assert_eq!(order, [(50, 1), (40, 2), (30, 2), (30, 1)]);
        assert_eq!(merged.total_hits, 12);
        assert_eq!(
            merged.next,
            Some(Cursor {
                timestamp: 30,
                seq: 1
            })
        );
        let short = merge_pages(vec![page(vec![hit(5, 1)], 1)], 10);
        assert_eq!(short.next, None, "a page short of the limit is the last");
    }

    #[test]
    fn context_takes_the_nearest_neighbours_of_every_part() {
        let context = assemble_context(
            hit(50, 0),
            vec![vec![hit(40, 0), hit(10, 0)], vec![hit(45, 1), hit(20, 1)]],
            vec![vec![hit(60, 0)], vec![hit(55, 1), hit(70, 1)]],
            2,
            2,
        );
        let times: Vec<i64> = context.iter().map(|hit| hit.record.timestamp).collect();
        assert_eq!(times, [40, 45, 50, 55, 60]);
    }

    #[test]
    fn an_operation_is_unkinded_only_where_no_part_knows_its_kind() {
        let op = |name: &str, kind: &str| Operation {
            name: name.into(),
            span_kind: kind.into(),
        };
        let merged = merge_operations(vec![
            vec![op("GET /", ""), op("charge", "client")],
            vec![op("GET /", "server"), op("legacy", "")],
        ]);
        assert_eq!(
            merged,
            [
                op("GET /", "server"),
                op("charge", "client"),
                op("legacy", "")
            ]
        );
    }

    #[test]
    fn records_in_memory_answer_as_a_store_holding_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(&dir.path().join("logs")).unwrap();
        let base = 1_700_000_000_000_000_000i64;
        let records: Vec<LogRecord> = (0..40)
            .map(|i| LogRecord {
                timestamp: base + (i % 13) * 1_000_000_000,
                severity_text: ["INFO", "ERROR"][i as usize % 2].into(),
                body: format!("line {i} of order o-{}", i % 5),
                service: ["cart", "payment"][i as usize % 2].into(),
                ..LogRecord::default()
            })
            .collect();
        store.add(7, &records).unwrap();
        store.commit(8).unwrap();
        let seqs: Vec<(u64, &LogRecord)> = records
            .iter()
            .enumerate()
            .map(|(index, record)| (crate::record_seq(7, index), record))
            .collect();
        for text in [
            "",
            "severity:ERROR",
            "o-3 OR service:cart",
            "body:line AND NOT service:payment",
        ] {
            let mut query = LogQuery {
                query: text.into(),
                start: Some(base + 2_000_000_000),
                end: Some(base + 11_000_000_000),
                limit: 4,
                after: None,
            };
            // Every page, by cursor, and the histogram.
            loop {
                let want = store.search(&query).unwrap();
                let have = search_records(seqs.iter().copied(), &query).unwrap();
                assert_eq!(have, want, "{text:?} after {:?}", query.after);
                match want.next {
                    Some(next) => query.after = Some(next),
                    None => break,
                }
            }
            let want = store.histogram(text, base, base + 13_000_000_000, 3_000_000_000);
            let have = histogram_records(
                records.iter(),
                text,
                base,
                base + 13_000_000_000,
                3_000_000_000,
            );
            assert_eq!(have.unwrap(), want.unwrap(), "{text:?}");
        }
        // A record's neighbours in its stream (here: its service).
        let all = store
            .search(&LogQuery {
                limit: 100,
                ..LogQuery::default()
            })
            .unwrap();
        for anchor in all.hits.iter().step_by(7) {
            for (before, after) in [(3, 3), (0, 5), (50, 0)] {
                let want = store.neighbours(anchor, before, after).unwrap();
                let have = neighbour_records(seqs.iter().copied(), anchor, before, after).unwrap();
                assert_eq!(have, want, "around {}", anchor.id);
            }
        }
    }

    #[test]
    fn histograms_add_bucket_by_bucket() {
        let mut one = Histogram::empty(0, 100, 10).unwrap();
        one.buckets[2].count = 3;
        one.buckets[2].by_severity.insert("INFO".into(), 3);
        let mut two = Histogram::empty(0, 100, 10).unwrap();
        two.buckets[2].count = 1;
        two.buckets[2].by_severity.insert("ERROR".into(), 1);
        one.add(&two);
        assert_eq!(one.buckets.len(), 10);
        assert_eq!(one.buckets[2].count, 4);
        assert_eq!(one.buckets[2].by_severity["ERROR"], 1);
        assert!(Histogram::empty(0, 1_000_000, 1).is_err());
    }
}
