//! Whole-trace properties: the summary of a trace and its critical path.
//!
//! A summary is recomputed from every stored span of the trace whenever a
//! span of it arrives, so it stays right when spans come late or out of
//! order. Pure functions here; [`crate::SpanStore`] stores the results.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::model::{Span, SpanStatus};

/// Distinct `key=value` tags kept per trace for attribute search.
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
pub fn summarize(trace_id: &str, spans: &[Span], updated_at: i64) -> TraceSummary {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let root = spans
        .iter()
        .filter(|s| s.parent_span_id.is_none())
        .min_by_key(|s| s.start_time)
        .or_else(|| spans.iter().min_by_key(|s| s.start_time));
    let start_time = spans.iter().map(|s| s.start_time).min().unwrap_or_default();
    let end_time = spans.iter().map(|s| s.end_time).max().unwrap_or_default();
    // Borrowed while collecting; each distinct value is copied once.
    let mut services: BTreeSet<&str> = BTreeSet::new();
    let mut operations: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut tags: BTreeSet<(&str, Cow<'_, str>)> = BTreeSet::new();
    let mut request_ids: BTreeSet<&str> = BTreeSet::new();
    let mut linked: BTreeSet<&str> = BTreeSet::new();
    for span in spans {
        services.insert(&span.service);
        operations.insert((&span.service, &span.name));
        if let Some(id) = &span.request_id {
            request_ids.insert(id);
        }
        for link in &span.links {
            if link.trace_id != trace_id {
                linked.insert(&link.trace_id);
            }
        }
        for (key, value) in &span.attributes {
            if tags.len() < MAX_TAGS_PER_TRACE {
                tags.insert((key, tag_value(value)));
            }
        }
    }
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
                    .is_some_and(|parent| !ids.contains(parent))
            })
            .count(),
        has_root: spans.iter().any(|s| s.parent_span_id.is_none()),
        critical_path: root
            .map(|r| critical_path(spans, &r.span_id))
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

/// The critical path from `root_id`: the chain of spans that determined the
/// trace's end-to-end latency, found as Jaeger does: walking back from the
/// span's end, take the child that finished last before the current point,
/// recurse into it, continue from that child's start.
pub fn critical_path(spans: &[Span], root_id: &str) -> Vec<String> {
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
    let mut visited = HashSet::new();
    if let Some(root) = by_id.get(root_id) {
        walk(root, root.end_time, &children, &mut path, &mut visited);
    }
    path
}

fn walk<'a>(
    span: &'a Span,
    until: i64,
    children: &HashMap<&str, Vec<&'a Span>>,
    path: &mut Vec<String>,
    visited: &mut HashSet<&'a str>,
) {
    if !visited.insert(span.span_id.as_str()) {
        return; // a cycle in bad data
    }
    path.push(span.span_id.clone());
    let mut cursor = until.min(span.end_time);
    for child in children
        .get(span.span_id.as_str())
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        if child.end_time <= cursor && child.end_time > span.start_time {
            walk(child, cursor, children, path, visited);
            cursor = child.start_time;
        } else if child.start_time < cursor && child.end_time > cursor {
            // Overlaps the current point: it is what we waited for.
            walk(child, cursor, children, path, visited);
            cursor = child.start_time;
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
