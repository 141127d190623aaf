//! Whole-trace properties: the summary of a trace and its critical path.
//!
//! A summary is recomputed from every stored span of the trace whenever a
//! span of it arrives, so it stays right when spans come late or out of
//! order. Pure functions here; [`crate::SpanStore`] stores the results.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::model::{Span, SpanStatus};

/// Distinct `key=value` tags kept per trace for attribute search (the
/// first in sorted order).
const MAX_TAGS_PER_TRACE: usize = 1_000;

/// What a trace search can see without loading spans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TraceSummary {
    pub trace_id: String,
    /// Service and operation of the root span; of the earliest span when the
    /// root has not arrived.
    pub root_service: String,
    pub root_operation: String,
    /// Earliest span start, nanoseconds.
    pub start_time: i64,
    /// Latest span end minus earliest start, nanoseconds.
    pub duration: i64,
    pub span_count: usize,
    pub services: Vec<String>,
    pub error_count: usize,
    /// Spans whose parent is not in the trace (yet).
    pub orphan_count: usize,
    /// True when a span without parent (the root) is present.
    pub has_root: bool,
    /// Span ids on the critical path, root first.
    pub critical_path: Vec<String>,
    /// Request ids carried by the trace's spans.
    pub request_ids: Vec<String>,
    /// Traces this one links to or is linked from (async work, retries).
    pub linked_traces: Vec<String>,
    /// When the summary last changed, nanoseconds; with the idle timeout it
    /// says whether more spans may still come.
    pub updated_at: i64,
    /// `service/operation` pairs present, for search.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<String>,
    /// `key=value` attribute pairs present, for search.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl TraceSummary {
    /// The summary as a store keeps and answers it: without the search
    /// keys (operations, tags), which only its index holds.
    pub fn stored(mut self) -> TraceSummary {
        self.operations = Vec::new();
        self.tags = Vec::new();
        self
    }

    /// A trace is complete once it has a root, no orphans, and no span
    /// arrived for `idle_timeout_nanos`.
    pub fn is_complete(&self, now: i64, idle_timeout_nanos: i64) -> bool {
        self.has_root
            && self.orphan_count == 0
            && now.saturating_sub(self.updated_at) >= idle_timeout_nanos
    }
}

/// The key of an operation in [`TraceSummary::operations`].
pub fn operation_key(service: &str, operation: &str) -> String {
    format!("{service}/{operation}")
}

/// The key of an attribute in [`TraceSummary::tags`].
pub fn tag_key(key: &str, value: &serde_json::Value) -> String {
    format!("{key}={}", tag_value(value))
}

/// An attribute's value as a tag writes it: text as it is, anything else
/// as JSON.
fn tag_value(value: &serde_json::Value) -> Cow<'_, str> {
    match value {
        serde_json::Value::String(text) => Cow::Borrowed(text),
        other => Cow::Owned(other.to_string()),
    }
}

/// Summarizes every span of one trace.
///
/// Sets are sorted vectors here, not hash or tree sets: a trace has tens
/// of spans, and this runs for every trace a commit touched, on the thread
/// every commit waits for.
pub fn summarize(trace_id: &str, spans: &[Span], updated_at: i64) -> TraceSummary {
    let ids = distinct_ids(spans);
    let root = spans
        .iter()
        .filter(|s| s.parent_span_id.is_none())
        .min_by_key(|s| s.start_time)
        .or_else(|| spans.iter().min_by_key(|s| s.start_time));
    let start_time = spans.iter().map(|s| s.start_time).min().unwrap_or_default();
    let end_time = spans.iter().map(|s| s.end_time).max().unwrap_or_default();
    // Borrowed while collecting; each distinct value is copied once.
    let mut services: Vec<&str> = Vec::with_capacity(spans.len());
    let mut operations: Vec<(&str, &str)> = Vec::with_capacity(spans.len());
    let mut tags: Vec<(&str, Cow<'_, str>)> = Vec::new();
    let mut request_ids: Vec<&str> = Vec::new();
    let mut linked: Vec<&str> = Vec::new();
    for span in spans {
        services.push(&span.service);
        operations.push((&span.service, &span.name));
        if let Some(id) = &span.request_id {
            request_ids.push(id);
        }
        for link in &span.links {
            if link.trace_id != trace_id {
                linked.push(&link.trace_id);
            }
        }
        for (key, value) in &span.attributes {
            tags.push((key, tag_value(value)));
            // Bounded while collecting: the first distinct tags in sorted
            // order of a part, with those of the rest, hold the first of
            // the whole.
            if tags.len() >= 4 * MAX_TAGS_PER_TRACE {
                sorted_distinct(&mut tags, MAX_TAGS_PER_TRACE);
            }
        }
    }
    for set in [&mut services, &mut request_ids, &mut linked] {
        sorted_distinct(set, usize::MAX);
    }
    sorted_distinct(&mut operations, usize::MAX);
    sorted_distinct(&mut tags, MAX_TAGS_PER_TRACE);
    TraceSummary {
        trace_id: trace_id.to_string(),
        root_service: root.map(|r| r.service.clone()).unwrap_or_default(),
        root_operation: root.map(|r| r.name.clone()).unwrap_or_default(),
        start_time,
        duration: end_time.saturating_sub(start_time),
        span_count: spans.len(),
        services: services.into_iter().map(str::to_string).collect(),
        error_count: spans
            .iter()
            .filter(|s| s.status == SpanStatus::Error)
            .count(),
        orphan_count: spans
            .iter()
            .filter(|s| {
                s.parent_span_id
                    .as_deref()
                    .is_some_and(|parent| ids.binary_search(&parent).is_err())
            })
            .count(),
        has_root: spans.iter().any(|s| s.parent_span_id.is_none()),
        critical_path: root
            .map(|r| walk_critical_path(spans, ids, &r.span_id))
            .unwrap_or_default(),
        request_ids: request_ids.into_iter().map(str::to_string).collect(),
        linked_traces: linked.into_iter().map(str::to_string).collect(),
        updated_at,
        operations: operations
            .into_iter()
            .map(|(service, name)| operation_key(service, name))
            .collect(),
        tags: tags
            .into_iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect(),
    }
}

/// Sorts `items`, drops repeats and keeps the first `max`.
fn sorted_distinct<T: Ord>(items: &mut Vec<T>, max: usize) {
    items.sort_unstable();
    items.dedup();
    items.truncate(max);
}

/// The trace's span ids, sorted, each once.
fn distinct_ids(spans: &[Span]) -> Vec<&str> {
    let mut ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    sorted_distinct(&mut ids, usize::MAX);
    ids
}

/// The critical path from `root_id`: the chain of spans that determined the
/// trace's end-to-end latency, found as Jaeger does: walking back from the
/// span's end, take the child that finished last before the current point,
/// recurse into it, continue from that child's start.
pub fn critical_path(spans: &[Span], root_id: &str) -> Vec<String> {
    walk_critical_path(spans, distinct_ids(spans), root_id)
}

/// [`critical_path`] with the spans' [`distinct_ids`] already made.
fn walk_critical_path<'a>(spans: &'a [Span], ids: Vec<&'a str>, root_id: &str) -> Vec<String> {
    // Every span under its parent's id, each parent's children latest
    // ending first (ties in the spans' order): one sorted list, searched
    // by parent id.
    let mut children: Vec<(&str, std::cmp::Reverse<i64>, usize)> = spans
        .iter()
        .enumerate()
        .filter_map(|(index, span)| {
            let parent = span.parent_span_id.as_deref()?;
            Some((parent, std::cmp::Reverse(span.end_time), index))
        })
        .collect();
    children.sort_unstable();
    let mut tree = Tree {
        spans,
        children,
        visited: vec![false; ids.len()],
        ids,
    };
    let mut path = Vec::new();
    // The last span of a repeated id stands for it.
    if let Some(root) = spans.iter().rposition(|span| span.span_id == root_id) {
        tree.walk(root, spans[root].end_time, &mut path);
    }
    path
}

/// What [`critical_path`] walks: the spans, their children by parent id,
/// and which span ids it has been through.
struct Tree<'a> {
    spans: &'a [Span],
    children: Vec<(&'a str, std::cmp::Reverse<i64>, usize)>,
    ids: Vec<&'a str>,
    visited: Vec<bool>,
}

impl Tree<'_> {
    fn walk(&mut self, index: usize, until: i64, path: &mut Vec<String>) {
        let span = &self.spans[index];
        let id = span.span_id.as_str();
        let Ok(slot) = self.ids.binary_search(&id) else {
            return;
        };
        if std::mem::replace(&mut self.visited[slot], true) {
            return; // a cycle in bad data
        }
        path.push(span.span_id.clone());
        let mut cursor = until.min(span.end_time);
        let mut next = self.children.partition_point(|(parent, ..)| *parent < id);
        while let Some(&(parent, _, child_index)) = self.children.get(next) {
            if parent != id {
                break;
            }
            next += 1;
            let child = &self.spans[child_index];
            let finished_before = child.end_time <= cursor && child.end_time > span.start_time;
            // Overlaps the current point: it is what we waited for.
            let overlaps = child.start_time < cursor && child.end_time > cursor;
            if finished_before || overlaps {
                self.walk(child_index, cursor, path);
                cursor = child.start_time;
            }
        }
    }
}

/// Time a span spent itself, not in its children (overlapping children
/// counted once), nanoseconds; its children are those of `spans` whose
/// parent it is.
pub fn self_time(span: &Span, spans: &[Span]) -> i64 {
    let children: Vec<&Span> = spans
        .iter()
        .filter(|child| child.parent_span_id.as_deref() == Some(span.span_id.as_str()))
        .collect();
    own_time(span, &children)
}

/// [`self_time`] of every span of `spans` (of one trace or several), in
/// their order, each span's children found once by its trace and id:
/// linear in the spans, where asking [`self_time`] of each is quadratic.
pub fn self_times(spans: &[Span]) -> Vec<i64> {
    let mut children: HashMap<(&str, &str), Vec<&Span>> = HashMap::new();
    for span in spans {
        if let Some(parent) = span.parent_span_id.as_deref() {
            children
                .entry((span.trace_id.as_str(), parent))
                .or_default()
                .push(span);
        }
    }
    spans
        .iter()
        .map(|span| {
            let own = children
                .get(&(span.trace_id.as_str(), span.span_id.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            own_time(span, own)
        })
        .collect()
}

fn own_time(span: &Span, children: &[&Span]) -> i64 {
    let mut intervals: Vec<(i64, i64)> = children
        .iter()
        .map(|child| {
            (
                child.start_time.max(span.start_time),
                child.end_time.min(span.end_time),
            )
        })
        .filter(|(start, end)| end > start)
        .collect();
    intervals.sort_unstable();
    let mut covered = 0;
    let mut current: Option<(i64, i64)> = None;
    for (start, end) in intervals {
        match current {
            Some((s, e)) if start <= e => current = Some((s, e.max(end))),
            Some((s, e)) => {
                covered += e - s;
                current = Some((start, end));
            }
            None => current = Some((start, end)),
        }
    }
    if let Some((s, e)) = current {
        covered += e - s;
    }
    span.duration_nanos() - covered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: Option<&str>, service: &str, start: i64, end: i64) -> Span {
        Span {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_string),
            name: format!("op-{id}"),
            service: service.into(),
            start_time: start,
            end_time: end,
            ..Span::default()
        }
    }

    #[test]
    fn summary_of_a_whole_trace() {
        let mut failing = span("c", Some("a"), "payment", 40, 90);
        failing.status = SpanStatus::Error;
        failing
            .attributes
            .insert("http.status_code".into(), 502.into());
        failing.request_id = Some("req-1".into());
        let spans = vec![
            span("a", None, "gateway", 0, 100),
            span("b", Some("a"), "order", 10, 30),
            failing,
        ];
        let summary = summarize("t", &spans, 7);
        assert_eq!(
            (
                summary.root_service.as_str(),
                summary.root_operation.as_str()
            ),
            ("gateway", "op-a")
        );
        assert_eq!(
            (summary.start_time, summary.duration, summary.span_count),
            (0, 100, 3)
        );
        assert_eq!(summary.services, ["gateway", "order", "payment"]);
        assert_eq!((summary.error_count, summary.orphan_count), (1, 0));
        assert!(summary.tags.contains(&"http.status_code=502".to_string()));
        assert_eq!(summary.request_ids, ["req-1"]);
        assert_eq!(summary.critical_path, ["a", "c", "b"]);
        assert!(summary.is_complete(10, 3));
        assert!(
            !summary.is_complete(8, 3),
            "recently updated traces may still grow"
        );
    }

    #[test]
    fn a_trace_without_its_root_is_incomplete_and_counts_orphans() {
        // The root has not arrived: its children reference a missing parent.
        let spans = vec![
            span("b", Some("a"), "order", 10, 30),
            span("c", Some("b"), "db", 12, 20),
        ];
        let summary = summarize("t", &spans, 0);
        assert!(!summary.has_root);
        assert_eq!(summary.orphan_count, 1);
        assert_eq!(
            summary.root_service, "order",
            "earliest span stands in for the root"
        );
        assert!(!summary.is_complete(i64::MAX, 1));
    }

    #[test]
    fn critical_path_follows_the_last_finishing_child_backwards() {
        // c finishes last, so c and its child d are on the path; from c's
        // start, b is the child that finished last before it.
        let spans = vec![
            span("a", None, "gw", 0, 100),
            span("b", Some("a"), "x", 0, 40),
            span("c", Some("a"), "y", 50, 95),
            span("d", Some("c"), "z", 60, 90),
        ];
        assert_eq!(critical_path(&spans, "a"), ["a", "c", "d", "b"]);
        assert_eq!(self_time(&spans[0], &spans), 100 - 40 - 45);
        assert_eq!(self_time(&spans[3], &spans), 30);
        let all = self_times(&spans);
        let one_by_one: Vec<i64> = spans.iter().map(|s| self_time(s, &spans)).collect();
        assert_eq!(all, one_by_one);
    }

    /// The critical path as first written (hash maps of children and of
    /// visited ids), kept as the reference for the sorted-list walk.
    fn critical_path_reference(spans: &[Span], root_id: &str) -> Vec<String> {
        fn walk<'a>(
            span: &'a Span,
            until: i64,
            children: &HashMap<&str, Vec<&'a Span>>,
            path: &mut Vec<String>,
            visited: &mut std::collections::HashSet<&'a str>,
        ) {
            if !visited.insert(span.span_id.as_str()) {
                return;
            }
            path.push(span.span_id.clone());
            let mut cursor = until.min(span.end_time);
            for child in children
                .get(span.span_id.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                if (child.end_time <= cursor && child.end_time > span.start_time)
                    || (child.start_time < cursor && child.end_time > cursor)
                {
                    walk(child, cursor, children, path, visited);
                    cursor = child.start_time;
                }
            }
        }
        let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
        let mut children: HashMap<&str, Vec<&Span>> = HashMap::new();
        for span in spans {
            if let Some(parent) = span.parent_span_id.as_deref() {
                children.entry(parent).or_default().push(span);
            }
        }
        for list in children.values_mut() {
            list.sort_by_key(|child| std::cmp::Reverse(child.end_time));
        }
        let mut path = Vec::new();
        if let Some(root) = by_id.get(root_id) {
            walk(
                root,
                root.end_time,
                &children,
                &mut path,
                &mut Default::default(),
            );
        }
        path
    }

    proptest::proptest! {
        /// Random traces of up to 40 spans over 12 ids (so with repeated
        /// ids, orphans and cycles), ends tied often.
        #[test]
        fn the_critical_path_is_the_reference_walks(
            shape in proptest::collection::vec(
                (0u8..12, proptest::option::of(0u8..12), 0i64..20, 0i64..20),
                1..40,
            )
        ) {
            let spans: Vec<Span> = shape
                .iter()
                .map(|&(id, parent, start, length)| {
                    let parent = parent.map(|p| p.to_string());
                    span(&id.to_string(), parent.as_deref(), "s", start, start + length)
                })
                .collect();
            for root in &spans {
                proptest::prop_assert_eq!(
                    critical_path(&spans, &root.span_id),
                    critical_path_reference(&spans, &root.span_id)
                );
            }
        }
    }

    #[test]
    fn a_trace_keeps_its_first_thousand_tags_in_sorted_order() {
        let spans: Vec<Span> = (0..5_000)
            .map(|index| {
                let mut span = span(&format!("s{index}"), None, "x", 0, 1);
                span.attributes
                    .insert("k".into(), format!("{:05}", 4_999 - index).into());
                span
            })
            .collect();
        let summary = summarize("t", &spans, 0);
        let expected: Vec<String> = (0..MAX_TAGS_PER_TRACE)
            .map(|v| format!("k={v:05}"))
            .collect();
        assert_eq!(summary.tags, expected);
    }

    #[test]
    fn cycles_in_bad_data_do_not_loop() {
        let spans = vec![
            span("a", Some("b"), "x", 0, 10),
            span("b", Some("a"), "y", 0, 10),
        ];
        let summary = summarize("t", &spans, 0);
        assert_eq!(summary.orphan_count, 0);
        assert!(critical_path(&spans, "a").len() <= 2);
    }
}
