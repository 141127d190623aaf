//! Metrics derived from spans at ingest, as Tempo's metrics generator and the
//! OpenTelemetry Collector's spanmetrics and servicegraph connectors derive
//! them, with the same names so existing dashboards and rules work:
//!
//! - RED per service and operation: `traces_spanmetrics_calls_total`,
//!   `traces_spanmetrics_duration_seconds_{bucket,sum,count}` (labels
//!   `service`, `span_name`, `span_kind`, `status_code`);
//! - the service graph: `traces_service_graph_request_total` and
//!   `traces_service_graph_request_failed_total` (labels `client`,
//!   `server`), from a client span of one service paired with the server
//!   span of another whose parent it is.
//!
//! They are served on the collector's `/metrics`, from where the metrics
//! pipeline scrapes them like any target. The last trace id seen per series is
//! kept as an exemplar (OpenMetrics exposition) so a latency bucket links to a
//! trace. Cardinality is bounded: past [`MAX_SERIES`] new label sets are
//! counted under `span_name="__other__"`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sightline_store::{Span, SpanStatus};
use sightline_vocab::exposition::{Kind, Writer, format_float};

/// Upper bounds of the latency histogram, seconds (Tempo's defaults, extended).
const BUCKETS: [f64; 14] = [
    0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192,
    16.384,
];

/// Distinct RED label sets kept before new ones are folded together.
pub const MAX_SERIES: usize = 10_000;

/// Spans waiting for their other half of a service-graph edge.
const MAX_PENDING_EDGES: usize = 100_000;
const EDGE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RedKey {
    service: String,
    span_name: String,
    span_kind: String,
    status_code: &'static str,
}

#[derive(Debug, Default, Clone)]
struct RedSeries {
    calls: u64,
    sum_seconds: f64,
    buckets: [u64; BUCKETS.len()],
    exemplar: Option<(String, f64)>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Edge {
    requests: u64,
    failed: u64,
}

struct PendingHalf {
    service: String,
    failed: bool,
    since: Instant,
}

#[derive(Default)]
struct State {
    red: HashMap<RedKey, RedSeries>,
    edges: HashMap<(String, String), Edge>,
    /// Client spans by their own id, waiting for the server span they called.
    clients: HashMap<String, PendingHalf>,
    /// Server spans by their parent id, waiting for the client span that called them.
    servers: HashMap<String, PendingHalf>,
}

/// The running aggregation; cheap to share.
#[derive(Default)]
pub struct SpanMetrics {
    state: Mutex<State>,
}

impl SpanMetrics {
    /// Counts a batch of spans.
    pub fn observe(&self, spans: &[Span]) {
        let now = Instant::now();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for span in spans {
            let failed = span.status == SpanStatus::Error;
            let mut key = RedKey {
                service: span.service.clone(),
                span_name: span.name.clone(),
                span_kind: format!("SPAN_KIND_{}", span.kind.to_ascii_uppercase()),
                status_code: match span.status {
                    SpanStatus::Unset => "STATUS_CODE_UNSET",
                    SpanStatus::Ok => "STATUS_CODE_OK",
                    SpanStatus::Error => "STATUS_CODE_ERROR",
                },
            };
            if !state.red.contains_key(&key) && state.red.len() >= MAX_SERIES {
                key.span_name = "__other__".into();
            }
            let seconds = span.duration_nanos() as f64 / 1e9;
            let series = state.red.entry(key).or_default();
            series.calls += 1;
            series.sum_seconds += seconds;
            if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
                series.buckets[bucket] += 1;
            }
            series.exemplar = Some((span.trace_id.clone(), seconds));
            match span.kind.as_str() {
                "client" | "producer" => {
                    if let Some(server) = state.servers.remove(&span.span_id) {
                        record_edge(
                            &mut state.edges,
                            &span.service,
                            &server.service,
                            failed || server.failed,
                        );
                    } else if state.clients.len() < MAX_PENDING_EDGES {
                        let half = PendingHalf {
                            service: span.service.clone(),
                            failed,
                            since: now,
                        };
                        state.clients.insert(span.span_id.clone(), half);
                    }
                }
                "server" | "consumer" => {
                    let Some(parent) = &span.parent_span_id else {
                        continue;
                    };
                    if let Some(client) = state.clients.remove(parent) {
                        record_edge(
                            &mut state.edges,
                            &client.service,
                            &span.service,
                            failed || client.failed,
                        );
                    } else if state.servers.len() < MAX_PENDING_EDGES {
                        let half = PendingHalf {
                            service: span.service.clone(),
                            failed,
                            since: now,
                        };
                        state.servers.insert(parent.clone(), half);
                    }
                }
                _ => {}
            }
        }
        state
            .clients
            .retain(|_, half| now.duration_since(half.since) < EDGE_WAIT);
        state
            .servers
            .retain(|_, half| now.duration_since(half.since) < EDGE_WAIT);
    }

    /// Prometheus text exposition; with `openmetrics`, exemplars on buckets.
    pub fn render(&self, openmetrics: bool) -> String {
        let state = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut red: Vec<(&RedKey, &RedSeries)> = state.red.iter().collect();
        red.sort_by(|a, b| {
            (
                &a.0.service,
                &a.0.span_name,
                &a.0.span_kind,
                a.0.status_code,
            )
                .cmp(&(
                    &b.0.service,
                    &b.0.span_name,
                    &b.0.span_kind,
                    b.0.status_code,
                ))
        });
        let mut out = String::new();
        let mut writer = Writer::new(&mut out);
        fn labels(key: &RedKey) -> [(&'static str, &str); 4] {
            [
                ("service", key.service.as_str()),
                ("span_name", key.span_name.as_str()),
                ("span_kind", key.span_kind.as_str()),
                ("status_code", key.status_code),
            ]
        }
        let calls = "traces_spanmetrics_calls_total";
        writer.family(
            calls,
            Kind::Counter,
            "Spans received, per service and operation.",
        );
        for (key, series) in &red {
            writer.sample(calls, &labels(key), series.calls);
        }
        writer.family(
            "traces_spanmetrics_duration_seconds",
            Kind::Histogram,
            "Span duration, per service and operation.",
        );
        for (key, series) in &red {
            let labels = labels(key);
            let bucket = "traces_spanmetrics_duration_seconds_bucket";
            let mut cumulative = 0;
            // The exemplar goes on the one bucket its value falls in.
            let exemplar = series.exemplar.as_ref().filter(|_| openmetrics);
            let exemplar_bucket = exemplar
                .and_then(|(_, seconds)| BUCKETS.iter().position(|bound| *seconds <= *bound));
            for (index, (bound, count)) in BUCKETS.iter().zip(series.buckets).enumerate() {
                cumulative += count;
                let le = format_float(*bound);
                let [service, span_name, span_kind, status_code] = labels;
                let with_le = [service, span_name, span_kind, status_code, ("le", &le)];
                match (exemplar, exemplar_bucket) {
                    (Some((trace_id, seconds)), Some(bucket_index)) if bucket_index == index => {
                        let trace = [("trace_id", trace_id.as_str())];
                        writer.sample_with_exemplar(bucket, &with_le, cumulative, &trace, *seconds);
                    }
                    _ => writer.sample(bucket, &with_le, cumulative),
                }
            }
            let [service, span_name, span_kind, status_code] = labels;
            let with_le = [service, span_name, span_kind, status_code, ("le", "+Inf")];
            writer.sample(bucket, &with_le, series.calls);
            let sum = "traces_spanmetrics_duration_seconds_sum";
            writer.sample(sum, &labels, series.sum_seconds);
            let count = "traces_spanmetrics_duration_seconds_count";
            writer.sample(count, &labels, series.calls);
        }
        let mut edges: Vec<(&(String, String), &Edge)> = state.edges.iter().collect();
        edges.sort_by(|a, b| a.0.cmp(b.0));
        let requests = "traces_service_graph_request_total";
        writer.family(requests, Kind::Counter, "Requests between two services.");
        for ((client, server), edge) in &edges {
            let pair = [("client", client.as_str()), ("server", server.as_str())];
            writer.sample(requests, &pair, edge.requests);
        }
        let failed = "traces_service_graph_request_failed_total";
        writer.family(
            failed,
            Kind::Counter,
            "Failed requests between two services.",
        );
        for ((client, server), edge) in &edges {
            let pair = [("client", client.as_str()), ("server", server.as_str())];
            writer.sample(failed, &pair, edge.failed);
        }
        out
    }
}

fn record_edge(
    edges: &mut HashMap<(String, String), Edge>,
    client: &str,
    server: &str,
    failed: bool,
) {
    if client == server {
        return;
    }
    if !edges.contains_key(&(client.to_string(), server.to_string())) && edges.len() >= MAX_SERIES {
        return;
    }
    let edge = edges
        .entry((client.to_string(), server.to_string()))
        .or_default();
    edge.requests += 1;
    edge.failed += u64::from(failed);
}

/// Turns Prometheus text exposition into OpenMetrics (the collector's
/// `/metrics` serves its whole page this way when asked).
pub use sightline_vocab::exposition::to_openmetrics;

#[cfg(test)]
mod tests {
    use super::*;

    fn span(
        id: &str,
        parent: Option<&str>,
        service: &str,
        kind: &str,
        millis: i64,
        status: SpanStatus,
    ) -> Span {
        Span {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_string),
            name: format!("{service} op"),
            service: service.into(),
            kind: kind.into(),
            start_time: 0,
            end_time: millis * 1_000_000,
            status,
            ..Span::default()
        }
    }

    #[test]
    fn red_metrics_and_service_graph_edges_whichever_half_arrives_first() {
        let metrics = SpanMetrics::default();
        // Server half first, then its client.
        metrics.observe(&[span(
            "s1",
            Some("c1"),
            "order",
            "server",
            30,
            SpanStatus::Error,
        )]);
        metrics.observe(&[span(
            "c1",
            Some("g1"),
            "gateway",
            "client",
            35,
            SpanStatus::Unset,
        )]);
        // Client first, then server.
        metrics.observe(&[span(
            "c2",
            Some("g2"),
            "gateway",
            "client",
            5,
            SpanStatus::Unset,
        )]);
        metrics.observe(&[span("s2", Some("c2"), "order", "server", 3, SpanStatus::Ok)]);
        let text = metrics.render(false);
        assert!(
            text.contains(
                "traces_service_graph_request_total{client=\"gateway\",server=\"order\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "traces_service_graph_request_failed_total{client=\"gateway\",server=\"order\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains(
            "traces_spanmetrics_calls_total{service=\"order\",span_name=\"order op\",span_kind=\"SPAN_KIND_SERVER\",status_code=\"STATUS_CODE_ERROR\"} 1"
        ), "{text}");
        let order_ok = "service=\"order\",span_name=\"order op\",span_kind=\"SPAN_KIND_SERVER\",status_code=\"STATUS_CODE_OK\"";
        assert!(
            text.contains(&format!(
                "traces_spanmetrics_duration_seconds_bucket{{{order_ok},le=\"0.002\"}} 0"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "traces_spanmetrics_duration_seconds_bucket{{{order_ok},le=\"0.004\"}} 1"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "traces_spanmetrics_duration_seconds_bucket{{{order_ok},le=\"+Inf\"}} 1"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "traces_spanmetrics_duration_seconds_count{{{order_ok}}} 1"
            )),
            "{text}"
        );
        let with_exemplars = metrics.render(true);
        let exemplar = "# {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.003";
        assert_eq!(
            with_exemplars.matches(exemplar).count(),
            1,
            "on one bucket only: {with_exemplars}"
        );
        assert!(
            with_exemplars.contains(&format!("le=\"0.004\"}} 1 {exemplar}")),
            "{with_exemplars}"
        );
        let openmetrics = to_openmetrics(&with_exemplars);
        assert!(openmetrics.contains("# TYPE traces_spanmetrics_calls counter"));
        assert!(openmetrics.ends_with("# EOF\n"));
    }

    #[test]
    fn cardinality_is_bounded() {
        let metrics = SpanMetrics::default();
        let spans: Vec<Span> = (0..MAX_SERIES + 50)
            .map(|i| Span {
                name: format!("GET /users/{i}"),
                ..span("x", None, "api", "server", 1, SpanStatus::Unset)
            })
            .collect();
        metrics.observe(&spans);
        let text = metrics.render(false);
        let series = text
            .lines()
            .filter(|line| line.starts_with("traces_spanmetrics_calls_total{"))
            .count();
        assert_eq!(series, MAX_SERIES + 1, "the overflow folds into one series");
        assert!(text.contains("span_name=\"__other__\""));
    }
}
