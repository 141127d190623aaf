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
//! They are written into the metric store directly by [`flush_loop`] (as
//! [`crate::log_metrics`] are), with the `job` and `instance` labels the
//! collector's self-scrape gave them when it carried them, and they are also
//! served on the collector's `/metrics` for outside scrapers (the
//! collector's own scrape drops them there, see
//! [`crate::scrape::jobs_from_config`]). Latency buckets link to traces
//! with exemplars: each flush stores, for every bucket that counted spans
//! since the last one, the newest of them (`trace_id`, `span_id`, its
//! duration, its end time) in the store's exemplar store, so a slow bucket
//! has slow traces of its own; `/metrics` in OpenMetrics carries the newest
//! span per series. Cardinality is bounded: past [`MAX_SERIES`] new label
//! sets are counted under `span_name="__other__"`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sightline_store::{Span, SpanStatus};
use sightline_tsdb::{Exemplar, Labels, METRIC_NAME, MetricMetadata, SampleLog, TsdbError};
use sightline_vocab::exposition::{Kind, Writer, format_float};
use tokio::sync::watch;

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

/// The `span_kind` label: the OTLP enum name, without an allocation for
/// the kinds the OTLP conversion writes (this runs for every span).
fn span_kind_label(kind: &str) -> Cow<'static, str> {
    match kind {
        "server" => Cow::Borrowed("SPAN_KIND_SERVER"),
        "client" => Cow::Borrowed("SPAN_KIND_CLIENT"),
        "internal" => Cow::Borrowed("SPAN_KIND_INTERNAL"),
        "producer" => Cow::Borrowed("SPAN_KIND_PRODUCER"),
        "consumer" => Cow::Borrowed("SPAN_KIND_CONSUMER"),
        "unspecified" => Cow::Borrowed("SPAN_KIND_UNSPECIFIED"),
        other => Cow::Owned(format!("SPAN_KIND_{}", other.to_ascii_uppercase())),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RedKey {
    service: String,
    span_name: String,
    span_kind: Cow<'static, str>,
    status_code: &'static str,
}

impl RedKey {
    fn labels(&self) -> [(&'static str, &str); 4] {
        [
            ("service", self.service.as_str()),
            ("span_name", self.span_name.as_str()),
            ("span_kind", &self.span_kind),
            ("status_code", self.status_code),
        ]
    }
}

#[derive(Debug, Default, Clone)]
struct RedSeries {
    calls: u64,
    sum_seconds: f64,
    buckets: [u64; BUCKETS.len()],
    /// The newest span, for `/metrics`.
    exemplar: Option<SpanExemplar>,
    /// While observing a batch: the position of its newest span per bucket.
    newest: [Option<u32>; ALL_BUCKETS],
}

/// One span as an exemplar of a latency bucket.
#[derive(Debug, Clone, PartialEq)]
struct SpanExemplar {
    trace_id: String,
    span_id: String,
    seconds: f64,
    end_ms: i64,
}

impl SpanExemplar {
    fn of(span: &Span) -> SpanExemplar {
        SpanExemplar {
            trace_id: span.trace_id.clone(),
            span_id: span.span_id.clone(),
            seconds: span.duration_nanos() as f64 / 1e9,
            end_ms: span.end_time / 1_000_000,
        }
    }

    /// The bucket its duration falls in; `BUCKETS.len()` for `+Inf`.
    fn bucket(&self) -> usize {
        bucket_of(self.seconds)
    }
}

fn bucket_of(seconds: f64) -> usize {
    BUCKETS
        .iter()
        .position(|bound| seconds <= *bound)
        .unwrap_or(BUCKETS.len())
}

/// Latency buckets with the `+Inf` one.
const ALL_BUCKETS: usize = BUCKETS.len() + 1;

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
    /// The newest span per series and bucket since the last flush.
    fresh: HashMap<(RedKey, u8), SpanExemplar>,
}

/// The running aggregation; cheap to share.
#[derive(Default)]
pub struct SpanMetrics {
    state: Mutex<State>,
}

/// What one batch of spans adds to the aggregation, computed while the
/// batch is at hand and applied by [`SpanMetrics::apply`] once the batch is
/// durable, so each acknowledged span is counted once and a refused batch
/// (counted again when its sender retries) not at all.
#[derive(Default)]
#[must_use = "a pending observation counts nothing until it is applied"]
pub struct PendingSpans {
    red: HashMap<RedKey, RedSeries>,
    /// The newest span of the batch per series and bucket.
    exemplars: Vec<(RedKey, u8, SpanExemplar)>,
    /// Client and server spans that may make a service-graph edge, in
    /// batch order.
    halves: Vec<Half>,
}

/// A client span (by its own id) or a server span (by its parent's id).
struct Half {
    client: bool,
    id: String,
    service: String,
    failed: bool,
}

impl SpanMetrics {
    /// Summarises a batch of spans without touching the aggregation.
    pub fn observe(&self, spans: &[Span]) -> PendingSpans {
        let mut pending = PendingSpans::default();
        for (position, span) in spans.iter().enumerate() {
            let failed = span.status == SpanStatus::Error;
            let key = RedKey {
                service: span.service.clone(),
                span_name: span.name.clone(),
                span_kind: span_kind_label(&span.kind),
                status_code: match span.status {
                    SpanStatus::Unset => "STATUS_CODE_UNSET",
                    SpanStatus::Ok => "STATUS_CODE_OK",
                    SpanStatus::Error => "STATUS_CODE_ERROR",
                },
            };
            let seconds = span.duration_nanos() as f64 / 1e9;
            let series = pending.red.entry(key).or_default();
            series.calls += 1;
            series.sum_seconds += seconds;
            let bucket = bucket_of(seconds);
            if let Some(count) = series.buckets.get_mut(bucket) {
                *count += 1;
            }
            series.newest[bucket] = u32::try_from(position).ok();
            let half = match (span.kind.as_str(), &span.parent_span_id) {
                ("client" | "producer", _) => (true, &span.span_id),
                ("server" | "consumer", Some(parent)) => (false, parent),
                _ => continue,
            };
            pending.halves.push(Half {
                client: half.0,
                id: half.1.clone(),
                service: span.service.clone(),
                failed,
            });
        }
        // Exemplars are copied out of the batch once per series and bucket,
        // not once per span.
        for (key, series) in &mut pending.red {
            let newest = std::mem::take(&mut series.newest);
            let mut latest: Option<(u32, usize)> = None;
            for (bucket, position) in newest.into_iter().enumerate() {
                let Some(position) = position else { continue };
                let Some(span) = spans.get(position as usize) else {
                    continue;
                };
                let exemplar = SpanExemplar::of(span);
                pending
                    .exemplars
                    .push((key.clone(), bucket as u8, exemplar));
                if latest.is_none_or(|(newest, _)| newest < position) {
                    latest = Some((position, pending.exemplars.len() - 1));
                }
            }
            series.exemplar = latest.map(|(_, index)| pending.exemplars[index].2.clone());
        }
        pending
    }

    /// Counts a batch [`SpanMetrics::observe`] summarised, once it is
    /// durable.
    pub fn apply(&self, pending: PendingSpans) {
        let now = Instant::now();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for (mut key, bucket, exemplar) in pending.exemplars {
            if !state.red.contains_key(&key) && state.red.len() >= MAX_SERIES {
                key.span_name = "__other__".into();
            }
            state.fresh.insert((key, bucket), exemplar);
        }
        for (mut key, add) in pending.red {
            if !state.red.contains_key(&key) && state.red.len() >= MAX_SERIES {
                key.span_name = "__other__".into();
            }
            let series = state.red.entry(key).or_default();
            series.calls += add.calls;
            series.sum_seconds += add.sum_seconds;
            for (total, count) in series.buckets.iter_mut().zip(add.buckets) {
                *total += count;
            }
            if add.exemplar.is_some() {
                series.exemplar = add.exemplar;
            }
        }
        for half in pending.halves {
            let State {
                edges,
                clients,
                servers,
                ..
            } = &mut *state;
            // A client meets the server span whose parent it is, and the
            // other way round, whichever came first.
            let (other_side, own_side) = if half.client {
                (servers, clients)
            } else {
                (clients, servers)
            };
            if let Some(other) = other_side.remove(&half.id) {
                let (client, server) = if half.client {
                    (&half.service, &other.service)
                } else {
                    (&other.service, &half.service)
                };
                record_edge(edges, client, server, half.failed || other.failed);
            } else if own_side.len() < MAX_PENDING_EDGES {
                let waiting = PendingHalf {
                    service: half.service,
                    failed: half.failed,
                    since: now,
                };
                own_side.insert(half.id, waiting);
            }
        }
        state
            .clients
            .retain(|_, half| now.duration_since(half.since) < EDGE_WAIT);
        state
            .servers
            .retain(|_, half| now.duration_since(half.since) < EDGE_WAIT);
    }

    /// Observes and applies at once: for tests, which have no durable step.
    #[cfg(any(test, feature = "testing"))]
    pub fn count(&self, spans: &[Span]) {
        self.apply(self.observe(spans));
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
        let labels = RedKey::labels;
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
            let exemplar_bucket = exemplar.map(SpanExemplar::bucket);
            for (index, (bound, count)) in BUCKETS.iter().zip(series.buckets).enumerate() {
                cumulative += count;
                let le = format_float(*bound);
                let [service, span_name, span_kind, status_code] = labels;
                let with_le = [service, span_name, span_kind, status_code, ("le", &le)];
                match (exemplar, exemplar_bucket) {
                    (Some(exemplar), Some(bucket_index)) if bucket_index == index => {
                        let trace = [("trace_id", exemplar.trace_id.as_str())];
                        let seconds = exemplar.seconds;
                        writer.sample_with_exemplar(
                            bucket, &with_le, cumulative, &trace, seconds, None,
                        );
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

/// The families [`SpanMetrics::flush`] writes, with their metadata as an
/// OpenMetrics scrape of `/metrics` recorded it (counters named without
/// `_total`).
const FAMILIES: [(&str, &str, &str); 4] = [
    (
        "traces_spanmetrics_calls",
        "counter",
        "Spans received, per service and operation.",
    ),
    (
        "traces_spanmetrics_duration_seconds",
        "histogram",
        "Span duration, per service and operation.",
    ),
    (
        "traces_service_graph_request",
        "counter",
        "Requests between two services.",
    ),
    (
        "traces_service_graph_request_failed",
        "counter",
        "Failed requests between two services.",
    ),
];

/// The metric names [`SpanMetrics`] writes, as a regex (for the
/// collector's own scrape of `/metrics`, which drops them).
pub const METRIC_NAMES: &str = "traces_spanmetrics_.*|traces_service_graph_.*";

impl SpanMetrics {
    /// Appends every series' current value at `now_ms` to `store`, each
    /// with the labels of `target` (the collector's `job` and `instance`)
    /// added. The aggregation is copied first, so ingest never waits for
    /// the store's fsync.
    pub fn flush(
        &self,
        store: &dyn SampleLog,
        target: &Labels,
        now_ms: i64,
    ) -> Result<(), TsdbError> {
        let (red, edges, fresh) = {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let fresh = std::mem::take(&mut state.fresh);
            (state.red.clone(), state.edges.clone(), fresh)
        };
        if red.is_empty() && edges.is_empty() {
            return Ok(());
        }
        let series = |name: &str, pairs: &[(&str, &str)]| {
            let mut labels = target.clone();
            labels.set(METRIC_NAME, name);
            for (label, value) in pairs {
                labels.set(label, value);
            }
            labels
        };
        let mut samples = Vec::with_capacity(red.len() * (BUCKETS.len() + 4) + edges.len() * 2);
        for (key, red) in &red {
            let labels = key.labels();
            let calls = red.calls as f64;
            samples.push((
                series("traces_spanmetrics_calls_total", &labels),
                now_ms,
                calls,
            ));
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(red.buckets) {
                cumulative += count;
                let le = bound.to_string();
                let mut labels = series("traces_spanmetrics_duration_seconds_bucket", &labels);
                labels.set("le", &le);
                samples.push((labels, now_ms, cumulative as f64));
            }
            let mut infinity = series("traces_spanmetrics_duration_seconds_bucket", &labels);
            infinity.set("le", "+Inf");
            samples.push((infinity, now_ms, calls));
            let sum = series("traces_spanmetrics_duration_seconds_sum", &labels);
            samples.push((sum, now_ms, red.sum_seconds));
            let count = series("traces_spanmetrics_duration_seconds_count", &labels);
            samples.push((count, now_ms, calls));
        }
        for ((client, server), edge) in &edges {
            let labels = [("client", client.as_str()), ("server", server.as_str())];
            let requests = series("traces_service_graph_request_total", &labels);
            samples.push((requests, now_ms, edge.requests as f64));
            let failed = series("traces_service_graph_request_failed_total", &labels);
            samples.push((failed, now_ms, edge.failed as f64));
        }
        for (family, kind, help) in FAMILIES {
            store.set_metadata(
                family,
                MetricMetadata {
                    kind: kind.into(),
                    help: help.into(),
                    unit: String::new(),
                },
            );
        }
        let outcome = store.append(&samples)?;
        if let Some((_, error)) = outcome.rejected.first() {
            tracing::warn!(%error, rejected = outcome.rejected.len(), "span metric samples refused");
        }
        let mut exemplars: Vec<(Arc<Labels>, Exemplar)> = Vec::with_capacity(fresh.len());
        for ((key, bucket), exemplar) in fresh {
            let mut labels = series("traces_spanmetrics_duration_seconds_bucket", &key.labels());
            let le = BUCKETS
                .get(usize::from(bucket))
                .map_or_else(|| "+Inf".to_string(), f64::to_string);
            labels.set("le", &le);
            let exemplar = Exemplar {
                labels: Labels::new([
                    ("trace_id", exemplar.trace_id),
                    ("span_id", exemplar.span_id),
                ]),
                value: exemplar.seconds,
                timestamp_ms: exemplar.end_ms,
            };
            exemplars.push((Arc::new(labels), exemplar));
        }
        // Oldest first: a series refuses an exemplar older than its newest.
        exemplars.sort_by_key(|(_, exemplar)| exemplar.timestamp_ms);
        store.append_exemplars(&exemplars);
        Ok(())
    }
}

/// Flushes `span_metrics` to `store` every `interval` (the self-scrape's
/// interval, which may change at a reload) until `stop`, then once more.
pub async fn flush_loop(
    span_metrics: Arc<SpanMetrics>,
    store: Arc<dyn SampleLog>,
    target: Labels,
    mut interval: watch::Receiver<Duration>,
    mut stop: watch::Receiver<bool>,
) {
    // A zero period would make `tokio::time::interval` panic.
    let period = |interval: Duration| interval.max(Duration::from_millis(1));
    let mut ticks = tokio::time::interval(period(*interval.borrow_and_update()));
    let mut following = true;
    loop {
        let stopping = tokio::select! {
            _ = ticks.tick() => false,
            changed = interval.changed(), if following => {
                match changed {
                    Ok(()) => {
                        let every = period(*interval.borrow_and_update());
                        ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    }
                    Err(_) => following = false,
                }
                continue;
            }
            _ = stop.wait_for(|stopped| *stopped) => true,
        };
        let (span_metrics, store, target) = (span_metrics.clone(), store.clone(), target.clone());
        let now_ms = sightline_vocab::clock::now_nanos() / 1_000_000;
        match tokio::task::spawn_blocking(move || span_metrics.flush(&*store, &target, now_ms))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "failed to flush span metrics"),
            Err(error) => tracing::error!(%error, "span metrics flush task failed"),
        }
        if stopping {
            return;
        }
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
    fn span_kind_labels_are_the_otlp_enum_names() {
        for kind in [
            "server",
            "client",
            "internal",
            "producer",
            "consumer",
            "unspecified",
            "odd",
        ] {
            assert_eq!(
                span_kind_label(kind),
                format!("SPAN_KIND_{}", kind.to_ascii_uppercase())
            );
        }
    }

    #[test]
    fn red_metrics_and_service_graph_edges_whichever_half_arrives_first() {
        let metrics = SpanMetrics::default();
        // Server half first, then its client.
        metrics.count(&[span(
            "s1",
            Some("c1"),
            "order",
            "server",
            30,
            SpanStatus::Error,
        )]);
        metrics.count(&[span(
            "c1",
            Some("g1"),
            "gateway",
            "client",
            35,
            SpanStatus::Unset,
        )]);
        // Client first, then server.
        metrics.count(&[span(
            "c2",
            Some("g2"),
            "gateway",
            "client",
            5,
            SpanStatus::Unset,
        )]);
        metrics.count(&[span("s2", Some("c2"), "order", "server", 3, SpanStatus::Ok)]);
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
        metrics.count(&spans);
        let text = metrics.render(false);
        let series = text
            .lines()
            .filter(|line| line.starts_with("traces_spanmetrics_calls_total{"))
            .count();
        assert_eq!(series, MAX_SERIES + 1, "the overflow folds into one series");
        assert!(text.contains("span_name=\"__other__\""));
    }

    /// Flushed series are those a scrape of the rendered text made, with
    /// the collector's `job` and `instance`.
    #[test]
    fn flush_writes_the_rendered_series_into_the_store() {
        let metrics = SpanMetrics::default();
        metrics.count(&[
            span("c1", Some("g1"), "gateway", "client", 35, SpanStatus::Unset),
            span("s1", Some("c1"), "order", "server", 3, SpanStatus::Error),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let store = sightline_tsdb::MetricStore::open(dir.path()).unwrap();
        let target = Labels::new([("job", "sightline"), ("instance", "127.0.0.1:7070")]);
        metrics.flush(&store, &target, 10_000).unwrap();
        let query = |promql: &str| {
            let value = sightline_tsdb::promql::Engine::default()
                .instant_query(&*store.reader(), promql, 10_000)
                .unwrap();
            let sightline_tsdb::promql::Value::Vector(samples) = value else {
                panic!("not a vector: {value:?}")
            };
            samples
                .into_iter()
                .map(|sample| (sample.labels.to_string(), sample.value))
                .collect::<Vec<_>>()
        };
        let order = "instance=\"127.0.0.1:7070\", job=\"sightline\", service=\"order\", span_kind=\"SPAN_KIND_SERVER\", span_name=\"order op\", status_code=\"STATUS_CODE_ERROR\"";
        let calls = query("traces_spanmetrics_calls_total{service=\"order\"}");
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].1, 1.0);
        assert!(calls[0].0.contains(order), "{calls:?}");
        let buckets = query("traces_spanmetrics_duration_seconds_bucket{service=\"order\"}");
        assert_eq!(buckets.len(), BUCKETS.len() + 1, "{buckets:?}");
        let le = |bound: &str| {
            buckets
                .iter()
                .find(|(labels, _)| labels.contains(&format!("le=\"{bound}\"")))
                .map(|(_, value)| *value)
        };
        assert_eq!(le("0.002"), Some(0.0));
        assert_eq!(le("0.004"), Some(1.0));
        assert_eq!(le("+Inf"), Some(1.0));
        assert_eq!(
            query("traces_spanmetrics_duration_seconds_count{service=\"gateway\"}")[0].1,
            1.0
        );
        let edges = query("traces_service_graph_request_failed_total");
        assert_eq!(edges.len(), 1, "{edges:?}");
        assert!(
            edges[0].0.contains("client=\"gateway\"") && edges[0].0.contains("server=\"order\""),
            "{edges:?}"
        );
        assert_eq!(edges[0].1, 1.0);
        assert_eq!(
            store
                .metadata()
                .get("traces_spanmetrics_duration_seconds")
                .map(|m| m.kind.as_str()),
            Some("histogram")
        );
    }

    /// Each flush stores the newest span of every bucket that counted spans
    /// since the previous flush, as an exemplar of that bucket's series.
    #[test]
    fn each_bucket_gets_its_newest_span_as_an_exemplar_at_each_flush() {
        let metrics = SpanMetrics::default();
        let mut fast = span("f1", None, "payment", "server", 3, SpanStatus::Unset);
        fast.trace_id = "a".repeat(32);
        let mut slow = span("s1", None, "payment", "server", 3_000, SpanStatus::Unset);
        slow.trace_id = "b".repeat(32);
        let mut slower = span("s2", None, "payment", "server", 3_500, SpanStatus::Unset);
        slower.trace_id = "c".repeat(32);
        let mut endless = span("s3", None, "payment", "server", 60_000, SpanStatus::Unset);
        endless.trace_id = "d".repeat(32);
        metrics.count(&[fast, slow, slower.clone()]);
        metrics.count(&[endless]);
        let dir = tempfile::tempdir().unwrap();
        let store = sightline_tsdb::MetricStore::open(dir.path()).unwrap();
        let target = Labels::new([("job", "sightline"), ("instance", "127.0.0.1:7070")]);
        metrics.flush(&store, &target, 70_000).unwrap();
        let selectors = sightline_tsdb::promql::selectors_of(
            "traces_spanmetrics_duration_seconds_bucket{service=\"payment\"}",
        )
        .unwrap();
        let found = store.exemplars(&selectors, 0, i64::MAX);
        let by_le: Vec<(String, String, String, f64, i64)> = found
            .iter()
            .flat_map(|series| {
                series.exemplars.iter().map(|exemplar| {
                    (
                        series.series.get("le").to_string(),
                        exemplar.labels.get("trace_id").to_string(),
                        exemplar.labels.get("span_id").to_string(),
                        exemplar.value,
                        exemplar.timestamp_ms,
                    )
                })
            })
            .collect();
        let mut by_le = by_le;
        by_le.sort_by(|a, b| a.3.total_cmp(&b.3));
        assert_eq!(
            by_le,
            [
                ("0.004".into(), "a".repeat(32), "f1".into(), 0.003, 3),
                ("4.096".into(), "c".repeat(32), "s2".into(), 3.5, 3_500),
                ("+Inf".into(), "d".repeat(32), "s3".into(), 60.0, 60_000),
            ]
        );
        assert!(
            found
                .iter()
                .all(|series| series.series.get("job") == "sightline"),
            "{found:?}"
        );
        // Nothing new since: the next flush adds no exemplar; a new span does.
        metrics.flush(&store, &target, 80_000).unwrap();
        assert_eq!(store.exemplars(&selectors, 0, i64::MAX), found);
        let mut again = slower;
        again.span_id = "s4".into();
        again.start_time = 86_500 * 1_000_000;
        again.end_time = 90_000 * 1_000_000;
        metrics.count(&[again]);
        metrics.flush(&store, &target, 90_000).unwrap();
        let slow_bucket = store
            .exemplars(&selectors, 0, i64::MAX)
            .into_iter()
            .find(|series| series.series.get("le") == "4.096")
            .unwrap();
        let spans: Vec<&str> = slow_bucket
            .exemplars
            .iter()
            .map(|exemplar| exemplar.labels.get("span_id"))
            .collect();
        assert_eq!(spans, ["s2", "s4"]);
    }
}
